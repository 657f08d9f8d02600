"""`litefs status` reports each database's position and its replica's lag and spool."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.mount.harness import LitefsMount


def status(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "litefs_py", "status", "--data-dir",
                           str(data_dir), *args], capture_output=True, text=True, timeout=60)


def test_status_shows_replica_position(tmp_path: Path, litefs_factory) -> None:
    config = tmp_path / "litefs.yml"
    config.write_text(f"replica: {{type: file, path: {tmp_path / 'replica'}}}\n")
    m: LitefsMount = litefs_factory(tmp_path / "mnt", tmp_path / "data", tmp_path / "log",
                                    extra_args=["--config", str(config)])
    m.start()
    con = sqlite3.connect(m.db("s.db"))
    con.execute("CREATE TABLE t(x)")
    con.commit()
    con.close()
    deadline = time.monotonic() + 15
    while True:
        done = status(tmp_path / "data", "--json")
        if done.returncode == 0:
            doc = json.loads(done.stdout)
            rep = doc["databases"].get("s.db", {}).get("replica")
            if rep and rep["txid"] == "0000000000000001":
                break
        assert time.monotonic() < deadline, done.stdout + done.stderr
        time.sleep(0.2)
    assert rep["lag_seconds"] == 0 and rep["spool_bytes"] == 0 and rep["last_error"] is None
    text = status(tmp_path / "data")
    assert "s.db: TXID 0000000000000001, replica TXID 0000000000000001" in text.stdout
    m.stop()
    time.sleep(0.1)


def test_status_without_a_mount_says_so(tmp_path: Path) -> None:
    done = status(tmp_path / "nothing")
    assert done.returncode == 4
    assert "is `litefs mount` running" in done.stderr
