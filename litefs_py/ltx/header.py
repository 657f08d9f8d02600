"""LTX header (100 bytes) and trailer (16 bytes), shared by every LTX version.

The version is not stored in the file (the magic is `LTX1` in all of them), so validation takes
the version the caller decodes with. Rules follow docs/formats.md §2–§4 and superfly/ltx.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import NamedTuple

from .checksum import CHECKSUM_FLAG
from .errors import HeaderError, TrailerError

MAGIC = b"LTX1"
HEADER_SIZE = 100
TRAILER_SIZE = 16

# magic, flags, page size, commit, min, max, timestamp, pre-apply, wal offset, wal size,
# salt1, salt2, node id; 20 reserved bytes follow.
_HEADER = struct.Struct(">4sIIIQQqQqqIIQ20s")
_TRAILER = struct.Struct(">QQ")
_RESERVED = bytes(20)


class Version(IntEnum):
    V1 = 1  # LiteFS: 4-byte page headers, optional whole-block LZ4 frame, real checksums
    V3 = 3  # Litestream >= 0.5: 6-byte page headers, per-page compression, page index


# Header flags by version.
FLAG_V1_COMPRESS_LZ4 = 0x1
FLAG_V3_NO_CHECKSUM = 0x2
VALID_FLAGS = {Version.V1: FLAG_V1_COMPRESS_LZ4, Version.V3: FLAG_V3_NO_CHECKSUM}


def is_valid_page_size(size: int) -> bool:
    return 512 <= size <= 65536 and size & (size - 1) == 0


class Header(NamedTuple):
    """The 100-byte header. A NamedTuple: immutable and cheap to build per transaction."""

    page_size: int
    commit: int
    min_txid: int
    max_txid: int
    timestamp: int = 0  # milliseconds since the Unix epoch
    pre_apply_checksum: int = 0
    flags: int = 0
    wal_offset: int = 0
    wal_size: int = 0
    wal_salt1: int = 0
    wal_salt2: int = 0
    node_id: int = 0

    @property
    def is_snapshot(self) -> bool:
        return self.min_txid == 1

    @property
    def no_checksum(self) -> bool:
        """v3 only: pre/post-apply checksums are not tracked (what replica buckets hold)."""
        return bool(self.flags & FLAG_V3_NO_CHECKSUM)

    def with_(self, **changes: int) -> Header:
        return self._replace(**changes)

    def encode(self) -> bytes:
        try:
            return _HEADER.pack(
                MAGIC, self.flags, self.page_size, self.commit, self.min_txid, self.max_txid,
                self.timestamp, self.pre_apply_checksum, self.wal_offset, self.wal_size,
                self.wal_salt1, self.wal_salt2, self.node_id, _RESERVED,
            )
        except struct.error as exc:
            raise HeaderError(f"header field out of range: {exc}") from None

    @classmethod
    def decode(cls, data: bytes | memoryview, *, name: str = "<ltx>") -> Header:
        """Parse the header bytes; structural checks only (see `validate` for the rules)."""
        if len(data) < HEADER_SIZE:
            raise HeaderError(
                f"header needs {HEADER_SIZE} bytes, file has {len(data)}", name=name, offset=0
            )
        (magic, flags, page_size, commit, min_txid, max_txid, timestamp, pre, wal_offset,
         wal_size, salt1, salt2, node_id, _reserved) = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise HeaderError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}", name=name,
                              offset=0)
        return cls(page_size, commit, min_txid, max_txid, timestamp, pre, flags, wal_offset,
                   wal_size, salt1, salt2, node_id)

    def validate(self, version: Version = Version.V3, *, name: str = "<ltx>") -> None:
        """Raise HeaderError naming the first rule this header breaks."""

        def fail(msg: str, offset: int) -> HeaderError:
            return HeaderError(msg, name=name, offset=offset)

        valid = VALID_FLAGS[version]
        if self.flags & ~valid:
            raise fail(f"invalid header flags 0x{self.flags:08x} for LTX v{int(version)} "
                       f"(allowed: 0x{valid:x})", 4)
        if not is_valid_page_size(self.page_size):
            raise fail(f"invalid page size {self.page_size}: must be a power of two "
                       "from 512 to 65536", 8)
        if self.min_txid == 0:
            raise fail("min TXID is 0; TXIDs start at 1", 16)
        if self.max_txid == 0:
            raise fail("max TXID is 0; TXIDs start at 1", 24)
        if self.min_txid > self.max_txid:
            raise fail(f"min TXID {self.min_txid:016x} > max TXID {self.max_txid:016x}", 16)
        if self.wal_offset < 0:
            raise fail(f"negative WAL offset {self.wal_offset}", 48)
        if self.wal_size < 0:
            raise fail(f"negative WAL size {self.wal_size}", 56)
        if (self.wal_salt1 or self.wal_salt2) and self.wal_offset == 0:
            raise fail("WAL salt set but WAL offset is 0", 64)
        if self.wal_offset == 0 and self.wal_size != 0:
            raise fail("WAL size set but WAL offset is 0", 56)
        if self.is_snapshot:
            if self.pre_apply_checksum != 0:
                raise fail(f"snapshot (min TXID 1) has pre-apply checksum "
                           f"{self.pre_apply_checksum:016x}, expected 0", 40)
        elif version is Version.V3 and self.no_checksum:
            if self.pre_apply_checksum != 0:
                raise fail("pre-apply checksum not allowed with the no-checksum flag (0x2)", 40)
        else:
            if self.pre_apply_checksum == 0:
                raise fail("pre-apply checksum required on a non-snapshot file", 40)
            if not self.pre_apply_checksum & CHECKSUM_FLAG:
                raise fail(f"pre-apply checksum {self.pre_apply_checksum:016x} lacks the "
                           "1<<63 flag", 40)


class Trailer(NamedTuple):
    post_apply_checksum: int
    file_checksum: int

    def encode(self) -> bytes:
        return _TRAILER.pack(self.post_apply_checksum, self.file_checksum)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Trailer:
        post, file_ck = _TRAILER.unpack_from(data)
        return cls(post, file_ck)

    def validate(self, header: Header, version: Version = Version.V3, *, name: str = "<ltx>",
                 offset: int | None = None) -> None:
        def fail(msg: str, rel: int) -> TrailerError:
            return TrailerError(msg, name=name, offset=None if offset is None else offset + rel)

        if version is Version.V3 and header.no_checksum:
            if self.post_apply_checksum != 0:
                raise fail("post-apply checksum not allowed with the no-checksum flag (0x2)", 0)
        else:
            if self.post_apply_checksum == 0:
                raise fail("post-apply checksum required", 0)
            if not self.post_apply_checksum & CHECKSUM_FLAG:
                raise fail(f"post-apply checksum {self.post_apply_checksum:016x} lacks the "
                           "1<<63 flag", 0)
        if self.file_checksum == 0:
            raise fail("file checksum required", 8)
        if not self.file_checksum & CHECKSUM_FLAG:
            raise fail(f"file checksum {self.file_checksum:016x} lacks the 1<<63 flag", 8)


class DecodedFile(NamedTuple):
    """A whole LTX v3 file, decoded and checked (decoder.decode_bytes)."""

    header: Header
    pages: list[tuple[int, bytes]]
    trailer: Trailer
