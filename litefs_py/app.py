"""Wire one mount together: store (with recovery) -> FUSE -> signal handling -> shutdown."""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import json
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyfuse3
import trio

from .config import Config
from .errors import ExitCode, QuietError
from .fuse.ops import PrimaryOperations
from .fuse.replica_ops import ReplicaKernelCache, ReplicaOperations
from .mountinfo import is_mounted
from .replication import http_tls
from .replication.budget import RequestBudget
from .replication.drill import RestoreDrill
from .replication.maintenance import ReplicaMaintainer, Schedule
from .replication.replica_node import ReplicaNode
from .replication.stream_server import StreamServer
from .replication.uploader import Uploader
from .storage.base import ReplicaClient
from .storage.errors import StorageError
from .store.apply_fence import ApplyFence
from .store.db import DB
from .store.quarantine import QuarantineUsage
from .store.replica_state import ReplicaState
from .store.store import Store, valid_db_name

if TYPE_CHECKING:
    from .cluster import Cluster

log = logging.getLogger("litefs")

DRAIN_TIMEOUT = 10.0  # seconds a clean shutdown waits for uploads to finish
STATUS_INTERVAL = 1.0  # seconds between updates of DATA/status.json


@dataclass(frozen=True, slots=True)
class AppCommand:
    """One command of `exec:` (or the `litefs mount -- APP...` command line)."""

    argv: tuple[str, ...]
    # Run only on a node that is a lease candidate (LiteFS's `if-candidate`): e.g. schema
    # migrations, which a read replica cannot (and must not) apply.
    if_candidate: bool = False

    def show(self, limit: int = 120) -> str:
        """The command as a shell would read it, shortened for log lines."""
        text = shlex.join(self.argv)
        return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class MountOptions:
    mount_dir: Path
    data_dir: Path
    allow_other: bool = False
    debug: bool = False
    config: Config = field(default_factory=Config)
    # Started in order once the mount serves: every command but the last runs to completion
    # (a failure stops the start-up), the last is the supervised application.
    commands: tuple[AppCommand, ...] = ()


class Replicator:
    """Starts one uploader per database that has a replica target (and its maintainer, and
    its restore drill when `validation-interval` is set). `options(db)` adds keyword
    arguments to each Uploader (a primary of an etcd or s3 lease: its epoch and whether it
    may still upload, cluster.py)."""

    def __init__(self, config: Config, nursery: trio.Nursery,
                 data_dir: Path | None = None, *,
                 options: Callable[[DB], dict[str, Any]] | None = None,
                 clients: Callable[[str], ReplicaClient | None] | None = None) -> None:
        self.config = config
        self.nursery = nursery
        self.data_dir = data_dir if data_dir is not None else Path(config.data.dir)
        self.uploaders: dict[str, Uploader] = {}
        self.drills: dict[str, RestoreDrill] = {}
        self.local_only: set[str] = set()
        self.options = options
        # Made ahead of time by the caller (boto3 takes a second to make a client: a
        # primary elected during a failover must not stall its event loop for it).
        self.clients = clients

    def attach(self, db: DB) -> None:
        if db.name in self.uploaders or db.name in self.local_only:
            return
        replica = self.config.replica_for(db.name)
        if replica is None:
            # No replica: the local log is still trimmed, or it would grow forever.
            self.local_only.add(db.name)
            self.nursery.start_soon(trim_local_log, db, self.config.data.retention,
                                    name=f"local retention {db.name}")
            return
        from .replica_clients import client_for

        client = (self.clients(db.name) if self.clients is not None else None) \
            or client_for(replica)
        extra = self.options(db) if self.options is not None else {}
        up = Uploader(db, client, sync_interval=replica.sync_interval,
                      batch_window=extra.pop("batch_window", replica.batch_window),
                      budget=RequestBudget(replica.upload_rate, replica.upload_burst),
                      retention=self.config.data.retention,
                      spool_limit=self.config.data.spool_limit, **extra)
        self.uploaders[db.name] = up
        self.nursery.start_soon(up.run, name=f"uploader {db.name}")
        schedule = Schedule(replica.l1_interval, replica.l2_interval, replica.l3_interval,
                            replica.snapshot_interval, replica.retention)
        maintainer = ReplicaMaintainer(
            db.name, client, schedule,
            hold=lambda: None if up.foreign_writer is None else
            f"another writer's objects ({up.foreign_writer}) are in it")
        self.nursery.start_soon(maintainer.run, name=f"replica maintenance {db.name}")
        if replica.validation_interval > 0:
            drill = RestoreDrill(db, client, functools.partial(client_for, replica),
                                 self.data_dir / "drill", replica.validation_interval)
            self.drills[db.name] = drill
            self.nursery.start_soon(drill.run, name=f"restore drill {db.name}")
        if replica.age is not None and not replica.age.identities:
            log.warning("%s: replica.age has recipients but no identities: objects are "
                        "encrypted, but compaction, snapshots%s cannot read them back; add "
                        "the secret key to replica.age.identities", db.name,
                        " and the restore drill" if replica.validation_interval > 0 else "")
        log.info("%s: replicating to %s%s", db.name, client.description,
                 f" (restore drill every {replica.validation_interval:g} s)"
                 if replica.validation_interval > 0 else "")


    async def drain(self) -> None:
        """After the mount stopped: give the uploaders DRAIN_TIMEOUT seconds to ship what is
        left, so a clean shutdown leaves the replica current. What is not shipped stays in
        the local log and goes out on the next start."""
        with trio.move_on_after(DRAIN_TIMEOUT):
            for name, up in self.uploaders.items():
                while up.status.remote_txid < up.db.txid and up.status.last_error is None:
                    up.wake()
                    await trio.sleep(0.02)
                if up.status.remote_txid < up.db.txid:
                    log.warning("%s: TXIDs %016x-%016x not yet in the replica; they stay in "
                                "the local log for the next start", name,
                                up.status.remote_txid + 1, up.db.txid)


async def trim_local_log(db: DB, retention: float) -> None:
    """For a database without a replica (and on read replicas): local retention, by age."""
    while True:
        await trio.sleep(max(1.0, min(retention / 4, 60.0)))
        db.ltx.trim(retention)


def replica_database_names(config: Config) -> list[str]:
    """Databases that have a replica: the `dbs` entries, plus every database found under the
    default replica's path (one directory or key prefix per database)."""
    names = {d.name for d in config.dbs if config.replica_for(d.name) is not None}
    if config.replica is not None:
        from .replica_clients import client_for

        base = client_for(config.replica)
        try:
            objects = base.list_objects("")
        except StorageError as exc:
            # The local databases can be served and their commits spooled without the
            # replica; only a database missing here would need it (checked per name below).
            log.warning("cannot list %s to find databases to restore (%s); serving the local "
                        "databases, uploads will catch up", base.description, exc)
            objects = []
        for obj in objects:
            first = obj.key.lstrip("/").split("/", 1)[0]
            if first and "/" in obj.key.lstrip("/") and valid_db_name(first):
                names.add(first)
    return sorted(names)


def restore_missing_databases(config: Config, store: Store) -> None:
    """Cold start: bring back from the replica every database that is not here yet, before
    the mount is exposed. A replica with nothing in it means starting empty."""
    from .replica_clients import client_for
    from .replication.restore import restore_to_data_dir

    for name in replica_database_names(config):
        if store.has_local_data(name):
            continue
        replica = config.replica_for(name)
        assert replica is not None
        client = client_for(replica)
        result = restore_to_data_dir(client, store, name, if_replica_exists=True)
        log.info("%s: %s", name, result.summary())


def resolve_mount_dir(path: Path) -> Path:
    """Absolute, symlink-free path of the mount directory, resolved without entering a mount
    that may be dead (only the parent is resolved; the last component is kept as given)."""
    absolute = Path(os.path.abspath(path))
    return Path(os.path.realpath(absolute.parent)) / absolute.name


def clear_stale_mount(path: Path) -> None:
    """A crashed run leaves a dead FUSE mount ("Transport endpoint is not connected")."""
    if not is_mounted(path):
        return
    log.warning("clearing a stale mount at %s left by an earlier run", path)
    for args in (["fusermount3", "-u", str(path)], ["fusermount3", "-u", "-z", str(path)]):
        if subprocess.run(args, capture_output=True).returncode == 0:
            return
    raise QuietError(f"{path} is still mounted and could not be unmounted; run "
                     f"`fusermount3 -u -z {path}` and try again", ExitCode.IO)


def prepare_mount_dir(path: Path) -> None:
    clear_stale_mount(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise QuietError(f"{path} is a dead mount; run `fusermount3 -u -z {path}`",
                             ExitCode.IO) from None
        raise QuietError(f"cannot create mount directory {path}: {exc.strerror}",
                         ExitCode.IO) from None
    with os.scandir(path) as entries:
        occupied = any(entries)
    if occupied:
        raise QuietError(f"mount directory {path} is not empty; litefs mounts over it and "
                         "would hide those files. Use an empty directory.", ExitCode.USAGE)


@dataclass
class Supervision:
    """The exec commands, if any: signals go to the running one first, and the mount stays up
    until it has exited (its last writes still need the filesystem)."""

    process: trio.Process | None = None  # the command running now (a start-up step or the app)
    exit_code: int | None = None
    # SIGINT/SIGTERM arrived, or the mount is stopping: start no further command.
    stopping: bool = False
    # Run (while the mount still answers requests) before it stops: e.g. closing files this
    # process holds open through its own mount.
    before_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def exit_status(returncode: int) -> int:
    """A child's status as a shell (and a container runtime) reports it: its exit code, or
    128+N when signal N killed it (SIGTERM → 143). trio/subprocess give -N for the latter,
    which as a process exit code would wrap around to 256-N (SIGTERM → 241)."""
    return 128 - returncode if returncode < 0 else returncode


def describe_status(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name} (exit status {exit_status(returncode)})"
    return f"exited with {returncode}"


async def stop_mount(sup: Supervision) -> None:
    sup.stopping = True
    for hook in sup.before_stop:
        with contextlib.suppress(Exception):
            await hook()
    pyfuse3.terminate()  # main() returns; _serve then drains uploads and stops


async def _watch_signals(sup: Supervision) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum != signal.SIGHUP:
                sup.stopping = True
            if sup.process is not None and sup.process.returncode is None:
                log.info("received %s; passing it to the application", name)
                sup.process.send_signal(signum)
                continue
            log.info("received %s; unmounting", name)
            await stop_mount(sup)
            return


async def _run_command(label: str, cmd: AppCommand, sup: Supervision) -> int:
    """Start one command with litefs's environment and output, wait for it; its exit status
    (126/127 as a shell gives when it cannot be started)."""
    try:
        sup.process = await trio.lowlevel.open_process(list(cmd.argv))
    except OSError as exc:
        log.error("%s: cannot start %s: %s", label, cmd.argv[0], exc.strerror or exc)
        return 126 if isinstance(exc, PermissionError) else 127
    # If this is cancelled (the mount went away under us), sup.process stays set and
    # run_mount kills it: the application cannot continue without its filesystem.
    returncode = await sup.process.wait()
    sup.process = None
    return returncode


async def _supervise(commands: tuple[AppCommand, ...], candidate: bool,
                     sup: Supervision, exit_on_error: bool = True) -> None:
    """Run the exec commands as LiteFS does: in order; `if_candidate` ones only on a lease
    candidate; every one but the last to completion (a non-zero exit stops the start-up);
    the last supervised. When the last exits (or the start-up stops), unmount and pass its
    exit status on. If the last command is skipped, the mount serves until a signal."""
    last = len(commands) - 1
    for i, cmd in enumerate(commands):
        label = f"exec[{i}]" if len(commands) > 1 else "exec"
        if sup.stopping:
            return
        if cmd.if_candidate and not candidate:
            log.info("%s: skipping %s: this node is not a lease candidate (if-candidate: true)",
                     label, cmd.show())
            if i == last:
                log.info("no application to supervise; serving until SIGTERM or SIGINT")
            continue
        if i < last:
            log.info("%s: running %s (to completion before the next command)", label,
                     cmd.show())
            returncode = await _run_command(label, cmd, sup)
            if returncode != 0 or sup.stopping:
                sup.exit_code = exit_status(returncode)
                why = f"{cmd.show()} " + ("finished, but a signal arrived" if returncode == 0
                                          else describe_status(returncode))
                rest = ", ".join(c.show() for c in commands[i + 1:])
                if not exit_on_error and not sup.stopping:
                    # LiteFS's exit-on-error: false: keep the mount (and the container) up
                    # so the failed step can be inspected and run again by hand.
                    log.error("%s: %s; not starting the rest of exec (%s); exit-on-error is "
                              "false: the mount stays up for inspection, SIGTERM or SIGINT "
                              "unmounts and exits with %d", label, why, rest, sup.exit_code)
                    return
                log.error("%s: %s; not starting the rest of exec (%s); unmounting and "
                          "exiting with %d", label, why, rest, sup.exit_code)
                await stop_mount(sup)
                return
            log.info("%s: %s finished", label, cmd.show())
            continue
        log.info("%s: starting %s (supervised: litefs exits when it exits)", label, cmd.show())
        returncode = await _run_command(label, cmd, sup)
        sup.exit_code = exit_status(returncode)
        log.info("%s: %s %s; unmounting", label, cmd.show(), describe_status(returncode))
        await stop_mount(sup)


def status_document(store: Store, replicator: Replicator | None,
                    node: ReplicaNode | None = None,
                    quarantine: Mapping[str, QuarantineUsage] | None = None
                    ) -> dict[str, object]:
    """What `litefs status` prints: per database, position, replica position, lag, spool,
    and what its quarantine holds (`quarantine`: from Store.quarantine_usage)."""
    dbs: dict[str, object] = {}
    for name, db in sorted(store.dbs.items()):
        entry: dict[str, object] = {"txid": f"{db.txid:016x}", "checksum": f"{db.checksum:016x}",
                                    "deleted": db.deleted}
        kept = (quarantine or {}).get(name)
        if kept is not None:
            entry["quarantine"] = {"entries": kept.entries, "bytes": kept.bytes,
                                   "path": str(store.quarantine(name).directory)}
        up = replicator.uploaders.get(name) if replicator is not None else None
        if up is not None:
            st = up.status
            replica_doc: dict[str, object] = {
                "url": up.client.description,
                "txid": f"{st.remote_txid:016x}",
                "lag_seconds": round(st.lag_seconds, 3),
                "spool_bytes": st.spool_bytes,
                "spool_files": st.spool_files,
                "uploads": st.uploads,
                "put_requests": st.put_requests,
                "upload_budget": up.budget.to_json(),
                "writer": up.writer_id,
                "foreign_writer": up.foreign_writer,
                **st.retry.to_json(),  # last_error, whether it needs a fix, errors by kind
            }
            drill = replicator.drills.get(name) if replicator is not None else None
            if drill is not None:
                replica_doc["validation"] = drill.status.to_json()
            entry["replica"] = replica_doc
        dbs[name] = entry
    doc: dict[str, object] = {"pid": os.getpid(), "updated": time.time(), "databases": dbs}
    if node is not None:
        stats = node.stats
        doc["replica_of"] = {
            "primary": node.primary_url, "source": node.state.source,
            "lag_seconds": round(node.state.lag_seconds(), 3),
            "applied_files": stats.applied_files, "apply_batches": stats.apply_batches,
            "applied_pages": stats.applied_pages,
            "snapshots": stats.snapshots, "reconnects": stats.reconnects,
            "last_error": stats.last_error,
            "followers": {name: f.status.to_json() for name, f in sorted(node.followers.items())},
        }
    return doc


async def _write_status(store: Store, replicator: Replicator | None,
                        node: ReplicaNode | None = None,
                        document: Callable[[Mapping[str, QuarantineUsage]],
                                           dict[str, object]] | None = None) -> None:
    """Keep DATA/status.json current (atomically replaced) for `litefs status`."""
    while True:
        quarantine = await trio.to_thread.run_sync(store.quarantine_usage)
        doc = json.dumps(document(quarantine) if document is not None else
                         status_document(store, replicator, node, quarantine), indent=2)
        await trio.to_thread.run_sync(store.save_status, doc)
        await trio.sleep(STATUS_INTERVAL)


def http_secret(config: Config) -> str | None:
    """The replication API's shared secret: `http.secret`, else $LITEFS_SECRET."""
    return config.http.secret or os.environ.get("LITEFS_SECRET") or None


class Fences:
    """One reader fence per database of a replica, on files opened through the mount."""

    def __init__(self, mount_dir: Path) -> None:
        self.mount_dir = mount_dir
        self.fences: dict[str, ApplyFence] = {}

    def get(self, db: DB) -> ApplyFence:
        fence = self.fences.get(db.name)
        if fence is None:
            fence = ApplyFence(self.mount_dir / db.name, self.mount_dir / f"{db.name}-shm")
            self.fences[db.name] = fence
        return fence

    async def close(self) -> None:
        fences, self.fences = list(self.fences.values()), {}
        for fence in fences:
            await trio.to_thread.run_sync(fence.close)


async def _refuse_flush_early(mount_dir: Path) -> None:
    """Open and close a file of our own mount once: its FLUSH is answered ENOSYS, after
    which the kernel never sends FLUSH again. The fence keeps files open through the mount,
    and a close at exit (even after SIGKILL) must never wait for this process to answer."""
    with contextlib.suppress(OSError):
        await trio.to_thread.run_sync(lambda: open(mount_dir / ".lag", "rb").close())


def bucket_databases(config: Config) -> list[tuple[str, ReplicaClient]]:
    """(name, replica client) of every database a bucket-following replica can follow."""
    from .replica_clients import client_for

    out = []
    for name in replica_database_names(config):
        replica = config.replica_for(name)
        if replica is not None:
            out.append((name, client_for(replica)))
    return out


async def _start_cluster_proxy(nursery: trio.Nursery, config: Config, store: Store,
                               cluster: Cluster) -> None:
    from .proxy import start_proxy
    from .proxy.primary import Primary, PrimarySource
    from .proxy.settings import ProxySettings
    from .replication.role import Role

    class _ClusterPrimary(PrimarySource):
        """The proxy's PrimarySource for an etcd or s3 lease (proxy/primary.py's interface): this
        node once its mount is writable (role primary, not merely holding the lease), else the
        lease holder the elector last saw, else nobody (a failover: writes wait, then 503)."""

        def __init__(self, cluster: Cluster) -> None:
            self.cluster = cluster

        async def current(self) -> Primary | None:
            status = self.cluster.status
            if status.role is Role.PRIMARY:
                return Primary(local=True, advertise_url=status.advertise_url,
                               hostname=status.hostname)
            holder = status.holder
            if holder is None or holder.node_id == status.node_id:
                return None  # no primary, or this node between winning and serving writes
            return Primary(local=False, advertise_url=holder.advertise_url,
                           hostname=holder.hostname)

        async def wait_for_change(self, known: Primary | None) -> Primary | None:
            while True:  # the status is in memory: polling it costs nothing
                now = await self.current()
                if now != known:
                    return now
                await trio.sleep(0.05)

        async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                      ) -> None:
            task_status.started()

    settings = ProxySettings.from_config(config.proxy)
    if settings is None:
        log.info("proxy.target is not set: no HTTP proxy on this node")
        return

    def lag() -> float:
        return 0.0 if cluster.status.role is Role.PRIMARY else cluster.node.state.lag_seconds()

    proxy = await start_proxy(nursery, settings, store, primary=_ClusterPrimary(cluster),
                              lag=lag, secret=http_secret(config),
                              advertise_url=cluster.advertise_url, hostname=cluster.hostname,
                              stream_server=cluster.server)
    if proxy is not None:
        log.info("HTTP proxy on %s -> application at %s (database %s); writes follow the "
                 "lease holder", settings.addr, settings.target, settings.db)


async def _serve_cluster(ops: ReplicaOperations, opts: MountOptions,
                         sup: Supervision) -> None:
    """An etcd or s3 lease: the node switches between replica and primary (cluster.py)."""
    from .cluster import Cluster

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, sup)
        nursery.start_soon(_refuse_flush_early, opts.mount_dir)
        fences = Fences(opts.mount_dir)
        cluster = Cluster(opts, ops.store, ops, fences)
        sup.before_stop.append(cluster.before_stop)  # while the fences still work
        sup.before_stop.append(fences.close)
        await nursery.start(cluster.run)
        _serve_cluster_metrics(cluster, opts.config)
        if opts.config.proxy is not None:  # before the app starts: it may get requests at once
            await _start_cluster_proxy(nursery, opts.config, ops.store, cluster)

        def document(quarantine: Mapping[str, QuarantineUsage]) -> dict[str, object]:
            doc = status_document(ops.store, cluster.replicator, cluster.node, quarantine)
            doc["cluster"] = cluster.status_json()
            return doc

        nursery.start_soon(_write_status, ops.store, None, None, document)
        if opts.commands:
            nursery.start_soon(_supervise, opts.commands, opts.config.lease.candidate, sup,
                               opts.config.exit_on_error)
        await pyfuse3.main()
        log.debug("FUSE loop ended; stopping background tasks")
        cut = cluster.server.abort_connections()
        if cut:
            log.info("closed %d replication connection(s)", cut)
        nursery.cancel_scope.cancel()


class _TermUploaders(Mapping[str, Uploader]):
    """The current term's uploaders of a lease cluster (none while a replica), read live."""

    def __init__(self, current: Callable[[], Replicator | None]) -> None:
        self.current = current

    def _map(self) -> Mapping[str, Uploader]:
        replicator = self.current()
        return replicator.uploaders if replicator is not None else {}

    def __getitem__(self, name: str) -> Uploader:
        return self._map()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self._map()))

    def __len__(self) -> int:
        return len(self._map())


def _serve_cluster_metrics(cluster: Cluster, config: Config) -> None:
    """GET /metrics on every node of a lease cluster: its replication API serves it in both
    roles (the uploaders while primary, the replica node's stats while a replica)."""
    from .replication.metrics import METRICS_PATH, MetricsEndpoint, MountMetrics

    cluster.server.endpoints[METRICS_PATH] = MetricsEndpoint(
        MountMetrics(cluster.store, uploaders=_TermUploaders(lambda: cluster.replicator),
                     node=cluster.node, server=cluster.server),
        public=config.http.metrics_public)


async def _serve(ops: PrimaryOperations, opts: MountOptions, sup: Supervision) -> None:
    config = opts.config
    if config.lease.type != "static":
        assert isinstance(ops, ReplicaOperations)
        await _serve_cluster(ops, opts, sup)
        return
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, sup)
        replicator = Replicator(config, nursery, ops.store.data_dir)
        node: ReplicaNode | None = None
        stream_server: StreamServer | None = None
        if isinstance(ops, ReplicaOperations):
            nursery.start_soon(_refuse_flush_early, opts.mount_dir)
            fences = Fences(opts.mount_dir)
            sup.before_stop.append(fences.close)
            has_bucket = config.replica is not None or any(d.replica for d in config.dbs)
            node = ReplicaNode(
                ops.store, ops.state, primary_url=config.lease.advertise_url,
                secret=http_secret(config), fence_for=fences.get,
                cache=ReplicaKernelCache(ops),
                bucket_dbs=(lambda: bucket_databases(config)) if has_bucket else None,
                tls=http_tls.client_context(config.http.tls),
                allow_insecure=config.http.allow_insecure)
            nursery.start_soon(node.run, name="replication from the primary")

            def trim(db: DB) -> None:
                nursery.start_soon(trim_local_log, db, config.data.retention,
                                   name=f"local retention {db.name}")

            for db in list(ops.store.dbs.values()):
                trim(db)
            ops.store.add_db_listener(trim)
        else:
            server = StreamServer(ops.store, secret=http_secret(config),
                                  advertise_url=config.lease.advertise_url,
                                  tls=http_tls.server_context(config.http.tls))
            await nursery.start(server.serve, config.http.addr)
            stream_server = server
            from .proxy.run import RUN_PATH, make_run_endpoint

            # `litefs run --on-primary` from the replicas (needs the secret).
            server.routes["POST", RUN_PATH] = make_run_endpoint(http_secret(config))
            for db in list(ops.store.dbs.values()):
                replicator.attach(db)
            ops.store.add_db_listener(replicator.attach)
        _serve_metrics(nursery, config, ops.store, replicator, node, stream_server)
        nursery.start_soon(_write_status, ops.store, replicator, node)
        if config.proxy is not None:  # before the app starts: its first requests may come
            await _start_proxy(nursery, config, ops.store, node, stream_server)
        if opts.commands:
            nursery.start_soon(_supervise, opts.commands, config.lease.candidate, sup,
                               config.exit_on_error)
        await pyfuse3.main()
        log.debug("FUSE loop ended; stopping background tasks")
        with trio.CancelScope(shield=True):
            await replicator.drain()
        if stream_server is not None:
            cut = stream_server.abort_connections()
            if cut:
                log.info("closed %d replication connection(s)", cut)
        nursery.cancel_scope.cancel()


async def _start_proxy(nursery: trio.Nursery, config: Config, store: Store,
                       node: ReplicaNode | None, stream_server: StreamServer | None) -> None:
    """The HTTP proxy of `proxy:` (imported here: a mount without one does not load it)."""
    from .proxy import StaticPrimary, start_proxy
    from .proxy.settings import ProxySettings

    settings = ProxySettings.from_config(config.proxy)
    if settings is None:
        log.info("proxy.target is not set: no HTTP proxy on this node")
        return
    # Who the primary is, through proxy.PrimarySource: the static lease today; the election
    # work passes proxy.LeasePrimary(lease, node_id) (or its own PrimarySource) here instead.
    primary = StaticPrimary(is_primary=node is None, advertise_url=config.lease.advertise_url,
                            hostname=config.lease.hostname)
    proxy = await start_proxy(nursery, settings, store, primary=primary,
                              lag=node.state.lag_seconds if node is not None else lambda: 0.0,
                              secret=http_secret(config),
                              advertise_url=config.lease.advertise_url,
                              hostname=config.lease.hostname, stream_server=stream_server)
    if proxy is not None:
        log.info("HTTP proxy on %s -> application at %s (database %s)", settings.addr,
                 settings.target, settings.db)


def _serve_metrics(nursery: trio.Nursery, config: Config, store: Store, replicator: Replicator,
                   node: ReplicaNode | None, server: StreamServer | None) -> None:
    """GET /metrics: on the primary's replication API, or on a replica's own listener."""
    from .replication.metrics import (
        METRICS_PATH,
        MetricsEndpoint,
        MountMetrics,
        serve_metrics_only,
    )

    endpoint = MetricsEndpoint(
        MountMetrics(store, uploaders=replicator.uploaders, node=node, server=server),
        public=config.http.metrics_public)
    if server is not None:
        server.endpoints[METRICS_PATH] = endpoint
    else:
        nursery.start_soon(serve_metrics_only, endpoint, config.http.addr, http_secret(config),
                           name="metrics listener")


def run_mount(opts: MountOptions) -> int:
    """Restore and recover every database, mount, serve until a signal (or until the
    supervised command exits), unmount, save state. Returns the exit status to exit with:
    the supervised command's (128+N if signal N killed it), a failed start-up command's, or
    0."""
    opts = replace(opts, mount_dir=resolve_mount_dir(opts.mount_dir),
                   data_dir=opts.data_dir.absolute())
    http_tls.validate(opts.config.http.tls)  # a bad certificate path fails here, named
    opts.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(opts.data_dir, quarantine_limit=opts.config.data.quarantine_limit)
    store.lock()
    cluster = opts.config.lease.type != "static"
    replica = not opts.config.lease.candidate
    try:
        if cluster:
            log.info("lease %s: starting as a replica; the lease decides who is primary",
                     opts.config.lease.type)
            if not replica:
                restore_missing_databases(opts.config, store)
            # A node that was primary last is recovered as a primary would be (committed
            # WAL frames are kept), then shaped as a replica keeps its files; a node that
            # was a replica is recovered as one (an apply cut short is redone). The mount
            # switches roles in place from there.
            store.open(replica=not store.was_primary)
            from .store.role_switch import to_replica_shape

            for db in list(store.dbs.values()):
                to_replica_shape(db, None, None)
            store.mark_primary(None)  # a replica from here on, until a lease says otherwise
        elif replica:
            log.info("read replica of %s", opts.config.lease.advertise_url
                     or "the replica bucket (no lease.advertise-url)")
            store.open(replica=True)
        else:
            restore_missing_databases(opts.config, store)
            store.open(replica=False)
    except BaseException:
        store.close()
        raise
    prepare_mount_dir(opts.mount_dir)
    ops = (ReplicaOperations(store, ReplicaState()) if replica or cluster
           else PrimaryOperations(store))
    fuse_options = set(pyfuse3.default_options)
    fuse_options.add("fsname=litefs")
    if opts.allow_other:
        fuse_options.add("allow_other")
    if opts.debug:
        fuse_options.add("debug")
    try:
        pyfuse3.init(ops, str(opts.mount_dir), fuse_options)
    except RuntimeError as exc:
        store.close()
        raise QuietError(f"cannot mount {opts.mount_dir}: {exc} (is /dev/fuse available and "
                         "fuse3 installed?)", ExitCode.IO) from None
    log.info("mounted %s (data in %s)", opts.mount_dir, opts.data_dir)
    # The commit path allocates many short-lived objects; with the default thresholds the
    # cyclic collector ran often enough to cost ~20% of a small commit. Objects that live for
    # the whole mount are moved out of its sight, and it runs less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    sup = Supervision()
    try:
        trio.run(_serve, ops, opts, sup)
    finally:
        with contextlib.suppress(Exception):
            pyfuse3.close(unmount=is_mounted(opts.mount_dir))
        store.close()
        log.info("unmounted %s", opts.mount_dir)
    if sup.process is not None and sup.process.returncode is None:
        sup.process.kill()  # the mount is going away: the application cannot continue
    return sup.exit_code or 0  # already 128+N for an app killed by signal N (exit_status)
