"""One database under the mount: its backing files, its position, and commit capture.

The FUSE layer calls the file verbs `write`, `truncate`, `unlink` and `fsync_job` with the file
kind (LiteFS's WriteDatabaseAt / WriteJournalAt / WriteWALAt / CommitJournal are the model);
this class performs the operation on the backing file and hands commit recognition to the
capture of the journal mode in use:

- rollback journal modes (rollback.py): database writes while a journal is hot are dirty
  pages; the journal being deleted (DELETE), truncated to 0 (TRUNCATE) or having its header
  zeroed (PERSIST) commits them;
- WAL mode (wal_capture.py): `WalTracker` recognises commit frames.

A commit becomes an LTX record (`record`) *before* the operation that completes it is
performed on the backing file, so when SQLite's COMMIT returns the record exists; if writing
the record fails, the operation is refused (EIO) and nothing changes; if the operation fails,
the record is taken back (`take_back`). Transactions that change no page (read-only, rolled
back, WAL padding frames) produce no record.

Nothing here awaits: a handler runs a whole commit without yielding to another FUSE request.
The position (TXID, checksum), the page table and the deleted flag change only through this
class's methods: `record`, `record_every_page`, `take_back`, `adopt` (recovery and replica
apply), `mark_deleted`.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

from ..ltx import EMPTY_DATABASE_CHECKSUM, Encoder, Header, encode_bytes
from ..sqlite import DATABASE_MAGIC, page_size_or_zero
from ..types import NO_WAL, FileKind, Pos, TxRange, WalRange
from .epochs import EpochHistory
from .fencing import OPEN_GATE, CommitGate, FencedError
from .gate import WriteGate
from .ltx_log import LtxLog
from .page_table import PageTable, TableUndo
from .paths import DBPaths
from .rollback import CaptureError, RollbackCapture
from .wal_capture import WalCapture

log = logging.getLogger("litefs.store")

MIN_PAGE_SIZE = 512  # SQLite's smallest page size; every page size is a multiple of it

WAL_MODE = b"\x02\x02"  # database header bytes 18-19 of a WAL-mode database

__all__ = ["DB", "CaptureError", "Recorded"]


@dataclass(frozen=True, slots=True)
class Recorded:
    """An LTX record just written for a commit, with what is needed to take it back."""

    range: TxRange
    prev: Pos
    prev_table: PageTable | None  # the table before: another one if this record replaced it
    undo: TableUndo


class DB:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.paths = DBPaths(root)
        root.mkdir(parents=True, exist_ok=True)
        self.ltx = LtxLog(self.paths.ltx_dir, quarantine=self.paths.quarantine)
        self._file = {kind: self.paths.file(kind) for kind in FileKind if kind.backed}
        self._fds: dict[FileKind, int] = {}
        self._handles = dict.fromkeys(FileKind, 0)  # open FUSE handles per kind
        self._txid = 0
        self._checksum = EMPTY_DATABASE_CHECKSUM
        self._table: PageTable | None = None
        self._deleted = False
        self._commit_listeners: list[Callable[[int], None]] = []
        self._rollback = RollbackCapture(self)
        self._wal = WalCapture(self)
        #: Held while a snapshot reads the files in a worker thread (see gate.py).
        self.gate = WriteGate()
        self._refused = False
        #: Whether commits may be accepted, and the epoch records carry (store/fencing.py).
        self.commit_gate: CommitGate = OPEN_GATE
        #: Where each primary term's records begin (store/epochs.py).
        self.epochs = EpochHistory(self.paths.epochs)

    # ---- state (read-only outside this class) ---------------------------------------------

    @property
    def txid(self) -> int:
        return self._txid

    @property
    def checksum(self) -> int:
        return self._checksum

    @property
    def pos(self) -> Pos:
        return Pos(self._txid, self._checksum)

    @property
    def table(self) -> PageTable | None:
        """Per-page checksums of the database as of `txid` (None before the first record)."""
        return self._table

    @property
    def deleted(self) -> bool:
        """Whether the application deleted the database (its log stays)."""
        return self._deleted

    @property
    def in_transaction(self) -> bool:
        """Whether a write transaction is under way (a hot journal, or WAL frames not yet
        committed): its writes must go on while a snapshot holds the database's writes."""
        return self._rollback.in_transaction or self._wal.in_transaction

    @property
    def refused_write(self) -> bool:
        """Whether a write was refused (it could not be captured): a file that never held
        anything is then removed when the last handle on it closes (fuse/ops.py)."""
        return self._refused

    @property
    def page_size(self) -> int:
        return self._table.page_size if self._table is not None else 0

    def add_commit_listener(self, listener: Callable[[int], None]) -> None:
        """Call `listener(txid)` after each recorded transaction (it only wakes tasks)."""
        self._commit_listeners.append(listener)

    # ---- backing files -------------------------------------------------------------------

    def path(self, kind: FileKind) -> Path:
        return self._file[kind]

    def exists(self, kind: FileKind) -> bool:
        return kind in self._fds or self._file[kind].exists()

    def fd(self, kind: FileKind, *, create: bool = False, mode: int = 0o644) -> int:
        """The backing file's descriptor, opened on first use (created with `create`)."""
        fd = self._fds.get(kind)
        if fd is None:
            flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
            fd = os.open(self._file[kind], flags, mode)
            self._fds[kind] = fd
            if kind is FileKind.DATABASE:
                self._deleted = False
        return fd

    def dup_fd(self, kind: FileKind) -> int:
        """A duplicate of the backing file's descriptor, for a worker thread (a concurrent
        close cannot pull it away); the caller closes it."""
        return os.dup(self.fd(kind))

    def stat(self, kind: FileKind) -> os.stat_result:
        fd = self._fds.get(kind)
        return os.fstat(fd) if fd is not None else os.stat(self._file[kind])

    def size(self, kind: FileKind) -> int:
        return self.stat(kind).st_size

    def read(self, kind: FileKind, offset: int, size: int) -> bytes:
        return os.pread(self.fd(kind), size, offset)

    def read_page(self, pgno: int, page_size: int) -> bytes:
        """Page `pgno` of the database file (zeros past its end)."""
        data = os.pread(self.fd(FileKind.DATABASE), page_size, (pgno - 1) * page_size)
        if len(data) < page_size:
            data += bytes(page_size - len(data))
        return data

    def touch(self, kind: FileKind) -> None:
        """Create the backing file empty if it does not exist."""
        os.close(os.open(self._file[kind], os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))

    def set_attributes(self, kind: FileKind, *, mode: int | None = None,
                       uid: int = -1, gid: int = -1,
                       times_ns: tuple[int, int] | None = None) -> None:
        """chmod / chown / utime of the backing file (for the FUSE setattr)."""
        path = self._file[kind]
        if mode is not None:
            os.chmod(path, mode)
        if uid != -1 or gid != -1:
            os.chown(path, uid, gid)
        if times_ns is not None:
            os.utime(path, ns=times_ns)

    def remove_file(self, kind: FileKind) -> None:
        """Close and delete a backing file without capturing anything (recovery finishing
        a deletion, a replica applying one)."""
        self._close(kind)
        self._file[kind].unlink(missing_ok=True)

    def discard_journal(self) -> None:
        """Recovery rolled the hot journal back (or found it stale): delete it."""
        self._close(FileKind.JOURNAL)
        self._file[FileKind.JOURNAL].unlink()
        self._rollback.journal_discarded()

    def _close(self, kind: FileKind) -> None:
        fd = self._fds.pop(kind, None)
        if fd is not None:
            os.close(fd)

    def opened(self, kind: FileKind) -> None:
        """A FUSE handle on `kind` was opened."""
        self._handles[kind] += 1

    def released(self, kind: FileKind) -> None:
        self._handles[kind] -= 1

    def open_handles(self, kind: FileKind | None = None) -> int:
        """Open FUSE handles on `kind` (on any file of the database without it)."""
        return sum(self._handles.values()) if kind is None else self._handles[kind]

    def fingerprint(self) -> bytes:
        """Identity of the database and WAL files (inode, size, mtime): if it changes while
        litefs is not running, saved checksums cannot be trusted."""
        parts = []
        for kind in (FileKind.DATABASE, FileKind.WAL):
            try:
                st = os.stat(self._file[kind])
                parts.append(f"{kind.value}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
            except FileNotFoundError:
                parts.append(f"{kind.value}:-")
        return ";".join(parts).encode()

    def save_state(self) -> None:
        """Persist the page checksums so the next start need not rescan the database."""
        if self._table is not None and not self._deleted:
            for fd in self._fds.values():
                os.fsync(fd)  # the fingerprint must describe the files as they are on disk
            self._table.save(self.paths.page_table, self._txid, self.fingerprint())

    def close(self) -> None:
        self.ltx.close()
        for kind in list(self._fds):
            self._close(kind)

    # ---- file verbs from the FUSE layer --------------------------------------------------

    def write(self, kind: FileKind, offset: int, data: bytes) -> int:
        if kind is FileKind.DATABASE:
            return self._write_database(offset, data)
        if kind is FileKind.WAL:
            if self._handles[FileKind.SHM] == 0 and offset >= 32:
                self._refuse("a WAL write while no process has the -shm file open: "
                             "locking_mode=EXCLUSIVE in WAL mode cannot be captured; use "
                             "PRAGMA locking_mode=NORMAL")
            return self._wal.write(self.fd(kind), offset, data)
        if kind is FileKind.JOURNAL:
            return self._rollback.write_journal(self.fd(kind), offset, data)
        return os.pwrite(self.fd(kind), data, offset)

    def _write_database(self, offset: int, data: bytes) -> int:
        fd = self.fd(FileKind.DATABASE)
        if self._rollback.journal_hot:
            return self._rollback.write_database(fd, offset, data)
        if self._wal_mode(fd) and not (offset == 0 and len(data) >= 20
                                       and data[18:20] != WAL_MODE):
            # A checkpoint: copies committed pages. (Page 1 leaving WAL mode without a
            # journal is PRAGMA journal_mode=MEMORY/OFF, refused below.)
            return os.pwrite(fd, data, offset)
        header = os.pread(fd, 100, 0)
        if not page_size_or_zero(header) and not (offset == 0 and page_size_or_zero(data)):
            raise self.refuse_not_sqlite("a write")
        self._refuse("a database write without a rollback journal or WAL: "
                     "journal_mode=MEMORY or OFF cannot be captured; use PRAGMA "
                     "journal_mode=DELETE, TRUNCATE, PERSIST or WAL (a database file copied "
                     "in with cp is written the same way: copy it with "
                     "`sqlite3 SRC \".backup DEST\"` instead)")

    def _wal_mode(self, fd: int) -> bool:
        """True when the database header says WAL (bytes 18/19 = 2) or a WAL is in use."""
        return os.pread(fd, 2, 18) == WAL_MODE or self._wal.active

    def _refuse(self, what: str) -> NoReturn:
        self._refused = True
        msg = f"{self.name}: refusing {what}"
        log.error(msg)
        raise CaptureError(msg)

    def refuse_not_sqlite(self, what: str) -> CaptureError:
        """The error (logged) for a change to a file that is not a SQLite database."""
        self._refused = True
        msg = (f"{self.name}: refusing {what}: the file is not a SQLite database (it does not "
               f"start with {DATABASE_MAGIC[:15].decode()!r}); litefs captures SQLite "
               "databases only, so keep other files outside the mount. A database written "
               "through an encrypting or page-scrambling VFS (SQLCipher-style) cannot be "
               "captured either")
        log.error(msg)
        return CaptureError(msg)

    def truncate(self, kind: FileKind, size: int) -> None:
        fd = self.fd(kind)
        if kind is FileKind.DATABASE and self._txid and (size == 0 or size % MIN_PAGE_SIZE):
            # SQLite shrinks a database only to whole pages (of the new size when a VACUUM
            # changes it: so only the smallest page size is certain), never to nothing; `echo
            # x > db` or `truncate -s 0 db` would throw away committed data before any write
            # could be refused as "not a SQLite database".
            msg = (f"{self.name}: refusing to truncate the database to {size} bytes: it holds "
                   f"committed data (TXID {self._txid}) and SQLite never shrinks a database "
                   "that way. To replace it, write into it with SQLite (sqlite3 DB "
                   "\".restore OTHER.db\") or run `litefs restore --force`; to delete it, rm it")
            log.error(msg)
            raise PermissionError(errno.EPERM, msg)
        if kind is FileKind.JOURNAL:
            self._rollback.truncate_journal(fd, size)
            return
        os.ftruncate(fd, size)
        if kind is FileKind.WAL:
            self._wal.truncate(size)

    def unlink(self, kind: FileKind) -> None:
        if kind is FileKind.DATABASE:
            self._delete_database()
            return
        path = self._file[kind]
        if kind is FileKind.JOURNAL:
            self._rollback.remove_journal(path.unlink)
            self._close(kind)
            return
        self._close(kind)
        path.unlink()
        if kind is FileKind.WAL:
            self._wal.reset()

    def fsync_job(self, kind: FileKind, datasync: bool = False) -> Callable[[], None]:
        """The blocking work of SQLite's fsync of one file, safe to run in a worker thread.

        LTX records first: SQLite's fsync is the point from which it treats the transaction
        as durable, so the records it depends on must be durable no later than that. The file
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

    def fsync(self, kind: FileKind, datasync: bool = False) -> None:
        self.fsync_job(kind, datasync)()

    # ---- recording transactions ----------------------------------------------------------

    def needs_every_page(self, page_size: int) -> bool:
        """Whether the next record must hold every page: the first one, or one after the page
        size changed (VACUUM after PRAGMA page_size: every page is new)."""
        table = self._table
        return table is None or self._txid == 0 or table.page_size != page_size

    def record(self, pages: dict[int, bytes], commit: int, page_size: int,
               wal: WalRange = NO_WAL) -> Recorded | None:
        """Turn one committed transaction into an LTX record; None if it changed nothing.
        `pages` holds the pages it wrote (every page when `needs_every_page`)."""
        table = prev_table = self._table
        if table is None or table.page_size != page_size:
            if table is not None:
                log.info("%s: page size changed from %d to %d", self.name, table.page_size,
                         page_size)
            table = PageTable(page_size)
        old_count = table.page_count
        changed, undo = table.commit(pages, commit)
        txid = self._txid + 1
        if not changed and commit == old_count and txid > 1:
            return None
        try:
            epoch = self._gate_epoch()
        except BaseException:
            table.undo(undo)
            raise
        header = Header(
            page_size=page_size, commit=commit, min_txid=txid, max_txid=txid,
            timestamp=int(time.time() * 1000),
            pre_apply_checksum=0 if txid == 1 else self._checksum,
            wal_offset=wal[0], wal_size=wal[1], wal_salt1=wal[2], wal_salt2=wal[3],
            node_id=epoch,
        )
        r = TxRange(txid, txid)
        try:
            data = encode_bytes(header, changed, table.checksum, name=f"{self.name} TXID {txid}")
            self.ltx.write(r, data)
        except BaseException:
            table.undo(undo)
            raise
        recorded = Recorded(r, Pos(self._txid, self._checksum), prev_table, undo)
        self._table = table
        self._txid, self._checksum = txid, table.checksum
        # Listeners only wake tasks; they run after this handler finished (and after a
        # take-back, which would remove the record before anyone reads it).
        for listener in self._commit_listeners:
            listener(txid)
        return recorded

    def _gate_epoch(self) -> int:
        """The epoch to stamp on a record about to be written; FencedError (EIO) if this node
        may not accept commits now (store/fencing.py)."""
        gate = self.commit_gate
        if not gate.can_commit():
            msg = f"{self.name}: commit refused: {gate.refusal()}"
            log.warning("%s", msg)
            raise FencedError(msg)
        return gate.epoch

    def take_back(self, recorded: Recorded) -> None:
        """Undo `record` after the operation that completes the commit failed."""
        self.ltx.take_back(recorded.range)
        if self._table is recorded.prev_table and self._table is not None:
            self._table.undo(recorded.undo)
        else:
            self._table = recorded.prev_table
        self._txid, self._checksum = recorded.prev

    def record_every_page(self, page: Callable[[int], bytes], commit: int, page_size: int,
                          wal: WalRange = NO_WAL) -> None:
        """Record the database as one transaction holding every page 1..commit, streaming
        (one page in memory at a time): the first record of a database that predates
        capture, or `litefs recover`. `page(pgno)` returns a page's current content."""
        txid = self._txid + 1
        table = PageTable(page_size)
        header = Header(
            page_size=page_size, commit=commit, min_txid=txid, max_txid=txid,
            timestamp=int(time.time() * 1000),
            pre_apply_checksum=0 if txid == 1 else self._checksum,
            wal_offset=wal[0], wal_size=wal[1], wal_salt1=wal[2], wal_salt2=wal[3],
            node_id=self._gate_epoch(),
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

        self.ltx.write_streaming(TxRange(txid, txid), produce)
        self._table = table
        self._txid, self._checksum = txid, table.checksum
        for listener in self._commit_listeners:
            listener(txid)

    def adopt(self, pos: Pos, table: PageTable | None) -> None:
        """Take `pos` and `table` as the database's state: what recovery found, or what a
        replica just applied."""
        self._txid, self._checksum = pos
        self._table = table
        self._deleted = False

    def mark_deleted(self, pos: Pos) -> None:
        """The log ends with the database's deletion at `pos` (recovery, replica apply)."""
        self._txid, self._checksum = pos
        self._table = None
        self._deleted = True

    def resume_wal(self, page_size: int, salts: tuple[int, int], committed_frames: int,
                   newest: dict[int, int]) -> None:
        """Recovery found `committed_frames` committed frames in the WAL; `newest` maps
        pages to the frame holding their newest version."""
        self._wal.load(page_size, salts, committed_frames, newest)

    def wal_page_offsets(self) -> dict[int, int]:
        """pgno -> offset in the `-wal` file of the page's newest committed version."""
        return self._wal.page_offsets()

    def _delete_database(self) -> None:
        """The application deleted the database: record a commit-0 LTX record, then
        delete."""
        if self._txid > 0 and not self._deleted:
            txid = self._txid + 1
            ps = self.page_size or 4096
            header = Header(page_size=ps, commit=0, min_txid=txid, max_txid=txid,
                            timestamp=int(time.time() * 1000),
                            pre_apply_checksum=self._checksum, node_id=self._gate_epoch())
            buf = io.BytesIO()
            Encoder(buf, header, name=f"{self.name} TXID {txid}").finish(EMPTY_DATABASE_CHECKSUM)
            self.ltx.write(TxRange(txid, txid), buf.getvalue())
            self._txid, self._checksum = txid, EMPTY_DATABASE_CHECKSUM
        self._close(FileKind.DATABASE)
        self._file[FileKind.DATABASE].unlink()
        self._table = None
        self._rollback.database_deleted()
        self._deleted = True
