"""The AWS Lambda handlers with real events, over real local workers; S3 and SQS through moto.

GIVEN two worker processes serving the demo model and a gpufan.yaml naming them as http targets,
WHEN API Gateway HTTP API v2 events, SQS-wrapped S3 notifications or a schedule event arrive,
THEN results equal one direct onnxruntime run exactly, errors keep the front door's statuses,
one bad message never sinks its batch, and a re-delivered event writes no second result.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from moto import mock_aws

from core.frontdoor.workers import WorkerPool
from core.wire.client import as_request
from core.wire.tensors import decode_request, decode_response, encode_request
from functions.aws import handler
from gpu_containers import DEMO_REPOSITORY

EVENTS = Path(__file__).parents[1] / "events"
MODEL = "digits"
Direct = Callable[[np.ndarray], dict[str, np.ndarray]]


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def workers() -> Iterator[WorkerPool]:
    with WorkerPool(DEMO_REPOSITORY, 2) as pool:
        yield pool


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Each test starts from a clean environment and a front door not yet built."""
    for name in list(os.environ):
        if name.startswith(("GPUFAN_", "POWERTOOLS_", "AWS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    yield monkeypatch
    handler.runtime.close()


@pytest.fixture
def configure(workers: WorkerPool, tmp_path: Path, env: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Factory: write a gpufan.yaml over the workers and point GPUFAN_CONFIG at it."""

    def write(**sections: Any) -> Path:
        targets = [
            {"name": f"w{i}", "backend": "http", "endpoint": ep, "max_concurrency": 2}
            for i, ep in enumerate(workers.endpoints)
        ]
        doc = {
            "models": [{"name": MODEL, "repository": str(DEMO_REPOSITORY)}],
            "targets": targets,
            "policy": {"max_shard_items": 16, "min_shard_items": 1},
            **sections,
        }
        path = tmp_path / "gpufan.yaml"
        path.write_text(yaml.safe_dump(doc))
        env.setenv("GPUFAN_CONFIG", str(path))
        return path

    return write


@dataclass
class LambdaContext:
    function_name: str = "gpufan-front-door"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:gpufan-front-door"
    aws_request_id: str = "52fdfc07-2182-154f-163f-5f0f9a621d72"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def _event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def _binary_event(x: np.ndarray) -> dict[str, Any]:
    chunks, headers = encode_request(as_request({"X": x}), binary=True)
    raw = b"".join(bytes(c) for c in chunks)
    event = _event("apigw_http_v2_infer_binary.json")
    event["body"] = base64.b64encode(raw).decode()
    event["headers"].update(headers, **{"content-length": str(len(raw))})
    return event


def _decoded(reply: dict[str, Any]) -> Any:
    headers = reply["headers"]
    body = base64.b64decode(reply["body"]) if reply["isBase64Encoded"] else reply["body"].encode()
    return decode_response(body, headers.get("inference-header-content-length"))


def _assert_exact(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(got[name], expected, err_msg=name)


# ------------------------------------------------------------------------------------ HTTP


def test_json_event_equals_direct_run(configure: Callable[..., Path], direct: Direct) -> None:
    configure()
    event = _event("apigw_http_v2_infer_json.json")
    x = decode_request(event["body"].encode()).inputs[0].data

    reply = handler.http_handler(event, LambdaContext())

    assert reply["statusCode"] == 200 and not reply["isBase64Encoded"]
    assert reply["headers"]["Content-Type"] == "application/json"
    _assert_exact({t.name: t.data for t in _decoded(reply).outputs}, direct(x))


def test_binary_event_is_decoded_and_answered_in_base64(
    configure: Callable[..., Path], direct: Direct, digits: np.ndarray
) -> None:
    configure()
    captured = _event("apigw_http_v2_infer_binary.json")
    x = digits[:37]  # three shards of up to 16 rows: exercises the merge

    for event, rows in ((captured, digits[:3]), (_binary_event(x), x)):
        reply = handler.http_handler(event, LambdaContext())

        assert reply["statusCode"] == 200 and reply["isBase64Encoded"]
        assert reply["headers"]["Content-Type"] == "application/octet-stream"
        resp = _decoded(reply)
        _assert_exact({t.name: t.data for t in resp.outputs}, direct(rows))
    report = orjson.loads(resp.parameters["gpufan_report"])
    assert sum(s["items"] for s in report["shards"]) == 37


def test_metrics_carry_latency_and_estimated_cost(
    configure: Callable[..., Path], digits: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    configure()
    handler.http_handler(_binary_event(digits[:8]), LambdaContext())

    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert emf, "no CloudWatch EMF line was written"
    (directive,) = emf[-1]["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "gpufan"
    names = {m["Name"] for m in directive["Metrics"]}
    assert {"latency", "estimated_cost_usd"} <= names
    assert emf[-1]["latency"][0] > 0 and emf[-1]["estimated_cost_usd"][0] >= 0


def test_oversize_body_is_413_pointing_to_the_event_path(configure: Callable[..., Path]) -> None:
    configure()
    event = _event("apigw_http_v2_infer_json.json")
    event["body"] = " " * (handler.SYNC_PAYLOAD_LIMIT + 1)

    reply = handler.http_handler(event, LambdaContext())

    assert reply["statusCode"] == 413
    assert "jobs/<name>.manifest.json" in json.loads(reply["body"])["error"]


def test_bearer_token_is_checked_and_health_stays_open(
    configure: Callable[..., Path], env: pytest.MonkeyPatch
) -> None:
    configure(server={"token_env": "GPUFAN_TEST_TOKEN"})
    env.setenv("GPUFAN_TEST_TOKEN", "s3cret")
    event = _event("apigw_http_v2_infer_json.json")

    denied = handler.http_handler(copy.deepcopy(event), LambdaContext())
    event["headers"]["authorization"] = "Bearer s3cret"
    allowed = handler.http_handler(event, LambdaContext())
    health = _event("apigw_http_v2_infer_json.json")
    health.update(rawPath="/v2/health/ready", body=None)
    health["requestContext"]["http"].update(method="GET", path="/v2/health/ready")
    ready = handler.http_handler(health, LambdaContext())

    assert denied["statusCode"] == 401 and "bearer" in json.loads(denied["body"])["error"]
    assert allowed["statusCode"] == 200
    assert ready["statusCode"] == 200


def test_without_gpufan_config_every_route_says_what_is_missing() -> None:
    reply = handler.http_handler(_event("apigw_http_v2_infer_json.json"), LambdaContext())

    assert reply["statusCode"] == 500
    assert "GPUFAN_CONFIG" in json.loads(reply["body"])["error"]


def test_unknown_model_keeps_the_front_doors_404(configure: Callable[..., Path]) -> None:
    configure()
    event = _event("apigw_http_v2_infer_json.json")
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/v2/models/nope/infer"

    reply = handler.http_handler(event, LambdaContext())

    assert reply["statusCode"] == 404 and "nope" in json.loads(reply["body"])["error"]


# ------------------------------------------------------------------------------------ events


@pytest.fixture
def jobs_bucket(env: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any, str]]:
    """A moto bucket whose jobs/ notifications go to an SQS queue: (s3, sqs, queue_url)."""
    import boto3

    with mock_aws():
        s3, sqs = boto3.client("s3"), boto3.client("sqs")
        queue = sqs.create_queue(QueueName="gpufan-jobs")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
        s3.create_bucket(Bucket="gpufan-jobs-test")
        rule = {"Key": {"FilterRules": [{"Name": "prefix", "Value": "jobs/"}]}}
        s3.put_bucket_notification_configuration(
            Bucket="gpufan-jobs-test",
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": arn["Attributes"]["QueueArn"],
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": rule,
                    }
                ]
            },
        )
        yield s3, sqs, queue


def _lambda_sqs_event(sqs: Any, queue: str) -> dict[str, Any]:
    """What Lambda's event source mapping hands the function for the queue's messages."""
    template = _event("sqs_s3_object_created.json")["Records"][0]
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    records = []
    for m in messages:
        record = copy.deepcopy(template)
        record.update(messageId=m["MessageId"], receiptHandle=m["ReceiptHandle"], body=m["Body"])
        records.append(record)
    return {"Records": records}


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _keys(s3: Any) -> list[str]:
    listed = s3.list_objects_v2(Bucket="gpufan-jobs-test").get("Contents", [])
    return sorted(o["Key"] for o in listed)


def test_sqs_batch_reports_only_the_bad_message_and_redelivery_adds_nothing(
    configure: Callable[..., Path],
    jobs_bucket: tuple[Any, Any, str],
    direct: Direct,
    digits: np.ndarray,
) -> None:
    configure()
    s3, sqs, queue = jobs_bucket
    bucket, x = "gpufan-jobs-test", digits[:21]
    manifest = {"model": MODEL, "parameters": {"slo_ms": 5000}}
    s3.put_object(Bucket=bucket, Key="jobs/good run.manifest.json", Body=json.dumps(manifest))
    s3.put_object(Bucket=bucket, Key="jobs/good run.npz", Body=_npz(X=x))
    s3.put_object(Bucket=bucket, Key="jobs/orphan.npz", Body=_npz(X=x))  # no manifest
    event = _lambda_sqs_event(sqs, queue)
    bodies = {r["messageId"]: r["body"] for r in event["Records"]}
    bad = [mid for mid, body in bodies.items() if "orphan" in body]

    reply = handler.sqs_handler(event, LambdaContext())

    assert [f["itemIdentifier"] for f in reply["batchItemFailures"]] == bad
    etag = s3.head_object(Bucket=bucket, Key="jobs/good run.npz")["ETag"].strip('"')
    prefix = f"results/jobs/good run.npz/{etag}/"
    result = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "result.json")["Body"].read())
    assert result["status"] == "ok" and result["input"]["etag"] == etag
    assert sum(s["items"] for s in result["report"]["shards"]) == 21
    outputs = s3.get_object(Bucket=bucket, Key=prefix + "outputs.npz")["Body"].read()
    with np.load(io.BytesIO(outputs)) as got:
        _assert_exact({k: got[k] for k in got.files}, direct(x))
    errors = [k for k in _keys(s3) if k.startswith("results/jobs/orphan.npz/")]
    (error_key,) = errors
    error = json.loads(s3.get_object(Bucket=bucket, Key=error_key)["Body"].read())
    assert error["status"] == "error" and "manifest" in error["error"]

    before = _keys(s3)
    again = handler.sqs_handler(event, LambdaContext())  # at-least-once: the same batch again

    assert [f["itemIdentifier"] for f in again["batchItemFailures"]] == bad
    assert _keys(s3) == before


def test_schedule_runs_the_control_loop(configure: Callable[..., Path]) -> None:
    configure()

    summary = handler.schedule_handler(_event("eventbridge_schedule.json"), LambdaContext())

    assert (summary["ready"], summary["total"]) == (2, 2)
    assert {t["name"] for t in summary["targets"]} == {"w0", "w1"}
