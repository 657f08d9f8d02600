"""A replica in an S3-compatible bucket (AWS, Backblaze B2, Cloudflare R2, MinIO, ...).

The only module that imports boto3. Key layout (Litestream 0.5, docs/formats.md §5):
`<path>/<level %04x>/<min %016x>-<max %016x>.ltx`, no `ltx/` component.

What the client sends, and why (users were burned by Litestream 0.5 on non-AWS providers):

- No flexible checksums: `request_checksum_calculation="when_required"` and
  `response_checksum_validation="when_required"`. botocore ≥ 1.36 otherwise sends PUT bodies
  over https as `Content-Encoding: aws-chunked` with an `X-Amz-Trailer: x-amz-checksum-crc32`
  and `X-Amz-Content-SHA256: STREAMING-UNSIGNED-PAYLOAD-TRAILER`, which B2 and older MinIO
  reject. With it, a PUT carries `Content-Length` and the SigV4-signed SHA-256 of the body, so
  integrity is still checked end to end.
- DeleteObjects needs a body checksum; botocore sends only `x-amz-checksum-crc32`, which some
  providers do not know, so we send `Content-MD5` instead (understood everywhere).
- SigV4, path-style addressing for every non-AWS endpoint unless told otherwise, the region
  guessed from well-known provider host names (B2's `s3.<region>.backblazeb2.com`, ...) or
  `us-east-1`.
- Few attempts (botocore "standard" retries) and timeouts of a few seconds: the uploader has its
  own back-off, and an unreachable endpoint must fail fast with a clear message.
- A clock more than 15 minutes off: S3 refuses every request (403 RequestTimeTooSkewed). The
  client learns the offset from the answer, signs from then on with this machine's clock plus
  that offset, and sends the request again at once (botocore itself does not correct the
  clock); a warning says the clock is wrong (s3_common.ServerClock). The offset belongs to the
  boto3 client that every database's S3ReplicaClient of one endpoint shares, and its hooks are
  registered once on it.
- Whole-object reads are checked against the listed size (a cut body is a transfer to retry),
  and listings and writes keep the ETag (the uploader's one-writer check).

Listing never does one HEAD per object unless asked (`with_metadata=True` or `ltx_metadata`):
the timestamp is the LastModified time until then.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import threading
from collections.abc import Generator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import botocore.auth
import botocore.config
import botocore.exceptions as bx
import botocore.handlers
import urllib3.exceptions

from ..errors import ExitCode
from ..ltx.filename import format_filename, is_ltx_filename
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
from .endpoint import normalize_endpoint
from .errors import (
    EndpointUnreachableError,
    InvalidCredentialsError,
    PreconditionFailedError,
    StorageError,
    TransientStorageError,
)
from .s3_common import (
    CHUNK_SIZE,
    CONDITION_CODES,
    CONNECT_TIMEOUT,
    DEFAULT_REGION,
    DELETE_BATCH,
    HEAD_CONCURRENCY,
    MAX_ATTEMPTS,
    NOT_FOUND_CODES,
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


def _content_md5_instead_of_crc(request: Any, **_kwargs: Any) -> None:
    """before-sign hook for DeleteObjects: Content-MD5 rather than x-amz-checksum-crc32."""
    body = request.body
    if not isinstance(body, bytes | bytearray):
        return
    for name in list(request.headers.keys()):
        lower = name.lower()
        if lower.startswith("x-amz-checksum-") or lower == "x-amz-sdk-checksum-algorithm":
            del request.headers[name]
    if "Content-MD5" not in request.headers:
        digest = hashlib.md5(body, usedforsecurity=False).digest()
        request.headers["Content-MD5"] = base64.b64encode(digest).decode("ascii")


def _mask(key_id: str) -> str:
    return key_id if len(key_id) <= 8 else f"{key_id[:4]}…{key_id[-4:]}"


# ---- clock correction -------------------------------------------------------------------------

_CLOCK_SIGNER = "litefs-s3v4"  # S3's SigV4 signer, signing with a corrected clock
_CLOCK_OFFSET = "litefs_clock_offset"  # request context key: seconds to add to this clock


class _ClockCorrectedS3SigV4Auth(botocore.auth.S3SigV4Auth):  # type: ignore[misc]
    """botocore's S3 SigV4 signer, signing with this machine's time plus the request
    context's `litefs_clock_offset` (which the client puts there once the server has said
    the clock is off). Only the timestamp differs; the rest is botocore's own signing."""

    def _modify_request_before_signing(self, request: Any) -> None:
        offset = request.context.get(_CLOCK_OFFSET)
        if offset:
            now = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=offset)
            request.context["timestamp"] = now.strftime(botocore.auth.SIGV4_TIMESTAMP)
        super()._modify_request_before_signing(request)


# A new name beside botocore's own signers; nothing else changes in botocore's table.
botocore.auth.AUTH_TYPE_MAPS.setdefault(_CLOCK_SIGNER, _ClockCorrectedS3SigV4Auth)


class _SharedClient:
    """A boto3 client (thread-safe), how many S3ReplicaClients use it, and the server's
    clock as this client learnt it: its event hooks are registered here, once per boto3
    client, however many databases share it."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.region: str = client.meta.region_name
        self.users = 0
        self.clock = ServerClock(str(client.meta.endpoint_url))
        events = client.meta.events
        events.register_first("choose-signer.s3", self._choose_signer)
        events.register("before-sign.s3", self._sign_with_offset)
        events.register("needs-retry.s3", self._learn_clock)

    def _choose_signer(self, signature_version: Any = None, context: Any = None,
                       signing_name: Any = None, **_kwargs: Any) -> str | None:
        """Once the clock needs correcting, S3's SigV4 becomes the clock-corrected signer;
        until then (and for anything else) botocore chooses as usual."""
        if not self.clock.offset:
            return None
        chosen = botocore.handlers.set_operation_specific_signer(
            context=context if context is not None else {}, signing_name=signing_name)
        if (chosen or signature_version) == "s3v4":
            return _CLOCK_SIGNER
        return None

    def _sign_with_offset(self, request: Any, **_kwargs: Any) -> None:
        if self.clock.offset:
            request.context[_CLOCK_OFFSET] = self.clock.offset

    def _learn_clock(self, response: Any = None, **_kwargs: Any) -> float | None:
        """needs-retry hook: a RequestTimeTooSkewed answer gives the server's time; sign with
        it and send the request again at once (0: no wait). None: not ours to decide."""
        if response is None:
            return None
        http_response, parsed = response
        if parsed.get("Error", {}).get("Code") != "RequestTimeTooSkewed":
            return None
        if self.clock.learn(_skew_offset(parsed, getattr(http_response, "headers", None))):
            return 0.0
        return None  # nothing new to learn: the request fails (see S3ReplicaClient._error)


def _skew_offset(parsed: dict[str, Any], headers: Any) -> float | None:
    """s3_common.server_offset of a parsed botocore answer."""
    date = (headers.get("Date") or headers.get("date")) if headers is not None else None
    return server_offset(str(parsed.get("Error", {}).get("ServerTime") or "") or None,
                         str(date) if date else None)


_SHARED: dict[tuple[object, ...], _SharedClient] = {}
_SHARED_LOCK = threading.Lock()


class S3ReplicaClient(ReplicaClient):
    """One database's replica under `s3://bucket/path`."""

    def __init__(
        self,
        bucket: str,
        path: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        force_path_style: bool | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        credentials_source: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        if (access_key_id is None) != (secret_access_key is None):
            raise StorageError("an access key id needs its secret access key (set both or "
                               "neither)", ExitCode.CONFIG)
        self.bucket = bucket
        self.path = path.strip("/")
        self.endpoint = normalize_endpoint(endpoint) if endpoint is not None else None
        if force_path_style is None:
            force_path_style = not is_aws_endpoint(self.endpoint)
        self.force_path_style = force_path_style
        if credentials_source is None:
            credentials_source = ("the given access key" if access_key_id is not None else
                                  "the AWS default chain")
        self._credentials_hint = credentials_hint(access_key_id, credentials_source)
        query = f"?endpoint={self.endpoint}" if self.endpoint is not None else ""
        self.description = f"s3://{bucket}/{self.path}{query}"

        if self.force_path_style:
            addressing = "path"
        elif self.endpoint is None:
            addressing = "auto"  # virtual-hosted, or path for names that cannot be hosts
        else:
            addressing = "virtual"
        config = botocore.config.Config(
            signature_version="s3v4",
            s3={"addressing_style": addressing},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            tcp_keepalive=True,
            # Shared by every database of the mount (below): room for a few at once.
            max_pool_connections=max(HEAD_CONCURRENCY + 2, 16),
        )
        # One boto3 client per endpoint and credentials, shared by every database's client:
        # each boto3 session loads its own copy of the S3 model (~12 MiB), so a mount with
        # 100 databases used over 1 GiB before (#14, tests/replication/test_scale.py).
        self._shared_key = (access_key_id, secret_access_key, self.endpoint, region,
                            addressing, connect_timeout, read_timeout, max_attempts)
        with _SHARED_LOCK:
            shared = _SHARED.get(self._shared_key)
            if shared is None:
                shared = _SharedClient(self._new_boto_client(
                    access_key_id, secret_access_key, region, config))
                _SHARED[self._shared_key] = shared
            shared.users += 1
        self.region: str = shared.region
        self.boto_client: Any = shared.client
        self._shared = shared
        self.endpoint_url: str = str(self.boto_client.meta.endpoint_url)
        self._closed = False

    def _new_boto_client(self, access_key_id: str | None, secret_access_key: str | None,
                         region: str | None, config: botocore.config.Config) -> Any:
        try:
            session = boto3.session.Session(aws_access_key_id=access_key_id,
                                            aws_secret_access_key=secret_access_key)
            if region is None:
                region = guess_region(self.endpoint)
            if region is None:
                region = (session.region_name if self.endpoint is None else None) or DEFAULT_REGION
            client = session.client("s3", endpoint_url=self.endpoint, region_name=region,
                                    config=config)
        except bx.BotoCoreError as exc:
            raise StorageError(f"cannot set up the S3 client for {self.description}: {exc}",
                               ExitCode.CONFIG) from None
        client.meta.events.register("before-sign.s3.DeleteObjects", _content_md5_instead_of_crc)
        return client

    def close(self) -> None:
        """Close the pooled connections once the last client sharing them closes (this
        client must not be used afterwards)."""
        if self._closed:
            return
        self._closed = True
        with _SHARED_LOCK:
            shared = _SHARED.get(self._shared_key)
            if shared is None or shared.client is not self.boto_client:
                return
            shared.users -= 1
            if shared.users > 0:
                return
            del _SHARED[self._shared_key]
        self.boto_client.close()

    @property
    def clock_offset(self) -> float:
        """Seconds the server's clock is ahead of ours, once a request was refused for it
        (0.0 until then); shared by every client of this endpoint and credentials."""
        return self._shared.clock.offset

    # ---- keys ----------------------------------------------------------------------------

    def _key(self, rel: str) -> str:
        return f"{self.path}/{rel}" if self.path else rel

    def level_prefix(self, level: int) -> str:
        _check_level(level)
        return self._key(f"{level:04x}/")

    def ltx_key(self, level: int, min_txid: int, max_txid: int) -> str:
        return self.level_prefix(level) + format_filename(min_txid, max_txid)

    # ---- errors --------------------------------------------------------------------------

    def _error(self, exc: Exception, doing: str, key: str | None = None) -> StorageError:
        ep = self.endpoint_url
        what = f"s3://{self.bucket}/{key}" if key is not None else f"bucket {self.bucket}"
        if isinstance(exc, bx.ClientError):
            error = exc.response.get("Error", {})
            meta = exc.response.get("ResponseMetadata", {})
            status = int(meta.get("HTTPStatusCode") or 0)
            code = str(error.get("Code", ""))
            offset = _skew_offset(exc.response, meta.get("HTTPHeaders", {})) \
                if code == "RequestTimeTooSkewed" else None
            return error_for_code(code, str(error.get("Message", "")).strip(), status,
                                  endpoint=ep, bucket=self.bucket, region=self.region,
                                  doing=doing, what=what, credentials=self._credentials_hint,
                                  clock_offset=offset)
        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
            return InvalidCredentialsError(
                f"no credentials for {ep}: set LITEFS_ACCESS_KEY_ID and "
                f"LITEFS_SECRET_ACCESS_KEY (or the replica's access-key-id/secret-access-key)")
        if isinstance(exc, bx.SSLError):
            return EndpointUnreachableError(
                f"cannot reach {ep}: TLS failed ({exc}); if the endpoint speaks plain HTTP write "
                f"http://..., a private CA goes in AWS_CA_BUNDLE")
        if isinstance(exc, bx.ResponseStreamingError | bx.IncompleteReadError
                      | urllib3.exceptions.ProtocolError):
            return TransientStorageError(f"{doing} {what} from {ep} broke off ({exc}); will "
                                         f"retry")
        if isinstance(exc, bx.ConnectionError | bx.HTTPClientError
                      | urllib3.exceptions.HTTPError | OSError):
            return EndpointUnreachableError(
                f"cannot reach {ep}: {exc}; check replica.endpoint and the network")
        return StorageError(f"{doing} {what} at {ep} failed: {exc}")

    # ---- LTX files -----------------------------------------------------------------------

    def _list(self, prefix: str, delimiter: str | None = None,
              start_after: str | None = None) -> Iterator[dict[str, Any]]:
        """Pages of ListObjectsV2 under `prefix` (a full key prefix); with `start_after` (a
        full key), only keys that sort after it (S3 lists keys in UTF-8 binary order)."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter is not None:
            kwargs["Delimiter"] = delimiter
        if start_after is not None:
            kwargs["StartAfter"] = start_after
        try:
            yield from self.boto_client.get_paginator("list_objects_v2").paginate(**kwargs)
        except _BOTO_ERRORS as exc:
            raise self._error(exc, "listing", prefix) from None

    def levels(self) -> list[int]:
        base = self._key("")
        found = []
        for page in self._list(base, "/"):
            for cp in page.get("CommonPrefixes", []):
                name = str(cp["Prefix"])[len(base):].rstrip("/")
                if (len(name) == 4 and all(c in "0123456789abcdef" for c in name)
                        and int(name, 16) <= MAX_LEVEL):
                    found.append(int(name, 16))
        return [lvl for lvl in sorted(set(found)) if self._has_ltx(lvl)]

    def _has_ltx(self, level: int) -> bool:
        prefix = self.level_prefix(level)
        for page in self._list(prefix):
            for obj in page.get("Contents", []):
                if is_ltx_filename(str(obj["Key"])[len(prefix):]):
                    return True
        return False

    def ltx_files(self, level: int, *, with_metadata: bool = False) -> list[LtxFileInfo]:
        infos = self._ltx_listing(level)
        return completed_metadata(infos, self.metadata_or_none) if with_metadata else infos

    def ltx_files_after(self, level: int, txid: int) -> list[LtxFileInfo]:
        """ListObjectsV2 with StartAfter `<level>/<txid>-ffffffffffffffff.ltx` (see
        s3_common.start_after_key): a caught-up poll lists no key at all."""
        return self._ltx_listing(level, after=txid)

    def _ltx_listing(self, level: int, after: int | None = None) -> list[LtxFileInfo]:
        prefix = self.level_prefix(level)
        objects = (ListedObject(str(obj["Key"]), int(obj["Size"]), obj["LastModified"],
                                etag_of(obj.get("ETag")))
                   for page in self._list(prefix, start_after=start_after_key(prefix, after))
                   for obj in page.get("Contents", []))
        return ltx_infos(level, prefix, objects, after)

    def ltx_metadata(self, info: LtxFileInfo) -> LtxFileInfo:
        """One HEAD: the `litestream-timestamp` and post-apply checksum of `info`."""
        key = self.ltx_key(info.level, info.min_txid, info.max_txid)
        try:
            resp = self.boto_client.head_object(Bucket=self.bucket, Key=key)
        except _BOTO_ERRORS as exc:
            raise self._error(exc, "reading the metadata of", key) from None
        last_modified: datetime = resp.get("LastModified", info.timestamp)
        metadata = {str(k): str(v) for k, v in resp.get("Metadata", {}).items()}
        base = LtxFileInfo(level=info.level, min_txid=info.min_txid, max_txid=info.max_txid,
                           size=int(resp.get("ContentLength", info.size)),
                           timestamp=last_modified, key=key,
                           etag=etag_of(resp.get("ETag")) or info.etag)
        return info_with_metadata(base, metadata)

    def read_ltx(self, info: LtxFileInfo, start: int = 0, end: int | None = None) -> bytes:
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"invalid byte range [{start}, {end})")
        if end is not None and end == start:
            return b""
        key = self.ltx_key(info.level, info.min_txid, info.max_txid)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if end is not None:
            kwargs["Range"] = f"bytes={start}-{end - 1}"
        elif start > 0:
            kwargs["Range"] = f"bytes={start}-"
        try:
            resp = self.boto_client.get_object(**kwargs)
            with contextlib.closing(resp["Body"]) as body:
                data: bytes = body.read()
        except bx.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""  # start at or past the end: nothing there, as with a file
            raise self._error(exc, "reading", key) from None
        except _BOTO_ERRORS as exc:
            raise self._error(exc, "reading", key) from None
        if start == 0 and end is None:
            self._check_length(key, len(data), info.size)
        return data

    def _check_length(self, key: str, got: int, listed: int) -> None:
        error = length_error(self.bucket, key, self.endpoint_url, got, listed)
        if error is not None:
            raise error

    def open_ltx(self, info: LtxFileInfo) -> Iterator[bytes]:
        key = self.ltx_key(info.level, info.min_txid, info.max_txid)
        return self._stream(key, info.size)

    def open_ltx_with_metadata(self, info: LtxFileInfo) -> tuple[LtxFileInfo, Iterator[bytes]]:
        """One GetObject: its answer carries the metadata a HEAD would. The size stays the
        listed one (when known): a Content-Length that disagrees is what the body is checked
        against, not what it is believed."""
        key = self.ltx_key(info.level, info.min_txid, info.max_txid)
        resp = self._get(key)
        metadata = {str(k): str(v) for k, v in resp.get("Metadata", {}).items()}
        base = LtxFileInfo(level=info.level, min_txid=info.min_txid, max_txid=info.max_txid,
                           size=info.size or int(resp.get("ContentLength", 0)),
                           timestamp=resp.get("LastModified", info.timestamp), key=key,
                           etag=etag_of(resp.get("ETag")) or info.etag)
        return info_with_metadata(base, metadata), self._body(key, resp, info.size)

    def _get(self, key: str) -> Any:
        try:
            return self.boto_client.get_object(Bucket=self.bucket, Key=key)
        except _BOTO_ERRORS as exc:
            raise self._error(exc, "reading", key) from None

    def _stream(self, key: str, listed: int = 0) -> Iterator[bytes]:
        yield from self._body(key, self._get(key), listed)

    def _body(self, key: str, resp: Any, listed: int = 0) -> Iterator[bytes]:
        """The body's chunks; its length is checked against `listed` (0: unknown) at the
        end. Closed before the first chunk, the body is closed (its connection released)."""
        return ChunkStream(self._body_chunks(key, resp, listed), resp["Body"].close)

    def _body_chunks(self, key: str, resp: Any, listed: int) -> Generator[bytes, None, None]:
        got = 0
        with contextlib.closing(resp["Body"]) as body:
            chunks = body.iter_chunks(CHUNK_SIZE)
            while True:
                try:
                    chunk: bytes = next(chunks)
                except StopIteration:
                    self._check_length(key, got, listed)
                    return
                except _BOTO_ERRORS as exc:
                    raise self._error(exc, "reading", key) from None
                got += len(chunk)
                yield chunk

    def write_ltx(self, level: int, min_txid: int, max_txid: int, data: bytes,
                  metadata: dict[str, str]) -> LtxFileInfo:
        if not 1 <= min_txid <= max_txid < 1 << 64:
            raise ValueError(f"invalid TXID range {min_txid:#x}..{max_txid:#x}")
        key = self.ltx_key(level, min_txid, max_txid)
        meta = upload_metadata(data, metadata)
        try:
            resp = self.boto_client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentLength=len(data),
                ContentType="application/octet-stream", Metadata=meta)
        except _BOTO_ERRORS as exc:
            raise self._error(exc, "writing", key) from None
        timestamp = datetime.now(tz=UTC)
        if META_TIMESTAMP in meta:
            with contextlib.suppress(ValueError):
                timestamp = parse_timestamp(meta[META_TIMESTAMP])
        info = LtxFileInfo(level=level, min_txid=min_txid, max_txid=max_txid, size=len(data),
                           timestamp=timestamp, key=key, etag=etag_of(resp.get("ETag")))
        return info_with_metadata(info, meta)

    def delete_ltx(self, infos: list[LtxFileInfo]) -> None:
        keys = [self.ltx_key(i.level, i.min_txid, i.max_txid) for i in infos]
        for n in range(0, len(keys), DELETE_BATCH):
            self._delete_keys(keys[n:n + DELETE_BATCH])

    def _delete_keys(self, keys: list[str]) -> None:
        if not keys:
            return
        try:
            resp = self.boto_client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
        except bx.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NotImplemented":
                for key in keys:  # providers without the batch API
                    self._delete_one(key)
                return
            raise self._error(exc, "deleting", keys[0]) from None
        except _BOTO_ERRORS as exc:
            raise self._error(exc, "deleting", keys[0]) from None
        for err in resp.get("Errors", []):
            if err.get("Code") in ("NoSuchKey", None):
                continue
            fake = bx.ClientError({"Error": {"Code": err.get("Code"),
                                             "Message": err.get("Message", "")}}, "DeleteObjects")
            raise self._error(fake, "deleting", str(err.get("Key")))

    def _delete_one(self, key: str) -> None:
        try:
            self.boto_client.delete_object(Bucket=self.bucket, Key=key)
        except bx.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in NOT_FOUND_CODES:
                return
            raise self._error(exc, "deleting", key) from None
        except _BOTO_ERRORS as exc:
            raise self._error(exc, "deleting", key) from None

    # ---- raw objects ---------------------------------------------------------------------

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        base = self._key("")
        out = []
        for page in self._list(base + prefix):
            for obj in page.get("Contents", []):
                last_modified: datetime = obj["LastModified"]
                out.append(ObjectInfo(key=str(obj["Key"])[len(base):], size=int(obj["Size"]),
                                      last_modified=last_modified))
        out.sort(key=lambda o: o.key)
        return out

    def get_object(self, key: str) -> bytes:
        full = self._key(key)
        try:
            resp = self.boto_client.get_object(Bucket=self.bucket, Key=full)
            with contextlib.closing(resp["Body"]) as body:
                data: bytes = body.read()
        except _BOTO_ERRORS as exc:
            raise self._error(exc, "reading", full) from None
        return data

    def get_object_tagged(self, key: str) -> TaggedObject:
        full = self._key(key)
        try:
            resp = self.boto_client.get_object(Bucket=self.bucket, Key=full)
            with contextlib.closing(resp["Body"]) as body:
                data: bytes = body.read()
        except _BOTO_ERRORS as exc:
            raise self._error(exc, "reading", full) from None
        return TaggedObject(data=data, etag=str(resp["ETag"]))

    def put_object_if(self, key: str, data: bytes, *, if_none_match: bool = False,
                      if_match: str | None = None) -> str:
        """One PutObject with `If-None-Match: *` or `If-Match: <etag>`. AWS answers a lost
        condition with 412 PreconditionFailed, or 409 ConditionalRequestConflict when another
        conditional write to the key is in flight, and If-Match on a deleted key with 404:
        all mean "someone else wrote it".

        A provider that ignores these headers would make every write succeed: the lease code
        probes for that before relying on them (replication/lease/bucket.py)."""
        check_condition(if_none_match, if_match)
        full = self._key(key)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": full, "Body": data,
                                  "ContentLength": len(data),
                                  "ContentType": "application/octet-stream"}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        else:
            kwargs["IfMatch"] = if_match
        try:
            resp = self.boto_client.put_object(**kwargs)
        except bx.ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            # If-Match on a key that is gone: 404 NoSuchKey, the condition failed all the same.
            gone = if_match is not None and (code in NOT_FOUND_CODES or status == 404)
            if code in CONDITION_CODES or status in (409, 412) or gone:
                condition = "If-None-Match: *" if if_none_match else f"If-Match: {if_match}"
                raise PreconditionFailedError(
                    f"s3://{self.bucket}/{full} was written by someone else ({condition} "
                    f"failed: {code or status})") from None
            raise self._error(exc, "writing", full) from None
        except _BOTO_ERRORS as exc:
            raise self._error(exc, "writing", full) from None
        return str(resp["ETag"])

    def check(self) -> None:
        """One ListObjectsV2 with MaxKeys=1: the endpoint answers, the bucket exists and the
        credentials may list it."""
        try:
            self.boto_client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(""),
                                             MaxKeys=1)
        except _BOTO_ERRORS as exc:
            raise self._error(exc, "listing", self._key("")) from None

    # ---- raw writes (litefs doctor's probe) ----------------------------------------------

    def _put_plain_object(self, key: str, data: bytes) -> None:
        full = self._key(key)
        try:
            self.boto_client.put_object(Bucket=self.bucket, Key=full, Body=data,
                                        ContentLength=len(data),
                                        ContentType="application/octet-stream")
        except _BOTO_ERRORS as exc:
            raise self._error(exc, "writing", full) from None

    def delete_object(self, key: str) -> None:
        self._delete_one(self._key(key))

    def server_time(self) -> datetime | None:
        """The Date header of one ListObjectsV2 (MaxKeys=1); one-second resolution."""
        try:
            resp = self.boto_client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(""),
                                                    MaxKeys=1)
        except _BOTO_ERRORS as exc:
            raise self._error(exc, "listing", self._key("")) from None
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        if not date:
            return None
        try:
            return email.utils.parsedate_to_datetime(str(date))
        except (TypeError, ValueError):
            return None


_BOTO_ERRORS = (bx.BotoCoreError, bx.ClientError, urllib3.exceptions.HTTPError, OSError)


def _check_level(level: int) -> None:
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"invalid LTX level {level}: expected 0..{MAX_LEVEL}")
