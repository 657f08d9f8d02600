"""Real SQLite whose file operations are the store's verbs, without FUSE.

`StoreVFS` is an apsw VFS: every xOpen/xRead/xWrite/xTruncate/xSync/xDelete/xAccess SQLite
makes goes to `Store`/`DB` exactly as the FUSE layer would pass it on (fuse/ops.py), so the
store sees the byte sequences real SQLite produces: journal headers, page writes, WAL frames
split at odd offsets, PERSIST zeroing, checkpoints, truncations.

This VFS has no shared-memory methods, so SQLite keeps a WAL database's wal-index in heap
memory, which it allows only with `PRAGMA locking_mode=EXCLUSIVE` (set by `connect(...,
wal=True)`). Through the mount a WAL database has its `-shm` open, and the store refuses WAL
writes otherwise; `connect` counts one `-shm` handle for such a connection, as the mount would.

An OSError from the store (a refused write is one, EIO) is recorded in `errors` and handed
to SQLite as an I/O error, as the FUSE layer turns it into an errno.

`hooks` run before a verb reaches the store (to make the operation that follows fail).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import apsw

from litefs_py.store.db import DB
from litefs_py.store.store import Store
from litefs_py.types import FileKind, parse_name

_names = itertools.count()
F = TypeVar("F", bound=Callable[..., Any])


def _io_errors(method: F) -> F:
    """OSError -> apsw.IOError (SQLite sees SQLITE_IOERR), keeping the store's error."""
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any) -> Any:
        try:
            return method(self, *args)
        except OSError as exc:
            self.vfs.errors.append(exc)
            raise apsw.IOError(str(exc)) from None
    return wrapper  # type: ignore[return-value]


@dataclass
class Hooks:
    """Called with (db, kind) before the store performs a delete / truncate."""

    before_delete: list[Callable[[DB, FileKind], None]] = field(default_factory=list)
    before_truncate: list[Callable[[DB, FileKind, int], None]] = field(default_factory=list)


class SingleConnectionFile:  # method names are SQLite's (apsw)
    """What a file needs beyond its data when one connection uses it: no locks to take, no
    file controls, 4 KiB sectors, no special device properties."""

    def xLock(self, level: int) -> None:
        pass

    def xUnlock(self, level: int) -> None:
        pass

    def xCheckReservedLock(self) -> bool:
        return False

    def xFileControl(self, op: int, ptr: int) -> bool:
        return False

    def xSectorSize(self) -> int:
        return 4096

    def xDeviceCharacteristics(self) -> int:
        return 0


class _TempFile(SingleConnectionFile):
    """SQLite's nameless temporary files (statement journals, temp tables): in memory."""

    def __init__(self) -> None:
        self.data = bytearray()

    def xRead(self, amount: int, offset: int) -> bytes:
        return bytes(self.data[offset:offset + amount])

    def xWrite(self, data: bytes, offset: int) -> None:
        end = offset + len(data)
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))
        self.data[offset:end] = data

    def xTruncate(self, size: int) -> None:
        del self.data[size:]

    def xSync(self, flags: int) -> None:
        pass

    def xFileSize(self) -> int:
        return len(self.data)

    def xClose(self) -> None:
        pass


class _StoreFile(SingleConnectionFile):
    def __init__(self, vfs: StoreVFS, db: DB, kind: FileKind) -> None:
        self.vfs, self.db, self.kind = vfs, db, kind
        db.opened(kind)

    @_io_errors
    def xRead(self, amount: int, offset: int) -> bytes:
        return self.db.read(self.kind, offset, amount)

    @_io_errors
    def xWrite(self, data: bytes, offset: int) -> None:
        n = self.db.write(self.kind, offset, bytes(data))
        assert n == len(data)

    @_io_errors
    def xTruncate(self, size: int) -> None:
        for hook in self.vfs.hooks.before_truncate:
            hook(self.db, self.kind, size)
        self.db.truncate(self.kind, size)

    @_io_errors
    def xSync(self, flags: int) -> None:
        self.db.fsync(self.kind)

    @_io_errors
    def xFileSize(self) -> int:
        return self.db.size(self.kind)

    def xClose(self) -> None:
        self.db.released(self.kind)


class StoreVFS(apsw.VFS):  # type: ignore[misc]
    def __init__(self, store: Store) -> None:
        self.store = store
        self.vfs = self  # for _io_errors
        self.errors: list[OSError] = []
        self.hooks = Hooks()
        self.vfs_name = f"litefs-store-{next(_names)}"
        super().__init__(self.vfs_name, "")

    def _split(self, name: str) -> tuple[str, FileKind]:
        return parse_name(name.lstrip("/"))

    def xOpen(self, name: object, flags: list[int]) -> SingleConnectionFile:
        if name is None:
            return _TempFile()
        path = name if isinstance(name, str) else name.filename()  # type: ignore[attr-defined]
        db_name, kind = self._split(path)
        create = bool(flags[0] & apsw.mapping_open_flags["SQLITE_OPEN_CREATE"])
        if kind is FileKind.DATABASE:
            db = self.store.get(db_name)
            if db is None:
                if not create:
                    raise apsw.CantOpenError(path)
                db = self.store.create(db_name)
        else:
            existing = self.store.get(db_name)
            if existing is None:
                raise apsw.CantOpenError(path)
            db = existing
        db.fd(kind, create=create)
        return _StoreFile(self, db, kind)

    @_io_errors
    def xDelete(self, name: str, syncdir: bool) -> None:
        db_name, kind = self._split(name)
        db = self.store.dbs.get(db_name)
        if db is None or not db.exists(kind):
            raise apsw.IOError(name)  # SQLITE_IOERR_DELETE_NOENT is ignored by SQLite
        for hook in self.hooks.before_delete:
            hook(db, kind)
        db.unlink(kind)
        if kind is FileKind.DATABASE and db.txid == 0:
            self.store.forget(db_name)

    def xAccess(self, name: str, flags: int) -> bool:
        db_name, kind = self._split(name)
        db = self.store.get(db_name)
        return db is not None and db.exists(kind)

    def xFullPathname(self, name: str) -> str:
        return "/" + name.lstrip("/")

    def connect(self, name: str, *, journal_mode: str = "DELETE",
                synchronous: str = "NORMAL", page_size: int | None = None,
                cache_size: int | None = None) -> apsw.Connection:
        """A connection to database `name` in `journal_mode`; for WAL, in exclusive locking
        mode with one `-shm` handle counted (see the module docstring)."""
        con = apsw.Connection(f"/{name}", vfs=self.vfs_name)
        if cache_size is not None:
            con.execute(f"PRAGMA cache_size={cache_size}")
        if page_size is not None:
            con.execute(f"PRAGMA page_size={page_size}")
        con.execute(f"PRAGMA synchronous={synchronous}")
        if journal_mode.upper() == "WAL":
            con.execute("PRAGMA locking_mode=EXCLUSIVE")
            db = self.store.get(name)  # created by the open
            assert db is not None
            db.opened(FileKind.SHM)
        mode = con.execute(f"PRAGMA journal_mode={journal_mode}").fetchall()[0][0]
        assert mode.upper() == journal_mode.upper(), mode
        return con


def execute(con: apsw.Connection, *statements: str) -> None:
    for statement in statements:
        con.execute(statement).fetchall()


def rows(con: apsw.Connection, query: str) -> list[tuple[object, ...]]:
    return [tuple(r) for r in con.execute(query).fetchall()]
