"""A small S3 client for reading a replica, for `litefs restore`: signed GET, HEAD and
ListObjectsV2 over the standard library's http.client.

Why: a restore is a short process whose wall time is mostly start-up. Importing boto3 and
building its S3 client costs about 0.5 s of CPU (boto3 pulls in s3transfer and
multiprocessing; the client loads and resolves JSON service models) before the first byte
moves; Litestream's restore is a Go binary with none of that. This client imports only what
the standard library already has loaded and signs with storage/sigv4.py.

What it does not do, it hands to storage/s3.py (boto3): every write (`write_ltx`, deletes,
raw and conditional puts) goes to a full client built on first use, and
`reader_credentials()` says when a restore should use boto3 instead: credentials that are
not plain keys (profiles, SSO, instance roles), an HTTP(S) proxy in the environment, or an
AWS endpoint whose region it would have to look up in ~/.aws/config.

Requests, addressing, retries (3 attempts, exponential back-off with jitter on 5xx, 429 and
broken connections), timeouts and error messages are those of storage/s3.py (shared in
storage/s3_common.py), and so is what a restore relies on against a hostile server: a clock
more than 15 minutes off is corrected from the server's answer (s3_common.ServerClock), a
whole-object read shorter or longer than the listed size is a transfer to retry, and listings
and answers keep the ETag.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from ..ltx.filename import format_filename
from .base import (
    MAX_LEVEL,
    ChunkStream,
    LtxFileInfo,
    ObjectInfo,
    ReplicaClient,
    TaggedObject,
    info_with_metadata,
)
from .endpoint import normalize_endpoint
from .errors import (
    EndpointUnreachableError,
    StorageError,
    TransientStorageError,
)
from .s3_common import (
    CHUNK_SIZE,
    CONNECT_TIMEOUT,
    DEFAULT_REGION,
    MAX_ATTEMPTS,
    READ_TIMEOUT,
    ListedObject,
    ServerClock,
    credentials_hint,
    error_for_code,
    etag_of,
    guess_region,
    is_aws_endpoint,
    length_error,
    ltx_infos,
    server_offset,
    start_after_key,
)
from .s3_common import with_metadata as completed_metadata
from .sigv4 import Signer, StaticCredentials, canonical_query

if TYPE_CHECKING:
    from .s3 import S3ReplicaClient

_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
               "all_proxy")
_MAX_BACKOFF = 20.0  # seconds, as botocore's standard retry mode
_META_PREFIX = "x-amz-meta-"
LISTING_REUSE = 1.0  # seconds a listing made by levels() serves the next ltx_files()


def reader_credentials(endpoint: str | None, region: str | None, access_key_id: str | None,
                       secret_access_key: str | None, env: Mapping[str, str]
                       ) -> StaticCredentials | None:
    """The keys the reader signs with, or None when only boto3 serves this replica the way
    the rest of litefs would: no plain keys (the replica's own, or AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY, which botocore's chain reads first), a proxy to go through, an
    AWS endpoint override, or an AWS region to find in ~/.aws/config."""
    if any(env.get(v) for v in _PROXY_VARS):
        return None
    if endpoint is None:
        if env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3"):
            return None
        if region is None and guess_region(endpoint) is None \
                and not (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")):
            return None
    if access_key_id is not None and secret_access_key is not None:
        return StaticCredentials(access_key_id, secret_access_key)
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        return None
    return StaticCredentials(key, secret, env.get("AWS_SESSION_TOKEN") or None)


class _Response:
    """What one request brought back: status, headers (lower-case names), body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class S3ReaderClient(ReplicaClient):
    """One database's replica under `s3://bucket/path`, read over plain signed HTTP."""

    def __init__(
        self,
        bucket: str,
        path: str = "",
        *,
        credentials: StaticCredentials,
        endpoint: str | None = None,
        region: str | None = None,
        force_path_style: bool | None = None,
        credentials_source: str = "the given access key",
        env: Mapping[str, str] | None = None,
        writer: Callable[[], S3ReplicaClient] | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self.bucket = bucket
        self.path = path.strip("/")
        self.endpoint = normalize_endpoint(endpoint) if endpoint is not None else None
        if force_path_style is None:
            force_path_style = not is_aws_endpoint(self.endpoint)
        env = env or {}
        if region is None:
            region = guess_region(self.endpoint)
        if region is None:
            region = ((env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"))
                      if self.endpoint is None else None) or DEFAULT_REGION
        self.region: str = region
        query = f"?endpoint={self.endpoint}" if self.endpoint is not None else ""
        self.description = f"s3://{bucket}/{self.path}{query}"
        self._credentials_hint = credentials_hint(credentials.access_key_id,
                                                  credentials_source)
        base = self.endpoint or f"https://s3.{region}.amazonaws.com"
        parts = urlsplit(base)
        self._https = parts.scheme == "https"
        host = parts.netloc
        virtual = not force_path_style and _dns_compatible(bucket, self._https)
        if virtual:  # `host`: where requests go (endpoint_url is the service's, as boto3's)
            self.host = f"{bucket}.{host}"
            self._bucket_path = ""
        else:
            self.host = host
            self._bucket_path = "/" + quote(bucket, safe="")
        self.endpoint_url = f"{parts.scheme}://{host}"
        self._signer = Signer(credentials, region)
        self.clock = ServerClock(self.endpoint_url)
        self._ca_file = env.get("AWS_CA_BUNDLE") or None
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_attempts = max(1, max_attempts)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._recent: dict[int, tuple[float, list[LtxFileInfo]]] = {}  # see levels()
        self._writer_factory = writer
        self._writer: S3ReplicaClient | None = None

    # ---- connections -----------------------------------------------------------------------

    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._https:
            import ssl  # only for https: loopback test servers never pay for it

            ctx = ssl.create_default_context(cafile=self._ca_file or _default_ca_file())
            conn = http.client.HTTPSConnection(self.host, timeout=self._connect_timeout,
                                               context=ctx)
        else:
            conn = http.client.HTTPConnection(self.host, timeout=self._connect_timeout)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(self._read_timeout)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return conn

    def _take(self) -> http.client.HTTPConnection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.append(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        if self._writer is not None:
            self._writer.close()

    # ---- requests --------------------------------------------------------------------------

    def _object_path(self, key: str) -> str:
        return f"{self._bucket_path}/{quote(key, safe='/~')}"

    def _send(self, method: str, path: str, params: dict[str, str],
              headers: dict[str, str] | None = None, doing: str | None = None,
              what: str | None = None
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """One signed request; the response's body is not read yet. Retries transient
        failures: connection errors, 5xx, 429 and S3's throttling codes."""
        query = canonical_query(params)
        target = path + (f"?{query}" if query else "")
        attempt = 0
        clock_retries = 0
        while True:
            hdrs = dict(headers or {})
            self._signer.sign(method, self.host, path, query, hdrs, self.clock.now())
            conn: http.client.HTTPConnection | None = None
            try:
                conn = self._take()
                conn.request(method, target, headers=hdrs)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                if conn is not None:
                    conn.close()
                attempt += 1
                if attempt >= self._max_attempts:
                    raise self._transport_error(exc) from None
                time.sleep(_backoff(attempt))
                continue
            if resp.status >= 500 or resp.status == 429:  # 5xx, SlowDown, throttling
                body = _read_all(resp, conn)
                self._recycle(conn, resp)
                attempt += 1
                if attempt < self._max_attempts:
                    time.sleep(_backoff(attempt))
                    continue
                raise self._http_error(resp.status, body, method, path)
            if resp.status == 403:
                # Refused: for the clock (learn the server's time and sign again at once,
                # not an attempt) or for good (raised here: no caller accepts a 403).
                body = _read_all(resp, conn)
                self._recycle(conn, resp)
                offset = _skew_offset(body, resp.getheader("Date"))
                if offset is not None and clock_retries < 2 and self.clock.learn(offset):
                    clock_retries += 1
                    continue
                raise self._status_error(
                    _Response(resp.status, {}, body), doing or _doing(method),
                    what or f"s3://{self.bucket}{path[len(self._bucket_path):]}", offset)
            return conn, resp

    def _recycle(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse
                 ) -> None:
        if resp.will_close:
            conn.close()
        else:
            self._give_back(conn)

    def _call(self, method: str, path: str, params: dict[str, str], doing: str, what: str,
              headers: dict[str, str] | None = None, ok: tuple[int, ...] = (200,)
              ) -> _Response:
        conn, resp = self._send(method, path, params, headers, doing, what)
        try:
            body = b"" if method == "HEAD" else resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise TransientStorageError(f"{doing} {what} from {self.endpoint_url} broke off "
                                        f"({exc}); will retry") from None
        self._recycle(conn, resp)
        got = _Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
        if resp.status not in ok:
            raise self._status_error(got, doing, what)
        return got

    def _status_error(self, got: _Response, doing: str, what: str,
                      clock_offset: float | None = None) -> StorageError:
        code, message = _error_fields(got.body)
        return error_for_code(code or str(got.status), message, got.status,
                              endpoint=self.endpoint_url, bucket=self.bucket,
                              region=self.region, doing=doing, what=what,
                              credentials=self._credentials_hint, clock_offset=clock_offset)

    def _http_error(self, status: int, body: bytes, method: str, path: str) -> StorageError:
        return self._status_error(_Response(status, {}, body), _doing(method),
                                  f"s3://{self.bucket}{path[len(self._bucket_path):]}")

    def _transport_error(self, exc: Exception) -> StorageError:
        ep = self.endpoint_url
        name = type(exc).__name__
        if name.startswith("SSL") or "CERTIFICATE" in str(exc).upper():
            return EndpointUnreachableError(
                f"cannot reach {ep}: TLS failed ({exc}); if the endpoint speaks plain HTTP "
                f"write http://..., a private CA goes in AWS_CA_BUNDLE")
        if isinstance(exc, http.client.HTTPException | TimeoutError | ConnectionResetError):
            return TransientStorageError(f"the request to {ep} broke off ({exc}); will retry")
        return EndpointUnreachableError(
            f"cannot reach {ep}: {exc}; check replica.endpoint and the network")

    # ---- keys ------------------------------------------------------------------------------

    def _key(self, rel: str) -> str:
        return f"{self.path}/{rel}" if self.path else rel

    def level_prefix(self, level: int) -> str:
        if not 0 <= level <= MAX_LEVEL:
            raise ValueError(f"invalid LTX level {level}: expected 0..{MAX_LEVEL}")
        return self._key(f"{level:04x}/")

    def ltx_key(self, level: int, min_txid: int, max_txid: int) -> str:
        return self.level_prefix(level) + format_filename(min_txid, max_txid)

    # ---- listing ---------------------------------------------------------------------------

    def _list(self, prefix: str, delimiter: str | None = None,
              start_after: str | None = None) -> Iterator[_ListPage]:
        params = {"list-type": "2", "prefix": prefix}
        if delimiter is not None:
            params["delimiter"] = delimiter
        if start_after is not None:
            params["start-after"] = start_after
        while True:
            got = self._call("GET", self._bucket_path + "/", params, "listing",
                             f"s3://{self.bucket}/{prefix}")
            page = _ListPage(got.body)
            yield page
            if not page.truncated or not page.token:
                return
            params.pop("start-after", None)
            params["continuation-token"] = page.token

    def levels(self) -> list[int]:
        """The levels holding LTX files. Each level's listing is kept for one following
        `ltx_files(level)` within LISTING_REUSE seconds: a restore plans from exactly these
        listings, and each extra round trip is start-up time."""
        base = self._key("")
        found = set()
        for page in self._list(base, "/"):
            for cp in page.prefixes:
                name = cp[len(base):].rstrip("/")
                if (len(name) == 4 and all(c in "0123456789abcdef" for c in name)
                        and int(name, 16) <= MAX_LEVEL):
                    found.add(int(name, 16))
        out = []
        for lvl in sorted(found):
            infos = self._listing(lvl)
            self._recent[lvl] = (time.monotonic(), infos)
            if infos:
                out.append(lvl)
        return out

    def _listing(self, level: int, after: int | None = None) -> list[LtxFileInfo]:
        prefix = self.level_prefix(level)
        objects = (obj for page in self._list(prefix, start_after=start_after_key(prefix, after))
                   for obj in page.contents)
        return ltx_infos(level, prefix, objects, after)

    def ltx_files(self, level: int, *, with_metadata: bool = False) -> list[LtxFileInfo]:
        listed_at, infos = self._recent.pop(level, (0.0, []))
        if time.monotonic() - listed_at > LISTING_REUSE:
            infos = self._listing(level)
        return completed_metadata(infos, self.metadata_or_none) if with_metadata else infos

    def ltx_files_after(self, level: int, txid: int) -> list[LtxFileInfo]:
        return self._listing(level, after=txid)

    def ltx_metadata(self, info: LtxFileInfo) -> LtxFileInfo:
        key = self.ltx_key(info.level, info.min_txid, info.max_txid)
        got = self._call("HEAD", self._object_path(key), {}, "reading the metadata of",
                         f"s3://{self.bucket}/{key}")
        return self._with_headers(info, key, got.headers)

    def _with_headers(self, info: LtxFileInfo, key: str, headers: Mapping[str, str]
                      ) -> LtxFileInfo:
        """`info` completed from the headers of a HEAD or GET of its object."""
        modified = _http_date(headers.get("last-modified")) or info.timestamp
        metadata = {k[len(_META_PREFIX):]: v for k, v in headers.items()
                    if k.startswith(_META_PREFIX)}
        size = int(headers.get("content-length") or info.size)
        base = LtxFileInfo(level=info.level, min_txid=info.min_txid, max_txid=info.max_txid,
                           size=size, timestamp=modified, key=key,
                           etag=etag_of(headers.get("etag")) or info.etag)
        return info_with_metadata(base, metadata)

    def open_ltx_with_metadata(self, info: LtxFileInfo) -> tuple[LtxFileInfo, Iterator[bytes]]:
        """One GET: its headers carry the metadata a HEAD would. The size stays the listed
        one (when known): a Content-Length that disagrees is what the body is checked
        against, not what it is believed."""
        key = self.ltx_key(info.level, info.min_txid, info.max_txid)
        conn, resp = self._open(key)
        headers = {k.lower(): v for k, v in resp.getheaders()}
        full = self._with_headers(info, key, headers)
        if info.size:
            full = replace(full, size=info.size)
        return full, self._body(key, conn, resp, info.size)

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        base = self._key("")
        out = [ObjectInfo(key=o.key[len(base):], size=o.size, last_modified=o.modified)
               for page in self._list(base + prefix) for o in page.contents]
        out.sort(key=lambda o: o.key)
        return out

    # ---- reading ---------------------------------------------------------------------------

    def _get(self, key: str, headers: dict[str, str] | None = None,
             ok: tuple[int, ...] = (200, 206)) -> _Response:
        return self._call("GET", self._object_path(key), {}, "reading",
                          f"s3://{self.bucket}/{key}", headers, ok)

    def read_ltx(self, info: LtxFileInfo, start: int = 0, end: int | None = None) -> bytes:
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"invalid byte range [{start}, {end})")
        if end is not None and end == start:
            return b""
        key = self.ltx_key(info.level, info.min_txid, info.max_txid)
        headers = {}
        if end is not None:
            headers["Range"] = f"bytes={start}-{end - 1}"
        elif start > 0:
            headers["Range"] = f"bytes={start}-"
        got = self._get(key, headers, ok=(200, 206, 416))
        if got.status == 416:
            return b""  # start at or past the end: nothing there, as with a file
        if start == 0 and end is None:
            self._check_length(key, len(got.body), info.size)
        return got.body

    def _check_length(self, key: str, got: int, listed: int) -> None:
        error = length_error(self.bucket, key, self.endpoint_url, got, listed)
        if error is not None:
            raise error

    def open_ltx(self, info: LtxFileInfo) -> Iterator[bytes]:
        key = self.ltx_key(info.level, info.min_txid, info.max_txid)
        return self._stream(key, info.size)

    def _stream(self, key: str, listed: int = 0) -> Iterator[bytes]:
        conn, resp = self._open(key)
        return self._body(key, conn, resp, listed)

    def _open(self, key: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """A GET of `key` whose body is still to be read (an error answer raised here)."""
        conn, resp = self._send("GET", self._object_path(key), {}, doing="reading",
                                what=f"s3://{self.bucket}/{key}")
        if resp.status != 200:
            body = _read_all(resp, conn)
            self._recycle(conn, resp)
            raise self._status_error(_Response(resp.status, {}, body), "reading",
                                     f"s3://{self.bucket}/{key}")
        return conn, resp

    def _body(self, key: str, conn: http.client.HTTPConnection,
              resp: http.client.HTTPResponse, listed: int = 0) -> Iterator[bytes]:
        """The body's chunks; its length is checked against `listed` (0: unknown) at the
        end. Closed before the first chunk, the connection is closed (not reusable)."""
        return ChunkStream(self._body_chunks(key, conn, resp, listed), conn.close)

    def _body_chunks(self, key: str, conn: http.client.HTTPConnection,
                     resp: http.client.HTTPResponse, listed: int
                     ) -> Generator[bytes, None, None]:
        done = False
        got = 0
        try:
            while True:
                try:
                    chunk = resp.read(CHUNK_SIZE)
                except (OSError, http.client.HTTPException) as exc:
                    raise TransientStorageError(
                        f"reading s3://{self.bucket}/{key} from {self.endpoint_url} broke "
                        f"off ({exc}); will retry") from None
                if not chunk:
                    done = True
                    self._check_length(key, got, listed)
                    return
                got += len(chunk)
                yield chunk
        finally:
            if done:
                self._recycle(conn, resp)
            else:
                conn.close()  # abandoned mid-body: the connection cannot be reused

    def get_object(self, key: str) -> bytes:
        return self._get(self._key(key), ok=(200,)).body

    def get_object_tagged(self, key: str) -> TaggedObject:
        got = self._get(self._key(key), ok=(200,))
        return TaggedObject(data=got.body, etag=got.headers.get("etag", ""))

    def check(self) -> None:
        self._call("GET", self._bucket_path + "/",
                   {"list-type": "2", "prefix": self._key(""), "max-keys": "1"}, "listing",
                   f"s3://{self.bucket}/{self._key('')}")

    def server_time(self) -> datetime | None:
        got = self._call("GET", self._bucket_path + "/",
                         {"list-type": "2", "prefix": self._key(""), "max-keys": "1"},
                         "listing", f"s3://{self.bucket}/{self._key('')}")
        return _http_date(got.headers.get("date"))

    # ---- writes: the full client ------------------------------------------------------------

    def writer(self) -> S3ReplicaClient:
        """The boto3 client every write goes through, built on first use."""
        if self._writer is None:
            if self._writer_factory is None:
                raise StorageError(f"{self.description} is open for reading only")
            self._writer = self._writer_factory()
        return self._writer

    def write_ltx(self, level: int, min_txid: int, max_txid: int, data: bytes,
                  metadata: dict[str, str]) -> LtxFileInfo:
        return self.writer().write_ltx(level, min_txid, max_txid, data, metadata)

    def delete_ltx(self, infos: list[LtxFileInfo]) -> None:
        self.writer().delete_ltx(infos)

    def put_object(self, key: str, data: bytes, *, if_none_match: bool = False) -> bool:
        return self.writer().put_object(key, data, if_none_match=if_none_match)

    def delete_object(self, key: str) -> None:
        self.writer().delete_object(key)

    def put_object_if(self, key: str, data: bytes, *, if_none_match: bool = False,
                      if_match: str | None = None) -> str:
        return self.writer().put_object_if(key, data, if_none_match=if_none_match,
                                           if_match=if_match)


class _ListPage:
    """One ListObjectsV2 answer."""

    def __init__(self, body: bytes) -> None:
        import xml.etree.ElementTree as ET

        root = ET.fromstring(body)
        self.contents: list[ListedObject] = []
        for c in root.iterfind("{*}Contents"):
            self.contents.append(ListedObject(
                c.findtext("{*}Key") or "", int(c.findtext("{*}Size") or 0),
                _iso_date(c.findtext("{*}LastModified") or ""),
                etag_of(c.findtext("{*}ETag"))))
        self.prefixes = [p.findtext("{*}Prefix") or ""
                         for p in root.iterfind("{*}CommonPrefixes")]
        self.truncated = (root.findtext("{*}IsTruncated") or "").lower() == "true"
        self.token = root.findtext("{*}NextContinuationToken")


def _dns_compatible(bucket: str, https: bool) -> bool:
    """Virtual-hosted addressing works for this bucket name (botocore's rule: a DNS label
    sequence of lower-case letters, digits and hyphens; no dots over https, where they
    would break the certificate's wildcard)."""
    if not 3 <= len(bucket) <= 63 or (https and "." in bucket):
        return False
    labels = bucket.split(".")
    return all(lbl and lbl[0].isalnum() and lbl[-1].isalnum()
               and all(c.islower() or c.isdigit() or c == "-" for c in lbl)
               for lbl in labels)


def _backoff(attempt: int) -> float:
    return float(min(_MAX_BACKOFF, random.random() * 2.0 ** attempt))


def _read_all(resp: http.client.HTTPResponse, conn: http.client.HTTPConnection) -> bytes:
    try:
        return resp.read()
    except (OSError, http.client.HTTPException):
        conn.close()
        return b""


def _error_fields(body: bytes) -> tuple[str, str]:
    """(Code, Message) of an S3 error document; ("", "") when there is none."""
    if not body or b"<Code>" not in body:
        return "", ""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", ""
    return (root.findtext("Code") or "").strip(), (root.findtext("Message") or "").strip()


def _skew_offset(body: bytes, date: str | None) -> float | None:
    """For a RequestTimeTooSkewed answer, s3_common.server_offset of its ServerTime (else its
    Date header); None for any other answer."""
    if b"RequestTimeTooSkewed" not in body:
        return None
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    if (root.findtext("Code") or "").strip() != "RequestTimeTooSkewed":
        return None
    return server_offset((root.findtext("ServerTime") or "").strip() or None, date)


def _doing(method: str) -> str:
    return {"HEAD": "reading the metadata of", "GET": "reading"}.get(method, method)


def _iso_date(text: str) -> datetime:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _http_date(text: str | None) -> datetime | None:
    if not text:
        return None
    import email.utils

    with contextlib.suppress(TypeError, ValueError):
        return email.utils.parsedate_to_datetime(text)
    return None


def _default_ca_file() -> str | None:
    """The CA bundle botocore would use (certifi's, when installed), so that https endpoints
    verify alike with either client; None: the system's store."""
    try:
        import certifi
    except ImportError:
        return None
    where: Any = certifi.where()
    return str(where)
