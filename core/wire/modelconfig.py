"""Triton's model configuration (``config.pbtxt``): the subset gpufan reads, for both sides.

The worker batches by it; the front door reads ``max_batch_size`` to know whether a model can be
split at all (0: no batch axis). The subset, in protobuf text format as Triton writes it::

    max_batch_size: 256
    dynamic_batching {
      max_queue_delay_microseconds: 200
      preferred_batch_size: [32, 64]
    }
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_QUEUE_DELAY_US",
    "Accelerator",
    "BatchingConfig",
    "ModelConfig",
    "WarmupInput",
    "WarmupSample",
    "parse_pbtxt",
    "read_batching",
    "read_config",
]

CONFIG_FILE = "config.pbtxt"
# 64 items keeps one batch of the CNN benchmark model (~139 MFLOP/item) under ~10 GFLOP, a few
# milliseconds on a datacentre GPU, so batching never costs a lone caller a long wait behind others.
DEFAULT_MAX_BATCH_SIZE = 64
# 500 us is Triton's usual starting point for max_queue_delay_microseconds: long enough for a
# handful of concurrent callers to arrive, short next to the ~1 ms a request spends on the wire.
DEFAULT_MAX_QUEUE_DELAY_US = 500


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """How requests for one model are coalesced; ``max_batch_size`` 0 means no batch axis."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    preferred_batch_sizes: tuple[int, ...] = ()
    dynamic_batching: bool = True
    # Requests that may wait for a run (``default_queue_policy.max_queue_size``; 0 is Triton's
    # "unbounded"); None: four rounds of full batches per instance (``queue_limit``).
    max_queue_size: int | None = None

    def queue_limit(self, instances: int) -> int | None:
        """The most requests the batcher queues before it sheds (None: no bound)."""
        if self.max_queue_size is not None:
            return self.max_queue_size or None
        return 4 * max(self.max_batch_size, 1) * max(instances, 1)


@dataclass(frozen=True, slots=True)
class Accelerator:
    """One ``optimization.execution_accelerators`` entry: ``tensorrt``, ``cuda``, ``openvino``."""

    name: str
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WarmupInput:
    """One input of a ``model_warmup`` sample: zeros (``zero_data``) or ``random_data``."""

    datatype: str  # OIP's name ("FP32"), from Triton's TYPE_FP32
    dims: tuple[int, ...]  # without the batch axis, as Triton writes them
    random: bool = False


@dataclass(frozen=True, slots=True)
class WarmupSample:
    """One ``model_warmup`` entry: run ``count`` times at ``batch_size`` before ready."""

    name: str
    batch_size: int
    inputs: Mapping[str, WarmupInput]
    count: int = 1


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The subset of Triton's ``ModelConfig`` (and its ONNX Runtime backend's options) gpufan
    honours. ``parameters`` are the backend's string parameters (``intra_op_thread_count``,
    ``cudnn_conv_algo_search``, ``gpu_mem_limit``, ``arena_extend_strategy``, ...)."""

    batching: BatchingConfig = field(default_factory=BatchingConfig)
    instance_count: int = 1
    instance_kind: str = "KIND_AUTO"
    gpu_accelerators: tuple[Accelerator, ...] = ()
    cpu_accelerators: tuple[Accelerator, ...] = ()
    cuda_graphs: bool = False
    graph_level: int | None = None  # -1 basic, 1 basic + extended, 2 none; None: all
    parameters: Mapping[str, str] = field(default_factory=dict)
    warmup: tuple[WarmupSample, ...] = ()


_KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU")
_GRAPH_LEVELS = (-1, 1, 2)


def read_batching(path: Path) -> BatchingConfig:
    """The batching settings of one ``config.pbtxt`` (the defaults when there is none).

    Raises:
        ConfigError: the file is malformed or a value is out of range.
    """
    return read_config(path).batching


def read_config(path: Path) -> ModelConfig:
    """One ``config.pbtxt`` as gpufan honours it (the defaults when there is none).

    Raises:
        ConfigError: the file is malformed, or a value is out of range or of the wrong kind,
            naming the file and the key.
    """
    if not path.is_file():
        return ModelConfig()
    doc = parse_pbtxt(path.read_text(), source=str(path))
    where = str(path)
    mbs = _int(doc, "max_batch_size", where, DEFAULT_MAX_BATCH_SIZE)
    dyn = _block(doc, "dynamic_batching", where)
    delay = _int(dyn, "max_queue_delay_microseconds", where, DEFAULT_MAX_QUEUE_DELAY_US)
    preferred = tuple(_ints(dyn.get("preferred_batch_size", []), where))
    queue = _block(dyn, "default_queue_policy", where)
    max_queue = _int(queue, "max_queue_size", where, 0) if "max_queue_size" in queue else None
    count, kind = 0, "KIND_AUTO"
    for group in doc.get("instance_group", []):
        for g in group if isinstance(group, list) else [group]:
            if not isinstance(g, dict):
                raise ConfigError(f"{where}: instance_group entries must be {{ ... }} blocks")
            count += _int(g, "count", where, 1)
            kind = _enum(g, "kind", where, _KINDS, kind)
    optimization = _block(doc, "optimization", where)
    accelerators = _block(optimization, "execution_accelerators", where)
    graph = _block(optimization, "graph", where)
    level = _int(graph, "level", where, 0) if "level" in graph else None
    if level is not None and level not in _GRAPH_LEVELS:
        raise ConfigError(f"{where}: optimization.graph.level must be -1, 1 or 2, got {level}")
    cuda = _block(optimization, "cuda", where)
    return ModelConfig(
        batching=BatchingConfig(mbs, delay, preferred, max_queue_size=max_queue),
        instance_count=max(count, 1),
        instance_kind=kind,
        gpu_accelerators=_accelerators(accelerators, "gpu_execution_accelerator", where),
        cpu_accelerators=_accelerators(accelerators, "cpu_execution_accelerator", where),
        cuda_graphs=_bool(cuda, "graphs", where),
        graph_level=level,
        parameters=_string_map(doc.get("parameters", []), where, nested=True),
        warmup=tuple(_warmup(doc.get("model_warmup", []), where)),
    )


def _block(doc: Mapping[str, list[Any]], key: str, where: str) -> dict[str, list[Any]]:
    value = doc.get(key, [{}])[-1]
    if isinstance(value, list):  # written as key: [ { ... } ]
        value = value[-1] if value else {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key} must be a {{ ... }} block")
    return value


def _scalar(doc: Mapping[str, list[Any]], key: str) -> Any:
    value = doc.get(key, [None])[-1]
    return value[-1] if isinstance(value, list) and value else value


def _bool(doc: Mapping[str, list[Any]], key: str, where: str) -> bool:
    value = _scalar(doc, key)
    if value is None:
        return False
    if value in ("true", "false", 1, 0):
        return value in ("true", 1)
    raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")


def _enum(
    doc: Mapping[str, list[Any]], key: str, where: str, allowed: tuple[str, ...], default: str
) -> str:
    value = _scalar(doc, key)
    if value is None:
        return default
    if value not in allowed:
        raise ConfigError(f"{where}: {key} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _entries(values: list[Any]) -> list[dict[str, list[Any]]]:
    return [e for v in values for e in (v if isinstance(v, list) else [v]) if isinstance(e, dict)]


def _string_map(values: list[Any], where: str, *, nested: bool = False) -> dict[str, str]:
    """``parameters { key: "k" value: "v" }`` (accelerators) or ``value: { string_value: "v" }``
    (the model's backend parameters) into ``{k: v}``."""
    out = {}
    for entry in _entries(values):
        key, value = _scalar(entry, "key"), _scalar(entry, "value")
        if nested and isinstance(value, dict):
            value = _scalar(value, "string_value")
        if not isinstance(key, str) or value is None or isinstance(value, dict):
            raise ConfigError(f"{where}: parameters need a key and a string value, got {entry}")
        out[key] = str(value)
    return out


def _accelerators(doc: Mapping[str, list[Any]], key: str, where: str) -> tuple[Accelerator, ...]:
    found = []
    for entry in _entries(doc.get(key, [])):
        name = _scalar(entry, "name")
        if not isinstance(name, str):
            raise ConfigError(f"{where}: every {key} needs a name")
        found.append(Accelerator(name, _string_map(entry.get("parameters", []), where)))
    return tuple(found)


def _warmup(values: list[Any], where: str) -> list[WarmupSample]:
    samples = []
    for entry in _entries(values):
        name = str(_scalar(entry, "name") or "warmup")
        inputs = {}
        for item in _entries(entry.get("inputs", [])):
            key, value = _scalar(item, "key"), _scalar(item, "value")
            if not isinstance(key, str) or not isinstance(value, dict):
                raise ConfigError(f"{where}: model_warmup {name!r}: inputs need a key and a value")
            datatype = _scalar(value, "data_type")
            if not isinstance(datatype, str) or not datatype.startswith("TYPE_"):
                raise ConfigError(f"{where}: model_warmup {name!r}: {key}: data_type TYPE_...")
            if "input_data_file" in value:
                raise ConfigError(
                    f"{where}: model_warmup {name!r}: {key}: input_data_file is not supported; "
                    "use zero_data or random_data"
                )
            oip = {"STRING": "BYTES"}.get(datatype[5:], datatype[5:])
            dims = tuple(_ints(value.get("dims", []), where))
            inputs[key] = WarmupInput(oip, dims, _bool(value, "random_data", where))
        samples.append(
            WarmupSample(
                name, _int(entry, "batch_size", where, 1), inputs, _int(entry, "count", where, 1)
            )
        )
    return samples


def _int(doc: dict[str, list[Any]], key: str, where: str, default: int) -> int:
    values = list(_ints(doc.get(key, []), where))
    if not values:
        return default
    if values[-1] < 0:
        raise ConfigError(f"{where}: {key} must be >= 0, got {values[-1]}")
    return values[-1]


def _ints(values: list[Any], where: str) -> Iterator[int]:
    for v in values:
        for item in v if isinstance(v, list) else [v]:
            if not isinstance(item, int):
                raise ConfigError(f"{where}: expected an integer, got {item!r}")
            yield item


# ------------------------------------------------------------------------- protobuf text format

_TOKEN = re.compile(
    r"""(?P<space>[ \t\r]+|\#[^\n]*)
      | (?P<newline>\n)
      | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
      | (?P<punct>[{}\[\]:,;<>])""",
    re.VERBOSE,
)
_CLOSE = {"{": "}", "<": ">"}


def _tokenize(text: str, source: str) -> list[tuple[str, str, int]]:
    tokens: list[tuple[str, str, int]] = []
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ConfigError(f"{source}:{line}: unexpected character {text[pos]!r}")
        kind = m.lastgroup or ""
        if kind == "newline":
            line += 1
        elif kind != "space":
            tokens.append((kind, m.group(), line))
        pos = m.end()
    return tokens


class _Parser:
    """Recursive descent over ``field := name [':'] (scalar | '[' list ']' | '{' fields '}')``."""

    def __init__(self, tokens: list[tuple[str, str, int]], source: str) -> None:
        self.tokens = tokens
        self.pos = 0
        self.source = source

    def fail(self, message: str) -> ConfigError:
        # The line of the token just taken: the one that broke the grammar.
        line = self.tokens[min(max(self.pos - 1, 0), len(self.tokens) - 1)][2] if self.tokens else 1
        return ConfigError(f"{self.source}:{line}: {message}")

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            raise self.fail("unexpected end of file")
        self.pos += 1
        return tok

    def fields(self, close: str | None) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        while True:
            tok = self.peek()
            if tok is None:
                if close is not None:
                    raise self.fail(f"missing {close!r}")
                return out
            if close is not None and tok[1] == close:
                self.pos += 1
                return out
            kind, name, _ = self.take()
            if kind != "ident":
                raise self.fail(f"expected a field name, got {name!r}")
            nxt = self.peek()
            has_colon = nxt is not None and nxt[1] == ":"
            if has_colon:
                self.pos += 1
            out.setdefault(name, []).append(self.value(name, has_colon))
            if (sep := self.peek()) is not None and sep[1] in ",;":
                self.pos += 1

    def value(self, name: str, has_colon: bool) -> Any:
        kind, text, _ = self.take()
        if text in _CLOSE:
            return self.fields(_CLOSE[text])
        if text != "[" and not has_colon:  # only messages and lists may omit the colon
            raise self.fail(f"expected ':' or '{{' after {name!r}, got {text!r}")
        if text == "[":
            items: list[Any] = []
            while (tok := self.peek()) is None or tok[1] != "]":
                items.append(self.value(name, True))
                if (sep := self.peek()) is not None and sep[1] == ",":
                    self.pos += 1
            self.pos += 1
            return items
        if kind == "number":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind in ("string", "ident"):
            return text[1:-1] if kind == "string" else text
        raise self.fail(f"expected a value for {name!r}, got {text!r}")


def parse_pbtxt(text: str, source: str = "<config.pbtxt>") -> dict[str, list[Any]]:
    """Parse protobuf text format into ``{field: [values...]}`` (fields may repeat).

    Messages become nested dicts and ``[a, b]`` lists; enum names stay strings.

    Raises:
        ConfigError: naming ``source`` and the line of the first malformed token.
    """
    parser = _Parser(_tokenize(text, source), source)
    return parser.fields(None)
