"""`litefs ltx list|verify|dump|extract` on a local log made of segments."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from litefs_py.cli import main
from litefs_py.ltx import Decoder, format_filename
from litefs_py.ltx.segment import encode_frame
from litefs_py.store.ltx_log import LtxLog, read_log
from litefs_py.types import TxRange
from tests.store.test_ltx_log import Chain, page


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def make_log(tmp_path: Path, count: int, **kwargs: int) -> Path:
    d = tmp_path / "ltx"
    log, chain = LtxLog(d, **kwargs), Chain()  # type: ignore[arg-type]
    for i in range(count):
        log.write(*chain.next({1: page(i), 2: page(i + 1)}))
    log.close()
    return d


def test_worked_example_of_docs_formats(tmp_path: Path) -> None:
    """docs/formats.md §8's example: two records of 210 bytes."""
    d = make_log(tmp_path, 2)
    assert [(r.offset, r.length) for r in read_log(d)] == [(32, 210), (258, 210)]
    assert (d / "seg-00000001.ltxs").stat().st_size == 468


def test_list_shows_the_records_of_the_segments(tmp_path: Path) -> None:
    d = make_log(tmp_path, 5, segment_bytes=500)
    done = cli("ltx", "list", str(d))
    assert done.exit_code == 0, done.output
    assert "5 records, chain contiguous" in done.output
    assert "seg-00000001.ltxs@32" in done.output  # after the 16-byte header and a frame
    doc = json.loads(cli("ltx", "list", "--json", str(d)).output)
    assert [(e["min_txid"], e["file"]) for e in doc[0]["files"]][:2] == [
        (f"{1:016x}", "seg-00000001.ltxs"), (f"{2:016x}", "seg-00000001.ltxs")]


def test_verify_checks_every_record_and_the_tail(tmp_path: Path) -> None:
    d = make_log(tmp_path, 3)
    seg = d / "seg-00000001.ltxs"
    done = cli("ltx", "verify", str(seg))
    assert done.exit_code == 0, done.output
    assert done.output.count(": ok (TXID") == 3
    # A torn tail (an append cut short by a crash) is reported: the segment is not clean.
    with seg.open("ab") as f:
        f.write(encode_frame(1000) + b"x" * 10)
    done = cli("ltx", "verify", "-q", str(seg))
    assert done.exit_code == 1
    assert "torn tail" in done.output and "runs past the end" in done.output
    # A damaged record is named by its offset.
    raw = bytearray(seg.read_bytes())
    second = read_log(d)[1]
    raw[second.offset + 150] ^= 0xFF
    seg.write_bytes(raw)
    done = cli("ltx", "verify", "-q", str(seg))
    assert done.exit_code == 1 and f"{seg}@{second.offset}:" in done.output


def test_dump_prints_each_record_or_one(tmp_path: Path) -> None:
    d = make_log(tmp_path, 3)
    seg = d / "seg-00000001.ltxs"
    done = cli("ltx", "dump", "--no-pages", str(seg))
    assert done.exit_code == 0, done.output
    assert "records:     3" in done.output and done.output.count("--- record at byte") == 3
    one = json.loads(cli("ltx", "dump", "--json", "--txid", "2", str(seg)).output)
    assert [r["header"]["min_txid"] for r in one["records"]] == [f"{2:016x}"]
    assert one["torn_tail"] is None and one["records"][0]["valid"]
    missing = cli("ltx", "dump", "--txid", "9", str(seg))
    assert missing.exit_code == 4 and "no record holds TXID 0000000000000009" in missing.output


def test_extract_writes_each_record_as_an_ltx_file(tmp_path: Path) -> None:
    d = make_log(tmp_path, 5, segment_bytes=500)
    segs = sorted(d.iterdir())
    out = tmp_path / "out"
    done = cli("ltx", "extract", *map(str, segs), "-o", str(out))
    assert done.exit_code == 0, done.output
    assert "extracted 5 records (TXIDs 0000000000000001-0000000000000005)" in done.output
    assert sorted(p.name for p in out.iterdir()) == [format_filename(t, t) for t in range(1, 6)]
    for rec in read_log(d):
        data = (out / rec.name).read_bytes()
        assert data == rec.read()
        with (out / rec.name).open("rb") as f:
            Decoder(f).verify()
    # The extracted files are a log of their own: an old-style (one file per record) one.
    assert list(LtxLog(out)) == [TxRange(t, t) for t in range(1, 6)]
    again = cli("ltx", "extract", *map(str, segs), "-o", str(out))
    assert again.exit_code == 0 and "extracted 0 records to" in again.output
    assert "5 already there" in again.output
    (out / format_filename(3, 3)).write_bytes(b"other")
    refused = cli("ltx", "extract", *map(str, segs), "-o", str(out))
    assert refused.exit_code == 1 and "not overwritten" in refused.output
    forced = cli("ltx", "extract", "--force", *map(str, segs), "-o", str(out))
    assert forced.exit_code == 0 and "extracted 1 records" in forced.output


def test_extract_refuses_what_is_not_a_segment(tmp_path: Path) -> None:
    lone = tmp_path / format_filename(1, 1)
    lone.write_bytes(Chain().next({1: page(1)})[1])
    done = cli("ltx", "extract", str(lone), "-o", str(tmp_path / "out"))
    assert done.exit_code == 2 and "not an LTX segment" in done.output
