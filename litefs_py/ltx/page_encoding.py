"""The two v3 page payload encodings (FORMATS.md §3).

LZ4 block (page flag 0x1, Litestream >= 0.5.16): `csize u32` + one LZ4 block.
LZ4 frame (page flag 0, Litestream 0.5.0–0.5.15): one complete LZ4 frame, no size prefix, so
a streaming reader must walk the frame's own structure to find where it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import cast

import lz4.block
import lz4.frame

PAGE_FLAG_LZ4_BLOCK = 0x0001
LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"


class PageEncoding(IntEnum):
    LZ4_FRAME = 0  # legacy: what Litestream <= 0.5.15 reads
    LZ4_BLOCK = PAGE_FLAG_LZ4_BLOCK  # current default


def compress_block(page: bytes | memoryview) -> bytes:
    return cast(bytes, lz4.block.compress(page, store_size=False))


def decompress_block(payload: bytes | memoryview, page_size: int) -> bytes:
    return cast(bytes, lz4.block.decompress(payload, uncompressed_size=page_size))


def compress_frame(page: bytes | memoryview) -> bytes:
    # Same frame parameters Litestream 0.5.15 writes: 64 KiB independent blocks, content
    # checksum on (FLG 0x64, BD 0x40).
    return cast(bytes, lz4.frame.compress(
        page,
        block_size=lz4.frame.BLOCKSIZE_MAX64KB,
        block_linked=False,
        content_checksum=True,
        store_size=False,
    ))


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
