"""Listing Litestream's own buckets (the vectors, uploaded to moto_server with their metadata)
gives exactly the files and levels Litestream wrote."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from litefs_py.ltx import Header
from litefs_py.replica_clients import client_for_url
from litefs_py.storage.s3 import S3ReplicaClient
from tests.s3_server import S3Bucket, upload_tree
from tests.vectors_path import VECTORS


@pytest.mark.parametrize("name", ["ls-0.5.17-4k", "ls-0.5.15-4k"])
def test_lists_litestream_bucket(s3_bucket: S3Bucket, name: str) -> None:
    vs = VECTORS / name
    expected = json.loads((vs / "expected.json").read_text())
    objects = {o["key"]: o for o in json.loads((vs / "objects.json").read_text())["objects"]}
    upload_tree(s3_bucket.endpoint, s3_bucket.name, vs / "bucket", vs / "objects.json")

    c = client_for_url(s3_bucket.url(expected["prefix"]))
    assert isinstance(c, S3ReplicaClient)
    try:
        want = sorted(
            (f["level"], int(f["min_txid"], 16), int(f["max_txid"], 16), f["size"], f["key"])
            for f in expected["ltx_files"])
        assert c.levels() == sorted({f["level"] for f in expected["ltx_files"]})
        got = [(i.level, i.min_txid, i.max_txid, i.size, i.key)
               for lvl in c.levels() for i in c.ltx_files(lvl)]
        assert got == want

        by_key = {f["key"]: f for f in expected["ltx_files"]}
        for lvl in c.levels():
            for info in c.ltx_files(lvl, with_metadata=True):
                ts = objects[info.key]["metadata"]["litestream-timestamp"]
                assert info.metadata["litestream-timestamp"] == ts
                ms = by_key[info.key]["timestamp_ms"]
                assert info.timestamp == datetime.fromtimestamp(ms / 1000, tz=UTC)
                assert info.post_apply_checksum is None  # Litestream writes no such metadata
                # a ranged read of the header agrees with the name
                header = Header.decode(c.read_ltx(info, 0, 100))
                assert (header.min_txid, header.max_txid, header.timestamp) == (
                    info.min_txid, info.max_txid, ms)
    finally:
        c.close()
