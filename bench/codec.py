"""LTX codec throughput against the LZ4 floor.

    .venv/bin/python bench/codec.py            # full run: 64 MiB database, 10,000 transactions
    .venv/bin/python bench/codec.py --quick    # smoke test: 8 MiB, 1,000 transactions
    .venv/bin/python bench/codec.py --profile  # also: cProfile and per-page component costs

What is measured (all in memory, io.BytesIO, so no disk):

(a) snapshot: a SQLite database (page size 4096, rows with text and integers, an index) encoded
    as one LTX snapshot with `encode_snapshot` and decoded back with `Decoder.pages()`, for both
    page encodings (LZ4 block, legacy LZ4 frame);
(b) transactions: N one-page LTX files, pages taken from that database, each encoded with
    `encode_bytes` and decoded with `decode_bytes` (the one-call API for whole in-memory
    files: the mount encodes each commit with it, replicas decode each file they apply with
    it); also, for reference, with the streaming `Encoder`/`finish` and `Decoder` per file.

The "floor" is raw `lz4.block.compress(page, store_size=False)` /
`lz4.block.decompress(payload, uncompressed_size=page_size)` of the very same pages in a tight
loop: what a codec that did nothing but compress would cost. The legacy encoding is also
measured against its own floor, python-lz4's frame API (`lz4.frame.compress` /
`decompress`), which includes the XXH32 content checksum every legacy page must carry and
the raw-block floor leaves out. Throughput is uncompressed page
bytes per second (MB = 10**6 bytes); every figure is the median of 3 runs (`--runs`); the ratio is
codec time / floor time (the target is <= 1.5).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import platform
import pstats
import random
import sqlite3
import statistics
import struct
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lz4
import lz4.block
import lz4.frame

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import fill_orders  # bench/common.py (the script's directory)

from litefs_py.ltx import (
    FLAG_V3_NO_CHECKSUM,
    Decoder,
    Encoder,
    Header,
    PageEncoding,
    PageIndexEntry,
    crc64,
    decode_bytes,
    encode_bytes,
    encode_snapshot,
    lock_pgno,
)
from litefs_py.ltx.page_encoding import compress_frame, compress_frame_lz4f, decompress_frame
from litefs_py.ltx.varint import append_uvarint

PAGE_SIZE = 4096
RUNS = 3
MB = 1_000_000

# --- the database ---------------------------------------------------------------------------


def build_database(path: Path, target_bytes: int) -> bytes:
    """A SQLite database of about `target_bytes` with realistic rows; returns its bytes."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        fill_orders(conn, target_bytes, PAGE_SIZE)
    finally:
        conn.close()
    data = path.read_bytes()
    assert len(data) % PAGE_SIZE == 0 and len(data) // PAGE_SIZE < lock_pgno(PAGE_SIZE)
    return data


def split_pages(db: bytes) -> list[bytes]:
    return [db[i:i + PAGE_SIZE] for i in range(0, len(db), PAGE_SIZE)]


# --- timing ---------------------------------------------------------------------------------


def _once(fn: Callable[[], object]) -> float:
    gc.collect()
    gc.disable()  # as timeit does
    try:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    finally:
        gc.enable()


def timed_pair(codec: Callable[[], object], floor: Callable[[], object],
               runs: int) -> tuple[float, float]:
    """Median wall times of `runs` runs of `codec` and of `floor`, alternated so that machine
    noise (a shared 2-vCPU VM) hits both sides alike."""
    codec_times, floor_times = [], []
    for _ in range(runs):
        codec_times.append(_once(codec))
        floor_times.append(_once(floor))
    return statistics.median(codec_times), statistics.median(floor_times)


@dataclass
class Row:
    case: str
    op: str
    encoding: str
    pages: int
    codec_s: float
    floor_s: float

    @property
    def nbytes(self) -> int:
        return self.pages * PAGE_SIZE

    def line(self) -> str:
        codec_mbs = self.nbytes / self.codec_s / MB
        floor_mbs = self.nbytes / self.floor_s / MB
        per_page = (self.codec_s - self.floor_s) / self.pages * 1e6
        ratio = self.codec_s / self.floor_s
        verdict = "meets" if ratio <= 1.5 else "misses"
        if "lower bound" in self.encoding or "(reference)" in self.encoding:
            verdict = "(reference)"
        return (f"| {self.case} | {self.op} | {self.encoding} | {self.pages:,} | "
                f"{codec_mbs:,.0f} | {floor_mbs:,.0f} | {ratio:.2f}× | {per_page:+.1f} | "
                f"{verdict} |")


HEADER_ROW = ("| case | op | page encoding | pages | codec MB/s | floor MB/s | codec/floor | "
              "extra µs/page | ≤ 1.5× |\n|---|---|---|---:|---:|---:|---:|---:|---|")


# --- the workloads --------------------------------------------------------------------------


def floor_compress(pages: list[bytes]) -> list[bytes]:
    compress = lz4.block.compress
    return [compress(p, store_size=False) for p in pages]


def floor_decompress(blocks: list[bytes]) -> None:
    decompress = lz4.block.decompress
    for b in blocks:
        decompress(b, uncompressed_size=PAGE_SIZE)


def frame_floor_compress(pages: list[bytes]) -> list[bytes]:
    """The legacy encoding's own floor: python-lz4's LZ4 frame API with the frame settings
    Litestream <= 0.5.15 uses (it includes the XXH32 content checksum the format requires)."""
    return [compress_frame_lz4f(p) for p in pages]


def frame_floor_decompress(frames: list[bytes]) -> None:
    decompress = lz4.frame.decompress
    for f in frames:
        decompress(f)


def snapshot_encode(db: bytes, encoding: PageEncoding) -> bytes:
    out = io.BytesIO()
    encode_snapshot(io.BytesIO(db), out, page_size=PAGE_SIZE, txid=1, timestamp=1,
                    no_checksum=True, page_encoding=encoding)
    return out.getvalue()


def ltx_decode(ltx: bytes) -> None:
    for _ in Decoder(io.BytesIO(ltx)).pages():
        pass


def txn_pages(pages: list[bytes], n: int) -> list[tuple[int, bytes]]:
    rng = random.Random(7)
    return [(pgno, pages[pgno - 1]) for pgno in (rng.randrange(1, len(pages) + 1)
                                                 for _ in range(n))]


def txn_encode(txns: list[tuple[int, bytes]], commit: int) -> list[bytes]:
    files = []
    for i, (pgno, page) in enumerate(txns, 2):
        out = io.BytesIO()
        enc = Encoder(out, Header(page_size=PAGE_SIZE, commit=commit, min_txid=i, max_txid=i,
                                  timestamp=i, flags=FLAG_V3_NO_CHECKSUM))
        enc.encode_page(pgno, page)
        enc.finish()
        files.append(out.getvalue())
    return files


def txn_decode(files: list[bytes]) -> None:
    for f in files:
        for _ in Decoder(io.BytesIO(f)).pages():
            pass


def txn_encode_bytes(txns: list[tuple[int, bytes]], commit: int) -> list[bytes]:
    return [encode_bytes(Header(page_size=PAGE_SIZE, commit=commit, min_txid=i, max_txid=i,
                                timestamp=i, flags=FLAG_V3_NO_CHECKSUM), [(pgno, page)])
            for i, (pgno, page) in enumerate(txns, 2)]


def txn_decode_bytes(files: list[bytes]) -> None:
    for f in files:
        for _ in decode_bytes(f).pages:
            pass


class ShapeOnlyDecoder:
    """The least any decoder with `Decoder(f).pages()`'s call shape can do in CPython: build an
    object, read the header, start a generator, read the page frame and decompress it, with
    no parsing, validation or checksum at all. Its ratio to the floor is a lower bound for
    the one-page decode row (what interpreter overhead per *file* alone costs)."""

    def __init__(self, f: io.BytesIO) -> None:
        self._read = f.read
        self.header = self._read(100)

    def pages(self) -> Iterator[tuple[int, bytes]]:
        frame = self._read()
        csize = int.from_bytes(frame[6:10], "big")
        yield 1, lz4.block.decompress(frame[10:10 + csize], uncompressed_size=PAGE_SIZE)


def shape_only_decode(files: list[bytes]) -> None:
    for f in files:
        for _ in ShapeOnlyDecoder(io.BytesIO(f)).pages():
            pass


def run_benchmarks(db: bytes, pages: list[bytes], n_txns: int, runs: int) -> list[Row]:
    rows: list[Row] = []
    blocks = floor_compress(pages)
    npages = len(pages)
    case = f"snapshot {len(db) / 2**20:.0f} MiB"
    for encoding, label in ((PageEncoding.LZ4_BLOCK, "lz4 block"),
                            (PageEncoding.LZ4_FRAME, "lz4 frame (legacy)")):
        ltx = snapshot_encode(db, encoding)
        print(f"  {case}, {label}: LTX is {len(ltx) / 2**20:.1f} MiB "
              f"({len(ltx) / len(db):.0%} of the database)")
        rows.append(Row(case, "encode", label, npages, *timed_pair(
            partial(snapshot_encode, db, encoding), partial(floor_compress, pages), runs)))
        rows.append(Row(case, "decode", label, npages, *timed_pair(
            partial(ltx_decode, ltx), partial(floor_decompress, blocks), runs)))
        if encoding is PageEncoding.LZ4_FRAME:
            # Against the floor of the legacy format itself (LZ4 frames with their XXH32),
            # which the raw-block floor above leaves out.
            frames = frame_floor_compress(pages)
            label = "lz4 frame (legacy), floor = lz4.frame"
            rows.append(Row(case, "encode", label, npages, *timed_pair(
                partial(snapshot_encode, db, encoding), partial(frame_floor_compress, pages),
                runs)))
            rows.append(Row(case, "decode", label, npages, *timed_pair(
                partial(ltx_decode, ltx), partial(frame_floor_decompress, frames), runs)))
    txns = txn_pages(pages, n_txns)
    txn_raw = [p for _, p in txns]
    txn_blocks = floor_compress(txn_raw)
    files = txn_encode(txns, npages)
    print(f"  {n_txns:,} one-page files: {sum(map(len, files)) / n_txns:,.0f} bytes each on "
          "average")
    assert txn_encode_bytes(txns, npages) == files  # the one-call API writes the same bytes
    case = f"{n_txns:,} one-page txns"
    rows.append(Row(case, "encode", "lz4 block (encode_bytes)", n_txns, *timed_pair(
        lambda: txn_encode_bytes(txns, npages), lambda: floor_compress(txn_raw), runs)))
    rows.append(Row(case, "decode", "lz4 block (decode_bytes)", n_txns, *timed_pair(
        lambda: txn_decode_bytes(files), lambda: floor_decompress(txn_blocks), runs)))
    rows.append(Row(case, "encode", "streaming Encoder per file (reference)", n_txns,
                    *timed_pair(lambda: txn_encode(txns, npages),
                                lambda: floor_compress(txn_raw), runs)))
    rows.append(Row(case, "decode", "streaming Decoder per file (reference)", n_txns,
                    *timed_pair(lambda: txn_decode(files),
                                lambda: floor_decompress(txn_blocks), runs)))
    rows.append(Row(case, "decode", "call shape only, no checks (lower bound)", n_txns,
                    *timed_pair(lambda: shape_only_decode(files),
                                lambda: floor_decompress(txn_blocks), runs)))
    return rows


# --- profiling ------------------------------------------------------------------------------


def profile(label: str, fn: Callable[[], object], per: int) -> None:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"\n### cProfile: {label} ({per:,} pages; cProfile inflates small calls)\n")
    print("| function | calls | tottime µs/page | share |\n|---|---:|---:|---:|")
    entries = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
    for (file, line, func), (_cc, nc, tt, _ct, _callers) in entries[:12]:
        where = f"{Path(file).name}:{line}({func})" if line else func
        print(f"| `{where}` | {nc:,} | {tt / per * 1e6:.2f} | {tt / total:.0%} |")


def ns_per_call(stmt: Callable[[], object], budget: float = 0.1) -> float:
    timer = timeit.Timer(stmt)
    n, t = timer.autorange()
    n = max(1, int(n * budget / max(t, 1e-9)))
    return min(timer.repeat(3, n)) / n * 1e9


def component_costs(pages: list[bytes]) -> None:
    """What each step of the per-page path costs on its own (ns per page)."""
    page = pages[len(pages) // 2]
    block = lz4.block.compress(page, store_size=False)
    frame = compress_frame(page)
    fh = struct.pack(">IHI", 1234, 1, len(block))
    idx = bytearray()
    sink = io.BytesIO()
    frame_hdr = struct.Struct(">IHI")
    header = Header(page_size=PAGE_SIZE, commit=len(pages), min_txid=5, max_txid=5,
                    flags=FLAG_V3_NO_CHECKSUM)

    def encoder_page_only() -> None:
        enc = Encoder(io.BytesIO(), header)
        enc.encode_page(1234, page)

    def encoder_empty() -> None:
        Encoder(io.BytesIO(), header)

    def new_header() -> None:
        Header(page_size=PAGE_SIZE, commit=len(pages), min_txid=5, max_txid=5,
               flags=FLAG_V3_NO_CHECKSUM)

    def write_frame() -> None:
        sink.seek(0)
        sink.write(fh)
        sink.write(block)

    def index_entry() -> None:
        append_uvarint(idx, 1234)
        append_uvarint(idx, 5_000_000)
        append_uvarint(idx, 2000)

    def read_frame() -> None:
        src.seek(0)
        src.read(6)
        src.read(4)
        src.read(len(block))

    hdr_bytes = header.encode()
    src = io.BytesIO(fh + block)
    one_file = io.BytesIO()
    e = Encoder(one_file, header)
    e.encode_page(1234, page)
    e.finish()
    one = one_file.getvalue()

    def decode_one() -> None:
        for _ in Decoder(io.BytesIO(one)).pages():
            pass

    items: list[tuple[str, Callable[[], object]]] = [
        ("lz4.block.compress (the floor)", lambda: lz4.block.compress(page, store_size=False)),
        ("lz4.block.decompress (the floor)",
         lambda: lz4.block.decompress(block, uncompressed_size=PAGE_SIZE)),
        ("compress_frame (legacy encoding)", lambda: compress_frame(page)),
        ("decompress_frame (legacy encoding)", lambda: decompress_frame(frame)),
        ("crc64 over a 4 KiB page (fastcrc)", lambda: crc64(page)),
        ("crc64 over a 6/10-byte header, chained", lambda: crc64(fh, 12345)),
        ("struct pack of the frame header", lambda: frame_hdr.pack(1234, 1, len(block))),
        ("BytesIO seek(0) + write of header + payload", write_frame),
        ("3 × append_uvarint (index entry)", index_entry),
        ("Header.validate (per file, encoder and decoder)", header.validate),
        ("Header.encode (per file)", header.encode),
        ("Header.decode (per file)", lambda: Header.decode(hdr_bytes)),
        ("BytesIO seek(0) + 3 × read (frame header, size, payload)", read_frame),
        ("PageIndexEntry(...) (decoder, per page)", lambda: PageIndexEntry(1234, 5_000_000, 2000)),
        ("Header(...) construction (frozen slots dataclass, per file)", new_header),
        ("Encoder.__init__ (validate, encode, CRC the header; per file)", encoder_empty),
        ("Encoder.__init__ + encode_page", encoder_page_only),
        ("one 1-page file: Header + Encoder + encode_page + finish",
         partial(txn_encode, [(1234, page)], len(pages))),
        ("Decoder.__init__ (read, Header.decode, validate; per file)",
         lambda: Decoder(io.BytesIO(one))),
        ("one 1-page file: Decoder + pages()", decode_one),
    ]
    print("\n### Per-call costs of the pieces (ns, best of 3)\n")
    print("| step | ns |\n|---|---:|")
    for label, fn in items:
        idx.clear()
        sink.seek(0)
        sink.truncate()
        print(f"| {label} | {ns_per_call(fn):,.0f} |")


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="8 MiB database and 1,000 transactions (a smoke test)")
    ap.add_argument("--profile", action="store_true",
                    help="also print a cProfile breakdown and per-step costs")
    ap.add_argument("--runs", type=int, default=RUNS,
                    help=f"runs per measurement, the median is reported (default {RUNS})")
    args = ap.parse_args()
    runs = max(1, args.runs)
    target = (8 if args.quick else 64) * 2**20
    n_txns = 1_000 if args.quick else 10_000

    print(f"python {platform.python_version()}, lz4 {lz4.library_version_string()} "
          f"(python-lz4 {lz4.__version__}), {os.cpu_count()} CPUs, {platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        db = build_database(Path(tmp) / "bench.db", target)
        print(f"built a {len(db) / 2**20:.1f} MiB database ({len(db) // PAGE_SIZE:,} pages of "
              f"{PAGE_SIZE}) in {time.perf_counter() - t0:.1f} s")
    pages = split_pages(db)
    rows = run_benchmarks(db, pages, n_txns, runs)
    print(f"\nmedian of {runs} runs; MB = 10^6 bytes of uncompressed pages; floor = raw "
          "lz4.block on the same pages\n")
    print(HEADER_ROW)
    for row in rows:
        print(row.line())

    if args.profile:
        txns = txn_pages(pages, n_txns)
        files = txn_encode(txns, len(pages))
        ltx = snapshot_encode(db, PageEncoding.LZ4_BLOCK)
        profile("snapshot encode, lz4 block",
                lambda: snapshot_encode(db, PageEncoding.LZ4_BLOCK), len(pages))
        profile("snapshot decode, lz4 block", lambda: ltx_decode(ltx), len(pages))
        legacy = snapshot_encode(db, PageEncoding.LZ4_FRAME)
        profile("snapshot decode, lz4 frame (legacy)", lambda: ltx_decode(legacy), len(pages))
        profile("one-page transactions encode", lambda: txn_encode(txns, len(pages)), n_txns)
        profile("one-page transactions decode", lambda: txn_decode(files), n_txns)
        component_costs(pages)


if __name__ == "__main__":
    main()
