"""The compiled hot loops (litefs_py/ltx/_frames.c) against the pure Python code they replace.

tests/ltx runs every codec test once per path (its conftest's `codec_path`); here the two paths
decode the same damaged files side by side and must agree exactly: same pages and trailer, or
the same error type, message and offset. The C loop is also fed arbitrary bytes directly,
which must never crash the interpreter.
"""

from __future__ import annotations

import io
import random
import subprocess
import sys

import lz4.block
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litefs_py.ltx import (
    Decoder,
    Header,
    LTXError,
    PageEncoding,
    crc64,
    decoder,
    encoder,
    varint,
)
from litefs_py.ltx._frames import crc64_iso, decode_frames, encode_index, xxh32
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
        data = encode_v3(header, [(1, random.Random(1).randbytes(ps)),
                                  (2, random.Random(2).randbytes(ps))],
                         encoding=PageEncoding.LZ4_FRAME)[0]
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
