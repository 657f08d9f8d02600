"""Bring one database to a consistent, fully captured state before the mount is exposed.

1. A hot rollback journal: if the last LTX file already records the transaction (the process
   died after writing the LTX file but before deleting the journal), the journal is stale and
   is removed; otherwise the journal is rolled back, as SQLite would.
2. The WAL: committed transactions after the last LTX file's WAL position become LTX files,
   because SQLite would treat them as committed (an acknowledged transaction is never
   truncated away).
3. The database checksum is checked against the last LTX file. On a clean restart the saved
   page checksums are trusted and nothing is rescanned.

Nothing recovery judges torn or stale is deleted: the torn newest record, a record whose
commit never reached the WAL and the hot journal (stale, or rolled back) go to the database's
quarantine (quarantine.py), and the log line names where. What SQLite itself discards as part
of a committed operation is not kept: the pages a committed shrink cut off (finishing the
truncate), and the files of a database whose deletion the log records.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import ExitCode, QuietError
from ..ltx import FLAG_V3_NO_CHECKSUM
from ..sqlite import (
    WALReader,
    database_size_in_pages,
    journal_is_hot,
    page_size_or_zero,
    rollback_pages,
)
from ..sqlite.errors import SQLiteFormatError
from ..sqlite.wal import WALTransaction
from ..types import NO_WAL, FileKind, Pos, WalRange
from .db import DB
from .page_table import PageTable
from .quarantine import Quarantine

log = logging.getLogger("litefs.store")


class DatabaseDivergedError(QuietError):
    """The database does not match its LTX log; the message says how to fix it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.FAILED)


def recover(db: DB, *, accept_current: bool = False,
            quarantine: Quarantine | None = None) -> None:
    """Recover `db`; with `accept_current`, a database that no longer matches its LTX log is
    recorded as it is now, as one more transaction holding every page (`litefs recover`).
    What it sets aside goes to `quarantine` (default: the database's, with the default
    limit)."""
    paths = db.paths
    q = quarantine if quarantine is not None else Quarantine(paths.root)
    saved = PageTable.load(paths.page_table)
    if saved is not None and saved.fingerprint != db.fingerprint():
        log.warning("%s: the database or WAL file changed while litefs was not running; "
                    "verifying it against the LTX log", db.name)
        saved = None
    # The saved table is good for exactly one start; a crash after this must not trust it.
    paths.page_table.unlink(missing_ok=True)

    # A record torn by a crash (its request never returned) was cut off when the log was
    # opened (LtxLog, kept in the quarantine directory).
    unknown_checksum = False
    last = db.ltx.last()
    pos = Pos(0, db.checksum)
    if last is not None:
        pos = Pos(last.header.max_txid, last.trailer.post_apply_checksum)
        # A record from a bucket (flags 0x2) carries no checksum: a replica that applied it
        # verified the pages then; the database is trusted as it is (checked below only
        # against what the record does carry).
        unknown_checksum = bool(last.header.flags & FLAG_V3_NO_CHECKSUM) and not pos.checksum
    if last is not None and last.header.commit == 0:
        # The last transaction deleted the database; finish a deletion interrupted by a crash.
        for kind in (FileKind.DATABASE, FileKind.JOURNAL, FileKind.WAL, FileKind.SHM):
            db.remove_file(kind)
        db.mark_deleted(pos)
        return
    if not db.exists(FileKind.DATABASE):
        if last is not None:
            db.mark_deleted(pos)
            raise DatabaseDivergedError(
                f"{db.name}: the database file is missing but its LTX log ends at TXID "
                f"{pos.txid:016x}. Restore it with `litefs restore` from the replica, or remove "
                f"{paths.root} to start over.")
        return

    fd = db.fd(FileKind.DATABASE)
    journal_action = _hot_journal(db, fd, pos if last is not None else None, q)
    first_page = os.pread(fd, 100, 0)
    ps = page_size_or_zero(first_page)
    file_pages = database_size_in_pages(first_page, os.fstat(fd).st_size, ps) if ps else 0

    wal = _read_wal(db.path(FileKind.WAL))
    captured: list[WALTransaction] = []
    new: list[WALTransaction] = []
    wal_mark = NO_WAL  # WAL position of what the LTX log holds, for a new snapshot
    if wal is not None:
        reader, txns = wal
        salts = (reader.header.salt1, reader.header.salt2)
        captured_end = 32
        if last is not None and (last.header.wal_salt1, last.header.wal_salt2) == salts \
                and last.header.wal_offset:
            captured_end = last.header.wal_offset + last.header.wal_size
            if not any(t.end_offset == captured_end for t in txns):
                # The last record was written for a commit frame that never reached the WAL:
                # the process died in between, so that commit was never acknowledged.
                db.ltx.quarantine(last.range, f"{db.name}: its transaction's commit frame "
                                  "never reached the WAL (crash before the commit completed)")
                recover(db, accept_current=accept_current, quarantine=q)
                return
        for t in txns:
            (captured if t.end_offset <= captured_end else new).append(t)
        if captured:
            wal_mark = WalRange(32, captured[-1].end_offset - 32, salts[0], salts[1])
        if txns and not ps:
            ps = reader.page_size

    if ps and not (wal is not None and wal[1]):
        _finish_interrupted_truncate(db, fd, first_page, ps)

    if not ps:
        if last is not None:
            raise DatabaseDivergedError(
                f"{db.name}: the database file is not a SQLite database but its LTX log ends at "
                f"TXID {pos.txid:016x}. Restore it with `litefs restore`.")
        return  # an empty file: a database being created

    logical_pages = captured[-1].db_size if captured else file_pages
    table: PageTable | None = None
    if (saved is not None and not journal_action and saved.txid == pos.txid
            and last is not None
            and (saved.table.checksum == pos.checksum or unknown_checksum)
            and saved.table.page_size == ps
            and saved.table.page_count == logical_pages):
        table = saved.table
        log.info("%s: resumed at TXID %016x from saved checksums", db.name, pos.txid)
    else:
        table = PageTable.scan(fd, ps, file_pages)
        for t in captured:
            table.commit(t.pages, t.db_size)
        table.truncate(logical_pages)

    if last is not None and unknown_checksum:
        pos = Pos(pos.txid, table.checksum)
    if last is not None and table.checksum != pos.checksum and journal_action:
        # SQLite does not journal free-list pages it reuses, so rolling back a crashed
        # transaction restores the database logically but leaves those pages as the
        # transaction wrote them. The database is the last committed one: record it again.
        log.warning("%s: after rolling back the hot journal the free pages differ from TXID "
                    "%016x (SQLite does not journal them); recording the database as TXID "
                    "%016x, logically unchanged", db.name, pos.txid, pos.txid + 1)
        accept_current = True
    if last is not None and table.checksum != pos.checksum and accept_current:
        if not journal_action:
            log.warning("%s: database checksum %016x differs from TXID %016x's %016x; "
                        "recording the database as it is now as TXID %016x", db.name,
                        table.checksum, pos.txid, pos.checksum, pos.txid + 1)
        db.adopt(pos, None)
        db.record_every_page(_logical_pages(fd, ps, captured), logical_pages, ps, wal=wal_mark)
        assert db.table is not None
        table = db.table
        pos = db.pos
    if last is not None and table.checksum != pos.checksum:
        raise DatabaseDivergedError(
            f"{db.name}: database checksum {table.checksum:016x} does not match the last LTX "
            f"file (TXID {pos.txid:016x}, post-apply checksum {pos.checksum:016x}): the "
            f"database was changed outside litefs or the data directory is damaged. To keep "
            f"the database as it is now, record it as TXID {pos.txid + 1:016x} with "
            f"`litefs recover --data-dir {paths.root.parent.parent} {db.name}` (while not "
            f"mounted); to replace it from the replica, use `litefs restore --force`.")

    if last is None:
        # Data that predates capture: the first record is a snapshot of it.
        db.adopt(pos, None)
        if logical_pages:
            db.record_every_page(_logical_pages(fd, ps, captured), logical_pages, ps,
                                 wal=wal_mark)
            log.info("%s: recorded existing database as snapshot TXID %016x", db.name, db.txid)
    else:
        db.adopt(pos, table)

    if wal is not None:
        reader, txns = wal
        salt1, salt2 = reader.header.salt1, reader.header.salt2
        for t in new:
            db.record(t.pages, t.db_size, reader.page_size,
                      WalRange(t.start_offset, t.end_offset - t.start_offset, salt1, salt2))
            log.info("%s: recorded committed WAL transaction at offset %d as TXID %016x",
                     db.name, t.start_offset, db.txid)
        frame_size = 24 + reader.page_size
        committed = (txns[-1].end_offset - 32) // frame_size if txns else 0
        db.resume_wal(reader.page_size, (salt1, salt2), committed,
                      {f.pgno: f.index for t in txns for f in t.frames})
    db.ltx.sync()


def _finish_interrupted_truncate(db: DB, fd: int, header: bytes, ps: int) -> None:
    """Cut a rollback-mode database file down to its committed size.

    SQLite truncates a database that shrank only after the commit point (the journal is
    already finalized and the LTX file written), so a crash in between leaves pages past the
    valid in-header size. SQLite ignores them, but the file should be what the transaction
    left; finishing the truncate makes it so. Not done with committed WAL frames present: the
    WAL, not the file header, then says how long the database is.
    """
    if len(header) < 100 or header[92:96] != header[24:28]:
        return  # no valid in-header size: SQLite goes by the file size, so does litefs
    pages = int.from_bytes(header[28:32], "big")
    size = os.fstat(fd).st_size
    if not pages or size <= pages * ps:
        return
    log.info("%s: truncating the database file from %d to %d bytes (%d pages): the crash "
             "interrupted SQLite's truncation after a commit that shrank it", db.name, size,
             pages * ps, pages)
    os.ftruncate(fd, pages * ps)
    os.fsync(fd)


def _logical_pages(fd: int, ps: int,
                   captured: list[WALTransaction]) -> Callable[[int], bytes]:
    """Page reader for the database as SQLite sees it: the newest captured WAL frame of a
    page, else the database file (zeros past its end)."""
    newest: dict[int, bytes] = {}
    for t in captured:
        newest.update(t.pages)

    def page(pgno: int) -> bytes:
        data = newest.get(pgno)
        if data is not None:
            return data
        data = os.pread(fd, ps, (pgno - 1) * ps)
        return data + bytes(ps - len(data))

    return page


def _read_wal(path: Path) -> tuple[WALReader, list[WALTransaction]] | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    if len(data) < 32:
        return None
    try:
        reader = WALReader(data, name=str(path))
        txns = list(reader.transactions())
    except SQLiteFormatError as exc:
        log.info("ignoring WAL without a valid header (%s)", exc)
        return None
    return reader, txns


def roll_back_hot_journal(db: DB, quarantine: Quarantine | None = None) -> bool:
    """Roll back a hot journal of a transaction that never committed (a primary turning
    into a replica in place), as recovery does at start; True if the database changed."""
    last = db.ltx.last()
    logged = None if last is None else Pos(last.header.max_txid,
                                           last.trailer.post_apply_checksum)
    q = quarantine if quarantine is not None else Quarantine(db.paths.root)
    return _hot_journal(db, db.fd(FileKind.DATABASE), logged, q)


def _hot_journal(db: DB, fd: int, logged: Pos | None, q: Quarantine) -> bool:
    """Deal with a hot journal; True if the database file was changed. `logged` is the
    position of the last LTX record, if any. The journal is kept in the quarantine either
    way (a hard link: it costs nothing)."""
    header = os.pread(fd, 100, 0)
    ps = page_size_or_zero(header)
    path = db.path(FileKind.JOURNAL)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return False
    if not journal_is_hot(data[:8]):
        return False
    if logged is not None and ps:
        now = PageTable.scan(fd, ps, database_size_in_pages(header, os.fstat(fd).st_size, ps))
        if now.checksum == logged.checksum:
            q.keep(path, "stale-journal", link=True,
                   why="the last transaction was recorded before the crash; removing its "
                       "journal instead of rolling back")
            db.discard_journal()
            return False
    try:
        rb = rollback_pages(data, name=str(path))
    except SQLiteFormatError as exc:
        raise DatabaseDivergedError(f"{db.name}: hot journal {path} cannot be rolled back: "
                                    f"{exc}") from None
    for pgno, page in rb.pages.items():
        os.pwrite(fd, page, (pgno - 1) * rb.page_size)
    os.ftruncate(fd, rb.page_count * rb.page_size)
    os.fsync(fd)
    q.keep(path, "rolled-back-journal", link=True,
           why="the hot journal of a transaction that was never recorded, rolled back as "
               "SQLite would")
    db.discard_journal()
    log.info("%s: rolled back a hot journal (%d pages)", db.name, len(rb.pages))
    return True
