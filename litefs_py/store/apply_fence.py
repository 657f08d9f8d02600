"""Fence SQLite readers out of a replica database while the replica changes it.

A replica writes pages into a database file that SQLite processes are reading. It must do so
only when no reader is inside a read transaction, and it must keep new ones out until it is
done, using SQLite's own lock bytes exactly as another SQLite process would (unix VFS, os_unix.c
and wal.c), so that readers wait in their busy handler instead of reading torn pages:

- Database file: PENDING byte 0x40000000, RESERVED 0x40000001, SHARED range 0x40000002..+510.
  A reader takes SHARED as "read-lock PENDING, read-lock the SHARED range, unlock PENDING";
  EXCLUSIVE is a write lock on the whole SHARED range. Holding a write lock on PENDING therefore
  stops new SHARED locks while existing ones drain (SQLite's own writer-starvation guard).
- WAL mode: every connection keeps its SHARED lock for as long as it is open, so EXCLUSIVE on
  the database is only possible when nobody is connected. Readers are fenced at the `-shm` lock
  bytes instead (offset 120: WRITE, CKPT, RECOVER, READ0..READ4): a WAL read transaction holds a
  shared lock on one READ byte from start to end. Holding all eight exclusively is what a
  checkpointer restarting the WAL holds, and then the wal-index header may be rewritten.

All locks are POSIX fcntl locks (`fcntl.lockf`), which belong to the *process* and are dropped
when the process closes *any* descriptor of the file. So the fence keeps exactly one descriptor
per file for its whole life and never opens or closes another one while it holds locks; whoever
uses it must not open/close these files elsewhere in the same process while the fence is held
(write pages through `ApplyFence.db_fd`). Locks of one process never conflict with each other,
so the fence only excludes *other* processes.

Blocking API: call it from a worker thread, never from the trio thread when the files live on
our own FUSE mount (the lock and I/O requests would need that thread to answer them).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from litefs_py.sqlite.shm import (
    LOCK_COUNT,
    LOCK_OFFSET,
    SHM_HEADER_REGION_SIZE,
    WALINDEX_HEADER_SIZE,
    changed_header,
)

PENDING_BYTE = 0x40000000
RESERVED_BYTE = PENDING_BYTE + 1
SHARED_FIRST = PENDING_BYTE + 2
SHARED_SIZE = 510

DMS_BYTE = 128  # -shm: every connection that has the wal-index open holds it shared
HOLDER_CHECK_INTERVAL = 0.05  # seconds between looks at /proc/locks while waiting

FenceMode = Literal["exclusive", "wal-index"]

_MIN_DELAY = 0.0002
_MAX_DELAY = 0.005


class FenceTimeout(OSError):
    """Readers held their locks for longer than the timeout; nothing is held any more."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EBUSY, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _try_write_lock(fd: int, start: int, length: int) -> bool:
    """One non-blocking F_SETLK F_WRLCK attempt; False if another process holds a conflicting
    lock (EAGAIN or EACCES, both are allowed by POSIX)."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start, os.SEEK_SET)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _unlock(fd: int, start: int, length: int) -> None:
    fcntl.lockf(fd, fcntl.LOCK_UN, length, start, os.SEEK_SET)


def _lock_holders(fd: int, start: int, end: int) -> set[int]:
    """Pids of other processes holding a POSIX lock on `fd`'s file overlapping bytes
    [start, end], from /proc/locks (the kernel's list of every lock on the host)."""
    st = os.fstat(fd)
    file_id = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    me = os.getpid()
    holders: set[int] = set()
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            # "1: POSIX  ADVISORY  READ 24410 00:29:9 128 128" (blocked waiters have "->")
            if len(fields) < 8 or fields[1] != "POSIX" or fields[5] != file_id:
                continue
            pid = int(fields[4])
            lo = int(fields[6])
            hi = -1 if fields[7] == "EOF" else int(fields[7])
            if pid != me and lo <= end and (hi == -1 or hi >= start):
                holders.add(pid)
    return holders


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the inode `fd` is open on (it may have been deleted or
    replaced: SQLite deletes `-shm` when the last connection closes cleanly)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


class ApplyFence:
    """SQLite-compatible exclusion of readers from one database while a replica changes it.

    `db_path` and `shm_path` are the paths readers use (on the mount, for the filesystem).
    Descriptors are opened lazily and kept until `close()`. Not reentrant; use one fence per
    database and one thread at a time.
    """

    def __init__(
        self,
        db_path: Path,
        shm_path: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.db_path = Path(db_path)
        self.shm_path = Path(shm_path)
        self._clock = clock
        self._sleep = sleep
        self._db_fd: int | None = None
        self._shm_fd: int | None = None
        self._pending = False
        self._shared = False
        self._shm_held: set[int] = set()  # shm lock byte offsets held (120..127)
        self._mode: FenceMode | None = None
        # The wal-index header region as it was before the fence invalidated it (None: not
        # invalidated, or already replaced by write_shm_header).
        self._saved_header: bytes | None = None
        self._last_holder_check = float("-inf")
        self._guard = threading.Lock()  # a second thread must not interleave acquire/release

    # -- state ---------------------------------------------------------------------------

    @property
    def mode(self) -> FenceMode | None:
        """What is held: "exclusive" (EXCLUSIVE on the database: nobody is connected),
        "wal-index" (PENDING on the database plus all eight `-shm` lock bytes), or None."""
        return self._mode

    @property
    def is_held(self) -> bool:
        return self._mode is not None

    @property
    def db_fd(self) -> int:
        """The fence's read-write descriptor of the database. Write replica pages through it
        while the fence is held; never close it (that would drop the fence's locks)."""
        return self._open_db()

    @property
    def shm_fd(self) -> int | None:
        """The descriptor of `-shm` if the fence has it open."""
        return self._shm_fd

    # -- descriptors -----------------------------------------------------------------------

    def _refresh_db_fd(self) -> None:
        """Before taking locks: drop the descriptor if the path now names another inode (the
        database was replaced). Safe only while nothing is held: the old inode carries no
        fence lock, so closing it drops nothing."""
        assert not self._pending and not self._shared and not self._shm_held
        if self._db_fd is not None and not _same_file(self._db_fd, self.db_path):
            os.close(self._db_fd)
            self._db_fd = None
        self._open_db()  # now: write locks need it, and a missing database fails early

    def _current_shm_fd(self) -> int | None:
        """The `-shm` descriptor, reopened if the file was deleted or replaced since (SQLite's
        last connection to close deletes it; the next one creates a new inode, and locks on
        the old one would fence nobody). Called with no -shm lock held, so closing the stale
        descriptor drops nothing. Checked after PENDING is held: from then on no connection
        can get EXCLUSIVE (needed to delete -shm) or SHARED (needed to create it), so the
        inode we lock is the one readers use until release."""
        assert not self._shm_held
        if self._shm_fd is not None and not _same_file(self._shm_fd, self.shm_path):
            os.close(self._shm_fd)
            self._shm_fd = None
        return self._open_shm_if_exists()

    def _open_db(self) -> int:
        # O_RDWR: fcntl write locks need a descriptor open for writing.
        if self._db_fd is None:
            self._db_fd = os.open(self.db_path, os.O_RDWR | os.O_CLOEXEC)
        return self._db_fd

    def _open_shm_if_exists(self) -> int | None:
        """Open `-shm` read-write if it exists, never creating it: a `-shm` is SQLite's to
        create and initialise (the first connection truncates it under the DMS lock)."""
        if self._shm_fd is None:
            try:
                self._shm_fd = os.open(self.shm_path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
        return self._shm_fd

    # -- acquire / release -----------------------------------------------------------------

    def acquire(self, wal_mode: bool, timeout: float = 30.0) -> None:
        """Block until readers are fenced out (see the module docstring), or raise
        FenceTimeout after `timeout` seconds with nothing held.

        In WAL mode keep `timeout` well under ~10 s: a WAL reader that finds its read-mark lock
        busy retries inside SQLite for about 10 s (walTryBeginRead, independent of
        busy_timeout) and then fails with SQLITE_PROTOCOL.
        """
        if not self._guard.acquire(blocking=False):
            raise RuntimeError(f"{self.db_path}: apply fence is being used by another thread")
        try:
            if self._mode is not None:
                raise RuntimeError(f"{self.db_path}: apply fence is already held ({self._mode})")
            self._refresh_db_fd()
            try:
                self._acquire(wal_mode, timeout)
            except BaseException:
                self._release_locks()
                raise
        finally:
            self._guard.release()

    def _acquire(self, wal_mode: bool, timeout: float) -> None:
        deadline = self._clock() + timeout
        db_fd = self.db_fd
        delay = _MIN_DELAY

        # (a) PENDING: from here on no new connection gets SHARED (it read-locks PENDING first),
        # so the readers we wait for can only go away, never come back.
        while not _try_write_lock(db_fd, PENDING_BYTE, 1):
            delay = self._wait(deadline, delay, timeout, "PENDING byte of the database")
        self._pending = True

        delay = _MIN_DELAY
        while True:
            # (b) EXCLUSIVE: granted iff no connection holds SHARED. Rollback-mode readers hold
            # it only inside a read transaction; WAL-mode connections for their whole life.
            if _try_write_lock(db_fd, SHARED_FIRST, SHARED_SIZE):
                self._shared = True
                self._mode = "exclusive"
                return
            # (c) WAL mode with connections: fence at the -shm lock bytes, as a checkpointer.
            if wal_mode and self._current_shm_fd() is not None:
                self._acquire_shm_locks(deadline, timeout)
                self._mode = "wal-index"
                return
            # (d) rollback mode (or WAL before any -shm exists): wait for SHARED to drain.
            # Unless every process holding SHARED is a WAL connection (it also holds the -shm
            # DMS byte): one opened before the database left WAL mode keeps SHARED for as
            # long as it is open and reads under the -shm locks, so fence it there.
            if not wal_mode and self._only_wal_connections(db_fd):
                self._acquire_shm_locks(deadline, timeout)
                self._mode = "wal-index"
                return
            delay = self._wait(deadline, delay, timeout, "SHARED locks on the database")

    def _only_wal_connections(self, db_fd: int) -> bool:
        now = self._clock()
        if now - self._last_holder_check < HOLDER_CHECK_INTERVAL:
            return False
        self._last_holder_check = now
        shm_fd = self._current_shm_fd()
        if shm_fd is None:
            return False
        shared = _lock_holders(db_fd, SHARED_FIRST, SHARED_FIRST + SHARED_SIZE - 1)
        return bool(shared) and shared <= _lock_holders(shm_fd, DMS_BYTE, DMS_BYTE)

    def _acquire_shm_locks(self, deadline: float, timeout: float) -> None:
        """Writer preference at the -shm lock bytes, so busy readers cannot starve the replica.

        With an empty WAL every reader takes READ0 (byte 123), and PENDING does not stop WAL
        connections (they hold SHARED already): overlapping readers would keep READ0 shared
        forever. So first WRITE, CKPT and RECOVER (120..122; readers hold them only while
        recovering the wal-index), then the header is made invalid (copy 1 zeroed): a reader
        starting a transaction now finds a bad header, needs the WRITE lock to recover, sees
        RECOVER held and waits in its busy handler (SQLITE_BUSY_RECOVERY). Readers already
        inside a transaction finish and drop READ0..READ4 (123..127), which are taken last.
        `write_shm_header` writes the valid new header; `release` restores the old one if no
        new header was written.
        """
        shm_fd = self._shm_fd
        assert shm_fd is not None
        delay = _MIN_DELAY
        first = range(LOCK_OFFSET, LOCK_OFFSET + 3)
        everything = range(LOCK_OFFSET, LOCK_OFFSET + LOCK_COUNT)
        for wanted in (first, everything):
            while True:
                for offset in wanted:
                    if offset not in self._shm_held and _try_write_lock(shm_fd, offset, 1):
                        self._shm_held.add(offset)
                missing = sorted(set(wanted) - self._shm_held)
                if not missing:
                    break
                delay = self._wait(deadline, delay, timeout, f"-shm lock bytes {missing}")
            if wanted is first:
                self._saved_header = os.pread(shm_fd, SHM_HEADER_REGION_SIZE, 0)
                if len(self._saved_header) == SHM_HEADER_REGION_SIZE:
                    os.pwrite(shm_fd, bytes(WALINDEX_HEADER_SIZE), 0)
                else:
                    self._saved_header = None  # no header yet: readers recover anyway

    def _wait(self, deadline: float, delay: float, timeout: float, what: str) -> float:
        """Sleep before the next attempt, or raise FenceTimeout once the deadline passed.
        Backoff 0.2 ms growing to 5 ms: reader transactions are short and every sleep adds
        replication lag, but tight polling would steal CPU from the readers we wait for."""
        now = self._clock()
        if now >= deadline:
            raise FenceTimeout(
                f"{self.db_path}: readers held their locks for longer than {timeout:g} s "
                f"(waiting for the {what}); the replica did not apply"
            )
        self._sleep(min(delay, deadline - now))
        return min(delay * 1.5, _MAX_DELAY)

    def release(self) -> None:
        """Drop every lock the fence holds; descriptors stay open (closing one would be the
        same as unlocking, but reopening later would race with SQLite deleting `-shm`)."""
        with self._guard:
            self._release_locks()

    def _release_locks(self) -> None:
        # Reverse order of acquisition: readers waiting on -shm bytes see them before new
        # connections (PENDING) can join.
        try:
            if self._shm_held:
                assert self._shm_fd is not None
                if self._saved_header is not None:
                    # Nothing changed after all (e.g. a timeout): the old header is right.
                    os.pwrite(self._shm_fd, self._saved_header, 0)
                _unlock(self._shm_fd, LOCK_OFFSET, LOCK_COUNT)
            if self._shared:
                assert self._db_fd is not None
                _unlock(self._db_fd, SHARED_FIRST, SHARED_SIZE)
            if self._pending:
                assert self._db_fd is not None
                _unlock(self._db_fd, PENDING_BYTE, 1)
        finally:
            self._saved_header = None
            self._shm_held.clear()
            self._shared = False
            self._pending = False
            self._mode = None

    def close(self) -> None:
        """Release and close the descriptors. The fence may be used again (it reopens)."""
        with self._guard:
            try:
                self._release_locks()
            finally:
                for fd in (self._shm_fd, self._db_fd):
                    if fd is not None:
                        os.close(fd)
                self._shm_fd = None
                self._db_fd = None

    @contextlib.contextmanager
    def held(self, wal_mode: bool, timeout: float = 30.0) -> Iterator[ApplyFence]:
        """`with fence.held(wal_mode): ...` acquires, and releases even on error."""
        self.acquire(wal_mode, timeout)
        try:
            yield self
        finally:
            self.release()

    def __enter__(self) -> ApplyFence:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the wal-index header --------------------------------------------------------------

    def write_shm_header(self, page_size: int, page_count: int) -> bool:
        """After changing the database while held: rewrite the `-shm` header region so WAL
        readers drop their page caches (iChange + 1) and read the database file (mxFrame 0),
        with nPage = page_count (a WAL reader takes the database size from nPage, not from the
        file size). Returns whether a header was written.

        In "wal-index" mode this is required and goes through the locked `-shm` descriptor.
        In "exclusive" mode nobody is attached to `-shm` (every attached connection holds
        SHARED on the database), so the next connection will truncate and rebuild it anyway;
        if it exists it is still rewritten (harmless), if not nothing is written.
        """
        if self._mode is None:
            raise RuntimeError(f"{self.db_path}: write_shm_header needs the apply fence held")
        if self._mode == "exclusive":
            fd = self._current_shm_fd()  # the fence holds no -shm lock a close could drop
            if fd is None:
                return False
        else:
            fd = self._shm_fd
            assert fd is not None
        current = self._saved_header or os.pread(fd, SHM_HEADER_REGION_SIZE, 0)
        new = changed_header(current, page_size, page_count)
        # One pwrite: readers cannot act on a half-written header, because we hold every lock
        # byte; a reader that sees the two copies differ goes for the WRITE lock to recover,
        # finds it busy and waits in its busy handler.
        written = os.pwrite(fd, new, 0)
        self._saved_header = None
        if written != len(new):
            raise OSError(errno.EIO, f"{self.shm_path}: short write of the wal-index header")
        return True
