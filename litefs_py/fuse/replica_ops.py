"""pyfuse3 Operations for a read replica: the primary's layout, read-only for applications.

Applications may read every database and use `-shm` (SQLite's readers need it for their
locks and the wal-index), but opening a database, journal or WAL for writing is refused with
EROFS. SQLite then reopens the file read-only and reports any write as "attempt to write a
readonly database" at once, instead of failing later in the middle of a transaction.

The filesystem process itself opens databases read-write through the mount (its reader
fence takes SQLite's write locks, which need a writable descriptor), so requests from this
process are let through.

Two more virtual files: `.primary` (the primary's hostname with an etcd or s3 lease, its
advertise URL with a static one; absent while the replica follows the bucket only) and `.lag`
(seconds the replica is behind, e.g. "0.012").

With an etcd or s3 lease the same object serves both roles: `primary_mode` switches it in
place (no remount; open files stay open). As primary it is `PrimaryOperations` in every
request, and `.primary` and `.lag` are absent, as on a primary; as replica it refuses writes.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Callable

import pyfuse3
import trio

from ..store.db import DB
from ..store.replica_state import ReplicaState
from ..store.store import Store
from ..types import FileKind
from .boundary import fuse_boundary, to_fuse_error
from .ops import ROOT, PrimaryOperations

log = logging.getLogger("litefs.fuse")

PRIMARY_FILE = ".primary"
LAG_FILE = ".lag"
REFUSAL_LOG_INTERVAL = 10.0  # seconds between log lines about refused writes, per database


class ReplicaOperations(PrimaryOperations):
    def __init__(self, store: Store, state: ReplicaState, *,
                 invalidate_entry: Callable[..., None] = pyfuse3.invalidate_entry_async
                 ) -> None:
        super().__init__(store, invalidate_entry=invalidate_entry)
        self.state = state
        self._pid = os.getpid()
        self._virtual = {PRIMARY_FILE: self._next_inode, LAG_FILE: self._next_inode + 1}
        self._virtual_name = {ino: name for name, ino in self._virtual.items()}
        self._next_inode += 2
        self._writable: set[int] = set()  # handles this process opened for writing
        self._refusals: dict[str, float] = {}
        self._virtual_fh: dict[int, int] = {}  # open handles of the virtual files
        #: True while this node is the primary (lease.type etcd/s3 switch it in place).
        self.primary_mode = False
        self._write_pause: trio.Event | None = None

    def pause_writes(self) -> None:
        """A handoff: writes that would start a transaction wait (those of a transaction
        under way go on) until `resume_writes`; if the node is no longer the primary by
        then, they are refused (EROFS) and the application retries on the new primary."""
        if self._write_pause is None:
            self._write_pause = trio.Event()

    def resume_writes(self) -> None:
        pause, self._write_pause = self._write_pause, None
        if pause is not None:
            pause.set()

    def _ours(self, ctx: pyfuse3.RequestContext) -> bool:
        """Whether a request comes from this process (ctx.pid is the calling *thread's* id:
        the fence runs in worker threads)."""
        return ctx.pid == self._pid or os.path.exists(f"/proc/self/task/{ctx.pid}")

    # ---- the virtual files ---------------------------------------------------------------

    def _virtual_text(self, name: str) -> bytes | None:
        if self.primary_mode:
            return None  # as on a primary: no .primary (LiteFS's contract), no .lag
        if name == PRIMARY_FILE:
            shown = self.state.primary_hostname or self.state.primary_url
            return f"{shown}\n".encode() if shown and self.state.source != "bucket" else None
        return f"{self.state.lag_seconds():.3f}\n".encode()

    def _virtual_attrs(self, name: str) -> pyfuse3.EntryAttributes:
        text = self._virtual_text(name)
        if text is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        a = self._root_attrs()
        a.st_ino = self._virtual[name]
        a.st_mode = stat.S_IFREG | 0o444
        a.st_nlink = 1
        a.st_size = len(text)
        a.attr_timeout = 0.0
        a.entry_timeout = 0.0
        return a

    def _refuse_write(self, db_name: str) -> pyfuse3.FUSEError:
        now = time.monotonic()
        if now - self._refusals.get(db_name, -REFUSAL_LOG_INTERVAL) >= REFUSAL_LOG_INTERVAL:
            self._refusals[db_name] = now
            log.warning("%s: refusing a write: this is a read-only replica of %s; write on "
                        "the primary", db_name, self.state.primary_url or "the bucket's primary")
        return pyfuse3.FUSEError(errno.EROFS)

    # ---- overrides -----------------------------------------------------------------------

    @fuse_boundary
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        fname = os.fsdecode(name)
        if parent_inode == ROOT and fname in self._virtual:
            return self._virtual_attrs(fname)
        return await super().lookup(parent_inode, name, ctx)

    @fuse_boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        name = self._virtual_name.get(inode)
        if name is not None:
            return self._virtual_attrs(name)
        return await super().getattr(inode, ctx)

    def _dir_entries(self) -> list[tuple[str, Callable[[], pyfuse3.EntryAttributes]]]:
        virtual = [(n, functools.partial(self._virtual_attrs, n))
                   for n in (PRIMARY_FILE, LAG_FILE) if self._virtual_text(n) is not None]
        return virtual + super()._dir_entries()

    @fuse_boundary
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode in self._virtual_name:
            raise pyfuse3.FUSEError(errno.EROFS)
        db, kind = self._lookup_node(inode)
        if kind is not FileKind.SHM and not self.primary_mode and not self._ours(ctx):
            raise self._refuse_write(db.name)
        return await super().setattr(inode, attr, fields, fh, ctx)

    @fuse_boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        name = self._virtual_name.get(inode)
        if name is not None:
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise pyfuse3.FUSEError(errno.EROFS)
            return pyfuse3.FileInfo(fh=self._virtual_handle(inode), direct_io=True,
                                    keep_cache=False)
        db, kind = self._lookup_node(inode)
        if self.primary_mode:
            return await super().open(inode, flags, ctx)
        writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        if writing and kind not in (FileKind.SHM, FileKind.POS) and not self._ours(ctx):
            # SQLite always tries read-write first and falls back to read-only: not worth
            # a warning (actual writes are).
            log.debug("%s: read-write open refused; SQLite reopens it read-only", db.name)
            raise pyfuse3.FUSEError(errno.EROFS)
        info = await super().open(inode, flags & ~os.O_TRUNC if kind is not FileKind.SHM
                                  else flags, ctx)
        if writing:
            self._writable.add(info.fh)
        return info

    def _virtual_handle(self, inode: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._virtual_fh[fh] = inode
        return fh

    @fuse_boundary
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if self.primary_mode:
            return await super().create(parent_inode, name, mode, flags, ctx)
        db_name, kind = self._resolve(parent_inode, name)
        if kind is not FileKind.SHM or self.store.get(db_name) is None:
            raise self._refuse_write(db_name)
        info, attrs = await super().create(parent_inode, name, mode, flags, ctx)
        self._writable.add(info.fh)
        return info, attrs

    async def read(self, fh: int, off: int, size: int) -> bytes:
        inode = self._virtual_fh.get(fh)
        if inode is not None:
            text = self._virtual_text(self._virtual_name[inode]) or b""
            return text[off:off + size]
        return await super().read(fh, off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if self.primary_mode:
            pause = self._write_pause
            if pause is not None:
                h = self._handles.get(fh)
                if h is not None and h.kind is not FileKind.SHM and not h.db.in_transaction:
                    await pause.wait()
                    if not self.primary_mode:
                        raise self._refuse_write(h.db.name)
            return await super().write(fh, off, buf)
        try:
            h = self._handles[fh]
            if h.kind is not FileKind.SHM:
                raise self._refuse_write(h.db.name)
            return h.db.write(FileKind.SHM, off, buf)
        except Exception as exc:
            raise to_fuse_error(exc, "write") from None

    @fuse_boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        if self.primary_mode and fh not in self._virtual_fh:
            await super().fsync(fh, datasync)
        # A replica: nothing an application writes here needs to be durable (-shm only).

    @fuse_boundary
    async def release(self, fh: int) -> None:
        if self._virtual_fh.pop(fh, None) is not None:
            return
        self._writable.discard(fh)
        await super().release(fh)

    @fuse_boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if self.primary_mode:
            return await super().unlink(parent_inode, name, ctx)
        db_name, _kind = self._resolve(parent_inode, name)
        raise self._refuse_write(db_name)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        if self.primary_mode:
            return await super().rename(parent_inode_old, name_old, parent_inode_new,
                                        name_new, flags, ctx)
        raise self._refuse_write(os.fsdecode(name_old))


class ReplicaKernelCache:
    """Tells the kernel about pages an apply changed (called from the apply's worker thread,
    as pyfuse3 requires for these notifications)."""

    def __init__(self, ops: ReplicaOperations) -> None:
        self.ops = ops

    def _ino(self, db: DB) -> int | None:
        return self.ops.inode_of(db.name, FileKind.DATABASE)

    def store(self, db: DB, offset: int, data: bytes) -> None:
        ino = self._ino(db)
        if ino is None:
            return  # never looked up: the kernel caches nothing of it
        try:
            pyfuse3.notify_store(ino, offset, data)
        except OSError:
            self.invalidate(db)

    def invalidate(self, db: DB) -> None:
        ino = self._ino(db)
        if ino is None:
            return
        try:
            pyfuse3.invalidate_inode(ino, attr_only=False)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # the kernel already forgot the inode
                log.warning("%s: could not invalidate the kernel cache: %s", db.name, exc)
