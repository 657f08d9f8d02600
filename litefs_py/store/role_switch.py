"""Turn a database written by a primary into the shape a read replica keeps, in place.

A replica writes applied pages straight into the database file and keeps its WAL empty, so
that readers read the database file (store/replica_apply.py). A primary in WAL mode leaves
committed transactions in the WAL until SQLite checkpoints them. Before the mount starts
applying another primary's transactions, those frames go into the database file (the
checkpoint SQLite would do), the WAL is emptied, and the wal-index header is reset under
the reader fence so that readers read the database file from now on. A hot rollback journal
(a transaction whose commit was refused) is rolled back as SQLite would.

Blocking: call from a worker thread (the fence takes locks through the mount).
"""

from __future__ import annotations

import logging
import os

from ..types import FileKind
from .db import DB
from .recovery import roll_back_hot_journal
from .replica_apply import WAL_FENCE_TIMEOUT, Fence, KernelCache

log = logging.getLogger("litefs.store")


def to_replica_shape(db: DB, fence: Fence | None, cache: KernelCache | None, *,
                     timeout: float = WAL_FENCE_TIMEOUT) -> int:
    """Fold the committed WAL into the database file and empty the WAL; returns the number of
    pages copied. Raises FenceTimeout if readers hold their locks longer than `timeout`."""
    if db.deleted or not db.exists(FileKind.DATABASE):
        return 0
    table = db.table
    offsets = db.wal_page_offsets()
    wal_has_data = db.exists(FileKind.WAL) and db.size(FileKind.WAL) > 0
    hot_journal = db.exists(FileKind.JOURNAL)
    if not offsets and not wal_has_data and not hot_journal:
        return 0
    copied = 0

    def fold() -> None:
        nonlocal copied
        fd = db.fd(FileKind.DATABASE)
        if hot_journal:
            roll_back_hot_journal(db)
        if table is not None and offsets:
            ps = table.page_size
            for pgno, offset in sorted(offsets.items()):
                if pgno <= table.page_count:
                    os.pwrite(fd, db.read(FileKind.WAL, offset, ps), (pgno - 1) * ps)
                    copied += 1
            os.ftruncate(fd, table.page_count * ps)
        os.fsync(fd)
        if db.exists(FileKind.WAL):
            db.truncate(FileKind.WAL, 0)

    wal_mode = bool(offsets) or wal_has_data
    if fence is None:
        fold()
    else:
        fence.acquire(wal_mode, timeout)
        try:
            fold()
            if cache is not None:
                cache.invalidate(db)
            if table is not None and db.exists(FileKind.SHM) and fence.mode == "wal-index":
                fence.write_shm_header(table.page_size, table.page_count)
        finally:
            fence.release()
    if fence is None and cache is not None:
        cache.invalidate(db)
    if copied:
        log.info("%s: moved %d committed page(s) from the WAL into the database file", db.name,
                 copied)
    return copied
