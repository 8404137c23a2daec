"""Cloud Functions (2nd gen) adapters (see ``functions.gcp.main``)."""
