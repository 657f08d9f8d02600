"""BucketFollower: a replica with no primary follows the replica bucket.

The bucket is written by real code: a `litefs mount` with a SQLite client process (through
moto's S3), or, where the test needs to control exactly which files exist, a real SQLite
database whose commits are encoded with our LTX encoder (the pages each commit changed) and
stored with a real FileReplicaClient, compacted and snapshotted by the real ReplicaMaintainer,
and thinned by deleting files as retention would. The apply callback of these tests writes
the LTX pages into a plain file (`litefs_py.ltx.apply_ltx`) and checks the chain: a file must
continue the replica's TXID, overlap it (a compacted file) or be a snapshot. The result is
compared byte for byte with the primary's database at that TXID (or by dump hash for the
mount). Storage calls are counted by a thin FileReplicaClient subclass.
"""

from __future__ import annotations

import io
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import trio

from litefs_py.ltx import FLAG_V3_NO_CHECKSUM, HEADER_SIZE, Encoder, Header, apply_ltx
from litefs_py.replica_clients import client_for_url
from litefs_py.replication.bucket_follower import BucketFollower
from litefs_py.replication.maintenance import ReplicaMaintainer, Schedule
from litefs_py.storage.base import META_CHECKSUM, LtxFileInfo, ObjectInfo, ReplicaClient
from litefs_py.storage.errors import EndpointUnreachableError
from litefs_py.storage.file import FileReplicaClient
from litefs_py.storage.s3 import S3ReplicaClient
from tests.replication.conftest import Bucket, Rig
from tests.replication.helpers import file_hash, list_ltx, max_txid, write_config

PS = 4096
NAME = "app.db"


# ---- the replica side: a plain file and a chain check ---------------------------------------


class Mismatch(Exception):
    """What the real replica raises when a file does not fit its position
    (store/replica_apply.PositionMismatchError's role)."""


class Replica:
    """Applies whole LTX files to a plain database file and checks their place in the chain."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.applied: list[tuple[int, int]] = []
        self.kinds: list[str] = []  # "snapshot" | "next" | "overlap" per applied file
        self.commits: list[int] = []  # the header's commit (database size in pages)
        self.reject: Callable[[Header], str | None] | None = None  # a test's mismatch rule
        self.expected: list[int | None] = []  # the checksum the follower asked for, per file

    def position(self) -> int:
        return self.pos

    async def apply(self, data: bytes, expected: int | None = None) -> None:
        h = Header.decode(data[:HEADER_SIZE])
        self.expected.append(expected)
        if self.reject is not None and (why := self.reject(h)) is not None:
            raise Mismatch(why)
        if h.min_txid == 1:
            kind = "snapshot"
        elif h.min_txid == self.pos + 1:
            kind = "next"
        elif h.min_txid <= self.pos < h.max_txid:
            kind = "overlap"
        else:
            raise Mismatch(f"replica at TXID {self.pos:x} cannot apply "
                           f"{h.min_txid:x}-{h.max_txid:x}")
        await trio.to_thread.run_sync(self._write, data)
        self.pos = h.max_txid
        self.applied.append((h.min_txid, h.max_txid))
        self.kinds.append(kind)
        self.commits.append(h.commit)

    def _write(self, data: bytes) -> None:
        with open(self.path, "r+b" if self.path.exists() else "w+b") as db:
            apply_ltx(db, io.BytesIO(data))


# ---- the primary side: real SQLite commits, encoded as L0 files -------------------------------


class Primary:
    """A real SQLite database; each `commit()` ships the pages it changed as one L0 file."""

    def __init__(self, tmp: Path, client: ReplicaClient, seed: int = 1) -> None:
        self.path = tmp / "primary.db"
        self.client = client
        self.rng = random.Random(seed)
        self.con = sqlite3.connect(self.path, isolation_level=None)
        self.con.execute(f"PRAGMA page_size={PS}")
        self.txid = 0
        self.states: dict[int, bytes] = {0: b""}
        self.con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        self._ship(1)

    def close(self) -> None:
        self.con.close()

    def commit(self, n: int = 1, size: int = 600) -> int:
        """`n` transactions shipped as one L0 file (an upload may span several TXIDs)."""
        for _ in range(n):
            self.con.execute("BEGIN")
            self.con.execute("INSERT INTO t(v) VALUES (?)", (self.rng.randbytes(size).hex(),))
            self.con.execute("UPDATE t SET v = v || 'x' WHERE id = ?",
                             (self.rng.randint(1, self.txid + 1),))
            self.con.execute("COMMIT")
        return self._ship(n)

    def commits(self, count: int) -> int:
        for _ in range(count):
            self.commit()
        return self.txid

    def delete(self) -> int:
        """The database was deleted: an LTX file with commit 0 and no pages."""
        self.con.close()
        self.path.unlink()
        lo = hi = self.txid + 1
        out = io.BytesIO()
        Encoder(out, Header(page_size=PS, commit=0, min_txid=lo, max_txid=hi,
                            timestamp=int(time.time() * 1000),
                            flags=FLAG_V3_NO_CHECKSUM)).finish()
        self.client.write_ltx(0, lo, hi, out.getvalue(), {})
        self.txid = hi
        self.states[hi] = b""
        return hi

    def _ship(self, n: int) -> int:
        data = self.path.read_bytes()
        old = self.states[self.txid]
        lo, hi = self.txid + 1, self.txid + n
        out = io.BytesIO()
        enc = Encoder(out, Header(page_size=PS, commit=len(data) // PS, min_txid=lo,
                                  max_txid=hi, timestamp=int(time.time() * 1000),
                                  flags=FLAG_V3_NO_CHECKSUM))
        for i in range(len(data) // PS):
            page = data[i * PS:(i + 1) * PS]
            if lo == 1 or old[i * PS:(i + 1) * PS] != page:
                enc.encode_page(i + 1, page)
        enc.finish()
        self.client.write_ltx(0, lo, hi, out.getvalue(), {})
        self.txid = hi
        self.states[hi] = data
        return hi

    def drop(self, level: int, lo: int, hi: int) -> None:
        """Delete the files of `level` within TXIDs lo..hi (what retention does)."""
        doomed = [i for i in self.client.ltx_files(level) if lo <= i.min_txid and i.max_txid <= hi]
        assert doomed
        self.client.delete_ltx(doomed)


# ---- a counting client (the thing under test is the follower, not the client) ----------------


class CountingClient(FileReplicaClient):
    """A FileReplicaClient that records every read-side call and can be 'down'."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.down = False

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if self.down:
            raise EndpointUnreachableError(f"cannot reach {self.description}: network is down")

    def ltx_files(self, level: int, *, with_metadata: bool = False) -> list[LtxFileInfo]:
        self._call("ltx_files", level)
        return super().ltx_files(level, with_metadata=with_metadata)

    def ltx_files_after(self, level: int, txid: int) -> list[LtxFileInfo]:
        self._call("ltx_files_after", level, txid)
        return super().ltx_files_after(level, txid)

    def ltx_metadata(self, info: LtxFileInfo) -> LtxFileInfo:
        self._call("ltx_metadata", info.key)
        return super().ltx_metadata(info)

    def levels(self) -> list[int]:
        self._call("levels")
        return super().levels()

    def read_ltx(self, info: LtxFileInfo, start: int = 0, end: int | None = None) -> bytes:
        self._call("read_ltx", info.level, info.min_txid, info.max_txid)
        return super().read_ltx(info, start, end)

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        self._call("list_objects", prefix)
        return super().list_objects(prefix)

    def get_object(self, key: str) -> bytes:
        self._call("get_object", key)
        return super().get_object(key)


# ---- fixtures and helpers -------------------------------------------------------------------


class World:
    def __init__(self, tmp: Path) -> None:
        root = tmp / "bucket" / NAME
        self.writer = FileReplicaClient(root)  # the primary's and the maintainer's client
        self.client = CountingClient(root)  # the follower's
        self.primary = Primary(tmp, self.writer)
        self.replica = Replica(tmp / "replica.db")
        self.maintainer = ReplicaMaintainer(NAME, self.writer, Schedule())

    def follower(self, **kwargs: Any) -> BucketFollower:
        kwargs.setdefault("poll_interval", 0.01)
        return BucketFollower(NAME, self.client, self.replica.apply, self.replica.position,
                              **kwargs)

    def check_replica(self) -> None:
        """The replica is exactly the primary's database at the replica's TXID."""
        assert self.replica.path.read_bytes() == self.primary.states[self.replica.pos]


@pytest.fixture
def world(tmp_path: Path) -> Any:
    w = World(tmp_path)
    yield w
    w.primary.close()


async def wait_for(pred: Callable[[], bool], seconds: float = 5.0, what: str = "it") -> None:
    with trio.move_on_after(seconds):
        while not pred():  # noqa: ASYNC110 (polls state that other tasks and threads change)
            await trio.sleep(0.005)
        return
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


# ---- the tests ------------------------------------------------------------------------------


@pytest.mark.trio
async def test_catch_up_from_empty_takes_the_snapshot(world: World) -> None:
    p = world.primary
    p.commits(5)  # TXIDs 1..6
    await world.maintainer.snapshot()  # L9 1-6
    # The snapshot's metadata names the checksum it must produce (flag 0x2: none inside).
    snap = world.writer.ltx_files(9)[0]
    world.writer.write_ltx(9, 1, 6, world.writer.read_ltx(snap),
                           {META_CHECKSUM: "0123456789abcdef"})
    p.drop(0, 1, 4)  # retention removed the oldest L0 files
    p.commits(2)  # 7, 8
    f = world.follower()
    assert await f.step() == 3
    assert world.replica.applied == [(1, 6), (7, 7), (8, 8)]
    assert world.replica.kinds == ["snapshot", "next", "next"]
    assert world.client.calls.count(("read_ltx", (9, 1, 6))) == 1
    world.check_replica()
    # The snapshot has no checksum of its own (flag 0x2): the follower asks the apply for
    # the one in its metadata; the L0 files carry theirs in their trailers.
    assert world.replica.expected == [0x0123456789ABCDEF, None, None]
    assert f.status.snapshots_applied == 1
    assert f.status.files_applied == 3
    assert f.status.remote_txid == 8
    assert f.status.last_error is None and f.status.last_poll is not None
    assert await f.step() == 0  # caught up


@pytest.mark.trio
async def test_catch_up_from_empty_without_snapshot_starts_at_txid_1(world: World) -> None:
    world.primary.commits(3)
    f = world.follower()
    assert await f.step() == 4
    assert world.replica.applied == [(1, 1), (2, 2), (3, 3), (4, 4)]
    world.check_replica()


@pytest.mark.trio
async def test_empty_bucket_waits_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                          ) -> None:
    caplog.set_level(logging.INFO, logger="litefs.replication")
    client = CountingClient(tmp_path / "bucket" / NAME)
    replica = Replica(tmp_path / "replica.db")
    f = BucketFollower(NAME, client, replica.apply, replica.position, poll_interval=0.01)
    assert await f.step() == 0
    assert await f.step() == 0
    assert f.status.last_error is None
    assert [r.levelname for r in caplog.records] == ["INFO"]  # "waiting", once
    assert "no backups" in caplog.records[0].getMessage()


@pytest.mark.trio
async def test_incremental_follow_while_running(world: World,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="litefs.replication")
    p = world.primary
    p.commits(2)
    f = world.follower()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(f.run)
        await wait_for(lambda: world.replica.pos == 3, what="the first files")
        world.check_replica()
        for n in (1, 3, 1, 2):  # uploads of 1..3 transactions while the follower runs
            await trio.sleep(0.03)
            p.commit(n)
            await wait_for(lambda: world.replica.pos == p.txid, what=f"TXID {p.txid:x}")
            world.check_replica()
        nursery.cancel_scope.cancel()
    assert world.replica.applied[3:] == [(4, 4), (5, 7), (8, 8), (9, 10)]
    assert world.replica.kinds[3:] == ["next"] * 4
    assert f.status.files_applied == len(world.replica.applied)
    assert f.status.remote_txid == 10
    assert any("applied 1 file(s)" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.trio
@pytest.mark.parametrize("level", [1, 2])
async def test_gap_bridged_by_a_compacted_file(world: World, level: int) -> None:
    p, m = world.primary, world.maintainer
    p.commits(1)  # 1, 2
    for lv in range(1, level + 1):
        await m.compact_level(lv)  # L1 (and L2) 1-2
    p.commits(1)  # 3
    f = world.follower()
    assert await f.step() == 2  # the plan from empty: L1 1-2, L0 3-3
    assert world.replica.applied == [(1, 2), (3, 3)]
    p.commits(5)  # 4..8
    for lv in range(1, level + 1):
        await m.compact_level(lv)  # L1 (and L2) 3-8: overlaps the replica at 3
    p.drop(0, 4, 8)  # the L0 files after the replica are gone
    for lv in range(1, level):
        p.drop(lv, 3, 8)  # and so is the L1 file when L2 is the bridge
    p.commits(2)  # 9, 10 at L0: a gap 4..8 at level 0
    world.client.calls.clear()
    assert await f.step() == 3
    assert world.replica.applied[2:] == [(3, 8), (9, 9), (10, 10)]
    assert world.replica.kinds[2:] == ["overlap", "next", "next"]
    world.check_replica()
    assert f.status.bridges_applied == 1
    assert f.status.snapshots_applied == 1  # only the catch-up from empty
    names = [c[0] for c in world.client.calls]
    assert "levels" not in names  # no restore plan (full listing) was needed
    assert ("read_ltx", (level, 3, 8)) in world.client.calls


@pytest.mark.trio
async def test_gap_without_bridge_takes_a_snapshot(world: World) -> None:
    p = world.primary
    p.commits(2)  # 1..3
    f = world.follower()
    assert await f.step() == 3
    p.commits(5)  # 4..8
    await world.maintainer.snapshot()  # L9 1-8
    p.drop(0, 4, 8)  # no compacted level holds 4..8
    p.commits(1)  # 9
    assert await f.step() == 2
    assert world.replica.applied[3:] == [(1, 8), (9, 9)]
    assert world.replica.kinds[3:] == ["snapshot", "next"]
    world.check_replica()
    assert f.status.snapshots_applied == 2  # from empty (1-1..3-3), then the gap's
    assert f.status.bridges_applied == 0


@pytest.mark.trio
async def test_full_check_sees_compacted_files_when_level_0_has_nothing_new(
        world: World) -> None:
    """Level 0 after the replica is empty (compacted away, nothing written since): only the
    periodic full check (a restore plan) can see the newer TXIDs."""
    p, m = world.primary, world.maintainer
    p.commits(1)  # 1, 2
    await m.compact_level(1)  # L1 1-2
    p.commits(1)  # 3
    f = world.follower()
    assert await f.step() == 2  # L1 1-2, L0 3-3
    p.commits(3)  # 4..6
    await m.compact_level(1)  # L1 3-6
    p.drop(0, 4, 6)
    assert await f.step() == 0  # level 0 shows nothing new
    assert await f.step(full=True) == 1
    assert world.replica.applied[2:] == [(3, 6)]
    assert world.replica.kinds[2:] == ["overlap"]
    world.check_replica()


@pytest.mark.trio
async def test_position_mismatch_resnapshots(world: World,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="litefs.replication")
    p = world.primary
    p.commits(3)  # 1..4
    f = world.follower(resnapshot_on=(Mismatch,))
    assert await f.step() == 4
    p.commits(2)  # 5, 6
    await world.maintainer.snapshot()  # L9 1-6
    p.commits(1)  # 7
    rejected: list[int] = []

    def reject(h: Header) -> str | None:
        if h.min_txid == 5 and not rejected:
            rejected.append(h.min_txid)
            return "pre-apply checksum 8000000000000abc does not match the replica's at TXID 4"
        return None

    world.replica.reject = reject
    assert await f.step() == 2
    assert world.replica.applied[4:] == [(1, 6), (7, 7)]
    assert world.replica.kinds[4:] == ["snapshot", "next"]
    world.check_replica()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "re-snapshotting" in warnings[0] and "does not match the replica's" in warnings[0]
    assert f.status.snapshots_applied == 2  # from empty, then the re-snapshot


@pytest.mark.trio
async def test_mismatch_after_resnapshot_backs_off_then_resnapshots_again(
        world: World) -> None:
    p = world.primary
    p.commits(2)  # 1..3
    f = world.follower(resnapshot_on=(Mismatch,))
    assert await f.step() == 3
    p.commits(2)  # 4, 5
    broken = [True]
    world.replica.reject = lambda h: "diverged" if broken[0] else None
    with pytest.raises(Mismatch):
        await f.step()  # the file, then the re-snapshot, are rejected
    assert world.replica.pos == 3
    broken[0] = False
    assert await f.step() == 5  # starts with the re-snapshot: the plan is L0 1-1..5-5
    assert world.replica.applied[3:] == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
    assert world.replica.pos == 5
    world.check_replica()


@pytest.mark.trio
async def test_deleted_database_is_applied_like_any_file(world: World) -> None:
    p = world.primary
    p.commits(2)
    f = world.follower()
    assert await f.step() == 3
    deleted = p.delete()
    assert await f.step() == 1
    assert world.replica.applied[-1] == (deleted, deleted)
    assert world.replica.commits[-1] == 0
    assert world.replica.path.read_bytes() == b""


@pytest.mark.trio
async def test_storage_errors_back_off_and_recover(world: World,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="litefs.replication")
    p = world.primary
    p.commits(1)
    f = world.follower(poll_interval=0.01, max_backoff=0.08)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(f.run)
        await wait_for(lambda: world.replica.pos == 2, what="the first files")
        world.client.down = True
        world.client.calls.clear()
        started = trio.current_time()
        await wait_for(lambda: f.status.failed_polls >= 3, what="failed polls")
        await trio.sleep(0.6)
        failed = len(world.client.calls)
        elapsed = trio.current_time() - started
        assert f.status.last_error is not None and "network is down" in f.status.last_error
        # Without back-off this would be one call per 10 ms poll (60+); with it the polls
        # space out to 20, 40, 80, 80... ms.
        assert 4 <= failed <= elapsed / 0.08 + 6, failed
        p.commits(2)  # written while the follower cannot see the bucket
        world.client.down = False
        await wait_for(lambda: world.replica.pos == p.txid, what="recovery")
        await wait_for(lambda: f.status.failed_polls == 0, what="a successful poll")
        nursery.cancel_scope.cancel()
    world.check_replica()
    assert f.status.last_error is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # once per distinct error, not once per poll
    assert "network is down" in warnings[0]
    assert any("following" in r.getMessage() and "again" in r.getMessage()
               for r in caplog.records if r.levelno == logging.INFO)


@pytest.mark.trio
async def test_caught_up_polls_list_level_0_after_the_position_only(world: World) -> None:
    p = world.primary
    p.commits(2)
    await world.maintainer.snapshot()
    p.commits(1)  # 4
    f = world.follower(poll_interval=0.01)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(f.run)
        await wait_for(lambda: world.replica.pos == 4, what="catch-up")
        await trio.sleep(0.05)  # the catch-up step has ended
        world.client.calls.clear()
        await trio.sleep(0.3)
        caught_up = list(world.client.calls)
        p.commit()  # 5
        await wait_for(lambda: world.replica.pos == 5, what="TXID 5")
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert caught_up, "the follower kept polling"
    assert set(caught_up) == {("ltx_files_after", (0, 4))}
    assert len(caught_up) <= 0.3 / 0.01 + 2  # one listing per poll interval
    # Following the new file: the same cheap listing, then one read.
    after = world.client.calls[len(caught_up):]
    assert {c[0] for c in after} <= {"ltx_files_after", "read_ltx"}
    assert ("read_ltx", (0, 5, 5)) in after


# ---- the real thing: a litefs mount writing to S3 --------------------------------------------


class ListRecorder:
    """ListObjectsV2 requests of a boto3 client: their query and how many keys came back."""

    def __init__(self, client: S3ReplicaClient) -> None:
        self.calls: list[tuple[dict[str, list[str]], int]] = []
        self._pending: list[dict[str, list[str]]] = []
        events = client.boto_client.meta.events
        events.register("before-send.s3.ListObjectsV2", self._request)
        events.register("after-call.s3.ListObjectsV2", self._response)

    def _request(self, request: Any, **_: Any) -> None:
        self._pending.append(parse_qs(urlsplit(request.url).query))

    def _response(self, parsed: dict[str, Any], **_: Any) -> None:
        self.calls.append((self._pending.pop(0) if self._pending else {},
                           len(parsed.get("Contents", []))))


@pytest.mark.trio
@pytest.mark.time_limit(60)
async def test_follows_a_real_mount_through_s3(bucket: Bucket, rig: Rig) -> None:
    m = rig.mount(write_config(rig.tmp / "litefs.yml", bucket.url()))
    m.start()
    sql = rig.sql(m.db(NAME), wal=True)
    first = sql.txns(3)[-1][0]
    await wait_for(lambda: max_txid(list_ltx(bucket.endpoint, bucket.name, "backups/app.db"))
                   >= first, 10, "the first uploads")
    client = client_for_url(bucket.url(f"backups/{NAME}"))
    assert isinstance(client, S3ReplicaClient)
    replica = Replica(rig.tmp / "replica.db")
    f = BucketFollower(NAME, client, replica.apply, replica.position, poll_interval=0.05)
    rec = ListRecorder(client)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(f.run)
            await wait_for(lambda: replica.pos >= first, 10, "catch-up")
            for _ in range(3):
                last = (await trio.to_thread.run_sync(sql.txns, 2))[-1][0]

                def reached(last: int = last) -> bool:
                    return replica.pos >= last

                await wait_for(reached, 10, f"TXID {last:x}")
            await trio.sleep(0.1)
            rec.calls.clear()
            await trio.sleep(0.4)  # caught up: only cheap listings
            caught_up = list(rec.calls)
            nursery.cancel_scope.cancel()
        state = await trio.to_thread.run_sync(sql.request, {"op": "hash"})
        assert replica.pos == state["txid"]
        assert file_hash(replica.path) == state["hash"]
        assert replica.kinds[0] == "snapshot" and set(replica.kinds[1:]) == {"next"}
        assert caught_up and len(caught_up) <= 0.4 / 0.05 + 2
        start_after = f"backups/{NAME}/0000/{replica.pos:016x}-ffffffffffffffff.ltx"
        assert all(q.get("start-after") == [start_after] and keys == 0
                   for q, keys in caught_up), caught_up

        # A second replica from empty, after a real snapshot of the bucket.
        await ReplicaMaintainer(NAME, client, Schedule()).snapshot()
        replica2 = Replica(rig.tmp / "replica2.db")
        f2 = BucketFollower(NAME, client, replica2.apply, replica2.position)
        assert await f2.step() == 1
        assert replica2.applied == [(1, replica.pos)] and f2.status.snapshots_applied == 1
        assert file_hash(replica2.path) == state["hash"]
    finally:
        client.close()
