"""Regenerate ``core/data/spot_preemptions.csv`` from a local copy of skypilot-org/spot-traces.

The simulator needs observed spot lifetimes, not the raw tick series, so this reduces each
single-node preemption trace to the lifetimes of the instances it saw. A trace is a JSON object
``{"metadata": {"gap_seconds": g}, "data": [...]}`` with one sample every ``g`` seconds; in the
single-node preemption traces a sample is 1 while the probe's spot instance is running and 0
while it is not (preempted, or not yet relaunched). So each maximal run of 1s is one instance:
its lifetime is the run's length times ``g`` (good to one tick), it ended in a preemption when a
0 follows, and it is right-censored (``+``) when the trace ends first.

Offline: it reads a git directory (the bare mirror, or a clone's ``.git``), never the network;
nothing in the tests or CI runs it. Usage::

    python scripts/spot_preemptions.py --git-dir /path/to/spot-traces.git [--commit SHA]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import subprocess
from itertools import groupby
from pathlib import Path

REPO = "skypilot-org/spot-traces"
OUT = Path(__file__).resolve().parent.parent / "core" / "data" / "spot_preemptions.csv"

# (cloud, sku, accelerator, trace start, folder, zones, file suffix): the single-node preemption
# traces of the repository's README. The SKUs are the README's ("p3.2xlarge (1 V100)",
# "c3-highcpu-88"); the file names say only "v100_1" and "c3-88". The repository has no GPU
# preemption trace on GCP and nothing on Azure; its r5.16xlarge (AWS CPU) trace is left out
# because the p3.2xlarge one covers AWS with a GPU.
SOURCES = [
    (
        "aws",
        "p3.2xlarge",
        "V100",
        "2023-04-22",
        "preemption/1-node/aws-04-22-2023",
        ("us-east-1c", "us-east-1f", "us-west-2b", "us-west-2c"),
        "_v100_1.json",
    ),
    (
        "gcp",
        "c3-highcpu-88",
        "none",
        "2023-04-30",
        "preemption/1-node/gcp-04-30-2023",
        ("us-central1-a", "us-central1-b", "us-central1-c", "us-east1-b"),
        "_c3-88.json",
    ),
]
COLUMNS = [
    "trace",
    "cloud",
    "sku",
    "accelerator",
    "zone",
    "start",
    "gap_s",
    "span_s",
    "lifetimes_s",
    "source_repo",
    "source_commit",
    "source_path",
    "as_of",
]


def _git(git_dir: str, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", git_dir, *args], check=True, capture_output=True, text=True
    ).stdout


def lifetimes(data: list[int], gap_s: int) -> list[str]:
    """Each run of 1s as ``"<seconds>"`` (preempted) or ``"<seconds>+"`` (trace ended first)."""
    if any(v not in (0, 1) for v in data):
        raise ValueError("a single-node trace holds only 0 and 1")
    if data[0] == 1:  # its launch time is unknown: the lifetime would be left-truncated
        raise ValueError("the trace starts with an instance already running")
    out: list[str] = []
    at = 0
    for value, run in groupby(data):
        n = len(list(run))
        at += n
        if value == 1:
            out.append(f"{n * gap_s}{'+' if at == len(data) else ''}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--git-dir", required=True, help=f"a git directory of {REPO}")
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--as-of", default=datetime.date.today().isoformat())
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    commit = _git(args.git_dir, "rev-parse", f"{args.commit}^{{commit}}").strip()
    rows: list[list[str]] = []
    for cloud, sku, accelerator, start, folder, zones, suffix in SOURCES:
        for zone in zones:
            path = f"{folder}/{zone}{suffix}"
            trace = json.loads(_git(args.git_dir, "show", f"{commit}:{path}"))
            gap = int(trace["metadata"]["gap_seconds"])
            data = [int(v) for v in trace["data"]]
            rows.append(
                [
                    f"{cloud}:{sku}:{zone}",
                    cloud,
                    sku,
                    accelerator,
                    zone,
                    start,
                    str(gap),
                    str(gap * len(data)),
                    " ".join(lifetimes(data, gap)),
                    REPO,
                    commit,
                    path,
                    args.as_of,
                ]
            )
    with args.out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    print(f"{args.out}: {len(rows)} traces")


if __name__ == "__main__":
    main()
