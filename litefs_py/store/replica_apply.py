"""Apply one LTX file to a replica's database while SQLite readers use it.

The order makes a crash at any point recoverable: the LTX file goes into the local log first
(it is the record of where the replica is going), then the pages are written into the backing
database file under the reader fence, then the kernel cache and the wal-index are told. A
crash between the first and the last step leaves a database that does not match the last LTX
file; `recover_replica` re-applies that file (pages are idempotent).

Checks before anything changes: the file's own checksum (the decoder), its place in the
chain (it must start right after the replica's TXID, or overlap it for a compacted file from
a bucket, or be a snapshot starting at TXID 1), the pre-apply checksum against the replica's
rolling checksum, and the post-apply checksum against the rolling checksum after the change.
A file that cannot be applied raises `PositionMismatchError`: the replica needs a snapshot.

Runs in a worker thread (the fence takes fcntl locks through the mount, which the trio thread
must stay free to answer).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..ltx import (
    EMPTY_DATABASE_CHECKSUM,
    FLAG_V3_NO_CHECKSUM,
    Decoder,
    Header,
    decode_bytes,
)
from ..types import FileKind, Pos, TxRange
from .db import DB, WAL_MODE
from .page_table import PageTable, TableUndo

log = logging.getLogger("litefs.replica")

FENCE_TIMEOUT = 30.0  # seconds rollback-mode readers may hold their locks before giving up
# WAL-mode readers waiting on the fence spin inside SQLite (walTryBeginRead) without their
# busy handler and fail with SQLITE_PROTOCOL after about 10 s: give up well before that.
WAL_FENCE_TIMEOUT = 3.0


class PositionMismatchError(Exception):
    """This file cannot be applied at the replica's position; the message says why. The
    replica recovers by taking a snapshot."""


class Fence(Protocol):
    """SQLite-compatible exclusion of readers (store/apply_fence.py)."""

    def acquire(self, wal_mode: bool, timeout: float = ...) -> None: ...

    def release(self) -> None: ...

    def write_shm_header(self, page_size: int, page_count: int) -> object: ...

    @property
    def mode(self) -> str | None: ...


class KernelCache(Protocol):
    """Tells the kernel which cached pages of a database changed (fuse/replica_ops.py)."""

    def store(self, db: DB, offset: int, data: bytes) -> None: ...

    def invalidate(self, db: DB) -> None: ...


@dataclass(frozen=True, slots=True)
class Applied:
    min_txid: int
    max_txid: int
    pages: int  # pages written
    snapshot: bool
    skipped: bool = False  # the replica already had every transaction in the file
    files: int = 1  # LTX files applied (a batch applies several under one fence)


#: Above this many changed pages the whole cached file is dropped instead of pushing pages.
NOTIFY_STORE_MAX_PAGES = 256


def position_relation(name: str, txid: int, checksum: int, header: Header) -> str:
    """How `header`'s file relates to a replica at (txid, checksum): "snapshot", "next",
    "overlap" or "have"; raises PositionMismatchError when it cannot be applied."""
    if header.min_txid == 1:
        return "snapshot"
    if header.max_txid <= txid:
        return "have"
    if header.min_txid == txid + 1:
        if header.pre_apply_checksum and header.pre_apply_checksum != checksum:
            raise PositionMismatchError(
                f"{name}: TXID {header.min_txid:016x} expects pre-apply checksum "
                f"{header.pre_apply_checksum:016x} but the replica's checksum at TXID "
                f"{txid:016x} is {checksum:016x} (the replica diverged)")
        return "next"
    if header.min_txid <= txid:
        return "overlap"  # a compacted file: carries the newest version of every page
    raise PositionMismatchError(
        f"{name}: the replica is at TXID {txid:016x} but the next file starts at "
        f"{header.min_txid:016x} (TXIDs {txid + 1:016x}-{header.min_txid - 1:016x} are "
        f"missing)")


@dataclass(frozen=True, slots=True)
class LtxToApply:
    """One whole LTX file and, when the file itself carries none (a snapshot with flags
    0x2), the post-apply checksum it must produce."""

    data: bytes
    expected_checksum: int | None = None


def apply_ltx(db: DB, data: bytes, fence: Fence | None, cache: KernelCache | None, *,
              expected_checksum: int | None = None,
              fence_timeout: float = FENCE_TIMEOUT) -> Applied:
    """Apply one whole LTX file (`data`) to `db`."""
    return apply_batch(db, [LtxToApply(data, expected_checksum)], fence, cache,
                       fence_timeout=fence_timeout)


@dataclass(slots=True)
class _Step:
    header: Header
    data: bytes


def apply_batch(db: DB, files: list[LtxToApply], fence: Fence | None,
                cache: KernelCache | None, *, fence_timeout: float = FENCE_TIMEOUT) -> Applied:
    """Apply consecutive LTX files under one fence: a replica that fell behind catches up
    with one reader pause, writing each page once. Each file is checked as if applied
    alone. A deletion must come alone."""
    if len(files) == 1:
        data = files[0].data
        header = Header.decode(data[:100], name=f"{db.name} LTX")
        if header.commit == 0:
            # A deletion applies at any position: whatever the replica had is gone.
            if db.deleted and db.txid >= header.max_txid:
                return Applied(header.min_txid, header.max_txid, 0, False, skipped=True)
            decode_bytes(data, name=f"{db.name} deletion")  # checks the whole file
            return _apply_deletion(db, header, data, fence, cache, fence_timeout)

    txid, checksum, deleted = db.txid, db.checksum, db.deleted
    table = db.table
    undos: list[tuple[PageTable, TableUndo]] = []
    steps: list[_Step] = []
    final: dict[int, bytes] = {}  # page -> newest content over the batch
    rewrite = False  # a snapshot or a fresh table: the whole file is rewritten
    snapshot = False
    try:
        for file in files:
            data, expected = file.data, file.expected_checksum
            header = Header.decode(data[:100], name=f"{db.name} LTX")
            if header.commit == 0:
                raise ValueError("a deletion must be applied alone")
            relation = position_relation(db.name, txid, checksum, header)
            if relation == "have":
                continue
            decoded = decode_bytes(data, name=f"{db.name} TXIDs "
                                   f"{header.min_txid:016x}-{header.max_txid:016x}")
            pages = dict(decoded.pages)  # checked whole, file checksum included
            trailer = decoded.trailer
            ps = header.page_size
            is_snapshot = relation == "snapshot"
            if is_snapshot or table is None or table.page_size != ps:
                # A file after a deletion or a page size change carries every page (the
                # primary starts over then too); otherwise the replica needs its table.
                if table is None and not is_snapshot and not deleted:
                    raise PositionMismatchError(
                        f"{db.name}: TXIDs {header.min_txid:016x}-{header.max_txid:016x} "
                        f"need the replica's page table at page size {ps}, which it does "
                        "not have")
                table = PageTable(ps)
                table.commit(pages, header.commit)
                final = dict(pages)
                rewrite = True
                snapshot = snapshot or is_snapshot
            else:
                changed, undo = table.commit(pages, header.commit)
                undos.append((table, undo))
                final.update(changed)
            want = expected
            if not header.flags & FLAG_V3_NO_CHECKSUM and trailer.post_apply_checksum:
                want = trailer.post_apply_checksum
            if want is not None and want != table.checksum:
                raise PositionMismatchError(
                    f"{db.name}: after TXID {header.max_txid:016x} the replica's checksum "
                    f"would be {table.checksum:016x} but the primary's is {want:016x} (the "
                    "replica diverged)")
            steps.append(_Step(header, data))
            txid, checksum, deleted = header.max_txid, table.checksum, False
        if not steps:
            return Applied(db.txid, db.txid, 0, False, skipped=True)
        assert table is not None
        last = steps[-1].header
        ps = last.page_size
        changed_pages = sorted((p, d) for p, d in final.items() if p <= last.commit)
        _apply_pages(db, steps, changed_pages, fence, cache, fence_timeout,
                     rewrite=rewrite, snapshot=snapshot)
    except BaseException:
        # Nothing moved: the table must describe the database file as the next attempt
        # finds it (pages are rewritten by comparing against it), so take it all back.
        for t, undo in reversed(undos):
            t.undo(undo)
        raise
    db.adopt(Pos(txid, checksum), table)
    return Applied(steps[0].header.min_txid, txid, len(changed_pages), snapshot,
                   files=len(steps))


def _apply_pages(db: DB, steps: list[_Step], changed: list[tuple[int, bytes]],
                 fence: Fence | None, cache: KernelCache | None, fence_timeout: float, *,
                 rewrite: bool, snapshot: bool) -> None:
    superseded: list[TxRange] = []
    logged: list[TxRange] = []
    for step in steps:
        superseded += _log_file(db, step.header, step.data,
                                replace_all=step.header.min_txid == 1)
        logged.append(TxRange(step.header.min_txid, step.header.max_txid))
    db.ltx.sync()  # the record of where the replica is going is durable before the pages
    last = steps[-1].header
    ps = last.page_size
    fd = db.fd(FileKind.DATABASE, create=True)
    old_size = os.fstat(fd).st_size
    wal_before = os.pread(fd, 2, 18) == WAL_MODE
    new_size = last.commit * ps
    page1 = dict(changed).get(1)
    wal_after = page1[18:20] == WAL_MODE if page1 is not None else wal_before
    if wal_after and not db.exists(FileKind.WAL):
        # Readers open -wal read-only (their read-write open is refused), so it must exist.
        db.touch(FileKind.WAL)

    def write_pages() -> None:
        for pgno, page in changed:
            os.pwrite(fd, page, (pgno - 1) * ps)
        if new_size != old_size and (new_size < old_size or rewrite):
            os.ftruncate(fd, new_size)

    try:
        _under_fence(db, fence, wal_before or wal_after, fence_timeout, write_pages,
                     lambda: _tell_kernel(db, cache, changed, ps, new_size < old_size or rewrite),
                     (ps, last.commit))
    except BaseException:
        for r in logged:
            db.ltx.delete(r)
        raise
    for r in superseded:
        if r not in logged:
            db.ltx.delete(r)


def _under_fence(db: DB, fence: Fence | None, wal_mode: bool, timeout: float,
                 write: Callable[[], None], tell: Callable[[], None],
                 shm: tuple[int, int] | None = None) -> None:
    if fence is None:
        write()
        tell()
        return
    fence.acquire(wal_mode, min(timeout, WAL_FENCE_TIMEOUT) if wal_mode else timeout)
    try:
        write()
        tell()
        if shm is not None and db.exists(FileKind.SHM) and fence.mode == "wal-index":
            fence.write_shm_header(*shm)
    finally:
        fence.release()


def _tell_kernel(db: DB, cache: KernelCache | None, changed: list[tuple[int, bytes]],
                 ps: int, drop_all: bool) -> None:
    if cache is None:
        return
    if drop_all or len(changed) > NOTIFY_STORE_MAX_PAGES:
        cache.invalidate(db)
        return
    # Push the new pages into the kernel cache (readers stay warm), joined into runs.
    run_start = -1
    run: list[bytes] = []
    prev = -2
    for pgno, page in changed:
        if pgno != prev + 1 and run:
            cache.store(db, (run_start - 1) * ps, b"".join(run))
            run = []
        if not run:
            run_start = pgno
        run.append(page)
        prev = pgno
    if run:
        cache.store(db, (run_start - 1) * ps, b"".join(run))


def _log_file(db: DB, header: Header, data: bytes, *, replace_all: bool) -> list[TxRange]:
    """Put the file into the local log; returns the records it supersedes (a snapshot, the
    whole history; a compacted file, the records it overlaps), to delete once it is
    applied."""
    key = TxRange(header.min_txid, header.max_txid)
    # Only the records that overlap it (a lookup, not a walk of the whole log: a replica at
    # 100 transactions/s keeps 60,000 records with 10 minutes of retention).
    candidates = list(db.ltx) if replace_all else db.ltx.ranges(header.min_txid - 1)
    superseded = [r for r in candidates
                  if (replace_all or r.max_txid >= header.min_txid) and r != key]
    db.ltx.write(key, data)
    return superseded


def _apply_deletion(db: DB, header: Header, data: bytes, fence: Fence | None,
                    cache: KernelCache | None, timeout: float) -> Applied:
    """The primary deleted the database: so does the replica (readers see it gone)."""
    superseded = _log_file(db, header, data, replace_all=True)
    db.ltx.sync()

    def remove() -> None:
        for kind in (FileKind.DATABASE, FileKind.WAL):
            db.remove_file(kind)

    wal = db.exists(FileKind.WAL)
    _under_fence(db, fence, wal, timeout, remove,
                 lambda: cache.invalidate(db) if cache is not None else None, None)
    for r in superseded:
        db.ltx.delete(r)
    db.mark_deleted(Pos(header.max_txid, EMPTY_DATABASE_CHECKSUM))
    log.info("%s: deleted on the primary (TXID %016x)", db.name, header.max_txid)
    return Applied(header.min_txid, header.max_txid, 0, False)


def reapply_last(db: DB) -> bool:
    """After a crash in the middle of an apply: write the last LTX file's pages again (they
    are idempotent). Returns False when there is nothing to re-apply."""
    last = db.ltx.last_range()
    if last is None:
        return False
    with db.ltx.open(last) as f:
        decoder = Decoder(f, name=db.ltx.describe(last))
        header = decoder.header
        if header.commit == 0:
            return False
        fd = db.fd(FileKind.DATABASE, create=True)
        ps = header.page_size
        for pgno, page in decoder.pages():
            os.pwrite(fd, page, (pgno - 1) * ps)
        if header.min_txid == 1 or os.fstat(fd).st_size > header.commit * ps:
            os.ftruncate(fd, header.commit * ps)
        os.fsync(fd)
    return True
