"""The floor under the front door's per-request cost: a bare relay on the same web stack.

uvicorn (httptools, uvloop) in, one pooled aiohttp session out, and nothing between: no
decoding, placement, report or metrics. ``bench.overhead`` measures it in the same run as the
front door, so the front door's overhead can be read as (the stack's floor) + (gpufan's work)::

    python -m bench.relay --target http://127.0.0.1:8101 --port 8200
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn

_HEADER = "inference-header-content-length"


def relay(target: str) -> Any:
    """An ASGI app forwarding every request's body to ``target`` + its path, answering as it."""
    session: aiohttp.ClientSession | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    if session is not None:
                        await session.close()
                    return
        if session is None:
            session = aiohttp.ClientSession()
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k.decode() == _HEADER}
        async with session.post(
            target + scope["path"], data=b"".join(chunks), headers=headers
        ) as r:
            body = await r.read()
            out = [(b"content-length", str(len(body)).encode())]
            if _HEADER in r.headers:
                out.append((_HEADER.encode(), r.headers[_HEADER].encode()))
            status = r.status
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})

    return app


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    uvicorn.run(
        relay(args.target), host="127.0.0.1", port=args.port, http="httptools", loop="uvloop",
        log_level="warning", access_log=False,
    )  # fmt: skip
