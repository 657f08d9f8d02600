"""One mount of a cluster with an etcd or s3 lease: the node switches between replica and
primary in place (docs/leases.md).

Every node runs the same pieces for the whole mount: the HTTP API (StreamServer: the stream
while this node is the primary, `info` always, acknowledgements and handoff), the replica
node (streaming from the lease's holder while this node is a replica), and the elector
(replication/elector.py) that decides when to promote and demote. This module is what
promoting and demoting do:

- promote: stop following, catch up from the bucket once more, start this epoch's history,
  open the commit gate on the lease keeper, start the uploaders (which check the lease before
  every PUT), let the stream serve, and switch the FUSE operations to primary. Open files
  stay open; readers are not disturbed.
- demote: close the commit gate (already closed when the lease was lost), stop uploads and
  streams, let transactions under way end, switch the FUSE operations to replica (writes:
  EROFS), fold the WAL into the database file under the reader fence, and follow the new
  holder. The first hello from it quarantines this node's transactions it does not have.

Commit modes (`replication.commit`): `replica` and `bucket` hold the request that completes
a commit until a candidate replica, or the bucket, acknowledges it; one that is not
acknowledged within `commit-timeout` fails with EIO and the node steps down.
"""

from __future__ import annotations

import errno
import importlib
import json
import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import trio

from .fuse.replica_ops import ReplicaKernelCache, ReplicaOperations
from .ltx import HEADER_SIZE, Header
from .replication import http_tls
from .replication.asgi import Receive, Scope, Send
from .replication.bucket_follower import BucketFollower
from .replication.commit_acks import CommitAcks
from .replication.elector import Elector
from .replication.lease import (
    Candidate,
    Holder,
    LeaseError,
    LeaseGrant,
    LeaseKeeper,
    LeaseLoss,
    LeaseSettings,
    LossReason,
    Position,
    lease_clock,
    new_node_id,
    open_lease,
)
from .replication.replica_node import ReplicaNode
from .replication.role import (
    ClosedGate,
    LeaseGate,
    NodeStatus,
    PrimaryInfo,
    PrimaryRef,
    Role,
)
from .replication.stream_protocol import format_positions, parse_positions
from .replication.stream_server import StreamServer
from .storage import aio
from .storage.base import LtxFileInfo, ReplicaClient
from .storage.errors import StorageError
from .store.apply_fence import FenceTimeout
from .store.db import DB
from .store.fencing import CommitGate
from .store.quarantine import Quarantined
from .store.role_switch import to_replica_shape
from .store.store import Store
from .types import FileKind, Pos

if TYPE_CHECKING:
    from .app import Fences, MountOptions, Replicator

log = logging.getLogger("litefs.cluster")

ACK_PATH = "/litefs/v1/ack"
HANDOFF_PATH = "/litefs/v1/handoff"
TAKEOVER_PATH = "/litefs/v1/takeover"
PEER_TIMEOUT = 0.5  # seconds a peer has to answer an info request during an election
HANDOFF_TIMEOUT = 5.0  # seconds a handoff waits for its target to catch up
DEMOTE_DRAIN = 1.0  # seconds transactions under way get to end when the lease is lost
SHAPE_ATTEMPTS = 20  # fence timeouts tolerated while folding the WAL at demotion
TRIM_INTERVAL = 5.0


class PromotionError(Exception):
    """This node took the lease but must not become primary (the message says why)."""


class HandoffError(Exception):
    """A handoff could not be done; the message says why (the node stays primary)."""


@dataclass(frozen=True, slots=True)
class Peer:
    node_id: str
    hostname: str
    advertise_url: str
    candidate: bool


def peer_from(identity: object) -> Peer | None:
    if not isinstance(identity, dict):
        return None
    url, node_id = identity.get("advertise_url"), identity.get("node_id")
    if not isinstance(url, str) or not isinstance(node_id, str) or not url:
        return None
    return Peer(node_id, str(identity.get("hostname") or url), url.rstrip("/"),
                bool(identity.get("candidate")))


def position_key(epoch: int, txid: int) -> tuple[int, int]:
    """How two copies of one database compare: the last epoch of its history first (records
    of an older term past a newer term's start are not in the newest history), then the TXID
    (Raft's rule: last log term, then index)."""
    return (epoch, txid)


PEERS_FILE = "peers.json"
PEER_REFRESH = 2.0  # seconds between refreshes of the list of peers
UNREACHABLE_TTLS = 2  # TTLs of free lease an unreachable candidate peer is waited for


def _load_peers(path: Any) -> list[dict[str, Any]]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [p for p in raw.get("peers", []) if isinstance(p, dict)] \
        if isinstance(raw, dict) else []


class Cluster:
    def __init__(self, opts: MountOptions, store: Store, ops: ReplicaOperations,
                 fences: Fences) -> None:
        cfg = opts.config
        settings = cfg.lease.settings
        assert isinstance(settings, LeaseSettings) and settings.type != "static"
        self.config = cfg
        self.settings = settings
        self.store = store
        self.ops = ops
        self.fences = fences
        self.node_id = new_node_id()
        self.hostname = settings.hostname or socket.gethostname()
        self.advertise_url = settings.advertise_url
        from .app import http_secret

        self.secret = http_secret(cfg)
        self.lease = open_lease(settings, bucket=self._lease_bucket())
        self.status = NodeStatus(self.node_id, self.hostname, self.advertise_url,
                                 settings.candidate, self.lease.description,
                                 commit_mode=cfg.replication.commit)
        self.primary_info = PrimaryInfo()
        self.acks = CommitAcks(cfg.replication.commit, cfg.replication.commit_timeout)
        self.cache = ReplicaKernelCache(ops)
        self._tls_client = http_tls.client_context(cfg.http.tls)
        self.server = StreamServer(store, secret=self.secret, advertise_url=self.advertise_url,
                                   tls=http_tls.server_context(cfg.http.tls))
        self.server.serving = self._serving_refusal
        self.server.epoch = lambda: self.status.epoch
        self.server.hello_extra = self._hello_extra
        self.server.info_extra = self._info_extra
        self.server.routes = {("POST", ACK_PATH): self._ack_route,
                              ("POST", HANDOFF_PATH): self._handoff_route,
                              ("POST", TAKEOVER_PATH): self._takeover_route}
        self.node = ReplicaNode(store, ops.state, primary_url=None, secret=self.secret,
                                fence_for=fences.get, cache=self.cache, hooks=self,
                                tls=self._tls_client,
                                allow_insecure=cfg.http.allow_insecure)
        self.elector = Elector(self.lease, settings, self.status, self)
        self._gate: CommitGate = ClosedGate(0, "this node is a replica")
        self._lease_gate: LeaseGate | None = None
        self._replicator: Replicator | None = None
        self._clients: dict[str, ReplicaClient] = {}
        self._nursery: trio.Nursery | None = None
        self._replica_scope: trio.CancelScope | None = None
        self._replica_done = trio.Event()
        self._replica_done.set()
        self._step_down = trio.Event()
        self._step_down_why = ""
        self._http: httpx.AsyncClient | None = None
        self._acks_wanted = False
        self._ack_positions: dict[str, Pos] = {}
        self._ack_wake = trio.Event()
        self._primary_epoch = 0
        self._lease_free_since: float | None = None
        self._last_holder_url: str | None = None  # the lease's last holder seen
        # Peers outlive a restart (DATA/peers.json): a node that comes back must be able to
        # ask the others whether they are further on before it campaigns, even if the
        # primary it would have learned them from is gone.
        self._peers_path = store.data_dir / PEERS_FILE
        for raw in _load_peers(self._peers_path):
            peer = peer_from(raw)
            if peer is not None and peer.advertise_url != (self.advertise_url or "").rstrip("/"):
                self.status.peers.setdefault(peer.node_id, raw)
        if self.acks.waiting:
            ops.after_commit = self._after_commit
        for db in store.dbs.values():
            db.commit_gate = self._gate
        store.add_db_listener(self._on_new_db)

    # ---- set-up ----------------------------------------------------------------------

    def _lease_bucket(self) -> ReplicaClient | None:
        if self.settings.type != "s3" or self.config.replica is None:
            return None
        from .replica_clients import client_for

        assert self.settings.s3 is not None
        return client_for(self.config.replica, request_timeout=self.settings.s3.request_timeout)

    def _client(self, name: str) -> ReplicaClient | None:
        client = self._clients.get(name)
        if client is None:
            replica = self.config.replica_for(name)
            if replica is None:
                return None
            from .replica_clients import client_for

            client = self._clients[name] = client_for(replica)
        return client

    def _on_new_db(self, db: DB) -> None:
        db.commit_gate = self._gate
        if self.status.role is Role.PRIMARY and self.status.epoch:
            db.epochs.begin(self.status.epoch, 1)
        if self._nursery is not None:
            self._nursery.start_soon(self._attach_when_ready, db)

    async def _attach_when_ready(self, db: DB) -> None:
        """A new database: make its bucket client in a thread (never on the event loop: the
        lease keeper renews there), then start its uploader if this node is primary."""
        await self._warm_client(db.name)
        replicator = self._replicator
        if replicator is not None and self.status.role is Role.PRIMARY:
            replicator.attach(db)

    def _set_gate(self, gate: CommitGate) -> None:
        self._gate = gate
        for db in self.store.dbs.values():
            db.commit_gate = gate

    def identity(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "hostname": self.hostname,
                "advertise_url": self.advertise_url, "candidate": self.settings.candidate}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with httpx.AsyncClient(timeout=PEER_TIMEOUT, verify=self._tls_client) as http, \
                trio.open_nursery() as nursery:
            self._http = http
            self._nursery = nursery
            await nursery.start(self.server.serve, self.config.http.addr)
            nursery.start_soon(self._warm_up, name="bucket clients")
            self._start_replica()
            nursery.start_soon(self.elector.run, name="lease elector")
            nursery.start_soon(self._ack_sender, name="acknowledgements")
            nursery.start_soon(self._trim_while_replica, name="local retention")
            nursery.start_soon(self._refresh_peers, name="peers")
            task_status.started()

    async def _warm_client(self, name: str) -> None:
        """Make a database's bucket client (boto3 takes a second to set one up) and open its
        connection now, not in the middle of a failover."""
        client = await trio.to_thread.run_sync(self._client, name)
        if client is not None:
            try:
                await aio.run(client.ltx_files_after, 0, 2**62)
            except (StorageError, OSError) as exc:
                log.warning("%s: cannot list %s: %s", name, client.description, exc)

    async def _warm_up(self) -> None:
        """Bucket clients, and the lease's probe of conditional writes, before any failover."""
        if self.config.replica is not None or any(d.replica for d in self.config.dbs):
            # boto3's import takes a second: here, in a thread, rather than in the middle of
            # a promotion on the event loop.
            await trio.to_thread.run_sync(importlib.import_module, "litefs_py.storage.s3")
        for name in list(self.store.dbs):
            await self._warm_client(name)
        check = getattr(self.lease, "check_conditional_writes", None)
        if check is not None and self.settings.candidate:
            try:
                await check()
            except LeaseError as exc:
                log.error("%s", exc)

    # ---- the replica side ------------------------------------------------------------

    def _start_replica(self) -> None:
        assert self._nursery is not None
        if not self._replica_done.is_set():
            return
        self._replica_done = trio.Event()
        done = self._replica_done

        async def follow() -> None:
            try:
                with trio.CancelScope() as scope:
                    self._replica_scope = scope
                    await self.node.run()
            finally:
                done.set()

        self._nursery.start_soon(follow, name="replication from the primary")

    async def _stop_replica(self) -> None:
        if self._replica_scope is not None:
            self._replica_scope.cancel()
        await self._replica_done.wait()
        self._replica_scope = None

    def follow(self, holder: Holder | None) -> None:
        if holder is None:
            if self._lease_free_since is None:
                self._lease_free_since = lease_clock()
            if self.status.role is not Role.PRIMARY:
                self.primary_info.set(None)
            return  # keep streaming from the last primary's URL until a new one is known
        self._lease_free_since = None
        self._last_holder_url = holder.advertise_url.rstrip("/")
        is_self = holder.node_id == self.node_id
        self.primary_info.set(PrimaryRef(holder.hostname, holder.advertise_url, holder.epoch,
                                         holder.node_id, is_self))
        if not is_self:
            self.node.follow(holder.advertise_url, holder.hostname)
            if holder.node_id not in self.status.peers and holder.advertise_url:
                self.status.peers[holder.node_id] = {
                    "node_id": holder.node_id, "hostname": holder.hostname,
                    "advertise_url": holder.advertise_url, "candidate": True}
                self._save_peers()

    def known_epoch(self) -> int:
        return self.status.known_epoch

    def saw_primary(self, hello: dict[str, Any]) -> None:
        epoch = hello.get("epoch")
        if isinstance(epoch, int):
            self._primary_epoch = epoch
            self.status.saw_epoch(epoch)
        self._acks_wanted = bool(hello.get("acks"))
        peers = hello.get("peers")
        if isinstance(peers, list):
            for raw in peers:
                peer = peer_from(raw)
                if peer is not None and peer.node_id != self.node_id:
                    self.status.peers[peer.node_id] = raw
        me = peer_from(hello.get("identity"))
        if me is not None:
            self.status.peers[me.node_id] = hello["identity"]
        self._save_peers()
        target = hello.get("handoff_to")
        if isinstance(target, str) and target != self.node_id:
            self.elector.suspend(HANDOFF_TIMEOUT)

    async def _refresh_peers(self) -> None:
        """Keep the list of peers current: a replica asks the primary whom it streams to
        (the hello only says who was connected then), the primary takes its subscribers.
        A candidate must know every other candidate to compare positions before it may
        campaign, even after a restart (DATA/peers.json)."""
        while True:
            await trio.sleep(PEER_REFRESH)
            if self.status.role is Role.PRIMARY:
                found: list[Any] = list(self.server.identities.values())
            else:
                holder = self.status.holder
                if holder is None or holder.node_id == self.node_id:
                    continue
                doc = await self._peer_info(Peer(holder.node_id, holder.hostname,
                                                 holder.advertise_url, True))
                found = doc.get("peers", []) if doc is not None else []
            for raw in found if isinstance(found, list) else []:
                peer = peer_from(raw)
                if peer is not None and peer.node_id != self.node_id:
                    self.status.peers[peer.node_id] = raw
            self._save_peers()

    def _save_peers(self) -> None:
        """Keep DATA/peers.json current: one entry per advertise URL, the newest identity
        seen there (small, written only when it changes)."""
        by_url: dict[str, dict[str, Any]] = {}
        for raw in list(self.status.peers.values()):
            peer = peer_from(raw)
            if peer is not None and peer.node_id != self.node_id:
                by_url[peer.advertise_url] = raw
        text = json.dumps({"peers": [by_url[u] for u in sorted(by_url)]}, sort_keys=True)
        if text == getattr(self, "_peers_saved", None):
            return
        self._peers_saved = text
        tmp = self._peers_path.with_name(PEERS_FILE + ".tmp")
        try:
            tmp.write_text(text)
            tmp.replace(self._peers_path)
        except OSError as exc:
            log.warning("cannot save the known peers to %s: %s", self._peers_path, exc)

    def applied(self, name: str, pos: Pos) -> None:
        if self._acks_wanted and self.settings.candidate:
            self._ack_positions[name] = pos
            self._ack_wake.set()

    def quarantined(self, name: str, fork: int, moved: Quarantined | None) -> None:
        if moved is None:
            log.warning("%s: this node's history diverges from the primary's at TXID %016x; "
                        "no local record to quarantine (asking for a snapshot)", name, fork)
            return
        self.status.quarantined_transactions += moved.transactions
        self.status.quarantined_files += len(moved.files)
        log.warning("%s: quarantined %d transaction(s), TXIDs %016x-%016x of epoch(s) %s, "
                    "that the primary of epoch %d does not have: moved to %s; the database "
                    "is replaced by the primary's snapshot", name, moved.transactions,
                    moved.first_txid, moved.last_txid,
                    ", ".join(map(str, moved.epochs)), self._primary_epoch,
                    moved.files[0].parent)

    async def _ack_sender(self) -> None:
        """Tell the primary how far this candidate replica got (replication.commit:
        replica): one request at a time, always with the newest positions."""
        while True:
            await self._ack_wake.wait()
            self._ack_wake = trio.Event()
            url = self.node.primary_url
            if url is None or self._http is None or self.status.role is not Role.REPLICA:
                continue
            body = {"node_id": self.node_id, "epoch": self._primary_epoch,
                    "candidate": self.settings.candidate,
                    "dbs": format_positions(dict(self._ack_positions))}
            try:
                await self._http.post(url + ACK_PATH, json=body, headers=self._auth())
            except httpx.HTTPError as exc:
                log.debug("acknowledgement to %s failed: %s", url, exc)

    async def _trim_while_replica(self) -> None:
        while True:
            await trio.sleep(TRIM_INTERVAL)
            if self.status.role is Role.REPLICA:
                for db in list(self.store.dbs.values()):
                    db.ltx.trim(self.config.data.retention)

    # ---- who may win -----------------------------------------------------------------

    def _keys(self) -> dict[str, tuple[int, int]]:
        return {name: position_key(db.epochs.last_epoch, db.txid)
                for name, db in self.store.dbs.items() if db.txid}

    def candidate(self) -> Candidate:
        return Candidate(
            hostname=self.hostname, advertise_url=self.advertise_url or "",
            node_id=self.node_id,
            positions={n: Position(db.txid, db.checksum) for n, db in self.store.dbs.items()
                       if db.txid},
            known_epoch=self.status.known_epoch)

    async def eligibility(self) -> str | None:
        # The bucket first: what it holds after this node's position (a newer term's
        # history included) is applied before positions are compared, so a peer whose
        # extra transactions are of an older, abandoned term does not look further on.
        why = await self._catch_up_from_bucket()
        if why is not None:
            return why
        stale = self._stale_defer()
        if stale is not None:
            return stale
        started = lease_clock()
        why = await self._peer_ahead()
        log.debug("peers checked in %.3fs: %s", lease_clock() - started, why)
        return why

    def _stale_defer(self) -> str | None:
        """A node that has seen a newer term than any its copies hold (it was down or cut
        off while another primary served) may be missing what that term wrote, and its
        peers may not all be known or reachable: it lets the lease stay free for one more
        TTL so that a caught-up candidate wins first. If none does, nobody newer is alive
        and this node may take it (what it lacks then reached nobody it can find)."""
        known = self.status.known_epoch
        newest = max((db.epochs.last_epoch for db in self.store.dbs.values() if db.txid),
                     default=known)
        if newest >= known or self._lease_free_since is None:
            return None
        ttl = self._ttl()
        waited = lease_clock() - self._lease_free_since
        if waited >= ttl:
            return None
        return (f"this node's copies end in epoch {newest} but it has seen epoch {known}: "
                f"letting a caught-up candidate win first ({ttl - waited:.1f}s more)")

    def _ttl(self) -> float:
        lease = self.settings.etcd or self.settings.s3
        return lease.ttl if lease is not None else 10.0

    async def _peer_info(self, peer: Peer) -> dict[str, Any] | None:
        if self._http is None:
            return None
        try:
            resp = await self._http.get(peer.advertise_url + "/litefs/v1/info",
                                        headers=self._auth(), timeout=PEER_TIMEOUT)
            doc = resp.json()
        except (httpx.HTTPError, ValueError):
            return None
        return doc if resp.status_code == 200 and isinstance(doc, dict) else None

    def _peers(self, *, candidates_only: bool) -> list[Peer]:
        """Known peers, one per advertise URL (the identity seen last there)."""
        mine = (self.advertise_url or "").rstrip("/")
        by_url: dict[str, Peer] = {}
        for raw in list(self.status.peers.values()):
            peer = peer_from(raw)
            if peer is not None and peer.node_id != self.node_id and \
                    peer.advertise_url != mine and (peer.candidate or not candidates_only):
                by_url[peer.advertise_url] = peer
        return list(by_url.values())

    async def _peer_ahead(self) -> str | None:
        """Why this node is not the most caught-up reachable candidate, or None."""
        peers = self._peers(candidates_only=True)
        if not peers:
            return None
        answers: dict[str, dict[str, Any] | None] = {}

        async def ask(peer: Peer) -> None:
            answers[peer.node_id] = await self._peer_info(peer)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(ask, peer)
        mine = self._keys()
        unreachable: list[Peer] = []
        for peer in peers:
            doc = answers.get(peer.node_id)
            if doc is None or not doc.get("node_id") or doc.get("node_id") == self.node_id:
                # Unreachable (or this very node): not a live copy. A peer restarted since
                # (another node ID at the same URL) is still a copy to compare with. The
                # last holder is expected to be gone (that is why the lease is free).
                if doc is None and peer.advertise_url != self._last_holder_url:
                    unreachable.append(peer)
                continue
            try:
                theirs = parse_positions(doc.get("dbs", {}))
            except ValueError:
                continue
            epochs = doc.get("db_epochs") or {}
            for name, pos in theirs.items():
                key = position_key(int(epochs.get(name, 0) or 0), pos.txid)
                if key > mine.get(name, (0, 0)):
                    have = mine.get(name, (0, 0))
                    return (f"{peer.hostname} is further on {name} (epoch {key[0]} TXID "
                            f"{key[1]:016x}; this node: epoch {have[0]} TXID {have[1]:016x})")
        if unreachable and self._lease_free_since is not None:
            # A candidate that does not answer (paused, partitioned, restarting) may hold
            # what the last primary acknowledged: give it UNREACHABLE_TTLS TTLs of free
            # lease to come back before campaigning without it.
            wait = UNREACHABLE_TTLS * self._ttl()
            waited = lease_clock() - self._lease_free_since
            if waited < wait:
                names = ", ".join(sorted(p.hostname for p in unreachable))
                return (f"cannot reach {names} to compare positions; campaigning without "
                        f"it in {wait - waited:.1f}s")
        return None

    async def _header(self, client: ReplicaClient, info: LtxFileInfo) -> Header:
        data = await aio.run(client.read_ltx, info, 0, HEADER_SIZE)
        return Header.decode(data[:HEADER_SIZE])

    async def _catch_up_from_bucket(self) -> str | None:
        """Apply what the bucket has after this node's position when it continues this
        node's history; why not, when it does not (or cannot be read)."""
        for name, db in list(self.store.dbs.items()):
            client = self._client(name)
            if client is None or db.deleted:
                continue
            try:
                why = await self._catch_up_one(name, db, client)
            except (StorageError, OSError, ValueError) as exc:
                return f"cannot read the bucket for {name}: {exc}"
            if why is not None:
                return why
        return None

    async def _catch_up_one(self, name: str, db: DB, client: ReplicaClient) -> str | None:
        started = lease_clock()
        files = await aio.run(client.ltx_files_after, 0, db.txid)
        log.debug("%s: listed the bucket after TXID %016x in %.3fs: %d file(s)", name, db.txid,
                  lease_clock() - started, len(files))
        if not files:
            return None
        mine = db.epochs.last_epoch
        first = await self._header(client, files[0])
        if first.node_id > mine and db.txid:
            # A newer term's file comes right after this node's position: fine only if the
            # file that ends at this position is of this node's history (epoch <= mine).
            before = [i for i in await aio.run(client.ltx_files, 0)
                      if i.min_txid <= db.txid <= i.max_txid]
            prev = await self._header(client, before[-1]) if before else None
            if prev is None or prev.node_id > mine:
                return (f"the bucket holds {name} of epoch {first.node_id} from before TXID "
                        f"{db.txid + 1:016x}, newer than this node's epoch {mine}: waiting "
                        "for that history's primary to reconcile with")
        log.info("%s: catching up from %s before campaigning: TXID %016x -> %016x", name,
                 client.description, db.txid, files[-1].max_txid)
        started = lease_clock()

        async def apply(data: bytes) -> None:
            await self.node.apply(name, data)

        follower = BucketFollower(name, client, apply, lambda: db.txid)
        await follower.step()
        log.debug("%s: caught up in %.3fs", name, lease_clock() - started)
        return None

    async def request_promotion(self, holder: Holder) -> str | None:
        if self._http is None or holder.node_id == self.node_id:
            return "no primary to ask"
        doc = await self._peer_info(Peer(holder.node_id, holder.hostname,
                                         holder.advertise_url, True))
        if doc is None:
            return f"{holder.hostname} does not answer"
        theirs = parse_positions(doc.get("dbs", {}))
        mine = {n: db.pos for n, db in self.store.dbs.items() if db.txid}
        behind = [n for n, p in theirs.items() if mine.get(n) != p]
        if behind:
            return f"not caught up with {holder.hostname} yet ({', '.join(sorted(behind))})"
        try:
            resp = await self._http.post(holder.advertise_url + HANDOFF_PATH,
                                         json={"to": self.node_id}, headers=self._auth(),
                                         timeout=HANDOFF_TIMEOUT + 5)
        except httpx.HTTPError as exc:
            return f"asking {holder.hostname} for the lease failed: {exc}"
        if resp.status_code != 200:
            return f"{holder.hostname} refused to hand the lease over: {resp.text[:200]}"
        log.info("promote: %s handed the lease to this node", holder.hostname)
        return None

    # ---- the primary side ------------------------------------------------------------

    async def promote(self, grant: LeaseGrant, keeper: LeaseKeeper) -> None:
        free_since = self._lease_free_since
        self.status.role = Role.PROMOTING
        self.status.saw_epoch(grant.epoch)
        await self._stop_replica()
        why = await self._catch_up_from_bucket()
        if why is not None:
            raise PromotionError(why)
        for name in list(self.store.dbs):  # the uploaders' clients, off the event loop
            await trio.to_thread.run_sync(self._client, name)
        epoch = grant.epoch
        behind = {n: t for n, t in self.node.state.primary_txids.items()
                  if n in self.store.dbs and self.store.dbs[n].txid < t}
        for name, txid in behind.items():
            log.warning("%s: the previous primary was at TXID %016x, this node is at %016x: "
                        "what it had beyond reached no live candidate nor the bucket (it is "
                        "quarantined there when it returns)", name, txid,
                        self.store.dbs[name].txid)
        self.node.state.primary_txids = {}
        for db in list(self.store.dbs.values()):
            await trio.to_thread.run_sync(db.epochs.begin, epoch, db.txid + 1)
        await trio.to_thread.run_sync(self.store.mark_primary, epoch)
        gate = LeaseGate(keeper)
        self._lease_gate = gate
        self.acks.reset()
        self._step_down = trio.Event()
        self._set_gate(gate)
        self.ops.primary_mode = True
        self.status.promoted(epoch)
        self.primary_info.set(PrimaryRef(self.hostname, self.advertise_url or "", epoch,
                                         self.node_id, True))
        # Forget the primary this node followed before its term: once it demotes, `.primary`
        # must name the next holder (or be absent while none is known), never that one.
        self.node.follow(None)
        waited = "" if free_since is None else \
            f", {lease_clock() - free_since:.2f}s after the lease was seen free"
        log.info("primary of epoch %d: accepting writes%s", epoch, waited)

    def _serving_refusal(self) -> str | None:
        if self.status.role is Role.PRIMARY:
            return None
        holder = self.status.holder
        where = f"; the primary is {holder.hostname} ({holder.advertise_url})" \
            if holder is not None and holder.node_id != self.node_id else ""
        return f"this node is not the primary (it is {self.status.role.value}){where}"

    def _uploader_options(self, db: DB) -> dict[str, Any]:
        gate = self._lease_gate
        epoch = self.status.epoch

        def may_upload() -> str | None:
            if gate is None or self._lease_gate is not gate:
                return "this node is not the primary"
            return None if gate.can_commit() else gate.refusal()

        def uploaded(lo: int, hi: int) -> None:
            self.acks.acknowledged(db.name, hi)

        options: dict[str, Any] = {"may_upload": may_upload, "epoch": lambda: epoch,
                                   "on_upload": uploaded}
        if self.acks.mode == "bucket":
            options["batch_window"] = 0.0  # a waiting commit is not batched with later ones
        return options

    @property
    def replicator(self) -> Replicator | None:
        """The uploaders of the current term (None while this node is a replica)."""
        return self._replicator

    async def serve_term(self, keeper: LeaseKeeper) -> LeaseLoss:
        from .app import Replicator

        async with trio.open_nursery() as term:
            replicator = Replicator(self.config, term, self.store.data_dir,
                                    options=self._uploader_options,
                                    clients=self._clients.get)
            self._replicator = replicator
            for db in list(self.store.dbs.values()):
                replicator.attach(db)

            async def lost() -> None:
                await keeper.wait_lost()
                term.cancel_scope.cancel()

            async def step_down() -> None:
                await self._step_down.wait()
                log.warning("stepping down from epoch %d: %s", keeper.epoch,
                            self._step_down_why)
                try:
                    await keeper.release()
                except LeaseError as exc:
                    log.warning("could not release the lease (it expires instead): %s", exc)
                term.cancel_scope.cancel()

            term.start_soon(lost)
            term.start_soon(step_down)
        for up in replicator.uploaders.values():
            up.stop()
        self._replicator = None
        loss = keeper.loss
        assert loss is not None
        return loss

    async def demote(self, loss: LeaseLoss) -> None:
        self.status.role = Role.DEMOTING
        why = f"the lease of epoch {loss.epoch} ended ({loss.reason.value}: {loss.detail})"
        self._set_gate(ClosedGate(loss.epoch, why))
        self._lease_gate = None
        self._replicator = None
        cut = self.server.end_streams()
        if cut:
            log.info("ended %d replication stream(s)", cut)
        await self._transactions_ended(DEMOTE_DRAIN)
        self.ops.primary_mode = False
        # Writes held by a handoff are refused now (EROFS): their transactions end and
        # release SQLite's locks, which the fold below needs.
        self.ops.resume_writes()
        folded = [await self._fold(db) for db in list(self.store.dbs.values())]
        if all(folded):  # else the WAL still holds this term's frames: recover as a primary
            await trio.to_thread.run_sync(self.store.mark_primary, None)
        self.status.demoted(why)
        if loss.reason is not LossReason.STOPPED:
            log.info("now a replica: %s", why)
        self.primary_info.set(None)
        if self.status.holder is not None and self.status.holder.node_id != self.node_id:
            self.node.follow(self.status.holder.advertise_url, self.status.holder.hostname)
        self._start_replica()

    async def _transactions_ended(self, within: float) -> bool:
        """Wait (polling: the store has no event for it) until no database has a
        transaction under way, at most `within` seconds."""
        deadline = trio.current_time() + within
        for _ in range(100_000):
            if not any(db.in_transaction for db in self.store.dbs.values()):
                return True
            if trio.current_time() >= deadline:
                break
            await trio.sleep(0.005)
        return False

    async def _fold(self, db: DB) -> bool:
        """Shape `db` as a replica keeps it; False if readers kept it from being done."""
        fence = self.fences.get(db) if db.exists(FileKind.DATABASE) else None
        for attempt in range(SHAPE_ATTEMPTS):
            try:
                await trio.to_thread.run_sync(to_replica_shape, db, fence, self.cache)
                return True
            except FenceTimeout as exc:
                if attempt == 0:
                    log.warning("%s; retrying", exc)
                await trio.sleep(0.1)
        log.error("%s: readers kept the database locked; the next snapshot from the primary "
                  "replaces it", db.name)
        self.node.needs_snapshot(db.name)
        return False

    async def _after_commit(self, db: DB) -> None:
        """replication.commit replica/bucket: the FUSE request that completed the commit
        returns once it is acknowledged; else it fails and this node steps down."""
        if self.status.role is not Role.PRIMARY:
            return
        txid = db.txid
        if await self.acks.wait(db.name, txid):
            return
        who = "a candidate replica" if self.acks.mode == "replica" else "the bucket"
        why = (f"{db.name}: TXID {txid:016x} was not acknowledged by {who} within "
               f"{self.acks.timeout:g}s")
        self.status.commit_ack_timeouts += 1
        log.error("%s; the commit fails (EIO), commits are refused and this node steps down: "
                  "the next primary's history decides the transaction (quarantined here if "
                  "it is not in it)", why)
        if self._lease_gate is not None:
            self._lease_gate.close(why)
        self._step_down_why = why
        self._step_down.set()
        raise OSError(errno.EIO, why)

    # ---- the HTTP API ----------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.secret}"} if self.secret else {}

    def _hello_extra(self) -> dict[str, Any]:
        return {
            "identity": self.identity(),
            "epochs": {name: [list(e) for e in db.epochs.entries]
                       for name, db in self.store.dbs.items() if db.txid},
            "peers": list(self.server.identities.values()),
            "acks": self.acks.mode == "replica",
            "handoff_to": self._handoff_to,
        }

    _handoff_to: str | None = None

    def _info_extra(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "hostname": self.hostname,
                "role": self.status.role.value, "epoch": self.status.epoch,
                "known_epoch": self.status.known_epoch,
                "peers": list(self.server.identities.values()),
                "db_epochs": {name: db.epochs.last_epoch
                              for name, db in self.store.dbs.items() if db.txid}}

    async def _ack_route(self, scope: Scope, receive: Receive, send: Send) -> None:
        doc = await _read_json(receive)
        if self.status.role is not Role.PRIMARY or doc.get("epoch") != self.status.epoch:
            await _reply(send, 409, {"error": "not the primary of that epoch"})
            return
        if doc.get("candidate"):
            try:
                positions = parse_positions(doc.get("dbs", {}))
            except ValueError as exc:
                await _reply(send, 400, {"error": str(exc)})
                return
            for name, pos in positions.items():
                db = self.store.dbs.get(name)
                if db is not None and pos.txid <= db.txid:
                    self.acks.acknowledged(name, pos.txid)
        await _reply(send, 200, {"ok": True})

    async def _takeover_route(self, scope: Scope, receive: Receive, send: Send) -> None:
        doc = await _read_json(receive)
        if not self.settings.candidate:
            await _reply(send, 409, {"error": f"{self.hostname} is not a candidate"})
            return
        log.info("the primary (epoch %s) is handing the lease to this node", doc.get("epoch"))
        self.elector.expect_release()
        await _reply(send, 200, {"ok": True})

    async def _handoff_route(self, scope: Scope, receive: Receive, send: Send) -> None:
        doc = await _read_json(receive)
        to = doc.get("to")
        if self.status.role is not Role.PRIMARY:
            holder = self.status.holder
            if holder is None or holder.node_id == self.node_id or self._http is None \
                    or doc.get("forwarded"):
                await _reply(send, 409, {"error": "this node is not the primary and no "
                                                  "primary is known"})
                return
            try:  # ask the primary (the CLI talks to its local node)
                resp = await self._http.post(holder.advertise_url + HANDOFF_PATH,
                                             json={"to": to, "forwarded": True},
                                             headers=self._auth(),
                                             timeout=HANDOFF_TIMEOUT + 5)
                await _reply(send, resp.status_code, resp.json())
            except (httpx.HTTPError, ValueError) as exc:
                await _reply(send, 502, {"error": f"cannot reach the primary "
                                                  f"{holder.advertise_url}: {exc}"})
            return
        try:
            result = await self.handoff(to if isinstance(to, str) and to else None)
        except HandoffError as exc:
            await _reply(send, 409, {"error": str(exc)})
            return
        await _reply(send, 200, result)

    # ---- handoff ---------------------------------------------------------------------

    async def _choose_target(self, to: str | None) -> tuple[Peer, dict[str, Any]]:
        peers = [p for p in (peer_from(i) for i in list(self.server.identities.values()))
                 if p is not None and p.candidate and p.node_id != self.node_id]
        if to is not None:
            peers = [p for p in peers if to in (p.hostname, p.node_id, p.advertise_url)]
            if not peers:
                raise HandoffError(f"no candidate replica named {to!r} is connected to this "
                                   "primary")
        if not peers:
            raise HandoffError("no candidate replica is connected to this primary")
        best: tuple[tuple[int, ...], Peer, dict[str, Any]] | None = None
        for peer in peers:
            doc = await self._peer_info(peer)
            if doc is None:
                continue
            theirs = parse_positions(doc.get("dbs", {}))
            score = (sum(p.txid for p in theirs.values()),)
            if best is None or score > best[0]:
                best = (score, peer, doc)
        if best is None:
            raise HandoffError("no candidate replica answered")
        return best[1], best[2]

    async def handoff(self, to: str | None) -> dict[str, Any]:
        """Planned handoff: hold new transactions, let the target catch up, release the
        lease to it. Returns what happened; HandoffError (still primary) if it cannot."""
        keeper, gate = self.elector.keeper, self._lease_gate
        if self.status.role is not Role.PRIMARY or keeper is None or gate is None:
            raise HandoffError("this node is not the primary")
        peer, _doc = await self._choose_target(to)
        started = time.monotonic()
        log.info("handing the lease of epoch %d to %s (%s)", keeper.epoch, peer.hostname,
                 peer.advertise_url)
        self.ops.pause_writes()
        self._handoff_to = peer.node_id
        try:
            await self._transactions_ended(DEMOTE_DRAIN)
            gate.close(f"handing the lease to {peer.hostname}")
            final = {name: db.pos for name, db in self.store.dbs.items() if db.txid}
            assert self._http is not None
            try:
                await self._http.post(peer.advertise_url + TAKEOVER_PATH,
                                      json={"epoch": keeper.epoch, "from": self.node_id},
                                      headers=self._auth())
            except httpx.HTTPError as exc:
                raise HandoffError(f"cannot reach {peer.hostname}: {exc}") from None
            with trio.move_on_after(HANDOFF_TIMEOUT) as scope:
                while True:
                    doc = await self._peer_info(peer)
                    if doc is not None and all(
                            parse_positions(doc.get("dbs", {})).get(n) == p
                            for n, p in final.items()):
                        break
                    await trio.sleep(0.005)
            if scope.cancelled_caught:
                raise HandoffError(f"{peer.hostname} did not catch up within "
                                   f"{HANDOFF_TIMEOUT:g}s")
            self.status.handoffs += 1
            try:
                await keeper.release()
            except LeaseError as exc:
                log.warning("releasing the lease for the handoff: %s (it expires instead)",
                            exc)
        except HandoffError:
            gate.reopen()
            self.ops.resume_writes()
            raise
        finally:
            self._handoff_to = None
        return {"ok": True, "to": peer.hostname, "epoch": keeper.epoch,
                "seconds": round(time.monotonic() - started, 3)}

    async def before_stop(self) -> None:
        """SIGTERM (or the app exited) on the primary: hand the lease to a caught-up
        candidate; without one, stop accepting commits, ship what the bucket lacks, and
        release the lease so the next primary need not wait for it to expire."""
        if self.status.role is not Role.PRIMARY:
            return
        try:
            result = await self.handoff(None)
            log.info("handed the lease to %s before stopping", result["to"])
            return
        except HandoffError as exc:
            log.info("no handoff before stopping: %s", exc)
        keeper, gate = self.elector.keeper, self._lease_gate
        if gate is not None:
            gate.close("the mount is stopping")
        if self._replicator is not None:
            with trio.CancelScope(shield=True):
                await self._replicator.drain()
        if keeper is not None:
            try:
                await keeper.release()
            except LeaseError as exc:
                log.warning("could not release the lease: %s (it expires instead)", exc)

    # ---- status ----------------------------------------------------------------------

    def status_json(self) -> dict[str, Any]:
        doc = self.status.to_json()
        doc["primary"] = None if self.primary_info.current is None else \
            self.primary_info.current.to_json()
        doc["db_epochs"] = {name: db.epochs.last_epoch for name, db in self.store.dbs.items()}
        doc["commit_acks"] = {"waits": self.acks.waits, "timeouts": self.acks.timeouts}
        return doc


async def _read_json(receive: Receive) -> dict[str, Any]:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        if len(body) > 1 << 20 or not message.get("more_body"):
            break
    try:
        doc = json.loads(bytes(body) or b"{}")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


async def _reply(send: Send, status: int, doc: dict[str, Any]) -> None:
    body = json.dumps(doc).encode() + b"\n"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def ha_enabled(opts: MountOptions) -> bool:
    return opts.config.lease.type != "static"


__all__ = ["Cluster", "HandoffError", "ha_enabled"]
