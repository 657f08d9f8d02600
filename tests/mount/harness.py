"""Start, stop and kill a real `litefs mount` process; always leave no mount behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from litefs_py.mountinfo import is_mounted

MOUNT_TIMEOUT = 20.0


def force_unmount(path: Path) -> None:
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, timeout=10)


class LitefsMount:
    """One `litefs mount` process. Use as a context manager or call start()/stop()."""

    def __init__(self, mount_dir: Path, data_dir: Path, log_path: Path,
                 extra_args: list[str] | None = None) -> None:
        self.mount_dir = Path(os.path.abspath(mount_dir))
        self.data_dir = Path(os.path.abspath(data_dir))
        self.log_path = log_path
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def db(self, name: str) -> str:
        return str(self.mount_dir / name)

    def start(self) -> None:
        if not is_mounted(self.mount_dir):  # a dead mount cannot be stat'ed: litefs clears it
            self.mount_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        cmd = [*self.entry_point(), "--mount-dir", str(self.mount_dir),
               "--data-dir", str(self.data_dir), *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     preexec_fn=_default_signals, **self.popen_options())
        log.close()
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"litefs mount exited with {self.proc.returncode}:\n"
                                   + self.log())
            if self._serving():
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("litefs mount did not come up in time:\n" + self.log())

    def entry_point(self) -> list[str]:
        """The command before the mount's options (subclasses run another entry point)."""
        return [sys.executable, "-m", "litefs_py", "mount"]

    def popen_options(self) -> dict[str, Any]:
        return {}

    def _serving(self) -> bool:
        # Up once a live FUSE filesystem answers at the mount point: a stale mount says
        # ENOTCONN, and the bare directory (between clearing a stale mount and mounting
        # anew) is on its parent's device.
        if not is_mounted(self.mount_dir):
            return False
        try:
            os.listdir(self.mount_dir)
            return os.stat(self.mount_dir).st_dev != os.stat(self.mount_dir.parent).st_dev
        except OSError:
            return False

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait for a clean unmount; falls back to SIGKILL + lazy unmount."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        force_unmount(self.mount_dir)
        return None if proc is None else proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would; leaves the dead mount to be cleared by the next start."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def pos(self, name: str) -> tuple[int, int]:
        text = (self.mount_dir / f"{name}-pos").read_text()
        txid, checksum = text.strip().split("/")[:2]  # an epoch may follow (etcd/s3 lease)
        return int(txid, 16), int(checksum, 16)

    def __enter__(self) -> LitefsMount:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _default_signals() -> None:
    # Harnesses may run with SIGINT ignored (background jobs); the mount must see it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
