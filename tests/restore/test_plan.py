"""The planner on synthetic listings: Litestream 0.5's choices, and the typed errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from litefs_py.cli import rewrite_single_dash
from litefs_py.replication.restore_plan import (
    ChainGapError,
    NoBackupsError,
    NoSnapshotError,
    RestoreTarget,
    TimestampTooEarlyError,
    TxidNotFoundError,
    plan_from_files,
)
from litefs_py.storage.base import LtxFileInfo

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def f(level: int, lo: int, hi: int, seconds: float | None = None) -> LtxFileInfo:
    ts = T0 + timedelta(seconds=hi if seconds is None else seconds)
    return LtxFileInfo(level=level, min_txid=lo, max_txid=hi, size=100 * (hi - lo + 1),
                       timestamp=ts, key=f"db/{level:04x}/{lo:016x}-{hi:016x}.ltx")


def listing(*files: LtxFileInfo) -> dict[int, list[LtxFileInfo]]:
    out: dict[int, list[LtxFileInfo]] = {}
    for i in files:
        out.setdefault(i.level, []).append(i)
    for v in out.values():
        v.sort(key=lambda i: (i.min_txid, i.max_txid))
    return out


def chain(plan_files: tuple[LtxFileInfo, ...]) -> list[tuple[int, int, int]]:
    return [(i.level, i.min_txid, i.max_txid) for i in plan_files]


def plan(files: dict[int, list[LtxFileInfo]], **target: object):  # type: ignore[no-untyped-def]
    return plan_from_files("s3://b/db", files, RestoreTarget(**target))  # type: ignore[arg-type]


def test_snapshot_then_furthest_reaching_file_any_level() -> None:
    files = listing(f(9, 1, 5), f(9, 1, 20), *(f(0, i, i) for i in range(1, 31)),
                    f(1, 1, 10), f(1, 11, 20), f(1, 21, 28), f(2, 1, 24))
    assert chain(plan(files).files) == [(9, 1, 20), (1, 21, 28), (0, 29, 29), (0, 30, 30)]
    # A TXID target takes the newest snapshot not past it, then never a file past it.
    assert chain(plan(files, txid=12).files) == [(9, 1, 5), (1, 1, 10), (0, 11, 11),
                                                 (0, 12, 12)]
    # Overlap is fine: L2 1-24 reaches furthest from 20 (min 1 <= 21).
    assert chain(plan(files, txid=24).files) == [(9, 1, 20), (2, 1, 24)]


def test_ties_prefer_lower_min_then_higher_level() -> None:
    files = listing(f(0, 1, 1), f(0, 2, 4), f(1, 2, 4), f(2, 1, 4))
    assert chain(plan(files).files) == [(2, 1, 4)]
    files = listing(f(0, 1, 1), f(0, 2, 4), f(1, 2, 4))
    assert chain(plan(files).files) == [(0, 1, 1), (1, 2, 4)]


def test_timestamp_is_inclusive() -> None:
    files = listing(*(f(0, i, i) for i in range(1, 6)), f(1, 1, 5))
    assert plan(files, timestamp=T0 + timedelta(seconds=3)).txid == 3
    assert plan(files, timestamp=T0 + timedelta(seconds=3, milliseconds=-1)).txid == 2
    assert plan(files, timestamp=T0 + timedelta(days=1)).txid == 5
    with pytest.raises(TimestampTooEarlyError) as info:
        plan(files, timestamp=T0)
    assert "the first backup is from 2026-01-01T00:00:01.000Z" in str(info.value)


def test_errors() -> None:
    with pytest.raises(NoBackupsError) as nb:
        plan({})
    assert str(nb.value).startswith("no backups found at s3://b/db: nothing has been "
                                    "replicated there yet")
    files = listing(*(f(0, i, i) for i in (1, 2, 3, 5, 6)))
    with pytest.raises(ChainGapError) as gap:
        plan(files)
    assert (gap.value.after, gap.value.before) == (3, 5)
    assert plan(files, txid=3).txid == 3
    with pytest.raises(ChainGapError):
        plan(files, txid=6)
    with pytest.raises(ChainGapError):  # the newer file is at or before the time
        plan(files, timestamp=T0 + timedelta(seconds=6))
    with pytest.raises(TxidNotFoundError) as high:
        plan(files, txid=7)
    assert "the latest backed-up TXID is 0000000000000006" in str(high.value)
    with pytest.raises(NoSnapshotError) as nosnap:
        plan(listing(f(0, 4, 4), f(0, 5, 5)))
    assert "starts at TXID 0000000000000004, not 1" in str(nosnap.value)
    # A target inside a compacted file whose pieces are gone.
    with pytest.raises(ChainGapError) as inside:
        plan(listing(f(9, 1, 2), f(1, 3, 9)), txid=5)
    assert "--txid 2" in str(inside.value)


def test_single_dash_rewrite() -> None:
    argv = ["-if-replica-exists", "-o", "/x", "-txid=c", "-timestamp", "2026-01-01T00:00:00Z",
            "-config", "c.yml", "-dry-run", "-if-db-not-exists", "s3://b/p", "--",
            "-txid"]
    mapping = {"-if-replica-exists": "--if-replica-exists", "-txid": "--txid",
               "-timestamp": "--timestamp", "-config": "--config", "-dry-run": "--dry-run",
               "-if-db-not-exists": "--if-db-not-exists"}
    assert rewrite_single_dash(argv, mapping) == [
        "--if-replica-exists", "-o", "/x", "--txid=c", "--timestamp", "2026-01-01T00:00:00Z",
        "--config", "c.yml", "--dry-run", "--if-db-not-exists", "s3://b/p", "--", "-txid"]
    # A value that looks like a flag stays a value.
    assert rewrite_single_dash(["-o", "-dry-run", "-dry-run"], mapping,
                               frozenset({"-o", "--output"})) == ["-o", "-dry-run", "--dry-run"]
