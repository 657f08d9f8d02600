"""`lease.type: static`: the primary is chosen by hand in the configuration, as today.

The node with `candidate: true` is the primary for as long as it runs: epoch 1, a grant that
never expires and is never renewed. Every other node is a replica of the `advertise-url` it
was given. Nothing fences a second node configured as primary by mistake: that is what the
etcd and s3 backends are for.
"""

from __future__ import annotations

import math

from .base import Candidate, Holder, Lease, LeaseGrant, LeaseLostError, lease_clock

STATIC_EPOCH = 1


class StaticLease(Lease):
    """`primary` is this node's own Candidate when it is the configured primary, else the
    configured primary as a Holder (None when replicas were given no URL: they follow the
    bucket)."""

    ttl = math.inf
    lock_delay = 0.0

    def __init__(self, *, is_primary: bool, primary: Holder | None = None) -> None:
        self._is_primary = is_primary
        self._primary = primary
        self._grant: LeaseGrant | None = None
        self.description = ("static lease (this node is the primary)" if is_primary else
                            f"static lease (primary {primary.advertise_url if primary else '?'})")

    async def acquire(self, candidate: Candidate) -> LeaseGrant | None:
        if not self._is_primary:
            return None
        if self._grant is None:
            holder = Holder(hostname=candidate.hostname, advertise_url=candidate.advertise_url,
                            node_id=candidate.node_id, epoch=STATIC_EPOCH,
                            positions=candidate.positions)
            self._grant = LeaseGrant(holder=holder, valid_until=math.inf, ttl=math.inf,
                                     sent_at=lease_clock())
            self._primary = holder
        return self._grant

    async def renew(self) -> LeaseGrant:
        if self._grant is None:
            raise LeaseLostError("the static lease was not acquired (or was released)")
        return self._grant

    async def release(self) -> None:
        # A configured primary stays the primary: releasing only ends this handle's term.
        self._grant = None

    async def holder(self) -> Holder | None:
        return self._primary
