"""Without a replica the local LTX log is still trimmed to `data.retention`."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


def test_local_log_is_trimmed_without_a_replica(tmp_path: Path, litefs_factory) -> None:
    config = tmp_path / "litefs.yml"
    config.write_text("data: {retention: 1s}\n")
    m = litefs_factory(tmp_path / "mnt", tmp_path / "data", tmp_path / "log",
                       extra_args=["--config", str(config)])
    m.start()
    con = sqlite3.connect(m.db("r.db"))
    con.execute("CREATE TABLE t(x)")
    for i in range(5):
        con.execute("INSERT INTO t VALUES (?)", (i,))
        con.commit()
    ltx = tmp_path / "data" / "dbs" / "r.db" / "ltx"
    assert len(list(ltx.iterdir())) == 6
    deadline = time.monotonic() + 15
    while len(list(ltx.iterdir())) > 1:
        assert time.monotonic() < deadline, sorted(p.name for p in ltx.iterdir())
        time.sleep(0.2)
    assert [p.name for p in ltx.iterdir()] == ["0000000000000006-0000000000000006.ltx"]
    con.execute("INSERT INTO t VALUES (99)")
    con.commit()
    con.close()
    assert m.pos("r.db")[0] == 7
    m.stop()
    m.start()  # recovery works from the newest file alone
    assert m.pos("r.db")[0] == 7
    assert sqlite3.connect(m.db("r.db")).execute("SELECT count(*) FROM t").fetchone() == (6,)
