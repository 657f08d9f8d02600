"""A SQLite client in its own process, driven line by line over stdin/stdout (JSON).

Run as `python sqlproc.py DB [--wal] [--synchronous=NORMAL]`; it opens one connection
(autocommit, explicit transactions), creates `t(id INTEGER PRIMARY KEY, k INT, v TEXT)` if
missing, prints `{"ready": true}` and then answers one JSON line per request:

- `{"op": "txn", "n": N, "size": S, "hash": bool}`: N transactions, each `BEGIN IMMEDIATE;
  INSERT one row of S bytes; UPDATE a random older row; COMMIT`. After each COMMIT returns it
  reads the TXID from `<db>-pos` and, with `hash`, a SHA-256 of the database's dump (the state
  at that TXID: this is the only writer). Reply: `{"commits": [[txid, t_done, seconds,
  hash|null], ...], "error": null|str}` where `t_done` is CLOCK_MONOTONIC (system-wide, so
  comparable with the test process) when the COMMIT returned and `seconds` how long the
  transaction took. The first error stops the batch and is reported (nothing is raised).
- `{"op": "loop", "seconds": T, "interval": I, "size": S, "hash": bool}`: the same, one
  transaction every I seconds for T seconds.
- `{"op": "count"}`: `{"count": rows, "sum": sum(k)}`.
- `{"op": "hash"}`: `{"hash": ..., "txid": ...}`.
- `{"op": "exit"}`: closes the connection and exits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import sqlite3
import sys
import time
from typing import Any


def dump_hash(con: sqlite3.Connection) -> str:
    h = hashlib.sha256()
    for line in con.iterdump():
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def _is_litefs_mount(directory: str) -> bool:
    target = os.path.realpath(directory)
    with open("/proc/self/mounts") as f:
        return any(len(p) > 2 and p[1] == target and p[0] == "litefs"
                   for p in (line.split() for line in f))


class Client:
    def __init__(self, db: str, wal: bool, synchronous: str | None = None) -> None:
        self.db = db
        # A database on a litefs mount has a `<db>-pos` file from its first transaction on;
        # a plain file never has one.
        self.on_mount = os.path.exists(db + "-pos") or _is_litefs_mount(os.path.dirname(db))
        self.rng = random.Random(db)
        self.con = sqlite3.connect(db, timeout=30.0, isolation_level=None)
        if wal:
            self.con.execute("PRAGMA journal_mode=WAL").fetchall()
        if synchronous:
            self.con.execute(f"PRAGMA synchronous={synchronous}").fetchall()
        self.con.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, k INT, v TEXT)")

    def txid(self) -> int | None:
        """The TXID in `<db>-pos` (None for a plain file, which has no such file)."""
        try:
            with open(self.db + "-pos") as f:
                return int(f.read().split("/")[0], 16)
        except FileNotFoundError:
            if self.db.startswith("/") and os.path.exists(self.db) and not self.on_mount:
                return None
            raise

    def one(self, size: int, want_hash: bool) -> list[Any]:
        con = self.con
        start = time.monotonic()
        con.execute("BEGIN IMMEDIATE")
        k = self.rng.randrange(1 << 30)
        cur = con.execute("INSERT INTO t(k, v) VALUES (?, ?)",
                          (k, self.rng.randbytes(size // 2 + 1).hex()[:size]))
        rowid = cur.lastrowid or 1
        con.execute("UPDATE t SET k = k + 1 WHERE id = ?", (self.rng.randint(1, rowid),))
        con.execute("COMMIT")
        done = time.monotonic()
        txid = self.txid()
        return [txid, done, done - start, dump_hash(con) if want_hash else None]

    def batch(self, count: int | None, seconds: float | None, interval: float, size: int,
              want_hash: bool) -> dict[str, Any]:
        commits: list[list[Any]] = []
        error = None
        deadline = None if seconds is None else time.monotonic() + seconds
        try:
            while True:
                if count is not None and len(commits) >= count:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                commits.append(self.one(size, want_hash))
                if interval:
                    time.sleep(interval)
        except (sqlite3.Error, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            if self.con.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.con.execute("ROLLBACK")
        return {"commits": commits, "error": error}

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req["op"]
        if op == "txn":
            return self.batch(req.get("n", 1), None, 0.0, req.get("size", 64),
                              req.get("hash", False))
        if op == "loop":
            return self.batch(None, req["seconds"], req.get("interval", 0.05),
                              req.get("size", 64), req.get("hash", False))
        if op == "count":
            n, s = self.con.execute("SELECT count(*), coalesce(sum(k), 0) FROM t").fetchone()
            return {"count": n, "sum": s}
        if op == "hash":
            return {"hash": dump_hash(self.con), "txid": self.txid()}
        raise ValueError(f"unknown op {op!r}")


def main() -> None:
    db = sys.argv[1]
    args = sys.argv[2:]
    sync = next((a.split("=", 1)[1] for a in args if a.startswith("--synchronous=")), None)
    client = Client(db, "--wal" in args, sync)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "exit":
            break
        try:
            reply = client.handle(req)
        except Exception as exc:  # report, let the test decide
            reply = {"fatal": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
    client.con.close()


if __name__ == "__main__":
    main()
