"""Bucket-follow mode: a read replica with no primary follows the replica bucket.

One `BucketFollower` per database runs as a trio task. It polls the bucket (Litestream 0.5's
layout, docs/formats.md §5) and hands each LTX file, whole, to an `apply` callback, in an order that
keeps the replica's database consistent:

1. **Incremental.** List level 0 after the replica's TXID (`ltx_files_after(0, pos)`: S3 lists
   from StartAfter, so once caught up a poll lists nothing) and apply the files that continue
   it (`min_txid == pos + 1`), in order.
2. **Bridge.** If the next TXID is no longer at level 0 (compacted, then removed by
   retention), a compacted file at level 1, 2 or 3 with `min_txid <= pos + 1 <= max_txid`
   continues it: it holds the newest version of every page changed in its range, so applying
   it over a database at `pos` gives the state at its max TXID. (The callback accepts such
   overlapping files; it skips only their pre-apply check.)
3. **Snapshot.** When nothing bridges the gap, when the replica is empty (`pos == 0`), or when
   the callback raised one of `resnapshot_on` (its position or checksum does not match the
   file), plan as `litefs restore` does (`plan_restore`: newest L9 snapshot, then the longest
   chain) and apply the plan — from its snapshot (always after a mismatch), or, when the
   replica's own position is trusted, from the last planned file that covers `pos + 1`
   (the snapshot only when no later file of the chain does).

A deleted database arrives as an LTX file with commit 0; it is applied like any other.

`run()` polls every `poll_interval` seconds; a caught-up poll is one `ltx_files_after(0, pos)`.
Its first poll, and one every `full_check_interval` seconds (`math.inf`: only the first),
also plans from the whole bucket when level 0 shows nothing new, for the one case a level-0
listing cannot see: a replica that fell behind while every later level-0 file was compacted
away, and nothing has been written since.

Storage errors never end `run()`: each distinct error is logged once (warning) and polls are
retried under storage/retry.py's policy — back-off with jitter up to `max_backoff`, or every
30-60 s for errors that need a fix (credentials, no such bucket), named in the log and in
`status` — and recovery is logged. Errors raised by `apply` other
than `resnapshot_on` propagate (a bug, or a corrupt file that a retry cannot fix).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio

from ..ltx import FLAG_V3_NO_CHECKSUM, HEADER_SIZE, Header, LTXError
from ..storage import aio
from ..storage.base import SNAPSHOT_LEVEL, LtxFileInfo, ReplicaClient
from ..storage.errors import ObjectNotFoundError, StorageError
from ..storage.retry import RetryPolicy, RetryState
from .restore_plan import (
    NoBackupsError,
    RestorePlan,
    RestorePlanError,
    describe_file,
    plan_restore,
)

__all__ = ["ApplyFn", "BucketFollower", "FollowerStatus"]

log = logging.getLogger("litefs.replication")

# Applies one whole LTX file (its bytes). When the file carries no post-apply checksum of its
# own (flag 0x2: snapshots and compacted files) and the bucket's metadata has one, it is
# passed as a second argument: the apply must produce exactly that checksum.
ApplyFn = Callable[..., Awaitable[None]]

BRIDGE_LEVELS = (1, 2, 3)
MAX_BACKOFF = 30.0
# A follower that finds nothing new at level 0 cannot tell "caught up" from "the files after
# its position were compacted away while it was not looking" (a stalled follower, after the
# grace period): every this many seconds it plans from every level (a few LISTs).
FULL_CHECK_INTERVAL = 30.0
VANISHED_RETRIES = 3  # relists per step when a listed file disappears before it is read


@dataclass
class FollowerStatus:
    """What `litefs status` and logs report for one followed database."""

    last_poll: datetime | None = None  # when the last poll finished (successfully or not)
    last_success: datetime | None = None  # when a poll last finished without an error
    remote_txid: int = 0  # the highest TXID seen in the bucket
    files_applied: int = 0
    snapshots_applied: int = 0  # plans applied from their snapshot (catch-up or re-snapshot)
    bridges_applied: int = 0  # compacted files applied over a gap at level 0
    retry: RetryState = field(default_factory=RetryState)  # failed polls, counted per kind

    @property
    def last_error(self) -> str | None:
        """The last poll's error; None once a poll succeeds."""
        return self.retry.last_error

    @property
    def failed_polls(self) -> int:
        """Consecutive failed polls (0 when the last one succeeded)."""
        return self.retry.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "last_poll": _iso(self.last_poll),
            "last_success": _iso(self.last_success),
            "remote_txid": f"{self.remote_txid:016x}",
            "files_applied": self.files_applied,
            "snapshots_applied": self.snapshots_applied,
            "bridges_applied": self.bridges_applied,
            "failed_polls": self.failed_polls,
            **self.retry.to_json(),
        }


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _span(info: LtxFileInfo) -> str:
    return f"L{info.level} {info.min_txid:016x}-{info.max_txid:016x}"


class BucketFollower:
    def __init__(self, name: str, client: ReplicaClient, apply: ApplyFn,
                 position: Callable[[], int], *, poll_interval: float = 1.0,
                 resnapshot_on: tuple[type[BaseException], ...] = (),
                 max_backoff: float = MAX_BACKOFF,
                 full_check_interval: float = FULL_CHECK_INTERVAL,
                 bridge_levels: Sequence[int] = BRIDGE_LEVELS) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, not {poll_interval}")
        self.name = name
        self.client = client
        self._apply = apply
        self._position = position
        self.poll_interval = poll_interval
        self.resnapshot_on = tuple(resnapshot_on)
        self._retry_on: tuple[type[BaseException], ...] = (
            StorageError, RestorePlanError, *self.resnapshot_on)
        self.full_check_interval = full_check_interval
        self.bridge_levels = tuple(bridge_levels)
        # The first retry after two poll intervals, doubling up to max_backoff.
        policy = RetryPolicy(initial=2 * poll_interval, cap=max(max_backoff, poll_interval))
        self.status = FollowerStatus(retry=RetryState(policy))
        self._force_snapshot: str | None = None  # why the next step must re-snapshot
        self._waiting_logged = False

    # ---- the task ------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the bucket forever (cancel the task to stop)."""
        next_full = 0.0  # a full check first: the replica may have been offline a long time
        while True:
            now = time.monotonic()
            full = now >= next_full
            failing = self.status.last_error
            try:
                await self.step(full=full)
            except self._retry_on as exc:
                await trio.sleep(self._failed(exc))
                continue
            if full:
                next_full = now + self.full_check_interval
            if failing is not None:
                log.info("%s: following %s again (it failed since: %s)", self.name,
                         self.client.description, failing)
            await trio.sleep(self.poll_interval)

    def _failed(self, exc: BaseException) -> float:
        """Count a failed poll, log it once, and return the seconds to wait."""
        message = f"{type(exc).__name__}: {exc}" if isinstance(exc, self.resnapshot_on) \
            else str(exc)
        self.status.last_poll = datetime.now(UTC)
        failure = self.status.retry.failed(exc, message)
        if failure.new and failure.retryable:
            log.warning("%s: following %s failed: %s (retrying with back-off)", self.name,
                        self.client.description, message)
        elif failure.new:
            log.error("%s: following %s failed: %s. Retrying cannot fix this: it is tried "
                      "again %s until it is fixed", self.name, self.client.description,
                      message, self.status.retry.slow_pace())
        return failure.delay

    def _succeeded(self) -> None:
        now = datetime.now(UTC)
        self.status.last_poll = now
        self.status.last_success = now
        self.status.retry.succeeded()

    # ---- one poll ------------------------------------------------------------------------

    async def step(self, *, full: bool = False) -> int:
        """One poll: apply whatever the bucket has after the replica's position; return the
        number of files applied. With `full`, also plan from the whole bucket if level 0 has
        nothing new. Raises StorageError / RestorePlanError (run() backs off), one of
        `resnapshot_on` if even a re-snapshot does not match, or whatever `apply` raises."""
        applied = 0
        vanished = 0
        resnapshotted = False
        checked_full = not full
        while True:
            try:
                if self._force_snapshot is not None:
                    applied += await self._from_plan(self._force_snapshot, force=True)
                    self._force_snapshot = None
                    continue
                pos = self._position()
                if pos == 0:
                    n = await self._from_plan("the replica is empty", force=True,
                                              empty_ok=True)
                    if n == 0:
                        break  # no backups yet
                    applied += n
                    continue
                files = await aio.run(self.client.ltx_files_after, 0, pos)
                self._saw(max((i.max_txid for i in files), default=0))
                if not files:
                    if checked_full:
                        break  # caught up
                    checked_full = True
                    applied += await self._from_plan("a periodic full check", force=False)
                    continue
                if files[0].min_txid == pos + 1:
                    applied += await self._apply_contiguous(files, pos)
                    continue
                reason = (f"level 0 continues at TXID {files[0].min_txid:016x}, after a gap "
                          f"from {pos + 1:016x}")
                bridge = await self._find_bridge(pos)
                if bridge is not None:
                    log.info("%s: %s; bridging it with %s", self.name, reason,
                             describe_file(bridge))
                    await self._apply_file(bridge, pos)
                    self.status.bridges_applied += 1
                    applied += 1
                    continue
                n = await self._from_plan(f"{reason} and no compacted file at level "
                                          f"{'/'.join(map(str, self.bridge_levels))} covers "
                                          "it", force=False)
                if n == 0:
                    break  # the plan does not get past pos either: wait for the bucket
                applied += n
            except ObjectNotFoundError:
                # Compaction or retention removed a listed file before it was read: list again.
                vanished += 1
                if vanished > VANISHED_RETRIES:
                    raise
                log.debug("%s: a listed LTX file disappeared from %s; listing again",
                          self.name, self.client.description)
            except self.resnapshot_on as exc:
                if isinstance(exc, StorageError | RestorePlanError):
                    raise  # a broad `resnapshot_on`: storage trouble is not a mismatch
                why = f"the replica rejected a file at TXID {self._position():016x}: {exc}"
                self._force_snapshot = why
                if resnapshotted:
                    # The re-snapshot, or a file right after it, does not match either: the
                    # bucket is inconsistent. run() backs off and re-snapshots again later.
                    raise
                resnapshotted = True
                log.warning("%s: re-snapshotting from %s: %s", self.name,
                            self.client.description, why)
        self._succeeded()
        return applied

    def _saw(self, txid: int) -> None:
        if txid > self.status.remote_txid:
            self.status.remote_txid = txid

    async def _apply_file(self, info: LtxFileInfo, pos: int) -> int:
        """Download and apply one file; return the new position (checked)."""
        data = await aio.run(self.client.read_ltx, info)
        expected = await self._expected_checksum(info, data)
        if expected is None:
            await self._apply(data)
        else:
            await self._apply(data, expected)
        self.status.files_applied += 1
        new = self._position()
        if new < info.max_txid:
            raise RuntimeError(
                f"{self.name}: applying {describe_file(info)} at TXID {pos:016x} left the "
                f"replica at TXID {new:016x}, not {info.max_txid:016x}: the apply callback "
                "does not advance the position")
        log.debug("%s: applied %s, now at TXID %016x", self.name, _span(info), new)
        return new

    async def _expected_checksum(self, info: LtxFileInfo, data: bytes) -> int | None:
        """The database checksum after `info` when the file itself has none to check (flag
        0x2), from the object's metadata (a HEAD when the listing lacked it)."""
        try:
            flags = Header.decode(data[:HEADER_SIZE]).flags
        except LTXError:
            return None  # the apply names the damage
        if not flags & FLAG_V3_NO_CHECKSUM or info.level == 0:
            # The trailer carries it (the apply checks it), or a level-0 file continues the
            # replica's checked position: no HEAD request per transaction.
            return None
        if info.post_apply_checksum is None:
            info = await aio.run(self.client.ltx_metadata, info)
        return info.post_apply_checksum

    async def _apply_contiguous(self, files: list[LtxFileInfo], pos: int) -> int:
        """Apply the listed level-0 files that continue `pos`, in order."""
        start = pos
        n = 0
        remaining = list(files)
        while True:
            nxt = [i for i in remaining if i.min_txid == pos + 1]
            if not nxt:
                break
            info = max(nxt, key=lambda i: i.max_txid)  # a re-upload may reach further
            pos = await self._apply_file(info, pos)
            n += 1
            remaining = [i for i in remaining if i.min_txid > pos]
        log.info("%s: applied %d file(s) from %s: TXID %016x -> %016x", self.name, n,
                 self.client.description, start, pos)
        return n

    async def _find_bridge(self, pos: int) -> LtxFileInfo | None:
        """The compacted file reaching furthest that covers `pos + 1`, from the first bridge
        level that has one."""
        for level in self.bridge_levels:
            infos = await aio.run(self.client.ltx_files, level)
            self._saw(max((i.max_txid for i in infos), default=0))
            covering = [i for i in infos if i.min_txid <= pos + 1 <= i.max_txid]
            if covering:
                return max(covering, key=lambda i: (i.max_txid, -i.min_txid))
        return None

    async def _from_plan(self, reason: str, *, force: bool, empty_ok: bool = False) -> int:
        """Plan as a restore does and apply the plan: all of it (`force`, or an empty
        replica), else from the last planned file that covers pos + 1. Returns the number of
        files applied (0 if the plan does not get past the replica's position)."""
        try:
            plan: RestorePlan = await aio.run(plan_restore, self.client)
        except NoBackupsError:
            if not empty_ok:
                raise
            if not self._waiting_logged:
                self._waiting_logged = True
                log.info("%s: no backups at %s yet; waiting for the first one", self.name,
                         self.client.description)
            return 0
        self._saw(plan.latest_txid)
        pos = self._position()
        files = list(plan.files)
        if not force and pos > 0:
            # The last planned file that covers pos + 1 continues the replica as it is (the
            # snapshot only if nothing later does); the rest of the chain follows it.
            covering = [k for k, i in enumerate(files) if i.min_txid <= pos + 1 <= i.max_txid]
            if not covering:
                return 0  # the plan ends at or before pos: nothing newer
            files = files[covering[-1]:]
        first = files[0]
        if first.level == SNAPSHOT_LEVEL or first.min_txid == 1:
            log.info("%s: restoring from %s (%s): %d file(s) from %s, up to TXID %016x",
                     self.name, self.client.description, reason, len(files),
                     describe_file(first), files[-1].max_txid)
            self.status.snapshots_applied += 1
        else:
            log.info("%s: catching up from %s (%s): %d file(s) from TXID %016x to %016x",
                     self.name, self.client.description, reason, len(files), pos,
                     files[-1].max_txid)
        for info in files:
            pos = await self._apply_file(info, pos)
        return len(files)
