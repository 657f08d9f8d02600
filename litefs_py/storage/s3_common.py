"""What both S3 clients share, without importing boto3: defaults, the region a provider's host
name states, and what an S3 error code means for the user (one message per kind of failure).

storage/s3.py (boto3, everything) and storage/s3_reader.py (a small signed-HTTP client for
`litefs restore`, which starts in a fraction of boto3's import time) both use it, so a user
sees the same words whichever client met the error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import datetime
from urllib.parse import urlsplit

from ..errors import ExitCode
from ..ltx.filename import format_filename, is_ltx_filename, parse_filename
from .base import LtxFileInfo
from .errors import (
    AccessDeniedError,
    InvalidCredentialsError,
    NoSuchBucketError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
)

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
                   region: str, doing: str, what: str, credentials: str) -> StorageError:
    """The StorageError for an S3 error response (`code` from its XML body, or the HTTP
    status as text when it has none, e.g. for HEAD)."""
    ep = endpoint
    detail = f"{code}: {message}" if message else (code or f"HTTP {status}")
    if code == "NoSuchBucket":
        return NoSuchBucketError(f"bucket {bucket} does not exist at {ep}; create "
                                 f"it or fix replica.bucket")
    if code in NOT_FOUND_CODES:
        return ObjectNotFoundError(f"{what} does not exist at {ep} (deleted by "
                                   f"retention or compaction?)")
    if code == "RequestTimeTooSkewed":
        return TransientStorageError(
            f"{ep} refused the request because this machine's clock is off by more "
            f"than 15 minutes ({detail}): fix the system time (NTP)")
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


def ltx_infos(level: int, prefix: str, objects: Iterable[tuple[str, int, datetime]],
              after: int | None = None) -> list[LtxFileInfo]:
    """The LTX files among listed (key, size, last modified) objects under `prefix`, sorted
    by TXID range; with `after`, only those whose min TXID is greater (for a provider that
    ignores StartAfter)."""
    infos = []
    for key, size, modified in objects:
        name = key[len(prefix):]
        if not is_ltx_filename(name):
            continue
        lo, hi = parse_filename(name)
        if after is not None and lo <= after:
            continue
        infos.append(LtxFileInfo(level=level, min_txid=lo, max_txid=hi, size=size,
                                 timestamp=modified, key=key))
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
