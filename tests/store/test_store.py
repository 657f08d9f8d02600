"""Store: the data directory's owner. Installing a restored database, what counts as local
data, loading one database for `litefs recover`."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from litefs_py.errors import QuietError
from litefs_py.ltx import database_checksum
from litefs_py.store.store import RestoredDatabase, Store
from litefs_py.types import FileKind
from tests.store.helpers import assert_captured
from tests.store.sqlite_vfs import StoreVFS, execute


def _restored_file(path: Path, rows: int) -> RestoredDatabase:
    """A database as a restore leaves it (a plain SQLite file), described as the restore
    would describe it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t(v)")
    con.executemany("INSERT INTO t VALUES (?)", [(f"row {i}" * 50,) for i in range(rows)])
    con.commit()
    con.close()
    data = path.read_bytes()
    with open(path, "rb") as f:
        checksum = database_checksum(f, 4096)
    return RestoredDatabase(txid=0x2A, page_size=4096, page_count=len(data) // 4096,
                            checksum=checksum)


def test_install_restored_starts_at_the_replicas_txid(store: Store) -> None:
    assert not store.has_local_data("app.db")
    staged = store.stage_restore("app.db")
    restored = _restored_file(staged, 100)
    assert store.install_restored("app.db", staged, restored) == restored.checksum
    assert store.has_database("app.db") and store.has_local_data("app.db")
    assert not (store.data_dir / "restore-tmp").exists()
    assert store.database_path("app.db").read_bytes()[:16] == b"SQLite format 3\x00"
    store.open()
    db = store.dbs["app.db"]
    assert db.pos == (0x2A, restored.checksum)
    assert [tuple(r) for r in db.ltx] == [(1, 0x2A)]
    assert_captured(db)


def test_install_restored_replaces_a_database_and_its_log(vfs: StoreVFS, store: Store,
                                                          tmp_path: Path) -> None:
    con = vfs.connect("app.db")
    execute(con, "CREATE TABLE old(v)", "INSERT INTO old VALUES (1)")
    con.close()
    store.close()
    fresh = Store(store.data_dir)
    staged = fresh.stage_restore("app.db")
    restored = _restored_file(staged, 10)
    fresh.install_restored("app.db", staged, restored)
    fresh.open()
    db = fresh.dbs["app.db"]
    assert db.txid == 0x2A and len(db.ltx) == 1
    con = sqlite3.connect(fresh.database_path("app.db"))
    assert con.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]
    con.close()
    fresh.close()


def test_a_failed_install_leaves_the_old_database(vfs: StoreVFS, store: Store) -> None:
    con = vfs.connect("app.db")
    execute(con, "CREATE TABLE old(v)")
    con.close()
    before = store.database_path("app.db").read_bytes()
    store.close()
    fresh = Store(store.data_dir)
    staged = fresh.stage_restore("app.db")
    restored = _restored_file(staged, 10)
    wrong = RestoredDatabase(restored.txid, restored.page_size, restored.page_count,
                             checksum=restored.checksum ^ 1)  # the disk returned other data
    with pytest.raises(QuietError, match="reads back with checksum"):
        fresh.install_restored("app.db", staged, wrong)
    fresh.discard_restore("app.db")
    assert fresh.database_path("app.db").read_bytes() == before
    assert not (fresh.data_dir / "restore-tmp").exists()
    fresh.close()


def test_a_loaded_database_is_not_replaced(vfs: StoreVFS, store: Store) -> None:
    execute(vfs.connect("app.db"), "CREATE TABLE t(v)")
    staged = store.stage_restore("app.db")
    restored = _restored_file(staged, 1)
    with pytest.raises(RuntimeError, match="is loaded"):
        store.install_restored("app.db", staged, restored)


def test_local_data_includes_a_deleted_databases_log(vfs: StoreVFS, store: Store) -> None:
    con = vfs.connect("app.db")
    execute(con, "CREATE TABLE t(v)")
    con.close()
    store.dbs["app.db"].unlink(FileKind.DATABASE)
    assert not store.has_database("app.db")
    assert store.has_local_data("app.db")  # a cold start must not restore it


def test_load_for_recover(vfs: StoreVFS, store: Store) -> None:
    execute(vfs.connect("app.db"), "CREATE TABLE t(v)")
    store.close()
    again = Store(store.data_dir)
    db = again.load("app.db")
    assert db is not None and db.txid == 0  # not recovered yet
    db.close()
    assert again.load("nope.db") is None and again.load("..") is None
    again.close()


def test_status_is_replaced_atomically(store: Store) -> None:
    store.save_status('{"pid": 1}')
    store.save_status('{"pid": 2}')
    assert (store.data_dir / "status.json").read_text() == '{"pid": 2}'
    assert sorted(p.name for p in store.data_dir.iterdir()) == ["dbs", "status.json"]
