"""A replica mount on the same host: follows the primary, refuses writes, shows .primary/.lag."""

from __future__ import annotations

import sqlite3

import pytest

from tests.replica.harness import Cluster, wait_same_pos


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_replica_follows_and_refuses_writes(cluster: Cluster, journal_mode: str) -> None:
    primary = cluster.primary()
    replica = cluster.replica()
    db = sqlite3.connect(primary.db("app.db"), isolation_level=None)
    db.execute(f"PRAGMA journal_mode={journal_mode}")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    reader = None
    for i in range(20):
        db.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}" * 50,))
        wait_same_pos(primary, replica, "app.db")
        if reader is None:
            reader = sqlite3.connect(replica.db("app.db"), isolation_level=None, timeout=5)
        # A reader that stays open sees every transaction (its cache is invalidated).
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (i + 1,)
    assert reader is not None
    assert reader.execute("PRAGMA quick_check").fetchone() == ("ok",)
    with pytest.raises(sqlite3.OperationalError, match="readonly database"):
        reader.execute("INSERT INTO t (v) VALUES ('nope')")
    # The mount is healthy after the refusal, and replication goes on.
    db.execute("INSERT INTO t (v) VALUES ('after')")
    wait_same_pos(primary, replica, "app.db")
    assert reader.execute("SELECT v FROM t ORDER BY id DESC LIMIT 1").fetchone() == ("after",)
    assert (replica.mount_dir / ".primary").read_text() == cluster.url + "\n"
    assert float((replica.mount_dir / ".lag").read_text()) < 5
    assert not (primary.mount_dir / ".primary").exists()
    reader.close()
    db.close()


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_snapshot_while_the_primary_commits(cluster: Cluster, journal_mode: str) -> None:
    """A new replica's snapshot is read in a worker thread while commits (and checkpoints)
    go on: what it gets must still be exactly one position (checked by checksum), and the
    replica must end equal to the primary."""
    import subprocess
    import sys

    primary = cluster.primary()
    db = sqlite3.connect(primary.db("big.db"), isolation_level=None)
    db.execute(f"PRAGMA journal_mode={journal_mode}")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    db.execute("BEGIN")
    for _ in range(3000):
        db.execute("INSERT INTO t (v) VALUES (randomblob(3000))")
    db.execute("COMMIT")
    db.close()
    writer = subprocess.Popen([sys.executable, "-c", f"""
import sqlite3, time
db = sqlite3.connect({primary.db("big.db")!r}, isolation_level=None, timeout=10)
end = time.monotonic() + 4
while time.monotonic() < end:
    db.execute("UPDATE t SET v = randomblob(3000) WHERE id = abs(random()) % 3000 + 1")
"""])
    try:
        replica = cluster.replica()
        assert writer.wait(60) == 0
    finally:
        writer.kill()
    wait_same_pos(primary, replica, "big.db", timeout=60)
    reader = sqlite3.connect(replica.db("big.db"))
    assert reader.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    src = sqlite3.connect(primary.db("big.db"))
    query = "SELECT sum(length(v)), count(*), max(id), sum(unicode(v)) FROM t"
    assert reader.execute(query).fetchone() == src.execute(query).fetchone()
    reader.close()
    src.close()
