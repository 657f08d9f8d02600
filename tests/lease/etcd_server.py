"""A real etcd for tests: Debian's `etcd-server` binary, one member or a cluster of three, on
loopback ports picked at start, data in a temporary directory (tmpfs when there is one: the
tests need etcd's logic, not its durability), stopped and removed at the end.

Members can be killed (SIGKILL: connections refused) or frozen (SIGSTOP: requests hang, as
behind a network partition) one by one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.s3_server import free_port

START_TIMEOUT = 30.0
INSTALL_HINT = "apt-get install etcd-server (Debian's etcd, which provides /usr/bin/etcd)"


def etcd_binary() -> str:
    """The etcd binary; without one the test fails under CI=true (naming the package to
    install) and is skipped elsewhere."""
    found = shutil.which("etcd") or ("/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK)
                                     else None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"etcd is not installed: {INSTALL_HINT}")
        pytest.skip(f"etcd is not installed: {INSTALL_HINT}")
    return found


def _scratch_dir() -> str:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return tempfile.mkdtemp(prefix="litefs-etcd-", dir=shm)
    return tempfile.mkdtemp(prefix="litefs-etcd-")


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


class EtcdCluster:
    """`size` members named m0..m{size-1}. `endpoints` lists their client URLs."""

    def __init__(self, size: int = 1) -> None:
        self.binary = etcd_binary()
        self.size = size
        self.dir = Path(_scratch_dir())
        self.members: list[EtcdMember] = []

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self) -> EtcdCluster:
        for _attempt in range(3):  # a probed free port may be taken before etcd binds it
            self.members = [EtcdMember(f"m{i}", free_port(), free_port())
                            for i in range(self.size)]
            initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
            for m in self.members:
                self._spawn(m, initial)
            if self._wait_healthy():
                return self
            self.close(remove=False)
        raise RuntimeError(f"etcd did not start; log:\n{self.log_tail()}")

    def _spawn(self, m: EtcdMember, initial: str) -> None:
        args = [
            self.binary, "--name", m.name, "--data-dir", str(self.dir / m.name),
            "--listen-client-urls", m.endpoint, "--advertise-client-urls", m.endpoint,
            "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--initial-cluster-token", self.dir.name,
            # A lost leader is replaced within about a second (the default is 1 s to notice).
            "--heartbeat-interval", "50", "--election-timeout", "500",
        ]
        with open(self.dir / f"{m.name}.log", "ab") as log:
            m.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT)

    def _wait_healthy(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if any(m.proc is not None and m.proc.poll() is not None for m in self.members):
                return False
            if all(self.answers(m) for m in self.members):
                return True
            time.sleep(0.1)
        return False

    @staticmethod
    def answers(m: EtcdMember) -> bool:
        """A linearizable read works through this member (it has a leader)."""
        req = urllib.request.Request(m.endpoint + "/v3/kv/range", data=b'{"key":"aGVhbHRo"}',
                                     method="POST")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=1) as resp:
                return "header" in json.loads(resp.read())
        except (OSError, ValueError):
            return False

    def log_tail(self) -> str:
        out = []
        for m in self.members:
            try:
                text = (self.dir / f"{m.name}.log").read_text(errors="replace")
            except OSError:
                continue
            out.append(f"--- {m.name}\n{text[-1500:]}")
        return "\n".join(out)

    # ---- faults ------------------------------------------------------------------------

    def kill(self, i: int) -> None:
        proc = self.members[i].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=10)

    def freeze(self, i: int) -> None:
        proc = self.members[i].proc
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)

    def thaw(self, i: int) -> None:
        proc = self.members[i].proc
        assert proc is not None
        proc.send_signal(signal.SIGCONT)

    # ---- lifecycle ---------------------------------------------------------------------

    def close(self, remove: bool = True) -> None:
        for i in range(len(self.members)):
            self.kill(i)
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            for m in self.members:
                shutil.rmtree(self.dir / m.name, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
