"""WAL codec: LiteFS fixtures, known answers, corruption, round trips."""

from __future__ import annotations

import io
import random
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litefs_py.sqlite import (
    WAL_MAGIC_BE,
    WAL_MAGIC_LE,
    WALChecksumError,
    WALFormatError,
    WALReader,
    WALSaltMismatchError,
    WALStopReason,
    WALTransaction,
    WALWriter,
    encode_wal,
    parse_database_header,
    parse_wal_header,
    wal_checksum,
)
from litefs_py.sqlite.wal import wal_checksum_py
from tests.vectors_path import VECTORS as ALL_VECTORS

VECTORS = ALL_VECTORS / "litefs"
WAL_FIXTURES = VECTORS / "wal-reader"



def fixture(name: str) -> bytes:
    return (WAL_FIXTURES / name / "wal").read_bytes()


def reference_checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    """walChecksumBytes written the obvious way, one 8-byte chunk at a time."""
    fmt = ">2I" if big_endian else "<2I"
    for i in range(0, len(data), 8):
        a, b = struct.unpack_from(fmt, data, i)
        s0 = (s0 + a + s1) & 0xFFFFFFFF
        s1 = (s1 + b + s0) & 0xFFFFFFFF
    return s0, s1


# --- LiteFS fixtures (from superfly/litefs testdata/wal-reader, see wal_reader_test.go) ---

SALTS = (0x4875A40B, 0xA38DE4F5)


def test_fixture_ok() -> None:
    b = fixture("ok")
    assert len(b) == 12392
    reader = WALReader(io.BytesIO(b), name="ok/wal")
    h = reader.header
    assert (h.magic, h.version, h.page_size, h.checkpoint_seq) == (WAL_MAGIC_LE, 3007000, 4096, 0)
    assert not h.big_endian_checksum
    assert (h.salt1, h.salt2) == SALTS
    assert h.checksum == (0xE08B785B, 0x8E57DDA3)

    frames = list(reader.frames())
    assert [(f.index, f.offset, f.pgno, f.header.commit) for f in frames] == [
        (0, 32, 1, 0),
        (1, 4152, 2, 2),
        (2, 8272, 2, 2),
    ]
    assert [f.page for f in frames] == [b[56:4152], b[4176:8272], b[8296:12392]]
    assert reader.stop_reason is WALStopReason.END_OF_FILE
    assert reader.frame_count == reader.commit_frame_count == 3
    assert reader.end_offset == reader.commit_end_offset == 12392
    assert reader.checksum == reader.commit_checksum == (0x420A5A7C, 0xF49C13AB)

    txns = list(reader.transactions())
    assert [[f.index for f in t.frames] for t in txns] == [[0, 1], [2]]
    assert [(t.db_size, t.start_offset, t.end_offset) for t in txns] == [
        (2, 32, 8272),
        (2, 8272, 12392),
    ]
    assert txns[0].checksum == (0xD6702FDA, 0xF16CCEDA)
    assert txns[1].pages == {2: b[8296:12392]}
    # Page 1 of the first transaction is the database header of a WAL-mode database.
    db_header = parse_database_header(txns[0].pages[1])
    assert db_header.is_wal and db_header.page_count == 2
    assert db_header.sqlite_version_number == 3038005


def test_fixture_ok_content(tmp_path: Path) -> None:
    """Applying the fixture's transactions gives `CREATE TABLE t (x)`, then one row, 100."""
    dumps: list[list[str]] = []
    db = bytearray()
    for txn in WALReader(fixture("ok")).transactions():
        apply(db, txn, 4096)
        path = tmp_path / f"after-{len(dumps)}.db"
        path.write_bytes(rollback_mode(db))
        conn = sqlite3.connect(path)
        dumps.append(list(conn.iterdump()))
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.close()
    assert dumps == [
        ["BEGIN TRANSACTION;", "CREATE TABLE t (x);", "COMMIT;"],
        ["BEGIN TRANSACTION;", "CREATE TABLE t (x);", 'INSERT INTO "t" VALUES(100);', "COMMIT;"],
    ]


def test_fixture_salt_mismatch() -> None:
    b = fixture("salt-mismatch")
    reader = WALReader(b, name="salt-mismatch/wal")
    frames = list(reader.frames())
    assert [(f.pgno, f.header.commit, f.page) for f in frames] == [(1, 0, b[56:4152])]
    assert reader.stop_reason is WALStopReason.SALT_MISMATCH
    assert reader.end_offset == 4152
    # The only valid frame is not a commit: to SQLite this WAL holds nothing.
    assert list(reader.transactions()) == []
    assert reader.commit_end_offset == 32
    assert reader.commit_checksum == reader.header.checksum
    # Salts are not covered by the checksum: frame 2's checksum chain is intact, so only
    # the salt comparison can reject it.
    s = wal_checksum(b[4152:4160], *reader.checksum, False)
    assert wal_checksum(b[4176:8272], *s, False) == struct.unpack_from(">2I", b, 4168)
    assert struct.unpack_from(">2I", b, 4160) == (0, SALTS[1])

    with pytest.raises(WALSaltMismatchError) as info:
        list(WALReader(b, name="salt-mismatch/wal", strict=True).frames())
    assert info.value.offset == 4160
    assert str(info.value) == (
        "salt-mismatch/wal: offset 4160: frame index 1: frame salts differ from the header's: "
        "expected (0x4875a40b, 0xa38de4f5), found (0x00000000, 0xa38de4f5)"
    )


def test_fixture_frame_checksum_mismatch() -> None:
    b = fixture("frame-checksum-mismatch")
    ok = fixture("ok")
    # Only frame 2's stored checksum1 differs from the ok fixture.
    assert [i for i in range(len(b)) if b[i] != ok[i]] == [4168, 4169, 4170, 4171]
    reader = WALReader(b)
    frames = list(reader.frames())
    assert [(f.pgno, f.header.commit, f.page) for f in frames] == [(1, 0, b[56:4152])]
    assert reader.stop_reason is WALStopReason.CHECKSUM_MISMATCH
    assert (reader.end_offset, reader.commit_end_offset) == (4152, 32)
    assert list(reader.transactions()) == []
    # Frame 3 still chains from frame 2's true checksum: the reader must not resume there.
    assert WALReader(ok).checksum != reader.checksum

    with pytest.raises(WALChecksumError) as info:
        list(WALReader(b, name="cksum/wal", strict=True).transactions())
    assert info.value.offset == 4168
    assert info.value.expected == "(0xd6702fda, 0xf16cceda)"
    assert info.value.found == "(0x00000000, 0xf16cceda)"
    assert "frame index 1" in str(info.value)


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        (32, WALStopReason.END_OF_FILE),
        (40, WALStopReason.PARTIAL_FRAME),
        (56, WALStopReason.PARTIAL_FRAME),
        (1000, WALStopReason.PARTIAL_FRAME),
        (4152, WALStopReason.END_OF_FILE),
        (8271, WALStopReason.PARTIAL_FRAME),
    ],
)
def test_fixture_truncated(size: int, reason: WALStopReason) -> None:
    reader = WALReader(fixture("ok")[:size])
    assert list(reader.transactions()) == []
    assert reader.stop_reason is reason
    assert reader.end_offset == (4152 if size >= 4152 else 32)
    if reason is WALStopReason.PARTIAL_FRAME:
        with pytest.raises(WALFormatError, match="partial frame"):
            list(WALReader(fixture("ok")[:size], strict=True).frames())


def test_encoder_reproduces_fixture() -> None:
    b = fixture("ok")
    frames = [(f.pgno, f.page, f.header.commit) for f in WALReader(b).frames()]
    assert encode_wal(4096, frames, SALTS) == b


def test_sources_bytes_memoryview_file(tmp_path: Path) -> None:
    b = fixture("ok")
    path = tmp_path / "wal"
    path.write_bytes(b)
    expected = [f.page for f in WALReader(b).frames()]
    assert [f.page for f in WALReader(memoryview(b)).frames()] == expected
    assert [f.page for f in WALReader(bytearray(b)).frames()] == expected
    with path.open("rb") as f:
        reader = WALReader(f)
        assert [f.page for f in reader.frames()] == expected
        # A second pass starts over.
        assert len(list(reader.transactions())) == 2
    with path.open("rb", buffering=0) as raw:
        assert [f.page for f in WALReader(raw).frames()] == expected


# --- header parsing ---


def test_parse_header_errors() -> None:
    good = WALWriter(4096, 1, 2).header_bytes()
    assert parse_wal_header(good).page_size == 4096

    with pytest.raises(WALFormatError, match=r"^w: offset 0: WAL header length: expected 32 "):
        parse_wal_header(b"", name="w")
    with pytest.raises(WALFormatError, match="found 10 bytes"):
        parse_wal_header(bytes(10))
    with pytest.raises(WALFormatError, match=r"offset 0: WAL magic: expected 0x377f0682 or "
                                             r"0x377f0683, found 0x0$"):
        parse_wal_header(bytes(32))
    with pytest.raises(WALFormatError, match="offset 8: WAL page size"):
        parse_wal_header(good[:8] + struct.pack(">I", 1000) + good[12:])
    bad_checksum = good[:31] + bytes([good[31] ^ 1])
    with pytest.raises(WALChecksumError, match="offset 24: WAL header checksum"):
        parse_wal_header(bad_checksum)
    fields = struct.pack(">6I", WAL_MAGIC_LE, 3007001, 4096, 0, 1, 2)
    bad_version = fields + struct.pack(">2I", *wal_checksum(fields, 0, 0, False))
    with pytest.raises(WALFormatError, match="offset 4: WAL format version: expected 3007000, "
                                             "found 3007001"):
        parse_wal_header(bad_version)


def test_big_endian_checksum_known_answer() -> None:
    # LiteFS's BadHeaderVersion vector: big-endian magic, version 1, page size 0, and a
    # valid header checksum (it fails on version/page size, not on the checksum).
    vector = bytes.fromhex("377f0683000000010000000000000000" "0000000000000000157b2092bbf8341d")
    assert wal_checksum(vector[:24], 0, 0, True) == (0x157B2092, 0xBBF8341D)
    with pytest.raises(WALFormatError, match="offset 8: WAL page size"):
        parse_wal_header(vector)


def test_header_build_big_endian() -> None:
    h = WALWriter(65536, 0xDEADBEEF, 7, big_endian=True, checkpoint_seq=3).header
    assert h.magic == WAL_MAGIC_BE and h.big_endian_checksum
    parsed = parse_wal_header(h.encode())
    assert parsed == h
    assert parsed.page_size == 65536 and parsed.checkpoint_seq == 3


# --- checksum ---


def test_checksum_known_answer() -> None:
    b = fixture("ok")
    assert wal_checksum(b[:24], 0, 0, False) == (0xE08B785B, 0x8E57DDA3)


@given(
    data=st.binary(max_size=600).map(lambda b: b[: len(b) - len(b) % 8]),
    s0=st.integers(0, 0xFFFFFFFF),
    s1=st.integers(0, 0xFFFFFFFF),
    big_endian=st.booleans(),
)
def test_checksum_matches_reference(data: bytes, s0: int, s1: int, big_endian: bool) -> None:
    want = reference_checksum(data, s0, s1, big_endian)
    assert wal_checksum(data, s0, s1, big_endian) == want
    assert wal_checksum_py(data, s0, s1, big_endian) == want  # the fallback without a compiler


def test_checksum_is_compiled() -> None:
    """setup.py builds litefs_py/sqlite/_walsum.c; the pure version is only the fallback."""
    assert wal_checksum is not wal_checksum_py


@pytest.mark.parametrize("impl", [wal_checksum, wal_checksum_py], ids=["compiled", "pure"])
def test_checksum_byte_orders_differ_and_compose(
        impl: Callable[[bytes, int, int, bool], tuple[int, int]]) -> None:
    data = random.Random(1).randbytes(4096)
    le = impl(data, 0, 0, False)
    assert le != impl(data, 0, 0, True)
    # Chaining over two pieces equals one pass over the whole (how frames are checked).
    assert impl(data[1000:], *impl(data[:1000], 0, 0, False), False) == le
    assert impl(memoryview(data), 0, 0, False) == impl(bytearray(data), 0, 0, False) == le
    with pytest.raises(ValueError, match="multiple of 8"):
        impl(data[:12], 0, 0, False)


# --- encoder / reader ---


def page(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def apply(db: bytearray, txn: WALTransaction, page_size: int) -> None:
    """Apply a committed transaction to an in-memory database image."""
    size = txn.db_size * page_size
    if len(db) < size:
        db.extend(bytes(size - len(db)))
    for pgno, data in txn.pages.items():
        db[(pgno - 1) * page_size : pgno * page_size] = data
    del db[size:]


def rollback_mode(db: bytearray) -> bytes:
    """The image with its header switched to rollback-journal mode, to open without a WAL."""
    out = bytearray(db)
    out[18:20] = b"\x01\x01"
    return bytes(out)


def test_transactions_group_frames_and_later_frames_win() -> None:
    ps = 512
    wal = encode_wal(
        ps,
        [
            (1, page(1, ps), 0),
            (2, page(2, ps), 0),
            (1, page(3, ps), 2),  # commit: page 1 rewritten within the transaction
            (3, page(4, ps), 0),
            (2, page(5, ps), 2),  # commit: shrinks to 2 pages, page 3 is dropped
            (4, page(6, ps), 0),  # trailing, uncommitted
        ],
        (11, 22),
    )
    reader = WALReader(wal)
    txns = list(reader.transactions())
    assert len(txns) == 2
    assert txns[0].pages == {1: page(3, ps), 2: page(2, ps)}
    assert [f.pgno for f in txns[1].frames] == [3, 2]
    assert txns[1].pages == {2: page(5, ps)}
    frame_size = ps + 24
    assert (txns[1].start_offset, txns[1].end_offset) == (32 + 3 * frame_size, 32 + 5 * frame_size)
    assert reader.frame_count == 6 and reader.commit_frame_count == 5
    assert reader.end_offset == len(wal)
    assert reader.commit_end_offset == len(wal) - frame_size
    assert reader.commit_checksum == txns[1].checksum
    assert reader.checksum != reader.commit_checksum

    db = bytearray()
    for txn in txns:
        apply(db, txn, ps)
    assert bytes(db) == page(3, ps) + page(5, ps)


def test_writer_rejects_bad_frames() -> None:
    writer = WALWriter(512, 1, 2)
    with pytest.raises(ValueError, match="page is 100 bytes"):
        writer.frame(1, bytes(100))
    with pytest.raises(ValueError, match="pgno=0"):
        writer.frame(0, bytes(512))
    with pytest.raises(ValueError, match="power of two"):
        WALWriter(1000, 1, 2)


def test_zero_pgno_frame_ends_the_wal() -> None:
    ps = 512
    writer = WALWriter(ps, 5, 6)
    body = writer.frame(1, page(1, ps), 1)
    # A frame with pgno 0 but an otherwise valid checksum chain, written by hand.
    first8 = struct.pack(">2I", 0, 1)
    s = wal_checksum(first8, *writer.checksum, False)
    s = wal_checksum(page(2, ps), *s, False)
    bad = first8 + struct.pack(">4I", 5, 6, *s) + page(2, ps)
    reader = WALReader(writer.header_bytes() + body + bad)
    assert len(list(reader.transactions())) == 1
    assert reader.stop_reason is WALStopReason.INVALID_PGNO
    with pytest.raises(WALFormatError, match="frame index 1: frame page number is 0"):
        list(WALReader(writer.header_bytes() + body + bad, strict=True).frames())


def test_restarted_wal_stops_at_old_generation() -> None:
    """After a checkpoint SQLite restarts the WAL with new salts over the old frames."""
    ps = 1024
    old = encode_wal(ps, [(i, page(i, ps), i) for i in range(1, 6)], (100, 200))
    new = encode_wal(ps, [(1, page(99, ps), 5)], (101, 300))
    wal = new + old[len(new) :]
    reader = WALReader(wal)
    txns = list(reader.transactions())
    assert [t.pages for t in txns] == [{1: page(99, ps)}]
    assert reader.stop_reason is WALStopReason.SALT_MISMATCH


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("where", ["pgno", "commit", "page-first", "page-last", "checksum2"])
def test_corrupt_byte_is_detected(big_endian: bool, where: str) -> None:
    ps = 1024
    frames = [(i % 3 + 1, page(i, ps), 3 if i % 2 else 0) for i in range(6)]
    wal = bytearray(encode_wal(ps, frames, (7, 8), big_endian))
    assert len(list(WALReader(bytes(wal), strict=True).frames())) == 6
    frame_size = ps + 24
    victim = 3
    start = 32 + victim * frame_size
    offset = start + {"pgno": 3, "commit": 7, "page-first": 24, "page-last": frame_size - 1,
                      "checksum2": 23}[where]
    wal[offset] ^= 0x10
    reader = WALReader(bytes(wal))
    assert [f.index for f in reader.frames()] == [0, 1, 2]
    assert reader.stop_reason is WALStopReason.CHECKSUM_MISMATCH
    assert reader.end_offset == start
    assert [t.end_offset for t in reader.transactions()] == [32 + 2 * frame_size]
    with pytest.raises(WALChecksumError) as info:
        list(WALReader(bytes(wal), name="w", strict=True).frames())
    assert info.value.offset == start + 16
    assert str(info.value).startswith(f"w: offset {start + 16}: frame index {victim}: ")


frame_lists = st.lists(
    st.tuples(st.integers(1, 2**32 - 1), st.integers(0, 2**31), st.booleans()),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(
    page_size_log=st.integers(9, 16),
    frames=frame_lists,
    salts=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    big_endian=st.booleans(),
    checkpoint_seq=st.integers(0, 2**32 - 1),
)
def test_round_trip(
    page_size_log: int,
    frames: list[tuple[int, int, bool]],
    salts: tuple[int, int],
    big_endian: bool,
    checkpoint_seq: int,
) -> None:
    ps = 1 << page_size_log
    spec = [(pgno, page(seed, ps), pgno if commit else 0) for pgno, seed, commit in frames]
    wal = encode_wal(ps, spec, salts, big_endian, checkpoint_seq=checkpoint_seq)
    assert len(wal) == 32 + len(spec) * (ps + 24)

    reader = WALReader(wal, strict=True)
    h = reader.header
    assert (h.page_size, (h.salt1, h.salt2), h.big_endian_checksum, h.checkpoint_seq) == (
        ps, salts, big_endian, checkpoint_seq,
    )
    got = list(reader.frames())
    assert [(f.pgno, f.page, f.header.commit) for f in got] == spec
    assert reader.stop_reason is WALStopReason.END_OF_FILE
    assert reader.end_offset == len(wal)

    # Transactions: runs ending in a commit frame; a trailing run without one is not yielded.
    expected: list[list[int]] = []
    run: list[int] = []
    for i, (_, _, commit) in enumerate(spec):
        run.append(i)
        if commit:
            expected.append(run)
            run = []
    txns = list(reader.transactions())
    assert [[f.index for f in t.frames] for t in txns] == expected
    last_commit = expected[-1][-1] + 1 if expected else 0
    assert reader.commit_end_offset == 32 + last_commit * (ps + 24)
    assert reader.commit_frame_count == last_commit
