"""Rollback journal reader: synthetic journals and hot journals captured from real SQLite."""

from __future__ import annotations

import random
import sqlite3
import struct
from pathlib import Path

import pytest

from litefs_py.sqlite import (
    JOURNAL_MAGIC,
    JournalChecksumError,
    JournalFormatError,
    JournalReader,
    JournalStopReason,
    RollbackPages,
    journal_checksum,
    journal_is_hot,
    parse_database_header,
    parse_journal_header,
    rollback_pages,
)


def reference_checksum(page: bytes, nonce: int) -> int:
    """pager_cksum() transcribed from pager.c."""
    cksum = nonce
    i = len(page) - 200
    while i > 0:
        cksum += page[i]
        i -= 200
    return cksum & 0xFFFFFFFF


def page(seed: int, size: int = 512) -> bytes:
    return random.Random(seed).randbytes(size)


Record = tuple[int, bytes]


def build_journal(
    segments: list[tuple[int, list[Record]]],
    *,
    page_size: int = 512,
    sector: int = 512,
    initial: int = 10,
    nrec: int | None = None,
) -> bytearray:
    """A journal of (nonce, records) segments, each header at a sector boundary."""
    out = bytearray()
    for nonce, records in segments:
        out.extend(bytes(-len(out) % sector))
        count = len(records) if nrec is None else nrec
        header = JOURNAL_MAGIC + struct.pack(">5I", count, nonce, initial, sector, page_size)
        out += header.ljust(sector, b"\0")
        for pgno, data in records:
            out += struct.pack(">I", pgno) + data
            out += struct.pack(">I", journal_checksum(data, nonce))
    return out


def test_checksum_matches_pager_c() -> None:
    assert journal_checksum(b"\x01" * 4096, 5) == 5 + 20  # bytes 3896, 3696, ..., 96
    assert journal_checksum(b"\x07" + bytes(511), 9) == 9  # byte 0 is never summed
    only = bytearray(512)
    only[312] = 3
    only[112] = 4
    assert journal_checksum(only, 0) == 7
    assert journal_checksum(b"\xff" * 1024, 0xFFFFFFFF) == (0xFFFFFFFF + 5 * 255) & 0xFFFFFFFF
    for size in (512, 1024, 4096, 8192, 65536):
        data = page(size, size)
        assert journal_checksum(data, 12345) == reference_checksum(data, 12345)


def test_multi_segment_offsets() -> None:
    first = [(1, page(1)), (3, page(3)), (2, page(2))]
    second = [(5, page(5))]
    third = [(7, page(7)), (8, page(8))]
    data = build_journal([(111, first), (222, []), (333, second), (444, third)])
    reader = JournalReader(bytes(data), name="j")
    assert (reader.page_size, reader.sector_size, reader.initial_page_count) == (512, 512, 10)
    records = list(reader.records())
    assert [(r.pgno, r.page) for r in records] == first + second + third
    # Records are 520 bytes; headers round up to the next 512-byte boundary.
    assert [h.offset for h in reader.headers] == [0, 2560, 3072, 4608]
    assert [h.nonce for h in reader.headers] == [111, 222, 333, 444]
    assert [r.offset for r in records] == [512, 1032, 1552, 3584, 5120, 5640]
    assert reader.stop_reason is JournalStopReason.END_OF_JOURNAL
    assert reader.end_offset == len(data)


def test_bad_checksum_ends_playback() -> None:
    data = build_journal([(1, [(1, page(1)), (2, page(2)), (3, page(3))]), (2, [(4, page(4))])])
    data[512 + 520 + 4 + 100] ^= 1  # a byte of page 2 that pager_cksum does not sample...
    assert [r.pgno for r in JournalReader(bytes(data))] == [1, 2, 3, 4]  # ...so it passes
    data[512 + 520 + 4 + 312] ^= 1  # one it samples
    reader = JournalReader(bytes(data))
    assert [r.pgno for r in reader.records()] == [1]
    assert reader.stop_reason is JournalStopReason.CHECKSUM_MISMATCH
    assert reader.end_offset == 1032
    with pytest.raises(JournalChecksumError) as info:
        list(JournalReader(bytes(data), name="x-journal", strict=True).records())
    assert info.value.offset == 512 + 2 * 520 - 4
    assert str(info.value).startswith("x-journal: offset 1548: journal record: record checksum")
    assert "for page 2" in str(info.value)


def test_truncated_and_invalid_records() -> None:
    full = build_journal([(1, [(1, page(1)), (2, page(2))])])
    reader = JournalReader(bytes(full[:-1]))
    assert [r.pgno for r in reader.records()] == [1]
    assert reader.stop_reason is JournalStopReason.TRUNCATED
    with pytest.raises(JournalFormatError, match="offset 1032: journal record: record cut short"):
        list(JournalReader(bytes(full[:-1]), strict=True).records())

    zero = build_journal([(1, [(1, page(1)), (0, page(2)), (3, page(3))])])
    reader = JournalReader(bytes(zero))
    assert [r.pgno for r in reader.records()] == [1]
    assert reader.stop_reason is JournalStopReason.INVALID_PGNO

    pending = 0x40000000 // 512 + 1  # the page holding the pending byte is never journaled
    bad = build_journal([(1, [(pending, page(1))])], initial=pending + 10)
    reader = JournalReader(bytes(bad))
    assert list(reader.records()) == []
    assert reader.stop_reason is JournalStopReason.INVALID_PGNO


def test_pages_beyond_initial_size_are_skipped_unchecked() -> None:
    data = build_journal([(1, [(1, page(1)), (11, page(11)), (2, page(2))])], initial=10)
    data[512 + 520 + 4 + 312] ^= 1  # corrupt page 11: SQLite does not even look
    reader = JournalReader(bytes(data))
    assert [r.pgno for r in reader.records()] == [1, 2]
    assert reader.stop_reason is JournalStopReason.END_OF_JOURNAL


def test_record_count_from_file_size() -> None:
    records = [(1, page(1)), (2, page(2)), (3, page(3))]
    data = build_journal([(9, records)], nrec=0xFFFFFFFF)
    assert [r.pgno for r in JournalReader(bytes(data))] == [1, 2, 3]
    # A torn last record does not count.
    assert [r.pgno for r in JournalReader(bytes(data[:-10]))] == [1, 2]


def test_segment_without_magic_ends_journal() -> None:
    data = build_journal([(1, [(1, page(1))]), (2, [(2, page(2))])])
    data[1536] = 0  # what SQLite does to stale headers past the synced part
    reader = JournalReader(bytes(data))
    assert [r.pgno for r in reader.records()] == [1]
    assert len(reader.headers) == 1
    # A header needs a whole sector in the file.
    data = build_journal([(1, [(1, page(1))]), (2, [])])
    assert len(data) == 2048
    reader = JournalReader(bytes(data[:-1]))
    assert [r.pgno for r in reader.records()] == [1]
    assert len(reader.headers) == 1


def test_not_hot_journals() -> None:
    assert not journal_is_hot(b"")
    assert not journal_is_hot(bytes(28))
    assert not journal_is_hot(JOURNAL_MAGIC[:7])
    assert journal_is_hot(JOURNAL_MAGIC)
    with pytest.raises(JournalFormatError, match=r"^j: offset 0: journal header length: "
                                                 r"expected 28 bytes, found 0 bytes$"):
        JournalReader(b"", name="j")
    with pytest.raises(JournalFormatError, match=r"offset 0: journal magic .*: expected "
                                                 r"d9d505f920a163d7, found 0000000000000000"):
        rollback_pages(bytes(4096), name="j")


def test_header_validation() -> None:
    good = bytes(build_journal([(1, [])]))
    header = parse_journal_header(good)
    assert (header.record_count, header.nonce, header.initial_page_count) == (0, 1, 10)
    no_page_size = good[:24] + bytes(4) + good[28:]  # written by SQLite before 3.5.8
    with pytest.raises(JournalFormatError, match="offset 24: journal page size"):
        parse_journal_header(no_page_size)
    assert parse_journal_header(no_page_size, page_size=1024).page_size == 1024
    bad_sector = good[:20] + struct.pack(">I", 100) + good[24:]
    with pytest.raises(JournalFormatError, match=r"offset 20: journal sector size: expected a "
                                                 r"power of two in 32\.\.65536, found 100"):
        JournalReader(bad_sector)


def test_rollback_pages_first_record_wins() -> None:
    data = build_journal([(1, [(1, page(1)), (2, page(2))]), (2, [(1, page(99))])], initial=7)
    result = rollback_pages(bytes(data))
    assert result == RollbackPages({1: page(1), 2: page(2)}, 7, 512)


# --- real SQLite ---

INSERT_ROWS = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) "
    "INSERT INTO t (v) SELECT randomblob({size}) FROM n"
)


def roll_back(db: bytearray, rb: RollbackPages) -> None:
    """What SQLite does with a hot journal: truncate to the original size, restore pages."""
    size = rb.page_count * rb.page_size
    del db[size:]
    db.extend(bytes(size - len(db)))
    for pgno, data in rb.pages.items():
        db[(pgno - 1) * rb.page_size : pgno * rb.page_size] = data


def dump_and_check(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return list(conn.iterdump())
    finally:
        conn.close()


def open_db(path: Path, mode: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute(f"PRAGMA journal_mode={mode}").fetchone() == (mode.lower(),)
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA cache_size=4")
    return conn


@pytest.mark.parametrize("synchronous", ["FULL", "OFF"])
@pytest.mark.parametrize("mode", ["DELETE", "TRUNCATE", "PERSIST"])
def test_hot_journal_rolls_back_to_previous_state(
    tmp_path: Path, mode: str, synchronous: str
) -> None:
    live = tmp_path / "live" / "x.db"
    live.parent.mkdir()
    conn = open_db(live, mode, synchronous)
    try:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        conn.execute(INSERT_ROWS.format(rows=500, size=300))
        before = live.read_bytes()
        before_dump = list(conn.iterdump())

        conn.execute("BEGIN")
        conn.execute("UPDATE t SET v = randomblob(400) WHERE id % 2 = 0")
        conn.execute("DELETE FROM t WHERE id % 7 = 0")
        conn.execute(INSERT_ROWS.format(rows=300, size=700))  # grows the database
        # The crash: database and journal as they are on disk mid-transaction.
        db = bytearray(live.read_bytes())
        journal = (tmp_path / "live" / "x.db-journal").read_bytes()
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    assert db != before, "the cache did not spill; the test proves nothing"
    assert len(db) > len(before)
    assert journal_is_hot(journal)

    reader = JournalReader(journal, name="x.db-journal")
    assert reader.page_size == parse_database_header(before).page_size
    assert reader.initial_page_count == len(before) // reader.page_size
    records = list(reader.records())
    assert records
    if synchronous == "FULL":
        # Each cache spill syncs the journal and starts a new segment.
        assert len(reader.headers) > 1
    else:
        # synchronous=OFF writes the magic at once, with nRec = "whatever the file holds".
        assert reader.header.record_count == 0xFFFFFFFF

    rb = rollback_pages(journal)
    assert rb.pages == {r.pgno: r.page for r in records}
    roll_back(db, rb)
    assert bytes(db) == before
    restored = tmp_path / "restored" / "x.db"  # no journal next to it: SQLite cannot help
    restored.parent.mkdir()
    restored.write_bytes(db)
    assert dump_and_check(restored) == before_dump


@pytest.mark.parametrize("mode", ["DELETE", "TRUNCATE", "PERSIST"])
def test_committed_journal_is_not_hot(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "x.db"
    conn = open_db(path, mode, "FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    conn.execute(INSERT_ROWS.format(rows=200, size=300))
    conn.close()
    journal = tmp_path / "x.db-journal"
    if mode == "DELETE":
        assert not journal.exists()
    else:
        data = journal.read_bytes()
        assert len(data) == 0 if mode == "TRUNCATE" else len(data) > 28
        assert not journal_is_hot(data)


def test_stale_records_after_persist_are_rejected_by_checksum(tmp_path: Path) -> None:
    """PERSIST keeps old journal content; with synchronous=OFF nRec says "the whole file", so
    only the per-segment checksum nonce keeps stale records of an earlier transaction out."""
    path = tmp_path / "live" / "x.db"
    path.parent.mkdir()
    conn = open_db(path, "PERSIST", "OFF")
    try:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        conn.execute(INSERT_ROWS.format(rows=1000, size=300))
        conn.execute("UPDATE t SET v = randomblob(310)")  # journals every page; committed
        before = path.read_bytes()
        before_dump = list(conn.iterdump())
        conn.execute("BEGIN")
        conn.execute("UPDATE t SET v = randomblob(320) WHERE id <= 300")
        db = bytearray(path.read_bytes())
        journal = (tmp_path / "live" / "x.db-journal").read_bytes()
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    assert db != before, "the cache did not spill; the test proves nothing"

    reader = JournalReader(journal)
    records = list(reader.records())
    assert reader.stop_reason is JournalStopReason.CHECKSUM_MISMATCH
    assert reader.end_offset < len(journal) - reader.page_size - 8
    roll_back(db, RollbackPages({r.pgno: r.page for r in records}, reader.initial_page_count,
                                reader.page_size))
    assert bytes(db) == before
    restored = tmp_path / "restored.db"
    restored.write_bytes(db)
    assert dump_and_check(restored) == before_dump
