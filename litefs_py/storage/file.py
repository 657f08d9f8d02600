"""A replica in a local (or network-mounted) directory, in Litestream 0.5's file layout.

`<root>/ltx/<level decimal>/<min %016x>-<max %016x>.ltx`: what `litestream replicate` writes
to a `file://` replica and what `litestream restore file:///<root>` reads.

- Writes are atomic: a temporary file (a dot name Litestream's listing skips) is written,
  fsynced and renamed over the final name, then the directory is fsynced.
- Like Litestream, the file's mtime is set to the LTX timestamp, so `--timestamp` restores
  work from the listing alone (ours and Litestream's).
- Object metadata lives in a sidecar `<root>/ltx/<level>/.meta/<name>.json` (Litestream skips
  names that are not LTX file names). It records the data file's size and is ignored when that
  no longer matches (the file was replaced by another writer). Without it the timestamp comes
  from the mtime and there is no post-apply checksum.
- ENOSPC/EDQUOT → StorageFullError, EACCES/EPERM/EROFS → AccessDeniedError, both naming the
  directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Generator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from ..ltx.filename import format_filename, is_ltx_filename, parse_filename
from .base import (
    MAX_LEVEL,
    META_TIMESTAMP,
    ChunkStream,
    LtxFileInfo,
    ObjectInfo,
    ReplicaClient,
    TaggedObject,
    check_condition,
    info_with_metadata,
    parse_timestamp,
    upload_metadata,
)
from .errors import (
    AccessDeniedError,
    ObjectNotFoundError,
    PreconditionFailedError,
    StorageError,
    StorageFullError,
    TransientStorageError,
)

CHUNK_SIZE = 1 << 20
META_DIR = ".meta"
_SIZE_KEY = "size"  # in the sidecar, next to the metadata: the data file's size
_FULL = {errno.ENOSPC, errno.EDQUOT}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
_TRANSIENT = {errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ESTALE, errno.EINTR,
              errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH}


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


class FileReplicaClient(ReplicaClient):
    """One database's replica directory (`root`), e.g. `/srv/backups/store.db`."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.description = f"file://{self.root}" if self.root.is_absolute() else str(self.root)
        self._known_dirs: set[Path] = set()

    def close(self) -> None:
        """Nothing to release; for symmetry with S3ReplicaClient."""

    # ---- paths ---------------------------------------------------------------------------

    def level_dir(self, level: int) -> Path:
        _check_level(level)
        return self.root / "ltx" / str(level)

    def ltx_path(self, level: int, min_txid: int, max_txid: int) -> Path:
        return self.level_dir(level) / format_filename(min_txid, max_txid)

    def meta_path(self, level: int, min_txid: int, max_txid: int) -> Path:
        return self.level_dir(level) / META_DIR / (format_filename(min_txid, max_txid) + ".json")

    # ---- errors --------------------------------------------------------------------------

    def _error(self, exc: OSError, doing: str, path: Path) -> StorageError:
        where = path if path.is_dir() else path.parent
        reason = exc.strerror or str(exc)
        if exc.errno in _FULL:
            return StorageFullError(
                f"replica directory {where} is full ({reason}) while {doing} {path.name}: "
                f"free space on that filesystem or point the replica elsewhere; commits are "
                f"kept locally until then")
        if exc.errno in _DENIED:
            return AccessDeniedError(
                f"permission denied ({reason}) {doing} {path} in replica directory {where}: "
                f"make it writable by uid {os.geteuid()} or point the replica elsewhere")
        if exc.errno == errno.ENOENT:
            return ObjectNotFoundError(f"{path} does not exist (deleted by retention or "
                                       f"compaction?)")
        cls = TransientStorageError if exc.errno in _TRANSIENT else StorageError
        return cls(f"{doing} {path} in replica directory {where} failed: {reason}")

    # ---- directories and atomic writes ---------------------------------------------------

    def _ensure_dir(self, path: Path) -> None:
        """mkdir -p, fsyncing each parent whose entries changed (new dirs survive a crash)."""
        if path in self._known_dirs:
            return
        missing: list[Path] = []
        p = path
        while not p.is_dir():
            missing.append(p)
            if p.parent == p:
                break
            p = p.parent
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except FileExistsError:
                continue
            except OSError as exc:
                raise self._error(exc, "creating directory", d) from None
            _fsync_dir(d.parent)
        self._known_dirs.add(path)

    def _atomic_write(self, path: Path, data: bytes, mtime_ns: int | None = None) -> None:
        self._ensure_dir(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # the directory was removed under us (e.g. DeleteAll)
            self._known_dirs.discard(path.parent)
            self._ensure_dir(path.parent)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise self._error(exc, "writing", path) from None
        except OSError as exc:
            raise self._error(exc, "writing", path) from None
        try:
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if mtime_ns is not None:
                    os.utime(fd, ns=(mtime_ns, mtime_ns))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._error(exc, "writing", path) from None
        try:
            _fsync_dir(path.parent)
        except OSError as exc:
            raise self._error(exc, "syncing the directory of", path) from None

    # ---- LTX files -----------------------------------------------------------------------

    def levels(self) -> list[int]:
        base = self.root / "ltx"
        try:
            names = os.listdir(base)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._error(exc, "listing", base) from None
        out = []
        for name in names:
            if (name.isdigit() and str(int(name)) == name and int(name) <= MAX_LEVEL
                    and self._scan(int(name))):
                out.append(int(name))
        return sorted(out)

    def _scan(self, level: int, after: int | None = None
              ) -> list[tuple[int, int, os.stat_result]]:
        """(min, max, stat) of the LTX files at `level`, sorted; with `after`, only those
        whose min TXID is greater (decided from the name: older files are never stat'ed)."""
        d = self.level_dir(level)
        found = []
        try:
            with os.scandir(d) as it:
                for entry in it:
                    if not is_ltx_filename(entry.name):
                        continue
                    lo, hi = parse_filename(entry.name)
                    if after is not None and lo <= after:
                        continue
                    try:
                        st = entry.stat(follow_symlinks=True)
                    except FileNotFoundError:
                        continue  # deleted while listing
                    if not entry.is_file():
                        continue
                    found.append((lo, hi, st))
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            return []
        except OSError as exc:
            raise self._error(exc, "listing", d) from None
        found.sort(key=lambda t: (t[0], t[1]))
        return found

    def ltx_files(self, level: int, *, with_metadata: bool = False) -> list[LtxFileInfo]:
        infos = []
        for lo, hi, st in self._scan(level):
            info = self._info(level, lo, hi, st)
            infos.append(self._with_sidecar(info) if with_metadata else info)
        return infos

    def ltx_files_after(self, level: int, txid: int) -> list[LtxFileInfo]:
        """One scandir of the level directory; only files named with min TXID > `txid` are
        stat'ed."""
        return [self._info(level, lo, hi, st) for lo, hi, st in self._scan(level, txid)]

    def _info(self, level: int, lo: int, hi: int, st: os.stat_result) -> LtxFileInfo:
        return LtxFileInfo(
            level=level, min_txid=lo, max_txid=hi, size=st.st_size,
            timestamp=datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=UTC),
            key=str(self.ltx_path(level, lo, hi)),
        )

    def ltx_metadata(self, info: LtxFileInfo) -> LtxFileInfo:
        return self._with_sidecar(info)

    def _with_sidecar(self, info: LtxFileInfo) -> LtxFileInfo:
        path = self.meta_path(info.level, info.min_txid, info.max_txid)
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            return info
        except (OSError, ValueError):
            return info  # unreadable or corrupt sidecar: as if there were none
        if not isinstance(raw, dict):
            return info
        size = raw.pop(_SIZE_KEY, None)
        if size is not None and size != info.size:
            return info  # describes another file of that name
        meta = {str(k): str(v) for k, v in raw.items()}
        return info_with_metadata(info, meta)

    def read_ltx(self, info: LtxFileInfo, start: int = 0, end: int | None = None) -> bytes:
        _check_range(start, end)
        path = self.ltx_path(info.level, info.min_txid, info.max_txid)
        try:
            with open(path, "rb") as f:
                f.seek(start)
                return f.read() if end is None else f.read(end - start)
        except OSError as exc:
            raise self._error(exc, "reading", path) from None

    def open_ltx(self, info: LtxFileInfo) -> Iterator[bytes]:
        path = self.ltx_path(info.level, info.min_txid, info.max_txid)
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed by the generator)
        except OSError as exc:
            raise self._error(exc, "reading", path) from None
        return ChunkStream(_chunks(f, path, self), f.close)

    def write_ltx(self, level: int, min_txid: int, max_txid: int, data: bytes,
                  metadata: dict[str, str]) -> LtxFileInfo:
        _check_txids(min_txid, max_txid)
        path = self.ltx_path(level, min_txid, max_txid)
        meta = upload_metadata(data, metadata)
        mtime_ns = None
        timestamp = datetime.now(tz=UTC)
        if META_TIMESTAMP in meta:
            with contextlib.suppress(ValueError):
                timestamp = parse_timestamp(meta[META_TIMESTAMP])
                mtime_ns = round(timestamp.timestamp() * 1000) * 1_000_000
        # Sidecar first: once the data file is visible its metadata is too.
        sidecar = json.dumps({**meta, _SIZE_KEY: len(data)}, sort_keys=True).encode()
        meta_path = self.meta_path(level, min_txid, max_txid)
        self._atomic_write(meta_path, sidecar)
        try:
            self._atomic_write(path, data, mtime_ns)
        except StorageError:
            with contextlib.suppress(OSError):
                os.unlink(meta_path)
            raise
        info = LtxFileInfo(level=level, min_txid=min_txid, max_txid=max_txid, size=len(data),
                           timestamp=timestamp, key=str(path))
        return info_with_metadata(info, meta)

    def delete_ltx(self, infos: list[LtxFileInfo]) -> None:
        for info in infos:
            for path in (self.ltx_path(info.level, info.min_txid, info.max_txid),
                         self.meta_path(info.level, info.min_txid, info.max_txid)):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise self._error(exc, "deleting", path) from None

    # ---- raw objects ---------------------------------------------------------------------

    def _object_path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ObjectNotFoundError(f"invalid object key {key!r} in {self.description}")
        return self.root.joinpath(*parts)

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Files under the root whose relative path starts with `prefix` (our temporary files
        and metadata sidecars are not objects)."""
        top = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*[p for p in top.split("/") if p]) if top else self.root
        out: list[ObjectInfo] = []

        def onerror(exc: OSError) -> None:
            if not isinstance(exc, FileNotFoundError | NotADirectoryError):
                raise self._error(exc, "listing", Path(exc.filename or start))

        for dirpath, dirnames, filenames in os.walk(start, onerror=onerror):
            dirnames[:] = [d for d in dirnames if d != META_DIR]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if _is_temp_name(name):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                mtime = datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=UTC)
                out.append(ObjectInfo(key=key, size=st.st_size, last_modified=mtime))
        out.sort(key=lambda o: o.key)
        return out

    def get_object(self, key: str) -> bytes:
        path = self._object_path(key)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise self._error(exc, "reading", path) from None

    def get_object_tagged(self, key: str) -> TaggedObject:
        path = self._object_path(key)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise self._error(exc, "reading", path) from None
        return TaggedObject(data=data, etag=_etag(data))

    def put_object_if(self, key: str, data: bytes, *, if_none_match: bool = False,
                      if_match: str | None = None) -> str:
        """Check and write under an exclusive flock(2) on the object's directory, so that
        conditional writers on one host (processes sharing the directory) are serialised;
        the write itself is the usual temporary file + rename, so plain readers never see a
        partial object. The ETag is the content's MD5 in quotes, like S3's for a one-part
        PUT."""
        check_condition(if_none_match, if_match)
        path = self._object_path(key)
        self._ensure_dir(path.parent)
        try:
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._error(exc, "locking the directory of", path) from None
        try:
            try:
                fcntl.flock(dir_fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise self._error(exc, "locking the directory of", path) from None
            try:
                current: str | None = _etag(path.read_bytes())
            except FileNotFoundError:
                current = None
            except OSError as exc:
                raise self._error(exc, "reading", path) from None
            if if_none_match and current is not None:
                raise PreconditionFailedError(f"{path} exists already (If-None-Match: *)")
            if if_match is not None and current != if_match:
                found = "does not exist" if current is None else f"has ETag {current}"
                raise PreconditionFailedError(f"{path} {found}, not {if_match} (If-Match)")
            self._atomic_write(path, data)
        finally:
            os.close(dir_fd)  # releases the lock
        return _etag(data)

    def check(self) -> None:
        """The directory exists (or can be created) and is writable: a probe file is written
        and removed."""
        self._ensure_dir(self.root)
        probe = self.root / f".litefs-check.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise self._error(exc, "writing", probe) from None

    # ---- raw writes (litefs doctor's probe) ----------------------------------------------

    def _put_plain_object(self, key: str, data: bytes) -> None:
        self._atomic_write(self._object_path(key), data)

    def delete_object(self, key: str) -> None:
        path = self._object_path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise self._error(exc, "deleting", path) from None


def _chunks(f: BinaryIO, path: Path, client: FileReplicaClient
            ) -> Generator[bytes, None, None]:
    with f:
        while True:
            try:
                chunk = f.read(CHUNK_SIZE)
            except OSError as exc:
                raise client._error(exc, "reading", path) from None
            if not chunk:
                return
            yield chunk


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_level(level: int) -> None:
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"invalid LTX level {level}: expected 0..{MAX_LEVEL}")


def _check_txids(min_txid: int, max_txid: int) -> None:
    if not 1 <= min_txid <= max_txid < 1 << 64:
        raise ValueError(f"invalid TXID range {min_txid:#x}..{max_txid:#x}")


def _check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"invalid byte range [{start}, {end})")
