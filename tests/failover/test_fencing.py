"""Fencing: a primary that cannot prove its lease stops accepting commits before the lease can
be taken elsewhere, and never commits in its old epoch after waking (real mounts, real etcd,
a writer in its own process; LiteFS's lease has no such fence: a paused primary keeps
writing until its next failed renew).

- SIGSTOP the primary past its TTL while the writer commits on it, elect another node,
  commit there, SIGCONT: the old primary's in-flight commit fails with an I/O error, it
  acknowledges nothing after waking, it turns into a replica of the new primary (`.primary`
  names it on every replica), and what it committed that the new primary does not have is
  in its quarantine, not dropped;
- freeze etcd (or the S3 server for the s3 lease): the primary cannot renew, so its
  commits fail (EIO) from the end of
  its lease's validity on; when etcd is back, writes resume under a newer epoch and no two
  nodes ever accepted commits at once.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.failover.harness import (
    HACluster,
    LeaseSpec,
    Node,
    Writer,
    assert_no_overlap,
    create_table,
    ltx_pages_contain,
    rows,
)
from tests.lease.etcd_server import EtcdCluster
from tests.replica.harness import wait_for
from tests.s3_server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer, create_bucket

TTL = 2.0
LOCK_DELAY = 1.0


@pytest.fixture
def own_etcd() -> Iterator[EtcdCluster]:
    with EtcdCluster(1) as cluster:
        yield cluster


def commit_on(node: Node, k: int, v: str) -> tuple[int, int]:
    """One INSERT on `node` from this (separate) process; returns (epoch, txid) from -pos."""
    con = sqlite3.connect(node.db(), isolation_level=None, timeout=5)
    try:
        con.execute("INSERT INTO t(k, v) VALUES (?, ?)", (k, v))
    finally:
        con.close()
    fields = (node.mnt / "app.db-pos").read_text().strip().split("/")
    return int(fields[2], 16), int(fields[0], 16)


def primary_among(nodes: list[Node]) -> Node | None:
    found = [n for n in nodes if n.is_primary()]
    return found[0] if len(found) == 1 else None


def primary_file(node: Node) -> str | None:
    try:
        return (node.mnt / ".primary").read_text().strip()
    except FileNotFoundError:
        return None


def check_resumed(cluster: HACluster, writer: Writer, cut_at: float, frozen_until: float,
                  what: str) -> None:
    """After the lease's store is back: nothing was acknowledged without a lease to prove,
    commits resume (on any node) in a newer epoch, and no two nodes accepted commits at
    once."""
    late = [r for r in writer.records() if r["ok"] and r["t1"] > cut_at + TTL]
    assert late == [], f"commits acknowledged with no lease to prove: {late[:3]}"
    wait_for(lambda: any(r["ok"] and r["t0"] > frozen_until for r in writer.records()),
             60, f"commits after {what} is back\n{cluster.logs_tail()}")
    time.sleep(0.5)
    writer.stop()
    records = writer.records()
    before = [int(r.get("epoch") or 0) for r in records if r["ok"] and r["t1"] < cut_at]
    resumed = [int(r.get("epoch") or 0) for r in records
               if r["ok"] and r["t0"] > frozen_until and r.get("epoch")]
    assert resumed and min(resumed) > max(before), (max(before), resumed[:3])
    assert_no_overlap(records)


def test_paused_primary_never_commits_after_waking(tmp_path: Path, etcd: EtcdCluster,
                                                   lease_key: str) -> None:
    cluster = HACluster(tmp_path, LeaseSpec("etcd", etcd.endpoints, lease_key), commit="local")
    try:
        cluster.start_nodes(3)
        old = create_table(cluster)
        others = [n for n in cluster.nodes if n is not old]
        writer = cluster.writer(tmp_path / "writer.jsonl", rate=50)
        wait_for(lambda: sum(1 for r in writer.acked() if r["node"] == old.name) >= 20, 30,
                 f"commits on {old.name}\n{cluster.logs_tail()}")
        old_epoch = max(int(r.get("epoch") or 0) for r in writer.acked()
                        if r["node"] == old.name)
        assert old_epoch > 0
        # A transaction of this process's own is open on the old primary across the pause;
        # its COMMIT comes after waking.
        pending = sqlite3.connect(old.db(), isolation_level=None, timeout=10)
        pending.execute("BEGIN IMMEDIATE")
        pending.execute("INSERT INTO t(k, v) VALUES (?, ?)", (7, "in-flight-across-the-pause"))
        stopped_at = time.time()
        old.signal(signal.SIGSTOP)
        try:
            new_box: list[Node] = []

            def elected() -> bool:
                p = primary_among(others)
                if p is not None:
                    new_box[:] = [p]
                return p is not None

            wait_for(elected, 3 * (TTL + LOCK_DELAY + 2), "a new primary while "
                     f"{old.name} is paused\n{cluster.logs_tail()}", interval=0.05)
            new = new_box[0]
            new_epoch, _ = commit_on(new, 1, "on-the-new-primary")
            assert new_epoch > old_epoch
            for r in range(2, 6):
                commit_on(new, r, f"more-{r}")
            # Paused well past its TTL by now: the validity it had is long over.
            assert time.time() - stopped_at > TTL
        finally:
            woke_at = time.time()
            old.signal(signal.SIGCONT)
        with pytest.raises(sqlite3.Error) as refused:
            pending.execute("COMMIT")
        pending.close()
        assert "I/O" in str(refused.value) or "readonly" in str(refused.value).replace(
            "-", ""), refused.value
        # The writer was stuck on the paused mount (an app there would be too); it carries
        # on, and finds the new primary.
        wait_for(lambda: any(r["node"] == new.name and r["t0"] > woke_at
                             for r in writer.acked()), 30,
                 f"the writer committing on {new.name} after {old.name} woke\n"
                 f"{cluster.logs_tail()}")
        wait_for(lambda: primary_file(old) == new.name, 30,
                 f"{old.name}'s .primary naming {new.name}\n{cluster.logs_tail()}")
        time.sleep(0.5)
        writer.stop()
        records = writer.records()
        after = [r for r in records if r["node"] == old.name and r["ok"] and r["t1"] > woke_at]
        assert after == [], f"{old.name} acknowledged commits after waking: {after}"
        straddling = [r for r in records if r["node"] == old.name
                      and r["t0"] < woke_at < r["t1"]]
        for r in straddling:  # the commit in flight across the pause
            assert not r["ok"] and "I/O" in r.get("error", ""), r
        assert "commit refused" in old.log() or not straddling, old.log()[-3000:]
        assert_no_overlap(records)
        # Every node agrees on the primary; the old one resynced to the new history.
        for n in cluster.nodes:
            if n is not new:
                wait_for(lambda n=n: primary_file(n) == new.name, 15,  # type: ignore[misc]
                         f"{n.name}'s .primary")
        assert primary_file(new) is None
        want = new.pos()
        wait_for(lambda: all(n.pos() == want for n in cluster.nodes), 30,
                 f"every node at {want}: {[n.pos() for n in cluster.nodes]}")
        final = rows(new)
        assert rows(old) == final
        assert final[1] == "on-the-new-primary"
        assert "in-flight-across-the-pause" not in final.values()
        # Nothing the old primary acknowledged was dropped silently: it is in the new
        # history, or in the old primary's quarantine.
        for r in records:
            if r["ok"] and r["node"] == old.name and final.get(r["k"]) != r["v"]:
                assert ltx_pages_contain(old.quarantine(), r["v"].encode()), (
                    f"{r} acknowledged by {old.name} is neither on {new.name} nor in "
                    f"{old.name}'s quarantine {old.quarantine()}")
    finally:
        cluster.close()


def test_primary_cut_from_etcd_stops_accepting_commits(tmp_path: Path, own_etcd: EtcdCluster,
                                                       lease_key: str) -> None:
    cluster = HACluster(tmp_path, LeaseSpec("etcd", own_etcd.endpoints, lease_key),
                        commit="local")
    try:
        cluster.start_nodes(3)
        first = create_table(cluster)
        writer = cluster.writer(tmp_path / "writer.jsonl", rate=50)
        wait_for(lambda: sum(1 for r in writer.acked() if r["node"] == first.name) >= 20, 30,
                 f"commits on {first.name}\n{cluster.logs_tail()}")
        cut_at = time.time()
        own_etcd.freeze(0)
        try:
            # The primary cannot renew: within its TTL it stops being one (the app sees
            # `.primary`), and a write that ignores that fails.
            wait_for(lambda: not first.is_primary(), TTL + 3,
                     f"{first.name} stepping down while etcd is frozen\n{cluster.logs_tail()}",
                     interval=0.05)
            stepped_down = time.time()
            with pytest.raises(sqlite3.Error):
                commit_on(first, 1, "written-without-a-lease")
            time.sleep(TTL)
            assert not any(n.is_primary() for n in cluster.nodes), "a primary without etcd"
            frozen_until = time.time()
        finally:
            own_etcd.thaw(0)
        assert stepped_down - cut_at < TTL + 1.0, stepped_down - cut_at
        assert "renew" in first.log()
        check_resumed(cluster, writer, cut_at, frozen_until, "etcd")
    finally:
        cluster.close()


@pytest.fixture
def own_moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    monkeypatch.setenv("LITEFS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("LITEFS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    with MotoServer() as server:
        yield server


def test_primary_cut_from_the_bucket_stops_accepting_commits(
        tmp_path: Path, own_moto: MotoServer, lease_key: str) -> None:
    """The s3 lease: the bucket frozen (SIGSTOP of the S3 server) is the primary cut from
    its lease: its commits fail with EIO from the end of its validity, no other node becomes
    primary while the bucket is away, then commits resume in a newer epoch with no overlap.
    (It turns visibly into a replica only when its hung requests time out: the term waits
    for its uploader's PUT; docs/leases.md, known limits.)"""
    bucket = create_bucket(own_moto.endpoint)
    cluster = HACluster(tmp_path, LeaseSpec("s3", key=lease_key),
                        bucket_url=f"s3://{bucket}/db?endpoint={own_moto.endpoint}",
                        commit="local")
    assert own_moto.proc is not None
    try:
        cluster.start_nodes(3)
        first = create_table(cluster)
        writer = cluster.writer(tmp_path / "writer.jsonl", rate=50)
        wait_for(lambda: sum(1 for r in writer.acked() if r["node"] == first.name) >= 20, 30,
                 f"commits on {first.name}\n{cluster.logs_tail()}")
        cut_at = time.time()
        own_moto.proc.send_signal(signal.SIGSTOP)
        try:
            # Commits are refused from the end of the lease's validity on, whatever the
            # renewal and the uploader (hung on the frozen server) are doing.
            wait_for(lambda: any(not r["ok"] and r["t0"] > cut_at + TTL
                                 for r in writer.records()),
                     TTL + 5, f"a refused commit on {first.name}\n{cluster.logs_tail()}",
                     interval=0.05)
            time.sleep(TTL)
            others = [n for n in cluster.nodes if n is not first]
            assert not any(n.is_primary() for n in others), "another primary without a lease"
            frozen_until = time.time()
        finally:
            own_moto.proc.send_signal(signal.SIGCONT)
        refused = [r for r in writer.records() if not r["ok"] and r["t0"] > cut_at + TTL]
        assert refused and all("I/O" in r.get("error", "") for r in refused
                               if r["node"] == first.name), refused[:3]
        check_resumed(cluster, writer, cut_at, frozen_until, "the bucket")
    finally:
        cluster.close()
