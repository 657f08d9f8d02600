"""Failover time: SIGKILL the primary of a 3-node cluster under a steady writer and measure
the time from the kill to the first commit acknowledged on the new primary.

    python bench/failover.py [--kills 5] [--lease etcd|s3|both] [--commit local|replica|bucket]
                             [--rate 50] [--tmp DIR] [--keep]

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
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, add_run_options, log, machine_line, median, percentile, run_in_workdir

sys.path.insert(0, str(REPO))
from tests.failover.harness import HACluster, LeaseSpec, create_table, rows
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=5, help="kills per lease backend (5)")
    ap.add_argument("--lease", choices=["etcd", "s3", "both"], default="both")
    ap.add_argument("--commit", choices=["local", "replica", "bucket"], default="replica",
                    help="replication.commit (replica; s3 runs use bucket when replica is "
                         "asked, as the s3 lease needs the bucket anyway)")
    ap.add_argument("--rate", type=float, default=50.0, help="writer commits/s (50)")
    add_run_options(ap, litefs_src="(unused: the mounts run this tree)")
    args = ap.parse_args()
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="litefs-bench-failover-", dir=args.tmp))
    servers: list[object] = []
    results: list[dict[str, object]] = []
    os.environ["LITEFS_ACCESS_KEY_ID"] = ACCESS_KEY_ID
    os.environ["LITEFS_SECRET_ACCESS_KEY"] = SECRET_ACCESS_KEY

    def run() -> None:
        leases = ["etcd", "s3"] if args.lease == "both" else [args.lease]
        etcd = EtcdCluster(1).start() if "etcd" in leases else None
        servers.append(etcd)
        moto = MotoServer().start() if "s3" in leases or args.commit != "replica" else None
        servers.append(moto)
        for lease in leases:
            commit = "bucket" if lease == "s3" and args.commit == "replica" else args.commit
            results.append(one_backend(root / lease, lease, commit, args.kills, args.rate,
                                       etcd, moto))

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
