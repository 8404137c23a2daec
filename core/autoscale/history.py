"""Request-rate history: per model, per interval, requests, items and busy (GPU) seconds.

The autoscaler reads it, the front door writes it (``Recorder``, fed after every dispatch). Behind
one small interface (``HistoryStore``): SQLite by default (a file, or the temp dir), DynamoDB in
AWS. Writes are additive (``record`` adds to the interval's counters), so partial flushes from
many processes - every Lambda instance, every front door - sum correctly. The store also keeps the
reconciler's last-change times (``mark``/``marks``), so its rate limit holds across processes.

``open_history(location)`` picks the store: ``sqlite:///relative/history.db`` or
``sqlite:////absolute/history.db`` (SQLAlchemy's convention),
``dynamodb://table?region=us-east-1[&endpoint_url=http://127.0.0.1:5000]``, or None (the temp
dir's ``gpufan/history.sqlite3``). boto3 is imported by the DynamoDB store only, on first use.
"""

from __future__ import annotations

import math
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import numpy as np

from core.errors import ConfigError

__all__ = [
    "DynamoHistory",
    "HistoryStore",
    "Recorder",
    "Series",
    "SqliteHistory",
    "open_history",
]

HISTORY_ENV = "GPUFAN_HISTORY"  # where the history lives when the config does not say

_MARK = "__mark__"  # the model name under which last-change times are kept


@dataclass(frozen=True)
class Series:
    """Counters per interval from ``start`` (epoch seconds), ``interval_s`` apart; an interval
    with no record is 0."""

    start: float
    interval_s: float
    requests: np.ndarray
    items: np.ndarray
    busy_s: np.ndarray

    @property
    def items_per_s(self) -> np.ndarray:
        return self.items / self.interval_s

    @property
    def items_per_busy_s(self) -> float | None:
        """Measured throughput of one busy instance (items per GPU-second); None if unknown."""
        busy = float(self.busy_s.sum())
        return float(self.items.sum()) / busy if busy > 0 else None


class HistoryStore(Protocol):
    """Where the history lives. ``at`` is epoch seconds; buckets are ``interval_s`` wide."""

    interval_s: float

    def record(self, model: str, at: float, requests: int, items: int, busy_s: float) -> None:
        """Add to the counters of the interval holding ``at``."""
        ...

    def series(self, model: str, start: float, end: float, interval_s: float) -> Series:
        """Counters for ``[start, end)`` regrouped into ``interval_s`` (a multiple of the store's
        own interval)."""
        ...

    def mark(self, key: str, at: float) -> None:
        """Remember ``at`` for ``key`` (the reconciler's last change to a target)."""
        ...

    def marks(self) -> dict[str, float]: ...

    def close(self) -> None: ...


def _regroup(
    buckets: Mapping[float, tuple[float, float, float]], start: float, end: float, interval_s: float
) -> Series:
    n = max(0, math.ceil((end - start) / interval_s))
    out = np.zeros((3, n))
    for at, values in buckets.items():
        i = int((at - start) // interval_s)
        if 0 <= i < n:
            out[:, i] += values
    return Series(start, interval_s, out[0], out[1], out[2])


class SqliteHistory:
    """The default store: one SQLite file, safe across threads of one process."""

    def __init__(self, path: Path | str, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
        with self._lock, self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS history (model TEXT, bucket REAL, requests REAL, "
                "items REAL, busy_s REAL, PRIMARY KEY (model, bucket))"
            )

    def _bucket(self, at: float) -> float:
        return math.floor(at / self.interval_s) * self.interval_s

    def _add(self, model: str, bucket: float, values: tuple[float, float, float]) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO history VALUES (?, ?, ?, ?, ?) ON CONFLICT (model, bucket) DO UPDATE "
                "SET requests = requests + excluded.requests, items = items + excluded.items, "
                "busy_s = busy_s + excluded.busy_s",
                (model, bucket, *values),
            )

    def record(self, model: str, at: float, requests: int, items: int, busy_s: float) -> None:
        self._add(model, self._bucket(at), (requests, items, busy_s))

    def series(self, model: str, start: float, end: float, interval_s: float) -> Series:
        with self._lock:
            rows = self._db.execute(
                "SELECT bucket, requests, items, busy_s FROM history "
                "WHERE model = ? AND bucket >= ? AND bucket < ?",
                (model, start, end),
            ).fetchall()
        return _regroup({r[0]: r[1:] for r in rows}, start, end, interval_s)

    def mark(self, key: str, at: float) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO history VALUES (?, ?, 0, 0, 0)", (f"{_MARK}{key}", at)
            )
            self._db.execute(
                "DELETE FROM history WHERE model = ? AND bucket < ?", (f"{_MARK}{key}", at)
            )

    def marks(self) -> dict[str, float]:
        with self._lock:
            rows = self._db.execute(
                "SELECT model, MAX(bucket) FROM history WHERE model LIKE ? GROUP BY model",
                (f"{_MARK}%",),
            ).fetchall()
        return {m[len(_MARK) :]: at for m, at in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _dynamo_counts(item: Mapping[str, Any]) -> tuple[float, float, float]:
    """One DynamoDB item's requests, items and busy seconds; an attribute never added is 0."""
    requests, items, busy_s = (
        float(item.get(k, {"N": "0"})["N"]) for k in ("requests", "items", "busy_s")
    )
    return requests, items, busy_s


class DynamoHistory:
    """History in a DynamoDB table: partition key ``model`` (S), sort key ``bucket`` (N).

    ``ensure_table()`` creates it on demand (pay per request) for development and tests;
    production tables come from Terraform. Counters are added with ``UpdateItem ... ADD``, so
    concurrent writers never lose each other's counts.
    """

    def __init__(
        self,
        table: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        interval_s: float = 60.0,
        session: Any | None = None,
    ) -> None:
        self.table, self.interval_s = table, interval_s
        self._region, self._endpoint, self._session = region, endpoint_url, session
        self._client: Any = None
        self._lock = threading.Lock()

    def _dynamodb(self) -> Any:
        with self._lock:
            if self._client is None:
                if self._session is None:
                    import boto3

                    self._session = boto3.session.Session()
                self._client = self._session.client(
                    "dynamodb", region_name=self._region, endpoint_url=self._endpoint
                )
            return self._client

    def ensure_table(self) -> None:
        client = self._dynamodb()
        if self.table in client.list_tables().get("TableNames", []):
            return
        client.create_table(
            TableName=self.table,
            KeySchema=[
                {"AttributeName": "model", "KeyType": "HASH"},
                {"AttributeName": "bucket", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "model", "AttributeType": "S"},
                {"AttributeName": "bucket", "AttributeType": "N"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )

    def record(self, model: str, at: float, requests: int, items: int, busy_s: float) -> None:
        bucket = math.floor(at / self.interval_s) * self.interval_s
        self._dynamodb().update_item(
            TableName=self.table,
            Key={"model": {"S": model}, "bucket": {"N": _num(bucket)}},
            UpdateExpression="ADD requests :r, #items :i, busy_s :b",
            ExpressionAttributeNames={"#items": "items"},
            ExpressionAttributeValues={
                ":r": {"N": _num(requests)},
                ":i": {"N": _num(items)},
                ":b": {"N": _num(busy_s)},
            },
        )

    def _query(self, model: str, start: float, end: float) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {}
        for _ in range(10_000):  # bounded: 1 MB pages, far more than any lookback needs
            page = self._dynamodb().query(
                TableName=self.table,
                KeyConditionExpression="model = :m AND bucket BETWEEN :s AND :e",
                ExpressionAttributeValues={
                    ":m": {"S": model},
                    ":s": {"N": _num(start)},
                    ":e": {"N": _num(end)},
                },
                **kwargs,
            )
            items += page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                break
            kwargs = {"ExclusiveStartKey": page["LastEvaluatedKey"]}
        return items

    def series(self, model: str, start: float, end: float, interval_s: float) -> Series:
        rows = [r for r in self._query(model, start, end) if float(r["bucket"]["N"]) < end]
        buckets = {float(r["bucket"]["N"]): _dynamo_counts(r) for r in rows}
        return _regroup(buckets, start, end, interval_s)

    def mark(self, key: str, at: float) -> None:
        self._dynamodb().put_item(
            TableName=self.table,
            Item={"model": {"S": f"{_MARK}{key}"}, "bucket": {"N": "0"}, "at": {"N": _num(at)}},
        )

    def marks(self) -> dict[str, float]:
        client, out = self._dynamodb(), {}
        kwargs: dict[str, Any] = {}
        for _ in range(1000):
            page = client.scan(
                TableName=self.table,
                FilterExpression="begins_with(model, :p)",
                ExpressionAttributeValues={":p": {"S": _MARK}},
                **kwargs,
            )
            for item in page.get("Items", []):
                out[item["model"]["S"][len(_MARK) :]] = float(item["at"]["N"])
            if "LastEvaluatedKey" not in page:
                break
            kwargs = {"ExclusiveStartKey": page["LastEvaluatedKey"]}
        return out

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _num(value: float) -> str:
    """A DynamoDB number: finite, without float noise."""
    return format(Decimal(repr(float(value))).normalize(), "f")


def open_history(location: str | None, *, interval_s: float = 60.0) -> HistoryStore:
    """The store ``location`` names (module docstring); None: SQLite in the temp dir.

    Raises:
        ConfigError: a location of another kind, or a DynamoDB location without a table.
    """
    if not location:
        return SqliteHistory(Path(tempfile.gettempdir()) / "gpufan" / "history.sqlite3", interval_s)
    parts = urlsplit(location)
    if parts.scheme == "sqlite" and location.startswith("sqlite:///"):
        return SqliteHistory(location[len("sqlite:///") :], interval_s)
    if parts.scheme == "dynamodb":
        if not parts.netloc:
            raise ConfigError(f"history {location!r}: name the table, dynamodb://<table>")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return DynamoHistory(
            parts.netloc,
            region=query.get("region"),
            endpoint_url=query.get("endpoint_url"),
            interval_s=interval_s,
        )
    raise ConfigError(
        f"history {location!r}: use sqlite:///path or dynamodb://table?region=..., "
        "or leave it unset for SQLite in the temp dir"
    )


class Recorder:
    """What the front door calls after each dispatch: counts in memory, flushes to the store.

    ``observe`` is cheap (no I/O) so it can sit on the request path; ``flush`` writes what was
    counted (additive, so a flush mid-interval is fine) and is what the runtime calls every
    ``flush_s`` from a worker thread, and on shutdown.
    """

    def __init__(
        self, store: HistoryStore, *, clock: Callable[[], float] = time.time, flush_s: float = 10.0
    ) -> None:
        self.store, self.flush_s = store, flush_s
        self._clock = clock
        self._pending: dict[tuple[str, float], list[float]] = {}
        self._lock = threading.Lock()
        self._flushed_at = clock()

    def observe(self, model: str, items: int, busy_s: float) -> bool:
        """Count one request; True when a flush is due."""
        now = self._clock()
        bucket = math.floor(now / self.store.interval_s) * self.store.interval_s
        with self._lock:
            counts = self._pending.setdefault((model, bucket), [0.0, 0.0, 0.0])
            counts[0] += 1
            counts[1] += items
            counts[2] += busy_s
        return now - self._flushed_at >= self.flush_s

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._flushed_at = self._clock()
        for (model, bucket), (requests, items, busy_s) in pending.items():
            self.store.record(model, bucket, int(requests), int(items), busy_s)
