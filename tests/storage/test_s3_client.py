"""S3ReplicaClient against a real moto_server, what only it does: ranged GETs, metadata as
object user metadata and a listing that never HEADs, the bucket root as a path, and endpoints
written without a scheme. What every client does is in test_client_suite.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from litefs_py.config import ReplicaConfig
from litefs_py.replica_clients import client_for, client_for_url
from litefs_py.storage.base import META_CHECKSUM, format_timestamp
from litefs_py.storage.errors import ObjectNotFoundError
from litefs_py.storage.file import FileReplicaClient
from litefs_py.storage.s3 import S3ReplicaClient
from tests.s3_server import S3Bucket, boto_client, raw_keys
from tests.storage.helpers import TS, ltx_bytes, meta


class Recorder:
    """Requests a boto3 client sends (method, url, headers), via botocore's before-send."""

    def __init__(self, client: S3ReplicaClient) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        client.boto_client.meta.events.register("before-send.s3", self._record)

    def _record(self, request: Any, **_: Any) -> None:
        headers = {k.lower(): (v.decode() if isinstance(v, bytes) else str(v))
                   for k, v in request.headers.items()}
        self.requests.append((request.method, request.url, headers))

    def clear(self) -> None:
        self.requests.clear()


def test_reads_are_ranged_gets(s3: S3ReplicaClient) -> None:
    """Reads are ranged GETs, not whole downloads sliced locally."""
    data = ltx_bytes(1, 1, TS, 5000)
    s3.write_ltx(0, 1, 1, data, meta())
    info = s3.ltx_files(0)[0]
    rec = Recorder(s3)
    assert s3.read_ltx(info) == data
    assert s3.read_ltx(info, 100, 200) == data[100:200]
    assert s3.read_ltx(info, 4000) == data[4000:]
    assert s3.read_ltx(info, 4990, 9000) == data[4990:]
    assert s3.read_ltx(info, 6000) == b""
    assert s3.read_ltx(info, 7, 7) == b""
    assert [h.get("range") for _m, _u, h in rec.requests] == [
        None, "bytes=100-199", "bytes=4000-", "bytes=4990-8999", "bytes=6000-"]


def test_metadata_is_object_metadata_and_listing_is_lazy(s3: S3ReplicaClient,
                                                         s3_bucket: S3Bucket) -> None:
    data = ltx_bytes(5, 7, TS)
    s3.write_ltx(0, 5, 7, data, meta(TS, 0xFEDCBA9876543210))
    head = boto_client(s3_bucket.endpoint).head_object(
        Bucket=s3_bucket.name, Key="backups/app.db/0000/0000000000000005-0000000000000007.ltx")
    assert head["Metadata"] == {"litestream-timestamp": "2026-01-01T00:00:00.123Z",
                                "litefs-post-apply-checksum": "fedcba9876543210"}
    assert head["ContentLength"] == len(data)

    rec = Recorder(s3)
    lazy = s3.ltx_files(0)
    # one ListObjectsV2, no HEAD per object
    assert [(m, urlsplit(u).query.startswith("list-type=2")) for m, u, _ in rec.requests] == [
        ("GET", True)]
    now = datetime.now(tz=UTC)
    assert abs(lazy[0].timestamp - now) < timedelta(minutes=5)  # LastModified

    rec.clear()
    s3.ltx_files(0, with_metadata=True)
    assert [m for m, _u, _h in rec.requests] == ["GET", "HEAD"]


def test_timestamp_metadata_from_ltx_header(s3: S3ReplicaClient, s3_bucket: S3Bucket) -> None:
    s3.write_ltx(0, 1, 1, ltx_bytes(1, 1, TS + 5), {META_CHECKSUM: "00000000000000aa"})
    head = boto_client(s3_bucket.endpoint).head_object(
        Bucket=s3_bucket.name, Key="backups/app.db/0000/0000000000000001-0000000000000001.ltx")
    assert head["Metadata"]["litestream-timestamp"] == format_timestamp(TS + 5)


def test_bucket_root_path_and_raw_objects(s3_bucket: S3Bucket) -> None:
    root = client_for_url(s3_bucket.url(""))
    sub = client_for_url(s3_bucket.url("db"))
    assert isinstance(root, S3ReplicaClient) and isinstance(sub, S3ReplicaClient)
    try:
        root.write_ltx(0, 1, 1, ltx_bytes(1, 1, TS), meta())
        raw = boto_client(s3_bucket.endpoint)
        for key, body in [("db/generations/0123456789abcdef/snapshots/00000000.snapshot.lz4",
                           b"snap"),
                          ("db/generations/0123456789abcdef/wal/00000000_00000000.wal.lz4",
                           b"wal0"),
                          ("db/0000/not-an-ltx-name.txt", b"x")]:
            raw.put_object(Bucket=s3_bucket.name, Key=key, Body=body)
        assert raw_keys(s3_bucket.endpoint, s3_bucket.name, "0000/") == [
            "0000/0000000000000001-0000000000000001.ltx"]
        assert root.levels() == [0]
        # level 0 of `db` holds no LTX file: not a level
        assert sub.levels() == []
        assert sub.ltx_files(0) == []
        objs = sub.list_objects("generations/")
        assert [(o.key, o.size) for o in objs] == [
            ("generations/0123456789abcdef/snapshots/00000000.snapshot.lz4", 4),
            ("generations/0123456789abcdef/wal/00000000_00000000.wal.lz4", 4),
        ]
        assert sub.get_object("generations/0123456789abcdef/wal/00000000_00000000.wal.lz4") == (
            b"wal0")
        with pytest.raises(ObjectNotFoundError, match="db/generations/missing"):
            sub.get_object("generations/missing")
        sub.check()
    finally:
        root.close()
        sub.close()


def test_endpoint_without_scheme_works_end_to_end(s3_bucket: S3Bucket) -> None:
    """The B2 seed failure: `endpoint=host:port` without http(s)://."""
    hostport = urlsplit(s3_bucket.endpoint).netloc
    c = client_for_url(f"s3://{s3_bucket.name}/app.db?endpoint={hostport}")
    assert isinstance(c, S3ReplicaClient)
    try:
        assert c.endpoint_url == f"http://{hostport}"
        assert c.boto_client.meta.config.s3["addressing_style"] == "path"
        c.check()
        data = ltx_bytes(1, 1, TS)
        c.write_ltx(0, 1, 1, data, meta())
        assert raw_keys(s3_bucket.endpoint, s3_bucket.name) == [
            "app.db/0000/0000000000000001-0000000000000001.ltx"]
        assert c.read_ltx(c.ltx_files(0)[0]) == data
    finally:
        c.close()
    # the same when the client is built directly
    direct = S3ReplicaClient(s3_bucket.name, "app.db", endpoint=hostport,
                             access_key_id="testkey", secret_access_key="testsecret")
    try:
        assert direct.endpoint_url == f"http://{hostport}"
        assert direct.ltx_files(0)[0].size == len(data)
    finally:
        direct.close()


def test_factory(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    f = client_for_url(str(tmp_path))
    assert isinstance(f, FileReplicaClient) and f.root == tmp_path
    f = client_for(ReplicaConfig(type="file", path=str(tmp_path / "x")))
    assert isinstance(f, FileReplicaClient) and f.root == tmp_path / "x"

    cfg = ReplicaConfig(type="s3", bucket=s3_bucket.name, path="p/db",
                        endpoint=s3_bucket.endpoint, force_path_style=True,
                        access_key_id="testkey", secret_access_key="testsecret")
    c = client_for(cfg, env={})
    assert isinstance(c, S3ReplicaClient)
    try:
        assert (c.bucket, c.path, c.region) == (s3_bucket.name, "p/db", "us-east-1")
        assert c.description == f"s3://{s3_bucket.name}/p/db?endpoint={s3_bucket.endpoint}"
        c.write_ltx(0, 1, 1, ltx_bytes(1, 1, TS), meta())
        assert raw_keys(s3_bucket.endpoint, s3_bucket.name) == [
            "p/db/0000/0000000000000001-0000000000000001.ltx"]
    finally:
        c.close()


def test_works_with_aws_ca_bundle_set(s3_bucket: S3Bucket, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_CA_BUNDLE (set in this environment) only matters for https: even a bundle that does
    not exist leaves a loopback http endpoint working."""
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "no-such-ca.pem"))
    c = client_for_url(s3_bucket.url("app.db"))
    assert isinstance(c, S3ReplicaClient)
    try:
        c.check()
        data = ltx_bytes(1, 1, TS)
        info = c.write_ltx(0, 1, 1, data, meta())
        assert c.read_ltx(info) == data
    finally:
        c.close()
