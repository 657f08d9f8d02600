"""A SQLite client run as a separate process against the mount, and the helpers that drive it.

Run as a script (`python tests/mount/sqlclient.py < spec.json`) it opens one connection and
does what the JSON spec on stdin says, printing a JSON report on stdout:

- kind "steps": run `steps` in order; each step is a list of SQL statements (a string, or
  `[sql, params]`), executed in autocommit mode (`isolation_level=None`, so BEGIN/COMMIT,
  SAVEPOINT and ROLLBACK TO are explicit). After each step the report records the rows of its
  last statement, the error if one was expected (`expect_error`: a substring), the number of
  LTX records in `ltx_dir` and the TXID in `<db>-pos` (read through the mount); `allow_error`
  tolerates an error without requiring one. A step with
  `"kill": true` SIGKILLs the client right after it ran (a crashed writer).
- kind "writer": run `txns` (lists of statements) each as `BEGIN IMMEDIATE ... COMMIT`, or
  ROLLBACK when `rollback` is set, or a bare VACUUM; every committed transaction also bumps
  `meta.n` for this writer, so the final database proves how many commits happened. Busy
  errors retry the whole transaction.
- kind "reader": until `stop_file` exists, loop `SELECT count(*)`, `PRAGMA quick_check` and
  `SELECT sum(n) FROM meta` (which must never decrease), and every third loop
  `PRAGMA wal_checkpoint(<checkpoint>)` if `checkpoint` is set; busy errors are counted, any
  other error fails the client.

Values in rows are JSON-encoded with bytes as {"hex": ...}; text is read as bytes
(text_factory=bytes) because the workloads store invalid UTF-8 on purpose.

Imported by the tests, it provides `run_client`/`start_client`/`finish_client` and the
capture checks (`replay_chain`, `verify_capture`, ...). This module imports only the standard
library at the top so the client process starts fast; the tests' helpers import litefs lazily.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from litefs_py.store.ltx_log import LoggedRecord

CLIENT = Path(__file__).resolve()

# ---- the client process -----------------------------------------------------------------


def _encode(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"hex": bytes(value).hex()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"hex"}:
        return bytes.fromhex(value["hex"])
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _connect(spec: dict[str, Any]) -> sqlite3.Connection:
    con = sqlite3.connect(spec["db"], timeout=spec.get("timeout", 30.0), isolation_level=None,
                          uri=spec.get("uri", False))
    con.text_factory = bytes
    for sql in spec.get("setup", []):
        con.execute(sql).fetchall()
    return con


def _execute(con: sqlite3.Connection, stmt: Any) -> list[Any]:
    if isinstance(stmt, list):
        sql, params = stmt[0], _decode(stmt[1])
    else:
        sql, params = stmt, ()
    return con.execute(sql, params).fetchall()


def _position(spec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if spec.get("ltx_dir"):
        from litefs_py.store.ltx_log import read_log

        try:
            out["ltx"] = len(read_log(Path(spec["ltx_dir"])))
        except FileNotFoundError:
            out["ltx"] = 0
    if spec.get("pos"):
        try:
            with open(spec["pos"]) as f:
                out["txid"] = int(f.read().split("/")[0], 16)
        except FileNotFoundError:
            out["txid"] = None
    return out


def _run_steps(spec: dict[str, Any]) -> dict[str, Any]:
    con = _connect(spec)
    report: list[dict[str, Any]] = []
    for step in spec["steps"]:
        rec: dict[str, Any] = {"name": step.get("name"), "error": None, "rows": []}
        try:
            for stmt in step["sql"]:
                rec["rows"] = _encode(_execute(con, stmt))
        except sqlite3.Error as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
            expected = step.get("expect_error") or step.get("allow_error")
            if expected is None or expected not in str(exc):
                raise RuntimeError(f"step {step.get('name')!r}: {rec['error']}") from exc
            if con.in_transaction:
                try:
                    con.execute("ROLLBACK")
                except sqlite3.Error as rb:
                    rec["rollback_error"] = str(rb)
        if step.get("expect_error") and rec["error"] is None:
            raise RuntimeError(f"step {step.get('name')!r}: expected an error "
                               f"{step['expect_error']!r}, got none")
        if step.get("kill"):
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        rec.update(_position(spec))
        report.append(rec)
    con.close()
    return {"steps": report}


def _busy(exc: sqlite3.Error) -> bool:
    msg = str(exc)
    return "locked" in msg or "busy" in msg


def _run_writer(spec: dict[str, Any]) -> dict[str, Any]:
    con = _connect(spec)
    w = spec["writer"]
    committed = rolled_back = vacuums = retries = 0
    for txn in spec["txns"]:
        for _attempt in range(200):
            try:
                if txn.get("vacuum"):
                    con.execute("VACUUM")
                    vacuums += 1
                    break
                con.execute("BEGIN IMMEDIATE")
                for stmt in txn["ops"]:
                    _execute(con, stmt)
                if txn.get("rollback"):
                    con.execute("ROLLBACK")
                    rolled_back += 1
                else:
                    con.execute("UPDATE meta SET n = n + 1 WHERE w = ?", (w,))
                    con.execute("COMMIT")
                    committed += 1
                break
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
                retries += 1
                if con.in_transaction:
                    con.execute("ROLLBACK")
                time.sleep(0.005)
        else:
            raise RuntimeError(f"writer {w}: transaction still busy after 200 attempts")
    con.close()
    return {"committed": committed, "rolled_back": rolled_back, "vacuums": vacuums,
            "retries": retries}


def _run_reader(spec: dict[str, Any]) -> dict[str, Any]:
    con = _connect(spec)
    stop = Path(spec["stop_file"])
    checkpoint = spec.get("checkpoint")  # e.g. "PASSIVE": also checkpoint every 3rd loop
    loops = busy = 0
    last_n = -1
    while True:
        done = stop.exists()  # checked first: one full loop always runs after the stop
        try:
            if checkpoint and loops % 3 == 2:
                con.execute(f"PRAGMA wal_checkpoint({checkpoint})").fetchall()
            con.execute("SELECT count(*) FROM t0").fetchall()
            qc = con.execute("PRAGMA quick_check").fetchall()
            if qc != [(b"ok",)]:
                raise RuntimeError(f"quick_check while writers ran: {qc!r}")
            (n,), = con.execute("SELECT sum(n) FROM meta").fetchall()
            if n < last_n:
                raise RuntimeError(f"meta.n went back from {last_n} to {n}")
            last_n = n
            loops += 1
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
            busy += 1
        if done:
            break
        time.sleep(0.002)
    con.close()
    return {"loops": loops, "busy": busy, "last_n": last_n}


def main() -> None:
    spec = json.load(sys.stdin)
    kind = spec.get("kind", "steps")
    runner = {"steps": _run_steps, "writer": _run_writer, "reader": _run_reader}[kind]
    json.dump(runner(spec), sys.stdout)


# ---- helpers for the tests (run in the pytest process) ----------------------------------


def start_client(spec: dict[str, Any]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, str(CLIENT)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(spec))
    proc.stdin.close()
    proc.stdin = None  # communicate() must not touch it again
    return proc


def finish_client(proc: subprocess.Popen[str], timeout: float = 120.0, *,
                  killed: bool = False) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"SQLite client timed out after {timeout} s:\n{err}") from None
    if killed:
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, err)
        return {}
    if proc.returncode != 0:
        raise AssertionError(f"SQLite client failed (exit {proc.returncode}):\n{err}\n{out}")
    result: dict[str, Any] = json.loads(out)
    return result


def run_client(spec: dict[str, Any], timeout: float = 120.0, *,
               killed: bool = False) -> dict[str, Any]:
    return finish_client(start_client(spec), timeout, killed=killed)


def steps_spec(m: Any, name: str, steps: list[dict[str, Any]], *,
               setup: list[str] | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """A "steps" spec for database `name` on mount `m`, recording LTX count and TXID."""
    return {"kind": "steps", "db": m.db(name), "steps": steps, "setup": setup or [],
            "timeout": timeout, "ltx_dir": str(ltx_dir(m, name)), "pos": m.db(name) + "-pos"}


def sql(*stmts: Any, name: str | None = None, **extra: Any) -> dict[str, Any]:
    """One step of a "steps" spec."""
    return {"name": name, "sql": list(stmts), **extra}


def ltx_dir(m: Any, name: str) -> Path:
    return Path(m.data_dir) / "dbs" / name / "ltx"


def ltx_files(m: Any, name: str) -> list[LoggedRecord]:
    """The records of database `name`'s local log, in TXID order (read without changing the
    log; each has the `.name` it would have as a file of its own)."""
    from litefs_py.store.ltx_log import read_log

    d = ltx_dir(m, name)
    if not d.exists():
        return []
    return read_log(d)


@dataclass
class Replay:
    path: Path
    files: list[LoggedRecord]
    txid: int
    checksum: int
    page_size: int
    commit: int


def replay_chain(files: list[LoggedRecord], out: Path, *, check_each: bool = True) -> Replay:
    """Apply every LTX record in order to an empty file; check the chain as it goes."""
    import io

    from litefs_py.ltx import EMPTY_DATABASE_CHECKSUM, Decoder, apply_pages, database_checksum

    assert files, "no LTX files"
    txid = 0
    checksum = 0
    page_size = commit = 0
    with open(out, "w+b") as db:
        for path in files:
            with io.BytesIO(path.read()) as f:
                dec = Decoder(f, name=path.name)
                h = dec.header
                assert h.min_txid == txid + 1, f"gap before {path.name} (at TXID {txid})"
                if h.min_txid == 1:
                    assert h.pre_apply_checksum == 0
                else:
                    assert h.pre_apply_checksum == checksum, (
                        f"{path.name}: pre-apply {h.pre_apply_checksum:016x} != previous "
                        f"post-apply {checksum:016x}")
                trailer = apply_pages(db, dec)
            txid, checksum = h.max_txid, trailer.post_apply_checksum
            page_size, commit = h.page_size, h.commit
            if commit == 0:
                assert checksum == EMPTY_DATABASE_CHECKSUM, path.name
            if check_each:
                db.flush()
                db.seek(0)
                got = database_checksum(db, page_size, commit)
                assert got == checksum, (f"{path.name}: replayed checksum {got:016x} != "
                                         f"post-apply {checksum:016x}")
        db.flush()
        db.seek(0)
        got = database_checksum(db, page_size) if commit else EMPTY_DATABASE_CHECKSUM
        assert got == checksum, f"replayed checksum {got:016x} != last post-apply {checksum:016x}"
        assert db.seek(0, os.SEEK_END) == commit * page_size
    return Replay(out, files, txid, checksum, page_size, commit)


def ltx_verify_cli(records: list[LoggedRecord]) -> None:
    """`litefs ltx verify` on every segment (or file) holding the records (in batches to keep
    argv short)."""
    files = list(dict.fromkeys(r.path for r in records))
    for i in range(0, len(files), 500):
        batch = [str(p) for p in files[i:i + 500]]
        r = subprocess.run([sys.executable, "-m", "litefs_py", "ltx", "verify", "-q", *batch],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"litefs ltx verify failed:\n{r.stdout}\n{r.stderr}"


def database_contents(con: sqlite3.Connection) -> dict[str, Any]:
    """Schema and every row of every table (rowid order), as bytes-safe Python values."""
    con.text_factory = bytes
    schema = con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                         "ORDER BY type, name").fetchall()
    tables: dict[str, Any] = {}
    for _type, tname, _tbl, _sql in schema:
        if _type != b"table":
            continue
        name = tname.decode()
        ident = '"' + name.replace('"', '""') + '"'
        try:
            rows = con.execute(f"SELECT rowid, * FROM {ident} ORDER BY rowid").fetchall()
        except sqlite3.OperationalError:  # WITHOUT ROWID: the primary key orders a scan
            rows = con.execute(f"SELECT * FROM {ident}").fetchall()
        tables[name] = rows
    pragmas = {p: con.execute(f"PRAGMA {p}").fetchall()
               for p in ("page_size", "user_version", "auto_vacuum", "freelist_count")}
    return {"schema": schema, "tables": tables, "pragmas": pragmas}


def integrity(con: sqlite3.Connection) -> list[Any]:
    result: list[Any] = con.execute("PRAGMA integrity_check").fetchall()
    return result


def read_live(m: Any, name: str) -> tuple[dict[str, Any], list[Any]]:
    """Contents and integrity_check of the live database, read through the mount."""
    con = sqlite3.connect(m.db(name), isolation_level=None, timeout=30)
    try:
        con.text_factory = bytes
        return database_contents(con), integrity(con)
    finally:
        con.close()


def read_replayed(path: Path) -> tuple[dict[str, Any], list[Any]]:
    con = sqlite3.connect(f"file:{path}?immutable=1", uri=True, isolation_level=None)
    try:
        con.text_factory = bytes
        return database_contents(con), integrity(con)
    finally:
        con.close()


def live_file_checksum(m: Any, name: str) -> int | None:
    """Rolling checksum of the database file read through the mount; None while a non-empty
    WAL holds part of the content."""
    from litefs_py.ltx import database_checksum

    wal = Path(m.db(name) + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return None
    with open(m.db(name), "rb") as f:
        raw = int.from_bytes(f.read(18)[16:18], "big")  # page size; 1 means 65536
        f.seek(0)
        return database_checksum(f, 65536 if raw == 1 else raw)


def verify_capture(m: Any, name: str, work: Path, *, check_each: bool = True,
                   compare_live: bool = True) -> Replay:
    """The whole capture contract for one database whose writers have all exited:
    the LTX chain replays from TXID 1 to the position in `-pos`, with matching checksums; the
    replayed database has the live one's content and both pass integrity_check; every file
    passes `litefs ltx verify`; reading the live database writes no LTX file."""
    files = ltx_files(m, name)
    work.mkdir(parents=True, exist_ok=True)
    replay = replay_chain(files, work / f"{name}.replayed", check_each=check_each)
    txid, checksum = m.pos(name)
    assert (txid, checksum) == (replay.txid, replay.checksum), (
        f"-pos {txid:x}/{checksum:016x} != chain end {replay.txid:x}/{replay.checksum:016x}")
    ltx_verify_cli(files)
    if compare_live:
        live, live_ic = read_live(m, name)
        got, got_ic = read_replayed(replay.path)
        assert live_ic == [(b"ok",)], live_ic
        assert got_ic == [(b"ok",)], got_ic
        assert got["schema"] == live["schema"]
        assert got["pragmas"] == live["pragmas"]
        assert got["tables"].keys() == live["tables"].keys()
        for t in live["tables"]:
            assert got["tables"][t] == live["tables"][t], f"table {t} differs"
        assert len(ltx_files(m, name)) == len(files), "reading the database wrote an LTX file"
        assert m.pos(name) == (txid, checksum)
    live_ck = live_file_checksum(m, name)
    if live_ck is not None:
        assert live_ck == checksum, f"live file checksum {live_ck:016x} != {checksum:016x}"
    return replay


if __name__ == "__main__":
    main()
