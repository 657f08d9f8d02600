"""Start-up recovery: a database changed behind litefs's back is detected and can be fixed
with the command the error names; a data directory cannot be mounted twice."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from litefs_py.ltx import Decoder, apply_pages, database_checksum
from litefs_py.ltx.segment import encode_frame
from litefs_py.store.ltx_log import read_log
from tests.mount.harness import LitefsMount


def litefs_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "litefs_py", *args], capture_output=True,
                          text=True, timeout=60)


def replay(ltx_dir: Path, out: Path) -> tuple[int, int]:
    """Apply every LTX record in order; return (last post-apply checksum, checksum of
    result)."""
    with out.open("w+b") as f:
        for p in read_log(ltx_dir):
            with p.open() as src:
                dec = Decoder(src, name=str(p))
                trailer = apply_pages(f, dec)
                page_size = dec.header.page_size
        f.seek(0)
        return trailer.post_apply_checksum, database_checksum(f, page_size)


def write_rows(path: str, *values: int) -> None:
    subprocess.run([sys.executable, "-c", (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1])\n"
        "c.execute('CREATE TABLE IF NOT EXISTS t(a)')\n"
        "c.commit()\n"
        "for v in sys.argv[2:]:\n"
        "    c.execute('INSERT INTO t VALUES (?)', (int(v),)); c.commit()\n"
    ), path, *map(str, values)], check=True, timeout=60)


def test_database_changed_outside_litefs_is_refused_then_recovered(tmp_path: Path,
                                                                   litefs_factory) -> None:
    m = litefs_factory(tmp_path / "mnt", tmp_path / "data", tmp_path / "log")
    m.start()
    write_rows(m.db("x.db"), 1, 2)
    m.stop()
    backing = tmp_path / "data" / "dbs" / "x.db" / "database"
    con = sqlite3.connect(backing)
    con.execute("INSERT INTO t VALUES (666)")
    con.commit()
    con.close()

    with pytest.raises(RuntimeError) as err:
        m.start()
    message = str(err.value)
    assert "does not match the last LTX file" in message
    assert "TXID 0000000000000003" in message  # the last recorded transaction
    assert "litefs recover --data-dir" in message and "x.db" in message
    assert "Traceback" not in message

    done = litefs_cli("recover", "--data-dir", str(tmp_path / "data"), "x.db")
    assert done.returncode == 0, done.stderr
    assert "recorded the current database as TXID 0000000000000004" in done.stdout

    m.start()
    assert m.pos("x.db")[0] == 4
    rows = sqlite3.connect(m.db("x.db")).execute("SELECT a FROM t ORDER BY a").fetchall()
    assert rows == [(1,), (2,), (666,)]
    post, actual = replay(tmp_path / "data" / "dbs" / "x.db" / "ltx", tmp_path / "replay.db")
    assert post == actual == m.pos("x.db")[1]
    m.stop()


def test_recover_on_a_matching_database_changes_nothing(tmp_path: Path, litefs_factory) -> None:
    m = litefs_factory(tmp_path / "mnt", tmp_path / "data", tmp_path / "log")
    m.start()
    write_rows(m.db("y.db"), 1)
    m.stop()
    done = litefs_cli("recover", "--data-dir", str(tmp_path / "data"), "y.db")
    assert done.returncode == 0, done.stderr
    assert "nothing to do" in done.stdout
    assert len(read_log(tmp_path / "data" / "dbs" / "y.db" / "ltx")) == 2


def test_data_directory_cannot_be_used_twice(tmp_path: Path, litefs: LitefsMount) -> None:
    write_rows(litefs.db("z.db"), 1)
    other = LitefsMount(tmp_path / "mnt2", litefs.data_dir, tmp_path / "log2")
    with pytest.raises(RuntimeError) as err:
        other.start()
    assert "is in use by litefs pid" in str(err.value)
    done = litefs_cli("recover", "--data-dir", str(litefs.data_dir), "z.db")
    assert done.returncode == 2 and "in use" in done.stderr


def test_clean_restart_resumes_without_rescanning(tmp_path: Path, litefs_factory) -> None:
    m = litefs_factory(tmp_path / "mnt", tmp_path / "data", tmp_path / "log")
    m.start()
    write_rows(m.db("w.db"), 1, 2, 3)
    before = m.pos("w.db")
    m.stop()
    m.start()
    assert m.pos("w.db") == before
    assert "resumed at TXID 0000000000000004 from saved checksums" in m.log()
    write_rows(m.db("w.db"), 4)
    assert m.pos("w.db")[0] == 5


def test_a_torn_newest_ltx_record_is_cut_at_start(tmp_path: Path, litefs_factory) -> None:
    """A crash while appending an LTX record leaves it short; its transaction never
    completed (no journal deletion, no WAL commit frame), so recovery cuts it off the
    segment and keeps the bytes in the quarantine directory."""
    m = litefs_factory(tmp_path / "mnt", tmp_path / "data", tmp_path / "log")
    m.start()
    write_rows(m.db("v.db"), 1, 2)
    m.kill()
    ltx = tmp_path / "data" / "dbs" / "v.db" / "ltx"
    last = read_log(ltx)[-1]
    assert last.range == (3, 3)
    size = last.path.stat().st_size
    torn = encode_frame(last.length) + last.read()[: last.length // 2]
    with last.path.open("ab") as f:
        f.write(torn)
    m.start()
    assert last.path.stat().st_size == size
    (q,) = (tmp_path / "data" / "dbs" / "v.db" / "quarantine").iterdir()
    assert q.read_bytes() == torn
    assert "torn by a crash" in m.log()
    assert m.pos("v.db")[0] == 3
    write_rows(m.db("v.db"), 3)
    assert m.pos("v.db")[0] == 4
    post, actual = replay(ltx, tmp_path / "replay.db")
    assert post == actual == m.pos("v.db")[1]


@pytest.mark.parametrize("journal_mode", ["DELETE", "PERSIST"])
def test_a_truncate_interrupted_after_a_shrinking_commit_is_finished(
        tmp_path: Path, litefs_factory, journal_mode: str) -> None:
    """SQLite truncates a database that shrank only after the commit point, so a crash in
    between leaves the file longer than its (valid) in-header size. Recovery finishes the
    truncate; the backing file is then exactly the LTX replay (crash-test seed 43792550)."""
    m = litefs_factory(tmp_path / "mnt", tmp_path / "data", tmp_path / "log")
    m.start()
    subprocess.run([sys.executable, "-c", (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        f"c.execute('PRAGMA journal_mode={journal_mode}')\n"
        "c.execute('CREATE TABLE t(a)')\n"
        "c.execute('WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
        "WHERE i < 200) INSERT INTO t SELECT randomblob(3000) FROM n')\n"
        "c.execute('DELETE FROM t WHERE rowid > 20')\n"
        "c.execute('VACUUM')\n"
    ), m.db("s.db")], check=True, timeout=60)
    backing = tmp_path / "data" / "dbs" / "s.db" / "database"
    committed = backing.read_bytes()
    pages = int.from_bytes(committed[28:32], "big")
    assert committed[92:96] == committed[24:28] and len(committed) == pages * 4096
    m.kill()
    # The state a SIGKILL between the journal's finalization and SQLite's ftruncate leaves.
    with backing.open("ab") as f:
        f.write(b"\xa5" * 4096 * 30)

    m.start()
    digest = hashlib.sha256(committed).hexdigest()  # not the bytes: a diff would be 1 MB long
    assert hashlib.sha256(backing.read_bytes()).hexdigest() == digest
    assert f"truncating the database file from {(pages + 30) * 4096} to {pages * 4096}" in m.log()
    post, actual = replay(tmp_path / "data" / "dbs" / "s.db" / "ltx", tmp_path / "replay.db")
    assert post == actual == m.pos("s.db")[1]
    assert hashlib.sha256((tmp_path / "replay.db").read_bytes()).hexdigest() == digest
    con = sqlite3.connect(m.db("s.db"))
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("SELECT count(*) FROM t").fetchone() == (20,)
    finally:
        con.close()
    m.stop()
