"""``gpufan package``: the three function bundles Terraform deploys, built as a user would.

GIVEN a source checkout,
WHEN ``gpufan package --out DIR`` runs (a real ``python -m core.cli`` process),
THEN it writes lambda.zip, gcf-source.zip and azure-functionapp.zip with each runtime's entry file
at the expected place and a manifest beside each, no bundle asks for an inference runtime, the
Lambda zip imports ``functions.aws.handler`` through zipimport from a fresh interpreter, and a
second build is byte-identical (Terraform's hash moves only with code). (``--with-deps`` reaches
PyPI, so .ci/bundles.py runs it, not this file.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
BUNDLES = ("lambda.zip", "gcf-source.zip", "azure-functionapp.zip")


def _package(out: Path, cwd: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.cli", "package", "--out", str(out), *flags],
        cwd=cwd,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two builds of the same tree, the second with a gpufan.yaml in the working folder."""
    first, second = tmp_path_factory.mktemp("dist-a"), tmp_path_factory.mktemp("dist-b")
    plain = tmp_path_factory.mktemp("cwd-plain")
    done = _package(first, plain)
    assert done.returncode == 0, done.stderr
    assert "without gpufan.yaml" in done.stdout
    again = _package(second, plain)
    assert again.returncode == 0, again.stderr
    return first, second


def _names(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as zf:
        return set(zf.namelist())


def test_three_bundles_with_their_entry_files(builds: tuple[Path, Path]) -> None:
    dist, _ = builds
    for bundle in BUNDLES:
        names = _names(dist / bundle)
        assert {"core/config.py", "functions/_runtime.py", "requirements.txt"} <= names
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert "functions/aws/handler.py" in _names(dist / "lambda.zip")
    with zipfile.ZipFile(dist / "gcf-source.zip") as zf:
        assert zf.read("main.py") == (REPO / "functions/gcp/main.py").read_bytes()
        assert b"functions-framework" in zf.read("requirements.txt")
    with zipfile.ZipFile(dist / "azure-functionapp.zip") as zf:
        assert zf.read("function_app.py") == (REPO / "functions/azure/function_app.py").read_bytes()
        assert zf.read("host.json") == (REPO / "functions/azure/host.json").read_bytes()
        assert b"azure-functions" in zf.read("requirements.txt")


def test_lambda_requirements_are_the_base_and_aws_extra(builds: tuple[Path, Path]) -> None:
    with zipfile.ZipFile(builds[0] / "lambda.zip") as zf:
        requirements = zf.read("requirements.txt").decode().splitlines()
    assert any(r.startswith("aws-lambda-powertools") for r in requirements)
    assert any(r.startswith("pydantic") for r in requirements)
    assert not any(r.startswith(("gpufan", "azure-", "google-")) for r in requirements)


def test_no_bundle_asks_for_an_inference_runtime(builds: tuple[Path, Path]) -> None:
    for bundle in BUNDLES:
        with zipfile.ZipFile(builds[0] / bundle) as zf:
            requirements = zf.read("requirements.txt").decode().lower()
        assert "onnxruntime" not in requirements, bundle
        assert "onnx>=" in requirements, bundle  # profiling a model from its graph


def test_each_bundle_has_its_manifest(builds: tuple[Path, Path]) -> None:
    dist = builds[0]
    for bundle in BUNDLES:
        facts = json.loads((dist / f"{bundle}.json").read_text())
        assert facts["bundle"] == bundle
        assert facts["dependencies"] == "requirements"  # no --with-deps: ranges, not wheels
        assert facts["zip_bytes"] == (dist / bundle).stat().st_size
    lam = json.loads((dist / "lambda.zip.json").read_text())["platform"]
    assert (lam["runtime"], lam["architecture"]) == ("python3.12", "x86_64")  # the module's


def test_the_platform_flags_reach_the_manifest_and_bad_ones_are_refused(tmp_path: Path) -> None:
    done = _package(tmp_path / "arm", tmp_path, "--lambda-architecture", "arm64")
    assert done.returncode == 0, done.stderr
    lam = json.loads((tmp_path / "arm" / "lambda.zip.json").read_text())["platform"]
    assert (lam["architecture"], lam["machine"]) == ("arm64", "aarch64")
    bad = _package(tmp_path / "bad", tmp_path, "--lambda-runtime", "python3.9")
    assert bad.returncode == 2
    assert "Lambda runtime 'python3.9' is not one of python3.11, python3.12" in bad.stderr


def test_builds_are_byte_identical(builds: tuple[Path, Path]) -> None:
    first, second = builds
    for bundle in BUNDLES:
        assert (first / bundle).read_bytes() == (second / bundle).read_bytes(), bundle
    with zipfile.ZipFile(first / "lambda.zip") as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}


def test_lambda_zip_imports_the_handlers_through_zipimport(builds: tuple[Path, Path]) -> None:
    """A fresh interpreter whose path is the zip first, then only the dev site-packages (the
    layer's stand-in): the handlers come from the zip, not from the checkout."""
    zip_path = builds[0] / "lambda.zip"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:] = [{str(zip_path)!r}, *{[p for p in sys.path if _stdlib(p)]!r},
                       {sysconfig.get_paths()["purelib"]!r}, {sysconfig.get_paths()["platlib"]!r}]
        import functions.aws.handler as handler
        assert handler.__file__.startswith({str(zip_path)!r}), handler.__file__
        assert type(handler.__loader__).__name__ == "zipimporter"
        for name in ("http_handler", "sqs_handler", "schedule_handler"):
            assert callable(getattr(handler, name)), name
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script],
        cwd=zip_path.parent,
        capture_output=True,
        text=True,
        timeout=120,
        env={"POWERTOOLS_METRICS_NAMESPACE": "gpufan", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def _stdlib(path: str) -> bool:
    stdlib = sysconfig.get_paths()["stdlib"]
    return bool(path) and path.startswith(stdlib) and "site-packages" not in path


def test_a_gpufan_yaml_in_the_working_folder_goes_in(tmp_path: Path) -> None:
    (tmp_path / "gpufan.yaml").write_text("targets: []\n")
    done = _package(tmp_path / "dist", tmp_path)
    assert done.returncode == 0, done.stderr
    for bundle in BUNDLES:
        with zipfile.ZipFile(tmp_path / "dist" / bundle) as zf:
            assert zf.read("gpufan.yaml") == b"targets: []\n"
