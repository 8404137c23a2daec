"""CI: build every function bundle as a user would, then run the Lambda one from its own files.

    python .ci/bundles.py OUT

1. Start one local worker (the dev environment's onnxruntime) and write a gpufan.yaml naming it.
2. ``gpufan package --with-deps --config`` that file, for Lambda x86_64 (the module's default
   runtime) and arm64: each Lambda bundle must hold no onnxruntime, stay under Lambda's 250 MB
   unzipped, and carry shared objects for its own CPU only; the Cloud Functions and Azure bundles'
   requirements must resolve for their runtimes (pip inside ``gpufan package``) and be pinned.
3. Unzip the x86_64 bundle into an empty folder and import the handler with a clean interpreter of
   the runtime's Python (``-I -S``: no site-packages, no PYTHONPATH, only the bundle and the
   standard library), timing the import; call ``http_handler`` with a real API Gateway HTTP API v2
   infer event and check every output equals a direct onnxruntime run exactly.

OUT/x86_64/lambda.zip is left for .ci/infra's moto apply. Exits non-zero on the first failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import yaml
from pythons import interpreter  # .ci/pythons.py

from core.cli.platforms import DEFAULT_PLATFORMS, LAMBDA_LIMIT_UNZIPPED_BYTES, foreign_binaries
from core.frontdoor.workers import WorkerPool
from gpu_containers import DEMO_REPOSITORY

REPO = Path(__file__).resolve().parents[1]
EVENT = REPO / "tests" / "events" / "apigw_http_v2_infer_json.json"
RUNTIME = DEFAULT_PLATFORMS["aws"].runtime  # python3.12
PYTHON = DEFAULT_PLATFORMS["aws"].python


def _package(python: str, out: Path, config: Path, *flags: str) -> None:
    """``gpufan package`` run by the runtime's Python, so that the bundle carries its bytecode
    (the command needs only the standard library and pip)."""
    cmd = [python, "-m", "core.cli", "package", "--with-deps", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    done = subprocess.run(
        [*cmd, "--config", str(config), *flags], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        sys.exit(f"gpufan package {' '.join(flags)} failed:\n{done.stderr[-4000:]}")
    print(f"   ({time.monotonic() - started:.0f} s)\n{done.stdout.rstrip()}")


def _check_manifests(out: Path, architecture: str) -> None:
    machine = {"x86_64": "x86_64", "arm64": "aarch64"}[architecture]
    lam = json.loads((out / "lambda.zip.json").read_text())
    assert lam["platform"]["runtime"] == RUNTIME, lam["platform"]
    assert lam["platform"]["architecture"] == architecture, lam["platform"]
    assert lam["dependencies"] == "bundled", lam["dependencies"]
    assert not any(p.startswith("onnxruntime") for p in lam["packages"]), lam["packages"]
    assert lam["unzipped_bytes"] < LAMBDA_LIMIT_UNZIPPED_BYTES, lam["unzipped_bytes"]
    assert lam["bytecode"], "no bytecode in the bundle"
    with zipfile.ZipFile(out / "lambda.zip") as zf:
        names = zf.namelist()
        assert not any(n.startswith("onnxruntime") for n in names)
        shared = {n: zf.read(n)[:20] for n in names if ".so" in n.rsplit("/", 1)[-1]}
    assert shared, "no shared objects: were the wheels installed?"
    assert not foreign_binaries(shared, machine), foreign_binaries(shared, machine)[:5]
    zipped, unzipped = lam["zip_bytes"] / 1e6, lam["unzipped_bytes"] / 1e6
    print(
        f"   lambda.zip {architecture}: {zipped:.1f} MB zipped, {unzipped:.1f} MB unzipped "
        f"(limit {LAMBDA_LIMIT_UNZIPPED_BYTES / 1e6:.0f}), {len(lam['packages'])} packages, "
        f"{len(shared)} shared objects all {machine}, no onnxruntime"
    )
    for bundle, extra in (("gcf-source.zip", "gcp"), ("azure-functionapp.zip", "azure")):
        facts = json.loads((out / f"{bundle}.json").read_text())
        assert facts["dependencies"] == "pinned", facts["dependencies"]
        assert facts["platform"] == DEFAULT_PLATFORMS[extra].as_json(), facts["platform"]
        assert not any(p.startswith("onnxruntime") for p in facts["packages"]), facts["packages"]
        with zipfile.ZipFile(out / bundle) as zf:
            pinned = zf.read("requirements.txt").decode().splitlines()[1:]
        assert pinned and all("==" in line for line in pinned), pinned[:5]
        print(
            f"   {bundle}: {len(pinned)} pinned requirements resolve for "
            f"{facts['platform']['runtime']}"
        )


_CLEAN = textwrap.dedent(
    """
    import importlib.util, json, sys, time
    bundle = sys.argv[1]
    sys.path.insert(0, bundle)
    started = time.perf_counter()
    import functions.aws.handler as handler
    import_s = time.perf_counter() - started
    assert handler.__file__.startswith(bundle), handler.__file__
    assert importlib.util.find_spec("onnxruntime") is None, "onnxruntime is importable"
    outside = sorted({m.__file__ for m in list(sys.modules.values())
                      if getattr(m, "__file__", None) and "site-packages" in m.__file__})
    assert not outside, outside[:5]

    class Context:
        function_name = "gpufan-http"
        memory_limit_in_mb = 1024
        invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:gpufan-http"
        aws_request_id = "ci-bundle-check"
        def get_remaining_time_in_millis(self):
            return 30_000

    event = json.load(open(sys.argv[2]))
    reply = handler.http_handler(event, Context())
    handler.runtime.close()
    print(json.dumps({"import_s": import_s, "reply": reply}))
    """
)


def _run_clean(python: str, bundle: Path, config: Path) -> tuple[float, dict[str, object]]:
    env = {
        "PATH": "/usr/bin:/bin",
        "GPUFAN_CONFIG": str(bundle / config.name),  # as the module sets it: the bundled file
        "POWERTOOLS_SERVICE_NAME": "gpufan",
        "POWERTOOLS_METRICS_NAMESPACE": "gpufan",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    done = subprocess.run(  # -B: no bytecode written, as on Lambda's read-only /var/task
        [python, "-I", "-S", "-B", "-c", _CLEAN, str(bundle), str(EVENT)],
        cwd=bundle,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        sys.exit(f"the handler from the unzipped bundle failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["import_s"]), result["reply"]


def _check_reply(reply: dict[str, object]) -> None:
    assert reply["statusCode"] == 200, reply
    body = reply["body"]
    assert isinstance(body, str) and not reply.get("isBase64Encoded"), reply.get("headers")
    outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
    request = json.loads(json.loads(EVENT.read_text())["body"])["inputs"][0]
    x = np.asarray(request["data"], dtype=np.float32).reshape(request["shape"])
    session = ort.InferenceSession(
        str(DEMO_REPOSITORY / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    want = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x}), strict=True))
    assert sorted(outputs) == sorted(want), (sorted(outputs), sorted(want))
    for name, expected in want.items():
        got = np.asarray(outputs[name]["data"], dtype=expected.dtype).reshape(
            outputs[name]["shape"]
        )
        np.testing.assert_array_equal(got, expected, err_msg=name)
    print(f"   http_handler answered the API Gateway v2 event: {sorted(want)} equal a direct run")


def main(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    python = interpreter(PYTHON)
    if python is None:
        sys.exit(f"no Python {PYTHON} on this machine to build and import the {RUNTIME} bundle")
    with WorkerPool(DEMO_REPOSITORY, 1) as pool:
        config = out / "gpufan.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "models": [{"name": "digits", "repository": str(DEMO_REPOSITORY)}],
                    "targets": [{"name": "w0", "backend": "http", "endpoint": pool.endpoints[0]}],
                }
            )
        )
        for architecture in ("x86_64", "arm64"):
            print(f"== bundles: gpufan package --with-deps, Lambda {RUNTIME} {architecture}")
            _package(python, out / architecture, config, "--lambda-architecture", architecture)
            _check_manifests(out / architecture, architecture)
        print(f"== bundles: the x86_64 handler, unzipped, in a clean {python} -I -S")
        unzipped = out / "unzipped"
        with zipfile.ZipFile(out / "x86_64" / "lambda.zip") as zf:
            zf.extractall(unzipped)
        import_s, reply = _run_clean(python, unzipped, config)
        _check_reply(reply)
        for cache in unzipped.rglob("__pycache__"):
            shutil.rmtree(cache)
        source_only_s, reply = _run_clean(python, unzipped, config)
        _check_reply(reply)
        print(
            f"   import functions.aws.handler: {import_s * 1000:.0f} ms with the bundle's "
            f"bytecode, {source_only_s * 1000:.0f} ms without it "
            f"(ratio={import_s / source_only_s:.2f}, same run)"
        )
    print("== bundles: ok")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
