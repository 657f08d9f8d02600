"""Crash tests: SIGKILL the filesystem while SQLite commits, restart it, and lose nothing.

A client process (crash_client.py) writes transactions with `synchronous=FULL` and records each
acknowledged transaction in a ledger outside the mount. The test SIGKILLs the `litefs mount`
process (and the client) at a random moment or at a chosen point, leaves the dead mount for the
next start to clear, restarts the mount on the same data directory and checks:

- the dead mount was cleared by the new process itself (its log says so, one mount entry);
- every ledger id is in the database, ids have no holes, and at most the one transaction in
  flight at the kill is there without being in the ledger; multi-row invariants hold;
- `PRAGMA integrity_check` through the mount is ok;
- the LTX log is a contiguous chain from TXID 1 whose pre-/post-apply checksums link up; replayed
  into an empty file it has the checksum and TXID the mount's `<db>-pos` shows, the same bytes as
  the live database (backing database file plus committed WAL frames) and the same rows as SQLite
  reads through the mount;
- the mount log shows no traceback.

The database carries over from cycle to cycle, so recovery runs on a growing database with
whatever the previous crash left behind. Seeds are random; a failure names the seed to replay
with `LITEFS_CRASH_SEED=<seed>`. `LITEFS_SOAK=1` runs a 500-cycle soak (journal mode changing
between cycles); `LITEFS_SOAK_CYCLES` sets another count.

Bugs these tests found (KNOWN_BUGS, each with a deterministic test below) are fixed; a refusal
to start after a crash now fails the test. `diagnose_refusal` still names which of them a
regression looks like.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PosixPath

import pytest

from litefs_py.ltx import (
    EMPTY_DATABASE_CHECKSUM,
    Decoder,
    apply_pages,
    database_checksum,
    is_ltx_filename,
)
from litefs_py.sqlite import WALReader
from litefs_py.sqlite.errors import SQLiteFormatError
from litefs_py.store.ltx_log import LoggedRecord, is_segment_name, read_log
from tests.mount.harness import LitefsMount, is_mounted

CLIENT = Path(__file__).with_name("crash_client.py")
DB = "crash.db"
MODES = ["DELETE", "TRUNCATE", "PERSIST", "WAL"]
CYCLES_PER_MODE = 13  # 4 modes x 13 = 52 random kill/restart cycles
SEED = int(os.environ.get("LITEFS_CRASH_SEED") or random.randrange(2**32))
SOAK = os.environ.get("LITEFS_SOAK") == "1"
SOAK_CYCLES = int(os.environ.get("LITEFS_SOAK_CYCLES") or 500)
JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")
STALE_MOUNT_MESSAGE = "clearing a stale mount"
FAULT_ENV = ("PYTHONPATH", "LITEFS_CRASH_FAULT")  # for the litefs process only

pytestmark = pytest.mark.slow


# ---- processes ---------------------------------------------------------------------------


class Client:
    """One crash_client.py process; its output goes to a file next to the ledger."""

    count = 0

    def __init__(self, m: LitefsMount, ledger: Path, mode: str, command: str,
                 *args: str) -> None:
        Client.count += 1
        self.out_path = ledger.with_name(f"client-{Client.count}.out")
        cmd = [sys.executable, str(CLIENT), command, "--db", m.db(DB), "--ledger", str(ledger),
               "--mode", mode, *args]
        env = {k: v for k, v in os.environ.items() if k not in FAULT_ENV}
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"client did not finish in {timeout}s:\n{self.output()}"
                                 ) from None

    def sleep_alive(self, seconds: float) -> None:
        """Sleep while checking that the client has not died on its own (a real failure)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not self.alive():
                raise AssertionError(f"client exited with {self.proc.returncode} before the "
                                     f"kill:\n{self.output()}")
            time.sleep(min(left, 0.02))


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             client: Client | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if client is not None and not client.alive():
            raise AssertionError(f"client exited with {client.proc.returncode} while waiting "
                                 f"for {what}:\n{client.output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def mount_entries(path: Path) -> int:
    with open("/proc/self/mounts") as f:
        return sum(1 for line in f if len(line.split()) > 1 and line.split()[1] == str(path))


def crash(m: LitefsMount, client: Client | None) -> None:
    """SIGKILL the filesystem (the crash), then the client, which is left with ENOTCONN."""
    m.kill()
    if client is not None:
        client.kill()
    assert is_mounted(m.mount_dir), "a SIGKILLed filesystem should leave its dead mount behind"


class RefusedToStart(AssertionError):
    """Recovery found the database diverged from its LTX log and litefs exited."""


def start(m: LitefsMount) -> None:
    """m.start(), with recovery's refusal of the database as RefusedToStart."""
    try:
        m.start()
    except RuntimeError as exc:
        if "does not match the last LTX file" in str(exc):
            raise RefusedToStart(f"litefs refused to start: {exc}") from None
        raise


def restart(m: LitefsMount) -> None:
    """Start on the same data dir; the new process must clear the dead mount by itself."""
    cleared = m.log().count(STALE_MOUNT_MESSAGE)
    start(m)
    assert m.log().count(STALE_MOUNT_MESSAGE) == cleared + 1, \
        "the restarted mount did not report clearing the stale mount"
    # The harness's start() can return before the new mount exists: its readiness check
    # (listed in /proc/self/mounts, then listdir works) can pass on the dead mount's entry and
    # then on the bare directory once litefs has lazily unmounted it. Wait for the real one.
    parent_dev = os.stat(m.mount_dir.parent).st_dev

    def serving() -> bool:
        try:
            return (mount_entries(m.mount_dir) == 1
                    and os.stat(m.mount_dir).st_dev != parent_dev
                    and isinstance(os.listdir(m.mount_dir), list))
        except OSError:
            return False

    wait_for(serving, 20, "exactly one live mount after the restart (stale entries left?)")


# ---- what must hold after a restart -------------------------------------------------------


def read_ledger(path: Path) -> list[int]:
    """Acknowledged ids; a last line without its newline was being written at the kill."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    return [int(x) for x in lines[:-1]]


class Replayer:
    """Replays the LTX log into an empty file, checking the chain; incremental if asked."""

    def __init__(self, ltx_dir: Path, out: Path) -> None:
        self.ltx_dir = ltx_dir
        self.out = out
        self.reset()

    def reset(self) -> None:
        self.out.write_bytes(b"")
        # name, where (segment, offset, length), digest of the bytes
        self.applied: list[tuple[str, tuple[str, int, int], str]] = []
        self.txid = 0
        self.checksum = EMPTY_DATABASE_CHECKSUM
        self.page_size = 0

    def replay(self, full: bool) -> None:
        if full:
            self.reset()
        records = read_log(self.ltx_dir)
        done = len(self.applied)
        for (name, where, digest), now in zip(self.applied, records, strict=False):
            data = now.read()
            assert (now.name, (now.path.name, now.offset, now.length),
                    hashlib.blake2b(data).hexdigest()) == (name, where, digest), \
                f"LTX record {name} changed or vanished after it was replayed"
        assert len(records) >= done, "LTX records vanished"
        with open(self.out, "r+b") as out:
            for rec in records[done:]:
                name = rec.name
                lo, hi = rec.range
                assert lo == self.txid + 1, \
                    f"LTX chain broken: {name} follows TXID {self.txid:016x}"
                data = rec.read()
                with io.BytesIO(data) as f:
                    dec = Decoder(f, name=f"{rec.path}@{rec.offset}")
                    h = dec.header
                    assert (h.min_txid, h.max_txid) == (lo, hi), f"{name}: header TXIDs differ"
                    if lo > 1:
                        assert h.pre_apply_checksum == self.checksum, (
                            f"{name}: pre-apply checksum {h.pre_apply_checksum:016x} != "
                            f"post-apply {self.checksum:016x} of TXID {self.txid:016x}")
                    trailer = apply_pages(out, dec)
                self.applied.append((name, (rec.path.name, rec.offset, rec.length),
                                     hashlib.blake2b(data).hexdigest()))
                self.txid, self.checksum, self.page_size = hi, trailer.post_apply_checksum, \
                    h.page_size
            out.seek(0)
            actual = database_checksum(out, self.page_size) if self.page_size else \
                EMPTY_DATABASE_CHECKSUM
        assert actual == self.checksum, (
            f"replayed database checksum {actual:016x} != post-apply checksum "
            f"{self.checksum:016x} of the last LTX record (TXID {self.txid:016x})")


def live_image(root: Path) -> bytes:
    """The database as SQLite sees it from the backing files: the database file with the
    committed WAL transactions on top."""
    try:
        image = bytearray((root / "database").read_bytes())
    except FileNotFoundError:
        return b""
    try:
        wal = (root / "wal").read_bytes()
    except FileNotFoundError:
        wal = b""
    if len(wal) < 32:
        return bytes(image)
    try:
        reader = WALReader(wal)
        txns = list(reader.transactions())
    except SQLiteFormatError:
        return bytes(image)
    if not txns:
        return bytes(image)
    ps = reader.page_size
    for t in txns:
        for frame in t.frames:
            off = (frame.pgno - 1) * ps
            if len(image) < off:
                image.extend(bytes(off - len(image)))
            image[off:off + ps] = frame.page
    size = txns[-1].db_size * ps
    del image[size:]
    image.extend(bytes(size - len(image)))
    return bytes(image)


DIGEST_QUERIES = (
    "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name",
    "SELECT id, kind, rows FROM txns ORDER BY id",
    "SELECT k, txn, v FROM items ORDER BY k",
    "SELECT one, n FROM counter",
)


def digest(con: sqlite3.Connection) -> str:
    h = hashlib.sha256()
    for q in DIGEST_QUERIES:
        for row in con.execute(q):
            h.update(repr(row).encode())
    return h.hexdigest()


def first_difference(a: bytes, b: bytes, ps: int) -> str:
    ps = ps or 4096
    n = min(len(a), len(b))
    pages = [off // ps + 1 for off in range(0, n, ps) if a[off:off + ps] != b[off:off + ps]]
    sizes = "" if len(a) == len(b) else f"sizes differ ({len(a) // ps} vs {len(b) // ps} pages), "
    if not pages:
        return sizes + "common pages identical" if sizes else "identical"
    return f"{sizes}{len(pages)} pages differ, first ones: {pages[:8]}"


def backing_files(root: Path) -> str:
    """What the backing files look like, for a failure message (never the raw bytes)."""
    parts = []
    for kind in ("database", "journal", "wal"):
        path = root / kind
        if not path.exists():
            parts.append(f"{kind}: absent")
            continue
        head = path.read_bytes()[:100]
        desc = f"{kind}: {path.stat().st_size} bytes"
        if kind == "database" and len(head) == 100:
            desc += (f", change counter {int.from_bytes(head[24:28], 'big')}, in-header size "
                     f"{int.from_bytes(head[28:32], 'big')} pages (valid-for "
                     f"{int.from_bytes(head[92:96], 'big')})")
        elif kind == "journal":
            desc += f", header {head[:12].hex()}"
        parts.append(desc)
    return "; ".join(parts)


@dataclass
class History:
    """What one database's crash test knows across cycles."""

    dir: Path
    ledger: Path = field(init=False)
    replayer: Replayer = field(init=False)
    unacked: set[int] = field(default_factory=set)  # in flight at a kill, found committed
    cycles: int = 0
    known: Counter[str] = field(default_factory=Counter)  # known-bug refusals repaired

    def __post_init__(self) -> None:
        self.ledger = self.dir / "ledger"
        self.replayer = Replayer(self.dir / "data" / "dbs" / DB / "ltx",
                                 self.dir / "replayed.db")


def verify(m: LitefsMount, hist: History, *, absent: frozenset[int] = frozenset(),
           full_replay: bool = True) -> None:
    log = m.log()
    assert "Traceback" not in log, f"traceback in the mount log:\n{log[-4000:]}"
    ledger = read_ledger(hist.ledger)
    root = m.data_dir / "dbs" / DB
    if not (m.mount_dir / DB).exists():
        # Killed before the database file was created.
        assert not ledger, "ledger has ids but the database is gone"
        assert not (root / "ltx").exists() or not any((root / "ltx").iterdir())
        return

    junk = [p.name for p in (root / "ltx").iterdir()
            if not is_ltx_filename(p.name) and not is_segment_name(p.name)]
    assert not junk, f"left-over files in the LTX directory after recovery: {junk}"

    # The LTX chain, replayed, is the position the mount shows and the live database.
    rp = hist.replayer
    rp.replay(full=full_replay)
    pos = m.pos(DB)
    assert pos == (rp.txid, rp.checksum), (
        f"{DB}-pos says {pos[0]:016x}/{pos[1]:016x}, the LTX chain ends at "
        f"{rp.txid:016x}/{rp.checksum:016x}")
    replayed = rp.out.read_bytes()
    image = live_image(root)
    if image != replayed:  # not `assert a == b`: pytest would print both databases
        raise AssertionError(
            "the live database (backing file + committed WAL) differs from the LTX replay: "
            f"{first_difference(image, replayed, rp.page_size)}; {backing_files(root)}; "
            f"last LTX files {sorted(p.name for p in (root / 'ltx').iterdir())[-3:]}")

    if not replayed:
        assert not ledger, f"ledger has {len(ledger)} ids but the database is empty"
        return

    # What SQLite reads through the mount (read-only: no checkpoint on close).
    con = sqlite3.connect(f"file:{m.db(DB)}?mode=ro", uri=True)
    try:
        check = con.execute("PRAGMA integrity_check").fetchall()
        assert check == [("ok",)], f"integrity_check: {check[:10]}"
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_schema")}
        if "txns" not in tables:
            assert not ledger, "ledger has ids but the schema was never committed"
            return
        ids = [r[0] for r in con.execute("SELECT id FROM txns ORDER BY id")]
        n, count = con.execute(
            "SELECT (SELECT n FROM counter), (SELECT count(*) FROM items)").fetchone()
        orphans = con.execute(
            "SELECT count(*) FROM items WHERE txn NOT IN (SELECT id FROM txns)").fetchone()[0]
        live_digest = digest(con)
    finally:
        con.close()

    assert ids == list(range(1, len(ids) + 1)), "transaction ids have holes"
    have = set(ids)
    lost = sorted(set(ledger) - have)
    assert not lost, (f"{len(lost)} acknowledged transactions are missing after the crash: "
                      f"{lost[:20]} (database has ids up to {len(ids)})")
    extra = have - set(ledger) - hist.unacked
    assert len(extra) <= 1 and all(x > max(ledger, default=0) for x in extra), (
        f"ids {sorted(extra)} are in the database but were never acknowledged, and more "
        f"than the one transaction in flight at the kill")
    hist.unacked |= extra
    unexpected = have & absent
    assert not unexpected, f"uncommitted transaction(s) {sorted(unexpected)} survived"
    assert n == count, f"counter says {n} items, the table has {count}: a torn transaction"
    assert orphans == 0, f"{orphans} items belong to transactions that are not in txns"

    copy = hist.dir / "replayed-copy.db"
    copy.write_bytes(replayed)
    con = sqlite3.connect(f"file:{copy}?immutable=1", uri=True)
    try:
        assert digest(con) == live_digest, \
            "rows read from the LTX replay differ from the rows SQLite reads through the mount"
    finally:
        con.close()


# ---- known bugs: recognise a refused start, repair, carry on ------------------------------

ALLOW_KNOWN_BUGS = False  # set True only to investigate a regression of one of these
KNOWN_BUGS = {
    "freelist": "rollback of a hot journal leaves free-list pages that SQLite overwrote without "
                "journaling them (test_kill_during_spilled_transaction[*-deletes])",
    "shrink": "a rollback-mode commit that shrinks the database is recorded with the size "
              "before SQLite's truncation (test_kill_after_shrinking_commit)",
    "wal-ltx-ahead": "an LTX file recorded for a WAL commit whose commit frame never reached "
                     "the WAL (test_kill_after_ltx_before_commit_write[WAL])",
    "recover-wal": "after `litefs recover` on a WAL database, the next crash makes recovery "
                   "ignore the WAL and refuse a database that matches its log "
                   "(test_crash_after_litefs_recover_in_wal_mode)",
}


def replay_files(records: list[LoggedRecord], out: Path) -> tuple[bytes, int]:
    """Apply `records` in order to an empty file, without chain checks; (bytes, page size)."""
    ps = 0
    with open(out, "w+b") as f:
        for rec in records:
            with rec.open() as src:
                dec = Decoder(src, name=rec.name)
                apply_pages(f, dec)
                ps = dec.header.page_size
    return out.read_bytes(), ps


def freelist_leaves(db: bytes, ps: int) -> set[int]:
    """Free-list leaf pages of a database image (their content means nothing to SQLite)."""
    leaves: set[int] = set()
    trunk = int.from_bytes(db[32:36], "big")
    seen = set()
    while trunk and trunk not in seen and trunk * ps <= len(db):
        seen.add(trunk)
        page = db[(trunk - 1) * ps:trunk * ps]
        count = int.from_bytes(page[4:8], "big")
        leaves.update(int.from_bytes(page[8 + 4 * i:12 + 4 * i], "big")
                      for i in range(min(count, ps // 4 - 2)))
        trunk = int.from_bytes(page[:4], "big")
    return leaves


def _pages(db: bytes, ps: int) -> list[bytes]:
    return [db[i:i + ps] for i in range(0, len(db), ps)]


def diagnose_refusal(root: Path, scratch: Path) -> list[str] | None:
    """Which known bugs explain why litefs refused the database in `root`, or None if the
    data directory does not match their signatures exactly."""
    names = read_log(root / "ltx")
    if not names:
        return None
    image = live_image(root)
    replayed, ps = replay_files(names, scratch)
    with names[-1].open() as f:
        last = Decoder(f, name=names[-1].name).header
    if image == replayed:
        # Nothing diverged. recover-wal: the last LTX file carries no WAL position (written by
        # `litefs recover`) while the WAL holds committed transactions.
        try:
            wal_txns = list(WALReader((root / "wal").read_bytes()).transactions())
        except (FileNotFoundError, SQLiteFormatError):
            wal_txns = []
        return ["recover-wal"] if wal_txns and not last.wal_size else None
    found: list[str] = []
    # shrink: the last LTX file has more pages than its own page 1 says the database has,
    # and the live database has exactly the header's size.
    header_pages = int.from_bytes(replayed[28:32], "big")
    if 0 < header_pages < len(replayed) // ps and len(image) == header_pages * ps:
        found.append("shrink")
        replayed = replayed[:header_pages * ps]
    # freelist: same size, and every differing page is a free-list leaf of the committed state.
    if image != replayed and len(image) == len(replayed):
        diff = {i + 1 for i, (a, b) in enumerate(zip(_pages(image, ps), _pages(replayed, ps),
                                                     strict=True)) if a != b}
        if diff <= freelist_leaves(replayed, ps):
            found.append("freelist")
            replayed = image
    # wal-ltx-ahead: the last LTX file names a WAL range that holds no valid transaction, and
    # without that file the log replays to the live database.
    if image != replayed and len(names) > 1:
        h = last
        ends: set[int] = set()
        try:
            reader = WALReader((root / "wal").read_bytes())
            if (reader.header.salt1, reader.header.salt2) == (h.wal_salt1, h.wal_salt2):
                ends = {t.end_offset for t in reader.transactions()}
        except (FileNotFoundError, SQLiteFormatError):
            pass
        if h.wal_size and h.wal_offset + h.wal_size not in ends:
            before, _ = replay_files(names[:-1], scratch)
            if before == image:
                found = ["wal-ltx-ahead"]
                replayed = image
    return found if found and image == replayed else None


def accept_current(m: LitefsMount) -> None:
    """`litefs recover`: record the database as it is now as one more TXID."""
    done = subprocess.run([sys.executable, "-m", "litefs_py", "recover", "--data-dir",
                           str(m.data_dir), DB], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"litefs recover failed:\n{done.stdout}{done.stderr}"


def restart_after_crash(m: LitefsMount, hist: History) -> None:
    """restart(); a refusal explained exactly by known bugs is counted and repaired (twice at
    most: the first `litefs recover` of a WAL database can itself cause "recover-wal")."""
    for attempt in range(3):
        try:
            restart(m)
            return
        except RefusedToStart:
            # Every refusal the crash tests once met is fixed; any refusal now fails.
            bugs = diagnose_refusal(m.data_dir / "dbs" / DB, hist.dir / "diagnose.db")
            if bugs is None or attempt == 2 or not ALLOW_KNOWN_BUGS:
                raise
            hist.known.update(bugs)
            accept_current(m)


def end_with_known_bugs(hist: History) -> None:
    if hist.known:
        pytest.xfail("known bugs made litefs refuse to start (repaired with `litefs recover`): "
                     + "; ".join(f"{n}x {bug}: {KNOWN_BUGS[bug]}"
                                 for bug, n in sorted(hist.known.items())))


@contextlib.contextmanager
def context(what: str) -> Iterator[None]:
    """Name the seed and the cycle in any failure, so it can be replayed."""
    try:
        yield
    except (AssertionError, RuntimeError, OSError, sqlite3.Error) as exc:
        kind = type(exc) if isinstance(exc, AssertionError) else AssertionError
        raise kind(f"{what} (LITEFS_CRASH_SEED={SEED}): {exc}") from exc


class _MountDir(PosixPath):
    """Works around a harness bug (test_harness_start_clears_dead_mount): `start()` calls
    `mount_dir.mkdir(exist_ok=True)`, which stats the existing directory and gets ENOTCONN
    from a dead mount, so litefs never gets to clear it. A mount point needs no mkdir."""

    def mkdir(self, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        if exist_ok and is_mounted(Path(self)):
            return
        super().mkdir(mode, parents, exist_ok)


def new_mount(factory: type[LitefsMount], tmp_path: Path) -> tuple[LitefsMount, History]:
    m = factory(tmp_path / "mnt", tmp_path / "data", tmp_path / "litefs.log")
    m.mount_dir = _MountDir(m.mount_dir)
    return m, History(tmp_path)


def run_to_completion(m: LitefsMount, hist: History, mode: str, txns: int, seed: int,
                      kinds: str | None = None) -> None:
    args = ["--txns", str(txns), "--seed", str(seed)]
    if kinds:
        args += ["--kinds", kinds]
    client = Client(m, hist.ledger, mode, "work", *args)
    rc = client.wait(120)
    assert rc == 0, f"client failed:\n{client.output()}"


# ---- random kills --------------------------------------------------------------------------


def random_cycles(m: LitefsMount, hist: History, rng: random.Random, cycles: int,
                  pick_mode: Callable[[int], str], full_replay_every: int = 1) -> None:
    m.start()
    for cycle in range(cycles):
        mode = pick_mode(cycle)
        delay = rng.uniform(0.05, 1.3)
        args = ["--seed", str(rng.randrange(2**32)), "--extras",
                # A small cache makes large transactions spill before they commit.
                "--cache-size", str(rng.choice([-2000, -2000, 30])),
                "--autocheckpoint", str(rng.choice([100, 400, 1000]))]
        with context(f"{mode} cycle {cycle}, kill after {delay:.3f}s"):
            client = Client(m, hist.ledger, mode, "work", *args)
            try:
                client.sleep_alive(delay)
            finally:
                crash(m, client)
            restart_after_crash(m, hist)
            last = cycle == cycles - 1
            verify(m, hist, full_replay=last or cycle % full_replay_every == 0)
        hist.cycles += 1
    m.stop()


@pytest.mark.parametrize("mode", MODES)
def test_random_kills(mode: str, litefs_factory: type[LitefsMount], tmp_path: Path) -> None:
    m, hist = new_mount(litefs_factory, tmp_path)
    rng = random.Random(f"{SEED}:{mode}")
    random_cycles(m, hist, rng, CYCLES_PER_MODE, lambda _cycle: mode)
    assert hist.cycles == CYCLES_PER_MODE
    assert len(read_ledger(hist.ledger)) > 0, "no transaction was ever acknowledged"
    end_with_known_bugs(hist)


@pytest.mark.opt_in
@pytest.mark.skipif(not SOAK, reason="opt-in soak: set LITEFS_SOAK=1 (500 cycles)")
def test_soak_random_kills(litefs_factory: type[LitefsMount], tmp_path: Path) -> None:
    m, hist = new_mount(litefs_factory, tmp_path)
    rng = random.Random(f"{SEED}:soak")
    # The journal mode changes between cycles (including WAL <-> rollback conversions).
    modes = [rng.choice(MODES) for _ in range(SOAK_CYCLES)]
    random_cycles(m, hist, rng, SOAK_CYCLES, modes.__getitem__, full_replay_every=50)
    assert hist.cycles == SOAK_CYCLES
    end_with_known_bugs(hist)


# ---- kills at chosen points ----------------------------------------------------------------


def backing(m: LitefsMount, kind: str) -> Path:
    return m.data_dir / "dbs" / DB / kind


def read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


@pytest.mark.parametrize(("mode", "setup"), [
    *[(mode, "inserts") for mode in MODES],
    *[(mode, "deletes") for mode in MODES if mode != "WAL"],
    ("WAL", "deletes"),
])
def test_kill_during_spilled_transaction(mode: str, setup: str,
                                         litefs_factory: type[LitefsMount],
                                         tmp_path: Path) -> None:
    """Kill while a large transaction has spilled its page cache: in rollback modes the
    journal is hot and the database file already holds uncommitted pages; in WAL mode the WAL
    holds uncommitted frames. Recovery must roll back to the last acknowledged commit.

    setup "inserts": the database has no free pages. "deletes": rows were deleted first, so
    the large transaction reuses free-list pages, which SQLite overwrites without journaling
    their old content (it is garbage to SQLite, but it is part of the database checksum)."""
    m, hist = new_mount(litefs_factory, tmp_path)
    with context(f"{mode} spill after {setup}"):
        m.start()
        if setup == "inserts":
            run_to_completion(m, hist, mode, 40, 1, "one,multi,grow")
        else:
            run_to_completion(m, hist, mode, 30, 2, "grow")
            run_to_completion(m, hist, mode, 10, 3, "delete")
        verify(m, hist)
        pos_before = m.pos(DB)
        wal_before = read_or_empty(backing(m, "wal"))
        marker = tmp_path / "spilled"
        client = Client(m, hist.ledger, mode, "spill", "--marker", str(marker),
                        "--cache-size", "10", "--rows", "400", "--seed", "4")
        try:
            wait_for(marker.exists, 60, "the large transaction to spill", client)
            spill_id = int(marker.read_text())
            # The state the crash must recover from really is there.
            if mode == "WAL":
                # Frames of a spilling transaction may have their checksums rewritten only at
                # commit (pages overwritten in place), so compare bytes instead of parsing.
                assert read_or_empty(backing(m, "wal")) != wal_before, \
                    "the large transaction wrote no frames to the WAL"
            else:
                journal = backing(m, "journal").read_bytes()
                assert journal[:8] == JOURNAL_MAGIC, "the journal is not hot"
                with open(backing(m, "database"), "rb") as f:
                    assert database_checksum(f, 4096) != pos_before[1], \
                        "the database file holds no uncommitted pages"
            assert m.pos(DB) == pos_before, "an uncommitted transaction moved the position"
        finally:
            crash(m, client)
        restart(m)
        verify(m, hist, absent=frozenset({spill_id}))
        if setup == "deletes" and mode != "WAL":
            # The rollback restored every journaled page, but free-list pages SQLite reused
            # without journaling keep the crashed transaction's bytes: recovery records the
            # (logically unchanged) database once more, as exactly one new TXID.
            assert m.pos(DB)[0] in (pos_before[0], pos_before[0] + 1)
            if m.pos(DB)[0] == pos_before[0] + 1:
                assert "free pages differ" in m.log()
        else:
            assert m.pos(DB) == pos_before
        if mode != "WAL":
            assert "rolled back a hot journal" in m.log()
        # The recovered database takes new transactions.
        run_to_completion(m, hist, mode, 30, 5)
        verify(m, hist)
        m.stop()


@pytest.mark.parametrize("mode", MODES)
def test_kill_after_shrinking_commit(mode: str, litefs_factory: type[LitefsMount],
                                     tmp_path: Path) -> None:
    """Kill after a committed transaction that shrank the database (VACUUM of a database
    with free pages; auto_vacuum=FULL commits do the same), before any other transaction."""
    m, hist = new_mount(litefs_factory, tmp_path)
    with context(f"{mode} shrink"):
        m.start()
        run_to_completion(m, hist, mode, 30, 6, "grow")
        run_to_completion(m, hist, mode, 15, 7, "delete")
        verify(m, hist)
        pos_before = m.pos(DB)
        client = Client(m, hist.ledger, mode, "vacuum")
        assert client.wait(120) == 0, client.output()
        assert m.pos(DB)[0] == pos_before[0] + 1, "VACUUM was not recorded"
        crash(m, None)
        restart(m)
        verify(m, hist)
        run_to_completion(m, hist, mode, 20, 8)
        verify(m, hist)
        m.stop()


SITECUSTOMIZE = """\
import sys
sys.path.append({client_dir!r})
import crash_client
crash_client.inject_faults()
"""


@pytest.mark.parametrize("mode", [*(m for m in MODES if m != "WAL"),
                                  "WAL"])
def test_kill_after_ltx_before_commit_write(mode: str, litefs_factory: type[LitefsMount],
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL the filesystem at an exact point: the commit's LTX file is in place, but the
    write that commits in SQLite's eyes (journal delete/truncate/header zeroing, or the WAL
    commit frame's page) was not performed. The transaction was not acknowledged; recovery
    must either keep it (rollback modes: the database already holds it, the journal is stale)
    or drop its LTX file (WAL: the commit frame is missing), and start."""
    m, hist = new_mount(litefs_factory, tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(client_dir=str(CLIENT.parent)))
    with context(f"{mode} kill after LTX"):
        monkeypatch.setenv("PYTHONPATH", str(site))
        monkeypatch.setenv("LITEFS_CRASH_FAULT", "after-ltx:25")
        m.start()
        monkeypatch.delenv("PYTHONPATH")
        monkeypatch.delenv("LITEFS_CRASH_FAULT")
        client = Client(m, hist.ledger, mode, "work", "--seed", "9")
        try:
            assert m.proc is not None
            wait_for(lambda: m.proc is not None and m.proc.poll() is not None, 60,
                     "the fault to kill litefs", client)
        finally:
            crash(m, client)
        assert m.proc.returncode == -9, m.log()
        ltx = read_log(backing(m, "ltx"))
        assert len(ltx) == 25, f"killed after {len(ltx)} LTX records, not 25"
        restart(m)
        verify(m, hist)
        if mode != "WAL":
            assert "removing its journal instead of rolling back" in m.log()
        run_to_completion(m, hist, mode, 20, 10)
        verify(m, hist)
        m.stop()


def test_crash_after_litefs_recover_in_wal_mode(litefs_factory: type[LitefsMount],
                                                tmp_path: Path) -> None:
    """The repair the refusal message names (`litefs recover`) must leave a WAL database that
    starts, and survives the next crash. Divergence is made by changing a free page of the
    database file behind litefs's back (one no WAL frame covers: SQLite's view is unchanged)."""
    m, hist = new_mount(litefs_factory, tmp_path)
    with context("WAL recover, then crash"):
        m.start()
        run_to_completion(m, hist, "WAL", 30, 11, "grow")
        run_to_completion(m, hist, "WAL", 10, 12, "delete")
        # Leave committed frames in the WAL: the client is killed, so nothing checkpoints.
        client = Client(m, hist.ledger, "WAL", "work", "--seed", "13", "--autocheckpoint", "0")
        acked = len(read_ledger(hist.ledger))
        wait_for(lambda: len(read_ledger(hist.ledger)) >= acked + 10, 60, "10 commits", client)
        crash(m, client)
        restart(m)
        verify(m, hist)
        m.stop()

        root = m.data_dir / "dbs" / DB
        wal_pages = {f.pgno for t in WALReader((root / "wal").read_bytes()).transactions()
                     for f in t.frames}
        assert wal_pages, "the WAL holds no committed frames"
        free = sorted(freelist_leaves(live_image(root), 4096) - wal_pages)
        assert free, "no free page outside the WAL to change"
        with open(root / "database", "r+b") as f:
            f.seek((free[0] - 1) * 4096 + 100)
            f.write(b"changed outside litefs")
        with pytest.raises(RuntimeError, match="does not match the last LTX file"):
            m.start()
        accept_current(m)
        start(m)
        verify(m, hist)
        crash(m, None)
        restart(m)
        verify(m, hist)
        m.stop()


@pytest.mark.parametrize(("point", "how"), [("backfill", "TRUNCATE"), ("backfill", "PASSIVE"),
                                            ("random", "RESTART"), ("random", "TRUNCATE")])
def test_kill_during_checkpoint(point: str, how: str, litefs_factory: type[LitefsMount],
                                tmp_path: Path) -> None:
    """Kill while a WAL checkpoint copies pages into the database file ("backfill": the
    database file is part-way to its final size; "random": at a random moment after the
    checkpoint started, which may also land in the WAL truncation/restart that follows)."""
    m, hist = new_mount(litefs_factory, tmp_path)
    rng = random.Random(f"{SEED}:checkpoint:{point}:{how}")
    with context(f"checkpoint {how}, kill at {point}"):
        m.start()
        run_to_completion(m, hist, "WAL", 20, rng.randrange(2**32))
        db_file = backing(m, "database")
        start_size = db_file.stat().st_size
        marker = tmp_path / "checkpoint"
        client = Client(m, hist.ledger, "WAL", "checkpoint", "--marker", str(marker),
                        "--txns", "50", "--how", how, "--autocheckpoint", "0",
                        "--seed", str(rng.randrange(2**32)))
        try:
            wait_for(marker.exists, 120, "the checkpoint to start", client)
            final_size = int(marker.read_text())
            if point == "backfill":
                wait_for(lambda: db_file.stat().st_size > start_size, 30,
                         "the checkpoint to write the database", client)
            else:
                client.sleep_alive(rng.uniform(0.0, 0.4))
        finally:
            crash(m, client)
        size_at_kill = db_file.stat().st_size
        assert final_size > start_size + 100 * 4096, "the checkpoint has too little to copy"
        if point == "backfill":
            assert start_size < size_at_kill < final_size, \
                "the kill did not land inside the checkpoint's copy"
        restart(m)
        verify(m, hist)
        run_to_completion(m, hist, "WAL", 30, rng.randrange(2**32))
        verify(m, hist)
        m.stop()


def test_harness_start_clears_dead_mount(litefs_factory: type[LitefsMount],
                                         tmp_path: Path) -> None:
    """After a SIGKILL, the plain harness start() should bring the mount back (litefs clears
    the stale mount itself). It fails once the kernel's cached attributes of the mount root
    (attr_timeout 1 s) have expired: Path.mkdir(exist_ok=True) then stats the dead mount."""
    m = litefs_factory(tmp_path / "mnt", tmp_path / "data", tmp_path / "litefs.log")
    m.start()
    m.kill()
    time.sleep(1.5)  # let the root's cached attributes expire, as any real crash would
    m.start()
    assert m.log().count(STALE_MOUNT_MESSAGE) == 1
