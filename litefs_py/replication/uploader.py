"""Ship a database's local LTX log to its replica, promptly and without ever blocking a commit.

One `Uploader` per database runs as a trio task:

- It wakes when the database records a transaction (or every `sync_interval` as a fallback),
  waits `batch_window` (0 by default) for more commits, asks the request budget
  (budget.py: a token bucket of L0 uploads per second) when it may upload, merges every
  local LTX file after the replica's high-water mark into one L0 object (an upload may span
  several TXIDs, as in Litestream 0.5), and PUTs it. A sporadic commit goes out at once; a
  steady stream is batched at the budget's rate; while a PUT is in flight new commits
  accumulate, so batches grow with load.
- Failures are retried forever under storage/retry.py's policy; the local log is the spool,
  so nothing is lost while the endpoint is down. Retryable ones back off exponentially with
  jitter up to 30 s; ones that need a fix (bad credentials, no such bucket, permission denied)
  are logged at once with the fix and retried every 30-60 s until it is made. Each distinct
  error is logged once; `status` counts successful uploads and failures per kind.
- Local LTX files are deleted only after they are in the replica and older than
  `data.retention`. If unuploaded files exceed `data.spool-limit` bytes, they are merged into
  one local file (pages written many times are kept once), and a warning says so.
- One writer per replica path. Before its first upload the uploader checks that the replica's
  newest TXID carries the database checksum this database had at that TXID (object metadata
  against the local log): another history there (another cluster, a recreated database) is
  refused. Before its first upload, and then at most every `writer_check_interval` seconds
  (10 s; the environment variable LITEFS_WRITER_CHECK_INTERVAL overrides it) before an
  upload, it lists level 0 from the position of the check before last: every object there
  must be one it wrote, with the ETag (or size) it wrote. (Without conditional writes this
  detects rather than prevents: two writers that upload within one interval of each other
  can each put one object in before both stop. A lease — `lease.type` — is what keeps a
  second primary from writing at all.) An object of another writer (another litefs-py, a Litestream
  replicating the same path) stops the uploads — never interleaved with another history —
  until the other writer's objects are gone; the error names them and their `litefs-writer`.
  Every object it writes carries `litefs-writer: <host>/<random>`.

Blocking work (reading and merging local files, boto3 calls) runs in worker threads; the
bookkeeping that touches the store runs in the trio thread.

With an etcd or s3 lease (docs/leases.md) the uploader asks `may_upload()` before every PUT
(a primary that cannot prove its lease uploads nothing more), never continues a bucket whose
newest file carries an epoch newer than its own (`epoch()`), and never puts records of two
epochs into one object, so that the bucket shows exactly where each term began.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

import trio

from ..ltx import HEADER_SIZE, TRAILER_SIZE, Header, LTXError, Trailer, compact
from ..storage import aio
from ..storage.base import (
    META_CHECKSUM,
    META_TIMESTAMP,
    META_WRITER,
    LtxFileInfo,
    ReplicaClient,
    format_timestamp,
)
from ..storage.errors import StorageError
from ..storage.retry import RetryPolicy, RetryState
from ..store.db import DB
from ..store.ltx_log import LtxLog
from ..store.snapshot import take_snapshot
from ..types import EncodedLtx, TxRange
from .budget import RequestBudget
from .local_checksum import local_checksum_at

log = logging.getLogger("litefs.replication")

WRITER_CHECK_INTERVAL = 10.0  # seconds between checks for another writer while uploading
WRITER_CHECK_ENV = "LITEFS_WRITER_CHECK_INTERVAL"


def _writer_check_interval() -> float:
    try:
        return float(os.environ.get(WRITER_CHECK_ENV) or WRITER_CHECK_INTERVAL)
    except ValueError:
        return WRITER_CHECK_INTERVAL


@dataclass
class UploaderStatus:
    """What `litefs status` and logs report for one database."""

    remote_txid: int = 0
    local_txid: int = 0
    spool_bytes: int = 0
    spool_files: int = 0
    uploads: int = 0  # L0 uploads that succeeded
    put_requests: int = 0
    oldest_unuploaded_at: float | None = None  # monotonic time of the oldest pending commit
    commit_times: dict[int, float] = field(default_factory=dict)  # txid -> monotonic commit time
    retry: RetryState = field(default_factory=RetryState)  # failures, counted per kind

    @property
    def last_error(self) -> str | None:
        return self.retry.last_error

    @property
    def lag_seconds(self) -> float:
        if self.oldest_unuploaded_at is None:
            return 0.0
        return max(0.0, time.monotonic() - self.oldest_unuploaded_at)


class RemoteAheadError(StorageError):
    """The replica holds TXIDs this database never had: not ours to overwrite."""

    kind = "foreign_writer"


class ForeignWriterError(StorageError):
    """Another writer's objects are in the replica path, or its newest TXID holds another
    history: uploading would interleave two histories. Needs someone to stop one writer."""

    kind = "foreign_writer"


@dataclass(frozen=True, slots=True)
class _Written:
    """An L0 object this uploader wrote: how to recognise it in a listing."""

    etag: str | None
    size: int

    def matches(self, info: LtxFileInfo) -> bool:
        if self.etag and info.etag:
            return self.etag == info.etag
        return self.size == info.size


def _writer_of(info: LtxFileInfo) -> str:
    writer = info.metadata.get(META_WRITER)
    if writer:
        return f"written by {writer}"
    return "written without litefs-writer metadata: Litestream, or another tool"


class NotUploadingError(StorageError):
    """This node may not upload now (it does not hold the lease, or the bucket belongs to a
    newer term); the message says why."""


class Uploader:
    def __init__(self, db: DB, client: ReplicaClient, *, sync_interval: float = 1.0,
                 batch_window: float = 0.05, retention: float = 600.0,
                 spool_limit: int = 1 << 30,
                 on_upload: Callable[[int, int], None] | None = None,
                 retry: RetryPolicy | None = None,
                 budget: RequestBudget | None = None,
                 writer_check_interval: float | None = None,
                 may_upload: Callable[[], str | None] | None = None,
                 epoch: Callable[[], int] | None = None) -> None:
        self.db = db
        self.client = client
        self.sync_interval = sync_interval
        self.batch_window = batch_window
        self.retention = retention
        self.spool_limit = spool_limit
        self.status = UploaderStatus(retry=RetryState(retry or RetryPolicy()))
        # L0 uploads per second (budget.py): decides only *when* an upload goes out.
        self.budget = budget if budget is not None else RequestBudget(0)
        self._wake = trio.Event()
        self._on_upload = on_upload
        self._spool_warned = False
        # (min, max) of an L0 upload whose request failed: it may still have reached the
        # replica (a connection cut after the server stored it), see _learn_unacked_upload.
        self._unacked: TxRange | None = None
        # Who we are in the objects' metadata, and what we wrote (see _check_writers).
        self.writer_id = f"{socket.gethostname()}/{secrets.token_hex(4)}"
        self.writer_check_interval = (_writer_check_interval() if writer_check_interval is None
                                      else writer_check_interval)
        self._written: dict[TxRange, _Written] = {}
        self._check_floors: collections.deque[int] = collections.deque(maxlen=2)
        self._last_writer_check = 0.0
        self.foreign_writer: str | None = None  # set while another writer blocks uploads
        self._may_upload = may_upload
        self._epoch = epoch
        self._stopped = False
        db.add_commit_listener(self._on_commit)

    def stop(self) -> None:
        """This node stopped being the primary: no more uploads, ever (the task is cancelled
        by its owner; this also stops commit listening from doing anything)."""
        self._stopped = True

    def _check_may_upload(self) -> None:
        if self._stopped:
            raise NotUploadingError(f"{self.db.name}: this node is no longer the primary")
        if self._may_upload is not None:
            why = self._may_upload()
            if why is not None:
                raise NotUploadingError(f"{self.db.name}: not uploading: {why}")

    def wake(self) -> None:
        self._wake.set()

    # Called from the FUSE handler (trio thread) after each recorded transaction.
    def _on_commit(self, txid: int) -> None:
        if self._stopped:
            return
        now = time.monotonic()
        if self.status.oldest_unuploaded_at is None:
            self.status.oldest_unuploaded_at = now
        self.status.commit_times[txid] = now
        self._wake.set()

    async def run(self) -> None:
        ready = False
        while True:
            try:
                if not ready:
                    await self._sync_position()
                    ready = True
                await self._upload_pending()
                self._apply_retention()
                await self._check_spool()
            except (StorageError, OSError, LTXError) as exc:
                # OSError/LTXError: a local file problem; retried like a storage failure so
                # the uploader never dies (the log says what is wrong).
                await self._check_spool()  # the spool grows exactly while this fails
                await trio.sleep(self._failed(exc))
                continue
            if self.status.retry.succeeded() is not None:
                log.info("%s: uploads to %s work again", self.db.name, self.client.description)
            with trio.move_on_after(self.sync_interval):
                await self._wake.wait()
            self._wake = trio.Event()
            if self.batch_window > 0:
                await trio.sleep(self.batch_window)  # let a burst share one PUT
            await self._await_budget()

    async def _await_budget(self) -> None:
        """Steady streams batch: with no upload left in the budget, wait for the next one.
        If commits kept coming meanwhile, wait up to `budget.grace` for one more so the
        object ends with the newest commit; a stream that stopped goes out at once."""
        wait = self.budget.delay()
        if wait <= 0 or self.status.oldest_unuploaded_at is None:
            return
        self.budget.deferred += 1
        await trio.sleep(wait)
        if self._wake.is_set():  # a commit came while we waited: the stream goes on
            self._wake = trio.Event()
            with trio.move_on_after(self.budget.grace):
                await self._wake.wait()
        self._wake = trio.Event()

    def _failed(self, exc: Exception) -> float:
        """Count the failure, log it once, and return the seconds to wait."""
        retry = self.status.retry
        failure = retry.failed(exc)
        if failure.new and failure.retryable:
            log.error("%s: upload to %s failed: %s (will retry; commits continue and are kept "
                      "locally)", self.db.name, self.client.description, exc)
        elif failure.new:
            log.error("%s: upload to %s failed: %s. Retrying cannot fix this: it is tried "
                      "again %s until it is fixed; commits continue and are kept locally",
                      self.db.name, self.client.description, exc, retry.slow_pace())
        return failure.delay

    async def _sync_position(self) -> None:
        """Learn the replica's high-water mark, and check it belongs to this database."""
        infos = []
        for level in await aio.run(self.client.levels):
            infos.extend(await aio.run(self.client.ltx_files, level))
        remote = max((i.max_txid for i in infos), default=0)
        if self._epoch is not None and infos:
            newest = max(infos, key=lambda i: (i.max_txid, -i.level))
            data = await aio.run(self.client.read_ltx, newest)
            theirs = Header.decode(data[:HEADER_SIZE]).node_id
            if theirs > self._epoch():
                raise NotUploadingError(
                    f"the newest file in {self.client.description} (TXID {newest.max_txid:016x}) "
                    f"was written in epoch {theirs}, after this node's epoch {self._epoch()}: "
                    "a newer primary owns this bucket; this node uploads nothing")
        local = self.db.txid
        if remote > local:
            raise RemoteAheadError(
                f"the replica at {self.client.description} is at TXID {remote:016x}, ahead of "
                f"the local database {self.db.name} (TXID {local:016x}): it holds another "
                f"history. Restore from it (`litefs restore --force`) or point the replica "
                f"elsewhere; nothing will be uploaded until then")
        first_local = self.db.ltx.first_txid()
        if local > remote and (first_local is None or first_local > remote + 1):
            # The replica lacks transactions we no longer have one by one (wiped bucket, or
            # local files already deleted): start it again from a snapshot.
            await self._upload_snapshot()
            self._start_writer_checks(self.status.remote_txid)
            return
        await self._check_same_history(infos, remote)
        self.status.remote_txid = remote
        self._start_writer_checks(remote)

    async def _check_same_history(self, infos: list[LtxFileInfo], remote: int) -> None:
        """The replica's newest TXID must hold the database this one had at that TXID: its
        object's `litefs-post-apply-checksum` against the local log. Another history there
        (another cluster writing the same path, a recreated database) is refused. Objects
        without the checksum (Litestream's) or a TXID the local log no longer has cannot be
        compared: accepted, as before."""
        ending = [i for i in infos if i.max_txid == remote]
        if not ending:
            return
        ours = await local_checksum_at(self.db, remote)
        if ours is None:
            return
        newest = min(ending, key=lambda i: i.level)  # level 0 first: the upload itself
        newest = await aio.run(self.client.ltx_metadata, newest)
        theirs = newest.post_apply_checksum
        if theirs is None or theirs == ours.checksum:
            return
        self.foreign_writer = newest.key
        raise ForeignWriterError(
            f"the replica at {self.client.description} holds another history: at TXID "
            f"{remote:016x} its object {newest.key} ({_writer_of(newest)}) records database "
            f"checksum {theirs:016x}, but {self.db.name} had {ours.checksum:016x} there "
            f"({ours.source}). Another litefs or Litestream writes to the same path, or this "
            "database was created anew. Nothing will be uploaded: stop the other writer and "
            "point one of them at another replica path, or restore this database from the "
            "replica (`litefs restore --force`) to continue its history")

    def _start_writer_checks(self, position: int) -> None:
        """From `position` (the replica's, as just listed) on, every level-0 object must be
        ours. The first upload checks first: another writer may have written since."""
        self._check_floors.clear()
        self._check_floors.append(position)
        self._last_writer_check = -math.inf

    async def _check_writers(self) -> None:
        """List level 0 after the position of the check before last: every object there
        must be one this uploader wrote, with the ETag (or size) it wrote. Raises
        ForeignWriterError naming the others (one HEAD for who wrote the first)."""
        floor = self._check_floors[0] if self._check_floors else self.status.remote_txid
        listed = await aio.run(self.client.ltx_files_after, 0, floor)
        foreign = [i for i in listed
                   if not (w := self._written.get(TxRange(i.min_txid, i.max_txid)))
                   or not w.matches(i)]
        if foreign:
            first = foreign[0]
            with contextlib.suppress(StorageError):
                first = await aio.run(self.client.ltx_metadata, first)
            names = ", ".join(i.key for i in foreign[:5]) + (
                f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            self.foreign_writer = first.key
            raise ForeignWriterError(
                f"another writer is uploading to {self.client.description}: level-0 "
                f"object(s) {names} after TXID {floor:016x} were not written by this mount "
                f"({self.writer_id}); {first.key} was {_writer_of(first)}. Uploads of "
                f"{self.db.name} stop here so the two histories never interleave; commits "
                "continue and are kept locally. Stop the other writer (two primaries, or a "
                "Litestream replicating the same path), then delete its objects or point one "
                "of them at another replica path; uploads resume once only this mount's "
                "objects are there")
        if self.foreign_writer is not None:
            log.info("%s: only this mount's objects are in %s again; uploads resume",
                     self.db.name, self.client.description)
            self.foreign_writer = None
        self._last_writer_check = time.monotonic()
        self._check_floors.append(self.status.remote_txid)
        oldest = self._check_floors[0]
        self._written = {k: w for k, w in self._written.items() if k[0] > oldest}

    def _wrote(self, info: LtxFileInfo) -> None:
        if info.level == 0:
            self._written[TxRange(info.min_txid, info.max_txid)] = _Written(info.etag, info.size)

    async def _upload_snapshot(self) -> None:
        self._check_may_upload()
        db = self.db
        log.warning("%s: replica %s is missing transactions no longer in the local log; "
                    "uploading a snapshot at TXID %016x", db.name, self.client.description,
                    db.txid)
        snap = await take_snapshot(db)
        meta = {META_TIMESTAMP: format_timestamp(snap.timestamp),
                META_CHECKSUM: f"{snap.checksum:016x}", META_WRITER: self.writer_id}
        await aio.run(self.client.write_ltx, 9, 1, snap.max_txid, snap.data, meta)
        self._wrote(await aio.run(self.client.write_ltx, 0, 1, snap.max_txid, snap.data, meta))
        self.status.put_requests += 2
        self.status.remote_txid = snap.max_txid

    async def _learn_unacked_upload(self) -> None:
        """After a failed PUT, ask the replica whether the object arrived anyway.

        Without this the retry would upload the same TXIDs again with a larger max (the
        commits made meanwhile), leaving two overlapping L0 objects: restorable, but not the
        contiguous L0 chain Litestream's compaction expects. One ListObjectsV2 (StartAfter)
        per failed upload.
        """
        assert self._unacked is not None
        lo, _hi = self._unacked
        landed = [i for i in await aio.run(self.client.ltx_files_after, 0, lo - 1)
                  if i.min_txid == lo]
        self._unacked = None
        top = max((i.max_txid for i in landed), default=0)
        for info in landed:
            if info.max_txid == top:
                self._wrote(info)
        if self.status.remote_txid < top <= self.db.txid:
            log.info("%s: TXIDs %016x-%016x reached %s although the request failed; "
                     "continuing after them", self.db.name, lo, top, self.client.description)
            self._acknowledged(top)

    def _acknowledged(self, hi: int) -> None:
        """The replica holds every TXID up to `hi`."""
        self.status.remote_txid = hi
        for txid in [t for t in self.status.commit_times if t <= hi]:
            del self.status.commit_times[txid]
        self.status.oldest_unuploaded_at = min(self.status.commit_times.values(), default=None)

    async def _upload_pending(self) -> None:
        db = self.db
        if self._unacked is not None:
            await self._learn_unacked_upload()
        remote = self.status.remote_txid
        pending = db.ltx.ranges(remote)
        self.status.local_txid = db.txid
        self.status.spool_files = len(pending)
        if not pending:
            self.status.oldest_unuploaded_at = None
            self.status.spool_bytes = 0
            return
        if pending[0].min_txid != remote + 1:
            raise StorageError(f"{db.name}: local LTX log starts at TXID "
                               f"{pending[0].min_txid:016x} but the replica ends at "
                               f"{remote:016x}")
        if (self.foreign_writer is not None or time.monotonic() - self._last_writer_check
                >= self.writer_check_interval):
            await self._check_writers()
        if self._epoch is not None:
            pending = await trio.to_thread.run_sync(_one_epoch, db.ltx, pending)
        merged = await trio.to_thread.run_sync(_merge_records, db.ltx, pending)
        lo, hi = merged.min_txid, merged.max_txid
        meta = {META_TIMESTAMP: format_timestamp(merged.timestamp), META_WRITER: self.writer_id}
        if merged.checksum:
            meta[META_CHECKSUM] = f"{merged.checksum:016x}"
        self._check_may_upload()  # as late as possible before the PUT
        self._unacked = TxRange(lo, hi)
        self.status.put_requests += 1
        self.budget.spend()
        self._wrote(await aio.run(self.client.write_ltx, 0, lo, hi, merged.data, meta))
        self._unacked = None
        self.status.uploads += 1
        self._acknowledged(hi)
        if self._on_upload is not None:
            self._on_upload(lo, hi)

    def _apply_retention(self) -> None:
        """Local retention: records in the replica for more than `retention` go."""
        self.db.ltx.trim(self.retention, upto=self.status.remote_txid)

    async def _check_spool(self) -> None:
        """Measure what waits for the replica; past `spool_limit`, say so loudly and merge
        it into one local file (pages written many times are then kept once)."""
        spool = self.db.ltx.bytes_after(self.status.remote_txid)
        self.status.spool_bytes = spool
        if spool <= self.spool_limit:
            self._spool_warned = False
            return
        if not self._spool_warned:
            log.warning("%s: %d bytes of LTX files wait for the replica (spool limit %d); "
                        "merging them locally while %s is unreachable", self.db.name,
                        spool, self.spool_limit, self.client.description)
            self._spool_warned = True
        await self.db_merge(after=self.status.remote_txid)

    async def db_merge(self, after: int) -> None:
        """Merge in a worker thread, then swap the files in the trio thread (the store's
        index and the FUSE handlers live there)."""
        job = self.db.ltx.merge_job(after)
        if job is None:
            return
        merged = await trio.to_thread.run_sync(job)
        r = self.db.ltx.install_merged(merged)
        log.info("%s: merged %d local LTX records into TXIDs %016x-%016x", self.db.name,
                 len(merged.parts), r.min_txid, r.max_txid)


def _one_epoch(ltx: LtxLog, ranges: list[TxRange]) -> list[TxRange]:
    """The leading records of `ranges` written in the same epoch as the first (epochs never
    decrease along the log, so a binary search finds where the next term began)."""
    def epoch(i: int) -> int:
        return ltx.header(ranges[i]).node_id

    first = epoch(0)
    if epoch(len(ranges) - 1) == first:
        return ranges
    lo, hi = 0, len(ranges) - 1  # epoch(lo) == first != epoch(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if epoch(mid) == first:
            lo = mid
        else:
            hi = mid
    return ranges[:hi]


def _merge_records(ltx: LtxLog, ranges: list[TxRange]) -> EncodedLtx:
    """Merge local records into one replica object (flags 0x2: no checksums inside), with
    the post-apply checksum and timestamp of the last one. Every input is fully verified by
    the merge before its trailer is trusted."""
    with ExitStack() as stack:
        files = [stack.enter_context(ltx.open(r)) for r in ranges]
        out = io.BytesIO()
        header, _trailer = compact(files, out, names=[ltx.describe(r) for r in ranges],
                                   no_checksum=True)
        last = files[-1]
        last.seek(-TRAILER_SIZE, os.SEEK_END)
        post = Trailer.decode(last.read(TRAILER_SIZE)).post_apply_checksum
    return EncodedLtx(out.getvalue(), header.min_txid, header.max_txid, post, header.timestamp)
