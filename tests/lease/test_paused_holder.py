"""A holder frozen with SIGSTOP past its TTL, while another node takes the lease, must not
accept a single commit after it wakes (SIGCONT): its validity is read from the clock on the
commit path, so the first check after waking already says no — before its keeper has run
(the holder's SIGCONT handler asks before any of its trio tasks runs again).

The holder runs in a separate process (tests/lease/holder_proc.py) and reports every
commit check with its lease_clock() time, which on one host is the test's clock too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from litefs_py.replication.lease import (
    BucketLease,
    EtcdLease,
    Lease,
    LeaseGrant,
    campaign,
    lease_clock,
)
from tests.lease.etcd_server import EtcdCluster
from tests.lease.helpers import TTL, candidate, lease_s3_client
from tests.s3_server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3Bucket

REPO = Path(__file__).resolve().parents[2]


class HolderProcess:
    """holder_proc.py running, its events collected by a reader thread."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.lease.holder_proc",
                                      json.dumps(cfg)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, cwd=REPO)
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.events.append(json.loads(line))

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.snapshot():
                if e["event"] == event:
                    return e
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        stderr = b""
        if self.proc.poll() is not None and self.proc.stderr is not None:
            stderr = self.proc.stderr.read()
        raise AssertionError(f"holder never reported {event!r}; events: "
                             f"{self.snapshot()[-5:]}; stderr: {stderr.decode()[-2000:]}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def cont(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture(params=["etcd", "s3"])
def backend(request: pytest.FixtureRequest, etcd_key: str
            ) -> Iterator[tuple[dict[str, Any], Lease]]:
    """The holder process's configuration, and the test's own handle on the same lease."""
    if request.param == "etcd":
        cluster: EtcdCluster = request.getfixturevalue("etcd")
        cfg: dict[str, Any] = {"backend": "etcd", "endpoints": cluster.endpoints,
                               "key": etcd_key, "ttl": TTL, "lock_delay": 0.5}
        lease: Lease = EtcdLease(cluster.endpoints, etcd_key, ttl=TTL, lock_delay=0.5)
    else:
        bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        cfg = {"backend": "s3", "bucket": bucket.name, "endpoint": bucket.endpoint,
               "key": "litefs-lease.json", "ttl": TTL, "lock_delay": 0.5,
               "max_clock_skew": 0.5}
        lease = BucketLease(lease_s3_client(bucket.name, bucket.endpoint), cfg["key"],
                            ttl=TTL, lock_delay=0.5, max_clock_skew=0.5)
    yield cfg, lease
    trio.run(lease.release)
    trio.run(lease.aclose)


def test_a_holder_paused_past_its_ttl_commits_nothing_after_waking(
        backend: tuple[dict[str, Any], Lease], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, lease = backend
    monkeypatch.setenv("LITEFS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("LITEFS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    holder = HolderProcess(cfg)
    try:
        acquired = holder.wait_for("acquired", 30)
        holder.wait_for("renewed", 10)  # its keeper runs
        time.sleep(0.5)
        holder.stop()
        stopped_at = lease_clock()

        async def take_over() -> LeaseGrant:
            with trio.fail_after(20):
                return await campaign(lease, lambda: candidate(2))

        grant = trio.run(take_over)
        time.sleep(0.3)
        woke_at = lease_clock()
        holder.cont()
        lost = holder.wait_for("lost", 10)
        holder.proc.wait(timeout=10)
    finally:
        holder.close()
    events = holder.snapshot()
    commits = [e["t"] for e in events if e["event"] == "commit"]
    checks_after_waking = [e for e in events if e["event"] in ("commit", "refused")
                           and e["t"] > woke_at]
    validity = max([acquired["valid_until"]] +
                   [e["valid_until"] for e in events if e["event"] == "renewed"])

    assert grant.epoch > acquired["epoch"]
    assert len(commits) > 10  # it did accept commits while it held the lease
    # Its last validity ended before the new term's first request was even sent ...
    assert validity < grant.sent_at
    # ... and no commit was accepted after that: in particular none after waking.
    assert max(commits) < grant.sent_at and max(commits) < stopped_at
    woke = [e for e in events if e["event"] == "woke"]
    assert len(woke) == 1, events[-5:]
    assert woke[0]["can_commit"] is False and woke[0]["t"] > woke_at
    assert checks_after_waking and checks_after_waking[0]["event"] == "refused"
    assert all(e["event"] == "refused" for e in checks_after_waking)
    assert lost["reason"] in ("expired", "lost")
