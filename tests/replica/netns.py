"""Two network namespaces joined by a veth pair, for a primary and a replica on "different
hosts", and `litefs mount` processes run inside one of them.

Processes enter only the *network* namespace (`nsenter --net=/run/netns/NAME`), not
`ip netns exec`: the latter also unshares the mount namespace (and makes `/` a slave), so a
FUSE mount made inside would not be visible to the test. With nsenter the mount namespace is
the test's own.

    with VethPair.create() as net:
        primary = NetnsMount(net.ns_a, mnt, data, log, ["--config", cfg])
        ...
        net.link(False)  # the cable is pulled
        net.link(True)

Names are unique per run (pid + random); `close()` deletes both namespaces (which destroys
the veth pair) even when the test failed, and is safe to call twice.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.mount.harness import MOUNT_TIMEOUT, LitefsMount, _default_signals

NETNS_DIR = Path("/run/netns")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({done.returncode}): "
                           f"{done.stderr.strip()}")
    return done


def netns_unavailable() -> str | None:
    """None when network namespaces can be created here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nsenter"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return f"`{tool}` is not installed"
    name = f"lfprobe{os.getpid()}{secrets.token_hex(2)}"
    done = ip("netns", "add", name, check=False)
    if done.returncode != 0:
        return f"`ip netns add` failed: {done.stderr.strip()}"
    ip("netns", "del", name, check=False)
    return None


def in_netns(ns: str) -> list[str]:
    """Command prefix that runs a program in network namespace `ns` (and nothing else)."""
    return ["nsenter", f"--net={NETNS_DIR / ns}", "--"]


class VethPair:
    """Namespaces `ns_a` (address `addr_a`) and `ns_b` (`addr_b`), one /24 between them."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.ns_a = f"lfsa-{tag}"
        self.ns_b = f"lfsb-{tag}"
        self.veth_a = f"lva{tag}"[:15]  # interface names are at most 15 bytes
        self.veth_b = f"lvb{tag}"[:15]
        octet2, octet3 = 100 + secrets.randbelow(150), secrets.randbelow(256)
        self.addr_a = f"10.{octet2}.{octet3}.1"
        self.addr_b = f"10.{octet2}.{octet3}.2"
        self._created: list[str] = []

    @classmethod
    def create(cls) -> VethPair:
        pair = cls()
        try:
            pair._setup()
        except BaseException:
            pair.close()
            raise
        return pair

    def _setup(self) -> None:
        for ns in (self.ns_a, self.ns_b):
            ip("netns", "add", ns)
            self._created.append(ns)
        ip("link", "add", self.veth_a, "type", "veth", "peer", "name", self.veth_b)
        self._created.append(f"link:{self.veth_a}")
        ip("link", "set", self.veth_a, "netns", self.ns_a)
        ip("link", "set", self.veth_b, "netns", self.ns_b)
        for ns, dev, addr in ((self.ns_a, self.veth_a, self.addr_a),
                              (self.ns_b, self.veth_b, self.addr_b)):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up")

    def link(self, up: bool) -> None:
        """Bring `ns_a`'s end of the pair up or down (down: no packet passes either way)."""
        ip("-n", self.ns_a, "link", "set", self.veth_a, "up" if up else "down")

    def run(self, ns: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*in_netns(ns), *cmd], capture_output=True, text=True,
                              timeout=timeout)

    def close(self) -> None:
        """Delete both namespaces (the veth pair goes with them). Never raises."""
        for item in reversed(self._created):
            if item.startswith("link:"):
                # Only still here if setup failed before moving it into a namespace.
                ip("link", "del", item[5:], check=False)
            else:
                ip("netns", "del", item, check=False)
        self._created.clear()

    def __enter__(self) -> VethPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NetnsMount(LitefsMount):
    """A `litefs mount` whose process runs in network namespace `ns` (it is the process
    itself: nsenter without --fork execs the command, so signals reach litefs)."""

    def __init__(self, ns: str, mount_dir: Path, data_dir: Path, log_path: Path,
                 extra_args: list[str] | None = None) -> None:
        super().__init__(mount_dir, data_dir, log_path, extra_args)
        self.ns = ns

    def start(self) -> None:
        # LitefsMount.start with the nsenter prefix.
        from tests.mount.harness import is_mounted

        if not is_mounted(self.mount_dir):
            self.mount_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        cmd = [*in_netns(self.ns), sys.executable, "-m", "litefs_py", "mount",
               "--mount-dir", str(self.mount_dir), "--data-dir", str(self.data_dir),
               *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     preexec_fn=_default_signals,
                                     cwd=str(Path(__file__).resolve().parents[2]))
        log.close()
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"litefs mount exited with {self.proc.returncode}:\n"
                                   + self.log())
            if self._serving():
                return
            time.sleep(0.05)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        raise RuntimeError("litefs mount did not come up in time:\n" + self.log())
