"""One database under the mount: its backing files, its position, and commit capture.

The FUSE layer calls `write`, `truncate`, `unlink` and `fsync` with the file kind; this class
performs the operation on the backing file and recognises commits:

- rollback journal modes: database writes while a journal exists are noted as dirty pages; the
  journal being deleted (DELETE), truncated to 0 (TRUNCATE) or having its header zeroed
  (PERSIST) commits them;
- WAL mode: `WalTracker` recognises commit frames.

A commit becomes an LTX file (renamed into place) *before* the operation that completes it is
performed on the backing file, so when SQLite's COMMIT returns the LTX file exists; if writing
the LTX file fails, the operation is refused (EIO) and nothing changes. Transactions that change
no page (read-only, rolled back, WAL padding frames) produce no LTX file.

Nothing here awaits: a handler runs a whole commit without yielding to another FUSE request.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import BinaryIO, TypeVar

from ..ltx import (
    EMPTY_DATABASE_CHECKSUM,
    FLAG_V3_NO_CHECKSUM,
    Encoder,
    Header,
    compact,
    encode_bytes,
)
from .ltx_log import LtxLog
from .page_table import PageTable, TableUndo
from .paths import DBPaths
from .wal_tracker import FRAME_HEADER_SIZE, WalCommit, WalTracker

log = logging.getLogger("litefs.store")
T = TypeVar("T")

JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")


class FileKind(Enum):
    DATABASE = "database"
    JOURNAL = "journal"
    WAL = "wal"
    SHM = "shm"


SUFFIXES = {FileKind.JOURNAL: "-journal", FileKind.WAL: "-wal", FileKind.SHM: "-shm"}


class CaptureError(OSError):
    """A write that cannot be captured; the application sees EIO."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


def page_size_from_header(header: bytes) -> int:
    """Page size from the first 100 bytes of a database, 0 if not a database header yet."""
    if len(header) < 20 or header[:16] != b"SQLite format 3\x00":
        return 0
    v = int.from_bytes(header[16:18], "big")
    size = 65536 if v == 1 else v
    return size if 512 <= size <= 65536 and size & (size - 1) == 0 else 0


@dataclass(frozen=True, slots=True)
class Recorded:
    """An LTX file just written for a commit, with what is needed to take it back."""

    path: Path
    prev_txid: int
    prev_checksum: int
    undo: TableUndo


def database_size_in_pages(header: bytes, file_size: int, page_size: int) -> int:
    """The database size SQLite committed: the in-header page count when it is valid (bytes
    92-95 equal the change counter at 24-27), else the file size. SQLite truncates a shrunken
    database only after the commit signal, so the file may still be longer then."""
    if len(header) >= 100 and header[92:96] == header[24:28]:
        count = int.from_bytes(header[28:32], "big")
        if count:
            return count
    return file_size // page_size


class DB:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.paths = DBPaths(root)
        root.mkdir(parents=True, exist_ok=True)
        self.ltx = LtxLog(self.paths.ltx_dir)
        self._fds: dict[FileKind, int] = {}
        self.txid = 0
        self.checksum = EMPTY_DATABASE_CHECKSUM
        self.table: PageTable | None = None
        self.dirty: set[int] = set()
        self.wal = WalTracker()
        self.wal_index: dict[int, int] = {}  # pgno -> frame of its newest committed version
        # Called with the TXID after each recorded transaction (the uploader's wake-up).
        self.commit_listeners: list[Callable[[int], None]] = []
        self.shm_opens = 0  # open FUSE handles on -shm (none while WAL writes: exclusive mode)
        # Whether the journal header holds the magic: SQLite writes it (when it syncs the
        # journal) before it overwrites any database page, and deletes, truncates or zeroes
        # it to commit. Every change goes through us, so this is known without reading.
        self._journal_hot = self._read_journal_magic()
        self.deleted = False

    # ---- backing files -------------------------------------------------------------------

    def path(self, kind: FileKind) -> Path:
        return self.paths.root / kind.value

    def exists(self, kind: FileKind) -> bool:
        return kind in self._fds or self.path(kind).exists()

    def fd(self, kind: FileKind, *, create: bool = False, mode: int = 0o644) -> int:
        fd = self._fds.get(kind)
        if fd is None:
            flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
            fd = os.open(self.path(kind), flags, mode)
            self._fds[kind] = fd
            if kind is FileKind.DATABASE:
                self.deleted = False
        return fd

    def _close(self, kind: FileKind) -> None:
        fd = self._fds.pop(kind, None)
        if fd is not None:
            os.close(fd)

    def fingerprint(self) -> bytes:
        """Identity of the database and WAL files (inode, size, mtime): if it changes while
        litefs is not running, saved checksums cannot be trusted."""
        parts = []
        for kind in (FileKind.DATABASE, FileKind.WAL):
            try:
                st = os.stat(self.path(kind))
                parts.append(f"{kind.value}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
            except FileNotFoundError:
                parts.append(f"{kind.value}:-")
        return ";".join(parts).encode()

    def save_state(self) -> None:
        """Persist the page checksums so the next start need not rescan the database."""
        if self.table is not None and not self.deleted:
            for fd in self._fds.values():
                os.fsync(fd)  # the fingerprint must describe the files as they are on disk
            self.table.save(self.paths.page_table, self.txid, self.fingerprint())

    def close(self) -> None:
        self.ltx.close()
        for kind in list(self._fds):
            self._close(kind)

    def _read_journal_magic(self) -> bool:
        try:
            with open(self.path(FileKind.JOURNAL), "rb") as f:
                return f.read(8) == JOURNAL_MAGIC
        except FileNotFoundError:
            return False

    def size(self, kind: FileKind) -> int:
        fd = self._fds.get(kind)
        if fd is not None:
            return os.fstat(fd).st_size
        return self.path(kind).stat().st_size

    def read(self, kind: FileKind, offset: int, size: int) -> bytes:
        return os.pread(self.fd(kind), size, offset)

    @property
    def pos(self) -> tuple[int, int]:
        return self.txid, self.checksum

    @property
    def page_size(self) -> int:
        return self.table.page_size if self.table is not None else 0

    def _db_page_size(self) -> int:
        return page_size_from_header(os.pread(self.fd(FileKind.DATABASE), 100, 0))

    def _wal_mode(self) -> bool:
        """True when the database header says WAL (bytes 18/19 = 2) or a WAL is in use."""
        hdr = os.pread(self.fd(FileKind.DATABASE), 2, 18)
        return hdr == b"\x02\x02" or self.wal.salts is not None

    # ---- operations from the FUSE layer --------------------------------------------------

    def write(self, kind: FileKind, offset: int, data: bytes) -> int:
        if kind is FileKind.DATABASE:
            return self._write_database(offset, data)
        if kind is FileKind.WAL:
            return self._write_wal(offset, data)
        fd = self.fd(kind)
        if kind is FileKind.JOURNAL and offset == 0 and len(data) >= 8:
            hot = data[:8] == JOURNAL_MAGIC
            if self._journal_hot and not hot and self.dirty:
                # PERSIST mode commits by zeroing the journal header.
                n = self._committing(lambda: os.pwrite(fd, data, offset))
            else:
                n = os.pwrite(fd, data, offset)
            self._journal_hot = hot
            return n
        return os.pwrite(fd, data, offset)

    def _committing(self, operation: Callable[[], T]) -> T:
        """Record the rollback-mode transaction, then perform the operation that commits it;
        if that operation fails, take the LTX file back."""
        written = self._commit_rollback()
        try:
            return operation()
        except BaseException:
            if written is not None:
                self._take_back(written)
            raise

    def _write_database(self, offset: int, data: bytes) -> int:
        fd = self.fd(FileKind.DATABASE)
        if self._journal_hot:
            n = os.pwrite(fd, data, offset)
            ps = self.page_size or self._db_page_size() or page_size_from_header(data)
            if ps:
                first = offset // ps + 1
                last = (offset + len(data) - 1) // ps + 1
                self.dirty.update(range(first, last + 1))
            return n
        if self._wal_mode() and not (offset == 0 and len(data) >= 20
                                     and data[18:20] != b"\x02\x02"):
            # A checkpoint: copies committed pages. (Page 1 leaving WAL mode without a
            # journal is PRAGMA journal_mode=MEMORY/OFF, refused below.)
            return os.pwrite(fd, data, offset)
        msg = (f"{self.name}: refusing a database write without a rollback journal or WAL: "
               "journal_mode=MEMORY or OFF cannot be captured; use PRAGMA journal_mode=DELETE, "
               "TRUNCATE, PERSIST or WAL")
        log.error(msg)
        raise CaptureError(msg)

    def _write_wal(self, offset: int, data: bytes) -> int:
        fd = self.fd(FileKind.WAL)
        if self.shm_opens == 0 and offset >= 32:
            msg = (f"{self.name}: refusing a WAL write while no process has the -shm file open: "
                   "locking_mode=EXCLUSIVE in WAL mode cannot be captured; use "
                   "PRAGMA locking_mode=NORMAL")
            log.error(msg)
            raise CaptureError(msg)
        tracker = self.wal
        commit, undo = tracker.process(offset, data, self._read_frame_header)
        if commit is None:
            return os.pwrite(fd, data, offset)
        try:
            written = self._commit_wal(commit, offset, data)
        except BaseException:
            tracker.undo(undo)
            raise
        try:
            n = os.pwrite(fd, data, offset)
        except BaseException:
            tracker.undo(undo)
            if written is not None:
                self._take_back(written)
            raise
        return n

    def _read_frame_header(self, index: int) -> bytes:
        return os.pread(self.fd(FileKind.WAL), FRAME_HEADER_SIZE, self.wal.frame_offset(index))

    def truncate(self, kind: FileKind, size: int) -> None:
        fd = self.fd(kind)
        if kind is FileKind.JOURNAL:
            if size == 0 and self.dirty:
                # TRUNCATE mode commits by truncating the journal to 0.
                self._committing(lambda: os.ftruncate(fd, size))
            else:
                os.ftruncate(fd, size)
            if size < 8:
                self._journal_hot = False
            return
        os.ftruncate(fd, size)
        if kind is FileKind.WAL:
            self.wal.truncate(size)
            if size < 32:
                self.wal_index.clear()

    def unlink(self, kind: FileKind) -> None:
        if kind is FileKind.DATABASE:
            self._delete_database()
            return
        path = self.path(kind)
        if kind is FileKind.JOURNAL:
            if self.dirty:
                # DELETE mode commits by deleting the journal.
                self._committing(path.unlink)
            else:
                path.unlink()
            self._close(kind)
            self._journal_hot = False
            return
        self._close(kind)
        path.unlink()
        if kind is FileKind.WAL:
            self.wal.reset()
            self.wal_index.clear()

    def fsync(self, kind: FileKind, datasync: bool = False) -> None:
        self.fsync_job(kind, datasync)()

    def fsync_job(self, kind: FileKind, datasync: bool = False) -> Callable[[], None]:
        """The blocking work of SQLite's fsync of one file, safe to run in a worker thread.

        LTX files first: SQLite's fsync is the point from which it treats the transaction as
        durable, so the LTX files it depends on must be durable no later than that. The file
        descriptor is duplicated so a concurrent close cannot pull it away.
        """
        ltx_job = self.ltx.sync_job()
        fd = os.dup(self.fd(kind))
        sync = os.fdatasync if datasync else os.fsync

        def work() -> None:
            try:
                ltx_job()
                sync(fd)
            finally:
                os.close(fd)

        return work

    # ---- commits -------------------------------------------------------------------------

    def _commit_rollback(self) -> Recorded | None:
        fd = self.fd(FileKind.DATABASE)
        header = os.pread(fd, 100, 0)
        ps = page_size_from_header(header)
        dirty = self.dirty
        if not ps:
            dirty.clear()
            return None
        commit = database_size_in_pages(header, os.fstat(fd).st_size, ps)
        if self.table is not None and self.table.page_size != ps:
            # The page size changed (VACUUM after PRAGMA page_size): every page is new.
            log.info("%s: page size changed from %d to %d", self.name, self.table.page_size, ps)
            self.table = None
        if self.table is None or self.txid == 0:
            wanted = range(1, commit + 1)
        else:
            wanted = sorted(p for p in dirty if p <= commit)  # type: ignore[assignment]
        pages = {p: self._read_db_page(p, ps) for p in wanted}
        written = self._record(pages, commit, ps)
        dirty.clear()
        return written

    def _read_db_page(self, pgno: int, ps: int) -> bytes:
        data = os.pread(self.fd(FileKind.DATABASE), ps, (pgno - 1) * ps)
        if len(data) < ps:
            data += bytes(ps - len(data))
        return data

    def _commit_wal(self, commit: WalCommit, offset: int, data: bytes) -> Recorded | None:
        tracker = self.wal
        ps = tracker.page_size
        end = offset + len(data)
        wal_fd = self.fd(FileKind.WAL)

        def frame_page(index: int) -> bytes:
            # The kernel splits writes at page-cache boundaries, so part of a frame's page may
            # be in this write and the rest already in the backing file.
            start = tracker.frame_offset(index) + FRAME_HEADER_SIZE
            stop = start + ps
            if offset <= start and stop <= end:
                return bytes(data[start - offset:stop - offset])
            if stop <= offset or start >= end:
                return os.pread(wal_fd, ps, start)
            page = bytearray(os.pread(wal_fd, ps, start).ljust(ps, b"\0"))
            lo, hi = max(start, offset), min(stop, end)
            page[lo - start:hi - start] = data[lo - offset:hi - offset]
            return bytes(page)

        if self.table is not None and self.table.page_size != ps:
            self.table = None
        if self.table is None or self.txid == 0:
            # First LTX (a snapshot) or page size change: every page, newest version first
            # from this transaction, then the committed WAL, then the database file.
            pages = {}
            for pgno in range(1, commit.db_size + 1):
                idx = commit.frames.get(pgno, self.wal_index.get(pgno))
                pages[pgno] = frame_page(idx) if idx is not None else self._read_db_page(pgno, ps)
        else:
            pages = {pgno: frame_page(idx) for pgno, idx in commit.frames.items()
                     if pgno <= commit.db_size}
        first_off = tracker.frame_offset(commit.first_frame)
        wal_size = (commit.commit_frame + 1 - commit.first_frame) * tracker.frame_size
        salts = tracker.salts or (0, 0)
        written = self._record(pages, commit.db_size, ps,
                               wal=(first_off, wal_size, salts[0], salts[1]))
        for pgno, idx in commit.frames.items():
            self.wal_index[pgno] = idx
        return written

    def _record(self, pages: dict[int, bytes], commit: int, page_size: int,
                wal: tuple[int, int, int, int] = (0, 0, 0, 0)) -> Recorded | None:
        """Turn one committed transaction into an LTX file; None if it changed nothing."""
        if self.table is None:
            self.table = PageTable(page_size)
        table = self.table
        old_count = table.page_count
        changed, undo = table.commit(pages, commit)
        if not changed and commit == old_count and self.txid > 0:
            return None
        txid = self.txid + 1
        snapshot = txid == 1
        header = Header(
            page_size=page_size, commit=commit, min_txid=txid, max_txid=txid,
            timestamp=int(time.time() * 1000),
            pre_apply_checksum=0 if snapshot else self.checksum,
            wal_offset=wal[0], wal_size=wal[1], wal_salt1=wal[2], wal_salt2=wal[3],
        )
        try:
            data = encode_bytes(header, changed, table.checksum, name=f"{self.name} TXID {txid}")
            path = self.ltx.write(txid, txid, data)
        except BaseException:
            table.undo(undo)
            raise
        recorded = Recorded(path, self.txid, self.checksum, undo)
        self.txid, self.checksum = txid, table.checksum
        # Listeners only wake tasks; they run after this handler finished (and after a
        # take-back, which would remove the file before anyone reads it).
        for listener in self.commit_listeners:
            listener(txid)
        return recorded

    def _take_back(self, recorded: Recorded) -> None:
        """Undo `_record` after the operation that completes the commit failed."""
        self.ltx.remove(recorded.path)
        if self.table is not None:
            self.table.undo(recorded.undo)
        self.txid, self.checksum = recorded.prev_txid, recorded.prev_checksum

    def record_every_page(self, page: Callable[[int], bytes], commit: int, page_size: int,
                          wal: tuple[int, int, int, int] = (0, 0, 0, 0)) -> None:
        """Record the database as one transaction holding every page 1..commit, streaming
        (one page in memory at a time): the first LTX file of a database that predates
        capture, or `litefs recover`. `page(pgno)` returns a page's current content."""
        txid = self.txid + 1
        table = PageTable(page_size)
        header = Header(
            page_size=page_size, commit=commit, min_txid=txid, max_txid=txid,
            timestamp=int(time.time() * 1000),
            pre_apply_checksum=0 if txid == 1 else self.checksum,
            wal_offset=wal[0], wal_size=wal[1], wal_salt1=wal[2], wal_salt2=wal[3],
        )
        lock = table.lock_pgno

        def produce(f: BinaryIO) -> None:
            enc = Encoder(f, header, name=f"{self.name} TXID {txid}")
            for pgno in range(1, commit + 1):
                if pgno != lock:
                    data = page(pgno)
                    table.set_page(pgno, data)
                    enc.encode_page(pgno, data)
            table.finish_growth(0, commit)
            enc.finish(table.checksum)

        self.ltx.write_streaming(txid, txid, produce)
        self.table = table
        self.txid, self.checksum = txid, table.checksum
        for listener in self.commit_listeners:
            listener(txid)

    def logical_page(self, pgno: int) -> bytes:
        """Page `pgno` as SQLite sees it now: the newest committed WAL frame, else the
        database file (zeros past its end)."""
        ps = self.page_size
        idx = self.wal_index.get(pgno)
        if idx is not None and self.wal.salts is not None:
            return os.pread(self.fd(FileKind.WAL), ps, self.wal.frame_offset(idx) + 24)
        return self._read_db_page(pgno, ps)

    def snapshot_bytes(self) -> tuple[bytes, int, int, int]:
        """A replica snapshot (TXIDs 1..current, flags 0x2) of the database as it is now.

        Returns (data, txid, database checksum, timestamp). Runs without yielding, so it
        describes exactly one position; it reads the whole database.
        """
        table = self.table
        if table is None or self.deleted:
            raise ValueError(f"{self.name}: no database to snapshot")
        ps, commit = table.page_size, table.page_count
        header = Header(page_size=ps, commit=commit, min_txid=1, max_txid=self.txid,
                        timestamp=int(time.time() * 1000), flags=FLAG_V3_NO_CHECKSUM)
        buf = io.BytesIO()
        enc = Encoder(buf, header, name=f"{self.name} snapshot")
        lock = table.lock_pgno
        for pgno in range(1, commit + 1):
            if pgno != lock:
                enc.encode_page(pgno, self.logical_page(pgno))
        enc.finish(0)
        return buf.getvalue(), self.txid, self.checksum, header.timestamp

    def snapshot_job(self) -> Callable[[], tuple[bytes, int, int, int] | None]:
        """`snapshot_bytes` for a worker thread: what it needs is captured now (position,
        page count, where each page's newest version is); the pages are read and encoded in
        the thread. Commits and checkpoints may change the files meanwhile, so the rolling
        checksum of what was read must equal the checksum captured now, else the job
        returns None (take the snapshot with `snapshot_bytes` instead)."""
        table = self.table
        if table is None or self.deleted:
            raise ValueError(f"{self.name}: no database to snapshot")
        ps, commit, txid, checksum = table.page_size, table.page_count, self.txid, self.checksum
        use_wal = self.wal.salts is not None
        frames = {p: self.wal.frame_offset(i) + FRAME_HEADER_SIZE
                  for p, i in self.wal_index.items()} if use_wal else {}
        db_fd = os.dup(self.fd(FileKind.DATABASE))
        wal_fd = os.dup(self.fd(FileKind.WAL)) if use_wal else None

        def work() -> tuple[bytes, int, int, int] | None:
            try:
                header = Header(page_size=ps, commit=commit, min_txid=1, max_txid=txid,
                                timestamp=int(time.time() * 1000), flags=FLAG_V3_NO_CHECKSUM)
                buf = io.BytesIO()
                enc = Encoder(buf, header, name=f"{self.name} snapshot")
                check = PageTable(ps)
                lock = check.lock_pgno
                for pgno in range(1, commit + 1):
                    if pgno == lock:
                        continue
                    offset = frames.get(pgno)
                    if offset is not None and wal_fd is not None:
                        page = os.pread(wal_fd, ps, offset)
                    else:
                        page = os.pread(db_fd, ps, (pgno - 1) * ps)
                    page = page.ljust(ps, b"\0")
                    check.set_page(pgno, page)
                    enc.encode_page(pgno, page)
                check.finish_growth(0, commit)
                if check.checksum != checksum:
                    return None  # the files changed under the read: not one position
                enc.finish(0)
                return buf.getvalue(), txid, checksum, header.timestamp
            finally:
                os.close(db_fd)
                if wal_fd is not None:
                    os.close(wal_fd)

        return work

    def merge_local_log_job(self, after: int) -> Callable[[], tuple[list[Path], Header,
                                                                      bytes]] | None:
        """The blocking half of merging the local LTX files after TXID `after` into one
        (spool pressure): returns work for a worker thread, or None if there is nothing to
        merge. `install_merged_log` finishes in the trio thread."""
        files = [(lo, hi, p) for lo, hi, p in self.ltx.paths_after(after) if lo > after]
        if len(files) < 2:
            return None
        paths = [p for _, _, p in files]

        def work() -> tuple[list[Path], Header, bytes]:
            buf = io.BytesIO()
            with ExitStack() as stack:
                handles = [stack.enter_context(open(p, "rb")) for p in paths]
                header, _ = compact(handles, buf, names=[str(p) for p in paths],
                                    keep_wal_position=True)
            return paths, header, buf.getvalue()

        return work

    def install_merged_log(self, paths: list[Path], header: Header, data: bytes) -> None:
        self.ltx.write(header.min_txid, header.max_txid, data)
        self.ltx.sync()
        for p in paths:
            self.ltx.delete(p)
        log.info("%s: merged %d local LTX files into TXIDs %016x-%016x", self.name,
                 len(paths), header.min_txid, header.max_txid)

    def _delete_database(self) -> None:
        """The application deleted the database: record a commit-0 LTX file, then delete."""
        if self.txid > 0 and not self.deleted:
            txid = self.txid + 1
            ps = self.page_size or 4096
            header = Header(page_size=ps, commit=0, min_txid=txid, max_txid=txid,
                            timestamp=int(time.time() * 1000),
                            pre_apply_checksum=self.checksum)
            buf = io.BytesIO()
            Encoder(buf, header, name=f"{self.name} TXID {txid}").finish(EMPTY_DATABASE_CHECKSUM)
            self.ltx.write(txid, txid, buf.getvalue())
            self.txid, self.checksum = txid, EMPTY_DATABASE_CHECKSUM
        self._close(FileKind.DATABASE)
        self.path(FileKind.DATABASE).unlink()
        self.table = None
        self.dirty.clear()
        self.deleted = True
