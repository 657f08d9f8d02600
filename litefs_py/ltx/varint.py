"""Unsigned LEB128 varints (Go's binary.PutUvarint), as used by the LTX v3 page index."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from .compiled import frames as _frames

# Compiled (optional): the same bytes as encode_index_py.
_compiled_index = _frames.encode_index if _frames is not None else None

# Page numbers and frame sizes are usually below 2**14: two bytes at most, looked up.
_SMALL = [bytes([v]) if v < 0x80 else bytes(((v & 0x7F) | 0x80, v >> 7)) for v in range(0x4000)]


def uvarint(value: int) -> bytes:
    if value < 0x4000:
        return _SMALL[value]
    if value < 0x200000:
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
    if value < 0x10000000:
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80,
                      ((value >> 14) & 0x7F) | 0x80, value >> 21))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def append_uvarint(out: bytearray, value: int) -> None:
    out += uvarint(value)


def encode_index_py(entries: Iterable[tuple[int, int, int]]) -> bytes:
    """The v3 page index: (pgno, offset, size) varints per page, then a terminating 0."""
    out = bytearray()
    small = _SMALL
    for pgno, offset, size in entries:
        out += small[pgno] if pgno < 0x4000 else uvarint(pgno)
        out += uvarint(offset)
        out += small[size] if size < 0x4000 else uvarint(size)
    out.append(0)
    return bytes(out)


encode_index: Callable[[Sequence[tuple[int, int, int]]], bytes] = (
    _compiled_index if _compiled_index is not None else encode_index_py)


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
