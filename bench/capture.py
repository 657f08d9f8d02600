"""Where the mount's CPU goes per commit, component by component, without FUSE.

    .venv/bin/python bench/capture.py                       # 10,000 txns per mode, 5 runs
    .venv/bin/python bench/capture.py --compare-src /tmp/base --tmp /mnt/ext4
    .venv/bin/python bench/capture.py --quick               # 1,000 txns, 2 runs

Real SQLite (apsw, through a VFS that records every write, truncate, sync and delete it makes
to the database, `-journal` and `-wal` files) runs the bench/mount.py commit workloads once
natively; the recorded operations are then replayed against a fresh `Store` through the same
`DB` verbs the FUSE layer calls (`write`, `truncate`, `unlink`, `fsync_job`), in a separate
process per run, so the replay is the server's work for those commits minus FUSE and trio.

Two passes per run and source tree:

  plain       the replay alone: CPU seconds of the replaying thread per commit;
  components  the same replay with a timer around each component (inclusive thread CPU time per
              call, minus the timer's own calibrated cost): `LtxLog.write`,
              `WalTracker.process`, the LTX encoder, the page-checksum table (`checksum`),
              the commit bookkeeping around them (capture + `DB.record` minus those three),
              the rest of `DB.write`, and the SQLite-driven fsyncs;
  instructions (--instructions) the plain replay under valgrind's callgrind: user-space
              instructions per commit, a figure the machine's load does not move.

`--compare-src DIR` replays with a second source tree (e.g. the commit before a change) in
the same run, alternating, so both see the same machine. WAL in the trace is written with
`locking_mode=EXCLUSIVE` (apsw VFSes have no shared memory); SQLite writes its frames the same
way either way.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import REPO, filesystem_of, git_describe, log, machine_line  # bench/common.py

HERE = Path(__file__).resolve()
MODES = {"wal_normal": ("WAL", "NORMAL"), "wal_full": ("WAL", "FULL"),
         "delete_full": ("DELETE", "FULL")}
Op = tuple[Any, ...]  # (verb, kind, *args)
PAGE = 4096  # the kernel's page size


# ---- recording a trace (parent) -------------------------------------------------------------

def record_trace(directory: Path, journal: str, sync: str, txns: int) -> list[Op]:
    import random

    import apsw

    ops: list[Op] = []

    def kind_of(name: str) -> str:
        for suffix, kind in (("-journal", "journal"), ("-wal", "wal")):
            if name.endswith(suffix):
                return kind
        return "database"

    class File(apsw.VFSFile):  # type: ignore[misc]
        def __init__(self, name: object, flags: list[int]) -> None:
            super().__init__("", name, flags)
            path = name if isinstance(name, str) else name.filename()  # type: ignore[attr-defined]
            self.kind = kind_of(path)
            ops.append(("open", self.kind))

        def xWrite(self, data: bytes, offset: int) -> None:
            ops.append(("write", self.kind, offset, bytes(data)))
            super().xWrite(data, offset)

        def xTruncate(self, size: int) -> None:
            ops.append(("truncate", self.kind, size))
            super().xTruncate(size)

        def xSync(self, flags: int) -> None:
            ops.append(("sync", self.kind))
            super().xSync(flags)

    class VFS(apsw.VFS):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__("capture-trace", "")

        def xOpen(self, name: object, flags: list[int]) -> apsw.VFSFile:
            if name is None:
                return super().xOpen(name, flags)
            return File(name, flags)

        def xDelete(self, name: str, syncdir: bool) -> None:
            ops.append(("delete", kind_of(name)))
            super().xDelete(name, syncdir)

    vfs = VFS()
    try:
        con = apsw.Connection(str(directory / "trace.db"), vfs="capture-trace")
        con.execute(f"PRAGMA synchronous={sync}")
        if journal == "WAL":
            con.execute("PRAGMA locking_mode=EXCLUSIVE")
        con.execute(f"PRAGMA journal_mode={journal}").fetchall()
        con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        rnd = random.Random(1)
        for _ in range(txns):  # bench/mount.py's op_txns: one ~100-character row per commit
            con.execute("INSERT INTO t(v) VALUES (?)", (rnd.randbytes(50).hex(),))
        con.close()
    finally:
        vfs.unregister()
    return ops


# ---- replaying it (child, with PYTHONPATH = the source tree) --------------------------------

class Timers:
    def __init__(self) -> None:
        self.acc: dict[str, int] = defaultdict(int)
        self.per_commit: dict[str, list[int]] = defaultdict(list)
        self.undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, key: str) -> bool:
        orig = getattr(owner, attr, None)
        if orig is None:
            return False
        acc = self.acc
        clock = time.thread_time_ns

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return orig(*args, **kwargs)
            finally:
                acc[key] += clock() - t0

        setattr(owner, attr, timed)
        self.undo.append(lambda: setattr(owner, attr, orig))
        return True

    def restore(self) -> None:
        for undo in reversed(self.undo):
            undo()


def _timer_cost() -> float:
    """ns one timer adds to a call (and to the inclusive time of a timed caller)."""
    class Box:
        def f(self) -> None:
            pass
    t = Timers()
    t.wrap(Box, "f", "x")
    b = Box()
    n = 200_000
    t0 = time.thread_time_ns()
    for _ in range(n):
        b.f()
    wrapped = time.thread_time_ns() - t0
    t.restore()
    t0 = time.thread_time_ns()
    for _ in range(n):
        b.f()
    plain = time.thread_time_ns() - t0
    return max(0.0, (wrapped - plain) / n)


def _split_writes(ops: list[Op]) -> list[Op]:
    """Writes as the FUSE layer receives them: the kernel splits a write at page-cache
    (4 KiB) boundaries, so a WAL frame's page arrives as two WRITE requests (3.2 per
    WAL + NORMAL commit through the mount, as bench/fuse_facts.py counts)."""
    out: list[Op] = []
    for op in ops:
        if op[0] != "write":
            out.append(op)
            continue
        _, kind, offset, data = op
        pos = 0
        while pos < len(data):
            cut = min(len(data), pos + PAGE - (offset + pos) % PAGE)
            out.append(("write", kind, offset + pos, data[pos:cut]))
            pos = cut
    return out


def replay(spec: dict[str, Any]) -> dict[str, Any]:
    from litefs_py.store.store import Store
    from litefs_py.types import FileKind

    with open(spec["trace"], "rb") as f:
        ops: list[Op] = pickle.load(f)
    kinds = {"database": FileKind.DATABASE, "journal": FileKind.JOURNAL, "wal": FileKind.WAL}
    data_dir = Path(spec["data"])
    shutil.rmtree(data_dir, ignore_errors=True)
    store = Store(data_dir)
    db = store.create("bench.db")
    for kind in (FileKind.DATABASE, FileKind.SHM):  # as the mount: SQLite holds -shm open
        db.opened(kind)
    ops = [(verb, kinds[kind], *rest) for verb, kind, *rest in _split_writes(ops)]

    timers = Timers()
    components = spec["pass"] == "components"
    if components:
        import litefs_py.store.db as dbmod
        from litefs_py.store.db import DB
        from litefs_py.store.ltx_log import LtxLog
        from litefs_py.store.page_table import PageTable
        from litefs_py.store.rollback import RollbackCapture
        from litefs_py.store.wal_capture import WalCapture
        from litefs_py.store.wal_tracker import WalTracker
        timers.wrap(LtxLog, "write", "LtxLog.write")
        timers.wrap(WalTracker, "process", "WalTracker.process")
        timers.wrap(dbmod, "encode_bytes", "encode")
        timers.wrap(PageTable, "commit", "checksum")
        timers.wrap(WalCapture, "commit", "commit")
        timers.wrap(RollbackCapture, "commit", "commit")
        timers.wrap(DB, "write", "DB.write")
    acc = timers.acc
    clock = time.thread_time_ns
    write, truncate, unlink, fsync_job = db.write, db.truncate, db.unlink, db.fsync_job
    cpu0 = time.thread_time()
    wall0 = time.perf_counter()
    for verb, kind, *rest in ops:
        if verb == "write":
            write(kind, rest[0], rest[1])
        elif verb == "sync":
            t0 = clock()
            fsync_job(kind)()
            acc["fsync"] += clock() - t0
        elif verb == "truncate":
            truncate(kind, rest[0])
        elif verb == "delete":
            if db.exists(kind):
                unlink(kind)
        elif verb == "open":
            db.fd(kind, create=True)
    cpu = time.thread_time() - cpu0
    wall = time.perf_counter() - wall0
    commits = db.txid
    timers.restore()
    store.close()
    shutil.rmtree(data_dir, ignore_errors=True)
    out: dict[str, Any] = {"commits": commits, "cpu_us": cpu / commits * 1e6,
                           "wall_us": wall / commits * 1e6}
    if components:
        cost = _timer_cost()
        calls = spec["calls"]
        us = {k: v / commits / 1000 for k, v in acc.items()}
        # Inclusive times contain the cost of the timers inside them.
        c = {k: calls.get(k, 0.0) * cost / 1000 for k in acc}
        enc, ck, lw = (us.get(k, 0.0) - c.get(k, 0.0) for k in ("encode", "checksum",
                                                                 "LtxLog.write"))
        inner = calls.get("encode", 0) + calls.get("checksum", 0) + calls.get("LtxLog.write", 0)
        commit = us.get("commit", 0.0) - c.get("commit", 0.0) - inner * cost / 1000
        tracker = us.get("WalTracker.process", 0.0) - c.get("WalTracker.process", 0.0)
        dbw = us.get("DB.write", 0.0) - c.get("DB.write", 0.0) - (
            calls.get("commit", 0) + calls.get("WalTracker.process", 0) + inner) * cost / 1000
        out["components"] = {
            "LtxLog.write": lw, "WalTracker.process": tracker,
            "commit bookkeeping": commit - enc - ck - lw,
            "encode": enc, "checksum": ck,
            "rest of DB.write": dbw - commit - tracker,
            "fsync (SQLite's)": us.get("fsync", 0.0),
        }
        out["timer_ns"] = cost
    return out


def count_calls(spec: dict[str, Any]) -> dict[str, float]:
    """Calls per commit of each timed function (to subtract the timers' cost)."""
    counts: dict[str, int] = defaultdict(int)

    def counter(owner: Any, attr: str, key: str) -> None:
        orig = getattr(owner, attr, None)
        if orig is None:
            return

        def counted(*args: Any, **kwargs: Any) -> Any:
            counts[key] += 1
            return orig(*args, **kwargs)
        setattr(owner, attr, counted)

    import litefs_py.store.db as dbmod
    from litefs_py.store.db import DB
    from litefs_py.store.ltx_log import LtxLog
    from litefs_py.store.page_table import PageTable
    from litefs_py.store.rollback import RollbackCapture
    from litefs_py.store.wal_capture import WalCapture
    from litefs_py.store.wal_tracker import WalTracker
    counter(LtxLog, "write", "LtxLog.write")
    counter(WalTracker, "process", "WalTracker.process")
    counter(dbmod, "encode_bytes", "encode")
    counter(PageTable, "commit", "checksum")
    counter(WalCapture, "commit", "commit")
    counter(RollbackCapture, "commit", "commit")
    counter(DB, "write", "DB.write")
    out = replay({**spec, "pass": "plain"})
    return {k: v / out["commits"] for k, v in counts.items()}


def child_main(arg: str) -> int:
    spec = json.loads(arg)
    if spec["pass"] == "components":
        spec["calls"] = count_calls(spec)
    print(json.dumps(replay(spec)), flush=True)
    return 0


# ---- parent: runs, alternating source trees ------------------------------------------------

def run_child(src: Path, spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE), "_replay", json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=src, timeout=3600)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"replay failed ({src}):\n{done.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(lines[-1])
    return out


def instructions_per_commit(src: Path, spec: dict[str, Any], root: Path) -> float:
    """Instructions (callgrind's Ir, user space) per commit of the replay: two replays, of
    the whole trace and of its first half, so start-up and trace loading cancel out."""
    with open(spec["trace"], "rb") as f:
        ops = pickle.load(f)
    half = root / "half.trace"
    with open(half, "wb") as f:
        pickle.dump(ops[:len(ops) // 2], f)
    counts = []
    for trace in (spec["trace"], str(half)):
        out_file = root / "callgrind.out"
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
               sys.executable, str(HERE), "_replay",
               json.dumps({**spec, "trace": trace, "pass": "plain"})]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=src, timeout=7200,
                              env={**os.environ, "PYTHONPATH": str(src)})
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"callgrind replay failed ({src}):\n{done.stderr[-3000:]}")
        commits = json.loads(lines[-1])["commits"]
        total = 0
        for line in out_file.read_text().splitlines():
            if line.startswith("totals:") or line.startswith("summary:"):
                total = int(line.split()[1])
        out_file.unlink()
        counts.append((total, commits))
    half.unlink()
    (full, n_full), (part, n_part) = counts
    return (full - part) / (n_full - n_part)


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "_replay":
        return child_main(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--txns", type=int, default=None, help="commits per trace (10,000)")
    ap.add_argument("--runs", type=int, default=None, help="runs per source tree (5)")
    ap.add_argument("--quick", action="store_true", help="1,000 commits, 2 runs")
    ap.add_argument("--modes", default="wal_normal,wal_full,delete_full",
                    help="comma-separated: " + ", ".join(MODES))
    ap.add_argument("--compare-src", metavar="DIR", action="append", default=[],
                    help="also replay with this source tree (repeatable), alternating")
    ap.add_argument("--instructions", action="store_true",
                    help="also count instructions per commit with valgrind's callgrind (slow: "
                         "use with --txns 1000 or so)")
    ap.add_argument("--tmp", metavar="DIR", default=None,
                    help="where the replay's data directory lives (its filesystem matters for "
                         "the fsyncs); default: the system temp dir")
    args = ap.parse_args()
    txns = args.txns or (1000 if args.quick else 10_000)
    runs = args.runs or (2 if args.quick else 5)
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m}")
    srcs = [REPO, *(Path(s).absolute() for s in args.compare_src)]
    for s in srcs:
        if not (s / "litefs_py").is_dir():
            ap.error(f"{s} holds no litefs_py/")
    root = Path(tempfile.mkdtemp(prefix="capture-bench-", dir=args.tmp))
    t0 = time.perf_counter()
    instr: dict[str, dict[str, float]] = defaultdict(dict)
    results: dict[str, dict[str, dict[str, list[Any]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    try:
        for mode in modes:
            journal, sync = MODES[mode]
            tdir = root / f"trace-{mode}"
            tdir.mkdir()
            ops = record_trace(tdir, journal, sync, txns)
            shutil.rmtree(tdir)
            trace = root / f"{mode}.trace"
            with open(trace, "wb") as f:
                pickle.dump(ops, f)
            log(f"{mode}: {len(ops):,} operations for {txns:,} commits")
            if args.instructions:
                for src in srcs:
                    spec = {"trace": str(trace), "data": str(root / "data"), "pass": "plain"}
                    instr[mode][str(src)] = instructions_per_commit(src, spec, root)
                    log(f"  {src.name or src}: {instr[mode][str(src)]:,.0f} instructions/commit")
            for run in range(runs):
                order = srcs if run % 2 == 0 else list(reversed(srcs))
                for src in order:
                    for pass_ in ("plain", "components"):
                        spec = {"trace": str(trace), "data": str(root / "data"), "pass": pass_}
                        results[mode][str(src)][pass_].append(run_child(src, spec))
                    p = results[mode][str(src)]["plain"][-1]
                    log(f"  run {run + 1} {src.name or src}: {p['cpu_us']:.1f} µs CPU/commit")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(machine_line(t0))
    fs = filesystem_of(Path(args.tmp or tempfile.gettempdir()))
    print(f"{txns:,} commits per trace, {runs} runs per tree, median; replay data dir on {fs}")
    for mode in modes:
        print(f"\n### {mode}\n")
        names = [f"{s}{git_describe(s)}" for s in srcs]
        print("| µs per commit | " + " | ".join(names) + " |")
        print("|---|" + "---:|" * len(srcs))
        keys = list(results[mode][str(srcs[0])]["components"][0]["components"])
        for key in keys:
            cells = [statistics.median(o["components"][key]
                                       for o in results[mode][str(s)]["components"])
                     for s in srcs]
            print(f"| {key} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
        cells = [statistics.median(o["cpu_us"] for o in results[mode][str(s)]["plain"])
                 for s in srcs]
        print("| **CPU of the whole replay (thread time)** | "
              + " | ".join(f"**{c:.1f}**" for c in cells) + " |")
        if instr.get(mode):
            print("| instructions per commit (callgrind, whole replay) | "
                  + " | ".join(f"{instr[mode][str(s)]:,.0f}" for s in srcs) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
