"""Triton-style dynamic batching for one model version, on asyncio.

Concurrent requests whose non-batch dimensions, dtypes and requested outputs match are stacked
along axis 0 and run as one session call, because a GPU (and even a CPU GEMM) does far more
items per second on one batch of 32 than on 32 batches of one. Rules, as Triton's dynamic batcher:

- a batch holds at most ``max_batch_size`` items; a request larger than that runs alone, unsplit;
- with ``preferred_batch_sizes``, a batch is cut at the largest preferred size the queue can fill
  (the sizes the model runs fastest per item: on a CPU a batch of 32 can be slower per item than
  8), and waiting stops as soon as the largest is reached;
- unlike Triton, a lone request on an idle model runs at once: with nothing else queued there is
  no evidence that a partner is coming, and waiting the delay would only add it to the latency
  (at batch 1, one client, the worker was 2.4x slower with batching on than off);
- once others are queued (load), wait at most ``max_queue_delay_us`` after the head request for
  the batch to fill, and not at all once it is full (with 0, take only what is already queued);
- while a batch runs, new requests queue, so a busy model batches without waiting at all;
- with several instances (Triton's ``instance_group`` count: one session each, each on its own
  thread), a batch goes to any free instance, so up to that many batches run at once;
- an exception in a run fails exactly the requests of that batch;
- at most ``max_queue`` requests wait (Triton's ``default_queue_policy.max_queue_size``); one
  past it is shed at once with ``Overloaded`` (503 + Retry-After), as Triton rejects it, so
  a flood costs what is queued a bounded wait instead of everyone an unbounded one.

One executor thread per instance runs its session; results are sliced back per request as views
of the batch's output arrays.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NoReturn

import numpy as np

from core.errors import Overloaded, TargetUnavailable

__all__ = ["BatchObserver", "BatchStats", "Batcher", "RunFn"]

RunFn = Callable[[Mapping[str, np.ndarray], Sequence[str]], dict[str, np.ndarray]]
BatchObserver = Callable[[int, Sequence[float]], None]  # (items, queue seconds per request)

# Utilisation and throughput are averaged over this trailing window: long enough to smooth one
# burst, short enough that the router sees a worker cool down within seconds.
_WINDOW_S = 5.0


@dataclass(slots=True)
class _Pending:
    inputs: Mapping[str, np.ndarray]
    output_names: tuple[str, ...]
    items: int
    key: Hashable
    future: asyncio.Future[dict[str, np.ndarray]]
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What the worker reports with every response and exports as metrics."""

    queue_depth: int  # requests waiting for a run (not the batch that is running)
    busy_fraction: float  # share of the recent window the executor spent running batches
    items_per_s: float  # items completed per second over the recent window


def _key(inputs: Mapping[str, np.ndarray], output_names: tuple[str, ...]) -> Hashable:
    return (
        tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in inputs.items())),
        output_names,
    )


class Batcher:
    """Queue, coalesce and run requests for one model version."""

    def __init__(
        self,
        run: RunFn | Sequence[RunFn],
        *,
        max_batch_size: int,
        max_queue_delay_us: int,
        enabled: bool = True,
        preferred_batch_sizes: Sequence[int] = (),
        max_queue: int | None = None,
        name: str = "model",
        observer: BatchObserver | None = None,
    ) -> None:
        self._runs = [run] if callable(run) else list(run)
        if not self._runs:
            raise ValueError("a batcher needs at least one instance to run on")
        self._max = max(1, max_batch_size)
        self._preferred = sorted({b for b in preferred_batch_sizes if 0 < b <= self._max})
        self._delay_s = max(0, max_queue_delay_us) / 1e6
        self._batched = max_batch_size > 0  # 0: the model has no batch axis (Triton's meaning)
        self._enabled = enabled and max_batch_size > 1
        self._observer = observer
        self._max_queue = max_queue
        self._name = name
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{name}-{i}")
            for i in range(len(self._runs))
        ]
        self._free = list(range(len(self._runs)))  # instances not running a batch
        self._running: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # (finished_at, busy seconds, items) of recent runs, with running sums for O(1) stats.
        self._recent: collections.deque[tuple[float, float, int]] = collections.deque()
        self._busy_sum = 0.0
        self._items_sum = 0
        self._born = time.perf_counter()
        self.runs = 0  # session calls so far (tests and benchmarks compare it to requests)

    async def submit(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Queue one request (every input batched along axis 0) and await its own outputs."""
        if self._closed:
            raise TargetUnavailable("the worker is shutting down")
        if self.full:
            self.refuse()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())
        names = tuple(output_names)
        first = next(iter(inputs.values()))
        items = first.shape[0] if self._batched and first.ndim else 1
        fut: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(inputs, names, items, _key(inputs, names), fut))
        self._wakeup.set()
        return await fut

    @property
    def full(self) -> bool:
        """Whether a new request would be shed (``max_queue`` requests are waiting)."""
        return self._max_queue is not None and len(self._queue) >= self._max_queue

    def refuse(self) -> NoReturn:
        raise Overloaded(
            f"model {self._name}'s queue holds {len(self._queue)} requests, its "
            "max_queue_size; retry shortly"
        )

    def stats(self) -> BatchStats:
        """Queue depth now, and busy share and items/s over the trailing window."""
        now = time.perf_counter()
        self._expire(now)
        window = min(_WINDOW_S, max(now - self._born, 1e-3))
        busy = min(1.0, max(0.0, self._busy_sum) / (window * len(self._runs)))
        return BatchStats(len(self._queue), busy, self._items_sum / window)

    async def close(self) -> None:
        """Stop taking work, fail what is queued or running, and release the executor threads."""
        self._closed = True
        for task in [self._task, *self._running]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        _fail(list(self._queue), TargetUnavailable("the worker is shutting down"))
        self._queue.clear()
        for executor in self._executors:
            executor.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------------------- internals

    async def _loop(self) -> None:
        while True:
            if not self._queue or not self._free:  # nothing to run, or nowhere to run it
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            head = self._queue[0]
            if self._enabled and self._compatible_items(head) > head.items:
                await self._gather_window()
            batch = self._take()
            if batch:
                instance = self._free.pop()
                task = asyncio.get_running_loop().create_task(self._execute(batch, instance))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _gather_window(self) -> None:
        """Wait until the head request's delay expires or a compatible batch is full."""
        head = self._queue[0]
        deadline = head.queued_at + self._delay_s
        enough = self._preferred[-1] if self._preferred else self._max
        while self._compatible_items(head) < enough:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _compatible_items(self, head: _Pending) -> int:
        return sum(p.items for p in self._queue if p.key == head.key)

    def _take(self) -> list[_Pending]:
        """Pop the head request plus every queued compatible one that still fits, FIFO."""
        while self._queue and self._queue[0].future.done():  # caller went away
            self._queue.popleft()
        if not self._queue:
            return []
        head = self._queue.popleft()
        batch, total = [head], head.items
        limit = self._limit(head.items + self._compatible_items(head))
        if not self._enabled or total >= limit:
            return batch
        keep: collections.deque[_Pending] = collections.deque()
        while self._queue:
            p = self._queue.popleft()
            if p.future.done():
                continue
            if p.key == head.key and total + p.items <= limit:
                batch.append(p)
                total += p.items
            else:
                keep.append(p)
        self._queue = keep
        return batch

    def _limit(self, available: int) -> int:
        """Items to take from ``available`` compatible ones: the largest preferred size they
        fill, else all of them (up to the maximum)."""
        filled = [b for b in self._preferred if b <= available]
        return filled[-1] if filled else self._max

    async def _execute(self, batch: list[_Pending], instance: int) -> None:
        started = time.perf_counter()
        if self._observer is not None:
            self._observer(sum(p.items for p in batch), [started - p.queued_at for p in batch])
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(
                self._executors[instance], self._run_batch, self._runs[instance], batch
            )
        except asyncio.CancelledError:
            _fail(batch, TargetUnavailable("the worker is shutting down"))
            raise
        except Exception as e:  # the run's error belongs to exactly this batch's callers
            _fail(batch, e)
        else:
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)
        finally:
            self._record(started, sum(p.items for p in batch))
            self._free.append(instance)
            self._wakeup.set()

    @staticmethod
    def _run_batch(run: RunFn, batch: list[_Pending]) -> list[dict[str, np.ndarray]]:
        names = batch[0].output_names
        if len(batch) == 1:
            return [run(batch[0].inputs, names)]
        stacked = {n: np.concatenate([p.inputs[n] for p in batch], axis=0) for n in batch[0].inputs}
        total = sum(p.items for p in batch)
        out = run(stacked, names)
        for n, arr in out.items():
            if arr.ndim == 0 or arr.shape[0] != total:
                raise ValueError(
                    f"output {n!r} has shape {list(arr.shape)}, not a batch of {total} items; "
                    "the model cannot be batched (set max_batch_size 0 or --no-dynamic-batching)"
                )
        slices, start = [], 0
        for p in batch:
            slices.append({n: arr[start : start + p.items] for n, arr in out.items()})
            start += p.items
        return slices

    def _record(self, started: float, items: int) -> None:
        now = time.perf_counter()
        busy = now - started
        self.runs += 1
        self._recent.append((now, busy, items))
        self._busy_sum += busy
        self._items_sum += items
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - _WINDOW_S:
            _, busy, items = self._recent.popleft()
            self._busy_sum -= busy
            self._items_sum -= items


def _fail(batch: Sequence[_Pending], error: BaseException) -> None:
    for p in batch:
        if not p.future.done():
            p.future.set_exception(error)
