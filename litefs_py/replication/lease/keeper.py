"""The primary's side of a held lease: keep renewing it, and say at every instant whether a
commit may still be accepted.

    grant = await campaign(lease, lambda: candidate)
    keeper = LeaseKeeper(lease, grant)
    nursery.start_soon(keeper.run)
    ...
    if not keeper.can_commit():   # on the commit path, right before acknowledging
        raise an I/O error to the application
    ...
    loss = await keeper.wait_lost()  # then demote

`can_commit()` reads the lease clock itself, so it turns False at the grant's `valid_until`
even if the renewing task has not run since (a SIGSTOP, a stalled event loop): a process
that wakes after its lease expired refuses its first commit. The renewing task renews every
ttl/3; after a failed attempt it retries every ttl/10; it stops trying and reports the loss
`give_up_lead` before `valid_until`, so the demotion starts while the lease is still
valid. It reports a loss at once when the backend says the lease is gone, and (etcd) when a
watch on the key sees it deleted or taken.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

from .base import (
    Candidate,
    Lease,
    LeaseError,
    LeaseGrant,
    LeaseLostError,
    LeaseUnavailableError,
    lease_clock,
    trio_deadline,
)

log = logging.getLogger(__name__)
# How long a stopping keeper tries to give the lease back before leaving it to expire.
_RELEASE_TIMEOUT = 2.0


class LossReason(enum.Enum):
    EXPIRED = "expired"  # no renewal succeeded before this node's deadline
    LOST = "lost"  # the backend says the lease is not ours (expired, deleted, taken)
    RELEASED = "released"  # handed over on purpose
    STOPPED = "stopped"  # the keeper was stopped (shutdown)


@dataclass(frozen=True, slots=True)
class LeaseLoss:
    """Why and when (lease_clock) this node stopped accepting commits for `epoch`."""

    reason: LossReason
    epoch: int
    at: float
    detail: str


def give_up_lead(ttl: float) -> float:
    """How long before `valid_until` the keeper stops retrying and reports the loss: a tenth
    of the TTL, between 0.1 s and 0.5 s."""
    return min(0.5, max(0.1, ttl / 10))


class LeaseKeeper:
    """Keeps one term of `lease` (started by `grant`) alive. One `run()` per keeper."""

    def __init__(self, lease: Lease, grant: LeaseGrant, *,
                 renew_interval: float | None = None, retry_interval: float | None = None,
                 give_up_lead_s: float | None = None) -> None:
        self.lease = lease
        self._grant = grant
        ttl = grant.ttl
        self.renew_interval = renew_interval if renew_interval is not None else ttl / 3
        self.retry_interval = retry_interval if retry_interval is not None else ttl / 10
        self.give_up_lead = give_up_lead_s if give_up_lead_s is not None else (
            give_up_lead(ttl) if math.isfinite(ttl) else 0.0)
        self._loss: LeaseLoss | None = None
        self._lost = trio.Event()
        self._cancel: trio.CancelScope | None = None
        self.last_error: str | None = None
        self.renewals = 0

    # ---- what the commit path and status read ----------------------------------------

    @property
    def epoch(self) -> int:
        return self._grant.epoch

    @property
    def grant(self) -> LeaseGrant:
        return self._grant

    @property
    def valid_until(self) -> float:
        """lease_clock() time after which no commit may be accepted in this epoch."""
        return self._grant.valid_until

    @property
    def loss(self) -> LeaseLoss | None:
        return self._loss

    def can_commit(self) -> bool:
        """True while this node holds the lease and its validity has not run out."""
        return self._loss is None and lease_clock() < self._grant.valid_until

    def check_commit(self) -> None:
        """`can_commit()` as an exception (LeaseLostError naming why) for the commit path."""
        if self.can_commit():
            return
        loss = self._loss
        why = (f"{loss.reason.value}: {loss.detail}" if loss is not None else
               f"its validity ended {lease_clock() - self._grant.valid_until:.3f}s ago "
               f"without a renewal")
        raise LeaseLostError(f"this node no longer holds the lease of epoch {self.epoch} "
                             f"({why}); the commit is refused")

    async def wait_lost(self) -> LeaseLoss:
        await self._lost.wait()
        assert self._loss is not None
        return self._loss

    # ---- running ---------------------------------------------------------------------

    def _lose(self, reason: LossReason, detail: str) -> None:
        if self._loss is not None:
            return
        self._loss = LeaseLoss(reason=reason, epoch=self.epoch, at=lease_clock(),
                               detail=detail)
        level = logging.INFO if reason in (LossReason.RELEASED, LossReason.STOPPED) else \
            logging.WARNING
        log.log(level, "lease of epoch %d %s (%s): %s; commits are refused from now",
                self.epoch, reason.value, self.lease.description, detail)
        self._lost.set()
        if self._cancel is not None:
            self._cancel.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> LeaseLoss:
        """Renew until the lease is lost, released or this task is cancelled; returns the
        loss. After a loss that was not a release the lease is given back to the backend
        (best effort) so that the next primary need not wait for it to expire."""
        try:
            with trio.CancelScope() as self._cancel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._renew_loop)
                    if self.lease.pushes_changes and math.isfinite(self._grant.ttl):
                        nursery.start_soon(self._watch_loop)
                    task_status.started()
        finally:
            self._lose(LossReason.STOPPED, "the keeper was stopped")
            assert self._loss is not None
            if self._loss.reason is not LossReason.RELEASED:
                with trio.move_on_after(_RELEASE_TIMEOUT, shield=True), \
                        contextlib.suppress(LeaseError):
                    await self.lease.release()
        return self._loss

    async def _renew_loop(self) -> None:
        if not math.isfinite(self._grant.ttl):
            await trio.sleep_forever()  # a static lease never expires
        next_attempt = self._grant.sent_at + self.renew_interval
        while True:
            give_up_at = self._grant.valid_until - self.give_up_lead
            await trio.sleep_until(trio_deadline(min(next_attempt, give_up_at)))
            if lease_clock() >= give_up_at:
                self._lose(LossReason.EXPIRED, self._expiry_detail())
                return
            with trio.move_on_at(trio_deadline(give_up_at)):
                try:
                    grant = await self.lease.renew()
                except LeaseLostError as exc:
                    self._lose(LossReason.LOST, str(exc))
                    return
                except LeaseError as exc:
                    self.last_error = str(exc)
                    level = logging.WARNING if isinstance(exc, LeaseUnavailableError) else \
                        logging.ERROR
                    log.log(level, "cannot renew the lease of epoch %d (%.2fs of validity "
                            "left): %s", self.epoch, self._grant.valid_until - lease_clock(),
                            exc)
                    next_attempt = lease_clock() + self.retry_interval
                    continue
                if grant.epoch != self.epoch:  # a backend bug; never keep going on it
                    self._lose(LossReason.LOST, f"renewal returned epoch {grant.epoch}")
                    return
                self._grant = grant
                self.renewals += 1
                self.last_error = None
                next_attempt = grant.sent_at + self.renew_interval
                continue
            # The renewal was still running at give_up_at.
            self._lose(LossReason.EXPIRED, self._expiry_detail())
            return

    def _expiry_detail(self) -> str:
        last = f"; last error: {self.last_error}" if self.last_error else ""
        return (f"no renewal succeeded in time (valid until {self._grant.valid_until:.3f} on "
                f"the lease clock){last}")

    async def _watch_loop(self) -> None:
        me = self._grant.holder
        while True:
            try:
                now = await self.lease.wait_for_change(me)
            except LeaseError as exc:
                log.debug("watching the lease key: %s", exc)
                await trio.sleep(self.lease.poll_interval)
                continue
            if now is None:
                self._lose(LossReason.LOST, f"{self.lease.description} was deleted")
                return
            if not now.same_term(me):
                self._lose(LossReason.LOST, f"{self.lease.description} is held by "
                           f"{now.hostname} in epoch {now.epoch}")
                return

    async def release(self) -> LeaseLoss:
        """Planned handoff: commits are refused from this call on, the renewing stops, and
        the lease is given back so another candidate can take it at once. Raises
        LeaseUnavailableError if the backend could not be told (the lease then expires)."""
        self._lose(LossReason.RELEASED, "released for a handoff")
        loss = self._loss
        assert loss is not None
        await self.lease.release()
        return loss


async def campaign(lease: Lease, candidate: Callable[[], Candidate | None], *,
                   interval: float | None = None) -> LeaseGrant:
    """Try `lease.acquire` every `interval` (default: the backend's poll interval) until it
    succeeds. `candidate()` is asked before every attempt (fresh positions); None means "not
    eligible now" (e.g. not caught up) and skips it. Backend outages are logged and
    retried; LeaseEpochError and configuration errors are raised."""
    if interval is None:
        interval = lease.poll_interval
    while True:
        me = candidate()
        if me is not None:
            try:
                grant = await lease.acquire(me)
            except LeaseUnavailableError as exc:
                log.warning("cannot reach the lease (%s): %s", lease.description, exc)
            else:
                if grant is not None:
                    return grant
        await trio.sleep(interval)
