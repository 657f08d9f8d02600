"""SQLite rollback journal: the original pages a hot journal restores.

Layout (https://www.sqlite.org/fileformat.html#the_rollback_journal, and pager.c), integers
big-endian. The journal is one or more segments, each a header block of one sector followed by
its records; every header starts at a sector-aligned offset:

    header  28 bytes: magic d9d505f920a163d7, nRec, checksum nonce, initial database size in
            pages, sector size, page size (the last two are only read from the first header)
    record  pgno u32, the page as it was before the transaction, checksum u32

Playback follows pager_playback(): a header without the magic ends the journal, a record with a
bad checksum ends playback (the journal was being written when the writer crashed), and the
database is truncated to the first header's initial size.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from .errors import JournalChecksumError, JournalFormatError
from .wal import ByteSource, as_file, read_at

JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")
JOURNAL_HEADER_SIZE = 28
MIN_PAGE_SIZE = 512
MAX_PAGE_SIZE = 65536
MIN_SECTOR_SIZE = 32
MAX_SECTOR_SIZE = 0x10000
PENDING_BYTE = 0x40000000  # the page holding it is never stored, so never journaled

_U32 = 0xFFFFFFFF
_NREC_FROM_FILE_SIZE = 0xFFFFFFFF  # written by synchronous=OFF writers, which never update it
_HEADER = struct.Struct(">8s5I")
_U32_BE = struct.Struct(">I")


def journal_is_hot(data_prefix: bytes | bytearray | memoryview) -> bool:
    """True if a journal starting with `data_prefix` still needs to be rolled back.

    SQLite writes the magic only when it syncs the journal, before it overwrites database
    pages; a committed journal is deleted, truncated to 0 bytes or has its header zeroed.
    (SQLite also checks locks and the database size; a filesystem sees only the bytes.)
    """
    return bytes(data_prefix[: len(JOURNAL_MAGIC)]) == JOURNAL_MAGIC


def journal_checksum(page: bytes | bytearray | memoryview, nonce: int) -> int:
    """pager_cksum(): nonce plus every 200th byte from page_size-200 down, excluding byte 0."""
    return (nonce + sum(page[len(page) - 200 : 0 : -200])) & _U32


@dataclass(frozen=True, slots=True)
class JournalHeader:
    offset: int
    record_count: int  # nRec as stored; 0xFFFFFFFF means "as many as the file holds"
    nonce: int
    initial_page_count: int
    sector_size: int
    page_size: int


def parse_journal_header(
    data: bytes | bytearray | memoryview,
    offset: int = 0,
    name: str = "journal",
    *,
    page_size: int | None = None,
) -> JournalHeader:
    """Parse the journal header at the start of `data` (found at `offset` in the file).

    Pass `page_size` for journals written before SQLite 3.5.8, which store 0 there.
    """
    if len(data) < JOURNAL_HEADER_SIZE:
        raise JournalFormatError(
            name, offset, "journal header length", f"{JOURNAL_HEADER_SIZE} bytes",
            f"{len(data)} bytes",
        )
    magic, nrec, nonce, initial, sector_size, stored_page_size = _HEADER.unpack_from(data)
    if magic != JOURNAL_MAGIC:
        raise JournalFormatError(
            name, offset, "journal magic (a journal without it is not hot)",
            JOURNAL_MAGIC.hex(), magic.hex(),
        )
    size = stored_page_size or page_size or 0
    if not (MIN_PAGE_SIZE <= size <= MAX_PAGE_SIZE and size & (size - 1) == 0):
        raise JournalFormatError(
            name, offset + 24, "journal page size", "a power of two in 512..65536",
            stored_page_size,
        )
    if not (
        MIN_SECTOR_SIZE <= sector_size <= MAX_SECTOR_SIZE and sector_size & (sector_size - 1) == 0
    ):
        raise JournalFormatError(
            name, offset + 20, "journal sector size", "a power of two in 32..65536", sector_size
        )
    return JournalHeader(offset, nrec, nonce, initial, sector_size, size)


@dataclass(frozen=True, slots=True)
class JournalRecord:
    pgno: int
    page: bytes  # the page's content before the transaction
    offset: int  # of the record (its pgno field) in the journal file


class JournalStopReason(enum.Enum):
    """Why a JournalReader stopped reading records."""

    END_OF_JOURNAL = "no further journal header"
    TRUNCATED = "record cut short by the end of the file"
    INVALID_PGNO = "record page number is 0 or the pending-byte page"
    CHECKSUM_MISMATCH = "record checksum does not match its page"


class JournalReader:
    """Reads the records a hot rollback journal would play back.

    The first header is parsed on construction and must be valid (check `journal_is_hot`
    first). Records are validated like pager_playback_one_page(); a record that fails ends
    the journal quietly, or raises with strict=True. Records for pages beyond the initial
    database size are skipped, unchecked, as SQLite does: the rollback truncates them away.
    """

    def __init__(
        self,
        source: ByteSource,
        *,
        name: str = "journal",
        strict: bool = False,
        page_size: int | None = None,
    ) -> None:
        self.name = name
        self.strict = strict
        self._file = as_file(source)
        self.header = parse_journal_header(
            read_at(self._file, 0, JOURNAL_HEADER_SIZE), 0, name, page_size=page_size
        )
        self.headers: list[JournalHeader] = []
        self.stop_reason: JournalStopReason | None = None
        self.end_offset = 0  # after the last record read, once records() has run

    @property
    def page_size(self) -> int:
        return self.header.page_size

    @property
    def sector_size(self) -> int:
        return self.header.sector_size

    @property
    def initial_page_count(self) -> int:
        """Database size in pages before the transaction; a rollback truncates to it."""
        return self.header.initial_page_count

    def __iter__(self) -> Iterator[JournalRecord]:
        return self.records()

    def records(self) -> Iterator[JournalRecord]:
        """Yield the records playback would restore, in journal order."""
        self.headers = []
        self.stop_reason = None
        self.end_offset = 0
        f = self._file
        file_size = f.seek(0, 2)
        sector = self.sector_size
        page_size = self.page_size
        record_size = page_size + 8
        pending_pgno = PENDING_BYTE // page_size + 1
        offset = 0
        while True:
            # Each header occupies a whole sector, which must be in the file (readJournalHdr).
            if offset + sector > file_size:
                self.stop_reason = JournalStopReason.END_OF_JOURNAL
                return
            if offset == 0:
                header = self.header
            else:
                raw = read_at(f, offset, JOURNAL_HEADER_SIZE)
                if not journal_is_hot(raw):
                    self.stop_reason = JournalStopReason.END_OF_JOURNAL
                    return
                # Only the first header's page and sector sizes count.
                nrec, nonce, initial = struct.unpack_from(">3I", raw, 8)
                header = JournalHeader(offset, nrec, nonce, initial, sector, page_size)
            self.headers.append(header)
            offset += sector
            count = header.record_count
            if count == _NREC_FROM_FILE_SIZE:
                count = (file_size - offset) // record_size
            # nRec == 0 in a hot journal means this segment holds no synced records.
            for _ in range(count):
                buf = read_at(f, offset, record_size)
                if len(buf) < record_size:
                    self._stop(JournalStopReason.TRUNCATED, offset, f"{record_size} bytes",
                               f"{len(buf)} bytes")
                    return
                (pgno,) = _U32_BE.unpack_from(buf)
                if pgno == 0 or pgno == pending_pgno:
                    self._stop(JournalStopReason.INVALID_PGNO, offset,
                               f"1..{_U32} except {pending_pgno}", pgno)
                    return
                if pgno > self.initial_page_count:
                    offset += record_size
                    self.end_offset = offset
                    continue
                page = buf[4:-4]
                (stored,) = _U32_BE.unpack_from(buf, record_size - 4)
                expected = journal_checksum(page, header.nonce)
                if stored != expected:
                    self._stop(JournalStopReason.CHECKSUM_MISMATCH, offset + record_size - 4,
                               f"{expected:#010x} for page {pgno}", f"{stored:#010x}")
                    return
                record = JournalRecord(pgno, page, offset)
                offset += record_size
                self.end_offset = offset
                yield record
            # The next header starts at the next sector boundary after the records.
            offset = -(-offset // sector) * sector

    def _stop(
        self, reason: JournalStopReason, offset: int, expected: object, found: object
    ) -> None:
        self.stop_reason = reason
        if not self.strict:
            return
        what = f"journal record: {reason.value}"
        if reason is JournalStopReason.CHECKSUM_MISMATCH:
            raise JournalChecksumError(self.name, offset, what, expected, found)
        raise JournalFormatError(self.name, offset, what, expected, found)


class RollbackPages(NamedTuple):
    """What rolling back a hot journal restores."""

    pages: dict[int, bytes]  # pgno -> original content
    page_count: int  # truncate the database to this many pages
    page_size: int


def rollback_pages(
    source: ByteSource, *, name: str = "journal", page_size: int | None = None
) -> RollbackPages:
    """The original pages and page count recorded by a hot journal.

    The first record of each page wins: it holds the content from before the transaction.
    (A valid journal never holds a page twice; stale data past a torn header could.)
    To roll back, write each page at (pgno - 1) * page_size and truncate to page_count pages.
    """
    reader = JournalReader(source, name=name, page_size=page_size)
    pages: dict[int, bytes] = {}
    for record in reader.records():
        pages.setdefault(record.pgno, record.page)
    return RollbackPages(pages, reader.initial_page_count, reader.page_size)
