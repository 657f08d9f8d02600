"""The interface every replica target implements, and the bucket layout both speak.

One `ReplicaClient` addresses ONE database's replica path (e.g. `s3://bucket/backups/store.db`
or `/srv/backups/store.db`). Layout (Litestream 0.5, docs/formats.md §5):

- S3-compatible: `<path>/<level %04x>/<min %016x>-<max %016x>.ltx`
- file:          `<path>/ltx/<level decimal>/<min %016x>-<max %016x>.ltx`

Levels: 0 = one file per upload, 1..8 = compactions, 9 = snapshots. The client hides the
difference; callers speak levels and TXIDs. Methods are blocking (boto3 is); async callers run
them in a worker thread (`storage/aio.py`).

Object metadata (user metadata, without the `x-amz-meta-` prefix):
- `litestream-timestamp`: the LTX header timestamp, RFC 3339 UTC with milliseconds;
- `litefs-post-apply-checksum`: our rolling checksum after the file, 16 hex digits (replica
  files carry no checksums in the LTX itself: flags 0x2);
- `litefs-writer`: which uploader wrote the file (`<host>/<random>`), for messages when two
  writers meet in one path (replication/uploader.py);
- `litefs-encryption`: `age` when the object is age-encrypted (storage/age.py).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from ..errors import ExitCode
from ..ltx.errors import LTXError
from ..ltx.header import Header
from .errors import ObjectNotFoundError, PreconditionFailedError, StorageError

SNAPSHOT_LEVEL = 9
MAX_LEVEL = 9
META_TIMESTAMP = "litestream-timestamp"
META_CHECKSUM = "litefs-post-apply-checksum"
META_WRITER = "litefs-writer"
META_ENCRYPTION = "litefs-encryption"


def format_timestamp(ms: int) -> str:
    """LTX timestamp (ms since the epoch) as Litestream writes it: RFC 3339, ms, UTC."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_timestamp(text: str) -> datetime:
    """Parse RFC 3339 (with or without fractional seconds, `Z` or an offset)."""
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt


@dataclass(frozen=True, slots=True)
class LtxFileInfo:
    """One LTX object in a replica."""

    level: int
    min_txid: int
    max_txid: int
    size: int
    # When the transaction happened: the `litestream-timestamp` metadata when present, else
    # the object's last-modified time (what Litestream does too).
    timestamp: datetime
    key: str  # the backend's key or path, for messages
    post_apply_checksum: int | None = None  # from our metadata, when present
    metadata: dict[str, str] = field(default_factory=dict, compare=False)
    # The backend's entity tag, when the listing or the write gave one (S3: the ETag, an MD5
    # for simple uploads); None for a directory. Tells a writer whether an object it wrote
    # was replaced by someone else.
    etag: str | None = field(default=None, compare=False)


def parse_checksum(text: str | None) -> int | None:
    """`litefs-post-apply-checksum` metadata (16 hex digits) → int; None if absent or bad."""
    if text is None:
        return None
    s = text.strip().lower()
    if len(s) != 16 or any(c not in "0123456789abcdef" for c in s):
        return None
    return int(s, 16)


def info_with_metadata(info: LtxFileInfo, metadata: Mapping[str, str]) -> LtxFileInfo:
    """`info` completed from an object's user metadata (keys as stored, any case): timestamp
    from `litestream-timestamp` when present and valid (else `info.timestamp` stays), the
    post-apply checksum, and the metadata itself."""
    meta = {k.lower(): v for k, v in metadata.items()}
    timestamp = info.timestamp
    if META_TIMESTAMP in meta:
        with contextlib.suppress(ValueError):
            timestamp = parse_timestamp(meta[META_TIMESTAMP])
    return replace(info, timestamp=timestamp, post_apply_checksum=parse_checksum(
        meta.get(META_CHECKSUM)), metadata=meta)


def upload_metadata(data: bytes, metadata: Mapping[str, str]) -> dict[str, str]:
    """The metadata to store with an LTX file: `metadata`, plus `litestream-timestamp` from
    the LTX header when the caller gave none (Litestream's clients do the same)."""
    meta = {k.lower(): v for k, v in metadata.items()}
    if META_TIMESTAMP not in meta:
        try:
            header = Header.decode(data[:100])
        except LTXError:
            return meta
        if header.timestamp > 0:
            meta[META_TIMESTAMP] = format_timestamp(header.timestamp)
    return meta


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """A raw object (used for Litestream 0.3's generations/ layout)."""

    key: str  # relative to the replica path
    size: int
    last_modified: datetime


class ChunkStream(Iterator[bytes]):
    """The chunks of an object whose request was already sent (or whose file is open):
    `chunks`, a generator that releases the connection or file when it ends or is closed,
    and `release`, which `close()` calls when no chunk was asked for yet (closing a
    generator that never started runs none of its clean-up). The restore's download-ahead
    may open the next object and then stop."""

    def __init__(self, chunks: Generator[bytes, None, None], release: Callable[[], object]
                 ) -> None:
        self._chunks = chunks
        self._release: Callable[[], object] | None = release

    def __next__(self) -> bytes:
        self._release = None  # started: the generator's own clean-up runs from now on
        return next(self._chunks)

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()
        self._chunks.close()


@dataclass(frozen=True, slots=True)
class TaggedObject:
    """A raw object with its entity tag, for conditional writes (`put_object_if`)."""

    data: bytes
    etag: str  # opaque; passed back as is (S3 quotes it)


class ReplicaClient(ABC):
    """One database's replica. Implementations raise `storage.errors.StorageError`
    subclasses, never backend exceptions."""

    #: URL-like description for messages, e.g. `s3://bucket/backups/store.db`.
    description: str

    @abstractmethod
    def ltx_files(self, level: int, *, with_metadata: bool = False) -> list[LtxFileInfo]:
        """Every LTX file at `level`, sorted by (min, max) TXID. Empty if none.

        Without `with_metadata` a backend may skip per-file metadata requests (S3 lists
        without one HEAD per object): `timestamp` is then the object's last-modified time (a
        file replica's mtime, which holds the LTX timestamp), `post_apply_checksum` None and
        `metadata` empty. With it, every file's metadata is read; `ltx_metadata` does the same
        for one file (e.g. only the candidates of a `--timestamp` restore)."""

    def ltx_files_after(self, level: int, txid: int) -> list[LtxFileInfo]:
        """The LTX files at `level` whose min TXID is greater than `txid`, sorted by (min,
        max) TXID, as `ltx_files` lists them (no per-file metadata).

        For followers polling a replica: backends override it so that a poll when caught up
        costs (nearly) nothing however many older files the level holds (S3: ListObjectsV2
        with StartAfter; file: names filtered before any stat). This default lists the level.
        """
        return [i for i in self.ltx_files(level) if i.min_txid > txid]

    def ltx_metadata(self, info: LtxFileInfo) -> LtxFileInfo:
        """`info` completed with its stored metadata (timestamp, post-apply checksum). The
        default suits backends whose listing already has it."""
        return info

    def metadata_or_none(self, info: LtxFileInfo) -> LtxFileInfo | None:
        """`ltx_metadata`, or None for an object deleted since it was listed."""
        try:
            return self.ltx_metadata(info)
        except ObjectNotFoundError:
            return None

    @abstractmethod
    def levels(self) -> list[int]:
        """Levels that hold at least one LTX file."""

    @abstractmethod
    def read_ltx(self, info: LtxFileInfo, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of an LTX file (ranged GET); the whole file by default."""

    @abstractmethod
    def open_ltx(self, info: LtxFileInfo) -> Iterator[bytes]:
        """Stream an LTX file in chunks (for large snapshots)."""

    def open_ltx_with_metadata(self, info: LtxFileInfo) -> tuple[LtxFileInfo, Iterator[bytes]]:
        """`info` completed with its stored metadata (as `ltx_metadata`), and its bytes (as
        `open_ltx`). Backends whose GET answer carries the metadata override it to save the
        separate metadata request (S3: a HEAD per object of a restore)."""
        return self.ltx_metadata(info), self.open_ltx(info)

    @abstractmethod
    def write_ltx(self, level: int, min_txid: int, max_txid: int, data: bytes,
                  metadata: dict[str, str]) -> LtxFileInfo:
        """Store one LTX file atomically (readers never see a partial file)."""

    @abstractmethod
    def delete_ltx(self, infos: list[LtxFileInfo]) -> None:
        """Delete LTX files; missing ones are not an error."""

    # Raw objects under the replica path, for Litestream 0.3's generations/ layout and for
    # our own bookkeeping objects (names Litestream ignores).
    @abstractmethod
    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Objects whose key (relative to the replica path) starts with `prefix`."""

    @abstractmethod
    def get_object(self, key: str) -> bytes:
        """A whole raw object by relative key."""

    # Raw writes, for `litefs doctor`'s probe object (a name Litestream ignores). A backend
    # without them keeps these defaults, which refuse.
    def put_object(self, key: str, data: bytes, *, if_none_match: bool = False) -> bool:
        """Write a raw object by relative key; True when written. With `if_none_match`, only
        if no object has that key (S3's `If-None-Match: *`): False, nothing written, when
        one has. A server that ignores the condition writes anyway (and True comes back).
        Conditional writes all go through `put_object_if`; backends implement
        `_put_plain_object` for the rest."""
        if if_none_match:
            try:
                self.put_object_if(key, data, if_none_match=True)
            except PreconditionFailedError:
                return False
            return True
        self._put_plain_object(key, data)
        return True

    def _put_plain_object(self, key: str, data: bytes) -> None:
        raise StorageError(f"{self.description} cannot write raw objects")

    def delete_object(self, key: str) -> None:
        """Delete a raw object by relative key; a missing one is not an error."""
        raise StorageError(f"{self.description} cannot delete raw objects")

    def server_time(self) -> datetime | None:
        """The storage server's clock (S3: the Date header of a cheap request), or None when
        the storage has no clock of its own (a directory)."""
        return None

    @abstractmethod
    def check(self) -> None:
        """Probe the target (bucket exists, credentials work, endpoint reachable); raise a
        StorageError naming the problem and the fix."""

    # Conditional writes, for the lease object (replication/lease/bucket.py). A backend
    # without them keeps these defaults, which refuse.
    def get_object_tagged(self, key: str) -> TaggedObject:
        """A whole raw object by relative key, with the ETag a conditional write names.
        Raises ObjectNotFoundError when it does not exist."""
        raise StorageError(f"{self.description} does not support conditional writes "
                           f"(needed by lease.type s3)", ExitCode.CONFIG)

    def put_object_if(self, key: str, data: bytes, *, if_none_match: bool = False,
                      if_match: str | None = None) -> str:
        """Write a raw object only if it does not exist yet (`if_none_match=True`, S3's
        `If-None-Match: *`) or only if its ETag is still `if_match` (`If-Match`); exactly one
        of the two. Returns the new ETag. Raises PreconditionFailedError when the condition
        does not hold (nothing was written)."""
        raise StorageError(f"{self.description} does not support conditional writes "
                           f"(needed by lease.type s3)", ExitCode.CONFIG)


def check_condition(if_none_match: bool, if_match: str | None) -> None:
    """`put_object_if` takes exactly one condition."""
    if if_none_match == (if_match is not None):
        raise ValueError("put_object_if needs exactly one of if_none_match=True or if_match")


class DelegatingReplicaClient(ReplicaClient):
    """A client that passes every call to `inner`: the base of clients that change one
    aspect of another (age encryption, a restore drill's rate-limited reads) and leave the
    rest as it is. `open_ltx_with_metadata` is not passed on: the base's (metadata, then
    this client's `open_ltx`) stays right for a subclass that changes `open_ltx`; one that
    wants the inner client's single request overrides it."""

    def __init__(self, inner: ReplicaClient) -> None:
        self.inner = inner
        self.description = inner.description

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def ltx_files(self, level: int, *, with_metadata: bool = False) -> list[LtxFileInfo]:
        return self.inner.ltx_files(level, with_metadata=with_metadata)

    def ltx_files_after(self, level: int, txid: int) -> list[LtxFileInfo]:
        return self.inner.ltx_files_after(level, txid)

    def ltx_metadata(self, info: LtxFileInfo) -> LtxFileInfo:
        return self.inner.ltx_metadata(info)

    def levels(self) -> list[int]:
        return self.inner.levels()

    def read_ltx(self, info: LtxFileInfo, start: int = 0, end: int | None = None) -> bytes:
        return self.inner.read_ltx(info, start, end)

    def open_ltx(self, info: LtxFileInfo) -> Iterator[bytes]:
        return self.inner.open_ltx(info)

    def write_ltx(self, level: int, min_txid: int, max_txid: int, data: bytes,
                  metadata: dict[str, str]) -> LtxFileInfo:
        return self.inner.write_ltx(level, min_txid, max_txid, data, metadata)

    def delete_ltx(self, infos: list[LtxFileInfo]) -> None:
        self.inner.delete_ltx(infos)

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        return self.inner.list_objects(prefix)

    def get_object(self, key: str) -> bytes:
        return self.inner.get_object(key)

    def put_object(self, key: str, data: bytes, *, if_none_match: bool = False) -> bool:
        return self.inner.put_object(key, data, if_none_match=if_none_match)

    def delete_object(self, key: str) -> None:
        self.inner.delete_object(key)

    def server_time(self) -> datetime | None:
        return self.inner.server_time()

    def check(self) -> None:
        self.inner.check()

    def get_object_tagged(self, key: str) -> TaggedObject:
        return self.inner.get_object_tagged(key)

    def put_object_if(self, key: str, data: bytes, *, if_none_match: bool = False,
                      if_match: str | None = None) -> str:
        return self.inner.put_object_if(key, data, if_none_match=if_none_match,
                                        if_match=if_match)
