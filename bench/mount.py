"""SQLite through the litefs-py mount, side by side with native SQLite and a bare passthrough.

    .venv/bin/python bench/mount.py                 # full run (20-30 minutes on 2 vCPUs)
    .venv/bin/python bench/mount.py --quick         # smoke test, well under a minute
    .venv/bin/python bench/mount.py --runs 5 --pin  # client and servers on one vCPU
    .venv/bin/python bench/mount.py --py-spy out/   # also profile both FUSE servers

Three targets, measured in the same run, workload by workload, in rotating order so that noise
on this shared machine hits all of them alike:

  native       SQLite on a plain directory of the backing filesystem;
  passthrough  SQLite on `bench/passthrough.py` (bare pyfuse3 + trio, the floor of any Python
               FUSE design) over a directory of that filesystem;
  litefs       SQLite on `python -m litefs_py mount`, data directory on that filesystem.

Every SQLite workload runs in its own client process (`bench/mount.py _client`), never in a
process that serves FUSE; only the workload itself is timed, inside the client.

Workloads (full scale; --quick in brackets):
  wal_normal / wal_full / delete_full
        10,000 [1,000] single-row INSERT transactions (autocommit, ~100-byte text) on a fresh
        database in journal_mode WAL + synchronous NORMAL, WAL + FULL, DELETE + FULL;
  bulk  100,000 [10,000] rows inserted in one transaction (WAL + NORMAL);
  reads_cold / reads_warm
        100,000 [10,000] point reads by primary key (random ids) on a ~100 MB [10 MB] WAL
        database. Cold: FUSE servers restarted (drops the FUSE inode's page cache), then
        `sync; echo 3 > /proc/sys/vm/drop_caches`. Warm: the file is first read end to end
        through the target's path. The read database is built natively once and copied to
        each target; litefs finds it in its data directory at mount start and records it as a
        snapshot (its recovery path for pre-existing databases).

Commit cost versus database size (litefs, with native for reference): 10,000 [1,000]
WAL + NORMAL single-row transactions on a database pre-grown to 1 GiB [100 MiB] against the
same on a 10 MiB one. Both are grown *through the litefs mount* in 16 MiB transactions, so
litefs captured every page as ordinary transactions; the mount is then restarted (clean
shutdown saves the page checksums) and the fresh process serves the measured commits. Peak
RSS (VmHWM) is read from /proc/PID/status of the litefs mount processes: the one that grew the
databases, the fresh one that served the commits on the 1 GiB database, and one that had to
record the natively built 1 GiB database as a snapshot at mount start.

Unless --no-verify, every litefs database is checked after its workload: the LTX log must be
a contiguous TXID chain whose checksums link, and replaying it must reproduce the backing
database byte for byte; the client runs PRAGMA integrity_check (quick_check on big ones).

Ratios are computed per run (side by side) and the median over runs is reported; seconds are
medians too. `--pin` pins every client and server to CPU 0 (what docs/fuse.md calls "same
vCPU"); unpinned is the default.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (  # bench/common.py (the script's directory)
    LITEFS_SRC_HELP,
    REPO,
    add_run_options,
    default_signals,
    filesystem_of,
    git_describe,
    lazy_unmount,
    log_tail,
    machine_line,
    proc_cpu_seconds,
    proc_status,
    py_spy_setup,
    run_in_workdir,
    start_fuse_server,
    summarize_collapsed,
    terminate,
    use_litefs_src,
)
from common import log as _log

HERE = Path(__file__).resolve()
MiB = 2**20
Spec = dict[str, Any]  # a client workload, and its JSON result
TARGETS = ("native", "passthrough", "litefs")


@dataclass(frozen=True)
class Scale:
    name: str
    txns: int
    bulk_rows: int
    read_db_bytes: int
    reads: int
    small_bytes: int
    big_bytes: int
    grow_txn_bytes: int = 16 * MiB


FULL = Scale("full", 10_000, 100_000, 100 * MiB, 100_000, 10 * MiB, 1024 * MiB)
QUICK = Scale("quick", 1_000, 10_000, 10 * MiB, 10_000, 10 * MiB, 100 * MiB, 8 * MiB)

ROW_CHARS = 100  # payload of a transaction's row
READ_ROW_CHARS = 200  # rows of the read database
GROW_ROW_CHARS = 1000  # rows used to grow the big databases


# =============================================================================================
# Client side: one SQLite workload per process; prints one JSON line.
# =============================================================================================

def _connect(path: str, journal: str | None = None, sync: str | None = None
             ) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None, timeout=30)
    if journal is not None:
        mode = con.execute(f"PRAGMA journal_mode={journal}").fetchone()[0]
        if mode.lower() != journal.lower():
            raise RuntimeError(f"{path}: journal_mode is {mode}, wanted {journal}")
    if sync is not None:
        con.execute(f"PRAGMA synchronous={sync}")
    con.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    return con


def _check(con: sqlite3.Connection, how: str) -> str:
    if how == "none":
        return "ok"
    pragma = "quick_check" if how == "quick" else "integrity_check"
    rows = con.execute(f"PRAGMA {pragma}").fetchall()
    return "ok" if rows == [("ok",)] else "; ".join(r[0] for r in rows[:5])


def _values(n: int, chars: int, seed: int) -> list[tuple[str]]:
    rnd = random.Random(seed)
    return [(rnd.randbytes(chars // 2).hex(),) for _ in range(n)]


def op_txns(spec: Spec) -> Spec:
    con = _connect(spec["path"], spec["journal"], spec["sync"])
    before = con.execute("SELECT count(*) FROM t").fetchone()[0]
    values = _values(spec["n"], ROW_CHARS, spec.get("seed", 1))
    insert = "INSERT INTO t(v) VALUES (?)"
    execute = con.execute
    t0 = time.perf_counter()
    for v in values:
        execute(insert, v)
    seconds = time.perf_counter() - t0
    after = con.execute("SELECT count(*) FROM t").fetchone()[0]
    check = _check(con, spec.get("check", "full"))
    if after - before != spec["n"]:
        check = f"row count {after - before} != {spec['n']}; {check}"
    con.close()
    return {"seconds": seconds, "check": check}


def op_bulk(spec: Spec) -> Spec:
    con = _connect(spec["path"], "wal", "normal")
    values = _values(spec["n"], ROW_CHARS, spec.get("seed", 2))
    t0 = time.perf_counter()
    con.execute("BEGIN")
    con.executemany("INSERT INTO t(v) VALUES (?)", values)
    con.execute("COMMIT")
    seconds = time.perf_counter() - t0
    check = _check(con, "full")
    n = con.execute("SELECT count(*) FROM t").fetchone()[0]
    if n != spec["n"]:
        check = f"row count {n} != {spec['n']}; {check}"
    con.close()
    return {"seconds": seconds, "check": check}


def op_grow(spec: Spec) -> Spec:
    """Grow the database to `bytes` in transactions of about `txn_bytes`."""
    con = _connect(spec["path"], "wal", "normal")
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    chars = spec["row_chars"]
    per_txn = max(1, spec["txn_bytes"] // (chars + 40))
    t0 = time.perf_counter()
    txns = 0
    while con.execute("PRAGMA page_count").fetchone()[0] * page_size < spec["bytes"]:
        con.execute("BEGIN")
        con.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT ?) "
                    "INSERT INTO t(v) SELECT hex(randomblob(?)) FROM c", (per_txn, chars // 2))
        con.execute("COMMIT")
        txns += 1
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    seconds = time.perf_counter() - t0
    rows = con.execute("SELECT max(id) FROM t").fetchone()[0]
    size = con.execute("PRAGMA page_count").fetchone()[0] * page_size
    check = _check(con, spec.get("check", "quick"))
    con.close()
    return {"seconds": seconds, "rows": rows, "bytes": size, "txns": txns, "check": check}


def op_reads(spec: Spec) -> Spec:
    rnd = random.Random(spec.get("seed", 3))
    ids = [rnd.randint(1, spec["max_id"]) for _ in range(spec["n"])]
    t0 = time.perf_counter()
    con = sqlite3.connect(spec["path"], isolation_level=None)
    query = "SELECT v FROM t WHERE id = ?"
    execute = con.execute
    missing = 0
    for i in ids:
        if execute(query, (i,)).fetchone() is None:
            missing += 1
    seconds = time.perf_counter() - t0
    con.close()
    return {"seconds": seconds, "check": "ok" if not missing else f"{missing} ids not found"}


CLIENT_OPS: dict[str, Callable[[Spec], Spec]] = {
    "txns": op_txns, "bulk": op_bulk, "grow": op_grow, "reads": op_reads,
}


def client_main(arg: str) -> int:
    spec = json.loads(arg)
    try:
        out = CLIENT_OPS[spec["op"]](spec)
    except Exception as exc:  # reported to the parent, which prints it
        out = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out), flush=True)
    return 0


# =============================================================================================
# Parent side: servers, phases, tables.
# =============================================================================================

def _preexec(cpu: int | None) -> Callable[[], None]:
    def setup() -> None:
        default_signals()
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
    return setup


class Server:
    """One FUSE server process (passthrough or litefs) on one mountpoint."""

    def __init__(self, name: str, cmd: list[str], mount_dir: Path, log_path: Path,
                 cpu: int | None, start_timeout: float = 60.0, cwd: Path = REPO) -> None:
        self.name = name
        self.cwd = cwd
        self.cmd = cmd
        self.mount_dir = mount_dir
        self.log_path = log_path
        self.cpu = cpu
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.mount_dir.mkdir(parents=True, exist_ok=True)
        lazy_unmount(self.mount_dir)
        t0 = time.perf_counter()
        self.proc = start_fuse_server(self.name, self.cmd, self.mount_dir, self.log_path,
                                      cwd=self.cwd, timeout=self.start_timeout,
                                      env={**os.environ, "PYTHONPATH": str(self.cwd)},
                                      preexec_fn=_preexec(self.cpu))
        self.start_seconds = time.perf_counter() - t0

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        try:
            terminate(proc, 300)
        finally:
            lazy_unmount(self.mount_dir)
        return None if proc is None else proc.returncode

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, n: int = 30) -> str:
        return log_tail(self.log_path, n)

    def log_problems(self) -> list[str]:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return [ln for ln in lines if " ERROR " in ln or " WARNING " in ln or "Traceback" in ln]


# Where `python -m litefs_py` is run from (--litefs-src): the repository by default.
LITEFS_SRC = REPO


# A second source tree to run side by side (--compare-src), as target "litefs-base".
COMPARE_SRC: Path | None = None


def litefs_server(name: str, mount_dir: Path, data_dir: Path, log_path: Path,
                  cpu: int | None, start_timeout: float = 60.0,
                  src: Path | None = None) -> Server:
    cmd = [sys.executable, "-m", "litefs_py", "mount", "--mount-dir", str(mount_dir),
           "--data-dir", str(data_dir)]
    return Server(name, cmd, mount_dir, log_path, cpu, start_timeout, cwd=src or LITEFS_SRC)


def passthrough_server(backing: Path, mount_dir: Path, log_path: Path,
                       cpu: int | None) -> Server:
    cmd = [sys.executable, str(REPO / "bench" / "passthrough.py"), str(backing), str(mount_dir)]
    return Server("passthrough", cmd, mount_dir, log_path, cpu)


def run_client(spec: Spec, cpu: int | None, timeout: float = 3600) -> Spec:
    out = subprocess.run([sys.executable, str(HERE), "_client", json.dumps(spec)],
                         capture_output=True, text=True, timeout=timeout,
                         preexec_fn=_preexec(cpu), cwd=REPO)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"client {spec['op']} on {spec.get('path')} failed "
                           f"(exit {out.returncode}):\n{out.stderr[-3000:]}")
    result: Spec = json.loads(lines[-1])
    if "error" in result:
        raise RuntimeError(f"client {spec['op']} on {spec.get('path')}: {result['error']}")
    return result


def drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def read_through(path: Path) -> None:
    """Read a file end to end (fills the kernel page cache, FUSE's included)."""
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass


# ---- LTX log verification --------------------------------------------------------------------

def verify_litefs_db(db_root: Path) -> str:
    """'ok', or what is wrong: the LTX log of DATA/dbs/<name> must be a contiguous chain whose
    checksums link, and replaying it must give the backing database byte for byte. Reads both
    layouts: segments (seg-*.ltxs) and one file per record (older litefs-py)."""
    import io

    from litefs_py.ltx import Decoder, is_ltx_filename, parse_filename
    from litefs_py.ltx.apply import apply_pages
    from litefs_py.store.ltx_log import read_log

    ltx_dir = db_root / "ltx"
    records = [(r.range, r.name, r.read) for r in read_log(ltx_dir)]
    if not records:
        names = sorted((parse_filename(n), n) for n in os.listdir(ltx_dir)
                       if is_ltx_filename(n))
        records = [(rng, n, (ltx_dir / n).read_bytes) for rng, n in names]
    if not records:
        return "no LTX records"
    expected, prev_post = 1, None
    fd, tmp = tempfile.mkstemp(prefix="replay-", dir=db_root.parent.parent)
    os.close(fd)
    try:
        with open(tmp, "r+b") as out:
            for (lo, hi), name, read in records:
                if lo != expected:
                    return f"TXID gap: expected {expected:016x}, found {name}"
                dec = Decoder(io.BytesIO(read()), name=name)
                trailer = apply_pages(out, dec)
                h = dec.header
                if prev_post is not None and h.pre_apply_checksum != prev_post:
                    return (f"{name}: pre-apply checksum {h.pre_apply_checksum:016x} != "
                            f"previous post-apply {prev_post:016x}")
                prev_post, expected = trailer.post_apply_checksum, hi + 1
        if _file_digest(Path(tmp)) != _file_digest(db_root / "database"):
            return (f"replaying {len(records)} LTX records does not reproduce the database "
                    f"({os.path.getsize(tmp)} vs {os.path.getsize(db_root / 'database')} bytes)")
    finally:
        os.unlink(tmp)
    return "ok"


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ---- results -----------------------------------------------------------------------------------

@dataclass
class Results:
    seconds: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    server_cpu: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    problems: list[str] = field(default_factory=list)

    def add(self, workload: str, target: str, seconds: float) -> None:
        self.seconds[workload][target].append(seconds)

    def median(self, workload: str, target: str) -> float | None:
        xs = self.seconds[workload].get(target)
        return statistics.median(xs) if xs else None

    def ratio(self, workload: str, num: str, den: str) -> float | None:
        """Median over runs of the per-run ratio (side by side)."""
        a, b = self.seconds[workload].get(num, []), self.seconds[workload].get(den, [])
        rs = [x / y for x, y in zip(a, b, strict=False) if y > 0]
        return statistics.median(rs) if rs else None

    def ratio_range(self, workload: str, num: str, den: str) -> tuple[float, float] | None:
        a, b = self.seconds[workload].get(num, []), self.seconds[workload].get(den, [])
        rs = [x / y for x, y in zip(a, b, strict=False) if y > 0]
        return (min(rs), max(rs)) if rs else None


def _fmt_s(x: float | None) -> str:
    return "-" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.2f}")


def _fmt_r(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}×"


# ---- phase A: the three targets side by side ----------------------------------------------------

# The targets of issue #11 (ratio to the bare passthrough, same run).
TARGET_VS_PASSTHROUGH = {"wal_normal": 1.6, "wal_full": 1.6, "delete_full": 1.15, "bulk": 1.25}

WRITE_WORKLOADS = {
    "wal_normal": ("wal", "normal"),
    "wal_full": ("wal", "full"),
    "delete_full": ("delete", "full"),
}


class Bench:
    def __init__(self, args: argparse.Namespace, scale: Scale, root: Path) -> None:
        self.args = args
        self.scale = scale
        self.root = root
        self.cpu = 0 if args.pin else None
        self.results = Results()
        self.notes: list[str] = []
        self.servers: list[Server] = []

    # targets of phase A
    @property
    def targets(self) -> tuple[str, ...]:
        return TARGETS + (("litefs-base",) if COMPARE_SRC is not None else ())

    @property
    def litefs_targets(self) -> tuple[str, ...]:
        return tuple(t for t in self.targets if t.startswith("litefs"))

    def dirs(self) -> dict[str, Path]:
        return {"native": self.root / "native", "passthrough": self.root / "pt-mnt",
                "litefs": self.root / "lfs-mnt", "litefs-base": self.root / "base-mnt"}

    def data_dir(self, target: str) -> Path:
        return self.root / ("lfs-data" if target == "litefs" else "base-data")

    def client(self, spec: Spec) -> Spec:
        return run_client(spec, self.cpu)

    def record_check(self, label: str, result: Spec) -> None:
        if result.get("check", "ok") != "ok":
            self.results.problems.append(f"{label}: {result['check']}")

    def verify(self, label: str, data_dir: Path, name: str) -> None:
        if self.args.no_verify:
            return
        status = verify_litefs_db(data_dir / "dbs" / name)
        if status != "ok":
            self.results.problems.append(f"{label}: LTX log: {status}")
            _log(f"  !! {label}: LTX log: {status}")

    def phase_a(self) -> None:
        s = self.scale
        root = self.root
        for d in ("native", "pt-back", "pt-mnt", "lfs-data", "lfs-mnt", "seed", "base-data",
                  "base-mnt"):
            (root / d).mkdir(parents=True, exist_ok=True)

        _log(f"building the {s.read_db_bytes // MiB} MiB read database natively ...")
        seed_db = root / "seed" / "read.db"
        grown = self.client({"op": "grow", "path": str(seed_db), "bytes": s.read_db_bytes,
                             "txn_bytes": min(16 * MiB, s.read_db_bytes // 8),
                             "row_chars": READ_ROW_CHARS, "check": "none"})
        max_id = grown["rows"]
        self.read_db_info = (grown["bytes"], max_id)
        shutil.copy(seed_db, root / "native" / "read.db")
        shutil.copy(seed_db, root / "pt-back" / "read.db")
        for target in self.litefs_targets:
            (self.data_dir(target) / "dbs" / "read.db").mkdir(parents=True)
            shutil.copy(seed_db, self.data_dir(target) / "dbs" / "read.db" / "database")
        seed_db.unlink()

        pt = passthrough_server(root / "pt-back", root / "pt-mnt", root / "passthrough.log",
                                self.cpu)
        lfs = litefs_server("litefs", root / "lfs-mnt", root / "lfs-data", root / "litefs.log",
                            self.cpu, start_timeout=600)
        self.servers += [pt, lfs]
        servers = {"passthrough": pt, "litefs": lfs}
        if COMPARE_SRC is not None:
            base = litefs_server("litefs-base", root / "base-mnt", root / "base-data",
                                 root / "litefs-base.log", self.cpu, start_timeout=600,
                                 src=COMPARE_SRC)
            self.servers.append(base)
            servers["litefs-base"] = base
        for server in servers.values():
            server.start()
        self.notes.append(f"litefs mount start with the {grown['bytes'] / MiB:.0f} MiB read "
                          f"database to record as a snapshot: {lfs.start_seconds:.1f} s")
        dirs = self.dirs()
        targets = self.targets

        for run in range(self.args.runs):
            k = run % len(targets)
            order = list(targets[k:] + targets[:k])
            _log(f"run {run + 1}/{self.args.runs} (order {', '.join(order)})")
            for wl, (journal, sync) in WRITE_WORKLOADS.items():
                for target in order:
                    name = f"{wl}-{run}.db"
                    spec = {"op": "txns", "path": str(dirs[target] / name), "journal": journal,
                            "sync": sync, "n": s.txns}
                    self._timed(wl, target, spec, servers.get(target))
                    if target in self.litefs_targets:
                        self.verify(f"{wl} {target} run {run + 1}", self.data_dir(target), name)
            for target in order:
                name = f"bulk-{run}.db"
                spec = {"op": "bulk", "path": str(dirs[target] / name), "n": s.bulk_rows}
                self._timed("bulk", target, spec, servers.get(target))
                if target in self.litefs_targets:
                    self.verify(f"bulk {target} run {run + 1}", self.data_dir(target), name)
            if run == 0:
                self.notes.append(f"litefs VmHWM after the first run's writes: "
                                  f"{proc_status(lfs.pid, 'VmHWM') / MiB:.0f} MiB")
            # Reads: cold first (remount + drop caches right before each target), then warm.
            for target in order:
                server = servers.get(target)
                if server is not None:
                    server.restart()
                if not drop_caches():
                    self.notes.append("could not drop caches (not root?): cold reads are warm")
                spec = {"op": "reads", "path": str(dirs[target] / "read.db"), "n": s.reads,
                        "max_id": max_id, "seed": 100 + run}
                self._timed("reads_cold", target, spec, server)
            for target in order:
                read_through(dirs[target] / "read.db")
                spec = {"op": "reads", "path": str(dirs[target] / "read.db"), "n": s.reads,
                        "max_id": max_id, "seed": 200 + run}
                self._timed("reads_warm", target, spec, servers.get(target))

        if self.args.py_spy:
            self.profile(servers, dirs)
        self.lfs_log_problems = [p for s in servers.values() if s is not pt
                                 for p in s.log_problems()]
        for server in servers.values():
            server.stop()
        if not self.args.no_verify:
            for target in self.litefs_targets:
                self.verify(f"read.db {target} (snapshot at mount start)", self.data_dir(target),
                            "read.db")

    def _timed(self, workload: str, target: str, spec: Spec, server: Server | None) -> None:
        cpu0 = proc_cpu_seconds(server.pid) if server is not None else 0.0
        result = self.client(spec)
        if server is not None:
            self.results.server_cpu[workload][target].append(
                proc_cpu_seconds(server.pid) - cpu0)
        self.results.add(workload, target, result["seconds"])
        self.record_check(f"{workload} {target}", result)
        _log(f"  {workload:<12} {target:<12} {result['seconds']:8.3f} s  {result['check']}")

    # ---- profiling ----
    def profile(self, servers: dict[str, Server], dirs: dict[str, Path]) -> None:
        found = py_spy_setup(self.args.py_spy, self.notes)
        if found is None:
            return
        py_spy, out_dir = found
        for target, server in servers.items():
            for fmt, ext in (("raw", "txt"), ("flamegraph", "svg")):
                out = out_dir / f"{target}-wal_normal.{ext}"
                # --nonblocking: sample without stopping the server, so its timing stays real.
                spy = subprocess.Popen([py_spy, "record", "--nonblocking", "--format", fmt,
                                        "--rate", "997",
                                        "-o", str(out), "--pid", str(server.pid)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
                try:
                    self.client({"op": "txns", "path": str(dirs[target] / f"prof-{fmt}.db"),
                                 "journal": "wal", "sync": "normal", "n": self.scale.txns})
                finally:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(60)
            summary = summarize_collapsed(out_dir / f"{target}-wal_normal.txt")
            (out_dir / f"{target}-wal_normal-summary.txt").write_text(summary)
            self.notes.append(f"py-spy profile of {target}: {out_dir}/{target}-wal_normal.svg, "
                              f"summary in {target}-wal_normal-summary.txt")

    # ---- phase B: commit cost versus database size, and RSS ----
    def phase_b(self) -> None:
        s = self.scale
        root = self.root
        data, mnt, nat = root / "size-data", root / "size-mnt", root / "size-native"
        nat.mkdir(parents=True, exist_ok=True)
        lfs = litefs_server("litefs-size", mnt, data, root / "litefs-size.log", self.cpu,
                            start_timeout=900)
        self.servers.append(lfs)
        lfs.start()
        sizes = {"small": s.small_bytes, "big": s.big_bytes}
        self.size_info: dict[str, Spec] = {}
        for label, nbytes in sizes.items():
            _log(f"growing {label}.db to {nbytes // MiB} MiB through the litefs mount ...")
            txn_bytes = min(s.grow_txn_bytes, nbytes // 8)
            g = self.client({"op": "grow", "path": str(mnt / f"{label}.db"), "bytes": nbytes,
                             "txn_bytes": txn_bytes, "row_chars": GROW_ROW_CHARS})
            self.record_check(f"grow {label} litefs", g)
            _log(f"  {g['bytes'] / MiB:.0f} MiB in {g['txns']} transactions, "
                 f"{g['seconds']:.1f} s (litefs)")
            gn = self.client({"op": "grow", "path": str(nat / f"{label}.db"), "bytes": nbytes,
                              "txn_bytes": txn_bytes, "row_chars": GROW_ROW_CHARS})
            self.size_info[label] = {"bytes": g["bytes"], "txns": g["txns"],
                                     "litefs_grow_s": g["seconds"], "native_grow_s": gn["seconds"]}
        self.grow_hwm = proc_status(lfs.pid, "VmHWM")
        lfs.stop()
        lfs.start()  # a fresh process: resumes from the saved checksums
        self.resume_seconds = lfs.start_seconds
        for run in range(self.args.runs):
            order = ["small", "big"] if run % 2 == 0 else ["big", "small"]
            for label in order:
                for target, d in (("native", nat), ("litefs", mnt)):
                    spec = {"op": "txns", "path": str(d / f"{label}.db"), "journal": "wal",
                            "sync": "normal", "n": s.txns, "seed": 10 + run,
                            "check": "none" if run < self.args.runs - 1 else "quick"}
                    r = self.client(spec)
                    self.results.add(f"size_{label}", target, r["seconds"])
                    self.record_check(f"{label} {target}", r)
                    _log(f"  size {label:<6} {target:<8} {r['seconds']:8.3f} s  {r['check']}")
        self.serve_hwm = proc_status(lfs.pid, "VmHWM")
        self.serve_rss = proc_status(lfs.pid, "VmRSS")
        self.size_log_problems = lfs.log_problems()
        lfs.stop()
        if not self.args.no_verify:
            for label in sizes:
                _log(f"verifying the LTX log of {label}.db ...")
                self.verify(f"{label}.db (grown through the mount)", data, f"{label}.db")

        # Recording a natively built big database at mount start (the snapshot path).
        if not self.args.skip_snapshot_rss:
            data3, mnt3 = root / "snap-data", root / "snap-mnt"
            (data3 / "dbs" / "big.db").mkdir(parents=True)
            shutil.copy(nat / "big.db", data3 / "dbs" / "big.db" / "database")
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    (nat / f"big.db{suffix}").unlink()
            shutil.rmtree(nat)
            snap = litefs_server("litefs-snapshot", mnt3, data3, root / "litefs-snap.log",
                                 self.cpu, start_timeout=1800)
            self.servers.append(snap)
            _log("mounting litefs over a natively built big database (snapshot at start) ...")
            snap.start()
            self.snap_seconds = snap.start_seconds
            self.snap_hwm = proc_status(snap.pid, "VmHWM")
            snap.stop()
            if not self.args.no_verify:
                self.verify("big.db (snapshot at mount start)", data3, "big.db")
            shutil.rmtree(data3)

    # ---- report ----
    def report(self) -> str:
        r = self.results
        s = self.scale
        lines = []
        lines.append(f"scale: {s.name}; {self.args.runs} runs; "
                     f"{'client and servers pinned to CPU 0' if self.args.pin else 'unpinned'}")
        lines.append("")
        lines.append("| workload | litefs | native s | passthrough s | litefs s | "
                     "litefs/passthrough (min–max) | litefs/native | passthrough/native | "
                     "target | met? |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---|---|")
        desc = {
            "wal_normal": f"{s.txns:,} txns WAL+NORMAL",
            "wal_full": f"{s.txns:,} txns WAL+FULL",
            "delete_full": f"{s.txns:,} txns DELETE+FULL",
            "bulk": f"{s.bulk_rows:,}-row bulk insert (WAL)",
            "reads_cold": f"{s.reads:,} point reads, cold",
            "reads_warm": f"{s.reads:,} point reads, warm",
        }
        for wl, text in desc.items():
            if wl not in r.seconds:
                continue
            for lt in self.litefs_targets:
                lp = r.ratio(wl, lt, "passthrough")
                rng = r.ratio_range(wl, lt, "passthrough")
                ln = r.ratio(wl, lt, "native")
                pn = r.ratio(wl, "passthrough", "native")
                limit = TARGET_VS_PASSTHROUGH.get(wl)
                if limit is not None:
                    target, ok = f"≤ {limit}× passthrough", lp is not None and lp <= limit
                elif wl == "reads_warm":
                    target, ok = "≤ 1.1× native", ln is not None and ln <= 1.1
                else:
                    target, ok = "-", None
                rng_s = f" ({rng[0]:.2f}–{rng[1]:.2f})" if rng else ""
                lines.append(
                    f"| {text} | {lt} | {_fmt_s(r.median(wl, 'native'))} | "
                    f"{_fmt_s(r.median(wl, 'passthrough'))} | {_fmt_s(r.median(wl, lt))} | "
                    f"{_fmt_r(lp)}{rng_s} | {_fmt_r(ln)} | {_fmt_r(pn)} | {target} | "
                    f"{'-' if ok is None else ('yes' if ok else 'NO')} |")
        if "size_big" in r.seconds:
            lines.append("")
            lines.append("| commit cost vs size | native s | litefs s | litefs/native |")
            lines.append("|---|---:|---:|---:|")
            for label in ("small", "big"):
                info = self.size_info[label]
                wl = f"size_{label}"
                lines.append(f"| {s.txns:,} txns WAL+NORMAL on {info['bytes'] / MiB:,.0f} MiB | "
                             f"{_fmt_s(r.median(wl, 'native'))} | "
                             f"{_fmt_s(r.median(wl, 'litefs'))} | "
                             f"{_fmt_r(r.ratio(wl, 'litefs', 'native'))} |")
            big_small_l = self._cross_ratio("litefs")
            big_small_n = self._cross_ratio("native")
            ok = big_small_l is not None and big_small_l <= 1.2
            lines.append("")
            lines.append(f"big/small: litefs {_fmt_r(big_small_l)}, native "
                         f"{_fmt_r(big_small_n)} (target litefs ≤ 1.2×: "
                         f"{'yes' if ok else 'NO'})")
            big = self.size_info["big"]
            lines.append(f"growing through litefs: {big['bytes'] / MiB:,.0f} MiB in "
                         f"{big['txns']} transactions took {big['litefs_grow_s']:.1f} s "
                         f"(native {big['native_grow_s']:.1f} s); restart resumed in "
                         f"{self.resume_seconds:.1f} s")
            hwm_ok = self.serve_hwm < 100 * MiB
            lines.append(f"litefs peak RSS (VmHWM): {self.serve_hwm / MiB:.0f} MiB serving "
                         f"the {big['bytes'] / MiB:,.0f} MiB database (fresh process, "
                         f"{self.args.runs * s.txns:,} commits to each of the two databases; "
                         f"target < 100 MiB: "
                         f"{'yes' if hwm_ok else 'NO'}); {self.grow_hwm / MiB:.0f} MiB in the "
                         f"process that grew it in {s.grow_txn_bytes // MiB} MiB transactions")
            if hasattr(self, "snap_hwm"):
                lines.append(f"litefs mount over a natively built {big['bytes'] / MiB:,.0f} MiB "
                             f"database (recorded as a snapshot at start): mount took "
                             f"{self.snap_seconds:.1f} s, VmHWM {self.snap_hwm / MiB:.0f} MiB")
        cpu = r.server_cpu
        if cpu:
            lines.append("")
            lines.append("server CPU (median seconds of the FUSE server process per workload; "
                         "ratio: median of the per-run ratios to the passthrough):")
            for wl in desc:
                if wl not in cpu:
                    continue
                p = cpu[wl].get("passthrough")
                if not p:
                    continue
                parts = [f"passthrough {statistics.median(p):7.2f}"]
                for lt in self.litefs_targets:
                    lf = cpu[wl].get(lt)
                    if lf:
                        rs = [a / b for a, b in zip(lf, p, strict=False) if b > 0]
                        rr = f"{statistics.median(rs):.2f}×" if rs else "-"
                        parts.append(f"{lt} {statistics.median(lf):7.2f} ({rr})")
                lines.append(f"  {wl:<12} " + "  ".join(parts))
        if self.notes:
            lines.append("")
            lines.extend(f"note: {n}" for n in self.notes)
        problems = list(r.problems)
        for attr in ("lfs_log_problems", "size_log_problems"):
            problems += [f"litefs log: {p}" for p in getattr(self, attr, [])[:10]]
        lines.append("")
        if problems:
            lines.append("PROBLEMS:")
            lines.extend(f"  {p}" for p in problems)
        else:
            lines.append("no integrity or LTX-log problems found"
                         + (" (verification skipped)" if self.args.no_verify else ""))
        return "\n".join(lines)

    def _cross_ratio(self, target: str) -> float | None:
        a = self.results.seconds["size_big"].get(target, [])
        b = self.results.seconds["size_small"].get(target, [])
        rs = [x / y for x, y in zip(a, b, strict=False) if y > 0]
        return statistics.median(rs) if rs else None

    def stop_all(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "_client":
        return client_main(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="1,000 txns, 10,000 rows, 10 MiB read db, 10 vs 100 MiB (smoke test)")
    ap.add_argument("--runs", type=int, default=None,
                    help="runs per measurement; medians are reported (default 3, --quick 1)")
    ap.add_argument("--pin", action="store_true",
                    help="pin every client and server to CPU 0 (default: unpinned)")
    ap.add_argument("--py-spy", metavar="DIR",
                    help="after the timed runs, profile both FUSE servers with py-spy during "
                         "the WAL+NORMAL workload; flame graphs and summaries go to DIR")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip replaying litefs's LTX logs against its databases")
    ap.add_argument("--skip-size", action="store_true",
                    help="skip the commit-cost-versus-size and RSS phase")
    ap.add_argument("--skip-snapshot-rss", action="store_true",
                    help="skip mounting litefs over a natively built big database")
    add_run_options(ap, tmp="where to create the work directory (same filesystem as the "
                            "data you care about; default: the system temp dir)",
                    litefs_src=f"{LITEFS_SRC_HELP[:-1]}, e.g. `git archive HEAD litefs_py | "
                               "tar -x -C DIR` for a fixed commit); default: this repository")
    ap.add_argument("--compare-src", metavar="DIR", default=None,
                    help="also run litefs from this source tree as target litefs-base, side "
                         "by side (e.g. the commit before a change, for before/after ratios "
                         "from one run); its compiled modules must be built in it")
    args = ap.parse_args()
    if args.litefs_src:
        global LITEFS_SRC
        LITEFS_SRC = use_litefs_src(ap, args.litefs_src)
    if args.compare_src:
        global COMPARE_SRC
        COMPARE_SRC = use_litefs_src(ap, args.compare_src)
    args.runs = max(1, args.runs if args.runs is not None else (1 if args.quick else 3))
    scale = QUICK if args.quick else FULL
    if os.geteuid() != 0:
        _log("warning: not root: FUSE mounts may fail and caches cannot be dropped")
    root = Path(tempfile.mkdtemp(prefix="litefs-bench-", dir=args.tmp))
    bench = Bench(args, scale, root)
    _log(f"work directory {root}")
    t0 = time.perf_counter()

    def run() -> None:
        bench.phase_a()
        if not args.skip_size:
            bench.phase_b()

    run_in_workdir(root, args.keep, run, bench.stop_all, mounts="*mnt")
    print(f"litefs from {LITEFS_SRC}{git_describe(LITEFS_SRC)}")
    if COMPARE_SRC is not None:
        print(f"litefs-base from {COMPARE_SRC}{git_describe(COMPARE_SRC)}")
    print(f"work directory on {filesystem_of(root.parent)}")
    print(machine_line(t0))
    print(f"read database: {bench.read_db_info[0] / MiB:.0f} MiB, "
          f"{bench.read_db_info[1]:,} rows")
    print(bench.report())
    return 1 if bench.results.problems else 0


if __name__ == "__main__":
    sys.exit(main())
