"""The compiled hot loops (litefs_py/ltx/_frames.c) against the pure Python code they replace.

tests/ltx runs every codec test once per path (its conftest's `codec_path`); here the two paths
decode the same damaged files side by side and must agree exactly: same pages and trailer, or
the same error type, message and offset. The C loop is also fed arbitrary bytes directly,
which must never crash the interpreter.
"""

from __future__ import annotations

import array
import io
import random
import struct
import subprocess
import sys
from collections.abc import Callable

import lz4.block
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litefs_py.ltx import (
    CHECKSUM_FLAG,
    DecodedFile,
    Decoder,
    Encoder,
    Header,
    LTXError,
    PageEncoding,
    Trailer,
    compiled,
    crc64,
    decode_bytes,
    decoder,
    encode_bytes,
    encoder,
    page_encoding,
    varint,
)
from litefs_py.ltx._frames import crc64_iso, decode_file, decode_frames, encode_index, xxh32
from tests.ltx.helpers import encode_v3

PS = 512


def _outcome(data: bytes) -> tuple[object, ...]:
    try:
        dec = Decoder(io.BytesIO(data), name="x.ltx")
        pages = list(dec.pages())
        return ("ok", pages, dec.trailer, dec.index)
    except LTXError as exc:
        return ("error", type(exc).__name__, str(exc), exc.offset)


def _both(data: bytes) -> tuple[tuple[object, ...], tuple[object, ...]]:
    compiled = _outcome(data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decoder, "_compiled_frames", None)
        mp.setattr(decoder, "encode_index", varint.encode_index_py)
        pure = _outcome(data)
    return compiled, pure


def _sample(rnd: random.Random, encoding: PageEncoding, snapshot: bool) -> bytes:
    count = rnd.randrange(1, 12)
    pgnos = list(range(1, count + 1)) if snapshot else sorted(rnd.sample(range(1, 40), count))
    pages = []
    for pgno in pgnos:
        kind = rnd.randrange(3)
        page = (rnd.randbytes(PS) if kind == 0 else bytes(PS) if kind == 1
                else (rnd.randbytes(7) * PS)[:PS])
        pages.append((pgno, page))
    commit = pgnos[-1] if snapshot else 40
    header = Header(page_size=PS, commit=commit, min_txid=1 if snapshot else 5,
                    max_txid=1 if snapshot else 5, timestamp=1, flags=2)
    return encode_v3(header, pages, encoding=encoding)[0]


@settings(max_examples=400, deadline=None)
@given(seed=st.integers(0, 2**32), encoding=st.sampled_from(list(PageEncoding)),
       snapshot=st.booleans(), edits=st.lists(
           st.tuples(st.sampled_from(["pgno", "flags", "size", "tail", "flip", "cut", "insert",
                                      "delete"]),
                     st.integers(0, 2**16), st.integers(0, 255)),
           min_size=0, max_size=3))
def test_compiled_and_pure_decoders_agree_on_damaged_files(
        seed: int, encoding: PageEncoding, snapshot: bool,
        edits: list[tuple[str, int, int]]) -> None:
    original = _sample(random.Random(seed), encoding, snapshot)
    dec = Decoder(io.BytesIO(original))
    dec.verify()
    frames = dec.index
    data = bytearray(original)
    for op, where, value in edits:
        # Mostly structural damage to the frames, which is what the compiled loop reads.
        frame = frames[where % len(frames)]
        at = frame.offset
        if at + frame.size > len(data):
            continue  # an earlier cut removed this frame
        if op == "pgno":  # a gap, out of order, a repeat, past the commit, the end marker
            pgno = max(0, frame.pgno + value % 7 - 3) if value < 200 else value % 45
            data[at:at + 4] = pgno.to_bytes(4, "big")
        elif op == "flags":
            data[at + 4:at + 6] = (value % 3).to_bytes(2, "big")
        elif op == "size":  # the LZ4 block size prefix, or the legacy frame's block size
            spot = at + 6 if encoding is PageEncoding.LZ4_BLOCK else at + 13
            data[spot + (value % 4)] ^= 1 << (value % 8)
        elif op == "tail":  # a frame's last bytes: the legacy content checksum, or payload
            data[at + frame.size - 1 - value % 4] ^= 1 << (value % 8)
        else:
            at = 100 + where % max(1, len(data) - 100)
            if op == "flip" and at < len(data):
                data[at] ^= value or 1
            elif op == "cut":
                del data[at:]
            elif op == "insert":
                data[at:at] = bytes([value]) * (value % 7 + 1)
            elif op == "delete":
                del data[at:at + value % 9 + 1]
    compiled, pure = _both(bytes(data))
    assert compiled == pure


def test_undamaged_files_decode_on_the_compiled_path() -> None:
    """The fast path is actually taken (the index entries it writes are tuples it built)."""
    for encoding in PageEncoding:
        data = _sample(random.Random(7), encoding, True)
        pages: list[tuple[int, bytes]] = []
        entries: list[tuple[int, int, int]] = []
        pos, last, _crc = decode_frames(data, 100, PS, 11, 2**21, True, 0, 100, crc64(data[:100]),
                                        lz4.block.decompress, crc64, 1000, pages, entries)
        assert last == len(pages) > 0
        assert data[pos:pos + 6] == bytes(6)  # stopped at the end-of-pages marker
        assert [p for p, _ in pages] == list(range(1, last + 1))
        compiled, pure = _both(data)
        assert compiled == pure and compiled[0] == "ok"


@settings(max_examples=500, deadline=None)
@given(buf=st.binary(max_size=3000), pos=st.integers(0, 3100), last=st.integers(0, 50),
       snapshot=st.booleans(), batch=st.integers(0, 5))
def test_arbitrary_bytes_never_crash_the_compiled_loop(buf: bytes, pos: int, last: int,
                                                       snapshot: bool, batch: int) -> None:
    pages: list[tuple[int, bytes]] = []
    entries: list[tuple[int, int, int]] = []
    if pos > len(buf):
        pos = len(buf)
    new_pos, new_last, _ = decode_frames(buf, pos, PS, 60, 2**21, snapshot, last, 0, 0,
                                         lz4.block.decompress, crc64, batch, pages, entries)
    assert pos <= new_pos <= len(buf) and len(pages) == len(entries) <= batch
    assert all(len(page) == PS for _, page in pages)
    assert new_last == (pages[-1][0] if pages else last)


@given(data=st.binary(max_size=300), crc=st.integers(0, 2**64 - 1))
def test_crc64_matches_fastcrc(data: bytes, crc: int) -> None:
    assert crc64_iso(data, crc) == crc64(data, crc)


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
                          st.integers(0, 2**64 - 1)), max_size=40))
def test_index_encoding_matches_pure(entries: list[tuple[int, int, int]]) -> None:
    assert encode_index(entries) == varint.encode_index_py(entries)


def test_index_encoding_rejects_bad_entries() -> None:
    with pytest.raises(TypeError):
        encode_index([(1, 2)])  # type: ignore[list-item]
    with pytest.raises(OverflowError):
        encode_index([(1, 2, -3)])


def test_version_says_the_compiled_modules_are_in_use() -> None:
    done = subprocess.run([sys.executable, "-m", "litefs_py", "version"], capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.splitlines()[1:] == ["ltx codec: compiled (litefs_py/ltx/_frames.c)",
                                            "wal checksum: compiled (litefs_py/sqlite/_walsum.c)"]


def _literal_lz4_frame(page: bytes) -> bytes:
    """A legal LZ4 block that stores the page as one literal run: 65,794 bytes for a 64 KiB
    page, more than the frame header's 64 KiB maximum block size."""
    rest, ext = len(page) - 15, []
    while rest >= 255:
        ext.append(255)
        rest -= 255
    block = bytes([0xF0, *ext, rest]) + page
    return (b"\x04\x22\x4d\x18\x64\x40\xa7" + len(block).to_bytes(4, "little") + block + bytes(4)
            + xxh32(page).to_bytes(4, "little"))


def test_oversized_legacy_block_is_refused_on_both_paths() -> None:
    """Found in review: with 64 KiB pages the C loop accepted a legacy block over the frame's
    64 KiB block maximum, which LZ4F (the pure path) rejects."""
    ps = 65536
    header = Header(page_size=ps, commit=2, min_txid=1, max_txid=1, timestamp=1, flags=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(encoder, "compress_frame", _literal_lz4_frame)
        out = io.BytesIO()
        enc = Encoder(out, header, page_encoding=PageEncoding.LZ4_FRAME)
        enc.encode_page(1, random.Random(1).randbytes(ps))  # page by page: compress_frame
        enc.encode_page(2, random.Random(2).randbytes(ps))
        enc.finish()
        data = out.getvalue()
    compiled, pure = _both(data)
    assert compiled == pure
    assert compiled[:2] == ("error", "PageFrameError") and "maxBlockSize" in str(compiled[2])


@pytest.mark.parametrize("page_size", [0, 256, 65537, 2**32 + 4096])
def test_page_sizes_outside_ltx_rules_are_refused(page_size: int) -> None:
    with pytest.raises((ValueError, OverflowError)):
        decode_frames(bytes(100), 0, page_size, 1, 2, True, 0, 0, 0, lz4.block.decompress,
                      crc64, 10, [], [])


def test_lists_are_cut_back_when_an_error_propagates() -> None:
    data = _sample(random.Random(7), PageEncoding.LZ4_BLOCK, True)
    calls = []

    def failing_crc(page: bytes, crc: int) -> int:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # not about the file: must propagate
        return crc64(page, crc)

    pages: list[tuple[int, bytes]] = [(0, b"kept")]
    entries: list[tuple[int, int, int]] = [(0, 0, 0)]
    with pytest.raises(KeyboardInterrupt):
        decode_frames(data, 100, PS, 11, 2**21, True, 0, 100, 0, lz4.block.decompress,
                      failing_crc, 1000, pages, entries)
    assert pages == [(0, b"kept")] and entries == [(0, 0, 0)]


# --- the one-call file functions (decode_bytes, encode_bytes) and Encoder.encode_pages ------

_U64 = struct.Struct(">Q")


def _raw_ltx(fields: dict[str, int], pages: list[tuple[int, bytes]], post: int, *,
             legacy: bool = False, index_edit: int | None = None, end: bytes = bytes(6)) -> bytes:
    """An LTX v3 file written without any rule checks, but with a correct file checksum, so
    that only the rules (not the checksum) can refuse it."""
    header = Header(**{"page_size": PS, "commit": 40, "min_txid": 5, "max_txid": 5,
                       **fields}).encode()
    body, crc, entries = bytearray(header), crc64(header), []
    for pgno, page in pages:
        if legacy:
            head, payload = struct.pack(">IH", pgno, 0), page_encoding.compress_frame(page)
        else:
            payload = lz4.block.compress(page, store_size=False)
            head = struct.pack(">IHI", pgno, 1, len(payload))
        entries.append((pgno, len(body), len(head) + len(payload)))
        body += head + payload
        crc = crc64(page, crc64(head, crc))
    index = bytearray(varint.encode_index_py(entries))
    if index_edit is not None:
        index[index_edit % len(index)] ^= 1 + index_edit % 127
    tail = end + bytes(index) + _U64.pack(len(index)) + _U64.pack(post)
    crc = crc64(tail, crc)
    return bytes(body + tail + _U64.pack(CHECKSUM_FLAG | crc))


def _decode_outcome(fn: Callable[[], tuple[object, ...]]) -> tuple[object, ...]:
    try:
        return ("ok", *fn())
    except LTXError as exc:
        return ("error", type(exc).__name__, str(exc), exc.offset)


def _pure_decode(data: bytes) -> tuple[object, ...]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decoder, "_compiled_frames", None)
        mp.setattr(decoder, "encode_index", varint.encode_index_py)

        def streaming() -> tuple[object, ...]:
            dec = Decoder(io.BytesIO(data), name="x.ltx")
            pages = list(dec.pages())
            return (dec.header, pages, dec.trailer)

        return _decode_outcome(streaming)


_FLAGGED = CHECKSUM_FLAG | 12345
_FIELD_VALUES = {
    "flags": [0, 2, 1, 3, 0x102],
    "page_size": [PS, 1024, 256, 513, 131072],
    "commit": [40, 0, 3, 2**32 - 1],
    "min_txid": [5, 1, 0, 6, 2**64 - 1],
    "max_txid": [5, 0, 4, 9],
    "pre_apply_checksum": [0, _FLAGGED, 12345],
    "wal_offset": [0, 32, -1],
    "wal_size": [0, 4096, -5],
    "wal_salt1": [0, 7],
    "wal_salt2": [0, 9],
    "timestamp": [1, -1, 2**63 - 1],
    "node_id": [0, 2**64 - 1],
}
# Few edits at a time from a valid base (no-checksum flag, post-apply checksum 0, page numbers
# in order), so that one broken rule is often the only one: a C check that is missing then
# shows up as a file the C code accepts and the pure code refuses.
_field_edits = st.dictionaries(st.sampled_from(sorted(_FIELD_VALUES)), st.integers(0, 4),
                               max_size=2).map(
    lambda picks: {"flags": 2} | {k: _FIELD_VALUES[k][i % len(_FIELD_VALUES[k])]
                                  for k, i in picks.items()})
_pgnos = st.one_of(
    st.lists(st.sampled_from([1, 2, 3, 4, 5, 39, 40]), max_size=5, unique=True).map(sorted),
    st.lists(st.sampled_from([0, 1, 2, 3, 4, 5, 39, 40, 41]), max_size=5))


@settings(max_examples=800, deadline=None)
@given(fields=_field_edits, pgnos=_pgnos, post=st.sampled_from([0, 0, _FLAGGED, 77]),
       legacy=st.booleans(), index_edit=st.none() | st.none() | st.integers(0, 200),
       end=st.sampled_from([bytes(6), bytes(6), b"\0\0\0\0\0\1", b"\0\0\0\1\0\0"]),
       seed=st.integers(0, 2**16))
def test_decode_bytes_agrees_with_the_pure_decoder_on_every_rule(
        fields: dict[str, int], pgnos: list[int], post: int, legacy: bool,
        index_edit: int | None, end: bytes, seed: int) -> None:
    """Files whose checksum is right but whose header, page numbers, end marker, index or
    trailer may break a rule: the C file decoder must accept exactly what the pure decoder
    accepts, and give the same error otherwise (it hands every file it refuses to the
    streaming decoder)."""
    rnd = random.Random(seed)
    ps = fields.get("page_size", PS)
    page_len = ps if 512 <= ps <= 65536 else PS
    pages = [(pgno, rnd.randbytes(page_len) if pgno % 2 else bytes(page_len)) for pgno in pgnos]
    data = _raw_ltx(fields, pages, post, legacy=legacy, index_edit=index_edit, end=end)
    compiled = _decode_outcome(lambda: tuple(decode_bytes(data, name="x.ltx")))
    assert compiled == _pure_decode(data)


def test_decode_bytes_takes_the_compiled_path_for_usual_files() -> None:
    for legacy in (False, True):
        pages = [(1, bytes(PS)), (2, random.Random(2).randbytes(PS))]
        data = _raw_ltx({"min_txid": 1, "max_txid": 3, "commit": 2, "flags": 2}, pages, 0,
                        legacy=legacy)
        done = decode_file(data)
        assert isinstance(done, DecodedFile) and done.pages == pages
        assert type(done.header) is Header and type(done.trailer) is Trailer
        assert _decode_outcome(lambda d=done: tuple(d)) == _pure_decode(data)
        assert decode_file(data[:-1]) is None and decode_file(bytearray(data)) is None


@settings(max_examples=300, deadline=None)
@given(buf=st.binary(max_size=400), head=st.booleans())
def test_arbitrary_bytes_never_crash_the_file_decoder(buf: bytes, head: bool) -> None:
    data = (Header(page_size=PS, commit=3, min_txid=1, max_txid=1, flags=2).encode() + buf
            if head else buf)
    assert decode_file(data) is None or _pure_decode(data)[0] == "ok"


def _encode_outcome(fn: Callable[[], bytes]) -> tuple[object, ...]:
    try:
        return ("ok", fn())
    except LTXError as exc:
        return ("error", type(exc).__name__, str(exc), exc.offset)


def _pure_encode(header: Header, pages: list[tuple[int, bytes]], post: int | None,
                 encoding: PageEncoding, track: bool) -> bytes:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(page_encoding, "_xxh32", None)
        mp.setattr(encoder, "encode_index", varint.encode_index_py)
        out = io.BytesIO()
        enc = Encoder(out, header, page_encoding=encoding, track_checksum=track, name="x.ltx")
        for pgno, data in pages:
            enc.encode_page(pgno, data)
        enc.finish(post)
        return out.getvalue()


@settings(max_examples=800, deadline=None)
@given(fields=_field_edits, pgnos=_pgnos, short=st.integers(0, 12),
       post=st.sampled_from([None, 0, 0, _FLAGGED, 77]),
       encoding=st.sampled_from(list(PageEncoding)), track=st.booleans(),
       seed=st.integers(0, 2**16))
def test_encode_bytes_agrees_with_the_pure_encoder(
        fields: dict[str, int], pgnos: list[int], short: int, post: int | None,
        encoding: PageEncoding, track: bool, seed: int) -> None:
    """Same bytes as the streaming Encoder, or the same error, for headers, page numbers,
    page sizes and post-apply checksums that may break a rule."""
    rnd = random.Random(seed)
    header = Header(**{"page_size": PS, "commit": 40, "min_txid": 5, "max_txid": 5, **fields})
    page_len = header.page_size if 512 <= header.page_size <= 65536 else PS
    pages = [(pgno, rnd.randbytes(page_len - (i == short) * 3) if pgno % 2 else
              bytes(page_len)) for i, pgno in enumerate(pgnos)]
    compiled = _encode_outcome(lambda: encode_bytes(header, pages, post, page_encoding=encoding,
                                                    track_checksum=track, name="x.ltx"))
    assert compiled == _encode_outcome(lambda: _pure_encode(header, pages, post, encoding, track))


@settings(max_examples=300, deadline=None)
@given(pgnos=st.lists(st.integers(0, 45), max_size=12), snapshot=st.booleans(),
       encoding=st.sampled_from(list(PageEncoding)), split=st.integers(0, 12),
       bad_size=st.none() | st.integers(0, 11))
def test_encode_pages_matches_encode_page(pgnos: list[int], snapshot: bool,
                                          encoding: PageEncoding, split: int,
                                          bad_size: int | None) -> None:
    """Batches through the C page loop give the bytes, index, checksums and errors of the
    page-at-a-time loop, also when a batch holds a page that breaks a rule."""
    pages = [(p, (bytes([p]) * (PS - 4 * (i == bad_size))) if p % 3 else bytes(PS))
             for i, p in enumerate(pgnos)]
    header = Header(page_size=PS, commit=40, min_txid=1 if snapshot else 5,
                    max_txid=1 if snapshot else 5, flags=2)

    def run(batched: bool) -> tuple[object, ...]:
        out = io.BytesIO()
        enc = Encoder(out, header, page_encoding=encoding, track_checksum=True)
        try:
            if batched:
                enc.encode_pages(pages[:split])
                enc.encode_pages(pages[split:])
            else:
                for pgno, data in pages:
                    enc.encode_page(pgno, data)
            error: tuple[object, ...] = ()
        except LTXError as exc:
            error = (type(exc).__name__, str(exc), exc.offset)
        return (out.getvalue(), error, enc.page_count, enc._index, enc.pages_checksum,
                enc._crc, enc._last_pgno)

    assert run(True) == run(False)


def test_decode_bytes_hands_what_it_refuses_to_the_streaming_decoder() -> None:
    """The pure decode_bytes (used without the compiled module, and for every file the C code
    refuses) gives the same result and errors; the compiled one takes only its signature."""
    data = _raw_ltx({"flags": 2}, [(3, bytes(PS)), (7, random.Random(1).randbytes(PS))], 0)
    assert decoder.decode_bytes_streaming(data) == decode_bytes(data)
    with pytest.raises(LTXError) as pure:
        decoder.decode_bytes_streaming(data[:-3], name="x.ltx")
    with pytest.raises(LTXError) as compiled:
        decode_bytes(data[:-3], name="x.ltx")
    assert (type(compiled.value), str(compiled.value)) == (type(pure.value), str(pure.value))
    assert "x.ltx" in str(compiled.value)
    assert decode_bytes(bytearray(data)) == decode_bytes(data)  # not bytes: the streaming path
    for bad in ((), (data, data), ):
        with pytest.raises(TypeError):
            decode_bytes(*bad)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        decode_bytes(data, nam="x")  # type: ignore[call-arg]


def _error_of(fn: Callable[[], object]) -> tuple[str, str]:
    try:
        fn()
    except Exception as exc:  # the type is what is compared
        return type(exc).__name__, str(exc)
    return "ok", ""


def test_encoders_refuse_like_the_encoder_found_in_review() -> None:
    """Found in review: encode_bytes raised OverflowError for a post-apply checksum that does
    not fit before looking at the pages, and the C loop measured pages in bytes where the
    Encoder uses len() (array('I') of 4 KiB has len 1024)."""
    header = Header(page_size=PS, commit=40, min_txid=5, max_txid=5, flags=2)
    good = bytes(PS)
    cases: list[tuple[list[tuple[int, object]], object]] = [
        ([(2, good), (1, good)], -1),  # the page error comes first, as in the Encoder
        ([(1, good)], 2**64),
        ([(1, array.array("I", bytes(PS)))], 0),
        ([(1, memoryview(bytes(PS)).cast("Q"))], 0),
    ]
    for pages, post in cases:
        def streaming(pages: list[tuple[int, object]] = pages, post: object = post) -> None:
            enc = Encoder(io.BytesIO(), header)
            for pgno, data in pages:
                enc.encode_page(pgno, data)  # type: ignore[arg-type]
            enc.finish(post)  # type: ignore[arg-type]

        def batched(pages: list[tuple[int, object]] = pages, post: object = post) -> None:
            enc = Encoder(io.BytesIO(), header)
            enc.encode_pages(tuple(pages))  # type: ignore[arg-type]
            enc.finish(post)  # type: ignore[arg-type]

        want = _error_of(streaming)
        assert want[0] != "ok"
        assert _error_of(lambda p=pages, q=post: encode_bytes(header, p, q)) == want  # type: ignore[misc]
        assert _error_of(batched) == want


def test_the_compiled_module_is_configured_once() -> None:
    """Later configure() calls change nothing (the functions hold borrowed references to what
    the first call gave them)."""
    frames = compiled.frames
    assert frames is not None
    assert frames.configure(len, len, len, Header, Trailer, DecodedFile, len) is False
    data = _raw_ltx({"flags": 2}, [(1, bytes(PS))], 0)
    assert decode_bytes(data).pages == [(1, bytes(PS))]
