"""Shared by the lease tests: candidates, an independent look at the etcd key (plain HTTP,
not the code under test), and S3 clients with the timeouts a lease uses."""

from __future__ import annotations

import base64
import json
import urllib.request
from typing import Any

import trio

from litefs_py.replication.lease import (
    Candidate,
    Lease,
    LeaseGrant,
    Position,
    lease_clock,
    new_node_id,
)
from litefs_py.storage.s3 import S3ReplicaClient
from tests.s3_server import ACCESS_KEY_ID, SECRET_ACCESS_KEY

TTL = 2.0  # the shortest TTL the settings accept: keeps the suite fast


def candidate(n: int, txid: int = 10, known_epoch: int = 0) -> Candidate:
    return Candidate(hostname=f"node{n}", advertise_url=f"http://node{n}:20202",
                     node_id=new_node_id(), positions={"store.db": Position(txid, 0xC0FFEE)},
                     known_epoch=known_epoch)


def etcd_post(endpoint: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(), method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def etcd_key_state(endpoint: str, key: str) -> dict[str, Any] | None:
    """The key's kv (create_revision, lease, value) as etcd has it, or None if absent."""
    data = etcd_post(endpoint, "/v3/kv/range", {"key": base64.b64encode(key.encode()).decode()})
    kvs = data.get("kvs") or []
    return kvs[0] if kvs else None


def etcd_delete(endpoint: str, key: str) -> None:
    etcd_post(endpoint, "/v3/kv/deleterange",
              {"key": base64.b64encode(key.encode()).decode()})


async def wait_until_absent(endpoint: str, key: str) -> float:
    """Poll the key every 20 ms (in a thread, with plain urllib) until it is gone; the
    lease_clock() time of the first look that found it absent."""
    while True:
        state = await trio.to_thread.run_sync(etcd_key_state, endpoint, key)
        seen_at = lease_clock()
        if state is None:
            return seen_at
        await trio.sleep(0.02)


def lease_s3_client(bucket: str, endpoint: str, path: str = "cluster",
                    timeout: float = 0.5) -> S3ReplicaClient:
    """An S3 client as the lease uses one: short timeouts, two attempts."""
    return S3ReplicaClient(bucket, path, endpoint=endpoint, access_key_id=ACCESS_KEY_ID,
                           secret_access_key=SECRET_ACCESS_KEY, connect_timeout=timeout,
                           read_timeout=timeout, max_attempts=2)


async def race(leases: list[Lease], cands: list[Candidate]) -> list[LeaseGrant | None]:
    """Every handle tries `acquire` once, all released at the same instant."""
    results: list[LeaseGrant | None] = [None] * len(leases)
    start = trio.Event()

    async def attempt(i: int) -> None:
        await start.wait()
        results[i] = await leases[i].acquire(cands[i])

    async with trio.open_nursery() as nursery:
        for i in range(len(leases)):
            nursery.start_soon(attempt, i)
        await trio.sleep(0.05)
        start.set()
    return results
