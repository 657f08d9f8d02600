"""What every lease backend speaks: candidates, holders, grants with an epoch and a local
validity deadline, the errors, and the clock those deadlines are measured on.

The timing contract (docs/leases.md has the reasoning):

- A grant's `valid_until` is `lease_clock()` at the moment the request that started or
  renewed the lease was SENT, plus the TTL the backend granted, minus `safety_margin(ttl)`.
  The backend starts its own TTL no earlier than it receives that request, so in real time
  this node's validity ends at least the margin before the lease can end for anyone else.
- Another candidate takes an ended lease only after `lock_delay` more (etcd: after seeing the
  key absent that long; bucket: after seeing the object unchanged for ttl + lock_delay).
- Epochs only grow: etcd's create revision of the key, the bucket object's generation.
"""

from __future__ import annotations

import json
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from ...errors import ExitCode, QuietError

# Two NTP-disciplined clocks run at most 500 ppm off true time each (the kernel's slew
# limit), so one node's second may be another's 1.001 s: a TTL measured on both can differ
# by this fraction.
CLOCK_RATE_ERROR = 0.001
# How long this process may stall between asking `can_commit()` and the commit's answer
# reaching the application (scheduling, GC, page faults, a busy 2-core host).
PAUSE_ALLOWANCE = 0.25  # seconds
MIN_TTL = 2.0  # seconds; etcd itself rounds shorter TTLs up to about this


def safety_margin(ttl: float) -> float:
    """How much sooner than the TTL this node's validity ends (see the module docstring)."""
    return ttl * CLOCK_RATE_ERROR + PAUSE_ALLOWANCE


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def lease_clock() -> float:
    """Seconds on the clock every lease deadline uses: CLOCK_BOOTTIME, which, unlike
    CLOCK_MONOTONIC, keeps counting while the machine is suspended, so a node that wakes
    from a suspend never believes the time it slept did not pass. One clock for every
    process on the host (tests compare deadlines across processes)."""
    return _boottime()


def trio_deadline(at: float) -> float:
    """`at` (on `lease_clock()`) as a deadline on trio's clock, for `trio.sleep_until` and
    `trio.move_on_at`."""
    return trio.current_time() + (at - lease_clock())


# ---- who is asking, who holds it ---------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where one database's history stands: its TXID and the rolling checksum after it."""

    txid: int
    checksum: int


@dataclass(frozen=True, slots=True)
class Candidate:
    """A node asking for the lease: what it advertises to the others while it holds it.

    `node_id` tells two processes apart even on one host (a new one per mount start).
    `known_epoch` is the newest epoch this node has seen anywhere (its own LTX files, the
    stream, the bucket): a grant at or below it is refused (LeaseEpochError), so an etcd
    cluster that was wiped and restarted cannot hand out epochs that go backwards.
    """

    hostname: str
    advertise_url: str
    node_id: str
    positions: Mapping[str, Position] = field(default_factory=dict)
    known_epoch: int = 0


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds the lease, as the backend records it: the primary of `epoch`."""

    hostname: str
    advertise_url: str
    node_id: str
    epoch: int
    positions: Mapping[str, Position] = field(default_factory=dict)

    def same_term(self, other: Holder | None) -> bool:
        """The same node in the same epoch (positions may differ)."""
        return other is not None and (self.node_id, self.epoch) == (other.node_id, other.epoch)


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """This node holds the lease: epoch `epoch` and may accept commits while
    `lease_clock() < valid_until`."""

    holder: Holder
    valid_until: float
    ttl: float  # as the backend granted it
    sent_at: float  # lease_clock() when the request behind this grant was sent

    @property
    def epoch(self) -> int:
        return self.holder.epoch

    def remaining(self) -> float:
        return self.valid_until - lease_clock()


def new_node_id() -> str:
    return os.urandom(8).hex()


# ---- errors ------------------------------------------------------------------------------


class LeaseError(QuietError):
    """A lease operation failed."""

    def __init__(self, message: str, code: ExitCode = ExitCode.IO) -> None:
        super().__init__(message, code)


class LeaseUnavailableError(LeaseError):
    """The backend could not be reached or did not answer in time: try again (the lease is
    still held until its validity ends, or still free)."""


class LeaseLostError(LeaseError):
    """The lease is definitively not ours any more (expired in the backend, taken over,
    deleted, released)."""


class LeaseEpochError(LeaseError):
    """The backend would grant an epoch at or below one this node has already seen."""


class LeaseConfigError(LeaseError):
    """Bad lease settings; the message names the key and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.CONFIG)


# ---- the record a backend stores ---------------------------------------------------------

RECORD_FORMAT = "litefs-lease/1"


def candidate_record(candidate: Candidate) -> dict[str, Any]:
    """What a holder stores about itself (JSON-ready): the etcd value, the bucket object's
    `holder`. TXIDs and checksums are 16 hex digits, as in the replication stream."""
    return {
        "hostname": candidate.hostname,
        "advertise_url": candidate.advertise_url,
        "node_id": candidate.node_id,
        "positions": {name: {"txid": f"{p.txid:016x}", "checksum": f"{p.checksum:016x}"}
                      for name, p in sorted(candidate.positions.items())},
    }


def holder_from_record(raw: Any, epoch: int, where: str) -> Holder:
    """A Holder from `candidate_record`'s JSON; LeaseError naming `where` if it is not one
    (someone else wrote to our key)."""
    try:
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        positions = {}
        for name, pos in dict(raw.get("positions") or {}).items():
            positions[str(name)] = Position(int(str(pos["txid"]), 16),
                                            int(str(pos["checksum"]), 16))
        return Holder(hostname=str(raw["hostname"]), advertise_url=str(raw["advertise_url"]),
                      node_id=str(raw["node_id"]), epoch=epoch, positions=positions)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LeaseError(f"{where} does not hold a litefs lease record ({exc}): is another "
                         f"program using that key? Point the lease at a key of its own") from None


def encode_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


# ---- the interface -----------------------------------------------------------------------


class Lease(ABC):
    """One node's handle on the cluster's lease. At most one term at a time: `acquire`
    starts one, `renew` extends it, `release` ends it, and after a loss `acquire` may be
    tried again (a new epoch). Methods are async (trio); none blocks the event loop.

    A backend is safe to use from several tasks at once for `holder`/`wait_for_change`,
    but `acquire`/`renew`/`release` belong to one owner (the elector, then its keeper).
    """

    #: For messages and status, e.g. `etcd key litefs/primary at http://10.0.0.5:2379`.
    description: str
    ttl: float
    lock_delay: float
    #: True when `wait_for_change` learns of a change as it happens (a watch stream); the
    #: keeper then watches its own key besides renewing it.
    pushes_changes: bool = False
    poll_interval: float = 1.0

    @abstractmethod
    async def acquire(self, candidate: Candidate) -> LeaseGrant | None:
        """One attempt, without waiting for the lease to become free: the grant, or None
        when someone else holds it (or it ended less than lock-delay ago). Raises
        LeaseUnavailableError when the backend cannot be reached, LeaseEpochError (after
        giving the lease back) when the epoch would not be above `candidate.known_epoch`."""

    @abstractmethod
    async def renew(self) -> LeaseGrant:
        """Extend the current term: a new grant with a later `valid_until`. Raises
        LeaseLostError if it is gone, LeaseUnavailableError if the backend did not answer
        (the previous grant stays valid until its own deadline)."""

    @abstractmethod
    async def release(self) -> None:
        """End the current term now (planned handoff) so that another candidate may take
        the lease at once, without waiting for lock-delay. A no-op when nothing is held or
        the lease was lost already; LeaseUnavailableError when the backend did not answer
        (the lease then ends by expiry)."""

    @abstractmethod
    async def holder(self) -> Holder | None:
        """The current holder, or None when the lease is free (released or expired)."""

    async def wait_for_change(self, known: Holder | None) -> Holder | None:
        """Return the holder once it differs from `known` (another node or epoch, or
        free/held); wrap in `trio.move_on_after` to bound the wait. This default polls
        `holder()` every `poll_interval`."""
        while True:
            current = await self.holder()
            if not same_term(current, known):
                return current
            await trio.sleep(self.poll_interval)

    async def aclose(self) -> None:  # noqa: B027 (optional for backends without resources)
        """Free connections; the lease itself is left as it is (call `release` first)."""

    def grant_for(self, holder: Holder, sent_at: float, granted_ttl: float) -> LeaseGrant:
        """The grant for a request sent at `sent_at` (lease_clock) that the backend accepted
        with `granted_ttl`: valid until `sent_at + granted_ttl - safety_margin`."""
        return LeaseGrant(holder=holder, ttl=granted_ttl, sent_at=sent_at,
                          valid_until=sent_at + granted_ttl - safety_margin(granted_ttl))


def same_term(a: Holder | None, b: Holder | None) -> bool:
    """Both None (free), or the same node in the same epoch."""
    if a is None or b is None:
        return a is b
    return a.same_term(b)


def check_ttl(ttl: float, key: str) -> float:
    if not math.isfinite(ttl) or ttl < MIN_TTL:
        raise LeaseConfigError(f"{key}: {ttl:g}s is too short; use {MIN_TTL:g}s or more "
                               f"(10s is the default)")
    return ttl
