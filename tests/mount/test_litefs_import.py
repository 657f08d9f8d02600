"""A LiteFS data directory under a real mount: served at LiteFS's TXID with LiteFS's content,
the next commit continues the numbering, nothing of LiteFS's is deleted; `litefs recover` on
one says it matches."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.mount.harness import LitefsMount
from tests.vectors_path import VECTORS

LITEFS_DIR = VECTORS / "litefs" / "store" / "open-and-write-snapshot"
LTX_NAME = "000000000000000d-000000000000000d.ltx"
TXID, CHECKSUM = 0xD, 0xFE3831A381C602B9


def litefs_data_dir(dest: Path) -> Path:
    if not (LITEFS_DIR / "dbs" / "sqlite.db" / "ltx" / LTX_NAME).is_file():
        raise FileNotFoundError(f"missing test vector {LITEFS_DIR} (tests/vectors/README.md)")
    shutil.copytree(LITEFS_DIR, dest)
    return dest


def dump(path: str | Path, *, uri: bool = False) -> tuple[str, list[str]]:
    con = sqlite3.connect(path, uri=uri)
    try:
        check = con.execute("PRAGMA integrity_check").fetchone()[0]
        return check, list(con.iterdump())
    finally:
        con.close()


def test_litefs_data_directory_is_served_at_its_txid(tmp_path: Path, litefs_factory) -> None:
    data = litefs_data_dir(tmp_path / "data")
    original_ltx = (data / "dbs" / "sqlite.db" / "ltx" / LTX_NAME).read_bytes()
    want = dump(f"file:{LITEFS_DIR / 'dbs' / 'sqlite.db' / 'database'}?mode=ro", uri=True)
    assert want[0] == "ok"
    m: LitefsMount = litefs_factory(tmp_path / "mnt", data, tmp_path / "litefs.log")
    m.start()
    assert m.pos("sqlite.db") == (TXID, CHECKSUM)
    assert dump(m.db("sqlite.db")) == want
    # The next commit continues LiteFS's numbering.
    con = sqlite3.connect(m.db("sqlite.db"))
    con.execute("INSERT INTO Note VALUES ('n4', 'after', 'litefs-py', 1, 1, "
                "'clajvv8ii0000fjim8otx0ex8')")
    con.commit()
    con.close()
    assert m.pos("sqlite.db")[0] == TXID + 1
    log = m.log()
    assert "importing a LiteFS data directory" in log and "torn" not in log
    m.stop()
    # LiteFS's file is kept; the log holds TXIDs 13 and 14; a restart resumes at 14.
    kept = list((data / "dbs" / "sqlite.db" / "quarantine").glob(f"*-litefs-v1-ltx-ltx/{LTX_NAME}"))
    assert len(kept) == 1 and kept[0].read_bytes() == original_ltx
    assert sorted(p.name for p in (data / "dbs" / "sqlite.db" / "ltx").iterdir()) == [
        LTX_NAME, "000000000000000e-000000000000000e.ltx"]
    m.start()
    assert m.pos("sqlite.db")[0] == TXID + 1
    check, rows = dump(m.db("sqlite.db"))
    assert check == "ok" and any("'after'" in row for row in rows)
    deadline = time.monotonic() + 15
    while True:  # the mount writes its status every second
        status = subprocess.run([sys.executable, "-m", "litefs_py", "status", "--json",
                                 "--data-dir", str(data)], capture_output=True, text=True,
                                timeout=60)
        if status.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    m.stop()
    doc = json.loads(status.stdout)
    assert doc["databases"]["sqlite.db"]["quarantine"]["entries"] == 1
    assert doc["databases"]["sqlite.db"]["quarantine"]["bytes"] == len(original_ltx)


def test_litefs_recover_on_a_litefs_data_directory(tmp_path: Path) -> None:
    data = litefs_data_dir(tmp_path / "data")
    done = subprocess.run([sys.executable, "-m", "litefs_py", "recover", "--data-dir",
                           str(data), "sqlite.db"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "sqlite.db: matches its LTX log at TXID 000000000000000d" in done.stdout
    assert (data / "dbs" / "sqlite.db" / "ltx" / LTX_NAME).exists()
