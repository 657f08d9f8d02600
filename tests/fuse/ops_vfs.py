"""Drive the FUSE operations classes without the kernel.

S3QL's tests/t3_fs_api.py is the model: the filesystem's Operations object is called directly
with what the kernel would pass. Here the caller is real SQLite: `OpsVFS` is an apsw VFS
whose file operations become `PrimaryOperations` / `ReplicaOperations` calls, made from
SQLite's thread into the trio thread with `trio.from_thread.run`, as pyfuse3 dispatches the
kernel's requests. FUSE errors come back to SQLite as I/O errors (and are kept in `errors`).

This VFS has no shared-memory methods, so a WAL database runs in locking_mode=EXCLUSIVE;
`connect(..., wal=True)` opens `NAME-shm` through the operations as SQLite does through a
mount (the store refuses WAL writes while no `-shm` is open).
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import apsw
import pyfuse3
import trio

from litefs_py.fuse.ops import ROOT, PrimaryOperations
from tests.store.sqlite_vfs import SingleConnectionFile

_names = itertools.count()
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Ctx:
    """What pyfuse3.RequestContext carries (it cannot be built outside a request)."""

    pid: int = 1  # not this process (the replica lets its own requests through)
    uid: int = 0
    gid: int = 0
    umask: int = 0o022


@dataclass(frozen=True)
class Fields:
    """What pyfuse3.SetattrFields carries."""

    update_size: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run an operation in the trio thread, from SQLite's thread."""
    return trio.from_thread.run(functools.partial(fn, *args))


def _fuse_errors(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any) -> Any:
        try:
            return method(self, *args)
        except pyfuse3.FUSEError as exc:
            self.vfs.errors.append(exc.errno)
            raise apsw.IOError(os.strerror(exc.errno)) from None
    return wrapper  # type: ignore[return-value]


class OpsFile(SingleConnectionFile):
    def __init__(self, vfs: OpsVFS, fh: int, inode: int) -> None:
        self.vfs, self.fh, self.inode = vfs, fh, inode

    @_fuse_errors
    def xRead(self, amount: int, offset: int) -> bytes:
        return call(self.vfs.ops.read, self.fh, offset, amount)  # type: ignore[no-any-return]

    @_fuse_errors
    def xWrite(self, data: bytes, offset: int) -> None:
        assert call(self.vfs.ops.write, self.fh, offset, bytes(data)) == len(data)

    @_fuse_errors
    def xTruncate(self, size: int) -> None:
        attr = pyfuse3.EntryAttributes()
        attr.st_size = size
        call(self.vfs.ops.setattr, self.inode, attr, Fields(update_size=True), self.fh,
             self.vfs.ctx)

    @_fuse_errors
    def xSync(self, flags: int) -> None:
        call(self.vfs.ops.fsync, self.fh, False)

    @_fuse_errors
    def xFileSize(self) -> int:
        return call(self.vfs.ops.getattr, self.inode, self.vfs.ctx).st_size  # type: ignore[no-any-return]

    def xClose(self) -> None:
        call(self.vfs.ops.release, self.fh)


class OpsVFS(apsw.VFS):  # type: ignore[misc]
    def __init__(self, ops: PrimaryOperations, ctx: Ctx | None = None) -> None:
        self.ops = ops
        self.ctx = ctx or Ctx()
        self.vfs = self  # for _fuse_errors
        self.errors: list[int] = []
        self._shm: dict[int, int] = {}  # connection -> fh of the -shm it opened
        self.vfs_name = f"litefs-ops-{next(_names)}"
        super().__init__(self.vfs_name, "")

    def open(self, name: str, *, create: bool) -> tuple[int, int]:
        """(fh, inode) of `name`, as the kernel's open or create."""
        raw = os.fsencode(name)
        try:
            inode = call(self.ops.lookup, ROOT, raw, self.ctx).st_ino
        except pyfuse3.FUSEError as exc:
            if exc.errno != errno.ENOENT or not create:
                raise
            info, attrs = call(self.ops.create, ROOT, raw, stat.S_IFREG | 0o644,
                               os.O_RDWR | os.O_CREAT, self.ctx)
            return info.fh, attrs.st_ino
        return call(self.ops.open, inode, os.O_RDWR, self.ctx).fh, inode

    @_fuse_errors
    def xOpen(self, name: object, flags: list[int]) -> OpsFile:
        assert name is not None, "temporary files are not used by these tests"
        path = name if isinstance(name, str) else name.filename()  # type: ignore[attr-defined]
        create = bool(flags[0] & apsw.mapping_open_flags["SQLITE_OPEN_CREATE"])
        fh, inode = self.open(path.lstrip("/"), create=create)
        return OpsFile(self, fh, inode)

    @_fuse_errors
    def xDelete(self, name: str, syncdir: bool) -> None:
        call(self.ops.unlink, ROOT, os.fsencode(name.lstrip("/")), self.ctx)

    def xAccess(self, name: str, flags: int) -> bool:
        try:
            call(self.ops.lookup, ROOT, os.fsencode(name.lstrip("/")), self.ctx)
        except pyfuse3.FUSEError:
            return False
        return True

    def xFullPathname(self, name: str) -> str:
        return "/" + name.lstrip("/")

    def connect(self, name: str, *, wal: bool = False) -> apsw.Connection:
        """Call from a worker thread (`trio.to_thread.run_sync`)."""
        con = apsw.Connection(f"/{name}", vfs=self.vfs_name)
        con.execute("PRAGMA synchronous=NORMAL")
        if wal:
            con.execute("PRAGMA locking_mode=EXCLUSIVE")
            con.execute("PRAGMA user_version").fetchall()  # the database file exists
            # SQLite maps -shm through the mount.
            self._shm[id(con)] = self.open(f"{name}-shm", create=True)[0]
            assert con.execute("PRAGMA journal_mode=WAL").fetchall()[0][0] == "wal"
        return con

    def close(self, con: apsw.Connection) -> None:
        """Close a connection (in the worker thread: closing calls the operations)."""
        con.close()
        fh = self._shm.pop(id(con), None)
        if fh is not None:
            call(self.ops.release, fh)

    def run(self, name: str, *statements: str, wal: bool = False) -> list[tuple[Any, ...]]:
        """Connect, run the statements, close; the last statement's rows."""
        con = self.connect(name, wal=wal)
        try:
            result: list[tuple[Any, ...]] = []
            for statement in statements:
                result = [tuple(r) for r in con.execute(statement).fetchall()]
            return result
        finally:
            self.close(con)
