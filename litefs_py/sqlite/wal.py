"""SQLite write-ahead log (WAL): header, frames, checksums and committed transactions.

Layout (https://www.sqlite.org/fileformat.html#the_write_ahead_log); integers in the WAL
header and frame headers are always big-endian:

    header  32 bytes: magic, version, page size, checkpoint seq, salt1, salt2, cksum1, cksum2
    frame   24-byte header (pgno, commit, salt1, salt2, cksum1, cksum2) followed by one page

The checksums are SQLite's walChecksumBytes over 32-bit words read in the byte order chosen by
the magic (0x377f0682 little-endian, 0x377f0683 big-endian). Frame checksums are cumulative:
each continues from the previous frame's (the first from the header's) over the frame header's
bytes 0..7 and the page. SQLite finds the end of the WAL at the first frame whose salts or
checksum do not match, and only frames up to the last commit frame before it count.
"""

from __future__ import annotations

import enum
import functools
import io
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from .errors import WALChecksumError, WALFormatError, WALSaltMismatchError

WAL_MAGIC_LE = 0x377F0682
WAL_MAGIC_BE = 0x377F0683
WAL_VERSION = 3007000
WAL_HEADER_SIZE = 32
WAL_FRAME_HEADER_SIZE = 24
MIN_PAGE_SIZE = 512
MAX_PAGE_SIZE = 65536

_U32 = 0xFFFFFFFF
_HEADER = struct.Struct(">8I")
_FRAME_HEADER = struct.Struct(">6I")


class ReadSeeker(Protocol):
    """The part of a binary file object the readers use."""

    def read(self, size: int = -1, /) -> bytes: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...


ByteSource = bytes | bytearray | memoryview | ReadSeeker
"""What the readers accept: the whole file in memory, or a seekable binary file object."""


def as_file(source: ByteSource) -> ReadSeeker:
    """A seekable file over `source` (the journal reader shares it)."""
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(source)
    return source


def read_at(f: ReadSeeker, offset: int, size: int) -> bytes:
    """Read up to `size` bytes at `offset`; shorter only at end of file."""
    f.seek(offset)
    data = f.read(size)
    # Raw (unbuffered) files may return short reads before EOF.
    while 0 < len(data) < size:
        more = f.read(size - len(data))
        if not more:
            break
        data += more
    return data


def _valid_page_size(size: int) -> bool:
    return MIN_PAGE_SIZE <= size <= MAX_PAGE_SIZE and size & (size - 1) == 0


@functools.lru_cache(maxsize=32)
def _words(count: int, big_endian: bool) -> struct.Struct:
    return struct.Struct(f"{'>' if big_endian else '<'}{count}I")


def wal_checksum_py(
    data: bytes | bytearray | memoryview, s0: int, s1: int, big_endian: bool
) -> tuple[int, int]:
    """SQLite's walChecksumBytes: continue the checksum (s0, s1) over `data`.

    `data` must be a multiple of 8 bytes. Each 8-byte chunk is two u32 (a, b) in the WAL's
    byte order, and s0 += a + s1; s1 += b + s0 (mod 2**32).
    """
    size = len(data)
    if size % 8:
        raise ValueError(f"wal_checksum: data length {size} is not a multiple of 8")
    s0 &= _U32  # as the compiled version (u32 in, u32 out), also for empty data
    s1 &= _U32
    words = iter(_words(size // 4, big_endian).unpack(data))
    # The recurrence is sequential, so it cannot be vectorised with the stdlib (big-int and
    # strided-bytes formulations measured slower). What pays: one unpack of the whole buffer
    # and a loop that handles four chunks per iteration and masks once per iteration, since
    # Python ints do not overflow and the unmasked sums stay small (< 2**40).
    if size % 32 == 0:
        for a0, b0, a1, b1, a2, b2, a3, b3 in zip(words, words, words, words, words, words,
                                                  words, words, strict=True):
            s0 += a0 + s1
            s1 += b0 + s0
            s0 += a1 + s1
            s1 += b1 + s0
            s0 += a2 + s1
            s1 += b2 + s0
            s0 += a3 + s1
            s1 += b3 + s0
            s0 &= _U32
            s1 &= _U32
    else:
        for a, b in zip(words, words, strict=True):
            s0 = (s0 + a + s1) & _U32
            s1 = (s1 + b + s0) & _U32
    return s0, s1


try:  # compiled (setup.py, litefs_py/sqlite/_walsum.c); same results, far faster
    from ._walsum import wal_checksum as _compiled_wal_checksum
except ImportError:  # pragma: no cover - only without a C compiler at install time
    _compiled_wal_checksum = None  # type: ignore[assignment]

wal_checksum: Callable[[bytes | bytearray | memoryview, int, int, bool], tuple[int, int]] = (
    _compiled_wal_checksum if _compiled_wal_checksum is not None else wal_checksum_py)


def compiled_wal_checksum() -> bool:
    """True when the compiled WAL checksum (litefs_py/sqlite/_walsum.c) is in use."""
    return _compiled_wal_checksum is not None


@dataclass(frozen=True, slots=True)
class WALHeader:
    magic: int
    version: int
    page_size: int
    checkpoint_seq: int
    salt1: int
    salt2: int
    checksum1: int
    checksum2: int

    @property
    def big_endian_checksum(self) -> bool:
        return self.magic == WAL_MAGIC_BE

    @property
    def checksum(self) -> tuple[int, int]:
        return (self.checksum1, self.checksum2)

    @classmethod
    def build(
        cls,
        page_size: int,
        salt1: int,
        salt2: int,
        *,
        checkpoint_seq: int = 0,
        big_endian: bool = False,
    ) -> WALHeader:
        """A new header with a correct checksum."""
        if not _valid_page_size(page_size):
            raise ValueError(f"WAL page size {page_size} is not a power of two in 512..65536")
        magic = WAL_MAGIC_BE if big_endian else WAL_MAGIC_LE
        fields = (magic, WAL_VERSION, page_size, checkpoint_seq & _U32, salt1, salt2)
        checksum = wal_checksum(struct.pack(">6I", *fields), 0, 0, big_endian)
        return cls(*fields, *checksum)

    def encode(self) -> bytes:
        return _HEADER.pack(
            self.magic, self.version, self.page_size, self.checkpoint_seq,
            self.salt1, self.salt2, self.checksum1, self.checksum2,
        )


def parse_wal_header(data: bytes | bytearray | memoryview, name: str = "wal") -> WALHeader:
    """Parse and validate a 32-byte WAL header, including its checksum."""
    if len(data) < WAL_HEADER_SIZE:
        raise WALFormatError(
            name, 0, "WAL header length", f"{WAL_HEADER_SIZE} bytes", f"{len(data)} bytes"
        )
    header = WALHeader(*_HEADER.unpack_from(data))
    if header.magic not in (WAL_MAGIC_LE, WAL_MAGIC_BE):
        raise WALFormatError(
            name, 0, "WAL magic", f"{WAL_MAGIC_LE:#x} or {WAL_MAGIC_BE:#x}", f"{header.magic:#x}"
        )
    if not _valid_page_size(header.page_size):
        raise WALFormatError(
            name, 8, "WAL page size", "a power of two in 512..65536", header.page_size
        )
    # Checksum before version, as walIndexRecover() does: a bad checksum means a torn or
    # garbage header, a bad version with a good checksum a WAL from an unknown SQLite.
    expected = wal_checksum(memoryview(data)[:24], 0, 0, header.big_endian_checksum)
    if expected != header.checksum:
        raise WALChecksumError(
            name, 24, "WAL header checksum", _hex_pair(expected), _hex_pair(header.checksum)
        )
    if header.version != WAL_VERSION:
        raise WALFormatError(name, 4, "WAL format version", WAL_VERSION, header.version)
    return header


def _hex_pair(pair: tuple[int, int]) -> str:
    return f"({pair[0]:#010x}, {pair[1]:#010x})"


@dataclass(frozen=True, slots=True)
class WALFrameHeader:
    pgno: int
    commit: int  # database size in pages after this frame if it ends a transaction, else 0
    salt1: int
    salt2: int
    checksum1: int
    checksum2: int

    @property
    def is_commit(self) -> bool:
        return self.commit != 0

    @property
    def checksum(self) -> tuple[int, int]:
        return (self.checksum1, self.checksum2)

    def encode(self) -> bytes:
        return _FRAME_HEADER.pack(
            self.pgno, self.commit, self.salt1, self.salt2, self.checksum1, self.checksum2
        )


@dataclass(frozen=True, slots=True)
class WALFrame:
    index: int  # 0-based position in the WAL; SQLite's frame number is index + 1
    offset: int  # of the frame header in the WAL file
    header: WALFrameHeader
    page: bytes

    @property
    def pgno(self) -> int:
        return self.header.pgno

    @property
    def end_offset(self) -> int:
        return self.offset + WAL_FRAME_HEADER_SIZE + len(self.page)


@dataclass(frozen=True, slots=True)
class WALTransaction:
    """The frames of one committed transaction, the last being its commit frame.

    With synchronous=FULL on devices without powersafe overwrite SQLite may pad a commit with
    copies of the commit frame; each copy reads as a one-page transaction that changes nothing.
    """

    frames: tuple[WALFrame, ...]

    @property
    def db_size(self) -> int:
        """Database size in pages after the transaction (the commit frame's commit field)."""
        return self.frames[-1].header.commit

    @property
    def start_offset(self) -> int:
        return self.frames[0].offset

    @property
    def end_offset(self) -> int:
        return self.frames[-1].end_offset

    @property
    def checksum(self) -> tuple[int, int]:
        """The cumulative WAL checksum after the commit frame."""
        return self.frames[-1].header.checksum

    @property
    def pages(self) -> dict[int, bytes]:
        """pgno -> page after the transaction: later frames win, and pages beyond `db_size`
        are left out because the transaction truncated them away (SQLite's checkpoint skips
        them too)."""
        size = self.db_size
        return {f.pgno: f.page for f in self.frames if f.pgno <= size}


class WALStopReason(enum.Enum):
    """Why a WALReader stopped reading frames."""

    END_OF_FILE = "end of file"
    PARTIAL_FRAME = "partial frame at end of file"
    SALT_MISMATCH = "frame salts differ from the header's"
    INVALID_PGNO = "frame page number is 0"
    CHECKSUM_MISMATCH = "frame checksum breaks the chain"


class WALReader:
    """Reads the valid frames and committed transactions of a WAL.

    The header is parsed (and validated) on construction. `frames()` stops quietly at the
    first frame SQLite would not accept, which is how SQLite finds the end of the WAL: stale
    frames of an earlier WAL generation (other salts), a torn write, or frames of a rolled-back
    transaction overwritten in place. With strict=True it raises instead, naming the frame.

    After iterating, `end_offset`/`checksum` describe the end of the valid frame chain and
    `commit_end_offset`/`commit_checksum` the end of the last committed transaction (where
    SQLite considers the WAL to end); `stop_reason` says why reading stopped.
    """

    def __init__(self, source: ByteSource, *, name: str = "wal", strict: bool = False) -> None:
        self.name = name
        self.strict = strict
        self._file = as_file(source)
        self.header = parse_wal_header(read_at(self._file, 0, WAL_HEADER_SIZE), name=name)
        self._reset()

    @property
    def page_size(self) -> int:
        return self.header.page_size

    @property
    def frame_size(self) -> int:
        return WAL_FRAME_HEADER_SIZE + self.header.page_size

    def _reset(self) -> None:
        self.frame_count = 0
        self.end_offset = WAL_HEADER_SIZE
        self.checksum = self.header.checksum
        self.commit_frame_count = 0
        self.commit_end_offset = WAL_HEADER_SIZE
        self.commit_checksum = self.header.checksum
        self.stop_reason: WALStopReason | None = None

    def __iter__(self) -> Iterator[WALFrame]:
        return self.frames()

    def frames(self) -> Iterator[WALFrame]:
        """Yield each valid frame in order (committed or not)."""
        self._reset()
        h = self.header
        big_endian = h.big_endian_checksum
        salts = (h.salt1, h.salt2)
        frame_size = self.frame_size
        s0, s1 = self.checksum
        offset = WAL_HEADER_SIZE
        index = 0
        while True:
            buf = read_at(self._file, offset, frame_size)
            if len(buf) < frame_size:
                if buf:
                    self._stop(WALStopReason.PARTIAL_FRAME, index, offset,
                               f"{frame_size} bytes", f"{len(buf)} bytes")
                else:
                    self.stop_reason = WALStopReason.END_OF_FILE
                return
            header = WALFrameHeader(*_FRAME_HEADER.unpack_from(buf))
            if (header.salt1, header.salt2) != salts:
                self._stop(WALStopReason.SALT_MISMATCH, index, offset + 8,
                           _hex_pair(salts), _hex_pair((header.salt1, header.salt2)))
                return
            if header.pgno == 0:
                self._stop(WALStopReason.INVALID_PGNO, index, offset, "pgno >= 1", 0)
                return
            view = memoryview(buf)
            s0, s1 = wal_checksum(view[:8], s0, s1, big_endian)
            s0, s1 = wal_checksum(view[WAL_FRAME_HEADER_SIZE:], s0, s1, big_endian)
            if (s0, s1) != header.checksum:
                self._stop(WALStopReason.CHECKSUM_MISMATCH, index, offset + 16,
                           _hex_pair((s0, s1)), _hex_pair(header.checksum))
                return
            frame = WALFrame(index, offset, header, buf[WAL_FRAME_HEADER_SIZE:])
            index += 1
            offset += frame_size
            self.frame_count = index
            self.end_offset = offset
            self.checksum = (s0, s1)
            if header.is_commit:
                self.commit_frame_count = index
                self.commit_end_offset = offset
                self.commit_checksum = (s0, s1)
            yield frame

    def _stop(
        self, reason: WALStopReason, index: int, offset: int, expected: object, found: object
    ) -> None:
        self.stop_reason = reason
        if not self.strict:
            return
        what = f"frame index {index}: {reason.value}"
        if reason is WALStopReason.SALT_MISMATCH:
            raise WALSaltMismatchError(self.name, offset, what, expected, found)
        if reason is WALStopReason.CHECKSUM_MISMATCH:
            raise WALChecksumError(self.name, offset, what, expected, found)
        raise WALFormatError(self.name, offset, what, expected, found)

    def transactions(self) -> Iterator[WALTransaction]:
        """Yield each committed transaction; trailing frames without a commit are not."""
        pending: list[WALFrame] = []
        for frame in self.frames():
            pending.append(frame)
            if frame.header.is_commit:
                yield WALTransaction(tuple(pending))
                pending = []


class WALWriter:
    """Builds a valid WAL in memory: `header_bytes()` then `frame()` for each page."""

    def __init__(
        self,
        page_size: int,
        salt1: int,
        salt2: int,
        *,
        big_endian: bool = False,
        checkpoint_seq: int = 0,
    ) -> None:
        self.header = WALHeader.build(
            page_size, salt1, salt2, checkpoint_seq=checkpoint_seq, big_endian=big_endian
        )
        self.checksum = self.header.checksum
        self.frame_count = 0

    def header_bytes(self) -> bytes:
        return self.header.encode()

    def frame(self, pgno: int, page: bytes | bytearray | memoryview, commit: int = 0) -> bytes:
        """Encode the next frame; `commit` is the database size in pages for a commit frame."""
        h = self.header
        if len(page) != h.page_size:
            raise ValueError(f"page is {len(page)} bytes, WAL page size is {h.page_size}")
        if not 1 <= pgno <= _U32 or not 0 <= commit <= _U32:
            raise ValueError(f"invalid frame: pgno={pgno} commit={commit}")
        first8 = struct.pack(">2I", pgno, commit)
        s0, s1 = wal_checksum(first8, *self.checksum, h.big_endian_checksum)
        s0, s1 = wal_checksum(page, s0, s1, h.big_endian_checksum)
        self.checksum = (s0, s1)
        self.frame_count += 1
        return first8 + struct.pack(">4I", h.salt1, h.salt2, s0, s1) + bytes(page)


def encode_wal(
    page_size: int,
    frames: Iterable[tuple[int, bytes | bytearray | memoryview, int]],
    salts: tuple[int, int],
    big_endian: bool = False,
    *,
    checkpoint_seq: int = 0,
) -> bytes:
    """A complete WAL: header plus `frames`, each (pgno, page, commit) with commit being the
    database size in pages for a commit frame and 0 otherwise."""
    writer = WALWriter(
        page_size, *salts, big_endian=big_endian, checkpoint_seq=checkpoint_seq
    )
    parts = [writer.header_bytes()]
    parts.extend(writer.frame(pgno, page, commit) for pgno, page, commit in frames)
    return b"".join(parts)
