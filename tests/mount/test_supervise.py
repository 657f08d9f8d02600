"""`litefs mount -- COMMAND`: the application starts once the mount serves, gets the signals,
and the mount stays up until it exits; its exit code is litefs's."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.mount.harness import force_unmount, is_mounted

APP = """
import signal, sqlite3, sys, time
db = sys.argv[1]
con = sqlite3.connect(db)
con.execute("CREATE TABLE IF NOT EXISTS t(x)")
con.commit()
def stop(signum, frame):
    # The last write happens after the signal: the mount must still be there for it.
    con.execute("INSERT INTO t VALUES ('written after SIGTERM')")
    con.commit()
    sys.exit(7)
signal.signal(signal.SIGTERM, stop)
open(sys.argv[2], "w").write("ready")
while True:
    time.sleep(0.05)
"""


def run_mount(tmp: Path, *command: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "litefs_py", "mount", "--mount-dir", str(tmp / "mnt"),
         "--data-dir", str(tmp / "data"), "--", *command],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_exit_code_of_the_application_is_returned(tmp_path: Path) -> None:
    proc = run_mount(tmp_path, sys.executable, "-c", (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('CREATE TABLE t(x)');"
        " c.commit(); sys.exit(3)"), str(tmp_path / "mnt" / "a.db"))
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        force_unmount(tmp_path / "mnt")
    assert proc.returncode == 3, out.decode()
    assert not is_mounted(tmp_path / "mnt")
    assert (tmp_path / "data" / "dbs" / "a.db" / "ltx" /
            "0000000000000001-0000000000000001.ltx").exists()


def test_sigterm_goes_to_the_application_before_unmounting(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = run_mount(tmp_path, sys.executable, "-c", APP, str(tmp_path / "mnt" / "a.db"),
                     str(ready))
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, "application never started"
            assert proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        force_unmount(tmp_path / "mnt")
    assert proc.returncode == 7, out.decode()
    assert "passing it to the application" in out.decode()
    import sqlite3

    rows = sqlite3.connect(tmp_path / "data" / "dbs" / "a.db" / "database").execute(
        "SELECT x FROM t").fetchall()
    assert rows == [("written after SIGTERM",)]


def test_a_command_that_cannot_start_exits_127(tmp_path: Path) -> None:
    proc = run_mount(tmp_path, str(tmp_path / "no-such-program"))
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        force_unmount(tmp_path / "mnt")
    assert proc.returncode == 127
    assert "cannot start" in out.decode()
