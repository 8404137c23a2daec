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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_QUEUE_DELAY_US",
    "BatchingConfig",
    "parse_pbtxt",
    "read_batching",
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


def read_batching(path: Path) -> BatchingConfig:
    """The batching settings of one ``config.pbtxt`` (the defaults when there is none).

    Raises:
        ConfigError: the file is malformed or a value is out of range.
    """
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
