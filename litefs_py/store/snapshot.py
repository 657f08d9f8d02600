"""The one snapshotter: a database as it is now, as one LTX file (TXIDs 1..current, flags 0x2),
for a replica's first copy (stream server) and for a replica bucket that lost its history
(uploader).

What the snapshot needs is taken in the trio thread (position, page count, where each page's
newest version is, duplicated file descriptors); the pages are read and encoded in a worker
thread, so FUSE requests are served meanwhile. Commits and checkpoints may change the files
during that read: the rolling checksum of what was read must equal the checksum taken at the
start. If it does not, the read is done again with the database's write gate held (its
writers wait; readers and every other database carry on), which makes it exact.
"""

from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import dataclass, field

import trio

from ..ltx import FLAG_V3_NO_CHECKSUM, Encoder, Header, lock_pgno
from ..types import EncodedLtx, FileKind, Pos
from .db import DB

log = logging.getLogger("litefs.store")

_BATCH = 256  # pages read from the database file with one pread
TRANSACTION_POLL = 0.005  # seconds between looks while a transaction under way finishes
LONG_TRANSACTION = 1000 * TRANSACTION_POLL  # when the wait is worth a log line


@dataclass(slots=True)
class SnapshotJob:
    """The blocking half of a snapshot: call it in a worker thread, once. Returns None when
    commits changed the files while they were read."""

    name: str
    pos: Pos
    page_size: int
    page_count: int
    wal_pages: dict[int, int]  # pgno -> offset of its newest version in the -wal file
    db_fd: int
    wal_fd: int | None
    closed: bool = field(default=False)

    @classmethod
    def prepare(cls, db: DB) -> SnapshotJob:
        table = db.table
        if table is None or db.deleted:
            raise ValueError(f"{db.name}: no database to snapshot")
        wal_pages = db.wal_page_offsets()
        db_fd = db.dup_fd(FileKind.DATABASE)
        wal_fd = db.dup_fd(FileKind.WAL) if wal_pages else None
        return cls(db.name, db.pos, table.page_size, table.page_count, wal_pages, db_fd, wal_fd)

    def close(self) -> None:
        """Close the duplicated descriptors (whether or not the job ran)."""
        if not self.closed:
            self.closed = True
            os.close(self.db_fd)
            if self.wal_fd is not None:
                os.close(self.wal_fd)

    def __call__(self) -> EncodedLtx | None:
        if self.closed:
            raise RuntimeError("a snapshot job runs once")
        ps, count = self.page_size, self.page_count
        header = Header(page_size=ps, commit=count, min_txid=1, max_txid=self.pos.txid,
                        timestamp=int(time.time() * 1000), flags=FLAG_V3_NO_CHECKSUM)
        buf = io.BytesIO()
        enc = Encoder(buf, header, track_checksum=True, name=f"{self.name} snapshot")
        lock = lock_pgno(ps)
        wal_pages, wal_fd = self.wal_pages, self.wal_fd
        for first in range(1, count + 1, _BATCH):
            last = min(count, first + _BATCH - 1)
            run = os.pread(self.db_fd, (last - first + 1) * ps, (first - 1) * ps)
            run = run.ljust((last - first + 1) * ps, b"\0")  # zeros past the file's end
            view = memoryview(run)
            pages: list[tuple[int, bytes | memoryview]] = []
            for pgno in range(first, last + 1):
                if pgno == lock:
                    continue
                offset = wal_pages.get(pgno)
                if offset is not None and wal_fd is not None:
                    pages.append((pgno, os.pread(wal_fd, ps, offset).ljust(ps, b"\0")))
                else:
                    at = (pgno - first) * ps
                    pages.append((pgno, view[at:at + ps]))
            enc.encode_pages(pages)
        if enc.pages_checksum != self.pos.checksum:
            return None  # the files changed under the read: not one position
        enc.finish(0)
        return EncodedLtx(buf.getvalue(), 1, self.pos.txid, self.pos.checksum, header.timestamp)


async def _run(job: SnapshotJob) -> EncodedLtx | None:
    try:
        return await trio.to_thread.run_sync(job)
    finally:
        job.close()


async def take_snapshot(db: DB) -> EncodedLtx:
    """A snapshot of `db` at its current position, read and encoded in a worker thread.
    Raises ValueError if the database was deleted (or never written)."""
    result = await _run(SnapshotJob.prepare(db))
    if result is not None:
        return result
    log.info("%s: commits changed the database while its snapshot was read; reading it "
             "again with its writes held", db.name)
    with db.gate.hold():
        # No transaction starts now; one under way finishes first (its pages may already be
        # in the database file, not yet committed).
        waited = 0.0
        while db.in_transaction:
            await trio.sleep(TRANSACTION_POLL)
            waited += TRANSACTION_POLL
            if waited == LONG_TRANSACTION:
                log.info("%s: the snapshot waits for a write transaction that has been under "
                         "way for %.0f s", db.name, LONG_TRANSACTION)
        result = await _run(SnapshotJob.prepare(db))
    if result is None:
        raise RuntimeError(f"{db.name}: the database files changed while its writes were "
                           "held; they were changed outside litefs")
    return result
