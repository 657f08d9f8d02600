"""The quarantine (store/quarantine.py): what recovery sets aside instead of deleting, its
names, its bound, and the store paths that now keep instead of removing."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from pathlib import Path

import pytest

from litefs_py.store.quarantine import Quarantine, QuarantineUsage
from litefs_py.store.store import RestoredDatabase, Store
from litefs_py.types import FileKind
from tests.store.sqlite_vfs import StoreVFS, execute

NAME = re.compile(r"^\d{8}T\d{6}\.\d{6}Z-[a-z0-9-]+-.+$")


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="litefs.store")
    return caplog


def test_keep_moves_links_copies_or_writes(tmp_path: Path,
                                           logs: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "dbs" / "app.db"
    root.mkdir(parents=True)
    q = Quarantine(root)
    (root / "moved").write_bytes(b"m" * 10)
    (root / "linked").write_bytes(b"l" * 20)
    (root / "copied").write_bytes(b"c" * 30)
    (root / "dir").mkdir()
    (root / "dir" / "inner").write_bytes(b"d" * 40)
    moved = q.keep(root / "moved", "torn-ltx", why="a test: moved")
    linked = q.keep(root / "linked", "stale-journal", link=True)
    copied = q.keep(root / "copied", "replica-wal", copy=True)
    written = q.keep(b"w" * 50, "uncommitted-ltx", name="0000000000000007-0000000000000007.ltx")
    whole = q.keep(root / "dir", "replica-copy")
    assert not (root / "moved").exists() and moved.read_bytes() == b"m" * 10
    assert (root / "linked").exists() and linked.read_bytes() == b"l" * 20
    assert os.stat(root / "linked").st_ino == os.stat(linked).st_ino  # no copy made
    assert (root / "copied").exists() and copied.read_bytes() == b"c" * 30
    assert os.stat(root / "copied").st_ino != os.stat(copied).st_ino
    assert written.read_bytes() == b"w" * 50
    assert (whole / "inner").read_bytes() == b"d" * 40 and not (root / "dir").exists()
    # Every entry is under quarantine/, named time-reason-name, in the order kept.
    entries = [e.path for e in q.entries()]
    assert entries == [moved, linked, copied, written, whole]
    assert all(e.parent == root / "quarantine" and NAME.match(e.name) for e in entries)
    assert moved.name.endswith("-torn-ltx-moved")
    assert written.name.endswith("-uncommitted-ltx-0000000000000007-0000000000000007.ltx")
    assert q.usage() == QuarantineUsage(5, 150)
    # Each keep is one warning naming the new path and why.
    assert f"as {moved} (10 bytes): a test: moved" in logs.text
    assert f"as {written} (50 bytes)" in logs.text
    with pytest.raises(ValueError, match="slug"):
        q.keep(b"x", "Not A Slug", name="x")


def test_oldest_entries_go_past_the_byte_limit_each_with_a_warning(
        tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    q = Quarantine(tmp_path / "app.db", limit=1000)
    a = q.keep(b"a" * 600, "torn-ltx", name="a")
    assert q.usage() == QuarantineUsage(1, 600)
    b = q.keep(b"b" * 600, "torn-ltx", name="b")  # 1200 > 1000: a goes
    assert [e.path for e in q.entries()] == [b]
    assert f"removing the oldest quarantine entry {a} (600 bytes)" in logs.text
    assert "data.quarantine-limit" in logs.text
    logs.clear()
    c = q.keep(b"c" * 2000, "torn-ltx", name="c")  # alone over the limit: kept, said so
    assert [e.path for e in q.entries()] == [c]
    assert f"removing the oldest quarantine entry {b}" in logs.text
    assert f"its newest entry {c} alone is that large" in logs.text


def test_oldest_entries_go_past_the_entry_limit(tmp_path: Path,
                                                logs: pytest.LogCaptureFixture) -> None:
    q = Quarantine(tmp_path / "app.db", max_entries=3)
    kept = [q.keep(f"{i}".encode(), "torn-ltx", name=f"r{i}") for i in range(5)]
    assert [e.path for e in q.entries()] == kept[2:]
    assert logs.text.count("removing the oldest quarantine entry") == 2


def test_same_time_and_name_do_not_collide(tmp_path: Path) -> None:
    q = Quarantine(tmp_path / "app.db")
    paths = {q.keep(b"x", "torn-ltx", name="same") for _ in range(20)}
    assert len(paths) == 20 and q.usage().entries == 20


def test_replica_wal_is_copied_before_it_is_emptied(vfs: StoreVFS, store: Store,
                                                    logs: pytest.LogCaptureFixture) -> None:
    con = vfs.connect("app.db")
    execute(con, "CREATE TABLE t(v)", "INSERT INTO t VALUES (1)")
    con.close()
    store.close()
    wal = store.data_dir / "dbs" / "app.db" / "wal"
    frames = os.urandom(5000)
    wal.write_bytes(frames)
    replica = Store(store.data_dir)
    replica.open(replica=True)
    assert wal.stat().st_size == 0
    kept = list((store.data_dir / "dbs" / "app.db" / "quarantine").glob("*-replica-wal-wal"))
    assert len(kept) == 1 and kept[0].read_bytes() == frames
    assert replica.quarantine_usage() == {"app.db": QuarantineUsage(1, 5000)}
    replica.close()


def test_restore_keeps_the_database_it_replaces_and_the_quarantine(
        vfs: StoreVFS, store: Store) -> None:
    con = vfs.connect("app.db")
    execute(con, "CREATE TABLE old(v)", "INSERT INTO old VALUES ('keep me')")
    con.close()
    store.close()
    fresh = Store(store.data_dir)
    earlier = fresh.quarantine("app.db").keep(b"earlier", "torn-ltx", name="earlier")
    old_database = fresh.database_path("app.db").read_bytes()
    staged = fresh.stage_restore("app.db")
    staged.parent.mkdir(parents=True)
    new = sqlite3.connect(staged)
    new.execute("CREATE TABLE t(v)")
    new.commit()
    new.close()
    pages = staged.stat().st_size // 4096
    fresh.install_restored("app.db", staged, RestoredDatabase(txid=7, page_size=4096,
                                                              page_count=pages))
    entries = [e.path for e in fresh.quarantine("app.db").entries()]
    assert [p.name for p in entries[:1]] == [earlier.name] and len(entries) == 2
    assert entries[0].read_bytes() == b"earlier"
    replaced = entries[1]
    assert replaced.name.endswith("-replaced-by-restore-app.db")
    assert (replaced / "database").read_bytes() == old_database
    assert not (replaced / "quarantine").exists()  # its entries moved, not nested
    fresh.open()
    assert fresh.dbs["app.db"].txid == 7
    fresh.close()


def test_a_crashed_restores_old_directory_is_kept(tmp_path: Path) -> None:
    """A crash between install_restored's two renames leaves the old database directory in
    the staging area; the next restore keeps it instead of removing it."""
    store = Store(tmp_path / "data")
    old = tmp_path / "data" / "restore-tmp" / "app.db.old"
    (old / "ltx").mkdir(parents=True)
    (old / "database").write_bytes(b"old database")
    store.stage_restore("app.db")
    kept = [e.path for e in store.quarantine("app.db").entries()]
    assert len(kept) == 1 and (kept[0] / "database").read_bytes() == b"old database"
    assert not old.exists()


def test_forget_keeps_the_quarantine(vfs: StoreVFS, store: Store) -> None:
    db = store.create("junk.db")
    db.touch(FileKind.DATABASE)
    kept = store.quarantine("junk.db").keep(b"evidence", "torn-ltx", name="r")
    store.forget("junk.db")
    root = store.data_dir / "dbs" / "junk.db"
    assert sorted(p.name for p in root.iterdir()) == ["quarantine"]
    assert kept.read_bytes() == b"evidence"
    store.forget("nothing.db")  # unknown: nothing happens
