"""A steady writer for the failover tests, in its own process (fcntl locks are per process).

    python tests/failover/writer.py OUT RATE SECONDS DB NAME=MOUNT [NAME=MOUNT ...]

Every 1/RATE seconds it commits one transaction on whichever mount is the primary now (the
one without `.primary`, LiteFS's contract): `INSERT INTO t(k, v)` with a unique key and
marker, in WAL mode with synchronous=FULL. Every attempt is one JSON line in OUT, flushed at
once (the test may kill things at any moment):

    {"k": 17, "v": "w17-…", "node": "n1", "t0": …, "t1": …, "ok": true, "epoch": 5,
     "txid": 42}
    {"k": 18, "node": "n1", "t0": …, "t1": …, "ok": false, "error": "disk I/O error"}

`epoch`/`txid` are read from `<db>-pos` right after the commit (the writer is the only one).
Times are time.time() of this host, shared with the test. It stops after SECONDS or when
OUT + ".stop" appears.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import time


def is_primary(mount: str, db: str) -> bool:
    """A live mount with the database (`-pos` exists: not the bare directory of a stopped
    node, not a dead mount) and no `.primary` and no `.lag` (a replica that knows no primary
    yet has `.lag`)."""
    return (os.path.exists(os.path.join(mount, db + "-pos"))
            and not os.path.exists(os.path.join(mount, ".primary"))
            and not os.path.exists(os.path.join(mount, ".lag")))


def main() -> None:
    out_path, rate, seconds, db = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), \
        sys.argv[4]
    mounts = dict(arg.split("=", 1) for arg in sys.argv[5:])
    conns: dict[str, sqlite3.Connection] = {}
    out = open(out_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    end = time.monotonic() + seconds
    interval = 1.0 / rate
    k = int(time.time() * 1000) % 10_000_000 * 1000  # unique across restarts of a writer
    next_at = time.monotonic()
    while time.monotonic() < end and not os.path.exists(out_path + ".stop"):
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        next_at = max(next_at + interval, time.monotonic())
        node = next((n for n, m in mounts.items() if is_primary(m, db)), None)
        if node is None:
            continue
        path = os.path.join(mounts[node], db)
        k += 1
        v = f"w{k}-{os.urandom(4).hex()}"
        t0 = time.time()
        try:
            con = conns.get(node)
            if con is None:
                con = sqlite3.connect(path, isolation_level=None, timeout=2)
                con.execute("PRAGMA synchronous=FULL")
                conns[node] = con
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT INTO t(k, v) VALUES (?, ?)", (k, v))
            con.execute("COMMIT")
            t1 = time.time()
            rec: dict[str, object] = {"k": k, "v": v, "node": node, "t0": t0, "t1": t1,
                                      "ok": True}
            try:
                with open(path + "-pos") as f:
                    text = f.read()
                fields = text.strip().split("/")
                rec["txid"] = int(fields[0], 16)
                rec["epoch"] = int(fields[2], 16) if len(fields) > 2 else 0
            except (OSError, ValueError, IndexError) as exc:
                rec["pos_error"] = repr(exc)
        except sqlite3.Error as exc:
            rec = {"k": k, "v": v, "node": node, "t0": t0, "t1": time.time(), "ok": False,
                   "error": str(exc)}
            stale = conns.pop(node, None)
            if stale is not None:
                with contextlib.suppress(sqlite3.Error):
                    stale.close()
        out.write(json.dumps(rec) + "\n")
    out.close()


if __name__ == "__main__":
    main()
