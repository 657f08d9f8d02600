"""The storage suite's backends: every behaviour common to replica clients is tested against
each of them (`backend` fixture), the directory replica and S3 on a real moto_server. What is
stored is seen from outside through plain filesystem calls or plain boto3, never through the
client under test."""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from litefs_py.replica_clients import client_for_url
from litefs_py.storage.base import ReplicaClient
from litefs_py.storage.file import FileReplicaClient
from litefs_py.storage.s3 import S3ReplicaClient
from litefs_py.storage.s3_reader import S3ReaderClient
from tests.s3_server import S3Bucket, boto_client, raw_keys

BACKENDS = ("file", "s3", "s3-reader")  # s3-reader: what `litefs restore` reads with


@dataclass(frozen=True)
class Backend:
    """One replica client for the path `backups/app.db`, and its storage seen from outside.
    Keys are relative to the replica's root; `..` reaches a neighbouring database."""

    name: str
    client: ReplicaClient
    level_prefix: Callable[[int], str]  # "ltx/0/" (directory) or "0000/" (S3)
    info_key: Callable[[str], str]  # LtxFileInfo.key of the object at a relative key
    put: Callable[[str, bytes], None]  # store an object as another program would
    stored: Callable[[], list[str]]  # every stored object (not the file client's sidecars)

    def ltx_key(self, level: int, lo: int, hi: int) -> str:
        return f"{self.level_prefix(level)}{lo:016x}-{hi:016x}.ltx"


def _file_backend(root: Path) -> Backend:
    def put(rel: str, data: bytes) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def keys() -> list[str]:
        if not root.exists():
            return []
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.is_file() and "/.meta/" not in f"/{p.relative_to(root).as_posix()}")

    return Backend("file", FileReplicaClient(root), lambda level: f"ltx/{level}/",
                   lambda rel: str(root / rel), put, keys)


def _s3_backend(bucket: S3Bucket, path: str, reading: bool = False) -> Backend:
    client = client_for_url(bucket.url(path), reading=reading)
    assert isinstance(client, S3ReaderClient if reading else S3ReplicaClient)
    raw = boto_client(bucket.endpoint)

    def put(rel: str, data: bytes) -> None:
        raw.put_object(Bucket=bucket.name, Key=posixpath.normpath(f"{path}/{rel}"), Body=data)

    def keys() -> list[str]:
        return [k[len(path) + 1:] for k in raw_keys(bucket.endpoint, bucket.name, f"{path}/")]

    return Backend("s3-reader" if reading else "s3", client, lambda level: f"{level:04x}/",
                   lambda rel: f"{path}/{rel}", put, keys)


@pytest.fixture
def s3(s3_bucket: S3Bucket) -> Iterator[S3ReplicaClient]:
    """An S3 client for `backups/app.db` in a fresh bucket (the S3-only tests)."""
    c = client_for_url(s3_bucket.url("backups/app.db"))
    assert isinstance(c, S3ReplicaClient)
    yield c
    c.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "file":
        b = _file_backend(tmp_path / "backups" / "app.db")  # created on first write
    else:
        b = _s3_backend(request.getfixturevalue("s3_bucket"), "backups/app.db",
                        reading=request.param == "s3-reader")
    yield b
    close = getattr(b.client, "close", None)
    if close is not None:
        close()
