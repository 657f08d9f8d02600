"""Header, trailer, encoder and decoder rules (docs/formats.md §2–§4), table-driven.

Decoder rules are checked with files from the reference writer in helpers.py: each breaks one
rule while its file checksum is right, so the rule itself must be what rejects it.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import lz4.block
import lz4.frame
import pytest

from litefs_py.ltx import (
    FLAG_V1_COMPRESS_LZ4,
    FLAG_V3_NO_CHECKSUM,
    HEADER_SIZE,
    TRAILER_SIZE,
    Decoder,
    Encoder,
    Header,
    HeaderError,
    LTXError,
    PageEncoding,
    PageFrameError,
    PageIndexError,
    Trailer,
    TrailerError,
    TruncatedError,
    Version,
    combine_page_checksums,
    lock_pgno,
    page_checksum,
)

from .helpers import (
    FLAG,
    Frame,
    block_frame,
    decode_v3,
    encode_v3,
    header_bytes,
    legacy_frame,
    lz4_frame,
    make_frame,
    raw_header,
    ref_encode_v3,
    uvarint,
)

CK = FLAG | 0x1234
BASE: dict[str, Any] = {"page_size": 4096, "commit": 2, "min_txid": 3, "max_txid": 4,
                        "pre_apply_checksum": CK}

# (description, changes to BASE, version, expected field offset or None if valid)
HEADER_CASES: list[tuple[str, dict[str, Any], Version, int | None]] = [
    ("valid v3 with checksums", {}, Version.V3, None),
    ("valid v1", {}, Version.V1, None),
    ("v3 no-checksum flag", {"flags": 2, "pre_apply_checksum": 0}, Version.V3, None),
    ("v1 compress flag", {"flags": 1}, Version.V1, None),
    ("v3 flag 0x1 is v1's", {"flags": 1}, Version.V3, 4),
    ("v3 flag 0x4", {"flags": 4}, Version.V3, 4),
    ("v3 flags 0x3", {"flags": 3, "pre_apply_checksum": 0}, Version.V3, 4),
    ("v3 high flag", {"flags": 0x80000000}, Version.V3, 4),
    ("v1 flag 0x2 is v3's", {"flags": 2}, Version.V1, 4),
    ("v1 flag 0x4", {"flags": 4}, Version.V1, 4),
    ("page size 0", {"page_size": 0}, Version.V3, 8),
    ("page size 256", {"page_size": 256}, Version.V3, 8),
    ("page size 511", {"page_size": 511}, Version.V3, 8),
    ("page size 512", {"page_size": 512}, Version.V3, None),
    ("page size 513", {"page_size": 513}, Version.V3, 8),
    ("page size 1024", {"page_size": 1024}, Version.V3, None),
    ("page size 3072", {"page_size": 3072}, Version.V3, 8),
    ("page size 65536", {"page_size": 65536}, Version.V3, None),
    ("page size 131072", {"page_size": 131072}, Version.V3, 8),
    ("page size 0 (v1)", {"page_size": 0}, Version.V1, 8),
    ("min txid 0", {"min_txid": 0}, Version.V3, 16),
    ("max txid 0", {"max_txid": 0, "min_txid": 1, "pre_apply_checksum": 0}, Version.V3, 24),
    ("both txids 0", {"max_txid": 0, "min_txid": 0}, Version.V3, 16),
    ("min > max", {"min_txid": 5, "max_txid": 4}, Version.V3, 16),
    ("min == max", {"min_txid": 4, "max_txid": 4}, Version.V3, None),
    ("snapshot with pre-apply", {"min_txid": 1, "pre_apply_checksum": CK}, Version.V3, 40),
    ("snapshot with pre-apply (v1)", {"min_txid": 1}, Version.V1, 40),
    ("snapshot with pre-apply and no-checksum flag",
     {"min_txid": 1, "flags": 2, "pre_apply_checksum": CK}, Version.V3, 40),
    ("snapshot without pre-apply", {"min_txid": 1, "pre_apply_checksum": 0}, Version.V3, None),
    ("no-checksum flag with pre-apply", {"flags": 2}, Version.V3, 40),
    ("no pre-apply on incremental", {"pre_apply_checksum": 0}, Version.V3, 40),
    ("no pre-apply on incremental (v1)", {"pre_apply_checksum": 0}, Version.V1, 40),
    ("pre-apply without flag bit", {"pre_apply_checksum": 0x1234}, Version.V3, 40),
    ("pre-apply without flag bit (v1)", {"pre_apply_checksum": 0x1234}, Version.V1, 40),
    ("WAL fields complete", {"wal_offset": 32, "wal_size": 4120, "wal_salt1": 1,
                             "wal_salt2": 2}, Version.V3, None),
    ("WAL salt1 without offset", {"wal_salt1": 1, "wal_size": 0}, Version.V3, 64),
    ("WAL salt2 without offset", {"wal_salt2": 1}, Version.V3, 64),
    ("WAL size without offset", {"wal_size": 4120}, Version.V3, 56),
    # Matches superfly/ltx v0.5 (Litestream >= 0.5): an offset without a size is allowed.
    ("WAL offset without size", {"wal_offset": 32}, Version.V3, None),
    ("negative WAL offset", {"wal_offset": -1}, Version.V3, 48),
    ("negative WAL size", {"wal_offset": 32, "wal_size": -5}, Version.V3, 56),
    ("commit 0 (database deleted)", {"commit": 0}, Version.V3, None),
    ("node id and timestamp", {"node_id": 2**64 - 1, "timestamp": -5}, Version.V3, None),
]


@pytest.mark.parametrize(("why", "changes", "version", "offset"), HEADER_CASES,
                         ids=[c[0] for c in HEADER_CASES])
def test_header_validate(why: str, changes: dict[str, Any], version: Version,
                         offset: int | None) -> None:
    h = Header(**{**BASE, **changes})
    if offset is None:
        h.validate(version, name=why)
        return
    with pytest.raises(HeaderError) as info:
        h.validate(version, name=why)
    assert info.value.name == why
    assert info.value.offset == offset


@pytest.mark.parametrize(("why", "changes", "version", "offset"),
                         [c for c in HEADER_CASES if c[2] is Version.V3],
                         ids=[c[0] for c in HEADER_CASES if c[2] is Version.V3])
def test_decoder_and_encoder_apply_the_header_rules(why: str, changes: dict[str, Any],
                                                    version: Version, offset: int | None) -> None:
    fields = {**BASE, **changes}
    raw = raw_header(**fields)
    if offset is None:
        h = Header(**fields)
        assert Header.decode(raw) == h
        assert h.encode() == raw
        return
    with pytest.raises(HeaderError) as info:
        Decoder(io.BytesIO(raw + bytes(64)), name=why)
    assert info.value.name == why and info.value.offset == offset
    with pytest.raises(HeaderError):
        Encoder(io.BytesIO(), Header(**fields), name=why)


def test_header_constants_and_flags() -> None:
    assert (HEADER_SIZE, TRAILER_SIZE) == (100, 16)
    assert (FLAG_V1_COMPRESS_LZ4, FLAG_V3_NO_CHECKSUM) == (1, 2)
    h = Header(**BASE)
    assert not h.is_snapshot and not h.no_checksum
    assert Header(**{**BASE, "min_txid": 1}).is_snapshot
    assert Header(**{**BASE, "flags": 2}).no_checksum
    assert h.with_(commit=9).commit == 9 and h.commit == 2


def test_header_encoding_layout() -> None:
    h = Header(page_size=4096, commit=0x01020304, min_txid=0x1112131415161718,
               max_txid=0x2122232425262728, timestamp=-2, pre_apply_checksum=0x8000000000000001,
               flags=2, wal_offset=0x3132333435363738, wal_size=0x4142434445464748,
               wal_salt1=0x51525354, wal_salt2=0x61626364, node_id=0x7172737475767778)
    raw = h.encode()
    assert len(raw) == 100
    assert raw[0:4] == b"LTX1"
    assert raw[4:8] == bytes.fromhex("00000002")
    assert raw[8:12] == bytes.fromhex("00001000")
    assert raw[12:16] == bytes.fromhex("01020304")
    assert raw[16:24] == bytes.fromhex("1112131415161718")
    assert raw[24:32] == bytes.fromhex("2122232425262728")
    assert raw[32:40] == bytes.fromhex("fffffffffffffffe")
    assert raw[40:48] == bytes.fromhex("8000000000000001")
    assert raw[48:56] == bytes.fromhex("3132333435363738")
    assert raw[56:64] == bytes.fromhex("4142434445464748")
    assert raw[64:68] == bytes.fromhex("51525354")
    assert raw[68:72] == bytes.fromhex("61626364")
    assert raw[72:80] == bytes.fromhex("7172737475767778")
    assert raw[80:100] == bytes(20)
    assert Header.decode(raw) == h
    assert raw == header_bytes(h)


def test_header_decode_errors() -> None:
    with pytest.raises(HeaderError) as info:
        Header.decode(b"LTX1" + bytes(50), name="short")
    assert info.value.name == "short"
    with pytest.raises(HeaderError) as info:
        Header.decode(b"LTX2" + bytes(96), name="magic")
    assert info.value.offset == 0
    with pytest.raises(HeaderError):
        Header(page_size=4096, commit=2**32, min_txid=1, max_txid=1).encode()
    with pytest.raises(HeaderError):
        Header(page_size=4096, commit=1, min_txid=2**64, max_txid=2**64).encode()


TRAILER_CASES: list[tuple[str, int, int, Version, int, int | None]] = [
    # (why, header flags, min txid, version, post-apply, expected relative offset or None)
    ("v3 checksums ok", 0, 2, Version.V3, FLAG | 5, None),
    ("v3 snapshot checksums ok", 0, 1, Version.V3, FLAG | 5, None),
    ("v3 no-checksum ok", 2, 2, Version.V3, 0, None),
    ("v3 no-checksum snapshot ok", 2, 1, Version.V3, 0, None),
    ("v3 no-checksum with post-apply", 2, 2, Version.V3, FLAG | 5, 0),
    ("v3 snapshot no-checksum with post-apply", 2, 1, Version.V3, FLAG | 5, 0),
    ("v3 missing post-apply", 0, 2, Version.V3, 0, 0),
    ("v3 post-apply without flag bit", 0, 2, Version.V3, 5, 0),
    ("v1 ok", 0, 2, Version.V1, FLAG | 5, None),
    ("v1 missing post-apply", 0, 2, Version.V1, 0, 0),
    ("v1 post-apply without flag bit", 1, 2, Version.V1, 5, 0),
]


@pytest.mark.parametrize(("why", "flags", "min_txid", "version", "post", "rel"), TRAILER_CASES,
                         ids=[c[0] for c in TRAILER_CASES])
def test_trailer_validate(why: str, flags: int, min_txid: int, version: Version, post: int,
                          rel: int | None) -> None:
    h = Header(page_size=512, commit=1, min_txid=min_txid, max_txid=min_txid, flags=flags,
               pre_apply_checksum=0 if (min_txid == 1 or flags & 2) else CK)
    t = Trailer(post, FLAG | 9)
    if rel is None:
        t.validate(h, version, name=why)
    else:
        with pytest.raises(TrailerError) as info:
            t.validate(h, version, name=why, offset=1000)
        assert info.value.name == why and info.value.offset == 1000 + rel
    # The file checksum is always required, with its flag bit.
    for bad in (0, 9):
        with pytest.raises(TrailerError) as info:
            Trailer(post if rel is None else 0, bad).validate(h, version, offset=50)
        if rel is None:
            assert info.value.offset == 58


def test_trailer_encoding() -> None:
    t = Trailer(0x8000000000000001, 0x8000000000000002)
    raw = t.encode()
    assert raw == bytes.fromhex("8000000000000001" "8000000000000002")
    assert Trailer.decode(raw) == t


# --- Encoder rules -----------------------------------------------------------------------------

PG = bytes(512)


def _enc(commit: int, *, min_txid: int = 2, ps: int = 512, flags: int = 2,
         enc: PageEncoding = PageEncoding.LZ4_BLOCK) -> Encoder:
    h = Header(page_size=ps, commit=commit, min_txid=min_txid, max_txid=min_txid, flags=flags,
               pre_apply_checksum=0 if (flags & 2 or min_txid == 1) else CK)
    return Encoder(io.BytesIO(), h, page_encoding=enc, name="enc")


ENCODER_CASES: list[tuple[str, int, int, list[int], int]] = [
    # (why, commit, min txid, pages given in order, index of the page that must fail)
    ("out of order", 5, 2, [3, 2], 1),
    ("duplicate", 5, 2, [3, 3], 1),
    ("page 0", 5, 2, [0], 0),
    ("past commit", 5, 2, [1, 6], 1),
    ("commit 0 holds no pages", 0, 2, [1], 0),
    ("snapshot missing page 1", 5, 1, [2], 0),
    ("snapshot gap", 5, 1, [1, 2, 4], 2),
    ("lock page", lock_pgno(512) + 2, 2, [lock_pgno(512)], 0),
]


@pytest.mark.parametrize("encoding", list(PageEncoding), ids=[e.name for e in PageEncoding])
@pytest.mark.parametrize(("why", "commit", "min_txid", "pgnos", "bad_at"), ENCODER_CASES,
                         ids=[c[0] for c in ENCODER_CASES])
def test_encoder_page_rules(why: str, commit: int, min_txid: int, pgnos: list[int], bad_at: int,
                            encoding: PageEncoding) -> None:
    e = _enc(commit, min_txid=min_txid, enc=encoding)
    for p in pgnos[:bad_at]:
        e.encode_page(p, PG)
    with pytest.raises(PageFrameError) as info:
        e.encode_page(pgnos[bad_at], PG)
    assert info.value.name == "enc"


@pytest.mark.parametrize("length", [0, 511, 513, 1024])
def test_encoder_rejects_wrong_page_length(length: int) -> None:
    with pytest.raises(PageFrameError):
        _enc(3).encode_page(1, bytes(length))


def test_encoder_snapshot_must_reach_commit() -> None:
    e = _enc(3, min_txid=1)
    e.encode_page(1, PG)
    e.encode_page(2, PG)
    with pytest.raises(PageFrameError):
        e.finish()


def test_encoder_finish_rules() -> None:
    # Post-apply checksum required when checksums are tracked (non-snapshot).
    with pytest.raises(LTXError):
        _enc(1, flags=0).finish()
    # ...and it must carry the flag bit.
    with pytest.raises(TrailerError):
        _enc(1, flags=0).finish(5)
    # Not allowed with the no-checksum flag.
    with pytest.raises(TrailerError):
        _enc(1, flags=2).finish(FLAG | 5)
    # Finish once; no pages after finishing.
    e = _enc(1)
    e.finish()
    with pytest.raises(LTXError):
        e.finish()
    with pytest.raises(LTXError):
        e.encode_page(1, PG)


def test_encoder_snapshot_tracks_the_database_checksum() -> None:
    pages = [bytes([i]) * 512 for i in (1, 2, 3)]
    buf = io.BytesIO()
    e = Encoder(buf, Header(page_size=512, commit=3, min_txid=1, max_txid=1),
                track_checksum=True)
    for i, p in enumerate(pages, 1):
        e.encode_page(i, p)
    assert e.pages_checksum == 0xEFFFFFFFECD99000
    t = e.finish()  # a snapshot's post-apply defaults to the tracked checksum
    assert t.post_apply_checksum == 0xEFFFFFFFECD99000
    assert t.post_apply_checksum == combine_page_checksums(
        page_checksum(i, p) for i, p in enumerate(pages, 1))
    assert decode_v3(buf.getvalue())[2] == t
    assert e.page_count == 3


@pytest.mark.parametrize("encoding", list(PageEncoding), ids=[e.name for e in PageEncoding])
def test_sparse_file_across_the_lock_page(encoding: PageEncoding) -> None:
    lock = lock_pgno(512)
    assert lock == 2097153
    pages = [(1, bytes([1]) * 512), (2097152, bytes([2]) * 512), (2097154, bytes([3]) * 512)]
    h = Header(page_size=512, commit=2097160, min_txid=2, max_txid=2, flags=2)
    data, trailer = encode_v3(h, pages, encoding=encoding)
    assert decode_v3(data) == (h, pages, trailer)
    # The same pages with the lock page in between are refused by encoder and decoder.
    e = Encoder(io.BytesIO(), h, page_encoding=encoding)
    e.encode_page(2097152, PG)
    with pytest.raises(PageFrameError):
        e.encode_page(2097153, PG)
    bad, _ = ref_encode_v3(header_bytes(h), [make_frame(p, PG, encoding)
                                             for p in (2097152, 2097153, 2097154)], 0)
    with pytest.raises(PageFrameError) as info:
        decode_v3(bad, name="lock")
    assert "lock" in info.value.message


@pytest.mark.slow
@pytest.mark.parametrize("extra", [0, 1])
def test_snapshot_across_the_lock_page(extra: int) -> None:
    """A 1 GiB snapshot of 64 KiB zero pages: commit == lock page or just past it."""
    ps = 65536
    lock = lock_pgno(ps)
    commit = lock + extra
    h = Header(page_size=ps, commit=commit, min_txid=1, max_txid=3, flags=2)
    zero = bytes(ps)
    buf = io.BytesIO()
    e = Encoder(buf, h, track_checksum=True)
    for p in range(1, commit + 1):
        if p != lock:
            e.encode_page(p, zero)
    with pytest.raises(PageFrameError):
        e.encode_page(commit + 1, zero)
    trailer = e.finish()
    dec = Decoder(io.BytesIO(buf.getvalue()))
    last = 0
    n = 0
    for pgno, data in dec.pages():
        assert pgno != lock and pgno > last
        assert len(data) == ps
        last = pgno
        n += 1
    assert dec.trailer == trailer
    assert n == commit - 1
    assert last == (lock - 1 if extra == 0 else lock + 1)


# --- Decoder rules (files with valid checksums that break exactly one rule) -------------------

P1 = bytes([1]) * 512


def _hdr(commit: int = 5, min_txid: int = 2, flags: int = 2, ps: int = 512) -> bytes:
    return raw_header(page_size=ps, commit=commit, min_txid=min_txid, max_txid=min_txid,
                      flags=flags, pre_apply_checksum=0 if (flags & 2 or min_txid == 1) else CK)


def _frames(pgnos: list[int], enc: PageEncoding) -> list[Any]:
    return [make_frame(p, P1, enc) for p in pgnos]


@pytest.mark.parametrize("enc", list(PageEncoding), ids=[e.name for e in PageEncoding])
@pytest.mark.parametrize(
    ("why", "commit", "min_txid", "pgnos"),
    [
        ("out of order", 5, 2, [3, 2]),
        ("duplicate", 5, 2, [2, 2]),
        ("past commit", 5, 2, [6]),
        ("commit 0 with a page", 0, 2, [1]),
        ("snapshot missing page", 3, 1, [1, 3]),
        ("snapshot ends early", 3, 1, [1, 2]),
        ("snapshot without page 1", 2, 1, [2]),
        ("lock page", lock_pgno(512) + 1, 2, [lock_pgno(512)]),
    ],
)
def test_decoder_page_rules(why: str, commit: int, min_txid: int, pgnos: list[int],
                            enc: PageEncoding) -> None:
    data, _ = ref_encode_v3(_hdr(commit, min_txid), _frames(pgnos, enc), 0)
    with pytest.raises(PageFrameError) as info:
        decode_v3(data, name=why)
    assert info.value.name == why


def test_reference_writer_matches_encoder_for_a_valid_file() -> None:
    for enc in PageEncoding:
        h = Header(page_size=512, commit=5, min_txid=2, max_txid=2, flags=2)
        ours, _ = encode_v3(h, [(2, P1), (4, P1)], encoding=enc)
        ref, _ = ref_encode_v3(header_bytes(h), _frames([2, 4], enc), 0)
        assert ours == ref


def test_decoder_frame_rules() -> None:
    h = _hdr()
    cases: list[tuple[str, list[Any], type[LTXError]]] = [
        ("unknown page flags", [Frame(1, 2, b"", P1)], PageFrameError),
        ("unknown page flags 0x100", [Frame(1, 0x100, b"", P1)], PageFrameError),
        ("block inflating short", [block_frame(1, P1, payload=bytes(
            lz4.block.compress(bytes(256), store_size=False)))], PageFrameError),
        ("block inflating long", [block_frame(1, P1, payload=bytes(
            lz4.block.compress(bytes(1024), store_size=False)))], PageFrameError),
        ("frame inflating short", [legacy_frame(1, P1, payload=lz4_frame(bytes(256)))],
         PageFrameError),
        ("frame inflating long", [legacy_frame(1, P1, payload=lz4_frame(bytes(1024)))],
         PageFrameError),
        ("impossible compressed size", [block_frame(1, P1, payload=bytes(600))],
         PageFrameError),
        ("garbage block", [block_frame(1, P1, payload=b"\xff" * 40)], PageFrameError),
        ("not an lz4 frame", [legacy_frame(1, P1, payload=b"\x00" * 40)], PageFrameError),
    ]
    for why, frames, exc in cases:
        data, _ = ref_encode_v3(h, frames, 0)
        with pytest.raises(exc) as info:
            decode_v3(data, name=why)
        assert info.value.name == why, why


def test_decoder_accepts_other_lz4_frame_parameters() -> None:
    """Page flag 0 is 'one complete LZ4 frame': content size, block checksums, other block
    sizes and linked blocks are all valid frames."""
    page = bytes(range(256)) * 256  # 64 KiB
    h = raw_header(page_size=65536, commit=1, min_txid=2, max_txid=2, flags=2)
    variants: list[dict[str, Any]] = [
        {},
        {"store_size": True},
        {"block_checksum": True},
        {"content_checksum": False},
        {"block_size": lz4.frame.BLOCKSIZE_MAX4MB, "block_linked": True},
        {"block_size": lz4.frame.BLOCKSIZE_MAX64KB, "store_size": True, "block_checksum": True},
    ]
    for kw in variants:
        fr = lz4_frame(page, **kw)
        assert lz4.frame.decompress(fr) == page
        data, _ = ref_encode_v3(h, [legacy_frame(1, page, payload=fr)], 0)
        assert decode_v3(data)[1] == [(1, page)], kw


def test_decoder_end_marker_and_index_rules() -> None:
    h = _hdr()
    frames = _frames([1, 3], PageEncoding.LZ4_BLOCK)
    good, layout = ref_encode_v3(h, frames, 0)
    decode_v3(good)
    index = good[layout.index:layout.index_len]
    e1 = uvarint(1) + uvarint(layout.frames[0][0]) + uvarint(layout.frames[0][2]
                                                            - layout.frames[0][0])
    e3 = uvarint(3) + uvarint(layout.frames[1][0]) + uvarint(layout.frames[1][2]
                                                            - layout.frames[1][0])
    assert index == e1 + e3 + b"\x00"
    cases: list[tuple[str, dict[str, Any], type[LTXError]]] = [
        ("end marker with flags", {"end_marker": bytes(4) + b"\x00\x01"}, PageFrameError),
        ("index entries swapped", {"index": e3 + e1 + b"\x00"}, PageIndexError),
        ("index entry missing", {"index": e1 + b"\x00"}, PageIndexError),
        ("index extra entry", {"index": e1 + e3 + uvarint(4) + uvarint(1) + uvarint(1)
                               + b"\x00"}, PageIndexError),
        ("index without terminator", {"index": e1 + e3}, PageIndexError),
        ("index wrong offset", {"index": e1 + uvarint(3) + uvarint(layout.frames[1][0] + 1)
                                + uvarint(layout.frames[1][2] - layout.frames[1][0])
                                + b"\x00"}, PageIndexError),
        ("index wrong size", {"index": e1[:-1] + bytes([e1[-1] + 1]) + e3 + b"\x00"},
         PageIndexError),
        ("index length too small", {"index_length": len(index) - 1}, PageIndexError),
        ("index length too large", {"index_length": len(index) + 1}, PageIndexError),
        ("index length huge", {"index_length": 2**63}, PageIndexError),
        ("post-apply with no-checksum flag", {}, TrailerError),
        ("file checksum zero", {"file_checksum": 0}, TrailerError),
        ("file checksum without flag", {"file_checksum": 12345}, TrailerError),
        ("trailing data", {"extra": b"\x00"}, LTXError),
    ]
    for why, kw, exc in cases:
        post = FLAG | 1 if why.startswith("post-apply") else 0
        data, _ = ref_encode_v3(h, frames, post, **kw)
        with pytest.raises(exc) as info:
            decode_v3(data, name=why)
        assert info.value.name == why, why


def test_decoder_checksummed_file_needs_post_apply() -> None:
    h = _hdr(flags=0)
    frames = _frames([2], PageEncoding.LZ4_BLOCK)
    decode_v3(ref_encode_v3(h, frames, FLAG | 7)[0])
    for post in (0, 7):
        with pytest.raises(TrailerError):
            decode_v3(ref_encode_v3(h, frames, post)[0])


def test_decoder_pages_can_be_iterated_once_and_trailer_set_only_at_end() -> None:
    h = Header(page_size=512, commit=2, min_txid=1, max_txid=1, flags=2)
    data, trailer = encode_v3(h, [(1, P1), (2, P1)])
    dec = Decoder(io.BytesIO(data))
    it = dec.pages()
    next(it)
    assert dec.trailer is None
    rest = list(it)
    assert len(rest) == 1 and dec.trailer == trailer
    with pytest.raises(LTXError):
        list(dec.pages())


def test_truncated_header() -> None:
    for n in (0, 1, 4, 99):
        with pytest.raises(TruncatedError) as info:
            Decoder(io.BytesIO(raw_header()[:n]), name="h")
        assert info.value.name == "h"


def test_header_struct_matches_formats_table() -> None:
    raw = raw_header(page_size=4096, commit=7, min_txid=1, max_txid=1)
    assert struct.unpack_from(">I", raw, 8)[0] == 4096
    assert Header.decode(raw).page_size == 4096
