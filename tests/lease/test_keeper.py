"""The keeper's contract without a network in the way: the static lease (today's fixed
primary), a stalled event loop (can_commit() reads the clock, not the keeper's last word),
and a stopped keeper that gives the lease back. The bucket lease on a local directory is
the backend where one is needed."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import trio

from litefs_py.replication.lease import (
    BucketLease,
    Holder,
    LeaseKeeper,
    LeaseLostError,
    LossReason,
    StaticLease,
    lease_clock,
    safety_margin,
)
from litefs_py.storage.file import FileReplicaClient
from tests.lease.helpers import TTL, candidate


def bucket_lease(root: Path, lock_delay: float = 30.0) -> BucketLease:
    return BucketLease(FileReplicaClient(root), "litefs-lease.json", ttl=TTL,
                       lock_delay=lock_delay, max_clock_skew=0.5)


@pytest.mark.trio
async def test_static_primary_holds_epoch_1_until_released() -> None:
    lease = StaticLease(is_primary=True)
    me = candidate(1)
    grant = await lease.acquire(me)
    assert grant is not None and grant.epoch == 1 and math.isinf(grant.valid_until)
    holder = await lease.holder()
    assert holder is not None and holder.node_id == me.node_id
    keeper = LeaseKeeper(lease, grant)
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        await trio.sleep(0.2)
        assert keeper.can_commit() and keeper.renewals == 0
        loss = await keeper.release()
    assert loss.reason is LossReason.RELEASED and not keeper.can_commit()
    with pytest.raises(LeaseLostError):
        keeper.check_commit()


@pytest.mark.trio
async def test_static_replica_never_acquires_and_names_the_primary() -> None:
    primary = Holder(hostname="node1", advertise_url="http://node1:20202", node_id="static",
                     epoch=1)
    lease = StaticLease(is_primary=False, primary=primary)
    assert await lease.acquire(candidate(2)) is None
    assert await lease.holder() == primary


@pytest.mark.trio
async def test_a_stalled_event_loop_cannot_commit_on_waking(tmp_path: Path) -> None:
    """The whole event loop blocks past the validity (a long GC pause, a blocking call):
    the keeper has had no chance to run, yet the very next can_commit() says no."""
    lease = bucket_lease(tmp_path)
    grant = await lease.acquire(candidate(1))
    assert grant is not None
    keeper = LeaseKeeper(lease, grant)
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        await trio.sleep(0.1)
        assert keeper.can_commit()
        stall = keeper.valid_until - lease_clock() + 0.05
        time.sleep(stall)  # noqa: ASYNC251 (the point: nothing else runs meanwhile)
        assert keeper.loss is None  # the keeper has not run ...
        assert not keeper.can_commit()  # ... and the answer is no all the same
        with pytest.raises(LeaseLostError, match="validity ended"):
            keeper.check_commit()
        with trio.fail_after(5):
            loss = await keeper.wait_lost()
    assert loss.reason in (LossReason.EXPIRED, LossReason.LOST)


@pytest.mark.trio
async def test_a_stopped_keeper_refuses_commits_and_gives_the_lease_back(tmp_path: Path
                                                                         ) -> None:
    lease = bucket_lease(tmp_path)
    grant = await lease.acquire(candidate(1))
    assert grant is not None
    keeper = LeaseKeeper(lease, grant)
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()  # the mount shuts down
    assert keeper.loss is not None and keeper.loss.reason is LossReason.STOPPED
    assert not keeper.can_commit()
    # Given back: a candidate that would otherwise wait 30 s of lock-delay takes it now.
    other = bucket_lease(tmp_path)
    taken = await other.acquire(candidate(2))
    assert taken is not None and taken.epoch == grant.epoch + 1


def test_margins() -> None:
    """The margin covers clock-rate error (0.1 % of the TTL) and a pause allowance; the
    keeper gives up before validity ends by a tenth of the TTL (0.1 s to 0.5 s)."""
    from litefs_py.replication.lease.keeper import give_up_lead

    assert safety_margin(2.0) == pytest.approx(0.252)
    assert safety_margin(10.0) == pytest.approx(0.26)
    assert give_up_lead(2.0) == pytest.approx(0.2)
    assert give_up_lead(10.0) == pytest.approx(0.5)
    assert give_up_lead(0.5) == pytest.approx(0.1)
