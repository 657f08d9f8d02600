"""LTX version 1 (LiteFS) decoder, for importing LiteFS data.

Layout: 100-byte header; a page block of `pgno u32 + page` frames ended by 4 zero bytes, which
is one LZ4 frame when header flag 0x1 is set; 16-byte trailer. The file checksum covers the
header, the uncompressed page block and the post-apply field. Checksums are real rolling
checksums in v1 (no no-checksum flag).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

import lz4.frame

from .checksum import CHECKSUM_FLAG, crc64, lock_pgno
from .errors import ChecksumMismatchError, PageFrameError, TruncatedError
from .header import FLAG_V1_COMPRESS_LZ4, HEADER_SIZE, TRAILER_SIZE, Header, Trailer, Version

_U32 = struct.Struct(">I")
_READ_CHUNK = 1 << 20


class DecoderV1:
    """Decode one LiteFS LTX v1 file; same interface as the v3 `Decoder`."""

    def __init__(self, f: BinaryIO, *, name: str = "<ltx>", validate: bool = True) -> None:
        self.name = name
        self._f = f
        raw = f.read(HEADER_SIZE)
        if len(raw) < HEADER_SIZE:
            raise TruncatedError(f"file is {len(raw)} bytes, shorter than the {HEADER_SIZE}-byte "
                                 "header", name=name, offset=0)
        self.header = Header.decode(raw, name=name)
        if validate:
            self.header.validate(Version.V1, name=name)
        self._crc = crc64(raw)
        self.trailer: Trailer | None = None
        self.page_count = 0

    def _body_chunks(self) -> Iterator[bytes]:
        """Yield the uncompressed page block in chunks; leaves the trailer in self._tail."""
        f = self._f
        if not self.header.flags & FLAG_V1_COMPRESS_LZ4:
            rest = b""
            while True:
                chunk = f.read(_READ_CHUNK)
                if not chunk:
                    break
                buf = rest + chunk
                # Hold back the last 16 bytes: they may be the trailer.
                rest = buf[-TRAILER_SIZE:]
                if len(buf) > TRAILER_SIZE:
                    yield buf[:-TRAILER_SIZE]
            self._tail = rest
            return
        dec = lz4.frame.LZ4FrameDecompressor()
        while not dec.eof:
            chunk = f.read(_READ_CHUNK)
            if not chunk:
                raise TruncatedError("file ends inside the LZ4-compressed page block",
                                     name=self.name, offset=None)
            try:
                out = dec.decompress(chunk)
            except RuntimeError as exc:
                raise PageFrameError(f"corrupt LZ4 page block ({exc})", name=self.name,
                                     offset=HEADER_SIZE) from None
            if out:
                yield out
        self._tail = (dec.unused_data or b"") + f.read()

    def pages(self) -> Iterator[tuple[int, bytes]]:
        hdr = self.header
        ps = hdr.page_size
        lock = lock_pgno(ps)
        name = self.name
        buf = bytearray()
        pos = 0  # offset within the uncompressed page block
        crc = self._crc
        last = 0
        ended = False
        for chunk in self._body_chunks():
            if ended:
                raise PageFrameError("data after the end-of-pages marker (or a page number 0)",
                                     name=name, offset=HEADER_SIZE + pos)
            buf += chunk
            while not ended:
                if len(buf) < 4:
                    break
                (pgno,) = _U32.unpack_from(buf)
                if pgno == 0:
                    crc = crc64(bytes(buf[:4]), crc)
                    del buf[:4]
                    pos += 4
                    ended = True
                    if buf:
                        raise PageFrameError("data after the end-of-pages marker (or a page "
                                             "number 0)", name=name, offset=HEADER_SIZE + pos)
                    break
                if len(buf) < 4 + ps:
                    break
                if pgno <= last or pgno == lock or pgno > hdr.commit or (
                    hdr.is_snapshot and pgno != (last + 2 if last + 1 == lock else last + 1)
                ):
                    raise PageFrameError(f"page {pgno} not allowed after page {last} (commit "
                                         f"{hdr.commit}, lock page {lock})", name=name,
                                         offset=HEADER_SIZE + pos)
                frame = bytes(buf[: 4 + ps])
                del buf[: 4 + ps]
                crc = crc64(frame, crc)
                pos += 4 + ps
                last = pgno
                self.page_count += 1
                yield pgno, frame[4:]
        if not ended:
            raise TruncatedError("page block has no end-of-pages marker", name=name,
                                 offset=HEADER_SIZE + pos)
        if hdr.is_snapshot:
            needed = hdr.commit - 1 if hdr.commit == lock else hdr.commit
            if last != needed:
                raise PageFrameError(f"snapshot ends at page {last}, commit needs {needed}",
                                     name=name, offset=HEADER_SIZE + pos)
        tail = self._tail
        if len(tail) != TRAILER_SIZE:
            raise TruncatedError(f"trailer is {len(tail)} bytes, expected {TRAILER_SIZE}",
                                 name=name, offset=None)
        trailer = Trailer.decode(tail)
        trailer.validate(hdr, Version.V1, name=name)
        crc = CHECKSUM_FLAG | crc64(tail[:8], crc)
        if crc != trailer.file_checksum:
            raise ChecksumMismatchError(
                f"file checksum mismatch: trailer says {trailer.file_checksum:016x}, content "
                f"gives {crc:016x}", name=name)
        self.trailer = trailer

    def verify(self) -> Trailer:
        for _ in self.pages():
            pass
        assert self.trailer is not None
        return self.trailer
