"""A Triton-style model repository: ``REPO/{model}/{version}/model.onnx`` (+ ``config.pbtxt``).

Layout::

    REPO/
      digits/
        config.pbtxt          optional; the subset below is read, other keys are ignored
        1/model.onnx
        2/model.onnx          the highest numeric version is served by default

The ``config.pbtxt`` subset (protobuf text format, as Triton writes it)::

    max_batch_size: 256
    dynamic_batching {
      max_queue_delay_microseconds: 200
      preferred_batch_size: [32, 64]
    }

Unlike Triton, dynamic batching is on by default: a worker exists to merge concurrent requests,
so a bare repository (no config) batches with the defaults below unless the CLI turns it off.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.errors import ConfigError, NotFound

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_QUEUE_DELAY_US",
    "BatchingConfig",
    "ModelEntry",
    "Repository",
    "parse_pbtxt",
]

# 64 items keeps one batch of the CNN benchmark model (~139 MFLOP/item) under ~10 GFLOP, a few
# milliseconds on a datacentre GPU, so batching never costs a lone caller a long wait behind others.
DEFAULT_MAX_BATCH_SIZE = 64
# 500 us is Triton's usual starting point for max_queue_delay_microseconds: long enough for a
# handful of concurrent callers to arrive, short next to the ~1 ms a request spends on the wire.
DEFAULT_MAX_QUEUE_DELAY_US = 500

_MODEL_FILE = "model.onnx"
_CONFIG_FILE = "config.pbtxt"


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """How requests for one model are coalesced; ``max_batch_size`` 0 means no batch axis."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    preferred_batch_sizes: tuple[int, ...] = ()
    dynamic_batching: bool = True


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model directory: its versions (sorted numerically) and batching settings."""

    name: str
    versions: dict[str, Path]
    batching: BatchingConfig

    @property
    def latest(self) -> str:
        return next(reversed(self.versions))

    def resolve(self, version: str | None) -> str:
        """The version to serve: the highest when ``version`` is None; NotFound lists the rest."""
        if version is None:
            return self.latest
        if version not in self.versions:
            raise NotFound(
                f"model {self.name!r} has no version {version!r}; "
                f"available: {', '.join(self.versions)}"
            )
        return version


class Repository:
    """The models found under a repository root, read once at start-up."""

    def __init__(self, root: Path, models: dict[str, ModelEntry]) -> None:
        self.root = root
        self.models = models

    @classmethod
    def load(
        cls,
        root: str | Path,
        *,
        max_batch_size: int | None = None,
        max_queue_delay_us: int | None = None,
        dynamic_batching: bool = True,
    ) -> Repository:
        """Scan ``root``; explicit arguments (the CLI flags) override each model's config.

        Raises:
            ConfigError: the root is missing or holds no model, or a config.pbtxt is malformed.
        """
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"model repository {root} does not exist or is not a directory")
        models: dict[str, ModelEntry] = {}
        for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            versions = {
                v.name: v / _MODEL_FILE
                for v in sorted(
                    (d for d in model_dir.iterdir() if d.is_dir() and d.name.isdigit()),
                    key=lambda d: int(d.name),
                )
                if (v / _MODEL_FILE).is_file()
            }
            if not versions:
                continue
            batching = _read_config(model_dir / _CONFIG_FILE)
            if max_batch_size is not None:
                batching = replace(batching, max_batch_size=max_batch_size)
            if max_queue_delay_us is not None:
                batching = replace(batching, max_queue_delay_us=max_queue_delay_us)
            if not dynamic_batching:
                batching = replace(batching, dynamic_batching=False)
            models[model_dir.name] = ModelEntry(model_dir.name, versions, batching)
        if not models:
            raise ConfigError(
                f"model repository {root} holds no model: expected {root}/<model>/<version>/"
                f"{_MODEL_FILE} with a numeric <version>"
            )
        return cls(root, models)

    def entry(self, model: str) -> ModelEntry:
        """The named model; NotFound lists the available ones."""
        try:
            return self.models[model]
        except KeyError:
            raise NotFound(
                f"unknown model {model!r}; available: {', '.join(self.models)}"
            ) from None

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.models.values())


def _read_config(path: Path) -> BatchingConfig:
    if not path.is_file():
        return BatchingConfig()
    doc = parse_pbtxt(path.read_text(), source=str(path))
    where = str(path)
    mbs = _int(doc, "max_batch_size", where, DEFAULT_MAX_BATCH_SIZE)
    dyn = doc.get("dynamic_batching", [{}])[-1]
    if not isinstance(dyn, dict):
        raise ConfigError(f"{where}: dynamic_batching must be a {{ ... }} block")
    delay = _int(dyn, "max_queue_delay_microseconds", where, DEFAULT_MAX_QUEUE_DELAY_US)
    preferred = tuple(_ints(dyn.get("preferred_batch_size", []), where))
    return BatchingConfig(mbs, delay, preferred)


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
