"""Programs the tests run as real peers of gpufan, each in its own interpreter."""
