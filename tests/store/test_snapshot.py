"""The snapshotter (store/snapshot.py): one LTX file 1..TXID of the database as committed,
read in a worker thread; exact even while commits go on."""

from __future__ import annotations

import io
import logging

import pytest
import trio

from litefs_py.ltx import FLAG_V3_NO_CHECKSUM, Decoder, apply_pages
from litefs_py.store.snapshot import SnapshotJob, take_snapshot
from litefs_py.store.store import Store
from litefs_py.types import EncodedLtx, FileKind
from tests.store.helpers import database_file, replay
from tests.store.sqlite_vfs import StoreVFS, execute


def decoded(snap: EncodedLtx) -> bytes:
    out = io.BytesIO()
    dec = Decoder(io.BytesIO(snap.data))
    assert dec.header.min_txid == 1 and dec.header.max_txid == snap.max_txid
    assert dec.header.flags & FLAG_V3_NO_CHECKSUM
    apply_pages(out, dec)
    return out.getvalue()


@pytest.mark.parametrize("mode", ["DELETE", "WAL"])
def test_snapshot_is_the_committed_database(vfs: StoreVFS, store: Store, mode: str) -> None:
    con = vfs.connect("app.db", journal_mode=mode)
    execute(con, "CREATE TABLE t(v)", *["INSERT INTO t VALUES (randomblob(5000))"] * 20,
            "DELETE FROM t WHERE rowid % 3 = 0")
    db = store.dbs["app.db"]
    if mode == "WAL":
        assert db.size(FileKind.WAL) > 0  # pages come from the WAL, not yet checkpointed
    job = SnapshotJob.prepare(db)
    try:
        snap = job()
    finally:
        job.close()
    assert snap is not None and snap.pos == db.pos
    assert decoded(snap) == replay(db).data
    if mode == "DELETE":
        assert decoded(snap) == database_file(db)


def test_snapshot_read_across_a_commit_is_refused(vfs: StoreVFS, store: Store) -> None:
    """What the job reads must be one position: a commit between taking the position and
    reading the pages is noticed (rolling checksum) and the job returns None."""
    con = vfs.connect("app.db")
    execute(con, "CREATE TABLE t(v)", "INSERT INTO t VALUES (randomblob(5000))")
    db = store.dbs["app.db"]
    job = SnapshotJob.prepare(db)
    execute(con, "UPDATE t SET v = randomblob(5000)")
    try:
        assert job() is None
    finally:
        job.close()


def test_snapshot_of_a_deleted_database_is_refused(vfs: StoreVFS, store: Store) -> None:
    con = vfs.connect("app.db")
    execute(con, "CREATE TABLE t(v)")
    con.close()
    db = store.dbs["app.db"]
    db.unlink(FileKind.DATABASE)
    with pytest.raises(ValueError, match="no database to snapshot"):
        SnapshotJob.prepare(db)


@pytest.mark.parametrize("mode", ["DELETE", "WAL"])
def test_snapshot_while_commits_go_on(vfs: StoreVFS, store: Store, mode: str,
                                      caplog: pytest.LogCaptureFixture) -> None:
    """A writer commits as fast as it can (waiting, as the FUSE layer does, while the gate
    holds its database's writes). The snapshot completes, is exactly the database at its
    TXID, and commits went on before and after it."""
    caplog.set_level(logging.INFO, logger="litefs.store")
    con = vfs.connect("app.db", journal_mode=mode, cache_size=20, synchronous="OFF")
    execute(con, "CREATE TABLE t(v)", *["INSERT INTO t VALUES (randomblob(4000))"] * 300)
    db = store.dbs["app.db"]
    start = db.txid
    snaps: list[EncodedLtx] = []
    held_commits: list[int] = []

    async def writer(stop: trio.Event) -> None:
        i = 0
        while not stop.is_set():
            if db.gate.held and not db.in_transaction:
                await db.gate.wait()
            elif db.gate.held:
                held_commits.append(db.txid)
            execute(con, f"UPDATE t SET v = randomblob(4000) WHERE rowid = {i % 300 + 1}")
            i += 1
            await trio.lowlevel.checkpoint()

    async def main() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, stop)
            await trio.sleep(0.05)
            snaps.append(await take_snapshot(db))
            await trio.sleep(0.05)
            stop.set()

    trio.run(main)
    snap = snaps[0]
    assert start < snap.max_txid < db.txid
    assert not held_commits  # no transaction was under way when a held write came
    assert decoded(snap) == replay(db, upto=snap.max_txid).data
    assert snap.checksum == replay(db, upto=snap.max_txid).checksum


def test_snapshot_waits_for_the_transaction_under_way(vfs: StoreVFS, store: Store,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A rollback transaction has written pages it has not committed into the database file
    (its cache spilled): the first read sees them (checksum) and is not used; the second one
    holds new transactions, lets this one finish, and reads the database as it committed."""
    caplog.set_level(logging.INFO, logger="litefs.store")
    con = vfs.connect("app.db", cache_size=5, synchronous="OFF")
    execute(con, "CREATE TABLE t(v)", *["INSERT INTO t VALUES (randomblob(4000))"] * 50)
    db = store.dbs["app.db"]
    before = db.txid
    execute(con, "BEGIN", "UPDATE t SET v = randomblob(4000)")
    assert db.in_transaction
    snaps: list[EncodedLtx] = []

    async def main() -> None:
        async def commit_later() -> None:
            await trio.sleep(0.2)
            execute(con, "COMMIT")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit_later)
            snaps.append(await take_snapshot(db))

    trio.run(main)
    assert "with its writes held" in caplog.text
    assert snaps[0].max_txid == before + 1 == db.txid
    assert decoded(snaps[0]) == database_file(db)


def test_gate_holds_new_transactions_until_released() -> None:
    from litefs_py.store.gate import WriteGate

    gate = WriteGate()
    order: list[str] = []

    async def main() -> None:
        async def waiter() -> None:
            await gate.wait()
            order.append("resumed")

        with gate.hold():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.sleep(0.01)
                order.append("still held")
                with gate.hold():  # a second snapshot of the same database
                    pass
                assert gate.held
                nursery.cancel_scope.deadline = trio.current_time() + 0.05
        assert not gate.held
        await gate.wait()  # not held: returns at once
        order.append("open")

    trio.run(main)
    assert order == ["still held", "open"]
