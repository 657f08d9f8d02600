"""A replica follows the primary's whole workload matrix, with real mounts and SQLite in
separate processes.

Journal modes DELETE, TRUNCATE, PERSIST and WAL at 4096-byte pages, and 512/65536-byte pages
in WAL and DELETE, each with schema changes (CREATE/DROP TABLE and INDEX, ALTER), inserts,
updates, deletes, rollbacks and savepoints, a cache-spilling blob transaction, growth past
4 MB and a shrinking VACUUM; switching a database between rollback and WAL modes; several
databases written at once; a database deleted on the primary and created again.

At every checkpoint the primary is idle and the replica must reach the primary's position
(TXID and rolling checksum); then a fresh connection on each side must see the same logical
content (sha256 of `iterdump()` and the header pragmas), the replica must pass
integrity_check, and long-lived reader connections on the replica (opened early, never
closed) must see the new state too: their page caches were invalidated.

The last tests are about the reader fence's liveness and safety: a reader left open from
WAL mode after a switch to rollback mode, a reader on one database while another replicates,
overlapping readers that always have a transaction open, and a transaction that outlives a
fence timeout.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

import pytest

from tests.replica.harness import Cluster, read_pos, wait_for, wait_same_pos
from tests.replica.workloads import Procs, assert_replica_equal, header_journal_mode


def replica_incidents(replica: Any) -> list[str]:
    """Log lines of a replica that mean something went wrong while it followed a healthy
    primary (reconnects, divergence, internal errors)."""
    bad = ("interrupted", "Traceback", "internal error", "diverged", "asking for a snapshot",
           "could not invalidate")
    return [line for line in replica.log().splitlines() if any(b in line for b in bad)]


# ---- the workload matrix --------------------------------------------------------------------

MODES = ["DELETE", "TRUNCATE", "PERSIST", "WAL"]
MATRIX = ([(mode, 4096) for mode in MODES]
          + [(mode, ps) for ps in (512, 65536) for mode in ("DELETE", "WAL")])
GROW_TO = 4 * 1024 * 1024  # bytes: the database grows past this


def workload(page_size: int, wal: bool) -> list[tuple[str, list[str], str]]:
    """(name, statements, expectation): "change" moves the position, "same" must not."""
    blob = max(300_000, 8 * page_size)  # spills a cache of 2 pages at any page size
    cte = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {n}) "
    steps: list[tuple[str, list[str], str]] = [
        ("bulk insert", [
            "BEGIN",
            cte.format(n=500) + "INSERT INTO t1(a, b) SELECT printf('row-%05d', i), "
                                "randomblob(i % 97) FROM c",
            cte.format(n=300) + "INSERT INTO t2 SELECT printf('k%04d', i), i * 3 FROM c",
            "COMMIT"], "change"),
        ("autocommit inserts", [
            "INSERT INTO t3 VALUES (1, 'one')",
            "INSERT INTO t3 VALUES (2, randomblob(40))",
            "INSERT INTO t3 VALUES (3, 'three')"], "change"),
        ("updates", [
            "UPDATE t1 SET a = a || '-u', b = randomblob(60) WHERE id % 7 = 0",
            "UPDATE t2 SET v = v + 1 WHERE k LIKE 'k00%'"], "change"),
        ("deletes", [
            "DELETE FROM t2 WHERE v % 2 = 0",
            "DELETE FROM t1 WHERE id % 11 = 0"], "change"),
        ("rolled back", [
            "BEGIN", "DELETE FROM t1", "INSERT INTO t3 VALUES (4, 'never')", "ROLLBACK"],
         "same"),
        ("read only", ["BEGIN", "SELECT count(*) FROM t1", "COMMIT"], "same"),
        ("savepoints", [
            "BEGIN",
            "SAVEPOINT s1", "INSERT INTO t3 VALUES (5, 'undone')", "ROLLBACK TO s1",
            "INSERT INTO t3 VALUES (6, 'kept')", "RELEASE s1",
            "COMMIT"], "change"),
        ("cache spill", [
            "PRAGMA cache_size=2",
            "BEGIN",
            f"INSERT INTO big(v) VALUES (randomblob({blob}))",
            "UPDATE t1 SET b = randomblob(300) WHERE id < 200",
            "COMMIT",
            "PRAGMA cache_size=-2000"], "change"),
        ("grow", [
            cte.format(n=50) + "INSERT INTO big(v) SELECT randomblob(25000) FROM c",
            cte.format(n=50) + "INSERT INTO big(v) SELECT randomblob(25000) FROM c",
            cte.format(n=50) + "INSERT INTO big(v) SELECT randomblob(25000) FROM c",
            cte.format(n=50) + "INSERT INTO big(v) SELECT zeroblob(25000) FROM c"], "change"),
        ("alter", [
            "ALTER TABLE t1 ADD COLUMN c INTEGER DEFAULT 7",
            "ALTER TABLE t3 RENAME TO t3r",
            "ALTER TABLE t3r RENAME COLUMN y TO yy",
            "CREATE INDEX t2_v ON t2(v)",
            "UPDATE t1 SET c = id WHERE id % 3 = 0",
            "PRAGMA user_version=42"], "change"),
        ("drops", [
            "DROP INDEX t1_a",
            "DROP TABLE t2",
            "CREATE TABLE t4 AS SELECT id, a FROM t1 WHERE id < 100",
            "DELETE FROM big WHERE id % 4 != 0"], "change"),
        ("vacuum", ["VACUUM"], "change"),
    ]
    if wal:
        steps.append(("checkpoint", ["PRAGMA wal_checkpoint(TRUNCATE)"], "same"))
    steps.append(("many small transactions",
                  [f"INSERT INTO t4 VALUES ({1000 + i}, 'n{i}')" for i in range(30)]
                  + ["UPDATE t1 SET a = 'last' WHERE id = 1"], "change"))
    return steps


@pytest.mark.parametrize(("mode", "page_size"), MATRIX,
                         ids=[f"{m}-{ps}" for m, ps in MATRIX])
def test_replica_follows_workload(cluster: Cluster, procs: Procs, mode: str,
                                  page_size: int) -> None:
    primary = cluster.primary()
    replica = cluster.replica()
    name = "work.db"
    checker = procs.checker()
    writer = procs.conn(primary.db(name))
    writer.exec(f"PRAGMA page_size={page_size}", f"PRAGMA journal_mode={mode}",
                "BEGIN",
                "CREATE TABLE t1(id INTEGER PRIMARY KEY, a TEXT, b BLOB)",
                "CREATE INDEX t1_a ON t1(a)",
                "CREATE TABLE t2(k TEXT PRIMARY KEY, v) WITHOUT ROWID",
                "CREATE TABLE t3(x, y)",
                "CREATE TABLE big(id INTEGER PRIMARY KEY, v BLOB)",
                "COMMIT")
    assert_replica_equal(primary, replica, name, checker)
    assert header_journal_mode(replica.db(name)) == ("wal" if mode == "WAL" else "rollback")
    # Opened early and never closed: each one must see every later state.
    readers = [procs.conn(replica.db(name)), procs.conn(replica.db(name))]
    readers[1].exec("PRAGMA cache_size=-65536")  # a big page cache: all of the database
    for r in readers:
        assert r.exec("SELECT count(*) FROM t1") == [[0]]

    sizes: dict[str, int] = {}
    for step, stmts, expect in workload(page_size, mode == "WAL"):
        before = primary.pos(name)
        writer.exec(*stmts)
        after = primary.pos(name)
        if expect == "same":
            assert after == before, f"step {step!r} moved the position"
        else:
            assert after[0] > before[0], f"step {step!r} committed nothing"
        got = assert_replica_equal(primary, replica, name, checker, readers)
        sizes[step] = got["page_count"] * got["page_size"]
        assert got["page_size"] == page_size

    assert sizes["grow"] > GROW_TO
    assert sizes["vacuum"] < sizes["drops"] / 2, sizes  # VACUUM shrank the database
    if mode != "WAL":  # the replica's file itself shrank (in WAL mode the primary's may not)
        assert os.path.getsize(replica.db(name)) == sizes["vacuum"]
    assert replica_incidents(replica) == []


# ---- switching journal modes -----------------------------------------------------------------

SWITCHES = ["WAL", "TRUNCATE", "WAL", "PERSIST", "WAL", "DELETE"]
STALL_WAIT = 5.0  # seconds: a replica that is not stalled applies in milliseconds


def test_replica_follows_journal_mode_switches(cluster: Cluster, procs: Procs) -> None:
    """DELETE -> WAL -> TRUNCATE -> WAL -> PERSIST -> WAL -> DELETE, writing (with cache
    spills) in each mode; after every switch and every write the replica equals the primary,
    for fresh connections and for a reader that stays open across the switches into WAL mode
    and sees the switch out of it. (It is replaced after a switch out of WAL mode: a
    connection that opened the WAL stays a WAL connection, see the test below.)"""
    primary = cluster.primary()
    replica = cluster.replica()
    name = "switch.db"
    checker = procs.checker()
    writer = procs.conn(primary.db(name))
    writer.exec("PRAGMA journal_mode=DELETE", "PRAGMA cache_size=2",
                "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)",
                "INSERT INTO t(v) VALUES (randomblob(200000))")
    assert_replica_equal(primary, replica, name, checker)
    reader = procs.conn(replica.db(name))
    assert reader.exec("SELECT count(*) FROM t") == [[1]]
    for i, mode in enumerate(SWITCHES):
        assert writer.exec(f"PRAGMA journal_mode={mode}") == [[mode.lower()]]
        assert_replica_equal(primary, replica, name, checker, [reader])
        assert header_journal_mode(replica.db(name)) == ("wal" if mode == "WAL" else "rollback")
        if mode != "WAL":
            reader.close()
            reader = procs.conn(replica.db(name))
            assert reader.exec("PRAGMA journal_mode") == [["delete"]]  # rollback, not WAL
        writer.exec(f"INSERT INTO t(v) VALUES (randomblob({100_000 + i}))",
                    f"UPDATE t SET v = randomblob(50) WHERE id = {i + 1}",
                    "BEGIN", "INSERT INTO t(v) VALUES ('x')", "DELETE FROM t WHERE id = 1",
                    "COMMIT")
        assert_replica_equal(primary, replica, name, checker, [reader])
    assert replica_incidents(replica) == []


def test_wal_reader_left_open_blocks_replication_after_switch_to_rollback(
        cluster: Cluster, procs: Procs) -> None:
    """A replica reader connected while the database is in WAL mode keeps its SHARED lock on
    the database file for as long as it is open (every WAL connection does). After the
    primary switches to a rollback mode, the replica fences with EXCLUSIVE on the database
    file, which that connection never lets go: the replica stops applying (FenceTimeout after
    30 s, reconnect, same again) until the reader closes. On the primary SQLite itself refuses
    the switch while another connection is open; a replica cannot refuse it."""
    primary = cluster.primary()
    replica = cluster.replica()
    checker = procs.checker()
    name = "stuck.db"
    writer = procs.conn(primary.db(name))
    writer.exec("PRAGMA journal_mode=WAL", "CREATE TABLE t(v)", "INSERT INTO t VALUES (1)")
    assert_replica_equal(primary, replica, name, checker)
    reader = procs.conn(replica.db(name))
    assert reader.exec("SELECT count(*) FROM t") == [[1]]
    assert writer.exec("PRAGMA journal_mode=DELETE") == [["delete"]]
    assert_replica_equal(primary, replica, name, checker, [reader])  # the switch applies
    writer.exec("INSERT INTO t VALUES (2)")
    want = primary.pos(name)
    try:
        wait_for(lambda: read_pos(replica, name) == want, STALL_WAIT, "the replica")
        stalled = False
    except AssertionError:
        stalled = True
    reader.close()  # the only thing standing in the way
    assert_replica_equal(primary, replica, name, checker, timeout=60)
    assert not stalled, (
        f"the replica did not apply TXID {want[0]:x} within {STALL_WAIT:g} s while a reader "
        "opened in WAL mode stayed connected (it did at once when the reader closed)")


def test_reader_on_one_database_does_not_stall_another(cluster: Cluster,
                                                       procs: Procs) -> None:
    """A rollback-mode reader inside a read transaction on a.db rightly holds back a.db's
    next transaction on the replica (the fence waits for it). It should not hold back b.db:
    but every database's files arrive on one stream and are applied one at a time, so b.db
    waits for a.db's fence (up to 30 s, then the stream reconnects and waits again)."""
    primary = cluster.primary()
    replica = cluster.replica()
    checker = procs.checker()
    writers = {}
    for name in ("a.db", "b.db"):
        writers[name] = procs.conn(primary.db(name))
        writers[name].exec("PRAGMA journal_mode=DELETE", "CREATE TABLE t(v)",
                           "INSERT INTO t VALUES (1)")
        assert_replica_equal(primary, replica, name, checker)
    reader = procs.conn(replica.db("a.db"))
    reader.exec("BEGIN", "SELECT count(*) FROM t")  # holds SHARED on a.db
    a_before = replica.pos("a.db")
    writers["a.db"].exec("INSERT INTO t VALUES (2)")
    writers["b.db"].exec("INSERT INTO t VALUES (2)")
    want = primary.pos("b.db")
    try:
        wait_for(lambda: read_pos(replica, "b.db") == want, STALL_WAIT, "b.db")
        b_stalled = False
    except AssertionError:
        b_stalled = True
    assert replica.pos("a.db") == a_before  # a.db waits for its reader: right
    assert reader.exec("SELECT count(*) FROM t") == [[1]]  # a stable snapshot meanwhile
    reader.exec("COMMIT")
    for name in ("a.db", "b.db"):
        assert_replica_equal(primary, replica, name, checker, timeout=60)
    assert not b_stalled, (f"b.db was not applied within {STALL_WAIT:g} s while a reader "
                           "held a read transaction on a.db")


HOGS = 3
HOG_HOLD = 0.05  # seconds each read transaction stays open
HOG_SECONDS = STALL_WAIT + 1.5  # the readers outlast the wait for the replica


@pytest.mark.parametrize("mode", [
    "DELETE",
    "WAL",
])
def test_overlapping_readers_do_not_starve_the_replica(cluster: Cluster, procs: Procs,
                                                        mode: str) -> None:
    """Three readers on the replica, each looping back-to-back read transactions held open
    50 ms, started 17 ms apart: at every moment some read transaction is open, as with a busy
    connection pool. A transaction committed on the primary must still reach the replica
    (and the readers) while they go on. In rollback mode the fence's PENDING lock holds new
    readers back until the open ones finish; in WAL mode nothing does."""
    primary = cluster.primary()
    replica = cluster.replica()
    checker = procs.checker()
    name = "busy.db"
    writer = procs.conn(primary.db(name))
    writer.exec(f"PRAGMA journal_mode={mode}", "CREATE TABLE t(v)", "INSERT INTO t VALUES (1)")
    assert_replica_equal(primary, replica, name, checker)
    hogs = []
    for _ in range(HOGS):
        hogs.append(procs.spawn("hog-reader", replica.db(name), str(HOG_SECONDS),
                                str(HOG_HOLD)))
        time.sleep(HOG_HOLD / HOGS)
    time.sleep(0.5)
    writer.exec("INSERT INTO t VALUES (2)")
    want = primary.pos(name)
    try:
        wait_for(lambda: read_pos(replica, name) == want, STALL_WAIT, "the replica")
        starved = False
    except AssertionError:
        starved = True
    results = [h.recv(timeout=HOG_SECONDS + 30) for h in hogs]
    for r in results:
        assert r["errors"] == [] and r["busy"] == 0, results
    assert not starved, (f"TXID {want[0]:x} was not applied within {STALL_WAIT:g} s while "
                         f"readers overlapped: {results}\n"
                         + "\n".join(replica_incidents(replica)))
    assert all(r["versions"] == [1, 2] for r in results), results  # they saw it
    assert_replica_equal(primary, replica, name, checker)


def test_transaction_survives_a_fence_timeout(cluster: Cluster, procs: Procs) -> None:
    """A WAL reader keeps one read transaction open past the WAL fence's 3 s limit (as any
    long query may; the rollback-mode limit is 30 s): the apply gives up, the stream
    reconnects and the same file is applied again once the reader is done. The replica must
    then hold the transaction, not just its position."""
    primary = cluster.primary()
    replica = cluster.replica()
    checker = procs.checker()
    name = "slow.db"
    writer = procs.conn(primary.db(name))
    writer.exec("PRAGMA journal_mode=WAL", "CREATE TABLE t(v)", "INSERT INTO t VALUES (1)")
    assert_replica_equal(primary, replica, name, checker)
    holder = procs.conn(replica.db(name))
    assert holder.exec("BEGIN", "SELECT count(*) FROM t") == [[1]]  # holds its read lock
    writer.exec("INSERT INTO t VALUES (2)")
    wait_for(lambda: "readers held their locks for longer than" in replica.log(), 30,
             "the apply fence to time out")
    assert holder.exec("SELECT count(*) FROM t") == [[1]]  # its snapshot held
    holder.exec("COMMIT")
    pos = wait_same_pos(primary, replica, name)
    backing = replica.data_dir / "dbs" / name / "database"
    con = sqlite3.connect(f"file:{backing}?immutable=1", uri=True)
    try:
        in_file = con.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        con.close()
    seen = holder.exec("SELECT count(*) FROM t")
    fresh = procs.conn(replica.db(name)).exec("SELECT count(*) FROM t")
    assert (in_file, seen, fresh) == (2, [[2]], [[2]]), (
        f"the replica is at TXID {pos[0]:x} with the primary's checksum, but its database "
        f"file has {in_file} rows, the old reader sees {seen}, a new one {fresh} (want 2)")
    assert_replica_equal(primary, replica, name, checker, [holder])


# ---- several databases at once ---------------------------------------------------------------

BANK_SETUP = [
    "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INT NOT NULL)",
    "CREATE INDEX accounts_balance ON accounts(balance)",
    "CREATE TABLE history(id INTEGER PRIMARY KEY, v INT, note TEXT)",
    "CREATE TABLE meta(v INT NOT NULL)",
    "INSERT INTO meta VALUES (0)",
    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100) "
    "INSERT INTO accounts SELECT i, 1000 FROM c",
]

MULTI = [("a.db", "DELETE", 4096), ("b.db", "WAL", 4096), ("c.db", "TRUNCATE", 1024),
         ("d.db", "WAL", 512)]
MULTI_SECONDS = 4.0


def test_replica_follows_several_databases_at_once(cluster: Cluster, procs: Procs) -> None:
    """Four databases (modes and page sizes differ) written concurrently by their own writer
    processes while a reader per database checks invariants on the replica; then each
    replica database equals its primary."""
    primary = cluster.primary()
    replica = cluster.replica()
    checker = procs.checker()
    for name, mode, ps in MULTI:
        setup = procs.conn(primary.db(name))
        setup.exec(f"PRAGMA page_size={ps}", f"PRAGMA journal_mode={mode}", "BEGIN",
                   *BANK_SETUP, "COMMIT")
        setup.close()
    for name, _mode, _ps in MULTI:
        assert_replica_equal(primary, replica, name, checker)
    writers = [procs.spawn("bank-writer", primary.db(name), str(MULTI_SECONDS), "3", "0.005")
               for name, _m, _p in MULTI]
    readers = [procs.spawn("bank-reader", replica.db(name), str(MULTI_SECONDS))
               for name, _m, _p in MULTI]
    results = [r.recv(timeout=MULTI_SECONDS + 60) for r in readers]
    written = [w.recv(timeout=MULTI_SECONDS + 60) for w in writers]
    print({"writers": written, "readers": results})
    for (name, _m, _p), w, r in zip(MULTI, written, results, strict=True):
        assert w["errors"] == [] and w["busy"] == 0, (name, w)
        assert w["commits"] > 20, (name, w)
        assert r["errors"] == [] and r["bad"] == [] and r["busy"] == 0, (name, r)
        assert r["versions"] > 5, (name, r)  # the replica moved while it was read
        got = assert_replica_equal(primary, replica, name, checker)
        assert got["page_size"] == _p
        rows = procs.conn(replica.db(name)).exec("SELECT v FROM meta")
        assert rows == [[w["v"]]], (name, rows, w)
    assert sorted(n for n in os.listdir(replica.mount_dir) if n.endswith(".db")) == \
        sorted(n for n, _m, _p in MULTI)
    assert replica_incidents(replica) == []


# ---- a database deleted on the primary, then created again ----------------------------------


def _delete_db(path: str) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)


def _gone(m: Any, name: str) -> bool:
    return not os.path.exists(m.db(name)) and name not in os.listdir(m.mount_dir)


@pytest.mark.parametrize("mode", ["DELETE", "WAL"])
def test_replica_drops_a_deleted_database_and_follows_a_new_one(
        cluster: Cluster, procs: Procs, mode: str) -> None:
    primary = cluster.primary()
    replica = cluster.replica()
    checker = procs.checker()
    name, other = "gone.db", "keep.db"
    keep = procs.conn(primary.db(other))
    keep.exec(f"PRAGMA journal_mode={mode}", "CREATE TABLE k(v)", "INSERT INTO k VALUES (1)")
    w = procs.conn(primary.db(name))
    w.exec(f"PRAGMA journal_mode={mode}", "CREATE TABLE old(id INTEGER PRIMARY KEY, v BLOB)",
           "INSERT INTO old(v) VALUES (randomblob(100000))",
           "INSERT INTO old(v) VALUES ('second')")
    assert_replica_equal(primary, replica, name, checker)
    assert_replica_equal(primary, replica, other, checker)
    txid_before, _ = primary.pos(name)

    # 1. The application deletes the database (every connection closed first).
    w.close()
    _delete_db(primary.db(name))
    assert _gone(primary, name)
    wait_for(lambda: _gone(replica, name), 20, f"{name} to disappear on the replica\n"
             + replica.log()[-3000:])
    assert not os.path.exists(replica.db(name) + "-pos")
    assert_replica_equal(primary, replica, other, checker)  # the other database is untouched

    # 2. A new database with the same name replicates fresh (TXIDs go on after the deletion).
    w = procs.conn(primary.db(name))
    w.exec(f"PRAGMA journal_mode={mode}", "CREATE TABLE new(x TEXT)",
           "INSERT INTO new VALUES ('fresh')")
    got = assert_replica_equal(primary, replica, name, checker)
    assert got["tables"] == ["new"]
    assert primary.pos(name)[0] > txid_before
    reader = procs.conn(replica.db(name))
    assert reader.exec("SELECT x FROM new") == [["fresh"]]
    reader.close()

    # 3. Deleted and created again at once, without waiting for the replica in between.
    w.close()
    _delete_db(primary.db(name))
    w = procs.conn(primary.db(name))
    w.exec(f"PRAGMA journal_mode={mode}", "CREATE TABLE third(y)",
           "INSERT INTO third VALUES (3)")
    got = assert_replica_equal(primary, replica, name, checker)
    assert got["tables"] == ["third"]
    reader = procs.conn(replica.db(name))
    assert reader.exec("SELECT y FROM third") == [[3]]

    # 4. The replica restarted afterwards still agrees (its local log has the deletions).
    reader.close()
    replica.stop()
    replica.start()
    w.exec("INSERT INTO third VALUES (4)")
    assert_replica_equal(primary, replica, name, checker)
    assert_replica_equal(primary, replica, other, checker)
    assert replica_incidents(replica) == []

