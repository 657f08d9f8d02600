"""Detect committed WAL transactions from the writes SQLite makes to the `-wal` file.

pyfuse3 cannot see SQLite's locks, so commits are recognised from the file operations alone
(docs/formats.md §7):

- SQLite writes each frame as two writes: the 24-byte header, then the page.
- A frame whose header has a non-zero `commit` field ends a transaction once its page is
  written, unless a page of the current transaction was overwritten in place: then SQLite
  writes the following frames with zeroed salts and checksums and, at commit, rewrites the
  frame headers from the first overwritten frame up to the commit frame
  (`walRewriteChecksums`); the transaction is complete only when the commit frame's header
  has been rewritten.
- A header written at or below the last pending frame outside that rewrite means the pending
  frames belonged to a transaction that was rolled back: SQLite writes the next transaction
  from the last commit again.
- Padding frames after a commit (synchronous=FULL on non-powersafe devices) are commit frames
  repeating the last page; they change no content, so the caller writes no LTX file for them.
- After a checkpoint the next writer rewrites the WAL header (new salts) and writes frames from
  offset 32 again; truncating the WAL below its header also starts afresh.

Frames whose salts differ from the WAL header's are ignored. `process()` updates the state and,
with a commit, returns an `Undo` so that a caller that fails to record the commit (the LTX
append failed) can refuse the write and put the tracker back exactly as it was.

Almost every write is SQLite appending the next frame in order: its header right after the
last pending frame (or the last commit), then its page (which the kernel may split in two).
`process()` handles exactly those writes with a few comparisons and no allocation beyond the
new frame (and, at a commit, the commit itself); anything else — a header at another place,
a write spanning several frames, a rewrite of the current transaction, a new WAL header —
takes the general path, which handles every case.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

WAL_HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
_WAL_HEADER = struct.Struct(">IIIIII")  # magic, version, page size, ckpt seq, salt1, salt2
_FRAME_HEADER = struct.Struct(">IIII")  # pgno, commit, salt1, salt2
WAL_MAGICS = (0x377F0682, 0x377F0683)
_PAGE_SIZES = frozenset(1 << n for n in range(9, 17))

ReadHeader = Callable[[int], bytes]


@dataclass(slots=True)
class WalCommit:
    """A transaction completed by the write being processed."""

    first_frame: int  # index of the transaction's first frame
    commit_frame: int  # index of its commit frame
    db_size: int  # database size in pages after the transaction
    frames: dict[int, int]  # pgno -> index of the frame holding its newest version


@dataclass(slots=True)
class _Frame:
    pgno: int
    commit: int
    page_written: bool = False
    unsalted: bool = False  # written with zero salts: its header will be rewritten


@dataclass(slots=True)
class Undo:
    page_size: int
    salts: tuple[int, int] | None
    committed_frames: int
    deferred_commit: int | None
    pending: dict[int, _Frame]
    touched: dict[int, _Frame | None] = field(default_factory=dict)


class WalTracker:
    def __init__(self) -> None:
        self.page_size = 0
        self.salts: tuple[int, int] | None = None
        self.committed_frames = 0  # frames up to and including the last commit (mxFrame)
        self._pending: dict[int, _Frame] = {}
        self._deferred_commit: int | None = None  # commit frame waiting for its header rewrite
        self._last = -1  # highest pending frame index (-1: none); kept to avoid max() per write

    @property
    def frame_size(self) -> int:
        return FRAME_HEADER_SIZE + self.page_size

    def frame_offset(self, index: int) -> int:
        return WAL_HEADER_SIZE + index * (FRAME_HEADER_SIZE + self.page_size)

    @property
    def has_pending(self) -> bool:
        """Whether frames of a transaction not yet committed have been written."""
        return bool(self._pending)

    @property
    def committed_end(self) -> int:
        """Byte offset just past the last committed frame."""
        return self.frame_offset(self.committed_frames)

    def reset(self) -> None:
        self.salts = None
        self.committed_frames = 0
        self._pending = {}
        self._deferred_commit = None
        self._last = -1

    def load(self, page_size: int, salts: tuple[int, int], committed_frames: int) -> None:
        """Resume after recovery: the WAL holds `committed_frames` committed frames."""
        self.reset()
        self.page_size = page_size
        self.salts = salts
        self.committed_frames = committed_frames

    def process(self, offset: int, data: bytes | memoryview,
                read_header: ReadHeader) -> tuple[WalCommit | None, Undo | None]:
        """Account for a write of `data` at `offset`; return the commit it completes, if any,
        with the undo that takes it back (None without a commit).

        `read_header(i)` returns the stored 24 header bytes of frame i; it is used only when a
        write ends inside a frame header without covering all of it.
        """
        salts = self.salts
        if salts is not None and offset >= WAL_HEADER_SIZE and self._deferred_commit is None:
            fs = FRAME_HEADER_SIZE + self.page_size
            i, within = divmod(offset - WAL_HEADER_SIZE, fs)
            last = self._last
            n = len(data)
            if within == 0 and n == FRAME_HEADER_SIZE:
                # The header of the next frame, in order.
                if i == (last + 1 if last >= 0 else self.committed_frames):
                    pgno, cmt, s1, s2 = _FRAME_HEADER.unpack_from(data)
                    if pgno and s1 == salts[0] and s2 == salts[1]:
                        self._pending[i] = _Frame(pgno, cmt)
                        self._last = i
                        return None, None
            elif i == last and within >= FRAME_HEADER_SIZE and within + n <= fs:
                # (Part of) the page of the newest pending frame.
                if within + n < fs:
                    return None, None  # its end is still to come
                frame = self._pending[i]
                if not frame.unsalted:
                    if not frame.commit:
                        frame.page_written = True
                        return None, None
                    return self._commit_in_order(i, frame)
        return self._process(offset, data, read_header)

    def _commit_in_order(self, i: int, frame: _Frame) -> tuple[WalCommit, Undo]:
        """The page of commit frame `i`, the newest pending frame, was written."""
        pending = self._pending
        undo = Undo(self.page_size, self.salts, self.committed_frames, None, pending,
                    {i: _Frame(frame.pgno, frame.commit, frame.page_written, False)})
        frame.page_written = True
        if len(pending) == 1:
            frames = {frame.pgno: i}
        else:
            frames = {}
            for k in sorted(pending):  # all <= i: i is the newest
                frames[pending[k].pgno] = k
        commit = WalCommit(self.committed_frames, i, frame.commit, frames)
        self.committed_frames = i + 1
        self._pending = {}
        self._last = -1
        return commit, undo

    def _process(self, offset: int, data: bytes | memoryview,
                 read_header: ReadHeader) -> tuple[WalCommit | None, Undo | None]:
        """`process` for any write (the general path)."""
        undo = Undo(self.page_size, self.salts, self.committed_frames,
                    self._deferred_commit, self._pending)
        end = offset + len(data)
        if offset == 0 and len(data) >= WAL_HEADER_SIZE:
            magic, _version, page_size, _seq, s1, s2 = _WAL_HEADER.unpack_from(data)
            if magic in WAL_MAGICS and page_size in _PAGE_SIZES and (
                (s1, s2) != self.salts or page_size != self.page_size
            ):
                self.reset()  # a new WAL generation: frames start again at offset 32
                self.page_size = page_size
                self.salts = (s1, s2)
        if end <= WAL_HEADER_SIZE or self.salts is None:
            return None, None
        fs = self.frame_size
        commit: WalCommit | None = None
        first = (max(offset, WAL_HEADER_SIZE) - WAL_HEADER_SIZE) // fs
        last = (end - 1 - WAL_HEADER_SIZE) // fs
        for i in range(first, last + 1):
            if i < self.committed_frames:
                continue  # committed frames are never rewritten within a WAL generation
            fstart = WAL_HEADER_SIZE + i * fs
            if offset < fstart + FRAME_HEADER_SIZE <= end:
                commit = self._header_written(i, fstart, offset, data, read_header, undo) \
                    or commit
            if offset < fstart + fs <= end:
                commit = self._page_written(i, undo) or commit
        if commit is not None:
            self.committed_frames = commit.commit_frame + 1
            self._pending = {k: v for k, v in self._pending.items() if k > commit.commit_frame}
            self._last = max(self._pending, default=-1)
            self._deferred_commit = None
            return commit, undo
        return None, None

    def _touch(self, i: int, undo: Undo) -> None:
        if i not in undo.touched:
            old = self._pending.get(i)
            undo.touched[i] = None if old is None else _Frame(old.pgno, old.commit,
                                                              old.page_written, old.unsalted)

    def _header_written(self, i: int, fstart: int, offset: int, data: bytes | memoryview,
                        read_header: ReadHeader, undo: Undo) -> WalCommit | None:
        if offset <= fstart:
            raw = bytes(data[fstart - offset:fstart - offset + 16])
        else:
            stored = bytearray(read_header(i)[:FRAME_HEADER_SIZE])
            stored[offset - fstart:FRAME_HEADER_SIZE] = data[:FRAME_HEADER_SIZE - (offset - fstart)]
            raw = bytes(stored[:16])
        pgno, cmt, s1, s2 = _FRAME_HEADER.unpack(raw)
        unsalted = s1 == s2 == 0
        valid = pgno != 0 and ((s1, s2) == self.salts or unsalted)
        in_rewrite = self._deferred_commit is not None
        if not in_rewrite and i <= self._last:
            # A rollback (to a savepoint or of the whole transaction): the frames from here
            # on are being written again.
            for k in [k for k in self._pending if k >= i]:
                self._touch(k, undo)
                del self._pending[k]
            self._last = max(self._pending, default=-1)
        self._touch(i, undo)
        old = self._pending.get(i)
        if not valid:
            if self._pending.pop(i, None) is not None and i == self._last:
                self._last = max(self._pending, default=-1)
            return None
        written = in_rewrite and old is not None and old.page_written
        self._pending[i] = _Frame(pgno, cmt, written, unsalted)
        if i > self._last:
            self._last = i
        if in_rewrite and i == self._deferred_commit and cmt and written and not unsalted:
            return self._make_commit(i, cmt)
        return None

    def _page_written(self, i: int, undo: Undo) -> WalCommit | None:
        p = self._pending.get(i)
        if p is None:
            return None
        self._touch(i, undo)
        p.page_written = True
        if p.commit and i == self._last:
            if p.unsalted:
                self._deferred_commit = i  # complete once walRewriteChecksums reaches it
                return None
            return self._make_commit(i, p.commit)
        return None

    def _make_commit(self, index: int, db_size: int) -> WalCommit:
        frames: dict[int, int] = {}
        for i in sorted(self._pending):
            if i <= index:
                frames[self._pending[i].pgno] = i
        return WalCommit(self.committed_frames, index, db_size, frames)

    def undo(self, undo: Undo) -> None:
        self.page_size = undo.page_size
        self.salts = undo.salts
        self.committed_frames = undo.committed_frames
        self._deferred_commit = undo.deferred_commit
        self._pending = undo.pending
        for i, old in undo.touched.items():
            if old is None:
                self._pending.pop(i, None)
            else:
                self._pending[i] = old
        self._last = max(self._pending, default=-1)

    def truncate(self, size: int) -> None:
        if size < WAL_HEADER_SIZE or self.page_size == 0:
            self.reset()
            return
        frames = (size - WAL_HEADER_SIZE) // self.frame_size
        self.committed_frames = min(self.committed_frames, frames)
        self._pending = {k: v for k, v in self._pending.items() if k < frames}
        self._last = max(self._pending, default=-1)
