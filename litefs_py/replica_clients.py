"""Replica clients from configuration: `client_for(ReplicaConfig)` and `client_for_url(url)`.

Lives beside config.py (above storage/ in the layers): storage/ knows nothing of the
configuration file; this is where the two meet."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .config import ReplicaConfig, find_credentials, parse_replica_url
from .errors import ExitCode
from .storage.base import ReplicaClient
from .storage.errors import StorageError
from .storage.file import FileReplicaClient


def client_for(replica: ReplicaConfig, env: Mapping[str, str] = os.environ, *,
               request_timeout: float | None = None) -> ReplicaClient:
    """The client of one database's replica (`replica` already has the database's path).
    Credentials: `find_credentials` (config, LITEFS_*, LITESTREAM_*, then AWS's chain).
    `request_timeout`: short connect/read timeouts and two attempts (the lease's client,
    whose calls must fail well within a TTL). Nothing is contacted here: call `check()` to
    probe."""
    if replica.type == "file":
        return FileReplicaClient(Path(replica.path))
    if replica.bucket is None:
        raise StorageError("an s3 replica needs a bucket", ExitCode.CONFIG)
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


def client_for_url(url: str, env: Mapping[str, str] = os.environ) -> ReplicaClient:
    """The client for a replica URL (`s3://bucket/path?endpoint=...`, `file:///dir`, `/dir`);
    the path is used as given. Raises QuietError (CONFIG) for a bad URL."""
    return client_for(parse_replica_url(url), env)
