"""Failover against a three-member etcd cluster, and planned handoffs.

- kill -9 the primary (three nodes, `replica` commit mode) a few times while the lease lives
  in a real three-member etcd cluster: a new primary within the loose bound of the kill test,
  nothing acknowledged lost; then the etcd *leader* is killed under the writer (the harder
  case: the cluster must elect a new leader while the primary renews through it) and commits
  go on;
- planned handoff: SIGTERM on the primary with a caught-up candidate, then `litefs handoff`
  from the command line; the writer's gap (last acknowledged commit on the old primary ->
  first on the new one) is measured and bounded.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.failover.harness import (
    HACluster,
    LeaseSpec,
    Node,
    Writer,
    assert_no_overlap,
    create_table,
    rows,
)
from tests.failover.test_failover_kill import TARGET, converge
from tests.lease.etcd_server import EtcdCluster
from tests.replica.harness import wait_for

# The handoff target is < 1 s of write unavailability; this 2-core shared VM runs CI
# beside the tests, so the assertion is generous and the measured gap is printed (the
# figure in docs/leases.md comes from here and bench/failover.py).
HANDOFF_BOUND = 3.0


@pytest.fixture(scope="module")
def etcd3() -> Iterator[EtcdCluster]:
    with EtcdCluster(3) as cluster:
        yield cluster


def etcd_leader(etcd: EtcdCluster) -> int:
    """Index of the member that is the etcd cluster's leader now (maintenance status)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    ids: dict[str, int] = {}
    leader = None
    for i, m in enumerate(etcd.members):
        req = urllib.request.Request(m.endpoint + "/v3/maintenance/status", data=b"{}",
                                     method="POST")
        with opener.open(req, timeout=2) as resp:
            doc = json.loads(resp.read())
        ids[str(doc["header"]["member_id"])] = i
        leader = str(doc["leader"])
    assert leader in ids, f"leader {leader} is none of {ids}"
    return ids[leader]


def commits_on(writer: Writer, node: Node, since: float) -> int:
    return sum(1 for r in writer.acked() if r["node"] == node.name and r["t0"] >= since)


@pytest.mark.slow
def test_kill_primary_three_member_etcd(tmp_path: Path, etcd3: EtcdCluster,
                                        lease_key: str) -> None:
    cluster = HACluster(tmp_path, LeaseSpec("etcd", etcd3.endpoints, lease_key),
                        commit="replica")
    try:
        cluster.start_nodes(3)
        primary = create_table(cluster)
        writer = cluster.writer(tmp_path / "writer.jsonl", rate=50)
        times: list[float] = []
        for _ in range(3):
            since = time.time()
            wait_for(lambda p=primary, t=since: commits_on(writer, p, t) >= 15,  # type: ignore[misc]
                     30, f"commits on {primary.name}\n{cluster.logs_tail()}")
            killed_at = time.time()
            primary.kill()
            new = cluster.wait_primary(30, not_=primary)
            first = writer.wait_commits_on(new, killed_at, 30)
            times.append(first["t1"] - killed_at)
            primary.start()  # back as a replica before the next kill
            primary = new

        # Now the etcd leader dies under the writer: the other two elect a new one, the
        # lease's requests go to the members that answer, and commits go on (on this primary
        # or, should its renewal miss the validity while etcd re-elects, on a new one).
        since = time.time()
        wait_for(lambda: commits_on(writer, primary, since) >= 15, 30, "commits")
        leader = etcd_leader(etcd3)
        killed_etcd_at = time.time()
        etcd3.kill(leader)
        # 150 commits at 50/s from 1 s after the kill run past 2 TTLs: the lease must have
        # been renewed (or taken anew) through the two surviving members.
        wait_for(lambda: sum(1 for r in writer.acked() if r["t0"] >= killed_etcd_at + 1.0)
                 >= 150, 3 * TARGET + 4.0,
                 f"150 commits from 1 s after etcd member m{leader} (the leader) was killed\n"
                 f"{cluster.logs_tail()}")
        after = [r for r in writer.acked() if r["t0"] >= killed_etcd_at]
        nodes_after = sorted({r["node"] for r in after})
        gap = max((b["t1"] - a["t1"] for a, b in itertools.pairwise(after)),
                  default=0.0)
        time.sleep(0.5)
        writer.stop()
        final_primary = cluster.wait_primary(30)
        converge(cluster, final_primary)
        acked = writer.acked()
        final = rows(final_primary)
        lost = [r for r in acked if final.get(r["k"]) != r["v"]]
        summary: dict[str, Any] = {
            "failover_s": [round(t, 2) for t in times], "etcd_leader_killed": f"m{leader}",
            "longest_gap_after_etcd_kill_s": round(gap, 2),
            "primaries_after_etcd_kill": nodes_after, "acked": len(acked),
            "lost": len(lost), "stuck_kills": sum(n.stuck_kills for n in cluster.nodes)}
        print(json.dumps(summary))
        assert_no_overlap(writer.records())
        assert max(times) <= 3 * TARGET, summary
        assert lost == [], f"acknowledged transactions lost in replica mode: {lost[:5]}"
    finally:
        cluster.close()


def handoff_gap(writer: Writer, old: Node, new: Node, at: float) -> float:
    """Last acknowledged commit on `old` before the handoff's first ack on `new` -> that
    first ack on `new` (both after `at`, when the handoff was asked for)."""
    first = writer.wait_commits_on(new, at, 15)
    before = [r for r in writer.acked() if r["node"] == old.name and r["t1"] <= first["t1"]]
    assert before, f"no commit acknowledged on {old.name} before {new.name} took over"
    return float(first["t1"] - before[-1]["t1"])


@pytest.mark.slow
def test_planned_handoff_sigterm_and_cli(tmp_path: Path, etcd: EtcdCluster,
                                         lease_key: str) -> None:
    cluster = HACluster(tmp_path, LeaseSpec("etcd", etcd.endpoints, lease_key),
                        commit="replica")
    try:
        cluster.start_nodes(3)
        primary = create_table(cluster)
        writer = cluster.writer(tmp_path / "writer.jsonl", rate=50)
        since = time.time()
        wait_for(lambda: commits_on(writer, primary, since) >= 25, 30,
                 f"commits on {primary.name}\n{cluster.logs_tail()}")

        # 1. SIGTERM on the primary: it hands the lease to a caught-up candidate, then stops.
        asked = time.time()
        primary.signal(15)
        new = cluster.wait_primary(15, not_=primary)
        sigterm_gap = handoff_gap(writer, primary, new, asked)
        assert primary.mount.proc is not None
        primary.mount.proc.wait(30)
        assert "handoff" in primary.log().lower(), primary.log()[-3000:]
        primary.start()  # back as a replica
        since = time.time()
        wait_for(lambda: commits_on(writer, new, since) >= 25, 30, f"commits on {new.name}")

        # 2. `litefs handoff NODE` from the command line, to the node named.
        old = new
        target = next(n for n in cluster.nodes if n is not old and n.alive())
        asked = time.time()
        cli = subprocess.run(
            [sys.executable, "-m", "litefs_py", "handoff", "--url", old.url, target.name],
            capture_output=True, text=True, timeout=30)
        assert cli.returncode == 0, f"handoff exited {cli.returncode}: {cli.stdout}{cli.stderr}"
        new = cluster.wait_primary(15, not_=old)
        assert new is target, f"{new.name} took the lease, not {target.name}"
        cli_gap = handoff_gap(writer, old, new, asked)
        assert old.alive(), old.log()[-3000:]
        seen: list[str] = []

        def names_target() -> bool:
            try:
                seen.append((old.mnt / ".primary").read_text().strip())
            except OSError as exc:
                seen.append(repr(exc))
            return seen[-1] == target.name

        # `.primary` on the old primary names the new one (LiteFS's contract) once its
        # elector has seen the new holder.
        wait_for(names_target, 5, f".primary on {old.name} naming {target.name}: {seen[-3:]}")
        print(f".primary on {old.name} after the handoff: {sorted(set(seen))}")

        time.sleep(0.5)
        writer.stop()
        converge(cluster, new)
        acked = writer.acked()
        final = rows(new)
        lost = [r for r in acked if final.get(r["k"]) != r["v"]]
        summary = {"sigterm_gap_s": round(sigterm_gap, 3), "cli_gap_s": round(cli_gap, 3),
                   "cli_output": cli.stdout.strip()[-200:], "acked": len(acked),
                   "failed": len(writer.records()) - len(acked), "lost": len(lost)}
        print(json.dumps(summary))
        assert_no_overlap(writer.records())
        assert lost == [], f"acknowledged transactions lost in a planned handoff: {lost[:5]}"
        assert sigterm_gap < HANDOFF_BOUND, summary
        assert cli_gap < HANDOFF_BOUND, summary
    finally:
        cluster.close()
