"""A SQLite client for the crash tests (tests/mount/test_crash.py), run as its own process.

It writes transactions to a database under the mount with `PRAGMA synchronous=FULL` and, after
each COMMIT returns, appends the transaction's id to a ledger file outside the mount (flushed
and fsynced), so the ledger lists exactly the transactions SQLite acknowledged. The test kills
the filesystem (and this process) at some moment and then checks that every ledger id survived.

Schema (every transaction inserts its own row in `txns`, so its effects can be found later):

    txns(id, kind, rows)       one row per transaction, id = 1, 2, 3, ... without holes
    items(k, txn, v)           rows inserted, updated and deleted by the transactions
    counter(one=1, n)          n = count(*) of items: a multi-row invariant a torn
                               transaction would break

Commands:

    work        transactions of random kinds until killed (or --txns are done)
    spill       one large transaction that overflows a small page cache, so SQLite writes
                pages before COMMIT (a hot rollback journal, or uncommitted WAL frames); then
                it writes --marker and waits, never committing
    checkpoint  WAL mode: --txns transactions with auto-checkpoint off, then --marker with
                the database size in bytes, then `PRAGMA wal_checkpoint(<how>)`, then
                --marker.done, then keeps working until killed
    vacuum      one VACUUM (a transaction that shrinks the database when it has free pages)

`inject_faults()` is not for the client: the crash tests import it into the litefs process
(from a generated sitecustomize.py) to SIGKILL it at an exact point.

Run it with the project's venv python: `python tests/mount/crash_client.py work --db ...`.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS txns(id INTEGER PRIMARY KEY, kind TEXT NOT NULL,
                                rows INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS items(k INTEGER PRIMARY KEY, txn INTEGER NOT NULL,
                                 v BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS items_txn ON items(txn);
CREATE TABLE IF NOT EXISTS counter(one INTEGER PRIMARY KEY CHECK (one = 1),
                                   n INTEGER NOT NULL);
INSERT OR IGNORE INTO counter(one, n) VALUES (1, 0);
"""

# Keep the database from growing without bound: above this many rows, deletes dominate.
MAX_ITEMS = 2500


class Ledger:
    """Append-only list of acknowledged transaction ids, durable before the next one starts."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)

    def append(self, tid: int) -> None:
        os.write(self.fd, f"{tid}\n".encode())
        os.fsync(self.fd)


def connect(db: str, mode: str, cache_size: int, autocheckpoint: int) -> sqlite3.Connection:
    con = sqlite3.connect(db, isolation_level=None, timeout=10)
    got = con.execute(f"PRAGMA journal_mode={mode}").fetchone()[0]
    if got.upper() != mode.upper():
        raise RuntimeError(f"journal_mode={mode} was refused: SQLite says {got}")
    con.execute("PRAGMA synchronous=FULL")
    con.execute(f"PRAGMA cache_size={cache_size}")
    if mode.upper() == "WAL":
        con.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint}")
    con.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
    return con


def next_id(con: sqlite3.Connection) -> int:
    return int(con.execute("SELECT coalesce(max(id), 0) FROM txns").fetchone()[0]) + 1


def blob(rng: random.Random, lo: int, hi: int) -> bytes:
    return rng.randbytes(rng.randint(lo, hi))


def _insert(con: sqlite3.Connection, rng: random.Random, tid: int, n: int, lo: int,
            hi: int) -> int:
    con.executemany("INSERT INTO items(txn, v) VALUES (?, ?)",
                    [(tid, blob(rng, lo, hi)) for _ in range(n)])
    return n


def _some_keys(con: sqlite3.Connection, rng: random.Random, n: int) -> list[int]:
    lo, hi = con.execute("SELECT min(k), max(k) FROM items").fetchone()
    if lo is None:
        return []
    start = rng.randint(lo, hi)
    rows = con.execute("SELECT k FROM items WHERE k >= ? ORDER BY k LIMIT ?", (start, n))
    return [r[0] for r in rows]


def _update(con: sqlite3.Connection, rng: random.Random, tid: int, n: int) -> int:
    keys = _some_keys(con, rng, n)
    con.executemany("UPDATE items SET txn = ?, v = ? WHERE k = ?",
                    [(tid, blob(rng, 10, 2000), k) for k in keys])
    return len(keys)


def _delete(con: sqlite3.Connection, rng: random.Random, n: int) -> int:
    keys = _some_keys(con, rng, n)
    con.executemany("DELETE FROM items WHERE k = ?", [(k,) for k in keys])
    return len(keys)


KINDS = ("one", "multi", "grow", "update", "delete", "mixed")


def one_transaction(con: sqlite3.Connection, rng: random.Random, tid: int,
                    count: int, kinds: tuple[str, ...] = KINDS) -> tuple[str, int]:
    """Run transaction `tid` (not yet committed); returns (kind, change in item count)."""
    weights = {"one": 30, "multi": 20, "grow": 8, "update": 15, "delete": 10, "mixed": 15}
    if count > MAX_ITEMS:
        weights = {"one": 5, "multi": 5, "grow": 0, "update": 10, "delete": 60, "mixed": 5}
    kind = rng.choices(kinds, [weights[k] + 1 for k in kinds])[0]
    delta = 0
    touched = 0
    if kind == "one":
        delta = touched = _insert(con, rng, tid, 1, 10, 1500)
    elif kind == "multi":
        delta = touched = _insert(con, rng, tid, rng.randint(2, 40), 10, 800)
    elif kind == "grow":  # overflow pages: the database grows by several pages at once
        delta = touched = _insert(con, rng, tid, rng.randint(10, 40), 3000, 12000)
    elif kind == "update":
        touched = _update(con, rng, tid, rng.randint(1, 30))
    elif kind == "delete":
        delta = -_delete(con, rng, rng.randint(1, 60))
        touched = -delta
    else:
        added = _insert(con, rng, tid, rng.randint(1, 10), 10, 4000)
        updated = _update(con, rng, tid, rng.randint(1, 10))
        deleted = _delete(con, rng, rng.randint(1, 10))
        delta = added - deleted
        touched = added + updated + deleted
    con.execute("INSERT INTO txns(id, kind, rows) VALUES (?, ?, ?)", (tid, kind, touched))
    con.execute("UPDATE counter SET n = n + ? WHERE one = 1", (delta,))
    return kind, delta


def work(con: sqlite3.Connection, ledger: Ledger, rng: random.Random, txns: int,
         mode: str, extras: bool, kinds: tuple[str, ...] = KINDS) -> None:
    tid = next_id(con)
    count = int(con.execute("SELECT n FROM counter").fetchone()[0])
    done = 0
    while txns == 0 or done < txns:
        con.execute("BEGIN IMMEDIATE")
        _kind, delta = one_transaction(con, rng, tid, count, kinds)
        con.execute("COMMIT")
        ledger.append(tid)
        count += delta
        tid += 1
        done += 1
        if extras:
            # Operations that change no content but move files around: checkpoints that
            # restart or truncate the WAL, and a rare VACUUM that rewrites and shrinks the db.
            r = rng.random()
            if mode == "WAL" and r < 0.02:
                how = rng.choice(["PASSIVE", "FULL", "RESTART", "TRUNCATE"])
                con.execute(f"PRAGMA wal_checkpoint({how})").fetchall()
            elif r > 0.997:
                con.execute("VACUUM")


def spill(con: sqlite3.Connection, rng: random.Random, marker: Path, rows: int) -> None:
    tid = next_id(con)
    con.execute("BEGIN IMMEDIATE")
    # Update existing rows first (their old pages go to the journal), then grow the database.
    _update(con, rng, tid, 200)
    _insert(con, rng, tid, rows, 3000, 5000)
    con.execute("INSERT INTO txns(id, kind, rows) VALUES (?, 'spill', ?)", (tid, rows))
    _write_marker(marker, f"{tid}\n")
    time.sleep(3600)  # never commits: the test kills the filesystem and this process


def checkpoint(con: sqlite3.Connection, ledger: Ledger, rng: random.Random, marker: Path,
               txns: int, how: str) -> None:
    # Mostly new pages, so that the checkpoint has many pages to copy into the database.
    work(con, ledger, rng, txns, "WAL", extras=False, kinds=("grow",))
    pages = con.execute("PRAGMA page_count").fetchone()[0]
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    _write_marker(marker, f"{pages * page_size}\n")
    con.execute(f"PRAGMA wal_checkpoint({how})").fetchall()
    _write_marker(marker.with_name(marker.name + ".done"), "done\n")
    work(con, ledger, rng, 0, "WAL", extras=False)


def inject_faults() -> None:
    """In the litefs process: with LITEFS_CRASH_FAULT=after-ltx:<n>, SIGKILL it right after
    the n-th commit it captures was recorded as an LTX file, before the write that completes
    the commit (journal delete/truncate/header zeroing, or the WAL commit frame) is performed
    on the backing file. The client sees ENOTCONN: the transaction was never acknowledged."""
    spec = os.environ.get("LITEFS_CRASH_FAULT")
    if not spec:
        return
    what, _, count = spec.partition(":")
    if what != "after-ltx":
        raise ValueError(f"LITEFS_CRASH_FAULT: unknown fault {spec!r}")
    wanted = int(count)
    from litefs_py.store.rollback import RollbackCapture
    from litefs_py.store.wal_capture import WalCapture

    seen = 0

    def after_recorded(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal seen
            recorded = fn(*args, **kwargs)
            if recorded is not None:
                seen += 1
                if seen >= wanted:
                    os.kill(os.getpid(), signal.SIGKILL)
            return recorded
        return wrapper

    for capture in (RollbackCapture, WalCapture):  # commit() returns the Recorded LTX or None
        capture.commit = after_recorded(capture.commit)  # type: ignore[method-assign]


def _write_marker(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["work", "spill", "checkpoint", "vacuum"])
    p.add_argument("--db", required=True)
    p.add_argument("--ledger", required=True, type=Path)
    p.add_argument("--mode", required=True, choices=["DELETE", "TRUNCATE", "PERSIST", "WAL"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--txns", type=int, default=0, help="stop after this many (0: never)")
    p.add_argument("--cache-size", type=int, default=-2000)
    p.add_argument("--autocheckpoint", type=int, default=1000)
    p.add_argument("--extras", action="store_true", help="also checkpoints and VACUUM")
    p.add_argument("--kinds", default=",".join(KINDS), help="work: transaction kinds to use")
    p.add_argument("--marker", type=Path)
    p.add_argument("--rows", type=int, default=400, help="spill: rows in the large transaction")
    p.add_argument("--how", default="TRUNCATE", help="checkpoint: PASSIVE/FULL/RESTART/TRUNCATE")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    ledger = Ledger(args.ledger)
    kinds = tuple(args.kinds.split(","))
    if not set(kinds) <= set(KINDS):
        p.error(f"--kinds: choose from {','.join(KINDS)}")
    con = connect(args.db, args.mode, args.cache_size, args.autocheckpoint)
    if args.command == "work":
        work(con, ledger, rng, args.txns, args.mode, args.extras, kinds)
    elif args.command == "spill":
        assert args.marker is not None
        spill(con, rng, args.marker, args.rows)
    elif args.command == "checkpoint":
        assert args.marker is not None
        checkpoint(con, ledger, rng, args.marker, args.txns, args.how)
    else:
        con.execute("VACUUM")
    con.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
