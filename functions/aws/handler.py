"""AWS Lambda entry points: parse the event, call the core, render the answer.

==========================================  ==================================================
``functions.aws.handler.http_handler``      API Gateway HTTP API, payload format 2.0, route
                                            ``ANY /{proxy+}`` on the ``$default`` stage
``functions.aws.handler.sqs_handler``       SQS queue fed by S3 ``ObjectCreated`` notifications
                                            for ``jobs/``; event source mapping with
                                            ``ReportBatchItemFailures``; the queue's redrive
                                            policy sends what keeps failing to its DLQ
``functions.aws.handler.schedule_handler``  EventBridge schedule: the control loop
==========================================  ==================================================

Environment: ``GPUFAN_CONFIG`` (path of ``gpufan.yaml`` in the package), the variables its
``server.token_env`` and targets' ``token_env`` name, and Powertools' own
(``POWERTOOLS_LOG_LEVEL``, ``POWERTOOLS_TRACE_DISABLED``, ``POWERTOOLS_METRICS_DISABLED``).
"""

from __future__ import annotations

import base64
import time
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler import Response as LambdaResponse
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from core.errors import BadRequest, JobError
from core.frontdoor.control import control_tick
from core.frontdoor.jobs import run_job
from core.frontdoor.service import Served
from core.storage.s3 import S3Storage
from core.wire.http import Request, Response
from functions._runtime import FunctionRuntime, payload_too_large

__all__ = ["app", "http_handler", "runtime", "schedule_handler", "sqs_handler"]

# Lambda's quota for a synchronous invocation is 6 MB of payload each way, the whole event JSON
# (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html; API_Invoke: "For
# synchronous invocations, the maximum payload size is 6 MB"). A larger request never reaches the
# function, so the request check guards what Lambda lets through; the response check turns an
# over-size result (base64 makes binary 4/3 larger) into a clear 413 instead of a failed invoke.
SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024
PLATFORM = "AWS Lambda"

logger = Logger(service="gpufan")
tracer = Tracer(service="gpufan")
metrics = Metrics(namespace="gpufan", service="gpufan")


def _cost_metric(served: Served) -> None:
    """A front-door hook: the placement's estimated cost, as a metric of this invocation (HTTP
    request or storage job); requests placed without the cost model have none."""
    usd = served.result.estimated_usd
    if usd is not None:
        metrics.add_metric("estimated_cost_usd", MetricUnit.NoUnit, usd)


runtime = FunctionRuntime(hooks=(_cost_metric,))
app = APIGatewayHttpResolver()
processor = BatchProcessor(event_type=EventType.SQS)


@app.route(".+", method=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
def _oip() -> LambdaResponse[Any]:
    started = time.perf_counter()
    response = _answer(app.current_event)
    metrics.add_metric("latency", MetricUnit.Milliseconds, (time.perf_counter() - started) * 1000)
    return _render(response)


def _answer(event: APIGatewayProxyEventV2) -> Response:
    raw = event.body or ""
    if len(raw) > SYNC_PAYLOAD_LIMIT:
        return payload_too_large(len(raw), SYNC_PAYLOAD_LIMIT, PLATFORM)
    return runtime.handle(
        Request(
            method=event.http_method,
            path=event.path,
            headers={k.lower(): v for k, v in (event.headers or {}).items()},
            body=base64.b64decode(raw) if event.is_base64_encoded else raw.encode(),
            query=event.raw_query_string,
        )
    )


def _render(response: Response) -> LambdaResponse[Any]:
    """bytes bodies go back base64-encoded (Powertools sets ``isBase64Encoded``); JSON as text."""
    body = response.body_bytes()
    ctype = response.headers.get("content-type", "application/octet-stream")
    text = ctype.startswith("application/json")
    size = len(body) if text else 4 * -(-len(body) // 3)  # base64: 4 chars per 3 bytes
    if size > SYNC_PAYLOAD_LIMIT:
        return _render(payload_too_large(size, SYNC_PAYLOAD_LIMIT, PLATFORM, "the response"))
    headers = {k: v for k, v in response.headers.items() if k != "content-type"}
    return LambdaResponse(
        status_code=response.status,
        content_type=ctype,
        body=body.decode() if text else body,
        headers=headers,
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def http_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """API Gateway HTTP API (payload v2) -> the OIP front door."""
    return app.resolve(event, context)


def _s3_objects(message: Any) -> list[tuple[str, str]]:
    """(bucket, key) of each ObjectCreated record; S3's ``s3:TestEvent`` carries none."""
    if not isinstance(message, dict):
        raise BadRequest("the SQS message is not an S3 event notification")
    return [
        # keys arrive URL-encoded, spaces as '+'
        (r["s3"]["bucket"]["name"], unquote_plus(r["s3"]["object"]["key"]))
        for r in message.get("Records", [])
        if r.get("eventSource") == "aws:s3" and r.get("eventName", "").startswith("ObjectCreated")
    ]


def _job(bucket: str, key: str) -> None:
    try:
        outcome = runtime.run(lambda rt: run_job(rt.front_door, S3Storage(bucket), key))
    except JobError as e:
        logger.warning("job failed", extra={"key": key, "retryable": e.retryable, "error": str(e)})
        raise
    logger.info("job %s", outcome.status, extra={"key": key, "result": outcome.result_key})


def _job_record(record: SQSRecord) -> None:
    for bucket, key in _s3_objects(record.json_body):
        _job(bucket, key)


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def sqs_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """S3 ObjectCreated via SQS -> one job per object; failed messages in ``batchItemFailures``."""
    return process_partial_response(
        event=event, record_handler=_job_record, processor=processor, context=context
    )


@logger.inject_lambda_context
def schedule_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """EventBridge schedule -> one control-loop tick; its summary is logged and returned."""
    summary = runtime.run(control_tick)
    logger.info("control loop: %d of %d targets ready", summary["ready"], summary["total"])
    return summary
