"""Find a CPython of a given version on this machine, for the CI checks that need the Python of a
platform (Lambda's runtime, the worker image's Ubuntu) rather than the one running CI."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def interpreter(version: str) -> str | None:
    """A CPython of ``version`` that runs: on PATH, else one of pyenv's (its shims may not run)."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    pyenv = sorted(root.glob(f"{version}.*/bin/python{version}"), reverse=True)
    for candidate in [shutil.which(f"python{version}"), *map(str, pyenv)]:
        if candidate and subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0:
            return candidate
    return None
