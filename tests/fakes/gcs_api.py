"""A loopback Cloud Storage: the JSON API requests google-cloud-storage really sends, in memory."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import json
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["FakeGcs", "client_for"]


class FakeGcs(BaseHTTPRequestHandler):
    """Objects metadata, media download and multipart upload of the GCS JSON API, in memory."""

    objects: dict[tuple[str, str], dict[str, Any]] = {}
    generation = 1_700_000_000_000_000

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json", **hdrs: str) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        for k, v in hdrs.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def _missing(self) -> None:
        self._send(404, json.dumps({"error": {"code": 404, "message": "No such object"}}).encode())

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = url.path.split("/")  # ['', (download,) storage, v1, b, BUCKET, o, OBJECT]
        if parts[-1] == "o":  # objects.list: ['', storage, v1, b, BUCKET, o]
            return self._list(parts[-2], parse_qs(url.query).get("prefix", [""])[0])
        media = parts[1] == "download"
        bucket, name = parts[-3], unquote(parts[-1])
        obj = self.objects.get((bucket, name))
        if obj is None:
            return self._missing()
        if not media:
            return self._send(200, json.dumps(obj["resource"]).encode())
        match = parse_qs(url.query).get("ifGenerationMatch")
        if match and match[0] != obj["resource"]["generation"]:
            return self._send(412, b'{"error": {"code": 412, "message": "precondition"}}')
        res = obj["resource"]
        headers = {"x_goog_generation": res["generation"], "etag": res["etag"]}
        return self._send(200, obj["data"], "application/octet-stream", **headers)

    def do_POST(self) -> None:  # uploadType=multipart: a JSON resource part, then the media
        bucket = urlsplit(self.path).path.split("/")[-2]
        raw = self.rfile.read(int(self.headers["content-length"]))
        head = f"content-type: {self.headers['content-type']}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
        meta_part, media_part = message.iter_parts()
        meta = json.loads(meta_part.get_payload(decode=True))
        data = media_part.get_payload(decode=True)
        FakeGcs.generation += 1
        resource = {
            "kind": "storage#object",
            "bucket": bucket,
            "name": meta["name"],
            "generation": str(FakeGcs.generation),
            "metageneration": "1",
            "size": str(len(data)),
            "etag": base64.b64encode(hashlib.md5(data).digest()).decode(),
            "contentType": meta.get("contentType", "application/octet-stream"),
            "metadata": meta.get("metadata") or {},
        }
        self.objects[(bucket, meta["name"])] = {"resource": resource, "data": data}
        self._send(200, json.dumps(resource).encode())

    def _list(self, bucket: str, prefix: str) -> None:
        """objects.list in one page (the client follows nextPageToken; none is given)."""
        items = [
            obj["resource"]
            for (b, name), obj in sorted(self.objects.items())
            if b == bucket and name.startswith(prefix)
        ]
        self._send(200, json.dumps({"kind": "storage#objects", "items": items}).encode())


def client_for(endpoint: str) -> Any:
    """A real ``google.cloud.storage.Client`` talking to the fake at ``endpoint``."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )
