"""The interface every replica target implements, and the bucket layout both speak.

One `ReplicaClient` addresses ONE database's replica path (e.g. `s3://bucket/backups/store.db`
or `/srv/backups/store.db`). Layout (Litestream 0.5, FORMATS.md §5):

- S3-compatible: `<path>/<level %04x>/<min %016x>-<max %016x>.ltx`
- file:          `<path>/ltx/<level decimal>/<min %016x>-<max %016x>.ltx`

Levels: 0 = one file per upload, 1..8 = compactions, 9 = snapshots. The client hides the
difference; callers speak levels and TXIDs. Methods are blocking (boto3 is); async callers run
them in a worker thread (`storage/aio.py`).

Object metadata (user metadata, without the `x-amz-meta-` prefix):
- `litestream-timestamp`: the LTX header timestamp, RFC 3339 UTC with milliseconds;
- `litefs-post-apply-checksum`: our rolling checksum after the file, 16 hex digits (replica
  files carry no checksums in the LTX itself: flags 0x2).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

SNAPSHOT_LEVEL = 9
MAX_LEVEL = 9
META_TIMESTAMP = "litestream-timestamp"
META_CHECKSUM = "litefs-post-apply-checksum"


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


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """A raw object (used for Litestream 0.3's generations/ layout)."""

    key: str  # relative to the replica path
    size: int
    last_modified: datetime


class ReplicaClient(ABC):
    """One database's replica. Implementations raise `storage.errors.StorageError`
    subclasses, never backend exceptions."""

    #: URL-like description for messages, e.g. `s3://bucket/backups/store.db`.
    description: str

    @abstractmethod
    def ltx_files(self, level: int) -> list[LtxFileInfo]:
        """Every LTX file at `level`, sorted by (min, max) TXID. Empty if none."""

    @abstractmethod
    def levels(self) -> list[int]:
        """Levels that hold at least one LTX file."""

    @abstractmethod
    def read_ltx(self, info: LtxFileInfo, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of an LTX file (ranged GET); the whole file by default."""

    @abstractmethod
    def open_ltx(self, info: LtxFileInfo) -> Iterator[bytes]:
        """Stream an LTX file in chunks (for large snapshots)."""

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

    @abstractmethod
    def check(self) -> None:
        """Probe the target (bucket exists, credentials work, endpoint reachable); raise a
        StorageError naming the problem and the fix."""
