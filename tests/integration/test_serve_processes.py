"""``gpufan serve --processes N``: several front-door processes on one port through SO_REUSEPORT.

GIVEN the embedded default served by two front-door processes over one local worker,
WHEN clients connect afresh for every request, and /metrics is scraped on fresh connections,
THEN two sockets listen on the one port (and two on the gRPC port), both processes answer (their
request ids carry two process prefixes), every scrape, whichever process takes it, counts every
request of both, gRPC answers on the shared port, every answer equals a direct onnxruntime run,
and SIGTERM to the parent ends them all and removes their metrics folder.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as tgrpc

from tests.integration.conftest import free_port

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux /proc")


def _listeners(port: int) -> int:
    """Sockets listening on ``port`` (IPv4 and IPv6 tables: grpcio binds the latter)."""
    rows = [r for t in ("tcp", "tcp6") for r in Path(f"/proc/net/{t}").read_text().splitlines()[1:]]
    fields = (row.split() for row in rows)
    return sum(1 for f in fields if int(f[1].split(":")[1], 16) == port and f[3] == "0A")


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _wait_for_listeners(port: int, n: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _listeners(port) < n:
        assert time.monotonic() < deadline, f"{_listeners(port)} of {n} sockets on {port}"
        time.sleep(0.1)


def test_two_front_door_processes_share_the_port_and_both_answer(
    digits: np.ndarray, direct: Callable[[np.ndarray], dict[str, np.ndarray]]
) -> None:
    grpc_port = free_port()
    cmd = [sys.executable, "-m", "core.cli", "serve", "--workers", "1", "--port", "0",
           "--processes", "2", "--grpc-port", str(grpc_port)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        deadline, seen, url = time.monotonic() + 60, "", None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen += line
            if m := re.search(r"listening on (http://\S+) .* in 2 processes", line):
                url = m.group(1)
            elif not line:
                break
        assert url, f"gpufan serve did not start:\n{seen}"
        port = int(url.rsplit(":", 1)[1])
        assert _listeners(port) == 2
        _wait_for_listeners(grpc_port, 2)  # the child's gRPC server may still be starting
        workers_and_front_doors = _children(proc.pid)  # the local worker and the forked door

        # 61, a fresh connection each: the kernel spreads them over the two sockets, and an odd
        # total means the two processes' counts differ, so a scrape tells them apart
        prefixes = set()
        for i in range(61):
            x = digits[i * 7 : (i + 1) * 7]
            tensor = {"name": "X", "datatype": "FP32", "shape": list(x.shape),
                      "data": x.ravel().tolist()}  # fmt: skip
            response = httpx.post(
                f"{url}/v2/models/digits/infer",
                content=orjson.dumps({"inputs": [tensor]}),
                headers={"connection": "close"},
                timeout=30,
            )
            assert response.status_code == 200, response.text
            got = {o["name"]: np.array(o["data"]) for o in response.json()["outputs"]}
            np.testing.assert_array_equal(got["label"], direct(x)["label"])
            report = orjson.loads(response.json()["parameters"]["gpufan_report"])
            prefixes.add(report["request_id"][:12])  # 6 random bytes per process, then a serial
        assert len(prefixes) == 2, prefixes  # the kernel spread them over both processes

        # whichever process takes a scrape sums both: every scrape counts all 61
        for _ in range(12):
            text = httpx.get(f"{url}/metrics", headers={"connection": "close"}).text
            m = re.search(r'^gpufan_requests_total\{model="digits",outcome="ok"\} (\S+)$', text,
                          re.MULTILINE)  # fmt: skip
            assert m is not None and float(m.group(1)) == 61, text[:2000]
            assert 'gpufan_frontdoor_processes{state="answered"} 2.0' in text
            assert 'gpufan_frontdoor_processes{state="missing"} 0.0' in text
            assert 'gpufan_request_seconds_count{model="digits"} 61.0' in text  # histograms too
        for _ in range(10):  # gRPC on the shared fixed port answers from either process
            client = tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            x = digits[:5]
            inp = tgrpc.InferInput("X", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            got = client.infer("digits", [inp]).as_numpy("label")
            client.close()
            np.testing.assert_array_equal(got, direct(x)["label"])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    time.sleep(0.5)
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers_and_front_doors)
    assert not list(Path(tempfile.gettempdir()).glob(f"gpufan-metrics-*/{proc.pid}.sock"))
