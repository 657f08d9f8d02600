"""Read replicas: a primary `litefs mount` streaming LTX over HTTP to a replica `litefs mount`.

    .venv/bin/python bench/replica.py                   # full run (about 5 minutes)
    .venv/bin/python bench/replica.py --quick           # smoke test, under a minute
    .venv/bin/python bench/replica.py --rev HEAD        # litefs_py/ as committed (git archive)
    .venv/bin/python bench/replica.py --py-spy DIR      # also profile the replica (see below)
    .venv/bin/python bench/replica.py --dump lat.json   # every commit and first-seen time, raw
    .venv/bin/python bench/replica.py --litefs-src DIR  # litefs from another source tree

Both nodes run on this host, on loopback: the primary (`lease: {type: static, candidate:
true}`, `http.addr: :PORT`) and a replica (`candidate: false`, `advertise-url:
http://127.0.0.1:PORT`). Every SQLite workload runs in its own client process
(`bench/replica.py _writer|_observer|_reader SPEC`), never in a process that serves FUSE.
litefs_py/ is copied into the work directory at start (or taken from `--rev` / `--litefs-src`)
and run from there (PYTHONPATH), so a source tree edited during the run does not change the
code being measured halfway.

1. Commit -> visible latency. A writer process commits single-row INSERTs (~100-byte text) on
   the primary at a fixed rate (50/s) and in a burst (as fast as it can), in WAL +
   synchronous=NORMAL and in DELETE mode (synchronous=FULL, SQLite's default), each on a fresh
   database; it records time.monotonic() right after each COMMIT returns (CLOCK_MONOTONIC is
   system-wide) and the TXID from the primary's `<db>-pos`. An observer process on the replica
   polls every 1 ms, with one persistent connection, `SELECT max(id)` (what an application
   sees: the replica applied the pages, released its reader fence, and SQLite noticed the
   change) and, in a second run of each case, also the replica's `<db>-pos` (what the replica
   claims: the TXID is set after the apply). SQL polls never reach the replica process; every
   `-pos` read is a FUSE request it serves, so the SQL-only runs are the headline numbers.
   Each poll records the time *after* it returned, so a latency includes up to one poll
   period (~1.2-3 ms measured). Latency of commit k = the first poll that saw id >= k (SQL)
   or TXID >= its TXID (pos), minus its commit time. The observer starts (and polls) before
   the writer begins. CPU of both nodes per commit from /proc/PID/stat.

2. Point-read throughput. A 100,000-row table (~20 MiB, WAL) is written through the primary,
   and the same schema built natively in a plain file. Two writer processes run throughout,
   each UPDATEing one random row per transaction at 100/s: one on the primary (so the replica
   applies 100 transactions/s), one on the native file. A reader process (one connection,
   warmed by a full scan) then does random primary-key lookups for a fixed time on the
   replica, the primary mount and the native file, in rotating order; ops/s, median over
   runs; ratios per run. Then once more on replica and primary with the writers stopped (what
   applying costs the readers).

3. Apply throughput. The replica is stopped (SIGTERM), the primary commits N pages, the
   replica is started again and catches up: (a) big transactions (~1,000 pages each, rows of
   ~3,000 chars of text), (b) many small ones (single-row INSERTs, as fast as the writer
   can), several runs (the replica's local log of each database grows between them).
   Time = from the replica's "streaming from the primary" log line (the hello frame arrived)
   to the bench seeing the replica's `-pos` equal to the primary's (polled every 5 ms);
   transactions from the TXIDs, pages written and applies from the replica's status.json
   (`replica_of.applied_pages`, `applied_files`). Then steady commits on the
   small-transaction database again, whose replica-local log is now long. Then the snapshot
   path: a fresh primary over a natively built ~100 MiB database (compressible text), and a
   fresh, empty replica, time from its hello to its `-pos` equal to the primary's, MB/s of
   database; meanwhile a probe thread reads the primary's `-pos` every 5 ms and reports the
   longest wait (the primary builds the snapshot in its event loop).

RSS (VmRSS, VmHWM) of the replica processes is read from /proc/PID/status; CPU time of both
nodes from /proc/PID/stat. Every replica database is checked at the end (row count and max id
equal to the primary's, `PRAGMA quick_check`), and both logs are scanned for errors.

--py-spy DIR: after the timed phases, profile the replica process with py-spy during one
more WAL burst and while the primary writes big transactions (flame graphs, collapsed stacks
and a summary per function).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import datetime
import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (  # bench/common.py (the script's directory)
    LITEFS_SRC_HELP,
    REPO,
    add_run_options,
    free_port,
    git_describe,
    insert_paced,
    lazy_unmount,
    machine_line,
    median,
    percentile,
    proc_cpu_seconds,
    proc_status,
    py_spy_setup,
    run_in_workdir,
    run_json_client,
    start_fuse_server,
    summarize_collapsed,
    terminate,
    use_litefs_src,
)
from common import log as _log

HERE = Path(__file__).resolve()
MiB = 2**20
PAGE_SIZE = 4096
POLL_INTERVAL = 0.001  # the observer's poll period (plus the poll itself)
ROW_CHARS = 100
READ_ROW_CHARS = 180
BIG_ROW_CHARS = 3000  # one row per 4 KiB page

# Where `python -m litefs_py` runs from: a copy of litefs_py/ in the work directory unless
# --litefs-src is given.
LITEFS_SRC = REPO


@dataclass(frozen=True)
class Scale:
    name: str
    lat_rounds: int
    lat_txns: int  # steady commits per round and journal mode
    lat_rate: float
    burst_txns: int
    read_rows: int
    read_runs: int
    read_seconds: float
    write_rate: float  # background transactions/s during the reads
    big_txns: int
    big_pages: int  # rows (≈ pages) per big transaction
    small_txns: int
    catchup_runs: int
    snap_bytes: int
    snap_runs: int


FULL = Scale("full", 2, 500, 50.0, 1000, 100_000, 3, 5.0, 100.0, 10, 1000, 3000, 3,
             100 * MiB, 3)
QUICK = Scale("quick", 1, 100, 50.0, 300, 20_000, 1, 1.5, 100.0, 3, 500, 500, 1,
              16 * MiB, 1)


def lorem(seed: int = 7, chars: int = 8000) -> str:
    """Text that LZ4 shrinks to roughly half, like real rows (words from a small vocabulary)."""
    rnd = random.Random(seed)
    words = ["".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randrange(2, 10)))
             for _ in range(400)]
    out: list[str] = []
    n = 0
    while n < chars:
        w = rnd.choice(words)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)[:chars]


LOREM = lorem()


# =============================================================================================
# Clients: one workload per process; they print JSON lines (the last one is the result).
# =============================================================================================

def connect(path: str, journal: str | None = None, sync: str | None = None,
            timeout: float = 30) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None, timeout=timeout)
    if journal:
        mode = con.execute(f"PRAGMA journal_mode={journal}").fetchone()[0]
        if mode.lower() != journal:
            raise RuntimeError(f"journal_mode is {mode}, wanted {journal}")
    if sync:
        con.execute(f"PRAGMA synchronous={sync}")
    return con


def read_pos_fd(fd: int) -> int:
    return int(os.pread(fd, 64, 0).split(b"/")[0], 16)


_stop = False


def _on_term(_signum: int, _frame: object) -> None:
    global _stop
    _stop = True


def writer_main(spec: dict[str, Any]) -> dict[str, Any]:
    """op "insert": n single-row INSERTs (at `rate`/s, or as fast as possible), recording
    (id, commit time, TXID) each; op "update": one random-row UPDATE per transaction at
    `rate`/s until SIGTERM or `seconds`; op "bulk": `txns` transactions of `rows` big rows."""
    signal.signal(signal.SIGTERM, _on_term)
    con = connect(spec["path"], spec.get("journal"), spec.get("sync"))
    op = spec["op"]
    rnd = random.Random(spec.get("seed", 1))
    if op == "bulk":
        t0 = time.monotonic()
        for _ in range(spec["txns"]):
            con.execute("WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c "
                        "WHERE i < ?) INSERT INTO big(v) SELECT substr(?, 1 + abs(random()) "
                        "% 4000, ?) FROM c", (spec["rows"], LOREM, BIG_ROW_CHARS))
        return {"seconds": time.monotonic() - t0, "txns": spec["txns"]}
    if op == "update":
        max_id, rate, seconds = spec["max_id"], spec["rate"], spec.get("seconds", 3600)
        t0 = time.monotonic()
        worst = 0.0
        i = 0
        while not _stop and time.monotonic() - t0 < seconds:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            s = time.monotonic()
            con.execute("UPDATE t SET v = substr(?, 1 + abs(random()) % 4000, ?) WHERE id = ?",
                        (LOREM, READ_ROW_CHARS, rnd.randrange(1, max_id + 1)))
            worst = max(worst, time.monotonic() - s)
            i += 1
        elapsed = time.monotonic() - t0
        return {"txns": i, "seconds": elapsed, "rate": i / elapsed if elapsed else 0.0,
                "worst_commit_ms": worst * 1000}
    # op == "insert"
    values = [rnd.randbytes(ROW_CHARS // 2).hex() for _ in range(spec["n"])]
    pos_fd = os.open(spec["pos"], os.O_RDONLY) if spec.get("pos") else None
    t0 = time.monotonic()
    rows = insert_paced(con, values, spec.get("rate"),
                        None if pos_fd is None else lambda: read_pos_fd(pos_fd))
    seconds = time.monotonic() - t0
    con.close()
    return {"rows": rows, "seconds": seconds}


def observer_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Poll the replica every `interval` s until max(id) >= its first value + `new_rows` and
    the -pos TXID >= its first value + `new_txns` (or for `timeout` s). Prints {"ready": TXID}
    first."""
    con = connect(spec["path"], timeout=10)
    fd = os.open(spec["pos"], os.O_RDONLY)
    q = "SELECT max(id) FROM t"
    base = read_pos_fd(fd)
    last_id = con.execute(q).fetchone()[0] or 0
    print(json.dumps({"ready": base}), flush=True)
    target_id, target_txid = last_id + spec["new_rows"], base + spec["new_txns"]
    interval, with_pos = spec.get("interval", POLL_INTERVAL), spec.get("pos_poll", True)
    sql: list[tuple[float, int]] = []
    pos: list[tuple[float, int]] = []
    last_txid = base
    errors = 0
    polls = 0
    t0 = time.monotonic()
    deadline = t0 + spec["timeout"]
    while True:
        try:
            mid = con.execute(q).fetchone()[0] or 0
        except sqlite3.OperationalError:
            errors += 1
            mid = last_id
        t1 = time.monotonic()
        if mid != last_id:
            sql.append((t1, mid))
            last_id = mid
        txid = last_txid
        if with_pos or mid >= target_id:
            txid = read_pos_fd(fd)
            t2 = time.monotonic()
            if txid != last_txid:
                pos.append((t2, txid))
                last_txid = txid
        polls += 1
        if (mid >= target_id and txid >= target_txid) or t1 > deadline:
            break
        time.sleep(interval)
    elapsed = time.monotonic() - t0
    return {"sql": sql, "pos": pos, "polls": polls, "seconds": elapsed, "errors": errors,
            "base_txid": base, "timed_out": t1 > deadline}


def reader_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm with a full scan, then random primary-key lookups for `seconds`."""
    con = connect(spec["path"], timeout=30)
    con.execute("SELECT sum(length(v)) FROM t").fetchone()
    rnd = random.Random(spec.get("seed", 1))
    max_id = spec["max_id"]
    ids = [rnd.randrange(1, max_id + 1) for _ in range(200_000)]
    q = "SELECT v FROM t WHERE id = ?"
    ops = errors = misses = slow = 0
    slow_seconds = worst = 0.0
    clock = time.perf_counter
    end = clock() + spec["seconds"]
    n = len(ids)
    t0 = clock()
    while True:
        for _ in range(64):
            s = clock()
            try:
                if con.execute(q, (ids[ops % n],)).fetchone() is None:
                    misses += 1
            except sqlite3.OperationalError:
                errors += 1
            d = clock() - s
            if d > 0.001:  # a lookup that waited (for the apply fence, or for the CPU)
                slow += 1
                slow_seconds += d
                worst = max(worst, d)
            ops += 1
        if clock() >= end:
            break
    elapsed = clock() - t0
    return {"ops": ops, "seconds": elapsed, "ops_per_s": ops / elapsed, "errors": errors,
            "misses": misses, "slow": slow, "slow_share": slow_seconds / elapsed,
            "worst_ms": worst * 1000}


def client_main(kind: str, arg: str) -> int:
    fn = {"_writer": writer_main, "_observer": observer_main, "_reader": reader_main}[kind]
    return run_json_client(fn, arg)


def client_cmd(kind: str, spec: dict[str, Any]) -> list[str]:
    return [sys.executable, str(HERE), kind, json.dumps(spec)]


def _result(kind: str, out: str, err: str, code: int | None) -> dict[str, Any]:
    lines = out.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{kind} client failed (exit {code}):\n{err[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    if "error" in result:
        raise RuntimeError(f"{kind} client: {result['error']}\n{err[-2000:]}")
    return result


def run_client(kind: str, spec: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    p = subprocess.run(client_cmd(kind, spec), capture_output=True, text=True,
                       timeout=timeout, cwd=REPO)
    return _result(kind, p.stdout, p.stderr, p.returncode)


class Background:
    """A client process running while others are measured; `finish` stops it (SIGTERM)."""

    def __init__(self, kind: str, spec: dict[str, Any]) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(client_cmd(kind, spec), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=REPO)

    def readline(self, timeout: float = 60) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"{self.kind} client said nothing for {timeout:g} s")
        line = self.proc.stdout.readline()
        if not line:
            _out, err = self.proc.communicate(timeout=10)
            raise RuntimeError(f"{self.kind} client exited ({self.proc.returncode}):\n"
                               f"{err[-3000:]}")
        return line

    def finish(self, terminate: bool = False, timeout: float = 600) -> dict[str, Any]:
        if terminate and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=timeout)
        return _result(self.kind, out, err, self.proc.returncode)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# =============================================================================================
# The litefs nodes.
# =============================================================================================

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


class Node:
    """One `litefs mount` process (primary or replica) with its config."""

    def __init__(self, root: Path, name: str, *, candidate: bool, port: int,
                 primary_url: str) -> None:
        self.name = name
        self.mount_dir = root / name / "mnt"
        self.data_dir = root / name / "data"
        self.log_path = root / f"{name}.log"
        self.config = root / f"{name}.yml"
        doc = {"http": {"addr": f":{port}"},
               "lease": {"type": "static", "candidate": candidate,
                         "advertise-url": primary_url},
               "log": {"level": "info"}}
        self.config.write_text(json.dumps(doc, indent=2) + "\n")  # JSON is YAML
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_wall = 0.0
        self.start_seconds = 0.0

    def start(self, timeout: float = 300) -> None:
        self.mount_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.touch()
        self.log_offset = self.log_path.stat().st_size
        cmd = [sys.executable, "-m", "litefs_py", "mount", "--mount-dir", str(self.mount_dir),
               "--data-dir", str(self.data_dir), "--config", str(self.config)]
        t0 = time.monotonic()
        self.started_wall = time.time()
        self.proc = start_fuse_server(f"{self.name}: litefs mount", cmd, self.mount_dir,
                                      self.log_path, cwd=LITEFS_SRC, timeout=timeout,
                                      env={**os.environ, "PYTHONPATH": str(LITEFS_SRC)})
        self.start_seconds = time.monotonic() - t0

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        try:
            terminate(proc, 60)
        finally:
            lazy_unmount(self.mount_dir)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def db(self, name: str) -> str:
        return str(self.mount_dir / name)

    def pos(self, name: str) -> tuple[int, int] | None:
        try:
            txid, checksum = (self.mount_dir / f"{name}-pos").read_text().strip().split("/")
            return int(txid, 16), int(checksum, 16)
        except (OSError, ValueError):
            return None

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.data_dir / "status.json").read_text())
        return doc

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 3000) -> str:
        return self.log_text()[-n:]

    def log_time(self, needle: str) -> float | None:
        """Wall time (epoch s) of the first line containing `needle` since the last start."""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_offset)
            for raw in f:
                line = raw.decode(errors="replace")
                if needle in line:
                    m = _LOG_TIME.match(line)
                    if m:
                        dt = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
                        return dt.timestamp()
        return None

    def problems(self) -> list[str]:
        out = []
        for line in self.log_text().splitlines():
            if " ERROR " in line or "Traceback" in line or " CRITICAL " in line:
                out.append(f"{self.name}: {line.strip()[:300]}")
        return out


def wait_until(pred: Any, timeout: float, what: str, interval: float = 0.005) -> float:
    """Poll `pred` until true; returns the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# =============================================================================================
# The benchmark.
# =============================================================================================

@dataclass
class LatencyRun:
    mode: str  # "wal" or "delete"
    kind: str  # "steady" or "burst"
    pos_poll: bool  # the observer also polled -pos
    sql_ms: list[float]
    pos_ms: list[float]
    unseen: int
    commits_per_s: float
    poll_ms: float
    reader_errors: int
    replica_cpu_ms_per_txn: float
    primary_cpu_ms_per_txn: float


@dataclass
class Results:
    latency: list[LatencyRun] = field(default_factory=list)
    reads: dict[str, list[float]] = field(default_factory=dict)  # target -> ops/s per run
    read_ratios: list[float] = field(default_factory=list)
    read_native_ratios: list[float] = field(default_factory=list)
    idle_reads: dict[str, list[float]] = field(default_factory=dict)
    read_errors: dict[str, int] = field(default_factory=dict)
    read_slow: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    read_cpu: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    bg_writers: dict[str, dict[str, Any]] = field(default_factory=dict)
    catchup: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    snapshots: list[dict[str, float]] = field(default_factory=list)
    long_log: list[tuple[int, LatencyRun]] = field(default_factory=list)
    rss: dict[str, tuple[int, int]] = field(default_factory=dict)  # label -> (RSS, HWM)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace, scale: Scale, root: Path) -> None:
        self.args = args
        self.scale = scale
        self.root = root
        self.r = Results()
        self.nodes: list[Node] = []
        self.bg: list[Background] = []
        self.dump: dict[str, Any] = {"latency": []}

    # ---- cluster ---------------------------------------------------------------------------

    def cluster(self, prefix: str) -> tuple[Node, Node, int]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        primary = Node(self.root, f"{prefix}primary", candidate=True, port=port,
                       primary_url=url)
        replica = Node(self.root, f"{prefix}replica", candidate=False, port=free_port(),
                       primary_url=url)
        self.nodes += [primary, replica]
        return primary, replica, port

    def record_rss(self, label: str, node: Node) -> None:
        if node.proc is not None:
            self.r.rss[label] = (proc_status(node.pid, "VmRSS"), proc_status(node.pid, "VmHWM"))

    def wait_same(self, primary: Node, replica: Node, name: str, timeout: float = 120) -> float:
        want = primary.pos(name)
        if want is None:
            raise RuntimeError(f"{name} has no position on the primary")
        try:
            return wait_until(lambda: replica.pos(name) == want, timeout,
                              f"{name} on the replica to reach {want}")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc} (it is at {replica.pos(name)})\n--- replica log ---\n"
                               f"{replica.log_tail()}") from None

    # ---- phase 1: latency ------------------------------------------------------------------

    def phase_latency(self, primary: Node, replica: Node) -> None:
        s = self.scale
        # Each case twice: the observer polling SQL only, and SQL plus -pos (a -pos read is a
        # FUSE request the replica serves; SQL polls never reach it). The order alternates.
        cases = [(rnd, mode, kind, pos_poll)
                 for rnd in range(s.lat_rounds) for mode in ("wal", "delete")
                 for kind in ("steady", "burst")
                 for pos_poll in ((False, True) if (rnd + (kind == "burst")) % 2 == 0
                                  else (True, False))]
        for rnd, mode, kind, pos_poll in cases:
            name = f"lat-{mode}-{kind}-{rnd}{'-pos' if pos_poll else ''}.db"
            n = s.lat_txns if kind == "steady" else s.burst_txns
            rate = s.lat_rate if kind == "steady" else None
            run = self.latency_run(primary, replica, name, mode, n, rate, seed=rnd,
                                   pos_poll=pos_poll)
            self.r.latency.append(run)
            pos = (f" | pos p50 {percentile(run.pos_ms, 50):6.1f} p99 "
                   f"{percentile(run.pos_ms, 99):6.1f}") if pos_poll else ""
            _log(f"  {mode:<6} {kind:<6} {'+pos' if pos_poll else 'sql':<4} round {rnd}: "
                 f"sql p50 {percentile(run.sql_ms, 50):6.1f} p99 "
                 f"{percentile(run.sql_ms, 99):6.1f} max {max(run.sql_ms):6.1f}{pos} ms | "
                 f"{run.commits_per_s:.0f}/s, replica CPU {run.replica_cpu_ms_per_txn:.2f} "
                 f"ms/txn{f', {run.unseen} unseen' if run.unseen else ''}")

    def latency_run(self, primary: Node, replica: Node, name: str, mode: str, n: int,
                    rate: float | None, seed: int, pos_poll: bool = True,
                    create: bool = True) -> LatencyRun:
        journal, sync = ("wal", "normal") if mode == "wal" else ("delete", "full")
        if create:
            con = connect(primary.db(name), journal)
            con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            con.close()
        self.wait_same(primary, replica, name)
        timeout = (n / rate if rate else n * 0.05) + 60
        obs = Background("_observer", {"path": replica.db(name),
                                       "pos": str(replica.mount_dir / f"{name}-pos"),
                                       "new_rows": n, "new_txns": n, "timeout": timeout,
                                       "pos_poll": pos_poll})
        self.bg.append(obs)
        ready = json.loads(obs.readline())
        if "error" in ready:
            raise RuntimeError(f"observer: {ready['error']}")
        time.sleep(0.1)  # let the observer settle into its loop
        cpu_p0, cpu_r0 = proc_cpu_seconds(primary.pid), proc_cpu_seconds(replica.pid)
        w = run_client("_writer", {"op": "insert", "path": primary.db(name),
                                   "pos": str(primary.mount_dir / f"{name}-pos"),
                                   "journal": journal, "sync": sync, "n": n, "rate": rate,
                                   "seed": seed})
        o = obs.finish(timeout=timeout + 30)
        self.bg.remove(obs)
        cpu_p = proc_cpu_seconds(primary.pid) - cpu_p0
        cpu_r = proc_cpu_seconds(replica.pid) - cpu_r0
        rows = w["rows"]
        sql_t = [t for t, _ in o["sql"]]
        sql_v = [v for _, v in o["sql"]]
        pos_t = [t for t, _ in o["pos"]]
        pos_v = [v for _, v in o["pos"]]
        sql_ms: list[float] = []
        pos_ms: list[float] = []
        unseen = 0
        for rid, t, txid in rows:
            i = bisect.bisect_left(sql_v, rid)
            if i < len(sql_v):
                sql_ms.append((sql_t[i] - t) * 1000)
            else:
                unseen += 1
            j = bisect.bisect_left(pos_v, txid)
            if j < len(pos_v):
                pos_ms.append((pos_t[j] - t) * 1000)
        if o.get("errors"):
            self.r.notes.append(f"{name}: the replica reader got {o['errors']} SQLite errors "
                                "(busy/locked) while polling")
        if o.get("timed_out"):
            self.r.problems.append(f"{name}: the observer timed out (replica at "
                                   f"{replica.pos(name)}, primary at {primary.pos(name)})")
        txids = [x for _, _, x in rows]
        if txids and txids[-1] - txids[0] != len(txids) - 1:
            self.r.notes.append(f"{name}: {len(txids)} commits spanned TXIDs "
                                f"{txids[0]:x}..{txids[-1]:x} (not one TXID per commit)")
        self.dump["latency"].append({"db": name, "rows": rows, "sql": o["sql"],
                                     "pos": o["pos"]})
        return LatencyRun(mode, "steady" if rate else "burst", pos_poll, sql_ms or [float("nan")],
                          pos_ms or [float("nan")], unseen, n / w["seconds"],
                          1000 * o["seconds"] / max(1, o["polls"]), o.get("errors", 0),
                          1000 * cpu_r / n, 1000 * cpu_p / n)

    # ---- phase 2: point reads --------------------------------------------------------------

    def build_read_table(self, con: sqlite3.Connection, rows: int) -> None:
        con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        batch = 10_000
        for lo in range(0, rows, batch):
            con.execute("WITH RECURSIVE c(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM c "
                        "WHERE i < ?) INSERT INTO t(id, v) SELECT i, substr(?, 1 + "
                        "abs(random()) % 4000, ?) FROM c",
                        (lo + 1, min(rows, lo + batch), LOREM, READ_ROW_CHARS))

    def phase_reads(self, primary: Node, replica: Node) -> None:
        s = self.scale
        name = "reads.db"
        native_dir = self.root / "native"
        native_dir.mkdir(parents=True, exist_ok=True)
        paths = {"replica": replica.db(name), "primary": primary.db(name),
                 "native": str(native_dir / name)}
        for target in ("primary", "native"):
            con = connect(paths[target], "wal", "normal")
            self.build_read_table(con, s.read_rows)
            (pages,) = con.execute("PRAGMA page_count").fetchone()
            con.close()
        self.r.info["read_db_bytes"] = pages * PAGE_SIZE
        self.wait_same(primary, replica, name)
        _log(f"  reads.db: {s.read_rows:,} rows, {pages * PAGE_SIZE / MiB:.1f} MiB")
        writers = {}
        for target in ("primary", "native"):
            bg = Background("_writer", {"op": "update", "path": paths[target], "journal": "wal",
                                        "sync": "normal", "rate": s.write_rate,
                                        "max_id": s.read_rows, "seconds": 3600,
                                        "seed": 5 if target == "primary" else 6})
            self.bg.append(bg)
            writers[target] = bg
        time.sleep(1.0)
        targets = ["replica", "primary", "native"]
        for run in range(s.read_runs):
            order = targets[run % 3:] + targets[:run % 3]
            got: dict[str, float] = {}
            for target in order:
                cpu0 = (proc_cpu_seconds(primary.pid), proc_cpu_seconds(replica.pid))
                res = run_client("_reader", {"path": paths[target], "max_id": s.read_rows,
                                             "seconds": s.read_seconds, "seed": 100 + run})
                cpu1 = (proc_cpu_seconds(primary.pid), proc_cpu_seconds(replica.pid))
                self.r.read_cpu.setdefault(target, []).append(
                    ((cpu1[0] - cpu0[0]), (cpu1[1] - cpu0[1])))
                got[target] = res["ops_per_s"]
                self.r.reads.setdefault(target, []).append(res["ops_per_s"])
                self.r.read_errors[target] = self.r.read_errors.get(target, 0) + res["errors"]
                self.r.read_slow.setdefault(target, []).append((res["slow_share"],
                                                                res["worst_ms"]))
                if res["misses"]:
                    self.r.problems.append(f"reads on {target}: {res['misses']} lookups found "
                                           "no row")
                errs = f", {res['errors']} errors" if res["errors"] else ""
                _log(f"  reads run {run} {target:<8} {res['ops_per_s']:9,.0f} ops/s "
                     f"({100 * res['slow_share']:.0f}% of the time in lookups > 1 ms, slowest "
                     f"{res['worst_ms']:.0f} ms{errs})")
            self.r.read_ratios.append(got["replica"] / got["primary"])
            self.r.read_native_ratios.append(got["replica"] / got["native"])
        for target, bg in writers.items():
            self.r.bg_writers[target] = bg.finish(terminate=True)
            self.bg.remove(bg)
        self.wait_same(primary, replica, name)
        # The same reads with nobody writing: what applying 100 txns/s costs the readers.
        for target in ("replica", "primary"):
            res = run_client("_reader", {"path": paths[target], "max_id": s.read_rows,
                                         "seconds": s.read_seconds, "seed": 999})
            self.r.idle_reads.setdefault(target, []).append(res["ops_per_s"])
            _log(f"  reads idle  {target:<8} {res['ops_per_s']:9,.0f} ops/s")

    # ---- phase 3: apply throughput (catch-up) ----------------------------------------------

    def phase_catchup(self, primary: Node, replica: Node) -> Node:
        s = self.scale
        for name, ddl in (("big.db", "CREATE TABLE big(id INTEGER PRIMARY KEY, v TEXT)"),
                          ("small.db", "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")):
            con = connect(primary.db(name), "wal", "normal")
            con.execute(ddl)
            con.close()
            self.wait_same(primary, replica, name)
        for run in range(s.catchup_runs):
            for kind in ("big", "small"):
                name = f"{kind}.db"
                self.wait_same(primary, replica, name)
                before = replica.pos(name)
                assert before is not None
                replica.stop()
                if kind == "big":
                    w = run_client("_writer", {"op": "bulk", "path": primary.db(name),
                                               "journal": "wal", "sync": "normal",
                                               "txns": s.big_txns, "rows": s.big_pages})
                else:
                    w = run_client("_writer", {"op": "insert", "path": primary.db(name),
                                               "journal": "wal", "sync": "normal",
                                               "n": s.small_txns, "rate": None,
                                               "seed": 50 + run})
                want = primary.pos(name)
                assert want is not None
                replica.start()
                t_serving_wall = time.time()
                cpu0 = proc_cpu_seconds(replica.pid)
                t_done = wait_until(lambda nm=name, w_=want: replica.pos(nm) == w_, 600,
                                    f"{name} to catch up")
                cpu = proc_cpu_seconds(replica.pid) - cpu0
                t_done_wall = time.time() - (time.monotonic() - t_done)
                hello = replica.log_time("streaming from the primary")
                time.sleep(1.3)  # status.json is rewritten every second
                st = replica.status().get("replica_of", {})
                self.record_rss(f"replica after catching up {kind} (run {run})", replica)
                t0 = hello if hello is not None else t_serving_wall
                secs = t_done_wall - t0
                pages, files = st.get("applied_pages", 0), st.get("applied_files", 0)
                entry = {"seconds": secs, "pages": pages, "files": files,
                         "txns": want[0] - before[0],
                         "write_seconds": w["seconds"],
                         "serving_seconds": replica.start_seconds,
                         "hello_after_serving": (hello - t_serving_wall) if hello else 0.0,
                         "hwm": proc_status(replica.pid, "VmHWM"),
                         "cpu": cpu, "snapshots": st.get("snapshots", 0)}
                self.r.catchup.setdefault(kind, []).append(entry)
                entry["local_files"] = self.local_log_files(replica, name)
                _log(f"  catch-up {kind:<5} run {run}: {entry['txns']:,.0f} txns ({files} "
                     f"applies), {pages} pages in {secs:.2f} s = {pages / secs:,.0f} pages/s, "
                     f"{entry['txns'] / secs:,.0f} txns/s (primary wrote them in "
                     f"{w['seconds']:.2f} s; the replica's local log of {name} now holds "
                     f"{entry['local_files']:,} files)")
        # Steady commits again, on small.db, whose local log on the replica is now long
        # (files stay data.retention = 10 min): does the apply cost depend on it?
        nfiles = self.local_log_files(replica, "small.db")
        lrun = self.latency_run(primary, replica, "small.db", "wal", s.lat_txns // 2,
                                s.lat_rate, seed=77, pos_poll=False, create=False)
        self.r.long_log.append((nfiles, lrun))
        _log(f"  steady WAL commits on small.db ({nfiles:,} files in the replica's local log):"
             f" sql p50 {percentile(lrun.sql_ms, 50):.1f} p99 "
             f"{percentile(lrun.sql_ms, 99):.1f} ms, replica CPU "
             f"{lrun.replica_cpu_ms_per_txn:.2f} ms/txn")
        return replica

    @staticmethod
    def local_log_files(node: Node, name: str) -> int:
        return sum(1 for _ in (node.data_dir / "dbs" / name / "ltx").glob("*.ltx"))

    # ---- phase 4: snapshot of a big database to a fresh replica -----------------------------

    def build_snapshot_db(self, path: Path, target: int) -> int:
        con = sqlite3.connect(path, isolation_level=None)
        con.execute(f"PRAGMA page_size={PAGE_SIZE}")
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        con.execute("CREATE TABLE orders(id INTEGER PRIMARY KEY, customer INTEGER, "
                    "email TEXT, amount INTEGER, note TEXT)")
        con.execute("CREATE INDEX orders_customer ON orders(customer)")
        con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        next_id = 1
        while True:
            con.execute("WITH RECURSIVE c(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM c "
                        "WHERE i < ?) INSERT INTO orders SELECT i, abs(random()) % 50000, "
                        "'c' || (abs(random()) % 100000000) || '@example.com', "
                        "abs(random()) % 1000000, substr(?, 1 + abs(random()) % 4000, "
                        "20 + abs(random()) % 300) FROM c",
                        (next_id, next_id + 19_999, LOREM))
            next_id += 20_000
            (pages,) = con.execute("PRAGMA page_count").fetchone()
            if pages * PAGE_SIZE >= target:
                break
        con.execute("PRAGMA journal_mode=WAL")
        con.close()
        return int(pages * PAGE_SIZE)

    def phase_snapshot(self) -> None:
        s = self.scale
        primary, _unused, port = self.cluster("snap-")
        self.nodes.remove(_unused)
        url = f"http://127.0.0.1:{port}"
        name = "snap.db"
        dest = primary.data_dir / "dbs" / name / "database"
        dest.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        nbytes = self.build_snapshot_db(dest, s.snap_bytes)
        _log(f"  built {name}: {nbytes / MiB:.0f} MiB in {time.perf_counter() - t:.1f} s")
        self.r.info["snap_db_bytes"] = nbytes
        primary.start(timeout=600)
        self.r.info["snap_primary_start"] = primary.start_seconds
        for run in range(s.snap_runs):
            replica = Node(self.root, f"snap-replica{run}", candidate=False, port=free_port(),
                           primary_url=url)
            self.nodes.append(replica)
            probe = StallProbe(primary.mount_dir / f"{name}-pos")
            probe.start()
            cpu_p0 = proc_cpu_seconds(primary.pid)
            replica.start()
            t_serving_wall = time.time()
            want = primary.pos(name)
            t_done = wait_until(lambda w_=want, r_=replica: r_.pos(name) == w_, 600,
                                f"a snapshot of {name} on {replica.name}", interval=0.005)
            t_done_wall = time.time() - (time.monotonic() - t_done)
            probe.stop()
            hello = replica.log_time("streaming from the primary")
            applied = replica.log_time("applied a snapshot")
            t0 = hello if hello is not None else t_serving_wall
            entry = {"seconds": t_done_wall - t0, "bytes": nbytes,
                     "apply_logged_seconds": (applied - t0) if applied else float("nan"),
                     "serving_seconds": replica.start_seconds,
                     "replica_hwm": proc_status(replica.pid, "VmHWM"),
                     "replica_rss": proc_status(replica.pid, "VmRSS"),
                     "primary_hwm": proc_status(primary.pid, "VmHWM"),
                     "primary_cpu": proc_cpu_seconds(primary.pid) - cpu_p0,
                     "replica_cpu": proc_cpu_seconds(replica.pid),
                     "primary_stall_ms": probe.worst * 1000,
                     "probe_reads": probe.reads}
            self.check_db(primary, replica, name, table="orders")
            time.sleep(2.0)
            entry["replica_rss_later"] = proc_status(replica.pid, "VmRSS")
            self.r.snapshots.append(entry)
            _log(f"  snapshot run {run}: {nbytes / MiB:.0f} MiB in {entry['seconds']:.2f} s "
                 f"= {nbytes / 1e6 / entry['seconds']:.1f} MB/s; replica VmHWM "
                 f"{entry['replica_hwm'] / MiB:.0f} MiB; primary unresponsive up to "
                 f"{entry['primary_stall_ms']:.0f} ms")
            self.r.problems += replica.problems()
            replica.stop()
            self.nodes.remove(replica)
            shutil.rmtree(self.root / replica.name, ignore_errors=True)
        self.r.problems += primary.problems()
        primary.stop()

    # ---- checks and profiles ---------------------------------------------------------------

    def check_db(self, primary: Node, replica: Node, name: str, table: str = "t") -> None:
        q = f"SELECT count(*), max(id) FROM {table}"
        try:
            a = sqlite3.connect(primary.db(name))
            b = sqlite3.connect(replica.db(name), timeout=10)
            pa, pb = a.execute(q).fetchone(), b.execute(q).fetchone()
            qc = b.execute("PRAGMA quick_check").fetchone()[0]
            a.close()
            b.close()
        except sqlite3.Error as exc:
            self.r.problems.append(f"{name}: checking the replica failed: {exc}")
            return
        if pa != pb:
            self.r.problems.append(f"{name}: primary has {pa}, replica {pb} (count, max id)")
        if qc != "ok":
            self.r.problems.append(f"{name}: replica quick_check says {qc}")

    def profile(self, primary: Node, replica: Node) -> None:
        found = py_spy_setup(self.args.py_spy, self.r.notes)
        if found is None:
            return
        py_spy, out_dir = found
        con = connect(primary.db("prof-big.db"), "wal", "normal")
        con.execute("CREATE TABLE big(id INTEGER PRIMARY KEY, v TEXT)")
        con.close()
        for label, work in (
                ("burst", lambda i: self.latency_run(primary, replica, f"prof-burst-{i}.db",
                                                     "wal", self.scale.burst_txns, None, 9)),
                ("big", lambda i: run_client("_writer", {
                    "op": "bulk", "path": primary.db("prof-big.db"), "journal": "wal",
                    "sync": "normal", "txns": self.scale.big_txns,
                    "rows": self.scale.big_pages}))):
            for i, (fmt, ext) in enumerate((("raw", "txt"), ("flamegraph", "svg"))):
                out = out_dir / f"replica-{label}.{ext}"
                spy = subprocess.Popen([py_spy, "record", "--nonblocking", "--format", fmt,
                                        "--rate", "997", "-o", str(out), "--pid",
                                        str(replica.pid)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
                try:
                    work(i)
                    if label == "big":
                        self.wait_same(primary, replica, "prof-big.db")
                finally:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(60)
            txt = out_dir / f"replica-{label}.txt"
            if txt.exists():
                (out_dir / f"replica-{label}-summary.txt").write_text(summarize_collapsed(txt))
                self.r.notes.append(f"py-spy profile of the replica ({label}): "
                                    f"{out_dir}/replica-{label}.svg, summary in "
                                    f"replica-{label}-summary.txt")

    # ---- the whole run ---------------------------------------------------------------------

    def run(self) -> None:
        self.r.info["load_start"] = os.getloadavg()
        primary, replica, _port = self.cluster("")
        primary.start()
        replica.start()
        self.r.info["primary_start"] = primary.start_seconds
        self.r.info["replica_start"] = replica.start_seconds
        self.record_rss("replica, idle at start", replica)
        if not self.args.skip_latency:
            t = time.perf_counter()
            _log("phase 1: commit -> visible latency")
            self.phase_latency(primary, replica)
            self.record_rss("replica after the latency phase", replica)
            _log(f"latency phase: {time.perf_counter() - t:.0f} s")
        if not self.args.skip_reads:
            t = time.perf_counter()
            _log("phase 2: point reads while the primary writes")
            self.phase_reads(primary, replica)
            self.record_rss("replica after the reads phase", replica)
            _log(f"reads phase: {time.perf_counter() - t:.0f} s")
        if not self.args.skip_apply:
            t = time.perf_counter()
            _log("phase 3: catch-up after a stopped replica")
            self.phase_catchup(primary, replica)
            _log(f"catch-up phase: {time.perf_counter() - t:.0f} s")
        if self.args.py_spy:
            self.profile(primary, replica)
        names = sorted(p.name[:-4] for p in primary.mount_dir.glob("*-pos"))
        for name in names:
            self.wait_same(primary, replica, name)
            table = "big" if name in ("big.db", "prof-big.db") else "t"
            self.check_db(primary, replica, name, table)
        self.r.problems += primary.problems() + replica.problems()
        with contextlib.suppress(OSError, ValueError):
            st = replica.status().get("replica_of", {})
            if st.get("reconnects") or st.get("last_error"):
                self.r.notes.append(f"replica status: {st.get('reconnects')} reconnects, "
                                    f"last error {st.get('last_error')!r}")
        replica.stop()
        primary.stop()
        if not self.args.skip_apply:
            t = time.perf_counter()
            _log("phase 3b: snapshot to a fresh replica")
            self.phase_snapshot()
            _log(f"snapshot phase: {time.perf_counter() - t:.0f} s")
        self.r.info["load_end"] = os.getloadavg()

    def stop_all(self) -> None:
        for bg in self.bg:
            with contextlib.suppress(Exception):
                bg.kill()
        for node in reversed(self.nodes):
            with contextlib.suppress(Exception):
                node.stop()

    # ---- report ----------------------------------------------------------------------------

    def report(self) -> str:
        r, s = self.r, self.scale
        out: list[str] = []
        if r.latency:
            out.append("")
            out.append(f"## Commit on the primary -> visible on the replica (ms; "
                       f"{s.lat_rounds} round(s); steady = {s.lat_txns} commits at "
                       f"{s.lat_rate:g}/s, burst = {s.burst_txns} as fast as possible)")
            out.append("")
            out.append("| journal | load | commits/s | seen by | p50 | p90 | p99 | max | "
                       "replica CPU ms/txn | primary CPU ms/txn |")
            out.append("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
            for mode in ("wal", "delete"):
                for kind in ("steady", "burst"):
                    label = "WAL+NORMAL" if mode == "wal" else "DELETE+FULL"
                    for seen, pos_poll, attr in (
                            ("SQL reader", False, "sql_ms"),
                            ("SQL reader, observer also reading -pos", True, "sql_ms"),
                            ("-pos", True, "pos_ms")):
                        lruns = [x for x in r.latency
                                if x.mode == mode and x.kind == kind and x.pos_poll == pos_poll]
                        ms = [v for x in lruns for v in getattr(x, attr) if v == v]
                        if not ms:
                            continue
                        rate = median([x.commits_per_s for x in lruns])
                        rc = median([x.replica_cpu_ms_per_txn for x in lruns])
                        pc = median([x.primary_cpu_ms_per_txn for x in lruns])
                        out.append(f"| {label} | {kind} | {rate:,.0f} | {seen} | "
                                   f"{percentile(ms, 50):.1f} | {percentile(ms, 90):.1f} | "
                                   f"{percentile(ms, 99):.1f} | {max(ms):.1f} | "
                                   f"{rc:.2f} | {pc:.2f} |")
            out.append("")
            steady = [v for x in r.latency if x.kind == "steady" and not x.pos_poll
                      for v in x.sql_ms if v == v]
            if steady:
                p50, p99 = percentile(steady, 50), percentile(steady, 99)
                out.append(f"Targets (steady, SQL reader, both journal modes pooled): p50 "
                           f"{p50:.1f} ms (≤ 20: {'met' if p50 <= 20 else 'MISSED'}), p99 "
                           f"{p99:.1f} ms (≤ 100: {'met' if p99 <= 100 else 'MISSED'}).")
            for mode in ("wal", "delete"):
                p50s = [percentile(x.sql_ms, 50) for x in r.latency
                        if x.kind == "steady" and not x.pos_poll and x.mode == mode]
                if p50s:
                    out.append(f"{mode} steady SQL p50 per round: "
                               f"{', '.join(f'{v:.1f}' for v in p50s)} ms")
            burst = [v for x in r.latency if x.kind == "burst" and not x.pos_poll
                     for v in x.sql_ms if v == v]
            if burst:
                out.append(f"Burst, SQL reader, pooled: p50 {percentile(burst, 50):.1f} ms, p99 "
                           f"{percentile(burst, 99):.1f} ms.")
            polls = [x.poll_ms for x in r.latency]
            out.append(f"Observer poll period: {min(polls):.2f}-{max(polls):.2f} ms. "
                       f"Unseen commits: {sum(x.unseen for x in r.latency)}.")
        if r.reads:
            out.append("")
            out.append(f"## Point reads ({s.read_rows:,} rows, "
                       f"{r.info.get('read_db_bytes', 0) / MiB:.1f} MiB; one reader process, "
                       f"{s.read_seconds:g} s per run, median of {s.read_runs}; the primary "
                       f"and the native file each get {s.write_rate:g} UPDATE txns/s)")
            out.append("")
            out.append("| target | lookups/s (median) | min-max | time in lookups > 1 ms | "
                       "slowest lookup ms | primary CPU s | replica CPU s | busy errors |")
            out.append("|---|---:|---|---:|---:|---:|---:|---:|")
            for target in ("replica", "primary", "native"):
                xs = r.reads.get(target, [])
                if not xs:
                    continue
                rcpu = r.read_cpu.get(target, [])
                slow = r.read_slow.get(target, [])
                out.append(f"| {target} | {median(xs):,.0f} | {min(xs):,.0f}-{max(xs):,.0f} | "
                           f"{100 * median([x[0] for x in slow]):.1f}% | "
                           f"{max(x[1] for x in slow):.0f} | "
                           f"{median([c[0] for c in rcpu]):.2f} | "
                           f"{median([c[1] for c in rcpu]):.2f} | "
                           f"{r.read_errors.get(target, 0)} |")
            for target in ("replica", "primary"):
                xs = r.idle_reads.get(target, [])
                if xs:
                    out.append(f"| {target}, no writes | {median(xs):,.0f} | | | | | | |")
            out.append("")
            rr = median(r.read_ratios)
            out.append(f"replica / primary: {rr:.2f}× (per run: "
                       f"{', '.join(f'{x:.2f}' for x in r.read_ratios)}; target ≥ 0.9×: "
                       f"{'met' if rr >= 0.9 else 'MISSED'}); replica / native: "
                       f"{median(r.read_native_ratios):.2f}×")
            ri, pi = r.idle_reads.get("replica"), r.idle_reads.get("primary")
            if ri and pi:
                out.append(f"without writes: replica / primary {median(ri) / median(pi):.2f}×; "
                           f"replica with / without writes "
                           f"{median(r.reads['replica']) / median(ri):.2f}×")
            for target, w in r.bg_writers.items():
                out.append(f"background writer on {target}: {w['txns']:,} txns at "
                           f"{w['rate']:.0f}/s, slowest commit {w['worst_commit_ms']:.0f} ms")
        if r.catchup:
            out.append("")
            out.append("## Apply throughput: catch-up after the replica was stopped "
                       "(median of runs)")
            out.append("")
            out.append("| workload | txns | applies | pages written | seconds | pages/s | MB/s | "
                       "txns/s | replica CPU ms/txn | primary wrote in s | replica VmHWM MiB |")
            out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for kind, label in (("big", f"{s.big_txns} txns of ~{s.big_pages} pages"),
                                ("small", f"{s.small_txns} single-row txns")):
                runs = r.catchup.get(kind, [])
                if not runs:
                    continue
                secs = median([x["seconds"] for x in runs])
                pps = median([x["pages"] / x["seconds"] for x in runs])
                tps = median([x["txns"] / x["seconds"] for x in runs])
                out.append(f"| {label} | {median([x['txns'] for x in runs]):,.0f} | "
                           f"{median([x['files'] for x in runs]):,.0f} | "
                           f"{median([x['pages'] for x in runs]):,.0f} | {secs:.2f} | "
                           f"{pps:,.0f} | {pps * PAGE_SIZE / 1e6:.1f} | {tps:,.0f} | "
                           f"{median([1000 * x['cpu'] / max(1, x['txns']) for x in runs]):.2f} | "
                           f"{median([x['write_seconds'] for x in runs]):.2f} | "
                           f"{max(x['hwm'] for x in runs) / MiB:.0f} |")
            out.append("")
            for kind in ("big", "small"):
                runs = r.catchup.get(kind, [])
                if runs:
                    out.append(f"{kind}, per run: " + "; ".join(
                        f"{x['pages'] / x['seconds']:,.0f} pages/s, "
                        f"{x['txns'] / x['seconds']:,.0f} txns/s (local log then "
                        f"{x['local_files']:,} files)" for x in runs))
            for nfiles, lrun in r.long_log:
                fresh = [v for x in r.latency if x.mode == "wal" and x.kind == "steady"
                         and not x.pos_poll for v in x.sql_ms]
                fcpu = [x.replica_cpu_ms_per_txn for x in r.latency if x.mode == "wal"
                       and x.kind == "steady" and not x.pos_poll]
                out.append(f"steady WAL commits ({s.lat_rate:g}/s) on small.db with "
                           f"{nfiles:,} files in the replica's local log: SQL p50 "
                           f"{percentile(lrun.sql_ms, 50):.1f} / p99 "
                           f"{percentile(lrun.sql_ms, 99):.1f} ms, replica CPU "
                           f"{lrun.replica_cpu_ms_per_txn:.2f} ms/txn"
                           + (f" (fresh databases in phase 1: {percentile(fresh, 50):.1f} / "
                              f"{percentile(fresh, 99):.1f} ms, {median(fcpu):.2f} ms/txn)"
                              if fresh else ""))
            runs = [x for v in r.catchup.values() for x in v]
            out.append("")
            out.append(f"replica restart: mount serving after "
                       f"{median([x['serving_seconds'] for x in runs]):.2f} s; hello frame "
                       f"{median([x['hello_after_serving'] * 1000 for x in runs]):+.0f} ms "
                       "after that (not counted)")
        if r.snapshots:
            sn = r.snapshots
            nbytes = sn[0]["bytes"]
            secs = median([x["seconds"] for x in sn])
            out.append("")
            out.append(f"## Snapshot to a fresh replica ({nbytes / MiB:.0f} MiB database, "
                       f"median of {len(sn)})")
            out.append("")
            each = ", ".join(f"{x['seconds']:.2f}" for x in sn)
            out.append(f"- hello -> caught up: {secs:.2f} s = {nbytes / 1e6 / secs:.1f} MB/s "
                       f"(runs: {each} s; the replica logged the apply done at "
                       f"{median([x['apply_logged_seconds'] for x in sn]):.2f} s)")
            out.append(f"- replica VmHWM {max(x['replica_hwm'] for x in sn) / MiB:.0f} MiB, "
                       f"VmRSS right after {median([x['replica_rss'] for x in sn]) / MiB:.0f} "
                       f"MiB, 2 s later {median([x['replica_rss_later'] for x in sn]) / MiB:.0f}"
                       f" MiB; "
                       f"replica CPU {median([x['replica_cpu'] for x in sn]):.2f} s "
                       f"(start-up included)")
            out.append(f"- primary: CPU {median([x['primary_cpu'] for x in sn]):.2f} s per "
                       f"snapshot, VmHWM {max(x['primary_hwm'] for x in sn) / MiB:.0f} MiB; "
                       f"longest wait for a read of its -pos during the snapshot: "
                       f"{median([x['primary_stall_ms'] for x in sn]):.0f} ms (median; max "
                       f"{max(x['primary_stall_ms'] for x in sn):.0f} ms)")
            out.append(f"- primary start over the {nbytes / MiB:.0f} MiB file (records it as "
                       f"a snapshot): {r.info.get('snap_primary_start', 0):.1f} s")
        if r.rss:
            out.append("")
            out.append("## Replica memory")
            out.append("")
            for label, (rss, hwm) in r.rss.items():
                out.append(f"- {label}: VmRSS {rss / MiB:.0f} MiB, VmHWM {hwm / MiB:.0f} MiB")
        if r.notes:
            out.append("")
            out.extend(f"note: {n}" for n in r.notes)
        out.append("")
        if r.problems:
            out.append("PROBLEMS:")
            out.extend(f"  {p}" for p in r.problems[:40])
        else:
            out.append("no problems found (replica row counts, max ids and quick_check match; "
                       "no errors in the logs)")
        return "\n".join(out)


class StallProbe:
    """Reads a file on a mount every 5 ms from a thread; `worst` is the longest single read
    (the mount's event loop was busy for at least that long)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.worst = 0.0
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            while not self._stop.is_set():
                t = time.monotonic()
                os.pread(fd, 64, 0)
                self.worst = max(self.worst, time.monotonic() - t)
                self.reads += 1
                time.sleep(0.005)
        finally:
            os.close(fd)


def tree_digest(src: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(src.rglob("*.py")):
        h.update(str(p.relative_to(src)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] in ("_writer", "_observer", "_reader"):
        return client_main(sys.argv[1], sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="100 commits per case, a 300-commit burst, 20,000 rows, 1.5 s reads, "
                         "a 16 MiB snapshot, one run each (a smoke test, < 1 min)")
    ap.add_argument("--skip-latency", action="store_true", help="skip phase 1 (latency)")
    ap.add_argument("--skip-reads", action="store_true", help="skip phase 2 (point reads)")
    ap.add_argument("--skip-apply", action="store_true",
                    help="skip phase 3 (catch-up and snapshot)")
    ap.add_argument("--py-spy", metavar="DIR",
                    help="after the timed phases, profile the replica with py-spy during a "
                         "WAL burst and big transactions (flame graphs and summaries in DIR)")
    ap.add_argument("--rev", metavar="REV", default=None,
                    help="run litefs_py/ as committed at this git revision (git archive into "
                         "the work directory)")
    add_run_options(ap, dump="write every commit time and every observed change as JSON",
                    litefs_src=f"{LITEFS_SRC_HELP}; default: a copy of this repository's "
                               "litefs_py/ made at start")
    args = ap.parse_args()
    scale = QUICK if args.quick else FULL
    if os.geteuid() != 0:
        _log("warning: not root: the FUSE mounts may fail")
    root = Path(tempfile.mkdtemp(prefix="litefs-replica-bench-", dir=args.tmp))
    global LITEFS_SRC
    if args.rev:
        LITEFS_SRC = root / "src"
        LITEFS_SRC.mkdir()
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.rev],
                             capture_output=True, text=True, check=True).stdout.strip()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, "litefs_py"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(LITEFS_SRC)], input=archive, check=True)
        src_label = f"{REPO} at git {sha} (git archive)"
    elif args.litefs_src:
        LITEFS_SRC = use_litefs_src(ap, args.litefs_src)
        src_label = f"{LITEFS_SRC}"
    else:
        LITEFS_SRC = root / "src"
        shutil.copytree(REPO / "litefs_py", LITEFS_SRC / "litefs_py",
                        ignore=shutil.ignore_patterns("__pycache__"))
        src_label = f"{REPO}{git_describe(REPO)}"
    src_label += f", litefs_py/*.py digest {tree_digest(LITEFS_SRC / 'litefs_py')}"
    bench = Bench(args, scale, root)
    _log(f"work directory {root}")
    t0 = time.perf_counter()
    run_in_workdir(root, args.keep, bench.run, bench.stop_all)
    if args.dump:
        Path(args.dump).write_text(json.dumps(bench.dump))
    print(f"# bench/replica.py {scale.name} run, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"litefs from {src_label}")
    print(machine_line(t0))
    for key in ("load_start", "load_end"):
        if key in bench.r.info:
            print(f"{key.replace('_', ' ')}: " + " ".join(f"{x:.2f}" for x in bench.r.info[key])
                  + " (1/5/15-minute load averages)")
    print(bench.report())
    return 1 if bench.r.problems else 0


if __name__ == "__main__":
    sys.exit(main())
