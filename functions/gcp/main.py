"""Cloud Functions (2nd gen) entry points: parse the request or event, call the core, render.

=====================  ========================================================================
``http_front_door``    HTTP trigger: the OIP front door (``/v2/...``)
``storage_job``        Eventarc ``google.cloud.storage.object.v1.finalized`` on the jobs bucket
``pubsub_job``         Pub/Sub trigger: a Cloud Storage notification (``OBJECT_FINALIZE``), or
                       any message whose JSON data names ``{"bucket", "name"}``
``control_loop``       HTTP, called by Cloud Scheduler (OIDC): one control-loop tick
=====================  ========================================================================

Deploy ``gpufan package``'s ``gcf-source.zip`` (its root ``main.py`` is a copy of this module,
beside ``core/``: functions-framework puts only the entry file's folder on ``sys.path``) with
``--entry-point`` one of the names above. Environment: ``GPUFAN_CONFIG`` and the variables its
``token_env`` keys name; the storage client uses Application Default Credentials. A failed job
raises, so the trigger's retry policy and dead-letter topic (Terraform's) decide what happens
next.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import flask
import functions_framework
import orjson
from cloudevents.http import CloudEvent

from core.frontdoor.control import control_tick
from core.frontdoor.jobs import run_job
from core.storage.gcs import GcsStorage
from core.wire.http import Request, Response
from functions._runtime import FunctionRuntime, payload_too_large

__all__ = ["control_loop", "http_front_door", "pubsub_job", "runtime", "storage_job"]

# Cloud Run functions (2nd gen) take at most 32 MB per HTTP request ("Max HTTP request size:
# 32 MB", https://cloud.google.com/functions/quotas#resource_limits; Cloud Run's HTTP/1 limit).
SYNC_PAYLOAD_LIMIT = 32 * 1024 * 1024
PLATFORM = "Cloud Functions"

runtime = FunctionRuntime()
log = logging.getLogger(__name__)


def _render(response: Response) -> flask.Response:
    return flask.Response(response.body_bytes(), status=response.status, headers=response.headers)


@functions_framework.http
def http_front_door(request: flask.Request) -> flask.Response:
    """The OIP routes over the front door, as ``gpufan serve`` answers them."""
    size = request.content_length or 0
    if size > SYNC_PAYLOAD_LIMIT:
        return _render(payload_too_large(size, SYNC_PAYLOAD_LIMIT, PLATFORM))
    return _render(
        runtime.handle(
            Request(
                method=request.method,
                path=request.path,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=request.get_data(),
                query=request.query_string.decode("latin-1"),
            )
        )
    )


def _job(bucket: str, key: str) -> None:
    outcome = runtime.run(lambda rt: run_job(rt.front_door, GcsStorage(bucket), key))
    log.info("job %s: gs://%s/%s -> %s", outcome.status, bucket, key, outcome.result_key)


@functions_framework.cloud_event
def storage_job(event: CloudEvent) -> None:
    """A finalized object in the jobs bucket: run its job (once per generation)."""
    data = event.data
    _job(data["bucket"], data["name"])


@functions_framework.cloud_event
def pubsub_job(event: CloudEvent) -> None:
    """A Pub/Sub message naming an object: run its job."""
    message = event.data["message"]
    attributes = message.get("attributes") or {}
    if attributes.get("eventType", "OBJECT_FINALIZE") != "OBJECT_FINALIZE":
        return  # a storage notification for a delete or metadata update: nothing to run
    named = orjson.loads(base64.b64decode(message["data"]))
    _job(named["bucket"], named["name"])


@functions_framework.http
def control_loop(request: flask.Request) -> tuple[dict[str, Any], int]:
    """One control-loop tick; the JSON summary is the answer (and Cloud Scheduler's log)."""
    summary = runtime.run(control_tick)
    log.info("control loop: %d of %d targets ready", summary["ready"], summary["total"])
    return summary, 200
