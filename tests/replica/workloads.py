"""SQLite clients in their own processes for the replica workload and bank tests, and the
helpers that drive them and compare a replica with its primary.

Run as a script (`python tests/replica/workloads.py MODE ...`); only the standard library is
imported at the top so a client starts fast.

    serve DB [--busy-timeout MS] [--lazy]
        One long-lived connection (autocommit; explicit BEGIN allowed). Prints {"ready": true},
        then answers one JSON request per line:
          {"op": "exec", "sql": [stmt, ...]}  -> {"rows": rows of the last statement}
          {"op": "digest"}                    -> {"digest": ...} (see `digest`)
          {"op": "exit"}
        Errors come back as {"error": msg, "code": sqlite error name}.
    check
        Opens a *new* connection per request and closes it after:
          {"op": "digest", "db": path, "integrity": bool} -> {"digest": ..., "integrity": [...]}
    bank-writer DB SECONDS PER_TXN PAUSE [BUSY_MS]
        Transactions of PER_TXN transfers between accounts, each bumping meta.v and adding one
        history row, for SECONDS (sleeping PAUSE s between transactions); prints a summary.
    hog-reader DB SECONDS HOLD
        Back-to-back read transactions (`SELECT max(v) FROM t`), each held open for HOLD s;
        prints iterations, the versions seen, busy errors and other errors.
    bank-reader DB SECONDS [BUSY_MS]
        Loops read transactions (meta.v, sum of balances, history count) and PRAGMA quick_check
        for SECONDS with busy_timeout=5000; prints a summary: iterations, distinct versions,
        busy errors (SQLITE_BUSY after the busy timeout), other errors, broken invariants.

fcntl locks belong to a process and are dropped when it closes *any* descriptor of the file,
so a long-lived reader always gets a process of its own, and the `check` process (which opens
and closes connections) never shares a process with one on the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import random
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()

ACCOUNTS = 100
INITIAL_BALANCE = 1000
TOTAL = ACCOUNTS * INITIAL_BALANCE

# ---- the client processes -------------------------------------------------------------------


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _encode(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"hex": bytes(value).hex()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def connect(db: str, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    # timeout=0: only the pragma sets the busy handler.
    con = sqlite3.connect(db, isolation_level=None, timeout=0)
    con.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    return con


def digest(con: sqlite3.Connection) -> dict[str, Any]:
    """The logical content seen by one read transaction: sha256 of `iterdump()`, plus the
    header-level facts a reader sees (page size and count, free pages, cookies)."""
    con.execute("BEGIN")
    try:
        h = hashlib.sha256()
        lines = 0
        for line in con.iterdump():
            h.update(line.encode("utf-8", "surrogateescape"))
            h.update(b"\n")
            lines += 1
        pragmas = {p: con.execute(f"PRAGMA {p}").fetchone()[0]
                   for p in ("page_size", "page_count", "freelist_count", "user_version",
                             "schema_version")}
        tables = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    finally:
        con.execute("COMMIT")
    return {"sha256": h.hexdigest(), "lines": lines, "tables": tables, **pragmas}


def _error(exc: sqlite3.Error) -> dict[str, Any]:
    return {"error": str(exc), "code": getattr(exc, "sqlite_errorname", None)}


def serve(db: str, busy_timeout_ms: int) -> None:
    con = connect(db, busy_timeout_ms)
    emit({"ready": True, "pid": os.getpid()})
    for line in sys.stdin:
        req = json.loads(line)
        op = req.get("op")
        if op == "exit":
            break
        try:
            if op == "exec":
                rows: list[Any] = []
                for stmt in req["sql"]:
                    rows = con.execute(stmt).fetchall()
                emit({"rows": _encode(rows)})
            elif op == "digest":
                emit({"digest": digest(con)})
            else:
                emit({"error": f"unknown op {op!r}", "code": None})
        except sqlite3.Error as exc:
            if con.in_transaction:
                con.execute("ROLLBACK")
            emit(_error(exc))
    con.close()


def check() -> None:
    emit({"ready": True, "pid": os.getpid()})
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("op") == "exit":
            break
        try:
            con = connect(req["db"])
        except sqlite3.Error as exc:
            emit(_error(exc))
            continue
        try:
            out: dict[str, Any] = {"digest": digest(con)}
            if req.get("integrity"):
                out["integrity"] = [r[0] for r in con.execute("PRAGMA integrity_check")]
            emit(out)
        except sqlite3.Error as exc:
            emit(_error(exc))
        finally:
            con.close()


def _busy(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def bank_writer(db: str, seconds: float, per_txn: int, pause: float,
                busy_ms: int = 5000) -> None:
    con = connect(db, busy_ms)
    rng = random.Random(os.getpid())
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    commits = busy = 0
    errors: list[str] = []
    while time.monotonic() < deadline and len(errors) < 20:
        try:
            con.execute("BEGIN IMMEDIATE")
            for _ in range(per_txn):
                a, b = rng.sample(range(1, ACCOUNTS + 1), 2)
                amount = rng.randint(1, 50)
                con.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?",
                            (amount, a))
                con.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?",
                            (amount, b))
            con.execute("UPDATE meta SET v = v + 1")
            con.execute("INSERT INTO history(v, note) VALUES ((SELECT v FROM meta), ?)",
                        (os.urandom(rng.randint(10, 150)).hex(),))
            con.execute("COMMIT")
            commits += 1
        except sqlite3.Error as exc:
            if _busy(exc):
                busy += 1
            else:
                errors.append(f"{getattr(exc, 'sqlite_errorname', '?')}: {exc}")
            if con.in_transaction:
                con.execute("ROLLBACK")
        if pause:
            time.sleep(pause)
    elapsed = time.monotonic() - started
    (v,) = con.execute("SELECT v FROM meta").fetchone()
    con.close()
    emit({"commits": commits, "busy": busy, "errors": errors, "v": v,
          "txn_per_s": round(commits / elapsed, 1)})


def bank_reader(db: str, seconds: float, busy_ms: int = 5000) -> None:
    con = connect(db, busy_ms)
    deadline = time.monotonic() + seconds
    versions: set[int] = set()
    errors: list[str] = []
    bad: list[str] = []
    busy = 0
    last = -1
    iterations = 0
    slowest = 0.0
    while time.monotonic() < deadline and len(errors) < 20 and len(bad) < 20:
        start = time.monotonic()
        try:
            con.execute("BEGIN")
            (v,) = con.execute("SELECT v FROM meta").fetchone()
            (total,) = con.execute("SELECT sum(balance) FROM accounts").fetchone()
            (n,) = con.execute("SELECT count(*) FROM history").fetchone()
            con.execute("COMMIT")
            check = [r[0] for r in con.execute("PRAGMA quick_check").fetchall()]
        except sqlite3.Error as exc:
            if _busy(exc):
                busy += 1
            else:
                errors.append(f"{getattr(exc, 'sqlite_errorname', '?')}: {exc}")
            if con.in_transaction:
                con.execute("ROLLBACK")
            continue
        slowest = max(slowest, time.monotonic() - start)
        iterations += 1
        versions.add(v)
        if total != TOTAL:
            bad.append(f"sum {total} != {TOTAL} at version {v}")
        if n != v:
            bad.append(f"history rows {n} != version {v}")
        if v < last:
            bad.append(f"version went back from {last} to {v}")
        if check != ["ok"]:
            bad.append(f"quick_check at version {v}: {check[:3]}")
        last = v
        time.sleep(random.uniform(0, 0.003))
    con.close()
    emit({"iterations": iterations, "versions": len(versions), "last": last, "busy": busy,
          "errors": errors, "bad": bad, "slowest_s": round(slowest, 3)})


def hog_reader(db: str, seconds: float, hold: float) -> None:
    """Back-to-back read transactions, each held open for `hold` seconds: with a few of these
    started at different times some read transaction is always open."""
    con = connect(db, 5000)
    deadline = time.monotonic() + seconds
    versions: set[int] = set()
    errors: list[str] = []
    busy = iterations = 0
    while time.monotonic() < deadline and len(errors) < 20:
        try:
            con.execute("BEGIN")
            (v,) = con.execute("SELECT max(v) FROM t").fetchone()
            time.sleep(hold)
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            if _busy(exc):
                busy += 1
            else:
                errors.append(f"{getattr(exc, 'sqlite_errorname', '?')}: {exc}")
            if con.in_transaction:
                con.execute("ROLLBACK")
            continue
        iterations += 1
        versions.add(v)
    con.close()
    emit({"iterations": iterations, "versions": sorted(versions), "busy": busy,
          "errors": errors})


def main(argv: list[str]) -> None:
    mode = argv[1]
    if mode == "serve":
        busy = int(argv[argv.index("--busy-timeout") + 1]) if "--busy-timeout" in argv else 5000
        serve(argv[2], busy)
    elif mode == "check":
        check()
    elif mode == "bank-writer":
        bank_writer(argv[2], float(argv[3]), int(argv[4]), float(argv[5]),
                    *(int(a) for a in argv[6:7]))
    elif mode == "bank-reader":
        bank_reader(argv[2], float(argv[3]), *(int(a) for a in argv[4:5]))
    elif mode == "hog-reader":
        hog_reader(argv[2], float(argv[3]), float(argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode}")


# ---- helpers for the tests (run in the pytest process) --------------------------------------


class Proc:
    """A client process; stdout lines are JSON, collected by a thread so reads time out."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.popen = subprocess.Popen([sys.executable, str(SCRIPT), *args],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(json.loads(line))

    def recv(self, timeout: float = 30.0) -> dict[str, Any]:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            stderr = ""
            if self.popen.poll() is not None and self.popen.stderr is not None:
                stderr = self.popen.stderr.read()
            raise AssertionError(f"{self.args[:2]}: no reply within {timeout} s {stderr}"
                                 ) from None

    def request(self, req: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(req) + "\n")
        self.popen.stdin.flush()
        return self.recv(timeout)

    def ok(self, req: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        reply = self.request(req, timeout)
        assert "error" not in reply, f"{self.args[:2]} {req}: {reply}"
        return reply

    def close(self) -> None:
        if self.popen.poll() is None:
            try:
                assert self.popen.stdin is not None
                self.popen.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.popen.stdin.flush()
                self.popen.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=10)
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class Conn(Proc):
    """A `serve` process: one long-lived connection to `db`."""

    def __init__(self, db: str, busy_timeout_ms: int = 5000) -> None:
        super().__init__("serve", db, "--busy-timeout", str(busy_timeout_ms))
        ready = self.recv()
        assert ready.get("ready"), ready

    def exec(self, *stmts: str, timeout: float = 60.0) -> list[Any]:
        rows: list[Any] = self.ok({"op": "exec", "sql": list(stmts)}, timeout)["rows"]
        return rows

    def digest(self) -> dict[str, Any]:
        d: dict[str, Any] = self.ok({"op": "digest"})["digest"]
        return d


class Checker(Proc):
    """A `check` process: a fresh connection for every request."""

    def __init__(self) -> None:
        super().__init__("check")
        ready = self.recv()
        assert ready.get("ready"), ready

    def digest(self, db: str, *, integrity: bool = False) -> dict[str, Any]:
        return self.ok({"op": "digest", "db": db, "integrity": integrity}, timeout=60)


class Procs:
    """Every client process of a test; all are killed at the end."""

    def __init__(self) -> None:
        self.all: list[Proc] = []

    def add(self, proc: Any) -> Any:
        self.all.append(proc)
        return proc

    def conn(self, db: str, busy_timeout_ms: int = 5000) -> Conn:
        c: Conn = self.add(Conn(db, busy_timeout_ms))
        return c

    def checker(self) -> Checker:
        c: Checker = self.add(Checker())
        return c

    def spawn(self, *args: str) -> Proc:
        p: Proc = self.add(Proc(*args))
        return p

    def close(self) -> None:
        for p in self.all:
            p.close()


def assert_replica_equal(primary: Any, replica: Any, name: str, checker: Checker,
                         readers: list[Conn] | tuple[Conn, ...] = (),
                         timeout: float = 30.0) -> dict[str, Any]:
    """Wait until the replica is at the primary's position (TXID and rolling checksum), then
    compare what a fresh connection on each side sees (logical content) and what every
    long-lived replica reader in `readers` sees; the replica must pass integrity_check. The
    primary must be idle (its position is re-read after the comparison)."""
    from tests.replica.harness import wait_same_pos

    pos = wait_same_pos(primary, replica, name, timeout)
    want: dict[str, Any] = checker.digest(primary.db(name))["digest"]
    got = checker.digest(replica.db(name), integrity=True)
    assert got["integrity"] == ["ok"], f"{name} on the replica at {pos}: {got['integrity']}"
    assert got["digest"] == want, f"{name} at TXID {pos[0]:x}: replica {got} != primary {want}"
    for r in readers:
        seen = r.digest()
        assert seen == want, (f"{name} at TXID {pos[0]:x}: a long-lived replica reader sees "
                              f"{seen}, the primary {want}\n--- replica log ---\n"
                              f"{replica.log()[-3000:]}")
    assert primary.pos(name) == pos, "the primary moved during the comparison"
    assert replica.pos(name) == pos
    return want


def header_journal_mode(path: str) -> str:
    """"wal" or "rollback" from the database header's file format versions (bytes 18-19)."""
    with open(path, "rb") as f:
        f.seek(18)
        versions = f.read(2)
    return "wal" if versions == b"\x02\x02" else "rollback"


if __name__ == "__main__":
    main(sys.argv)
