"""The pure parts of ``gpufan package``: size limit, pinned requirements, manifest, bytecode.

GIVEN bundle entries and what pip resolved,
WHEN the Lambda size check, the pinned requirements, the manifest or the bytecode step run,
THEN an oversize bundle is refused naming its largest parts, pins are exact and sorted, the
manifest says what the bundle holds, and the bytecode loads without its source's mtime, names
Lambda's path and is identical from build to build.
"""

from __future__ import annotations

import importlib.util
import marshal
import sys
import zipfile
from pathlib import Path

import pytest

from core.cli.package import (
    BUNDLES,
    Resolved,
    bytecode,
    check_lambda_size,
    manifest,
    pinned_requirements,
)
from core.cli.platforms import Platform, lambda_platform
from core.errors import ConfigError

HERE = f"{sys.version_info.major}.{sys.version_info.minor}"
LAMBDA = next(b for b in BUNDLES if b.extra == "aws")


def test_an_oversize_lambda_bundle_is_refused_naming_its_largest_parts() -> None:
    entries = {"numpy/a.so": bytes(600), "numpy/b.so": bytes(300), "core/x.py": bytes(150)}
    assert check_lambda_size(entries, limit=1050) == 1050
    with pytest.raises(ConfigError) as e:
        check_lambda_size(entries, limit=1000)
    assert "1,050 bytes, over Lambda's limit of 1,000" in str(e.value)
    assert str(e.value).index("numpy") < str(e.value).index("core")


def test_pinned_requirements_are_exact_and_sorted() -> None:
    platform = lambda_platform("python3.12", "arm64")
    text = pinned_requirements(Resolved({"numpy": "2.4.6", "aiohttp": "3.14.5"}), platform)
    header, *pins = text.splitlines()
    assert header.startswith("# resolved by gpufan package for aws python3.12 arm64")
    assert pins == ["aiohttp==3.14.5", "numpy==2.4.6"]


def test_manifest_says_what_the_bundle_holds() -> None:
    platform = lambda_platform("python3.12", "x86_64")
    entries = {"core/x.py": b"x = 1\n", "core/__pycache__/x.cpython-312.pyc": b"pyc"}
    facts = manifest(LAMBDA, platform, Resolved({"numpy": "2.4.6"}), entries, b"zipbytes")
    assert facts["dependencies"] == "bundled" and facts["bytecode"] is True
    assert facts["platform"] == platform.as_json()
    assert (facts["zip_bytes"], facts["unzipped_bytes"]) == (8, 9)
    plain = manifest(LAMBDA, platform, None, {"core/x.py": b"x = 1\n"}, b"z")
    assert (plain["dependencies"], plain["packages"], plain["bytecode"]) == (
        "requirements",
        {},
        False,
    )


def _here() -> Platform:
    return Platform("aws", f"python{HERE}", "x86_64", HERE, (2, 34), "x86_64")


def test_bytecode_is_unchecked_deterministic_and_names_lambdas_path(tmp_path: Path) -> None:
    entries = {"pkg/__init__.py": b"", "pkg/mod.py": b"VALUE = 40 + 2\n", "data.txt": b"x"}
    first, second = bytecode(entries, _here(), "/var/task"), bytecode(entries, _here(), "/var/task")
    assert first == second
    tag = sys.implementation.cache_tag
    assert set(first) == {f"pkg/__pycache__/__init__.{tag}.pyc", f"pkg/__pycache__/mod.{tag}.pyc"}
    pyc = first[f"pkg/__pycache__/mod.{tag}.pyc"]
    assert int.from_bytes(pyc[4:8], "little") == 0b01  # hash-based, not checked against source
    assert marshal.loads(pyc[16:]).co_filename == "/var/task/pkg/mod.py"
    # Extracted with the zip's 1980 stamps, the bytecode is used as it is, never checked against
    # the source (here changed after the build, to tell which of the two ran).
    bundle = tmp_path / "b.zip"
    with zipfile.ZipFile(bundle, "w") as zf:
        for name, data in {**entries, **first}.items():
            zf.writestr(name, data)
    with zipfile.ZipFile(bundle) as zf:
        zf.extractall(tmp_path / "x")
    (tmp_path / "x" / "pkg" / "mod.py").write_text("VALUE = 0\n")
    spec = importlib.util.spec_from_file_location("pkg.mod", tmp_path / "x" / "pkg" / "mod.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.VALUE == 42


def test_no_bytecode_for_another_python() -> None:
    other = Platform("aws", "python3.99", "x86_64", "3.99", (2, 34), "x86_64")
    assert bytecode({"m.py": b"x = 1\n"}, other, "/var/task") == {}
