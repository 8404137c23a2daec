"""The floor under the front door's per-request cost: a bare relay on the same stack.

uvicorn (httptools, uvloop) in, the front door's relay client (``core.wire.h1``) out, and nothing
between: no decoding, placement, report or metrics. ``bench.overhead`` measures it in the same
run as the front door, so the front door's overhead reads as (the stack's floor) + (gpufan's
work)::

    python -m bench.relay --target http://127.0.0.1:8101 --port 8200
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import urlsplit

import uvicorn

from core.wire.h1 import H1Pool

_HEADER = b"inference-header-content-length"


def relay(target: str) -> Any:
    """An ASGI app forwarding every request's body to ``target`` + its path, answering as it."""
    url = urlsplit(target)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    pool = H1Pool()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    pool.close()
                    return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        extra = b"".join(b"%s: %s\r\n" % (k, v) for k, v in scope["headers"] if k == _HEADER)
        head = b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-length: %d\r\n%s\r\n" % (
            scope["path"].encode(), url.netloc.encode(), len(body), extra,
        )  # fmt: skip
        reply = await pool.request(host, port, head, (body,), 30.0)
        out = [(b"content-length", str(len(reply.body)).encode())]
        if _HEADER.decode() in reply.headers:
            out.append((_HEADER, reply.headers[_HEADER.decode()].encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": out})
        await send({"type": "http.response.body", "body": reply.body})

    return app


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    uvicorn.run(
        relay(args.target), host="127.0.0.1", port=args.port, http="httptools", loop="uvloop",
        log_level="warning", access_log=False, proxy_headers=False,
    )  # fmt: skip
