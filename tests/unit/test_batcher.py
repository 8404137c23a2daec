"""Dynamic batching: coalescing, compatibility, oversize requests, failure isolation, stats.

The runner is a small honest fake: it computes ``y = 10 * x`` with numpy in the executor thread
and records the batch size of every call, so each test can see exactly which requests shared a
run. A real onnxruntime session behind the batcher is covered by the worker integration tests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from core.errors import Overloaded, TargetUnavailable
from gpu_containers.batcher import Batcher

pytestmark = pytest.mark.timeout(10)


class TimesTen:
    """``y = 10 * x``; fails a run whose input holds a NaN; ``delay_s`` keeps the thread busy."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[int] = []
        self.delay_s = delay_s
        self.threads: set[str] = set()

    def __call__(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        self.threads.add(threading.current_thread().name)
        x = inputs["x"]
        self.batches.append(x.shape[0])
        time.sleep(self.delay_s)
        if np.isnan(x).any():
            raise ValueError("NaN in the batch")
        outputs = {"y": x * 10, "n": np.full(x.shape[0], x.shape[0])}
        return {name: outputs[name] for name in output_names}  # as onnxruntime: only those asked


def _rows(start: int, n: int, width: int = 3) -> np.ndarray:
    return np.arange(start * width, (start + n) * width, dtype=np.float32).reshape(n, width)


async def test_concurrent_single_item_requests_share_runs_and_get_their_own_rows() -> None:
    runner = TimesTen()
    batcher = Batcher(runner, max_batch_size=8, max_queue_delay_us=50_000)
    xs = [_rows(i, 1) for i in range(20)]

    results = await asyncio.gather(*(batcher.submit({"x": x}, ["y"]) for x in xs))

    assert sum(runner.batches) == 20
    assert len(runner.batches) < 20
    assert max(runner.batches) == 8
    for x, out in zip(xs, results, strict=True):
        np.testing.assert_array_equal(out["y"], x * 10)
        assert list(out) == ["y"]
    await batcher.close()


async def test_a_full_batch_runs_without_waiting_for_the_delay() -> None:
    batcher = Batcher(TimesTen(), max_batch_size=4, max_queue_delay_us=5_000_000)
    started = time.perf_counter()

    await asyncio.gather(*(batcher.submit({"x": _rows(i, 1)}, ["y"]) for i in range(4)))

    assert time.perf_counter() - started < 1.0
    await batcher.close()


async def test_a_lone_request_on_an_idle_model_runs_at_once() -> None:
    runner = TimesTen()
    batcher = Batcher(runner, max_batch_size=64, max_queue_delay_us=2_000_000)
    started = time.perf_counter()

    await batcher.submit({"x": _rows(0, 1)}, ["y"])

    assert time.perf_counter() - started < 0.5  # not the 2 s delay
    assert runner.batches == [1]
    await batcher.close()


async def test_under_load_the_head_waits_at_most_the_queue_delay_for_more() -> None:
    runner = TimesTen()
    batcher = Batcher(runner, max_batch_size=64, max_queue_delay_us=20_000)
    started = time.perf_counter()

    await asyncio.gather(*(batcher.submit({"x": _rows(i, 1)}, ["y"]) for i in range(3)))

    assert 0.015 <= time.perf_counter() - started < 1.0
    assert runner.batches == [3]
    await batcher.close()


async def test_batches_are_cut_at_the_largest_preferred_size_the_queue_fills() -> None:
    runner = TimesTen(delay_s=0.05)  # the first run keeps the thread busy while the rest queue
    batcher = Batcher(
        runner, max_batch_size=16, max_queue_delay_us=100_000, preferred_batch_sizes=[4, 8]
    )
    first = asyncio.ensure_future(batcher.submit({"x": _rows(0, 1)}, ["y"]))
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    rest = [batcher.submit({"x": _rows(i, 1)}, ["y"]) for i in range(1, 14)]

    results = await asyncio.gather(first, *rest)

    # 13 queued behind the lone first: 8 at once (the largest preferred size, filled); the other
    # 5 wait the delay for 3 more, then run as 4 (preferred) and a lone 1 (at once).
    assert runner.batches == [1, 8, 4, 1]
    assert time.perf_counter() - started < 1.0
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["y"], _rows(i, 1) * 10)
    await batcher.close()


async def test_incompatible_shapes_dtypes_and_outputs_are_not_merged() -> None:
    runner = TimesTen()
    batcher = Batcher(runner, max_batch_size=64, max_queue_delay_us=20_000)
    requests = [
        ({"x": _rows(0, 1, width=3)}, ["y"]),
        ({"x": _rows(1, 2, width=4)}, ["y"]),
        ({"x": _rows(2, 1, width=3).astype(np.float64)}, ["y"]),
        ({"x": _rows(3, 1, width=3)}, ["y", "n"]),
        ({"x": _rows(4, 1, width=3)}, ["y"]),  # compatible with the first
    ]

    results = await asyncio.gather(*(batcher.submit(x, names) for x, names in requests))

    assert sorted(runner.batches) == [1, 1, 2, 2]
    for (x, names), out in zip(requests, results, strict=True):
        np.testing.assert_array_equal(out["y"], x["x"] * 10)
        assert out["y"].dtype == x["x"].dtype
        assert list(out) == names
    await batcher.close()


async def test_an_oversize_request_runs_alone_and_unsplit() -> None:
    runner = TimesTen(delay_s=0.01)
    batcher = Batcher(runner, max_batch_size=4, max_queue_delay_us=20_000)
    big = _rows(0, 10)

    results = await asyncio.gather(
        batcher.submit({"x": _rows(100, 1)}, ["y"]),
        batcher.submit({"x": big}, ["y"]),
        batcher.submit({"x": _rows(200, 1)}, ["y"]),
    )

    assert runner.batches == [2, 10]  # the two singles share a run; the big one runs alone
    np.testing.assert_array_equal(results[1]["y"], big * 10)
    await batcher.close()


async def test_an_exception_fails_exactly_the_requests_of_its_batch() -> None:
    runner = TimesTen()
    batcher = Batcher(runner, max_batch_size=2, max_queue_delay_us=50_000)
    bad = np.full((1, 3), np.nan, dtype=np.float32)
    inputs = [bad, _rows(1, 1), _rows(2, 1), _rows(3, 1)]

    results = await asyncio.gather(
        *(batcher.submit({"x": x}, ["y"]) for x in inputs), return_exceptions=True
    )

    assert runner.batches == [2, 2]
    assert [type(r) for r in results[:2]] == [ValueError, ValueError]
    np.testing.assert_array_equal(results[2]["y"], inputs[2] * 10)
    np.testing.assert_array_equal(results[3]["y"], inputs[3] * 10)
    # the batcher keeps serving after a failed run
    assert (await batcher.submit({"x": _rows(5, 1)}, ["y"]))["y"].shape == (1, 3)
    await batcher.close()


async def test_zero_delay_takes_only_what_is_already_queued() -> None:
    runner = TimesTen(delay_s=0.05)
    batcher = Batcher(runner, max_batch_size=64, max_queue_delay_us=0)

    first = asyncio.create_task(batcher.submit({"x": _rows(0, 1)}, ["y"]))
    await asyncio.sleep(0.01)  # the first request is running alone by now
    rest = [batcher.submit({"x": _rows(i, 1)}, ["y"]) for i in range(1, 4)]
    await asyncio.gather(first, *rest)

    assert runner.batches == [1, 3]  # the others queued while it ran and went together
    await batcher.close()


async def test_disabled_batching_runs_every_request_alone_on_one_thread() -> None:
    runner = TimesTen()
    batcher = Batcher(runner, max_batch_size=64, max_queue_delay_us=50_000, enabled=False)

    await asyncio.gather(*(batcher.submit({"x": _rows(i, 2)}, ["y"]) for i in range(6)))

    assert runner.batches == [2] * 6
    assert len(runner.threads) == 1
    assert batcher.runs == 6
    await batcher.close()


async def test_stats_report_throughput_busy_share_and_queue_depth() -> None:
    runner = TimesTen(delay_s=0.02)
    seen: list[tuple[int, int]] = []
    batcher = Batcher(
        runner, max_batch_size=4, max_queue_delay_us=0,
        observer=lambda items, waits: seen.append((items, len(waits))),
    )  # fmt: skip

    pending = [asyncio.create_task(batcher.submit({"x": _rows(i, 1)}, ["y"])) for i in range(9)]
    await asyncio.sleep(0.005)
    assert batcher.stats().queue_depth == 5  # four were queued at once and run, five wait
    await asyncio.gather(*pending)
    stats = batcher.stats()

    assert stats.queue_depth == 0
    assert 0.0 < stats.busy_fraction <= 1.0
    assert stats.items_per_s > 0
    assert seen == [(4, 4), (4, 4), (1, 1)]
    await batcher.close()


async def test_close_fails_queued_requests_and_refuses_new_ones() -> None:
    batcher = Batcher(TimesTen(delay_s=0.2), max_batch_size=1, max_queue_delay_us=0)
    tasks = [asyncio.create_task(batcher.submit({"x": _rows(i, 1)}, ["y"])) for i in range(3)]
    await asyncio.sleep(0.02)

    await batcher.close()
    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert all(isinstance(r, TargetUnavailable) for r in results)
    with pytest.raises(TargetUnavailable):
        await batcher.submit({"x": _rows(0, 1)}, ["y"])


async def test_two_instances_run_two_batches_at_once_each_on_its_own_thread() -> None:
    first, second = TimesTen(delay_s=0.3), TimesTen(delay_s=0.3)
    batcher = Batcher([first, second], max_batch_size=1, max_queue_delay_us=0)
    started = time.perf_counter()

    results = await asyncio.gather(*(batcher.submit({"x": _rows(i, 1)}, ["y"]) for i in range(4)))

    elapsed = time.perf_counter() - started
    assert first.batches == [1, 1] and second.batches == [1, 1]  # two each, in parallel
    assert 0.55 <= elapsed < 1.05  # two rounds of 0.3 s; one instance would take 1.2 s
    assert len(first.threads | second.threads) == 2
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["y"], _rows(i, 1) * 10)
    assert batcher.stats().busy_fraction <= 1.0
    await batcher.close()


async def test_past_max_queue_a_request_is_shed_at_once_and_the_queued_are_all_answered() -> None:
    runner = TimesTen(delay_s=0.2)
    batcher = Batcher(runner, max_batch_size=1, max_queue_delay_us=0, max_queue=3)
    running = asyncio.ensure_future(batcher.submit({"x": _rows(0, 1)}, ["y"]))
    await asyncio.sleep(0.05)  # the first is running: the queue is empty again
    queued = [asyncio.ensure_future(batcher.submit({"x": _rows(i, 1)}, ["y"])) for i in (1, 2, 3)]
    await asyncio.sleep(0)
    started = time.perf_counter()
    with pytest.raises(Overloaded, match="queue holds 3 requests") as shed:
        await batcher.submit({"x": _rows(9, 1)}, ["y"])
    assert time.perf_counter() - started < 0.05  # refused without waiting for room
    assert shed.value.status == 503 and shed.value.headers == {"retry-after": "1"}
    outs = await asyncio.gather(running, *queued)
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out["y"], _rows(i, 1) * 10)
    assert (await batcher.submit({"x": _rows(5, 1)}, ["y"]))["y"][0, 0] == 150  # room again
    await batcher.close()
