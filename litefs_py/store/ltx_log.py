"""The local LTX log of one database: its records, addressed by TXID range.

Consumers (uploader, stream server, recovery, replica apply, CLI) read and remove records by
`TxRange` through this class and never by path: that a record is one file
`DATA/dbs/<name>/ltx/<min>-<max>.ltx` is known here only.

A record is written under its final name before the FUSE request that completed the commit
returns (no temporary name and rename: that halves the cost per commit). Only the newest
record can be torn by a crash, and then its transaction was never acknowledged (the request
had not returned), so recovery verifies the newest record and deletes it if it is incomplete.
It is not fsynced then: SQLite decides when data must be durable, and `sync()` is called
before SQLite's own fsync of the database, WAL or journal, so a record reaches stable storage
no later than the transaction it records.

Reading methods that take a range (`read`, `open`, `size`) compute the file from the range
alone and do not touch the in-memory index, so worker threads may call them while the trio
thread appends; a record deleted meanwhile raises FileNotFoundError.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import io
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sortedcontainers import SortedDict

from ..ltx import (
    HEADER_SIZE,
    TRAILER_SIZE,
    Header,
    Trailer,
    compact,
    format_filename,
    parse_filename,
)
from ..ltx.filename import is_ltx_filename
from ..types import TxRange

# How many unsynced records keep their descriptor open (saves a reopen in sync()).
_MAX_OPEN_UNSYNCED = 64
# Above this many records, one syncfs() of the data filesystem beats an fsync per file.
_SYNCFS_THRESHOLD = 16
_syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries durable (new, renamed or deleted files in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class RecordInfo:
    """A record's range with its decoded header and trailer (the pages not read)."""

    range: TxRange
    header: Header
    trailer: Trailer


@dataclass(frozen=True, slots=True)
class MergedRecords:
    """Consecutive records merged into one (spool pressure), ready to replace them."""

    parts: list[TxRange]
    header: Header
    data: bytes


class LtxLog:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._dir_str = str(directory)
        # The directory listing, kept in memory: listing thousands of files per upload cost
        # more than the upload. Every change goes through this class.
        self._files: SortedDict[TxRange, None] = SortedDict()
        for name in os.listdir(directory):
            if is_ltx_filename(name):
                self._files[TxRange(*parse_filename(name))] = None
            elif name.endswith(".tmp"):
                # Left by versions that wrote under a temporary name first.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(directory / name)
        self._unsynced: list[tuple[TxRange, int | None]] = []
        self._dir_dirty = False
        # (TXID, monotonic time) each time `trim(upto=...)` saw a higher TXID: when records
        # up to that TXID became deletable (see trim).
        self._covered_txids: list[int] = []
        self._covered_at: list[float] = []

    def _path(self, r: TxRange) -> str:
        return f"{self._dir_str}/{format_filename(r[0], r[1])}"

    def describe(self, r: TxRange) -> str:
        """How to name a record in a message (its file)."""
        return self._path(r)

    # ---- the index -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._files)

    def __iter__(self) -> Iterator[TxRange]:
        """Every record, in TXID order."""
        return iter(self._files.keys())

    def ranges(self, after: int = 0) -> list[TxRange]:
        """The records holding any TXID after `after` (what a reader at `after` still lacks),
        in TXID order; a merged record straddling `after` is included."""
        files = self._files
        keys = files.keys()
        start = files.bisect_left(TxRange(after + 1, 0))
        if start > 0 and keys[start - 1].max_txid > after:
            start -= 1
        return list(keys[start:])

    def first_txid(self) -> int | None:
        return self._files.keys()[0].min_txid if self._files else None

    def last_range(self) -> TxRange | None:
        return self._files.keys()[-1] if self._files else None

    def last(self) -> RecordInfo | None:
        """The newest record with its header and trailer."""
        r = self.last_range()
        return None if r is None else self.info(r)

    # ---- reading a record (safe in worker threads) -----------------------------------------

    def info(self, r: TxRange) -> RecordInfo:
        with open(self._path(r), "rb") as f:
            header = Header.decode(f.read(HEADER_SIZE), name=self._path(r))
            f.seek(-TRAILER_SIZE, os.SEEK_END)
            trailer = Trailer.decode(f.read(TRAILER_SIZE))
        return RecordInfo(r, header, trailer)

    def header(self, r: TxRange) -> Header:
        with open(self._path(r), "rb") as f:
            return Header.decode(f.read(HEADER_SIZE), name=self._path(r))

    def read(self, r: TxRange) -> bytes:
        """The whole encoded record."""
        with open(self._path(r), "rb") as f:
            return f.read()

    def open(self, r: TxRange) -> BinaryIO:
        """The record as a binary stream (for decoding without holding it in memory)."""
        return open(self._path(r), "rb")

    def size(self, r: TxRange) -> int:
        return os.stat(self._path(r)).st_size

    def bytes_after(self, txid: int) -> int:
        """How many bytes the records after `txid` take (the uploader's spool)."""
        total = 0
        for r in self.ranges(txid):
            with contextlib.suppress(FileNotFoundError):
                total += self.size(r)
        return total

    # ---- appending -----------------------------------------------------------------------

    def write(self, r: TxRange, data: bytes) -> None:
        """Append one encoded record (not yet fsynced)."""
        path = self._path(r)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            n = os.write(fd, data)
            if n != len(data):
                view = memoryview(data)[n:]
                while view:
                    view = view[os.write(fd, view):]
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        self._files[r] = None
        if len(self._unsynced) < _MAX_OPEN_UNSYNCED:
            self._unsynced.append((r, fd))
        else:
            os.close(fd)
            self._unsynced.append((r, None))
        self._dir_dirty = True

    def write_streaming(self, r: TxRange, produce: Callable[[BinaryIO], None]) -> None:
        """Append one record by letting `produce` encode into it (for records too big to hold
        in memory, such as a snapshot of a large database); fsynced before returning."""
        path = self._path(r)
        try:
            with open(path, "wb") as f:
                produce(f)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        self._files[r] = None
        self._dir_dirty = True

    def take_back(self, r: TxRange) -> None:
        """Remove a record whose transaction did not happen (the commit write failed)."""
        for i, (u, fd) in enumerate(self._unsynced):
            if u == r:
                if fd is not None:
                    os.close(fd)
                del self._unsynced[i]
                break
        self.delete(r)

    def delete(self, r: TxRange) -> None:
        """Delete one record (retention, a merge, a replica's superseded history, or a torn
        record found by recovery)."""
        self._files.pop(r, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(r))

    # ---- local retention -----------------------------------------------------------------

    def trim(self, retention: float, *, upto: int | None = None) -> int:
        """Delete the oldest records once they are `retention` seconds old, never the newest
        one (recovery starts from it). Returns how many were deleted.

        Without `upto` (no replica), a record's age counts from when it was written. With
        `upto` (the replica holds every TXID up to it), only records within it are deleted,
        and their age counts from the first call whose `upto` covered them: a record that
        waited an hour for the replica is still kept `retention` after it reached it.
        """
        files = self._files
        deleted = 0
        if upto is None:
            cutoff = time.time() - retention
            while len(files) > 1:
                r = files.keys()[0]
                try:
                    if os.stat(self._path(r)).st_mtime >= cutoff:
                        break  # in TXID order, so the rest are newer
                except FileNotFoundError:
                    pass
                self.delete(r)
                deleted += 1
            return deleted
        now = time.monotonic()
        txids, times = self._covered_txids, self._covered_at
        if not txids or upto > txids[-1]:
            txids.append(upto)
            times.append(now)
        while len(files) > 1:
            r = files.keys()[0]
            if r.max_txid > upto:
                break
            i = bisect.bisect_left(txids, r.max_txid)
            if now - times[i] < retention:
                break  # covered later than every record before it: the rest are younger
            self.delete(r)
            deleted += 1
        if files:
            # Forget the marks no remaining record needs (the first one covering the oldest).
            keep = bisect.bisect_left(txids, files.keys()[0].max_txid)
            if keep:
                del txids[:keep], times[:keep]
        return deleted

    # ---- merging (spool pressure) --------------------------------------------------------

    def merge_job(self, after: int) -> Callable[[], MergedRecords] | None:
        """The blocking half of merging the records after TXID `after` into one: returns work
        for a worker thread, or None if there is nothing to merge. `install_merged` finishes
        in the thread that owns the log."""
        parts = [r for r in self.ranges(after) if r.min_txid > after]
        if len(parts) < 2:
            return None

        def work() -> MergedRecords:
            buf = io.BytesIO()
            with ExitStack() as stack:
                handles = [stack.enter_context(self.open(r)) for r in parts]
                header, _ = compact(handles, buf, names=[self._path(r) for r in parts],
                                    keep_wal_position=True)
            return MergedRecords(parts, header, buf.getvalue())

        return work

    def install_merged(self, merged: MergedRecords) -> TxRange:
        r = TxRange(merged.header.min_txid, merged.header.max_txid)
        self.write(r, merged.data)
        self.sync()
        for part in merged.parts:
            if part != r:
                self.delete(part)
        return r

    # ---- durability ----------------------------------------------------------------------

    def sync(self) -> None:
        """fsync every record written since the last sync, then the directory."""
        self.sync_job()()

    def sync_job(self) -> Callable[[], None]:
        """Take the records written since the last sync and return the blocking work that
        makes them durable, so a caller can run it in a worker thread. Many records (a WAL
        checkpoint after thousands of NORMAL commits) are flushed with one syncfs()."""
        pending, self._unsynced = self._unsynced, []
        dir_dirty, self._dir_dirty = self._dir_dirty, False
        directory = self._dir_str
        path = self._path

        def work() -> None:
            if len(pending) > _SYNCFS_THRESHOLD and _syncfs is not None:
                for _r, fd in pending:
                    if fd is not None:
                        os.close(fd)
                dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    if _syncfs(dfd) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, os.strerror(err), directory)
                finally:
                    os.close(dfd)
                return
            for r, fd in pending:
                if fd is None:
                    try:
                        fd = os.open(path(r), os.O_RDONLY | os.O_CLOEXEC)
                    except FileNotFoundError:
                        continue  # removed by retention or taken back
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            if dir_dirty:
                fsync_dir(directory)

        return work

    @property
    def unsynced_count(self) -> int:
        return len(self._unsynced)

    def close(self) -> None:
        self.sync()
