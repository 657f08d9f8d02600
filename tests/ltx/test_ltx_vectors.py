"""Files written by the real programs (tests/vectors/): Litestream 0.5.17 and 0.5.15
buckets (LTX v3, both page encodings) and LiteFS's v1 fixture."""

from __future__ import annotations

import io
import itertools
import sqlite3
import struct
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from litefs_py.ltx import (
    Decoder,
    DecoderV1,
    Header,
    PageEncoding,
    Version,
    apply_ltx,
    apply_pages,
    compact,
    database_checksum,
    decode_page_frame,
    detect_version,
    open_decoder,
    page_checksum,
    parse_filename,
    read_page_index,
)

from .helpers import (
    LS15,
    LS17,
    V1_DATABASE,
    V1_VECTOR,
    decode_v3,
    dump_sha256,
    frame_flags,
    header_bytes,
    integrity_check,
    load_expected,
    ref_encode_v1,
)


@dataclass(frozen=True)
class VecFile:
    level: int
    min_txid: int
    max_txid: int
    path: Path
    key: str


@dataclass(frozen=True)
class VectorSet:
    folder: Path
    prefix: str
    page_flag: int
    encoding: PageEncoding

    @property
    def expected(self) -> dict[str, Any]:
        return load_expected(self.folder)

    def files(self) -> list[VecFile]:
        root = self.folder / "bucket" / self.prefix
        out = []
        for p in sorted(root.glob("*/*.ltx")):
            lo, hi = parse_filename(p.name)
            out.append(VecFile(int(p.parent.name, 16), lo, hi, p,
                               str(p.relative_to(self.folder / "bucket"))))
        return out

    def level(self, n: int) -> list[VecFile]:
        return sorted((f for f in self.files() if f.level == n), key=lambda f: f.min_txid)


SETS = {
    "0.5.17": VectorSet(LS17, "app.db", 1, PageEncoding.LZ4_BLOCK),
    "0.5.15": VectorSet(LS15, "db/store.db", 0, PageEncoding.LZ4_FRAME),
}
set_ids = pytest.mark.parametrize("vs", list(SETS.values()), ids=list(SETS))


def _all_files() -> list[Any]:
    if not LS17.is_dir() or not LS15.is_dir():
        return []
    return [pytest.param(vs, f, id=f.key) for vs in SETS.values() for f in vs.files()]


@pytest.mark.parametrize(("vs", "vf"), _all_files())
def test_vector_file_decodes_and_matches_expected(vs: VectorSet, vf: VecFile) -> None:
    data = vf.path.read_bytes()
    entry = next(e for e in vs.expected["ltx_files"] if e["key"] == vf.key)
    header, pages, trailer = decode_v3(data, name=vf.key)
    assert header == Header(
        page_size=entry["page_size"], commit=entry["commit"],
        min_txid=int(entry["min_txid"], 16), max_txid=int(entry["max_txid"], 16),
        timestamp=entry["timestamp_ms"], flags=entry["flags"],
        wal_offset=entry["wal_offset"], wal_size=entry["wal_size"],
        wal_salt1=header.wal_salt1, wal_salt2=header.wal_salt2, node_id=0,
    )
    assert (header.min_txid, header.max_txid) == (vf.min_txid, vf.max_txid)
    assert len(data) == entry["size"]
    assert header.no_checksum and header.pre_apply_checksum == 0
    assert trailer.post_apply_checksum == 0 and trailer.file_checksum >> 63 == 1
    # Compaction outputs carry no WAL position; L0 files and the snapshot do.
    if entry["wal_offset"] == 0:
        assert (header.wal_salt1, header.wal_salt2) == (0, 0)
    else:
        assert header.wal_salt1 or header.wal_salt2
    # Page rules hold; snapshots hold every page.
    pgnos = [p for p, _ in pages]
    assert pgnos == sorted(set(pgnos)) and all(1 <= p <= header.commit for p in pgnos)
    if header.is_snapshot:
        assert pgnos == list(range(1, header.commit + 1))
    assert all(len(d) == header.page_size for _, d in pages)
    # The page encoding of this Litestream version, on every frame.
    assert set(frame_flags(data)) == {vs.page_flag}
    # The raw header bytes are what the codec would write for that header.
    assert data[:100] == header_bytes(header) == header.encode()
    # Version detection and the generic opener.
    f = io.BytesIO(data)
    assert detect_version(f) is Version.V3
    assert f.tell() == 0
    dec = open_decoder(f, name=vf.key)
    assert isinstance(dec, Decoder)
    assert dec.verify() == trailer


@pytest.mark.parametrize(("vs", "vf"), _all_files())
def test_vector_random_access_matches_stream(vs: VectorSet, vf: VecFile) -> None:
    data = vf.path.read_bytes()
    dec = Decoder(io.BytesIO(data), name=vf.key)
    pages = list(dec.pages())
    entries = read_page_index(io.BytesIO(data), name=vf.key)
    assert entries == dec.index
    for e, (pgno, page) in zip(entries, pages, strict=True):
        got = decode_page_frame(data[e.offset:e.offset + e.size], dec.header.page_size,
                                name=vf.key, offset=e.offset)
        assert got == (pgno, page)


def _restore(chain: list[VecFile], out: Path) -> None:
    with open(out, "w+b") as db:
        for vf in chain:
            with open(vf.path, "rb") as f:
                apply_ltx(db, f, name=vf.key)


def _plan(vs: VectorSet, target: int) -> list[VecFile]:
    """Litestream 0.5's restore plan (docs/formats.md §5)."""
    files = vs.files()
    snaps = [f for f in files if f.level == 9 and f.max_txid <= target]
    chain = [max(snaps, key=lambda f: f.max_txid)]
    cur = chain[0].max_txid
    while cur < target:
        cands = [f for f in files if f.level <= 8 and f.min_txid <= cur + 1
                 and cur < f.max_txid <= target]
        assert cands, f"no file continues TXID {cur:x}"
        best = max(cands, key=lambda f: (f.max_txid, -f.level))
        chain.append(best)
        cur = best.max_txid
    return chain


def _checks(vs: VectorSet) -> list[dict[str, Any]]:
    exp = vs.expected
    by_txid: dict[int, dict[str, Any]] = {}
    for c in exp["workload_captures"] + exp["txid_checks"]:
        t = int(c["txid"], 16)
        if t in by_txid:
            assert by_txid[t]["dump_sha256"] == c["dump_sha256"]
        by_txid[t] = c
    assert int(exp["final_txid"], 16) in by_txid
    return [by_txid[t] for t in sorted(by_txid)]


def _check_restored(db: Path, check: dict[str, Any]) -> None:
    assert db.stat().st_size == check["page_count"] * check["page_size"]
    assert integrity_check(db) == "ok"
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == check["row_count"]
    assert dump_sha256(db) == check["dump_sha256"]


@set_ids
def test_restore_plan_matches_recorded_dumps(vs: VectorSet, tmp_path: Path,
                                             sqlite3_cli: str) -> None:
    for check in _checks(vs):
        target = int(check["txid"], 16)
        chain = _plan(vs, target)
        assert chain[0].level == 9 and chain[-1].max_txid == target
        out = tmp_path / f"plan-{target:x}.db"
        _restore(chain, out)
        _check_restored(out, check)


@set_ids
def test_restore_from_l0_files_matches_recorded_dumps(vs: VectorSet, tmp_path: Path,
                                                      sqlite3_cli: str) -> None:
    checks = {int(c["txid"], 16): c for c in _checks(vs)}
    l0 = vs.level(0)
    assert [f.min_txid for f in l0] == list(range(1, len(l0) + 1))
    db = tmp_path / "l0.db"
    with open(db, "w+b") as out:
        for vf in l0:
            with open(vf.path, "rb") as f:
                apply_ltx(out, f, name=vf.key)
            out.flush()
            if vf.max_txid in checks:
                snap = tmp_path / f"l0-{vf.max_txid:x}.db"
                snap.write_bytes(db.read_bytes())
                _check_restored(snap, checks.pop(vf.max_txid))
    assert not checks


@set_ids
def test_restore_from_snapshot_then_l1_files(vs: VectorSet, tmp_path: Path,
                                             sqlite3_cli: str) -> None:
    checks = {int(c["txid"], 16): c for c in _checks(vs)}
    chain = [vs.level(9)[0]]
    for f in vs.level(1):
        if f.max_txid > chain[-1].max_txid:
            assert f.min_txid <= chain[-1].max_txid + 1
            chain.append(f)
    seen = 0
    for i in range(len(chain)):
        t = chain[i].max_txid
        if t in checks:
            out = tmp_path / f"l1-{t:x}.db"
            _restore(chain[:i + 1], out)
            _check_restored(out, checks[t])
            seen += 1
    assert chain[-1].max_txid == int(vs.expected["final_txid"], 16)
    assert seen >= 2


@set_ids
def test_l1_only_chain(vs: VectorSet, tmp_path: Path, sqlite3_cli: str) -> None:
    """The L1 files alone form a chain from TXID 1 (its first file is a snapshot)."""
    checks = {int(c["txid"], 16): c for c in _checks(vs)}
    l1 = vs.level(1)
    assert l1[0].min_txid == 1
    for a, b in itertools.pairwise(l1):
        assert b.min_txid == a.max_txid + 1
    for i, vf in enumerate(l1):
        if vf.max_txid in checks:
            out = tmp_path / f"l1only-{vf.max_txid:x}.db"
            _restore(l1[:i + 1], out)
            _check_restored(out, checks[vf.max_txid])
    out = tmp_path / "l1.db"
    _restore(l1, out)
    assert dump_sha256(out) == vs.expected["dump_sha256"]
    assert integrity_check(out) == "ok"


def _compaction_groups(vs: VectorSet) -> list[tuple[VecFile, list[VecFile]]]:
    l0 = vs.level(0)
    groups = []
    for target in vs.level(1) + vs.level(2):
        inputs = [f for f in l0 if target.min_txid <= f.min_txid and f.max_txid <= target.max_txid]
        assert inputs[0].min_txid == target.min_txid and inputs[-1].max_txid == target.max_txid
        groups.append((target, inputs))
    return groups


def _compaction_cases() -> list[Any]:
    if not LS17.is_dir() or not LS15.is_dir():
        return []
    return [pytest.param(vs, t, i, id=t.key) for vs in SETS.values()
            for t, i in _compaction_groups(vs)]


@pytest.mark.parametrize(("vs", "target", "inputs"), _compaction_cases())
def test_compacting_l0_files_gives_the_real_compacted_file(
        vs: VectorSet, target: VecFile, inputs: list[VecFile]) -> None:
    handles = [open(f.path, "rb") for f in inputs]  # noqa: SIM115
    try:
        out = io.BytesIO()
        header, trailer = compact(handles, out, names=[f.key for f in inputs],
                                  page_encoding=vs.encoding)
    finally:
        for h in handles:
            h.close()
    ours = out.getvalue()
    real_header, real_pages, real_trailer = decode_v3(target.path.read_bytes(), name=target.key)
    our_header, our_pages, our_trailer = decode_v3(ours)
    assert header == our_header == real_header
    assert [p for p, _ in our_pages] == [p for p, _ in real_pages]
    assert our_pages == real_pages
    assert trailer == our_trailer
    assert our_trailer.post_apply_checksum == real_trailer.post_apply_checksum == 0
    assert set(frame_flags(ours)) <= {vs.page_flag}


def test_compaction_of_0517_l0_2_to_9_explicitly() -> None:
    vs = SETS["0.5.17"]
    l0 = {f.min_txid: f for f in vs.level(0)}
    inputs = [l0[t] for t in range(2, 10)]
    target = next(f for f in vs.level(1) if (f.min_txid, f.max_txid) == (2, 9))
    handles = [open(f.path, "rb") for f in inputs]  # noqa: SIM115
    try:
        out = io.BytesIO()
        compact(handles, out)
    finally:
        for h in handles:
            h.close()
    assert decode_v3(out.getvalue())[:2] == decode_v3(target.path.read_bytes())[:2]


# --- LiteFS v1 ---------------------------------------------------------------------------------


def test_v1_vector_values() -> None:
    data = V1_VECTOR.read_bytes()
    assert len(data) == 12420
    f = io.BytesIO(data)
    assert detect_version(f) is Version.V1
    dec = open_decoder(f, name="v1")
    assert isinstance(dec, DecoderV1)
    pages = list(dec.pages())
    h = dec.header
    assert (h.page_size, h.commit, h.min_txid, h.max_txid) == (4096, 10, 13, 13)
    assert h.flags == 0  # uncompressed
    assert h.pre_apply_checksum == 0x9C74A15B4E4F246C
    assert [p for p, _ in pages] == [1, 7, 8]
    assert dec.trailer is not None
    assert dec.trailer.post_apply_checksum == 0xFE3831A381C602B9
    assert dec.trailer.file_checksum == 0x9496A29358326FB5
    assert dec.page_count == 3


def test_v1_sibling_database_checksum_and_pages() -> None:
    db = V1_DATABASE.read_bytes()
    assert len(db) == 10 * 4096
    with open(V1_DATABASE, "rb") as f:
        assert database_checksum(f, 4096) == 0xFE3831A381C602B9
    with open(V1_DATABASE, "rb") as f:
        assert database_checksum(f, 4096, 10) == 0xFE3831A381C602B9
    dec = DecoderV1(io.BytesIO(V1_VECTOR.read_bytes()))
    for pgno, page in dec.pages():
        assert page == db[(pgno - 1) * 4096:pgno * 4096]
    # Undo the file's pages: pre-apply and post-apply differ exactly by those pages. We cannot
    # rebuild the old pages, but the post-apply state must be the sibling database.
    assert dec.trailer is not None
    assert dec.trailer.post_apply_checksum == database_checksum(io.BytesIO(db), 4096)


def test_v1_apply_onto_the_sibling_database_is_idempotent(tmp_path: Path) -> None:
    out = tmp_path / "db"
    out.write_bytes(V1_DATABASE.read_bytes())
    with open(out, "r+b") as db, open(V1_VECTOR, "rb") as f:
        trailer = apply_pages(db, DecoderV1(f))
    assert out.read_bytes() == V1_DATABASE.read_bytes()
    with open(out, "rb") as db:
        assert database_checksum(db, 4096) == trailer.post_apply_checksum


def test_v1_vector_rewritten_by_reference_writer_is_byte_identical() -> None:
    """Our reading of docs/formats.md §4 (file checksum coverage) reproduces LiteFS's bytes."""
    data = V1_VECTOR.read_bytes()
    dec = DecoderV1(io.BytesIO(data))
    pages = list(dec.pages())
    assert dec.trailer is not None
    again = ref_encode_v1(data[:100], pages, dec.trailer.post_apply_checksum, compress=False)
    assert again == data
    # The same content as a compressed (flag 0x1) v1 file decodes to the same pages.
    hdr = data[:100]
    hdr = hdr[:4] + struct.pack(">I", 1) + hdr[8:]
    comp = ref_encode_v1(hdr, pages, dec.trailer.post_apply_checksum, compress=True)
    f = io.BytesIO(comp)
    assert detect_version(f) is Version.V1
    dec2 = open_decoder(f)
    assert list(dec2.pages()) == pages
    assert dec2.header.flags == 1


def test_v1_page_checksums_explain_the_rolling_checksum() -> None:
    db = V1_DATABASE.read_bytes()
    total = 0
    for i in range(10):
        total ^= page_checksum(i + 1, db[i * 4096:(i + 1) * 4096])
    assert (1 << 63) | total == 0xFE3831A381C602B9
