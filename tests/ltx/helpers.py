"""Independent reference implementations and small utilities for the LTX codec tests.

Everything here is written from docs/formats.md, not from the codec, so tests can
cross-check the codec against it (a pure-Python CRC-64, a reference LTX v3 writer that can also
write *invalid* files with valid checksums, and a LiteFS v1 writer, which the codec lacks).
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import struct
import subprocess
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import lz4.block
import lz4.frame

from litefs_py.ltx import (
    Decoder,
    DecoderV1,
    Encoder,
    Header,
    LTXError,
    PageEncoding,
    Trailer,
    crc64,
    decode_bytes,
    encode_bytes,
    page_encoding,
    read_page_index,
)
from tests.vectors_path import VECTORS

LS17 = VECTORS / "ls-0.5.17-4k"
LS15 = VECTORS / "ls-0.5.15-4k"
LITEFS_STORE = VECTORS / "litefs/store/open-and-write-snapshot/dbs/sqlite.db"
V1_VECTOR = LITEFS_STORE / "ltx/000000000000000d-000000000000000d.ltx"
V1_DATABASE = LITEFS_STORE / "database"

FLAG = 1 << 63
PAGE_SIZES = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]

# ---------------------------------------------------------------------------------------------
# CRC-64 (Go crc64.ISO), bit by bit from the catalogue parameters in docs/formats.md §1.

_POLY_REFLECTED = 0xD800000000000000
_MASK64 = (1 << 64) - 1


def _make_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _make_table()


def py_crc64(data: bytes, crc: int = 0) -> int:
    """Go's crc64.Update(crc, ISO table, data): init/xorout ~0, reflected. Slow; small inputs."""
    crc = ~crc & _MASK64
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return ~crc & _MASK64


# ---------------------------------------------------------------------------------------------
# Reference LTX v3 writer (docs/formats.md §2–§3). It never validates: tests use it to build files
# that break one rule while every checksum is still right.

_HDR = struct.Struct(">4sIIIQQqQqqIIQ20s")


def raw_header(
    *,
    page_size: int = 512,
    commit: int = 1,
    min_txid: int = 1,
    max_txid: int = 1,
    timestamp: int = 0,
    pre_apply_checksum: int = 0,
    flags: int = 0,
    wal_offset: int = 0,
    wal_size: int = 0,
    wal_salt1: int = 0,
    wal_salt2: int = 0,
    node_id: int = 0,
    magic: bytes = b"LTX1",
    reserved: bytes = bytes(20),
) -> bytes:
    return _HDR.pack(magic, flags, page_size, commit, min_txid, max_txid, timestamp,
                     pre_apply_checksum, wal_offset, wal_size, wal_salt1, wal_salt2, node_id,
                     reserved)


def header_bytes(h: Header) -> bytes:
    return raw_header(page_size=h.page_size, commit=h.commit, min_txid=h.min_txid,
                      max_txid=h.max_txid, timestamp=h.timestamp,
                      pre_apply_checksum=h.pre_apply_checksum, flags=h.flags,
                      wal_offset=h.wal_offset, wal_size=h.wal_size, wal_salt1=h.wal_salt1,
                      wal_salt2=h.wal_salt2, node_id=h.node_id)


@dataclass(frozen=True)
class Frame:
    """One v3 page frame: what is stored after the 6-byte header, and the page it stands for."""

    pgno: int
    flags: int
    stored: bytes  # size prefix (if any) + payload, exactly as written after pgno/flags
    checksummed: bytes  # size prefix (if any) + decompressed page, as the file checksum sees it


def lz4_frame(data: bytes, **kw: object) -> bytes:
    params: dict[str, object] = {
        "block_size": lz4.frame.BLOCKSIZE_MAX64KB,
        "block_linked": False,
        "content_checksum": True,
        "store_size": False,
    }
    params.update(kw)
    return bytes(lz4.frame.compress(data, **params))


def block_frame(pgno: int, page: bytes, *, payload: bytes | None = None) -> Frame:
    if payload is None:
        payload = bytes(lz4.block.compress(page, store_size=False))
    prefix = struct.pack(">I", len(payload))
    return Frame(pgno, 1, prefix + payload, prefix + page)


def one_block_lz4_frame(page: bytes) -> bytes:
    """The LZ4 frame litefs writes for a legacy page, built by the rules (docs/formats.md §3 and the
    LZ4 frame spec): header for FLG 0x64 / BD 0x40, one block (stored as is when LZ4 does not
    shrink it, as liblz4's frame API does), end mark, XXH32 content checksum. The checksum is
    taken from python-lz4's own frame of the page (it depends only on the content); the block
    is lz4.block's, which can differ from the frame API's by a few bytes for small pages."""
    block = lz4.block.compress(page, store_size=False)
    size = len(block)
    if size >= len(page):
        block, size = page, len(page) | 0x80000000
    return (b"\x04\x22\x4d\x18\x64\x40\xa7" + size.to_bytes(4, "little") + block + bytes(4)
            + lz4_frame(page)[-4:])


def legacy_frame(pgno: int, page: bytes, *, payload: bytes | None = None) -> Frame:
    if payload is None:
        # Without the compiled module litefs writes legacy frames with python-lz4's frame API.
        compiled = page_encoding._xxh32 is not None
        payload = one_block_lz4_frame(page) if compiled else lz4_frame(page)
    return Frame(pgno, 0, payload, page)


def make_frame(pgno: int, page: bytes, encoding: PageEncoding) -> Frame:
    if encoding is PageEncoding.LZ4_BLOCK:
        return block_frame(pgno, page)
    return legacy_frame(pgno, page)


def uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@dataclass
class Layout:
    """Byte ranges of each part of a v3 file, for corruption tests."""

    frames: list[tuple[int, int, int, int]]  # (frame start, payload start, frame end, flags)
    end_marker: int
    index: int
    index_len: int
    post_apply: int
    file_checksum: int
    size: int


def ref_encode_v3(
    header: bytes,
    frames: Sequence[Frame],
    post_apply: int,
    *,
    end_marker: bytes = bytes(6),
    index: bytes | None = None,
    index_length: int | None = None,
    file_checksum: int | None = None,
    extra: bytes = b"",
) -> tuple[bytes, Layout]:
    """Write a v3 file exactly as docs/formats.md §3 describes; overrides build invalid files."""
    out = bytearray(header)
    ck = [header]
    entries = bytearray()
    spans = []
    for fr in frames:
        start = len(out)
        fh = struct.pack(">IH", fr.pgno, fr.flags)
        out += fh + fr.stored
        prefix = 4 if fr.flags == 1 else 0
        spans.append((start, start + 6 + prefix, len(out), fr.flags))
        ck += [fh, fr.checksummed]
        entries += uvarint(fr.pgno) + uvarint(start) + uvarint(len(out) - start)
    end_at = len(out)
    out += end_marker
    ck.append(end_marker)
    if index is None:
        index = bytes(entries) + uvarint(0)
    index_at = len(out)
    tail = index + struct.pack(">Q", len(index) if index_length is None else index_length)
    out += tail
    ck.append(tail)
    post = struct.pack(">Q", post_apply)
    ck.append(post)
    if file_checksum is None:
        file_checksum = FLAG | crc_of(ck)
    post_at = len(out)
    out += post + struct.pack(">Q", file_checksum) + extra
    layout = Layout(spans, end_at, index_at, index_at + len(index), post_at, post_at + 8,
                    len(out))
    return bytes(out), layout


def crc_of(parts: Iterable[bytes]) -> int:
    crc = 0  # fast CRC; test_ltx_checksum checks it against py_crc64
    for p in parts:
        crc = crc64(p, crc)
    return crc


# ---------------------------------------------------------------------------------------------
# Reference LiteFS LTX v1 writer (docs/formats.md §4).


def ref_encode_v1(header: bytes, pages: Sequence[tuple[int, bytes]], post_apply: int, *,
                  compress: bool, end_marker: bytes = bytes(4)) -> bytes:
    block = b"".join(struct.pack(">I", pgno) + data for pgno, data in pages) + end_marker
    post = struct.pack(">Q", post_apply)
    file_ck = FLAG | crc_of([header, block, post])
    body = bytes(lz4.frame.compress(block)) if compress else block
    return header + body + post + struct.pack(">Q", file_ck)


# ---------------------------------------------------------------------------------------------
# Codec wrappers.


def encode_v3(header: Header, pages: Iterable[tuple[int, bytes]], *,
              encoding: PageEncoding = PageEncoding.LZ4_BLOCK, post: int | None = None,
              name: str = "<ltx>") -> tuple[bytes, Trailer]:
    """Encode with the streaming Encoder; the one-call `encode_bytes` must give the same
    bytes (or the same error), so every test that encodes also checks it."""
    pages = list(pages)
    buf = io.BytesIO()
    try:
        enc = Encoder(buf, header, page_encoding=encoding, track_checksum=True, name=name)
        for pgno, data in pages:
            enc.encode_page(pgno, data)
        trailer = enc.finish(post)
    except LTXError as exc:
        _same_error(exc, lambda: encode_bytes(header, pages, post, page_encoding=encoding,
                                              track_checksum=True, name=name))
        raise
    assert encode_bytes(header, pages, post, page_encoding=encoding, track_checksum=True,
                        name=name) == buf.getvalue()
    return buf.getvalue(), trailer


def decode_v3(data: bytes, name: str = "<ltx>") -> tuple[Header, list[tuple[int, bytes]], Trailer]:
    """Decode with the streaming Decoder; the one-call `decode_bytes` must give the same
    result (or the same error), so every test that decodes also checks it."""
    try:
        dec = Decoder(io.BytesIO(data), name=name)
        pages = list(dec.pages())
    except LTXError as exc:
        _same_error(exc, lambda: decode_bytes(data, name=name))
        raise
    assert dec.trailer is not None
    assert tuple(decode_bytes(data, name=name)) == (dec.header, pages, dec.trailer)
    return dec.header, pages, dec.trailer


def _same_error(exc: LTXError, call: Callable[[], object]) -> None:
    try:
        call()
    except LTXError as other:
        assert (type(other), str(other), other.offset) == (type(exc), str(exc), exc.offset)
    else:
        raise AssertionError(f"the one-call API accepted what the streaming one refused: {exc}")


def decode_v1(data: bytes, name: str = "<ltx>") -> tuple[Header, list[tuple[int, bytes]], Trailer]:
    dec = DecoderV1(io.BytesIO(data), name=name)
    pages = list(dec.pages())
    assert dec.trailer is not None
    return dec.header, pages, dec.trailer


def frame_flags(data: bytes) -> list[int]:
    """Page flags of every frame, found through the codec's own page index."""
    return [struct.unpack_from(">H", data, e.offset + 4)[0]
            for e in read_page_index(io.BytesIO(data))]


# ---------------------------------------------------------------------------------------------
# SQLite helpers.


def dump_sha256(db: Path) -> str:
    out = subprocess.run(["sqlite3", str(db), ".dump"], capture_output=True, check=True,
                         timeout=60).stdout
    return hashlib.sha256(out).hexdigest()


def integrity_check(db: Path) -> str:
    with closing(sqlite3.connect(db)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def load_expected(folder: Path) -> dict[str, object]:
    with open(folder / "expected.json") as f:
        data: dict[str, object] = json.load(f)
    return data
