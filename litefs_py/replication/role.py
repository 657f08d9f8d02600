"""What one node of an etcd or s3 lease cluster is right now, shared by the pieces that read
it: the commit gate (`LeaseGate`), status, and the "current primary" interface other parts
of the app use to find where writes go (`PrimaryInfo`, e.g. the HTTP proxy).

One owner writes it: the cluster (app layer) and its elector. Everything here is plain
state read from the trio thread; nothing blocks.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from .lease import Holder, LeaseKeeper, lease_clock


class Role(enum.Enum):
    REPLICA = "replica"
    PROMOTING = "promoting"  # holds the lease, not accepting commits yet (catching up)
    PRIMARY = "primary"
    DEMOTING = "demoting"  # lost or gave up the lease; commits refused, turning into a replica


@dataclass(frozen=True, slots=True)
class PrimaryRef:
    """Who the primary is, as this node knows it."""

    hostname: str
    advertise_url: str
    epoch: int
    node_id: str
    is_self: bool

    def to_json(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "advertise_url": self.advertise_url,
                "epoch": self.epoch, "node_id": self.node_id, "is_self": self.is_self}


class PrimaryInfo:
    """The current primary (None while there is none, e.g. during an election), updated on
    every change. For the app side: `current` to decide where a write goes,
    `wait_for_change(known)` to learn of the next change without polling."""

    def __init__(self) -> None:
        self._current: PrimaryRef | None = None
        self._changed = trio.Event()
        self.changes = 0

    @property
    def current(self) -> PrimaryRef | None:
        return self._current

    def set(self, ref: PrimaryRef | None) -> None:
        if ref == self._current:
            return
        self._current = ref
        self.changes += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for_change(self, known: PrimaryRef | None) -> PrimaryRef | None:
        while self._current == known:
            await self._changed.wait()
        return self._current


class LeaseGate:
    """The commit gate of a primary term (store/fencing.py's CommitGate): open while the
    lease keeper says so and nobody closed it (a handoff, a failed acknowledgement)."""

    def __init__(self, keeper: LeaseKeeper) -> None:
        self.keeper = keeper
        self._closed: str | None = None

    @property
    def epoch(self) -> int:
        return self.keeper.epoch

    def can_commit(self) -> bool:
        return self._closed is None and self.keeper.can_commit()

    def close(self, why: str) -> None:
        if self._closed is None:
            self._closed = why

    def reopen(self) -> None:
        """A handoff that could not be done: accept commits again (while the lease is)."""
        self._closed = None

    @property
    def closed(self) -> str | None:
        return self._closed

    def refusal(self) -> str:
        if self._closed is not None:
            return f"this node stopped accepting commits in epoch {self.epoch}: {self._closed}"
        loss = self.keeper.loss
        if loss is not None:
            return (f"this node no longer holds the lease of epoch {self.epoch} "
                    f"({loss.reason.value}: {loss.detail})")
        late = lease_clock() - self.keeper.valid_until
        return (f"the lease of epoch {self.epoch} cannot be proven: its validity ended "
                f"{late:.3f}s ago without a renewal")


class ClosedGate:
    """Between terms (a replica, a node promoting or demoting): no commit is accepted."""

    def __init__(self, epoch: int, why: str) -> None:
        self.epoch = epoch
        self.why = why

    def can_commit(self) -> bool:
        return False

    def refusal(self) -> str:
        return self.why


@dataclass
class NodeStatus:
    """What `litefs status` shows about this node's part in the cluster."""

    node_id: str
    hostname: str
    advertise_url: str | None
    candidate: bool
    lease: str  # the backend's description
    commit_mode: str = "local"
    role: Role = Role.REPLICA
    epoch: int = 0  # the term this node is primary of (0: none)
    known_epoch: int = 0  # the newest epoch seen anywhere
    holder: Holder | None = None
    why_not_primary: str | None = "starting"
    promotions: int = 0
    demotions: int = 0
    last_promotion: float | None = None  # wall time
    last_demotion: float | None = None
    last_loss: str | None = None
    quarantined_transactions: int = 0  # moved to quarantine since this mount started
    quarantined_files: int = 0
    commit_ack_timeouts: int = 0
    handoffs: int = 0
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)  # node_id -> identity

    def saw_epoch(self, epoch: int) -> None:
        if epoch > self.known_epoch:
            self.known_epoch = epoch

    def to_json(self) -> dict[str, Any]:
        h = self.holder
        return {
            "node_id": self.node_id, "hostname": self.hostname,
            "advertise_url": self.advertise_url, "candidate": self.candidate,
            "lease": self.lease, "commit_mode": self.commit_mode,
            "role": self.role.value, "epoch": self.epoch, "known_epoch": self.known_epoch,
            "holder": None if h is None else {
                "hostname": h.hostname, "advertise_url": h.advertise_url,
                "node_id": h.node_id, "epoch": h.epoch},
            "why_not_primary": None if self.role is Role.PRIMARY else self.why_not_primary,
            "promotions": self.promotions, "demotions": self.demotions,
            "last_promotion": self.last_promotion, "last_demotion": self.last_demotion,
            "last_loss": self.last_loss,
            "quarantined_transactions": self.quarantined_transactions,
            "quarantined_files": self.quarantined_files,
            "commit_ack_timeouts": self.commit_ack_timeouts,
            "handoffs": self.handoffs,
            "peers": sorted(p.get("hostname", "?") for p in self.peers.values()),
        }

    def promoted(self, epoch: int) -> None:
        self.role = Role.PRIMARY
        self.epoch = epoch
        self.saw_epoch(epoch)
        self.promotions += 1
        self.last_promotion = time.time()
        self.why_not_primary = None

    def demoted(self, why: str) -> None:
        self.role = Role.REPLICA
        self.epoch = 0
        self.demotions += 1
        self.last_demotion = time.time()
        self.last_loss = why
