"""WAL reader and writer against WAL files written and read by the real SQLite library."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from litefs_py.sqlite import (
    WALReader,
    WALStopReason,
    WALTransaction,
    encode_wal,
    parse_database_header,
    parse_wal_header,
)


def apply(db: bytearray, txn: WALTransaction, page_size: int) -> None:
    size = txn.db_size * page_size
    if len(db) < size:
        db.extend(bytes(size - len(db)))
    for pgno, data in txn.pages.items():
        db[(pgno - 1) * page_size : pgno * page_size] = data
    del db[size:]


def dump_and_check(path: Path) -> list[str]:
    """iterdump() of the database at `path`, after checking its integrity."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return list(conn.iterdump())
    finally:
        conn.close()


INSERT_ROWS = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) "
    "INSERT INTO t (v) SELECT randomblob({size}) FROM n"
)


def spilling_insert(conn: sqlite3.Connection, wal: Path, rows: int) -> bytes:
    """Start a transaction too big for the page cache, so SQLite writes uncommitted frames to
    the WAL, and return a copy of the WAL taken while it is open."""
    before = wal.stat().st_size
    conn.execute("BEGIN")
    conn.execute(INSERT_ROWS.format(rows=rows, size=700))
    assert wal.stat().st_size > before, "the cache did not spill; the test proves nothing"
    return wal.read_bytes()


@pytest.mark.parametrize("page_size", [512, 4096, 65536])
def test_wal_transactions_rebuild_live_database(tmp_path: Path, page_size: int) -> None:
    path = tmp_path / "live.db"
    wal_path = tmp_path / "live.db-wal"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA page_size={page_size}")
    assert conn.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("PRAGMA cache_size=4")
    base = path.read_bytes()  # nothing is checkpointed, so the database file stays as is

    rows = max(4 * 65536 // 700, 8 * page_size // 700)
    statements = [
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)",
        "CREATE INDEX t_v ON t (v)",
        INSERT_ROWS.format(rows=3, size=300),
        INSERT_ROWS.format(rows=300, size=200),
        "UPDATE t SET v = randomblob(50) WHERE id % 3 = 0",
    ]
    for sql in statements:
        conn.execute(sql)
    committed = len(statements)

    # A spilled transaction that commits: SQLite rewrites frames of the open transaction in
    # place and fixes their checksums at commit (walRewriteChecksums). Copied before the
    # commit, the WAL must show only the earlier transactions.
    mid = spilling_insert(conn, wal_path, rows)
    conn.execute("COMMIT")
    committed += 1
    mid_reader = WALReader(mid)
    assert len(list(mid_reader.transactions())) == committed - 1
    assert mid_reader.stop_reason in (
        WALStopReason.SALT_MISMATCH, WALStopReason.CHECKSUM_MISMATCH
    )

    spilling_insert(conn, wal_path, rows)
    conn.execute("ROLLBACK")
    # These overwrite the rolled-back frames in place, with a different checksum chain.
    conn.execute("DELETE FROM t WHERE id % 2 = 0")
    conn.execute("CREATE TABLE u AS SELECT id, length(v) AS n FROM t")
    conn.execute("VACUUM")  # the database shrinks: the commit frame truncates it
    conn.execute("BEGIN")
    conn.execute("INSERT INTO u VALUES (-1, -1)")
    conn.execute("COMMIT")
    committed += 4
    spilling_insert(conn, wal_path, rows)
    conn.execute("ROLLBACK")  # leaves uncommitted frames after the last commit

    wal = wal_path.read_bytes()
    live = list(conn.iterdump())
    try:
        assert parse_database_header(base).is_wal
        reader = WALReader(wal, name=str(wal_path))
        assert reader.page_size == page_size
        txns = list(reader.transactions())
        assert len(txns) == committed
        assert reader.commit_frame_count == sum(len(t.frames) for t in txns)
        assert reader.commit_end_offset == txns[-1].end_offset < len(wal)
        assert reader.stop_reason is not WALStopReason.END_OF_FILE
        assert [t.start_offset for t in txns[1:]] == [t.end_offset for t in txns[:-1]]
        assert txns[-1].db_size < max(t.db_size for t in txns)  # VACUUM shrank it

        db = bytearray(base)
        for txn in txns:
            apply(db, txn, page_size)
        replay = tmp_path / "replay"
        replay.mkdir()
        (replay / "replay.db").write_bytes(db)
        assert dump_and_check(replay / "replay.db") == live

        # Our encoder, in both checksum byte orders, writes WALs SQLite itself recovers.
        frames = [(f.pgno, f.page, f.header.commit) for t in txns for f in t.frames]
        for big_endian in (False, True):
            out = tmp_path / f"encoded-{'be' if big_endian else 'le'}"
            out.mkdir()
            encoded = encode_wal(page_size, frames, (0x01020304, 0xA0B0C0D0), big_endian)
            assert parse_wal_header(encoded).big_endian_checksum is big_endian
            re_read = list(WALReader(encoded, strict=True).transactions())
            assert [t.pages for t in re_read] == [t.pages for t in txns]
            (out / "x.db").write_bytes(base)
            (out / "x.db-wal").write_bytes(encoded)
            assert dump_and_check(out / "x.db") == live
    finally:
        conn.close()


def test_wal_copied_between_commits_matches_each_state(tmp_path: Path) -> None:
    """Every committed prefix of the WAL reproduces the state after that commit."""
    path = tmp_path / "live.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    base = path.read_bytes()
    states = []
    for i in range(5):
        conn.execute(f"CREATE TABLE t{i} (x)")
        conn.execute(f"INSERT INTO t{i} VALUES ({i}), (randomblob({i * 2000}))")
        states.append(list(conn.iterdump()))
    wal = (tmp_path / "live.db-wal").read_bytes()
    conn.close()

    txns = list(WALReader(wal).transactions())
    assert len(txns) == 10
    db = bytearray(base)
    for n, txn in enumerate(txns):
        apply(db, txn, 4096)
        if n % 2:
            check = tmp_path / f"state-{n}"
            check.mkdir()
            (check / "x.db").write_bytes(db)
            assert dump_and_check(check / "x.db") == states[n // 2]
