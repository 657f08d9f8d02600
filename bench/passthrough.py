"""A bare pyfuse3 + trio passthrough filesystem: the floor for any Python FUSE design.

    python bench/passthrough.py BACKING_DIR MOUNTPOINT

A flat directory whose files are the files of BACKING_DIR. It does the least a correct FUSE
filesystem can do with pyfuse3 and trio, so that `bench/mount.py` can compare litefs-py with
it: every handler answers inline (os.pread/os.pwrite/os.fsync on the trio thread, never
trio.to_thread), one backing descriptor is shared by all opens of an inode, the kernel page
cache is kept across opens (keep_cache, no direct_io) and attribute/entry timeouts are
pyfuse3's defaults (300 s; every change goes through this process).

SIGTERM/SIGINT/SIGHUP end it cleanly: a trio task calls `pyfuse3.terminate()`, then
`pyfuse3.close(unmount=...)` decides from /proc/self/mounts (never a stat of our own mount,
which would wait on ourselves).
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys

import pyfuse3
import trio

from litefs_py.mountinfo import is_mounted

ROOT = pyfuse3.ROOT_INODE


class Passthrough(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, backing: str) -> None:
        super().__init__()
        self.backing = os.path.abspath(backing)
        self._ino_of: dict[str, int] = {}
        self._name_of: dict[int, str] = {}
        self._next_ino = ROOT + 1
        # inode -> [fd, open count]; the file handle handed to the kernel is the inode.
        self._fds: dict[int, list[int]] = {}

    # ---- helpers ---------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        return os.path.join(self.backing, name)

    def _ino(self, name: str) -> int:
        ino = self._ino_of.get(name)
        if ino is None:
            ino = self._next_ino
            self._next_ino += 1
            self._ino_of[name] = ino
            self._name_of[ino] = name
        return ino

    def _name(self, parent: int, raw: bytes) -> str:
        if parent != ROOT:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return os.fsdecode(raw)

    @staticmethod
    def _attrs(st: os.stat_result, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.st_mode = st.st_mode
        a.st_nlink = st.st_nlink
        a.st_uid = st.st_uid
        a.st_gid = st.st_gid
        a.st_rdev = st.st_rdev
        a.st_size = st.st_size
        a.st_blksize = st.st_blksize
        a.st_blocks = st.st_blocks
        a.st_atime_ns = st.st_atime_ns
        a.st_mtime_ns = st.st_mtime_ns
        a.st_ctime_ns = st.st_ctime_ns
        return a

    def _stat(self, ino: int) -> os.stat_result:
        if ino == ROOT:
            return os.stat(self.backing)
        entry = self._fds.get(ino)
        if entry is not None:
            return os.fstat(entry[0])
        name = self._name_of.get(ino)
        if name is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        try:
            return os.lstat(self._path(name))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    def _acquire(self, ino: int, path: str, create_mode: int | None = None) -> int:
        entry = self._fds.get(ino)
        if entry is not None:
            entry[1] += 1
            return entry[0]
        flags = os.O_RDWR | os.O_CLOEXEC
        if create_mode is not None:
            flags |= os.O_CREAT
        try:
            fd = os.open(path, flags, create_mode or 0o644)
        except PermissionError:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._fds[ino] = [fd, 1]
        return fd

    # ---- operations ------------------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        fname = self._name(parent_inode, name)
        try:
            st = os.lstat(self._path(fname))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        return self._attrs(st, self._ino(fname))

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(self._stat(inode), inode)

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode == ROOT:
            raise pyfuse3.FUSEError(errno.EPERM)
        entry = self._fds.get(inode)
        name = self._name_of.get(inode)
        target: int | str
        if entry is not None:
            target = entry[0]
        elif name is not None:
            target = self._path(name)
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        try:
            if fields.update_size:
                os.truncate(target, attr.st_size)
            if fields.update_mode:
                os.chmod(target, stat.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                os.chown(target, attr.st_uid if fields.update_uid else -1,
                         attr.st_gid if fields.update_gid else -1)
            if fields.update_atime or fields.update_mtime:
                st = os.stat(target)
                os.utime(target, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                                     attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        return self._attrs(self._stat(inode), inode)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        names = sorted(os.listdir(self.backing))
        for i in range(start_id, len(names)):
            try:
                st = os.lstat(self._path(names[i]))
            except FileNotFoundError:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(names[i]),
                                         self._attrs(st, self._ino(names[i])), i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self.backing)
        out = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                      "f_ffree", "f_favail", "f_namemax"):
            setattr(out, field, getattr(sv, field))
        return out

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        name = self._name_of.get(inode)
        if name is None and inode not in self._fds:
            raise pyfuse3.FUSEError(errno.ENOENT)
        try:
            fd = self._acquire(inode, self._path(name or ""))
            if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
                os.ftruncate(fd, 0)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        fname = self._name(parent_inode, name)
        path = self._path(fname)
        ino = self._ino(fname)
        try:
            if flags & os.O_EXCL:
                try:
                    os.lstat(path)
                except FileNotFoundError:
                    pass
                else:
                    raise pyfuse3.FUSEError(errno.EEXIST)
            fd = self._acquire(ino, path, stat.S_IMODE(mode))
            if flags & os.O_TRUNC:
                os.ftruncate(fd, 0)
            if ctx.uid != os.geteuid() or ctx.gid != os.getegid():
                os.fchown(fd, ctx.uid, ctx.gid)
            st = os.fstat(fd)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        return pyfuse3.FileInfo(fh=ino, keep_cache=True), self._attrs(st, ino)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        try:
            return os.pread(self._fds[fh][0], size, off)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        try:
            return os.pwrite(self._fds[fh][0], buf, off)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    async def flush(self, fh: int) -> None:
        return None

    async def fsync(self, fh: int, datasync: bool) -> None:
        try:
            if datasync:
                os.fdatasync(self._fds[fh][0])
            else:
                os.fsync(self._fds[fh][0])
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    async def release(self, fh: int) -> None:
        entry = self._fds.get(fh)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._fds[fh]
            os.close(entry[0])

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        fname = self._name(parent_inode, name)
        try:
            os.unlink(self._path(fname))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        ino = self._ino_of.pop(fname, None)
        if ino is not None:
            # An open descriptor keeps serving the unlinked inode; no name maps to it now.
            self._name_of.pop(ino, None)


# ---- lifecycle ------------------------------------------------------------------------------

async def _watch_signals(cancel: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for _ in signals:
            pyfuse3.terminate()
            cancel.cancel()
            return


async def _serve() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, nursery.cancel_scope)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python bench/passthrough.py BACKING_DIR MOUNTPOINT", file=sys.stderr)
        return 2
    backing = os.path.abspath(argv[0])
    mountpoint = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(argv[1]))),
                              os.path.basename(os.path.abspath(argv[1])))
    if not os.path.isdir(backing):
        print(f"passthrough: {backing} is not a directory", file=sys.stderr)
        return 2
    options = set(pyfuse3.default_options)
    options.add("fsname=passthrough")
    if os.environ.get("PASSTHROUGH_DEBUG"):
        options.add("debug")  # libfuse logs every request on stderr
    pyfuse3.init(Passthrough(backing), mountpoint, options)
    try:
        trio.run(_serve)
    finally:
        pyfuse3.close(unmount=is_mounted(mountpoint))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
