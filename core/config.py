"""``gpufan.yaml`` -> one frozen, validated ``Settings`` object.

Built once at start from the file (and the environment only where the file points at it, e.g. the
name of the variable holding a bearer token). Every error names the key and the problem::

    ConfigError: gpufan.yaml: targets[1].usd_per_hour: Input should be greater than or equal to 0
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from core.errors import ConfigError

__all__ = [
    "AutoscaleSettings",
    "LocalWorkers",
    "ModelSpec",
    "Policy",
    "PricingSettings",
    "ServerSettings",
    "Settings",
    "Target",
    "load_settings",
    "settings_from_dict",
]

Cloud = Literal["aws", "gcp", "azure", "onprem", "local"]
Pricing = Literal["on_demand", "spot", "serverless", "owned"]
_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"


# http(s): the OIP over REST; grpc(s): over gRPC (backend grpc), as host:port behind the scheme
GRPC_SCHEMES = ("grpc://", "grpcs://")
_SCHEMES = ("http://", "https://", *GRPC_SCHEMES)


# A model repository: a directory, or an object-store URL as Triton takes (kept as text).
REMOTE_SCHEMES = ("s3://", "gs://", "az://")


def _repository(value: Any) -> Any:
    if isinstance(value, str) and not value.startswith(REMOTE_SCHEMES):
        if "://" in value:
            raise ValueError(f"a directory or one of {', '.join(REMOTE_SCHEMES)}, got {value!r}")
        return Path(value)
    return value


Repository = Annotated[Path | str, BeforeValidator(_repository)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSpec(_Frozen):
    """A model served by the front door, found in a Triton-style repository."""

    name: str = Field(pattern=_NAME)
    # The front door profiles the ONNX graph here (FLOPs and bytes per item) to predict compute
    # time; local workers serve it. Without it, give flops_per_item or rely on telemetry. A URL
    # (s3://, gs://, az://) is mirrored locally when the front door starts.
    repository: Repository | None = None
    flops_per_item: float | None = Field(None, gt=0)
    # 0: no batch axis (Triton's meaning; stateful models): every request runs whole, one shard.
    # None: the repository's config.pbtxt says, else the model is split along its first axis.
    max_batch_size: int | None = Field(None, ge=0)


class Target(_Frozen):
    """One place a shard can run."""

    name: str = Field(pattern=_NAME)
    backend: str
    endpoint: str | None = None
    cloud: Cloud = "onprem"
    region: str = "local"
    accelerator: str = "cpu"
    pricing: Pricing = "owned"
    usd_per_hour: float = Field(0.0, ge=0)
    max_concurrency: int = Field(4, ge=1, le=4096)
    timeout_s: float = Field(30.0, gt=0)
    token_env: str | None = None  # name of the env variable holding this target's bearer token
    models: tuple[str, ...] | None = None  # None: every configured model
    options: Mapping[str, Any] = Field(default_factory=dict)  # backend-specific settings
    # -- what the cost model needs (core.planning.estimate) --
    sku: str | None = None  # priced from the price book (e.g. g4dn.xlarge, run-l4); overrides
    #                         usd_per_hour only when usd_per_hour is not given explicitly
    gpus: int = Field(1, ge=1)  # accelerators working in parallel behind the endpoint
    cold_start_s: float = Field(0.0, ge=0)  # time to a first answer when scaled to zero
    scale_to_zero: bool = False  # idle capacity goes away: a request may pay cold_start_s
    interruption_per_hour: float | None = Field(None, ge=0)  # spot reclaim rate; None: default
    rtt_ms: float | None = Field(None, ge=0)  # measured round trip from the front door's origin
    # Serverless only: how long the platform keeps (and bills) an idle instance after its last
    # request. Where the platform lets us choose, the backend sets it (Container Apps' scale
    # cooldownPeriod); where it decides (Cloud Run: up to 15 min), say what it does. None: the
    # autoscale section's burst_hold_s.
    idle_hold_s: float | None = Field(None, ge=0)
    # The precision variant the target serves (gpufan optimize; gpufan worker --variant): only
    # variants admitted within their accuracy budget exist, and its speed is priced per variant.
    variant: Literal["fp32", "ort", "fp16", "int8"] = "fp32"

    @field_validator("endpoint")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(_SCHEMES):
            raise ValueError(f"must start with {', '.join(_SCHEMES)}, got {v!r}")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _scheme_fits_backend(self) -> Target:
        grpc = self.endpoint is not None and self.endpoint.startswith(GRPC_SCHEMES)
        if grpc != (self.backend == "grpc") and self.endpoint is not None:
            want = "grpc:// or grpcs://" if self.backend == "grpc" else "http:// or https://"
            raise ValueError(f"backend {self.backend!r} needs an endpoint starting {want}")
        if self.idle_hold_s is not None and self.pricing != "serverless":
            raise ValueError(f"idle_hold_s is for serverless targets; this one is {self.pricing}")
        return self

    def serves(self, model: str) -> bool:
        return self.models is None or model in self.models


class Policy(_Frozen):
    """Request defaults; a request's ``parameters`` may tighten them (slo_ms, max_usd, ...)."""

    slo_ms: float = Field(1000.0, gt=0)
    max_shard_items: int = Field(64, ge=1)
    # Each shard costs a round trip (~1 ms of Python HTTP on both ends here), and a worker's
    # dynamic batcher already coalesces concurrent shards: splitting below this buys nothing.
    min_shard_items: int = Field(8, ge=1)
    max_attempts: int = Field(3, ge=1, le=20)  # per shard, first try included
    deadline_ms: float = Field(30_000.0, gt=0)  # whole request, re-dispatches included
    backoff_ms: float = Field(20.0, ge=0)  # first re-dispatch wait; doubles, with full jitter
    breaker_failures: int = Field(3, ge=1)  # consecutive failures that open a target's breaker
    breaker_cooldown_s: float = Field(5.0, gt=0)
    # Hedging (core.dispatch.hedging): a shard unanswered past its target's p95 is sent to the
    # next-best target too, and the first good answer wins.
    hedge_budget: float = Field(0.05, ge=0, le=1)  # hedges per shard dispatched; 0: no hedging
    hedge_burst: int = Field(10, ge=0)  # hedges the budget lets through at once
    # no p95 yet: hedge after this share of the time left before the deadline (a last resort:
    # a target with no history may be slow by nature, as a batch queue is)
    hedge_deadline_share: float = Field(0.5, gt=0, le=1)
    # unanswered past this many hedge delays, or beaten by a later attempt: a stall, which counts
    # as a failure for the target's breaker
    stall_factor: float = Field(4.0, gt=1)
    objective: Literal["cost", "latency", "weighted"] = "cost"
    usd_per_latency_s: float = Field(0.0, ge=0)  # the weighted objective's price of a second
    max_usd: float | None = Field(None, gt=0)  # refuse requests estimated to cost more
    # A target whose chance of a spot reclaim during a shard is at least this must meet the SLO
    # even when the shard has to run again elsewhere (1%: the SLO attainment we promise).
    max_interruption_risk: float = Field(0.01, gt=0, le=1)
    # Admission (core.dispatch.admission): shed with 503 + Retry-After rather than queue. At
    # most this many shards wait per concurrency slot of a model's healthy targets (2: an
    # admitted shard waits behind about two rounds of work; at 1, a fleet of 12 slots refused
    # the third concurrent 120-row request of 12 shards while a worker was being replaced;
    # bench.reliability measured admitted p99 95 / 69 / 40 ms at 1 / 0.5 / 0.25 under 128
    # clients), and at most this many requests are in flight; a request past either waits this
    # long for room before it is shed (it rides out a transient such as a worker killed or
    # frozen until its breaker opens; under sustained overload it is latency that admitted
    # requests pay, so keep it short).
    max_queued_shards_per_slot: float = Field(2.0, gt=0)
    max_requests_in_flight: int = Field(512, ge=1)
    admission_wait_ms: float = Field(50.0, ge=0)


class LocalWorkers(_Frozen):
    """Workers that ``gpufan serve`` starts itself (backend ``local``)."""

    count: int = Field(0, ge=0, le=64)
    repository: Repository | None = None  # defaults to the bundled demo models; or a URL
    intra_op_threads: int = Field(1, ge=1)
    max_batch_size: int | None = Field(None, ge=1)
    max_queue_delay_us: int | None = Field(None, ge=0)
    max_concurrency: int = Field(4, ge=1)
    variant: Literal["fp32", "ort", "fp16", "int8"] = "fp32"  # gpufan worker --variant


class ServerSettings(_Frozen):
    """``server:``: the local front door's socket, auth, and self-protection (README: limits)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int | None = Field(None, ge=0, le=65535)  # the OIP over gRPC too (None: REST only)
    processes: int = Field(1, ge=1, le=256)  # front-door processes on the port (SO_REUSEPORT)
    max_body_mb: float = Field(256.0, gt=0)
    memory_budget_mb: float = Field(2048.0, gt=0)  # bytes requests in flight may hold
    header_timeout_s: float = Field(10.0, gt=0)  # headers complete within this of the first byte
    body_timeout_s: float = Field(1.0, gt=0)  # longest silence inside a request body
    keep_alive_s: float = Field(5.0, gt=0)  # idle keep-alive connections close after this
    max_connections: int = Field(1024, ge=1)  # open sockets; past it, 503 + Retry-After
    token_env: str | None = None  # clients must send this variable's value as a bearer token
    origin: str = "local:local"  # cloud:region where callers are, for egress and RTT


class PricingSettings(_Frozen):
    """Where prices come from: the bundled snapshot, or the clouds' price APIs over it."""

    live: bool = False  # ask AWS/Azure/GCP price APIs (credentials from each SDK's chain)
    ttl_s: float = Field(3600.0, gt=0)  # how long a live figure is trusted before re-asking


class AutoscaleSettings(_Frozen):
    """``autoscale:`` in ``gpufan.yaml``.

    Attributes:
        history: ``sqlite:///path``, ``dynamodb://table?region=us-east-1`` or None (the
            ``GPUFAN_HISTORY`` variable, else SQLite in the temp dir).
        interval_s: history bucket and decision interval.
        lookback_s: history read per pass (8 days: a week plus a season of margin).
        quantile: the forecast's upper quantile: what ranks the forecasters and what the plan
            covers before the chosen one has enough scored errors.
        target_attainment: the share of requests inside the SLO the headroom is sized for.
        backtest_intervals: history intervals each pass replays through the candidate
            forecasters to score them (6 hours: a few seconds of fitting per model and pass).
        service_s: one request's own time (round trip, batching, compute); the SLO less this
            is how long it may queue.
        burst_hold_s: how long a serverless burst instance stays billed after its last use
            (Cloud Run may keep an idle instance up to 15 minutes).
        utilisation, on_demand_floor, spot_reserve: ``capacity.PlanPolicy``.
        min_change_interval_s: a target is changed at most once per this many seconds.
        max_instances: per-target caps below the cloud's own (target name -> instances).
        quota_gpus: per-cloud GPU quota (cloud -> GPUs).
    """

    history: str | None = None
    interval_s: float = Field(60.0, gt=0)
    lookback_s: float = Field(8 * 86400.0, gt=0)
    quantile: float = Field(0.95, gt=0.5, lt=1)
    target_attainment: float = Field(0.99, gt=0, lt=1)
    backtest_intervals: int = Field(360, ge=0)
    service_s: float = Field(0.1, ge=0)
    burst_hold_s: float = Field(900.0, ge=0)
    utilisation: float = Field(0.8, gt=0, le=1)
    on_demand_floor: float = Field(0.3, ge=0, le=1)
    spot_reserve: bool = True
    min_change_interval_s: float = Field(300.0, ge=0)
    max_instances: Mapping[str, int] = Field(default_factory=dict)
    quota_gpus: Mapping[str, int] = Field(default_factory=dict)


class Settings(_Frozen):
    models: tuple[ModelSpec, ...] = ()
    targets: tuple[Target, ...] = ()
    policy: Policy = Policy()
    local_workers: LocalWorkers = LocalWorkers()
    server: ServerSettings = ServerSettings()
    pricing: PricingSettings = PricingSettings()
    autoscale: AutoscaleSettings = AutoscaleSettings()

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        for kind, names in (
            ("model", [m.name for m in self.models]),
            ("target", [t.name for t in self.targets]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {kind} names: {', '.join(dupes)}")
        known = {m.name for m in self.models}
        for t in self.targets:
            unknown = sorted(set(t.models or ()) - known) if known else []
            if unknown:
                raise ValueError(f"target {t.name!r} names unknown models: {', '.join(unknown)}")
            if t.backend in ("http", "grpc") and t.endpoint is None:
                raise ValueError(f"target {t.name!r}: backend {t.backend!r} needs an 'endpoint'")
            if t.pricing != "owned" and t.sku is None and "usd_per_hour" not in t.model_fields_set:
                raise ValueError(
                    f"target {t.name!r} ({t.pricing}) has neither usd_per_hour nor sku: "
                    "give one so the cost model can price it"
                )
        return self


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def settings_from_dict(
    doc: Mapping[str, Any], *, source: str = "config", base: Path | None = None
) -> Settings:
    """Validate a parsed config; relative repository paths resolve against ``base``."""
    try:
        settings = Settings.model_validate(doc)
    except ValidationError as e:
        problems = "; ".join(f"{_loc(err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{source}: {problems}") from None
    if base is None:
        return settings
    models = tuple(
        m.model_copy(update={"repository": base / m.repository})
        if isinstance(m.repository, Path) and not m.repository.is_absolute()
        else m
        for m in settings.models
    )
    lw = settings.local_workers
    if isinstance(lw.repository, Path) and not lw.repository.is_absolute():
        lw = lw.model_copy(update={"repository": base / lw.repository})
    return settings.model_copy(update={"models": models, "local_workers": lw})


def load_settings(path: Path) -> Settings:
    """Read and validate ``gpufan.yaml``; ConfigError says which key is wrong and why."""
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(doc).__name__}")
    return settings_from_dict(doc, source=str(path), base=path.parent)
