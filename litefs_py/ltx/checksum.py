"""CRC-64 (Go's crc64.ISO table) and the checksums LTX builds from it.

The database ("rolling") checksum is an XOR of page checksums, so it can be maintained in
O(changed pages): remove a page's old checksum and add its new one with two XORs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import BinaryIO

from fastcrc import crc64 as _crc64

CHECKSUM_FLAG = 1 << 63
EMPTY_DATABASE_CHECKSUM = CHECKSUM_FLAG
PENDING_BYTE = 0x40000000

# fastcrc's go_iso is exactly Go's crc64.Checksum(data, crc64.MakeTable(crc64.ISO)), and its
# `initial` argument chains like Go's crc64.Update (pass the previous result).
crc64 = _crc64.go_iso



def lock_pgno(page_size: int) -> int:
    """Page holding SQLite's lock bytes (offset 1 GiB); never stored, checksummed as nothing."""
    return PENDING_BYTE // page_size + 1


def page_checksum(pgno: int, data: bytes | memoryview) -> int:
    """`1<<63 | CRC(be32(pgno) || page)`."""
    return CHECKSUM_FLAG | crc64(data, crc64(pgno.to_bytes(4, "big")))


def update_checksum(db_checksum: int, old_page_checksum: int, new_page_checksum: int) -> int:
    """Replace one page's contribution to a database checksum (either may be 0 for 'absent')."""
    return CHECKSUM_FLAG | ((db_checksum ^ old_page_checksum ^ new_page_checksum) & ~CHECKSUM_FLAG)


def combine_page_checksums(page_checksums: Iterable[int]) -> int:
    """Database checksum from the checksums of pages 1..commit (lock page excluded by caller)."""
    acc = 0
    for ck in page_checksums:
        acc ^= ck
    return CHECKSUM_FLAG | acc


def database_checksum(f: BinaryIO, page_size: int, page_count: int | None = None) -> int:
    """Rolling checksum of a database file read from `f` (from its start), lock page skipped.

    Reads `page_count` pages, or to the end of the file when None. A short final page is an
    error because a SQLite database is always a whole number of pages.
    """
    lock = lock_pgno(page_size)
    acc = 0
    pgno = 0
    while page_count is None or pgno < page_count:
        data = f.read(page_size)
        if not data:
            break
        pgno += 1
        if len(data) != page_size:
            raise ValueError(f"database ends inside page {pgno} ({len(data)} of {page_size} bytes)")
        if pgno == lock:
            continue
        acc ^= crc64(data, crc64(pgno.to_bytes(4, "big")))
    if page_count is not None and pgno < page_count:
        raise ValueError(f"database has {pgno} pages, expected {page_count}")
    return CHECKSUM_FLAG | acc


def format_checksum(ck: int) -> str:
    return f"{ck:016x}"
