"""Keep a replica small and fast to restore: level compaction, snapshots and retention.

Litestream 0.5's scheme (docs/formats.md §5): L0 holds one file per upload; every `l1-interval`
the L0 files after the last L1 file are merged into one L1 file, likewise L1 -> L2 and
L2 -> L3 on their intervals (aligned to wall-clock multiples); every `snapshot-interval` the
current restore chain is merged into an L9 snapshot `0000000000000001-<max>.ltx`.

Retention deletes files that no restore needs any more: lower-level files covered by the level
above once that level's interval has passed (so recent point-in-time restores still find
them), snapshots older than `retention` except the newest, and files wholly before the oldest
kept snapshot. Before anything is deleted, the restore plan is recomputed on what would remain:
if it would not reach the latest TXID from TXID 1, nothing is deleted and the log says why.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import trio

from ..ltx import LTXError, compact
from ..storage import aio
from ..storage.base import (
    META_CHECKSUM,
    META_TIMESTAMP,
    SNAPSHOT_LEVEL,
    LtxFileInfo,
    ReplicaClient,
    format_timestamp,
)
from ..storage.errors import StorageError
from .restore_plan import RestorePlanError, metadata_loader, plan_from_files

log = logging.getLogger("litefs.replication")

Listing = dict[int, list[LtxFileInfo]]
MIN_GRACE = 300.0  # seconds a compacted-away lower-level file is kept for running restores


def _next_due(interval: float, now: float) -> float:
    return (math.floor(now / interval) + 1) * interval


@dataclass(frozen=True, slots=True)
class Schedule:
    """Seconds between compactions per level, between snapshots, and snapshot retention
    (Litestream 0.5's defaults)."""

    l1_interval: float = 30.0
    l2_interval: float = 300.0
    l3_interval: float = 3600.0
    snapshot_interval: float = 86400.0
    retention: float = 86400.0


class ReplicaMaintainer:
    def __init__(self, name: str, client: ReplicaClient, schedule: Schedule, *,
                 hold: Callable[[], str | None] | None = None) -> None:
        self.name = name
        self.client = client
        # Says why not to touch the replica now (e.g. another writer's objects are in it:
        # compacting or deleting them would mix the two histories), or None.
        self.hold = hold
        self._held: str | None = None
        self.intervals = {1: schedule.l1_interval, 2: schedule.l2_interval,
                          3: schedule.l3_interval}
        self.snapshot_interval = schedule.snapshot_interval
        self.retention = schedule.retention
        self.min_grace = min(MIN_GRACE, schedule.retention)
        self.compactions = 0
        self.snapshots = 0
        self.deleted = 0

    async def run(self) -> None:
        now = time.time()
        due = {level: _next_due(iv, now) for level, iv in self.intervals.items()}
        snapshot_due = now + min(self.snapshot_interval, 60.0)  # first one soon after start
        while True:
            wake = min(*due.values(), snapshot_due)
            await trio.sleep(max(0.0, wake - time.time()))
            now = time.time()
            held = self.hold() if self.hold is not None else None
            if held is not None:
                if held != self._held:
                    log.warning("%s: no compaction, snapshot or retention at %s while %s",
                                self.name, self.client.description, held)
                self._held = held
                for level in due:
                    due[level] = max(due[level], now + 1.0)
                snapshot_due = max(snapshot_due, now + 1.0)
                continue
            self._held = None
            try:
                for level in sorted(due):
                    if due[level] <= now:
                        due[level] = _next_due(self.intervals[level], now)
                        await self.compact_level(level)
                if snapshot_due <= now:
                    snapshot_due = now + self.snapshot_interval
                    await self.snapshot()
                await self.apply_retention()
            except (StorageError, LTXError, RestorePlanError, OSError) as exc:
                log.warning("%s: replica maintenance at %s failed: %s (will retry)",
                            self.name, self.client.description, exc)

    async def listing(self) -> Listing:
        levels = await aio.run(self.client.levels)
        return {lv: await aio.run(self.client.ltx_files, lv) for lv in levels}

    async def _download(self, infos: list[LtxFileInfo]) -> list[bytes]:
        return [await aio.run(self.client.read_ltx, info) for info in infos]

    async def _metadata_of(self, info: LtxFileInfo) -> dict[str, str]:
        """Timestamp and checksum metadata for an output that ends where `info` ends."""
        resolved = await aio.run(metadata_loader(self.client), info)
        meta = {META_TIMESTAMP: format_timestamp(int(resolved.timestamp.timestamp() * 1000))}
        if resolved.post_apply_checksum:
            meta[META_CHECKSUM] = f"{resolved.post_apply_checksum:016x}"
        return meta

    async def _merge_and_upload(self, level: int, infos: list[LtxFileInfo]) -> None:
        blobs = await self._download(infos)

        def merge() -> tuple[bytes, int, int]:
            out = io.BytesIO()
            header, _ = compact([io.BytesIO(b) for b in blobs], out,
                                names=[i.key for i in infos], no_checksum=True,
                                allow_overlap=True)
            return out.getvalue(), header.min_txid, header.max_txid

        data, lo, hi = await trio.to_thread.run_sync(merge)
        meta = await self._metadata_of(infos[-1])
        await aio.run(self.client.write_ltx, level, lo, hi, data, meta)

    async def compact_level(self, level: int) -> None:
        """Merge the files of `level - 1` after the last file of `level` into one."""
        by_level = await self.listing()
        done = max((i.max_txid for i in by_level.get(level, [])), default=0)
        src = sorted(by_level.get(level - 1, []), key=lambda i: (i.min_txid, i.max_txid))
        chain: list[LtxFileInfo] = []
        cur = done if done else (src[0].min_txid - 1 if src else 0)
        for info in src:
            if info.max_txid <= cur:
                continue
            if info.min_txid > cur + 1:
                break  # a gap: compact up to it; the uploader fills it
            chain.append(info)
            cur = info.max_txid
        if not chain:
            return
        await self._merge_and_upload(level, chain)
        self.compactions += 1
        log.debug("%s: compacted %d L%d files into L%d %016x-%016x", self.name, len(chain),
                  level - 1, level, chain[0].min_txid, chain[-1].max_txid)

    async def snapshot(self) -> None:
        """Merge the current restore chain into an L9 snapshot 1..latest."""
        by_level = await self.listing()
        if not by_level:
            return
        plan = plan_from_files(self.client.description, by_level)
        if len(plan.files) == 1 and plan.files[0].level == SNAPSHOT_LEVEL:
            return  # the newest snapshot is already the latest state
        await self._merge_and_upload(SNAPSHOT_LEVEL, list(plan.files))
        self.snapshots += 1
        log.info("%s: wrote snapshot 1-%016x to %s", self.name, plan.txid,
                 self.client.description)

    def _deletable(self, by_level: Listing, now: datetime) -> list[LtxFileInfo]:
        doomed: dict[str, LtxFileInfo] = {}
        # Lower levels covered by the level above, once the level above's interval passed,
        # and never sooner than MIN_GRACE: a restore that planned with them is still reading
        # (Litestream keeps L0 files 5 minutes after compaction for the same reason).
        for level, grace in ((0, self.intervals[1]), (1, self.intervals[2]),
                             (2, self.intervals[3])):
            grace = max(grace, self.min_grace)
            covered = max((i.max_txid for i in by_level.get(level + 1, [])), default=0)
            for info in by_level.get(level, []):
                if info.max_txid <= covered and now - info.timestamp > timedelta(seconds=grace):
                    doomed[info.key] = info
        # Snapshots past retention (keep the newest), and what lies wholly before the oldest
        # snapshot kept.
        snaps = sorted(by_level.get(SNAPSHOT_LEVEL, []), key=lambda i: i.max_txid)
        keep = [s for s in snaps[:-1] if now - s.timestamp <= timedelta(seconds=self.retention)]
        keep.append(snaps[-1]) if snaps else None
        for s in snaps:
            if s not in keep:
                doomed[s.key] = s
        oldest = min(keep, key=lambda s: s.max_txid) if keep else None
        # ... but only once that snapshot is MIN_GRACE old: replicas following the bucket
        # (and running restores) may still be reading the files it replaces.
        if oldest is not None and now - oldest.timestamp > timedelta(seconds=self.min_grace):
            floor = oldest.max_txid
            for level, infos in by_level.items():
                if level == SNAPSHOT_LEVEL:
                    continue
                for info in infos:
                    if info.max_txid <= floor:
                        doomed[info.key] = info
        return list(doomed.values())

    async def apply_retention(self) -> None:
        by_level = await self.listing()
        if not by_level:
            return
        doomed = self._deletable(by_level, datetime.now(UTC))
        if not doomed:
            return
        keys = {d.key for d in doomed}
        remaining = {lv: [i for i in infos if i.key not in keys] for lv, infos in by_level.items()}
        latest = max(i.max_txid for infos in by_level.values() for i in infos)
        try:
            plan = plan_from_files(self.client.description, remaining)
        except RestorePlanError as exc:
            log.warning("%s: retention would leave %s unrestorable (%s); deleting nothing",
                        self.name, self.client.description, exc)
            return
        if plan.txid != latest or plan.files[0].min_txid != 1:
            log.warning("%s: retention would leave %s without a chain from TXID 1 to %016x; "
                        "deleting nothing", self.name, self.client.description, latest)
            return
        await aio.run(self.client.delete_ltx, doomed)
        self.deleted += len(doomed)
        log.debug("%s: retention deleted %d files from %s", self.name, len(doomed),
                  self.client.description)
