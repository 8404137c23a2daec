"""``python -m core.cli`` is ``gpufan``."""

import sys

from core.cli import main

sys.exit(main())
