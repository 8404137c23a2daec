"""Framework-neutral HTTP request and response values.

Every front door (the local ASGI server, AWS Lambda, Cloud Functions, Azure Functions) turns its
platform's request into a ``Request``, calls one async handler, and writes the ``Response`` back.
Nothing here imports a web framework.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["JOIN_BYTES", "Handler", "Request", "Response", "json_response"]

Chunk = bytes | memoryview
# A body of several buffers is joined into one write up to this size (server and client alike):
# one copy costs less than a syscall, or aiohttp's streamed-payload path, per buffer.
JOIN_BYTES = 64 << 10


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request; header names are lower-case."""

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    query: str = ""
    # The edge's memory reservation for this request (core.wire.budget): a codec charges here
    # what decoding will hold beyond what the edge reserved; raises when there is no room.
    charge: Callable[[int], None] | None = field(default=None, compare=False)


@dataclass(slots=True)
class Response:
    """One HTTP response; ``body`` is a list of buffers written in order (no join needed)."""

    status: int
    body: list[Chunk] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def content_length(self) -> int:
        return sum(c.nbytes if isinstance(c, memoryview) else len(c) for c in self.body)

    def body_bytes(self) -> bytes:
        """The whole body as one ``bytes`` (one copy; for adapters that need it)."""
        return b"".join(self.body)


def json_response(status: int, obj: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        status,
        [orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)],
        {"content-type": "application/json", **(headers or {})},
    )


Handler = Callable[[Request], Awaitable[Response]]
