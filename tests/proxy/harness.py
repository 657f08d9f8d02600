"""The example web app (examples/webapp) behind the HTTP proxy on a primary and replicas:
each node is a real `litefs mount` whose config file has a `proxy:` section, its own mount
and data directory, replication API, app and proxy ports on loopback.

    cluster = ProxyCluster(tmp)
    primary = cluster.node("primary", primary=True).start()
    replica = cluster.node("replica1").start()
    httpx.Client(base_url=replica.proxy_url).post("/api/notes", json={...})
    cluster.close()   # SIGTERM every node (litefs passes it to the app), unmount
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.mount.harness import LitefsMount
from tests.s3_server import free_port

REPO = Path(__file__).resolve().parents[2]
WEBAPP = REPO / "examples" / "webapp"
START_TIMEOUT = 90.0
SECRET = "proxy-test-secret"


class ProxyMount(LitefsMount):
    """`litefs mount` in a process group of its own (with its app), and `env` added."""

    def __init__(self, *args: Any, env: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.env = env or {}

    def popen_options(self) -> dict[str, Any]:
        # Its own process group: litefs and the app it starts, killed together as a crash
        # of the whole node would (kill_node), and nothing left behind (stop).
        return {"cwd": REPO, "env": {**os.environ, "PYTHONPATH": str(REPO), **self.env},
                "start_new_session": True}

    def kill_node(self) -> None:
        """SIGKILL litefs and its application (the node crashed)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        code = super().stop(timeout)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):  # anything the node left running
                os.killpg(self.proc.pid, signal.SIGKILL)
        return code


class Node:
    def __init__(self, cluster: ProxyCluster, name: str, *, primary: bool,
                 proxy: dict[str, object] | None = None, app: bool = True,
                 env: dict[str, str] | None = None) -> None:
        self.cluster = cluster
        self.name = name
        self.is_primary = primary
        self.app_port = free_port()
        self.proxy_port = free_port()
        self.http_port = cluster.primary_port if primary else free_port()
        self.proxy_url = f"http://127.0.0.1:{self.proxy_port}"
        self.app_url = f"http://127.0.0.1:{self.app_port}"
        root = cluster.root
        self.config_path = root / f"{name}.yml"
        self.mount = ProxyMount(root / name / "mnt", root / name / "data",
                                root / f"{name}.log", ["--config", str(self.config_path)],
                                env=env)
        self.db_path = self.mount.mount_dir / "store.db"
        self.proxy_settings: dict[str, object] = {
            "addr": f"127.0.0.1:{self.proxy_port}", "target": f"127.0.0.1:{self.app_port}",
            "db": "store.db", **(proxy or {})}
        self.app = app

    def write_config(self) -> None:
        env = ["env", f"NOTES_DB={self.db_path}", f"NOTES_BIND=127.0.0.1:{self.app_port}",
               sys.executable]
        doc: dict[str, object] = {
            "http": {"addr": f"127.0.0.1:{self.http_port}", "secret": SECRET},
            "lease": {"type": "static", "candidate": self.is_primary,
                      "advertise-url": self.cluster.primary_url},
            "proxy": self.proxy_settings,
        }
        if self.app:
            doc["exec"] = [{"cmd": [*env, str(WEBAPP / "migrate.py")], "if-candidate": True},
                           {"cmd": [*env, str(WEBAPP / "app.py")]}]
        self.config_path.write_text(yaml.safe_dump(doc))

    def start(self, *, wait_app: bool = True) -> Node:
        self.write_config()
        self.mount.start()
        if not (self.app and wait_app):
            return self
        deadline = time.monotonic() + START_TIMEOUT
        with self.client(self.app_url) as c:
            while True:
                proc = self.mount.proc
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"{self.name}: litefs exited with "
                                         f"{proc.returncode}:\n{self.log()}")
                try:
                    if c.get("/healthz").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.name}: the app did not answer /healthz within "
                                         f"{START_TIMEOUT}s:\n{self.log()[-4000:]}")
                time.sleep(0.1)

    def client(self, base_url: str | None = None, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 30.0)
        # trust_env=False: no HTTP proxy from the environment between us and loopback.
        return httpx.Client(base_url=base_url or self.proxy_url, trust_env=False, **kwargs)

    def stop(self) -> int | None:
        return self.mount.stop(timeout=60.0)

    def log(self) -> str:
        return self.mount.log()


class ProxyCluster:
    """Nodes under one directory; `close` stops all of them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.primary_port = free_port()
        self.primary_url = f"http://127.0.0.1:{self.primary_port}"
        self.nodes: list[Node] = []

    def node(self, name: str, *, primary: bool = False, **kwargs: Any) -> Node:
        n = Node(self, name, primary=primary, **kwargs)
        self.nodes.append(n)
        return n

    def close(self) -> None:
        errors: list[BaseException] = []
        for n in reversed(self.nodes):
            try:
                n.stop()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def wait_for(pred: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
