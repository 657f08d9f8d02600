"""The election loop of one node with an etcd or s3 lease (docs/leases.md).

    while the mount runs:
        look at the lease's holder; follow it (replicas stream from it, `.primary` names it)
        if it is free and this node is a candidate, not in demote-delay, and caught up
        (nobody reachable is ahead of it, the bucket has nothing newer it has not applied):
            take it, promote, keep it, and when it ends (lost, expired, handed off,
            given up after a failed acknowledgement) demote; then demote-delay
        wait for the holder to change (etcd pushes it; the bucket is polled), or a poke

What promoting and demoting do to the mount is the `Roles` object's business (the cluster,
app layer); this loop only decides when.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import trio

from .lease import (
    Candidate,
    Holder,
    Lease,
    LeaseEpochError,
    LeaseError,
    LeaseGrant,
    LeaseKeeper,
    LeaseLoss,
    LeaseSettings,
    LossReason,
    lease_clock,
)
from .role import NodeStatus, Role

log = logging.getLogger("litefs.lease")

EXPECT_RELEASE_FOR = 3.0  # seconds a handoff target keeps trying to take the lease at once
EXPECT_RELEASE_POLL = 0.02
PROMOTE_RETRY = 5.0  # seconds between handoff requests of a `promote: true` candidate
HOLDER_RECHECK = 10.0  # seconds between looks at an unchanged holder (besides the watch)


class Roles(Protocol):
    """What the elector asks of the node around it."""

    def candidate(self) -> Candidate:
        """This node as a candidate now (positions, newest epoch seen)."""
        ...

    def follow(self, holder: Holder | None) -> None:
        """The lease's holder is now `holder` (None: free); follow it."""
        ...

    async def eligibility(self) -> str | None:
        """None when this node may take the lease now (it holds the newest position known;
        this may first catch up from the bucket), else why not."""
        ...

    async def promote(self, grant: LeaseGrant, keeper: LeaseKeeper) -> None:
        """Become the primary of `grant`'s epoch (raises to give the lease back)."""
        ...

    async def serve_term(self, keeper: LeaseKeeper) -> LeaseLoss:
        """Be the primary until the term ends; returns why it ended."""
        ...

    async def demote(self, loss: LeaseLoss) -> None:
        """Stop accepting commits for good in this term and become a replica."""
        ...

    async def request_promotion(self, holder: Holder) -> str | None:
        """lease.promote: ask `holder` to hand the lease to this node if this node is
        caught up with it; why not, or None when asked."""
        ...


class Elector:
    def __init__(self, lease: Lease, settings: LeaseSettings, status: NodeStatus,
                 roles: Roles, *, on_holder: Callable[[Holder | None], None] | None = None
                 ) -> None:
        self.lease = lease
        self.settings = settings
        self.status = status
        self.roles = roles
        self.on_holder = on_holder
        self._poke = trio.Event()
        self._demote_until = 0.0  # lease_clock
        self._suspended_until = 0.0  # lease_clock: another node is being handed the lease
        self._expect_release_until = 0.0  # lease_clock: this node is a handoff's target
        self.keeper: LeaseKeeper | None = None
        self._promote_asked = float("-inf")  # lease_clock of the last handoff request

    # ---- nudges from outside -----------------------------------------------------------

    def poke(self) -> None:
        """Look at the lease again now (a handoff released it, a peer changed)."""
        self._poke.set()

    def expect_release(self) -> None:
        """This node is the target of a handoff: try to take the lease at once, repeatedly,
        for a few seconds (the primary releases it as soon as this node is caught up)."""
        self._expect_release_until = lease_clock() + EXPECT_RELEASE_FOR
        self._demote_until = 0.0
        self.poke()

    def suspend(self, seconds: float) -> None:
        """Another node is being handed the lease: do not compete for it meanwhile."""
        self._suspended_until = max(self._suspended_until, lease_clock() + seconds)

    # ---- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                holder = await self.lease.holder()
            except LeaseError as exc:
                self._not_primary(f"cannot read the lease ({exc})")
                await self._pause(None)
                continue
            self._observe(holder)
            why = await self._maybe_campaign(holder)
            if why == "":
                continue  # a term ran: look again at once
            if why is not None:
                self._not_primary(why)
            await self._pause(holder)

    def _not_primary(self, why: str) -> None:
        if why != self.status.why_not_primary and not why.startswith("demote-delay"):
            log.info("not primary: %s", why)
        self.status.why_not_primary = why

    def _observe(self, holder: Holder | None) -> None:
        self.status.holder = holder
        if holder is not None:
            self.status.saw_epoch(holder.epoch)
        self.roles.follow(holder)
        if self.on_holder is not None:
            self.on_holder(holder)

    async def _maybe_campaign(self, holder: Holder | None) -> str | None:
        """Try to take the lease if this node may; "" after a term ran, else why not."""
        if not self.settings.candidate:
            return "not a candidate (lease.candidate: false)"
        if holder is not None:
            held = f"{holder.hostname} holds the lease (epoch {holder.epoch})"
            if self.settings.promote and lease_clock() - self._promote_asked >= PROMOTE_RETRY:
                self._promote_asked = lease_clock()
                why = await self.roles.request_promotion(holder)
                return held if why is None else f"{held}; promote: {why}"
            return held
        now = lease_clock()
        if now < self._demote_until:
            return f"demote-delay: not trying again for {self._demote_until - now:.1f}s"
        if now < self._suspended_until and now >= self._expect_release_until:
            return "a handoff to another node is under way"
        started = lease_clock()
        why = await self.roles.eligibility()
        log.debug("eligibility checked in %.3fs: %s", lease_clock() - started, why or "eligible")
        if why is not None:
            return why
        try:
            started = lease_clock()
            grant = await self.lease.acquire(self.roles.candidate())
            log.debug("acquire answered in %.3fs: %s", lease_clock() - started,
                      "granted" if grant else "not granted")
        except LeaseEpochError as exc:
            log.error("%s", exc)
            return str(exc)
        except LeaseError as exc:
            return f"cannot take the lease ({exc})"
        if grant is None:
            return "the lease is free but not takeable yet (lock-delay) or was just taken"
        await self._term(grant)
        return ""

    async def _pause(self, holder: Holder | None) -> None:
        """Until the holder changes, a poke, or the poll interval (to re-check eligibility
        and demote-delay)."""
        now = lease_clock()
        if now < self._expect_release_until:
            with trio.move_on_after(EXPECT_RELEASE_POLL):
                await self._poke.wait()
            self._poke = trio.Event()
            return
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                try:
                    await self.lease.wait_for_change(holder)
                except LeaseError:
                    await trio.sleep(self.lease.poll_interval)
                nursery.cancel_scope.cancel()

            async def poked() -> None:
                await self._poke.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            nursery.start_soon(poked)
            # With a holder there is nothing to re-check until it changes (the watch, or the
            # backend's own polling, says so); without one, eligibility and demote-delay are
            # looked at again every poll interval.
            await trio.sleep(HOLDER_RECHECK if holder is not None
                             else max(self.lease.poll_interval, 0.05))
            nursery.cancel_scope.cancel()
        if self._poke.is_set():
            self._poke = trio.Event()

    async def _term(self, grant: LeaseGrant) -> None:
        keeper = LeaseKeeper(self.lease, grant)
        self.keeper = keeper
        self.status.holder = grant.holder
        self.status.role = Role.PROMOTING
        self._expect_release_until = 0.0
        log.info("took the lease (%s): epoch %d", self.lease.description, grant.epoch)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(keeper.run)
                try:
                    await self.roles.promote(grant, keeper)
                except Exception as exc:
                    log.error("could not become the primary of epoch %d: %s; giving the lease "
                              "back", grant.epoch, exc)
                    self.status.why_not_primary = f"could not become primary: {exc}"
                    try:
                        loss = await keeper.release()
                    except LeaseError:
                        loss = keeper.loss or await keeper.wait_lost()
                else:
                    loss = await self.roles.serve_term(keeper)
                with trio.CancelScope(shield=True):
                    await self.roles.demote(loss)
                nursery.cancel_scope.cancel()
        finally:
            self.keeper = None
        if loss.reason is not LossReason.STOPPED:
            self._demote_until = lease_clock() + self.settings.demote_delay
