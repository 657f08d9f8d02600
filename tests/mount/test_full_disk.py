"""A data directory that fills up: SQLite sees "database or disk is full" (or an I/O error),
nothing acknowledged is lost, the mount keeps serving, and commits succeed again once there
is room.

The data directory is a small tmpfs the test mounts (as root, like every mount test), with a
filler file taking most of its free space. In WAL mode (after a checkpoint, so the WAL is
rewritten in place) and in PERSIST mode (the journal is reused), updates in place need no new
space in SQLite's own files: the only file that grows is the LTX segment, so the first thing
to fail is the append of a commit's record, which must be cut back and refused. In DELETE
mode the journal's creation may fail first; either way the same must hold.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mount.harness import LitefsMount, is_mounted
from tests.mount.sqlclient import verify_capture

SIZE = 4 << 20
ROWS = 150


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "small"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0755", "tmpfs", str(d)],
                   check=True, capture_output=True, timeout=30)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True, timeout=30)


def fill(path: Path, leave: int) -> None:
    """Take all the free space of path's filesystem but `leave` bytes."""
    st = os.statvfs(path.parent)
    with open(path, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


@pytest.mark.parametrize("mode", ["WAL", "PERSIST", "DELETE"])
def test_full_disk_refuses_commits_and_recovers(small_fs: Path, tmp_path: Path,
                                                litefs_factory: type[LitefsMount],
                                                mode: str) -> None:
    m = litefs_factory(tmp_path / "mnt", small_fs / "data", tmp_path / "litefs.log")
    m.start()
    con = sqlite3.connect(m.db("full.db"), isolation_level=None, timeout=10)
    con.execute(f"PRAGMA journal_mode={mode}")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER, v BLOB)")
    con.execute("BEGIN")
    for i in range(ROWS):
        con.execute("INSERT INTO t VALUES (?, 0, randomblob(1500))", (i,))
    con.execute("COMMIT")
    if mode == "WAL":
        # Pages into the database file; the next transactions rewrite the WAL from its start.
        con.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
        con.execute("UPDATE t SET n = 0 WHERE id = 0")
    filler = small_fs / "filler"
    fill(filler, 96 << 10)

    acked: dict[int, int] = {}  # id -> the n of its last acknowledged update
    errors: list[str] = []
    n = 0
    while len(errors) < 5 and n < 3000:
        n += 1
        row = n % ROWS
        try:
            con.execute("UPDATE t SET n = ?, v = randomblob(1500) WHERE id = ?", (n, row))
        except sqlite3.OperationalError as exc:
            errors.append(str(exc))
            continue
        acked[row] = n
    assert errors, "the disk never filled up"
    assert all("disk is full" in e or "disk I/O error" in e for e in errors), errors
    assert acked, "nothing was committed before the disk filled up"
    if mode != "DELETE":
        assert "could not append the record" in m.log(), m.log()[-3000:]

    # The mount is up and consistent; every acknowledged update is there.
    assert is_mounted(m.mount_dir)
    got = dict(con.execute("SELECT id, n FROM t"))
    assert {i: got[i] for i in acked} == acked
    con.close()
    assert "Traceback" not in m.log()

    # Room again: commits succeed, and the log replays to exactly the database.
    filler.unlink()
    con = sqlite3.connect(m.db("full.db"), isolation_level=None, timeout=10)
    for i in range(20):
        con.execute("INSERT INTO t VALUES (?, -1, randomblob(2000))", (10_000 + i,))
    assert con.execute("SELECT count(*) FROM t").fetchone() == (ROWS + 20,)
    con.close()
    verify_capture(m, "full.db", tmp_path / "verify")

    # And a restart (recovery over whatever the full disk left) finds it all.
    m.stop()
    m.start()
    con = sqlite3.connect(m.db("full.db"))
    assert dict(con.execute("SELECT id, n FROM t WHERE id < ?", (ROWS,))) == {**got, **{
        i: n for i, n in acked.items()}}
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
    verify_capture(m, "full.db", tmp_path / "verify2")
