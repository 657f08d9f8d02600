"""Restore from Litestream 0.3's bucket layout (docs/formats.md §6), for migrating old backups.

    <path>/generations/<gen: 16 hex>/snapshots/<index %08x>.snapshot.lz4   whole database
    <path>/generations/<gen>/wal/<index %08x>_<offset %08x>.wal.lz4        WAL bytes at offset

All objects are LZ4 frames; there is no user metadata, so times are LastModified.

Choice, as Litestream 0.3.13 makes it:

- generation: the one whose newest object (snapshot or WAL segment) has the latest
  LastModified; on a tie (servers with 1 s resolution) the first in name order, which is the
  order S3 lists them and the one 0.3.13 keeps. With `--timestamp T`, only generations whose
  first object is at or before T are considered, and the one with the latest object at or
  before T wins (0.3.13 instead refuses a T after a generation's last object).
- snapshot: the highest index (at or before T; at or below `--index`).
- WAL: every index from the snapshot's up to the last (or `--index`), each the concatenation
  of its segments by offset (they must start at 0 and be contiguous). Each WAL image is
  replayed like SQLite's recovery + checkpoint: the header and every frame are validated
  (salts, checksum chain) and only committed transactions are applied, each truncating the
  database to its commit size. With T, segments written after T are left out.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import lz4.frame

from ..errors import ExitCode, QuietError
from ..sqlite import WALReader, WALStopReason
from ..sqlite.errors import SQLiteFormatError
from ..storage.base import ObjectInfo, ReplicaClient
from .progress import NullProgress
from .restore_plan import NoBackupsError, format_time

__all__ = [
    "BuiltDatabase",
    "LegacyCorruptError",
    "LegacyPlan",
    "apply_legacy_plan",
    "has_generations",
    "plan_legacy",
]

GENERATIONS = "generations/"
_SNAPSHOT = re.compile(r"generations/([0-9a-f]{16})/snapshots/([0-9a-f]{8})\.snapshot\.lz4")
_SEGMENT = re.compile(r"generations/([0-9a-f]{16})/wal/([0-9a-f]{8})_([0-9a-f]{8})\.wal\.lz4")
_CHUNK = 1 << 20


class LegacyCorruptError(QuietError):
    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(
            f"object {key} is corrupt: {problem}; the Litestream 0.3 backup is damaged from "
            "there; restore an earlier point with --index or --timestamp, or another "
            "generation with --generation", ExitCode.FAILED)


@dataclass(frozen=True)
class _Snapshot:
    generation: str
    index: int
    obj: ObjectInfo


@dataclass(frozen=True)
class _Segment:
    generation: str
    index: int
    offset: int
    obj: ObjectInfo


@dataclass
class _Generation:
    name: str
    snapshots: list[_Snapshot]
    segments: list[_Segment]

    @property
    def objects(self) -> list[ObjectInfo]:
        return [s.obj for s in self.snapshots] + [s.obj for s in self.segments]

    @property
    def created(self) -> datetime:
        return min(o.last_modified for o in self.objects)

    @property
    def updated(self) -> datetime:
        return max(o.last_modified for o in self.objects)


@dataclass(frozen=True)
class BuiltDatabase:
    """What `apply_legacy_plan` built."""

    page_size: int
    page_count: int
    bytes_read: int  # compressed bytes downloaded


@dataclass(frozen=True)
class LegacyPlan:
    replica: str
    generation: str
    snapshot: _Snapshot
    segments: tuple[_Segment, ...]  # sorted by (index, offset)

    @property
    def wal_index(self) -> int:
        return self.segments[-1].index if self.segments else self.snapshot.index

    @property
    def timestamp(self) -> datetime:
        return max([self.snapshot.obj.last_modified] +
                   [s.obj.last_modified for s in self.segments])

    @property
    def total_size(self) -> int:
        return self.snapshot.obj.size + sum(s.obj.size for s in self.segments)

    def lines(self) -> list[str]:
        out = [f"restore plan for {self.replica} (Litestream 0.3 layout): generation "
               f"{self.generation}, snapshot index {self.snapshot.index:08x}, WAL up to index "
               f"{self.wal_index:08x}, {1 + len(self.segments)} object(s), {self.total_size} "
               f"bytes ({format_time(self.timestamp)})",
               f"{'kind':<8}  {'index':<8}  {'offset':<8}  {'size':>10}  last modified"]
        s = self.snapshot
        out.append(f"{'snapshot':<8}  {s.index:08x}  {'-':<8}  {s.obj.size:>10}  "
                   f"{format_time(s.obj.last_modified)}")
        for seg in self.segments:
            out.append(f"{'wal':<8}  {seg.index:08x}  {seg.offset:08x}  {seg.obj.size:>10}  "
                       f"{format_time(seg.obj.last_modified)}")
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "replica": self.replica,
            "format": "litestream-0.3",
            "generation": self.generation,
            "snapshot_index": f"{self.snapshot.index:08x}",
            "wal_index": f"{self.wal_index:08x}",
            "timestamp": format_time(self.timestamp),
            "total_size": self.total_size,
            "files": [{"kind": "snapshot", "key": self.snapshot.obj.key,
                       "index": f"{self.snapshot.index:08x}", "size": self.snapshot.obj.size,
                       "last_modified": format_time(self.snapshot.obj.last_modified)}]
            + [{"kind": "wal", "key": s.obj.key, "index": f"{s.index:08x}",
                "offset": f"{s.offset:08x}", "size": s.obj.size,
                "last_modified": format_time(s.obj.last_modified)} for s in self.segments],
        }


def _scan(client: ReplicaClient) -> dict[str, _Generation]:
    gens: dict[str, _Generation] = {}
    for obj in client.list_objects(GENERATIONS):
        m = _SNAPSHOT.fullmatch(obj.key)
        if m is not None:
            g = gens.setdefault(m.group(1), _Generation(m.group(1), [], []))
            g.snapshots.append(_Snapshot(m.group(1), int(m.group(2), 16), obj))
            continue
        m = _SEGMENT.fullmatch(obj.key)
        if m is not None:
            g = gens.setdefault(m.group(1), _Generation(m.group(1), [], []))
            g.segments.append(_Segment(m.group(1), int(m.group(2), 16), int(m.group(3), 16),
                                       obj))
    return gens


def has_generations(client: ReplicaClient) -> bool:
    """Whether the replica path holds Litestream 0.3 generations."""
    return bool(_scan(client))


def plan_legacy(client: ReplicaClient, *, timestamp: datetime | None = None,
                generation: str | None = None, wal_index: int | None = None) -> LegacyPlan:
    where = client.description
    gens = _scan(client)
    if not gens:
        raise NoBackupsError(where, " (no LTX files and no Litestream 0.3 generations/)")
    if generation is not None:
        if generation not in gens:
            raise QuietError(
                f"generation {generation} does not exist at {where}; it has "
                f"{', '.join(sorted(gens))}", ExitCode.NOT_FOUND)
        chosen = gens[generation]
    else:
        candidates = sorted(gens.values(), key=lambda g: g.name)
        if timestamp is not None:
            candidates = [g for g in candidates if g.created <= timestamp]
            if not candidates:
                first = min(g.created for g in gens.values())
                raise QuietError(
                    f"nothing was backed up at {where} at or before {format_time(timestamp)}: "
                    f"the first Litestream 0.3 backup is from {format_time(first)}",
                    ExitCode.NOT_FOUND)
        best: _Generation | None = None
        best_key: datetime | None = None
        for g in candidates:  # name order; a tie keeps the first (0.3.13's choice)
            updated = g.updated if timestamp is None else max(
                o.last_modified for o in g.objects if o.last_modified <= timestamp)
            if best_key is None or updated > best_key:
                best, best_key = g, updated
        assert best is not None
        chosen = best

    snaps = [s for s in chosen.snapshots
             if (wal_index is None or s.index <= wal_index)
             and (timestamp is None or s.obj.last_modified <= timestamp)]
    if not snaps:
        why = [f"at or below index {wal_index:08x}" if wal_index is not None else "",
               f"at or before {format_time(timestamp)}" if timestamp is not None else ""]
        cond = " ".join(w for w in why if w)
        raise QuietError(
            f"generation {chosen.name} at {where} has no snapshot {cond}".rstrip()
            + ": a Litestream 0.3 restore needs one (its WAL segments alone are not a "
            "database); pick another --generation, --index or --timestamp", ExitCode.NOT_FOUND)
    snap = max(snaps, key=lambda s: s.index)
    segs = sorted((s for s in chosen.segments if s.index >= snap.index
                   and (wal_index is None or s.index <= wal_index)),
                  key=lambda s: (s.index, s.offset))
    if timestamp is not None:
        # Keep each WAL index's segments only up to the first one written after T.
        kept: list[_Segment] = []
        for s in segs:
            if s.obj.last_modified > timestamp:
                break
            kept.append(s)
        segs = kept
    return LegacyPlan(where, chosen.name, snap, tuple(segs))


def _decompress_to(client: ReplicaClient, obj: ObjectInfo, f: object) -> int:
    """Write the LZ4-frame object's content into the file `f`; return its size."""
    data = client.get_object(obj.key)
    dec = lz4.frame.LZ4FrameDecompressor()
    written = 0
    try:
        out = dec.decompress(data, max_length=_CHUNK)
        while True:
            f.write(out)  # type: ignore[attr-defined]
            written += len(out)
            if dec.eof or dec.needs_input:
                break
            out = dec.decompress(b"", max_length=_CHUNK)
    except RuntimeError as exc:
        raise LegacyCorruptError(obj.key, f"bad LZ4 frame ({exc})") from None
    if not dec.eof:
        raise LegacyCorruptError(obj.key, "the LZ4 frame is truncated")
    if dec.unused_data:
        raise LegacyCorruptError(obj.key, "unexpected data after the LZ4 frame")
    return written


def _decompress(client: ReplicaClient, obj: ObjectInfo) -> bytes:
    data = client.get_object(obj.key)
    try:
        dec = lz4.frame.LZ4FrameDecompressor()
        out = dec.decompress(data)
    except RuntimeError as exc:
        raise LegacyCorruptError(obj.key, f"bad LZ4 frame ({exc})") from None
    if not dec.eof:
        raise LegacyCorruptError(obj.key, "the LZ4 frame is truncated")
    return bytes(out)


def _page_size(header: bytes) -> int:
    if len(header) < 100 or header[:16] != b"SQLite format 3\x00":
        return 0
    v = int.from_bytes(header[16:18], "big")
    return 65536 if v == 1 else v


def apply_legacy_plan(client: ReplicaClient, plan: LegacyPlan, path: Path,
                      progress: NullProgress) -> BuiltDatabase:
    """Build the database at `path` (written and fsynced; the caller installs it)."""
    read = 0
    with open(path, "w+b") as f:
        snap = plan.snapshot.obj
        _decompress_to(client, snap, f)
        read += snap.size
        progress.advance(snap.size)
        f.seek(0)
        ps = _page_size(f.read(100))
        if not ps:
            raise LegacyCorruptError(snap.key, "the snapshot is not a SQLite database")
        size = f.seek(0, os.SEEK_END)
        if size % ps:
            raise LegacyCorruptError(snap.key, f"the snapshot is {size} bytes, not a multiple "
                                               f"of its page size {ps}")
        page_count = size // ps
        by_index: dict[int, list[_Segment]] = {}
        for seg in plan.segments:
            by_index.setdefault(seg.index, []).append(seg)
        for index in sorted(by_index):
            parts: list[bytes] = []
            starts: list[tuple[int, str]] = []
            end = 0
            for seg in by_index[index]:
                starts.append((end, seg.obj.key))
                if seg.offset != end:
                    raise LegacyCorruptError(
                        seg.obj.key, f"WAL index {index:08x} continues at offset "
                        f"{seg.offset:08x} but its segments so far end at {end:08x}: a "
                        "segment is missing")
                data = _decompress(client, seg.obj)
                parts.append(data)
                end += len(data)
                read += seg.obj.size
                progress.advance(seg.obj.size)
            first_key = by_index[index][0].obj.key
            image = b"".join(parts)
            try:
                reader = WALReader(image, name=first_key)
                if reader.page_size != ps:
                    raise LegacyCorruptError(
                        first_key, f"WAL page size {reader.page_size} differs from the "
                                   f"database's {ps}")
                for txn in reader.transactions():
                    for pgno, page in sorted(txn.pages.items()):
                        f.seek((pgno - 1) * ps)
                        f.write(page)
                    page_count = txn.db_size
                    f.truncate(page_count * ps)
            except SQLiteFormatError as exc:
                raise LegacyCorruptError(first_key, str(exc)) from None
            if reader.commit_end_offset != len(image):
                # Litestream 0.3 ships whole committed transactions only: anything SQLite's
                # recovery would drop here is damage, not a torn write (0.3.13 would silently
                # restore an older state).
                stop = reader.commit_end_offset
                key = next(k for start, k in reversed(starts) if start <= stop)
                why = reader.stop_reason.value if reader.stop_reason is not None else "?"
                if reader.stop_reason is WALStopReason.END_OF_FILE:
                    why = "frames after the last commit frame"
                raise LegacyCorruptError(
                    key, f"WAL index {index:08x} is valid only up to byte {stop} of "
                         f"{len(image)} ({why})")
        f.flush()
        os.fsync(f.fileno())
    return BuiltDatabase(ps, page_count, read)

