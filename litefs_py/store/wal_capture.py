"""Capture in WAL mode: `WalTracker` recognises the write that completes a commit frame; the
transaction is recorded as an LTX record before that write is performed on the `-wal` file,
and taken back (with the tracker's state) if the write fails.

Also the map of which WAL frame holds each page's newest committed version: snapshots read
pages from it, and the first record after a page-size change needs every page.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..types import FileKind, WalRange
from .wal_tracker import FRAME_HEADER_SIZE, WAL_HEADER_SIZE, WalCommit, WalTracker

if TYPE_CHECKING:
    from .db import DB, Recorded


class WalCapture:
    def __init__(self, db: DB) -> None:
        self.db = db
        self.tracker = WalTracker()
        self._newest: dict[int, int] = {}  # pgno -> frame of its newest committed version

    @property
    def active(self) -> bool:
        """Whether a WAL generation is in use (its header has been seen)."""
        return self.tracker.salts is not None

    @property
    def in_transaction(self) -> bool:
        """Whether frames of a transaction not yet committed have been written."""
        return self.tracker.has_pending

    def page_offsets(self) -> dict[int, int]:
        """pgno -> byte offset in the `-wal` file of the page's newest committed version
        (empty when no WAL is in use)."""
        if self.tracker.salts is None:
            return {}
        offset = self.tracker.frame_offset
        return {p: offset(i) + FRAME_HEADER_SIZE for p, i in self._newest.items()}

    # ---- the file verbs, as DB dispatches them ---------------------------------------------

    def write(self, fd: int, offset: int, data: bytes) -> int:
        tracker = self.tracker
        commit, undo = tracker.process(offset, data, self._read_frame_header)
        if commit is None:
            return os.pwrite(fd, data, offset)
        assert undo is not None
        try:
            written = self.commit(commit, offset, data)
        except BaseException:
            tracker.undo(undo)
            raise
        try:
            n = os.pwrite(fd, data, offset)
        except BaseException:
            tracker.undo(undo)
            if written is not None:
                self.db.take_back(written)
            raise
        self._newest.update(commit.frames)
        return n

    def _read_frame_header(self, index: int) -> bytes:
        return os.pread(self.db.fd(FileKind.WAL), FRAME_HEADER_SIZE,
                        self.tracker.frame_offset(index))

    def truncate(self, size: int) -> None:
        self.tracker.truncate(size)
        if size < WAL_HEADER_SIZE:
            self._newest.clear()

    def reset(self) -> None:
        """The `-wal` file was deleted."""
        self.tracker.reset()
        self._newest.clear()

    def load(self, page_size: int, salts: tuple[int, int], committed_frames: int,
             newest: dict[int, int]) -> None:
        """Resume after recovery: the WAL holds `committed_frames` committed frames, and
        `newest` maps pages to the frame of their newest version among them."""
        self.tracker.load(page_size, salts, committed_frames)
        self._newest = dict(newest)

    # ---- commits -------------------------------------------------------------------------

    def commit(self, commit: WalCommit, offset: int, data: bytes) -> Recorded | None:
        """Record the transaction that the write of `data` at `offset` completes."""
        db = self.db
        tracker = self.tracker
        ps = tracker.page_size
        end = offset + len(data)
        wal_fd = db.fd(FileKind.WAL)

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

        if db.needs_every_page(ps):
            # First record (a snapshot) or page size change: every page, newest version first
            # from this transaction, then the committed WAL, then the database file.
            newest = self._newest
            pages = {}
            for pgno in range(1, commit.db_size + 1):
                idx = commit.frames.get(pgno, newest.get(pgno))
                pages[pgno] = frame_page(idx) if idx is not None else db.read_page(pgno, ps)
        else:
            pages = {pgno: frame_page(idx) for pgno, idx in commit.frames.items()
                     if pgno <= commit.db_size}
        first_off = tracker.frame_offset(commit.first_frame)
        wal_size = (commit.commit_frame + 1 - commit.first_frame) * tracker.frame_size
        salts = tracker.salts or (0, 0)
        return db.record(pages, commit.db_size, ps,
                         WalRange(first_off, wal_size, salts[0], salts[1]))
