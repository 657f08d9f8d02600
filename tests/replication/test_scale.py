"""#14 item 6: scale and load on one mount that backs up to S3 (moto_server).

- 16 writer and 32 reader processes on one database, in DELETE and in WAL mode: no error but
  SQLITE_BUSY (and that only inside busy_timeout), the bank invariant and integrity hold, the
  LTX chain in the bucket replays to the final state (restore == primary), and the mount's
  peak RSS (VmHWM) stays under 100 MiB.
- 100 databases on one mount (LITEFS_SCALE_DBS=100; CI runs 30), all replicated; after a
  cold start (empty data dir) every one is restored with its content.

The CI versions are short (LITEFS_LOAD_SECONDS, default 8 s per journal mode); longer runs
are opt-in: LITEFS_LOAD_SECONDS=300 pytest tests/replication/test_scale.py.
Figures are printed as one JSON line per test (docs/reliability-http.md quotes them).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.mount.harness as mount_harness
from tests.mount.harness import LitefsMount
from tests.replica.workloads import TOTAL, Procs
from tests.replication.conftest import Bucket, Rig
from tests.replication.helpers import litefs_restore, wait_until, write_config

LOAD_SECONDS = float(os.environ.get("LITEFS_LOAD_SECONDS", "8"))
WRITERS, READERS = 16, 32
SCALE_DBS = int(os.environ.get("LITEFS_SCALE_DBS", "30"))  # 100: opt-in (minutes here)
RSS_LIMIT = 100 * 1024 * 1024
# 48 processes on two cores contend hard for one database: a wait is bounded by this, and
# running out of it (SQLITE_BUSY reaching the app) counts as a failure.
BUSY_MS = "60000"

BANK_SCHEMA = [
    "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INT NOT NULL)",
    "CREATE TABLE history(id INTEGER PRIMARY KEY, v INT, note TEXT)",
    "CREATE TABLE meta(v INT NOT NULL)",
    "INSERT INTO meta VALUES (0)",
    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100) "
    "INSERT INTO accounts SELECT i, 1000 FROM c",
]


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.close()


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def mount_pid(m: LitefsMount) -> int:
    assert m.proc is not None and m.proc.poll() is None
    return m.proc.pid


def status_dbs(m: LitefsMount) -> dict[str, Any]:
    try:
        doc = json.loads((m.data_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    if m.proc is None or doc.get("pid") != m.proc.pid:
        return {}
    dbs: dict[str, Any] = doc.get("databases", {})
    return dbs


def uploaded(m: LitefsMount, names: list[str]) -> bool:
    """Every database's newest TXID is in the bucket (the mount's own status)."""
    dbs = status_dbs(m)
    return all(n in dbs and dbs[n].get("replica", {}).get("txid") == dbs[n]["txid"]
               for n in names)


def digest(path: Path | str) -> tuple[Any, ...]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        v, total = con.execute("SELECT v, (SELECT sum(balance) FROM accounts) FROM meta"
                               ).fetchone()
        history = con.execute("SELECT count(*), total(length(note)), max(id) FROM history"
                              ).fetchone()
        balances = con.execute("SELECT group_concat(balance) FROM accounts").fetchone()
        check = con.execute("PRAGMA integrity_check").fetchone()[0]
        return (v, total, *history, balances[0], check)
    finally:
        con.close()


@pytest.mark.time_limit(240)
@pytest.mark.parametrize("mode", ["DELETE", "WAL"])
def test_16_writers_32_readers(rig: Rig, bucket: Bucket, procs: Procs, mode: str) -> None:
    cfg = write_config(rig.tmp / "litefs.yml", bucket.url("load"))
    m = rig.mount(cfg)
    m.start()
    pid = mount_pid(m)
    db = m.db("bank.db")
    setup = procs.conn(db)
    assert setup.exec(f"PRAGMA journal_mode={mode}") == [[mode.lower()]]
    setup.exec("BEGIN", *BANK_SCHEMA, "COMMIT")
    setup.close()
    rss_start = vm_kib(pid, "VmRSS")

    started = time.monotonic()
    writers = [procs.spawn("bank-writer", db, str(LOAD_SECONDS), "3", "0.001", BUSY_MS)
               for _ in range(WRITERS)]
    readers = [procs.spawn("bank-reader", db, str(LOAD_SECONDS), BUSY_MS)
               for _ in range(READERS)]
    written = [w.recv(timeout=LOAD_SECONDS + 120) for w in writers]
    seen = [r.recv(timeout=LOAD_SECONDS + 120) for r in readers]
    elapsed = time.monotonic() - started
    final = digest(db)
    wait_until(lambda: uploaded(m, ["bank.db"]), 120)
    peak = vm_kib(pid, "VmHWM") * 1024
    commits = sum(w["commits"] for w in written)
    pos = m.pos("bank.db")

    # The LTX chain in the bucket replays to exactly the final state.
    out = rig.tmp / "restored.db"
    done = litefs_restore(bucket.url("load/bank.db"), out)
    assert done.returncode == 0, done.stderr
    restored = digest(out)
    summary = {
        "mode": mode, "seconds": round(elapsed, 1), "commits": commits,
        "txn_per_s": round(commits / elapsed, 1), "txid": pos[0],
        "writer_busy": sum(w["busy"] for w in written),
        "reader_iterations": sum(r["iterations"] for r in seen),
        "reader_busy": sum(r["busy"] for r in seen),
        "rss_start_mib": round(rss_start / 1024, 1), "vmhwm_mib": round(peak / 2**20, 1),
    }
    print(json.dumps(summary))
    for w in written:  # every SQLITE_BUSY was waited out inside busy_timeout
        assert w["errors"] == [] and w["busy"] == 0, (w, summary)
    for r in seen:
        assert r["errors"] == [] and r["bad"] == [] and r["busy"] == 0, (r, summary)
        assert r["iterations"] > 0, summary
    assert commits > WRITERS, summary
    assert final[0] == final[2] == commits and final[1] == TOTAL and final[-1] == "ok", final
    assert restored == final, (restored, final)
    assert peak < RSS_LIMIT, summary
    assert "Traceback" not in m.log()


@pytest.mark.time_limit(1200)
def test_100_databases_replicate_and_restore_after_a_cold_start(
        rig: Rig, bucket: Bucket, procs: Procs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mount_harness, "MOUNT_TIMEOUT", 240.0)  # it restores 100 first
    n = SCALE_DBS
    cfg = write_config(rig.tmp / "litefs.yml", bucket.url("many"))
    m = rig.mount(cfg)
    m.start()
    names = [f"db{i:03d}.db" for i in range(n)]
    conn = procs.conn(str(m.mount_dir / "x.db"))  # one process creates them all
    conn.close()
    started = time.monotonic()
    for i, name in enumerate(names):
        con = sqlite3.connect(m.db(name), isolation_level=None)
        if i % 2:
            con.execute("PRAGMA journal_mode=wal")
        con.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        con.executemany("INSERT INTO t (v) VALUES (?)", [(f"{name}-{j}",) for j in range(i + 1)])
        con.close()
    created = time.monotonic() - started
    want = {name: m.pos(name) for name in names}
    wait_until(lambda: uploaded(m, names), 180)
    replicated = time.monotonic() - started
    peak = vm_kib(mount_pid(m), "VmHWM") * 1024
    m.stop()

    shutil.rmtree(m.data_dir)  # a cold start: the bucket is all there is
    started = time.monotonic()
    m.start()
    cold = time.monotonic() - started
    for i, name in enumerate(names):
        assert m.pos(name) == want[name], name
        con = sqlite3.connect(f"file:{m.db(name)}?mode=ro", uri=True)
        got = con.execute("SELECT count(*), (SELECT v FROM t ORDER BY k DESC LIMIT 1) FROM t"
                          ).fetchone()
        con.close()
        assert got == (i + 1, f"{name}-{i}"), (name, got)
    summary = {"databases": n, "create_s": round(created, 1),
               "all_in_bucket_s": round(replicated, 1), "cold_start_restore_s": round(cold, 1),
               "vmhwm_mib": round(peak / 2**20, 1)}
    print(json.dumps(summary))
    assert peak < RSS_LIMIT, summary
