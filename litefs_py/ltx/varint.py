"""Unsigned LEB128 varints (Go's binary.PutUvarint), as used by the LTX v3 page index."""

from __future__ import annotations


def append_uvarint(out: bytearray, value: int) -> None:
    # Fast path for the common sizes: page numbers and offsets below 2**28 need at most
    # four bytes; avoid a Python-level loop per byte.
    if value < 0x80:
        out.append(value)
    elif value < 0x4000:
        out += bytes(((value & 0x7F) | 0x80, value >> 7))
    elif value < 0x200000:
        out += bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
    elif value < 0x10000000:
        out += bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80,
                      ((value >> 14) & 0x7F) | 0x80, value >> 21))
    else:
        while value >= 0x80:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)


def read_uvarint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode one varint at `pos`; return (value, next position). ValueError if malformed."""
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise ValueError("varint runs past the end of the index")
        b = buf[pos]
        pos += 1
        if shift == 63 and b > 1:
            raise ValueError("varint overflows 64 bits")
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint overflows 64 bits")
