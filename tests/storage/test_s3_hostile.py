"""The S3 client against a hostile server (tests/s3_fault_proxy.py in front of moto_server):
a clock 16 minutes off in either direction, and a body shorter than the object."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from litefs_py.replica_clients import client_for_url
from litefs_py.storage.errors import TransientStorageError
from litefs_py.storage.s3 import S3ReplicaClient
from tests.s3_fault_proxy import Fault, S3FaultProxy
from tests.s3_server import S3Bucket

from .helpers import TS, ltx_bytes, meta


@pytest.fixture
def proxied(s3_bucket: S3Bucket) -> Iterator[tuple[S3FaultProxy, S3ReplicaClient]]:
    with S3FaultProxy(s3_bucket.endpoint) as proxy:
        client = client_for_url(f"s3://{s3_bucket.name}/backups/app.db?endpoint={proxy.endpoint}")
        assert isinstance(client, S3ReplicaClient)
        yield proxy, client
        client.close()


@pytest.mark.parametrize("minutes", [16, -16, 180])
def test_every_operation_works_with_a_skewed_clock(
        proxied: tuple[S3FaultProxy, S3ReplicaClient], minutes: int,
        caplog: pytest.LogCaptureFixture) -> None:
    proxy, client = proxied
    proxy.clock_offset = minutes * 60
    data = ltx_bytes(1, 1, TS)
    info = client.write_ltx(0, 1, 1, data, meta())  # refused once, then signed right
    assert proxy.count(fault="clock_skew") == 1
    assert abs(client.clock_offset - minutes * 60) < 5
    assert "Fix the system clock (NTP)" in caplog.text
    [listed] = client.ltx_files(0)
    assert client.ltx_metadata(listed).post_apply_checksum == info.post_apply_checksum
    assert client.read_ltx(listed) == data
    assert b"".join(client.open_ltx(listed)) == data
    client.delete_ltx([listed])
    assert client.ltx_files(0) == []
    assert proxy.count(fault="clock_skew") == 1, "only the first request was refused"
    # The server's clock right again: corrected back, once.
    proxy.clock_offset = 0
    client.check()
    assert client.clock_offset == 0.0
    assert proxy.count(fault="clock_skew") == 2


def test_a_body_shorter_than_the_object_is_a_transfer_to_retry(
        proxied: tuple[S3FaultProxy, S3ReplicaClient]) -> None:
    proxy, client = proxied
    data = ltx_bytes(1, 1, TS, size=8192)
    client.write_ltx(0, 1, 1, data, meta())
    [listed] = client.ltx_files(0)
    for read in (lambda: client.read_ltx(listed), lambda: b"".join(client.open_ltx(listed))):
        proxy.add(Fault("short_length", r"\.ltx", method="GET", delta=1000))
        with pytest.raises(TransientStorageError) as info:
            read()
        assert "gave 7192 bytes but the object is 8192 bytes" in str(info.value)
        assert listed.key in str(info.value)
        assert read() == data  # the next attempt is fine
