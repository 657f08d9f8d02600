"""SQLite clients in their own processes for the apply-fence tests (fcntl locks are per process,
so readers must not live in the test process).

    python sqlite_client.py serve DB [--busy-timeout MS]
        One connection (autocommit, explicit BEGIN allowed, mmap off so the page cache is what
        serves repeated reads). Prints {"ready": true}, then answers one JSON line per request
        {"sql": "..."} with {"rows": [...], "elapsed": s} or {"error": msg, "code": name}.
    python sqlite_client.py reader-loop DB SECONDS
        The invariant reader: loops read transactions (meta version, sum of balances, history
        count) and PRAGMA integrity_check for SECONDS, then prints one JSON summary line.
    python sqlite_client.py bank-writer DB SECONDS
        Transfers between accounts in DB (journal_mode=DELETE) for SECONDS; prints a summary.
    python sqlite_client.py lock PATH START LEN (read|write)
        Holds one fcntl lock on PATH until stdin closes or a line arrives; prints {"locked": true}.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import sqlite3
import sys
import time
from typing import Any

ACCOUNTS = 100
INITIAL_BALANCE = 1000
TOTAL = ACCOUNTS * INITIAL_BALANCE


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def connect(db: str, busy_timeout_ms: int) -> sqlite3.Connection:
    # timeout=0: the busy handler is set by the pragma alone, so busy_timeout 0 means "fail
    # at once".
    con = sqlite3.connect(db, isolation_level=None, timeout=0)
    con.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    con.execute("PRAGMA mmap_size=0")
    return con


def serve(db: str, busy_timeout_ms: int) -> None:
    con = connect(db, busy_timeout_ms)
    emit({"ready": True, "pid": os.getpid()})
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("op") == "exit":
            break
        start = time.monotonic()
        try:
            rows = con.execute(req["sql"]).fetchall()
        except sqlite3.Error as exc:
            emit({"error": str(exc), "code": getattr(exc, "sqlite_errorname", None),
                  "elapsed": time.monotonic() - start})
        else:
            emit({"rows": [list(r) for r in rows], "elapsed": time.monotonic() - start})
    con.close()


def reader_loop(db: str, seconds: float) -> None:
    con = connect(db, 5000)
    deadline = time.monotonic() + seconds
    versions: set[int] = set()
    errors: list[str] = []
    bad: list[str] = []
    last = -1
    iterations = 0
    while time.monotonic() < deadline and len(errors) < 20 and len(bad) < 20:
        try:
            con.execute("BEGIN")
            (v,) = con.execute("SELECT v FROM meta").fetchone()
            (total,) = con.execute("SELECT sum(balance) FROM accounts").fetchone()
            (n,) = con.execute("SELECT count(*) FROM history").fetchone()
            con.execute("COMMIT")
            check = [r[0] for r in con.execute("PRAGMA integrity_check").fetchall()]
        except sqlite3.Error as exc:
            errors.append(f"{getattr(exc, 'sqlite_errorname', '?')}: {exc}")
            if con.in_transaction:
                con.execute("ROLLBACK")
            continue
        iterations += 1
        versions.add(v)
        if total != TOTAL:
            bad.append(f"sum {total} != {TOTAL} at version {v}")
        if n != v:
            bad.append(f"history rows {n} != version {v}")
        if v < last:
            bad.append(f"version went back from {last} to {v}")
        if check != ["ok"]:
            bad.append(f"integrity_check at version {v}: {check[:3]}")
        last = v
        time.sleep(random.uniform(0, 0.002))
    con.close()
    emit({"iterations": iterations, "versions": len(versions), "last": last,
          "errors": errors, "bad": bad})


def bank_writer(db: str, seconds: float) -> None:
    con = sqlite3.connect(db, isolation_level=None, timeout=0)
    con.execute("PRAGMA busy_timeout=5000")
    rng = random.Random(os.getpid())
    deadline = time.monotonic() + seconds
    commits = 0
    errors: list[str] = []
    while time.monotonic() < deadline and len(errors) < 20:
        a, b = rng.sample(range(1, ACCOUNTS + 1), 2)
        amount = rng.randint(1, 50)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, a))
            con.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, b))
            con.execute("INSERT INTO history(src, dst, amount, note) VALUES (?, ?, ?, ?)",
                        (a, b, amount, os.urandom(rng.randint(20, 200)).hex()))
            con.execute("UPDATE meta SET v = v + 1")
            con.execute("COMMIT")
            commits += 1
        except sqlite3.Error as exc:
            errors.append(str(exc))
            if con.in_transaction:
                con.execute("ROLLBACK")
        time.sleep(0.002)
    con.close()
    emit({"commits": commits, "errors": errors})


def hold_lock(path: str, start: int, length: int, kind: str) -> None:
    fd = os.open(path, os.O_RDWR)
    cmd = fcntl.LOCK_SH if kind == "read" else fcntl.LOCK_EX
    fcntl.lockf(fd, cmd | fcntl.LOCK_NB, length, start, os.SEEK_SET)
    emit({"locked": True})
    sys.stdin.readline()
    os.close(fd)


def main(argv: list[str]) -> None:
    mode, db = argv[1], argv[2]
    if mode == "serve":
        busy = int(argv[argv.index("--busy-timeout") + 1]) if "--busy-timeout" in argv else 0
        serve(db, busy)
    elif mode == "reader-loop":
        reader_loop(db, float(argv[3]))
    elif mode == "bank-writer":
        bank_writer(db, float(argv[3]))
    elif mode == "lock":
        hold_lock(db, int(argv[3]), int(argv[4]), argv[5])
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv)
