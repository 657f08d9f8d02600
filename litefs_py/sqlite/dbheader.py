"""The 100-byte header at the start of a SQLite database file.

See https://www.sqlite.org/fileformat.html#the_database_header. All integers are big-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import DatabaseHeaderError

DATABASE_HEADER_SIZE = 100
DATABASE_MAGIC = b"SQLite format 3\x00"
MIN_PAGE_SIZE = 512
MAX_PAGE_SIZE = 65536

# Read/write version bytes (offsets 18 and 19).
JOURNAL_VERSION_ROLLBACK = 1
JOURNAL_VERSION_WAL = 2

# Offsets 16..99 as one struct: page size (u16), 6 single bytes, then u32 fields; the unused
# "reserved for expansion" area 72..91 is skipped.
_FIELDS = struct.Struct(">H6B12I20x2I")


@dataclass(frozen=True, slots=True)
class DatabaseHeader:
    """A parsed database header. Field names follow the SQLite file format documentation."""

    raw_page_size: int  # as stored at offset 16: 1 means 65536
    write_version: int  # 1 rollback journal, 2 WAL
    read_version: int
    reserved_bytes: int  # unused bytes at the end of each page
    max_payload_fraction: int
    min_payload_fraction: int
    leaf_payload_fraction: int
    file_change_counter: int
    in_header_page_count: int
    freelist_trunk_page: int
    freelist_page_count: int
    schema_cookie: int
    schema_format: int
    default_cache_size: int
    largest_root_page: int  # non-zero in auto-vacuum / incremental-vacuum databases
    text_encoding: int  # 1 UTF-8, 2 UTF-16le, 3 UTF-16be (0 before the schema is written)
    user_version: int
    incremental_vacuum: int
    application_id: int
    version_valid_for: int
    sqlite_version_number: int

    @property
    def page_size(self) -> int:
        return 65536 if self.raw_page_size == 1 else self.raw_page_size

    @property
    def is_wal(self) -> bool:
        return (self.write_version, self.read_version) == (JOURNAL_VERSION_WAL, JOURNAL_VERSION_WAL)

    @property
    def page_count(self) -> int:
        """The in-header database size in pages; trust it only if `page_count_valid`."""
        return self.in_header_page_count

    @property
    def page_count_valid(self) -> bool:
        # SQLite's rule: legacy writers (before 3.7.0) did not update the count, and they also
        # did not update version-valid-for, so a mismatch means "use the file size instead".
        return self.in_header_page_count > 0 and self.version_valid_for == self.file_change_counter


def _page_size(raw: int) -> int:
    return 65536 if raw == 1 else raw


def _valid_page_size(size: int) -> bool:
    return MIN_PAGE_SIZE <= size <= MAX_PAGE_SIZE and size & (size - 1) == 0


def page_size_from_header(
    data: bytes | bytearray | memoryview, name: str = "database"
) -> int | None:
    """Page size of a database whose first bytes are `data`, or None if it is not one yet.

    A filesystem sees databases being created: an empty or short file, or one whose first
    page has not been written, is "not a database yet" rather than an error. A file that has
    the magic but an impossible page size is corrupt and raises DatabaseHeaderError.
    """
    if len(data) < 18 or bytes(data[:16]) != DATABASE_MAGIC:
        return None
    (raw,) = struct.unpack_from(">H", data, 16)
    size = _page_size(raw)
    if not _valid_page_size(size):
        raise DatabaseHeaderError(name, 16, "page size", "a power of two in 512..65536", raw)
    return size


def page_size_or_zero(data: bytes | bytearray | memoryview) -> int:
    """`page_size_from_header` for a filesystem that sees every kind of file: 0 for anything
    that is not a database header with a possible page size, never an error."""
    try:
        return page_size_from_header(data) or 0
    except DatabaseHeaderError:
        return 0


def database_size_in_pages(header: bytes | bytearray | memoryview, file_size: int,
                           page_size: int) -> int:
    """The database size SQLite committed: the in-header page count when it is valid (bytes
    92-95 equal the change counter at 24-27), else the file size. SQLite truncates a shrunken
    database only after the commit signal, so the file may still be longer then."""
    if len(header) >= DATABASE_HEADER_SIZE and header[92:96] == header[24:28]:
        count = int.from_bytes(header[28:32], "big")
        if count:
            return count
    return file_size // page_size


def parse_database_header(
    data: bytes | bytearray | memoryview, name: str = "database"
) -> DatabaseHeader:
    """Parse and validate the first 100 bytes of a database file."""
    if len(data) < DATABASE_HEADER_SIZE:
        raise DatabaseHeaderError(
            name, 0, "header length", f"{DATABASE_HEADER_SIZE} bytes", f"{len(data)} bytes"
        )
    magic = bytes(data[:16])
    if magic != DATABASE_MAGIC:
        raise DatabaseHeaderError(name, 0, "magic", repr(DATABASE_MAGIC), repr(magic))
    header = DatabaseHeader(*_FIELDS.unpack_from(data, 16))

    if not _valid_page_size(header.page_size):
        raise DatabaseHeaderError(
            name, 16, "page size", "a power of two in 512..65536", header.raw_page_size
        )
    for offset, value in ((18, header.write_version), (19, header.read_version)):
        if value not in (JOURNAL_VERSION_ROLLBACK, JOURNAL_VERSION_WAL):
            raise DatabaseHeaderError(name, offset, "file format version", "1 or 2", value)
    # SQLite refuses to open a database whose usable page size is below 480 bytes.
    if header.page_size - header.reserved_bytes < 480:
        raise DatabaseHeaderError(
            name, 20, "reserved bytes per page", f"<= {header.page_size - 480}",
            header.reserved_bytes,
        )
    fractions = (
        header.max_payload_fraction,
        header.min_payload_fraction,
        header.leaf_payload_fraction,
    )
    if fractions != (64, 32, 32):
        raise DatabaseHeaderError(name, 21, "payload fractions", (64, 32, 32), fractions)
    if header.schema_format > 4:
        raise DatabaseHeaderError(name, 44, "schema format", "0..4", header.schema_format)
    if header.text_encoding > 3:
        raise DatabaseHeaderError(name, 56, "text encoding", "0..3", header.text_encoding)
    return header
