"""A loopback Blob service: the REST requests azure-storage-blob really sends, in memory."""

from __future__ import annotations

import hashlib
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

__all__ = ["TEST_KEY", "FakeBlobs", "connection_string"]

TEST_KEY = "bm90LWEtc2VjcmV0LXRlc3Qta2V5"  # base64 of "not-a-secret-test-key"


class FakeBlobs(BaseHTTPRequestHandler):
    """Put, get (ranged) and head of block blobs, with metadata and etags, in memory."""

    blobs: dict[str, dict[str, Any]] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def _name(self) -> str:
        return unquote(urlsplit(self.path).path).split("/", 3)[3]  # /account/container/blob

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in {"x-ms-version": "2025-01-05", **(headers or {})}.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _missing(self) -> None:
        xml = b'<?xml version="1.0"?><Error><Code>BlobNotFound</Code><Message>no</Message></Error>'
        self._reply(
            404, xml, {"x-ms-error-code": "BlobNotFound", "content-type": "application/xml"}
        )

    def _props(self, blob: dict[str, Any]) -> dict[str, str]:
        return {
            "etag": blob["etag"],
            "last-modified": blob["modified"],
            "x-ms-blob-type": "BlockBlob",
            "content-type": blob["type"],
            **{f"x-ms-meta-{k}": v for k, v in blob["metadata"].items()},
        }

    def do_PUT(self) -> None:
        data = self.rfile.read(int(self.headers["content-length"]))
        etag = '"0x' + hashlib.md5(data).hexdigest()[:16].upper() + '"'
        self.blobs[self._name()] = {
            "data": data,
            "etag": etag,
            "modified": formatdate(usegmt=True),
            "type": self.headers.get("x-ms-blob-content-type", "application/octet-stream"),
            "metadata": {
                k[len("x-ms-meta-") :]: v
                for k, v in self.headers.items()
                if k.lower().startswith("x-ms-meta-")
            },
        }
        self._reply(
            201, headers={"etag": etag, "last-modified": self.blobs[self._name()]["modified"]}
        )

    def do_HEAD(self) -> None:
        blob = self.blobs.get(self._name())
        if blob is None:
            return self._reply(404, headers={"x-ms-error-code": "BlobNotFound"})
        self._reply(200, b"", self._props(blob))

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        if query.get("comp") == ["list"]:
            return self._list(query.get("prefix", [""])[0])
        blob = self.blobs.get(self._name())
        if blob is None:
            return self._missing()
        data, total = blob["data"], len(blob["data"])
        ranged = self.headers.get("x-ms-range") or self.headers.get("range")
        if ranged is None:
            return self._reply(200, data, self._props(blob))
        start, _, end = ranged.removeprefix("bytes=").partition("-")
        first, last = int(start), min(int(end or total - 1), total - 1)
        headers = {**self._props(blob), "content-range": f"bytes {first}-{last}/{total}"}
        self._reply(206, data[first : last + 1], headers)

    def _list(self, prefix: str) -> None:
        """List Blobs in one page (no NextMarker), the XML the SDK deserialises."""
        items = "".join(
            f"<Blob><Name>{escape(name)}</Name><Properties>"
            f"<Last-Modified>{blob['modified']}</Last-Modified><Etag>{escape(blob['etag'])}</Etag>"
            f"<Content-Length>{len(blob['data'])}</Content-Length>"
            f"<Content-Type>{blob['type']}</Content-Type><BlobType>BlockBlob</BlobType>"
            "</Properties></Blob>"
            for name, blob in sorted(self.blobs.items())
            if name.startswith(prefix)
        )
        xml = (
            '<?xml version="1.0" encoding="utf-8"?><EnumerationResults>'
            f"<Prefix>{escape(prefix)}</Prefix><Blobs>{items}</Blobs><NextMarker/>"
            "</EnumerationResults>"
        )
        self._reply(200, xml.encode(), {"content-type": "application/xml"})


def connection_string(endpoint: str, account: str) -> str:
    """The connection string by which azure-storage-blob reaches ``account`` on the fake."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={TEST_KEY};"
        f"BlobEndpoint={endpoint}/{account};"
    )
