"""Who may win the lease: a stale candidate never wins against a caught-up one (real mounts,
real etcd). LiteFS lets an out-of-date candidate take the lease and then overwrites the newer
history with its snapshot; here it must not even campaign while a peer is further on.

A candidate crashes (SIGKILL: it keeps its data and its list of peers), the
primary commits on without it, then the primary is SIGKILLed, the caught-up replica is
paused (SIGSTOP: it cannot answer) and the stale node starts again and finds the lease free:
it must wait for the unreachable peer instead of campaigning. The caught-up replica, resumed
after 4 s, wins every time, the stale one follows it and catches up, and nothing the writer
saw acknowledged is lost (replica commit mode).
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from pathlib import Path

from tests.failover.harness import HACluster, LeaseSpec, create_table, rows
from tests.lease.etcd_server import EtcdCluster
from tests.replica.harness import wait_for

ROUNDS = 2
PAUSE = 4.0  # seconds the caught-up node is paused from the kill on (TTL 2 s, lock-delay 1 s)


def test_stale_candidate_never_wins(tmp_path: Path, etcd: EtcdCluster, lease_key: str) -> None:
    cluster = HACluster(tmp_path, LeaseSpec("etcd", etcd.endpoints, lease_key),
                        commit="replica")
    try:
        cluster.start_nodes(3)
        primary = create_table(cluster)
        writer = cluster.writer(tmp_path / "writer.jsonl", rate=40)
        for _ in range(ROUNDS):
            replicas = [n for n in cluster.nodes if n is not primary]
            stale, fresh = replicas
            # Let the stale one be caught up first, then crash it.
            wait_for(lambda s=stale, p=primary: s.pos() == p.pos(),  # type: ignore[misc]
                     30, "the stale node caught up")
            # It has learned its peers (kept in DATA/peers.json across the restart).
            wait_for(lambda s=stale, f=fresh: f.name in s.status().get("peers", []),  # type: ignore[misc]
                     15, f"{stale.name} knowing {fresh.name} as a peer")
            stale.kill()  # a crash: it restarts as the replica it was (redoing a cut apply)
            since = time.time()
            wait_for(lambda p=primary, t=since: sum(  # type: ignore[misc]
                1 for r in writer.acked() if r["node"] == p.name and r["t0"] >= t) >= 30,
                30, f"commits on {primary.name} while {stale.name} is down")
            ahead = fresh.pos()
            assert ahead is not None
            # Kill the primary; the caught-up node is paused (it cannot answer its peers)
            # while the stale one comes back and finds the lease free: left to itself, the
            # stale one would take it.
            primary.kill()
            killed_at = time.time()
            fresh.signal(signal.SIGSTOP)
            try:
                stale.start()
                time.sleep(max(0.0, killed_at + PAUSE - time.time()))
                assert not stale.is_primary(), (
                    f"the stale {stale.name} took the lease while {fresh.name} was paused\n"
                    f"{cluster.logs_tail()}")
            finally:
                fresh.signal(signal.SIGCONT)
            new = cluster.wait_primary(30, not_=primary)
            assert new is fresh, (
                f"{new.name} won the lease at {new.pos()} while {fresh.name} was at {ahead} "
                f"(the stale node {stale.name})\n{cluster.logs_tail()}")
            writer.wait_commits_on(new, since, 30)
            restart = threading.Thread(target=primary.start)
            restart.start()
            restart.join(60)
            primary = new
        time.sleep(0.5)
        writer.stop()
        want = primary.pos()
        wait_for(lambda: all(n.pos() == want for n in cluster.nodes), 30,
                 f"every node at {want}: {[n.pos() for n in cluster.nodes]}")
        final = rows(primary)
        lost = [r for r in writer.acked() if final.get(r["k"]) != r["v"]]
        assert lost == [], f"{len(lost)} acknowledged transactions lost: {lost[:3]}"
        for n in cluster.nodes:
            assert rows(n) == final, n.name
            # /metrics on every node, primary or replica, from its replication API.
            with urllib.request.urlopen(n.url + "/metrics", timeout=10) as resp:
                text = resp.read().decode()
            line = next(ln for ln in text.splitlines()
                        if ln.startswith('litefs_db_txid{db="app.db"}'))
            assert float(line.split()[-1]) == want[0], (n.name, line)
    finally:
        cluster.close()

