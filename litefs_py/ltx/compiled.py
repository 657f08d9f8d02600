"""The optional compiled module (litefs_py/ltx/_frames.c, built by setup.py), set up once.

`frames` is that module, or None when it was not built (no C compiler at install time):
every caller keeps a pure Python path that gives the same results, only slower. The
one-call file functions need to know what to call and build; they get it here, so each
call passes only its data.
"""

from __future__ import annotations

from types import ModuleType

import lz4.block

from .checksum import crc64
from .header import DecodedFile, Header, Trailer


def _streaming_decode(data: bytes, name: str = "<ltx>") -> DecodedFile:
    """Where the compiled decode_bytes sends every file it does not accept."""
    from .decoder import decode_bytes_streaming  # decoder imports this module

    return decode_bytes_streaming(data, name=name)


frames: ModuleType | None
try:
    from . import _frames
except ImportError:  # pragma: no cover - only without a C compiler at install time
    frames = None
else:
    _frames.configure(lz4.block.decompress, lz4.block.compress, crc64, Header, Trailer,
                      DecodedFile, _streaming_decode)
    frames = _frames
