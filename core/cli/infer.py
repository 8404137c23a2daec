"""``gpufan infer``: send a batch from a .npy/.npz file, print outputs and the placement report."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import aiohttp
import numpy as np

from core.cli.render import placement_report, placement_summary, shard_table, table
from core.errors import BadRequest, ConfigError
from core.wire.asgi import run_async
from core.wire.client import OipClient, as_request
from core.wire.staging import encode_arrays
from core.wire.tensors import InferResponse

__all__ = ["load_inputs", "run_infer"]


def load_inputs(path: Path, input_names: list[str]) -> dict[str, np.ndarray]:
    """``.npy`` feeds a single-input model; ``.npz`` maps its array names to input names."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            missing = sorted(set(input_names) - set(arrays))
            if missing:
                raise BadRequest(f"{path} lacks inputs {missing}; it has {sorted(arrays)}")
            return {n: arrays[n] for n in input_names}
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BadRequest(f"cannot read {path}: {e}") from None
    if len(input_names) != 1:
        raise BadRequest(f"the model has inputs {input_names}: pass an .npz with one array each")
    return {input_names[0]: array}


async def _infer(args: argparse.Namespace, token: str | None) -> InferResponse:
    async with aiohttp.ClientSession() as http:
        client = OipClient(args.url, http, token=token)
        metadata = await client.model_metadata(args.model, timeout=args.timeout)
        names = [i["name"] for i in metadata["inputs"]]
        params = {"slo_ms": args.slo_ms} if args.slo_ms else None
        request = as_request(
            load_inputs(args.input, names), binary=not args.json, parameters=params
        )
        return await client.infer(args.model, request, binary=not args.json, timeout=args.timeout)


def run_infer(args: argparse.Namespace) -> int:
    token = None
    if args.token_env:
        if args.token_env not in os.environ:
            raise ConfigError(f"--token-env: environment variable {args.token_env} is not set")
        token = os.environ[args.token_env]
    response = run_async(_infer(args, token))
    rows = [[t.name, t.datatype, "x".join(map(str, t.data.shape))] for t in response.outputs]
    print(table(["output", "datatype", "shape"], rows))
    report = placement_report(response.parameters)
    if report:
        print()
        print(shard_table(report))
        print(placement_summary(report))
        print(
            f"\ntotal {report['total_ms']:.1f} ms, re-dispatched shards: {report['redispatched']}"
        )
    if args.output:
        _save(args.output, response)
        print(f"saved outputs to {args.output}")
    return 0


def _save(path: Path, response: InferResponse) -> None:
    if path.suffix == ".npz":
        # not np.savez, whose own keywords (file, allow_pickle) clash with outputs of those names
        arrays = {t.name: t.data for t in response.outputs}
        path.write_bytes(encode_arrays(arrays, allow_pickle=True))
    else:
        np.save(path, response.outputs[0].data)
