"""Capture in the rollback-journal modes (DELETE, TRUNCATE, PERSIST).

SQLite writes the journal header with its magic (when it syncs the journal) before it
overwrites any database page, and commits by deleting the journal (DELETE), truncating it to
0 (TRUNCATE) or zeroing its header (PERSIST). So: database pages written while the journal is
hot are dirty, and the operation that makes the journal cold commits them. The commit is
recorded as an LTX record *before* that operation is performed, and taken back if it fails.
Every change goes through the mount, so whether the journal is hot is known without reading.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ..sqlite import database_size_in_pages, journal_is_hot, page_size_or_zero
from ..types import FileKind

if TYPE_CHECKING:
    from .db import DB, Recorded

log = logging.getLogger("litefs.store")
T = TypeVar("T")


class CaptureError(OSError):
    """A write that cannot be captured; the application sees EIO."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


class RollbackCapture:
    def __init__(self, db: DB) -> None:
        self.db = db
        self.dirty: set[int] = set()
        self.journal_hot = self._read_journal_magic()

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is under way: the journal is hot (database pages may have
        been overwritten with content not yet committed)."""
        return self.journal_hot or bool(self.dirty)

    def _read_journal_magic(self) -> bool:
        try:
            with open(self.db.path(FileKind.JOURNAL), "rb") as f:
                return journal_is_hot(f.read(8))
        except FileNotFoundError:
            return False

    # ---- the file verbs, as DB dispatches them ---------------------------------------------

    def write_database(self, fd: int, offset: int, data: bytes) -> int:
        """A database write while the journal is hot: the pages it touches are dirty."""
        n = os.pwrite(fd, data, offset)
        ps = self.db.page_size or page_size_or_zero(os.pread(fd, 100, 0)) \
            or page_size_or_zero(data)
        if ps:
            first = offset // ps + 1
            last = (offset + len(data) - 1) // ps + 1
            self.dirty.update(range(first, last + 1))
        return n

    def write_journal(self, fd: int, offset: int, data: bytes) -> int:
        if offset != 0 or len(data) < 8:
            return os.pwrite(fd, data, offset)
        hot = journal_is_hot(data)
        if self.journal_hot and not hot and self.dirty:
            # PERSIST mode commits by zeroing the journal header.
            n = self.committing(lambda: os.pwrite(fd, data, offset))
        else:
            n = os.pwrite(fd, data, offset)
        self.journal_hot = hot
        return n

    def truncate_journal(self, fd: int, size: int) -> None:
        if size == 0 and self.dirty:
            # TRUNCATE mode commits by truncating the journal to 0.
            self.committing(lambda: os.ftruncate(fd, size))
        else:
            os.ftruncate(fd, size)
        if size < 8:
            self.journal_hot = False

    def remove_journal(self, unlink: Callable[[], None]) -> None:
        if self.dirty:
            # DELETE mode commits by deleting the journal.
            self.committing(unlink)
        else:
            unlink()
        self.journal_hot = False

    def journal_discarded(self) -> None:
        """Recovery removed the journal (rolled back or stale)."""
        self.journal_hot = False

    def database_deleted(self) -> None:
        self.dirty.clear()

    # ---- commits -------------------------------------------------------------------------

    def committing(self, operation: Callable[[], T]) -> T:
        """Record the transaction, then perform the operation that commits it; if that
        operation fails, take the record back."""
        written = self.commit()
        try:
            return operation()
        except BaseException:
            if written is not None:
                self.db.take_back(written)
            raise

    def commit(self) -> Recorded | None:
        """Record the dirty pages as one transaction (None if it changed nothing)."""
        db = self.db
        fd = db.fd(FileKind.DATABASE)
        header = os.pread(fd, 100, 0)
        ps = page_size_or_zero(header)
        dirty = self.dirty
        if not ps:
            dirty.clear()
            if header:
                # The journal is committed over a file that is not a SQLite database (an
                # encrypting or page-scrambling VFS): nothing could be recorded.
                raise db.refuse_not_sqlite("a transaction's commit")
            return None  # a new database whose first transaction rolled back: empty again
        commit = database_size_in_pages(header, os.fstat(fd).st_size, ps)
        if db.needs_every_page(ps):
            wanted: range | list[int] = range(1, commit + 1)
        else:
            wanted = sorted(p for p in dirty if p <= commit)
        pages = {p: db.read_page(p, ps) for p in wanted}
        written = db.record(pages, commit, ps)
        dirty.clear()
        return written
