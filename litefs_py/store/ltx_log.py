"""The local LTX log of one database: `DATA/dbs/<name>/ltx/<min>-<max>.ltx`.

A file is written under its final name before the FUSE request that completed the commit
returns (no temporary name and rename: that halves the cost per commit). Only the newest file
can be torn by a crash, and then its transaction was never acknowledged (the request had not
returned), so recovery verifies the newest file and deletes it if it is incomplete. It is not
fsynced then: SQLite decides when data must be
durable, and `sync()` is called before SQLite's own fsync of the database, WAL or journal, so
an LTX file reaches stable storage no later than the transaction it records.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from sortedcontainers import SortedDict

from ..ltx import HEADER_SIZE, TRAILER_SIZE, Header, Trailer, format_filename, parse_filename
from ..ltx.filename import is_ltx_filename

# How many unsynced LTX files keep their descriptor open (saves a reopen in sync()).
_MAX_OPEN_UNSYNCED = 64
# Above this many files, one syncfs() of the data filesystem beats an fsync per file.
_SYNCFS_THRESHOLD = 16
_syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)


class LtxLog:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._dir_str = str(directory)
        # The directory listing, kept in memory: listing thousands of files per upload cost
        # more than the upload. Every change goes through this class.
        self._files: SortedDict[tuple[int, int], Path] = SortedDict()
        for name in os.listdir(directory):
            if is_ltx_filename(name):
                self._files[parse_filename(name)] = directory / name
        self._unsynced: list[tuple[Path, int | None]] = []
        self._dir_dirty = False

    def write_streaming(self, min_txid: int, max_txid: int,
                        produce: Callable[[BinaryIO], None]) -> Path:
        """Write one LTX file by letting `produce` encode into it (for files too big to hold
        in memory, such as a snapshot of a large database); fsynced before returning."""
        name = format_filename(min_txid, max_txid)
        path = self.dir / name
        try:
            with open(path, "wb") as f:
                produce(f)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self._files[(min_txid, max_txid)] = path
        self._dir_dirty = True
        return path

    def paths(self) -> Iterator[tuple[int, int, Path]]:
        """(min, max, path) of every LTX file, sorted by TXID range."""
        return ((lo, hi, p) for (lo, hi), p in self._files.items())

    def paths_after(self, txid: int) -> list[tuple[int, int, Path]]:
        """Files holding any TXID after `txid` (what a replica at `txid` still lacks)."""
        files = self._files
        start = files.bisect_left((txid + 1, 0))
        if start > 0:
            (_lo, hi) = files.keys()[start - 1]
            if hi > txid:
                start -= 1  # a merged file straddling `txid`
        return [(lo, hi, files[(lo, hi)]) for lo, hi in files.keys()[start:]]

    def last_path(self) -> Path | None:
        return self._files.values()[-1] if self._files else None

    def first_txid(self) -> int | None:
        return self._files.keys()[0][0] if self._files else None

    def delete(self, path: Path) -> None:
        """Delete one file (retention, a merge, or a torn file found by recovery)."""
        lo, hi = parse_filename(path.name)
        self._files.pop((lo, hi), None)
        path.unlink(missing_ok=True)

    def last(self) -> tuple[Path, Header, Trailer] | None:
        """The newest LTX file with its header and trailer (without decoding the pages)."""
        if not self._files:
            return None
        path = self._files.values()[-1]
        with open(path, "rb") as f:
            header = Header.decode(f.read(HEADER_SIZE), name=str(path))
            f.seek(-TRAILER_SIZE, os.SEEK_END)
            trailer = Trailer.decode(f.read(TRAILER_SIZE))
        return path, header, trailer

    def write(self, min_txid: int, max_txid: int, data: bytes) -> Path:
        """Write one encoded LTX file (not yet fsynced)."""
        name = format_filename(min_txid, max_txid)
        path_str = f"{self._dir_str}/{name}"
        fd = os.open(path_str, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            n = os.write(fd, data)
            if n != len(data):
                view = memoryview(data)[n:]
                while view:
                    view = view[os.write(fd, view):]
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path_str)
            raise
        path = self.dir / name
        self._files[(min_txid, max_txid)] = path
        if len(self._unsynced) < _MAX_OPEN_UNSYNCED:
            self._unsynced.append((path, fd))
        else:
            os.close(fd)
            self._unsynced.append((path, None))
        self._dir_dirty = True
        return path

    def remove(self, path: Path) -> None:
        """Take back a file whose transaction did not happen (the commit write failed)."""
        for i, (p, fd) in enumerate(self._unsynced):
            if p == path:
                if fd is not None:
                    os.close(fd)
                del self._unsynced[i]
                break
        self.delete(path)

    def sync(self) -> None:
        """fsync every LTX file written since the last sync, then the directory."""
        self.sync_job()()

    def sync_job(self) -> Callable[[], None]:
        """Take the files written since the last sync and return the blocking work that
        makes them durable, so a caller can run it in a worker thread. Many files (a WAL
        checkpoint after thousands of NORMAL commits) are flushed with one syncfs()."""
        pending, self._unsynced = self._unsynced, []
        dir_dirty, self._dir_dirty = self._dir_dirty, False
        directory = self._dir_str

        def work() -> None:
            if len(pending) > _SYNCFS_THRESHOLD and _syncfs is not None:
                for _path, fd in pending:
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
            for path, fd in pending:
                if fd is None:
                    try:
                        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    except FileNotFoundError:
                        continue  # removed by retention or taken back
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            if dir_dirty:
                dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)

        return work

    @property
    def unsynced_count(self) -> int:
        return len(self._unsynced)

    def close(self) -> None:
        self.sync()
