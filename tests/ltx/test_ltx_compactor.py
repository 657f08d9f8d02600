"""Compaction: applying the compacted file equals applying its inputs one by one."""

from __future__ import annotations

import io
import random
import tempfile
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litefs_py.ltx import (
    EMPTY_DATABASE_CHECKSUM,
    CompactionError,
    Decoder,
    Header,
    LTXError,
    PageEncoding,
    apply_ltx,
    compact,
    database_checksum,
    lock_pgno,
)

from .helpers import FLAG, decode_v3, encode_v3, frame_flags

LTX = settings.get_profile("ltx")


def db_checksum(db: bytes, ps: int) -> int:
    return database_checksum(io.BytesIO(db), ps)


def model_apply(db: bytes, ps: int, commit: int, pages: list[tuple[int, bytes]]) -> bytes:
    out = bytearray(db[:commit * ps])
    out += bytes(commit * ps - len(out))
    for pgno, data in pages:
        out[(pgno - 1) * ps:pgno * ps] = data
    return bytes(out)


def apply_files(base: bytes, files: list[bytes]) -> bytes:
    with tempfile.TemporaryFile() as db:
        db.write(base)
        for data in files:
            apply_ltx(db, io.BytesIO(data))
        db.seek(0)
        return db.read()


@dataclass
class History:
    page_size: int
    checksums: bool
    base: bytes
    files: list[bytes]
    headers: list[Header]
    final: bytes  # model database after every file
    encoding: PageEncoding


@st.composite
def histories(draw: st.DrawFn) -> History:
    ps = draw(st.sampled_from([512, 1024, 4096]))
    checksums = draw(st.booleans())
    encoding = draw(st.sampled_from(list(PageEncoding)))
    rnd = random.Random(draw(st.integers(0, 2**32)))

    def page() -> bytes:
        kind = rnd.randrange(4)
        if kind == 0:
            return bytes(ps)
        if kind == 1:
            return bytes([rnd.randrange(1, 256)]) * ps
        if kind == 2:
            return rnd.randbytes(ps)
        return bytes(ps // 2) + rnd.randbytes(ps // 2)

    snapshot_first = draw(st.booleans())
    base = b"".join(page() for _ in range(draw(st.integers(0, 12))))
    db = base
    txid = 1 if snapshot_first else draw(st.integers(2, 1000))
    files, headers = [], []
    timestamp = draw(st.integers(0, 2**40))
    for i in range(draw(st.integers(1, 6))):
        snap = snapshot_first and i == 0
        commit = draw(st.integers(0, 16))
        if snap:
            pgnos = list(range(1, commit + 1))
        else:
            pgnos = sorted(draw(st.sets(st.integers(1, max(commit, 1)), max_size=6))) \
                if commit else []
        pages = [(p, page()) for p in pgnos]
        span = draw(st.integers(0, 2))
        pre = 0 if (snap or not checksums) else db_checksum(db, ps)
        db = model_apply(db, ps, commit, pages)
        post = db_checksum(db, ps) if checksums else None
        timestamp += draw(st.integers(0, 5000))
        h = Header(page_size=ps, commit=commit, min_txid=txid, max_txid=txid + span,
                   timestamp=timestamp, pre_apply_checksum=pre, flags=0 if checksums else 2,
                   node_id=draw(st.integers(0, 3)))
        data, trailer = encode_v3(h, pages, encoding=draw(st.sampled_from(list(PageEncoding))),
                                  post=post)
        if checksums:
            assert trailer.post_apply_checksum == post
        files.append(data)
        headers.append(h)
        txid += span + 1
    return History(ps, checksums, base, files, headers, db, encoding)


@settings(LTX, max_examples=200)
@given(histories())
def test_compacted_file_applies_like_its_inputs(hist: History) -> None:
    ps = hist.page_size
    # The inputs themselves, applied one by one to a real file, give the model database.
    sequential = apply_files(hist.base, hist.files)
    assert sequential == hist.final

    out = io.BytesIO()
    names = [f"in{i}.ltx" for i in range(len(hist.files))]
    header, trailer = compact([io.BytesIO(f) for f in hist.files], out, names=names,
                              page_encoding=hist.encoding)
    data = out.getvalue()
    dec_header, pages, dec_trailer = decode_v3(data, name="compacted")
    assert (dec_header, dec_trailer) == (header, trailer)
    first, last = hist.headers[0], hist.headers[-1]
    assert header.page_size == ps
    assert (header.min_txid, header.max_txid) == (first.min_txid, last.max_txid)
    assert header.commit == last.commit
    assert header.timestamp == last.timestamp
    assert header.node_id == last.node_id
    assert (header.wal_offset, header.wal_size, header.wal_salt1, header.wal_salt2) == (0,) * 4
    assert header.is_snapshot == first.is_snapshot
    assert set(frame_flags(data)) <= {int(hist.encoding)}

    compacted = apply_files(hist.base, [data])
    assert compacted == sequential

    if hist.checksums:
        assert header.flags == 0
        assert header.pre_apply_checksum == first.pre_apply_checksum
        if not first.is_snapshot:
            assert header.pre_apply_checksum == db_checksum(hist.base, ps)
        assert trailer.post_apply_checksum == db_checksum(compacted, ps)
    else:
        assert header.no_checksum
        assert header.pre_apply_checksum == 0 and trailer.post_apply_checksum == 0

    # A compacted snapshot is a whole database on its own.
    if first.is_snapshot:
        assert [p for p, _ in pages] == list(range(1, header.commit + 1))
        assert apply_files(b"", [data]) == sequential


def _file(min_txid: int, max_txid: int, commit: int, pages: list[tuple[int, bytes]], *,
          ps: int = 512, flags: int = 2, pre: int = 0, post: int | None = None,
          timestamp: int = 0) -> bytes:
    h = Header(page_size=ps, commit=commit, min_txid=min_txid, max_txid=max_txid, flags=flags,
               pre_apply_checksum=pre, timestamp=timestamp)
    return encode_v3(h, pages, post=post)[0]


def test_shrink_then_regrow_gives_explicit_zero_pages() -> None:
    a = bytes([0xAA]) * 512
    files = [
        _file(1, 1, 6, [(p, a) for p in range(1, 7)]),  # snapshot of 6 pages
        _file(2, 2, 2, [(1, bytes([1]) * 512)]),  # shrink to 2 pages
        _file(3, 3, 8, [(7, bytes([7]) * 512)]),  # regrow to 8, only page 7 written
    ]
    out = io.BytesIO()
    compact([io.BytesIO(f) for f in files], out)
    _, pages, _ = decode_v3(out.getvalue())
    got = dict(pages)
    assert sorted(got) == list(range(1, 9))
    assert got[1] == bytes([1]) * 512 and got[2] == a
    for p in (3, 4, 5, 6, 8):
        assert got[p] == bytes(512), p
    assert got[7] == bytes([7]) * 512
    assert apply_files(b"", [out.getvalue()]) == apply_files(b"", files)


def test_compaction_fills_zeros_across_the_lock_page() -> None:
    lock = lock_pgno(512)
    files = [
        _file(5, 5, lock - 3, [(1, bytes([1]) * 512)]),
        _file(6, 6, lock + 7, [(lock + 7, bytes([2]) * 512)]),
    ]
    out = io.BytesIO()
    header, _ = compact([io.BytesIO(f) for f in files], out)
    assert header.commit == lock + 7
    _, pages, _ = decode_v3(out.getvalue())
    pgnos = [p for p, _ in pages]
    assert pgnos == [1, *[p for p in range(lock - 2, lock + 7) if p != lock], lock + 7]
    assert all(d == bytes(512) for p, d in pages if lock - 2 <= p < lock + 7)


def test_compaction_drops_pages_truncated_later() -> None:
    files = [
        _file(2, 2, 10, [(9, bytes([9]) * 512), (10, bytes([10]) * 512)]),
        _file(3, 3, 5, [(2, bytes([2]) * 512)]),
    ]
    out = io.BytesIO()
    header, _ = compact([io.BytesIO(f) for f in files], out)
    _, pages, _ = decode_v3(out.getvalue())
    assert [p for p, _ in pages] == [2] and header.commit == 5


def test_newest_version_of_a_page_wins() -> None:
    files = [_file(t, t, 3, [(2, bytes([t]) * 512)]) for t in range(2, 7)]
    out = io.BytesIO()
    compact([io.BytesIO(f) for f in files], out)
    assert decode_v3(out.getvalue())[1] == [(2, bytes([6]) * 512)]


def test_checksum_options() -> None:
    base = bytes([3]) * 1024
    ck0 = db_checksum(base, 512)
    db1 = model_apply(base, 512, 2, [(1, bytes([1]) * 512)])
    db2 = model_apply(db1, 512, 3, [(3, bytes([5]) * 512)])
    f1 = _file(2, 2, 2, [(1, bytes([1]) * 512)], flags=0, pre=ck0, post=db_checksum(db1, 512),
               timestamp=10)
    f2 = _file(3, 3, 3, [(3, bytes([5]) * 512)], flags=0, pre=db_checksum(db1, 512),
               post=db_checksum(db2, 512), timestamp=20)
    f2_nock = _file(3, 3, 3, [(3, bytes([5]) * 512)], timestamp=20)

    h, t = compact([io.BytesIO(f1), io.BytesIO(f2)], io.BytesIO())
    assert (h.flags, h.pre_apply_checksum, t.post_apply_checksum) == (0, ck0,
                                                                      db_checksum(db2, 512))
    assert h.timestamp == 20
    # Any input without checksums makes the output checksum-free.
    h, t = compact([io.BytesIO(f1), io.BytesIO(f2_nock)], io.BytesIO())
    assert h.no_checksum and h.pre_apply_checksum == 0 and t.post_apply_checksum == 0
    # Forced off, and a given timestamp.
    out = io.BytesIO()
    h, t = compact([io.BytesIO(f1), io.BytesIO(f2)], out, no_checksum=True, timestamp=99,
                   page_encoding=PageEncoding.LZ4_FRAME)
    assert h.no_checksum and h.timestamp == 99 and t.post_apply_checksum == 0
    assert set(frame_flags(out.getvalue())) == {0}
    assert apply_files(base, [out.getvalue()]) == db2


def test_compacting_a_deleted_database() -> None:
    files = [_file(1, 1, 2, [(1, bytes(512)), (2, bytes(512))], flags=0,
                   post=db_checksum(bytes(1024), 512)),
             _file(2, 2, 0, [], flags=0, pre=db_checksum(bytes(1024), 512),
                   post=EMPTY_DATABASE_CHECKSUM)]
    out = io.BytesIO()
    h, t = compact([io.BytesIO(f) for f in files], out)
    assert h.commit == 0 and h.is_snapshot
    assert t.post_apply_checksum == EMPTY_DATABASE_CHECKSUM
    assert decode_v3(out.getvalue())[1] == []


# --- input validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ranges", "bad"),
    [
        ([(2, 2), (4, 4)], 1),  # gap
        ([(2, 3), (3, 4)], 1),  # overlap
        ([(3, 3), (2, 2)], 1),  # wrong order
        ([(2, 2), (3, 3), (5, 6)], 2),  # gap later on
        ([(2, 2), (2, 2)], 1),  # duplicate
    ],
)
def test_non_contiguous_inputs_are_rejected_naming_the_file(ranges: list[tuple[int, int]],
                                                            bad: int) -> None:
    files = [_file(lo, hi, 2, [(1, bytes(512))]) for lo, hi in ranges]
    names = [f"{lo:016x}-{hi:016x}.ltx" for lo, hi in ranges]
    with pytest.raises(CompactionError) as info:
        compact([io.BytesIO(f) for f in files], io.BytesIO(), names=names)
    assert info.value.name == names[bad]
    # Without names, the default name says which input.
    with pytest.raises(CompactionError) as info:
        compact([io.BytesIO(f) for f in files], io.BytesIO())
    assert str(bad) in info.value.name


def test_mixed_page_sizes_are_rejected() -> None:
    files = [_file(2, 2, 1, [(1, bytes(512))]),
             _file(3, 3, 1, [(1, bytes(1024))], ps=1024)]
    with pytest.raises(CompactionError) as info:
        compact([io.BytesIO(f) for f in files], io.BytesIO(), names=["a", "b"])
    assert info.value.name == "b"


def test_no_inputs_is_an_error() -> None:
    with pytest.raises(CompactionError):
        compact([], io.BytesIO())


def test_corrupt_input_is_reported_with_its_name() -> None:
    good = _file(2, 2, 1, [(1, bytes(512))])
    bad = bytearray(_file(3, 3, 1, [(1, bytes([1]) * 512)]))
    bad[-1] ^= 1
    with pytest.raises(LTXError) as info:
        compact([io.BytesIO(good), io.BytesIO(bytes(bad))], io.BytesIO(), names=["g", "b"])
    assert info.value.name == "b"


def test_single_input_compaction_is_equivalent() -> None:
    f = _file(4, 9, 3, [(1, bytes([1]) * 512), (3, bytes([3]) * 512)], timestamp=7)
    out = io.BytesIO()
    compact([io.BytesIO(f)], out)
    assert decode_v3(out.getvalue())[:2] == decode_v3(f)[:2]
    assert Decoder(io.BytesIO(out.getvalue())).verify().file_checksum & FLAG
