"""Flat numeric JSON tensors decoded straight to numpy, a bounded slice at a time.

Parsed whole, a JSON tensor becomes one Python object per element before numpy sees it: 20
bytes held per body byte for ``[0.0,0.0,...]``. So before the body is parsed, every flat
numeric ``"data": [...]`` array is *lifted* out of it: the rest (the skeleton, a few hundred
bytes) is parsed as usual, with a marker where each array was, and each array is parsed later,
when its tensor's datatype and element count are known, in slices of about ``_SLICE`` bytes cut
at commas, each converted into its place in one preallocated array. What is held is then the
body, the output array and one slice's objects.

Only arrays of plain numbers are lifted (digits, signs, ``.``, exponents, commas, blanks); nested
arrays, strings (BYTES, the spellings of NaN) and booleans stay in the skeleton. A marker names
its array by a per-process nonce, so a client cannot forge one, and an array lifted from a place
that is not a tensor's ``data`` (a ``parameters`` entry, say) is detected by ``unclaimed`` and
the caller parses the body whole instead.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

__all__ = ["Lifted", "lift"]

_ARRAY = re.compile(rb'"data"(\s*:\s*)\[([-+0-9.eE,\s]*)\]')
_SLICE = 1 << 18  # 256 KiB of text per parse: ~5 MiB of Python objects at most, then freed
_MIN_LIFT = 4096  # below this an array is parsed with the rest: lifting would cost more
_NONCE = "\x00gpufan-lifted-" + secrets.token_hex(8)

Convert = Callable[[list[Any]], np.ndarray]  # a slice's values -> checked array of the dtype


@dataclass(slots=True)
class Lifted:
    """A JSON document with its large flat numeric arrays held aside as spans of the body."""

    skeleton: bytes
    spans: list[tuple[int, int]]  # [start, end) of each array's text (between the brackets)
    source: bytes
    claimed: set[int]

    @classmethod
    def whole(cls, body: bytes) -> Lifted:
        """``body`` with nothing lifted: parsed whole."""
        return cls(body, [], body, set())

    def span_of(self, data: Any) -> int | None:
        """The lifted array ``data`` marks, or None when ``data`` is an ordinary value."""
        if isinstance(data, dict) and len(data) == 1 and _NONCE in data:
            index = data[_NONCE]
            if isinstance(index, int) and 0 <= index < len(self.spans):
                return index
        return None

    @property
    def slice_bytes(self) -> int:
        """The most JSON text parsed into Python objects at once by ``parse``."""
        return min(max((end - start for start, end in self.spans), default=0), _SLICE)

    def unclaimed(self) -> bool:
        """Whether some lifted array was not a tensor's ``data`` (then parse the body whole)."""
        return len(self.claimed) != len(self.spans)

    def parse(self, index: int, count: int, dtype: np.dtype[Any], convert: Convert) -> np.ndarray:
        """Array ``index`` as ``count`` elements of ``dtype``, each slice through ``convert``.

        Raises:
            ValueError: the text holds another number of elements than ``count``, or is not
                a list of JSON numbers (the message says which).
        """
        self.claimed.add(index)
        start, end = self.spans[index]
        text = self.source
        out = np.empty(count, dtype=dtype)
        filled = 0
        while start < end:
            stop = end if end - start <= _SLICE else text.rfind(b",", start, start + _SLICE)
            if stop <= start:  # one number longer than a slice: not a number JSON can hold
                raise ValueError("a value in the data is longer than any number")
            try:
                values = orjson.loads(b"[" + text[start:stop] + b"]")
            except orjson.JSONDecodeError as e:
                raise ValueError(f"the data is not a list of numbers: {e}") from None
            if filled + len(values) > count:
                raise ValueError(f"needs {count} elements, got more")
            out[filled : filled + len(values)] = convert(values)
            filled += len(values)
            start = stop + 1
        if filled != count:
            raise ValueError(f"needs {count} elements, got {filled}")
        return out


def lift(body: bytes) -> Lifted:
    """``body`` with each large flat numeric ``data`` array replaced by a marker."""
    pieces: list[bytes] = []
    spans: list[tuple[int, int]] = []
    last = 0
    for m in _ARRAY.finditer(body):
        start, end = m.span(2)
        if end - start < _MIN_LIFT:
            continue
        marker = orjson.dumps({_NONCE: len(spans)})
        pieces += [body[last : m.start()], b'"data"', m.group(1), marker]
        spans.append((start, end))
        last = m.end()
    if not spans:
        return Lifted.whole(body)
    pieces.append(body[last:])
    return Lifted(b"".join(pieces), spans, body, set())
