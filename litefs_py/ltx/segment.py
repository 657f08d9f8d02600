"""LTX segments: complete LTX v3 records appended one after another to one file
(docs/formats.md §8).

A segment is what the mount's local log is made of: appending a record to an open file is
O(1) and creates no file, where writing one file per transaction created one per commit.

    segment header   16 bytes: magic "LTXS", version u32 (1), created u64 (ms since epoch)
    record frame     16 bytes: magic "LTXR", flags u32 (0), length u64 of the LTX record
    LTX record       `length` bytes: a complete LTX v3 file (§3), byte for byte
    record frame ... (repeated to the end of the file)

Nothing else is in the file: a record's TXIDs are in its own LTX header, its integrity in its
own file checksum. A file ends cleanly after the last complete record; bytes after it (a frame
whose record was cut short, a frame with a wrong magic) are a torn tail, what a crash during an
append leaves. `scan_segment` finds where the valid records end; what to do with a torn tail
is the reader's business (the mount quarantines it, `litefs ltx verify` reports it).

Pure: works on binary file objects, no paths.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .decoder import Decoder, decode_bytes
from .errors import LTXError, TruncatedError
from .header import HEADER_SIZE, TRAILER_SIZE, Header, Trailer, Version

SEGMENT_MAGIC = b"LTXS"
SEGMENT_VERSION = 1
RECORD_MAGIC = b"LTXR"
_SEGMENT_HEADER = struct.Struct(">4sIQ")  # magic, version, created (ms since epoch)
_FRAME = struct.Struct(">4sIQ")  # magic, flags, record length
SEGMENT_HEADER_SIZE = _SEGMENT_HEADER.size  # 16
FRAME_SIZE = _FRAME.size  # 16
# The smallest LTX v3 file: header, end-of-pages mark, an empty index (one varint 0 and its
# u64 length) and the trailer.
MIN_RECORD_SIZE = HEADER_SIZE + 6 + 1 + 8 + TRAILER_SIZE
# Records up to this size are verified in memory in one call; larger ones (snapshots of big
# databases) are streamed through the decoder so memory stays bounded.
_VERIFY_IN_MEMORY = 8 << 20


class SegmentError(LTXError):
    """A segment header that is missing or wrong (not a torn tail: the file is not a
    segment, or of a version this code does not read)."""


def encode_segment_header(created_ms: int) -> bytes:
    return _SEGMENT_HEADER.pack(SEGMENT_MAGIC, SEGMENT_VERSION, created_ms)


def is_segment(prefix: bytes) -> bool:
    """Whether a file starting with `prefix` (at least 4 bytes) is a segment, as opposed to a
    single LTX file (magic `LTX1`)."""
    return prefix[:4] == SEGMENT_MAGIC


def decode_segment_header(data: bytes, *, name: str = "<segment>") -> int:
    """The creation time (ms since the epoch) of a segment starting with `data`."""
    if len(data) < SEGMENT_HEADER_SIZE:
        raise TruncatedError(f"segment is {len(data)} bytes, shorter than its "
                             f"{SEGMENT_HEADER_SIZE}-byte header", name=name, offset=0)
    magic, version, created = _SEGMENT_HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC:
        raise SegmentError(f"not an LTX segment (magic {magic!r}, expected {SEGMENT_MAGIC!r})",
                           name=name, offset=0)
    if version != SEGMENT_VERSION:
        raise SegmentError(f"segment version {version} is not supported (this litefs reads "
                           f"version {SEGMENT_VERSION})", name=name, offset=0)
    return int(created)


def encode_frame(length: int) -> bytes:
    """The 16 bytes that precede a record of `length` bytes."""
    return _FRAME.pack(RECORD_MAGIC, 0, length)


@dataclass(frozen=True, slots=True)
class SegmentRecord:
    """One record of a segment: where its LTX bytes are and its decoded header."""

    offset: int  # of the LTX record's first byte (its frame is the 16 bytes before)
    length: int
    header: Header

    @property
    def frame_offset(self) -> int:
        return self.offset - FRAME_SIZE

    @property
    def end(self) -> int:
        """Offset just past the record: where the next frame starts."""
        return self.offset + self.length


@dataclass(frozen=True, slots=True)
class SegmentScan:
    """What a segment holds: its records up to the first problem, where they end, and the
    problem (None if the file ends exactly after its last record)."""

    created_ms: int
    records: list[SegmentRecord]
    end: int  # where the valid records end: the next record is appended here
    size: int  # the file's size
    problem: str | None = None
    problem_offset: int | None = None

    @property
    def torn(self) -> bool:
        return self.problem is not None


def scan_segment(f: BinaryIO, *, name: str = "<segment>", verify: bool = False,
                 verify_from: int = 0) -> SegmentScan:
    """Walk a segment's frames from the start. Stops at the first frame that is not a
    complete record (bad magic or flags, a record running past the end of the file, an LTX
    header that does not decode), and with `verify` also at the first record at or after
    offset `verify_from` that fails full LTX validation (every page, the file checksum).
    A missing or foreign segment header raises SegmentError (or TruncatedError)."""
    size = f.seek(0, io.SEEK_END)
    f.seek(0)
    created = decode_segment_header(f.read(SEGMENT_HEADER_SIZE), name=name)
    records: list[SegmentRecord] = []
    pos = SEGMENT_HEADER_SIZE
    problem: str | None = None
    while pos < size:
        f.seek(pos)
        head = f.read(FRAME_SIZE + HEADER_SIZE)
        if len(head) < FRAME_SIZE:
            problem = f"{len(head)} bytes at the end, shorter than a record frame"
            break
        magic, flags, length = _FRAME.unpack_from(head)
        if magic != RECORD_MAGIC or flags != 0:
            problem = f"no record frame here (magic {magic!r}, flags {flags})"
            break
        if length < MIN_RECORD_SIZE:
            problem = f"record length {length} is shorter than any LTX file"
            break
        if pos + FRAME_SIZE + length > size:
            problem = (f"record of {length} bytes runs past the end of the file "
                       f"({size - pos - FRAME_SIZE} bytes follow its frame)")
            break
        where = f"{name} record at byte {pos + FRAME_SIZE}"
        try:
            header = Header.decode(head[FRAME_SIZE:], name=where)
            header.validate(Version.V3, name=where)
            if verify and pos >= verify_from:
                verify_record(f, pos + FRAME_SIZE, length, name=where)
        except LTXError as exc:
            problem = exc.message
            break
        records.append(SegmentRecord(pos + FRAME_SIZE, length, header))
        pos += FRAME_SIZE + length
    return SegmentScan(created, records, pos, size, problem, pos if problem else None)


def verify_record(f: BinaryIO, offset: int, length: int, *, name: str) -> Trailer:
    """Check every rule and checksum of the LTX record at `offset` of `f`."""
    if length <= _VERIFY_IN_MEMORY:
        f.seek(offset)
        data = f.read(length)
        if len(data) != length:
            raise TruncatedError(f"record ends after {len(data)} of {length} bytes", name=name)
        return decode_bytes(data, name=name).trailer
    with open_record(f, offset, length) as rec:
        return Decoder(rec, name=name).verify()


def iter_records(f: BinaryIO, scan: SegmentScan) -> Iterator[tuple[SegmentRecord, bytes]]:
    """Each record of a scanned segment with its bytes."""
    for rec in scan.records:
        f.seek(rec.offset)
        yield rec, f.read(rec.length)


class _Window(io.RawIOBase):
    """A read-only window `[offset, offset + length)` of a seekable binary file: one record
    of a segment read as if it were a file of its own (seeking from its end included)."""

    def __init__(self, f: BinaryIO, offset: int, length: int, *, close_file: bool) -> None:
        super().__init__()
        self._f = f
        self._base = offset
        self._length = length
        self._pos = 0
        self._close_file = close_file

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._length - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._base + self._pos)
        data = self._f.read(n)
        k = len(data)
        memoryview(buffer)[:k] = data
        self._pos += k
        return k

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._length + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(22, "negative seek position")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed and self._close_file:
            self._f.close()
        super().close()


def open_record(f: BinaryIO, offset: int, length: int, *, close_file: bool = False) -> BinaryIO:
    """The record at `offset` of `f` as a buffered binary file of `length` bytes; closing it
    closes `f` too with `close_file`."""
    return io.BufferedReader(_Window(f, offset, length, close_file=close_file),
                             buffer_size=1 << 16)
