"""The reliability suite's short variant (``python -m bench.reliability`` runs it long).

GIVEN real workers on fixed ports behind a real ``gpufan serve``,
WHEN clients send bodies shorter than their Content-Length, slowloris headers and concurrent
large JSON against a small memory budget; when far more clients than the fleet can serve send
back to back, politely and not, and an open loop offers 2.5x the capacity; when one worker is
SIGKILLed, another SIGSTOPped and the killed one restarted during a stream; and during a soak,
THEN every answer is a 200 (exact, against onnxruntime), a 429 or a 503 with Retry-After; slow
clients are cut off at their timeouts; memory peaks stay within the budget + 100 MB; no client
sees an error from the chaos, the frozen worker's shards are hedged, and the restarted worker
serves again; RSS, file descriptors and the log stay clean.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.reliability import Fleet, Work, chaos, edge, overload, soak

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def work() -> Work:
    return Work.digits()


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def test_slow_and_large_clients_are_cut_off_and_memory_stays_in_budget(fleet_dir: Path) -> None:
    with Fleet(1, fleet_dir, server={"header_timeout_s": 2.0, "memory_budget_mb": 256}) as fleet:
        result = edge(fleet, slow_clients=30, big_json_mb=20, big_requests=4)
    assert result["front_short_body"] and result["worker_short_body"], result
    assert result["slowloris_ok"], result["slowloris_closed"]
    assert result["big_json_ok"], (result["big_json"], result["big_json_growth_mb"])


def test_overload_sheds_with_retry_after_and_every_admitted_answer_is_exact(
    fleet_dir: Path, work: Work
) -> None:
    with Fleet(2, fleet_dir) as fleet:
        result = overload(fleet, work, clients=128, seconds=6)
    assert result["bad"] == 0, result
    assert result["retry_after_missing"] == 0, result["unexplained_503"]
    assert "503" in str(result["rude"]), result  # it did shed
    # Latency is the benchmark's to report, not a test's to assert: on a 2-core machine the 128
    # clients' own event loop stalls by hundreds of ms (client p99 67x the unloaded one in one
    # CI run, 7x inside the front door).


def test_kill_stop_and_restart_during_a_stream_cost_no_client_an_error(
    fleet_dir: Path, work: Work
) -> None:
    with Fleet(3, fleet_dir) as fleet:
        result = chaos(fleet, work, seconds=20, stop_s=5)
    assert result["errors"] == 0, result["answers"]
    assert result["stop_answers"] > 100, result  # the stop stalled nobody
    assert result["stop_p99_ms"] < 2000, result  # hedged well before the 30 s deadline
    assert result["restarted_served"] > 0, result


def test_a_soak_keeps_memory_descriptors_and_log_flat(fleet_dir: Path, work: Work) -> None:
    with Fleet(2, fleet_dir) as fleet:
        result = soak(fleet, work, seconds=15, every_s=1.5)
    assert result["wrong"] == 0 and set(result["answers"]) == {"200"}, result  # type: ignore[arg-type]
    assert result["rss_growth_mb"] < 30, result
    assert result["fd_growth"] <= 4, result
    assert result["log_errors"] == 0, result
