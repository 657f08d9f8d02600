"""A primary and a replica in separate network namespaces ("two hosts" joined by a veth
pair): replication over a real non-loopback link, and recovery when the link drops."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.mount.harness import LitefsMount
from tests.needs import SETUP_HINT, missing
from tests.replica.harness import (
    exits_on_sigterm,
    free_port,
    read_pos,
    wait_for,
    wait_same_pos,
    write_config,
)
from tests.replica.netns import NetnsMount, VethPair, netns_unavailable
from tests.replica.tls_certs import TestCA

DB = "app.db"
SECRET = "netns-secret"


@pytest.fixture
def net() -> Iterator[VethPair]:
    why = netns_unavailable()
    if why is not None:
        missing(f"network namespaces ({why})",
                f"run as root with iproute2 installed ({SETUP_HINT})")
    pair = VethPair.create()
    try:
        yield pair
    finally:
        pair.close()


@dataclass
class Nodes:
    primary: NetnsMount
    replica: NetnsMount
    port: int  # the primary's, at net.addr_a


@pytest.fixture
def nodes(net: VethPair, tmp_path: Path) -> Iterator[Nodes]:
    """A primary in `net.ns_a` and its replica in `net.ns_b`, stopped before the namespaces
    are deleted (the `net` fixture is torn down after this one)."""
    port = free_port()
    # Across a real link the secret travels only inside TLS (#14): a CA made here signs the
    # primary's certificate for its address, and the replica trusts that CA.
    ca = TestCA(tmp_path / "pki")
    cert = ca.issue("primary", net.addr_a)
    url = f"https://{net.addr_a}:{port}"
    pcfg = write_config(tmp_path / "primary.yml", candidate=True, port=port,
                        advertise_url=url, secret=SECRET,
                        extra={"http": {"tls": {"cert": str(cert.cert), "key": str(cert.key)}}})
    rcfg = write_config(tmp_path / "replica.yml", candidate=False, port=free_port(),
                        advertise_url=url, secret=SECRET,
                        extra={"http": {"tls": {"ca": str(ca.ca_pem)}}})
    primary = NetnsMount(net.ns_a, tmp_path / "primary" / "mnt", tmp_path / "primary" / "data",
                         tmp_path / "primary.log", ["--config", str(pcfg)])
    replica = NetnsMount(net.ns_b, tmp_path / "replica" / "mnt", tmp_path / "replica" / "data",
                         tmp_path / "replica.log", ["--config", str(rcfg)])
    try:
        primary.start()
        replica.start()
        yield Nodes(primary, replica, port)
    finally:
        replica.stop()
        primary.stop()


def replica_status(m: LitefsMount) -> dict[str, Any]:
    try:
        doc = json.loads((m.data_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    if m.proc is None or doc.get("pid") != m.proc.pid:
        return {}
    rep = doc.get("replica_of")
    return rep if isinstance(rep, dict) else {}


def rows(m: LitefsMount) -> list[tuple[object, ...]]:
    con = sqlite3.connect(m.db(DB), isolation_level=None, timeout=10)
    try:
        return con.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    finally:
        con.close()


def test_replication_across_namespaces_survives_a_link_drop(
        net: VethPair, nodes: Nodes) -> None:
    primary, replica, port = nodes.primary, nodes.replica, nodes.port
    assert "http.secret is not set" not in primary.log()
    assert "replication API on https://" in primary.log()
    # The replica's only way to the primary is the veth pair: nothing listens on its own
    # loopback, and the primary is at another namespace's address.
    listening = net.run(net.ns_b, "ss", "-Htln").stdout
    assert f":{port} " not in listening

    db = sqlite3.connect(primary.db(DB), isolation_level=None)
    db.execute("PRAGMA journal_mode=wal")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(30):
        db.execute("INSERT INTO t (v) VALUES (?)", (f"before {i} " + "x" * 200,))
    wait_same_pos(primary, replica, DB)
    assert rows(replica) == rows(primary)
    assert (replica.mount_dir / ".primary").read_text().strip() == \
        f"https://{net.addr_a}:{port}"
    established = net.run(net.ns_b, "ss", "-Htn", "state", "established").stdout
    assert f"{net.addr_a}:{port}" in established, established
    wait_for(lambda: replica_status(replica).get("source") == "primary", 10, "status")
    reconnects = int(replica_status(replica)["reconnects"])

    reader = sqlite3.connect(replica.db(DB), isolation_level=None, timeout=10)

    # 1. A short blip (under the replica's 5 s read timeout): the stream may survive it.
    net.link(False)
    for i in range(20):
        db.execute("INSERT INTO t (v) VALUES (?)", (f"blip {i}",))
    time.sleep(1.5)
    net.link(True)
    wait_same_pos(primary, replica, DB, timeout=40)
    assert rows(replica) == rows(primary)

    # 2. A long outage: the primary keeps committing; the replica serves its last state,
    # notices the dead link (no heartbeat for 5 s) and reconnects by itself once it is back.
    stuck_at = read_pos(replica, DB)
    count_before = reader.execute("SELECT count(*) FROM t").fetchone()
    net.link(False)
    deadline = time.monotonic() + 7.0
    i = 0
    while time.monotonic() < deadline:
        db.execute("INSERT INTO t (v) VALUES (?)", (f"outage {i}",))
        i += 1
        if i % 10 == 0:
            # Readers on the replica still read (the last state), and nothing arrives.
            assert reader.execute("SELECT count(*) FROM t").fetchone() == count_before
            assert read_pos(replica, DB) == stuck_at
        time.sleep(0.05)
    wait_for(lambda: replica_status(replica).get("source") == "none", 10,
             f"the replica to notice the dead link ({replica_status(replica)})")
    assert float((replica.mount_dir / ".lag").read_text()) > 0
    net.link(True)
    wait_same_pos(primary, replica, DB, timeout=40)
    assert rows(replica) == rows(primary)
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (50 + i,)
    assert reader.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    st = replica_status(replica)
    assert int(st["reconnects"]) > reconnects, st
    assert "interrupted" in replica.log()
    wait_for(lambda: replica_status(replica).get("source") == "primary", 10, "streaming")
    # No snapshot was needed: it resumed from its position (only the first one, when new).
    assert replica_status(replica)["snapshots"] == 1

    # It keeps following.
    db.execute("INSERT INTO t (v) VALUES ('after')")
    wait_same_pos(primary, replica, DB)
    assert reader.execute("SELECT v FROM t ORDER BY id DESC LIMIT 1").fetchone() == ("after",)
    reader.close()
    db.close()


def test_primary_stops_during_a_partition(net: VethPair, nodes: Nodes) -> None:
    primary, replica = nodes.primary, nodes.replica
    db = sqlite3.connect(primary.db(DB), isolation_level=None)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    wait_same_pos(primary, replica, DB)
    assert primary.proc is not None
    net.link(False)
    try:
        for _ in range(25):  # ~5 MB of LTX for the replica, which cannot receive it
            db.execute("INSERT INTO t (v) VALUES (?)", (os.urandom(100_000).hex(),))
        db.close()
        time.sleep(0.5)
        exited = exits_on_sigterm(primary)
    finally:
        net.link(True)
    assert exited, ("the primary did not exit within 10 s of SIGTERM; its log ends with:\n"
                    + primary.log()[-500:])
