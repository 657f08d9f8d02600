"""Replica clients from configuration: `client_for(ReplicaConfig)` and `client_for_url(url)`.

Lives beside config.py (above storage/ in the layers): storage/ knows nothing of the
configuration file; this is where the two meet."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .config import ReplicaConfig, parse_replica_url, resolve_credentials
from .errors import ExitCode
from .storage.age import AgeReplicaClient
from .storage.base import ReplicaClient
from .storage.errors import StorageError
from .storage.file import FileReplicaClient


def _credentials_source(replica: ReplicaConfig, env: Mapping[str, str]) -> str:
    """Where resolve_credentials found the keys, for error messages (same order)."""
    if replica.access_key_id is not None:
        return "the configuration file (access-key-id)"
    for var in ("LITEFS_ACCESS_KEY_ID", "LITESTREAM_ACCESS_KEY_ID"):
        if env.get(var):
            return var
    return "the AWS default chain (AWS_ACCESS_KEY_ID, ~/.aws, instance role)"


def client_for(replica: ReplicaConfig, env: Mapping[str, str] = os.environ) -> ReplicaClient:
    """The client of one database's replica (`replica` already has the database's path),
    encrypting and decrypting with age when `replica.age` is set. Credentials:
    `resolve_credentials` (config, LITEFS_*, LITESTREAM_*, then AWS's chain). Nothing is
    contacted here: call `check()` to probe."""
    client = _plain_client_for(replica, env)
    if replica.age is not None:
        return AgeReplicaClient(client, replica.age)
    return client


def _plain_client_for(replica: ReplicaConfig, env: Mapping[str, str]) -> ReplicaClient:
    if replica.type == "file":
        return FileReplicaClient(Path(replica.path))
    if replica.bucket is None:
        raise StorageError("an s3 replica needs a bucket", ExitCode.CONFIG)
    key_id, secret = resolve_credentials(replica, env)
    from .storage.s3 import S3ReplicaClient  # boto3 takes a while to import: only when needed

    return S3ReplicaClient(
        replica.bucket,
        replica.path,
        endpoint=replica.endpoint,
        region=replica.region,
        force_path_style=replica.force_path_style,
        access_key_id=key_id,
        secret_access_key=secret,
        credentials_source=_credentials_source(replica, env),
    )


def client_for_url(url: str, env: Mapping[str, str] = os.environ) -> ReplicaClient:
    """The client for a replica URL (`s3://bucket/path?endpoint=...`, `file:///dir`, `/dir`);
    the path is used as given. Raises QuietError (CONFIG) for a bad URL."""
    return client_for(parse_replica_url(url), env)
