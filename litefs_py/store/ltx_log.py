"""The local LTX log of one database: its records, addressed by TXID range.

Consumers (uploader, stream server, recovery, replica apply, CLI) read and remove records by
`TxRange` through this class and never by path: where a record's bytes live is known here
only.

**Segments** (docs/formats.md §8). Records are appended, each as a complete LTX v3 file
behind a 16-byte frame, to one open segment file per database,
`DATA/dbs/<name>/ltx/seg-<sequence>.ltxs`. Appending is one `pwritev` into an open file: no
file is created per commit, and the record exists (in the page cache) before the FUSE request
that completed the commit returns, so a crash of the filesystem process cannot lose it. A new
segment is started when the active one reaches `segment_bytes` or `segment_age` seconds: the
old one is fdatasynced first ("sealed"), so only the newest segment can ever hold a torn
record, and the directory needs an fsync only after a segment was created.

**Durability.** Records are not synced when written: SQLite decides when data must be durable,
and `sync_job()` runs before SQLite's own fsync of the database, WAL or journal (one
fdatasync of the active segment, plus the directory after a rotation), so a record reaches
stable storage no later than the transaction it records.

**Opening** reads every segment's frames (headers only) and fully verifies the records of the
newest one. Where the records stop being valid — a frame or record cut short by a crash, or
damage — the rest of the log is cut off and moved to `DATA/dbs/<name>/quarantine/`, never
deleted (a process crash can tear only the record whose request had not returned, so no
acknowledged record is cut; damage elsewhere makes recovery refuse the database, with the
bytes kept). A record appended later that covers earlier ones (a merge, a replica's
snapshot or compacted file) supersedes them, also when the log is read again after a crash.

**Removing** records: a record that is the last of the active segment is cut off the file
(`take_back`, `quarantine`, a failed replica apply); any other record is dropped from the
index and its bytes stay in its segment, which is deleted once none of its records is in
the log (`trim` deletes whole segments). Such a dropped record is read again at the next
start unless a later record supersedes it, which is the case for every caller (merges and
replica applies delete what their new record covers).

**Old data directories** with one file per record (`<min>-<max>.ltx`, before segments) are
read as they are: those files stay records until retention deletes them; new records go into
segments.

Reading methods that take a range (`read`, `open`, `info`, `header`, `size`) look the record up
with one dict lookup and open its file by name, so worker threads may call them while the
trio thread appends; a record deleted meanwhile raises FileNotFoundError.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import io
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..ltx import (
    HEADER_SIZE,
    TRAILER_SIZE,
    Decoder,
    Header,
    LTXError,
    Trailer,
    compact,
    format_filename,
    parse_filename,
)
from ..ltx.filename import is_ltx_filename
from ..ltx.segment import (
    FRAME_SIZE,
    SEGMENT_HEADER_SIZE,
    SegmentScan,
    encode_frame,
    encode_segment_header,
    open_record,
    scan_segment,
)
from ..types import TxRange

log = logging.getLogger("litefs.store")

#: A new segment is started once the active one holds this many bytes ...
SEGMENT_BYTES = 16 << 20
#: ... or is this many seconds old (retention deletes whole segments, so an idle database's
#: log is not kept forever in one segment).
SEGMENT_AGE = 600.0
_SEGMENT_NAME = re.compile(r"seg-(\d{8,})\.ltxs")


def segment_name(seq: int) -> str:
    return f"seg-{seq:08d}.ltxs"


def is_segment_name(name: str) -> bool:
    return _SEGMENT_NAME.fullmatch(name) is not None


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries durable (new, renamed or deleted files in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class RecordInfo:
    """A record's range with its decoded header and trailer (the pages not read)."""

    range: TxRange
    header: Header
    trailer: Trailer


@dataclass(frozen=True, slots=True)
class MergedRecords:
    """Consecutive records merged into one (spool pressure), ready to replace them."""

    parts: list[TxRange]
    header: Header
    data: bytes


@dataclass(frozen=True, slots=True)
class LoggedRecord:
    """Where one record of a log lies, as `read_log` finds it (for tools and tests that read
    a log without opening it for writing)."""

    range: TxRange
    path: Path  # its segment, or its own file in an old data directory
    offset: int
    length: int

    @property
    def name(self) -> str:
        """The file name the record has on its own (`litefs ltx extract`, replicas)."""
        return format_filename(*self.range)

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.length)

    def open(self) -> BinaryIO:
        """The record as a binary stream of its own."""
        f = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed with the record
        return open_record(f, self.offset, self.length, close_file=True)


@dataclass(slots=True, eq=False)
class _Segment:
    seq: int
    path: str
    born: float  # time.monotonic() when it was created (estimated for older ones)
    end: int  # just past its last record: where the next one is appended
    records: list[_Loc] = field(default_factory=list)  # in file order
    live: int = 0  # records of it in the index
    fd: int | None = None  # open for appending (the active segment, once written to)


@dataclass(slots=True, eq=False)
class _Loc:
    range: TxRange
    segment: _Segment | None  # None: a file of its own (an old data directory)
    offset: int  # of the LTX bytes in the segment (0 for a file of its own)
    length: int  # -1 for a file of its own (its size)
    dead: bool = False


class _Index:
    """The log's records by TXID range: a sorted list of ranges and a dict of where each
    record is. Records nearly always arrive in TXID order, so adding one is an append (a
    SortedDict insert cost several times more per commit)."""

    __slots__ = ("keys", "locs")

    def __init__(self) -> None:
        self.keys: list[TxRange] = []
        self.locs: dict[TxRange, _Loc] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def get(self, r: TxRange) -> _Loc | None:
        return self.locs.get(r)

    def add(self, loc: _Loc) -> None:
        r = loc.range
        keys = self.keys
        if r not in self.locs:
            if not keys or r > keys[-1]:
                keys.append(r)
            else:
                bisect.insort(keys, r)
        self.locs[r] = loc

    def pop(self, r: TxRange) -> _Loc | None:
        loc = self.locs.pop(r, None)
        if loc is not None:
            keys = self.keys
            i = bisect.bisect_left(keys, r)
            del keys[i]
        return loc

    def start(self, r: TxRange) -> int:
        """Position of the first range >= r."""
        return bisect.bisect_left(self.keys, r)


@dataclass(slots=True)
class _Cut:
    """Where the valid log ends inside one file: bytes from `offset` on (the whole file when
    it has no valid segment header) are to be quarantined."""

    path: str
    offset: int | None
    reason: str


@dataclass(slots=True)
class _Found:
    legacy: list[TxRange]
    segments: list[tuple[_Segment, SegmentScan]]
    cuts: list[_Cut]
    next_seq: int
    temporary: list[str]


def _find(directory: str, *, verify_last: bool) -> _Found:
    """Read a log directory without changing it: the old one-file records, each segment's
    records up to where they stop being valid, and what would have to be cut."""
    legacy: list[TxRange] = []
    seqs: list[tuple[int, str]] = []
    temporary: list[str] = []
    for name in os.listdir(directory):
        if is_ltx_filename(name):
            legacy.append(TxRange(*parse_filename(name)))
        elif (m := _SEGMENT_NAME.fullmatch(name)) is not None:
            seqs.append((int(m.group(1)), name))
        elif name.endswith(".tmp"):
            temporary.append(name)  # left by versions that wrote under a temporary name
    legacy.sort()
    seqs.sort()
    found = _Found(legacy, [], [], (seqs[-1][0] + 1) if seqs else 1, temporary)
    now_wall, now_mono = time.time(), time.monotonic()
    for i, (seq, name) in enumerate(seqs):
        path = f"{directory}/{name}"
        last = i == len(seqs) - 1
        try:
            with open(path, "rb") as f:
                scan = scan_segment(f, name=path, verify=last and verify_last)
        except LTXError as exc:
            found.cuts.append(_Cut(path, None, exc.message))
            found.cuts.extend(_Cut(f"{directory}/{n}", None, f"follows {name}, cut above")
                              for _, n in seqs[i + 1:])
            break
        except FileNotFoundError:
            continue  # deleted meanwhile (read_log on a live log)
        born = now_mono - max(0.0, now_wall - scan.created_ms / 1000)
        seg = _Segment(seq, path, born, scan.end)
        found.segments.append((seg, scan))
        if scan.problem is not None:
            found.cuts.append(_Cut(path, scan.end, scan.problem))
            found.cuts.extend(_Cut(f"{directory}/{n}", None, f"follows {name}, cut above")
                              for _, n in seqs[i + 1:])
            break
    return found


def _index(found: _Found, directory: str,
           on_superseded_file: Callable[[TxRange], None] | None = None) -> _Index:
    """The log's records in TXID order. Records in segments supersede the records before them
    that they cover (see the module docstring): a snapshot (min TXID 1) everything before it,
    any other record those whose TXIDs overlap its own."""
    index = _Index()
    for r in found.legacy:
        index.add(_Loc(r, None, 0, -1))
    for seg, scan in found.segments:
        for rec in scan.records:
            h = rec.header
            loc = _Loc(TxRange(h.min_txid, h.max_txid), seg, rec.offset, rec.length)
            for old in _overlapping(index, loc.range):
                index.pop(old.range)
                old.dead = True
                if old.segment is not None:
                    old.segment.live -= 1
                elif on_superseded_file is not None:
                    on_superseded_file(old.range)
            index.add(loc)
            seg.records.append(loc)
            seg.live += 1
    return index


def _overlapping(index: _Index, r: TxRange) -> list[_Loc]:
    """The records a new record `r` supersedes."""
    keys = index.keys
    if not keys:
        return []
    if r.min_txid == 1:
        return [index.locs[k] for k in keys]
    start = index.start(TxRange(r.min_txid, 0))
    if start > 0 and keys[start - 1].max_txid >= r.min_txid:
        start -= 1  # one that straddles r's start
    out = []
    for k in keys[start:]:
        if k.min_txid > r.max_txid:
            break
        if k.max_txid >= r.min_txid:
            out.append(index.locs[k])
    return out


def read_log(directory: Path) -> list[LoggedRecord]:
    """Where each record of the log in `directory` lies, in TXID order, as the mount would
    find them, without changing anything (safe while a mount appends: a record being written
    is not listed). For tools and tests; the mount itself uses `LtxLog`."""
    d = str(directory)
    found = _find(d, verify_last=False)
    index = _index(found, d)
    out = []
    for r in index.keys:
        loc = index.locs[r]
        if loc.segment is None:
            path = Path(d) / format_filename(*r)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            out.append(LoggedRecord(r, path, 0, size))
        else:
            out.append(LoggedRecord(r, Path(loc.segment.path), loc.offset, loc.length))
    return out


class LtxLog:
    def __init__(self, directory: Path, *, quarantine: Path | None = None,
                 segment_bytes: int = SEGMENT_BYTES, segment_age: float = SEGMENT_AGE) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._dir_str = str(directory)
        self._quarantine_dir = quarantine if quarantine is not None else \
            directory.parent / "quarantine"
        self._segment_bytes = segment_bytes
        self._segment_age = segment_age
        self._segments: list[_Segment] = []  # oldest first; the last one is the active one
        self._active: _Segment | None = None
        self._unsynced = 0  # records appended since the last sync_job
        self._dir_dirty = False
        # (TXID, monotonic time) each time `trim(upto=...)` saw a higher TXID: when records
        # up to that TXID became deletable (see trim).
        self._covered_txids: list[int] = []
        self._covered_at: list[float] = []
        #: Files this log moved to the quarantine directory since it was opened.
        self.quarantined: list[Path] = []
        self._load()

    # ---- opening ---------------------------------------------------------------------------

    def _load(self) -> None:
        d = self._dir_str
        found = _find(d, verify_last=True)
        for name in found.temporary:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{d}/{name}")
        if not found.segments and not found.cuts and found.legacy:
            self._check_newest_file(found)
        self._files = _index(found, d, self._delete_superseded_file)
        self._segments = [seg for seg, _scan in found.segments]
        self._next_seq = found.next_seq
        for cut in found.cuts:
            self._apply_cut(cut)
        if self._segments:
            self._active = self._segments[-1]

    def _check_newest_file(self, found: _Found) -> None:
        """An old data directory (one file per record): only its newest file can be torn."""
        r = found.legacy[-1]
        path = self._legacy_path(r)
        try:
            with open(path, "rb") as f:
                Decoder(f, name=path).verify()
        except LTXError as exc:
            log.warning("%s: torn by a crash before its transaction completed (%s); moved to "
                        "%s", path, exc.message, self._quarantine_dir)
            self._quarantine_file(path)
            found.legacy.pop()

    def _delete_superseded_file(self, r: TxRange) -> None:
        """An old one-file record that a later record covers (a crash came between writing the
        later record and deleting this one)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._legacy_path(r))

    def _apply_cut(self, cut: _Cut) -> None:
        if cut.offset is None:
            whole = self._quarantine_file(cut.path)
            log.warning("%s: not a complete LTX segment (%s); moved to %s", cut.path, cut.reason,
                        whole)
            return
        seg = next(s for s in self._segments if s.path == cut.path)
        q = self._quarantine_tail(seg, cut.offset)
        if q is not None:
            log.warning("%s: the records end at byte %d (%s); the %d bytes after it, torn by a "
                        "crash during an append (or damaged), were moved to %s", cut.path,
                        cut.offset, cut.reason, os.path.getsize(q), q)

    # ---- quarantine ----------------------------------------------------------------------

    def _quarantine_target(self, base: str) -> Path:
        qdir = self._quarantine_dir
        qdir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = qdir / f"{stamp}-{base}"
        n = 1
        while target.exists():
            n += 1
            target = qdir / f"{stamp}-{n}-{base}"
        return target

    def _quarantine_file(self, path: str) -> Path:
        target = self._quarantine_target(os.path.basename(path))
        os.replace(path, target)
        fsync_dir(target.parent)
        fsync_dir(self._dir_str)
        self.quarantined.append(target)
        return target

    def _quarantine_tail(self, seg: _Segment, offset: int) -> Path | None:
        """Move the bytes of `seg` from `offset` on to the quarantine directory and cut the
        segment there."""
        size = os.path.getsize(seg.path)
        if size <= offset:
            return None
        target = self._quarantine_target(f"{os.path.basename(seg.path)}-from-{offset}")
        with open(seg.path, "rb") as src, open(target, "wb") as dst:
            src.seek(offset)
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        fsync_dir(target.parent)
        fd = os.open(seg.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        seg.end = min(seg.end, offset)
        self.quarantined.append(target)
        return target

    def quarantine(self, r: TxRange, reason: str) -> Path:
        """Remove record `r` from the log, keeping its bytes in the quarantine directory
        (recovery found that its transaction never completed). Returns where they went."""
        loc = self._loc(r)
        seg = loc.segment
        what = self.describe(r)
        if seg is None:
            self._files.pop(r)
            target = self._quarantine_file(self._legacy_path(r))
        else:
            target = self._quarantine_target(
                f"{os.path.basename(seg.path)}-{format_filename(*r)}")
            with open(seg.path, "rb") as src, open(target, "wb") as dst:
                src.seek(loc.offset)
                dst.write(src.read(loc.length))
                dst.flush()
                os.fsync(dst.fileno())
            fsync_dir(target.parent)
            self.quarantined.append(target)
            self.delete(r)
        log.warning("%s: %s; moved to %s", what, reason, target)
        return target

    @staticmethod
    def has_records(directory: Path) -> bool:
        """Whether a log directory holds any record (without opening it)."""
        try:
            names = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            return False
        for name in names:
            if is_ltx_filename(name):
                return True
            if is_segment_name(name):
                with contextlib.suppress(OSError):
                    if os.path.getsize(directory / name) > SEGMENT_HEADER_SIZE:
                        return True
        return False

    # ---- naming a record -------------------------------------------------------------------

    def _legacy_path(self, r: TxRange) -> str:
        return f"{self._dir_str}/{format_filename(r[0], r[1])}"

    def _loc(self, r: TxRange) -> _Loc:
        loc: _Loc | None = self._files.get(r)
        if loc is None:
            raise FileNotFoundError(errno.ENOENT, "no such LTX record", self.describe(r))
        return loc

    def describe(self, r: TxRange) -> str:
        """How to name a record in a message (its segment and where in it)."""
        loc = self._files.get(r)
        if loc is None or loc.segment is None:
            return self._legacy_path(r)
        return (f"{loc.segment.path} (record {r.min_txid:016x}-{r.max_txid:016x} at byte "
                f"{loc.offset})")

    # ---- the index -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._files)

    def __iter__(self) -> Iterator[TxRange]:
        """Every record, in TXID order (as they are now: the log may change meanwhile)."""
        return iter(self._files.keys[:])

    def ranges(self, after: int = 0) -> list[TxRange]:
        """The records holding any TXID after `after` (what a reader at `after` still lacks),
        in TXID order; a merged record straddling `after` is included."""
        keys = self._files.keys
        start = bisect.bisect_left(keys, TxRange(after + 1, 0))
        if start > 0 and keys[start - 1].max_txid > after:
            start -= 1
        return keys[start:]

    def first_txid(self) -> int | None:
        keys = self._files.keys
        return keys[0].min_txid if keys else None

    def last_range(self) -> TxRange | None:
        keys = self._files.keys
        return keys[-1] if keys else None

    def last(self) -> RecordInfo | None:
        """The newest record with its header and trailer."""
        r = self.last_range()
        return None if r is None else self.info(r)

    @property
    def segment_count(self) -> int:
        """Segment files in the log (old one-file records not counted)."""
        return len(self._segments)

    # ---- reading a record (safe in worker threads) -----------------------------------------

    def _pread(self, loc: _Loc, size: int, offset: int) -> bytes:
        """`size` bytes at `offset` within the record."""
        path = self._legacy_path(loc.range) if loc.segment is None else loc.segment.path
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if offset < 0:  # from the record's end
                end = os.fstat(fd).st_size if loc.segment is None else loc.offset + loc.length
                offset = end + offset - loc.offset
            return os.pread(fd, size, loc.offset + offset)
        finally:
            os.close(fd)

    def info(self, r: TxRange) -> RecordInfo:
        loc = self._loc(r)
        header = Header.decode(self._pread(loc, HEADER_SIZE, 0), name=self.describe(r))
        trailer = Trailer.decode(self._pread(loc, TRAILER_SIZE, -TRAILER_SIZE))
        return RecordInfo(r, header, trailer)

    def header(self, r: TxRange) -> Header:
        loc = self._loc(r)
        return Header.decode(self._pread(loc, HEADER_SIZE, 0), name=self.describe(r))

    def read(self, r: TxRange) -> bytes:
        """The whole encoded record."""
        loc = self._loc(r)
        if loc.segment is None:
            with open(self._legacy_path(r), "rb") as f:
                return f.read()
        data = self._pread(loc, loc.length, 0)
        if len(data) != loc.length:
            raise FileNotFoundError(errno.ENOENT, "LTX record cut short", self.describe(r))
        return data

    def open(self, r: TxRange) -> BinaryIO:
        """The record as a binary stream (for decoding without holding it in memory)."""
        loc = self._loc(r)
        if loc.segment is None:
            return open(self._legacy_path(r), "rb")
        f = open(loc.segment.path, "rb", buffering=0)  # noqa: SIM115 - closed with the record
        return open_record(f, loc.offset, loc.length, close_file=True)

    def size(self, r: TxRange) -> int:
        loc = self._loc(r)
        if loc.segment is None:
            return os.stat(self._legacy_path(r)).st_size
        return loc.length

    def bytes_after(self, txid: int) -> int:
        """How many bytes the records after `txid` take (the uploader's spool)."""
        total = 0
        for r in self.ranges(txid):
            with contextlib.suppress(FileNotFoundError):
                total += self.size(r)
        return total

    # ---- appending -----------------------------------------------------------------------

    def _segment_for_append(self) -> _Segment:
        seg = self._active
        if (seg is None or seg.end >= self._segment_bytes
                or time.monotonic() - seg.born >= self._segment_age):
            seg = self._rotate()
        if seg.fd is None:
            seg.fd = os.open(seg.path, os.O_WRONLY | os.O_CLOEXEC)
        return seg

    def _rotate(self) -> _Segment:
        """Seal the active segment (fdatasync: records in later segments are then never
        older than a torn one) and start a new one."""
        old = self._active
        if old is not None:
            fd = old.fd if old.fd is not None else os.open(old.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
                old.fd = None
        seq = self._next_seq
        path = f"{self._dir_str}/{segment_name(seq)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _pwrite_all(fd, encode_segment_header(int(time.time() * 1000)), 0)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        self._next_seq = seq + 1
        seg = _Segment(seq, path, time.monotonic(), SEGMENT_HEADER_SIZE, fd=fd)
        self._segments.append(seg)
        self._active = seg
        self._dir_dirty = True
        if old is not None and old.live <= 0:
            self._drop_segment(old)
        return seg

    def write(self, r: TxRange, data: bytes) -> None:
        """Append one encoded record (not yet synced). If the append fails, the segment is
        cut back to where it was and the error raised: nothing of the record remains."""
        seg = self._segment_for_append()
        fd = seg.fd
        assert fd is not None
        start = seg.end
        n = len(data)
        try:
            done = os.pwritev(fd, (encode_frame(n), data), start)
            if done != n + FRAME_SIZE:
                _pwrite_all(fd, (encode_frame(n) + data)[done:], start + done)
        except BaseException as exc:
            self._truncate(seg, start)
            if isinstance(exc, OSError):
                log.warning("%s: could not append the record of TXIDs %d-%d (%s); the commit "
                            "is refused", seg.path, r.min_txid, r.max_txid, exc.strerror or exc)
            raise
        seg.end = start + FRAME_SIZE + n
        self._add(_Loc(r, seg, start + FRAME_SIZE, n))
        self._unsynced += 1

    def write_streaming(self, r: TxRange, produce: Callable[[BinaryIO], None]) -> None:
        """Append one record by letting `produce` encode into it (for records too big to hold
        in memory, such as a snapshot of a large database); synced before returning."""
        seg = self._segment_for_append()
        fd = seg.fd
        assert fd is not None
        start = seg.end
        out = _Appender(fd, start + FRAME_SIZE)
        try:
            # Length 0 until the record is complete: a crash meanwhile leaves a torn tail.
            _pwrite_all(fd, encode_frame(0), start)
            with io.BufferedWriter(out, buffer_size=1 << 20) as buffered:  # type: ignore[type-var]
                produce(buffered)
                buffered.flush()
                n = out.pos - start - FRAME_SIZE
                _pwrite_all(fd, encode_frame(n), start)
                os.fdatasync(fd)
        except BaseException:
            self._truncate(seg, start)
            raise
        seg.end = start + FRAME_SIZE + n
        self._add(_Loc(r, seg, start + FRAME_SIZE, n))

    def _add(self, loc: _Loc) -> None:
        old = self._files.get(loc.range)
        if old is not None:
            self._retire(old)  # the same TXIDs written again (a replica re-applying a file)
        self._files.add(loc)
        seg = loc.segment
        assert seg is not None
        seg.records.append(loc)
        seg.live += 1

    def _truncate(self, seg: _Segment, size: int) -> None:
        """Cut the active segment back to `size` (an append that failed or was taken back)."""
        try:
            fd = seg.fd if seg.fd is not None else os.open(seg.path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, size)
            finally:
                if fd != seg.fd:
                    os.close(fd)
        except OSError as exc:
            # The bytes stay; the next start reads them as a torn tail or, if complete, finds
            # that their transaction never reached the database and quarantines them.
            log.error("%s: could not cut the segment back to %d bytes: %s", seg.path, size, exc)

    def take_back(self, r: TxRange) -> None:
        """Remove a record whose transaction did not happen (the commit write failed)."""
        self.delete(r)

    def delete(self, r: TxRange) -> None:
        """Remove one record from the log (retention of old one-file records, a merge, a
        replica's superseded history, a failed apply); see the module docstring for what
        happens to its bytes."""
        loc = self._files.pop(r)
        if loc is not None:
            self._retire(loc)

    def _retire(self, loc: _Loc) -> None:
        seg = loc.segment
        if seg is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._legacy_path(loc.range))
            return
        loc.dead = True
        seg.live -= 1
        if seg is self._active:
            recs = seg.records
            while recs and recs[-1].dead:
                recs.pop()
            end = recs[-1].offset + recs[-1].length if recs else SEGMENT_HEADER_SIZE
            if end < seg.end:
                self._truncate(seg, end)
                seg.end = end
        elif seg.live <= 0:
            self._drop_segment(seg)

    def _drop_segment(self, seg: _Segment) -> int:
        """Delete a segment file and whatever of it is still in the index; returns how many
        records that was."""
        if seg.fd is not None:
            os.close(seg.fd)
            seg.fd = None
        dropped = 0
        for loc in seg.records:
            if not loc.dead and self._files.get(loc.range) is loc:
                self._files.pop(loc.range)
                dropped += 1
            loc.dead = True
        seg.live = 0
        with contextlib.suppress(FileNotFoundError):
            os.unlink(seg.path)
        with contextlib.suppress(ValueError):
            self._segments.remove(seg)
        if self._active is seg:
            self._active = None
        return dropped

    # ---- local retention -----------------------------------------------------------------

    def trim(self, retention: float, *, upto: int | None = None) -> int:
        """Delete the oldest records once they are `retention` seconds old, a whole segment at
        a time, never the newest segment (it holds the newest record, which recovery starts
        from). Returns how many records were deleted.

        Without `upto` (no replica), a segment's age counts from its last append. With `upto`
        (the replica holds every TXID up to it), only segments whose records are all within
        it are deleted, and their age counts from the first call whose `upto` covered them: a
        record that waited an hour for the replica is still kept `retention` after it
        reached it. Old one-file records go one at a time, by the same rules.

        So that whole segments can go when due, a log trimmed with `retention` starts a new
        segment at least every `retention` seconds (one second at least).
        """
        self._segment_age = min(self._segment_age, max(retention, 1.0))
        now = time.monotonic()
        if upto is not None:
            txids, times = self._covered_txids, self._covered_at
            if not txids or upto > txids[-1]:
                txids.append(upto)
                times.append(now)
        deleted = self._trim_files(retention, upto, now)
        cutoff = time.time() - retention
        for seg in list(self._segments):
            if seg is self._active or seg is self._segments[-1]:
                break
            live = [loc for loc in seg.records if not loc.dead]
            if live:
                if upto is None:
                    try:
                        if os.stat(seg.path).st_mtime >= cutoff:
                            break  # in order, so the rest are newer
                    except FileNotFoundError:
                        pass
                else:
                    top = max(loc.range.max_txid for loc in live)
                    if top > upto or not self._covered_long_enough(top, retention, now):
                        break
            deleted += self._drop_segment(seg)
        self._forget_covered()
        return deleted

    def _trim_files(self, retention: float, upto: int | None, now: float) -> int:
        files = self._files
        deleted = 0
        cutoff = time.time() - retention
        while len(files) > 1:
            r = files.keys[0]
            if files.locs[r].segment is not None:
                break
            if upto is None:
                try:
                    if os.stat(self._legacy_path(r)).st_mtime >= cutoff:
                        break
                except FileNotFoundError:
                    pass
            elif r.max_txid > upto or not self._covered_long_enough(r.max_txid, retention, now):
                break
            self.delete(r)
            deleted += 1
        return deleted

    def _covered_long_enough(self, txid: int, retention: float, now: float) -> bool:
        i = bisect.bisect_left(self._covered_txids, txid)
        return i < len(self._covered_at) and now - self._covered_at[i] >= retention

    def _forget_covered(self) -> None:
        """Forget the marks no remaining record needs (the first one covering the oldest)."""
        if self._files and self._covered_txids:
            keep = bisect.bisect_left(self._covered_txids, self._files.keys[0].max_txid)
            if keep:
                del self._covered_txids[:keep], self._covered_at[:keep]

    # ---- merging (spool pressure) --------------------------------------------------------

    def merge_job(self, after: int) -> Callable[[], MergedRecords] | None:
        """The blocking half of merging the records after TXID `after` into one: returns work
        for a worker thread, or None if there is nothing to merge. `install_merged` finishes
        in the thread that owns the log."""
        parts = [r for r in self.ranges(after) if r.min_txid > after]
        if len(parts) < 2:
            return None
        names = [self.describe(r) for r in parts]

        def work() -> MergedRecords:
            buf = io.BytesIO()
            with ExitStack() as stack:
                handles = [stack.enter_context(self.open(r)) for r in parts]
                header, _ = compact(handles, buf, names=names, keep_wal_position=True)
            return MergedRecords(parts, header, buf.getvalue())

        return work

    def install_merged(self, merged: MergedRecords) -> TxRange:
        r = TxRange(merged.header.min_txid, merged.header.max_txid)
        self.write(r, merged.data)
        self.sync()
        for part in merged.parts:
            if part != r:
                self.delete(part)
        return r

    # ---- durability ----------------------------------------------------------------------

    def sync(self) -> None:
        """Make every record appended so far durable."""
        self.sync_job()()

    def sync_job(self) -> Callable[[], None]:
        """Take the records appended since the last sync and return the blocking work that
        makes them durable (one fdatasync of the active segment, and an fsync of the directory
        if a segment was created), so a caller can run it in a worker thread."""
        seg = self._active
        fd = -1
        if self._unsynced and seg is not None and seg.fd is not None:
            fd = os.dup(seg.fd)  # a rotation in the trio thread may close the original
        dir_dirty = self._dir_dirty
        if fd < 0 and not dir_dirty:
            self._unsynced = 0
            return _nothing
        self._unsynced = 0
        self._dir_dirty = False
        directory = self._dir_str

        def work() -> None:
            if fd >= 0:
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            if dir_dirty:
                fsync_dir(directory)

        return work

    @property
    def unsynced_count(self) -> int:
        """Records appended since the last sync."""
        return self._unsynced

    def close(self) -> None:
        self.sync()
        for seg in self._segments:
            if seg.fd is not None:
                os.close(seg.fd)
                seg.fd = None


def _nothing() -> None:
    pass


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class _Appender(io.RawIOBase):
    """Writes at increasing offsets of a segment (what `write_streaming` gives the encoder)."""

    def __init__(self, fd: int, pos: int) -> None:
        super().__init__()
        self._fd = fd
        self.pos = pos

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        n = os.pwrite(self._fd, b, self.pos)
        self.pos += n
        return n

    def close(self) -> None:  # the descriptor belongs to the segment
        super().close()
