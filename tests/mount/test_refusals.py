"""What the mount refuses, and how: the application gets an error, the mount log says why
(naming the database and what to change), no LTX file is written, and the mount keeps serving
every other database."""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mount.harness import LitefsMount
from tests.mount.sqlclient import (
    ltx_files,
    read_live,
    run_client,
    sql,
    steps_spec,
    verify_capture,
)


def _log_lines(m: LitefsMount, *words: str) -> list[str]:
    return [line for line in m.log().splitlines() if all(w in line for w in words)]


def _make_db(m: LitefsMount, name: str, mode: str = "DELETE") -> None:
    run_client(steps_spec(m, name, [
        sql(f"PRAGMA journal_mode={mode}"),
        sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v)"),
        sql("INSERT INTO t(v) VALUES ('before')"),
    ]))


def _still_healthy(m: LitefsMount, work: Path, name: str = "healthy.db") -> None:
    """Another database can still be written and captured."""
    existed = os.path.exists(m.db(name))
    before = len(ltx_files(m, name))
    run_client(steps_spec(m, name, [
        sql("CREATE TABLE IF NOT EXISTS h(v)"),
        sql("INSERT INTO h VALUES ('still works')", delta=1),
    ]))
    assert len(ltx_files(m, name)) == before + (1 if existed else 2)
    verify_capture(m, name, work / name)


@pytest.mark.parametrize("setting", ["MEMORY", "OFF"])
def test_journal_mode_without_journal_is_refused(litefs: LitefsMount, tmp_path: Path,
                                                 setting: str) -> None:
    name = "nojournal.db"
    _make_db(litefs, name)
    _still_healthy(litefs, tmp_path)
    files, pos = ltx_files(litefs, name), litefs.pos(name)
    report = run_client(steps_spec(litefs, name, [
        sql(f"PRAGMA journal_mode={setting}", name="mode"),
        sql("INSERT INTO t(v) VALUES (randomblob(100000))", name="write",
            expect_error="disk I/O error"),
    ]))
    assert report["steps"][0]["rows"] == [[{"hex": setting.lower().encode().hex()}]]
    assert "disk I/O error" in report["steps"][1]["error"]
    assert ltx_files(litefs, name) == files
    assert litefs.pos(name) == pos
    lines = _log_lines(litefs, name, "journal_mode")
    assert lines, litefs.log()
    assert any(setting in line and "journal_mode=DELETE" in line for line in lines), lines
    # The refused write changed nothing; the database is intact and captures again in a
    # normal journal mode.
    live, ic = read_live(litefs, name)
    assert ic == [(b"ok",)]
    assert live["tables"]["t"] == [(1, 1, b"before")]
    run_client(steps_spec(litefs, name, [sql("INSERT INTO t(v) VALUES ('after')", delta=1)]))
    verify_capture(litefs, name, tmp_path / "after")
    _still_healthy(litefs, tmp_path)


@pytest.mark.parametrize("setting", ["MEMORY", "OFF"])
def test_new_database_without_journal_is_refused(litefs: LitefsMount, tmp_path: Path,
                                                 setting: str) -> None:
    name = "fresh.db"
    run_client(steps_spec(litefs, name, [
        sql(f"PRAGMA journal_mode={setting}"),
        sql("CREATE TABLE t(v)", expect_error="disk I/O error"),
    ]))
    assert ltx_files(litefs, name) == []
    assert _log_lines(litefs, name, "journal_mode")
    _still_healthy(litefs, tmp_path)


def test_exclusive_locking_in_wal_mode_is_refused(litefs: LitefsMount, tmp_path: Path) -> None:
    """locking_mode=EXCLUSIVE before the first access of a WAL database keeps the wal-index
    in heap memory: no -shm, so the mount cannot tell commits apart; it refuses the write."""
    name = "excl.db"
    _make_db(litefs, name, "WAL")
    files, pos = ltx_files(litefs, name), litefs.pos(name)
    run_client(steps_spec(litefs, name, [
        sql("INSERT INTO t(v) VALUES (randomblob(50000))", name="write",
            expect_error="disk I/O error"),
    ], setup=["PRAGMA locking_mode=EXCLUSIVE"]))
    assert ltx_files(litefs, name) == files
    assert litefs.pos(name) == pos
    lines = _log_lines(litefs, name, "locking_mode")
    assert any("locking_mode=NORMAL" in line for line in lines), litefs.log()
    live, ic = read_live(litefs, name)
    assert ic == [(b"ok",)]
    assert live["tables"]["t"] == [(1, 1, b"before")]
    run_client(steps_spec(litefs, name, [sql("INSERT INTO t(v) VALUES ('after')", delta=1)]))
    verify_capture(litefs, name, tmp_path / "after")
    _still_healthy(litefs, tmp_path)


def test_exclusive_locking_in_rollback_mode_is_captured(litefs: LitefsMount,
                                                        tmp_path: Path) -> None:
    """The control: in rollback mode, EXCLUSIVE keeps the journal and zeroes its header at
    each commit (like PERSIST), which the mount sees; nothing is refused."""
    name = "excl-rollback.db"
    _make_db(litefs, name)
    n = len(ltx_files(litefs, name))
    report = run_client(steps_spec(litefs, name, [
        sql("INSERT INTO t(v) VALUES (randomblob(50000))"),
        sql("BEGIN", "INSERT INTO t(v) VALUES ('rolled back')", "ROLLBACK"),
        sql("UPDATE t SET v = 'x' WHERE id = 1"),
    ], setup=["PRAGMA locking_mode=EXCLUSIVE", "PRAGMA cache_size=2"]))
    assert [s["ltx"] for s in report["steps"]] == [n + 1, n + 1, n + 2]
    verify_capture(litefs, name, tmp_path / "w")


def test_mkdir_is_refused(litefs: LitefsMount, tmp_path: Path) -> None:
    with pytest.raises(PermissionError) as exc:
        os.mkdir(os.path.join(litefs.mount_dir, "sub"))
    assert exc.value.errno == errno.EPERM
    lines = _log_lines(litefs, "mkdir", "'sub'")
    assert lines and "subdirectories are not supported" in lines[-1], litefs.log()
    assert "sub" not in os.listdir(litefs.mount_dir)
    _still_healthy(litefs, tmp_path)


def test_rename_is_refused(litefs: LitefsMount, tmp_path: Path) -> None:
    name = "named.db"
    _make_db(litefs, name)
    files = ltx_files(litefs, name)
    with pytest.raises(PermissionError) as exc:
        os.rename(litefs.db(name), litefs.db("other.db"))
    assert exc.value.errno == errno.EPERM
    assert _log_lines(litefs, "rename", f"'{name}'"), litefs.log()
    assert os.path.exists(litefs.db(name))
    assert not os.path.exists(litefs.db("other.db"))
    assert ltx_files(litefs, name) == files
    verify_capture(litefs, name, tmp_path / "w")


def test_pos_file_is_read_only(litefs: LitefsMount, tmp_path: Path) -> None:
    name = "p.db"
    _make_db(litefs, name)
    pos_path = litefs.db(name) + "-pos"
    before = Path(pos_path).read_bytes()
    with pytest.raises(PermissionError):
        open(pos_path, "w").close()
    with pytest.raises(PermissionError):
        os.open(pos_path, os.O_WRONLY)
    with pytest.raises(PermissionError):
        os.open(pos_path, os.O_RDWR)
    with pytest.raises(PermissionError):
        os.truncate(pos_path, 0)
    with pytest.raises(PermissionError):
        os.unlink(pos_path)
    assert Path(pos_path).read_bytes() == before
    assert litefs.pos(name)[0] == 2
    _still_healthy(litefs, tmp_path)


@pytest.mark.parametrize("suffix", ["-journal", "-wal", "-shm"])
def test_companion_without_database_is_refused(litefs: LitefsMount, suffix: str,
                                               tmp_path: Path) -> None:
    path = litefs.db("missing.db") + suffix
    with pytest.raises(FileNotFoundError) as exc:
        open(path, "wb").close()
    assert exc.value.errno == errno.ENOENT
    assert _log_lines(litefs, "missing.db", "does not exist"), litefs.log()
    assert os.listdir(litefs.mount_dir) == []
    assert not (litefs.data_dir / "dbs" / "missing.db").exists() or \
        ltx_files(litefs, "missing.db") == []
    _still_healthy(litefs, tmp_path)


@pytest.mark.parametrize("setting", ["MEMORY", "OFF"])
def test_journal_mode_without_journal_after_persist_is_refused(
        litefs: LitefsMount, tmp_path: Path, setting: str) -> None:
    """A database used in PERSIST mode keeps its `-journal` (header zeroed, size > 0). A later
    process that switches to MEMORY or OFF (from its default DELETE, so SQLite leaves that
    journal alone) writes the database with no journal activity at all: that must be refused
    like any other MEMORY/OFF write. Today the writes succeed, no LTX file is written and
    `-pos` does not move, so the live database silently diverges from its LTX log."""
    name = "persisted.db"
    _make_db(litefs, name, "PERSIST")
    assert os.path.getsize(litefs.db(name) + "-journal") > 0
    files, pos = ltx_files(litefs, name), litefs.pos(name)
    report = run_client(steps_spec(litefs, name, [
        sql(f"PRAGMA journal_mode={setting}", name="mode"),
        sql("INSERT INTO t(v) VALUES ('not captured')", name="write",
            allow_error="disk I/O error"),
    ]))
    try:
        assert report["steps"][1]["error"] is not None, "the write was not refused"
        assert ltx_files(litefs, name) == files
        assert litefs.pos(name) == pos
        assert _log_lines(litefs, name, "journal_mode")
    finally:
        verify_capture(litefs, name, tmp_path / "w")


@pytest.mark.parametrize("setting", ["MEMORY", "OFF"])
def test_switch_from_wal_to_no_journal_is_refused_or_captured(
        litefs: LitefsMount, tmp_path: Path, setting: str) -> None:
    """`PRAGMA journal_mode=MEMORY` on a WAL database checkpoints, deletes the WAL and rewrites
    the header (bytes 18/19: 2 -> 1) with no journal. The mount must refuse that write or
    record it; today it performs it silently, the live file no longer matches the checksum in
    `-pos`, and replicas keep a WAL-mode header."""
    name = "wal2mem.db"
    _make_db(litefs, name, "WAL")
    pos = litefs.pos(name)
    report = run_client(steps_spec(litefs, name, [
        sql(f"PRAGMA journal_mode={setting}", name="mode", allow_error="disk I/O error"),
    ]))
    refused = report["steps"][0]["error"] is not None
    if refused:
        assert litefs.pos(name) == pos
        assert _log_lines(litefs, name, "journal_mode")
    else:
        assert litefs.pos(name)[0] == pos[0] + 1, "the header change was not captured"
    verify_capture(litefs, name, tmp_path / "w")


def _leaves_nothing(m: LitefsMount, name: str) -> None:
    """A refused new file is gone once closed: from the mount (listing and lookup) and from
    the data directory."""
    assert name not in os.listdir(m.mount_dir)
    assert not os.path.exists(m.db(name))
    assert not (m.data_dir / "dbs" / name).exists()


def test_text_file_is_refused_as_not_a_database(litefs: LitefsMount, tmp_path: Path) -> None:
    """A text file written under the mount: the write fails with EIO, the log says the file is
    not a SQLite database (not some journal_mode), and nothing is left behind."""
    name = "notes.txt"
    fd = os.open(litefs.db(name), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        with pytest.raises(OSError) as exc:
            os.write(fd, b"remember the milk\n")
        assert exc.value.errno == errno.EIO
    finally:
        os.close(fd)
    lines = _log_lines(litefs, name, "not a SQLite database")
    assert lines, litefs.log()
    assert all("journal_mode" not in line for line in _log_lines(litefs, name)), litefs.log()
    _leaves_nothing(litefs, name)
    _still_healthy(litefs, tmp_path)


def test_raw_copy_of_a_database_is_refused(litefs: LitefsMount, tmp_path: Path) -> None:
    """`cp app.db MOUNT/` writes a real database without a journal: refused (the log names the
    way to copy one in), and no empty file is left behind."""
    src = tmp_path / "app.db"
    con = sqlite3.connect(src)
    con.execute("CREATE TABLE t(v)")
    con.execute("INSERT INTO t VALUES (randomblob(20000))")
    con.commit()
    con.close()
    with pytest.raises(OSError) as exc:
        shutil.copyfile(src, litefs.db("copied.db"))
    assert exc.value.errno == errno.EIO
    lines = _log_lines(litefs, "copied.db", "refusing")
    assert lines and all(".backup" in line for line in lines), litefs.log()
    _leaves_nothing(litefs, "copied.db")
    _still_healthy(litefs, tmp_path)


def test_page_scrambling_vfs_is_refused_as_not_a_database(litefs: LitefsMount,
                                                          tmp_path: Path) -> None:
    """SQLite through a VFS that scrambles every byte it writes (what an encrypting VFS looks
    like to the filesystem, header included): the first commit fails, the log says the file is
    not a SQLite database, no LTX record is written, and nothing is left behind."""
    if importlib.util.find_spec("apsw") is None:
        pytest.fail("apsw is not installed (a dev dependency): run scripts/setup.sh, or "
                    "pip install apsw")
    script = tmp_path / "scrambled.py"
    script.write_text(SCRAMBLING_CLIENT)
    proc = subprocess.run([sys.executable, str(script), litefs.db("secret.db")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("refused:"), proc.stdout
    lines = _log_lines(litefs, "secret.db", "not a SQLite database")
    assert lines, litefs.log()
    assert ltx_files(litefs, "secret.db") == []
    _leaves_nothing(litefs, "secret.db")
    _still_healthy(litefs, tmp_path)


# Runs in its own process (SQLite through apsw, with a Python VFS that XORs every byte of
# the database and its journal): prints the error SQLite reported for the first commit.
SCRAMBLING_CLIENT = '''
import sys

import apsw

KEY = 0x5A


class ScramblingFile(apsw.VFSFile):
    def xRead(self, amount, offset):
        return bytes(b ^ KEY for b in super().xRead(amount, offset))

    def xWrite(self, data, offset):
        super().xWrite(bytes(b ^ KEY for b in data), offset)


class ScramblingVFS(apsw.VFS):
    def __init__(self):
        super().__init__("scramble", "")

    def xOpen(self, name, flags):
        return ScramblingFile("", name, flags)


vfs = ScramblingVFS()
con = apsw.Connection(sys.argv[1], vfs="scramble")
try:
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute("CREATE TABLE t(v)")
    con.execute("INSERT INTO t VALUES ('hidden')")
    print("committed")
except apsw.Error as exc:
    print(f"refused: {exc}")
con.close()
'''


@pytest.mark.parametrize("how", ["shell redirect", "truncate to 0", "truncate mid-page"])
def test_truncating_a_live_database_is_refused(litefs: LitefsMount, tmp_path: Path,
                                               how: str) -> None:
    """`echo x > MOUNT/app.db` (open with O_TRUNC) or `truncate -s` on a database holding
    committed data: refused with EPERM before a byte is lost; the log names the way to replace
    a database; the database, its position and its log are unchanged, and SQLite can go on."""
    name = "live.db"
    _make_db(litefs, name)
    path = litefs.db(name)
    before = Path(path).read_bytes()
    files, pos = ltx_files(litefs, name), litefs.pos(name)
    with pytest.raises(PermissionError) as exc:
        if how == "shell redirect":
            with open(path, "w") as f:
                f.write("x\n")
        else:
            os.truncate(path, 0 if how == "truncate to 0" else len(before) - 100)  # not x512
    assert exc.value.errno == errno.EPERM
    lines = _log_lines(litefs, name, "refusing to truncate")
    assert lines and all(".restore" in line for line in lines), litefs.log()
    assert Path(path).read_bytes() == before
    assert ltx_files(litefs, name) == files and litefs.pos(name) == pos
    con = sqlite3.connect(path)
    con.execute("INSERT INTO t(v) VALUES ('after')")
    con.commit()
    assert [r[0] for r in con.execute("SELECT v FROM t ORDER BY id")] == ["before", "after"]
    con.close()
    assert litefs.pos(name)[0] == pos[0] + 1
    verify_capture(litefs, name, tmp_path / name)
