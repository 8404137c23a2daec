"""The one exception tree of gpufan.

Every error a caller can see is a ``GpufanError``. The tree splits on the only question the
dispatcher asks — *may this be retried somewhere else?*::

    GpufanError
    ├── ClientError                 permanent, the caller's mistake; carries an HTTP 4xx status
    │   ├── BadRequest              400: malformed JSON, wrong datatype/shape, unknown output ...
    │   ├── Unauthorized            401: missing or wrong bearer token
    │   ├── NotFound                404: unknown model or route
    │   │   └── ObjectNotFound      a job's input or manifest is not in storage (core.storage)
    │   ├── MethodNotAllowed        405: the route exists for other methods (``allow``)
    │   └── PayloadTooLarge         413: body over the size limit
    ├── ConfigError                 permanent: gpufan.yaml or a flag is invalid
    │   └── PriceNotFound           no price for a target's cloud/region/SKU (core.pricing)
    ├── NoFeasibleTarget            permanent for this request: no healthy target may run it (503)
    ├── Overloaded                  shed before any work: the server is at a limit (503 with
    │                               Retry-After); a front door tries the shard elsewhere
    ├── PriceSourceError            a live price API failed; the snapshot stands in (core.pricing)
    ├── StorageError                object storage refused a request (core.storage)
    ├── WorkerStartError            a local worker exited or fell silent before announcing its port
    ├── JobError                    an event job (core.frontdoor.jobs) or a Batch child failed
    │   ├── PermanentJobError       bad input or configuration: the same job fails the same way
    │   └── RetryableJobError       transient (targets or storage unavailable): run it again
    ├── RetryableError              transient, shard-level: try the next-best target
    │   ├── TargetTimeout           the target did not answer within the shard timeout
    │   ├── TargetUnavailable       connection refused/reset, 429, 5xx, circuit open
    │   ├── MalformedResponse       the target answered 2xx with something that is not a result
    │   └── StorageUnavailable      object storage timed out or failed transiently (core.storage)
    └── DispatchError               the request failed after the retry budget or its deadline
                                    (502/504); carries every failed shard's last cause

Foreign exceptions (aiohttp, SDKs) are mapped into this tree at each I/O boundary by one context
manager per boundary (see ``core.wire.client.map_transport_errors``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

__all__ = [
    "BadRequest",
    "ClientError",
    "ConfigError",
    "DispatchError",
    "GpufanError",
    "JobError",
    "MalformedResponse",
    "MethodNotAllowed",
    "NoFeasibleTarget",
    "NotFound",
    "ObjectNotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PermanentJobError",
    "PriceNotFound",
    "PriceSourceError",
    "RetryableError",
    "RetryableJobError",
    "StorageError",
    "StorageUnavailable",
    "TargetTimeout",
    "TargetUnavailable",
    "Unauthorized",
    "WorkerStartError",
    "first_few",
]

_FEW = 5


def first_few(items: Collection[object]) -> str:
    """``['a', 'b']``, or ``['a', 'b', 'c', 'd', 'e', ...] (10,000 in all)``: a message names a
    few offenders and their count, so its length does not grow with what a request holds."""
    shown = [repr(x) for _, x in zip(range(_FEW), items, strict=False)]
    if len(items) <= _FEW:
        return f"[{', '.join(shown)}]"
    return f"[{', '.join(shown)}, ...] ({len(items):,} in all)"


class GpufanError(Exception):
    """Base of every gpufan error; ``status`` is the HTTP status a front door answers with."""

    status: int = 500

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries besides the status (``Retry-After``, ``Allow``)."""
        return {}


class ClientError(GpufanError):
    """The caller's mistake: never retried, answered with a 4xx that says what was wrong."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class BadRequest(ClientError):
    status = 400


class Unauthorized(ClientError):
    status = 401


class NotFound(ClientError):
    status = 404


class ObjectNotFound(NotFound):
    """The key names no object in storage."""


class MethodNotAllowed(ClientError):
    """405; ``allow`` is the ``Allow`` header's value, which RFC 9110 requires on a 405."""

    status = 405

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow

    @property
    def headers(self) -> dict[str, str]:
        return {"allow": self.allow}


class PayloadTooLarge(ClientError):
    status = 413


class ConfigError(GpufanError):
    """Invalid configuration; the message names the key and the problem."""

    status = 500


class PriceNotFound(ConfigError):
    """No figure for a price key; the message names it and what there is for its cloud/region.

    ``key`` and ``alternatives`` are ``core.pricing.PriceKey`` values (typed loosely here: this
    module sits below every other).
    """

    def __init__(self, message: str, key: object, alternatives: Sequence[object] = ()) -> None:
        super().__init__(message)
        self.key = key
        self.alternatives = tuple(alternatives)


class NoFeasibleTarget(GpufanError):
    """No healthy target is allowed to run the request.

    ``retry_after_s`` is set when targets that could run it are only benched by their breakers
    (a state that ends with the cool-down), so the answer tells the client when to come back.
    """

    status = 503
    retry_after_s: int | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"retry-after": str(self.retry_after_s)}


class Overloaded(GpufanError):
    """Shed at a limit (memory budget, requests or shards in flight) before any work was done.

    Nothing of the request ran, so the client may simply send it again after ``retry_after_s``.
    """

    status = 503

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after_s)}


class PriceSourceError(GpufanError):
    """A live price source failed: network, credentials, throttling, or a reply it cannot read.

    Never reaches a request: ``PriceCache`` answers from the snapshot instead and flags the figure
    stale.
    """

    status = 502


class StorageError(GpufanError):
    """A permanent storage failure (access denied, no such bucket): retrying will not help."""

    status = 502


class WorkerStartError(GpufanError):
    """A worker exited or stayed silent before announcing its port; carries its stderr tail."""


class JobError(GpufanError):
    """A job that failed; ``retryable`` says whether running the same job again may help.

    ``key`` names the object the job ran on and ``result_key`` where its error result was
    written (None: nothing was written).
    """

    retryable = False

    def __init__(self, message: str, key: str | None = None, result_key: str | None = None):
        super().__init__(message)
        self.key = key
        self.result_key = result_key


class PermanentJobError(JobError):
    """Bad input or configuration: an event job wrote an error result; a retry fails the same
    way (a Batch child exits 2)."""


class RetryableJobError(JobError):
    """A transient failure (targets or storage unavailable): nothing was written; retry (a Batch
    child exits 1)."""

    retryable = True


class RetryableError(GpufanError):
    """A transient failure of one shard on one target: the dispatcher tries another target."""

    status = 502


class TargetTimeout(RetryableError):
    status = 504


class TargetUnavailable(RetryableError):
    status = 503


class MalformedResponse(RetryableError):
    status = 502


class StorageUnavailable(RetryableError):
    """A transient storage failure (throttling, 5xx, network): the event should be retried."""

    status = 503


class DispatchError(GpufanError):
    """A request whose shards still failed after the retry budget or the deadline.

    ``causes`` maps each failed shard id to the last error it met, so the caller sees every cause,
    not only the first.
    """

    status = 502

    def __init__(self, message: str, causes: Mapping[str, GpufanError]) -> None:
        detail = "; ".join(f"{sid}: {type(e).__name__}: {e}" for sid, e in sorted(causes.items()))
        super().__init__(f"{message} ({detail})" if detail else message)
        self.causes = dict(causes)
        if causes and all(isinstance(e, TargetTimeout) for e in causes.values()):
            self.status = 504
