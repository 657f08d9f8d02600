"""Without a replica the local LTX log is still trimmed to `data.retention`."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from litefs_py.store.ltx_log import read_log


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
    assert [r.range for r in read_log(ltx)] == [(t, t) for t in range(1, 7)]
    time.sleep(1.5)  # records 1-6 are older than the retention; their segment is the newest
    assert len(read_log(ltx)) == 6
    con.execute("INSERT INTO t VALUES (99)")  # starts a new segment (one per retention)
    con.commit()
    con.close()
    assert m.pos("r.db")[0] == 7
    deadline = time.monotonic() + 15
    while len(list(ltx.iterdir())) > 1:
        assert time.monotonic() < deadline, sorted(p.name for p in ltx.iterdir())
        time.sleep(0.2)
    assert [r.range for r in read_log(ltx)] == [(7, 7)]
    m.stop()
    m.start()  # recovery works from the newest record alone
    assert m.pos("r.db")[0] == 7
    assert sqlite3.connect(m.db("r.db")).execute("SELECT count(*) FROM t").fetchone() == (6,)
