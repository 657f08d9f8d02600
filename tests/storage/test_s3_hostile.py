"""The S3 clients against a hostile server (tests/s3_fault_proxy.py in front of moto_server):
a clock 16 minutes off in either direction, and a body shorter than the object. Both the
boto3 client and the signed-HTTP reader `litefs restore` uses (storage/s3_reader.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from litefs_py.replica_clients import client_for_url
from litefs_py.storage.errors import ClockSkewError, TransientStorageError
from litefs_py.storage.s3 import S3ReplicaClient
from litefs_py.storage.s3_reader import S3ReaderClient
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


@pytest.mark.parametrize("minutes", [16, -180])
def test_the_reader_corrects_a_skewed_clock_and_checks_lengths(
        s3_bucket: S3Bucket, minutes: int, caplog: pytest.LogCaptureFixture) -> None:
    url = f"s3://{s3_bucket.name}/backups/app.db"
    direct = client_for_url(f"{url}?endpoint={s3_bucket.endpoint}")
    data = ltx_bytes(1, 1, TS, size=8192)
    written = direct.write_ltx(0, 1, 1, data, meta())
    direct.close()
    with S3FaultProxy(s3_bucket.endpoint) as proxy:
        reader = client_for_url(f"{url}?endpoint={proxy.endpoint}", reading=True)
        assert isinstance(reader, S3ReaderClient)
        proxy.clock_offset = minutes * 60
        [listed] = reader.ltx_files(0)  # refused once, then signed with the server's time
        assert proxy.count(fault="clock_skew") == 1
        assert abs(reader.clock.offset - minutes * 60) < 5
        assert "Fix the system clock (NTP)" in caplog.text
        assert listed.etag is not None and listed.etag == written.etag
        assert reader.ltx_metadata(listed).post_apply_checksum == written.post_apply_checksum
        full, chunks = reader.open_ltx_with_metadata(listed)
        assert b"".join(chunks) == data and full.etag == written.etag
        assert full.post_apply_checksum == written.post_apply_checksum
        assert reader.read_ltx(listed) == data
        assert proxy.count(fault="clock_skew") == 1, "only the first request was refused"

        def with_metadata() -> bytes:
            return b"".join(reader.open_ltx_with_metadata(listed)[1])

        for read in (lambda: reader.read_ltx(listed), lambda: b"".join(reader.open_ltx(listed)),
                     with_metadata):
            proxy.add(Fault("short_length", r"\.ltx", method="GET", delta=1000))
            with pytest.raises(TransientStorageError) as info:
                read()
            assert "gave 7192 bytes but the object is 8192 bytes" in str(info.value)
            assert read() == data
        proxy.clock_offset = 0
        reader.check()
        assert reader.clock.offset == 0.0
        reader.close()


def test_a_skew_that_correcting_does_not_fix_is_named(s3_bucket: S3Bucket) -> None:
    """A server whose clock keeps moving (here: refused again after the correction) gives
    ClockSkewError with the measured offset, from either client."""
    with S3FaultProxy(s3_bucket.endpoint) as proxy:
        url = f"s3://{s3_bucket.name}/backups/app.db?endpoint={proxy.endpoint}"
        for reading in (False, True):
            client = client_for_url(url, reading=reading)
            proxy.clock_offset = 20 * 60
            client.ltx_files(0)  # learnt
            proxy.clock_offset = 40 * 60  # 20 minutes off again: learnt once more
            client.ltx_files(0)
            proxy.clock_offset = 40 * 60 + 59  # off by less than a correction is worth
            proxy.add(Fault("error", r"list-type", method="GET", status=403,
                            code="RequestTimeTooSkewed", times=None))
            with pytest.raises(ClockSkewError) as info:
                client.ltx_files(0)
            proxy.clear()
            assert "fix the system time (NTP)" in str(info.value)
            assert "correcting it from the server's time did not help" in str(info.value)
            client.close()
