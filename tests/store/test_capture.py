"""Commit capture driven by real SQLite through the store's file verbs (no FUSE): every
journal mode, commits and rollbacks, page-size changes, shrinking, deletion, refusals and the
take-back when the operation that completes a commit fails."""

from __future__ import annotations

import errno
import os

import apsw
import pytest

from litefs_py.store.db import DB, CaptureError
from litefs_py.store.store import Store
from litefs_py.types import FileKind
from tests.store.helpers import assert_captured, replay
from tests.store.sqlite_vfs import StoreVFS, execute, rows

ROLLBACK_MODES = ["DELETE", "TRUNCATE", "PERSIST"]
ALL_MODES = [*ROLLBACK_MODES, "WAL"]


def _db(store: Store, name: str) -> DB:
    db = store.get(name)
    assert db is not None
    return db


def _checkpoint(con: apsw.Connection, mode: str) -> None:
    if mode == "WAL":
        execute(con, "PRAGMA wal_checkpoint(TRUNCATE)")


@pytest.mark.parametrize("mode", ALL_MODES)
def test_each_commit_is_one_record(vfs: StoreVFS, store: Store, mode: str) -> None:
    con = vfs.connect("app.db", journal_mode=mode)
    db = _db(store, "app.db")
    start = db.txid
    execute(con, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    assert db.txid == start + 1
    for i in range(5):
        execute(con, f"INSERT INTO t(v) VALUES ('row {i}')")
        assert db.txid == start + 2 + i
    execute(con, "BEGIN", "UPDATE t SET v = upper(v)", "DELETE FROM t WHERE id = 2", "COMMIT")
    assert db.txid == start + 7
    assert len(db.ltx) == db.txid  # one record per transaction, nothing else
    _checkpoint(con, mode)
    assert_captured(db)
    assert rows(con, "SELECT v FROM t ORDER BY id") == [("ROW 0",), ("ROW 2",), ("ROW 3",),
                                                        ("ROW 4",)]


@pytest.mark.parametrize("mode", ALL_MODES)
def test_rollbacks_and_read_only_transactions_record_nothing(vfs: StoreVFS, store: Store,
                                                             mode: str) -> None:
    # A small cache makes SQLite spill the big transaction's pages into the database file (or
    # WAL) before it is rolled back: the store sees the writes and must still record nothing.
    con = vfs.connect("app.db", journal_mode=mode, cache_size=5)
    execute(con, "CREATE TABLE t(v)", "INSERT INTO t VALUES (randomblob(3000))")
    db = _db(store, "app.db")
    pos, records = db.pos, len(db.ltx)
    execute(con, "BEGIN", *["INSERT INTO t VALUES (randomblob(3000))"] * 40, "ROLLBACK")
    execute(con, "BEGIN", "SELECT count(*) FROM t", "COMMIT")
    execute(con, "BEGIN", "INSERT INTO t VALUES (1)", "SAVEPOINT s",
            "INSERT INTO t VALUES (randomblob(9000))", "ROLLBACK TO s", "RELEASE s", "COMMIT")
    assert db.txid == pos.txid + 1 and len(db.ltx) == records + 1
    _checkpoint(con, mode)
    assert_captured(db)
    assert rows(con, "SELECT count(*) FROM t") == [(2,)]


@pytest.mark.parametrize("mode", ROLLBACK_MODES)
def test_page_size_change_records_every_page(vfs: StoreVFS, store: Store, mode: str) -> None:
    con = vfs.connect("app.db", journal_mode=mode, page_size=4096)
    execute(con, "CREATE TABLE t(v)", "INSERT INTO t VALUES (randomblob(50000))")
    db = _db(store, "app.db")
    assert db.page_size == 4096
    execute(con, "PRAGMA page_size=8192", "VACUUM")
    assert db.page_size == 8192
    last = db.ltx.last()
    assert last is not None and last.header.page_size == 8192
    assert last.header.pre_apply_checksum != 0  # continues the history, as every page
    assert_captured(db)
    execute(con, "INSERT INTO t VALUES (1)")
    assert_captured(db)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_shrinking_database(vfs: StoreVFS, store: Store, mode: str) -> None:
    con = vfs.connect("app.db", journal_mode=mode)
    execute(con, "CREATE TABLE t(v)", *["INSERT INTO t VALUES (randomblob(20000))"] * 10)
    db = _db(store, "app.db")
    big = db.table.page_count if db.table else 0
    execute(con, "DELETE FROM t", "VACUUM")
    assert db.table is not None and db.table.page_count < big
    _checkpoint(con, mode)
    got = assert_captured(db)
    assert len(got.data) == db.table.page_count * db.page_size


@pytest.mark.parametrize("mode", ALL_MODES)
def test_deleting_the_database_records_its_deletion(vfs: StoreVFS, store: Store,
                                                    mode: str) -> None:
    con = vfs.connect("app.db", journal_mode=mode)
    execute(con, "CREATE TABLE t(v)", "INSERT INTO t VALUES (1)")
    con.close()
    db = _db(store, "app.db")
    txid = db.txid
    db.unlink(FileKind.DATABASE)
    assert db.deleted and db.txid == txid + 1
    last = db.ltx.last()
    assert last is not None and last.header.commit == 0
    assert store.get("app.db") is None and store.names() == []
    got = replay(db)
    assert got.data == b"" and got.txid == txid + 1
    # A new database under the same name continues the TXIDs from a full record.
    con = vfs.connect("app.db", journal_mode=mode)
    execute(con, "CREATE TABLE u(v)")
    assert db.txid > txid + 1 and not db.deleted
    first_after = db.ltx.ranges(txid + 1)[0]
    assert db.ltx.info(first_after).header.commit > 0
    _checkpoint(con, mode)
    assert_captured(db)


def test_wal_restart_after_checkpoint_continues(vfs: StoreVFS, store: Store) -> None:
    """After a checkpoint SQLite starts the WAL over (new salts, frames from offset 32): the
    store follows the new generation."""
    con = vfs.connect("app.db", journal_mode="WAL")
    execute(con, "CREATE TABLE t(v)", "PRAGMA wal_checkpoint(TRUNCATE)")
    db = _db(store, "app.db")
    start = db.txid
    for round_ in range(3):
        for i in range(4):
            execute(con, f"INSERT INTO t VALUES ('{round_}-{i}')")
        execute(con, "PRAGMA wal_checkpoint(TRUNCATE)")
        assert db.size(FileKind.WAL) == 0
    assert db.txid == start + 12
    headers = [db.ltx.info(r).header for r in db.ltx.ranges(start)]
    # Each round starts at the new WAL's first frame, with the new generation's salts.
    assert [h.wal_offset == 32 for h in headers] == [True, False, False, False] * 3
    assert len({(h.wal_salt1, h.wal_salt2) for h in headers}) == 3
    assert_captured(db)


def test_first_wal_record_holds_every_page(vfs: StoreVFS, store: Store) -> None:
    """A database with history in the WAL, whose log starts now (the store was opened on it):
    the first record must hold the pages from the WAL's committed frames too."""
    con = vfs.connect("app.db", journal_mode="WAL")
    execute(con, "CREATE TABLE t(v)", "INSERT INTO t VALUES (randomblob(10000))")
    db = _db(store, "app.db")
    assert db.table is not None
    last = db.ltx.last()
    assert last is not None and last.header.wal_size > 0
    execute(con, "PRAGMA wal_checkpoint(TRUNCATE)")
    assert_captured(db)


def test_journal_mode_off_is_refused(vfs: StoreVFS, store: Store) -> None:
    con = vfs.connect("app.db")
    execute(con, "CREATE TABLE t(v)", "INSERT INTO t VALUES ('kept')")
    db = _db(store, "app.db")
    pos, records = db.pos, len(db.ltx)
    execute(con, "PRAGMA journal_mode=OFF")
    with pytest.raises(apsw.IOError):
        execute(con, "INSERT INTO t VALUES (randomblob(10000))")
    assert isinstance(vfs.errors[-1], CaptureError)
    assert "journal_mode=MEMORY or OFF" in str(vfs.errors[-1])
    assert db.pos == pos and len(db.ltx) == records
    assert db.refused_write


def test_a_file_that_is_not_sqlite_is_refused_as_such(store: Store) -> None:
    db = store.create("notes.txt")
    db.fd(FileKind.DATABASE, create=True)
    with pytest.raises(CaptureError, match="not a SQLite database") as exc:
        db.write(FileKind.DATABASE, 0, b"remember the milk\n")
    assert exc.value.errno == errno.EIO
    assert "journal_mode" not in str(exc.value)
    assert db.size(FileKind.DATABASE) == 0 and db.txid == 0 and db.refused_write


def test_scrambled_pages_committed_through_a_journal_are_refused(vfs: StoreVFS,
                                                                store: Store) -> None:
    """An encrypting VFS that leaves the journal header readable: the database pages are
    dirty under a hot journal, but at the commit the file is not a SQLite database. The
    commit (the journal's deletion) is refused, the journal stays, nothing is recorded."""
    con = vfs.connect("app.db")
    execute(con, "CREATE TABLE t(v)")
    con.close()
    db = _db(store, "app.db")
    pos, records = db.pos, len(db.ltx)
    journal = bytes.fromhex("d9d505f920a163d7") + bytes(4088)
    db.fd(FileKind.JOURNAL, create=True)
    db.write(FileKind.JOURNAL, 0, journal)
    db.write(FileKind.DATABASE, 0, os.urandom(4096))
    with pytest.raises(CaptureError, match="not a SQLite database"):
        db.unlink(FileKind.JOURNAL)
    assert db.exists(FileKind.JOURNAL)
    assert db.pos == pos and len(db.ltx) == records


def test_wal_write_without_shm_is_refused(vfs: StoreVFS, store: Store) -> None:
    """Through the mount, WAL frames written while no process has `-shm` open come from
    locking_mode=EXCLUSIVE, whose commits cannot be told apart: refused."""
    con = vfs.connect("app.db")
    execute(con, "CREATE TABLE t(v)")
    db = _db(store, "app.db")
    execute(con, "PRAGMA locking_mode=EXCLUSIVE", "PRAGMA journal_mode=WAL")
    pos = db.pos
    assert db.open_handles(FileKind.SHM) == 0
    with pytest.raises(apsw.IOError):
        execute(con, "INSERT INTO t VALUES (1)")
    assert "locking_mode=NORMAL" in str(vfs.errors[-1])
    assert db.pos == pos


def test_failed_ltx_write_refuses_the_commit(vfs: StoreVFS, store: Store,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """If the record cannot be appended (here the disk fills up half-way through the append),
    the operation that would commit is refused with the append's error, the segment is cut
    back to where it was and nothing changes; SQLite rolls the transaction back and later
    commits are captured. (synchronous=OFF: no fsync, so the first thing to fail is the
    record's append.)"""
    con = vfs.connect("app.db", synchronous="OFF")
    execute(con, "CREATE TABLE t(v)", "INSERT INTO t VALUES (1)")
    db = _db(store, "app.db")
    pos = db.pos
    segments = sorted(db.paths.ltx_dir.iterdir())
    sizes = [p.stat().st_size for p in segments]
    real = os.pwritev

    def disk_full(fd: int, buffers: list[bytes], offset: int) -> int:
        os.pwrite(fd, b"".join(buffers)[:100], offset)  # part of it reached the file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwritev", disk_full)
    with pytest.raises(apsw.IOError):  # through the mount: ENOSPC, SQLITE_FULL
        execute(con, "INSERT INTO t VALUES (2)")
    assert vfs.errors[-1].errno == errno.ENOSPC
    assert db.pos == pos
    assert sorted(db.paths.ltx_dir.iterdir()) == segments
    assert [p.stat().st_size for p in segments] == sizes  # the torn append was cut off
    monkeypatch.setattr(os, "pwritev", real)
    assert db.exists(FileKind.JOURNAL)  # still hot: SQLite rolls it back
    execute(con, "INSERT INTO t VALUES (3)")
    assert db.txid == pos.txid + 1
    assert rows(con, "SELECT v FROM t") == [(1,), (3,)]
    assert_captured(db)


@pytest.mark.parametrize("mode", ["DELETE", "WAL"])
def test_failed_commit_operation_takes_the_record_back(
        vfs: StoreVFS, store: Store, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record is written before the operation that completes the commit (journal
    deletion, WAL commit frame); when that operation fails, the record, the position and the
    page table are taken back."""
    con = vfs.connect("app.db", journal_mode=mode)
    execute(con, "CREATE TABLE t(v)", "INSERT INTO t VALUES (1)")
    db = _db(store, "app.db")
    pos, records = db.pos, list(db.ltx)
    table_checksum = db.table.checksum if db.table else None
    if mode == "DELETE":
        def vanish(d: DB, kind: FileKind) -> None:
            if kind is FileKind.JOURNAL:
                os.unlink(d.path(kind))  # the unlink that commits will fail: ENOENT
        vfs.hooks.before_delete.append(vanish)
    else:
        real = os.pwrite
        calls = []

        def failing_pwrite(fd: int, data: bytes, offset: int) -> int:
            calls.append(offset)
            if len(calls) == 2:  # the transaction's commit frame: its page write
                raise OSError(errno.ENOSPC, "no space")
            return real(fd, data, offset)
        monkeypatch.setattr("litefs_py.store.wal_capture.os.pwrite", failing_pwrite)
    with pytest.raises(apsw.IOError):
        execute(con, "INSERT INTO t VALUES (2)")
    monkeypatch.undo()
    vfs.hooks.before_delete.clear()
    assert db.pos == pos and list(db.ltx) == records
    assert (db.table.checksum if db.table else None) == table_checksum
    if mode == "DELETE":
        store_journal = db.path(FileKind.JOURNAL)
        assert not store_journal.exists()
