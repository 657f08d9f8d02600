"""Nodes of an etcd- or s3-leased cluster as real `litefs mount` processes, and the helpers
the failover tests share: configs, waiting for a primary, the writer's log, the checks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from litefs_py.mountinfo import is_mounted
from tests.mount.harness import LitefsMount, force_unmount
from tests.replica.harness import free_port, wait_for

TTL = "2s"
LOCK_DELAY = "1s"
WRITER = Path(__file__).with_name("writer.py")
DB = "app.db"


@dataclass
class LeaseSpec:
    """Which lease the cluster uses: etcd (endpoints) or s3 (the bucket URL, required)."""

    type: str
    etcd_endpoints: list[str] = field(default_factory=list)
    key: str = "litefs-test/primary"

    def section(self) -> dict[str, Any]:
        if self.type == "etcd":
            return {"etcd": {"endpoints": self.etcd_endpoints, "key": self.key, "ttl": TTL,
                             "lock-delay": LOCK_DELAY}}
        return {"s3": {"key": self.key.replace("/", "-") + ".json", "ttl": TTL,
                       "lock-delay": LOCK_DELAY, "max-clock-skew": "0s"}}


class Node:
    """One node: its mount process, config and HTTP port."""

    def __init__(self, root: Path, name: str, mount: LitefsMount, port: int,
                 host: str = "127.0.0.1") -> None:
        self.root = root
        self.name = name
        self.mount = mount
        self.port = port
        self.url = f"http://{host}:{port}"
        self.stuck_kills = 0

    @property
    def mnt(self) -> Path:
        return self.mount.mount_dir

    def db(self, name: str = DB) -> str:
        return self.mount.db(name)

    def start(self) -> None:
        self.mount.start()

    def alive(self) -> bool:
        return self.mount.proc is not None and self.mount.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would. A dying FUSE daemon can wait on a request to its own
        mount that nobody will answer (the kernel waits for requests already read): after
        a few seconds the connection is aborted, as the kernel does when a machine dies, and
        the test's output says so (`stuck_kills`)."""
        proc = self.mount.proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        try:
            proc.wait(5)
            return
        except subprocess.TimeoutExpired:
            pass
        self.stuck_kills += 1
        print(f"{self.name}: still exiting 5 s after SIGKILL: {kernel_stacks(proc.pid)}",
              file=sys.stderr)
        abort_fuse_connection(self.mnt)
        proc.wait(20)

    def signal(self, sig: int) -> None:
        assert self.mount.proc is not None
        self.mount.proc.send_signal(sig)

    def status(self) -> dict[str, Any]:
        """The `cluster` part of this process's status.json ({} if none or stale)."""
        try:
            doc = json.loads((self.mount.data_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        if self.mount.proc is None or doc.get("pid") != self.mount.proc.pid:
            return {}
        cluster = doc.get("cluster")
        return cluster if isinstance(cluster, dict) else {}

    def role(self) -> str | None:
        return self.status().get("role")

    def mounted(self) -> bool:
        """A live litefs mount answers at the mount point (not the bare directory of a node
        that is starting or stopped)."""
        try:
            return os.stat(self.mnt).st_dev != os.stat(self.mnt.parent).st_dev
        except OSError:
            return False

    def is_primary(self) -> bool:
        """The mount's own answer (no `.primary`, no `.lag`), as an app sees it."""
        if not self.alive() or not self.mounted():
            return False
        try:
            return not (self.mnt / ".primary").exists() and not (self.mnt / ".lag").exists()
        except OSError:
            return False

    def says_primary(self) -> bool:
        """The node's own replication API says it is the primary now (GET info's role)."""
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + "/litefs/v1/info", timeout=2) as resp:
                return bool(json.loads(resp.read()).get("role") == "primary")
        except (OSError, ValueError):
            return False

    def log(self) -> str:
        return self.mount.log()

    def pos(self, name: str = DB) -> tuple[int, int] | None:
        try:
            return self.mount.pos(name)
        except (OSError, ValueError):
            return None

    def quarantine(self, name: str = DB) -> list[Path]:
        d = self.mount.data_dir / "dbs" / name / "quarantine"
        return sorted(d.glob("*-divergent-*.ltx")) if d.is_dir() else []


def kernel_stacks(pid: int) -> str:
    """Where each thread of `pid` waits in the kernel (for a report of a stuck process)."""
    out = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            state = (task / "stat").read_text().split(")")[-1].split()[0]
            stack = (task / "stack").read_text().strip().replace("\n", " | ")
        except OSError:
            continue
        out.append(f"[{task.name} {state}] {stack[:300]}")
    return "\n".join(out)


def abort_fuse_connection(mount_dir: Path) -> bool:
    """Abort the FUSE connection of the mount at `mount_dir` (/sys/fs/fuse/connections;
    the fusectl filesystem is mounted there first if it is not, as systemd does at boot)."""
    want = os.path.abspath(mount_dir)
    if not any(Path("/sys/fs/fuse/connections").glob("*")):
        subprocess.run(["mount", "-t", "fusectl", "none", "/sys/fs/fuse/connections"],
                       capture_output=True, timeout=10)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4] == want:
                minor = fields[2].split(":")[1]
                with contextlib.suppress(OSError), \
                        open(f"/sys/fs/fuse/connections/{minor}/abort", "w") as abort:
                    abort.write("1")
                    return True
    return False


class HACluster:
    """`n` nodes under `root`; every node is stopped (and unmounted) by `close`."""

    def __init__(self, root: Path, lease: LeaseSpec, *, bucket_url: str | None = None,
                 commit: str = "local", extra: dict[str, Any] | None = None) -> None:
        self.root = root
        self.lease = lease
        self.bucket_url = bucket_url
        self.commit = commit
        self.extra = extra or {}
        self.nodes: list[Node] = []
        self.writers: list[Writer] = []

    def writer(self, out: Path, *, rate: float = 50.0, seconds: float = 600.0) -> Writer:
        w = Writer(out, self.nodes, rate=rate, seconds=seconds)
        self.writers.append(w)
        return w

    def config(self, name: str, port: int, *, candidate: bool = True,
               host: str = "127.0.0.1", **over: Any) -> Path:
        doc: dict[str, Any] = {
            "http": {"addr": f"{host}:{port}"},
            "lease": {"type": self.lease.type, "candidate": candidate,
                      "advertise-url": f"http://{host}:{port}", "hostname": name,
                      "demote-delay": over.pop("demote_delay", "1s"),
                      **self.lease.section()},
            "replication": {"commit": self.commit, "commit-timeout": "3s"},
            "data": {"retention": "10m"},
        }
        if self.bucket_url is not None:
            doc["replica"] = {"url": self.bucket_url, "batch-window": "10ms"}
        doc.update(self.extra)
        path = self.root / f"{name}.yml"
        path.write_text(yaml.safe_dump(doc))
        return path

    def add(self, name: str, *, start: bool = True, candidate: bool = True,
            mount_cls: Callable[..., LitefsMount] = LitefsMount, host: str = "127.0.0.1",
            **over: Any) -> Node:
        port = free_port()
        cfg = self.config(name, port, candidate=candidate, host=host, **over)
        mount = mount_cls(self.root / name / "mnt", self.root / name / "data",
                          self.root / f"{name}.log", ["--config", str(cfg)])
        node = Node(self.root, name, mount, port, host)
        self.nodes.append(node)
        if start:
            node.start()
        return node

    def start_nodes(self, n: int) -> None:
        """Add and start nodes n1..n<n>, in parallel (each start waits for its mount)."""
        starts = [threading.Thread(target=self.add, args=(f"n{i + 1}",)) for i in range(n)]
        for s in starts:
            s.start()
        for s in starts:
            s.join(60)
        assert len(self.nodes) == n and all(node.alive() for node in self.nodes), \
            self.logs_tail()

    def primaries(self) -> list[Node]:
        return [n for n in self.nodes if n.is_primary()]

    def wait_primary(self, timeout: float = 30.0, *, not_: Node | None = None) -> Node:
        found: list[Node] = []

        def one() -> bool:
            # As an app sees it (no .primary, no .lag), confirmed by the node itself: a
            # mount caught between states must not be taken for the primary.
            found[:] = [n for n in self.primaries() if n is not not_]
            return len(found) == 1 and found[0].says_primary()

        wait_for(one, timeout, "a primary\n" + self.logs_tail(), interval=0.02)
        return found[0]

    def logs_tail(self, n: int = 2500) -> str:
        return "\n".join(f"--- {node.name} ---\n{node.log()[-n:]}" for node in self.nodes)

    def close(self) -> None:
        """Stop the writers and every node, whatever fails on the way."""
        errors: list[BaseException] = []
        for w in self.writers:
            try:
                w.stop()
            except Exception as exc:
                errors.append(exc)
        for node in reversed(self.nodes):
            try:
                if node.mount.proc is not None and node.mount.proc.poll() is None:
                    node.mount.proc.send_signal(signal.SIGCONT)
                node.mount.stop(timeout=15)
            except Exception as exc:
                errors.append(exc)
                abort_fuse_connection(node.mnt)
                if node.mount.proc is not None:
                    node.mount.proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        node.mount.proc.wait(20)
        for w in self.writers:
            if w.proc.poll() is None:
                w.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    w.proc.wait(10)
        for node in self.nodes:  # no mount may outlive the test, dead or alive
            if is_mounted(node.mnt):
                abort_fuse_connection(node.mnt)
                force_unmount(node.mnt)
        if errors:
            raise errors[0]


def create_table(cluster: HACluster, timeout: float = 60.0) -> Node:
    """Create the writer's table on the primary; on a loaded machine the first primary may
    lose its lease right away (then its commit fails with EIO): retry on the next one.
    Returns the primary it was created on."""
    import sqlite3

    deadline = time.monotonic() + timeout
    while True:
        node = cluster.wait_primary(max(1.0, deadline - time.monotonic()))
        try:
            con = sqlite3.connect(node.db(), isolation_level=None, timeout=10)
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, "
                            "v TEXT NOT NULL)")
            finally:
                con.close()
            return node
        except sqlite3.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def rows(node: Node, db: str = DB) -> dict[int, str]:
    import sqlite3

    con = sqlite3.connect(f"file:{node.db(db)}?mode=ro", uri=True, isolation_level=None,
                          timeout=10)
    try:
        return dict(con.execute("SELECT k, v FROM t").fetchall())
    finally:
        con.close()


class Writer:
    """The writer process (writer.py) and its log."""

    def __init__(self, out: Path, nodes: list[Node], *, rate: float = 50.0,
                 seconds: float = 600.0) -> None:
        self.out = out
        with open(str(out) + ".err", "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(WRITER), str(out), str(rate), str(seconds), DB,
                 *(f"{n.name}={n.mnt}" for n in nodes)],
                stdin=subprocess.DEVNULL, stderr=err)

    def records(self) -> list[dict[str, Any]]:
        try:
            lines = self.out.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):  # a line being written
                out.append(json.loads(line))
        return out

    def acked(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("ok")]

    def wait_commits_on(self, node: Node, after: float, timeout: float) -> dict[str, Any]:
        """The first acknowledged commit on `node` that started after `after`."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [r for r in self.acked() if r["node"] == node.name and r["t0"] >= after]
            return bool(found)

        wait_for(seen, timeout, f"a commit on {node.name}", interval=0.02)
        return found[0]

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        Path(str(self.out) + ".stop").touch()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def assert_no_overlap(records: list[dict[str, Any]]) -> None:
    """No two nodes accepted commits at once: ordered by acknowledgement, the (epoch, node)
    of successive commits only ever moves to a newer epoch, and one epoch has one node."""
    acked = sorted((r for r in records if r.get("ok")), key=lambda r: r["t1"])
    node_of: dict[int, str] = {}
    last_epoch = 0
    for r in acked:
        epoch = int(r.get("epoch") or 0)
        if not epoch and "pos_error" in r:
            continue  # acknowledged, then the mount died before `-pos` was read: no epoch
        assert epoch, f"a commit without an epoch: {r}"
        assert node_of.setdefault(epoch, r["node"]) == r["node"], (
            f"epoch {epoch} has commits on {node_of[epoch]} and {r['node']}")
        assert epoch >= last_epoch, (
            f"a commit in epoch {epoch} on {r['node']} acknowledged at {r['t1']:.3f}, after "
            f"commits of epoch {last_epoch}: two primaries accepted commits at once")
        last_epoch = epoch


def ltx_pages_contain(paths: list[Path], marker: bytes) -> bool:
    from litefs_py.ltx import decode_bytes

    for p in paths:
        decoded = decode_bytes(p.read_bytes(), name=str(p))
        if any(marker in page for _pgno, page in decoded.pages):
            return True
    return False


def env_soak() -> bool:
    return os.environ.get("LITEFS_SOAK", "") not in ("", "0")


def now() -> float:
    return time.time()
