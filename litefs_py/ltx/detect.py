"""Tell LTX v1 (LiteFS) from v3 (Litestream 0.5 / litefs-py) files; the magic is the same."""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

from .decoder import Decoder
from .header import FLAG_V1_COMPRESS_LZ4, HEADER_SIZE, TRAILER_SIZE, Header, Version
from .v1 import DecoderV1

_U64 = struct.Struct(">Q")


def detect_version(f: BinaryIO) -> Version:
    """Guess the version of a seekable LTX file; leaves the position at 0.

    v1 with flag 0x1 is certain. Otherwise a v3 file ends with `6 zero bytes, index, u64
    index length, trailer`, and the index ends in a varint 0: if that structure holds it is
    v3, else v1 (uncompressed LiteFS files have flags 0).
    """
    f.seek(0)
    hdr = Header.decode(f.read(HEADER_SIZE))
    if hdr.flags & FLAG_V1_COMPRESS_LZ4:
        f.seek(0)
        return Version.V1
    size = f.seek(0, os.SEEK_END)
    version = Version.V1
    if size >= HEADER_SIZE + 6 + 1 + 8 + TRAILER_SIZE:
        f.seek(size - TRAILER_SIZE - 8)
        (length,) = _U64.unpack(f.read(8))
        start = size - TRAILER_SIZE - 8 - length
        if length >= 1 and start >= HEADER_SIZE + 6:
            f.seek(start - 6)
            probe = f.read(6 + int(length))
            if probe[:6] == bytes(6) and probe[-1:] == b"\x00":
                version = Version.V3
    f.seek(0)
    return version


def open_decoder(f: BinaryIO, *, name: str = "<ltx>",
                 version: Version | None = None) -> Decoder | DecoderV1:
    """Return a decoder of the right version for a seekable file."""
    if version is None:
        version = detect_version(f)
    if version is Version.V1:
        return DecoderV1(f, name=name)
    return Decoder(f, name=name)
