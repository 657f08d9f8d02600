"""pyfuse3 Operations for the primary mount: a flat directory of databases.

Each name is a database; `<name>-journal`, `-wal` and `-shm` are its companions and `<name>-pos`
a read-only virtual file with its replication position. Everything else SQLite does not need
(subdirectories, renames, links) is refused with a clear errno and a log line saying why.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pyfuse3
import trio

from ..store.db import DB
from ..store.store import Store, valid_db_name
from ..types import COMPANIONS, FileKind, parse_name
from .boundary import fuse_boundary, to_fuse_error

log = logging.getLogger("litefs.fuse")

ROOT = pyfuse3.ROOT_INODE
POS_SIZE = 34  # "%016x/%016x\n"
POS_EPOCH_SIZE = 51  # "%016x/%016x/%016x\n": with an etcd or s3 lease, the epoch third
CACHE_TIMEOUT = 300.0  # every change goes through this process, so the kernel may cache
FSYNC_INLINE_LTX_FILES = 4  # fsyncs with more unsynced LTX files run in a worker thread


@dataclass(slots=True)
class Handle:
    db: DB
    kind: FileKind
    inode: int


def pos_text(db: DB) -> bytes:
    """`TXID/CHECKSUM` as LiteFS writes it; a database with an epoch history (an etcd or s3
    lease) adds `/EPOCH`, the newest term of its history (the primary's own term on the
    primary), so a client can tell which term its commit landed in."""
    txid, checksum = db.pos
    epoch = db.epochs.last_epoch
    if epoch:
        return f"{txid:016x}/{checksum:016x}/{epoch:016x}\n".encode()
    return f"{txid:016x}/{checksum:016x}\n".encode()


class PrimaryOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, store: Store, *,
                 invalidate_entry: Callable[..., None] = pyfuse3.invalidate_entry_async
                 ) -> None:
        super().__init__()
        self.store = store
        self._next_inode = ROOT + 1
        self._inode_of: dict[tuple[str, FileKind], int] = {}
        self._node: dict[int, tuple[str, FileKind]] = {}
        self._handles: dict[int, Handle] = {}
        self._times: dict[int, tuple[int, int, int]] = {}  # inode -> (atime, mtime, ctime)
        self._next_fh = 1
        # Tells the kernel a name is gone (pyfuse3's; the kernel-less tests pass their own).
        self._invalidate_entry = invalidate_entry
        #: Awaited after a request that committed a transaction, before it is answered
        #: (replication.commit: replica/bucket wait for the acknowledgement there); raises
        #: OSError (the application sees it) when the commit cannot be acknowledged.
        self.after_commit: Callable[[DB], Awaitable[None]] | None = None

    async def _committed(self, db: DB, before: int) -> None:
        """Called after a changing request with the TXID it started from."""
        if self.after_commit is not None and db.txid != before:
            await self.after_commit(db)

    # ---- names and inodes ----------------------------------------------------------------

    def inode_of(self, name: str, kind: FileKind) -> int | None:
        """The inode the kernel knows `name`'s file of `kind` by, if it has looked it up."""
        return self._inode_of.get((name, kind))

    def _inode(self, name: str, kind: FileKind) -> int:
        key = (name, kind)
        ino = self._inode_of.get(key)
        if ino is None:
            ino = self._next_inode
            self._next_inode += 1
            self._inode_of[key] = ino
            self._node[ino] = key
        return ino

    def _resolve(self, parent: int, raw: bytes) -> tuple[str, FileKind]:
        if parent != ROOT:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        name = os.fsdecode(raw)
        db_name, kind = parse_name(name)
        if not valid_db_name(db_name):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return db_name, kind

    def _lookup_node(self, inode: int) -> tuple[DB, FileKind]:
        node = self._node.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        db = self.store.dbs.get(node[0])
        if db is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return db, node[1]

    # ---- attributes ----------------------------------------------------------------------

    def _root_attrs(self) -> pyfuse3.EntryAttributes:
        st = self.store.root_stat()
        a = pyfuse3.EntryAttributes()
        a.st_ino = ROOT
        a.st_mode = stat.S_IFDIR | 0o755
        a.st_nlink = 2
        a.st_uid, a.st_gid = st.st_uid, st.st_gid
        a.st_atime_ns = st.st_atime_ns
        a.st_mtime_ns = st.st_mtime_ns
        a.st_ctime_ns = st.st_ctime_ns
        a.attr_timeout = 1.0
        a.entry_timeout = 1.0
        return a

    def _attrs(self, db: DB, kind: FileKind, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.st_nlink = 1
        if kind is FileKind.POS:
            st = db.stat(FileKind.DATABASE)
            a.st_mode = stat.S_IFREG | 0o444
            a.st_size = POS_EPOCH_SIZE if db.epochs.last_epoch else POS_SIZE
            a.attr_timeout = 0.0
            a.entry_timeout = 0.0
        else:
            st = db.stat(kind)
            a.st_mode = st.st_mode
            a.st_size = st.st_size
            a.st_blocks = st.st_blocks
            a.attr_timeout = CACHE_TIMEOUT
            a.entry_timeout = CACHE_TIMEOUT
        a.st_uid, a.st_gid = st.st_uid, st.st_gid
        a.st_blksize = 4096
        # The times a file had when the kernel first asked, kept for the whole mount: with
        # libfuse's auto_inval_data the kernel drops a file's whole page cache whenever
        # getattr reports a new mtime, and SQLite stats its files at every transaction, so
        # real times turned every commit into a cold cache for every reader. The kernel's
        # cache never needs that: every change of the primary goes through it, and a
        # replica's applies push or invalidate pages explicitly.
        times = self._times.get(inode)
        if times is None:
            times = self._times[inode] = (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = times
        return a

    @fuse_boundary
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if name == b".":
            return self._root_attrs()
        db_name, kind = self._resolve(parent_inode, name)
        db = self.store.get(db_name)
        if db is None or (kind.backed and not db.exists(kind)):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(db, kind, self._inode(db_name, kind))

    @fuse_boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode == ROOT:
            return self._root_attrs()
        db, kind = self._lookup_node(inode)
        return self._attrs(db, kind, inode)

    @fuse_boundary
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode == ROOT:
            raise pyfuse3.FUSEError(errno.EPERM)
        db, kind = self._lookup_node(inode)
        if kind is FileKind.POS:
            raise pyfuse3.FUSEError(errno.EPERM)
        if fields.update_size:
            await self._writes_allowed(db, kind)
            before = db.txid
            db.truncate(kind, attr.st_size)
            await self._committed(db, before)
        times = None
        if fields.update_atime or fields.update_mtime:
            self._times.pop(inode, None)  # an explicit utime: report the new times
            st = db.stat(kind)
            times = (attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                     attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns)
        db.set_attributes(
            kind, mode=stat.S_IMODE(attr.st_mode) if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else -1,
            gid=attr.st_gid if fields.update_gid else -1, times_ns=times)
        return self._attrs(db, kind, inode)

    # ---- directory -----------------------------------------------------------------------

    @fuse_boundary
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return 0

    def _dir_entries(self) -> list[tuple[str, Callable[[], pyfuse3.EntryAttributes]]]:
        """The directory listing: (name, attributes getter) in a stable order."""
        entries: list[tuple[str, Callable[[], pyfuse3.EntryAttributes]]] = []
        for name in self.store.names():
            db = self.store.dbs[name]
            kinds = [FileKind.DATABASE, *(k for k in COMPANIONS if db.exists(k)), FileKind.POS]
            for kind in kinds:
                fname = name + kind.suffix
                entries.append((fname, functools.partial(self._attrs, db, kind,
                                                         self._inode(db.name, kind))))
        return entries

    @fuse_boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._dir_entries()
        for i in range(start_id, len(entries)):
            fname, attrs = entries[i]
            try:
                a = attrs()
            except FileNotFoundError:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(fname), a, i + 1):
                break

    @fuse_boundary
    async def releasedir(self, fh: int) -> None:
        return None

    @fuse_boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = self.store.statvfs()
        out = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                      "f_ffree", "f_favail", "f_namemax"):
            setattr(out, field, getattr(sv, field))
        return out

    # ---- files ---------------------------------------------------------------------------

    def _new_handle(self, db: DB, kind: FileKind, inode: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = Handle(db, kind, inode)
        db.opened(kind)
        return fh

    @staticmethod
    async def _writes_allowed(db: DB, kind: FileKind) -> None:
        """Wait while a snapshot holds the database's writes (store/gate.py): a write that
        would start a transaction waits; one of a transaction under way goes on (the
        snapshot waits for that transaction to end). -shm is never held."""
        while db.gate.held and kind is not FileKind.SHM and not db.in_transaction:
            await db.gate.wait()

    @fuse_boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        db, kind = self._lookup_node(inode)
        if kind is FileKind.POS:
            if flags & os.O_ACCMODE != os.O_RDONLY:
                log.warning("%s-pos is read-only", db.name)
                raise pyfuse3.FUSEError(errno.EACCES)
            return pyfuse3.FileInfo(fh=self._new_handle(db, kind, inode), direct_io=True,
                                    keep_cache=False)
        db.fd(kind)
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
            await self._writes_allowed(db, kind)
            before = db.txid
            db.truncate(kind, 0)
            await self._committed(db, before)
        return pyfuse3.FileInfo(fh=self._new_handle(db, kind, inode), keep_cache=True)

    @fuse_boundary
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        db_name, kind = self._resolve(parent_inode, name)
        if kind is FileKind.POS:
            log.warning("%s-pos is a read-only virtual file; it cannot be created", db_name)
            raise pyfuse3.FUSEError(errno.EACCES)
        if not stat.S_ISREG(mode):
            log.warning("refusing to create %r: only regular files (databases) are supported",
                        os.fsdecode(name))
            raise pyfuse3.FUSEError(errno.EPERM)
        if kind is FileKind.DATABASE:
            db = self.store.create(db_name)
        else:
            existing = self.store.get(db_name)
            if existing is None:
                log.warning("refusing to create %r: database %r does not exist",
                            os.fsdecode(name), db_name)
                raise pyfuse3.FUSEError(errno.ENOENT)
            db = existing
        db.fd(kind, create=True, mode=stat.S_IMODE(mode))
        if flags & os.O_TRUNC:
            await self._writes_allowed(db, kind)
            before = db.txid
            db.truncate(kind, 0)
            await self._committed(db, before)
        inode = self._inode(db_name, kind)
        fh = self._new_handle(db, kind, inode)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._attrs(db, kind, inode)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        try:
            h = self._handles[fh]
            if h.kind is FileKind.POS:
                return pos_text(h.db)[off:off + size]
            return h.db.read(h.kind, off, size)
        except Exception as exc:
            raise to_fuse_error(exc, "read") from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        try:
            h = self._handles[fh]
            if h.kind is FileKind.POS:
                raise pyfuse3.FUSEError(errno.EACCES)
            if h.db.gate.held:
                await self._writes_allowed(h.db, h.kind)
            if self.after_commit is None:
                return h.db.write(h.kind, off, buf)
            before = h.db.txid
            n = h.db.write(h.kind, off, buf)
            await self._committed(h.db, before)
            return n
        except Exception as exc:
            raise to_fuse_error(exc, "write") from None

    # flush is left to pyfuse3's default (ENOSYS): the kernel then never sends FLUSH again,
    # which saves a round trip per close() and, more importantly, means a close() at process
    # exit never waits for an answer. The replica's fence keeps files open through its own
    # mount; with FLUSH, a SIGKILLed replica would wait forever for itself to answer.

    @fuse_boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self._handles[fh]
        if h.kind is FileKind.POS:
            return
        many = h.db.ltx.unsynced_count > FSYNC_INLINE_LTX_FILES
        job = h.db.fsync_job(h.kind, datasync)
        if many:
            # A checkpoint after many NORMAL commits: flushing takes long enough that other
            # requests (readers, the uploader) should not wait behind it.
            await trio.to_thread.run_sync(job)
        else:
            job()  # a thread hop would cost more than it saves (docs/fuse.md)

    @fuse_boundary
    async def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if h is None:
            return
        db = h.db
        db.released(h.kind)
        if db.refused_write and db.txid == 0 and not db.open_handles():
            self._drop_refused(db)

    def _drop_refused(self, db: DB) -> None:
        """A file created under the mount whose writes were all refused (a text file, a file
        copied in with cp, a database in journal_mode=OFF) leaves nothing behind once closed:
        no empty file in the mount, no empty directory in the data directory. Only when
        nothing was ever written to it: the store never deletes data."""
        if db.size(FileKind.DATABASE) or any(db.exists(k) for k in COMPANIONS):
            return
        self.store.forget(db.name)
        self._forget_names(db.name)
        log.info("%s: removed the empty file left by the refused write", db.name)

    def _forget_names(self, name: str, kinds: tuple[FileKind, ...] = tuple(FileKind), *,
                      tell_kernel: bool = True) -> None:
        """Drop the inodes of `name`'s files (and tell the kernel the names are gone)."""
        for kind in kinds:
            node = self._inode_of.pop((name, kind), None)
            if node is not None:
                self._node.pop(node, None)
                self._times.pop(node, None)
                if tell_kernel:
                    self._invalidate_entry(ROOT, os.fsencode(name + kind.suffix),
                                           ignore_enoent=True)

    @fuse_boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        db_name, kind = self._resolve(parent_inode, name)
        if kind is FileKind.POS:
            log.warning("%s-pos is a virtual file; it cannot be deleted", db_name)
            raise pyfuse3.FUSEError(errno.EPERM)
        db = self.store.dbs.get(db_name)
        if db is not None:
            await self._writes_allowed(db, kind)
        if db is None or not db.exists(kind):
            raise pyfuse3.FUSEError(errno.ENOENT)
        before = db.txid
        db.unlink(kind)
        await self._committed(db, before)
        if kind is FileKind.DATABASE and db.txid == 0:
            self.store.forget(db_name)  # never committed anything: leave no empty log behind
        gone = (kind, FileKind.POS) if kind is FileKind.DATABASE else (kind,)
        self._forget_names(db_name, gone, tell_kernel=False)  # the kernel did the unlink

    @fuse_boundary
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return True

    # ---- what SQLite does not need -------------------------------------------------------

    def _refuse(self, what: str, err: int = errno.EPERM) -> pyfuse3.FUSEError:
        log.warning("refusing %s: the litefs mount is a flat directory of SQLite databases", what)
        return pyfuse3.FUSEError(err)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise self._refuse(f"mkdir {os.fsdecode(name)!r} (subdirectories are not supported)")

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise self._refuse(f"mknod {os.fsdecode(name)!r} (only regular files)")

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        raise self._refuse(f"rename {os.fsdecode(name_old)!r} (a database is named once; copy "
                           "it with `sqlite3 .backup` instead)")

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise self._refuse(f"link {os.fsdecode(new_name)!r}")

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise self._refuse(f"symlink {os.fsdecode(name)!r}")

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise self._refuse(f"rmdir {os.fsdecode(name)!r}", errno.ENOTDIR)

    # getxattr/listxattr are left to pyfuse3's defaults (ENOSYS): the kernel then stops
    # asking for security.capability before every write. Answering ENOATTR instead made it
    # ask on every write (two extra round trips per WAL commit).
