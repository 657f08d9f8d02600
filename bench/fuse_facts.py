"""Re-measure the FUSE facts docs/fuse.md relies on, on this machine, in about a minute.

    .venv/bin/python bench/fuse_facts.py [--ops N]

Needs root and /dev/fuse. Mounts variants of the bare passthrough (bench/passthrough.py) in
separate processes, drives them from client processes, and prints one line per fact:

- `-shm` mapping: SQLite in WAL mode and a plain MAP_SHARED mmap, with and without direct_io;
- locks: a second SQLite writer on the mount is refused while the first holds its lock,
  although the filesystem process never sees a lock request (pyfuse3 registers none);
- cost of a 4 KiB pwrite through the mount (median): handler inline vs. handing the pwrite to
  a worker thread (trio.to_thread), client and server on the same CPU vs. on different CPUs,
  against native;
- cost of a 4 KiB pread that hits the kernel page cache (keep_cache), against native.

Figures are medians of one run; compare the ratios, not the absolute times (shared machine).
Everything it mounts is unmounted when it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent


def serve(backing: str, mountpoint: str, variant: str) -> int:
    """The server process: the passthrough, changed as `variant` says."""
    sys.path.insert(0, str(HERE))
    import pyfuse3
    import trio
    from passthrough import Passthrough, _serve, is_mounted  # type: ignore[import-not-found]

    class Variant(Passthrough):  # type: ignore[misc]
        async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                       ) -> pyfuse3.FileInfo:
            info = await super().open(inode, flags, ctx)
            if variant == "direct_io":
                info.direct_io = True
            return info

        async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                         ctx: pyfuse3.RequestContext
                         ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
            info, attrs = await super().create(parent_inode, name, mode, flags, ctx)
            if variant == "direct_io":
                info.direct_io = True
            return info, attrs

        async def write(self, fh: int, off: int, buf: bytes) -> int:
            if variant == "to_thread":
                fd = self._fds[fh][0]
                return await trio.to_thread.run_sync(os.pwrite, fd, buf, off)
            return await super().write(fh, off, buf)

    options = set(pyfuse3.default_options) | {"fsname=fusefacts"}
    pyfuse3.init(Variant(backing), mountpoint, options)
    try:
        trio.run(_serve)
    finally:
        pyfuse3.close(unmount=is_mounted(mountpoint))
    return 0


@contextlib.contextmanager
def mounted(work: Path, variant: str, cpu: int | None = None) -> Iterator[Path]:
    backing, mnt = work / f"{variant}-backing", work / f"{variant}-mnt"
    backing.mkdir(exist_ok=True)
    mnt.mkdir(exist_ok=True)
    affinity = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    proc = subprocess.Popen([sys.executable, __file__, "_serve", str(backing), str(mnt), variant],
                            preexec_fn=affinity)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {variant} passthrough did not mount")
            time.sleep(0.05)
        yield mnt
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)


def client(code: str, cpu: int | None = None, timeout: float = 120) -> str:
    """Run `code` in a client process (never in a process that serves FUSE); its stdout."""
    prefix = f"import os; os.sched_setaffinity(0, {{{cpu}}})\n" if cpu is not None else ""
    proc = subprocess.run([sys.executable, "-c", prefix + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout, check=False)
    return (proc.stdout.strip() or proc.stderr.strip().splitlines()[-1]) if (
        proc.stdout.strip() or proc.stderr.strip()) else f"exit {proc.returncode}"


WAL_COMMIT = """
import sqlite3, sys
try:
    db = sqlite3.connect(sys.argv[1] if len(sys.argv) > 1 else {db!r}, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t(x)")
    db.execute("INSERT INTO t VALUES (1)")
    print("WAL commit ok")
except sqlite3.Error as exc:
    print(f"WAL commit fails: {{exc}}")
"""

MMAP = """
import mmap, os
fd = os.open({path!r}, os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(fd, 32768)
try:
    m = mmap.mmap(fd, 32768, mmap.MAP_SHARED)
    m[0:4] = b"abcd"
    m.close()
    print("MAP_SHARED ok")
except OSError as exc:
    print(f"MAP_SHARED fails: {{exc}}")
"""

LOCK_HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect({db!r}, isolation_level=None)
db.execute("CREATE TABLE IF NOT EXISTS t(x)")
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO t VALUES (1)")
print("holding", flush=True)
time.sleep(30)
"""

SECOND_WRITER = """
import sqlite3
db = sqlite3.connect({db!r}, isolation_level=None, timeout=0)
try:
    db.execute("BEGIN IMMEDIATE")
    print("second writer got the lock (locks NOT enforced)")
except sqlite3.OperationalError as exc:
    print(f"second writer refused: {{exc}}")
"""

PWRITE = """
import os, statistics, time
fd = os.open({path!r}, os.O_RDWR | os.O_CREAT, 0o644)
buf = os.urandom(4096)
times = []
for i in range({ops}):
    t = time.perf_counter_ns()
    os.pwrite(fd, buf, (i % 256) * 4096)
    times.append(time.perf_counter_ns() - t)
print(statistics.median(times) / 1000)
"""

PREAD_WARM = """
import os, random, statistics, time
fd = os.open({path!r}, os.O_RDONLY)
size = os.fstat(fd).st_size
while os.read(fd, 1 << 20):
    pass
rng = random.Random(1)
times = []
for _ in range({ops}):
    off = rng.randrange(size // 4096) * 4096
    t = time.perf_counter_ns()
    os.pread(fd, 4096, off)
    times.append(time.perf_counter_ns() - t)
print(statistics.median(times) / 1000)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=3000, help="operations per latency figure")
    args = ap.parse_args()
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("fuse_facts: needs root and /dev/fuse", file=sys.stderr)
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="fuse-facts-") as tmp:
        work = Path(tmp)
        native = work / "native"
        native.mkdir()
        print("== -shm mapping")
        for variant in ("plain", "direct_io"):
            with mounted(work, variant) as mnt:
                print(f"  {variant:9}  {client(WAL_COMMIT.format(db=str(mnt / 'w.db')))};  "
                      f"{client(MMAP.format(path=str(mnt / 'm.bin')))}")
        print("== locks (pyfuse3 registers no lock handlers)")
        with mounted(work, "plain") as mnt:
            db = str(mnt / "lock.db")
            holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(
                LOCK_HOLDER.format(db=db))], stdout=subprocess.PIPE, text=True)
            try:
                assert holder.stdout is not None
                holder.stdout.readline()
                print(f"  {client(SECOND_WRITER.format(db=db))}")
            finally:
                holder.kill()
                holder.wait()
        print("== 4 KiB pwrite, median µs (client process -> FUSE server process)")
        rows: dict[str, float] = {}
        rows["native"] = float(client(PWRITE.format(path=str(native / "f"), ops=args.ops)))
        placements = [("same CPU", cpus[0], cpus[0])]
        if len(cpus) > 1:
            placements.insert(0, ("different CPUs", cpus[0], cpus[1]))
        for variant in ("plain", "to_thread"):
            for label, server_cpu, client_cpu in placements:
                with mounted(work, variant, server_cpu) as mnt:
                    rows[f"{variant}, {label}"] = float(client(
                        PWRITE.format(path=str(mnt / "f"), ops=args.ops), client_cpu))
        for name, us in rows.items():
            print(f"  {name:28} {us:7.1f}   x{us / rows['native']:.1f} native")
        print("== 4 KiB pread from the page cache (keep_cache), median µs")
        data = os.urandom(8 << 20)
        (native / "r").write_bytes(data)
        nat = float(client(PREAD_WARM.format(path=str(native / "r"), ops=args.ops)))
        with mounted(work, "plain") as mnt:
            (mnt / "r").write_bytes(data)
            fuse = float(client(PREAD_WARM.format(path=str(mnt / "r"), ops=args.ops)))
        print(f"  native {nat:.2f}   passthrough {fuse:.2f}   x{fuse / nat:.2f}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "_serve":
        sys.exit(serve(*sys.argv[2:5]))
    sys.exit(main())
