"""Replica clients from configuration: `client_for(ReplicaConfig)` and `client_for_url(url)`.

Lives beside config.py (above storage/ in the layers): storage/ knows nothing of the
configuration file; this is where the two meet."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ReplicaConfig, find_credentials, parse_replica_url
from .errors import ExitCode
from .storage.base import ReplicaClient
from .storage.errors import StorageError
from .storage.file import FileReplicaClient

if TYPE_CHECKING:
    from .storage.s3 import S3ReplicaClient


def client_for(replica: ReplicaConfig, env: Mapping[str, str] = os.environ, *,
               reading: bool = False, request_timeout: float | None = None) -> ReplicaClient:
    """The client of one database's replica (`replica` already has the database's path),
    encrypting and decrypting with age when `replica.age` is set. Credentials:
    `find_credentials` (config, LITEFS_*, LITESTREAM_*, then AWS's chain). Nothing is
    contacted here: call `check()` to probe.

    `reading`: the caller mostly reads (`litefs restore`, a short process): an S3 replica
    gets the small signed-HTTP reader (storage/s3_reader.py), which starts without importing
    boto3 and hands any write to a boto3 client built on first use, whenever the reader can
    serve it as boto3 would (plain keys, no proxy). age wraps whichever client that is: it
    only sees LTX bytes, so the reader and boto3 serve encrypted replicas alike.

    `request_timeout`: short connect/read timeouts and two attempts (the lease's client,
    whose calls must fail well within a TTL); always a plain boto3 client (the lease object
    is not LTX: never encrypted)."""
    client = _plain_client_for(replica, env, reading, request_timeout)
    if replica.age is not None and request_timeout is None:
        from .storage.age import AgeReplicaClient

        return AgeReplicaClient(client, replica.age.keys)
    return client


def _plain_client_for(replica: ReplicaConfig, env: Mapping[str, str], reading: bool,
                      request_timeout: float | None) -> ReplicaClient:
    if replica.type == "file":
        return FileReplicaClient(Path(replica.path))
    if replica.bucket is None:
        raise StorageError("an s3 replica needs a bucket", ExitCode.CONFIG)
    credentials = find_credentials(replica, env)
    if reading and request_timeout is None:
        from .storage.s3_reader import S3ReaderClient, reader_credentials

        keys = reader_credentials(replica.endpoint, replica.region, credentials.access_key_id,
                                  credentials.secret_access_key, env)
        if keys is not None:
            source = (credentials.source if credentials.access_key_id is not None
                      else "AWS_ACCESS_KEY_ID")
            return S3ReaderClient(
                replica.bucket, replica.path, credentials=keys, endpoint=replica.endpoint,
                region=replica.region, force_path_style=replica.force_path_style,
                credentials_source=source, env=env,
                writer=lambda: _boto_client(replica, env))
    return _boto_client(replica, env, request_timeout)


def _boto_client(replica: ReplicaConfig, env: Mapping[str, str],
                 request_timeout: float | None = None) -> S3ReplicaClient:
    assert replica.bucket is not None
    credentials = find_credentials(replica, env)
    from .storage.s3 import S3ReplicaClient  # boto3 takes a while to import: only when needed

    timeouts = {} if request_timeout is None else {
        "connect_timeout": request_timeout, "read_timeout": request_timeout,
        "max_attempts": 2}
    return S3ReplicaClient(
        replica.bucket,
        replica.path,
        endpoint=replica.endpoint,
        region=replica.region,
        force_path_style=replica.force_path_style,
        access_key_id=credentials.access_key_id,
        secret_access_key=credentials.secret_access_key,
        credentials_source=credentials.source,
        **timeouts,  # type: ignore[arg-type]
    )


def client_for_url(url: str, env: Mapping[str, str] = os.environ, *,
                   reading: bool = False) -> ReplicaClient:
    """The client for a replica URL (`s3://bucket/path?endpoint=...`, `file:///dir`, `/dir`);
    the path is used as given. Raises QuietError (CONFIG) for a bad URL."""
    return client_for(parse_replica_url(url), env, reading=reading)
