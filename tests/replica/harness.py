"""A primary and its read replicas as real `litefs mount` processes, with their configs."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.mount.harness import LitefsMount


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, *, candidate: bool, port: int, advertise_url: str | None = None,
                 secret: str | None = None, replica_url: str | None = None,
                 extra: dict[str, object] | None = None) -> Path:
    """A litefs.yml for one node. The mount and data directories come from the harness's
    flags; `replica_url` is the bucket (backups on the primary, bucket-follow on a replica)."""
    doc: dict[str, object] = {
        "http": {"addr": f":{port}"},
        "lease": {"type": "static", "candidate": candidate},
    }
    if advertise_url is not None:
        doc["lease"]["advertise-url"] = advertise_url  # type: ignore[index]
    if secret is not None:
        doc["http"]["secret"] = secret  # type: ignore[index]
    if replica_url is not None:
        doc["replica"] = {"url": replica_url}
    for key, value in (extra or {}).items():
        section = doc.get(key)
        if isinstance(value, dict) and isinstance(section, dict):
            section.update(value)  # e.g. http: {tls: ...} keeps http.addr
        else:
            doc[key] = value
    path.write_text(yaml.safe_dump(doc))
    return path


class Cluster:
    """Nodes under one directory; every node is stopped (and unmounted) by `close`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[LitefsMount] = []
        self.port = free_port()
        self.scheme = "http"  # "https" when the primary serves http.tls

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def node(self, name: str, config: Path) -> LitefsMount:
        m = LitefsMount(self.root / name / "mnt", self.root / name / "data",
                        self.root / f"{name}.log", ["--config", str(config)])
        self.nodes.append(m)
        return m

    def primary(self, *, secret: str | None = None, replica_url: str | None = None,
                name: str = "primary", start: bool = True,
                extra: dict[str, object] | None = None) -> LitefsMount:
        cfg = write_config(self.root / f"{name}.yml", candidate=True, port=self.port,
                           advertise_url=self.url, secret=secret, replica_url=replica_url,
                           extra=extra)
        m = self.node(name, cfg)
        if start:
            m.start()
        return m

    def replica(self, *, secret: str | None = None, name: str = "replica",
                primary_url: str | None = "default", replica_url: str | None = None,
                start: bool = True, extra: dict[str, object] | None = None) -> LitefsMount:
        url = self.url if primary_url == "default" else primary_url
        cfg = write_config(self.root / f"{name}.yml", candidate=False, port=free_port(),
                           advertise_url=url, secret=secret, replica_url=replica_url,
                           extra=extra)
        m = self.node(name, cfg)
        if start:
            m.start()
        return m

    def close(self) -> None:
        errors: list[BaseException] = []
        for m in reversed(self.nodes):
            try:
                m.stop()
            except Exception as exc:  # stop the others anyway, then report
                errors.append(exc)
        if errors:
            raise errors[0]


def read_pos(m: LitefsMount, name: str) -> tuple[int, int] | None:
    try:
        return m.pos(name)
    except (OSError, ValueError):
        return None


def wait_for(pred: Callable[[], object], timeout: float, what: str,
             interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def wait_same_pos(primary: LitefsMount, replica: LitefsMount, name: str,
                  timeout: float = 20.0) -> tuple[int, int]:
    """Wait until the replica's `<name>-pos` equals the primary's; returns it."""
    want = read_pos(primary, name)
    assert want is not None, f"{name} has no position on the primary"
    wait_for(lambda: read_pos(replica, name) == want, timeout,
             f"{name} on the replica to reach {want[0]:016x}/{want[1]:016x} "
             f"(it is at {read_pos(replica, name)})\n--- replica log ---\n{replica.log()[-3000:]}")
    return want


def exits_on_sigterm(m: LitefsMount, timeout: float = 10.0) -> bool:
    """SIGTERM the node; whether it exited within `timeout` s (else it is killed)."""
    assert m.proc is not None
    m.proc.send_signal(signal.SIGTERM)
    try:
        m.proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        m.proc.kill()
        m.proc.wait(10)
        return False
