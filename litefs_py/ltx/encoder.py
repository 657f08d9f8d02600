"""Streaming LTX v3 encoder.

Writes the header at once, each page frame as it is given, and the page index and trailer on
`finish()`. The file checksum is computed on the fly, over the decompressed pages as docs/formats.md
§3 specifies, so the encoder never holds more than one page.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from typing import BinaryIO

from .checksum import CHECKSUM_FLAG, crc64, lock_pgno
from .compiled import frames as _frames
from .errors import LTXError, PageFrameError
from .header import HEADER_SIZE, Header, Trailer, Version
from .page_encoding import PageEncoding, compress_block, compress_frame
from .varint import encode_index

# The compiled page loop and one-call encoder (None without them; the pure code gives the
# same bytes).
_compiled_frames = _frames.encode_frames if _frames is not None else None
_compiled_file = _frames.encode_file if _frames is not None else None

_FRAME_HEADER = struct.Struct(">IH")
_FRAME_HEADER_SIZED = struct.Struct(">IHI")
_U64 = struct.Struct(">Q")
END_OF_PAGES_V3 = bytes(6)


class Encoder:
    """Encode one LTX v3 file into `f` (any writable binary file object).

    Pages must be given in increasing page-number order; a snapshot (min TXID 1) must give
    every page 1..commit except the lock page. With `track_checksum`, the encoder also
    accumulates the XOR of the page checksums it wrote (the database checksum of a snapshot).
    """

    def __init__(
        self,
        f: BinaryIO,
        header: Header,
        *,
        page_encoding: PageEncoding = PageEncoding.LZ4_BLOCK,
        track_checksum: bool = False,
        name: str = "<ltx>",
    ) -> None:
        header.validate(Version.V3, name=name)
        self.header = header
        self.name = name
        self._write = f.write
        self._page_size = header.page_size
        self._commit = header.commit
        self._lock_pgno = lock_pgno(header.page_size)
        self._legacy = page_encoding is PageEncoding.LZ4_FRAME
        self._snapshot = header.is_snapshot
        self._track = track_checksum
        self._page_checksums = 0
        self._last_pgno = 0
        self._index: list[tuple[int, int, int]] = []
        self._finished = False
        hdr = header.encode()
        self._write(hdr)
        self._crc = crc64(hdr)
        self._offset = HEADER_SIZE
        self.page_count = 0

    @property
    def pages_checksum(self) -> int:
        """`1<<63 | XOR` of the checksums of the pages written so far (needs track_checksum)."""
        return CHECKSUM_FLAG | self._page_checksums

    def encode_page(self, pgno: int, data: bytes | memoryview) -> None:
        if self._finished:
            raise LTXError("encoder already finished", name=self.name)
        if len(data) != self._page_size:
            raise PageFrameError(
                f"page {pgno} is {len(data)} bytes, page size is {self._page_size}",
                name=self.name, offset=self._offset)
        # The common case inline (this runs once per page): the next page of a snapshot, or
        # a page after the last one within the commit size of an incremental file.
        last = self._last_pgno
        if self._snapshot:
            if pgno != last + 1 or pgno == self._lock_pgno or pgno > self._commit:
                self._check_pgno(pgno)
        elif not last < pgno <= self._commit or pgno == self._lock_pgno:
            self._check_pgno(pgno)
        if self._legacy:
            payload = compress_frame(data)
            hdr = _FRAME_HEADER.pack(pgno, 0)
        else:
            payload = compress_block(data)
            hdr = _FRAME_HEADER_SIZED.pack(pgno, 1, len(payload))
        self._crc = crc64(data, crc64(hdr, self._crc))
        self._write(hdr + payload)
        size = len(hdr) + len(payload)
        self._index.append((pgno, self._offset, size))
        self._offset += size
        self._last_pgno = pgno
        self.page_count += 1
        if self._track:
            self._page_checksums ^= crc64(data, crc64(hdr[:4]))

    def encode_pages(self, pages: Iterable[tuple[int, bytes | memoryview]]) -> None:
        """Encode several pages, in order: the same bytes and errors as `encode_page` for
        each, with the per-page work in C when the compiled module is there."""
        if self._finished:
            raise LTXError("encoder already finished", name=self.name)
        if type(pages) is not list:
            pages = list(pages)
        done = 0
        if _compiled_frames is not None and pages:
            frames, done, self._last_pgno, self._crc, self._page_checksums = _compiled_frames(
                pages, self._offset, self._page_size, self._commit, self._snapshot,
                self._last_pgno, self._crc, self._legacy, self._track, self._page_checksums,
                self._index)
            if frames:
                self._write(frames)
            self._offset += len(frames)
            self.page_count += done
        for pgno, data in pages[done:]:  # the pure loop, or the page the C loop refused
            self.encode_page(pgno, data)

    def _check_pgno(self, pgno: int) -> None:
        last = self._last_pgno
        if last < pgno <= self._commit and pgno != self._lock_pgno and not self._snapshot:
            return
        if pgno <= last:
            raise PageFrameError(
                f"page {pgno} out of order: pages must be strictly increasing (previous {last})",
                name=self.name, offset=self._offset)
        if pgno == self._lock_pgno:
            raise PageFrameError(
                f"page {pgno} is the lock page for page size {self._page_size}; it is never stored",
                name=self.name, offset=self._offset)
        if pgno > self._commit:
            raise PageFrameError(
                f"page {pgno} is past the commit size of {self._commit} pages",
                name=self.name, offset=self._offset)
        if self._snapshot:
            expected = last + 1 if last + 1 != self._lock_pgno else last + 2
            if pgno != expected:
                raise PageFrameError(
                    f"snapshot must hold every page: got page {pgno}, expected {expected}",
                    name=self.name, offset=self._offset)

    def finish(self, post_apply_checksum: int | None = None) -> Trailer:
        """Write end marker, page index and trailer. Returns the trailer.

        `post_apply_checksum` defaults to 0 with the no-checksum flag, and to the tracked
        page checksum for a snapshot encoded with `track_checksum`.
        """
        if self._finished:
            raise LTXError("encoder already finished", name=self.name)
        hdr = self.header
        if post_apply_checksum is None:
            if hdr.no_checksum:
                post_apply_checksum = 0
            elif self._track and hdr.is_snapshot:
                post_apply_checksum = self.pages_checksum
            else:
                raise LTXError("post-apply checksum required (file tracks checksums)",
                               name=self.name)
        if hdr.is_snapshot:
            last_needed = hdr.commit if hdr.commit != self._lock_pgno else hdr.commit - 1
            if self._last_pgno != last_needed:
                raise PageFrameError(
                    f"snapshot ends at page {self._last_pgno}, commit needs pages up to "
                    f"{last_needed}", name=self.name, offset=self._offset)
        index = encode_index(self._index)
        tail = END_OF_PAGES_V3 + bytes(index) + _U64.pack(len(index))
        post = _U64.pack(post_apply_checksum)
        crc = crc64(post, crc64(tail, self._crc))
        trailer = Trailer(post_apply_checksum, CHECKSUM_FLAG | crc)
        trailer.validate(hdr, Version.V3, name=self.name)
        self._write(tail)
        self._write(trailer.encode())
        self._finished = True
        return trailer


def encode_bytes(
    header: Header,
    pages: Iterable[tuple[int, bytes | memoryview]],
    post_apply_checksum: int | None = None,
    *,
    page_encoding: PageEncoding = PageEncoding.LZ4_BLOCK,
    track_checksum: bool = False,
    name: str = "<ltx>",
) -> bytes:
    """Encode a whole LTX v3 file in memory, in one call.

    Same bytes, rules and errors as an `Encoder` given these pages and then `finish`
    (`post_apply_checksum` and `track_checksum` mean the same), but far cheaper per file,
    which is what matters for the many one-transaction files. With the compiled module the
    usual case runs in C; anything it refuses is encoded again by the `Encoder`, which raises
    the precise error.
    """
    page_list = pages if type(pages) is list else list(pages)
    if _compiled_file is not None:
        post = post_apply_checksum
        if post is None and header.no_checksum:
            post = 0
        track = track_checksum and header.is_snapshot
        if post is not None or track:
            # Checks the header rules too; refuses (None) whatever breaks one.
            done = _compiled_file(header, page_list, post,
                                  page_encoding is PageEncoding.LZ4_FRAME, track)
            if done is not None:
                return done  # type: ignore[no-any-return]
    out = io.BytesIO()
    enc = Encoder(out, header, page_encoding=page_encoding, track_checksum=track_checksum,
                  name=name)
    for pgno, data in page_list:
        enc.encode_page(pgno, data)
    enc.finish(post_apply_checksum)
    return out.getvalue()
