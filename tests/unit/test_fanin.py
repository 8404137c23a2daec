"""One /metrics for front-door processes sharing a port.

GIVEN expositions from real prometheus_client registries (counters, histograms, labelled gauges)
and fan-ins answering on Unix sockets in one folder, one of them stale,
WHEN they are merged, or one fan-in merges its own exposition with its siblings',
THEN same-named, same-labelled samples are summed, ``_created`` keeps the earliest, families
either side lacks are kept, and the processes that answered and those missing are counted.
"""

from __future__ import annotations

import socket
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from core.wire.fanin import MetricsFanIn, merge


def _exposition(requests: int, in_flight: int, latencies: list[float], extra: bool) -> bytes:
    registry = CollectorRegistry()
    c = Counter("gpufan_requests", "requests", ["model"], registry=registry)
    c.labels("digits").inc(requests)
    Gauge("gpufan_in_flight", "in flight", registry=registry).set(in_flight)
    h = Histogram("gpufan_request_seconds", "latency", buckets=(0.01, 0.1), registry=registry)
    for x in latencies:
        h.observe(x)
    if extra:
        Counter("gpufan_only_here", "one process's", registry=registry).inc(5)
    return generate_latest(registry)


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text.decode())
        for s in f.samples
    }


def test_same_samples_are_summed_and_the_earliest_creation_kept() -> None:
    a = _exposition(3, 2, [0.005, 0.05], extra=True)
    b = _exposition(4, 1, [0.5], extra=False)
    merged = _samples(merge([a, b]))
    assert merged[("gpufan_requests_total", (("model", "digits"),))] == 7
    assert merged[("gpufan_in_flight", ())] == 3
    assert merged[("gpufan_request_seconds_bucket", (("le", "0.01"),))] == 1
    assert merged[("gpufan_request_seconds_bucket", (("le", "0.1"),))] == 2
    assert merged[("gpufan_request_seconds_bucket", (("le", "+Inf"),))] == 3
    assert merged[("gpufan_request_seconds_count", ())] == 3
    assert merged[("gpufan_only_here_total", ())] == 5
    created = ("gpufan_requests_created", (("model", "digits"),))
    assert merged[created] == min(_samples(a)[created], _samples(b)[created])
    assert b"# TYPE gpufan_request_seconds histogram" in merge([a, b])


async def test_a_scrape_sums_its_siblings_and_counts_the_missing(tmp_path: Path) -> None:
    ours = MetricsFanIn(tmp_path, lambda: b"", name="ours")
    sibling = MetricsFanIn(tmp_path, lambda: _exposition(10, 2, [0.05], extra=False),
                           name="sibling")  # fmt: skip
    stale = socket.socket(socket.AF_UNIX)  # a process that died and left its socket behind
    stale.bind(str(tmp_path / "999999.sock"))
    stale.close()
    await sibling.start()
    try:
        merged = _samples(await ours.merged(_exposition(1, 0, [], extra=False)))
    finally:
        await sibling.close()
    assert merged[("gpufan_requests_total", (("model", "digits"),))] == 11
    assert merged[("gpufan_in_flight", ())] == 2
    assert merged[("gpufan_frontdoor_processes", (("state", "answered"),))] == 2
    assert merged[("gpufan_frontdoor_processes", (("state", "missing"),))] == 1
    assert not (tmp_path / "sibling.sock").exists()
