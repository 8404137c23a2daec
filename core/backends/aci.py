"""The ``aci`` backend: a gpufan worker in an Azure Container Instances container group.

ACI runs CPU containers by the second with a public IP and DNS label. Its GPU SKUs are gone:
K80 and P100 retired by 2023-08-31, and GPU container groups as a whole on **2025-07-14**
(MicrosoftDocs azure-compute-docs ``articles/container-instances/container-instances-gpu.md``);
Azure Container Apps serverless GPU (backend ``aca``) replaced them. The SDK still accepts a
``GpuResource``, so ``gpu_sku`` is passed through, with a warning, for a subscription that still
has one; everywhere else it is refused by ARM and gpufan says why. CPU groups remain a real
target: for a light model the cost model may find them the cheapest.

Target options::

    backend: aci
    region: eastus                   # the group's location when gpufan creates it
    options:
      subscription_id: 00000000-...  # required
      resource_group: gpufan         # required
      container_group: gpufan-cpu-1  # required
      create: false                  # ensure() may create the group when it is missing
      image: registry/gpufan-worker:1.0  # required to create
      cpu: 4                         # cores requested
      memory_gb: 16
      port: 8080                     # the port the image serves OIP on
      dns_name_label: gpufan-cpu-1   # default: the group's name
      gpu_sku: V100                  # retired; see above
      gpu_count: 1
    token_env: GPUFAN_WORKER_TOKEN   # sent to the worker, and given to it as a secure variable
"""

from __future__ import annotations

import asyncio
import logging
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
    "TOKEN_VARIABLE",
    "AciBackend",
    "ContainerGroupDescription",
]

log = logging.getLogger(__name__)

GPU_RETIRED = (
    "Azure Container Instances GPU SKUs were retired on 2025-07-14 (K80/P100 by 2023-08-31); "
    "use backend 'aca' (Container Apps serverless GPU) for GPU capacity"
)
_GPU_SKUS = ("K80", "P100", "V100")  # azure.mgmt.containerinstance.models.GpuSku
_GPU_COUNTS = (1, 2, 4)  # the counts ACI accepted per container
TOKEN_VARIABLE = "GPUFAN_WORKER_TOKEN"  # the worker's default --token-env
OPTION_KEYS = (
    "subscription_id", "resource_group", "container_group", "create", "image", "cpu",
    "memory_gb", "port", "dns_name_label", "gpu_sku", "gpu_count",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ContainerGroupDescription:
    """What ARM says about a container group, as gpufan uses it."""

    name: str
    location: str | None
    fqdn: str | None  # ipAddress.fqdn: <dnsNameLabel>.<region>.azurecontainer.io
    ip: str | None
    ports: tuple[int, ...]
    provisioning_state: str | None  # Pending, Creating, Succeeded, Failed, ...
    state: str | None  # instanceView.state: Pending, Running, Stopped, ...
    gpu: str | None  # e.g. "1x V100"; None for CPU-only groups


@dataclass(frozen=True, slots=True)
class _Spec:
    """What ``ensure`` creates, read from the target's options before any ARM call."""

    image: str
    cpu: float
    memory_gb: float
    port: int
    dns_name_label: str
    gpu_sku: str | None
    gpu_count: int


def _client_class() -> Any:
    from azure.mgmt.containerinstance import ContainerInstanceManagementClient

    return ContainerInstanceManagementClient


def _description(name: str, group: Any) -> ContainerGroupDescription:
    ip = group.ip_address
    gpus = [
        c.resources.requests.gpu
        for c in group.containers or ()
        if c.resources and c.resources.requests and c.resources.requests.gpu
    ]
    return ContainerGroupDescription(
        name=name,
        location=group.location,
        fqdn=getattr(ip, "fqdn", None),
        ip=getattr(ip, "ip", None),
        ports=tuple(p.port for p in getattr(ip, "ports", None) or ()),
        provisioning_state=group.provisioning_state,
        state=getattr(group.instance_view, "state", None),
        gpu=", ".join(f"{g.count}x {g.sku}" for g in gpus) or None,
    )


def _spec(target: Target) -> _Spec:
    """The creation options, validated; ConfigError names the key that is wrong."""
    sku = option(target, "gpu_sku", str, None)
    count = option(target, "gpu_count", int, 1)
    if sku is not None and sku not in _GPU_SKUS:
        raise ConfigError(
            f"targets[{target.name}].options.gpu_sku must be one of {', '.join(_GPU_SKUS)}, "
            f"got {sku!r}; {GPU_RETIRED}"
        )
    if count not in _GPU_COUNTS:
        raise ConfigError(f"targets[{target.name}].options.gpu_count must be 1, 2 or 4")
    return _Spec(
        image=option(target, "image", str),
        cpu=option(target, "cpu", float, 4.0),
        memory_gb=option(target, "memory_gb", float, 16.0),
        port=option(target, "port", int, 8080),
        dns_name_label=option(
            target, "dns_name_label", str, option(target, "container_group", str)
        ),
        gpu_sku=sku,
        gpu_count=count,
    )


def _group(location: str, spec: _Spec, token: str) -> Any:
    """The container group: one worker container, public IP and DNS label, restarted always."""
    from azure.mgmt.containerinstance import models

    gpu = models.GpuResource(count=spec.gpu_count, sku=spec.gpu_sku) if spec.gpu_sku else None
    worker = models.Container(
        name="worker",
        image=spec.image,
        resources=models.ResourceRequirements(
            requests=models.ResourceRequests(memory_in_gb=spec.memory_gb, cpu=spec.cpu, gpu=gpu)
        ),
        ports=[models.ContainerPort(port=spec.port, protocol="TCP")],
        # secure_value: ARM stores it encrypted and never returns it (plain `value` it would).
        environment_variables=[models.EnvironmentVariable(name=TOKEN_VARIABLE, secure_value=token)],
    )
    return models.ContainerGroup(
        location=location,
        containers=[worker],
        os_type="Linux",
        restart_policy="Always",
        ip_address=models.IpAddress(
            type="Public",
            ports=[models.Port(port=spec.port, protocol="TCP")],
            dns_name_label=spec.dns_name_label,
        ),
    )


class AciBackend(ArmBackend[ContainerGroupDescription]):
    """Shards to a container group's worker; the group described, created and deleted via ARM.

    Args:
        session: the pooled session for the data plane; its owner closes it.
        tokens: target name -> the worker's bearer token.
        access: ARM credential and client options; default ``DefaultAzureCredential``.
        describe_ttl_s: how long a group description is trusted.
        clock: monotonic seconds, for the description cache.
    """

    name = "aci"

    _sdk_client = staticmethod(_client_class)
    _sdk_package = "azure-mgmt-containerinstance"

    def _where(self, target: Target) -> tuple[str, str, str, str]:
        """(subscription, resource group, group, how errors name it); ConfigError on bad options."""
        check_options(target, OPTION_KEYS)
        subscription = option(target, "subscription_id", str)
        resource_group = option(target, "resource_group", str)
        name = option(target, "container_group", str)
        what = (
            f"container group {name!r} in resource group {resource_group!r} (target {target.name})"
        )
        return subscription, resource_group, name, what

    async def _read(self, target: Target) -> ContainerGroupDescription:
        subscription, resource_group, name, what = self._where(target)
        raw = await arm_call(
            what, lambda: self._clients.get(subscription).container_groups.get(resource_group, name)
        )
        return _description(name, raw)

    def _endpoint(self, target: Target, group: ContainerGroupDescription) -> str:
        if group.state != "Running":
            raise TargetUnavailable(
                f"{target.name}: container group {group.name!r} is {group.state} "
                f"(provisioning {group.provisioning_state})"
            )
        if target.endpoint is not None:
            return target.endpoint
        host = group.fqdn or group.ip
        if host is None:
            raise ConfigError(
                f"container group {group.name!r} (target {target.name}) has no public IP"
            )
        return f"http://{host}:{option(target, 'port', int, 8080)}"

    def _provisioned(self, group: ContainerGroupDescription) -> bool:
        return group.provisioning_state == "Succeeded" and group.state == "Running"

    async def ensure(self, target: Target) -> ContainerGroupDescription:
        """The group, created first when it is missing and ``options.create`` allows it.

        An existing group is returned as it is, never changed. Creation waits until ARM reports
        the group provisioned. The worker's bearer token goes in as a *secure* environment
        variable, so ARM never returns it and gpufan never logs it.

        Raises:
            ConfigError: an option is missing or invalid; the group is missing and ``create`` is
                false; there is no token to protect a public worker; ARM refused the group (for
                a GPU request the message says the SKUs are retired).
            TargetUnavailable: ARM refused our credential or could not answer.
        """
        subscription, resource_group, name, what = self._where(target)

        def get_or_none() -> Any:
            groups = self._clients.get(subscription).container_groups
            from azure.core.exceptions import ResourceNotFoundError

            try:
                return groups.get(resource_group, name)
            except ResourceNotFoundError:
                return None

        existing = await arm_call(what, get_or_none)
        if existing is None:
            existing = await self._create(target, subscription, resource_group, name, what)
        description = _description(name, existing)
        self._cache.put(target.name, description)
        return description

    async def _create(
        self, target: Target, subscription: str, resource_group: str, name: str, what: str
    ) -> Any:
        if not option(target, "create", bool, False):
            raise ConfigError(f"{what} does not exist and options.create is false")
        spec = _spec(target)
        token = self._tokens.get(target.name)
        if not token:
            raise ConfigError(
                f"targets[{target.name}]: refusing to create a worker on a public IP without a "
                "bearer token; set token_env"
            )
        if spec.gpu_sku is not None:
            log.warning(
                "%s: requesting %dx %s. %s", what, spec.gpu_count, spec.gpu_sku, GPU_RETIRED
            )
        group = _group(target.region, spec, token)

        def create() -> Any:
            groups = self._clients.get(subscription).container_groups
            return groups.begin_create_or_update(resource_group, name, group).result()

        try:
            return await arm_call(what, create)
        except ConfigError as e:
            if spec.gpu_sku is None:
                raise
            raise ConfigError(f"{e}; {GPU_RETIRED}") from e

    async def delete(self, target: Target) -> None:
        """Delete the group and wait until ARM has; a group that is already gone is fine.

        Raises:
            ConfigError: a required option is missing.
            TargetUnavailable: ARM refused our credential or could not answer.
        """
        subscription, resource_group, name, what = self._where(target)
        self._cache.drop(target.name)

        def delete() -> None:
            groups = self._clients.get(subscription).container_groups
            groups.begin_delete(resource_group, name).result()

        await arm_call(what, delete)

    async def aclose(self) -> None:
        """Close the ARM clients (and the default credential); the session is not ours."""
        await asyncio.to_thread(self._clients.close)
