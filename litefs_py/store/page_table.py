"""Per-page checksums of one database and its rolling checksum, updated in O(changed pages).

Index i holds the page checksum of page i+1 (0 for the lock page and for pages never seen).
The table is what lets a commit update the database checksum without reading old pages, and
it is persisted on clean shutdown so a restart does not rescan the database.
"""

from __future__ import annotations

import os
import struct
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..ltx.checksum import CHECKSUM_FLAG, crc64, lock_pgno

_MASK = CHECKSUM_FLAG - 1
_STATE_MAGIC = b"LFPT"
# magic, page size, txid, db checksum, page count, length of the caller's fingerprint
_STATE_HEADER = struct.Struct(">4sIQQQI")


@dataclass(frozen=True, slots=True)
class SavedTable:
    """A page table saved on a clean shutdown, with what it was saved for."""

    table: PageTable
    txid: int
    fingerprint: bytes  # the caller's identity of the files it describes


@dataclass(slots=True)
class TableUndo:
    old_count: int
    old_xor: int
    tail: array[int] | None
    old: dict[int, int]


class PageTable:
    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self.lock_pgno = lock_pgno(page_size)
        self._cks = array("Q")
        self._xor = 0

    @property
    def page_count(self) -> int:
        return len(self._cks)

    @property
    def checksum(self) -> int:
        return CHECKSUM_FLAG | (self._xor & _MASK)

    def get(self, pgno: int) -> int:
        return self._cks[pgno - 1] if pgno <= len(self._cks) else 0

    def set_page(self, pgno: int, data: bytes | memoryview) -> int:
        """Record the new content of a page; returns its checksum."""
        ck = CHECKSUM_FLAG | crc64(data, crc64(pgno.to_bytes(4, "big")))
        cks = self._cks
        if pgno > len(cks):
            cks.extend(array("Q", bytes(8 * (pgno - len(cks)))))
        old = cks[pgno - 1]
        cks[pgno - 1] = ck
        self._xor ^= old ^ ck
        return ck

    def commit(self, pages: dict[int, bytes], page_count: int
               ) -> tuple[list[tuple[int, bytes]], TableUndo]:
        """Apply one transaction: the database now has `page_count` pages and `pages` hold
        new contents (others unchanged; pages beyond the old size that are not given read as
        zeros). Returns the pages whose content changed, in pgno order, and an undo record.
        """
        cks = self._cks
        old_count = len(cks)
        undo = TableUndo(old_count, self._xor, None, {})
        if page_count < old_count:
            undo.tail = cks[page_count:]
            self.truncate(page_count)
        elif page_count > old_count:
            self.resize(page_count)
        changed: list[tuple[int, bytes]] = []
        lock = self.lock_pgno
        for pgno in sorted(pages):
            if pgno > page_count or pgno == lock:
                continue
            data = pages[pgno]
            ck = CHECKSUM_FLAG | crc64(data, crc64(pgno.to_bytes(4, "big")))
            old = cks[pgno - 1]
            if old != ck or pgno > old_count:
                if pgno <= old_count:
                    undo.old[pgno] = old
                cks[pgno - 1] = ck
                self._xor ^= old ^ ck
                changed.append((pgno, data))
        if page_count > old_count:
            # New pages nobody wrote read as zeros; the LTX file must carry them explicitly.
            zero = bytes(self.page_size)
            extra = [(p, zero) for p in range(old_count + 1, page_count + 1)
                     if p not in pages and p != lock]
            if extra:
                changed = sorted(changed + extra)
        return changed, undo

    def undo(self, undo: TableUndo) -> None:
        cks = self._cks
        for pgno, ck in undo.old.items():
            cks[pgno - 1] = ck
        del cks[undo.old_count:]
        if undo.tail is not None:
            cks.extend(undo.tail)
        self._xor = undo.old_xor

    def finish_growth(self, old_count: int, page_count: int) -> None:
        """After `set_page` calls for one transaction that left the database with
        `page_count` pages: drop pages past it, and give pages past `old_count` that were
        not written the checksum of a zero page (the file was extended over them)."""
        self.truncate(page_count)
        cks = self._cks
        if len(cks) < page_count:
            cks.extend(array("Q", bytes(8 * (page_count - len(cks)))))
        zero = bytes(self.page_size)
        for pgno in range(old_count + 1, page_count + 1):
            if cks[pgno - 1] == 0 and pgno != self.lock_pgno:
                ck = CHECKSUM_FLAG | crc64(zero, crc64(pgno.to_bytes(4, "big")))
                cks[pgno - 1] = ck
                self._xor ^= ck

    def truncate(self, page_count: int) -> None:
        """Drop pages past `page_count` (the database shrank)."""
        cks = self._cks
        if page_count >= len(cks):
            return
        for ck in cks[page_count:]:
            self._xor ^= ck
        del cks[page_count:]

    def resize(self, page_count: int) -> None:
        """Set the page count: shrink, or grow with pages that read as zeros."""
        n = len(self._cks)
        if page_count < n:
            self.truncate(page_count)
            return
        if page_count == n:
            return
        zero = bytes(self.page_size)
        for pgno in range(n + 1, page_count + 1):
            if pgno == self.lock_pgno:
                self._cks.append(0)
                continue
            ck = CHECKSUM_FLAG | crc64(zero, crc64(pgno.to_bytes(4, "big")))
            self._cks.append(ck)
            self._xor ^= ck

    @classmethod
    def scan(cls, fd: int, page_size: int, page_count: int) -> PageTable:
        """Build the table from a database file descriptor (reads every page once)."""
        table = cls(page_size)
        cks = table._cks
        lock = table.lock_pgno
        acc = 0
        chunk_pages = max(1, (1 << 20) // page_size)
        pgno = 1
        while pgno <= page_count:
            n = min(chunk_pages, page_count - pgno + 1)
            buf = os.pread(fd, n * page_size, (pgno - 1) * page_size)
            mv = memoryview(buf)
            for i in range(n):
                p = pgno + i
                if p == lock:
                    cks.append(0)
                    continue
                page: bytes | memoryview = mv[i * page_size:(i + 1) * page_size]
                if len(page) < page_size:
                    page = bytes(page) + bytes(page_size - len(page))  # reads past EOF: zeros
                ck = CHECKSUM_FLAG | crc64(page, crc64(p.to_bytes(4, "big")))
                cks.append(ck)
                acc ^= ck
            pgno += n
        table._xor = acc
        return table

    # Persistence: written on clean shutdown, trusted at start only if its TXID and checksum
    # agree with the last LTX file.
    def save(self, path: Path, txid: int, fingerprint: bytes = b"") -> None:
        """Write the table with the TXID it belongs to and a caller-defined fingerprint of
        the files it describes (so a later start can tell they were not changed since)."""
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(_STATE_HEADER.pack(_STATE_MAGIC, self.page_size, txid, self.checksum,
                                       len(self._cks), len(fingerprint)))
            f.write(fingerprint)
            data = array("Q", self._cks)
            if data.itemsize == 8 and struct.pack("=Q", 1) != struct.pack(">Q", 1):
                data.byteswap()
            f.write(data.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> SavedTable | None:
        """The saved state, or None if absent or inconsistent."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) < _STATE_HEADER.size:
            return None
        magic, page_size, txid, checksum, count, fp_len = _STATE_HEADER.unpack_from(raw)
        fingerprint = raw[_STATE_HEADER.size:_STATE_HEADER.size + fp_len]
        body = raw[_STATE_HEADER.size + fp_len:]
        if magic != _STATE_MAGIC or len(body) != 8 * count:
            return None
        table = cls(page_size)
        cks = array("Q")
        cks.frombytes(body)
        if struct.pack("=Q", 1) != struct.pack(">Q", 1):
            cks.byteswap()
        acc = 0
        for ck in cks:
            acc ^= ck
        table._cks = cks
        table._xor = acc
        if table.checksum != checksum:
            return None
        return SavedTable(table, txid, fingerprint)

    def pages_checksums(self) -> Iterable[int]:
        return iter(self._cks)
