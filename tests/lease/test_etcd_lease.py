"""The etcd lease against a real etcd on loopback: one winner among concurrent candidates,
epochs that only grow, expiry that never comes before the holder's own deadline, release
as an immediate handoff, the keeper (renewals, a deleted key, a partition from etcd), and a
three-member cluster that loses a member and then its quorum."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import trio

from litefs_py.replication.lease import (
    Candidate,
    EtcdLease,
    LeaseEpochError,
    LeaseGrant,
    LeaseKeeper,
    LeaseLostError,
    LossReason,
    campaign,
    lease_clock,
)
from tests.lease.etcd_server import EtcdCluster
from tests.lease.helpers import (
    TTL,
    candidate,
    etcd_delete,
    etcd_key_state,
    race,
    wait_until_absent,
)

EXPIRY_SLACK = 2.0  # etcd's leader checks expiry on a tick (docs/leases.md)


class Leases:
    """EtcdLease handles made by a test, closed at its end."""

    def __init__(self, endpoints: list[str], key: str) -> None:
        self.endpoints = endpoints
        self.key = key
        self.made: list[EtcdLease] = []

    def new(self, *, ttl: float = TTL, lock_delay: float = 0.5,
            endpoints: list[str] | None = None) -> EtcdLease:
        lease = EtcdLease(endpoints or self.endpoints, self.key, ttl=ttl,
                          lock_delay=lock_delay)
        self.made.append(lease)
        return lease


@pytest.fixture
async def leases(etcd: EtcdCluster, etcd_key: str) -> AsyncIterator[Leases]:
    made = Leases(etcd.endpoints, etcd_key)
    yield made
    for lease in made.made:
        await lease.release()
        await lease.aclose()


def fixed(c: Candidate) -> Callable[[], Candidate]:
    return lambda: c


@pytest.mark.trio
async def test_one_of_n_concurrent_candidates_wins_and_epochs_grow(leases: Leases) -> None:
    handles = [leases.new(lock_delay=0.0) for _ in range(6)]
    cands = [candidate(i) for i in range(6)]
    epochs = []
    for _round in range(3):
        results = await race(handles, cands)
        winners = [i for i, g in enumerate(results) if g is not None]
        assert len(winners) == 1, f"winners: {winners}"
        grant = results[winners[0]]
        assert grant is not None
        raw = etcd_key_state(leases.endpoints[0], leases.key)
        assert raw is not None and int(raw["create_revision"]) == grant.epoch
        for h in handles:
            holder = await h.holder()
            assert holder is not None and holder.node_id == cands[winners[0]].node_id
            assert holder.epoch == grant.epoch and holder.hostname == f"node{winners[0]}"
            assert holder.positions == cands[winners[0]].positions
        epochs.append(grant.epoch)
        await handles[winners[0]].release()  # the next round races for a released key
    assert epochs == sorted(epochs) and len(set(epochs)) == 3


@pytest.mark.trio
async def test_a_holder_that_stops_renewing_loses_it_to_a_larger_epoch(leases: Leases) -> None:
    a, b = leases.new(), leases.new()
    ca, cb = candidate(1), candidate(2)
    with trio.fail_after(10):
        ga = await campaign(a, fixed(ca))
    # `a` never renews from here on. The test's own look at etcd says when the key went.
    gone_at = 0.0
    gb: LeaseGrant | None = None

    async def watch() -> None:
        nonlocal gone_at
        with trio.fail_after(15):
            gone_at = await wait_until_absent(leases.endpoints[0], leases.key)

    async def take() -> None:
        nonlocal gb
        with trio.fail_after(20):
            gb = await campaign(b, fixed(cb))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        nursery.start_soon(take)
    assert gb is not None
    # The holder's validity ended before etcd let the key go, and that was within the TTL
    # (+ etcd's expiry slack) of the last request that started or renewed the lease.
    assert ga.valid_until < gone_at <= ga.sent_at + TTL + EXPIRY_SLACK
    # The next term began after lock-delay (b saw the absence no earlier than the test).
    assert gb.sent_at >= gone_at + b.lock_delay - 0.1
    assert gb.sent_at > ga.valid_until
    assert gb.epoch > ga.epoch
    with pytest.raises(LeaseLostError):
        await a.renew()
    holder = await a.holder()
    assert holder is not None and holder.node_id == cb.node_id and holder.epoch == gb.epoch


@pytest.mark.trio
async def test_release_lets_another_take_it_at_once(leases: Leases) -> None:
    a = leases.new(lock_delay=0.0)
    b = leases.new(lock_delay=30.0)  # would wait 30 s after an expiry
    ga = await a.acquire(candidate(1))
    assert ga is not None
    assert await b.acquire(candidate(2)) is None
    await a.release()
    assert await a.holder() is None
    gb = await b.acquire(candidate(2))  # the release marker: no lock-delay
    assert gb is not None and gb.epoch > ga.epoch
    # The marker belongs to the released term only: b's acquisition removed it, so after
    # b's term a candidate waits lock-delay again (unless b releases too).
    assert etcd_key_state(leases.endpoints[0], leases.key + ".released") is None


@pytest.mark.trio
async def test_keeper_renews_and_valid_until_stays_ahead(leases: Leases) -> None:
    a, b = leases.new(), leases.new(lock_delay=0.0)
    with trio.fail_after(10):
        grant = await campaign(a, fixed(candidate(1)))
    keeper = LeaseKeeper(a, grant)
    samples = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        end = lease_clock() + 2 * TTL
        while lease_clock() < end:
            assert keeper.can_commit(), keeper.loss
            assert keeper.valid_until > lease_clock()
            assert await b.acquire(candidate(2)) is None
            samples += 1
            await trio.sleep(0.05)
        assert keeper.renewals >= 4 and keeper.epoch == grant.epoch
        loss = await keeper.release()
        assert loss.reason is LossReason.RELEASED and not keeper.can_commit()
    assert samples > 20
    gb = await b.acquire(candidate(2))
    assert gb is not None and gb.epoch > grant.epoch


@pytest.mark.trio
async def test_keeper_notices_a_deleted_key_at_once(leases: Leases) -> None:
    """Someone deletes the key by hand between renewals: the keeper's watch reports it long
    before the next renewal would (ttl 6 s: renewals every 2 s)."""
    a = leases.new(ttl=6.0, lock_delay=0.0)
    grant = await a.acquire(candidate(1))
    assert grant is not None
    keeper = LeaseKeeper(a, grant)
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        await trio.sleep(0.3)  # the watch is open
        deleted_at = lease_clock()
        await trio.to_thread.run_sync(etcd_delete, leases.endpoints[0], leases.key)
        with trio.fail_after(5):
            loss = await keeper.wait_lost()
    assert loss.reason is LossReason.LOST and "deleted" in loss.detail
    assert loss.at - deleted_at < keeper.renew_interval
    assert keeper.renewals == 0  # it was the watch, not a renewal
    assert not keeper.can_commit()


@pytest.mark.trio
@pytest.mark.parametrize("fault", ["freeze", "kill"])
async def test_partition_from_etcd_is_reported_by_valid_until(own_etcd: EtcdCluster,
                                                              etcd_key: str,
                                                              fault: str) -> None:
    """etcd stops answering (SIGSTOP: requests hang) or goes away (SIGKILL: refused): the
    keeper reports the loss no later than the validity it had, and refuses commits from
    then on."""
    lease = EtcdLease(own_etcd.endpoints, etcd_key, ttl=TTL, lock_delay=0.0)
    try:
        grant = await lease.acquire(candidate(1))
        assert grant is not None
        keeper = LeaseKeeper(lease, grant)
        async with trio.open_nursery() as nursery:
            await nursery.start(keeper.run)
            await trio.sleep(TTL / 2)
            if fault == "freeze":
                own_etcd.freeze(0)
            else:
                own_etcd.kill(0)
            cut_at = lease_clock()
            with trio.fail_after(2 * TTL):
                loss = await keeper.wait_lost()
        assert loss.reason is LossReason.EXPIRED
        assert cut_at < loss.at <= keeper.valid_until
        assert not keeper.can_commit()
    finally:
        if fault == "freeze":
            own_etcd.thaw(0)
        await lease.aclose()


@pytest.mark.trio
async def test_three_member_cluster_keeps_the_lease_through_a_dead_member(etcd_key: str
                                                                          ) -> None:
    ttl = 3.0
    with EtcdCluster(3) as cluster:
        lease = EtcdLease(cluster.endpoints, etcd_key, ttl=ttl, lock_delay=0.0)
        other = EtcdLease(cluster.endpoints, etcd_key, ttl=ttl, lock_delay=0.0)
        try:
            grant = await lease.acquire(candidate(1))
            assert grant is not None
            keeper = LeaseKeeper(lease, grant)
            async with trio.open_nursery() as nursery:
                await nursery.start(keeper.run)
                await trio.sleep(ttl / 2)
                cluster.kill(0)  # the first endpoint: every handle was using it
                renewals = keeper.renewals
                end = lease_clock() + 1.5 * ttl
                while lease_clock() < end:
                    assert keeper.can_commit(), keeper.loss
                    await trio.sleep(0.1)
                assert keeper.renewals >= renewals + 3
                holder = await other.holder()
                assert holder is not None and holder.epoch == grant.epoch
                assert await other.acquire(candidate(2)) is None
                # A second member gone: no quorum, no renewals; the loss comes in time.
                cluster.kill(1)
                with trio.fail_after(2 * ttl):
                    loss = await keeper.wait_lost()
                assert loss.reason is LossReason.EXPIRED and loss.at <= keeper.valid_until
        finally:
            await lease.aclose()
            await other.aclose()


@pytest.mark.trio
async def test_an_epoch_below_what_the_node_has_seen_is_refused(leases: Leases) -> None:
    """A wiped etcd cluster starts its revisions again at 1: a node that has seen a larger
    epoch refuses the grant (and gives the key back) rather than go backwards."""
    a, b = leases.new(lock_delay=0.0), leases.new(lock_delay=0.0)
    with pytest.raises(LeaseEpochError, match=r"was the etcd cluster .* wiped"):
        await a.acquire(candidate(1, known_epoch=10**9))
    assert await a.holder() is None
    grant = await b.acquire(candidate(2))
    assert grant is not None
