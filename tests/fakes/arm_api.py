"""A loopback fake of Azure Resource Manager for container apps and container groups.

It answers the requests the real ``azure-mgmt-appcontainers`` and ``azure-mgmt-containerinstance``
clients send, so tests drive the real SDKs (serialisation, api-versions, long-running-operation
polling, error mapping) without a cloud::

    with ArmFake(expected_token="arm-token") as arm:
        arm.add_container_app(SUB, "rg", "llm", fqdn="127.0.0.1:8123")
        client = ContainerAppsAPIClient(cred, SUB, **arm.client_kwargs(cred))
        client.container_apps.get("rg", "llm")
        assert arm.requests[-1].query["api-version"] == "2026-07-01"

What it models: ``GET``/``PUT``/``PATCH`` (JSON merge patch)/``DELETE`` on
``/subscriptions/{sub}/resourceGroups/{rg}/providers/{type}/{name}`` (missing: ``404
ResourceNotFound``; deleting it: ``204``, as ARM answers); ``lro="sync"`` completes writes at once
(``200``, ``provisioningState: Succeeded``); ``lro="async"`` answers ``PUT`` with ``201`` +
``Azure-AsyncOperation``, ``PATCH``/``DELETE`` with ``202`` + ``Location``, done after one
``InProgress`` poll (or ``Failed`` with ``operation_error``); secrets sent (``secureValue``) stay in
``requests``, never echoed, as in ARM; ``expected_token`` makes other tokens a ``401``; unknown
api-versions are ``400``; ``fail_next`` injects errors; a GPU SKU not in ``aci_gpu_skus`` is ``400
SkuNotAvailable`` (ACI GPU is retired; that code is the fake's).
"""

from __future__ import annotations

import copy
import re
import threading
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

__all__ = ["API_VERSIONS", "ARM_SCOPE", "ArmFake", "ArmRequest", "StaticCredential"]

ARM_SCOPE = "https://management.azure.com/.default"
API_VERSIONS: Mapping[str, str] = {  # the installed SDKs' defaults
    "Microsoft.App": "2026-07-01",
    "Microsoft.ContainerInstance": "2023-05-01",
}
APPS, GROUPS = "Microsoft.App/containerApps", "Microsoft.ContainerInstance/containerGroups"
_RESOURCE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"(?P<type>Microsoft\.App/containerApps|Microsoft\.ContainerInstance/containerGroups)"
    r"/(?P<name>[^/]+)$",
    re.IGNORECASE,
)
_OPERATION = re.compile(
    r"^/subscriptions/[^/]+/providers/[^/]+/locations/[^/]+/"
    r"(?P<kind>operationStatuses|operationResults)/(?P<id>[^/]+)$"
)


@dataclass(frozen=True, slots=True)
class ArmRequest:
    """One request as the fake received it; ``headers`` keys are lower case."""

    method: str
    path: str
    query: Mapping[str, str]
    body: Any
    headers: Mapping[str, str]


class StaticCredential:
    """A ``TokenCredential`` that hands out one fixed token and records the scopes asked for."""

    def __init__(self, token: str = "arm-token") -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        return AccessToken(self.token, 4_102_444_800)  # 2100-01-01: never refreshed in a test


@dataclass
class _Operation:
    key: tuple[str, str, str, str]
    method: str
    url: str
    polls_left: int = 1


class _Reply(Exception):
    """An ARM error answer, raised from anywhere in the handling of a request."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.body = status, {"error": {"code": code, "message": message}}


def _merge(into: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """RFC 7396 JSON merge patch, in place: objects merge, ``null`` deletes, the rest replaces."""
    for key, value in patch.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


class ArmFake:
    """Azure Resource Manager on ``127.0.0.1:<free port>`` with an in-memory store.

    Args:
        expected_token: the bearer token every request must carry; None accepts any or none.
        lro: ``"sync"`` or ``"async"`` completion of writes (see the module docstring).
        aci_fqdn: how a new container group's ``ipAddress.fqdn`` is made from its
            ``dnsNameLabel`` and location; a test points it at ``127.0.0.1``.
        aci_ip: the public IP a new container group gets.
        aci_gpu_skus: GPU SKUs this fake region still offers to container groups.
    """

    def __init__(
        self,
        *,
        expected_token: str | None = None,
        lro: str = "sync",
        aci_fqdn: str = "{label}.{location}.azurecontainer.io",
        aci_ip: str = "20.1.2.3",
        aci_gpu_skus: Collection[str] = (),
    ) -> None:
        if lro not in ("sync", "async"):
            raise ValueError(f"lro must be 'sync' or 'async', got {lro!r}")
        self.expected_token = expected_token
        self.lro = lro
        self.aci_fqdn = aci_fqdn
        self.aci_ip = aci_ip
        self.aci_gpu_skus = frozenset(aci_gpu_skus)
        self.requests: list[ArmRequest] = []
        self.resources: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._operations: dict[str, _Operation] = {}
        self._failures: list[_Reply] = []
        self.operation_error: tuple[str, str] | None = None  # (code, message): async PUTs fail
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> ArmFake:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's requests session expects

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                status, body, headers = fake.handle(
                    self.command, self.path, self.rfile.read(length), dict(self.headers.items())
                )
                payload = b"" if body is None else orjson.dumps(body)
                self.send_response(status)
                headers.update({"Content-Type": "application/json", "Content-Length": len(payload)})
                for name, value in headers.items():
                    self.send_header(name, str(value))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> ArmFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client_kwargs(self, credential: Any) -> dict[str, Any]:
        """Keyword arguments that point an azure-mgmt client at this fake.

        The SDK refuses to send a bearer token over plain http; this policy lifts that for the
        fake's loopback URL only, so tests still see the ``Authorization`` header production
        sends. Polling and retries are immediate and off, so error tests are fast.
        """
        from azure.core.pipeline.policies import BearerTokenCredentialPolicy

        class LoopbackBearerPolicy(BearerTokenCredentialPolicy):
            def on_request(self, request: Any) -> None:
                request.context.options["enforce_https"] = False
                super().on_request(request)

        return {
            "base_url": self.base_url,
            "authentication_policy": LoopbackBearerPolicy(credential, ARM_SCOPE),
            "polling_interval": 0,
            "retry_total": 0,
        }

    def add_container_app(
        self,
        subscription: str,
        resource_group: str,
        name: str,
        *,
        fqdn: str,
        min_replicas: int = 0,
        max_replicas: int = 2,
        **properties: Any,
    ) -> dict[str, Any]:
        """Store a container app (in westus3, on workload profile ``gpu-t4``, running) serving
        ingress at ``fqdn``; ``properties`` override its top-level properties, e.g.
        ``runningStatus="Stopped"``."""
        template = {
            "containers": [{"name": "worker", "image": "gpufan/worker:1"}],
            "scale": {"minReplicas": min_replicas, "maxReplicas": max_replicas},
        }
        ingress = {"external": True, "targetPort": 8080}
        props = {"workloadProfileName": "gpu-t4", "configuration": {"ingress": ingress}}
        key = (subscription.lower(), resource_group.lower(), APPS.lower(), name.lower())
        with self._lock:
            stored = self._store(key, APPS, name, {"properties": {**props, "template": template}})
            stored["properties"]["configuration"]["ingress"]["fqdn"] = fqdn
            stored["properties"].update(provisioningState="Succeeded", **properties)
            return copy.deepcopy(stored)

    def fail_next(self, status: int, code: str, message: str = "injected", times: int = 1) -> None:
        """Answer the next ``times`` resource requests with an ARM error."""
        with self._lock:
            self._failures.extend(_Reply(status, code, message) for _ in range(times))

    def handle(
        self, method: str, target: str, raw: bytes, headers: Mapping[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        """Record the request and answer it: (status, JSON body or None, headers)."""
        url, body = urlsplit(target), orjson.loads(raw) if raw else None
        query, lower = dict(parse_qsl(url.query)), {k.lower(): v for k, v in headers.items()}
        with self._lock:
            self.requests.append(ArmRequest(method, url.path, query, body, lower))
            try:
                self._authorise(lower)
                if m := _OPERATION.match(url.path):
                    return self._poll(m["kind"], m["id"])
                m = _RESOURCE.match(url.path)
                if m is None:
                    raise _Reply(404, "InvalidResourceType", f"no route for {url.path}")
                self._check_api_version(m["type"], query)
                if self._failures:
                    raise self._failures.pop(0)
                return self._resource(method, m, body)
            except _Reply as reply:
                return reply.status, reply.body, {}

    def _authorise(self, headers: Mapping[str, str]) -> None:
        token = headers.get("authorization")
        if self.expected_token is not None and token != f"Bearer {self.expected_token}":
            raise _Reply(401, "AuthenticationFailed", "missing or invalid bearer token")

    def _check_api_version(self, kind: str, query: Mapping[str, str]) -> None:
        want, got = API_VERSIONS[kind.split("/")[0]], query.get("api-version")
        if got != want:
            message = f"no resource provider for API version {got!r} of {kind}; supported: {want}"
            raise _Reply(400, "NoRegisteredProviderFound", message)

    def _resource(self, method: str, m: re.Match[str], body: Any) -> tuple[int, Any, dict]:
        kind = APPS if m["type"].lower() == APPS.lower() else GROUPS
        key = (m["sub"].lower(), m["rg"].lower(), kind.lower(), m["name"].lower())
        current = self.resources.get(key)
        if current is None and method in ("GET", "PATCH"):
            what = f"'{kind}/{m['name']}' under resource group '{m['rg']}'"
            raise _Reply(404, "ResourceNotFound", f"The Resource {what} was not found.")
        if method == "GET":
            return 200, self._public(current), {}
        if method == "DELETE":
            if current is None:
                return 204, None, {}
            if self.lro == "sync":
                del self.resources[key]
                return 200, None, {}
            current["properties"]["provisioningState"] = "Deleting"
            return self._accepted(key, "DELETE")
        if method == "PATCH":
            _merge(current, body or {})
            stored = current
        else:  # PUT
            if kind == GROUPS:
                self._check_gpu(body or {})
            stored = self._store(key, kind, m["name"], body or {})
        done = self.lro == "sync"
        stored["properties"]["provisioningState"] = "Succeeded" if done else "InProgress"
        if done:
            return 200, self._public(stored), {}
        if method == "PUT":
            where = self._operation(key, "PUT", "Statuses")
            return 201, self._public(stored), {"Azure-AsyncOperation": where, "Retry-After": "0"}
        return self._accepted(key, "PATCH")

    def _accepted(self, key: tuple[str, str, str, str], method: str) -> tuple[int, Any, dict]:
        return 202, None, {"Location": self._operation(key, method, "Results"), "Retry-After": "0"}

    def _operation(self, key: tuple[str, str, str, str], method: str, suffix: str) -> str:
        """Start a long-running operation on ``key``; its polling URL, as ARM forms them."""
        namespace = self.resources[key]["type"].split("/")[0]
        location = self.resources[key]["location"]
        op = uuid.uuid4().hex
        url = (
            f"{self.base_url}/subscriptions/{key[0]}/providers/{namespace}/locations/{location}/"
            f"operation{suffix}/{op}?api-version={API_VERSIONS[namespace]}"
        )
        self._operations[op] = _Operation(key, method, url)
        return url

    def _poll(self, kind: str, op_id: str) -> tuple[int, Any, dict]:
        op = self._operations.get(op_id)
        if op is None:
            raise _Reply(404, "OperationNotFound", f"no operation {op_id}")
        if op.polls_left > 0:
            op.polls_left -= 1
            if kind == "operationStatuses":
                return 200, {"name": op_id, "status": "InProgress"}, {"Retry-After": "0"}
            return 202, None, {"Location": op.url, "Retry-After": "0"}
        if kind == "operationStatuses" and self.operation_error is not None:
            code, message = self.operation_error
            self.resources[op.key]["properties"]["provisioningState"] = "Failed"
            return 200, {"status": "Failed", "error": {"code": code, "message": message}}, {}
        resource = self.resources.get(op.key)
        if op.method == "DELETE":
            self.resources.pop(op.key, None)
            resource = None
        elif resource is not None:
            resource["properties"]["provisioningState"] = "Succeeded"
        if kind == "operationStatuses":
            return 200, {"name": op_id, "status": "Succeeded"}, {}
        return (200, self._public(resource), {}) if resource else (204, None, {})

    def _store(
        self, key: tuple[str, str, str, str], kind: str, name: str, doc: Mapping[str, Any]
    ) -> dict[str, Any]:
        stored = copy.deepcopy(dict(doc))
        stored.update(id=f"/subscriptions/{key[0]}/resourceGroups/{key[1]}/providers/{kind}/{name}")
        stored.update(name=name, type=kind)
        props = stored.setdefault("properties", {})
        location = stored.setdefault("location", "westus3")
        if kind == GROUPS:
            ip = props.get("ipAddress")
            if ip is not None:
                ip["ip"] = self.aci_ip
                if "dnsNameLabel" in ip:
                    ip["fqdn"] = self.aci_fqdn.format(label=ip["dnsNameLabel"], location=location)
            props["instanceView"] = {"state": "Running"}
        else:
            props.setdefault("runningStatus", "Running")
            ingress = props.get("configuration", {}).get("ingress")
            if ingress is not None:
                ingress["fqdn"] = f"{name}.fake-env.{location}.azurecontainerapps.io"
                props["latestRevisionFqdn"] = (
                    f"{name}--r1.fake-env.{location}.azurecontainerapps.io"
                )
        self.resources[key] = stored
        return stored

    def _check_gpu(self, body: Mapping[str, Any]) -> None:
        for container in body.get("properties", {}).get("containers", []):
            requests = container.get("properties", {}).get("resources", {}).get("requests", {})
            sku = (requests.get("gpu") or {}).get("sku")
            if sku is not None and sku not in self.aci_gpu_skus:
                where = body.get("location")
                raise _Reply(400, "SkuNotAvailable", f"GPU SKU '{sku}' is not offered in {where}")

    @staticmethod
    def _public(doc: Mapping[str, Any]) -> dict[str, Any]:
        """The document as ARM returns it: secret values are write-only."""
        out = copy.deepcopy(dict(doc))
        props = out.get("properties", {})
        for container in props.get("containers", []):
            for env in container.get("properties", {}).get("environmentVariables", []):
                env.pop("secureValue", None)
        for secret in props.get("configuration", {}).get("secrets", []) or []:
            secret.pop("value", None)
        return out
