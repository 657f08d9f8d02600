"""What every replica client does alike, run against each backend (tests/storage/conftest.py:
a directory replica, and S3 on a real moto_server): the Litestream 0.5 layout, ranged and
streamed reads, deletes, metadata, raw objects, `ltx_files_after` and argument checks.

What only one backend does lives beside it: test_file_client.py (sidecars, mtimes, disk
errors), test_s3_client.py / test_s3_wire.py / test_s3_errors.py (requests on the wire,
endpoints, S3 errors)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from litefs_py.storage.base import META_CHECKSUM, META_TIMESTAMP, LtxFileInfo, ReplicaClient
from litefs_py.storage.errors import ObjectNotFoundError
from tests.storage.conftest import Backend
from tests.storage.helpers import TS, ltx_bytes, meta

EXPECTED_TS = datetime(2026, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)  # TS as a datetime


def test_round_trip_exact_layout(backend: Backend) -> None:
    c = backend.client
    assert c.levels() == []
    assert c.ltx_files(0) == []
    files = {
        (0, 1, 1): ltx_bytes(1, 1, TS, 5000),
        (0, 2, 3): ltx_bytes(2, 3, TS + 1000, 300),
        (1, 1, 3): ltx_bytes(1, 3, TS + 2000, 6000),
        (9, 1, 3): ltx_bytes(1, 3, TS + 3000, 7000),
    }
    for (level, lo, hi), data in files.items():
        info = c.write_ltx(level, lo, hi, data, meta(TS))
        assert info.size == len(data)
        assert info.key == backend.info_key(backend.ltx_key(level, lo, hi))
    assert backend.stored() == sorted(backend.ltx_key(*k) for k in files)
    assert c.levels() == [0, 1, 9]
    l0 = c.ltx_files(0)
    assert [(i.level, i.min_txid, i.max_txid, i.size) for i in l0] == [
        (0, 1, 1, 5000), (0, 2, 3, 300)]

    data = files[(0, 1, 1)]
    assert c.read_ltx(l0[0]) == data
    assert c.read_ltx(l0[0], 100, 200) == data[100:200]
    assert c.read_ltx(l0[0], 4000) == data[4000:]
    assert c.read_ltx(l0[0], 4990, 9000) == data[4990:]
    assert c.read_ltx(l0[0], 6000) == b""
    assert c.read_ltx(l0[0], 7, 7) == b""
    assert b"".join(c.open_ltx(c.ltx_files(9)[0])) == files[(9, 1, 3)]

    c.delete_ltx(l0)
    c.delete_ltx(l0)  # missing files are not an error
    assert c.ltx_files(0) == []
    assert c.levels() == [1, 9]
    assert not [k for k in backend.stored() if k.startswith(backend.level_prefix(0))]
    with pytest.raises(ObjectNotFoundError, match=r"0000000000000001-0000000000000001\.ltx"):
        c.read_ltx(l0[0])


def test_large_file_streams_in_chunks(backend: Backend) -> None:
    data = ltx_bytes(1, 1, TS, 3 * (1 << 20) + 17)
    info = backend.client.write_ltx(9, 1, 1, data, meta())
    chunks = list(backend.client.open_ltx(info))
    assert len(chunks) >= 2
    if backend.name == "file":
        assert len(chunks) == 4  # whole 1 MiB reads from a file
    assert b"".join(chunks) == data


def test_metadata_round_trip(backend: Backend) -> None:
    """Written metadata comes back, loaded on demand: a plain listing carries none (an S3
    listing has none to carry), `with_metadata` and `ltx_metadata` load it."""
    c = backend.client
    written = c.write_ltx(0, 5, 7, ltx_bytes(5, 7, TS), meta(TS, 0xFEDCBA9876543210))
    assert written.timestamp == EXPECTED_TS
    assert written.post_apply_checksum == 0xFEDCBA9876543210

    lazy = c.ltx_files(0)[0]
    assert lazy.post_apply_checksum is None and lazy.metadata == {}
    full = c.ltx_files(0, with_metadata=True)[0]
    assert full.timestamp == EXPECTED_TS
    assert full.post_apply_checksum == 0xFEDCBA9876543210
    assert full.metadata[META_TIMESTAMP] == "2026-01-01T00:00:00.123Z"
    assert full.metadata[META_CHECKSUM] == "fedcba9876543210"
    assert c.ltx_metadata(lazy) == full
    # A restore gets the metadata with the bytes (S3: from the GET's headers, no HEAD).
    with_bytes, chunks = c.open_ltx_with_metadata(lazy)
    assert with_bytes == full
    assert b"".join(chunks) == ltx_bytes(5, 7, TS)


def test_timestamp_from_ltx_header_when_metadata_has_none(backend: Backend) -> None:
    c = backend.client
    info = c.write_ltx(0, 1, 1, ltx_bytes(1, 1, TS + 5), {META_CHECKSUM: "00000000000000aa"})
    assert info.metadata[META_TIMESTAMP] == "2026-01-01T00:00:00.128Z"
    listed = c.ltx_files(0, with_metadata=True)[0]
    assert listed.metadata[META_TIMESTAMP] == "2026-01-01T00:00:00.128Z"
    assert listed.timestamp == datetime(2026, 1, 1, 0, 0, 0, 128000, tzinfo=UTC)


def test_raw_objects(backend: Backend) -> None:
    """Objects other programs wrote (Litestream 0.3 generations) are listed and read by key;
    the client's own metadata is never an object."""
    c = backend.client
    gen = "generations/0123456789abcdef"
    backend.put(f"{gen}/snapshots/00000000.snapshot.lz4", b"snap")
    backend.put(f"{gen}/wal/00000000_00000000.wal.lz4", b"wal0")
    c.write_ltx(0, 1, 1, ltx_bytes(1, 1, TS), meta())

    objs = c.list_objects("generations/")
    assert [(o.key, o.size) for o in objs] == [
        (f"{gen}/snapshots/00000000.snapshot.lz4", 4),
        (f"{gen}/wal/00000000_00000000.wal.lz4", 4),
    ]
    assert [o.key for o in c.list_objects(f"{gen}/w")] == [
        f"{gen}/wal/00000000_00000000.wal.lz4"]
    assert [o.key for o in c.list_objects(backend.level_prefix(0))] == [
        backend.ltx_key(0, 1, 1)]
    assert c.list_objects("nothing/here/") == []
    assert c.get_object(f"{gen}/wal/00000000_00000000.wal.lz4") == b"wal0"
    with pytest.raises(ObjectNotFoundError, match="generations/missing"):
        c.get_object("generations/missing")


# ---- ltx_files_after ------------------------------------------------------------------------

L0 = [(1, 1), (2, 3), (4, 4), (5, 9), (10, 10), (0x10, 0x10), (0x11, 0x1F), (0x100, 0x100)]
L1 = [(1, 3), (4, 10)]


def _spans(infos: list[LtxFileInfo]) -> list[tuple[int, int]]:
    return [(i.min_txid, i.max_txid) for i in infos]


def test_ltx_files_after(backend: Backend) -> None:
    """The files of a level whose min TXID is past `txid`: always what filtering the full
    listing gives (the base class's default); things that are not LTX files of this
    database's level, written there by others, never appear."""
    c = backend.client
    assert c.ltx_files_after(0, 0) == []  # nothing written yet (no directory, no keys)
    for lo, hi in L0:
        c.write_ltx(0, lo, hi, ltx_bytes(lo, hi, TS + lo, 200), {})
    for lo, hi in L1:
        c.write_ltx(1, lo, hi, ltx_bytes(lo, hi, TS + hi, 300), {})
    l0 = backend.level_prefix(0)
    for junk in ("0000000000000020-0000000000000020.ltx.tmp",
                 ".0000000000000021-0000000000000021.ltx.1.ab.tmp",
                 "0000000000000020-0000000000000020.ltx.bak", "zzz",
                 "sub/0000000000000030-0000000000000030.ltx",
                 "0000000000000022-0000000000000022.ltx/x"):
        backend.put(l0 + junk, b"x")
    # A neighbouring database shares the key prefix `app.db`.
    backend.put(f"../app.db2/{l0}0000000000000050-0000000000000050.ltx", b"x")

    for txid in (0, 1, 2, 3, 4, 9, 0xF, 0x10, 0x11, 0x12, 0xFF, 0x100, 0x101, (1 << 64) - 1):
        expected = [s for s in L0 if s[0] > txid]
        got = c.ltx_files_after(0, txid)
        assert _spans(got) == expected, f"after {txid:x}"
        assert got == ReplicaClient.ltx_files_after(c, 0, txid), f"after {txid:x}"
        assert all(i.level == 0 for i in got)
    # A file that starts at txid is not "after" it, whatever its max.
    assert _spans(c.ltx_files_after(0, 2)) == [s for s in L0 if s[0] > 2]
    assert _spans(c.ltx_files_after(1, 3)) == [(4, 10)]
    assert _spans(c.ltx_files_after(1, 4)) == []
    assert c.ltx_files_after(2, 0) == []  # a level with no files
    assert c.ltx_files_after(9, 0) == []


def test_bad_arguments(backend: Backend) -> None:
    c = backend.client
    with pytest.raises(ValueError):
        c.write_ltx(10, 1, 1, b"", {})
    with pytest.raises(ValueError):
        c.write_ltx(0, 2, 1, b"", {})
    info = LtxFileInfo(level=0, min_txid=1, max_txid=1, size=0,
                       timestamp=datetime.now(tz=UTC), key="k")
    with pytest.raises(ValueError):
        c.read_ltx(info, 5, 4)
