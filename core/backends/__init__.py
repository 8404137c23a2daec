"""Registry of backends: one module per way of running a shard, imported only when used.

Cloud backends import their SDKs inside their own modules, so ``import core.backends`` stays
light. ``backend_class("nope")`` raises ConfigError listing the valid names.
"""

from __future__ import annotations

import importlib

from core.backends.base import (
    Backend,
    BackendContext,
    ShardFailed,
    ShardJob,
    ShardOk,
    ShardOutcome,
    WorkerTelemetry,
)
from core.errors import ConfigError

__all__ = [
    "Backend",
    "BackendContext",
    "ShardFailed",
    "ShardJob",
    "ShardOk",
    "ShardOutcome",
    "WorkerTelemetry",
    "backend_class",
    "backend_names",
    "register",
]

_REGISTRY: dict[str, str] = {}


def register(name: str, where: str) -> None:
    """Register ``name`` -> ``"module:Class"``; a second registration of a name is an error."""
    if name in _REGISTRY:
        raise ValueError(f"backend {name!r} is already registered ({_REGISTRY[name]})")
    _REGISTRY[name] = where


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def backend_class(name: str) -> type[Backend]:
    """The class registered for ``name``, imported on first use."""
    try:
        where = _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown backend {name!r}; valid: {', '.join(backend_names())}"
        ) from None
    module, _, attr = where.partition(":")
    # The registry holds import paths, not classes, so that a lookup imports one backend's SDK
    # only; what they name are the Backend implementations registered below.
    cls: type[Backend] = getattr(importlib.import_module(module), attr)
    return cls


register("aca", "core.backends.aca:AcaBackend")
register("aci", "core.backends.aci:AciBackend")
register("batch", "core.backends.batch:BatchBackend")
register("cloudrun", "core.backends.cloudrun:CloudRunBackend")
register("grpc", "core.backends.grpc:GrpcBackend")
register("http", "core.backends.http:HttpBackend")
register("local", "core.backends.local:LocalBackend")
