"""plan: exact split/merge round trips for awkward sizes (1 item, primes, few items, big shards)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import BadRequest
from core.planning.shards import Shard, batch_size, merge, shard_sizes, split
from core.wire.tensors import Tensor


def batch(n: int) -> tuple[Tensor, ...]:
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    ids = np.arange(n, dtype=np.int64)
    return Tensor("x", x), Tensor("ids", ids)


def double(shards: list[Shard]) -> dict[str, tuple[Tensor, ...]]:
    return {
        s.id: (Tensor("y", s.inputs[0].data * 2), Tensor("ids", s.inputs[1].data.copy()))
        for s in shards
    }


def round_trip(n: int, max_items: int, parallelism: int) -> tuple[list[int], tuple[Tensor, ...]]:
    inputs = batch(n)
    sizes = shard_sizes(n, max_items, parallelism)
    shards = split("req", inputs, sizes)
    return sizes, merge(shards, double(shards))


@pytest.mark.parametrize(
    ("n", "max_items", "parallelism", "sizes"),
    [
        (1, 64, 1, [1]),
        (1, 64, 5, [1]),  # fewer items than targets: never an empty shard
        (3, 64, 5, [1, 1, 1]),
        (7, 3, 1, [3, 2, 2]),
        (13, 64, 4, [4, 3, 3, 3]),
        (97, 10, 2, [10] * 7 + [9] * 3),
        (10, 1000, 3, [4, 3, 3]),  # shard size larger than the batch
        (64, 64, 1, [64]),
        (65, 64, 1, [33, 32]),
    ],
)
def test_shard_sizes(n: int, max_items: int, parallelism: int, sizes: list[int]) -> None:
    assert shard_sizes(n, max_items, parallelism) == sizes


@pytest.mark.parametrize("n", [1, 2, 7, 13, 97, 64, 65, 1000])
@pytest.mark.parametrize("parallelism", [1, 2, 5])
def test_split_merge_is_exact(n: int, parallelism: int) -> None:
    sizes, merged = round_trip(n, 16, parallelism)
    x, ids = batch(n)
    assert [t.name for t in merged] == ["y", "ids"]
    np.testing.assert_array_equal(merged[0].data, x.data * 2)
    np.testing.assert_array_equal(merged[1].data, ids.data)
    assert sum(sizes) == n


@given(n=st.integers(1, 500), max_items=st.integers(1, 600), parallelism=st.integers(0, 40))
def test_sizes_cover_the_batch_evenly(n: int, max_items: int, parallelism: int) -> None:
    sizes = shard_sizes(n, max_items, parallelism)
    assert sum(sizes) == n
    assert all(1 <= s <= max_items for s in sizes)
    assert max(sizes) - min(sizes) <= 1
    assert len(sizes) == max(-(-n // max_items), min(n, max(parallelism, 1)))
    _, merged = round_trip(n, max_items, parallelism)
    np.testing.assert_array_equal(merged[1].data, np.arange(n))


@given(
    n=st.integers(1, 500),
    max_items=st.integers(1, 600),
    parallelism=st.integers(0, 40),
    min_items=st.integers(1, 64),
)
def test_min_shard_items_only_merges_small_shards(
    n: int, max_items: int, parallelism: int, min_items: int
) -> None:
    sizes = shard_sizes(n, max_items, parallelism, min_items)
    assert sum(sizes) == n and max(sizes) <= max_items
    # never more shards than the slots or the size floor allow, unless max_items demands them
    assert len(sizes) <= max(-(-n // max_items), 1, min(parallelism, n // min_items))
    # and the floor never costs parallelism when shards stay at or above it
    if n // max(parallelism, 1) >= min_items:
        assert len(sizes) == len(shard_sizes(n, max_items, parallelism))


def test_split_returns_views_with_unique_ids() -> None:
    inputs = batch(10)
    shards = split("req", inputs, [4, 3, 3])
    assert [s.id for s in shards] == ["req/0", "req/1", "req/2"]
    assert [(s.start, s.stop, s.items) for s in shards] == [(0, 4, 4), (4, 7, 3), (7, 10, 3)]
    assert np.shares_memory(shards[1].inputs[0].data, inputs[0].data)  # no copy


def test_zero_items_make_no_shards() -> None:
    assert shard_sizes(0, 64, 4) == []


def test_batch_size_requires_one_first_axis() -> None:
    assert batch_size(batch(5)) == 5
    with pytest.raises(BadRequest, match="disagree"):
        batch_size((Tensor("a", np.zeros(2)), Tensor("b", np.zeros(3))))
    with pytest.raises(BadRequest, match="rank 0"):
        batch_size((Tensor("a", np.float32(1.0)),))  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match="no items"):
        batch_size((Tensor("a", np.zeros((0, 3))),))
