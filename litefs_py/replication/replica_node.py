"""A read replica's replication: follow the primary's stream, or the bucket when there is no
primary to follow (none configured, or unreachable for FOLLOW_BUCKET_AFTER seconds while a
replica bucket is configured). Every file, from either source, is applied by
store/replica_apply.py in a worker thread, one at a time per database.

Recovery needs no operator: a file that does not fit the replica's position (it diverged, is
ahead of a restarted primary, or the primary's local log no longer has what it needs) marks
the database for a snapshot and the stream reconnects asking for one; the reason is logged.

With an etcd or s3 lease (`hooks` given, docs/leases.md) the node follows whoever holds the
lease (`follow`), refuses a stream from an epoch older than the newest it has seen, compares
its epoch history with the primary's at each hello and quarantines its own transactions the
primary's history does not have (then asks for a snapshot), and reports every applied
position (`hooks.applied`) so that a primary waiting for replicas can be acknowledged.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ..ltx import Header, LTXError
from ..storage.base import ReplicaClient
from ..storage.retry import RetryPolicy, RetryState
from ..store.apply_fence import FenceTimeout
from ..store.db import DB
from ..store.epochs import EpochStart
from ..store.quarantine import Quarantined, quarantine_divergent
from ..store.replica_apply import (
    Fence,
    KernelCache,
    LtxToApply,
    PositionMismatchError,
    apply_batch,
)
from ..store.replica_state import ReplicaState
from ..store.store import Store, valid_db_name
from ..types import ZERO_POS, FileKind, Pos
from .bucket_follower import BucketFollower
from .stream_client import AuthError, NotPrimaryError, PrimaryStream, StreamError
from .stream_protocol import Frame, ProtocolError, parse_positions

log = logging.getLogger("litefs.replica")

FOLLOW_BUCKET_AFTER = 10.0  # seconds without the primary before following the bucket
MAX_BACKOFF = 5.0
# Reconnecting to the primary: from 0.1 s up to MAX_BACKOFF; a rejected secret every
# MAX_BACKOFF (the primary may be restarted with the right one).
STREAM_RETRY = RetryPolicy(initial=0.1, cap=MAX_BACKOFF, slow=(MAX_BACKOFF, MAX_BACKOFF))
BUCKET_RESCAN = 30.0  # seconds between looks for new databases in the bucket


class ClusterHooks(Protocol):
    """What a replica of an etcd or s3 lease cluster tells, and asks, the node around it."""

    def known_epoch(self) -> int:
        """The newest epoch this node has seen (a primary of an older one is refused)."""
        ...

    def identity(self) -> dict[str, Any]:
        """Sent with each stream request: node id, hostname, advertise URL, candidate."""
        ...

    def saw_primary(self, hello: dict[str, Any]) -> None:
        """A hello or heartbeat from the primary (its epoch, peers, commit mode)."""
        ...

    def applied(self, name: str, pos: Pos) -> None:
        """A file from the primary was applied (and its LTX record is durable)."""
        ...

    def quarantined(self, name: str, fork: int, moved: Quarantined | None) -> None:
        """This node's records of `name` from TXID `fork` on were set aside."""
        ...


@dataclass
class ReplicaStats:
    applied_files: int = 0
    apply_batches: int = 0  # fence acquisitions (several files each when behind)
    applied_pages: int = 0
    snapshots: int = 0
    reconnects: int = 0
    last_error: str | None = None
    apply_seconds: float = 0.0


class ReplicaNode:
    def __init__(self, store: Store, state: ReplicaState, *, primary_url: str | None,
                 secret: str | None, fence_for: Callable[[DB], Fence | None],
                 cache: KernelCache | None,
                 bucket_dbs: Callable[[], list[tuple[str, ReplicaClient]]] | None = None,
                 follow_after: float = FOLLOW_BUCKET_AFTER,
                 hooks: ClusterHooks | None = None,
                 tls: ssl.SSLContext | None = None, allow_insecure: bool = False) -> None:
        self.store = store
        self.hooks = hooks
        self._redirected = trio.Event()
        self.tls = tls  # http_tls.client_context: verifies an https:// primary
        self.allow_insecure = allow_insecure
        self.state = state
        self.primary_url = primary_url
        self.secret = secret
        self.fence_for = fence_for
        self.cache = cache
        self.bucket_dbs = bucket_dbs
        self.follow_after = follow_after
        self.stats = ReplicaStats()
        self.followers: dict[str, BucketFollower] = {}  # databases followed in the bucket
        self._locks: dict[str, trio.Lock] = {}
        self._needs_snapshot: set[str] = set()
        self._following: trio.CancelScope | None = None
        self._healthy = False  # this connection applied something or idled normally
        self._connection = Connection(self, None)
        state.primary_url = primary_url

    def needs_snapshot(self, name: str) -> None:
        """Ask for a snapshot of `name` on the next connection (its copy cannot be
        trusted)."""
        self._needs_snapshot.add(name)

    def follow(self, url: str | None, hostname: str | None = None) -> None:
        """Follow another primary (the lease changed hands): the current stream ends and the
        next one goes to `url` (None: wait for one)."""
        self.state.primary_hostname = hostname
        if url == self.primary_url:
            return
        log.info("following the primary %s%s", url or "(none yet)",
                 f" ({hostname})" if hostname else "")
        self.primary_url = url
        self.state.primary_url = url
        if self._connection.nursery is not None:
            self._connection.fail(f"the primary is now {url or 'unknown'}")
        self._redirected.set()
        self._redirected = trio.Event()

    # ---- applying ------------------------------------------------------------------------

    def positions(self) -> dict[str, Pos]:
        return {name: (ZERO_POS if name in self._needs_snapshot else db.pos)
                for name, db in self.store.dbs.items() if db.txid}

    async def apply(self, name: str, data: bytes, expected_checksum: int | None = None) -> None:
        """Apply one LTX file to database `name` (created on first use). Raises
        PositionMismatchError (after marking the database for a snapshot) or LTXError."""
        await self.apply_batch(name, [LtxToApply(data, expected_checksum)])

    async def apply_batch(self, name: str, files: list[LtxToApply]) -> None:
        """Apply consecutive LTX files to database `name` under one reader fence."""
        if not valid_db_name(name):
            raise ProtocolError(f"invalid database name {name!r}")
        lock = self._locks.setdefault(name, trio.Lock())
        async with lock:
            db = self.store.dbs.get(name) or self.store.create(name)
            fence = self.fence_for(db) if db.exists(FileKind.DATABASE) else None
            started = time.monotonic()
            try:
                result = await trio.to_thread.run_sync(
                    lambda: apply_batch(db, files, fence, self.cache))
            except PositionMismatchError as exc:
                self._needs_snapshot.add(name)
                self.stats.last_error = str(exc)
                log.warning("%s; asking for a snapshot", exc)
                raise
            self.stats.apply_seconds += time.monotonic() - started
            if result.skipped:
                return
            _note_epochs(db, files)
            self._needs_snapshot.discard(name)
            self.stats.applied_files += result.files
            self.stats.apply_batches += 1
            self.stats.applied_pages += result.pages
            if result.snapshot:
                self.stats.snapshots += 1
                log.info("%s: applied a snapshot at TXID %016x (%d pages)", name,
                         result.max_txid, result.pages)
            else:
                log.debug("%s: applied TXIDs %016x-%016x", name, result.min_txid,
                          result.max_txid)

    def _caught_up(self) -> bool:
        for name, txid in self.state.primary_txids.items():
            db = self.store.dbs.get(name)
            if db is None or db.txid < txid:
                return False
        return True

    # ---- the primary's stream ------------------------------------------------------------

    def _check_epoch(self, h: dict[str, Any]) -> None:
        if self.hooks is None:
            return
        epoch = h.get("epoch")
        known = self.hooks.known_epoch()
        if known and (not isinstance(epoch, int) or epoch < known):
            raise StreamError(f"{self.primary_url} streams for epoch {epoch}, older than epoch "
                              f"{known} this node has seen: refusing it (a primary that lost "
                              "its lease)")

    async def _reconcile(self, histories: object) -> None:
        """Compare each database's epoch history with the primary's; quarantine what this
        node wrote that the primary's history does not have, then take its history."""
        if not isinstance(histories, dict):
            return
        diverged = []
        for name, raw in histories.items():
            db = self.store.dbs.get(str(name))
            if db is None or not isinstance(raw, list):
                continue
            try:
                primary = [EpochStart(int(e), int(t)) for e, t in raw]
            except (TypeError, ValueError):
                raise ProtocolError(f"bad epoch history for {name!r}") from None
            fork = db.epochs.fork_point(primary, db.txid)
            if fork is not None:
                lock = self._locks.setdefault(db.name, trio.Lock())
                async with lock:
                    moved = await trio.to_thread.run_sync(
                        quarantine_divergent, db, fork, self.store.quarantine(db.name))
                self._needs_snapshot.add(db.name)
                diverged.append(db.name)
                if self.hooks is not None:
                    self.hooks.quarantined(db.name, fork, moved)
            await trio.to_thread.run_sync(db.epochs.adopt, primary)
        if diverged:
            self._connection.fail(f"reconnecting to ask for a snapshot of "
                                  f"{', '.join(diverged)} after quarantining this node's "
                                  "transactions the primary does not have")

    async def _on_frame(self, frame: Frame) -> None:
        h = frame.header
        self._check_epoch(h)
        if frame.type == "hello":
            if self.hooks is not None:
                self.hooks.saw_primary(h)
                await self._reconcile(h.get("epochs"))
            self.state.primary_txids = {n: t for n, (t, _c) in
                                        parse_positions(h.get("dbs", {})).items()}
            if self.state.source != "primary":
                log.info("streaming from the primary %s", self.primary_url)
            self.state.source = "primary"
            self._stop_following("the primary is back")
        elif frame.type == "ltx":
            name = str(h.get("db", ""))
            if not valid_db_name(name):
                raise ProtocolError(f"invalid database name {name!r}")
            expected = _hex(h.get("checksum")) if h.get("snapshot") else None
            primary_txid = _hex(h.get("primary_txid"))
            if primary_txid is not None:
                self.state.primary_txids[name] = primary_txid
            if h.get("snapshot"):
                log.info("%s: the primary sends a snapshot at TXID %s: %s", name,
                         h.get("max_txid"), h.get("reason") or "no reason given")
            await self._connection.queue(name).send(LtxToApply(frame.payload, expected))
            return  # the applier notes the position once the file is applied
        elif frame.type == "heartbeat":
            if self.hooks is not None:
                self.hooks.saw_primary(h)
            self._healthy = True
            self.state.primary_txids = {n: t for n, (t, _c) in
                                        parse_positions(h.get("dbs", {})).items()}
        self.state.note_position(self._caught_up())

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            if self.primary_url is None and self.hooks is None:
                self.state.source = "bucket"
                await self._follow_bucket()
                return
            await self._follow_primary(nursery)

    async def _follow_primary(self, nursery: trio.Nursery) -> None:
        retry = RetryState(STREAM_RETRY)
        down_since: float | None = None
        last_reason = None
        while True:
            if self.primary_url is None:  # no primary known yet (a lease being elected)
                self.state.source = "none"
                await self._redirected.wait()
                continue
            stream = PrimaryStream(self.primary_url, self.secret, self.positions,
                                   self._on_frame,
                                   self.hooks.identity() if self.hooks is not None else None,
                                   tls=self.tls, allow_insecure=self.allow_insecure)
            self._healthy = False
            kind = "stream"
            try:
                await self._connect(stream)
                reason = (self._connection.failure
                          or f"{self.primary_url} closed the stream")
            except AuthError as exc:
                reason = str(exc)
                kind = "auth"  # a wrong secret: waiting does not fix it
            except NotPrimaryError as exc:
                reason = str(exc)  # the lease moved on: `follow` redirects
            except StreamError as exc:
                reason = str(exc)
            except OSError as exc:  # e.g. readers held their locks too long: retry
                reason = f"cannot apply: {exc}"
            except Exception as exc:  # a bug: logged with its traceback, never a dead mount
                log.exception("replication from the primary failed")
                reason = f"internal error: {exc!r}"
            if self._healthy:  # it worked for a while: retry at once
                down_since = None
                retry.succeeded()
            failure = retry.failed_with(reason, kind, retryable=kind != "auth")
            self.state.source = "none" if self._following is None else "bucket"
            self.stats.reconnects += 1
            self.stats.last_error = reason
            now = time.monotonic()
            if down_since is None:
                down_since = now
            if reason != last_reason:
                log.warning("replication from the primary interrupted: %s; retrying", reason)
                last_reason = reason
            if (self._following is None and self.bucket_dbs is not None
                    and now - down_since >= self.follow_after):
                log.warning("the primary has been unreachable for %.0f s; following the "
                            "bucket until it is back", now - down_since)
                nursery.start_soon(self._follow_bucket_while_down)
            with trio.move_on_after(failure.delay):
                await self._redirected.wait()  # a new primary: connect at once

    async def _connect(self, stream: PrimaryStream) -> None:
        """One connection with its appliers; an error of the stream or of an applier is
        raised as itself (not wrapped in the nursery's exception group)."""
        try:
            async with trio.open_nursery() as conn_nursery:
                self._connection = Connection(self, conn_nursery)
                await stream.run_once()
                conn_nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            leaves = _leaves(group)
            if len(leaves) == 1 and isinstance(leaves[0], Exception):
                raise leaves[0] from None
            raise

    def _stop_following(self, why: str) -> None:
        if self._following is not None:
            log.info("no longer following the bucket: %s", why)
            self._following.cancel()
            self._following = None

    async def _follow_bucket_while_down(self) -> None:
        with trio.CancelScope() as scope:
            self._following = scope
            self.state.source = "bucket"
            await self._follow_bucket()

    async def _follow_bucket(self) -> None:
        if self.bucket_dbs is None:
            log.error("no primary (lease.advertise-url) and no replica bucket to follow: "
                      "this replica has no source of transactions")
            await trio.sleep_forever()
            return
        started: set[str] = set()
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    dbs = await trio.to_thread.run_sync(self.bucket_dbs)
                except Exception as exc:  # the next scan retries
                    log.warning("cannot list the bucket's databases: %s", exc)
                    dbs = []
                for name, client in dbs:
                    if name in started:
                        continue
                    started.add(name)
                    follower = BucketFollower(
                        name, client, _bound_apply(self, name),
                        _bound_position(self, name),
                        resnapshot_on=(PositionMismatchError,))
                    self.followers[name] = follower
                    nursery.start_soon(_keep_running, follower, name=f"follow bucket {name}")
                await trio.sleep(BUCKET_RESCAN)

    def _position(self, name: str) -> int:
        if name in self._needs_snapshot:
            return 0
        db = self.store.dbs.get(name)
        return db.txid if db is not None else 0


MAX_BATCH_FILES = 256  # LTX files applied under one fence at most
APPLY_QUEUE = 256  # frames buffered per database before the stream waits for its applier
FENCE_RETRY = 0.1  # seconds between attempts while readers hold a database's locks


class Connection:
    """One stream's per-database appliers: each database applies its files in order in its
    own task, so readers holding one database's locks never hold up another database."""

    def __init__(self, node: ReplicaNode, nursery: trio.Nursery | None) -> None:
        self.node = node
        self.nursery = nursery
        self.queues: dict[str, trio.MemorySendChannel[LtxToApply]] = {}
        self.failure: str | None = None

    def queue(self, name: str) -> trio.MemorySendChannel[LtxToApply]:
        q = self.queues.get(name)
        if q is None:
            assert self.nursery is not None
            q, receive = trio.open_memory_channel[LtxToApply](APPLY_QUEUE)
            self.queues[name] = q
            self.nursery.start_soon(self._applier, name, receive, name=f"apply {name}")
        return q

    def fail(self, reason: str) -> None:
        """End the connection; the next one starts from the positions applied so far."""
        if self.failure is None:
            self.failure = reason
        assert self.nursery is not None
        self.nursery.cancel_scope.cancel()

    async def _applier(self, name: str,
                       receive: trio.MemoryReceiveChannel[LtxToApply]) -> None:
        node = self.node
        async for first in receive:
            batch = [first]
            # Whatever else has arrived for this database goes under the same fence: a
            # replica that fell behind catches up with one pause of its readers.
            while len(batch) < MAX_BATCH_FILES and not _is_deletion(batch[-1].data):
                try:
                    item = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                if _is_deletion(item.data):
                    await self._apply_with_retry(name, batch)
                    batch = [item]
                    break
                batch.append(item)
            if not await self._apply_with_retry(name, batch):
                return
            node._healthy = True
            node.state.note_position(node._caught_up())
            if node.hooks is not None:
                db = node.store.dbs.get(name)
                if db is not None:
                    node.hooks.applied(name, db.pos)

    async def _apply_with_retry(self, name: str,
                                batch: list[LtxToApply]) -> bool:
        """Apply, waiting out readers that hold the database's locks; False when the
        connection must end (a snapshot is needed, or an error)."""
        node = self.node
        waited = False
        while True:
            try:
                await node.apply_batch(name, batch)
                return True
            except FenceTimeout as exc:
                # Readers hold this database's locks (a long query): keep trying the same
                # files; other databases go on meanwhile.
                if not waited:
                    log.warning("%s; retrying until they let go", exc)
                    waited = True
                await trio.sleep(FENCE_RETRY)
            except PositionMismatchError:
                self.fail("reconnecting to ask for a snapshot")
                return False
            except LTXError as exc:
                self.fail(f"the primary sent a damaged LTX file for {name}: {exc}")
                return False
            except OSError as exc:
                self.fail(f"cannot apply to {name}: {exc}")
                return False
            except Exception as exc:  # a bug: logged, and the stream starts over
                log.exception("%s: applying failed", name)
                self.fail(f"internal error applying to {name}: {exc!r}")
                return False


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _note_epochs(db: DB, files: list[LtxToApply]) -> None:
    """A record of a newer term than the history knows (from the bucket, which carries no
    history) starts that term's entry."""
    for f in files:
        header = Header.decode(f.data[:100])
        if header.node_id > db.epochs.last_epoch and header.min_txid > 1:
            db.epochs.begin(header.node_id, header.min_txid)


def _is_deletion(data: bytes) -> bool:
    return len(data) >= 100 and Header.decode(data[:100]).commit == 0


async def _keep_running(follower: BucketFollower) -> None:
    """A follower that fails (a bug, or a file it cannot apply) is logged and restarted: the
    mount keeps serving its readers either way."""
    while True:
        try:
            await follower.run()
            return
        except Exception:
            log.exception("%s: following the bucket failed; restarting in %.0f s",
                          follower.name, MAX_BACKOFF)
        await trio.sleep(MAX_BACKOFF)


def _bound_apply(node: ReplicaNode, name: str) -> Callable[..., Awaitable[None]]:
    async def apply(data: bytes, expected_checksum: int | None = None) -> None:
        await node.apply(name, data, expected_checksum)
        node.state.note_position(True)

    return apply


def _bound_position(node: ReplicaNode, name: str) -> Callable[[], int]:
    return lambda: node._position(name)


def _hex(value: object) -> int | None:
    try:
        return int(str(value), 16) if value is not None else None
    except ValueError:
        return None
