"""``gpufan simulate`` and ``gpufan autoscale --once --dry-run`` end to end."""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.auth.credentials import AnonymousCredentials
from moto.moto_api._internal.models import moto_api_backend

from core.autoscale.history import SqliteHistory
from core.autoscale.simulate import NAMES
from core.backends._azure import ArmAccess
from core.backends.aca import AcaBackend
from core.backends.cloudrun import CloudRunBackend
from core.cli.autoscale import run_autoscale
from core.wire.session import make_session
from tests.fakes.arm_api import ArmFake, StaticCredential
from tests.fakes.batch_aws import Aws, batch_target, moto_batch
from tests.fakes.cloudrun_api import FakeCloudRunApi

ROOT = Path(__file__).resolve().parents[2]
SUB, RG, MODEL = "00000000-0000-0000-0000-00000000a2c1", "gpufan-rg", "resnet"
LAST = re.compile(
    r"^cost_ratio=([0-9.]+) slo_attainment=([0-9.]+) vs_best_baseline=([0-9.]+|none)$"
)


def _gpufan(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


def test_simulate_a_day_meets_the_issue_target(tmp_path: Path) -> None:
    started = time.monotonic()
    done = _gpufan("simulate", "--hours", "24", "--seed", "1", "--out", str(tmp_path))
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert took < 60  # ~6 s here; the issue asks for about 30
    last = done.stdout.strip().splitlines()[-1]
    m = LAST.match(last)
    assert m, last
    cost_ratio, slo = float(m[1]), float(m[2])
    assert cost_ratio <= 0.5 and slo >= 0.99  # the issue's target
    assert (tmp_path / "simulation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert tuple(r["strategy"] for r in rows) == NAMES  # ours first, static peak second
    assert float(rows[1]["cost_ratio"]) == 1.0
    # vs_best_baseline: over the cheapest baseline that also meets 0.99 (static always does).
    able = [float(r["usd_per_million"]) for r in rows[1:] if float(r["slo_attainment"]) >= 0.99]
    assert float(m[3]) == pytest.approx(float(rows[0]["usd_per_million"]) / min(able), rel=2e-3)
    assert (tmp_path / "summary.md").read_text().startswith("| strategy |")


def test_simulate_replays_a_csv_trace(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("minute,items\n" + "".join(f"{i},{960_000 + 1000 * i}\n" for i in range(90)))
    done = _gpufan("simulate", "--trace", str(trace), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert LAST.match(done.stdout.strip().splitlines()[-1])


def test_simulate_scales_a_trace_and_names_a_bad_row(tmp_path: Path) -> None:
    trace = tmp_path / "day.csv"
    rows = "".join(f"o{i},a,f{i},http,{','.join(['2400'] * 90)}\n" for i in range(4))
    trace.write_text("HashOwner,HashApp,HashFunction,Trigger," + ",".join(map(str, range(1, 91))))
    trace.write_text(trace.read_text() + "\n" + rows)
    out = tmp_path / "out"
    done = _gpufan("simulate", "--trace", str(trace), "--scale", "100", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"trace: {trace} x 100, 1.5 h" in done.stdout
    assert LAST.match(done.stdout.strip().splitlines()[-1])
    trace.write_text(trace.read_text().replace("o2,a,f2,http,2400", "o2,a,f2,http,lots"))
    bad = _gpufan("simulate", "--trace", str(trace), "--out", str(out))
    assert bad.returncode != 0
    assert f"{trace} line 4, minute 1: cannot read 'lots'" in bad.stderr


@pytest.fixture
def history(tmp_path: Path) -> Iterator[SqliteHistory]:
    store = SqliteHistory(tmp_path / "history.sqlite3")
    now = time.time()
    for minute in range(1, 61):
        store.record(MODEL, now - 60 * minute, 2000, 1_200_000, 200.0)  # 20k items/s
    yield store
    store.close()


def _config(path: Path, targets: list[dict[str, Any]]) -> Path:
    doc = {"models": [{"name": MODEL, "flops_per_item": 4.1e9}], "targets": targets}
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_autoscale_dry_run_prints_the_diff_and_sends_nothing(
    tmp_path: Path, history: SqliteHistory, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeCloudRunApi() as run, ArmFake() as arm:
        run.seed("p", "us-central1", "llm", uri="http://127.0.0.1:9", max_instances=5)
        arm.add_container_app(SUB, RG, "gpufan-t4", fqdn="127.0.0.1:9", max_replicas=4)
        config = _config(tmp_path / "gpufan.yaml", [
            {"name": "run-l4", "backend": "cloudrun", "cloud": "gcp", "region": "us-central1",
             "accelerator": "L4", "pricing": "serverless", "sku": "run-l4", "cold_start_s": 10,
             "options": {"project": "p", "service": "llm"}},
            {"name": "aca-t4", "backend": "aca", "cloud": "azure", "region": "westus3",
             "accelerator": "T4", "pricing": "serverless", "usd_per_hour": 0.5,
             "options": {"subscription_id": SUB, "resource_group": RG, "app": "gpufan-t4"}},
        ])  # fmt: skip
        session = make_session(max_connections=4)
        cred = StaticCredential()
        backends = {
            "cloudrun": CloudRunBackend(
                session, client_options=run.client_options, credentials=AnonymousCredentials()
            ),
            "aca": AcaBackend(session, {}, access=ArmAccess(cred, arm.client_kwargs(cred))),
        }
        args = argparse.Namespace(config=config, once=True, dry_run=True)
        try:
            # the command runs its own event loop: call it from a worker thread
            import asyncio

            rc = await asyncio.to_thread(
                run_autoscale, args, backends=backends, history=history, env={}
            )
        finally:
            for backend in backends.values():
                await backend.aclose()
            await session.close()
        assert rc == 0
        out = capsys.readouterr().out
        assert re.search(r"run-l4\s+cloudrun\s+0\s+\d+\s+would_apply", out), out
        assert re.search(r"aca-t4\s+aca\s+0\s+\d+\s+would_apply", out), out
        assert "dry run: nothing was sent" in out
        # a flat hour: every candidate forecasts it exactly, and a tie goes to the simplest
        assert f"model {MODEL}: naive over 60 intervals" in out
        assert re.search(r"expects 0\.\d{4} inside the SLO", out), out  # short of the load
        backtest = re.search(r"backtest \(pinball loss.*\): (.*)", out)
        assert backtest, out
        # an hour of history is one season: the seasonal candidates are fit but not yet scored
        assert backtest[1].split(", ") == ["naive 0.0", "ewma 0.0"], backtest[1]
        assert {r.method for r in run.requests} == {"GET"}
        assert {r.method for r in arm.requests} == {"GET"}


@pytest.fixture(scope="module")
def aws() -> Iterator[Aws]:
    # moto's backends are process-wide: start clean and leave clean for other modules' servers
    moto_api_backend.reset()
    with moto_batch() as running:
        yield running
    moto_api_backend.reset()


def test_autoscale_command_line_against_moto_batch(
    aws: Aws, tmp_path: Path, history: SqliteHistory
) -> None:
    target = batch_target(aws, name="batch-gpu").model_dump(mode="json", exclude_unset=True)
    config = _config(tmp_path / "gpufan.yaml", [{**target, "accelerator": "T4"}])
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "GPUFAN_HISTORY": f"sqlite:///{history.path}",
    }
    done = _gpufan("autoscale", "--once", "--dry-run", "--config", str(config), env=env)
    assert done.returncode == 0, done.stderr
    assert re.search(r"batch-gpu\s+batch\s+0\s+\d+\s+would_apply", done.stdout), done.stdout
    described = aws.batch.describe_compute_environments(computeEnvironments=["gpu-spot"])
    assert described["computeEnvironments"][0]["computeResources"]["minvCpus"] == 0


async def test_the_front_door_records_history_and_offers_the_autoscaler(tmp_path: Path) -> None:
    # GIVEN a front door over one local worker with a history store
    import numpy as np

    from core.frontdoor.runtime import FrontDoorRuntime, embedded_settings, started_local_workers
    from core.wire.client import as_request
    from gpu_containers import DEMO_TEST_SET

    settings = embedded_settings(workers=1)
    store = SqliteHistory(tmp_path / "h.sqlite3")
    x = np.load(DEMO_TEST_SET)["x"][:40].astype(np.float32)
    with started_local_workers(settings.local_workers) as local:
        runtime = FrontDoorRuntime(
            settings, local.targets, local_endpoints=local.endpoints,
            local_token=local.token, env={}, history=store,
        )  # fmt: skip
        async with runtime as rt:
            # WHEN two requests are answered
            for _ in range(2):
                await rt.front_door.infer("digits", None, as_request({"X": x}))
            assert rt.autoscaler is not None
            summary = (await rt.autoscaler.run_once(dry_run=True)).summary()
    # THEN the history holds two requests, their items and some busy time (flushed on exit)
    now = time.time()
    s = store.series("digits", now - 600, now + 60, 60)
    assert (s.requests.sum(), s.items.sum()) == (2, 80)
    assert s.busy_s.sum() > 0
    # AND the autoscaler had nothing to set: local workers have no warm capacity to change
    assert summary["changes"] == [] and "no target" in summary["notes"][0]
    store.close()


async def test_the_control_loop_adds_the_autoscale_pass_and_survives_its_failure() -> None:
    from core.config import Target
    from core.errors import TargetUnavailable
    from core.frontdoor.control import run_control_loop

    class Up:
        async def ready(self, target: Target) -> bool:
            return True

    class Passes:
        def __init__(self, fail: bool) -> None:
            self.fail = fail

        async def run_once(self, dry_run: bool = False) -> Any:
            if self.fail:
                raise TargetUnavailable("ARM said 503")
            return type("Report", (), {"summary": lambda self: {"applied": 1}})()

    targets = [Target(name="w", backend="up")]
    backends: Any = {"up": Up()}
    plain = await run_control_loop(targets, backends)
    assert "autoscale" not in plain and plain["ready"] == 1
    ok = await run_control_loop(targets, backends, autoscaler=Passes(False))  # type: ignore[arg-type]
    assert ok["autoscale"] == {"applied": 1} and ok["ready"] == 1
    failed = await run_control_loop(targets, backends, autoscaler=Passes(True))  # type: ignore[arg-type]
    assert failed["autoscale"] == {"error": "TargetUnavailable: ARM said 503"}
