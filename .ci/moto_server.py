"""moto's server for .ci/infra's apply, with bucket policies read as AWS reads them over TLS.

moto applies every statement of a bucket policy and ignores its ``Condition`` (its
``put_bucket_policy`` says so), so the AWS module's ``DenyInsecureTransport`` statement (deny
``s3:*`` when ``aws:SecureTransport`` is false) denies every object upload, where AWS denies only
plain-HTTP requests, which its SDKs never send. Here a statement with a condition is left out of
moto's evaluation; every other statement is enforced as moto enforces it.

    python .ci/moto_server.py -p PORT      (the arguments of ``python -m moto.server``)
"""

from __future__ import annotations

import json
import sys
from typing import Any

from moto.iam.access_control import IAMPolicy, PermissionResult
from moto.s3.models import FakeBucket
from moto.server import main


def _permission_without_conditions(bucket: FakeBucket, action: str, resource: str) -> Any:
    if bucket.policy is None:
        return PermissionResult.NEUTRAL
    policy = json.loads(bucket.policy)
    statements = policy["Statement"]
    statements = [statements] if isinstance(statements, dict) else statements
    kept = [s for s in statements if "Condition" not in s]
    if not kept:
        return PermissionResult.NEUTRAL
    evaluated = IAMPolicy(json.dumps({**policy, "Statement": kept}))
    return evaluated.is_action_permitted(action, resource)


FakeBucket.get_permission = _permission_without_conditions  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
