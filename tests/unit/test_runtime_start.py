"""A front door that fails to start releases what it opened.

GIVEN a model repository whose ``config.pbtxt`` is malformed (read after the HTTP session opens),
WHEN the front-door runtime starts,
THEN it refuses with the file named, and its HTTP session is closed, not left to the collector.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.config import settings_from_dict
from core.errors import ConfigError
from core.frontdoor.runtime import FrontDoorRuntime
from gpu_containers import DEMO_REPOSITORY


async def test_a_runtime_that_cannot_start_closes_its_session(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(DEMO_REPOSITORY / "digits", repo / "digits")
    (repo / "digits" / "config.pbtxt").write_text("max_batch_size: {{ not pbtxt")
    settings = settings_from_dict(
        {
            "models": [{"name": "digits", "repository": str(repo)}],
            "targets": [{"name": "t", "backend": "http", "endpoint": "http://127.0.0.1:9"}],
        },
        source="test",
    )
    runtime = FrontDoorRuntime(settings, settings.targets)
    with pytest.raises(ConfigError, match=r"config\.pbtxt"):
        await runtime.__aenter__()
    assert runtime._session is not None and runtime._session.closed
