"""``gpufan optimize``: precision variants of a model, each admitted only within an accuracy budget.

From an FP32 ``model.onnx`` and a set of inputs (a ``.npz``), up to three variants are built with
onnxruntime's and onnxconverter-common's own tools, never hand-written converters:

- ``ort``: the graph onnxruntime's extended optimisations produce (constant folding, fusions),
  saved so a worker skips them at load;
- ``fp16``: mixed precision with float32 inputs and outputs (``convert_float_to_float16``,
  ``keep_io_types``), for GPUs;
- ``int8``: static QDQ quantisation calibrated on the set (``quantize_static``), for CPUs with
  VNNI and for TensorRT.

The set's first half calibrates, the second validates: each variant runs the validation half on
the CPU and is compared with FP32 on the same inputs (max absolute and relative error over float
outputs; top-1 agreement over class outputs, taken to be every 2-D float output [N, classes] and
every 1-D integer or string output [N]). A variant outside the budget, or one this
onnxruntime cannot run here, is refused with its figures; an accepted one is written beside the
model as ``{version}/variants/{variant}.onnx`` with ``{variant}.json``, its accuracy record, which
``gpufan worker --variant`` serves and reports.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from core.errors import ConfigError
from gpu_containers.repository import VARIANTS_DIR

__all__ = [
    "VARIANTS",
    "Accuracy",
    "Budget",
    "Outcome",
    "compare",
    "load_set",
    "optimize",
]

VARIANTS = ("ort", "fp16", "int8")
_LABEL_KEYS = ("y", "label", "labels")  # a set's ground truth, never fed to the model
_EPS = 1e-12


@dataclass(frozen=True)
class Budget:
    """The largest departure from FP32 a variant may show; None: not limited."""

    max_abs_error: float | None = None
    max_rel_error: float | None = None
    min_top1_agreement: float | None = 0.99


@dataclass(frozen=True)
class Accuracy:
    """A variant against FP32 on the validation items; ``top1_agreement`` None: no class output."""

    items: int
    max_abs_error: float
    max_rel_error: float
    top1_agreement: float | None

    def violations(self, budget: Budget) -> list[str]:
        found = []
        if budget.max_abs_error is not None and self.max_abs_error > budget.max_abs_error:
            found.append(f"max abs error {self.max_abs_error:.3g} > {budget.max_abs_error:.3g}")
        if budget.max_rel_error is not None and self.max_rel_error > budget.max_rel_error:
            found.append(f"max rel error {self.max_rel_error:.3g} > {budget.max_rel_error:.3g}")
        floor = budget.min_top1_agreement
        if floor is not None and self.top1_agreement is not None and self.top1_agreement < floor:
            found.append(f"top-1 agreement {self.top1_agreement:.4f} < {floor:.4f}")
        return found


@dataclass(frozen=True)
class Outcome:
    """One variant: written (``path``) or refused (``reason``), with what was measured."""

    variant: str
    accuracy: Accuracy | None
    path: Path | None
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.path is not None


def _is_scores(a: np.ndarray) -> bool:
    return a.ndim == 2 and a.shape[1] > 1 and np.issubdtype(a.dtype, np.floating)


def _is_labels(a: np.ndarray) -> bool:
    return a.ndim == 1 and (np.issubdtype(a.dtype, np.integer) or a.dtype.kind in "USO")


def compare(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> Accuracy:
    """Errors of ``candidate`` against ``reference``, output by output (same names, same items).

    Raises:
        ConfigError: the candidate lacks an output or changes its shape.
    """
    abs_err = rel_err = 0.0
    agreements: list[float] = []
    items = 0
    for name, want in reference.items():
        if name not in candidate or candidate[name].shape != want.shape:
            got = candidate.get(name)
            raise ConfigError(
                f"output {name!r}: {None if got is None else list(got.shape)}, FP32 gives "
                f"{list(want.shape)}"
            )
        got = candidate[name]
        items = max(items, want.shape[0] if want.ndim else 1)
        if np.issubdtype(want.dtype, np.floating):
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            if diff.size:
                abs_err = max(abs_err, float(diff.max()))
                scale = np.maximum(np.abs(want.astype(np.float64)), _EPS)
                rel_err = max(rel_err, float((diff / scale).max()))
        if _is_scores(want):
            agreements.append(float(np.mean(got.argmax(axis=1) == want.argmax(axis=1))))
        elif _is_labels(want):
            agreements.append(float(np.mean(got == want)))
    return Accuracy(items, abs_err, rel_err, min(agreements) if agreements else None)


def load_set(path: Path, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The model's inputs from a ``.npz``: arrays named as the inputs, or, for a one-input
    model, the one array that is not a label (``x`` in the demo's set).

    Raises:
        ConfigError: unreadable, too few items to split, or no array for an input.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable .npz: {e}") from None
    initializers = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    if all(n in arrays for n in names):
        feeds = {n: arrays[n] for n in names}
    else:
        candidates = [k for k in arrays if k not in _LABEL_KEYS]
        if len(names) != 1 or len(candidates) != 1:
            raise ConfigError(
                f"{path}: expected arrays named {names} (the model's inputs); it holds "
                f"{sorted(arrays)}"
            )
        feeds = {names[0]: arrays[candidates[0]]}
    sizes = {n: a.shape[0] if a.ndim else 0 for n, a in feeds.items()}
    if len(set(sizes.values())) != 1 or min(sizes.values()) < 2:
        raise ConfigError(f"{path}: need >= 2 items, the same on every input; got {sizes}")
    return feeds


def _session(model: str | bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, dict(feeds)), strict=True))


def _ort_variant(src: Path, dst: Path) -> None:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def _fp16_variant(src: Path, dst: Path) -> None:
    from onnxconverter_common import float16

    with warnings.catch_warnings():  # it warns for every weight below fp16's range: the gate
        warnings.simplefilter("ignore", UserWarning)  # measures what truncation costs instead
        model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over the calibration half, in chunks."""

    def __init__(self, feeds: Mapping[str, np.ndarray], chunk: int = 32) -> None:
        n = next(iter(feeds.values())).shape[0]
        self._batches = iter(
            [{k: v[i : i + chunk] for k, v in feeds.items()} for i in range(0, n, chunk)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _int8_variant(
    src: Path, dst: Path, calibration: Mapping[str, np.ndarray], per_channel: bool
) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="gpufan-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared))  # shape inference + folding, as the docs ask
        quantize_static(
            str(prepared),
            str(dst),
            _Reader(calibration),  # onnxruntime's CalibrationDataReader protocol
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def optimize(
    model_path: Path,
    data: Path,
    *,
    variants: Sequence[str] = VARIANTS,
    budget: Budget = Budget(),
    per_channel: bool = False,
) -> list[Outcome]:
    """Build, check and (when within ``budget``) write each variant beside ``model_path``.

    Raises:
        ConfigError: an unknown variant, an unreadable model or set, or a budget that checks
            nothing for this model (no class output and no error limit).
    """
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ConfigError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as e:  # onnx raises protobuf's DecodeError and OSError alike
        raise ConfigError(f"{model_path}: cannot read the model: {e}") from None
    feeds = load_set(data, model)
    n = next(iter(feeds.values())).shape[0]
    calibration = {k: v[: n // 2] for k, v in feeds.items()}
    validation = {k: v[n // 2 :] for k, v in feeds.items()}
    reference = _run(_session(str(model_path)), validation)
    no_error_limit = budget.max_abs_error is None and budget.max_rel_error is None
    classes = compare(reference, reference).top1_agreement is not None
    if no_error_limit and (budget.min_top1_agreement is None or not classes):
        what = "the budget checks nothing" if classes else "the model has no class output"
        raise ConfigError(f"{what}: give --max-abs-error or --max-rel-error")
    out_dir = model_path.parent / VARIANTS_DIR
    outcomes = []
    for variant in variants:
        with tempfile.TemporaryDirectory(prefix="gpufan-variant-") as tmp:
            built = Path(tmp) / f"{variant}.onnx"
            try:
                if variant == "ort":
                    _ort_variant(model_path, built)
                elif variant == "fp16":
                    _fp16_variant(model_path, built)
                else:
                    _int8_variant(model_path, built, calibration, per_channel)
                accuracy = compare(reference, _run(_session(str(built)), validation))
            except Exception as e:  # a converter or this build's kernels could not do it
                outcomes.append(
                    Outcome(variant, None, None, f"not built or not runnable here: {e}")
                )
                continue
            problems = accuracy.violations(budget)
            if problems:
                outcomes.append(Outcome(variant, accuracy, None, "; ".join(problems)))
                continue
            out_dir.mkdir(exist_ok=True)
            target = out_dir / f"{variant}.onnx"
            target.write_bytes(built.read_bytes())
            record = {
                "variant": variant,
                "source": model_path.name,
                "source_sha256": _sha256(model_path),
                "sha256": _sha256(target),
                "onnxruntime": ort.__version__,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "calibration_items": n // 2,
                "budget": asdict(budget),
                "accuracy": asdict(accuracy),
            }
            (out_dir / f"{variant}.json").write_text(json.dumps(record, indent=2) + "\n")
            outcomes.append(Outcome(variant, accuracy, target))
    return outcomes
