"""Streaming LTX v3 decoder with full validation.

`Decoder(f).pages()` yields `(pgno, page)` pairs as it reads; when the page block ends it
reads the page index, trailer and end of file and checks every rule and the file checksum, so a
caller that consumed the whole iterator knows the file was valid. Nothing is trusted before
that: a caller applying pages to a database must write to a temporary copy.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple, NoReturn, Protocol

import lz4.block

from .checksum import CHECKSUM_FLAG, crc64, lock_pgno
from .compiled import frames as _frames
from .errors import (
    ChecksumMismatchError,
    LTXError,
    PageFrameError,
    PageIndexError,
    TrailerError,
    TruncatedError,
)
from .header import HEADER_SIZE, TRAILER_SIZE, DecodedFile, Header, Trailer, Version
from .page_encoding import PAGE_FLAG_LZ4_BLOCK, decompress_frame, read_lz4_frame
from .varint import encode_index, read_uvarint

# The compiled hot loops (None without them; the pure code below gives the same results).
_compiled_frames = _frames.decode_frames if _frames is not None else None


def compiled_codec() -> bool:
    """True when the compiled page loop (litefs_py/ltx/_frames.c) is in use."""
    return _compiled_frames is not None


# Pages the compiled loop decodes per call: bounds what is held before being yielded.
_COMPILED_BATCH = 64

_FRAME_HEADER = struct.Struct(">IH")
_FRAME_HEADER_SIZED = struct.Struct(">IHI")
_U32 = struct.Struct(">I")
# Read size of the page loop. Small enough that malloc reuses the buffers (1 MiB reads cost
# 0.7 us/page more in bench/codec.py), and always at least two of the largest frames.
_CHUNK = 1 << 16
_U64 = struct.Struct(">Q")


class PageIndexEntry(NamedTuple):
    pgno: int
    offset: int  # absolute offset of the frame header
    size: int  # frame header + size prefix + payload


def decode_bytes_streaming(data: bytes, /, *, name: str = "<ltx>") -> DecodedFile:
    """`decode_bytes` done by the streaming decoder: what runs without the compiled module,
    and for every file the compiled code does not accept (so errors are the same)."""
    dec = Decoder(io.BytesIO(data), name=name)
    pages = list(dec.pages())
    assert dec.trailer is not None
    return DecodedFile(dec.header, pages, dec.trailer)


class _DecodeBytes(Protocol):
    def __call__(self, data: bytes, /, *, name: str = ...) -> DecodedFile: ...


# Decode and check a whole LTX v3 file held in memory, in one call: the same checks, result
# and errors as `Decoder(io.BytesIO(data), name=name)` reading every page, but much cheaper
# per file (bench/codec.py): the mount and replicas handle many small files, where the
# streaming decoder's set-up costs more than the pages. The compiled version decodes the usual
# valid file entirely in C, without a Python frame, and hands any other file to
# decode_bytes_streaming, which raises the precise error.
decode_bytes: _DecodeBytes = (
    _frames.decode_bytes if _frames is not None else decode_bytes_streaming)


class Decoder:
    """Decode one LTX v3 file from a readable binary file object."""

    def __init__(self, f: BinaryIO, *, name: str = "<ltx>", validate: bool = True) -> None:
        self.name = name
        self._file_read = f.read
        self._leftover = b""
        raw = f.read(HEADER_SIZE)
        if len(raw) < HEADER_SIZE:
            raise TruncatedError(f"file is {len(raw)} bytes, shorter than the {HEADER_SIZE}-byte "
                                 "header", name=name, offset=0)
        self.header = Header.decode(raw, name=name)
        if validate:
            self.header.validate(Version.V3, name=name)
        self._crc = crc64(raw)
        self._offset = HEADER_SIZE
        self.trailer: Trailer | None = None
        self._entries: list[tuple[int, int, int]] = []
        self._started = False

    @property
    def page_count(self) -> int:
        """Pages decoded so far."""
        return len(self._entries)

    @property
    def index(self) -> list[PageIndexEntry]:
        """Page index entries of the frames read so far."""
        return [PageIndexEntry._make(e) for e in self._entries]

    def _take(self, n: int, what: str) -> bytes:
        b = self._read(n)
        if len(b) != n:
            raise TruncatedError(f"file ends inside {what} ({len(b)} of {n} bytes)",
                                 name=self.name, offset=self._offset)
        return b

    def pages(self) -> Iterator[tuple[int, bytes]]:
        """Yield (pgno, page bytes); validates the rest of the file after the last page."""
        if self._started:
            raise LTXError("pages() can be iterated only once", name=self.name)
        self._started = True
        hdr = self.header
        name = self.name
        page_size = hdr.page_size
        commit = hdr.commit
        lock = lock_pgno(page_size)
        snapshot = hdr.is_snapshot
        read = self._file_read
        unpack_sized = _FRAME_HEADER_SIZED.unpack_from
        decompress = lz4.block.decompress
        append = self._entries.append
        max_csize = page_size + page_size // 255 + 16
        refill_below = max_csize + 32  # the largest frame of either encoding fits
        chunk = max(_CHUNK, 2 * refill_below)
        crc = self._crc
        # Frames are parsed from an in-memory chunk: one read() per chunk instead of three
        # per page. `base` is the file offset of buf[0]; the loop keeps per-page work to the
        # minimum (this is the codec's hot path, see bench/codec.py).
        base = self._offset
        buf = read(chunk)
        mv = memoryview(buf)
        pos = 0
        last = 0
        compiled = _compiled_frames
        batch: list[tuple[int, bytes]] = []
        entries = self._entries
        while True:
            if len(buf) - pos < refill_below:
                mv.release()
                base += pos
                buf = buf[pos:] + read(chunk)
                mv = memoryview(buf)
                pos = 0
            if compiled is not None:
                # Decodes the plain frames that follow; stops before anything the code below
                # must handle (end marker, legacy frame, chunk end, a broken rule or payload).
                pos, last, crc = compiled(buf, pos, page_size, commit, lock, snapshot, last,
                                          base, crc, decompress, crc64, _COMPILED_BATCH,
                                          batch, entries)
                if batch:
                    yield from batch
                    batch.clear()
                    continue
            avail = len(buf) - pos
            if avail >= 10:
                pgno, flags, csize = unpack_sized(buf, pos)
            elif avail >= 6:
                pgno, flags = _FRAME_HEADER.unpack_from(buf, pos)
                csize = -1
            else:
                raise TruncatedError(f"file ends inside a page frame header after page {last}",
                                     name=name, offset=base + pos)
            if pgno == 0:
                if flags != 0:
                    raise PageFrameError(f"end-of-pages marker has flags 0x{flags:04x}",
                                         name=name, offset=base + pos)
                crc = crc64(buf[pos:pos + 6], crc)
                pos += 6
                break
            # Page number rules: order, lock page, commit bound, snapshot completeness.
            if pgno <= last or pgno == lock or pgno > commit or (
                snapshot and pgno != (last + 2 if last + 1 == lock else last + 1)
            ):
                raise PageFrameError(self._pgno_problem(pgno, last, lock), name=name,
                                     offset=base + pos)
            if flags == PAGE_FLAG_LZ4_BLOCK and 0 <= csize <= max_csize and csize + 10 <= avail:
                size = 10 + csize
                try:
                    data = decompress(mv[pos + 10:pos + size], uncompressed_size=page_size)
                except lz4.block.LZ4BlockError as exc:
                    raise PageFrameError(f"page {pgno}: corrupt LZ4 block ({exc})", name=name,
                                         offset=base + pos + 10) from None
                crc = crc64(data, crc64(buf[pos:pos + 10], crc))
            elif flags == PAGE_FLAG_LZ4_BLOCK:
                self._bad_block_frame(pgno, csize, max_csize, avail, base + pos)
            elif flags == 0:
                data, size = self._legacy_frame(buf, pos, pgno, base + pos)
                if size < 0:  # the frame continues past this chunk: grow it and retry
                    more = read(-size)
                    if not more:
                        raise TruncatedError(f"file ends inside the LZ4 frame of page {pgno}",
                                             name=name, offset=base + pos + 6)
                    mv.release()
                    base += pos
                    buf = buf[pos:] + more
                    mv = memoryview(buf)
                    pos = 0
                    continue
                crc = crc64(data, crc64(buf[pos:pos + 6], crc))
            else:
                raise PageFrameError(f"page {pgno} has unknown page flags 0x{flags:04x}",
                                     name=name, offset=base + pos + 4)
            if len(data) != page_size:
                raise PageFrameError(f"page {pgno} inflates to {len(data)} bytes, page size is "
                                     f"{page_size}", name=name, offset=base + pos)
            append((pgno, base + pos, size))
            pos += size
            last = pgno
            yield pgno, data
        mv.release()
        offset = base + pos
        if snapshot:
            needed = commit - 1 if commit == lock else commit
            if last != needed:
                raise PageFrameError(f"snapshot ends at page {last} but commit {commit} needs "
                                     f"every page up to {needed}", name=name, offset=offset - 6)
        self._offset = offset
        self._crc = crc
        self._leftover = buf[pos:]
        self._finish()

    def _bad_block_frame(self, pgno: int, csize: int, max_csize: int, avail: int,
                         offset: int) -> NoReturn:
        """Raise the error for an LZ4-block frame whose size prefix is missing or wrong."""
        if csize < 0:
            raise TruncatedError(f"file ends inside the size of page {pgno}", name=self.name,
                                 offset=offset + 6)
        if csize > max_csize:
            raise PageFrameError(f"page {pgno} compressed size {csize} is impossible for page "
                                 f"size {self.header.page_size}", name=self.name,
                                 offset=offset + 6)
        raise TruncatedError(f"file ends inside page {pgno} ({avail - 10} of {csize} bytes)",
                             name=self.name, offset=offset + 10)

    def _legacy_frame(self, buf: bytes, pos: int, pgno: int, offset: int) -> tuple[bytes, int]:
        """Decode the LZ4 frame of a legacy page frame starting at buf[pos]; return (page,
        frame size incl. the 6-byte header), or (b"", -n) when n more bytes are needed."""
        view = io.BytesIO(buf)
        view.seek(pos + 6)
        try:
            raw = read_lz4_frame(view.read)
        except EOFError:
            return b"", -max(_CHUNK, len(buf))
        except ValueError as exc:
            raise PageFrameError(f"page {pgno}: {exc}", name=self.name,
                                 offset=offset + 6) from None
        try:
            data = decompress_frame(raw)
        except RuntimeError as exc:
            raise PageFrameError(f"page {pgno}: corrupt LZ4 frame ({exc})", name=self.name,
                                 offset=offset + 6) from None
        return data, 6 + len(raw)

    def _read(self, n: int) -> bytes:
        """Read after the page block: first what the page loop buffered, then the file."""
        left = self._leftover
        if len(left) >= n:
            self._leftover = left[n:]
            return left[:n]
        self._leftover = b""
        return left + self._file_read(n - len(left))

    def _pgno_problem(self, pgno: int, last: int, lock: int) -> str:
        if pgno <= last:
            return f"page {pgno} out of order after page {last}"
        if pgno == lock:
            return f"page {pgno} is the lock page; it must never be stored"
        if pgno > self.header.commit:
            return f"page {pgno} is past the commit size of {self.header.commit} pages"
        expected = last + 2 if last + 1 == lock else last + 1
        return f"snapshot is missing page {expected} (next stored page is {pgno})"

    def _finish(self) -> None:
        expected_index = encode_index(self._entries)
        n = len(expected_index)
        got = self._read(n)
        if got != expected_index:
            self._explain_index(got, short=len(got) < n)
        crc = crc64(got, self._crc)
        self._offset += n
        lb = self._take(8, "the page index length")
        (length,) = _U64.unpack(lb)
        if length != n:
            raise PageIndexError(f"page index length field says {length} bytes, index is {n}",
                                 name=self.name, offset=self._offset)
        crc = crc64(lb, crc)
        self._offset += 8
        raw = self._take(TRAILER_SIZE, "the trailer")
        trailer = Trailer.decode(raw)
        trailer.validate(self.header, Version.V3, name=self.name, offset=self._offset)
        crc = CHECKSUM_FLAG | crc64(raw[:8], crc)
        if crc != trailer.file_checksum:
            raise ChecksumMismatchError(
                f"file checksum mismatch: trailer says {trailer.file_checksum:016x}, content "
                f"gives {crc:016x}", name=self.name, offset=self._offset + 8)
        self._offset += TRAILER_SIZE
        extra = self._read(1)
        if extra:
            raise TrailerError("unexpected data after the trailer", name=self.name,
                               offset=self._offset)
        self.trailer = trailer

    def _explain_index(self, got: bytes, *, short: bool) -> None:
        """Raise the error that says how the stored index differs from the frames read:
        TruncatedError if the file ended inside it, PageIndexError otherwise."""
        start = self._offset
        pos = 0
        try:
            for e in self._entries:
                fields = []
                for _ in range(3):
                    v, pos = read_uvarint(got, pos)
                    fields.append(v)
                if tuple(fields) != e:
                    raise PageIndexError(
                        f"page index entry (pgno {fields[0]}, offset {fields[1]}, size "
                        f"{fields[2]}) does not match frame (pgno {e[0]}, offset {e[1]}, "
                        f"size {e[2]})", name=self.name, offset=start + pos)
            v, pos = read_uvarint(got, pos)
        except ValueError as exc:
            if short:
                raise TruncatedError("file ends inside the page index", name=self.name,
                                     offset=start + len(got)) from None
            raise PageIndexError(str(exc), name=self.name, offset=start + pos) from None
        raise PageIndexError(f"page index has extra entries or a bad terminator ({v})",
                             name=self.name, offset=start + pos)

    def verify(self) -> Trailer:
        """Read and check the whole file without keeping pages; return the trailer."""
        for _ in self.pages():
            pass
        assert self.trailer is not None
        return self.trailer


def read_page_index(f: BinaryIO, *, name: str = "<ltx>") -> list[PageIndexEntry]:
    """Read the page index of a seekable v3 file from its end (for ranged reads).

    The index is trusted only as far as its structure; a caller that needs integrity decodes
    the whole file.
    """
    size = f.seek(0, 2)
    if size < HEADER_SIZE + 6 + 1 + 8 + TRAILER_SIZE:
        raise TruncatedError(f"file is {size} bytes, too short for LTX v3", name=name, offset=0)
    f.seek(size - TRAILER_SIZE - 8)
    (length,) = _U64.unpack(f.read(8))
    start = size - TRAILER_SIZE - 8 - length
    if length < 1 or start < HEADER_SIZE + 6:
        raise PageIndexError(f"page index length {length} is impossible for a {size}-byte file",
                             name=name, offset=size - TRAILER_SIZE - 8)
    f.seek(start)
    buf = f.read(length)
    entries: list[PageIndexEntry] = []
    pos = 0
    try:
        while True:
            pgno, pos = read_uvarint(buf, pos)
            if pgno == 0:
                break
            off, pos = read_uvarint(buf, pos)
            sz, pos = read_uvarint(buf, pos)
            entries.append(PageIndexEntry(pgno, off, sz))
    except ValueError as exc:
        raise PageIndexError(str(exc), name=name, offset=start + pos) from None
    if pos != length:
        raise PageIndexError(f"page index ends at byte {pos} of {length}", name=name,
                             offset=start + pos)
    return entries


def decode_page_frame(frame: bytes, page_size: int, *, name: str = "<ltx>",
                      offset: int = 0) -> tuple[int, bytes]:
    """Decode one page frame read by offset and size from the page index."""
    if len(frame) < 6:
        raise TruncatedError("page frame shorter than its header", name=name, offset=offset)
    pgno, flags = _FRAME_HEADER.unpack_from(frame)
    try:
        if flags == PAGE_FLAG_LZ4_BLOCK:
            (csize,) = _U32.unpack_from(frame, 6)
            if 10 + csize != len(frame):
                raise PageFrameError(f"page {pgno} frame is {len(frame)} bytes, header says "
                                     f"{10 + csize}", name=name, offset=offset)
            data = lz4.block.decompress(frame[10:], uncompressed_size=page_size)
        elif flags == 0:
            body = io.BytesIO(frame)
            body.seek(6)
            raw = read_lz4_frame(body.read)
            if 6 + len(raw) != len(frame):
                raise PageFrameError(f"page {pgno} frame is {len(frame)} bytes, its LZ4 frame "
                                     f"ends at {6 + len(raw)}", name=name, offset=offset)
            data = decompress_frame(raw)
        else:
            raise PageFrameError(f"page {pgno} has unknown page flags 0x{flags:04x}", name=name,
                                 offset=offset + 4)
    except (lz4.block.LZ4BlockError, RuntimeError, struct.error, ValueError, EOFError) as exc:
        raise PageFrameError(f"page {pgno}: corrupt payload ({exc})", name=name,
                             offset=offset) from None
    if len(data) != page_size:
        raise PageFrameError(f"page {pgno} inflates to {len(data)} bytes, expected {page_size}",
                             name=name, offset=offset)
    return pgno, data
