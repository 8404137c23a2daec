"""The ``aca`` backend: Azure Container Apps, Azure's serverless GPU (T4 and A100).

Container Apps runs GPU containers only on Consumption GPU workload profiles (e.g.
``Consumption-GPU-NC8as-T4``, ``Consumption-GPU-NC24-A100``) of a workload-profiles environment,
bills per second and scales to zero; it replaced Container Instances GPU, retired 2025-07-14
(MicrosoftDocs azure-docs ``articles/container-apps/gpu-serverless-overview.md``). gpufan does
not create the app (Terraform does); it reads it from Azure Resource Manager to find its ingress
FQDN and scale, sends shards to ``https://<fqdn>`` over the Open Inference Protocol, and lets the
autoscaler change the replica bounds.

Target options::

    backend: aca
    options:
      subscription_id: 00000000-...   # required
      resource_group: gpufan          # required
      app: gpufan-t4                  # required: the container app's name
      scheme: https                   # optional; http only where ingress allowInsecure is on
    endpoint: https://...             # optional: overrides the FQDN ARM reports
    token_env: GPUFAN_WORKER_TOKEN    # the worker's bearer token
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from core.backends._azure import (
    ArmBackend,
    arm_call,
    check_options,
    option,
)
from core.config import Target
from core.errors import ConfigError, TargetUnavailable

__all__ = [
    "OPTION_KEYS",
    "AcaBackend",
    "ContainerAppDescription",
    "Scaling",
]

# Container Apps' scale defaults when a template leaves them unset: 0..10 replicas, and 300 s
# without traffic before scaling in (learn.microsoft.com/azure/container-apps/scale-app).
_DEFAULT_MIN, _DEFAULT_MAX, _DEFAULT_COOLDOWN_S = 0, 10, 300.0
_MAX_REPLICAS = 1000  # the service's upper bound on maxReplicas (same page)
_NOT_SERVING = frozenset({"Stopped", "Suspended"})  # ContainerAppRunningStatus
_BROKEN = frozenset({"Failed", "Canceled", "Deleting"})  # ContainerAppProvisioningState
OPTION_KEYS = ("subscription_id", "resource_group", "app", "scheme")


@dataclass(frozen=True, slots=True)
class Scaling:
    """A container app's replica bounds (``properties.template.scale``)."""

    min_replicas: int
    max_replicas: int


@dataclass(frozen=True, slots=True)
class ContainerAppDescription:
    """What ARM says about a container app, as gpufan uses it."""

    name: str
    location: str | None
    fqdn: str | None  # configuration.ingress.fqdn: the app's stable address
    latest_revision_fqdn: str | None
    provisioning_state: str | None  # InProgress, Succeeded, Failed, Canceled, Deleting
    running_status: str | None  # Progressing, Running, Stopped, Suspended, Ready
    workload_profile_name: str | None  # the (GPU) workload profile the app runs on
    scaling: Scaling
    cooldown_s: float  # idle time before the app scales in (to zero when min_replicas is 0)


def _client_class() -> Any:
    from azure.mgmt.appcontainers import ContainerAppsAPIClient

    return ContainerAppsAPIClient


def _text(value: Any) -> str | None:
    """An SDK enum member or plain string as its wire value."""
    return None if value is None else str(getattr(value, "value", value))


def _description(name: str, app: Any) -> ContainerAppDescription:
    ingress = getattr(app.configuration, "ingress", None)
    scale = getattr(app.template, "scale", None)

    def scale_field(attr: str, default: Any) -> Any:
        value = getattr(scale, attr, None)
        return default if value is None else value

    return ContainerAppDescription(
        name=name,
        location=app.location,
        fqdn=getattr(ingress, "fqdn", None),
        latest_revision_fqdn=app.latest_revision_fqdn,
        provisioning_state=_text(app.provisioning_state),
        running_status=_text(getattr(app, "running_status", None)),
        workload_profile_name=app.workload_profile_name,
        scaling=Scaling(
            int(scale_field("min_replicas", _DEFAULT_MIN)),
            int(scale_field("max_replicas", _DEFAULT_MAX)),
        ),
        cooldown_s=float(scale_field("cooldown_period", _DEFAULT_COOLDOWN_S)),
    )


class AcaBackend(ArmBackend[ContainerAppDescription]):
    """Shards to a container app's ingress; its scale read and set through ARM.

    Args:
        session: the pooled session for the data plane; its owner closes it.
        tokens: target name -> the worker's bearer token.
        access: ARM credential and client options; default ``DefaultAzureCredential``.
        describe_ttl_s: how long an app description is trusted.
        clock: monotonic seconds, for the description cache and cold-start detection.
    """

    name = "aca"

    _sdk_client = staticmethod(_client_class)
    _sdk_package = "azure-mgmt-appcontainers"

    def _where(self, target: Target) -> tuple[str, str, str, str]:
        """(subscription, resource group, app, how errors name it); ConfigError on a bad option."""
        check_options(target, OPTION_KEYS)
        subscription = option(target, "subscription_id", str)
        group = option(target, "resource_group", str)
        app = option(target, "app", str)
        what = f"container app {app!r} in resource group {group!r} (target {target.name})"
        return subscription, group, app, what

    async def _read(self, target: Target) -> ContainerAppDescription:
        subscription, group, app, what = self._where(target)
        raw = await arm_call(
            what, lambda: self._clients.get(subscription).container_apps.get(group, app)
        )
        return _description(app, raw)

    def _endpoint(self, target: Target, app: ContainerAppDescription) -> str:
        if app.running_status in _NOT_SERVING or app.provisioning_state in _BROKEN:
            raise TargetUnavailable(
                f"{target.name}: container app {app.name!r} is {app.running_status} "
                f"(provisioning {app.provisioning_state})"
            )
        if target.endpoint is not None:
            return target.endpoint
        scheme = option(target, "scheme", str, "https")
        if scheme not in ("https", "http"):
            raise ConfigError(f"targets[{target.name}].options.scheme must be https or http")
        if not app.fqdn:
            raise ConfigError(
                f"container app {app.name!r} (target {target.name}) has no ingress FQDN: "
                "enable ingress, or give the target an endpoint"
            )
        return f"{scheme}://{app.fqdn}"

    def _provisioned(self, app: ContainerAppDescription) -> bool:
        return app.provisioning_state == "Succeeded" and app.running_status not in _NOT_SERVING

    def _cold(self, target: Target, app: ContainerAppDescription, last_ok: float | None) -> bool:
        """An app that may scale to zero has none running once idle past its cooldown."""
        if app.scaling.min_replicas > 0:
            return False
        return last_ok is None or self._clock() - last_ok > app.cooldown_s

    async def scaling(self, target: Target) -> Scaling:
        """The app's replica bounds, read from ARM now (not from the cache)."""
        return (await self.describe(target, fresh=True)).scaling

    async def set_scaling(
        self, target: Target, min_replicas: int, max_replicas: int
    ) -> ContainerAppDescription:
        """Set the app's replica bounds and wait until ARM has applied them.

        Reads the app and PATCHes its template back with only ``scale.minReplicas`` and
        ``scale.maxReplicas`` changed (rules kept; the cooldown too, unless the target sets
        ``idle_hold_s``: then ``scale.cooldownPeriod`` is that, whole seconds, so an idle burst
        replica goes when the plan priced it to): a new revision, as any template change in
        Container Apps. Blocks (in a worker thread) until the operation completes.

        Raises:
            ValueError: bounds outside 0 <= min_replicas <= max_replicas, 1 <= max <= 1000.
            ConfigError: a required option is missing, or the app does not exist.
            TargetUnavailable: ARM refused our credential, or failed to apply the change.
        """
        if not (0 <= min_replicas <= max_replicas and 1 <= max_replicas <= _MAX_REPLICAS):
            raise ValueError(
                f"replica bounds must satisfy 0 <= min <= max, 1 <= max <= {_MAX_REPLICAS}; "
                f"got min={min_replicas}, max={max_replicas}"
            )
        subscription, group, name, what = self._where(target)

        def update() -> Any:
            client = self._clients.get(subscription)  # ConfigError if the SDK is missing
            from azure.mgmt.appcontainers import models

            app = client.container_apps.get(group, name)
            template = app.template or models.Template()
            if template.scale is None:
                template.scale = models.Scale()
            template.scale.min_replicas = min_replicas
            template.scale.max_replicas = max_replicas
            if target.idle_hold_s is not None:
                template.scale.cooldown_period = math.ceil(target.idle_hold_s)
            properties = models.ContainerAppProperties(template=template)
            envelope = models.ContainerApp(location=app.location, properties=properties)
            return client.container_apps.begin_update(group, name, envelope).result()

        updated = await arm_call(what, update)
        description = (
            _description(name, updated)
            if updated is not None
            else await self.describe(target, fresh=True)
        )
        self._cache.put(target.name, description)
        return description

    async def aclose(self) -> None:
        """Close the ARM clients (and the default credential); the session is not ours."""
        await asyncio.to_thread(self._clients.close)
