"""A KServe ModelServer serving one ONNX model with onnxruntime, as a KServe user writes one.

Run by tests/integration/test_kserve_peer.py and ``bench.overhead --peers`` in its own virtualenv
(``bench.peers``)::

    python bench/peers/kserve_onnx.py --model_name digits --model_path M.onnx --http_port P

It implements ``predict`` only, as KServe's custom-model examples do: KServe answers model
metadata with empty inputs and outputs, and has no ``/config`` route — the quirks the front door
must see through.
"""

from __future__ import annotations

import argparse

import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server
from kserve.utils.numpy_codec import from_np_dtype


class OnnxModel(Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # as gpufan's worker runs it: results equal bit for bit
        self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        self.ready = True
        return True

    async def predict(
        self, payload: InferRequest, headers: object = None, response_headers: object = None
    ) -> InferResponse:
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        names = [o.name for o in self.session.get_outputs()]
        outputs = []
        for name, value in zip(names, self.session.run(names, feeds), strict=True):
            out = InferOutput(
                name=name, shape=list(value.shape), datatype=from_np_dtype(value.dtype)
            )
            out.set_data_from_numpy(value, binary_data=True)
            outputs.append(out)
        return InferResponse(
            response_id=payload.id, model_name=self.name, infer_outputs=outputs,
            use_binary_outputs=True,
        )  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_path", required=True)
    args, _ = parser.parse_known_args()
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port).start(
        [OnnxModel(args.model_name, args.model_path)]
    )
