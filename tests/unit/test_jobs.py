"""The event-job runner over local storage and a recording data plane, and the control loop.

GIVEN input objects and manifests laid out by the jobs convention,
WHEN ``run_job`` is called for a key (once, or again as a re-delivered event),
THEN outputs and a result manifest land under results/<key>/<version>/, a bad input leaves an
error result and a permanent error, a transient failure leaves nothing and a retryable one.
"""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.config import Target
from core.errors import BadRequest, PermanentJobError, RetryableJobError, TargetUnavailable
from core.frontdoor.control import run_control_loop
from core.frontdoor.jobs import is_job_input, result_keys, run_job
from core.storage.local import LocalStorage
from core.wire.tensors import InferRequest, InferResponse, Tensor


@dataclass(frozen=True)
class _Report:
    """The typed report a front door attaches to its response (``core.wire.tensors.Report``)."""

    doc: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return self.doc


class Plane:
    """A DataPlane that doubles ``X`` (or raises ``fail``), recording every infer call."""

    def __init__(self, fail: Exception | None = None, label: str = "label") -> None:
        self.calls: list[tuple[str, InferRequest]] = []
        self.fail = fail
        self.label = label

    async def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        return {"name": model, "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 2]}]}

    async def infer(self, model: str, version: str | None, request: InferRequest) -> InferResponse:
        self.calls.append((model, request))
        if self.fail is not None:
            raise self.fail
        (x,) = (t.data for t in request.inputs if t.name == "X")
        return InferResponse(
            model,
            (Tensor("Y", x * 2), Tensor(self.label, np.arange(len(x), dtype=np.int64))),
            report=_Report({"shards": [{"items": len(x)}], "placement": {"usd": 0.0}}),
        )


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


X = np.arange(6, dtype=np.float32).reshape(3, 2)
MANIFEST = json.dumps({"model": "m", "parameters": {"slo_ms": 500}}).encode()


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path)


async def _result(store: LocalStorage, key: str) -> tuple[dict[str, Any], str, str]:
    version = (await store.get(key)).version
    result_key, outputs_key = result_keys(key, version)
    return json.loads((await store.get(result_key)).data), result_key, outputs_key


def test_only_inputs_start_jobs() -> None:
    assert is_job_input("jobs/a.npz") and is_job_input("jobs/a.npy") and is_job_input("a.json")
    assert not is_job_input("jobs/a.manifest.json")
    assert not is_job_input("results/jobs/a.npz/abc/result.json")
    assert not is_job_input("jobs/a.csv")


async def test_npz_job_writes_outputs_then_an_ok_result(store: LocalStorage) -> None:
    plane = Plane()
    await store.put("jobs/a.manifest.json", MANIFEST)
    await store.put("jobs/a.npz", _npz(X=X))

    outcome = await run_job(plane, store, "jobs/a.npz")

    result, result_key, outputs_key = await _result(store, "jobs/a.npz")
    assert (outcome.status, outcome.result_key, outcome.outputs_key) == (
        "ok",
        result_key,
        outputs_key,
    )
    assert result["status"] == "ok" and result["model"] == "m"
    assert result["input"]["etag"] == (await store.get("jobs/a.npz")).etag
    assert result["outputs"]["Y"] == {"datatype": "FP32", "shape": [3, 2]}
    assert result["report"]["shards"] == [{"items": 3}]
    assert set(result["timings_ms"]) == {"read", "infer", "write"}
    with np.load(io.BytesIO((await store.get(outputs_key)).data)) as out:
        np.testing.assert_array_equal(out["Y"], X * 2)
    ((_, request),) = plane.calls
    assert request.parameters["slo_ms"] == 500


@pytest.mark.parametrize("name", ["file", "allow_pickle"])
async def test_outputs_named_like_savez_keywords_are_kept(store: LocalStorage, name: str) -> None:
    await store.put("jobs/a.manifest.json", MANIFEST)
    await store.put("jobs/a.npz", _npz(X=X))
    outcome = await run_job(Plane(label=name), store, "jobs/a.npz")
    assert outcome.outputs_key is not None
    with np.load(io.BytesIO((await store.get(outcome.outputs_key)).data)) as out:
        assert sorted(out.files) == sorted(["Y", name])
        np.testing.assert_array_equal(out[name], np.arange(3))


async def test_redelivery_of_a_done_version_skips_and_a_new_version_runs(
    store: LocalStorage,
) -> None:
    plane = Plane()
    await store.put("jobs/a.manifest.json", MANIFEST)
    await store.put("jobs/a.npz", _npz(X=X))
    first = await run_job(plane, store, "jobs/a.npz")

    again = await run_job(plane, store, "jobs/a.npz")
    await store.put("jobs/a.npz", _npz(X=X + 1))
    newer = await run_job(plane, store, "jobs/a.npz")

    assert again.status == "done" and again.result_key == first.result_key
    assert newer.status == "ok" and newer.result_key != first.result_key
    assert len(plane.calls) == 2


async def test_npy_takes_the_manifest_from_metadata_and_the_input_name_from_the_model(
    store: LocalStorage,
) -> None:
    plane = Plane()
    await store.put("jobs/b.npy", _npy(X), metadata={"gpufan-manifest": MANIFEST.decode()})

    outcome = await run_job(plane, store, "jobs/b.npy")

    assert outcome.status == "ok"
    ((_, request),) = plane.calls
    assert [t.name for t in request.inputs] == ["X"]


async def test_json_request_keeps_its_own_parameters_over_the_manifests(
    store: LocalStorage,
) -> None:
    plane = Plane()
    body = {
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}],
        "parameters": {"slo_ms": 50},
    }
    await store.put("jobs/c.manifest.json", b'{"model": "m", "parameters": {"slo_ms": 9, "a": 1}}')
    await store.put("jobs/c.json", json.dumps(body).encode())

    await run_job(plane, store, "jobs/c.json")

    ((_, request),) = plane.calls
    assert dict(request.parameters) == {"slo_ms": 50, "a": 1}


@pytest.mark.parametrize(
    ("manifest", "data", "fail", "match"),
    [
        (None, _npz(X=X), None, "no manifest for jobs/d.npz"),
        (b"{not json", _npz(X=X), None, "not valid JSON"),
        (b'{"model": "m", "slo_ms": 5}', _npz(X=X), None, "slo_ms: Extra inputs"),
        (MANIFEST, b"garbage", None, "not a readable numpy file"),
        (MANIFEST, _npz(X=X), BadRequest("shape [3, 2] does not match"), "does not match"),
    ],
)
async def test_bad_input_writes_an_error_result_and_raises_permanent(
    store: LocalStorage, manifest: bytes | None, data: bytes, fail: Exception | None, match: str
) -> None:
    if manifest is not None:
        await store.put("jobs/d.manifest.json", manifest)
    await store.put("jobs/d.npz", data)

    with pytest.raises(PermanentJobError, match=match) as raised:
        await run_job(Plane(fail), store, "jobs/d.npz")

    result, result_key, _ = await _result(store, "jobs/d.npz")
    assert raised.value.result_key == result_key and not raised.value.retryable
    assert result["status"] == "error" and match in result["error"]


async def test_transient_failure_writes_nothing_and_raises_retryable(store: LocalStorage) -> None:
    await store.put("jobs/e.manifest.json", MANIFEST)
    await store.put("jobs/e.npz", _npz(X=X))

    with pytest.raises(RetryableJobError, match="w0 answered 503") as raised:
        await run_job(Plane(TargetUnavailable("w0 answered 503")), store, "jobs/e.npz")

    assert raised.value.retryable and raised.value.result_key is None
    version = (await store.get("jobs/e.npz")).version
    for key in result_keys("jobs/e.npz", version):
        assert not await store.exists(key)


async def test_events_for_manifests_results_and_gone_inputs(store: LocalStorage) -> None:
    plane = Plane()

    ignored = await run_job(plane, store, "jobs/a.manifest.json")

    assert ignored.status == "ignored" and not plane.calls
    with pytest.raises(PermanentJobError, match="gone"):
        await run_job(plane, store, "jobs/deleted.npz")


class Backend:
    def __init__(self, answers: dict[str, bool | None]) -> None:
        self.answers = answers  # None: never answers

    async def ready(self, target: Target) -> bool:
        answer = self.answers[target.name]
        if answer is None:
            await asyncio.sleep(10)
        return bool(answer)


async def test_control_loop_sweeps_every_targets_health() -> None:
    targets = [Target(name=n, backend="fake") for n in ("up", "down", "silent")]
    backends: Any = {"fake": Backend({"up": True, "down": False, "silent": None})}

    summary = await run_control_loop(targets, backends, timeout_s=0.05)

    assert (summary["ready"], summary["total"]) == (1, 3)
    by_name = {t["name"]: t for t in summary["targets"]}
    assert by_name["up"]["ready"] and not by_name["down"]["ready"]
    assert "no answer within 0.05 s" in by_name["silent"]["error"]
