"""Corruption and truncation: every single-byte change and every truncation of small LTX files
must be rejected with a typed LTXError naming the file.

The files are small (3 pages of 512 bytes, plus LiteFS's 12 KiB v1 fixture), so the loops are
exhaustive over every byte offset with several XOR masks.

One caveat comes from the format, not the codec: the v3 file checksum covers the *decompressed*
pages (docs/formats.md §3), and LZ4 has redundant encodings (e.g. the match-length nibble of
the last sequence's token is ignored), so a change inside a compressed payload can decode to
exactly the same page. Such a change cannot be detected and does no harm; the loops accept it
only inside payloads and only when the decoded header, pages and trailer are identical to
the original.
"""

from __future__ import annotations

import io
import itertools
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from litefs_py.ltx import (
    ChecksumMismatchError,
    Decoder,
    DecoderV1,
    Header,
    HeaderError,
    LTXError,
    PageEncoding,
    PageFrameError,
    PageIndexError,
    TrailerError,
    TruncatedError,
    read_page_index,
)

from .helpers import V1_VECTOR, encode_v3, raw_header, ref_encode_v1

MASKS = (0x01, 0x02, 0x10, 0x80, 0xFF)
NAME = "corrupt-me.ltx"

Expect = tuple[type[LTXError], ...]


def _pages() -> list[bytes]:
    rnd = random.Random(1234)
    return [
        bytes([1]) * 512,  # very compressible
        rnd.randbytes(512),  # incompressible
        bytes(200) + rnd.randbytes(50) + b"abc" * 87 + bytes(1),  # mixed
    ]


@dataclass(frozen=True)
class Sample:
    id: str
    data: bytes
    version: int  # 1 or 3
    decode: Callable[[bytes], tuple[Header, list[tuple[int, bytes]], object]]


def _decode3(data: bytes) -> tuple[Header, list[tuple[int, bytes]], object]:
    dec = Decoder(io.BytesIO(data), name=NAME)
    pages = list(dec.pages())
    return dec.header, pages, dec.trailer


def _decode1(data: bytes) -> tuple[Header, list[tuple[int, bytes]], object]:
    dec = DecoderV1(io.BytesIO(data), name=NAME)
    pages = list(dec.pages())
    return dec.header, pages, dec.trailer


def _v3_samples() -> list[Sample]:
    pages = _pages()
    out = []
    for enc in PageEncoding:
        snap = Header(page_size=512, commit=3, min_txid=1, max_txid=1, flags=2,
                      timestamp=1_700_000_000_000, wal_offset=32, wal_size=1584,
                      wal_salt1=0x11223344, wal_salt2=0x55667788, node_id=9)
        data, _ = encode_v3(snap, enumerate(pages, 1), encoding=enc)
        out.append(Sample(f"v3-{enc.name}-snapshot-nochecksum", data, 3, _decode3))
        inc = Header(page_size=512, commit=6, min_txid=5, max_txid=7,
                     pre_apply_checksum=(1 << 63) | 0x0123456789ABCDEF, timestamp=42)
        data, _ = encode_v3(inc, zip((1, 3, 4), pages, strict=True), encoding=enc,
                            post=(1 << 63) | 0x0FEDCBA987654321)
        out.append(Sample(f"v3-{enc.name}-incremental-checksums", data, 3, _decode3))
    return out


def _v1_samples() -> list[Sample]:
    out = [Sample("v1-litefs-vector", V1_VECTOR.read_bytes(), 1, _decode1)]
    pages = _pages()
    hdr = raw_header(page_size=512, commit=5, min_txid=3, max_txid=4, flags=1,
                     pre_apply_checksum=(1 << 63) | 77, timestamp=5)
    out.append(Sample("v1-compressed", ref_encode_v1(hdr, list(zip((1, 2, 5), pages,
                                                                   strict=True)),
                                                     (1 << 63) | 99, compress=True), 1, _decode1))
    hdr = raw_header(page_size=512, commit=3, min_txid=1, max_txid=2, flags=0, timestamp=5)
    out.append(Sample("v1-snapshot-small", ref_encode_v1(hdr, list(enumerate(pages, 1)),
                                                         (1 << 63) | 99, compress=False),
                      1, _decode1))
    return out


SAMPLES = _v3_samples() + (_v1_samples() if V1_VECTOR.exists() else [])
samples = pytest.mark.parametrize("s", SAMPLES, ids=[s.id for s in SAMPLES])
v3_samples = pytest.mark.parametrize("s", [s for s in SAMPLES if s.version == 3],
                                     ids=[s.id for s in SAMPLES if s.version == 3])
v1_samples = pytest.mark.parametrize("s", [s for s in SAMPLES if s.version == 1],
                                     ids=[s.id for s in SAMPLES if s.version == 1])

_HEADER_SECTIONS: list[tuple[int, int, str, Expect]] = [
    (0, 4, "magic", (HeaderError,)),
    (4, 8, "flags", (HeaderError, TrailerError, PageFrameError, TruncatedError)),
    (8, 12, "page size", (HeaderError, PageFrameError, TruncatedError, ChecksumMismatchError)),
    (12, 16, "commit", (PageFrameError, ChecksumMismatchError)),
    (16, 32, "txids", (HeaderError, PageFrameError, ChecksumMismatchError)),
    (32, 40, "timestamp", (ChecksumMismatchError,)),
    (40, 48, "pre-apply checksum", (HeaderError, ChecksumMismatchError)),
    (48, 72, "wal fields", (HeaderError, ChecksumMismatchError)),
    (72, 80, "node id", (ChecksumMismatchError,)),
    (80, 100, "reserved", (ChecksumMismatchError,)),
]


def _v3_sections(data: bytes) -> list[tuple[int, int, str, Expect]]:
    """Byte ranges of each part of a v3 file, found from its page index."""
    secs = list(_HEADER_SECTIONS)
    end = 100
    for e in read_page_index(io.BytesIO(data)):
        (flags,) = struct.unpack_from(">H", data, e.offset + 4)
        secs.append((e.offset, e.offset + 4, f"pgno of page {e.pgno}",
                     (PageFrameError, PageIndexError)))
        secs.append((e.offset + 4, e.offset + 6, f"page flags of page {e.pgno}",
                     (PageFrameError,)))
        pay = e.offset + 6
        if flags == 1:
            secs.append((pay, pay + 4, f"size prefix of page {e.pgno}",
                         (PageFrameError, TruncatedError)))
            pay += 4
        secs.append((pay, e.offset + e.size, f"payload of page {e.pgno}",
                     (PageFrameError, TruncatedError, ChecksumMismatchError)))
        end = e.offset + e.size
    n = len(data)
    secs += [
        (end, end + 6, "end-of-pages marker", (PageFrameError, PageIndexError, TruncatedError)),
        (end + 6, n - 24, "page index varints", (PageIndexError,)),
        (n - 24, n - 16, "page index length", (PageIndexError,)),
        (n - 16, n - 8, "post-apply checksum", (TrailerError, ChecksumMismatchError)),
        (n - 8, n, "file checksum", (ChecksumMismatchError, TrailerError)),
    ]
    return secs


def _v1_sections(s: Sample) -> list[tuple[int, int, str, Expect]]:
    data = s.data
    n = len(data)
    secs = [sec for sec in _HEADER_SECTIONS if sec[2] not in ("flags", "page size")]
    secs += [
        (4, 8, "flags", (HeaderError, PageFrameError, TruncatedError)),
        (8, 12, "page size", (HeaderError, PageFrameError, TruncatedError,
                              ChecksumMismatchError)),
    ]
    (flags, ps) = struct.unpack_from(">II", data, 4)
    if flags & 1:
        secs.append((100, n - 16, "compressed page block",
                     (PageFrameError, TruncatedError, ChecksumMismatchError)))
    else:
        off = 100
        while True:
            (pgno,) = struct.unpack_from(">I", data, off)
            if pgno == 0:
                break
            # Without a page index, a changed page number that keeps the pages in order is
            # caught by the file checksum.
            secs.append((off, off + 4, f"pgno of page {pgno}",
                         (PageFrameError, ChecksumMismatchError)))
            secs.append((off + 4, off + 4 + ps, f"data of page {pgno}",
                         (ChecksumMismatchError,)))
            off += 4 + ps
        secs.append((off, off + 4, "end-of-pages marker", (TruncatedError, PageFrameError)))
        assert off + 4 == n - 16
    secs += [
        (n - 16, n - 8, "post-apply checksum", (TrailerError, ChecksumMismatchError)),
        (n - 8, n, "file checksum", (ChecksumMismatchError, TrailerError)),
    ]
    return secs


def _is_compressed_v1(s: Sample) -> bool:
    return s.version == 1 and bool(s.data[7] & 1)


def _sections(s: Sample) -> list[tuple[int, int, str, Expect]]:
    secs = _v3_sections(s.data) if s.version == 3 else _v1_sections(s)
    covered = sorted((a, b) for a, b, _, _ in secs)
    # The sections tile the file exactly.
    assert covered[0][0] == 0 and covered[-1][1] == len(s.data)
    for (_, b), (c, _) in itertools.pairwise(covered):
        assert b == c
    return secs


@samples
def test_sample_is_valid(s: Sample) -> None:
    _, pages, trailer = s.decode(s.data)
    assert len(pages) == 3
    assert trailer is not None


@samples
def test_every_single_byte_change_is_rejected_with_the_right_error(s: Sample) -> None:
    original = s.decode(s.data)
    problems: list[str] = []
    seen: dict[str, set[str]] = {}
    harmless = 0
    payload_flips = 0
    sections = _sections(s)
    for start, end, section, expected in sections:
        if "payload" in section or "compressed" in section:
            payload_flips += (end - start) * len(MASKS)
        for off in range(start, end):
            for mask in MASKS:
                bad = bytearray(s.data)
                bad[off] ^= mask
                where = f"{section} @{off} ^0x{mask:02x}"
                try:
                    result = s.decode(bytes(bad))
                except LTXError as exc:
                    seen.setdefault(section.split(" of page")[0], set()).add(type(exc).__name__)
                    if exc.name != NAME:
                        problems.append(f"{where}: error names {exc.name!r}")
                    if not isinstance(exc, expected) or type(exc) is LTXError:
                        problems.append(f"{where}: {type(exc).__name__}: {exc.message} "
                                        f"(expected one of "
                                        f"{', '.join(t.__name__ for t in expected)})")
                    # (compressed v1 files report offsets in the decompressed page block)
                    if (exc.offset is not None and not _is_compressed_v1(s)
                            and not 0 <= exc.offset <= len(bad)):
                        problems.append(f"{where}: offset {exc.offset} outside the file")
                    if section == "magic" and exc.offset != 0:
                        problems.append(f"{where}: magic error at offset {exc.offset}")
                except Exception as exc:  # the point is to catch anything that is not an LTXError
                    problems.append(f"{where}: untyped {type(exc).__name__}: {exc}")
                else:
                    # Undetectable only if harmless: same decoded content, inside a payload.
                    harmless += 1
                    if not (("payload" in section or "compressed" in section)
                            and result == original):
                        problems.append(f"{where}: accepted, decodes to "
                                        f"{'the same' if result == original else 'other'} "
                                        "content")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])
    # Every section produced errors, and harmless payload changes are rare LZ4 redundancies.
    assert {sec.split(" of page")[0] for _, _, sec, _ in sections} == set(seen)
    assert harmless <= payload_flips // 50, (harmless, payload_flips)


@v3_samples
def test_v3_truncation_at_every_offset_raises_ltx_error(s: Sample) -> None:
    for k in range(len(s.data)):
        with pytest.raises(LTXError) as info:
            s.decode(s.data[:k])
        assert info.value.name == NAME
        assert type(info.value) is not LTXError


@v3_samples
def test_v3_truncation_at_every_offset_raises_truncated_error(s: Sample) -> None:
    wrong = []
    for k in range(len(s.data)):
        try:
            s.decode(s.data[:k])
        except TruncatedError as exc:
            assert exc.name == NAME
            assert exc.offset is None or exc.offset <= k
        except LTXError as exc:
            wrong.append(f"truncated to {k} bytes: {type(exc).__name__}: {exc}")
        else:
            wrong.append(f"truncated to {k} bytes: accepted")
    assert not wrong, "\n".join(wrong)


@v1_samples
def test_v1_truncation_at_every_offset_raises_truncated_error(s: Sample) -> None:
    for k in range(len(s.data)):
        with pytest.raises(TruncatedError) as info:
            s.decode(s.data[:k])
        assert info.value.name == NAME


def test_v1_page_number_zero_is_a_page_frame_error() -> None:
    """A v1 frame whose page number reads 0 (corrupted) is a bad page frame.

    DecoderV1 takes it for the end-of-pages marker and then raises the bare base class
    LTXError("data after the end-of-pages marker") instead of a typed subclass.
    """
    data = bytearray(V1_VECTOR.read_bytes())
    assert data[100:104] == b"\x00\x00\x00\x01"
    data[103] = 0
    with pytest.raises(PageFrameError):
        DecoderV1(io.BytesIO(bytes(data)), name=NAME).verify()


@pytest.mark.parametrize("extra", [b"\x00", b"junk", bytes(16)])
@samples
def test_data_after_the_trailer_is_rejected(s: Sample, extra: bytes) -> None:
    with pytest.raises(LTXError) as info:
        s.decode(s.data + extra)
    assert info.value.name == NAME


@v3_samples
def test_v3_specific_sections(s: Sample) -> None:
    """Spot checks of the error type and offset for a few well-determined corruptions."""
    data = s.data
    n = len(data)

    def fail(off: int, mask: int) -> LTXError:
        bad = bytearray(data)
        bad[off] ^= mask
        with pytest.raises(LTXError) as info:
            s.decode(bytes(bad))
        return info.value

    e = fail(0, 0x01)
    assert isinstance(e, HeaderError) and e.offset == 0
    e = fail(7, 0x01)  # flags 0x1 is not a v3 flag
    assert isinstance(e, HeaderError) and e.offset == 4
    e = fail(9, 0x01)  # page size 512 -> 66048
    assert isinstance(e, HeaderError) and e.offset == 8
    e = fail(n - 1, 0x01)
    assert isinstance(e, ChecksumMismatchError)
    e = fail(n - 8, 0x80)  # file checksum without its flag bit
    assert isinstance(e, TrailerError)
    e = fail(n - 24 + 7, 0x01)
    assert isinstance(e, PageIndexError)
    first = read_page_index(io.BytesIO(data))[0]
    e = fail(first.offset + 3, 0x02)  # pgno 1 -> 3 (or 3 -> 1): order or index mismatch
    assert isinstance(e, PageFrameError | PageIndexError)
    e = fail(first.offset + 4, 0x80)  # unknown page flags
    assert isinstance(e, PageFrameError) and e.offset == first.offset + 4


def _multibyte_varint_file() -> tuple[bytes, list[tuple[int, int]]]:
    """A v3 file whose index holds 2-byte varints; returns it and each varint's byte span."""
    pages = _pages()
    hdr = Header(page_size=512, commit=3, min_txid=1, max_txid=1, flags=2)
    data, _ = encode_v3(hdr, enumerate(pages, 1))
    entries = read_page_index(io.BytesIO(data))
    index_len = struct.unpack_from(">Q", data, len(data) - 24)[0]
    pos = len(data) - 24 - index_len
    spans = []
    for value in [v for e in entries for v in (e.pgno, e.offset, e.size)]:
        start = pos
        while data[pos] & 0x80:
            pos += 1
        pos += 1
        spans.append((start, pos))
        assert value >= 0x80 or pos - start == 1
    assert any(b - a > 1 for a, b in spans)
    return data, spans


def test_truncation_inside_a_multibyte_index_varint_is_a_truncated_error() -> None:
    """Truncating the file between the two bytes of an index varint is a truncation.

    Decoder._explain_index raises PageIndexError("varint runs past the end of the index")
    here: it decides 'truncated' from the parse position of the failing varint instead of from
    the short read.
    """
    data, spans = _multibyte_varint_file()
    start, end = next((a, b) for a, b in spans if b - a > 1)
    for cut in range(start + 1, end):
        with pytest.raises(TruncatedError):
            Decoder(io.BytesIO(data[:cut]), name=NAME).verify()


def test_overlong_last_index_varint_in_a_complete_file_is_a_page_index_error() -> None:
    """Setting the continuation bit of the index's last entry byte makes that varint swallow the
    terminator. The file is complete, so this is a bad page index, not a truncation.

    Decoder._explain_index raises TruncatedError("file ends inside the page index") here.
    """
    data, spans = _multibyte_varint_file()
    _, last_end = spans[-1]
    bad = bytearray(data)
    bad[last_end - 1] |= 0x80
    with pytest.raises(PageIndexError):
        Decoder(io.BytesIO(bytes(bad)), name=NAME).verify()
