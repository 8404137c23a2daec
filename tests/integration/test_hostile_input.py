"""A client's mistakes, sent as an attacker would, are 4xx answers naming the problem, fast.

GIVEN a real ``gpufan worker`` serving ``digits`` and a real ``gpufan serve`` in front of it,
WHEN each hostile request of issue 13's table arrives over a socket (shapes whose element count
overflows int64, BYTES tensors declaring 2**40 or 2**27 elements in a few bytes, FP32 1e39,
integers beyond INT64, 10,000 unexpected inputs, PUT on a GET route),
THEN each gets its 4xx within 1 s with a short message naming the tensor and the problem (405
with ``Allow``), the worker's memory does not grow with what a request merely declares, NaN and
infinity in binary inputs come back exact in JSON (never ``null``) as tritonclient reads them,
and the log lines of both processes carry a timestamp and a level.
"""

from __future__ import annotations

import http.client
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
import yaml

from core.frontdoor.workers import WorkerPool
from tests.integration.conftest import served_front_door

SERVERS = ["worker", "front door"]
INFER = "/v2/models/digits/infer"
ONE_SECOND = 1.0
RSS_GROWTH_BYTES = 100 << 20


@dataclass
class Served:
    urls: dict[str, str]
    pool: WorkerPool
    front_door_log: list[bytes]


@pytest.fixture(scope="module")
def served(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with WorkerPool(demo_repo, 1) as pool:
        config = {
            "models": [{"name": "digits", "repository": str(demo_repo)}],
            "targets": [{"name": "w0", "backend": "http", "endpoint": pool.endpoints[0]}],
        }
        path = tmp_path_factory.mktemp("hostile") / "gpufan.yaml"
        path.write_text(yaml.safe_dump(config))
        log: list[bytes] = []
        with served_front_door(path, log) as url:
            yield Served({"worker": pool.endpoints[0], "front door": url}, pool, log)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    @property
    def error(self) -> str:
        message: str = orjson.loads(self.body)["error"]
        return message


def _send(url: str, method: str, path: str, body: bytes = b"", **headers: str) -> Reply:
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname or "", where.port, timeout=30)
    try:
        started = time.perf_counter()
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        data = response.read()
        seconds = time.perf_counter() - started
        return Reply(response.status, dict(response.getheaders()), data, seconds)
    finally:
        conn.close()


def _json(*inputs: dict[str, object]) -> tuple[bytes, dict[str, str]]:
    return orjson.dumps({"inputs": list(inputs)}), {"Content-Type": "application/json"}


def _binary(tensor: dict[str, object], blob: bytes) -> tuple[bytes, dict[str, str]]:
    params = {"binary_data_size": len(blob)}
    header = orjson.dumps({"inputs": [{**tensor, "parameters": params}]})
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + blob, headers


def _int64_json(value: int) -> tuple[bytes, dict[str, str]]:
    """An INT64 tensor holding ``value``, by hand: orjson writes no integer beyond 64 bits."""
    text = f'{{"inputs": [{{"name": "X", "datatype": "INT64", "shape": [1], "data": [{value}]}}]}}'
    return text.encode(), {"Content-Type": "application/json"}


_X = {"name": "X", "datatype": "FP32", "shape": [1, 64]}
_BLOB = b"\x05\x00\x00\x00hello"  # one BYTES element

# (case, body and headers, status, what the message says)
CASES = [
    ("shape-overflow-json", _json({**_X, "shape": [2**32, 2**32], "data": []}), 400,
     "tensor 'X': shape [4294967296, 4294967296] is larger than any array can be"),
    ("shape-overflow-binary", _binary({**_X, "shape": [2**63, 2]}, b""), 400,
     "tensor 'X': shape [9223372036854775808, 2] is larger than any array can be"),
    ("bytes-2**40", _binary({"name": "X", "datatype": "BYTES", "shape": [2**40]}, _BLOB), 400,
     "tensor 'X': 1,099,511,627,776 BYTES elements need at least 4,398,046,511,104 bytes"),
    ("bytes-2**27", _binary({"name": "X", "datatype": "BYTES", "shape": [2**27]}, _BLOB), 400,
     "tensor 'X': 134,217,728 BYTES elements need at least 536,870,912 bytes"),
    ("fp32-1e39", _json({**_X, "data": [1e39] + [0.0] * 63}), 400,
     "tensor 'X': 1e+39 is out of range for FP32"),
    ("int64-2**64", _int64_json(2**64), 400,
     "tensor 'X': an integer beyond 64 bits is out of range for INT64"),
    ("int64-below-min", _int64_json(-(2**63) - 1), 400,
     "tensor 'X': an integer beyond 64 bits is out of range for INT64"),
    ("10000-unexpected-inputs", _json(
        {**_X, "data": [0.0] * 64},
        *({"name": f"u{i}", "datatype": "FP32", "shape": [1], "data": [0.0]}
          for i in range(10_000))),
     400, "unexpected input(s) ['u0', 'u1', 'u2', 'u3', 'u4', ...] (10,000 in all)"),
]  # fmt: skip


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize(
    ("case", "request_", "status", "message"), CASES, ids=[c[0] for c in CASES]
)
def test_hostile_requests_get_a_fast_4xx_naming_the_problem(
    served: Served,
    server: str,
    case: str,
    request_: tuple[bytes, dict[str, str]],
    status: int,
    message: str,
) -> None:
    body, headers = request_
    reply = _send(served.urls[server], "POST", INFER, body, **headers)
    assert (reply.status, message in reply.error) == (status, True), reply.error
    assert len(reply.error) < 300
    assert reply.seconds < ONE_SECOND


def _peak_rss_bytes(pid: int) -> int:
    """The process's high-water mark: memory taken and given back between samples counts."""
    status = Path(f"/proc/{pid}/status").read_text()
    kib = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert kib, status
    return int(kib.group(1)) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_a_bytes_bomb_does_not_grow_the_worker(served: Served) -> None:
    body, headers = _binary({"name": "X", "datatype": "BYTES", "shape": [2**27]}, _BLOB)
    pid = served.pool.pids[0]
    before = _peak_rss_bytes(pid)
    assert _send(served.urls["worker"], "POST", INFER, body, **headers).status == 400
    assert _peak_rss_bytes(pid) - before < RSS_GROWTH_BYTES


@pytest.mark.parametrize("server", SERVERS)
def test_a_405_carries_allow(served: Served, server: str) -> None:
    reply = _send(served.urls[server], "PUT", "/v2/health/live")
    assert (reply.status, reply.headers.get("allow")) == (405, "GET")
    assert "PUT is not allowed on /v2/health/live; use GET" in reply.error
    assert reply.seconds < ONE_SECOND


@pytest.mark.parametrize("server", SERVERS)
def test_nonfinite_values_round_trip_through_json_outputs(
    served: Served,
    server: str,
    digits: np.ndarray,
    direct: Callable[[np.ndarray], dict[str, np.ndarray]],
) -> None:
    x = digits[:2].copy()
    x[0, :3] = [np.nan, np.inf, -np.inf]
    x[1, 0] = 1e38  # probabilities overflow to NaN
    client = triton.InferenceServerClient(urlsplit(served.urls[server]).netloc)
    try:
        tensor = triton.InferInput("X", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        outputs = [triton.InferRequestedOutput(n, binary_data=False) for n in direct(x)]
        result = client.infer("digits", [tensor], outputs=outputs)
    finally:
        client.close()
    doc = result.get_response()
    assert all(None not in np.ravel(o["data"]).tolist() for o in doc["outputs"]), doc
    for name, want in direct(x).items():
        np.testing.assert_array_equal(result.as_numpy(name), want)  # NaN equals NaN here


_LOG_LINE = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING uvicorn\.error: Invalid")


def _send_garbage(url: str) -> None:
    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        sock.recv(4096)


def _logged_line(lines: Callable[[], list[bytes]]) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(_LOG_LINE.match(line) for line in lines()):
            return True
        time.sleep(0.05)
    return False


def test_log_lines_carry_a_timestamp_and_a_level(served: Served) -> None:
    _send_garbage(served.urls["worker"])
    _send_garbage(served.urls["front door"])
    assert _logged_line(lambda: served.pool.stderr(0).encode().splitlines()), served.pool.stderr(0)
    assert _logged_line(lambda: list(served.front_door_log)), served.front_door_log
