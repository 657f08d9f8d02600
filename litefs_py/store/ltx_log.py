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
import os
from collections.abc import Iterator
from pathlib import Path

from ..ltx import HEADER_SIZE, TRAILER_SIZE, Header, Trailer, format_filename, parse_filename
from ..ltx.filename import is_ltx_filename

# How many unsynced LTX files keep their descriptor open (saves a reopen in sync()).
_MAX_OPEN_UNSYNCED = 64


class LtxLog:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._dir_str = str(directory)
        self._unsynced: list[tuple[Path, int | None]] = []
        self._dir_dirty = False

    def paths(self) -> Iterator[tuple[int, int, Path]]:
        """(min, max, path) of every LTX file, sorted by TXID range."""
        entries = []
        for name in os.listdir(self.dir):
            if is_ltx_filename(name):
                lo, hi = parse_filename(name)
                entries.append((lo, hi, self.dir / name))
        entries.sort()
        return iter(entries)

    def last(self) -> tuple[Path, Header, Trailer] | None:
        """The newest LTX file with its header and trailer (without decoding the pages)."""
        newest = None
        for entry in self.paths():
            if newest is None or entry[1] > newest[1]:
                newest = entry
        if newest is None:
            return None
        path = newest[2]
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
        path.unlink(missing_ok=True)

    def sync(self) -> None:
        """fsync every LTX file written since the last sync, then the directory."""
        pending, self._unsynced = self._unsynced, []
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
        if self._dir_dirty:
            dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            self._dir_dirty = False

    @property
    def unsynced_count(self) -> int:
        return len(self._unsynced)

    def close(self) -> None:
        self.sync()
