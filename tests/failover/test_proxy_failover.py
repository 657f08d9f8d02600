"""The HTTP proxy under an elected primary (real etcd, real mounts, the example web app on
every node behind its proxy): a write through a replica's proxy reaches whichever node holds
the lease, and is readable on that replica in the next request; when the primary is killed,
writes through the surviving proxies wait for the new primary (or get 503 + Retry-After) and
then succeed there, with nothing acknowledged lost (`replication.commit: replica`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml

from tests.failover.harness import HACluster, LeaseSpec, Node
from tests.lease.etcd_server import EtcdCluster
from tests.proxy.harness import WEBAPP, ProxyMount
from tests.replica.harness import free_port, wait_for

DB_NAME = "notes.db"


def _with_app_and_proxy(cluster: HACluster, node: Node) -> tuple[str, str]:
    """Add `proxy:` and the web app (`exec:`) to the node's config; returns (proxy URL, app
    URL). The schema is migrated by the test on the primary (migrate.py on a replica would
    fail: every node here is a candidate)."""
    path = cluster.root / f"{node.name}.yml"
    doc = yaml.safe_load(path.read_text())
    app_port, proxy_port = free_port(), free_port()
    doc["proxy"] = {"addr": f"127.0.0.1:{proxy_port}", "target": f"127.0.0.1:{app_port}",
                    "db": DB_NAME, "primary-redirect-timeout": "10s", "debug": True}
    doc["exec"] = [{"cmd": ["env", f"NOTES_DB={node.mnt / DB_NAME}",
                            f"NOTES_BIND=127.0.0.1:{app_port}", sys.executable,
                            str(WEBAPP / "app.py")]}]
    path.write_text(yaml.safe_dump(doc))
    return f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{app_port}"


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, trust_env=False, timeout=30.0)


def _healthy(url: str) -> bool:
    try:
        with _client(url) as c:
            return c.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def test_proxy_follows_the_elected_primary(tmp_path: Path, etcd: EtcdCluster,
                                          lease_key: str) -> None:
    cluster = HACluster(tmp_path, LeaseSpec("etcd", etcd.endpoints, lease_key),
                        commit="replica")
    urls: dict[str, tuple[str, str]] = {}
    try:
        nodes = [cluster.add(f"n{i + 1}", start=False, mount_cls=ProxyMount) for i in range(3)]
        for n in nodes:
            urls[n.name] = _with_app_and_proxy(cluster, n)
        starts = [threading.Thread(target=n.start) for n in nodes]
        for s in starts:
            s.start()
        for s in starts:
            s.join(90)
        primary = cluster.wait_primary(60)
        migrate = subprocess.run(
            [sys.executable, str(WEBAPP / "migrate.py")], capture_output=True, text=True,
            timeout=60, env={**os.environ, "NOTES_DB": str(primary.mnt / DB_NAME)})
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        for n in nodes:
            wait_for(lambda u=urls[n.name][1]: _healthy(u), 60,  # type: ignore[misc]
                     f"{n.name}'s app migrated and answering")

        # A write through a replica's proxy lands on the primary and is read back on that
        # replica in the very next request (the __txid cookie).
        replica = next(n for n in nodes if n is not primary)
        with _client(urls[replica.name][0]) as c:
            r = c.post("/api/notes", json={"body": "via a replica", "author": "test"})
            assert r.status_code == 201, r.text
            assert "__txid" in r.cookies
            note = r.json()
            got = c.get(f"/api/notes/{note['id']}")
            assert got.status_code == 200 and got.json()["body"] == "via a replica"
        acked = [note["id"]]

        # The primary dies. Writes through a surviving proxy wait for the new primary (or
        # get 503 with Retry-After while there is none), then succeed there.
        primary.kill()
        killed_at = time.monotonic()
        survivor = replica
        answers: list[int] = []
        new_id = None
        with _client(urls[survivor.name][0]) as c:
            while time.monotonic() - killed_at < 60:
                try:
                    r = c.post("/api/notes", json={"body": "after the kill", "author": "test"})
                except httpx.TransportError:
                    answers.append(0)
                    time.sleep(0.2)
                    continue
                answers.append(r.status_code)
                if r.status_code == 201:
                    new_id = r.json()["id"]
                    break
                assert r.status_code in (502, 503, 504), r.text
                if r.status_code == 503:
                    assert r.headers.get("retry-after"), r.headers
                time.sleep(0.2)
        assert new_id is not None, f"no write succeeded after the kill: {answers}"
        acked.append(new_id)
        new_primary = cluster.wait_primary(30, not_=primary)
        assert new_primary is not primary
        took = time.monotonic() - killed_at
        print(f"first write through the proxy {took:.1f}s after the kill; answers {answers}")

        # Every acknowledged note is on the new primary, and readable through every
        # surviving proxy (read-your-writes again on the other node).
        with _client(urls[new_primary.name][1]) as c:
            for i in acked:
                assert c.get(f"/api/notes/{i}").status_code == 200, i
        for n in nodes:
            if n is primary:
                continue
            with _client(urls[n.name][0]) as c:
                r = c.post("/api/notes", json={"body": f"on {n.name}", "author": "test"})
                assert r.status_code == 201, r.text
                got = c.get(f"/api/notes/{r.json()['id']}")
                assert got.status_code == 200, got.text
                health = c.get("/litefs/health")
                assert health.status_code == 200, health.text
    finally:
        cluster.close()
