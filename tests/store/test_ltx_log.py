"""The local LTX log's API: records by TXID range appended to segments, reading, merging,
local retention, and what reopening finds after a crash."""

from __future__ import annotations

import errno
import os
import resource
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from litefs_py.ltx import Decoder, Header, encode_bytes, format_filename
from litefs_py.ltx.segment import FRAME_SIZE, SEGMENT_HEADER_SIZE, encode_frame
from litefs_py.store.ltx_log import LtxLog, read_log
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


def filled(tmp_path: Path, count: int, **kwargs: float) -> tuple[LtxLog, Chain]:
    log, chain = LtxLog(tmp_path / "ltx", **kwargs), Chain()  # type: ignore[arg-type]
    for i in range(count):
        log.write(*chain.next({1: page(i), 2 + i % 3: page(i + 7)}))
    return log, chain


def files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


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
    assert [again.read(r) for r in again] == [log.read(r) for r in log]
    assert not (tmp_path / "ltx" / "left-over.tmp").exists()
    assert not again.quarantined


def test_records_are_appended_to_one_segment(tmp_path: Path) -> None:
    """One file for many commits: each record is a frame and a complete LTX file, back to
    back after the segment header; `read_log` finds them without opening the log."""
    log, _ = filled(tmp_path, 5)
    assert files(tmp_path / "ltx") == ["seg-00000001.ltxs"]
    seg = tmp_path / "ltx" / "seg-00000001.ltxs"
    raw = seg.read_bytes()
    assert raw[:4] == b"LTXS"
    found = read_log(tmp_path / "ltx")
    assert [f.range for f in found] == list(log)
    pos = SEGMENT_HEADER_SIZE
    for f in found:
        assert raw[pos:pos + FRAME_SIZE] == encode_frame(f.length)
        assert f.offset == pos + FRAME_SIZE and f.read() == log.read(f.range)
        pos = f.offset + f.length
    assert pos == len(raw) == seg.stat().st_size


def test_rotation_by_size_and_age(tmp_path: Path) -> None:
    log, _ = filled(tmp_path, 6, segment_bytes=500)  # records are 226 bytes framed
    names = files(tmp_path / "ltx")
    assert len(names) >= 2 and log.segment_count == len(names)
    assert all(p.stat().st_size < 500 + 226 for p in (tmp_path / "ltx").iterdir())
    assert [f.range for f in read_log(tmp_path / "ltx")] == list(log)
    # Age: a segment older than segment_age gets no more records.
    young = LtxLog(tmp_path / "ltx2", segment_age=0.2)
    young.write(*Chain().next({1: page(1)}))
    assert files(tmp_path / "ltx2") == ["seg-00000001.ltxs"]
    c2 = Chain()
    c2.next({1: page(1)})
    young.write(*c2.next({1: page(2)}))
    assert len(files(tmp_path / "ltx2")) == 1
    time.sleep(0.25)
    young.write(*c2.next({1: page(3)}))
    assert files(tmp_path / "ltx2") == ["seg-00000001.ltxs", "seg-00000002.ltxs"]


def test_take_back_cuts_the_segment(tmp_path: Path) -> None:
    log, chain = filled(tmp_path, 3)
    seg = tmp_path / "ltx" / "seg-00000001.ltxs"
    size = seg.stat().st_size
    r, data = chain.next({1: page(99)})
    log.write(r, data)
    assert seg.stat().st_size == size + FRAME_SIZE + len(data)
    log.take_back(r)
    assert seg.stat().st_size == size  # gone from the file, not only from the index
    assert log.last_range() == (3, 3)
    with pytest.raises(FileNotFoundError):
        log.read(r)
    log.sync()  # the taken-back record is not synced (nor an error)
    assert list(LtxLog(tmp_path / "ltx")) == [TxRange(t, t) for t in (1, 2, 3)]


def test_deleting_the_newest_records_in_any_order_cuts_them_all(tmp_path: Path) -> None:
    """A replica apply that fails deletes the records it logged, oldest first."""
    log, chain = filled(tmp_path, 2)
    seg = tmp_path / "ltx" / "seg-00000001.ltxs"
    size = seg.stat().st_size
    r3, r4 = chain.next({1: page(3)}), chain.next({1: page(4)})
    log.write(*r3)
    log.write(*r4)
    log.delete(r3[0])  # not the last: only dropped for now
    assert seg.stat().st_size > size
    log.delete(r4[0])
    assert seg.stat().st_size == size
    assert list(LtxLog(tmp_path / "ltx")) == [TxRange(1, 1), TxRange(2, 2)]


@pytest.fixture
def file_size_limit() -> Iterator[None]:
    """Lets a test lower RLIMIT_FSIZE (writes past it fail with EFBIG, the kernel's own
    error, like a full disk) and puts it back."""
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)


def test_failed_append_leaves_nothing(tmp_path: Path, file_size_limit: None) -> None:
    """An append the filesystem refuses part-way (EFBIG here, ENOSPC on a full disk) is cut
    back: the segment ends after the last good record, and appends work again once there is
    room."""
    log, chain = filled(tmp_path, 3)
    seg = tmp_path / "ltx" / "seg-00000001.ltxs"
    size = seg.stat().st_size
    r, data = chain.next({1: page(50), 2: page(51), 3: page(52), 4: page(53)})
    resource.setrlimit(resource.RLIMIT_FSIZE,
                       (size + 200, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    with pytest.raises(OSError) as exc:
        log.write(r, data)
    assert exc.value.errno == errno.EFBIG
    assert seg.stat().st_size == size and log.last_range() == (3, 3)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    log.write(r, data)
    log.sync()
    again = LtxLog(tmp_path / "ltx")
    assert list(again) == [TxRange(t, t) for t in range(1, 5)] and not again.quarantined
    assert again.read(r) == data


def test_torn_tail_is_cut_and_quarantined(tmp_path: Path) -> None:
    """A crash during an append leaves a frame whose record is cut short: reopening cuts it
    off, keeps the bytes in the quarantine directory, and appends go on after the last good
    record."""
    log, chain = filled(tmp_path, 3)
    log.close()
    seg = tmp_path / "ltx" / "seg-00000001.ltxs"
    good = seg.stat().st_size
    r, data = chain.next({1: page(9)})
    torn = encode_frame(len(data)) + data[:len(data) // 2]
    with open(seg, "ab") as f:
        f.write(torn)
    assert [f.range for f in read_log(tmp_path / "ltx")] == [(1, 1), (2, 2), (3, 3)]
    assert seg.stat().st_size == good + len(torn)  # read_log changes nothing
    again = LtxLog(tmp_path / "ltx")
    assert list(again) == [TxRange(t, t) for t in (1, 2, 3)]
    assert seg.stat().st_size == good
    quarantined = files(tmp_path / "quarantine")
    assert len(quarantined) == 1 and quarantined[0].endswith(f"seg-00000001.ltxs-from-{good}")
    assert (tmp_path / "quarantine" / quarantined[0]).read_bytes() == torn
    again.write(r, data)
    assert list(LtxLog(tmp_path / "ltx")) == [TxRange(t, t) for t in (1, 2, 3, 4)]


def test_a_bad_record_cuts_the_rest_of_the_newest_segment(tmp_path: Path) -> None:
    """Records of the newest segment are fully verified when the log is opened: one whose
    checksum does not match ends the log there (power loss before an fsync can leave such
    bytes); it and everything after it go to the quarantine, nothing is deleted."""
    log, _ = filled(tmp_path, 4)
    log.close()
    second = read_log(tmp_path / "ltx")[1]
    seg = second.path
    raw = bytearray(seg.read_bytes())
    raw[second.offset + 200] ^= 0xFF  # inside the first page frame's payload
    seg.write_bytes(raw)
    again = LtxLog(tmp_path / "ltx")
    assert list(again) == [TxRange(1, 1)]
    (q,) = (tmp_path / "quarantine").iterdir()
    assert q.read_bytes() == bytes(raw[second.offset - FRAME_SIZE:])


def test_an_incomplete_new_segment_is_quarantined(tmp_path: Path) -> None:
    """A crash right after a rotation created the next segment, before its header was
    written."""
    log, _ = filled(tmp_path, 2)
    log.close()
    (tmp_path / "ltx" / "seg-00000002.ltxs").write_bytes(b"LTX")
    again = LtxLog(tmp_path / "ltx")
    assert list(again) == [TxRange(1, 1), TxRange(2, 2)]
    assert files(tmp_path / "ltx") == ["seg-00000001.ltxs"]
    assert [p.name.endswith("seg-00000002.ltxs") for p in (tmp_path / "quarantine").iterdir()]


def test_merge_replaces_the_records_after_a_txid(tmp_path: Path) -> None:
    log, chain = filled(tmp_path, 6)
    job = log.merge_job(after=2)
    assert job is not None
    merged = job()
    assert merged.parts == [TxRange(t, t) for t in range(3, 7)]
    log.write(*chain.next({1: page(70)}))  # a commit while the merge ran
    assert log.install_merged(merged) == TxRange(3, 6)
    expected = [TxRange(1, 1), TxRange(2, 2), TxRange(3, 6), TxRange(7, 7)]
    assert list(log) == expected
    assert log.ranges(4) == [TxRange(3, 6), TxRange(7, 7)]  # a merged record straddling 4
    info = log.info(TxRange(3, 6))
    assert info.header.max_txid == 6
    assert log.merge_job(after=6) is None  # one record: nothing to merge
    # The parts' bytes are still in the segment; reopening does not bring them back.
    assert list(LtxLog(tmp_path / "ltx")) == expected


def test_a_record_supersedes_what_it_covers_after_a_crash(tmp_path: Path) -> None:
    """A crash between appending a covering record (a replica's snapshot) and deleting what
    it covers: reopening finds the covering record as the newest, the old ones gone."""
    log, chain = filled(tmp_path, 5)
    snapshot = Header(page_size=PS, commit=chain.table.page_count, min_txid=1, max_txid=8,
                      timestamp=1)
    pages = [(p, page(p)) for p in range(1, chain.table.page_count + 1)]
    data = encode_bytes(snapshot, pages, track_checksum=True)
    log.write(TxRange(1, 8), data)
    log.close()
    again = LtxLog(tmp_path / "ltx")
    assert list(again) == [TxRange(1, 8)]
    assert again.last_range() == (1, 8)


def test_trim_by_age_keeps_the_newest_segment(tmp_path: Path) -> None:
    log, _ = filled(tmp_path, 5, segment_bytes=1)  # a segment per record
    segs = sorted((tmp_path / "ltx").iterdir())
    assert len(segs) == 5
    old = time.time() - 100
    for p in segs[:3]:
        os.utime(p, (old, old))
    assert log.trim(50) == 3
    assert list(log) == [TxRange(4, 4), TxRange(5, 5)]
    assert files(tmp_path / "ltx") == [p.name for p in segs[3:]]
    for p in segs[3:]:
        os.utime(p, (old, old))
    assert log.trim(50) == 1
    assert list(log) == [TxRange(5, 5)]  # recovery starts from the newest: always kept
    assert log.trim(0) == 0


def test_trim_deletes_whole_segments_only(tmp_path: Path) -> None:
    log, _ = filled(tmp_path, 6, segment_bytes=600)
    per_segment = [[f.range for f in read_log(tmp_path / "ltx") if f.path == p]
                   for p in sorted((tmp_path / "ltx").iterdir())]
    assert len(per_segment) == 2 and all(len(s) == 3 for s in per_segment)
    first = per_segment[0]
    # The replica holds only part of the first segment: nothing can go.
    assert log.trim(0, upto=first[0].max_txid) == 0
    assert log.trim(0, upto=first[-1].max_txid) == len(first)
    assert log.first_txid() == first[-1].max_txid + 1


def test_trim_of_uploaded_records_counts_from_the_upload(tmp_path: Path) -> None:
    """With `upto`, only records the replica holds go, `retention` after the first trim that
    saw them covered, however old they are."""
    log, _ = filled(tmp_path, 6, segment_bytes=1)
    old = time.time() - 1000
    for p in (tmp_path / "ltx").iterdir():
        os.utime(p, (old, old))
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


def test_old_one_file_per_record_logs_are_read(tmp_path: Path) -> None:
    """A data directory from before segments: its files are records (the newest verified,
    and quarantined if torn), new records go into a segment after them, retention deletes
    the old files one by one."""
    d = tmp_path / "ltx"
    d.mkdir()
    chain = Chain()
    records = [chain.next({1: page(i)}) for i in range(4)]
    for r, data in records[:3]:
        (d / format_filename(*r)).write_bytes(data)
    (d / format_filename(*records[3][0])).write_bytes(records[3][1][:70])  # torn
    log = LtxLog(d)
    assert list(log) == [TxRange(t, t) for t in (1, 2, 3)]
    assert [p.name.endswith(format_filename(4, 4)) for p in (tmp_path / "quarantine").iterdir()]
    assert log.read(TxRange(2, 2)) == records[1][1]
    with log.open(TxRange(3, 3)) as f:
        Decoder(f).verify()
    log.write(*records[3])
    assert list(log) == [TxRange(t, t) for t in (1, 2, 3, 4)]
    assert [f.range for f in read_log(d)] == list(log)
    old = time.time() - 100
    for r, _ in records[:3]:
        os.utime(d / format_filename(*r), (old, old))
    assert log.trim(50) == 3
    assert files(d) == ["seg-00000001.ltxs"]
    assert list(LtxLog(d)) == [TxRange(4, 4)]
