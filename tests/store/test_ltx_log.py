"""The local LTX log's API: records by TXID range, reading, merging, local retention."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from litefs_py.ltx import Decoder, Header, encode_bytes
from litefs_py.store.ltx_log import LtxLog
from litefs_py.store.page_table import PageTable
from litefs_py.types import TxRange

PS = 4096


class Chain:
    """Encodes consecutive one-transaction records the way the store does."""

    def __init__(self) -> None:
        self.table = PageTable(PS)
        self.txid = 0
        self.checksum = 0

    def next(self, pages: dict[int, bytes]) -> tuple[TxRange, bytes]:
        commit = max(self.table.page_count, *pages)
        changed, _ = self.table.commit(pages, commit)
        self.txid += 1
        header = Header(page_size=PS, commit=commit, min_txid=self.txid, max_txid=self.txid,
                        timestamp=1000 * self.txid,
                        pre_apply_checksum=0 if self.txid == 1 else self.checksum)
        self.checksum = self.table.checksum
        return TxRange(self.txid, self.txid), encode_bytes(header, changed, self.checksum)


def page(n: int) -> bytes:
    return bytes([n % 251]) * PS


def filled(tmp_path: Path, count: int) -> tuple[LtxLog, Chain]:
    log, chain = LtxLog(tmp_path / "ltx"), Chain()
    for i in range(count):
        log.write(*chain.next({1: page(i), 2 + i % 3: page(i + 7)}))
    return log, chain


def test_ranges_read_and_reopen(tmp_path: Path) -> None:
    log, chain = filled(tmp_path, 5)
    assert len(log) == 5 and list(log) == [TxRange(t, t) for t in range(1, 6)]
    assert log.ranges(2) == [TxRange(t, t) for t in range(3, 6)]
    assert log.ranges(5) == [] and log.first_txid() == 1
    last = log.last()
    assert last is not None and last.range == (5, 5)
    assert last.trailer.post_apply_checksum == chain.checksum
    data = log.read(TxRange(3, 3))
    assert Header.decode(data[:100]).min_txid == 3 and log.size(TxRange(3, 3)) == len(data)
    with log.open(TxRange(3, 3)) as f:
        Decoder(f).verify()
    assert log.header(TxRange(4, 4)).pre_apply_checksum != 0
    log.sync()
    (tmp_path / "ltx" / "left-over.tmp").write_bytes(b"x")
    again = LtxLog(tmp_path / "ltx")
    assert list(again) == list(log)
    assert not (tmp_path / "ltx" / "left-over.tmp").exists()


def test_take_back_and_delete(tmp_path: Path) -> None:
    log, chain = filled(tmp_path, 3)
    r, data = chain.next({1: page(99)})
    log.write(r, data)
    log.take_back(r)
    assert log.last_range() == (3, 3)
    with pytest.raises(FileNotFoundError):
        log.read(r)
    log.delete(TxRange(1, 1))
    assert log.first_txid() == 2
    log.sync()  # the taken-back and deleted records are not synced (nor an error)


def test_merge_replaces_the_records_after_a_txid(tmp_path: Path) -> None:
    log, chain = filled(tmp_path, 6)
    job = log.merge_job(after=2)
    assert job is not None
    merged = job()
    assert merged.parts == [TxRange(t, t) for t in range(3, 7)]
    assert log.install_merged(merged) == TxRange(3, 6)
    assert list(log) == [TxRange(1, 1), TxRange(2, 2), TxRange(3, 6)]
    assert log.ranges(4) == [TxRange(3, 6)]  # a merged record straddling the TXID
    info = log.last()
    assert info is not None and info.trailer.post_apply_checksum == chain.checksum
    assert log.merge_job(after=2) is None  # one record: nothing to merge


def test_trim_by_age_keeps_the_newest(tmp_path: Path) -> None:
    log, _ = filled(tmp_path, 5)
    old = time.time() - 100
    for r in list(log)[:3]:
        os.utime(log.describe(r), (old, old))
    assert log.trim(50) == 3
    assert list(log) == [TxRange(4, 4), TxRange(5, 5)]
    for r in log:
        os.utime(log.describe(r), (old, old))
    assert log.trim(50) == 1
    assert list(log) == [TxRange(5, 5)]  # recovery starts from the newest: always kept
    assert log.trim(0) == 0


def test_trim_of_uploaded_records_counts_from_the_upload(tmp_path: Path) -> None:
    """With `upto`, only records the replica holds go, `retention` after the first trim that
    saw them covered, however old they are."""
    log, _ = filled(tmp_path, 6)
    old = time.time() - 1000
    for r in log:
        os.utime(log.describe(r), (old, old))
    assert log.trim(0.2, upto=3) == 0  # covered just now: kept for the retention
    time.sleep(0.25)
    assert log.trim(0.2, upto=5) == 3  # 1-3 covered 0.25 s ago; 4-5 only now
    assert list(log) == [TxRange(t, t) for t in (4, 5, 6)]
    time.sleep(0.25)
    assert log.trim(0.2, upto=5) == 2
    assert list(log) == [TxRange(6, 6)]
    time.sleep(0.25)
    assert log.trim(0.2, upto=6) == 0  # the newest stays


def test_bytes_after_is_the_spool(tmp_path: Path) -> None:
    log, _ = filled(tmp_path, 4)
    sizes = [log.size(r) for r in log]
    assert log.bytes_after(2) == sum(sizes[2:])
    assert log.bytes_after(0) == sum(sizes)
