"""``gpufan package --out dist``: the function bundles that ``infra/terraform`` deploys.

Three zips, built outside Terraform so its plan only sees a file whose hash changes when the code
does (every entry has a fixed timestamp and mode, entries are sorted)::

    lambda.zip              core/, functions/, requirements.txt [, gpufan.yaml]
                            handlers functions.aws.handler.{http,sqs,schedule}_handler
    gcf-source.zip          the same, plus main.py = functions/gcp/main.py at the root
    azure-functionapp.zip   the same, plus function_app.py and host.json at the root

A root ``main.py`` (not ``GOOGLE_FUNCTION_SOURCE=functions/gcp/main.py``) is what puts the bundle
root on ``sys.path`` under functions-framework, which appends the entry file's own folder: from
``functions/gcp/`` the ``core`` and ``functions`` packages would not import. Azure's indexer reads
``function_app.py`` from the app root (``functions/README.md``).

``requirements.txt`` lists the base dependencies and the cloud's extra from ``pyproject.toml``.
Cloud Functions and Azure's remote build install it; Lambda does not, so its dependencies come
from a layer built with ``pip install -t python/ -r requirements.txt`` (the module's
``lambda_layers``), or from the zip itself when ``args.with_deps`` is set, which runs
``pip install --target`` for Lambda's platform into the bundle.

``gpufan.yaml`` goes in when ``args.config`` names it or the current folder has one; the
modules point ``GPUFAN_CONFIG`` at it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ConfigError

__all__ = ["BUNDLES", "Bundle", "bundle_entries", "requirements", "run_package", "write_zip"]

_PACKAGES = ("core", "functions")  # what every front door imports
_SKIP_DIRS = frozenset({"__pycache__"})
_SKIP_SUFFIXES = frozenset({".pyc", ".pyo"})
# ZIP's epoch (MS-DOS dates start in 1980): a fixed stamp keeps the archive's bytes, and so
# Terraform's source hash, a function of the contents alone.
_EPOCH = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o100644 << 16  # regular file, rw-r--r--, in the Unix half of external_attr
CONFIG_NAME = "gpufan.yaml"
# Lambda runs Amazon Linux on x86_64 by default (the module's `architectures`); manylinux2014
# wheels load there (docs.aws.amazon.com/lambda/latest/dg/python-package.html).
_LAMBDA_PIP_PLATFORM = ("--platform", "manylinux2014_x86_64", "--python-version", "3.11")


@dataclass(frozen=True)
class Bundle:
    """One zip: the cloud's extra in ``pyproject.toml`` and files copied to the archive root."""

    file: str
    extra: str
    root_files: Mapping[str, str] = field(default_factory=dict)  # archive name -> source path


BUNDLES = (
    Bundle("lambda.zip", "aws"),
    Bundle("gcf-source.zip", "gcp", {"main.py": "functions/gcp/main.py"}),
    Bundle(
        "azure-functionapp.zip",
        "azure",
        {
            "function_app.py": "functions/azure/function_app.py",
            "host.json": "functions/azure/host.json",
        },
    ),
)


def requirements(pyproject: Mapping[str, object], extra: str) -> str:
    """``requirements.txt`` text: the project's dependencies plus one extra, in file order.

    Raises:
        ConfigError: ``pyproject.toml`` has no such extra.
    """
    project = pyproject.get("project")
    if not isinstance(project, Mapping):
        raise ConfigError("pyproject.toml has no [project] table")
    extras = project.get("optional-dependencies") or {}
    if extra not in extras:
        raise ConfigError(f"pyproject.toml has no extra {extra!r}; extras: {sorted(extras)}")
    lines = [*project.get("dependencies", []), *extras[extra]]
    own = str(project.get("name", "gpufan"))
    kept = [line for line in lines if not line.replace(" ", "").startswith(f"{own}[")]
    return "".join(f"{line}\n" for line in kept)


def _package_files(root: Path, package: str) -> Iterable[tuple[str, Path]]:
    for path in sorted((root / package).rglob("*")):
        rel = path.relative_to(root)
        if path.is_dir() or _SKIP_DIRS.intersection(rel.parts) or path.suffix in _SKIP_SUFFIXES:
            continue
        yield rel.as_posix(), path


def bundle_entries(
    root: Path, bundle: Bundle, requirements_txt: str, config: Path | None
) -> dict[str, bytes]:
    """Archive name -> bytes for one bundle (the packages, root files, requirements, config).

    Raises:
        ConfigError: a root file the bundle needs is missing from the source tree.
    """
    entries = {name: path.read_bytes() for p in _PACKAGES for name, path in _package_files(root, p)}
    for name, source in bundle.root_files.items():
        path = root / source
        if not path.is_file():
            raise ConfigError(f"{bundle.file}: {source} is missing from {root}")
        entries[name] = path.read_bytes()
    entries["requirements.txt"] = requirements_txt.encode()
    if config is not None:
        entries[CONFIG_NAME] = config.read_bytes()
    return entries


def write_zip(path: Path, entries: Mapping[str, bytes]) -> None:
    """Write a deterministic zip: sorted names, fixed timestamps and modes, deflated."""
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = _FILE_MODE
            info.create_system = 3  # Unix, so the mode above is read as such
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, entries[name], compresslevel=9)
    tmp.replace(path)


def _installed_deps(requirements_txt: str) -> dict[str, bytes]:
    """``pip install --target`` of the requirements for Lambda's platform, as archive entries."""
    with tempfile.TemporaryDirectory(prefix="gpufan-deps-") as tmp:
        target = Path(tmp) / "site"
        reqs = Path(tmp) / "requirements.txt"
        reqs.write_text(requirements_txt)
        cmd = [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
            "--target", str(target), "--only-binary=:all:", *_LAMBDA_PIP_PLATFORM, "-r", str(reqs),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ConfigError(f"pip install --target failed: {done.stderr.strip()[-2000:]}")
        return {
            p.relative_to(target).as_posix(): p.read_bytes()
            for p in sorted(target.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts
        }


def _source_root() -> Path:
    import core

    root = Path(core.__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise ConfigError(
            f"gpufan package runs from a source checkout; no pyproject.toml in {root}"
        )
    return root


def _config(args: argparse.Namespace) -> Path | None:
    given: Path | None = getattr(args, "config", None)
    if given is not None:
        if not given.is_file():
            raise ConfigError(f"--config {given}: no such file")
        return given
    here = Path.cwd() / CONFIG_NAME
    return here if here.is_file() else None


def build(
    out: Path, *, config: Path | None = None, with_deps: bool = False, root: Path | None = None
) -> list[Path]:
    """Build every bundle into ``out``; returns the zip paths in ``BUNDLES`` order."""
    root = _source_root() if root is None else root
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for bundle in BUNDLES:
        reqs = requirements(pyproject, bundle.extra)
        entries = bundle_entries(root, bundle, reqs, config)
        if with_deps and bundle.extra == "aws":
            entries = {**_installed_deps(reqs), **entries}  # gpufan's own files win
        write_zip(out / bundle.file, entries)
        written.append(out / bundle.file)
    return written


def _describe(paths: Sequence[Path], config: Path | None) -> str:
    lines = [f"  {p}  ({p.stat().st_size:,} bytes)" for p in paths]
    note = f"with {config}" if config else f"without {CONFIG_NAME} (set GPUFAN_CONFIG yourself)"
    return "\n".join([f"built {len(paths)} bundles {note}:", *lines])


def run_package(args: argparse.Namespace) -> int:
    """Build the bundles into ``args.out``; 0 on success.

    Raises:
        ConfigError: not a source checkout, a missing source file or config, or pip failed.
    """
    config = _config(args)
    paths = build(args.out, config=config, with_deps=bool(getattr(args, "with_deps", False)))
    print(_describe(paths, config))
    return 0
