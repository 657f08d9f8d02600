"""`GET /metrics`: the mount's state in Prometheus's text format (docs/operations.md lists
every metric).

Nothing is counted on the commit path: a scrape reads the objects that already hold the state
(each database's position and log, the uploaders' `UploaderStatus` with its per-kind error
counters, the replica node's stats and `ReplicaState`, the quarantines) and turns them into
metric families with prometheus-client's custom-collector API. Counters such as commits are
derived from what those objects keep (a commit advances the TXID by one).

A scrape runs in two halves: `MountMetrics.sample` reads the in-memory state in the trio
thread (where it changes), then `render` does the blocking part in a worker thread: the sizes
of LTX records it has not seen before (records never change once written, so each is
stat'ed once) and the quarantine sizes (cached by entry names in the store).

The primary serves `/metrics` on its replication API (StreamServer.endpoints); a read replica,
which has no API of its own, starts a listener for `/metrics` alone on `http.addr`
(`serve_metrics_only`). Both require `Authorization: Bearer <http.secret>` like the rest of
the API, unless `http.metrics-public: true`; both bind to loopback only when no secret is
set.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .. import __version__
from ..store.ltx_log import LtxLog
from ..store.quarantine import QuarantineUsage
from ..store.store import Store
from ..types import TxRange
from .asgi import Scope, Send, answer_lifespan
from .replica_node import ReplicaNode
from .stream_server import StreamServer, bind_address
from .uploader import Uploader

log = logging.getLogger("litefs.http")

METRICS_PATH = "/metrics"



# ---- what one scrape reads ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DbSample:
    name: str
    txid: int
    commits: int  # TXID advances seen while this process ran
    size_bytes: int  # pages x page size as of the TXID
    deleted: bool
    log: LtxLog
    records: list[TxRange]  # the local log's records when sampled


@dataclass(frozen=True, slots=True)
class UploadSample:
    name: str
    url: str
    remote_txid: int
    lag_seconds: float
    spool_bytes: int
    spool_files: int
    uploads: int
    put_requests: int
    failures_in_a_row: int
    errors: dict[str, int]  # kind -> failures since the start


@dataclass(frozen=True, slots=True)
class FollowerSample:
    name: str
    remote_txid: int
    files_applied: int
    snapshots_applied: int
    errors: dict[str, int]


@dataclass(frozen=True, slots=True)
class ReplicaSample:
    source: str  # "primary", "bucket" or "none"
    lag_seconds: float
    primary_txids: dict[str, int]
    applied_files: int
    apply_batches: int
    applied_pages: int
    snapshots: int
    reconnects: int
    apply_seconds: float
    followers: list[FollowerSample]


@dataclass(frozen=True, slots=True)
class Sample:
    role: str  # "primary" or "replica"
    dbs: list[DbSample]
    uploads: list[UploadSample]
    replica: ReplicaSample | None
    subscribers: int | None  # replicas streaming from this primary


@dataclass(slots=True)
class _Rendered:
    """The blocking half's results, handed to the collector."""

    ltx_bytes: dict[str, int] = field(default_factory=dict)
    quarantine: Mapping[str, QuarantineUsage] = field(default_factory=dict)


# ---- the collector ------------------------------------------------------------------------


class MountMetrics:
    """Reads one mount's state for a scrape. `uploaders` is the live name -> Uploader map of
    the primary (empty on a replica); `node` the replica's node (None on a primary)."""

    def __init__(self, store: Store, *, uploaders: Mapping[str, Uploader] | None = None,
                 node: ReplicaNode | None = None, server: StreamServer | None = None) -> None:
        self.store = store
        self.uploaders: Mapping[str, Uploader] = uploaders if uploaders is not None else {}
        self.node = node
        self.server = server
        # TXID per database when it was last sampled, and the advances counted so far: the
        # commits counter. Databases loaded at start count from their TXID then.
        self._last_txid = {name: db.txid for name, db in store.dbs.items()}
        self._commits: dict[str, int] = {}
        self._sizes: dict[str, dict[TxRange, int]] = {}  # database -> record -> bytes
        self._render_lock = threading.Lock()

    def sample(self) -> Sample:
        """Read the in-memory state (call in the trio thread)."""
        dbs = []
        for name, db in sorted(self.store.dbs.items()):
            txid = db.txid
            last = self._last_txid.get(name, 0)
            if txid > last:
                self._commits[name] = self._commits.get(name, 0) + txid - last
            self._last_txid[name] = txid
            table = db.table
            size = table.page_count * table.page_size if table is not None and not db.deleted \
                else 0
            dbs.append(DbSample(name, txid, self._commits.get(name, 0), size, db.deleted,
                                db.ltx, list(db.ltx)))
        uploads = []
        for name, up in sorted(self.uploaders.items()):
            st = up.status
            uploads.append(UploadSample(
                name, up.client.description, st.remote_txid, st.lag_seconds, st.spool_bytes,
                st.spool_files, st.uploads, st.put_requests, st.retry.failures,
                dict(st.retry.errors)))
        replica = None
        if self.node is not None:
            node, state = self.node, self.node.state
            stats = node.stats
            followers = [FollowerSample(name, f.status.remote_txid, f.status.files_applied,
                                        f.status.snapshots_applied, dict(f.status.retry.errors))
                         for name, f in sorted(node.followers.items())]
            replica = ReplicaSample(
                state.source, state.lag_seconds(), dict(state.primary_txids),
                stats.applied_files, stats.apply_batches, stats.applied_pages, stats.snapshots,
                stats.reconnects, stats.apply_seconds, followers)
        subscribers = self.server.subscribers if self.server is not None else None
        return Sample("replica" if self.node is not None else "primary", dbs, uploads,
                      replica, subscribers)

    def render(self, sample: Sample, accept: str = "") -> tuple[bytes, str]:
        """The exposition of `sample` and its content type (blocking: a worker thread)."""
        with self._render_lock:
            rendered = _Rendered(self._ltx_bytes(sample), self.store.quarantine_usage())
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_SampleCollector(sample, rendered))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        encoder, content_type = choose_encoder(accept)
        return encoder(registry), content_type

    def _ltx_bytes(self, sample: Sample) -> dict[str, int]:
        out = {}
        for db in sample.dbs:
            known = self._sizes.get(db.name, {})
            sizes: dict[TxRange, int] = {}
            for r in db.records:
                size = known.get(r)
                if size is None:
                    try:
                        size = db.log.size(r)
                    except FileNotFoundError:  # trimmed since the sample
                        continue
                sizes[r] = size
            self._sizes[db.name] = sizes
            out[db.name] = sum(sizes.values())
        for gone in set(self._sizes) - {db.name for db in sample.dbs}:
            del self._sizes[gone]
        return out


class _SampleCollector:
    """A prometheus-client custom collector over one sample."""

    def __init__(self, sample: Sample, rendered: _Rendered) -> None:
        self.sample = sample
        self.rendered = rendered

    def collect(self) -> Iterator[Metric]:
        s, r = self.sample, self.rendered
        info = InfoMetricFamily("litefs", "This litefs process.")
        info.add_metric([], {"version": __version__, "role": s.role})
        yield info

        db = ["db"]
        txid = GaugeMetricFamily("litefs_db_txid", "The database's current TXID.", labels=db)
        commits = CounterMetricFamily(
            "litefs_db_commits", "Transactions recorded (primary) or applied (replica) by "
            "this process: how far the TXID advanced since it started.", labels=db)
        size = GaugeMetricFamily("litefs_db_size_bytes", "The database's size (pages x page "
                                 "size) at its current TXID; 0 when deleted.", labels=db)
        deleted = GaugeMetricFamily("litefs_db_deleted", "1 if the application deleted the "
                                    "database (its log stays).", labels=db)
        ltx_bytes = GaugeMetricFamily("litefs_db_ltx_bytes", "Bytes of the local LTX log.",
                                      labels=db)
        ltx_files = GaugeMetricFamily("litefs_db_ltx_files", "Records in the local LTX log.",
                                      labels=db)
        for d in s.dbs:
            txid.add_metric([d.name], d.txid)
            commits.add_metric([d.name], d.commits)
            size.add_metric([d.name], d.size_bytes)
            deleted.add_metric([d.name], int(d.deleted))
            ltx_bytes.add_metric([d.name], r.ltx_bytes.get(d.name, 0))
            ltx_files.add_metric([d.name], len(d.records))
        yield from (txid, commits, size, deleted, ltx_bytes, ltx_files)

        q_bytes = GaugeMetricFamily("litefs_quarantine_bytes", "Bytes in the database's "
                                    "quarantine (what recovery set aside instead of "
                                    "deleting).", labels=db)
        q_entries = GaugeMetricFamily("litefs_quarantine_entries", "Entries in the "
                                      "database's quarantine.", labels=db)
        for name in sorted({d.name for d in s.dbs} | set(r.quarantine)):
            usage = r.quarantine.get(name, QuarantineUsage())
            q_bytes.add_metric([name], usage.bytes)
            q_entries.add_metric([name], usage.entries)
        yield from (q_bytes, q_entries)

        if s.subscribers is not None:
            yield GaugeMetricFamily("litefs_stream_subscribers", "Replicas streaming from "
                                    "this primary now.", value=s.subscribers)
        yield from _upload_families(s.uploads)
        if s.replica is not None:
            yield from _replica_families(s.replica, {d.name: d.txid for d in s.dbs})


def _upload_families(uploads: list[UploadSample]) -> Iterator[Metric]:
    db = ["db"]
    remote = GaugeMetricFamily("litefs_upload_txid", "The highest TXID in the replica "
                               "(bucket).", labels=["db", "replica"])
    lag = GaugeMetricFamily("litefs_upload_lag_seconds", "Age of the oldest transaction not "
                            "yet in the replica; 0 when it is current.", labels=db)
    spool = GaugeMetricFamily("litefs_upload_spool_bytes", "Bytes of LTX records waiting for "
                              "the replica.", labels=db)
    spool_files = GaugeMetricFamily("litefs_upload_spool_files", "LTX records waiting for the "
                                    "replica.", labels=db)
    done = CounterMetricFamily("litefs_uploads", "Uploads (level-0 objects) that succeeded.",
                               labels=db)
    puts = CounterMetricFamily("litefs_upload_requests", "PUT requests made (uploads, "
                               "snapshots, retries).", labels=db)
    failing = GaugeMetricFamily("litefs_upload_failures_in_a_row", "Failed attempts since "
                                "the last success; 0 when uploads work.", labels=db)
    errors = CounterMetricFamily("litefs_upload_errors", "Failed upload attempts by kind "
                                 "(credentials, no_bucket, unreachable, local_io, ...).",
                                 labels=["db", "kind"])
    for u in uploads:
        remote.add_metric([u.name, u.url], u.remote_txid)
        lag.add_metric([u.name], u.lag_seconds)
        spool.add_metric([u.name], u.spool_bytes)
        spool_files.add_metric([u.name], u.spool_files)
        done.add_metric([u.name], u.uploads)
        puts.add_metric([u.name], u.put_requests)
        failing.add_metric([u.name], u.failures_in_a_row)
        for kind, n in sorted(u.errors.items()):
            errors.add_metric([u.name, kind], n)
    yield from (remote, lag, spool, spool_files, done, puts, failing, errors)


def _replica_families(rep: ReplicaSample, txids: dict[str, int]) -> Iterator[Metric]:
    source = GaugeMetricFamily("litefs_replica_source", "Where this replica takes "
                               "transactions from now: 1 for the current source.",
                               labels=["source"])
    for name in ("primary", "bucket", "none"):
        source.add_metric([name], int(rep.source == name))
    yield source
    yield GaugeMetricFamily("litefs_replica_lag_seconds", "How long this replica has been "
                            "behind its source (while disconnected: since the last "
                            "contact); 0 when caught up.", value=rep.lag_seconds)
    primary = GaugeMetricFamily("litefs_replica_primary_txid", "The primary's TXID, from its "
                                "last message.", labels=["db"])
    behind = GaugeMetricFamily("litefs_replica_lag_txids", "Transactions the primary has "
                               "that this replica has not applied yet.", labels=["db"])
    for name, txid in sorted(rep.primary_txids.items()):
        primary.add_metric([name], txid)
        behind.add_metric([name], max(0, txid - txids.get(name, 0)))
    yield from (primary, behind)
    for metric, doc, value in (
        ("litefs_replica_applied_files", "LTX files applied.", rep.applied_files),
        ("litefs_replica_apply_batches", "Applies (reader pauses), each of one or more "
         "files.", rep.apply_batches),
        ("litefs_replica_applied_pages", "Pages written by applies.", rep.applied_pages),
        ("litefs_replica_snapshots", "Snapshots applied.", rep.snapshots),
        ("litefs_replica_reconnects", "Reconnections to the primary.", rep.reconnects),
        ("litefs_replica_apply_seconds", "Time spent applying.", rep.apply_seconds),
    ):
        yield CounterMetricFamily(metric, doc, value=value)
    if rep.followers:
        remote = GaugeMetricFamily("litefs_follow_bucket_txid", "The highest TXID seen in the "
                                   "bucket, per database followed there.", labels=["db"])
        applied = CounterMetricFamily("litefs_follow_files_applied", "Files applied from the "
                                      "bucket.", labels=["db"])
        errors = CounterMetricFamily("litefs_follow_errors", "Failed bucket polls by kind.",
                                     labels=["db", "kind"])
        for f in rep.followers:
            remote.add_metric([f.name], f.remote_txid)
            applied.add_metric([f.name], f.files_applied)
            for kind, n in sorted(f.errors.items()):
                errors.add_metric([f.name, kind], n)
        yield from (remote, applied, errors)


# ---- serving --------------------------------------------------------------------------------


class MetricsEndpoint:
    """`GET /metrics` for an ASGI server: `await endpoint(scope, send, authorized)`, where
    `authorized` says whether the request carried the API's secret."""

    def __init__(self, metrics: MountMetrics, *, public: bool = False) -> None:
        self.metrics = metrics
        self.public = public
        self._refused: set[str] = set()  # clients already logged as refused

    async def __call__(self, scope: Scope, send: Send, authorized: bool) -> None:
        if scope.get("method") not in ("GET", "HEAD"):
            await _reply(send, 405, b"only GET /metrics\n", "text/plain; charset=utf-8",
                         [(b"allow", b"GET, HEAD")])
            return
        if not (authorized or self.public):
            client = (scope.get("client") or ("?", 0))[0]
            if client not in self._refused:
                self._refused.add(client)
                log.warning("refused GET /metrics from %s: wrong or missing secret (set "
                            "http.metrics-public: true to serve metrics without it)", client)
            await _reply(send, 401, b"wrong or missing secret: send 'Authorization: Bearer "
                         b"<http.secret>', or set http.metrics-public: true\n",
                         "text/plain; charset=utf-8")
            return
        accept = ""
        for key, value in scope.get("headers", []):
            if key.lower() == b"accept":
                accept = bytes(value).decode("latin-1")
        sample = self.metrics.sample()
        body, content_type = await trio.to_thread.run_sync(self.metrics.render, sample, accept)
        await _reply(send, 200, b"" if scope.get("method") == "HEAD" else body, content_type)


async def _reply(send: Send, status: int, body: bytes, content_type: str,
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()),
                            (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store"), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


async def serve_metrics_only(endpoint: MetricsEndpoint, addr: str, secret: str | None, *,
                             task_status: trio.TaskStatus[str | None]
                             = trio.TASK_STATUS_IGNORED) -> None:
    """A read replica's HTTP listener on `addr`: `/metrics` and nothing else (a replica
    serves no replication API). The same bind rule as the primary's API: loopback only
    without a secret. A port in use is logged, not fatal."""
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve

    bind, _narrowed = bind_address(addr, secret)
    expected = b"Bearer " + secret.encode() if secret else None

    async def app(scope: Scope, receive: Callable[[], Awaitable[dict[str, Any]]],
                  send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] != METRICS_PATH:
            await _reply(send, 404, f"this node is a read replica; it serves only "
                         f"{METRICS_PATH}\n".encode(), "text/plain; charset=utf-8")
            return
        authorized = expected is None or any(
            key.lower() == b"authorization" and hmac.compare_digest(bytes(value), expected)
            for key, value in scope.get("headers", []))
        await endpoint(scope, send, authorized)

    cfg = HypercornConfig()
    cfg.bind = [bind]
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("litefs.http.server")
    cfg.graceful_timeout = 0.5
    host, _, port = bind.rpartition(":")
    try:
        probe = trio.socket.socket()
        probe.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        await probe.bind((host, int(port)))
        probe.close()
    except OSError as exc:
        log.warning("cannot listen on %s for %s: %s; change http.addr to serve metrics", bind,
                    METRICS_PATH, exc.strerror or exc)
        task_status.started(None)
        return
    log.info("metrics on http://%s%s", bind, METRICS_PATH)
    task_status.started(bind)
    try:
        await serve(app, cfg)  # type: ignore[arg-type]
    except* OSError as group:
        log.warning("cannot listen on %s for %s: %s", bind, METRICS_PATH, group.exceptions[0])
