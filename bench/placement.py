"""How long scoring and placing a request takes, next to one batch-1 inference, in one run.

A 64-shard request is placed over 1,000 targets (random clouds, regions, prices, speeds, spot
risk) by the cost placer the front door uses, live health and all: load columns in, shards per
target out. The same run times one batch-1 ``InferenceSession.run`` of both demo models: the
benchmark CNN (139 MFLOP/item, the ratio on the last line) and the tiny digits classifier
(4.9 kFLOP/item, printed above it: no Python placement over 1,000 targets beats a 10 us run).
Medians of many repetitions. Last line: ``placement_us=<median> ratio=<placement / inference>``.

Run: ``python -m bench.placement``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.models import build_cnn
from core.config import Policy, Target
from core.dispatch.health import TargetHealth
from core.planning.costplacer import CostPlacer
from core.planning.estimate import ScoreTable, TargetFacts, Workload
from core.planning.limits import Constraints, Origin
from core.planning.shards import split
from core.wire.tensors import Tensor
from gpu_containers import DEMO_REPOSITORY

PLACES = [("aws", "us-east-1"), ("aws", "eu-west-1"), ("gcp", "us-central1"),
          ("gcp", "europe-west4"), ("azure", "eastus"), ("onprem", "home")]  # fmt: skip


def _egress(src_cloud: str, src_region: str, dst_cloud: str, dst_region: str) -> float:
    if src_cloud == "onprem" or (src_cloud, src_region) == (dst_cloud, dst_region):
        return 0.0
    return 0.02 if src_cloud == dst_cloud else 0.09


def _fleet(n: int, rng: random.Random) -> list[TargetFacts]:
    out = []
    for i in range(n):
        cloud, region = rng.choice(PLACES)
        spot = rng.random() < 0.4
        target = Target(
            name=f"t{i}", backend="http", endpoint=f"http://10.0.0.{i % 250}:8080",
            cloud=cloud, region=region, pricing="spot" if spot else "on_demand",
            max_concurrency=rng.choice([1, 2, 4, 8]),
        )  # fmt: skip
        out.append(
            TargetFacts(
                target, rng.uniform(0.2, 4.0), "bench", None, False,
                items_per_s=rng.uniform(200, 20_000), fixed_s=0.002,
                billing_increment_s=rng.choice([0.1, 1.0]), billing_minimum_s=0.0,
                interruptions_per_hour=0.2 if spot else 0.0,
            )
        )  # fmt: skip
    return out


def _inference_us(model: Path, shape: tuple[int, ...], repeats: int) -> float:
    """Median time of one batch-1 ``InferenceSession.run`` (one intra-op thread, as a worker)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.zeros(shape, np.float32)
    for _ in range(20):
        session.run(None, {name: x})
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args(argv)
    rng = random.Random(0)
    facts = _fleet(args.targets, rng)
    table = ScoreTable(facts, _egress)
    workload = Workload("cnn", input_bytes_per_item=49_152, output_bytes_per_item=40)
    constraints = Constraints(slo_ms=500, origin=Origin("aws", "us-east-1"))
    placer = CostPlacer({"cnn": table}, {"cnn": workload}, constraints)
    health = TargetHealth([f.target for f in facts], Policy())
    x = Tensor("input", np.zeros((args.shards * 8, 1), np.float32))
    shards = split("bench", (x,), [8] * args.shards)

    def once() -> float:
        started = time.perf_counter()
        placement = placer("cnn", shards, health)
        elapsed = time.perf_counter() - started
        assert sum(len(g) for g in placement.groups.values()) == args.shards
        return elapsed

    for _ in range(10):
        once()
    placement_us = statistics.median(once() for _ in range(args.repeats)) * 1e6
    digits_us = _inference_us(DEMO_REPOSITORY / "digits" / "1" / "model.onnx", (1, 64), 300)
    with tempfile.TemporaryDirectory() as tmp:
        cnn_us = _inference_us(build_cnn(Path(tmp) / "cnn.onnx"), (1, 3, 64, 64), 50)
    print(f"targets={args.targets} shards={args.shards} repeats={args.repeats}")
    print(f"score+place (live health included)        {placement_us:10.1f} us (median)")
    print(
        f"batch-1 digits (4.9 kFLOP) run            {digits_us:10.1f} us (median)"
        f"   placement / digits = {placement_us / digits_us:.1f}"
    )
    print(f"batch-1 cnn (139 MFLOP, bench model) run  {cnn_us:10.1f} us (median)")
    print(f"placement_us={placement_us:.1f} ratio={placement_us / cnn_us:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
