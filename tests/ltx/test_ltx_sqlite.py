"""Page-for-page cross-check with real SQLite databases: snapshot, restore, rolling checksum,
and an incremental LTX file built from the pages a real transaction changed."""

from __future__ import annotations

import io
import random
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from litefs_py.ltx import (
    Decoder,
    Header,
    PageEncoding,
    apply_ltx,
    database_checksum,
    encode_snapshot,
    page_checksum,
    update_checksum,
)

from .helpers import FLAG, encode_v3, integrity_check


def build_db(path: Path, page_size: int, rows: int = 2500, seed: int = 1) -> None:
    rnd = random.Random(seed)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA page_size={page_size}")
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA auto_vacuum=NONE")
        conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, n INTEGER, body BLOB)")
        conn.execute("CREATE INDEX t_n ON t(n)")
        conn.execute("CREATE INDEX t_name ON t(name)")
        with conn:
            for i in range(rows):
                # Every 250th row carries a blob several pages long (overflow pages), even at
                # 64 KiB pages; the others a small random blob.
                size = page_size * 3 + 17 if i % 250 == 0 else rnd.randrange(0, 120)
                conn.execute("INSERT INTO t(name, n, body) VALUES (?, ?, ?)",
                             (f"name-{rnd.randrange(10**6)}", rnd.randrange(1000),
                              rnd.randbytes(size)))
        assert conn.execute("PRAGMA page_size").fetchone()[0] == page_size


def page_count(path: Path, page_size: int) -> int:
    size = path.stat().st_size
    assert size % page_size == 0
    return size // page_size


@pytest.mark.parametrize("encoding", list(PageEncoding), ids=[e.name for e in PageEncoding])
@pytest.mark.parametrize("page_size", [512, 1024, 4096, 65536])
def test_snapshot_of_a_real_database(tmp_path: Path, page_size: int,
                                     encoding: PageEncoding) -> None:
    src = tmp_path / "src.db"
    build_db(src, page_size, rows=2500 if page_size < 65536 else 1200)
    n = page_count(src, page_size)
    assert n > 3
    raw = src.read_bytes()
    # The in-header page count agrees with the file.
    assert int.from_bytes(raw[28:32], "big") == n
    with open(src, "rb") as f:
        expected_ck = database_checksum(f, page_size)

    for no_checksum in (False, True):
        out = io.BytesIO()
        with open(src, "rb") as db:
            header, trailer, ck = encode_snapshot(db, out, page_size=page_size, txid=7,
                                                  timestamp=1234, no_checksum=no_checksum,
                                                  page_encoding=encoding, name="snap")
        assert ck == expected_ck
        assert header == Header(page_size=page_size, commit=n, min_txid=1, max_txid=7,
                                timestamp=1234, flags=2 if no_checksum else 0)
        assert trailer.post_apply_checksum == (0 if no_checksum else expected_ck)

        dec = Decoder(io.BytesIO(out.getvalue()), name="snap")
        assert dec.header == header
        pages = list(dec.pages())
        assert dec.trailer == trailer
        assert [p for p, _ in pages] == list(range(1, n + 1))
        for pgno, page in pages:
            assert page == raw[(pgno - 1) * page_size:pgno * page_size]

        restored = tmp_path / f"restored-{int(no_checksum)}.db"
        with open(restored, "w+b") as db:
            apply_ltx(db, io.BytesIO(out.getvalue()))
        assert restored.read_bytes() == raw
        with open(restored, "rb") as f:
            assert database_checksum(f, page_size) == ck
        assert integrity_check(restored) == "ok"
        with closing(sqlite3.connect(restored)) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == (
                2500 if page_size < 65536 else 1200)


@pytest.mark.parametrize("page_size", [512, 4096])
def test_incremental_file_from_a_real_transaction(tmp_path: Path, page_size: int) -> None:
    """Snapshot, then change the database with SQL; an LTX file holding only the pages that
    changed, with rolling checksums updated page by page, brings the restored copy up to
    date."""
    src = tmp_path / "src.db"
    build_db(src, page_size, rows=1500)
    before = src.read_bytes()
    out = io.BytesIO()
    with open(src, "rb") as db:
        _, snap_trailer, ck_before = encode_snapshot(db, out, page_size=page_size)
    replica = tmp_path / "replica.db"
    with open(replica, "w+b") as db:
        apply_ltx(db, io.BytesIO(out.getvalue()))

    with closing(sqlite3.connect(src)) as conn, conn:
        conn.execute("UPDATE t SET body = randomblob(200) WHERE id % 7 = 0")
        conn.execute("DELETE FROM t WHERE id % 5 = 0")
        conn.execute("INSERT INTO t(name, n, body) SELECT name || 'x', n + 1, body FROM t "
                     "WHERE id % 11 = 0")
    after = src.read_bytes()
    n_before = len(before) // page_size
    n_after = len(after) // page_size

    changed = []
    ck = ck_before
    for pgno in range(1, max(n_before, n_after) + 1):
        old = before[(pgno - 1) * page_size:pgno * page_size]
        new = after[(pgno - 1) * page_size:pgno * page_size]
        if old == new:
            continue
        old_ck = page_checksum(pgno, old) if pgno <= n_before else 0
        new_ck = page_checksum(pgno, new) if pgno <= n_after else 0
        ck = update_checksum(ck, old_ck, new_ck)
        if pgno <= n_after:
            changed.append((pgno, new))
    assert changed and len(changed) < n_after
    assert ck == database_checksum(io.BytesIO(after), page_size)

    h = Header(page_size=page_size, commit=n_after, min_txid=2, max_txid=2,
               pre_apply_checksum=ck_before)
    data, trailer = encode_v3(h, changed, post=ck)
    assert trailer.post_apply_checksum == ck and ck & FLAG
    with open(replica, "r+b") as db:
        got = apply_ltx(db, io.BytesIO(data))
    assert got == trailer
    assert replica.read_bytes() == after
    assert integrity_check(replica) == "ok"
    assert snap_trailer.post_apply_checksum == ck_before


def test_encode_snapshot_rejects_partial_pages(tmp_path: Path) -> None:
    db = tmp_path / "odd.db"
    db.write_bytes(bytes(1000))
    with open(db, "rb") as f, pytest.raises(ValueError):
        encode_snapshot(f, io.BytesIO(), page_size=512)
    # An explicit page count larger than the file is an error too.
    with open(db, "rb") as f, pytest.raises(ValueError):
        encode_snapshot(f, io.BytesIO(), page_size=512, page_count=3)


def test_encode_snapshot_with_explicit_page_count(tmp_path: Path) -> None:
    db = tmp_path / "db"
    db.write_bytes(bytes([1]) * 512 + bytes([2]) * 512 + bytes([3]) * 512)
    out = io.BytesIO()
    with open(db, "rb") as f:
        header, trailer, ck = encode_snapshot(f, out, page_size=512, page_count=2)
    assert header.commit == 2
    assert ck == database_checksum(io.BytesIO(bytes([1]) * 512 + bytes([2]) * 512), 512)
    assert trailer.post_apply_checksum == ck
