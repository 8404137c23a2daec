"""Azure Functions (Python v2 programming model) entry points: parse, call the core, render.

=================  ============================================================================
``oip``            HTTP ``/v2/{*path}``: the OIP front door (function key, plus the bearer token
                   when ``server.token_env`` is set)
``health``         HTTP ``/v2/health/{probe}``, anonymous: liveness and readiness probes
``blob_job``       blob trigger (Event Grid source) on ``%GPUFAN_JOBS_CONTAINER%/jobs/{name}``
``queue_job``      Storage queue ``%GPUFAN_JOBS_QUEUE%``: Event Grid ``BlobCreated`` events or
                   ``{"container", "key"}`` messages
``control_loop``   timer ``%GPUFAN_CONTROL_SCHEDULE%`` (NCRONTAB): one control-loop tick
=================  ============================================================================

All are async: the host awaits them on its own event loop, and ``FunctionRuntime.arun`` hands
the work to the front door's loop without blocking it. The package puts this file and
``host.json`` (``routePrefix: ""``, so paths are OIP's own) at the app root.

App settings: ``GPUFAN_CONFIG``; the variables its ``token_env`` keys name;
``GPUFAN_STORAGE`` (the storage account's connection string, the triggers' ``connection``);
``GPUFAN_JOBS_CONTAINER``, ``GPUFAN_JOBS_QUEUE``, ``GPUFAN_CONTROL_SCHEDULE``. A failed job
raises: the host retries it and then moves it to the poison queue.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from urllib.parse import unquote, urlsplit

import azure.functions as func

from core.frontdoor.control import control_tick
from core.frontdoor.jobs import run_job
from core.storage.azblob import AzureBlobStorage
from core.wire.http import Request, Response
from functions._runtime import FunctionRuntime, payload_too_large

# Azure Functions refuses HTTP request bodies over 100 MB by default ("HTTP request length is
# limited to 100 MB (104,857,600 bytes)", https://learn.microsoft.com/azure/azure-functions/
# functions-bindings-http-webhook-trigger#limits; FUNCTIONS_REQUEST_BODY_SIZE_LIMIT changes it).
SYNC_PAYLOAD_LIMIT = 100 * 1024 * 1024
PLATFORM = "Azure Functions"
STORAGE_SETTING = "GPUFAN_STORAGE"
_BLOB_SUBJECT = "/blobServices/default/containers/"

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
runtime = FunctionRuntime()
log = logging.getLogger(__name__)


def _render(response: Response) -> func.HttpResponse:
    return func.HttpResponse(
        response.body_bytes(),
        status_code=response.status,
        headers=response.headers,
        mimetype=response.headers.get("content-type"),  # the worker may read it over headers
    )


async def _front_door(req: func.HttpRequest, path: str) -> func.HttpResponse:
    body = req.get_body()
    if len(body) > SYNC_PAYLOAD_LIMIT:
        return _render(payload_too_large(len(body), SYNC_PAYLOAD_LIMIT, PLATFORM))
    request = Request(
        method=req.method,
        path=path,
        headers={k.lower(): v for k, v in req.headers.items()},
        body=body,
        query=urlsplit(req.url).query,
    )
    return _render(await runtime.ahandle(request))


@app.route(route="v2/{*path}", methods=["GET", "POST"])
async def oip(req: func.HttpRequest) -> func.HttpResponse:
    """The OIP routes over the front door, as ``gpufan serve`` answers them."""
    return await _front_door(req, "/v2/" + req.route_params.get("path", ""))


@app.route(route="v2/health/{probe}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness and readiness without a function key, for the platform's probes."""
    return await _front_door(req, "/v2/health/" + req.route_params.get("probe", ""))


@functools.cache
def _storage(container: str) -> AzureBlobStorage:
    return AzureBlobStorage.from_connection_string(os.environ[STORAGE_SETTING], container)


async def _job(container: str, key: str) -> None:
    storage = _storage(container)
    outcome = await runtime.arun(lambda rt: run_job(rt.front_door, storage, key))
    log.info("job %s: %s/%s -> %s", outcome.status, container, key, outcome.result_key)


@app.blob_trigger(
    arg_name="blob",
    path="%GPUFAN_JOBS_CONTAINER%/jobs/{name}",
    connection=STORAGE_SETTING,
    source=func.BlobSource.EVENT_GRID,
)
async def blob_job(blob: func.InputStream) -> None:
    """A new blob under jobs/: run its job (once per etag)."""
    container, key = (blob.name or "").split("/", 1)
    await _job(container, key)


@app.queue_trigger(arg_name="msg", queue_name="%GPUFAN_JOBS_QUEUE%", connection=STORAGE_SETTING)
async def queue_job(msg: func.QueueMessage) -> None:
    """A queued message naming a blob: an Event Grid ``BlobCreated`` event or a plain one."""
    named = json.loads(msg.get_body())
    if "subject" in named:  # Event Grid: /blobServices/default/containers/C/blobs/KEY
        if named.get("eventType") != "Microsoft.Storage.BlobCreated":
            return
        container, _, key = named["subject"].removeprefix(_BLOB_SUBJECT).partition("/blobs/")
        await _job(container, unquote(key))
    else:
        await _job(named["container"], named["key"])


@app.timer_trigger(arg_name="timer", schedule="%GPUFAN_CONTROL_SCHEDULE%", run_on_startup=False)
async def control_loop(timer: func.TimerRequest) -> None:
    """One control-loop tick; its summary goes to the log (Application Insights)."""
    summary = await runtime.arun(control_tick)
    log.info("control loop: %s", json.dumps(summary))
