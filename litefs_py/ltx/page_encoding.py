"""The two v3 page payload encodings (docs/formats.md §3).

LZ4 block (page flag 0x1, Litestream >= 0.5.16): `csize u32` + one LZ4 block.
LZ4 frame (page flag 0, Litestream 0.5.0–0.5.15): one complete LZ4 frame, no size prefix, so
a streaming reader must walk the frame's own structure to find where it ends.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import IntEnum
from typing import cast

import lz4.block
import lz4.frame

from .compiled import frames as _frames

_xxh32 = _frames.xxh32 if _frames is not None else None  # compiled (optional)

PAGE_FLAG_LZ4_BLOCK = 0x0001
LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"


class PageEncoding(IntEnum):
    LZ4_FRAME = 0  # legacy: what Litestream <= 0.5.15 reads
    LZ4_BLOCK = PAGE_FLAG_LZ4_BLOCK  # current default


def compress_block(page: bytes | memoryview) -> bytes:
    return cast(bytes, lz4.block.compress(page, store_size=False))


def decompress_block(payload: bytes | memoryview, page_size: int) -> bytes:
    return cast(bytes, lz4.block.decompress(payload, uncompressed_size=page_size))


def compress_frame_lz4f(page: bytes | memoryview) -> bytes:
    """The legacy frame as python-lz4's frame API builds it (the reference for the fast path).
    Same frame parameters Litestream 0.5.15 writes: 64 KiB independent blocks, content
    checksum on (FLG 0x64, BD 0x40)."""
    return cast(bytes, lz4.frame.compress(
        page,
        block_size=lz4.frame.BLOCKSIZE_MAX64KB,
        block_linked=False,
        content_checksum=True,
        store_size=False,
    ))


# A page (at most 64 KiB) is one block of such a frame: the frame header (magic, FLG, BD and
# header checksum byte) is a constant, the block is an LZ4 block, and the content checksum is
# XXH32 of the page. Building it from lz4.block saves the frame API's per-call context setup
# (tests check the bytes are identical to compress_frame_lz4f).
_LEGACY_FRAME_HEAD = LZ4_FRAME_MAGIC + b"\x64\x40\xa7"
_END_MARK = bytes(4)
_STORED = 0x80000000  # block size flag: the block is the page itself, uncompressed
_LE32 = struct.Struct("<I").pack


def compress_frame(page: bytes | memoryview) -> bytes:
    n = len(page)
    if _xxh32 is None or n > 65536:  # pragma: no cover - only without the compiled module
        return compress_frame_lz4f(page)
    block = lz4.block.compress(page, store_size=False)
    size = len(block)
    if size >= n:  # LZ4F stores a block that does not shrink as it is
        return b"".join((_LEGACY_FRAME_HEAD, _LE32(n | _STORED), page, _END_MARK,
                         _LE32(_xxh32(page))))
    return b"".join((_LEGACY_FRAME_HEAD, _LE32(size), block, _END_MARK, _LE32(_xxh32(page))))


def read_lz4_frame(read: Callable[[int], bytes]) -> bytes:
    """Read exactly one LZ4 frame from `read` and return its raw bytes (not decompressed).

    Raises ValueError on a malformed frame, EOFError if the input ends inside it.
    """

    def take(n: int) -> bytes:
        b = read(n)
        if len(b) != n:
            raise EOFError
        return b

    parts = [take(7)]  # magic, FLG, BD, and the header checksum if no optional fields
    head = parts[0]
    if head[:4] != LZ4_FRAME_MAGIC:
        raise ValueError(f"bad LZ4 frame magic {head[:4].hex()}")
    flg = head[4]
    if flg >> 6 != 1:
        raise ValueError(f"unsupported LZ4 frame version in FLG 0x{flg:02x}")
    extra = (8 if flg & 0x08 else 0) + (4 if flg & 0x01 else 0)
    if extra:
        parts.append(take(extra))  # content size / dict id; header checksum is the last byte
    block_checksum = 4 if flg & 0x10 else 0
    while True:
        size_bytes = take(4)
        parts.append(size_bytes)
        size = int.from_bytes(size_bytes, "little") & 0x7FFFFFFF
        if size == 0:
            break
        if size > 4 << 20:
            raise ValueError(f"LZ4 block size {size} exceeds the 4 MiB maximum")
        parts.append(take(size + block_checksum))
    if flg & 0x04:
        parts.append(take(4))
    return b"".join(parts)


def decompress_frame(frame: bytes) -> bytes:
    return cast(bytes, lz4.frame.decompress(frame))
