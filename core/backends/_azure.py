"""What the Azure backends (``aca``, ``aci``) share: ARM clients, error mapping, the data plane.

Both run shards on an OIP endpoint whose address only Azure Resource Manager knows, so both are
the ``http`` data plane behind one extra step: ask ARM (cached for a few seconds), check the
resource can serve, then hand the URL to ``HttpBackend``. ARM calls use the sync azure-mgmt SDKs in
``asyncio.to_thread``; every Azure exception is mapped into ``core.errors`` by
``map_arm_errors`` at that one boundary. The SDKs are imported inside functions, never at module
import (STYLE habit 13).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Self, TypeVar, overload

import aiohttp

from core.backends.base import BackendContext, ShardFailed, ShardJob, ShardOk, ShardOutcome
from core.backends.http import HttpBackend
from core.config import Target
from core.errors import ConfigError, GpufanError, TargetUnavailable
from core.planning.shards import Shard

__all__ = [
    "ArmAccess",
    "ArmBackend",
    "ArmClients",
    "arm_call",
    "check_options",
    "map_arm_errors",
    "option",
]

T = TypeVar("T")
D = TypeVar("D")
Clock = Callable[[], float]
_MISSING = object()


@dataclass(frozen=True)
class ArmAccess:
    """How to reach Azure Resource Manager.

    Production leaves both fields empty: the credential is ``DefaultAzureCredential`` (managed
    identity, workload identity, environment, Azure CLI), never a secret from gpufan.yaml, and the
    SDK's own endpoint and TLS-only bearer policy apply. Tests pass a credential and
    ``client_kwargs`` that point the SDK at a loopback fake (``base_url``, polling, retries).
    """

    credential: Any = None
    client_kwargs: Mapping[str, Any] = field(default_factory=dict)


class ArmClients(Generic[T]):
    """One SDK client per subscription, built on first use and closed together.

    Args:
        build: ``build(credential, subscription_id, **client_kwargs)``, the SDK client class,
            imported by the caller only when it is first needed.
        access: the credential and client options.
        package: the pip package to name when the SDK is not installed.
    """

    def __init__(self, build: Callable[[], Callable[..., T]], access: ArmAccess, package: str):
        self._build = build
        self._access = access
        self._package = package
        self._credential: Any = access.credential
        self._owns_credential = access.credential is None
        self._clients: dict[str, T] = {}
        self._lock = threading.Lock()  # clients are built from worker threads too

    def get(self, subscription_id: str) -> T:
        with self._lock:
            client = self._clients.get(subscription_id)
            if client is None:
                try:
                    cls = self._build()
                    if self._credential is None:
                        from azure.identity import DefaultAzureCredential

                        self._credential = DefaultAzureCredential()
                except ImportError as e:
                    raise ConfigError(
                        f"Azure targets need the {self._package} and azure-identity packages "
                        f"(pip install 'gpufan[azure]'): {e}"
                    ) from None
                client = cls(self._credential, subscription_id, **self._access.client_kwargs)
                self._clients[subscription_id] = client
            return client

    def close(self) -> None:
        """Close every client, and the credential when it was ours to make."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
            for client in clients:
                client.close()  # type: ignore[attr-defined]
            if self._owns_credential and self._credential is not None:
                self._credential.close()
                self._credential = None


def check_options(target: Target, known: Collection[str]) -> None:
    """Refuse option keys the backend does not know: a typo must not silently use a default.

    Raises:
        ConfigError: naming the unknown keys and listing the valid ones.
    """
    unknown = sorted(set(target.options) - set(known))
    if unknown:
        raise ConfigError(
            f"targets[{target.name}].options: unknown {', '.join(unknown)} for backend "
            f"{target.backend!r}; valid: {', '.join(sorted(known))}"
        )


@overload
def option(target: Target, key: str, kind: type[T]) -> T: ...
@overload
def option(target: Target, key: str, kind: type[T], default: None) -> T | None: ...
@overload
def option(target: Target, key: str, kind: type[T], default: T) -> T: ...


def option(target: Target, key: str, kind: type[T], default: object = _MISSING) -> T | None:
    """``target.options[key]`` checked against ``kind``; a missing required key is a ConfigError.

    A key set to null counts as missing: it takes the default, or is refused when there is none.

    Raises:
        ConfigError: naming the target and the key, when it is missing or of the wrong type.
    """
    value = target.options.get(key)
    if value is None:
        if default is _MISSING:
            raise ConfigError(
                f"targets[{target.name}].options.{key} is required for backend {target.backend!r}"
            )
        value = default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if value is None or isinstance(value, kind):
        return value
    raise ConfigError(
        f"targets[{target.name}].options.{key} must be {kind.__name__}, "
        f"got {type(value).__name__} {value!r}"
    )


def _arm_message(e: Any) -> str:
    """ARM's ``error.code: error.message`` when the SDK parsed it, else the exception text."""
    error = getattr(e, "error", None)
    code, message = getattr(error, "code", None), getattr(error, "message", None)
    if code or message:
        return f"{code}: {message}"
    return str(e).splitlines()[0] if str(e) else type(e).__name__


@contextmanager
def map_arm_errors(resource: str) -> Iterator[None]:
    """Map what an azure-mgmt call raises into gpufan's tree; ``resource`` names what was asked.

    404 -> ConfigError (the named resource does not exist: fix gpufan.yaml); 401/403 or a
    credential that cannot get a token -> TargetUnavailable "not authorised"; 409 (another
    operation in progress), 429, 5xx, connection errors and a long-running operation that ended
    in failure -> TargetUnavailable; any other 4xx -> ConfigError with ARM's code and message (a
    request ARM will keep refusing). Anything else passes through unchanged.
    """
    try:
        yield
    except Exception as e:
        mapped = _arm_error(e, resource)
        if mapped is None:
            raise
        raise mapped from e


def _arm_error(e: Exception, resource: str) -> GpufanError | None:
    if isinstance(e, GpufanError):
        return None
    # azure-core is imported only once an error needs it: a missing SDK stays a ConfigError.
    from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError

    if isinstance(e, HttpResponseError):
        status = e.status_code
        why = _arm_message(e)
        if status == 404:
            return ConfigError(f"{resource} was not found ({why})")
        if status in (401, 403) or isinstance(e, ClientAuthenticationError):
            return TargetUnavailable(
                f"not authorised for {resource} ({status or 'no token'}: {why})"
            )
        if status is not None and status < 400:  # the poller saw the operation end badly
            return TargetUnavailable(f"the operation on {resource} failed: {why}")
        if status is None or status in (409, 429) or status >= 500:
            return TargetUnavailable(
                f"Azure Resource Manager answered {status} for {resource}: {why}"
            )
        return ConfigError(f"Azure Resource Manager refused {resource}: {status} {why}")
    if isinstance(e, AzureError):  # ServiceRequestError, ServiceResponseError, ...
        return TargetUnavailable(f"cannot reach Azure Resource Manager for {resource}: {e}")
    return None


async def arm_call(resource: str, call: Callable[[], T]) -> T:
    """Run a blocking SDK call (and any poller wait inside it) off the event loop, mapped."""

    def mapped() -> T:
        with map_arm_errors(resource):
            return call()

    return await asyncio.to_thread(mapped)


class _TtlCache(Generic[D]):
    """Descriptions per target name, trusted for ``ttl_s``: one ARM read serves many shards."""

    def __init__(self, ttl_s: float, clock: Clock) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._items: dict[str, tuple[float, D]] = {}

    def get(self, name: str) -> D | None:
        hit = self._items.get(name)
        return hit[1] if hit is not None and hit[0] > self._clock() else None

    def put(self, name: str, value: D) -> None:
        self._items[name] = (self._clock() + self._ttl_s, value)

    def drop(self, name: str) -> None:
        self._items.pop(name, None)


def _target_fault(target: Target, e: GpufanError) -> GpufanError:
    """On the data path a broken target is retryable elsewhere: the caller did nothing wrong."""
    if isinstance(e, ConfigError):
        return TargetUnavailable(f"{target.name}: {e}")
    return e


class ArmBackend(ABC, Generic[D]):
    """The OIP data plane (``HttpBackend``) at a URL an ARM description gives.

    Subclasses say how to read the target's resource (``_read``), where it serves and whether it
    can take shards now (``_endpoint``), whether it is fully up (``_provisioned``), and may mark
    outcomes as having paid a cold start (``_cold``).

    Subclasses also name their SDK: ``_sdk_client`` (a function importing and returning the
    management client class, so the SDK loads only when used) and ``_sdk_package`` (what to
    install when it is missing).

    Args:
        session: the pooled session the data plane uses; its owner closes it.
        tokens: target name -> the worker's bearer token.
        access: ARM credential and client options; default ``DefaultAzureCredential``.
        describe_ttl_s: how long a description is trusted; short, so a deleted or stopped
            resource is noticed within seconds, long enough that a burst costs one ARM read.
        clock: monotonic seconds; injected so tests control the cache and cold-start windows.
    """

    name: str
    _sdk_client: Callable[[], Callable[..., Any]]
    _sdk_package: str

    def __init__(
        self,
        session: aiohttp.ClientSession,
        tokens: Mapping[str, str | None] | None = None,
        *,
        access: ArmAccess | None = None,
        describe_ttl_s: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._clients: ArmClients[Any] = ArmClients(
            type(self)._sdk_client, access or ArmAccess(), self._sdk_package
        )
        self._session = session
        self._tokens = dict(tokens or {})
        self._clock = clock
        self._cache: _TtlCache[D] = _TtlCache(describe_ttl_s, clock)
        self._last_ok: dict[str, float] = {}

    @classmethod
    def create(cls, ctx: BackendContext) -> Self:
        """Built by the front door; ARM credentials come from ``DefaultAzureCredential``."""
        return cls(ctx.session, ctx.tokens)

    @abstractmethod
    async def _read(self, target: Target) -> D:
        """One ARM read of the target's resource."""

    @abstractmethod
    def _endpoint(self, target: Target, description: D) -> str:
        """The OIP base URL; raises TargetUnavailable while the resource cannot take shards."""

    @abstractmethod
    def _provisioned(self, description: D) -> bool:
        """Whether the resource is fully deployed and running (what ``ready`` requires)."""

    def _cold(self, target: Target, description: D, last_ok: float | None) -> bool:
        return False

    async def describe(self, target: Target, *, fresh: bool = False) -> D:
        """The target's resource as ARM reports it, cached for ``describe_ttl_s``.

        Args:
            fresh: read ARM even when a cached description is still trusted (the autoscaler).

        Raises:
            ConfigError: a required option is missing, or the resource does not exist.
            TargetUnavailable: ARM refused our credential or could not answer.
        """
        cached = None if fresh else self._cache.get(target.name)
        if cached is not None:
            return cached
        description = await self._read(target)
        self._cache.put(target.name, description)
        return description

    def _plane(self, url: str) -> HttpBackend:
        tokens = self._tokens
        return HttpBackend(
            self._session, token_for=lambda t: tokens.get(t.name), endpoint_for=lambda _t: url
        )

    async def _url(self, target: Target) -> tuple[str, D]:
        try:
            description = await self.describe(target)
            return self._endpoint(target, description), description
        except GpufanError as e:
            raise _target_fault(target, e) from e

    async def run(
        self, target: Target, job: ShardJob, shards: Sequence[Shard]
    ) -> AsyncIterator[ShardOutcome]:
        """Shards as OIP requests to the resource's endpoint; a resource that cannot serve
        fails every shard with a retryable error, so the dispatcher moves them elsewhere."""
        try:
            url, description = await self._url(target)
        except GpufanError as e:
            for shard in shards:
                yield ShardFailed(shard, target.name, e, 0.0)
            return
        cold = self._cold(target, description, self._last_ok.get(target.name))
        async for outcome in self._plane(url).run(target, job, shards):
            if isinstance(outcome, ShardOk):
                self._last_ok[target.name] = self._clock()
                if cold and not outcome.cold_start:
                    outcome = dataclasses.replace(outcome, cold_start=True)
            yield outcome

    async def model_metadata(
        self, target: Target, model: str, version: str | None
    ) -> dict[str, Any]:
        url, _ = await self._url(target)
        return await self._plane(url).model_metadata(target, model, version)

    async def model_config(self, target: Target, model: str, version: str | None) -> dict[str, Any]:
        url, _ = await self._url(target)
        return await self._plane(url).model_config(target, model, version)

    async def ready(self, target: Target) -> bool:
        """The resource is provisioned and running, and its endpoint answers ``/v2/health/ready``.

        An ARM failure or a resource that cannot serve is simply not ready.
        """
        try:
            url, description = await self._url(target)
        except GpufanError:
            return False
        return self._provisioned(description) and await self._plane(url).ready(target)
