"""The mount comes up, captures a commit, and shows its position."""

from __future__ import annotations

import sqlite3

from litefs_py.store.ltx_log import read_log
from tests.mount.harness import LitefsMount


def test_commit_creates_ltx_and_pos(litefs: LitefsMount) -> None:
    con = sqlite3.connect(litefs.db("a.db"))
    con.execute("CREATE TABLE t(x)")
    con.commit()
    txid, checksum = litefs.pos("a.db")
    assert txid == 1 and checksum >> 63 == 1
    con.execute("INSERT INTO t VALUES (1)")
    con.commit()
    assert litefs.pos("a.db")[0] == 2
    con.close()
    log = litefs.data_dir / "dbs" / "a.db" / "ltx"
    assert [p.name for p in log.iterdir()] == ["seg-00000001.ltxs"]  # one file for both
    assert [r.name for r in read_log(log)] == ["0000000000000001-0000000000000001.ltx",
                                               "0000000000000002-0000000000000002.ltx"]
