"""A lease holder in a process of its own, for tests that SIGSTOP it.

    python -m tests.lease.holder_proc '<json config>'

Takes the lease (etcd or bucket), runs a LeaseKeeper and a stand-in for the commit path
that asks `can_commit()` every 20 ms, and prints one JSON line per event on stdout:

    {"event": "acquired", "epoch": E, "sent_at": T, "valid_until": V}
    {"event": "renewed", "valid_until": V}
    {"event": "commit", "t": T}     # can_commit() said yes; T = lease_clock() after it did
    {"event": "refused", "t": T}    # it said no
    {"event": "lost", "reason": R, "at": T}
    {"event": "woke", "can_commit": B, "t": T}   # from the SIGCONT handler

The SIGCONT handler asks `can_commit()` the moment the process runs again, before trio runs
any task (Python runs signal handlers in the main thread as soon as it gets control, here
inside the event loop's wait): whatever the keeper would do, the answer comes from the
clock alone. It exits after 10 refusals. Times are lease_clock() (CLOCK_BOOTTIME): one
clock for every process on the host, so the test compares them with its own.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import trio

from litefs_py.replication.lease import (
    BucketLease,
    Candidate,
    EtcdLease,
    Lease,
    LeaseKeeper,
    campaign,
    lease_clock,
    new_node_id,
)


def emit(**fields: Any) -> None:
    # One write(2) per line: atomic on a pipe, so a line from the signal handler never lands
    # inside another.
    os.write(1, (json.dumps(fields) + "\n").encode())


def make_lease(cfg: dict[str, Any]) -> Lease:
    if cfg["backend"] == "etcd":
        return EtcdLease(cfg["endpoints"], cfg["key"], ttl=cfg["ttl"],
                         lock_delay=cfg["lock_delay"])
    from tests.lease.helpers import lease_s3_client

    client = lease_s3_client(cfg["bucket"], cfg["endpoint"])
    return BucketLease(client, cfg["key"], ttl=cfg["ttl"], lock_delay=cfg["lock_delay"],
                       max_clock_skew=cfg["max_clock_skew"])


async def main(cfg: dict[str, Any]) -> None:
    lease = make_lease(cfg)
    me = Candidate(hostname="paused", advertise_url="http://paused:20202",
                   node_id=new_node_id())
    with trio.fail_after(30):
        grant = await campaign(lease, lambda: me)
    emit(event="acquired", epoch=grant.epoch, sent_at=grant.sent_at,
         valid_until=grant.valid_until)
    keeper = LeaseKeeper(lease, grant)

    def woke(_signum: int, _frame: object) -> None:
        emit(event="woke", can_commit=keeper.can_commit(), t=lease_clock())

    signal.signal(signal.SIGCONT, woke)

    async def report() -> None:
        last = keeper.valid_until
        while keeper.loss is None:
            if keeper.valid_until != last:
                last = keeper.valid_until
                emit(event="renewed", valid_until=last)
            await trio.sleep(0.01)

    async def lost() -> None:
        loss = await keeper.wait_lost()
        emit(event="lost", reason=loss.reason.value, at=loss.at)

    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        nursery.start_soon(report)
        nursery.start_soon(lost)
        refusals = 0
        while refusals < 10:
            ok = keeper.can_commit()
            t = lease_clock()
            emit(event="commit" if ok else "refused", t=t)
            refusals += not ok
            await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    await lease.aclose()


if __name__ == "__main__":
    trio.run(main, json.loads(sys.argv[1]))
