"""Recovery (store/recovery.py) on crash images made from real SQLite driving the store: a copy
of the data directory taken at the moment of interest, opened by a new store."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from litefs_py.ltx import Decoder
from litefs_py.ltx.segment import FRAME_SIZE, encode_frame
from litefs_py.store.db import DB
from litefs_py.store.ltx_log import read_log
from litefs_py.store.recovery import DatabaseDivergedError, recover
from litefs_py.store.store import Store
from litefs_py.types import FileKind
from tests.store.helpers import assert_captured, replay
from tests.store.sqlite_vfs import StoreVFS, execute


def image(store: Store, dest: Path) -> Path:
    """A copy of the data directory as it is now (what a crash would leave, once the page
    cache reached the disk)."""
    shutil.copytree(store.data_dir, dest)
    return dest


def image_before_journal_delete(vfs: StoreVFS, store: Store, dest: Path) -> list[Path]:
    """Arrange for an image of the data directory at the next journal deletion, before it
    reaches the store: database pages written, journal hot, the record not yet written."""
    images: list[Path] = []

    def crash(d: DB, kind: FileKind) -> None:
        if kind is FileKind.JOURNAL and not images:
            images.append(image(store, dest))
    vfs.hooks.before_delete.append(crash)
    return images


def reopen(data: Path, name: str = "app.db") -> DB:
    return DB(name, data / "dbs" / name)


def quarantined(data: Path, reason: str, name: str = "app.db") -> Path:
    """The one quarantine entry kept for `reason` (recovery deletes nothing)."""
    found = sorted((data / "dbs" / name / "quarantine").glob(f"*Z-{reason}-*"))
    assert len(found) == 1, f"expected one {reason} entry, found {found}"
    return found[0]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="litefs.store")
    return caplog


def _populated(vfs: StoreVFS, mode: str = "DELETE"):  # type: ignore[no-untyped-def]
    con = vfs.connect("app.db", journal_mode=mode)
    execute(con, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)",
            *[f"INSERT INTO t(v) VALUES (randomblob({1000 + i}))" for i in range(5)])
    return con


def test_clean_restart_resumes_from_saved_checksums(vfs: StoreVFS, store: Store,
                                                     logs: pytest.LogCaptureFixture) -> None:
    _populated(vfs).close()
    pos = store.dbs["app.db"].pos
    store.close()
    again = Store(store.data_dir)
    again.open()
    assert again.dbs["app.db"].pos == pos
    assert "from saved checksums" in logs.text
    again.close()
    # The database file changed while litefs was not running: not trusted, rescanned.
    with open(store.data_dir / "dbs" / "app.db" / "database", "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(bytes(4096))  # a page past the in-header size: the database is unchanged
    logs.clear()
    third = Store(store.data_dir)
    third.open()
    assert third.dbs["app.db"].pos == pos
    assert "changed while litefs was not running" in logs.text
    assert "from saved checksums" not in logs.text
    third.close()


def test_torn_newest_record_is_dropped(vfs: StoreVFS, store: Store, tmp_path: Path,
                                       logs: pytest.LogCaptureFixture) -> None:
    """A crash while the record of a commit was being written: the record is torn, the
    journal still hot; the record goes and the transaction is rolled back."""
    con = _populated(vfs)
    db = store.dbs["app.db"]
    before, content = db.pos, db.path(FileKind.DATABASE).read_bytes()
    images = image_before_journal_delete(vfs, store, tmp_path / "img")
    execute(con, "INSERT INTO t(v) VALUES ('torn')")
    last = db.ltx.last_range()
    assert images and last == (before.txid + 1, before.txid + 1)
    newest = read_log(db.paths.ltx_dir)[-1]
    assert newest.range == last
    # The image's segment got the new record's frame and its first 60 bytes, no more.
    with open(images[0] / "dbs" / "app.db" / "ltx" / newest.path.name, "ab") as seg:
        seg.write(encode_frame(newest.length) + newest.read()[:60])
    db2 = reopen(images[0])
    recover(db2)
    assert "torn by a crash" in logs.text
    assert db2.pos == before and db2.ltx.last_range() == (before.txid, before.txid)
    quarantined = list((images[0] / "dbs" / "app.db" / "quarantine").iterdir())
    assert [p.read_bytes() for p in quarantined] == [encode_frame(newest.length)
                                                     + newest.read()[:60]]
    assert db2.path(FileKind.DATABASE).read_bytes() == content
    assert_captured(db2)


def test_hot_journal_of_an_unrecorded_transaction_is_rolled_back(
        vfs: StoreVFS, store: Store, tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    con = _populated(vfs)
    db = store.dbs["app.db"]
    pos, content = db.pos, db.path(FileKind.DATABASE).read_bytes()
    images = image_before_journal_delete(vfs, store, tmp_path / "img")
    execute(con, "UPDATE t SET v = randomblob(3000)")
    assert images and db.txid == pos.txid + 1
    db2 = reopen(images[0])
    assert db2.path(FileKind.JOURNAL).exists()
    journal = db2.path(FileKind.JOURNAL).read_bytes()
    recover(db2)
    assert "rolled back a hot journal" in logs.text
    assert quarantined(images[0], "rolled-back-journal").read_bytes() == journal
    assert db2.pos == pos and not db2.exists(FileKind.JOURNAL)
    assert db2.path(FileKind.DATABASE).read_bytes() == content
    assert_captured(db2)


def test_hot_journal_of_a_recorded_transaction_is_removed(
        vfs: StoreVFS, store: Store, tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    """The process died after the record was written, before the journal was deleted: the
    transaction happened (SQLite would have rolled it back, but it was recorded and may be
    in the replica already), so the journal is stale."""
    con = _populated(vfs)
    db = store.dbs["app.db"]
    journals: list[bytes] = []

    def keep(d: DB, kind: FileKind) -> None:
        if kind is FileKind.JOURNAL:
            journals.append(d.path(kind).read_bytes())
    vfs.hooks.before_delete.append(keep)
    execute(con, "UPDATE t SET v = randomblob(3000)")
    data = image(store, tmp_path / "img")
    (data / "dbs" / "app.db" / "journal").write_bytes(journals[-1])
    db2 = reopen(data)
    recover(db2)
    assert "removing its journal instead of rolling back" in logs.text
    assert quarantined(data, "stale-journal").read_bytes() == journals[-1]
    assert db2.pos == db.pos and not db2.exists(FileKind.JOURNAL)
    assert_captured(db2)


def test_committed_wal_transactions_missing_from_the_log_are_recorded(
        vfs: StoreVFS, store: Store, tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    con = _populated(vfs, "WAL")
    db = store.dbs["app.db"]
    execute(con, "INSERT INTO t(v) VALUES ('a')", "INSERT INTO t(v) VALUES ('b')")
    pos = db.pos
    data = image(store, tmp_path / "img")
    log_dir = data / "dbs" / "app.db" / "ltx"
    lost = read_log(log_dir)[-2]  # the last two records are lost (never reached the disk)
    assert lost.range == (pos.txid - 1, pos.txid - 1)
    os.truncate(lost.path, lost.offset - FRAME_SIZE)
    db2 = reopen(data)
    recover(db2)
    assert logs.text.count("recorded committed WAL transaction") == 2
    assert db2.pos == pos  # the same transactions, the same checksums
    got = replay(db2)
    assert (got.txid, got.checksum) == pos


def test_record_whose_commit_frame_never_reached_the_wal_is_removed(
        vfs: StoreVFS, store: Store, tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    con = _populated(vfs, "WAL")
    db = store.dbs["app.db"]
    before = db.pos
    execute(con, "INSERT INTO t(v) VALUES ('lost')")
    last = db.ltx.last()
    assert last is not None and last.header.wal_offset
    record = db.ltx.read(last.range)
    data = image(store, tmp_path / "img")
    # The record was written, then the process died before the commit frame's write.
    os.truncate(data / "dbs" / "app.db" / "wal", last.header.wal_offset)
    db2 = reopen(data)
    recover(db2)
    assert "never reached the WAL" in logs.text
    assert db2.pos == before
    assert quarantined(data, "uncommitted-ltx").read_bytes() == record


def test_database_changed_outside_litefs(vfs: StoreVFS, store: Store, tmp_path: Path,
                                         logs: pytest.LogCaptureFixture) -> None:
    _populated(vfs).close()
    db = store.dbs["app.db"]
    data = image(store, tmp_path / "img")
    path = data / "dbs" / "app.db" / "database"
    con = sqlite3.connect(path)
    con.execute("INSERT INTO t(v) VALUES ('behind litefs back')")
    con.commit()
    con.close()
    with pytest.raises(DatabaseDivergedError, match="litefs recover") as exc:
        recover(reopen(data))
    assert f"{db.txid:016x}" in str(exc.value)
    db2 = reopen(data)
    recover(db2, accept_current=True)
    assert db2.txid == db.txid + 1
    last = db2.ltx.last()
    assert last is not None and last.header.min_txid == db.txid + 1
    assert_captured(db2)


def test_deletion_is_finished_after_a_crash(vfs: StoreVFS, store: Store, tmp_path: Path) -> None:
    _populated(vfs).close()
    db = store.dbs["app.db"]
    saved = db.path(FileKind.DATABASE).read_bytes()
    db.unlink(FileKind.DATABASE)
    data = image(store, tmp_path / "img")
    # Crash between the deletion's record and the unlink: the file is still there.
    (data / "dbs" / "app.db" / "database").write_bytes(saved)
    db2 = reopen(data)
    recover(db2)
    assert db2.deleted and db2.pos == db.pos
    assert not db2.exists(FileKind.DATABASE)


def test_missing_database_file_is_refused(vfs: StoreVFS, store: Store, tmp_path: Path) -> None:
    _populated(vfs).close()
    data = image(store, tmp_path / "img")
    (data / "dbs" / "app.db" / "database").unlink()
    with pytest.raises(DatabaseDivergedError, match="database file is missing"):
        recover(reopen(data))


def test_database_predating_capture_becomes_a_snapshot(tmp_path: Path,
                                                       logs: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "data" / "dbs" / "old.db"
    root.mkdir(parents=True)
    con = sqlite3.connect(root / "database")
    con.execute("CREATE TABLE t(v)")
    con.executemany("INSERT INTO t VALUES (?)", [(os.urandom(500),) for _ in range(50)])
    con.commit()
    con.close()
    store = Store(tmp_path / "data")
    store.open()
    db = store.dbs["old.db"]
    assert db.txid == 1
    assert "recorded existing database as snapshot" in logs.text
    assert_captured(db)
    store.close()


def test_interrupted_truncate_is_finished(vfs: StoreVFS, store: Store, tmp_path: Path,
                                          logs: pytest.LogCaptureFixture) -> None:
    """SQLite truncates a database that shrank after the commit: a crash in between leaves
    pages past the in-header size."""
    con = _populated(vfs)
    execute(con, *["INSERT INTO t(v) VALUES (randomblob(20000))"] * 5)
    db = store.dbs["app.db"]
    images = []

    def crash(d: DB, kind: FileKind, size: int) -> None:
        if kind is FileKind.DATABASE and not images:
            images.append(image(store, tmp_path / "img"))
    vfs.hooks.before_truncate.append(crash)
    execute(con, "DELETE FROM t WHERE v > 1", "VACUUM")
    assert images
    db2 = reopen(images[0])
    recover(db2)
    assert "interrupted SQLite's truncation" in logs.text
    assert db2.pos == db.pos
    assert_captured(db2)


def test_replica_repairs_an_interrupted_apply_or_drops_its_copy(vfs: StoreVFS, store: Store,
                                                                 tmp_path: Path) -> None:
    con = _populated(vfs)
    execute(con, *["INSERT INTO t(v) VALUES (randomblob(3000))"] * 10,
            "UPDATE t SET v = 'small' WHERE id = 1")
    con.close()
    db = store.dbs["app.db"]
    last = db.ltx.last()
    assert last is not None
    with db.ltx.open(last.range) as rec:
        in_last = {pgno for pgno, _ in Decoder(rec).pages()}
    store.close()
    # A crash in the middle of applying the last record: one of its pages is stale.
    data = image(store, tmp_path / "a")
    page = max(in_last)
    with open(data / "dbs" / "app.db" / "database", "r+b") as f:
        f.seek((page - 1) * last.header.page_size)
        f.write(bytes(last.header.page_size))
    (data / "dbs" / "app.db" / "checksums").unlink(missing_ok=True)
    replica = Store(data)
    replica.open(replica=True)
    assert replica.dbs["app.db"].pos == db.pos
    replica.close()
    # Damage the last record cannot repair: the copy is dropped (a snapshot replaces it).
    data = image(store, tmp_path / "b")
    untouched = min(set(range(1, last.header.commit + 1)) - in_last)
    with open(data / "dbs" / "app.db" / "database", "r+b") as f:
        f.seek((untouched - 1) * last.header.page_size + 100)
        f.write(os.urandom(100))
    (data / "dbs" / "app.db" / "checksums").unlink(missing_ok=True)
    damaged = (data / "dbs" / "app.db" / "database").read_bytes()
    records = sorted(p.name for p in (data / "dbs" / "app.db" / "ltx").iterdir())
    replica = Store(data)
    replica.open(replica=True)
    assert "app.db" not in replica.dbs
    # The copy is kept, whole, in the quarantine; nothing else is left of it.
    copy = quarantined(data, "replica-copy")
    assert (copy / "database").read_bytes() == damaged
    assert sorted(p.name for p in (copy / "ltx").iterdir()) == records
    assert sorted(p.name for p in (data / "dbs" / "app.db").iterdir()) == ["quarantine"]
    replica.close()
    # The next start finds no copy (a snapshot will come) and keeps the quarantine.
    again = Store(data)
    again.open(replica=True)
    assert again.get("app.db") is None and again.dbs["app.db"].txid == 0
    assert again.quarantine_usage()["app.db"].entries == 1
    again.close()
