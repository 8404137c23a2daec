"""Split a batch into shards along its first axis, and merge shard outputs back in order.

Pure: no I/O, no clock. Shard inputs are numpy views of the request's arrays (no copy); merging
concatenates once per output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import BadRequest, first_few
from core.wire.tensors import Tensor

__all__ = ["Shard", "batch_size", "merge", "shard_sizes", "split", "unsplittable", "whole"]


@dataclass(frozen=True, slots=True)
class Shard:
    """Items ``[start, stop)`` of a request; ``id`` is unique within the process.

    A ``whole`` shard is a request that cannot be split (its model has no batch axis): one shard
    of one "item", its inputs and outputs as they are, no first axis to check or concatenate.
    """

    id: str
    index: int
    start: int
    stop: int
    inputs: tuple[Tensor, ...]
    whole: bool = False

    @property
    def items(self) -> int:
        return self.stop - self.start


def batch_size(inputs: Sequence[Tensor]) -> int:
    """The shared first-axis length of all inputs, which must be at least 1.

    Raises:
        BadRequest: an input has no batch axis, the inputs disagree, or the batch is empty.
    """
    scalar = [t.name for t in inputs if t.data.ndim == 0]
    if scalar:
        raise BadRequest(f"inputs {first_few(scalar)} have no batch axis (rank 0)")
    sizes = {t.name: int(t.data.shape[0]) for t in inputs}
    distinct = set(sizes.values())
    if len(distinct) != 1:
        pairs = [f"{name}={size}" for name, size in sizes.items()]
        raise BadRequest(f"inputs disagree on the batch size (first axis): {first_few(pairs)}")
    items = distinct.pop()
    if not items:
        raise BadRequest("the batch has no items: the inputs' first axis has length 0")
    return items


def unsplittable(inputs: Sequence[Tensor]) -> bool:
    """Whether a request can only run whole: some input is a scalar (rank 0), so there is no
    first axis shared by every input to cut along (a sample rate beside an audio frame, say)."""
    return any(t.data.ndim == 0 for t in inputs)


def whole(request_id: str, inputs: Sequence[Tensor]) -> Shard:
    """The one shard of a request that runs unsplit."""
    return Shard(f"{request_id}/0", 0, 0, 1, tuple(inputs), whole=True)


def shard_sizes(
    items: int, max_shard_items: int, parallelism: int, min_shard_items: int = 1
) -> list[int]:
    """Nearly equal shard sizes: enough shards to respect ``max_shard_items`` and to use
    ``parallelism`` slots, but none smaller than ``min_shard_items`` unless ``max_shard_items``
    forces it; never more shards than items; sizes differ by at most one.

    >>> shard_sizes(10, 64, 3)
    [4, 3, 3]
    >>> shard_sizes(10, 64, 3, min_shard_items=8)
    [10]
    """
    if items <= 0:
        return []
    by_slots = min(items, max(parallelism, 1), max(items // max(min_shard_items, 1), 1))
    count = max(-(-items // max_shard_items), by_slots)
    base, extra = divmod(items, count)
    return [base + 1 if i < extra else base for i in range(count)]


def split(request_id: str, inputs: Sequence[Tensor], sizes: Sequence[int]) -> list[Shard]:
    """Cut every input at the same boundaries; shard ``i`` holds items of ``sizes[i]``."""
    shards = []
    start = 0
    for i, size in enumerate(sizes):
        stop = start + size
        views = tuple(Tensor(t.name, t.data[start:stop], t.parameters) for t in inputs)
        shards.append(Shard(f"{request_id}/{i}", i, start, stop, views))
        start = stop
    return shards


def merge(shards: Sequence[Shard], outputs: Mapping[str, Sequence[Tensor]]) -> tuple[Tensor, ...]:
    """Concatenate each shard's outputs in shard order.

    ``outputs`` maps shard id -> that shard's output tensors, already checked as they arrived
    (``core.dispatch.fanout``): every shard has the same output names, each with a first axis
    equal to its item count. Output order is the first shard's.
    """
    first = outputs[shards[0].id]
    if len(shards) == 1:
        return tuple(first)
    columns: dict[str, list[np.ndarray]] = {t.name: [] for t in first}
    for shard in shards:
        for t in outputs[shard.id]:
            columns[t.name].append(t.data)
    return tuple(Tensor(t.name, np.concatenate(columns[t.name]), t.parameters) for t in first)
