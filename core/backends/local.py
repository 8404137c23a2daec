"""The ``local`` backend: gpufan worker processes that ``gpufan serve`` started itself.

The data plane is the HTTP one; what differs is where the endpoint comes from (the worker pool
learns each child's port when it starts) and the bearer token (one random token per pool, so a
local worker answers nobody but its own front door).
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from core.backends.base import BackendContext
from core.backends.http import HttpBackend
from core.config import Target
from core.errors import ConfigError
from core.wire.h1 import H1Pool

__all__ = ["LocalBackend"]


class LocalBackend(HttpBackend):
    name = "local"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoints: Mapping[str, str],
        token: str | None = None,
        h1: H1Pool | None = None,
    ) -> None:
        self._endpoints = dict(endpoints)
        super().__init__(session, token_for=lambda _t: token, endpoint_for=self._endpoint, h1=h1)

    @classmethod
    def create(cls, ctx: BackendContext) -> LocalBackend:
        return cls(ctx.session, ctx.local_endpoints, ctx.local_token, ctx.h1)

    def _endpoint(self, target: Target) -> str:
        try:
            return self._endpoints[target.name]
        except KeyError:
            raise ConfigError(
                f"target {target.name!r} has backend 'local' but gpufan started no worker for it"
            ) from None
