"""``gpufan profile``: measure a model's speed on a live target, as Triton's Model Analyzer does.

A sweep of batch sizes x concurrency against any Open Inference Protocol endpoint (a gpufan
worker, Triton, KServe): for each cell, ``concurrency`` closed-loop clients send pre-encoded
binary requests of ``batch`` random items until ``--requests`` have been answered or
``--seconds`` have passed (both bound every cell), and the items/s, p50 and p99 latency and, where
the target exports NVML's reading in ``/metrics``, GPU memory in use are written as a profile
table (``core.wire.profiletable``). Put it at ``{repository}/{model}/profile.csv`` and the
cost model prefers it to the spec sheet for that model on that accelerator; ``gpufan plan``
then says "measured <date> on <host>".
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from core.cli.plan import parse_inputs
from core.errors import BadRequest, ConfigError
from core.planning.accelerators import accelerator
from core.wire.client import OipClient, as_request
from core.wire.profiletable import MeasuredRow, profile_csv, read_rows
from core.wire.session import make_session
from core.wire.tensors import dtype_of, encode_request

__all__ = ["run_profile"]

_GPU_MEMORY = re.compile(r"^gpufan_gpu_memory_used_bytes\s+([0-9.eE+]+)$", re.M)
_GPU_AVAILABLE = re.compile(r"^gpufan_gpu_available\s+1(\.0)?$", re.M)  # else NVML never answered


def _sizes(text: str, flag: str) -> list[int]:
    try:
        sizes = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise BadRequest(f"{flag} {text!r}: comma-separated whole numbers") from None
    if not sizes or sizes[0] < 1:
        raise BadRequest(f"{flag} {text!r}: at least one size, each >= 1")
    return sizes


def _inputs(
    metadata: Mapping[str, Any], batch: int, given: Mapping[str, Sequence[int]]
) -> dict[str, np.ndarray]:
    """Random inputs of ``batch`` items in the model's signature; ``given`` fills other
    dynamic dims (its batch dim is replaced by ``batch``)."""
    rng = np.random.default_rng(batch)
    arrays = {}
    for spec in metadata["inputs"]:
        name, shape = spec["name"], list(spec["shape"])
        if name in given:
            shape = [batch, *given[name][1:]] if shape and shape[0] == -1 else list(given[name])
        elif shape and shape[0] == -1:
            shape[0] = batch
        if any(d < 0 for d in shape):
            raise BadRequest(
                f"input {name!r} has dynamic dims {spec['shape']}: give --input {name}=DIMS"
            )
        dtype = dtype_of(spec["datatype"])
        if spec["datatype"] == "BYTES":
            arrays[name] = np.full(shape, "", dtype=object)
        elif np.issubdtype(dtype, np.floating):
            arrays[name] = rng.standard_normal(shape).astype(dtype)
        else:
            arrays[name] = np.zeros(shape, dtype)
    return arrays


async def _cell(
    url: str, body: bytes, headers: Mapping[str, str], concurrency: int, requests: int,
    seconds: float,
) -> tuple[list[float], float]:  # fmt: skip
    """Latencies of the answered requests and the cell's wall time."""
    latencies: list[float] = []
    sent = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def client() -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                started = time.perf_counter()
                async with http.post(url, data=body, headers=dict(headers)) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise ConfigError(f"{url}: {resp.status} {(await resp.text())[:300]}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started


async def _gpu_memory(base: str, http: aiohttp.ClientSession) -> int | None:
    try:
        async with http.get(f"{base}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            text = await resp.text() if resp.status == 200 else ""
    except (aiohttp.ClientError, TimeoutError):
        return None
    m = _GPU_MEMORY.search(text) if _GPU_AVAILABLE.search(text) else None
    return int(float(m.group(1))) if m else None


async def _sweep(args: argparse.Namespace, token: str | None) -> list[MeasuredRow]:
    base = args.url.rstrip("/")
    batches = _sizes(args.batch_sizes, "--batch-sizes")
    concurrencies = _sizes(args.concurrency, "--concurrency")
    given = parse_inputs(args.input or [])
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with make_session() as http:
        client = OipClient(base, http, token=token)
        metadata = await client.model_metadata(args.model)
        params = metadata.get("parameters") or {}
        provider = str(params.get("execution_provider", ""))
        acc = args.accelerator or ("cpu" if provider == "CPUExecutionProvider" else None)
        if acc is None:
            raise BadRequest("--accelerator: the target's GPU (as in gpufan.yaml), e.g. l4")
        accelerator(acc)  # an accelerator gpufan knows, or a ConfigError listing them
        variant = str(params.get("variant") or "fp32")
        today = dt.date.today().isoformat()
        host = args.host or urlsplit(base).hostname or base
        rows = []
        for batch in batches:
            body_chunks, enc_headers = encode_request(
                as_request(_inputs(metadata, batch, given)), binary=True
            )
            body = b"".join(bytes(c) for c in body_chunks)
            url = f"{base}/v2/models/{args.model}/infer"
            for c in concurrencies:
                all_headers = {**enc_headers, **headers}
                await _cell(url, body, all_headers, c, min(c * 2, args.requests), args.seconds)
                latencies, wall = await _cell(
                    url, body, all_headers, c, args.requests, args.seconds
                )
                if not latencies:
                    raise ConfigError(f"batch {batch}, concurrency {c}: no request answered")
                ordered = sorted(latencies)
                p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
                row = MeasuredRow(
                    today, args.model, args.target or base, host, acc, variant, batch, c,
                    len(latencies) * batch / wall, statistics.median(ordered) * 1e3, p99 * 1e3,
                    await _gpu_memory(base, http),
                )  # fmt: skip
                print(f"  batch {batch:>4} x {c:>3} clients: {row.items_per_s:>10,.1f} items/s, "
                      f"p50 {row.p50_ms:.2f} ms, p99 {row.p99_ms:.2f} ms "
                      f"({len(latencies)} requests)")  # fmt: skip
                rows.append(row)
    return rows


def _merged(out: Path, rows: Sequence[MeasuredRow]) -> str:
    """The new rows, after the file's rows for other targets, accelerators or variants.

    Raises:
        ConfigError: the file is there but is not a profile table.
    """
    old = read_rows(out.read_text(), str(out)) if out.is_file() else []
    new = {(r.target, r.accelerator, r.variant) for r in rows}
    return profile_csv(
        [r for r in old if (r.target, r.accelerator, r.variant) not in new] + list(rows)
    )


def run_profile(args: argparse.Namespace) -> int:
    """Sweep, print each cell, and write (or print) the table; 0 on success.

    Raises:
        BadRequest: bad flags. ConfigError: an unknown accelerator, a target that errs, a file
            that is not a profile table.
    """
    token = os.environ.get(args.token_env) if args.token_env else None
    print(f"gpufan profile {args.model} at {args.url}:")
    rows = asyncio.run(_sweep(args, token))
    if args.out is None:
        print(profile_csv(rows), end="")
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(_merged(args.out, rows))
        print(f"wrote {len(rows)} rows to {args.out}")
    return 0
