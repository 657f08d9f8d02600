"""The FUSE operations classes called directly, without the kernel (S3QL's t3_fs_api model):
real SQLite through PrimaryOperations, the names and virtual files, refusals with their errno,
the write gate, and the read-only replica's rules."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio

from litefs_py.fuse.ops import ROOT, PrimaryOperations
from litefs_py.fuse.replica_ops import LAG_FILE, PRIMARY_FILE, ReplicaOperations
from litefs_py.store.replica_state import ReplicaState
from litefs_py.store.store import Store
from litefs_py.types import FileKind
from tests.fuse.ops_vfs import Ctx, Fields, OpsVFS

CTX = Ctx()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data")
    yield s
    s.close()


class Kernel:
    """What the operations tell the kernel (entries to forget)."""

    def __init__(self) -> None:
        self.invalidated: list[bytes] = []

    def invalidate_entry(self, parent: int, name: bytes, **_: object) -> None:
        assert parent == ROOT
        self.invalidated.append(name)


@pytest.fixture
def kernel() -> Kernel:
    return Kernel()


@pytest.fixture
def ops(store: Store, kernel: Kernel) -> PrimaryOperations:
    return PrimaryOperations(store, invalidate_entry=kernel.invalidate_entry)


def run(fn: Callable[..., Any], *args: Any) -> Any:
    async def main() -> Any:
        return await fn(*args)
    return trio.run(main)


def fuse_errno(fn: Callable[..., Any], *args: Any) -> int:
    with pytest.raises(pyfuse3.FUSEError) as exc:
        run(fn, *args)
    return exc.value.errno


def listing(ops: PrimaryOperations, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """readdir's names and sizes (readdir_reply, the kernel's buffer, is replaced)."""
    out: dict[str, int] = {}

    def reply(token: object, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
        out[os.fsdecode(name)] = attr.st_size
        return True
    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    run(ops.readdir, 0, 0, None)
    return out


def with_sqlite(ops: PrimaryOperations, work: Callable[[OpsVFS], Any]) -> Any:
    """Run `work(vfs)` in a worker thread while the trio thread serves the operations."""
    vfs = OpsVFS(ops)
    try:
        async def main() -> Any:
            return await trio.to_thread.run_sync(work, vfs)
        return trio.run(main)
    finally:
        vfs.unregister()


@pytest.mark.parametrize("wal", [False, True])
def test_sqlite_through_the_operations(ops: PrimaryOperations, store: Store, wal: bool,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def work(vfs: OpsVFS) -> list[Any]:
        return vfs.run("app.db", "CREATE TABLE t(id INTEGER PRIMARY KEY, v)",
                       *[f"INSERT INTO t(v) VALUES ('value {i}')" for i in range(10)],
                       "SELECT count(*), max(v) FROM t", wal=wal)

    assert with_sqlite(ops, work) == [(10, "value 9")]
    db = store.dbs["app.db"]
    assert db.txid == (12 if wal else 11)  # journal_mode=WAL is a transaction too
    attrs = run(ops.lookup, ROOT, b"app.db", CTX)
    assert attrs.st_size == db.size(FileKind.DATABASE) and stat.S_ISREG(attrs.st_mode)
    pos = run(ops.lookup, ROOT, b"app.db-pos", CTX)
    info = run(ops.open, pos.st_ino, os.O_RDONLY, CTX)
    text = run(ops.read, info.fh, 0, 100)
    run(ops.release, info.fh)
    assert text == f"{db.txid:016x}/{db.checksum:016x}\n".encode()
    names = listing(ops, monkeypatch)
    assert names["app.db"] == db.size(FileKind.DATABASE) and names["app.db-pos"] == 34
    assert db.open_handles() == 0  # every handle SQLite opened was released


def test_names_that_are_refused(ops: PrimaryOperations, store: Store) -> None:
    with_sqlite(ops, lambda vfs: vfs.run("app.db", "CREATE TABLE t(v)"))
    mode = stat.S_IFREG | 0o644
    assert fuse_errno(ops.create, ROOT, b"app.db-pos", mode, os.O_RDWR, CTX) == errno.EACCES
    assert fuse_errno(ops.unlink, ROOT, b"app.db-pos", CTX) == errno.EPERM
    pos = run(ops.lookup, ROOT, b"app.db-pos", CTX).st_ino
    assert fuse_errno(ops.open, pos, os.O_WRONLY, CTX) == errno.EACCES
    assert fuse_errno(ops.create, ROOT, b"missing.db-wal", mode, os.O_RDWR, CTX) == errno.ENOENT
    assert fuse_errno(ops.mkdir, ROOT, b"sub", 0o755, CTX) == errno.EPERM
    assert fuse_errno(ops.rename, ROOT, b"app.db", ROOT, b"b.db", 0, CTX) == errno.EPERM
    assert fuse_errno(ops.symlink, ROOT, b"l", b"app.db", CTX) == errno.EPERM
    assert fuse_errno(ops.create, ROOT, b"fifo", stat.S_IFIFO | 0o644, 0, CTX) == errno.EPERM
    assert fuse_errno(ops.lookup, ROOT, b"nope.db", CTX) == errno.ENOENT
    assert fuse_errno(ops.lookup, 99, b"x", CTX) == errno.ENOTDIR
    assert store.names() == ["app.db"]


def test_setattr_reaches_the_backing_file(ops: PrimaryOperations, store: Store) -> None:
    with_sqlite(ops, lambda vfs: vfs.run("app.db", "CREATE TABLE t(v)"))
    inode = run(ops.lookup, ROOT, b"app.db", CTX).st_ino
    attr = pyfuse3.EntryAttributes()
    attr.st_mode = stat.S_IFREG | 0o600
    attr.st_atime_ns = attr.st_mtime_ns = 1_000_000_000_000_000_000
    got = run(ops.setattr, inode, attr, Fields(update_mode=True, update_mtime=True), None, CTX)
    st = store.dbs["app.db"].stat(FileKind.DATABASE)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime_ns == attr.st_mtime_ns
    assert stat.S_IMODE(got.st_mode) == 0o600 and got.st_mtime_ns == attr.st_mtime_ns


def test_refused_text_file_leaves_nothing(ops: PrimaryOperations, store: Store,
                                          kernel: Kernel,
                                          caplog: pytest.LogCaptureFixture) -> None:
    info, attrs = run(ops.create, ROOT, b"notes.txt", stat.S_IFREG | 0o644,
                      os.O_WRONLY | os.O_CREAT, CTX)
    assert fuse_errno(ops.write, info.fh, 0, b"remember the milk\n") == errno.EIO
    assert "not a SQLite database" in caplog.text
    assert (store.data_dir / "dbs" / "notes.txt").exists()  # until it is closed
    run(ops.release, info.fh)
    assert kernel.invalidated == [b"notes.txt"]
    assert not (store.data_dir / "dbs" / "notes.txt").exists()
    assert fuse_errno(ops.lookup, ROOT, b"notes.txt", CTX) == errno.ENOENT
    assert fuse_errno(ops.getattr, attrs.st_ino, CTX) == errno.ENOENT


def test_a_new_transaction_waits_while_a_snapshot_holds_the_writes(
        ops: PrimaryOperations, store: Store) -> None:
    """While a snapshot holds a database's writes (store/gate.py), the write that would start
    a transaction (the journal's header) waits; writes of a transaction already under way go
    on, so that it can finish."""
    with_sqlite(ops, lambda vfs: vfs.run("app.db", "CREATE TABLE t(v)"))
    db = store.dbs["app.db"]
    mode = stat.S_IFREG | 0o644
    journal, _ = run(ops.create, ROOT, b"app.db-journal", mode, os.O_RDWR | os.O_CREAT, CTX)
    database = run(ops.open, run(ops.lookup, ROOT, b"app.db", CTX).st_ino, os.O_RDWR, CTX)
    page1 = store.dbs["app.db"].read(FileKind.DATABASE, 0, 4096)
    events: list[str] = []

    async def main() -> None:
        async def begin() -> None:
            await ops.write(journal.fh, 0, bytes.fromhex("d9d505f920a163d7") + bytes(504))
            events.append("journal written")

        async with trio.open_nursery() as nursery:
            with db.gate.hold():
                nursery.start_soon(begin)
                await trio.sleep(0.05)
                events.append("gate released")
        assert db.in_transaction
        with db.gate.hold():
            with trio.fail_after(1):  # under way: not held
                await ops.write(database.fh, 0, page1)
            events.append("page written while held")

    trio.run(main)
    assert events == ["gate released", "journal written", "page written while held"]
    run(ops.release, journal.fh)
    run(ops.release, database.fh)


def test_replica_is_read_only_for_applications(store: Store, kernel: Kernel) -> None:
    primary = PrimaryOperations(store, invalidate_entry=kernel.invalidate_entry)
    with_sqlite(primary, lambda vfs: vfs.run("app.db", "CREATE TABLE t(v)"))
    state = ReplicaState(primary_url="http://primary:20202", source="primary")
    ops = ReplicaOperations(store, state, invalidate_entry=kernel.invalidate_entry)
    db_inode = run(ops.lookup, ROOT, b"app.db", CTX).st_ino
    assert fuse_errno(ops.open, db_inode, os.O_RDWR, CTX) == errno.EROFS
    info = run(ops.open, db_inode, os.O_RDONLY, CTX)
    assert run(ops.read, info.fh, 0, 16) == b"SQLite format 3\x00"
    assert fuse_errno(ops.write, info.fh, 0, b"x") == errno.EROFS
    run(ops.release, info.fh)
    assert fuse_errno(ops.unlink, ROOT, b"app.db", CTX) == errno.EROFS
    mode = stat.S_IFREG | 0o644
    assert fuse_errno(ops.create, ROOT, b"new.db", mode, os.O_RDWR, CTX) == errno.EROFS
    # -shm is the readers' own: created and written.
    shm, _ = run(ops.create, ROOT, b"app.db-shm", mode, os.O_RDWR | os.O_CREAT, CTX)
    assert run(ops.write, shm.fh, 0, b"\x01" * 8) == 8
    run(ops.release, shm.fh)
    # The virtual files.
    primary_file = run(ops.lookup, ROOT, PRIMARY_FILE.encode(), CTX)
    fh = run(ops.open, primary_file.st_ino, os.O_RDONLY, CTX).fh
    assert run(ops.read, fh, 0, 100) == b"http://primary:20202\n"
    run(ops.release, fh)
    lag = run(ops.lookup, ROOT, LAG_FILE.encode(), CTX)
    assert fuse_errno(ops.open, lag.st_ino, os.O_WRONLY, CTX) == errno.EROFS
    # The filesystem's own requests (its reader fence) may open for writing.
    own = Ctx(pid=os.getpid())
    fh = run(ops.open, db_inode, os.O_RDWR, own).fh
    run(ops.release, fh)
    assert ops.inode_of("app.db", FileKind.DATABASE) == db_inode
