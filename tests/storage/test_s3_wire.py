"""What goes on the wire: no aws-chunked bodies or trailing checksums, Content-MD5 on
DeleteObjects, and the client configuration for a B2-style endpoint (no network)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.config
import pytest
from botocore.awsrequest import AWSResponse

from litefs_py.replica_clients import client_for_url
from litefs_py.storage.base import META_CHECKSUM, META_TIMESTAMP, format_timestamp
from litefs_py.storage.s3 import S3ReplicaClient, guess_region, is_aws_endpoint
from tests.s3_server import S3Bucket, raw_keys
from tests.storage.helpers import TcpTap, ltx_bytes

TS = 1_767_225_600_123
B2_HOST = "s3.us-west-002.backblazeb2.com"
FORBIDDEN_PUT_HEADERS = ("x-amz-trailer", "x-amz-decoded-content-length", "transfer-encoding")


@pytest.fixture
def tap(s3_bucket: S3Bucket) -> Iterator[TcpTap]:
    parts = urlsplit(s3_bucket.endpoint)
    assert parts.hostname is not None and parts.port is not None
    t = TcpTap(parts.hostname, parts.port)
    yield t
    t.close()


def test_put_and_delete_headers_on_the_wire(s3_bucket: S3Bucket, tap: TcpTap) -> None:
    c = client_for_url(f"s3://{s3_bucket.name}/app.db?endpoint={tap.endpoint}")
    assert isinstance(c, S3ReplicaClient)
    data = ltx_bytes(1, 1, TS, 70_000)
    try:
        info = c.write_ltx(0, 1, 1, data, {META_TIMESTAMP: format_timestamp(TS),
                                           META_CHECKSUM: "00000000000000ff"})
        c.delete_ltx([info])
    finally:
        c.close()
    assert raw_keys(s3_bucket.endpoint, s3_bucket.name) == []  # the delete really happened

    reqs = tap.requests()
    puts = [r for r in reqs if r.method == "PUT"]
    assert len(puts) == 1
    put = puts[0].headers
    assert puts[0].target == f"/{s3_bucket.name}/app.db/0000/0000000000000001-0000000000000001.ltx"
    assert put["content-length"] == str(len(data))
    assert put["x-amz-content-sha256"] == hashlib.sha256(data).hexdigest()
    assert "aws-chunked" not in put.get("content-encoding", "")
    for name in FORBIDDEN_PUT_HEADERS:
        assert name not in put, name
    assert not [h for h in put if h.startswith("x-amz-checksum-")]
    assert put["x-amz-meta-litestream-timestamp"] == "2026-01-01T00:00:00.123Z"
    assert put["x-amz-meta-litefs-post-apply-checksum"] == "00000000000000ff"
    assert put["authorization"].startswith("AWS4-HMAC-SHA256 ")

    deletes = [r for r in reqs if r.method == "POST" and "delete" in r.target]
    assert len(deletes) == 1
    d = deletes[0].headers
    assert "content-md5" in d
    assert not [h for h in d if h.startswith("x-amz-checksum-")]


class Offline:
    """Answers every request of a boto3 client with 200 and records it (no network)."""

    def __init__(self, boto_client: Any) -> None:
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        boto_client.meta.events.register("before-send.s3", self._answer)

    def _answer(self, request: Any, **_: Any) -> AWSResponse:
        headers = {k.lower(): (v.decode() if isinstance(v, bytes) else str(v))
                   for k, v in request.headers.items()}
        self.requests.append((request.method, request.url, headers, request.body))

        class Raw:
            def stream(self, *_a: Any, **_k: Any) -> Iterator[bytes]:
                yield b""

        return AWSResponse(request.url, 200, {"ETag": '"0"'}, Raw())


def test_b2_endpoint_config_and_put_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITEFS_ACCESS_KEY_ID", "keyid")
    monkeypatch.setenv("LITEFS_SECRET_ACCESS_KEY", "secret")
    c = client_for_url(f"s3://my-bucket/backups/app.db?endpoint={B2_HOST}")
    assert isinstance(c, S3ReplicaClient)
    try:
        meta = c.boto_client.meta
        assert c.endpoint_url == meta.endpoint_url == f"https://{B2_HOST}"
        assert meta.config.s3["addressing_style"] == "path"
        assert meta.region_name == c.region == "us-west-002"
        assert meta.config.signature_version == "s3v4"
        assert meta.config.request_checksum_calculation == "when_required"
        assert meta.config.response_checksum_validation == "when_required"
        assert meta.config.retries["mode"] == "standard"
        assert meta.config.retries["total_max_attempts"] <= 3
        assert meta.config.connect_timeout <= 5
        assert meta.config.read_timeout <= 15

        off = Offline(c.boto_client)
        data = ltx_bytes(1, 1, TS, 10_000)
        c.write_ltx(0, 1, 1, data, {})
        method, url, headers, _body = off.requests[0]
        assert method == "PUT"
        assert url == f"https://{B2_HOST}/my-bucket/backups/app.db/0000/" \
                      "0000000000000001-0000000000000001.ltx"
        assert "aws-chunked" not in headers.get("content-encoding", "")
        for name in FORBIDDEN_PUT_HEADERS:
            assert name not in headers, name
        assert headers["x-amz-content-sha256"] == hashlib.sha256(data).hexdigest()
        assert headers["content-length"] == str(len(data))
        assert "/us-west-002/s3/aws4_request" in headers["authorization"]
    finally:
        c.close()


def test_botocore_default_would_send_aws_chunked_to_b2() -> None:
    """Control: what the settings above prevent. With botocore's defaults an https PUT is
    aws-chunked with a trailing CRC32 (what B2 rejected from Litestream 0.5)."""
    plain = boto3.session.Session().client(
        "s3", endpoint_url=f"https://{B2_HOST}", region_name="us-west-002",
        aws_access_key_id="k", aws_secret_access_key="s",
        config=botocore.config.Config(s3={"addressing_style": "path"}))
    try:
        off = Offline(plain)
        plain.put_object(Bucket="b", Key="k", Body=b"x" * 100)
        headers = off.requests[0][2]
        assert headers.get("content-encoding") == "aws-chunked"
        assert headers.get("x-amz-trailer", "").startswith("x-amz-checksum-")
    finally:
        plain.close()


@pytest.mark.parametrize(("endpoint", "region", "aws"), [
    (None, None, True),
    ("https://s3.us-west-002.backblazeb2.com", "us-west-002", False),
    ("https://s3.eu-central-003.backblazeb2.com", "eu-central-003", False),
    ("https://abc123.r2.cloudflarestorage.com", "auto", False),
    ("https://fra1.digitaloceanspaces.com", "fra1", False),
    ("https://s3.eu-west-1.amazonaws.com", "eu-west-1", True),
    ("http://127.0.0.1:9000", None, False),
    ("https://minio.example.com", None, False),
])
def test_region_guess_and_aws_detection(endpoint: str | None, region: str | None,
                                        aws: bool) -> None:
    assert guess_region(endpoint) == region
    assert is_aws_endpoint(endpoint) is aws


def test_addressing_style_and_region_defaults() -> None:
    clients = [
        S3ReplicaClient("b", "p", endpoint="https://minio.example.com"),
        S3ReplicaClient("b", "p", endpoint="https://minio.example.com", force_path_style=False),
        S3ReplicaClient("b", "p", endpoint="https://s3.eu-west-1.amazonaws.com"),
        S3ReplicaClient("b", "p", endpoint="https://minio.example.com", region="eu-1"),
    ]
    try:
        got = [(c.boto_client.meta.config.s3["addressing_style"], c.region) for c in clients]
        assert got == [("path", "us-east-1"), ("virtual", "us-east-1"),
                       ("virtual", "eu-west-1"), ("path", "eu-1")]
    finally:
        for c in clients:
            c.close()
