"""The bucket lease (`lease.type: s3`) against a real moto_server, and on a directory shared
by the nodes of one host: one winner among concurrent candidates, epochs (generations) that
only grow, a stale holder taken over only after its own deadline, release as an immediate
handoff, a lost answer that does not lose the lease, clock skew within the configured bound,
the keeper through a partition from the bucket, and a provider that ignores the
conditional-write headers refused."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from litefs_py.replication.lease import (
    BucketLease,
    Candidate,
    LeaseConfigError,
    LeaseError,
    LeaseKeeper,
    LeaseLostError,
    LeaseUnavailableError,
    LossReason,
    campaign,
    lease_clock,
)
from litefs_py.storage.base import ReplicaClient
from litefs_py.storage.file import FileReplicaClient
from tests.lease.helpers import TTL, candidate, lease_s3_client, race
from tests.replication.proxy import TcpProxy
from tests.s3_server import S3Bucket

KEY = "litefs-lease.json"


class Handles:
    """BucketLease handles on one lease object (as separate nodes would have; all state is
    in the handle, so they may share the storage client: an S3 client takes ~0.5 s to
    make), released at the end of the test."""

    def __init__(self, client: ReplicaClient) -> None:
        self.client = client
        self.made: list[BucketLease] = []

    def new(self, *, ttl: float = TTL, lock_delay: float = 0.5, max_clock_skew: float = 0.5,
            wall_clock: Callable[[], float] = time.time,
            client: ReplicaClient | None = None) -> BucketLease:
        lease = BucketLease(client or self.client, KEY, ttl=ttl, lock_delay=lock_delay,
                            max_clock_skew=max_clock_skew, wall_clock=wall_clock)
        self.made.append(lease)
        return lease

    def read_object(self) -> dict[str, object]:
        raw: dict[str, object] = json.loads(self.client.get_object(KEY))
        return raw


@pytest.fixture(params=["s3", "file"])
async def handles(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Handles]:
    if request.param == "s3":
        bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        made = Handles(lease_s3_client(bucket.name, bucket.endpoint))
    else:
        made = Handles(FileReplicaClient(tmp_path / "shared"))
    yield made
    for lease in made.made:
        with contextlib.suppress(LeaseError):
            await lease.release()


def fixed(c: Candidate) -> Callable[[], Candidate]:
    return lambda: c


@pytest.mark.trio
async def test_one_of_n_concurrent_candidates_wins_and_epochs_grow(handles: Handles) -> None:
    leases = [handles.new() for _ in range(5)]
    cands = [candidate(i) for i in range(5)]
    for lease in leases:  # probe the provider first, so that the race is the acquisition
        await lease.check_conditional_writes()
    epochs = []
    for _round in range(3):  # first on an absent object, then on released ones
        results = await race(list(leases), cands)
        winners = [i for i, g in enumerate(results) if g is not None]
        assert len(winners) == 1, f"winners: {winners}"
        grant = results[winners[0]]
        assert grant is not None
        stored = handles.read_object()
        assert stored["generation"] == grant.epoch and stored["released"] is False
        for lease in leases:
            holder = await lease.holder()
            assert holder is not None and holder.node_id == cands[winners[0]].node_id
            assert holder.epoch == grant.epoch
            assert holder.positions == cands[winners[0]].positions
        epochs.append(grant.epoch)
        await leases[winners[0]].release()
    assert epochs == [1, 2, 3]


@pytest.mark.trio
async def test_a_stale_holder_is_taken_over_after_its_deadline(handles: Handles) -> None:
    a, b = handles.new(), handles.new()
    ga = await a.acquire(candidate(1))
    assert ga is not None
    # `a` stops renewing. b must see the same object for ttl + lock-delay before it takes it.
    with trio.fail_after(15):
        gb = await campaign(b, fixed(candidate(2)))
    assert gb.sent_at > ga.valid_until
    assert gb.sent_at >= ga.sent_at + TTL + b.lock_delay
    assert gb.epoch == ga.epoch + 1
    with pytest.raises(LeaseLostError, match="taken by node2"):
        await a.renew()
    stored = handles.read_object()
    assert stored["generation"] == gb.epoch


@pytest.mark.trio
async def test_epoch_is_above_the_candidates_known_epoch(handles: Handles) -> None:
    a = handles.new()
    g = await a.acquire(candidate(1, known_epoch=41))
    assert g is not None and g.epoch == 42
    await a.release()
    g = await a.acquire(candidate(1, known_epoch=7))
    assert g is not None and g.epoch == 43


@pytest.mark.trio
async def test_release_lets_another_take_it_at_once(handles: Handles) -> None:
    a = handles.new()
    b = handles.new(lock_delay=30.0)
    ga = await a.acquire(candidate(1))
    assert ga is not None
    assert await b.acquire(candidate(2)) is None
    await a.release()
    assert await b.holder() is None
    gb = await b.acquire(candidate(2))
    assert gb is not None and gb.epoch == ga.epoch + 1
    with pytest.raises(LeaseLostError):
        await a.renew()  # released: nothing to renew


@pytest.mark.trio
async def test_a_renewal_whose_answer_was_lost_keeps_the_lease(s3_bucket: S3Bucket) -> None:
    """The renewal PUT reaches the bucket, its answer does not: the next renewal's If-Match
    fails on the ETag we never learned, reads the object, finds its own term and goes on."""
    with TcpProxy(int(s3_bucket.endpoint.rsplit(":", 1)[1])) as proxy:
        lease = BucketLease(lease_s3_client(s3_bucket.name, proxy.endpoint), KEY, ttl=TTL,
                            lock_delay=0.5, max_clock_skew=0.5)
        g = await lease.acquire(candidate(1))
        assert g is not None
        proxy.lose_response_once(b"PUT /")
        with pytest.raises(LeaseUnavailableError):
            await lease.renew()
        assert proxy.lost_responses == 1
        proxy.up()
        g2 = await lease.renew()
        assert g2.epoch == g.epoch and g2.valid_until > g.valid_until
        holder = await lease.holder()
        assert holder is not None and holder.node_id == g.holder.node_id
        await lease.release()


@pytest.mark.trio
async def test_clock_skew_within_the_bound_does_not_shorten_the_lease(handles: Handles
                                                                      ) -> None:
    """b's wall clock runs 0.9 s ahead (max-clock-skew 1 s): the object's timestamp alone
    would make the lease look stale too early; b still takes it only after a's deadline."""
    a = handles.new()
    b = handles.new(max_clock_skew=1.0, wall_clock=lambda: time.time() + 0.9)
    ga = await a.acquire(candidate(1))
    assert ga is not None
    with trio.fail_after(15):
        gb = await campaign(b, fixed(candidate(2)))
    assert gb.sent_at > ga.valid_until


@pytest.mark.trio
async def test_a_long_dead_holder_is_taken_over_without_waiting_a_ttl(handles: Handles
                                                                      ) -> None:
    """A cluster cold start: the object was last renewed long ago (here: by a holder whose
    record says 60 s ago), so a new candidate need not watch it for a TTL first."""
    a = handles.new(wall_clock=lambda: time.time() - 60)
    assert await a.acquire(candidate(1)) is not None
    b = handles.new(lock_delay=30.0)  # observing it unchanged would take 32 s
    gb = await b.acquire(candidate(2))
    assert gb is not None and gb.epoch == 2


@pytest.mark.trio
async def test_keeper_renews_and_keeps_others_out(handles: Handles) -> None:
    a, b = handles.new(), handles.new()
    grant = await a.acquire(candidate(1))
    assert grant is not None
    keeper = LeaseKeeper(a, grant)
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        end = lease_clock() + 2 * TTL
        while lease_clock() < end:
            assert keeper.can_commit(), keeper.loss
            assert await b.acquire(candidate(2)) is None
            await trio.sleep(0.1)
        assert keeper.renewals >= 4
        await keeper.release()
    gb = await b.acquire(candidate(2))
    assert gb is not None and gb.epoch == grant.epoch + 1


@pytest.mark.trio
async def test_partition_from_the_bucket_is_reported_by_valid_until(s3_bucket: S3Bucket
                                                                   ) -> None:
    with TcpProxy(int(s3_bucket.endpoint.rsplit(":", 1)[1])) as proxy:
        lease = BucketLease(lease_s3_client(s3_bucket.name, proxy.endpoint), KEY, ttl=TTL,
                            lock_delay=0.5, max_clock_skew=0.5)
        grant = await lease.acquire(candidate(1))
        assert grant is not None
        keeper = LeaseKeeper(lease, grant)
        async with trio.open_nursery() as nursery:
            await nursery.start(keeper.run)
            await trio.sleep(TTL / 2)
            proxy.down()
            cut_at = lease_clock()
            with trio.fail_after(2 * TTL):
                loss = await keeper.wait_lost()
        assert loss.reason is LossReason.EXPIRED
        assert cut_at < loss.at <= keeper.valid_until
        assert not keeper.can_commit()
        with pytest.raises(LeaseLostError, match="refused"):
            keeper.check_commit()


class IgnoresConditions(FileReplicaClient):
    """A provider that accepts If-None-Match/If-Match and ignores them (writes anyway)."""

    def put_object_if(self, key: str, data: bytes, *, if_none_match: bool = False,
                      if_match: str | None = None) -> str:
        self._atomic_write(self._object_path(key), data)
        return self.get_object_tagged(key).etag


@pytest.mark.trio
async def test_a_provider_that_ignores_conditional_writes_is_refused(tmp_path: Path) -> None:
    lease = BucketLease(IgnoresConditions(tmp_path / "b"), KEY, ttl=TTL, lock_delay=0.5,
                        max_clock_skew=0.5)
    with pytest.raises(LeaseConfigError, match=r"ignores conditional writes.*lease\.type etcd"):
        await lease.acquire(candidate(1))
    assert not (tmp_path / "b" / KEY).exists()


@pytest.mark.trio
async def test_a_foreign_object_under_the_key_is_named(tmp_path: Path) -> None:
    client = FileReplicaClient(tmp_path / "b")
    client.put_object_if(KEY, b'{"something": "else"}', if_none_match=True)
    lease = BucketLease(client, KEY, ttl=TTL, lock_delay=0.5, max_clock_skew=0.5)
    with pytest.raises(LeaseError, match=r"litefs-lease\.json.*not a litefs lease object"):
        await lease.acquire(candidate(1))
