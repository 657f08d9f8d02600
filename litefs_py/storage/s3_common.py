"""What both S3 clients share, without importing boto3: defaults, the region a provider's host
name states, what an S3 error code means for the user (one message per kind of failure), the
server's clock when this machine's is off, ETags and the length check of whole-object reads.

storage/s3.py (boto3, everything) and storage/s3_reader.py (a small signed-HTTP client for
`litefs restore`, which starts in a fraction of boto3's import time) both use it, so a user
sees the same words whichever client met the error.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from urllib.parse import urlsplit

from ..errors import ExitCode
from ..ltx.filename import format_filename, is_ltx_filename, parse_filename
from .base import LtxFileInfo
from .errors import (
    AccessDeniedError,
    ClockSkewError,
    InvalidCredentialsError,
    NoSuchBucketError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
)

log = logging.getLogger("litefs.storage")

DEFAULT_REGION = "us-east-1"
CONNECT_TIMEOUT = 5.0  # seconds
READ_TIMEOUT = 10.0  # seconds without a byte from the server
MAX_ATTEMPTS = 3  # per request, including the first
CHUNK_SIZE = 1 << 20
HEAD_CONCURRENCY = 8
DELETE_BATCH = 1000  # DeleteObjects' limit

CREDENTIAL_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "TokenRefreshRequired", "InvalidSecurity", "InvalidClientTokenId",
    "UnrecognizedClientException",
})
DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "Forbidden", "403"})
REGION_CODES = frozenset({"AuthorizationHeaderMalformed", "PermanentRedirect", "301",
                           "IllegalLocationConstraintException"})
TRANSIENT_CODES = frozenset({
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
    "Throttling", "ThrottlingException", "TooManyRequests", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "OperationAborted", "500", "502", "503", "504",
})
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
CONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})

# Hosts that name their region: (pattern, group holding the region).
_REGION_HOSTS = (
    re.compile(r"(?:.+\.)?s3\.([a-z0-9-]+)\.backblazeb2\.com"),
    re.compile(r"(?:.+\.)?([a-z0-9-]+)\.digitaloceanspaces\.com"),
    re.compile(r"(?:.+\.)?([a-z0-9-]+)\.linodeobjects\.com"),
    re.compile(r"(?:.+\.)?s3\.([a-z0-9-]+)\.scw\.cloud"),
    re.compile(r"(?:.+\.)?s3[.-](?:dualstack\.)?([a-z]{2}(?:-gov)?-[a-z]+-\d)\.amazonaws\.com"),
)


def is_aws_endpoint(endpoint: str | None) -> bool:
    """None (AWS's default) or a host under amazonaws.com."""
    if endpoint is None:
        return True
    host = (urlsplit(endpoint).hostname or "").lower()
    return host == "amazonaws.com" or host.endswith(".amazonaws.com")


def guess_region(endpoint: str | None) -> str | None:
    """The region a provider's host name states (`s3.us-west-002.backblazeb2.com` →
    `us-west-002`), `auto` for Cloudflare R2, else None."""
    if endpoint is None:
        return None
    host = (urlsplit(endpoint).hostname or "").lower().rstrip(".")
    if host.endswith(".r2.cloudflarestorage.com"):
        return "auto"
    for pattern in _REGION_HOSTS:
        m = pattern.fullmatch(host)
        if m is not None:
            return m.group(1)
    return None


def mask_key_id(key_id: str) -> str:
    """An access key id as logs may show it."""
    return key_id if len(key_id) <= 8 else f"{key_id[:4]}…{key_id[-4:]}"


def credentials_hint(access_key_id: str | None, source: str) -> str:
    return (f"key {mask_key_id(access_key_id)} from {source}" if access_key_id is not None
            else f"credentials from {source}")


def error_for_code(code: str, message: str, status: int, *, endpoint: str, bucket: str,
                   region: str, doing: str, what: str, credentials: str,
                   clock_offset: float | None = None) -> StorageError:
    """The StorageError for an S3 error response (`code` from its XML body, or the HTTP
    status as text when it has none, e.g. for HEAD). `clock_offset`: for RequestTimeTooSkewed,
    how far the server's clock is ahead of ours (`server_offset`), when the answer said."""
    ep = endpoint
    detail = f"{code}: {message}" if message else (code or f"HTTP {status}")
    if code == "NoSuchBucket":
        return NoSuchBucketError(f"bucket {bucket} does not exist at {ep}; create "
                                 f"it or fix replica.bucket")
    if code in NOT_FOUND_CODES:
        return ObjectNotFoundError(f"{what} does not exist at {ep} (deleted by "
                                   f"retention or compaction?)")
    if code == "RequestTimeTooSkewed":
        measured = (f"this machine's clock is {describe_offset(clock_offset)} the server's"
                    if clock_offset is not None else
                    "this machine's clock is off by more than 15 minutes")
        return ClockSkewError(
            f"{ep} refused the request because {measured} and correcting it from the "
            f"server's time did not help ({detail}): fix the system time (NTP)")
    if code in CREDENTIAL_CODES:
        return InvalidCredentialsError(
            f"credentials rejected by {ep} ({detail}; {credentials}): check "
            f"LITEFS_ACCESS_KEY_ID/LITEFS_SECRET_ACCESS_KEY (or the replica's "
            f"access-key-id/secret-access-key)")
    if code in DENIED_CODES or status == 403:
        return AccessDeniedError(
            f"access denied by {ep} while {doing} {what} ({detail}; "
            f"{credentials}): check LITEFS_ACCESS_KEY_ID/"
            f"LITEFS_SECRET_ACCESS_KEY and that this key may list, read, write and "
            f"delete in bucket {bucket}")
    if code in REGION_CODES or status == 301:
        return StorageError(
            f"{ep} refused region {region} for bucket {bucket} ({detail}): "
            f"set replica.region (or ?region= in the URL) to the bucket's region",
            ExitCode.CONFIG)
    if code in TRANSIENT_CODES or status >= 500 or status == 429:
        return TransientStorageError(f"{ep} is failing ({detail}) while {doing} "
                                     f"{what}; will retry")
    if code == "NotImplemented":
        return StorageError(f"{ep} does not support {doing} ({detail})")
    return StorageError(f"{doing} {what} at {ep} failed ({detail})")


_MAX_TXID = (1 << 64) - 1


def start_after_key(prefix: str, after: int | None) -> str | None:
    """ListObjectsV2's StartAfter for "min TXID > `after`" under a level's `prefix`: names
    are fixed-width lowercase hex, so every key with min TXID <= `after` sorts at or before
    `<after>-ffffffffffffffff.ltx` and the server skips them."""
    if after is None or after < 0:
        return None
    return prefix + format_filename(min(after, _MAX_TXID), _MAX_TXID)


class ListedObject(NamedTuple):
    """One object of a ListObjectsV2 answer."""

    key: str
    size: int
    modified: datetime
    etag: str | None = None


def etag_of(value: object) -> str | None:
    """An ETag as listings and PUT/GET answers give it, without its quotes (some providers
    quote it in one and not the other)."""
    return str(value).strip('"') if value else None


def ltx_infos(level: int, prefix: str, objects: Iterable[ListedObject],
              after: int | None = None) -> list[LtxFileInfo]:
    """The LTX files among listed objects under `prefix`, sorted by TXID range; with `after`,
    only those whose min TXID is greater (for a provider that ignores StartAfter)."""
    infos = []
    for obj in objects:
        name = obj.key[len(prefix):]
        if not is_ltx_filename(name):
            continue
        lo, hi = parse_filename(name)
        if after is not None and lo <= after:
            continue
        infos.append(LtxFileInfo(level=level, min_txid=lo, max_txid=hi, size=obj.size,
                                 timestamp=obj.modified, key=obj.key, etag=obj.etag))
    infos.sort(key=lambda i: (i.min_txid, i.max_txid))
    return infos


def with_metadata(infos: list[LtxFileInfo],
                  fetch: Callable[[LtxFileInfo], LtxFileInfo | None]) -> list[LtxFileInfo]:
    """`infos` completed by `fetch` (a HEAD each, HEAD_CONCURRENCY at a time); None from
    `fetch` (deleted while listing) drops the file."""
    if not infos:
        return infos
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(HEAD_CONCURRENCY, len(infos))) as pool:
        completed = list(pool.map(fetch, infos))
    return [i for i in completed if i is not None]


def length_error(bucket: str, key: str, endpoint: str, got: int, listed: int
                 ) -> TransientStorageError | None:
    """A whole object must have the size the listing gave: a server (or something in
    between) that announces a shorter Content-Length than it has, or cuts the body, is a
    broken transfer to retry, not a damaged object. None: the length is right (or unknown,
    `listed` 0)."""
    if listed <= 0 or got == listed:
        return None
    return TransientStorageError(
        f"reading s3://{bucket}/{key} from {endpoint} gave {got} bytes but the object is "
        f"{listed} bytes (as listed): damaged in transit, or replaced since the listing; "
        "will retry")


# ---- the server's clock ----------------------------------------------------------------------
# S3 refuses requests signed more than 15 minutes away from its clock (403
# RequestTimeTooSkewed), and neither botocore nor http.client corrects the time. The answer
# says the server's time (`ServerTime`, else its `Date` header): both clients learn the offset
# from it, sign with this machine's clock plus that offset from then on, and send the refused
# request again at once. Only the signing time changes: LTX timestamps still come from this
# machine's clock.

MIN_CLOCK_CORRECTION = 60.0  # seconds: a smaller change of the offset is not worth a retry


def server_offset(server_time: str | None, date_header: str | None) -> float | None:
    """Seconds the server's clock is ahead of this machine's, from a RequestTimeTooSkewed
    answer: its `ServerTime` (AWS), else its `Date` header (one-second resolution)."""
    server: datetime | None = None
    if server_time:
        with contextlib.suppress(ValueError):
            server = datetime.fromisoformat(server_time.replace("Z", "+00:00"))
    if server is None and date_header:
        import email.utils

        with contextlib.suppress(TypeError, ValueError):
            server = email.utils.parsedate_to_datetime(date_header)
    if server is None:
        return None
    if server.tzinfo is None:
        server = server.replace(tzinfo=UTC)
    return (server - datetime.now(UTC)).total_seconds()


def describe_offset(seconds: float) -> str:
    """`16 min 3 s behind` / `2 h 0 min ahead of`: this machine against the server."""
    n = round(abs(seconds))
    h, rest = divmod(n, 3600)
    m, sec = divmod(rest, 60)
    text = f"{h} h {m} min" if h else f"{m} min {sec} s" if m else f"{sec} s"
    return f"{text} {'behind' if seconds > 0 else 'ahead of'}"


class ServerClock:
    """The offset between one endpoint's clock and this machine's, learnt from its
    RequestTimeTooSkewed answers: 0 until a request was refused for it. One per boto3 client
    (shared by every database's S3ReplicaClient) and one per signed-HTTP reader."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.offset = 0.0  # seconds the server's clock is ahead of ours

    def now(self) -> datetime:
        """The time to sign with."""
        now = datetime.now(UTC)
        return now + timedelta(seconds=self.offset) if self.offset else now

    def learn(self, measured: float | None) -> bool:
        """After a RequestTimeTooSkewed answer that says the server is `measured` seconds
        ahead: whether the offset changed (send the request again, signed with it); False:
        nothing new to learn, the request fails."""
        if measured is None or abs(measured - self.offset) < MIN_CLOCK_CORRECTION:
            return False
        if abs(measured) < MIN_CLOCK_CORRECTION:
            self.offset = 0.0
            log.warning("%s: this machine's clock agrees with the server's again; signing "
                        "requests with it", self.endpoint)
            return True
        self.offset = measured
        log.warning("%s: this machine's clock is %s the server's (S3 refuses requests more "
                    "than 15 minutes off); signing requests with the server's time from now "
                    "on. Fix the system clock (NTP): LTX timestamps, which --timestamp "
                    "restores use, still come from it", self.endpoint,
                    describe_offset(measured))
        return True
