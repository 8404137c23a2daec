"""A Ray Serve deployment serving one ONNX model with onnxruntime behind the OIP infer route.

Run by ``bench.overhead --peers`` in its own virtualenv (``bench.peers``), so that the same load
generator sends Ray Serve the same binary-tensor request it sends gpufan and KServe::

    python bench/peers/rayserve_onnx.py --model-name mlp --model-path M.onnx --port P

Ray Serve has no inference protocol of its own: this deployment reads the OIP binary tensor
extension (a JSON header, then each tensor's little-endian bytes) and answers in kind, as a Ray
Serve user fronting an OIP client would write it. Prints ``ready`` once the route answers.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import onnxruntime as ort
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


@serve.deployment(max_ongoing_requests=64)
class OnnxModel:
    def __init__(self, name: str, path: str) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.name = name
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        n = int(request.headers.get("inference-header-content-length", len(body)))
        header = json.loads(body[:n])
        feeds, offset = {}, n
        for t in header["inputs"]:
            size = t["parameters"]["binary_data_size"]
            data = np.frombuffer(body[offset : offset + size], dtype=_DTYPES[t["datatype"]])
            feeds[t["name"]] = data.reshape(t["shape"])
            offset += size
        names = [o.name for o in self.session.get_outputs()]
        outputs: list[dict[str, Any]] = []
        blobs = []
        for name, value in zip(names, self.session.run(names, feeds), strict=True):
            raw = np.ascontiguousarray(value).tobytes()
            outputs.append({
                "name": name, "datatype": _NAMES[value.dtype], "shape": list(value.shape),
                "parameters": {"binary_data_size": len(raw)},
            })  # fmt: skip
            blobs.append(raw)
        head = json.dumps({"model_name": self.name, "outputs": outputs}).encode()
        return Response(
            head + b"".join(blobs),
            headers={"inference-header-content-length": str(len(head))},
            media_type="application/octet-stream",
        )


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--model-name", required=True)
    p.add_argument("--model-path", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--num-cpus", type=int, default=None)
    args = p.parse_args()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(
        OnnxModel.bind(args.model_name, args.model_path),
        route_prefix=f"/v2/models/{args.model_name}/infer",
    )
    print("ready", flush=True)
    while True:
        time.sleep(3600)
