"""Helpers shared by every benchmark script: mounts and processes (is a path mounted, unmount
it, stop a server, what a process used), the work directory's life, the command-line options
they have in common, statistics, the test database, profile summaries and which code was
measured. The scripts import it as `common` (they run from bench/, which is sys.path[0])."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from litefs_py.mountinfo import is_mounted  # the one copy (re-exported to the scripts)

REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    """Progress for the person running the benchmark (stderr; stdout is the report)."""
    print(msg, file=sys.stderr, flush=True)


# ---- mounts and processes ------------------------------------------------------------------


def lazy_unmount(path: Path) -> None:
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, timeout=30)


def default_signals() -> None:
    """preexec_fn for servers: a benchmark run in the background ignores SIGINT, and the
    servers must still stop on SIGINT/SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int, key: str) -> int:
    """A kB field of /proc/PID/status (VmHWM, VmRSS), in bytes; 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM and wait up to `timeout` s (a clean unmount or shutdown), else SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


def start_fuse_server(name: str, cmd: list[str], mount_dir: Path, log_path: Path, *,
                      cwd: Path, env: dict[str, str], timeout: float,
                      preexec_fn: Callable[[], None] = default_signals,
                      ) -> subprocess.Popen[bytes]:
    """Start a FUSE server (`litefs mount`, the passthrough) with its output appended to
    `log_path`, and return once it serves `mount_dir`: mounted, answering, and not the bare
    directory. If it exits first it is an error; if it does not come up in `timeout`
    seconds it is stopped (and unmounted) and that is an error."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                cwd=cwd, env=env, preexec_fn=preexec_fn)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; log {log_path}:\n"
                               f"{log_tail(log_path)}")
        if is_mounted(mount_dir):
            try:
                os.listdir(mount_dir)
                if os.stat(mount_dir).st_dev != os.stat(mount_dir.parent).st_dev:
                    return proc
            except OSError:
                pass
        time.sleep(0.01)
    terminate(proc, 30)
    lazy_unmount(mount_dir)
    raise RuntimeError(f"{name} did not mount within {timeout:.0f} s; log {log_path}:\n"
                       f"{log_tail(log_path)}")


def run_json_client(fn: Callable[[dict[str, Any]], dict[str, Any]], arg: str) -> int:
    """The body of a client process: run `fn` on the JSON spec `arg` and print its result as
    one JSON line (an exception becomes {"error": ...}, reported by the parent)."""
    spec = json.loads(arg)
    try:
        out = fn(spec)
    except Exception as exc:  # reported to the parent
        out = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out), flush=True)
    return 0


def insert_paced(con: sqlite3.Connection, values: list[str], rate: float | None,
                 read_txid: Callable[[], int] | None) -> list[tuple[int, float, int]]:
    """One INSERT transaction per value into `t(v)`, at `rate` per second if given; returns
    (rowid, monotonic commit time, TXID read right after the commit or 0) per row."""
    rows: list[tuple[int, float, int]] = []
    t0 = time.monotonic()
    for i, v in enumerate(values):
        if rate:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        cur = con.execute("INSERT INTO t(v) VALUES (?)", (v,))
        t = time.monotonic()
        rows.append((cur.lastrowid or 0, t, read_txid() if read_txid is not None else 0))
    return rows


def run_in_workdir(root: Path, keep: bool, run: Callable[[], None],
                   stop: Callable[[], None], mounts: str = "*/mnt") -> None:
    """Run the benchmark in `root`; whatever happens (errors, Ctrl-C, SIGTERM), `stop()` the
    servers, unmount what is left at `root/<mounts>` and remove `root` unless `keep`."""

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        run()
    finally:
        stop()
        for d in root.glob(mounts):
            lazy_unmount(d)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


LITEFS_SRC_HELP = "run litefs from this source tree (a directory holding litefs_py/)"
TMP_HELP = "where to create the work directory (default: the system temp dir)"


def add_run_options(ap: argparse.ArgumentParser, *, litefs_src: str, dump: str | None = None,
                    tmp: str = TMP_HELP) -> None:
    """[--dump FILE], --tmp DIR, --keep and --litefs-src DIR, as every mount benchmark has;
    the arguments are their help texts."""
    if dump is not None:
        ap.add_argument("--dump", metavar="FILE", help=dump)
    ap.add_argument("--tmp", metavar="DIR", default=None, help=tmp)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--litefs-src", metavar="DIR", default=None, help=litefs_src)


def use_litefs_src(ap: argparse.ArgumentParser, path: str) -> Path:
    """--litefs-src DIR as an absolute path; a usage error if it holds no litefs_py/."""
    src = Path(path).absolute()
    if not (src / "litefs_py").is_dir():
        ap.error(f"{src} holds no litefs_py/")
    return src


def filesystem_of(path: Path) -> str:
    """`ext4 with a journal (/dev/loop0) at /mnt/x` for the filesystem holding `path`: where a
    benchmark's files live changes what fsyncs and file creation cost."""
    best, dev, fstype = "", "?", "?"
    target = str(Path(path).resolve())
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and (target == parts[1] or target.startswith(
                    parts[1].rstrip("/") + "/")) and len(parts[1]) >= len(best):
                best, dev, fstype = parts[1], parts[0], parts[2]
    if fstype in ("ext3", "ext4"):
        name = os.path.basename(os.path.realpath(dev))
        journal = os.path.exists(f"/proc/fs/jbd2/{name}-8")
        fstype += " with a journal" if journal else " without a journal"
    return f"{fstype} ({dev}) at {best}"


def machine_line(started: float) -> str:
    """`python 3.11.2, SQLite 3.40.1, 2 CPUs, kernel ...; 41 s total` for a report."""
    return (f"python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
            f"{os.cpu_count()} CPUs, kernel {platform.release()}; "
            f"{time.perf_counter() - started:.0f} s total")


# ---- statistics ----------------------------------------------------------------------------


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ---- the test database ---------------------------------------------------------------------

WORDS = ("order", "invoice", "customer", "shipment", "pending", "paid", "refund", "warehouse",
         "berlin", "lisbon", "osaka", "denver", "express", "standard", "priority", "returned",
         "the", "a", "of", "for", "with", "and", "item", "quantity", "discount", "note")


def fill_orders(con: sqlite3.Connection, target_bytes: int, page_size: int,
                setup: tuple[str, ...] = ()) -> None:
    """Create and fill `orders` (text, integers, an index: realistic rows that LZ4 shrinks
    as real ones) until the database holds about `target_bytes`; the `setup` statements run
    before the rows go in. The same rows every time."""
    rng = random.Random(42)
    con.execute("CREATE TABLE orders(id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, "
                "status TEXT NOT NULL, created_at INTEGER NOT NULL, amount_cents INTEGER, "
                "email TEXT, note TEXT)")
    con.execute("CREATE INDEX orders_customer ON orders(customer_id, created_at)")
    for sql in setup:
        con.execute(sql)
    next_id = 1
    while True:
        rows = []
        for _ in range(5000):
            rows.append((next_id, rng.randrange(1, 50_000),
                         rng.choice(("pending", "paid", "shipped", "refunded")),
                         1_700_000_000 + next_id * 7 + rng.randrange(5),
                         rng.randrange(100, 1_000_000), f"c{rng.randrange(10**8)}@example.com",
                         " ".join(rng.choice(WORDS) for _ in range(rng.randrange(5, 60)))))
            next_id += 1
        con.execute("BEGIN")
        con.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        con.execute("COMMIT")
        (pages,) = con.execute("PRAGMA page_count").fetchone()
        if pages * page_size >= target_bytes:
            break


def py_spy_setup(out: str, notes: list[str]) -> tuple[str, Path] | None:
    """For --py-spy DIR: the py-spy binary and the (created) output directory, or None with
    a note saying how to install it."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(py_spy):
        notes.append("py-spy not found: `.venv/bin/pip install py-spy` to profile")
        return None
    out_dir = Path(out).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    return py_spy, out_dir


# ---- reports -------------------------------------------------------------------------------


def log_tail(path: Path, n: int = 30) -> str:
    """The last `n` lines of a log file ("" if there is none yet)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


def summarize_collapsed(path: Path, top: int = 40) -> str:
    """Inclusive and self share of samples per function from py-spy's raw (collapsed) output."""
    inclusive: dict[str, int] = defaultdict(int)
    self_: dict[str, int] = defaultdict(int)
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [short_frame(f) for f in stack.split(";")]
        for f in set(frames):
            inclusive[f] += n
        self_[frames[-1]] += n
    out = [f"{total} samples (busy only)", "", "inclusive:"]
    for f, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * n / total:5.1f}%  {f}")
    out += ["", "self:"]
    for f, n in sorted(self_.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * n / total:5.1f}%  {f}")
    return "\n".join(out) + "\n"


def short_frame(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1].rstrip(")")
    return f"{name} ({file})" if file else name


def git_describe(src: Path) -> str:
    if src != REPO:
        return ""
    # Read-only git queries (--no-optional-locks: never refresh the index).
    git = ["git", "--no-optional-locks", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return ""
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "litefs_py"],
                           capture_output=True).returncode != 0
    return f" (git {head.stdout.strip()}{', litefs_py/ modified' if dirty else ''})"
