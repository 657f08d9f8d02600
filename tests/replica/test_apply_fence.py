"""The replica apply fence and the wal-index header codec, against real SQLite processes.

Everything runs on a plain local directory: the fence takes SQLite's own fcntl lock bytes, and
fcntl locks only exclude *other* processes, so every SQLite reader of a replica file lives in a
subprocess (tests/replica/sqlite_client.py). The test process itself never opens the replica
files except through the fence (closing any descriptor of a file drops this process's locks).
"""

from __future__ import annotations

import errno
import json
import os
import queue
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from litefs_py.sqlite.shm import (
    LOCK_OFFSET,
    READMARK_NOT_USED,
    SHM_HEADER_REGION_SIZE,
    WalCkptInfo,
    WalIndexHeader,
    changed_header,
    decode_page_size,
    encode_page_size,
)
from litefs_py.store.apply_fence import (
    PENDING_BYTE,
    SHARED_FIRST,
    SHARED_SIZE,
    ApplyFence,
    FenceTimeout,
)

CLIENT = Path(__file__).with_name("sqlite_client.py")
NATIVE = "<" if sys.byteorder == "little" else ">"


# --------------------------------------------------------------------------------------------
# subprocess plumbing


class Proc:
    """A sqlite_client.py process; stdout lines are JSON, collected by a thread so reads can
    time out (a reply that does not come is what "the reader waits" looks like)."""

    def __init__(self, args: list[str]) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, str(CLIENT), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(json.loads(line))

    def send(self, obj: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(obj) + "\n")
        self.popen.stdin.flush()

    def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            stderr = ""
            if self.popen.poll() is not None and self.popen.stderr is not None:
                stderr = self.popen.stderr.read()
            raise AssertionError(f"no reply within {timeout} s {stderr}") from None

    def no_reply_within(self, seconds: float) -> bool:
        try:
            self.lines.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def sql(self, sql: str, timeout: float = 10.0) -> dict[str, Any]:
        self.send({"sql": sql})
        return self.recv(timeout)

    def rows(self, sql: str) -> list[list[Any]]:
        reply = self.sql(sql)
        assert "rows" in reply, reply
        rows: list[list[Any]] = reply["rows"]
        return rows

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=10)
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def start(*args: str) -> Proc:
        proc = Proc(list(args))
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


def reader(spawn: Callable[..., Proc], db: Path, busy_timeout_ms: int = 0) -> Proc:
    proc: Proc = spawn("serve", str(db), "--busy-timeout", str(busy_timeout_ms))
    assert proc.recv().get("ready")
    return proc


def locker(spawn: Callable[..., Proc], path: Path, start: int, length: int, kind: str) -> Proc:
    proc: Proc = spawn("lock", str(path), str(start), str(length), kind)
    assert proc.recv().get("locked")
    return proc


def mode_of(fence: ApplyFence) -> str | None:
    """fence.mode, unnarrowed (mypy would keep the first assert's literal otherwise)."""
    return fence.mode


@pytest.fixture
def fences() -> Iterator[Callable[[Path], ApplyFence]]:
    made: list[ApplyFence] = []

    def make(db: Path) -> ApplyFence:
        fence = ApplyFence(db, Path(f"{db}-shm"))
        made.append(fence)
        return fence

    yield make
    for fence in made:
        fence.close()


# --------------------------------------------------------------------------------------------
# databases


def snapshot(con: sqlite3.Connection, wal: bool) -> bytes:
    """A consistent copy of a (rollback-mode) primary, as the replica file should hold it;
    for a WAL replica, page 1 says "WAL" (file format write/read versions 2)."""
    data = bytearray(con.serialize())
    if wal:
        data[18] = data[19] = 2
    return bytes(data)


def make_replica(path: Path, data: bytes, wal: bool) -> None:
    path.write_bytes(data)
    if wal:
        Path(f"{path}-wal").write_bytes(b"")


def apply(fence: ApplyFence, current: bytes, new: bytes, page_size: int, wal: bool,
          page_pause: float = 0.0, waits: list[float] | None = None) -> tuple[int, str | None]:
    """Copy the pages of `new` that differ from `current` into the replica under the fence.
    Returns (pages written, fence mode); appends the time acquire took to `waits`."""
    changed = [
        off for off in range(0, len(new), page_size)
        if new[off : off + page_size] != current[off : off + page_size]
    ]
    if not changed and len(new) == len(current):
        return 0, None
    start = time.monotonic()
    with fence.held(wal, timeout=5.0):
        if waits is not None:
            waits.append(time.monotonic() - start)
        mode = fence.mode
        for i, off in enumerate(changed):
            os.pwrite(fence.db_fd, new[off : off + page_size], off)
            if page_pause and i == len(changed) // 2:
                time.sleep(page_pause)  # widen the window a torn read would need
        if len(new) < len(current):
            os.ftruncate(fence.db_fd, len(new))
        if wal:
            fence.write_shm_header(page_size, len(new) // page_size)
    return len(changed), mode


# --------------------------------------------------------------------------------------------
# the wal-index header codec


def test_header_round_trip() -> None:
    for page_size in (512, 1024, 4096, 32768, 65536):
        hdr = WalIndexHeader(change=77, page_size=page_size, max_frame=12, page_count=34,
                             frame_checksum=(1, 2), salt=(3, 0xFFFFFFFF))
        raw = hdr.encode()
        assert len(raw) == 48
        decoded = WalIndexHeader.decode(raw + raw)
        assert decoded is not None
        assert decoded == WalIndexHeader(
            change=77, page_size=page_size, max_frame=12, page_count=34, frame_checksum=(1, 2),
            salt=(3, 0xFFFFFFFF), checksum=hdr.computed_checksum())
        assert decoded.encode() == raw
    assert encode_page_size(65536) == 1
    assert decode_page_size(1) == 65536
    assert encode_page_size(4096) == 4096
    with pytest.raises(ValueError):
        encode_page_size(3000)


def test_header_decode_rejects_what_sqlite_would_not_trust() -> None:
    raw = WalIndexHeader(change=5, page_count=3, salt=(1, 2)).encode()
    assert WalIndexHeader.decode(raw + raw) is not None
    other = WalIndexHeader(change=6, page_count=3, salt=(1, 2)).encode()
    assert WalIndexHeader.decode(raw + other) is None  # copies differ (torn write)
    uninit = WalIndexHeader(change=5, is_init=0).encode()
    assert WalIndexHeader.decode(uninit + uninit) is None
    corrupt = bytearray(raw)
    corrupt[20] ^= 1  # nPage, checksum not updated
    assert WalIndexHeader.decode(bytes(corrupt) * 2) is None
    assert WalIndexHeader.decode(bytes(96)) is None
    assert WalIndexHeader.decode(raw) is None  # one copy only


def _wal_frames(wal: bytes, page_size: int) -> list[bytes]:
    frame = 24 + page_size
    return [wal[off : off + 24] for off in range(32, len(wal) - frame + 1, frame)]


@pytest.mark.parametrize("page_size", [1024, 4096, 65536])
def test_decode_real_shm(tmp_path: Path, page_size: int) -> None:
    db = tmp_path / "a.db"
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute(f"PRAGMA page_size={page_size}")
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA wal_autocheckpoint=0")  # keep every frame in the WAL
        con.execute("CREATE TABLE t(x)")
        changes = []
        for i in range(6):
            con.execute("INSERT INTO t VALUES (?)", (os.urandom(700 * (i + 1)),))
            shm = Path(f"{db}-shm").read_bytes()  # the connection keeps it mapped: live bytes
            wal = Path(f"{db}-wal").read_bytes()
            hdr = WalIndexHeader.decode(shm)
            assert hdr is not None
            frames = _wal_frames(wal, page_size)
            assert hdr.page_size == page_size
            assert hdr.max_frame == len(frames)
            assert hdr.page_count == con.execute("PRAGMA page_count").fetchone()[0]
            # The last frame is a commit frame; its size field is the database size.
            assert struct.unpack(">I", frames[-1][4:8])[0] == hdr.page_count
            # aSalt is the WAL header's salt bytes as they are; aFrameCksum the last frame's
            # checksum (big-endian in the WAL file, native in the wal-index).
            assert hdr.salt == struct.unpack(NATIVE + "2I", wal[16:24])
            assert hdr.frame_checksum == struct.unpack(">2I", frames[-1][16:24])
            assert hdr.big_end_cksum == (struct.unpack(">I", wal[:4])[0] & 1)
            assert hdr.encode() == shm[:48] == shm[48:96]
            ckpt = WalCkptInfo.decode(shm)
            assert ckpt.backfill == 0
            changes.append(hdr.change)
        assert changes == sorted(changes) and len(set(changes)) == len(changes)
    finally:
        con.close()


def test_changed_header_from_live_shm(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE t(x)")
        con.execute("INSERT INTO t VALUES (1)")
        current = bytearray(Path(f"{db}-shm").read_bytes()[:SHM_HEADER_REGION_SIZE])
    finally:
        con.close()
    old = WalIndexHeader.decode(current)
    assert old is not None and old.max_frame > 0
    current[LOCK_OFFSET : LOCK_OFFSET + 8] = b"LOCKBYTE"  # must come back untouched
    out = changed_header(bytes(current), 4096, 9)
    assert len(out) == SHM_HEADER_REGION_SIZE
    new = WalIndexHeader.decode(out)
    assert new is not None
    assert new.change == old.change + 1
    assert (new.max_frame, new.page_count, new.frame_checksum) == (0, 9, (0, 0))
    assert (new.salt, new.page_size, new.big_end_cksum) == (old.salt, 4096, old.big_end_cksum)
    ckpt = WalCkptInfo.decode(out)
    assert ckpt.backfill == 0 and ckpt.backfill_attempted == 0
    assert ckpt.read_marks == (0, 0, READMARK_NOT_USED, READMARK_NOT_USED, READMARK_NOT_USED)
    assert out[LOCK_OFFSET : LOCK_OFFSET + 8] == b"LOCKBYTE"
    # Applied twice: bumped twice.
    again = WalIndexHeader.decode(changed_header(out, 4096, 9))
    assert again is not None and again.change == old.change + 2


def test_changed_header_without_a_valid_header() -> None:
    seen = set()
    for current in (b"", b"\0\0\0", bytes(136), bytes(32768)):
        out = changed_header(current, 65536, 5)
        hdr = WalIndexHeader.decode(out)
        assert hdr is not None
        assert hdr.change not in (0, 1)
        assert hdr.salt != (0, 0)
        assert (hdr.page_size, hdr.page_count, hdr.max_frame, hdr.is_init) == (65536, 5, 0, 1)
        assert out[LOCK_OFFSET : LOCK_OFFSET + 8] == bytes(8)
        seen.add(hdr.change)
    assert len(seen) == 4  # random, not a constant a stale reader could already hold
    # An invalid header that still carries salts keeps them.
    torn = WalIndexHeader(change=3, salt=(11, 22)).encode() + bytes(48)
    hdr = WalIndexHeader.decode(changed_header(torn, 4096, 1))
    assert hdr is not None and hdr.salt == (11, 22)
    # wrap-around of iChange
    top = WalIndexHeader(change=0xFFFFFFFF, salt=(1, 1)).encode() * 2
    hdr = WalIndexHeader.decode(changed_header(top, 4096, 1))
    assert hdr is not None and hdr.change == 0


def test_wal_reader_cache_needs_the_header_bump(
    tmp_path: Path, spawn: Callable[..., Proc], fences: Callable[[Path], ApplyFence]
) -> None:
    """A WAL-mode reader keeps its page cache while the wal-index header is unchanged: pages
    changed in the database file underneath are *not* seen (stale) until changed_header is
    written, and then they are, including a database that grew."""
    primary = sqlite3.connect(tmp_path / "primary.db", isolation_level=None)
    replica = tmp_path / "replica.db"
    try:
        primary.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        primary.execute("INSERT INTO t VALUES (1, 'old-value')")
        state = snapshot(primary, wal=True)
        make_replica(replica, state, wal=True)
        page_size = primary.execute("PRAGMA page_size").fetchone()[0]

        r = reader(spawn, replica)
        assert r.rows("PRAGMA journal_mode") == [["wal"]]
        assert r.rows("SELECT v FROM t") == [["old-value"]]  # now cached

        fence = fences(replica)
        primary.execute("UPDATE t SET v = 'new-value' WHERE id = 1")  # same size, same pages
        new = snapshot(primary, wal=True)
        with fence.held(True, timeout=5):
            assert mode_of(fence) == "wal-index"  # the idle WAL connection still holds SHARED
            for off in range(0, len(new), page_size):
                os.pwrite(fence.db_fd, new[off : off + page_size], off)
        # Without the header bump the reader serves its cached, stale page.
        assert r.rows("SELECT v FROM t") == [["old-value"]]

        with fence.held(True, timeout=5):
            assert fence.write_shm_header(page_size, len(new) // page_size)
        assert r.rows("SELECT v FROM t") == [["new-value"]]
        assert r.rows("PRAGMA integrity_check") == [["ok"]]
        state = new

        # Growth: nPage in the header is what a WAL reader takes as the database size.
        primary.executemany("INSERT INTO t(v) VALUES (?)", [("x" * 1000,)] * 200)
        new = snapshot(primary, wal=True)
        written, mode = apply(fence, state, new, page_size, wal=True)
        assert written > 50 and mode == "wal-index"
        assert r.rows("SELECT count(*), max(id) FROM t") == [[201, 201]]
        assert r.rows("PRAGMA integrity_check") == [["ok"]]
        hdr = WalIndexHeader.decode(Path(f"{replica}-shm").read_bytes()[:96])
        assert hdr is not None and hdr.page_count == len(new) // page_size
    finally:
        primary.close()


# --------------------------------------------------------------------------------------------
# locking


def _rollback_db(tmp_path: Path) -> Path:
    db = tmp_path / "r.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("CREATE TABLE t(x)")
    con.execute("INSERT INTO t VALUES (1)")
    con.close()
    return db


def _wal_db(tmp_path: Path) -> Path:
    """A WAL-mode database with an empty WAL, made by copying (so no connection of this
    process ever touches it)."""
    primary = sqlite3.connect(tmp_path / "p.db", isolation_level=None)
    primary.execute("CREATE TABLE t(x)")
    primary.execute("INSERT INTO t VALUES (1)")
    db = tmp_path / "w.db"
    make_replica(db, snapshot(primary, wal=True), wal=True)
    primary.close()
    return db


def test_rollback_reader_blocks_the_fence(
    tmp_path: Path, spawn: Callable[..., Proc], fences: Callable[[Path], ApplyFence]
) -> None:
    db = _rollback_db(tmp_path)
    fence = fences(db)
    r = reader(spawn, db)
    assert r.rows("BEGIN") == []
    assert r.rows("SELECT count(*) FROM t") == [[1]]  # SHARED held until COMMIT

    start = time.monotonic()
    with pytest.raises(FenceTimeout) as info:
        fence.acquire(False, timeout=0.5)
    assert 0.5 <= time.monotonic() - start < 2.0
    assert str(db) in str(info.value) and "longer than 0.5 s" in str(info.value)
    assert info.value.errno == errno.EBUSY and isinstance(info.value, OSError)
    assert fence.mode is None and not fence.is_held
    # Nothing left behind: PENDING was released, a new reader gets SHARED at once.
    other = reader(spawn, db)
    assert other.rows("SELECT count(*) FROM t") == [[1]]

    assert r.rows("COMMIT") == []
    fence.acquire(False, timeout=5)
    try:
        assert mode_of(fence) == "exclusive"
        # While held: busy_timeout 0 fails at once ...
        reply = other.sql("SELECT count(*) FROM t")
        assert reply.get("code") == "SQLITE_BUSY", reply
        assert reply["error"] == "database is locked"
        # ... and a busy handler waits ...
        patient = reader(spawn, db, busy_timeout_ms=5000)
        patient.send({"sql": "SELECT count(*) FROM t"})
        assert patient.no_reply_within(0.3)
    finally:
        fence.release()
    # ... and proceeds after release.
    assert patient.recv()["rows"] == [[1]]
    assert other.rows("SELECT count(*) FROM t") == [[1]]


def test_rollback_fence_takes_pending_first(
    tmp_path: Path, spawn: Callable[..., Proc], fences: Callable[[Path], ApplyFence]
) -> None:
    """A reader stuck between "read-lock PENDING" and SHARED (or another writer holding it)
    keeps the fence at step (a); a reader holding SHARED while the fence waits cannot be
    joined by new ones (PENDING is held), and the fence gets in as soon as it leaves."""
    db = _rollback_db(tmp_path)
    fence = fences(db)
    pending = locker(spawn, db, PENDING_BYTE, 1, "read")
    with pytest.raises(FenceTimeout, match="PENDING"):
        fence.acquire(False, timeout=0.3)
    pending.send({})
    pending.popen.wait(timeout=5)

    shared = locker(spawn, db, SHARED_FIRST, SHARED_SIZE, "read")
    result: list[BaseException | str | None] = []

    def take() -> None:
        try:
            fence.acquire(False, timeout=10)
            result.append(fence.mode)
        except BaseException as exc:  # reported to the test thread
            result.append(exc)

    thread = threading.Thread(target=take)
    thread.start()
    try:
        time.sleep(0.3)
        assert not result  # waiting at step (d)
        newcomer = reader(spawn, db)
        assert newcomer.sql("SELECT 1 FROM t").get("code") == "SQLITE_BUSY"  # PENDING held
        shared.send({})
        thread.join(timeout=5)
        assert result == ["exclusive"]
    finally:
        thread.join(timeout=15)
        fence.release()


def test_wal_reader_blocks_the_fence(
    tmp_path: Path, spawn: Callable[..., Proc], fences: Callable[[Path], ApplyFence]
) -> None:
    db = _wal_db(tmp_path)
    fence = fences(db)
    # Nobody connected: plain EXCLUSIVE on the database.
    with fence.held(True, timeout=1):
        assert mode_of(fence) == "exclusive"
        assert not fence.write_shm_header(4096, 2)  # no -shm yet: nothing to rewrite

    r = reader(spawn, db)
    assert r.rows("PRAGMA journal_mode") == [["wal"]]
    assert r.rows("BEGIN") == []
    assert r.rows("SELECT count(*) FROM t") == [[1]]  # holds a WAL read-mark lock

    with pytest.raises(FenceTimeout, match=r"longer than 0\.4 s") as info:
        fence.acquire(True, timeout=0.4)
    assert "-shm lock bytes" in str(info.value)
    assert not fence.is_held
    other = reader(spawn, db)  # nothing left behind: new connections and reads work
    assert other.rows("SELECT count(*) FROM t") == [[1]]

    assert r.rows("COMMIT") == []
    patient = reader(spawn, db, busy_timeout_ms=10_000)
    assert patient.rows("SELECT count(*) FROM t") == [[1]]
    fence.acquire(True, timeout=5)
    try:
        # Both connections are idle but keep SHARED on the database: fenced at the -shm.
        assert mode_of(fence) == "wal-index"
        newcomer = reader(spawn, db)
        reply = newcomer.sql("SELECT count(*) FROM t")
        assert reply.get("code") == "SQLITE_BUSY", reply  # SHARED refused (PENDING held)
        # A connected reader finds the wal-index header invalidated and RECOVER held: busy
        # (SQLITE_BUSY_RECOVERY), so it waits in its busy handler...
        reply = r.sql("SELECT count(*) FROM t")
        assert reply.get("code") == "SQLITE_BUSY_RECOVERY", reply
        # ... for as long as its busy_timeout allows.
        patient.send({"sql": "SELECT count(*) FROM t"})
        assert patient.no_reply_within(0.3)
        assert fence.write_shm_header(4096, 2)
    finally:
        fence.release()
    assert patient.recv()["rows"] == [[1]]
    assert r.rows("SELECT count(*) FROM t") == [[1]]
    assert other.rows("SELECT count(*) FROM t") == [[1]]
    assert newcomer.rows("SELECT count(*) FROM t") == [[1]]


def test_wal_fence_follows_a_recreated_shm(
    tmp_path: Path, spawn: Callable[..., Proc], fences: Callable[[Path], ApplyFence]
) -> None:
    """The last connection to close deletes -wal and -shm; the next one creates new files.
    The fence must lock the new -shm, not the deleted inode it still has open."""
    db = _wal_db(tmp_path)
    shm = Path(f"{db}-shm")
    fence = fences(db)
    first = reader(spawn, db)
    assert first.rows("SELECT count(*) FROM t") == [[1]]
    with fence.held(True, timeout=5):
        assert mode_of(fence) == "wal-index"
    first.send({"op": "exit"})
    first.popen.wait(timeout=5)
    assert not shm.exists()

    second = reader(spawn, db)
    assert second.rows("BEGIN") == []
    assert second.rows("SELECT count(*) FROM t") == [[1]]
    assert shm.exists()
    # The fence's -shm descriptor is now on a deleted inode (inode numbers may even be reused,
    # so compare behaviour, not numbers): it must see the new reader's read lock.
    with pytest.raises(FenceTimeout):
        fence.acquire(True, timeout=0.3)
    assert second.rows("COMMIT") == []
    with fence.held(True, timeout=5):
        assert mode_of(fence) == "wal-index"
        assert fence.shm_fd is not None
        assert os.fstat(fence.shm_fd).st_ino == shm.stat().st_ino


def test_wal_fence_waits_for_shm_to_appear(
    tmp_path: Path, spawn: Callable[..., Proc], fences: Callable[[Path], ApplyFence]
) -> None:
    """WAL mode, SHARED refused and no -shm yet: keep retrying both (b) and (c)."""
    db = _wal_db(tmp_path)
    fence = fences(db)
    shared = locker(spawn, db, SHARED_FIRST, SHARED_SIZE, "read")
    with pytest.raises(FenceTimeout, match="SHARED"):
        fence.acquire(True, timeout=0.3)
    timer = threading.Timer(0.3, lambda: Path(f"{db}-shm").write_bytes(bytes(32768)))
    timer.start()
    try:
        fence.acquire(True, timeout=5)
        assert mode_of(fence) == "wal-index"
        assert fence.write_shm_header(4096, 2)
        hdr = WalIndexHeader.decode(Path(f"{db}-shm").read_bytes())
        assert hdr is not None and hdr.page_count == 2
    finally:
        timer.join()
        fence.release()
    shared.send({})


def test_fence_misuse(tmp_path: Path, fences: Callable[[Path], ApplyFence]) -> None:
    db = _rollback_db(tmp_path)
    fence = fences(db)
    with pytest.raises(RuntimeError):
        fence.write_shm_header(4096, 1)
    with fence.held(False, timeout=1), pytest.raises(RuntimeError, match="already held"):
        fence.acquire(False, timeout=1)
    assert not fence.is_held
    with pytest.raises(FileNotFoundError):
        fences(tmp_path / "missing.db").acquire(False, timeout=1)
    fence.close()
    fence.close()
    with fence.held(False, timeout=1):  # reopens after close
        assert mode_of(fence) == "exclusive"


# --------------------------------------------------------------------------------------------
# the real proof: replicate a busy primary into a replica that four readers hammer


READ_SECONDS = 6.0
READERS = 4


def _bank_primary(path: Path) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute("CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INT NOT NULL)")
    con.execute("CREATE INDEX accounts_balance ON accounts(balance)")
    con.execute("CREATE TABLE history(id INTEGER PRIMARY KEY, src INT, dst INT, amount INT,"
                " note TEXT)")
    con.execute("CREATE INDEX history_src ON history(src, amount)")
    con.execute("CREATE TABLE meta(v INT NOT NULL)")
    con.execute("INSERT INTO meta VALUES (0)")
    con.executemany("INSERT INTO accounts VALUES (?, 1000)", [(i,) for i in range(1, 101)])
    con.close()


@pytest.mark.slow
@pytest.mark.parametrize("wal", [False, True], ids=["rollback", "wal"])
def test_replicated_bank_readers_see_consistent_fresh_data(
    tmp_path: Path, spawn: Callable[..., Proc], fences: Callable[[Path], ApplyFence], wal: bool
) -> None:
    primary_path = tmp_path / "primary.db"
    replica = tmp_path / "replica.db"
    _bank_primary(primary_path)
    primary = sqlite3.connect(primary_path, isolation_level=None, timeout=5)
    try:
        page_size = primary.execute("PRAGMA page_size").fetchone()[0]
        state = snapshot(primary, wal)
        make_replica(replica, state, wal)
        fence = fences(replica)

        writer = spawn("bank-writer", str(primary_path), str(READ_SECONDS + 0.5))
        readers = [spawn("reader-loop", str(replica), str(READ_SECONDS)) for _ in range(READERS)]

        applies = 0
        pages = 0
        modes: dict[str | None, int] = {}
        waits: list[float] = []
        deadline = time.monotonic() + READ_SECONDS + 15
        while any(r.popen.poll() is None for r in readers):
            assert time.monotonic() < deadline, "readers did not finish"
            new = snapshot(primary, wal)
            written, mode = apply(fence, state, new, page_size, wal, page_pause=0.001,
                                  waits=waits)
            if written or len(new) != len(state):
                applies += 1
                pages += written
                modes[mode] = modes.get(mode, 0) + 1
            state = new
            time.sleep(0.005)

        results = [r.recv(timeout=5) for r in readers]
        writer_result = writer.recv(timeout=READ_SECONDS + 10)
        # Last apply after the writer stopped: the replica must equal the primary.
        new = snapshot(primary, wal)
        apply(fence, state, new, page_size, wal)
        final_version = primary.execute("SELECT v FROM meta").fetchone()[0]
    finally:
        primary.close()

    waits.sort()
    summary = {"applies": applies, "pages": pages, "modes": modes, "writer": writer_result,
               "fence_wait_ms": {"median": round(1000 * waits[len(waits) // 2], 2),
                                 "max": round(1000 * waits[-1], 2)} if waits else None,
               "readers": results}
    print(json.dumps(summary))
    for result in results:
        assert result["errors"] == [], summary
        assert result["bad"] == [], summary
        assert result["iterations"] > 50, summary
        assert result["versions"] >= 10, summary  # fresh data, not a stale cache
    assert writer_result["errors"] == [] and writer_result["commits"] > 100, summary
    assert applies > 50, summary
    if wal:
        assert modes.get("wal-index", 0) > 0, summary
    check = reader(spawn, replica)
    assert check.rows("PRAGMA integrity_check") == [["ok"]]
    assert check.rows("SELECT v, (SELECT sum(balance) FROM accounts) FROM meta") == [
        [final_version, 100 * 1000]
    ]
    assert replica.read_bytes() == new
