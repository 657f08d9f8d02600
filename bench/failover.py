"""Failover time: SIGKILL the primary of a 3-node cluster under a steady writer and measure
the time from the kill to the first commit acknowledged on the new primary; beside it, in the
same run, the commit latency of each commit mode and the loss per failover in `local` mode.

    python bench/failover.py [--kills 5] [--lease etcd|s3|both] [--commit local|replica|bucket]
                             [--rate 50] [--latency-commits 300] [--loss-kills 4]
                             [--loss-rate 100] [--handoffs 5] [--tmp DIR] [--keep]

Commit latency (--latency-commits N, 0 skips): for `local`, `replica` and `bucket` in turn,
two nodes on the etcd lease with the bucket on moto, N sequential commits (BEGIN IMMEDIATE;
one INSERT; COMMIT, WAL, synchronous=FULL) from this process on the primary after 20 warm-up
ones: p50/p99 per mode and the ratio of each to `local` (same run, same machine). The same
`local` cluster then does --handoffs planned handoffs (POST /litefs/v1/handoff) under a writer
at --rate and reports the write gap: last commit acknowledged by the old primary -> first by
the new one.

Loss in `local` mode (--loss-kills K, 0 skips): the kill run again with `local` commit mode
and the writer at --loss-rate commits/s: acknowledged commits the final primary lacks, per
failover.

Real mounts (litefs mount processes), a real etcd (Debian's etcd-server, one member on a
free loopback port) or the s3 lease on moto_server, the writer in its own process
(tests/failover/writer.py: one INSERT per 1/rate s on whichever mount has no `.primary`).
Lease ttl 2 s, lock-delay 1 s (tests/failover/harness.py): the target is ttl + lock-delay +
2 s = 5 s. Prints, per lease backend: every kill's time, p50/p99, acknowledged commits and
how many of them the final primary lacks (with `local` commit mode these are the loss
window; with `replica`/`bucket` it must be 0). The killed node restarts as a replica after
each failover. The work directory is removed at the end (--keep keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import REPO, add_run_options, log, machine_line, median, percentile, run_in_workdir

sys.path.insert(0, str(REPO))
from tests.failover.harness import HACluster, LeaseSpec, Node, create_table, rows
from tests.lease.etcd_server import EtcdCluster
from tests.replica.harness import wait_for
from tests.s3_server import (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    MotoServer,
    create_bucket,
)

TARGET = 2.0 + 1.0 + 2.0


def one_backend(root: Path, lease: str, commit: str, kills: int, rate: float,
                etcd: EtcdCluster | None, moto: MotoServer | None) -> dict[str, object]:
    bucket_url = None
    if moto is not None and (lease == "s3" or commit != "replica"):
        bucket_url = f"s3://{create_bucket(moto.endpoint)}/db?endpoint={moto.endpoint}"
    spec = LeaseSpec("etcd", etcd.endpoints, f"bench/{os.getpid()}/{lease}") \
        if lease == "etcd" and etcd is not None else LeaseSpec("s3", key=f"bench-{lease}")
    root.mkdir(parents=True, exist_ok=True)
    cluster = HACluster(root, spec, bucket_url=bucket_url, commit=commit)
    try:
        cluster.start_nodes(3)
        primary = create_table(cluster)
        writer = cluster.writer(root / "writer.jsonl", rate=rate)
        times: list[float] = []
        for k in range(kills):
            since = time.time()
            wait_for(lambda p=primary, t=since: sum(  # type: ignore[misc]
                1 for r in writer.acked() if r["node"] == p.name and r["t0"] >= t) >= 15,
                60, f"commits on {primary.name}")
            killed_at = time.time()
            primary.kill()
            new = cluster.wait_primary(60, not_=primary)
            first = writer.wait_commits_on(new, killed_at, 60)
            times.append(first["t1"] - killed_at)
            log(f"{lease}: kill {k + 1}/{kills}: {primary.name} -> {new.name} in "
                f"{times[-1]:.2f} s")
            primary.start()  # back as a replica before the next kill
            primary = new
        time.sleep(0.5)
        writer.stop()
        want = primary.pos()
        wait_for(lambda: all(n.pos() == want for n in cluster.nodes), 60, "convergence")
        final = rows(primary)
        acked = writer.acked()
        lost = sum(1 for r in acked if final.get(r["k"]) != r["v"])
        return {"lease": lease, "commit": commit, "kills": kills,
                "failover_s": [round(t, 2) for t in times],
                "p50_s": round(median(times), 2), "p99_s": round(percentile(times, 99), 2),
                "target_s": TARGET, "acked": len(acked), "lost_acked": lost,
                "stuck_kills": sum(n.stuck_kills for n in cluster.nodes)}
    finally:
        cluster.close()


def commit_latencies(node: Node, n: int, warmup: int = 20) -> list[float]:
    """Seconds per commit of `n` sequential one-row transactions on `node`'s mount."""
    con = sqlite3.connect(node.db(), isolation_level=None, timeout=10)
    try:
        con.execute("PRAGMA synchronous=FULL")
        out: list[float] = []
        for i in range(warmup + n):
            t0 = time.perf_counter()
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT INTO t(v) VALUES (?)", (f"lat{i}-{os.urandom(8).hex()}",))
            con.execute("COMMIT")
            if i >= warmup:
                out.append(time.perf_counter() - t0)
        return out
    finally:
        con.close()


def handoff_gaps(root: Path, cluster: HACluster, primary: Node, count: int,
                 rate: float) -> list[float]:
    """Planned handoffs under a writer; each one's gap between the old primary's last
    acknowledged commit and the new primary's first."""
    writer = cluster.writer(root / "handoff-writer.jsonl", rate=rate)
    gaps: list[float] = []
    try:
        for _ in range(count):
            since = time.time()
            wait_for(lambda p=primary, t=since: sum(  # type: ignore[misc]
                1 for r in writer.acked() if r["node"] == p.name and r["t0"] >= t) >= 20,
                60, f"commits on {primary.name}")
            req = urllib.request.Request(primary.url + "/litefs/v1/handoff", data=b"{}",
                                         method="POST",
                                         headers={"content-type": "application/json"})
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            asked = time.time()
            with opener.open(req, timeout=30) as resp:
                resp.read()
            new = cluster.wait_primary(30, not_=primary)
            first = writer.wait_commits_on(new, asked, 30)
            before = [r for r in writer.acked()
                      if r["node"] == primary.name and r["t1"] <= first["t1"]]
            gaps.append(first["t1"] - before[-1]["t1"])
            log(f"handoff {len(gaps)}/{count}: {primary.name} -> {new.name}, write gap "
                f"{gaps[-1]:.3f} s")
            primary = new
    finally:
        writer.stop()
    return gaps


def latency_by_mode(root: Path, commits: int, handoffs: int, rate: float,
                    etcd: EtcdCluster, moto: MotoServer) -> dict[str, object]:
    """Commit latency per commit mode (two nodes each), and planned-handoff gaps on the
    `local` cluster."""
    out: dict[str, object] = {}
    lat: dict[str, list[float]] = {}
    for mode in ("local", "replica", "bucket"):
        d = root / f"latency-{mode}"
        d.mkdir(parents=True)
        bucket_url = f"s3://{create_bucket(moto.endpoint)}/db?endpoint={moto.endpoint}"
        spec = LeaseSpec("etcd", etcd.endpoints, f"bench/{os.getpid()}/latency-{mode}")
        cluster = HACluster(d, spec, bucket_url=bucket_url, commit=mode)
        try:
            cluster.start_nodes(2)
            primary = create_table(cluster)
            want = primary.pos()
            nodes = list(cluster.nodes)
            wait_for(lambda: all(n.pos() == want for n in nodes), 60,  # noqa: B023
                     "the replica caught up")
            lat[mode] = commit_latencies(primary, commits)
            log(f"latency {mode}: p50 {median(lat[mode]) * 1000:.2f} ms")
            if mode == "local" and handoffs:
                gaps = handoff_gaps(d, cluster, primary, handoffs, rate)
                out["handoff_gap_s"] = [round(g, 3) for g in gaps]
                out["handoff_gap_p50_s"] = round(median(gaps), 3)
                out["handoff_gap_max_s"] = round(max(gaps), 3)
        finally:
            cluster.close()
    base = median(lat["local"])
    out["commit_latency_ms"] = {
        mode: {"p50": round(median(v) * 1000, 2), "p99": round(percentile(v, 99) * 1000, 2),
               "p50_ratio_to_local": round(median(v) / base, 2),
               "p99_ratio_to_local": round(percentile(v, 99) / percentile(lat["local"], 99),
                                           2)}
        for mode, v in lat.items()}
    out["commits_per_mode"] = commits
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=5, help="kills per lease backend (5)")
    ap.add_argument("--lease", choices=["etcd", "s3", "both"], default="both")
    ap.add_argument("--commit", choices=["local", "replica", "bucket"], default="replica",
                    help="replication.commit (replica; s3 runs use bucket when replica is "
                         "asked, as the s3 lease needs the bucket anyway)")
    ap.add_argument("--rate", type=float, default=50.0, help="writer commits/s (50)")
    ap.add_argument("--latency-commits", type=int, default=300,
                    help="sequential commits per commit mode for the latency part (300; 0 "
                         "skips it)")
    ap.add_argument("--handoffs", type=int, default=5,
                    help="planned handoffs measured on the local-mode latency cluster (5)")
    ap.add_argument("--loss-kills", type=int, default=4,
                    help="kills of the local-mode loss run (4; 0 skips it)")
    ap.add_argument("--loss-rate", type=float, default=100.0,
                    help="writer commits/s of the local-mode loss run (100)")
    add_run_options(ap, litefs_src="(unused: the mounts run this tree)")
    args = ap.parse_args()
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="litefs-bench-failover-", dir=args.tmp))
    servers: list[object] = []
    results: list[dict[str, object]] = []
    os.environ["LITEFS_ACCESS_KEY_ID"] = ACCESS_KEY_ID
    os.environ["LITEFS_SECRET_ACCESS_KEY"] = SECRET_ACCESS_KEY

    def run() -> None:
        leases = (["etcd", "s3"] if args.lease == "both" else [args.lease]) \
            if args.kills else []
        extra = bool(args.latency_commits or args.loss_kills)
        etcd = EtcdCluster(1).start() if "etcd" in leases or extra else None
        servers.append(etcd)
        moto = MotoServer().start() \
            if "s3" in leases or args.commit != "replica" or extra else None
        servers.append(moto)
        for lease in leases:
            commit = "bucket" if lease == "s3" and args.commit == "replica" else args.commit
            results.append(one_backend(root / lease, lease, commit, args.kills, args.rate,
                                       etcd, moto))
        if args.latency_commits and etcd is not None and moto is not None:
            results.append(latency_by_mode(root, args.latency_commits, args.handoffs,
                                           args.rate, etcd, moto))
        if args.loss_kills and etcd is not None:
            loss = one_backend(root / "loss-local", "etcd", "local", args.loss_kills,
                               args.loss_rate, etcd, moto)
            kills = int(loss["kills"])  # type: ignore[call-overload]
            loss["rate"] = args.loss_rate
            loss["lost_per_failover"] = round(int(loss["lost_acked"]) / kills, 2)  # type: ignore[call-overload]
            results.append(loss)

    def stop() -> None:
        for s in servers:
            if isinstance(s, EtcdCluster):
                s.close()
            elif isinstance(s, MotoServer):
                s.stop()

    run_in_workdir(root, args.keep, run, stop, mounts="*/*/mnt")
    print(machine_line(started))
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
