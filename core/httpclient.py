"""The one pooled HTTP client the backends share.

Made once per process and injected, never created per request: a connection pool only pays off
when every shard to a target reuses its keep-alive connections.
"""

from __future__ import annotations

import httpx

__all__ = ["make_client"]


def make_client(
    *,
    max_connections: int = 256,
    timeout: float = 30.0,
    keepalive_expiry_s: float = 15.0,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for talking to targets.

    HTTP/1.1 with keep-alive: OIP workers (Triton, KServe, gpufan's own) speak it, and HTTP/2's
    multiplexing buys nothing when each connection carries one large body at a time.
    ``trust_env=False`` because targets are explicit endpoints: an ``HTTP_PROXY`` meant for the
    host's other traffic must not reroute shards. Redirects are not followed: a worker that
    redirects an infer POST is misconfigured, and the error should say so.

    Args:
        max_connections: pool size over all targets; keep it at least the sum of the targets'
            ``max_concurrency``, or shards queue for a connection rather than a slot.
        timeout: default per-operation timeout in seconds; backends pass each shard's own.
        keepalive_expiry_s: how long an idle connection stays open; shorter than the workers'
            own idle limit (uvicorn's ``timeout_keep_alive``, 30 s in gpufan's workers), so the
            client never reuses a connection the server is closing.
    """
    return httpx.AsyncClient(
        http1=True,
        http2=False,
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_expiry_s,
        ),
    )
