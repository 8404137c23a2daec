"""Request-rate history stores and the front door's recorder (``core.autoscale.history``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
from moto import mock_aws

from core.autoscale.history import DynamoHistory, Recorder, SqliteHistory, open_history
from core.errors import ConfigError

T0 = 1_700_000_040.0  # a minute boundary


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def dynamo(aws_env: None) -> Iterator[DynamoHistory]:
    with mock_aws():
        store = DynamoHistory("gpufan-history", region="us-east-1", session=boto3.session.Session())
        store.ensure_table()
        yield store
        store.close()


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[SqliteHistory]:
    store = SqliteHistory(tmp_path / "h.sqlite3")
    yield store
    store.close()


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request: pytest.FixtureRequest) -> SqliteHistory | DynamoHistory:
    return request.getfixturevalue("sqlite" if request.param == "sqlite" else "dynamo")


def test_round_trip_adds_within_an_interval_and_regroups(store) -> None:
    # GIVEN records in three minutes (two in the first), WHEN read back per minute and per 2 min
    store.record("digits", T0 + 1, 1, 8, 0.5)
    store.record("digits", T0 + 59, 2, 16, 0.25)
    store.record("digits", T0 + 60, 1, 4, 0.1)
    store.record("digits", T0 + 180, 1, 1, 0.1)
    store.record("other", T0, 5, 5, 5)
    per_minute = store.series("digits", T0, T0 + 240, 60)
    # THEN counters add up, a minute without records is zero, other models stay apart
    assert list(per_minute.requests) == [3, 1, 0, 1]
    assert list(per_minute.items) == [24, 4, 0, 1]
    assert np.allclose(per_minute.busy_s, [0.75, 0.1, 0, 0.1])
    assert np.allclose(per_minute.items_per_s, [0.4, 4 / 60, 0, 1 / 60])
    per_two = store.series("digits", T0, T0 + 240, 120)
    assert list(per_two.items) == [28, 1]
    assert per_minute.items_per_busy_s == pytest.approx(29 / 0.95)


def test_marks_keep_the_latest_time_per_key(store) -> None:
    store.mark("run-l4", T0)
    store.mark("run-l4", T0 + 300)
    store.mark("aca-t4", T0 + 10)
    assert store.marks() == {"run-l4": T0 + 300, "aca-t4": T0 + 10}
    assert list(store.series("run-l4", T0 - 600, T0 + 600, 60).requests).count(0) == 20


def test_dynamodb_counts_from_two_writers_add_up(dynamo: DynamoHistory) -> None:
    other = DynamoHistory("gpufan-history", region="us-east-1", session=boto3.session.Session())
    dynamo.record("m", T0, 1, 10, 1.0)
    other.record("m", T0 + 5, 2, 20, 2.0)
    s = dynamo.series("m", T0, T0 + 60, 60)
    assert (s.requests[0], s.items[0], s.busy_s[0]) == (3, 30, 3.0)
    other.close()


def test_open_history_reads_locations(tmp_path: Path) -> None:
    store = open_history(f"sqlite:///{tmp_path}/x.db")  # tmp_path is absolute: four slashes
    assert isinstance(store, SqliteHistory) and store.path == tmp_path / "x.db"
    store.close()
    dyn = open_history("dynamodb://tbl?region=eu-west-1&endpoint_url=http://127.0.0.1:1")
    assert isinstance(dyn, DynamoHistory) and dyn.table == "tbl"
    with pytest.raises(ConfigError, match="sqlite:///path or dynamodb://table"):
        open_history("redis://x")
    with pytest.raises(ConfigError, match="name the table"):
        open_history("dynamodb://")


def test_recorder_counts_in_memory_and_flushes_additively(sqlite: SqliteHistory) -> None:
    clock = Clock()
    recorder = Recorder(sqlite, clock=clock, flush_s=10)
    assert recorder.observe("digits", 8, 0.02) is False
    clock.now += 61
    assert recorder.observe("digits", 4, 0.01) is True  # a flush is due
    recorder.flush()
    recorder.observe("digits", 4, 0.01)
    recorder.flush()
    s = sqlite.series("digits", T0, T0 + 120, 60)
    assert list(s.requests) == [1, 2] and list(s.items) == [8, 8]
