"""``gpufan package --out dist``: the function bundles that ``infra/terraform`` deploys.

Three zips, built outside Terraform so its plan only sees a file whose hash changes when the code
does (every entry has a fixed timestamp and mode, entries are sorted)::

    lambda.zip              core/, functions/, requirements.txt [, gpufan.yaml]
                            handlers functions.aws.handler.{http,sqs,schedule}_handler
    gcf-source.zip          the same, plus main.py = functions/gcp/main.py at the root
    azure-functionapp.zip   the same, plus function_app.py and host.json at the root

and beside each a manifest, ``<zip>.json``: the platform it was built for, whether its
dependencies are in it, its sizes and the resolved package versions. The AWS module reads
``lambda.zip.json`` and refuses a bundle built for another runtime or architecture.

A root ``main.py`` (not ``GOOGLE_FUNCTION_SOURCE=functions/gcp/main.py``) is what puts the bundle
root on ``sys.path`` under functions-framework, which appends the entry file's own folder: from
``functions/gcp/`` the ``core`` and ``functions`` packages would not import. Azure's indexer reads
``function_app.py`` from the app root (``functions/README.md``).

``requirements.txt`` lists the front door's dependencies (the base set: no inference runtime) and
the cloud's extra from ``pyproject.toml``. Cloud Functions and Azure's remote build install it;
Lambda installs nothing. With ``--with-deps`` each bundle is resolved by pip for its own platform
(``core.cli.platforms``): the Lambda zip gets the wheels themselves (``pip install --target``) and
is held to Lambda's 250 MB unzipped limit; the other two get ``requirements.txt`` pinned to the
versions pip resolved for their runtime (``pip install --dry-run --report``), so a remote build
installs what was checked here. Without it, Lambda's dependencies come from a layer (the module's
``lambda_layers``).

``gpufan.yaml`` goes in when ``args.config`` names it or the current folder has one; the
modules point ``GPUFAN_CONFIG`` at it.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import json
import py_compile
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.cli.platforms import (
    DEFAULT_PLATFORMS,
    LAMBDA_LIMIT_UNZIPPED_BYTES,
    Platform,
    azure_platform,
    foreign_binaries,
    gcf_platform,
    lambda_platform,
)
from core.errors import ConfigError

__all__ = [
    "BUNDLES",
    "Built",
    "Bundle",
    "Resolved",
    "build",
    "bundle_entries",
    "bytecode",
    "check_lambda_size",
    "manifest",
    "pinned_requirements",
    "requirements",
    "run_package",
    "write_zip",
]

_PACKAGES = ("core", "functions")  # what every front door imports
_SKIP_DIRS = frozenset({"__pycache__"})
_SKIP_SUFFIXES = frozenset({".pyc", ".pyo"})
# ZIP's epoch (MS-DOS dates start in 1980): a fixed stamp keeps the archive's bytes, and so
# Terraform's source hash, a function of the contents alone.
_EPOCH = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o100644 << 16  # regular file, rw-r--r--, in the Unix half of external_attr
CONFIG_NAME = "gpufan.yaml"
_LAMBDA_TASK_ROOT = "/var/task"  # where Lambda extracts the zip
# Models run in workers; a front door that resolved one of these would carry ~100 MB it never uses.
_INFERENCE_RUNTIMES = frozenset({"onnxruntime", "onnxruntime-gpu"})


@dataclass(frozen=True)
class Bundle:
    """One zip: its cloud's extra in ``pyproject.toml``, files copied to the archive root, and
    whether its dependencies travel in it (``vendored``) or are installed by the platform."""

    file: str
    extra: str
    root_files: Mapping[str, str] = field(default_factory=dict)  # archive name -> source path
    vendored: bool = False


BUNDLES = (
    Bundle("lambda.zip", "aws", vendored=True),
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


@dataclass(frozen=True)
class Resolved:
    """What pip chose for one platform: name -> version, and the installed files (vendored)."""

    packages: Mapping[str, str]
    files: Mapping[str, bytes] = field(default_factory=dict)


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


def pinned_requirements(resolved: Resolved, platform: Platform) -> str:
    """``requirements.txt`` pinned to what pip resolved for ``platform``, one ``name==version``
    a line, sorted: the platform's build then installs exactly the checked set."""
    lines = [f"{name}=={version}" for name, version in sorted(resolved.packages.items())]
    header = f"# resolved by gpufan package for {platform.describe()}"
    return "\n".join([header, *lines]) + "\n"


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
            zf.writestr(
                info, entries[name], compresslevel=6
            )  # zlib's default: 3x faster than 9 for 0.4% more
    tmp.replace(path)


def _top_level_sizes(entries: Mapping[str, bytes]) -> list[tuple[str, int]]:
    sizes: dict[str, int] = {}
    for name, data in entries.items():
        top = name.split("/", 1)[0]
        sizes[top] = sizes.get(top, 0) + len(data)
    return sorted(sizes.items(), key=lambda kv: -kv[1])


def check_lambda_size(
    entries: Mapping[str, bytes], limit: int = LAMBDA_LIMIT_UNZIPPED_BYTES
) -> int:
    """The unzipped size of a Lambda bundle; refused when over Lambda's limit.

    Raises:
        ConfigError: over ``limit`` bytes, naming the largest top-level entries.
    """
    total = sum(len(data) for data in entries.values())
    if total > limit:
        largest = ", ".join(
            f"{name} {size / 1e6:.1f} MB" for name, size in _top_level_sizes(entries)[:5]
        )
        raise ConfigError(
            f"lambda.zip would unzip to {total:,} bytes, over Lambda's limit of {limit:,} "
            f"(250 MB, layers included); largest: {largest}"
        )
    return total


def manifest(
    bundle: Bundle,
    platform: Platform,
    resolved: Resolved | None,
    entries: Mapping[str, bytes],
    zip_bytes: bytes,
) -> dict[str, object]:
    """The ``<zip>.json`` beside a bundle: what it was built for and what it holds."""
    if resolved is None:
        dependencies = "requirements"  # ranges: a layer or the platform's build resolves them
    else:
        dependencies = "bundled" if bundle.vendored else "pinned"
    return {
        "bundle": bundle.file,
        "platform": platform.as_json(),
        "dependencies": dependencies,
        "packages": dict(sorted(resolved.packages.items())) if resolved else {},
        "zip_bytes": len(zip_bytes),
        "unzipped_bytes": sum(len(data) for data in entries.values()),
        "bytecode": any(name.endswith(".pyc") for name in entries),
        "sha256": hashlib.sha256(zip_bytes).hexdigest(),
    }


def _report_packages(report: Mapping[str, object]) -> dict[str, str]:
    installs = report.get("install")
    if not isinstance(installs, list):
        raise ConfigError("pip's --report has no install list")
    # PEP 503's normalised names, so "aws_lambda_powertools" and "ml-dtypes" read alike.
    return {
        re.sub(r"[-_.]+", "-", str(i["metadata"]["name"])).lower(): str(i["metadata"]["version"])
        for i in installs
    }


def _resolve(requirements_txt: str, platform: Platform, *, install: bool) -> Resolved:
    """pip's resolution of the requirements for ``platform``; the installed files when ``install``.

    Raises:
        ConfigError: pip failed (no wheel for the platform, say), or it picked an inference
            runtime or a binary for another CPU.
    """
    with tempfile.TemporaryDirectory(prefix="gpufan-deps-") as tmp:
        target, reqs, report = (
            Path(tmp) / "site",
            Path(tmp) / "requirements.txt",
            Path(tmp) / "r.json",
        )
        reqs.write_text(requirements_txt)
        mode = ["--target", str(target)] if install else ["--dry-run", "--target", str(target)]
        cmd = [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", *mode,
            "--report", str(report), *platform.pip_args(), "-r", str(reqs),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ConfigError(
                f"pip could not resolve the requirements for {platform.describe()}: "
                f"{done.stderr.strip()[-2000:]}"
            )
        packages = _report_packages(json.loads(report.read_text()))
        runtimes = sorted(_INFERENCE_RUNTIMES.intersection(packages))
        if runtimes:
            raise ConfigError(
                f"a front door must not carry an inference runtime; pip chose {runtimes}"
            )
        files = (
            {
                p.relative_to(target).as_posix(): p.read_bytes()
                for p in sorted(target.rglob("*"))
                if p.is_file() and "__pycache__" not in p.parts
            }
            if install
            else {}
        )
    foreign = foreign_binaries(files, platform.machine)
    if foreign:
        raise ConfigError(f"binaries for another CPU than {platform.machine}: {foreign[:5]}")
    return Resolved(packages, files)


def bytecode(entries: Mapping[str, bytes], platform: Platform, where: str) -> dict[str, bytes]:
    """``__pycache__`` entries for every module, when this interpreter is the platform's Python.

    Lambda's ``/var/task`` is read-only, so a bundle without bytecode is compiled anew on every
    cold start (the handler's import took 2.6x as long without it, .ci/bundles.py). The files are
    unchecked-hash pycs: valid whatever mtime the platform gives the extracted sources, identical
    from build to build, and naming ``where`` as their path in tracebacks. Another Python's
    bytecode would be ignored there, so none is made (``manifest`` says so).
    """
    if f"{sys.version_info.major}.{sys.version_info.minor}" != platform.python:
        return {}
    with tempfile.TemporaryDirectory(prefix="gpufan-pyc-") as tmp:
        for name, data in entries.items():
            if name.endswith(".py"):
                path = Path(tmp) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        compileall.compile_dir(
            tmp,
            quiet=2,
            stripdir=tmp,
            prependdir=where,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )  # a module that does not compile (a test fixture, say) is left without bytecode
        return {
            p.relative_to(tmp).as_posix(): p.read_bytes() for p in sorted(Path(tmp).rglob("*.pyc"))
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


@dataclass(frozen=True)
class Built:
    """One bundle on disk, what it was built for, and its manifest."""

    path: Path
    platform: Platform
    manifest: Mapping[str, object]

    def describe(self) -> str:
        m = self.manifest
        line = (
            f"  {self.path}  ({m['zip_bytes']:,} bytes, {m['unzipped_bytes']:,} unzipped; "
            f"{self.platform.runtime} {self.platform.architecture}; "
            f"dependencies {m['dependencies']}"
        )
        if m["dependencies"] == "bundled" and not m["bytecode"]:
            line += (
                f"; no bytecode: run gpufan package with Python {self.platform.python} to ship "
                "it (cold starts import faster)"
            )
        return line + ")"


def build(
    out: Path,
    *,
    config: Path | None = None,
    with_deps: bool = False,
    platforms: Mapping[str, Platform] = DEFAULT_PLATFORMS,
    root: Path | None = None,
) -> list[Built]:
    """Build every bundle (and its manifest) into ``out``, in ``BUNDLES`` order.

    Raises:
        ConfigError: a missing source file, pip failed, or the Lambda bundle is over its limit.
    """
    root = _source_root() if root is None else root
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    out.mkdir(parents=True, exist_ok=True)
    built = []
    for bundle in BUNDLES:
        platform = platforms[bundle.extra]
        reqs = requirements(pyproject, bundle.extra)
        resolved = _resolve(reqs, platform, install=bundle.vendored) if with_deps else None
        if resolved is not None:
            reqs = pinned_requirements(resolved, platform)
        entries = bundle_entries(root, bundle, reqs, config)
        if resolved is not None and bundle.vendored:
            entries = {**resolved.files, **entries}  # gpufan's own files win
            entries |= bytecode(entries, platform, _LAMBDA_TASK_ROOT)
        if bundle.extra == "aws":
            check_lambda_size(entries)
        write_zip(out / bundle.file, entries)
        facts = manifest(bundle, platform, resolved, entries, (out / bundle.file).read_bytes())
        (out / f"{bundle.file}.json").write_text(json.dumps(facts, indent=2) + "\n")
        built.append(Built(out / bundle.file, platform, facts))
    return built


def _describe(built: Sequence[Built], config: Path | None) -> str:
    note = f"with {config}" if config else f"without {CONFIG_NAME} (set GPUFAN_CONFIG yourself)"
    return "\n".join([f"built {len(built)} bundles {note}:", *(b.describe() for b in built)])


def run_package(args: argparse.Namespace) -> int:
    """Build the bundles into ``args.out``; 0 on success.

    Raises:
        ConfigError: not a source checkout, a missing source file or config, an unknown runtime,
            pip failed, or the Lambda bundle is over Lambda's limit.
    """
    config = _config(args)
    platforms = {
        "aws": lambda_platform(args.lambda_runtime, args.lambda_architecture),
        "gcp": gcf_platform(args.gcf_runtime),
        "azure": azure_platform(args.azure_python),
    }
    built = build(args.out, config=config, with_deps=bool(args.with_deps), platforms=platforms)
    print(_describe(built, config))
    return 0
