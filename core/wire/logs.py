"""The log format of the long-running processes, ``gpufan worker`` and ``gpufan serve``.

Every line carries a timestamp and a level, uvicorn's too: ``start_server`` leaves uvicorn's
loggers unconfigured, so their records reach the root handler set here.
"""

from __future__ import annotations

import logging

__all__ = ["LOG_FORMAT", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.WARNING) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT)
