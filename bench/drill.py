"""Does the restore drill slow commits? Drill off and drill on, side by side in one run.

    .venv/bin/python bench/drill.py            # about 4 minutes
    .venv/bin/python bench/drill.py --quick    # about a minute
    .venv/bin/python bench/drill.py --rounds 6 --seconds 30 --size-mb 128

One moto_server on 127.0.0.1 (tests/s3_server.py). A ~64 MiB database (the `orders` table of
bench/common.py; 16 MiB with --quick) is built once natively. Each round gets a fresh bucket
and data directory holding a copy of it; `litefs mount` records it as a snapshot and uploads
it, and the round waits until the bucket has it. Then a client process (its own process,
`bench/drill.py _client SPEC`) commits single-row INSERTs into a second table as fast as it
can for `--seconds` (WAL, synchronous=NORMAL), measuring each commit. Modes:

- off: no `validation-interval`;
- on: `validation-interval: 1s` — the drill rebuilds the whole database from the bucket
  (paced at drill.READ_RATE) one second after the previous rebuild ended, so it runs during
  most of the measurement; the round waits for the first drill to start before measuring.

Rounds alternate off, on, on, off, ... so noise on a shared machine hits both alike. Reported
per mode: commits per second (median over rounds, min-max), commit latency p50/p99 (over all
commits of the mode), the mount's CPU seconds per measured second, and for `on` the drill
runs that finished during measurement and what they read. The ratio is on/off of the median
commit rate: docs/reliability.md promises it stays >= 0.90.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    REPO,
    add_run_options,
    fill_orders,
    lazy_unmount,
    log,
    machine_line,
    percentile,
    proc_cpu_seconds,
    run_client_process,
    run_in_workdir,
    run_json_client,
    start_fuse_server,
    terminate,
    use_litefs_src,
)

sys.path.insert(0, str(REPO))
from tests.s3_server import (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    MotoServer,
    create_bucket,
)

HERE = Path(__file__).resolve()
DB_NAME = "app.db"
PAGE_SIZE = 4096
LITEFS_SRC = REPO


# ---- the client (its own process) ---------------------------------------------------------


def run_workload(spec: dict[str, Any]) -> dict[str, Any]:
    con = sqlite3.connect(spec["path"], isolation_level=None, timeout=30)
    con.execute("PRAGMA journal_mode=WAL").fetchall()
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("CREATE TABLE IF NOT EXISTS bench(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    latencies: list[float] = []
    value = "x" * 100
    end = time.monotonic() + spec["seconds"]
    t0 = time.monotonic()
    while (now := time.monotonic()) < end:
        con.execute("INSERT INTO bench(v) VALUES (?)", (value,))
        latencies.append(time.monotonic() - now)
    seconds = time.monotonic() - t0
    con.close()
    return {"commits": len(latencies), "seconds": seconds, "latencies": latencies}


def run_client(path: Path, seconds: float) -> dict[str, Any]:
    return run_client_process(HERE, {"path": str(path), "seconds": seconds}, seconds + 120)


# ---- one round ------------------------------------------------------------------------------


def status(data_dir: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads((data_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return doc


def replica_of(data_dir: Path) -> dict[str, Any]:
    db = status(data_dir).get("databases", {}).get(DB_NAME, {})
    rep: dict[str, Any] = db.get("replica") or {}
    return rep


def wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def run_round(root: Path, endpoint: str, source: Path, drill: bool,
              seconds: float) -> dict[str, Any]:
    root.mkdir(parents=True)
    bucket = create_bucket(endpoint)
    data_dir, mount_dir = root / "data", root / "mnt"
    dest = data_dir / "dbs" / DB_NAME / "database"
    dest.parent.mkdir(parents=True)
    shutil.copyfile(source, dest)
    mount_dir.mkdir()
    replica = f"    replica:\n      url: \"s3://{bucket}/{DB_NAME}?endpoint={endpoint}\"\n"
    if drill:
        replica += "      validation-interval: 1s\n"
    cfg = root / "litefs.yml"
    cfg.write_text(f"dbs:\n  - name: {DB_NAME}\n{replica}log:\n  level: info\n")
    env = {k: v for k, v in os.environ.items()
           if k != "AWS_CA_BUNDLE" and not k.startswith(("LITEFS_", "LITESTREAM_"))}
    env.update(LITEFS_ACCESS_KEY_ID=ACCESS_KEY_ID, LITEFS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
               PYTHONPATH=str(LITEFS_SRC))
    log_path = root / "litefs.log"
    proc = start_fuse_server(
        "litefs mount", [sys.executable, "-m", "litefs_py", "mount", "--mount-dir",
                         str(mount_dir), "--data-dir", str(data_dir), "--config", str(cfg)],
        mount_dir, log_path, cwd=LITEFS_SRC, env=env, timeout=300)
    try:
        db = mount_dir / DB_NAME
        # Let the snapshot of the placed database reach the bucket (and, with the drill, the
        # first drill start) before measuring.
        wait(lambda: (db.exists() and replica_of(data_dir).get("txid")
                      == status(data_dir)["databases"][DB_NAME]["txid"]
                      and replica_of(data_dir).get("spool_files") == 0), 300,
             "the database in the bucket")
        if drill:
            wait(lambda: (replica_of(data_dir).get("validation") or {}).get("runs", 0) >= 1
                 or (replica_of(data_dir).get("validation") or {}).get("running"), 120,
                 "the first drill")
        before = replica_of(data_dir).get("validation") or {}
        cpu0, t0 = proc_cpu_seconds(proc.pid), time.monotonic()
        result = run_client(db, seconds)
        cpu = (proc_cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        after = replica_of(data_dir).get("validation") or {}
        failures = after.get("failures", 0)
        if failures:
            raise RuntimeError(f"the drill failed: {after.get('last_failure')}")
        lat = sorted(result["latencies"])
        return {
            "mode": "on" if drill else "off",
            "rate": result["commits"] / result["seconds"],
            "latencies": lat,
            "cpu": cpu,
            "drill_runs": after.get("runs", 0) - before.get("runs", 0),
            "drill_bytes": after.get("last_bytes_read", 0),
            "drill_seconds": after.get("last_run_seconds"),
        }
    finally:
        terminate(proc, 60)
        lazy_unmount(mount_dir)


# ---- main -----------------------------------------------------------------------------------


def main() -> int:
    global LITEFS_SRC
    if len(sys.argv) > 2 and sys.argv[1] == "_client":
        return run_json_client(run_workload, sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 MiB, 2 rounds of 8 s")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (even; default 4)")
    ap.add_argument("--seconds", type=float, default=None, help="measured seconds per round")
    ap.add_argument("--size-mb", type=int, default=None, help="database size (default 64)")
    add_run_options(ap, litefs_src="run litefs from this source tree")
    args = ap.parse_args()
    if args.litefs_src:
        LITEFS_SRC = use_litefs_src(ap, args.litefs_src)
    rounds = args.rounds or (2 if args.quick else 4)
    seconds = args.seconds or (8.0 if args.quick else 20.0)
    size_mb = args.size_mb or (16 if args.quick else 64)
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="litefs-drill-bench-", dir=args.tmp))
    moto = MotoServer()
    results: list[dict[str, Any]] = []

    def run() -> None:
        moto.start()
        source = root / "source.db"
        con = sqlite3.connect(source, isolation_level=None)
        con.execute(f"PRAGMA page_size={PAGE_SIZE}")
        con.execute("PRAGMA journal_mode=WAL").fetchall()
        fill_orders(con, size_mb << 20, PAGE_SIZE)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        log(f"database: {source.stat().st_size >> 20} MiB")
        order = [(i // 2 + i) % 2 == 1 for i in range(rounds)]  # off, on, on, off, ...
        for i, drill in enumerate(order):
            log(f"round {i + 1}/{rounds}: drill {'on' if drill else 'off'}")
            results.append(run_round(root / f"round{i}", moto.endpoint, source, drill, seconds))
        report(results, size_mb, seconds, started)

    run_in_workdir(root, args.keep, run, moto.stop, mounts="round*/mnt")
    return 0


def report(results: list[dict[str, Any]], size_mb: int, seconds: float,
           started: float) -> None:
    def mode(m: str) -> list[dict[str, Any]]:
        return [r for r in results if r["mode"] == m]

    print(f"restore drill overhead: {size_mb} MiB database, {seconds:g} s of single-row "
          f"INSERT commits per round (WAL, synchronous=NORMAL), {len(results)} rounds")
    print(machine_line(started))
    print(f"{'mode':<5} {'commits/s (median, min-max)':<30} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'mount CPU/s':>11} {'drills':>6}")
    medians = {}
    for m in ("off", "on"):
        rs = mode(m)
        rates = [r["rate"] for r in rs]
        lat = sorted(x for r in rs for x in r["latencies"])
        medians[m] = statistics.median(rates)
        drills = sum(r["drill_runs"] for r in rs)
        print(f"{m:<5} {medians[m]:>8.0f} ({min(rates):.0f}-{max(rates):.0f}){'':<14} "
              f"{percentile(lat, 50) * 1000:>7.2f} {percentile(lat, 99) * 1000:>7.2f} "
              f"{statistics.median(r['cpu'] for r in rs):>11.2f} {drills:>6}")
    on = mode("on")
    if on:
        last = on[-1]
        print(f"drill: {sum(r['drill_runs'] for r in on)} full restores finished during the "
              f"measured seconds; the last read {last['drill_bytes'] / 2**20:.1f} MiB in "
              f"{last['drill_seconds'] or 0:.1f} s")
    print(f"ratio on/off (commits per second): {medians['on'] / medians['off']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
