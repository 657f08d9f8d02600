"""The WAL-index header at the start of a `-shm` file, and the reset a replica writes into it.

SQLite's wal.c keeps the first 136 bytes of the `-shm` file as:

    0   WalIndexHdr   48 bytes, copy 1 (readers read this one first)
    48  WalIndexHdr   48 bytes, copy 2 (writers write this one first)
    96  WalCkptInfo   nBackfill u32, aReadMark[5] u32
    120               aLock[8]: the bytes SQLite's unix VFS fcntl-locks (content unused)
    128               nBackfillAttempted u32, notUsed0 u32

WalIndexHdr is `iVersion u32, unused u32, iChange u32, isInit u8, bigEndCksum u8, szPage u16,
mxFrame u32, nPage u32, aFrameCksum[2] u32, aSalt[2] u32, aCksum[2] u32`, all in the host's
native byte order (the `-shm` file is shared memory, never meant to move between machines).
aCksum is walChecksumBytes over the first 40 bytes, in native order, starting from (0, 0)
(wal.c walIndexWriteHdr). A reader trusts the header only if both copies are identical, isInit
is set and the checksum matches (wal.c walIndexTryHdr); otherwise it runs recovery.

Why a replica writes it: a WAL-mode reader keeps its page cache across transactions for as
long as the header equals its private copy. After the replica changes the database file
underneath, `changed_header` produces a header with iChange bumped (every reader sees "changed"
and drops its cache) and mxFrame 0 ("the WAL is empty, read the database file").
"""

from __future__ import annotations

import secrets
import struct
import sys
from dataclasses import dataclass, replace

from .wal import wal_checksum

WALINDEX_VERSION = 3007000  # WALINDEX_MAX_VERSION in wal.c
WALINDEX_HEADER_SIZE = 48
CKPT_INFO_OFFSET = 2 * WALINDEX_HEADER_SIZE  # 96
LOCK_OFFSET = 120  # WALINDEX_LOCK_OFFSET: aLock[8], the unix VFS lock bytes
LOCK_COUNT = 8  # SQLITE_SHM_NLOCK
WAL_NREADER = 5  # read marks, SQLITE_SHM_NLOCK - 3
SHM_HEADER_REGION_SIZE = 136  # both header copies + WalCkptInfo
READMARK_NOT_USED = 0xFFFFFFFF

_NATIVE_BIG_ENDIAN = sys.byteorder == "big"
# "=": native byte order, standard sizes, no alignment padding (the C struct has none either).
_HDR = struct.Struct("=3I2BH8I")
_CKSUM_BYTES = 40  # offsetof(WalIndexHdr, aCksum)
_CKPT_HEAD = struct.Struct("=6I")  # nBackfill, aReadMark[5]  (96..119)
_CKPT_TAIL = struct.Struct("=2I")  # nBackfillAttempted, notUsed0  (128..135)
_U32 = 0xFFFFFFFF

assert _HDR.size == WALINDEX_HEADER_SIZE
assert CKPT_INFO_OFFSET + _CKPT_HEAD.size == LOCK_OFFSET
assert LOCK_OFFSET + LOCK_COUNT + _CKPT_TAIL.size == SHM_HEADER_REGION_SIZE


def encode_page_size(page_size: int) -> int:
    """szPage as wal.c stores it: the page size in a u16, 65536 as 1."""
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise ValueError(f"invalid SQLite page size {page_size}")
    return (page_size & 0xFF00) | (page_size >> 16)


def decode_page_size(sz_page: int) -> int:
    """The inverse of `encode_page_size` (wal.c walPagesize)."""
    return (sz_page & 0xFE00) + ((sz_page & 0x0001) << 16)


@dataclass(frozen=True, slots=True)
class WalIndexHeader:
    """One copy of SQLite's WalIndexHdr. `checksum` is what was stored (or what encode writes)."""

    version: int = WALINDEX_VERSION
    unused: int = 0
    change: int = 0  # iChange: bumped by every WAL commit; any change invalidates reader caches
    is_init: int = 1
    big_end_cksum: int = 0  # byte order of the *WAL file's* frame checksums, not of this header
    page_size: int = 4096  # decoded from szPage; 0 after recovery of an empty WAL
    max_frame: int = 0  # mxFrame: last valid frame in the WAL, 0 = WAL empty
    page_count: int = 0  # nPage: database size in pages (0 = readers use the file size)
    frame_checksum: tuple[int, int] = (0, 0)  # aFrameCksum: checksum of the last frame
    salt: tuple[int, int] = (0, 0)  # aSalt: the WAL header's salts, raw bytes read as native u32
    checksum: tuple[int, int] = (0, 0)  # aCksum

    def _body(self) -> bytes:
        """The first 40 bytes: every field but the checksum."""
        return _HDR.pack(
            self.version,
            self.unused,
            self.change,
            self.is_init,
            self.big_end_cksum,
            encode_page_size(self.page_size) if self.page_size else 0,
            self.max_frame,
            self.page_count,
            *self.frame_checksum,
            *self.salt,
            0,
            0,
        )[:_CKSUM_BYTES]

    def computed_checksum(self) -> tuple[int, int]:
        """walChecksumBytes(nativeCksum=1, hdr, 40, 0, aCksum) as walIndexWriteHdr computes it."""
        return wal_checksum(self._body(), 0, 0, _NATIVE_BIG_ENDIAN)

    def encode(self) -> bytes:
        """48 bytes with a correct checksum (the stored `checksum` field is ignored)."""
        s0, s1 = self.computed_checksum()
        return self._body() + struct.pack("=2I", s0, s1)

    @classmethod
    def decode_one(cls, buf: bytes | bytearray | memoryview) -> WalIndexHeader:
        """Parse one 48-byte copy without validating it."""
        if len(buf) < WALINDEX_HEADER_SIZE:
            raise ValueError(f"WAL-index header needs {WALINDEX_HEADER_SIZE} bytes, got {len(buf)}")
        (version, unused, change, is_init, big_end, sz_page, max_frame, page_count,
         fc0, fc1, s0, s1, c0, c1) = _HDR.unpack_from(buf, 0)  # fmt: skip
        return cls(
            version=version,
            unused=unused,
            change=change,
            is_init=is_init,
            big_end_cksum=big_end,
            page_size=decode_page_size(sz_page),
            max_frame=max_frame,
            page_count=page_count,
            frame_checksum=(fc0, fc1),
            salt=(s0, s1),
            checksum=(c0, c1),
        )

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> WalIndexHeader | None:
        """The header from the start of a `-shm` file (at least 96 bytes), or None if a reader
        would not trust it: the two copies differ, isInit is 0 or the checksum is wrong
        (wal.c walIndexTryHdr; a reader then runs recovery)."""
        if len(buf) < 2 * WALINDEX_HEADER_SIZE:
            return None
        first = bytes(buf[:WALINDEX_HEADER_SIZE])
        if first != bytes(buf[WALINDEX_HEADER_SIZE : 2 * WALINDEX_HEADER_SIZE]):
            return None
        hdr = cls.decode_one(first)
        # The checksum over the bytes as stored (not re-encoded fields): szPage values SQLite
        # never writes must fail the check, not be normalised into passing it.
        if hdr.is_init == 0 or hdr.checksum != wal_checksum(
            first[:_CKSUM_BYTES], 0, 0, _NATIVE_BIG_ENDIAN
        ):
            return None
        return hdr


@dataclass(frozen=True, slots=True)
class WalCkptInfo:
    """WalCkptInfo at offset 96 (without the lock bytes, whose content is meaningless)."""

    backfill: int
    read_marks: tuple[int, int, int, int, int]
    backfill_attempted: int
    not_used: int

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> WalCkptInfo:
        if len(buf) < SHM_HEADER_REGION_SIZE:
            raise ValueError(f"WalCkptInfo needs {SHM_HEADER_REGION_SIZE} bytes of shm")
        backfill, r0, r1, r2, r3, r4 = _CKPT_HEAD.unpack_from(buf, CKPT_INFO_OFFSET)
        attempted, not_used = _CKPT_TAIL.unpack_from(buf, LOCK_OFFSET + LOCK_COUNT)
        return cls(backfill, (r0, r1, r2, r3, r4), attempted, not_used)


def _fresh_change_counter() -> int:
    """An iChange for a header that had none: random and nonzero, so it cannot equal whatever a
    reader may still hold from an earlier life of this `-shm` (a stale copy, a recovery that
    started again from iChange 0 or 1, ...)."""
    while True:
        value = secrets.randbits(32)
        if value not in (0, 1):
            return value


def changed_header(current: bytes | bytearray | memoryview, page_size: int,
                   page_count: int) -> bytes:
    """The 136 bytes a replica writes at offset 0 of `-shm` after changing the database file
    underneath readers (while it holds every WAL lock byte, so no reader is between reading the
    header and taking its read lock).

    `current` is what the file holds now (any length; short or invalid means "no header").
    Both header copies get iChange + 1 (or a fresh random one), isInit 1, mxFrame 0 (nothing in
    the WAL: read the database file), nPage = page_count, aFrameCksum 0, the salts kept (random
    when there were none). The checkpoint info is reset as wal.c walRestartHdr leaves it after a
    WAL restart: nBackfill 0, nBackfillAttempted 0, aReadMark[0] 0, aReadMark[1] 0,
    aReadMark[2..4] READMARK_NOT_USED. aReadMark[1] = 0 lets a reader that finds read-lock 0
    busy still settle on mark 1 without having to write a mark. The aLock bytes are copied as
    they were: other processes fcntl-lock them, nothing reads their content.
    """
    if page_count < 0 or page_count > _U32:
        raise ValueError(f"page count {page_count} out of range")
    encode_page_size(page_size)  # validate early, with a clear message
    old = WalIndexHeader.decode(current)
    if old is not None:
        new = replace(
            old,
            change=(old.change + 1) & _U32,
            is_init=1,
            version=WALINDEX_VERSION,
            page_size=page_size,
            max_frame=0,
            page_count=page_count,
            frame_checksum=(0, 0),
        )
    else:
        salt = (0, 0)
        if len(current) >= 2 * WALINDEX_HEADER_SIZE:
            # An invalid header may still carry the WAL's salts; keep them if it has any.
            salt = WalIndexHeader.decode_one(current).salt
        if salt == (0, 0):
            salt = (secrets.randbits(32), secrets.randbits(32))
        new = WalIndexHeader(
            change=_fresh_change_counter(),
            is_init=1,
            big_end_cksum=int(_NATIVE_BIG_ENDIAN),  # what SQLite uses for a WAL it creates
            page_size=page_size,
            max_frame=0,
            page_count=page_count,
            frame_checksum=(0, 0),
            salt=salt,
        )
    hdr = new.encode()
    locks = bytes(current[LOCK_OFFSET : LOCK_OFFSET + LOCK_COUNT]).ljust(LOCK_COUNT, b"\0")
    ckpt = _CKPT_HEAD.pack(0, 0, 0, READMARK_NOT_USED, READMARK_NOT_USED, READMARK_NOT_USED)
    not_used = 0
    if len(current) >= SHM_HEADER_REGION_SIZE:
        not_used = WalCkptInfo.decode(current).not_used  # walRestartHdr leaves it alone
    out = hdr + hdr + ckpt + locks + _CKPT_TAIL.pack(0, not_used)
    assert len(out) == SHM_HEADER_REGION_SIZE
    return out
