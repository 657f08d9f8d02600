"""Configuration keys that change how a real `litefs mount` behaves: `log.format: json`,
`exit-on-error`, and a Litestream configuration file used as it is."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from litefs_py.errors import ExitCode
from tests.mount.harness import force_unmount, is_mounted
from tests.test_config_litestream import litestream_binary

WRITE = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
         "c.execute('CREATE TABLE t(x)'); c.executemany('INSERT INTO t VALUES (?)', "
         "[(i,) for i in range(100)]); c.commit()")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def mount(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "litefs_py", "mount", "--config", str(config),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_log_format_json_writes_one_object_per_line(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    config = tmp_path / "litefs.yml"
    config.write_text(f"fuse: {{dir: {mnt}}}\ndata: {{dir: {tmp_path / 'data'}}}\n"
                      "log: {format: json}\n"
                      f"exec: [{json.dumps(sys.executable)}, -c, {json.dumps(WRITE)}, "
                      f"{json.dumps(str(mnt / 'a.db'))}]\n")
    proc = mount(config)
    try:
        _out, err = proc.communicate(timeout=60)
    finally:
        force_unmount(mnt)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert records, "nothing was logged"
    for r in records:
        assert set(r) == {"time", "level", "logger", "message"}, r
        assert TIME.fullmatch(r["time"]) and r["level"] in ("DEBUG", "INFO", "WARNING", "ERROR")
    messages = [r["message"] for r in records]
    assert any(m.startswith(f"mounted {mnt}") for m in messages), messages
    assert any(m.startswith(f"unmounted {mnt}") for m in messages), messages


def start_failing(tmp_path: Path, extra: str) -> tuple[subprocess.Popen[str], Path]:
    """A mount whose start fails: its directory is not empty."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "old.db").write_bytes(b"not to be hidden")
    config = tmp_path / "litefs.yml"
    config.write_text(f"fuse: {{dir: {mnt}}}\ndata: {{dir: {tmp_path / 'data'}}}\n{extra}")
    return mount(config), mnt


def test_exit_on_error_true_exits_at_a_start_up_failure(tmp_path: Path) -> None:
    proc, mnt = start_failing(tmp_path, "exit-on-error: true\n")
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.USAGE, err
    assert f"litefs: mount directory {mnt} is not empty" in err
    assert not is_mounted(mnt) and (mnt / "old.db").read_bytes() == b"not to be hidden"


def test_exit_on_error_false_stays_up_until_a_signal(tmp_path: Path) -> None:
    proc, mnt = start_failing(tmp_path, "exit-on-error: false\nlog: {format: json}\n")
    try:
        assert proc.stderr is not None
        lines: list[dict[str, str]] = []
        deadline = time.monotonic() + 60
        while not any("staying up" in r["message"] for r in lines):
            assert time.monotonic() < deadline, lines
            line = proc.stderr.readline()
            assert line, f"litefs exited ({proc.wait()}) instead of staying up: {lines}"
            lines.append(json.loads(line))
        assert any(r["level"] == "ERROR" and f"mount directory {mnt} is not empty" in r["message"]
                   for r in lines), lines
        time.sleep(0.5)
        assert proc.poll() is None, "litefs exited although exit-on-error is false"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == ExitCode.USAGE
    assert (mnt / "old.db").read_bytes() == b"not to be hidden"


def test_exit_on_error_false_keeps_the_mount_after_a_failed_exec_step(tmp_path: Path) -> None:
    """A failing start-up step (a migration) with exit-on-error: false: the rest of exec is
    not started, the mount stays up with what the step committed (to be inspected), and
    SIGTERM unmounts and exits with the step's status."""
    mnt = tmp_path / "mnt"
    config = tmp_path / "litefs.yml"
    fail = WRITE + "; sys.exit(7)"
    config.write_text(f"fuse: {{dir: {mnt}}}\ndata: {{dir: {tmp_path / 'data'}}}\n"
                      "exit-on-error: false\nlog: {format: json}\n"
                      f"exec:\n  - cmd: [{json.dumps(sys.executable)}, -c, {json.dumps(fail)}, "
                      f"{json.dumps(str(mnt / 'a.db'))}]\n"
                      f"  - cmd: [{json.dumps(sys.executable)}, -c, "
                      "'open(\"never-ran\", \"w\")']\n")
    proc = mount(config)
    try:
        assert proc.stderr is not None
        lines: list[dict[str, str]] = []
        deadline = time.monotonic() + 60
        while not any("stays up for inspection" in r["message"] for r in lines):
            assert time.monotonic() < deadline, lines
            line = proc.stderr.readline()
            assert line, f"litefs exited ({proc.wait()}) instead of staying up: {lines}"
            lines.append(json.loads(line))
        assert is_mounted(mnt)
        with sqlite3.connect(mnt / "a.db") as db:
            assert db.execute("SELECT count(*) FROM t").fetchone() == (100,)
        db.close()
        assert proc.poll() is None, "litefs exited although exit-on-error is false"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        force_unmount(mnt)
    assert proc.returncode == 7
    assert not (Path.cwd() / "never-ran").exists()


def test_litestream_file_mounts_and_litestream_restores_what_it_wrote(tmp_path: Path) -> None:
    """A Litestream user's file, unchanged: the app writes the path it always wrote (now on
    the mount), litefs backs it up to the file replica, and the real litestream restores that
    backup with the same file."""
    app, replica = tmp_path / "app", tmp_path / "replica"
    config = tmp_path / "litestream.yml"
    config.write_text(f"dbs:\n  - path: {app / 'store.db'}\n    replica:\n"
                      f"      path: {replica}\n")
    proc = mount(config, "--data-dir", str(tmp_path / "data"), "--",
                 sys.executable, "-c", WRITE, str(app / "store.db"))
    try:
        _out, err = proc.communicate(timeout=90)
    finally:
        force_unmount(app)
    assert proc.returncode == 0, err
    assert "(fuse.dir)" in err  # the note on what changed is logged at start
    assert not (app / "store.db").exists()  # it lived on the mount: litefs keeps it in data/
    out = tmp_path / "restored.db"
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    restore = subprocess.run([str(litestream_binary()), "restore", "-config", str(config),
                              "-o", str(out), str(app / "store.db")],
                             capture_output=True, text=True, timeout=60, env=env, check=False)
    assert restore.returncode == 0, restore.stderr
    rows = sqlite3.connect(out).execute("SELECT count(*), sum(x) FROM t").fetchone()
    assert rows == (100, sum(range(100)))
