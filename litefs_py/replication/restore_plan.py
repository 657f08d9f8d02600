"""Which LTX files rebuild a database at a target: the restore plan.

The plan is Litestream 0.5's (docs/formats.md §5, `litestream.CalcRestorePlan`), so both programs
restore the same bucket to the same TXID from the same files:

1. the newest L9 snapshot whose max TXID fits the target (none is fine if the chain starts at
   TXID 1);
2. then, repeatedly, from any level 0..8, the file with `min <= cur + 1` and `max > cur` that
   reaches the highest max TXID; ties prefer the lower min TXID, then the higher level (fewer,
   bigger files), then the older file, as Litestream's `restoreCandidateBetter` does;
3. stop at the target TXID (inclusive) or when no file extends the chain.

Unlike Litestream, every way this can fail is a typed error that says what was looked for,
where, and what to do (never "transaction not available"):

- no LTX file at all                                   -> `NoBackupsError` (exit 4)
- no snapshot and no file starting at TXID 1            -> `NoSnapshotError` (exit 1)
- a hole in the chain before the target                 -> `ChainGapError` (exit 1)
- `--txid` past the newest TXID                         -> `TxidNotFoundError` (exit 4)
- `--timestamp` before the first backup                 -> `TimestampTooEarlyError` (exit 4)
- files of different page sizes in one plan             -> `MixedPageSizeError` (exit 1)

Timestamps come from the `litestream-timestamp` object metadata (the LTX header time). A
target time T selects the last TXID whose file timestamp is <= T (inclusive, like `--txid`;
Litestream 0.5 uses `<` — see docs/restore.md). S3 listings carry no metadata, so a client
that loads it lazily is asked only for the files the planner actually considers.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..errors import ExitCode, QuietError
from ..ltx import HEADER_SIZE, Header, LTXError, parse_filename
from ..storage.base import SNAPSHOT_LEVEL, LtxFileInfo, ReplicaClient

__all__ = [
    "ChainGapError",
    "CorruptObjectError",
    "DamagedBackupError",
    "MixedPageSizeError",
    "NoBackupsError",
    "NoSnapshotError",
    "RestorePlan",
    "RestorePlanError",
    "RestoreTarget",
    "TimestampTooEarlyError",
    "TxidNotFoundError",
    "describe_file",
    "format_time",
    "metadata_loader",
    "plan_from_files",
    "plan_restore",
    "read_plan_headers",
]

Resolve = Callable[[LtxFileInfo], LtxFileInfo]


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class RestorePlanError(QuietError):
    """No plan reaches the target; the message says why and what to do."""


class NoBackupsError(RestorePlanError):
    """The replica path holds no backup at all (`--if-replica-exists` turns this into exit 0)."""

    def __init__(self, where: str, detail: str = "") -> None:
        self.where = where
        super().__init__(
            f"no backups found at {where}: nothing has been replicated there yet{detail} "
            "(check the bucket, path and database name; add --if-replica-exists to treat this "
            "as success, e.g. on the first boot)", ExitCode.NOT_FOUND)


class NoSnapshotError(RestorePlanError):
    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.FAILED)


class ChainGapError(RestorePlanError):
    """TXIDs `after + 1 .. before - 1` are missing."""

    def __init__(self, message: str, after: int, before: int) -> None:
        self.after = after
        self.before = before
        super().__init__(message, ExitCode.FAILED)


class TxidNotFoundError(RestorePlanError):
    def __init__(self, message: str, latest: int) -> None:
        self.latest = latest
        super().__init__(message, ExitCode.NOT_FOUND)


class TimestampTooEarlyError(RestorePlanError):
    def __init__(self, message: str, first: datetime | None) -> None:
        self.first = first
        super().__init__(message, ExitCode.NOT_FOUND)


class MixedPageSizeError(RestorePlanError):
    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.FAILED)


class CorruptObjectError(RestorePlanError):
    """An object of the plan cannot be decoded or does not match its checksums."""

    def __init__(self, key: str, problem: str, from_txid: int) -> None:
        self.key = key
        self.problem = problem
        self.from_txid = from_txid
        if from_txid > 1:
            fix = (f"restore an earlier point with --txid {from_txid - 1:x} (the last TXID "
                   "before this file), or restore from another copy of the backups")
        else:
            fix = ("no earlier state exists in this replica; restore from another copy of the "
                   "backups")
        super().__init__(
            f"object {key} is corrupt: {problem}; the backup is damaged from TXID "
            f"{from_txid:016x}; {fix}", ExitCode.FAILED)


class DamagedBackupError(CorruptObjectError):
    """Objects of the backups are corrupt or missing (`damaged`: key -> problem, confirmed by
    reading them twice) and no other object covers their TXIDs up to the target.
    `restorable` is the newest TXID a restore can still reach without them (None: none)."""

    def __init__(self, where: str, damaged: dict[str, str], restorable: int | None,
                 from_txid: int) -> None:
        self.damaged = dict(damaged)
        self.restorable = restorable
        key, problem = next(iter(damaged.items()))
        named = "; ".join(f"object {k} is {'corrupt: ' if not p.startswith('missing') else ''}"
                          f"{p}" for k, p in damaged.items())
        spans = []
        for k in damaged:
            try:
                lo, hi = parse_filename(k.rsplit("/", 1)[-1])
            except LTXError:
                continue
            spans.append(f"{lo:016x}" if lo == hi else f"{lo:016x}..{hi:016x}")
        holds = f"TXIDs {', '.join(spans)}" if spans else "the TXIDs it holds"
        if restorable is not None:
            fix = (f"no other object in {where} covers {holds}, so the newest state that can "
                   f"be restored is TXID {restorable:016x}: run the restore again with --txid "
                   f"{restorable:x} (every object up to it is verified), or restore from "
                   "another copy of the backups")
        else:
            fix = (f"no other object in {where} covers {holds} and no earlier state can be "
                   "rebuilt without it; restore from another copy of the backups")
        QuietError.__init__(self, f"{named}. {fix[0].upper()}{fix[1:]}", ExitCode.FAILED)
        self.key = key
        self.problem = problem
        self.from_txid = from_txid


# --------------------------------------------------------------------------------------------
# Plan objects
# --------------------------------------------------------------------------------------------


def format_time(dt: datetime) -> str:
    """RFC 3339 UTC with milliseconds, as Litestream writes timestamps."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def describe_file(info: LtxFileInfo) -> str:
    """`level 0 file 0000000000000007-0000000000000007.ltx (key app.db/0000/...)`."""
    return (f"level {info.level} file {info.min_txid:016x}-{info.max_txid:016x}.ltx "
            f"(key {info.key})")


@dataclass(frozen=True, slots=True)
class RestoreTarget:
    """What to restore: the latest state (both None), a TXID (inclusive) or a time."""

    txid: int | None = None
    timestamp: datetime | None = None

    def __post_init__(self) -> None:
        if self.txid is not None and self.timestamp is not None:
            raise QuietError("give either a TXID or a timestamp to restore to, not both",
                             ExitCode.USAGE)
        if self.txid is not None and self.txid < 1:
            raise QuietError(f"invalid TXID {self.txid:x}: TXIDs start at 1", ExitCode.USAGE)
        if self.timestamp is not None and self.timestamp.tzinfo is None:
            object.__setattr__(self, "timestamp", self.timestamp.replace(tzinfo=UTC))

    @property
    def latest(self) -> bool:
        return self.txid is None and self.timestamp is None

    def describe(self) -> str:
        if self.txid is not None:
            return f"TXID {self.txid:016x}"
        if self.timestamp is not None:
            return f"time {format_time(self.timestamp)}"
        return "the latest state"


@dataclass(frozen=True)
class RestorePlan:
    """The files to apply in order: an optional snapshot, then a contiguous chain."""

    replica: str  # the client's description, for messages
    target: RestoreTarget
    files: tuple[LtxFileInfo, ...]
    latest_txid: int  # the highest TXID in the replica (any level)
    headers: tuple[Header, ...] = field(default=(), compare=False)  # see read_plan_headers

    @property
    def txid(self) -> int:
        return self.files[-1].max_txid

    @property
    def timestamp(self) -> datetime:
        return self.files[-1].timestamp

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, object]:
        return {
            "replica": self.replica,
            "format": "ltx",
            "target": self.target.describe(),
            "txid": f"{self.txid:016x}",
            "latest_txid": f"{self.latest_txid:016x}",
            "timestamp": format_time(self.timestamp),
            "total_size": self.total_size,
            "files": [
                {
                    "level": f.level,
                    "min_txid": f"{f.min_txid:016x}",
                    "max_txid": f"{f.max_txid:016x}",
                    "size": f.size,
                    "timestamp": format_time(f.timestamp),
                    "key": f.key,
                    **({"post_apply_checksum": f"{f.post_apply_checksum:016x}"}
                       if f.post_apply_checksum else {}),
                    **({"page_size": h.page_size, "commit": h.commit}
                       if (h := self._header(i)) is not None else {}),
                }
                for i, f in enumerate(self.files)
            ],
        }

    def _header(self, i: int) -> Header | None:
        return self.headers[i] if i < len(self.headers) else None

    def lines(self) -> list[str]:
        """The plan as a table for `--dry-run`."""
        out = [f"restore plan for {self.replica} to {self.target.describe()}: "
               f"{len(self.files)} file(s), {self.total_size} bytes, ends at TXID "
               f"{self.txid:016x} ({format_time(self.timestamp)})",
               f"{'level':>5}  {'min_txid':<16}  {'max_txid':<16}  {'size':>10}  timestamp"]
        for f in self.files:
            out.append(f"{f.level:>5}  {f.min_txid:016x}  {f.max_txid:016x}  {f.size:>10}  "
                       f"{format_time(f.timestamp)}")
        return out


# --------------------------------------------------------------------------------------------
# Metadata (timestamps, checksums) on demand
# --------------------------------------------------------------------------------------------


def metadata_loader(client: ReplicaClient) -> Resolve:
    """A function that returns an LtxFileInfo with its object metadata loaded.

    S3 listings carry no user metadata; `client.ltx_metadata(info)` fetches it for one file
    (one HEAD). Results are cached so each object is asked about at most once per plan.
    """
    cache: dict[str, LtxFileInfo] = {}

    def resolve(info: LtxFileInfo) -> LtxFileInfo:
        if info.metadata:
            return info
        got = cache.get(info.key)
        if got is None:
            got = client.ltx_metadata(info)
            cache[info.key] = got
        return got

    return resolve


# --------------------------------------------------------------------------------------------
# The planner
# --------------------------------------------------------------------------------------------


def _better(curr: LtxFileInfo, nxt: LtxFileInfo) -> bool:
    """Litestream's restoreCandidateBetter: is `nxt` a better next file than `curr`?"""
    if nxt.max_txid != curr.max_txid:
        return nxt.max_txid > curr.max_txid
    if nxt.min_txid != curr.min_txid:
        return nxt.min_txid < curr.min_txid
    if nxt.level != curr.level:
        return nxt.level > curr.level
    return nxt.timestamp < curr.timestamp


def plan_restore(client: ReplicaClient, target: RestoreTarget | None = None, *,
                 exclude: Collection[str] = ()) -> RestorePlan:
    """List the replica and compute the plan, leaving out the objects whose keys are in
    `exclude` (found damaged); raises a RestorePlanError subclass."""
    target = target or RestoreTarget()
    by_level = {level: [i for i in client.ltx_files(level) if i.key not in exclude]
                for level in client.levels()}
    return plan_from_files(client.description, by_level, target,
                           resolve=metadata_loader(client))


def plan_from_files(where: str, by_level: dict[int, list[LtxFileInfo]],
                    target: RestoreTarget | None = None, *,
                    resolve: Resolve | None = None) -> RestorePlan:
    """The plan for listings already made (`by_level[level]` = files of that level)."""
    target = target or RestoreTarget()
    res: Resolve = resolve or (lambda info: info)
    snapshots = sorted(by_level.get(SNAPSHOT_LEVEL, []), key=lambda i: (i.min_txid, i.max_txid))
    files = sorted(
        (i for lv, infos in by_level.items() if lv != SNAPSHOT_LEVEL for i in infos),
        key=lambda i: (i.min_txid, i.max_txid, i.level),
    )
    if not snapshots and not files:
        raise NoBackupsError(where)
    latest = max(i.max_txid for i in (*snapshots, *files))

    if target.txid is not None and target.txid > latest:
        raise TxidNotFoundError(
            f"TXID {target.txid:016x} is not in the backups at {where}: the latest backed-up "
            f"TXID is {latest:016x}. Restore that one (leave out --txid) or a TXID up to it",
            latest)

    def fits(info: LtxFileInfo) -> LtxFileInfo | None:
        """The file with metadata loaded if it fits the target, else None."""
        if target.txid is not None and info.max_txid > target.txid:
            return None
        if target.timestamp is not None:
            info = res(info)
            if info.timestamp > target.timestamp:
                return None
        return info

    plan: list[LtxFileInfo] = []
    # 1. The newest snapshot fitting the target (snapshots are sorted by max TXID).
    # From the newest down: with a time target the metadata of older snapshots is fetched
    # only until one fits.
    for snap in reversed(snapshots):
        got = fits(snap)
        if got is not None:
            plan.append(got)
            break
    cur = plan[-1].max_txid if plan else 0

    # 2. Extend the chain from any level 0..8 with the file reaching furthest.
    pos = 0  # files[:pos] all have min_txid <= cur + 1 (the sorted list is scanned once)
    considered: list[LtxFileInfo] = []
    while target.txid is None or cur < target.txid:
        while pos < len(files) and files[pos].min_txid <= cur + 1:
            considered.append(files[pos])
            pos += 1
        best: LtxFileInfo | None = None
        keep: list[LtxFileInfo] = []
        for info in considered:
            if info.max_txid <= cur:
                continue  # already covered: never a candidate again
            got = fits(info)
            if got is None:
                continue  # past the target: never a candidate again (the target is fixed)
            keep.append(got)
            if best is None or _better(best, got):
                best = got
        considered = keep
        if best is None:
            break
        plan.append(best)
        cur = best.max_txid

    beyond = [i for i in files[pos:] if i.min_txid > cur + 1]
    if not plan:
        _no_start(where, target, snapshots, files, res)
    assert plan
    if target.txid is not None and cur < target.txid:
        nxt = beyond[0] if beyond else None
        raise _gap_error(where, target, plan[-1], nxt, cur)
    if beyond:
        nxt = min(beyond, key=lambda i: (i.min_txid, i.level))
        # Latest: a hole before newer backups means the newest state cannot be rebuilt;
        # Litestream fails here too. A time target fails only if the newer file is in range.
        if target.latest or (target.timestamp is not None
                             and res(nxt).timestamp <= target.timestamp):
            raise _gap_error(where, target, plan[-1], nxt, cur)
    return RestorePlan(replica=where, target=target, files=tuple(plan), latest_txid=latest)


def _no_start(where: str, target: RestoreTarget, snapshots: Sequence[LtxFileInfo],
              files: Sequence[LtxFileInfo], res: Resolve) -> None:
    """Raise the error for 'not even the first file of a plan could be chosen'."""
    if target.timestamp is not None:
        starts = [i for i in (*snapshots, *files) if i.min_txid == 1]
        candidates = [res(i) for i in starts] or [res(i) for i in (*snapshots, *files)]
        first = min((i.timestamp for i in candidates), default=None)
        if first is not None and first > target.timestamp:
            raise TimestampTooEarlyError(
                f"nothing was backed up at {where} at or before {format_time(target.timestamp)}: "
                f"the first backup is from {format_time(first)}. Give a --timestamp at or after "
                "it, or leave --timestamp out for the latest state", first)
    first_file = files[0] if files else None
    if first_file is not None and first_file.min_txid > 1:
        extra = ""
        if snapshots and target.txid is not None:
            extra = (f"; the oldest snapshot ends at TXID {snapshots[0].max_txid:016x}, after the "
                     f"requested {target.txid:016x}")
        raise NoSnapshotError(
            f"cannot restore {target.describe()} from {where}: there is no snapshot (level 9) "
            f"at or before it and the oldest file, {describe_file(first_file)}, starts at TXID "
            f"{first_file.min_txid:016x}, not 1{extra}. The earlier transactions were deleted "
            "(retention) before a snapshot covered them; restore a later point, or take a new "
            "snapshot by replicating the database again")
    raise NoSnapshotError(
        f"cannot restore {target.describe()} from {where}: no snapshot (level 9) and no file "
        "starting at TXID 0000000000000001 fits it; restore a later point")


def _gap_error(where: str, target: RestoreTarget, last: LtxFileInfo,
               nxt: LtxFileInfo | None, cur: int) -> ChainGapError:
    if nxt is None:
        # Only files past the target remain beyond cur (a txid target inside a compacted
        # file whose pieces were deleted): name what covers it.
        return ChainGapError(
            f"cannot restore {target.describe()} from {where}: the backups reach TXID "
            f"{cur:016x} ({describe_file(last)}) and the next transactions exist only inside "
            "larger compacted files that end after the target. Restore TXID "
            f"{cur:016x} (--txid {cur:x}) or the end of a compacted file", cur, cur + 1)
    missing = (f"TXID {cur + 1:016x}" if nxt.min_txid == cur + 2 else
               f"TXIDs {cur + 1:016x}..{nxt.min_txid - 1:016x}")
    return ChainGapError(
        f"gap in the backups at {where}: {missing} missing between TXIDs {cur:016x} and "
        f"{nxt.min_txid:016x}; the chain ends with {describe_file(last)} and the next file is "
        f"{describe_file(nxt)}, and no file at any level bridges them. The latest state "
        f"cannot be rebuilt: restore TXID {cur:016x} with --txid {cur:x} (the newest complete "
        "state), or copy the missing file back if you have it", cur, nxt.min_txid)


# --------------------------------------------------------------------------------------------
# Headers (page sizes) of a plan
# --------------------------------------------------------------------------------------------


def read_plan_headers(client: ReplicaClient, plan: RestorePlan) -> RestorePlan:
    """Read the 100-byte header of each planned file (one ranged GET each) and check that
    every file has the page size of the first and the TXIDs its name says."""
    headers: list[Header] = []
    for info in plan.files:
        raw = client.read_ltx(info, 0, HEADER_SIZE)
        if len(raw) < HEADER_SIZE:
            raise CorruptObjectError(info.key, f"it is {len(raw)} bytes, shorter than the "
                                     f"{HEADER_SIZE}-byte LTX header", info.min_txid)
        try:
            h = Header.decode(raw, name=info.key)
        except (LTXError, struct.error) as exc:
            raise CorruptObjectError(info.key, str(exc), info.min_txid) from None
        if (h.min_txid, h.max_txid) != (info.min_txid, info.max_txid):
            raise CorruptObjectError(
                info.key, f"its header says TXIDs {h.min_txid:016x}-{h.max_txid:016x}, its "
                f"name {info.min_txid:016x}-{info.max_txid:016x}", info.min_txid)
        headers.append(h)
    check_page_sizes(plan.replica, plan.files, headers)
    return RestorePlan(replica=plan.replica, target=plan.target, files=plan.files,
                       latest_txid=plan.latest_txid, headers=tuple(headers))


def check_page_sizes(where: str, files: Sequence[LtxFileInfo],
                     headers: Sequence[Header]) -> None:
    if not headers:
        return
    first = headers[0]
    for info, h in zip(files, headers, strict=False):
        if h.page_size != first.page_size:
            raise MixedPageSizeError(
                f"the backups at {where} mix page sizes: {describe_file(files[0])} has "
                f"{first.page_size}-byte pages but {describe_file(info)} has {h.page_size}. "
                "A database's page size can change only with VACUUM after a new snapshot; "
                f"restore up to TXID {info.min_txid - 1:016x} (--txid {info.min_txid - 1:x}) "
                "or remove the files that belong to another database")
