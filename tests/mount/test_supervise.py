"""`litefs mount -- COMMAND`: the application starts once the mount serves, gets the signals,
and the mount stays up until it exits; its exit code is litefs's."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from litefs_py.store.ltx_log import read_log
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
    assert [r.range for r in read_log(tmp_path / "data" / "dbs" / "a.db" / "ltx")] == [(1, 1)]


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


# ---- exec: several commands, if-candidate, exit statuses ------------------------------------

def run_config(tmp: Path, config: str) -> subprocess.Popen[bytes]:
    path = tmp / "litefs.yml"
    path.write_text(f"fuse: {{dir: {tmp / 'mnt'}}}\ndata: {{dir: {tmp / 'data'}}}\n" + config)
    return subprocess.Popen([sys.executable, "-m", "litefs_py", "mount", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[bytes], tmp: Path) -> str:
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        force_unmount(tmp / "mnt")
    return out.decode()


def wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Until the command under the mount has created `path` (it is running)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        assert proc.poll() is None, "litefs exited early"
        time.sleep(0.05)


def step(tmp: Path, name: str, code: str = "") -> str:
    """An exec entry: a Python step that records its name in tmp/steps (with the mount's
    database listing, to show the mount serves while it runs), then runs `code`."""
    body = (f"import os, sys; open({str(tmp / 'steps')!r}, 'a').write({name!r} + ' ' + "
            f"','.join(sorted(os.listdir({str(tmp / 'mnt')!r}))) + '\\n'); {code}")
    return f"[{sys.executable}, -c, {body!r}]"


MIGRATE = ("import sqlite3; c = sqlite3.connect(sys.argv[1] if len(sys.argv) > 1 else "
           "os.path.join({mnt!r}, 'app.db')); c.execute('CREATE TABLE IF NOT EXISTS t(x)'); "
           "c.commit()")


def test_exec_runs_every_command_in_order_then_supervises_the_last(tmp_path: Path) -> None:
    migrate = MIGRATE.format(mnt=str(tmp_path / "mnt"))
    proc = run_config(tmp_path, f"""
exec:
  - cmd: {step(tmp_path, "migrate", migrate)}
    if-candidate: true
  - cmd: {step(tmp_path, "seed", "import time; time.sleep(0.3)")}
  - cmd: {step(tmp_path, "app", "sys.exit(4)")}
""")
    out = finish(proc, tmp_path)
    assert proc.returncode == 4, out
    # Each step ran after the one before had finished; the table the first made was there.
    assert (tmp_path / "steps").read_text().splitlines() == [
        "migrate ", "seed app.db,app.db-pos", "app app.db,app.db-pos"], out
    assert "exec[0]: running" in out and "exec[2]: starting" in out
    assert not is_mounted(tmp_path / "mnt")


def test_a_failing_start_up_command_stops_the_start_up(tmp_path: Path) -> None:
    proc = run_config(tmp_path, f"""
exec:
  - cmd: {step(tmp_path, "migrate", "sys.exit(5)")}
  - cmd: {step(tmp_path, "app")}
""")
    out = finish(proc, tmp_path)
    assert proc.returncode == 5, out
    assert (tmp_path / "steps").read_text() == "migrate \n"  # the app never started
    assert "exec[0]: " in out and "exited with 5; not starting the rest of exec" in out
    assert not is_mounted(tmp_path / "mnt")


def test_if_candidate_commands_are_skipped_on_a_read_replica(tmp_path: Path) -> None:
    from tests.s3_server import free_port

    # A read replica whose primary is not up: the mount serves (read-only) all the same.
    proc = run_config(tmp_path, f"""
lease: {{type: static, candidate: false, advertise-url: "http://127.0.0.1:{free_port()}"}}
exec:
  - cmd: {step(tmp_path, "migrate")}
    if-candidate: true
  - cmd: {step(tmp_path, "app", "sys.exit(0)")}
""")
    out = finish(proc, tmp_path)
    assert proc.returncode == 0, out
    # Only the app ran (a read replica shows its .lag and .primary files).
    assert (tmp_path / "steps").read_text() == "app .lag,.primary\n", out
    assert "exec[0]: skipping" in out and "not a lease candidate" in out


def test_an_application_killed_by_sigterm_gives_143(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    # Default SIGTERM action: the application dies of the signal litefs passes on.
    app = f"import time; open({str(ready)!r}, 'w').close(); time.sleep(120)"
    proc = run_mount(tmp_path, sys.executable, "-c", app)
    try:
        wait_for(ready, proc)
        proc.send_signal(signal.SIGTERM)
    finally:
        out = finish(proc, tmp_path)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "was killed by SIGTERM (exit status 143)" in out


def test_sigterm_during_a_start_up_command_stops_the_start_up(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = run_config(tmp_path, f"""
exec:
  - cmd: {step(tmp_path, "migrate", f"import time; open({str(ready)!r}, 'w').close(); "
                                    "time.sleep(120)")}
  - cmd: {step(tmp_path, "app")}
""")
    try:
        wait_for(ready, proc)
        proc.send_signal(signal.SIGTERM)
    finally:
        out = finish(proc, tmp_path)
    assert proc.returncode == 143, out
    assert (tmp_path / "steps").read_text() == "migrate \n", out
