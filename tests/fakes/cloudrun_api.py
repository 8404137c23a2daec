"""A loopback fake of the Cloud Run Admin API v2, for the real ``google.cloud.run_v2`` client.

It answers the REST calls ``ServicesClient`` really sends (the REST paths of run_v2's
``services/transports/rest_base.py``) over a real socket, keeps services as the JSON the API would
return (camelCase, enums as ints, zero values omitted) and records every request, so tests assert on
what the SDK *sent*::

    with FakeCloudRunApi() as api:
        name = api.seed("p", "us-central1", "llm", uri="http://127.0.0.1:8101")
        client = run_v2.ServicesClient(credentials=AnonymousCredentials(), transport="rest",
                                       client_options=api.client_options)
        ...
        assert api.requests[-1].path == f"/v2/{name}"

Answered: ``GET /v2/projects/*/locations/*/services/*`` (get_service),
``PATCH .../services/*?updateMask=a,b`` (update_service: each masked top-level field of the body
replaces the stored one) and ``GET /v2/projects/*/locations/*/operations/*`` (LRO polling).
Mutations answer a ``google.longrunning.Operation``; with ``polls_before_done = n`` a new operation
answers ``done: false`` until it has been polled ``n`` times. The ``$alt=json;enum-encoding=int``
query the client appends to every call is dropped from the record.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["CONDITION_FAILED", "CONDITION_SUCCEEDED", "FakeCloudRunApi", "RecordedRequest"]

# google.cloud.run_v2.Condition.State, as the REST transport encodes it (enum-encoding=int).
CONDITION_SUCCEEDED = 4
CONDITION_FAILED = 3
_SERVICE_TYPE = "type.googleapis.com/google.cloud.run.v2.Service"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake received it; ``query`` omits the client's ``$alt``."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: dict[str, Any] | None
    headers: dict[str, str]


def _status_name(code: int) -> str:
    return {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}.get(
        code, "INTERNAL"
    )


class FakeCloudRunApi:
    """The fake API server; ``start()`` binds 127.0.0.1 on a free port, ``stop()`` closes it.

    Attributes:
        services: full resource name -> the Service JSON the API returns (edit freely).
        requests: every request received, in order.
        polls_before_done: how many operation polls a new mutation needs before it is done.
    """

    def __init__(self) -> None:
        self.services: dict[str, dict[str, Any]] = {}
        self.requests: list[RecordedRequest] = []
        self.polls_before_done = 0
        self._operations: dict[str, dict[str, Any]] = {}  # name -> {"polls_left", "response"}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------- lifecycle

    def start(self) -> FakeCloudRunApi:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake._handle(self)

            def do_PATCH(self) -> None:
                fake._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test output is no place for an access log."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeCloudRunApi:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def client_options(self) -> dict[str, str]:
        """What ``ServicesClient(client_options=...)`` needs to talk to this fake."""
        return {"api_endpoint": self.url}

    # ------------------------------------------------------------------------- seeding

    def seed(
        self,
        project: str,
        region: str,
        service: str,
        *,
        uri: str,
        accelerator: str | None = "nvidia-l4",
        cpu: str = "4",
        memory: str = "16Gi",
        min_instances: int = 0,
        max_instances: int = 3,
        ready: bool = True,
        zonal_redundancy_disabled: bool = True,
    ) -> str:
        """Store a Service as the API returns it (a GPU service unless ``accelerator=None``);
        returns its resource name."""
        name = f"projects/{project}/locations/{region}/services/{service}"
        limits = {"cpu": cpu, "memory": memory}
        template: dict[str, Any] = {
            "containers": [{"image": "gpufan/worker:1", "resources": {"limits": limits}}],
            "scaling": _scaling(min_instances, max_instances),
        }
        if accelerator is not None:
            limits["nvidia.com/gpu"] = "1"
            template["nodeSelector"] = {"accelerator": accelerator}
            template["gpuZonalRedundancyDisabled"] = zonal_redundancy_disabled
        state = CONDITION_SUCCEEDED if ready else CONDITION_FAILED
        doc = {
            "name": name,
            "uri": uri,
            "urls": [uri],
            "template": template,
            "scaling": _scaling(min_instances, max_instances),
            "terminalCondition": {"type": "Ready", "state": state},
        }
        with self._lock:
            self.services[name] = doc
        return name

    # ------------------------------------------------------------------------- serving

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        split = urlsplit(h.path)
        query = {k: v for k, v in parse_qs(split.query).items() if k != "$alt"}
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        with self._lock:
            self.requests.append(
                RecordedRequest(h.command, split.path, query, body, dict(h.headers.items()))
            )
            code, doc = self._route(h.command, split.path.split("/"), query, body)
        payload = json.dumps(doc).encode()
        h.send_response(code)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def _route(
        self, method: str, parts: list[str], query: dict[str, list[str]], body: Any
    ) -> tuple[int, dict[str, Any]]:
        # parts: ["", "v2", "projects", P, "locations", R, kind, id]
        if len(parts) != 8 or parts[:3] != ["", "v2", "projects"] or parts[4] != "locations":
            return _error(404, f"no route {'/'.join(parts)}")
        name = "/".join(parts[2:])
        kind = parts[6]
        if kind == "services" and method == "GET":
            svc = self.services.get(name)
            return (200, svc) if svc else _error(404, f"Resource '{parts[7]}' does not exist.")
        if kind == "services" and method == "PATCH":
            return self._update(name, query, body or {})
        if kind == "operations" and method == "GET":
            return self._poll(name)
        return _error(404, f"no route {method} {'/'.join(parts)}")

    def _update(
        self, name: str, query: dict[str, list[str]], body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        svc = self.services.get(name)
        if svc is None:
            return _error(404, f"Resource '{name.rsplit('/', 1)[-1]}' does not exist.")
        mask = [p for v in query.get("updateMask", []) for p in v.split(",") if p]
        if not mask:
            return _error(400, "this fake only applies updates with an updateMask")
        for path in mask:
            if path in body:
                svc[path] = body[path]
            else:  # a masked field absent from the body is cleared (proto3 zero value)
                svc.pop(path, None)
        op_name = name.replace("/services/", "/operations/") + f"-op{len(self._operations)}"
        self._operations[op_name] = {
            "polls_left": self.polls_before_done,
            "response": {"@type": _SERVICE_TYPE, **json.loads(json.dumps(svc))},
        }
        return 200, self._operation(op_name)

    def _poll(self, name: str) -> tuple[int, dict[str, Any]]:
        op = self._operations.get(name)
        if op is None:
            return _error(404, f"Operation '{name}' does not exist.")
        op["polls_left"] = max(0, op["polls_left"] - 1)
        return 200, self._operation(name)

    def _operation(self, name: str) -> dict[str, Any]:
        op = self._operations[name]
        if op["polls_left"] > 0:
            return {"name": name, "done": False}
        return {"name": name, "done": True, "response": op["response"]}


def _scaling(min_instances: int, max_instances: int) -> dict[str, int]:
    """Scaling JSON as the API writes it: proto3 zero values are omitted."""
    doc = {"minInstanceCount": min_instances, "maxInstanceCount": max_instances}
    return {k: v for k, v in doc.items() if v}


def _error(code: int, message: str) -> tuple[int, dict[str, Any]]:
    """Google's JSON error body, which ``google.api_core.exceptions`` parses."""
    return code, {"error": {"code": code, "message": message, "status": _status_name(code)}}
