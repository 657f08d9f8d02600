"""The mount comes up, captures a commit, and shows its position."""

from __future__ import annotations

import sqlite3

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
    ltx = sorted((litefs.data_dir / "dbs" / "a.db" / "ltx").iterdir())
    assert [p.name for p in ltx] == ["0000000000000001-0000000000000001.ltx",
                                     "0000000000000002-0000000000000002.ltx"]
