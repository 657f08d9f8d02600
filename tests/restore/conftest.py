"""Fixtures for restore tests: the Litestream vectors in a real S3 server (moto_server), and
the same trees as directory replicas.

Everything here is real: objects are uploaded to moto with the user metadata recorded in
each set's objects.json, and read back by the project's own S3 and file clients.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from litefs_py.cli import main
from litefs_py.ltx import parse_filename
from litefs_py.storage.file import FileReplicaClient
from tests.needs import need_tool
from tests.s3_server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, create_bucket, upload_tree
from tests.vectors_path import VECTORS

LTX_SETS = ("ls-0.5.17-4k", "ls-0.5.15-4k")
V03_SET = "ls-0.3.13-4k"

CLI_ENV = {
    "LITEFS_ACCESS_KEY_ID": ACCESS_KEY_ID,
    "LITEFS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
}


def expected(set_name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / set_name / "expected.json").read_text())
    return data


def dump_sha256(db: Path) -> str:
    """sha256 of `sqlite3 DB .dump` stdout, as the vectors record it."""
    out = subprocess.run(["sqlite3", str(db), ".dump"], capture_output=True, check=True,
                         timeout=30).stdout
    return hashlib.sha256(out).hexdigest()


def integrity(db: Path) -> str:
    out = subprocess.run(["sqlite3", str(db), "PRAGMA integrity_check"], capture_output=True,
                         check=True, timeout=30, text=True).stdout
    return out.strip()


def run_cli(*args: str, env: dict[str, str] | None = None) -> Result:
    runner = CliRunner(env={**CLI_ENV, **(env or {})})
    return runner.invoke(main, ["restore", *args], catch_exceptions=False)


@dataclass(frozen=True)
class VectorBucket:
    endpoint: str
    name: str

    def url(self, path: str, *, scheme: bool = True) -> str:
        endpoint = self.endpoint if scheme else self.endpoint.split("://", 1)[1]
        return f"s3://{self.name}/{path}?endpoint={endpoint}"


@pytest.fixture(scope="session")
def sqlite3_cli() -> str:
    return need_tool("sqlite3", "sqlite3")


@pytest.fixture(scope="session")
def vector_bucket(s3_server: str, sqlite3_cli: str) -> VectorBucket:
    """One bucket holding the three Litestream sets under their own prefixes (app.db,
    db/store.db, store.db), uploaded once with their recorded metadata. Read-only."""
    bucket = create_bucket(s3_server)
    for set_name in (*LTX_SETS, V03_SET):
        upload_tree(s3_server, bucket, VECTORS / set_name / "bucket",
                    VECTORS / set_name / "objects.json")
    return VectorBucket(s3_server, bucket)


def file_replica_from_vector(set_name: str, root: Path) -> FileReplicaClient:
    """The set's LTX objects as a directory replica (`root/ltx/<level>/...`) with their
    metadata, written by the project's file client."""
    exp = expected(set_name)
    prefix = exp["prefix"] + "/"
    client = FileReplicaClient(root)
    objects = json.loads((VECTORS / set_name / "objects.json").read_text())["objects"]
    for obj in objects:
        level, name = obj["key"][len(prefix):].split("/")
        lo, hi = parse_filename(name)
        data = (VECTORS / set_name / "bucket" / obj["key"]).read_bytes()
        client.write_ltx(int(level, 16), lo, hi, data, obj["metadata"])
    return client


@pytest.fixture
def replica_17(tmp_path: Path) -> Iterator[FileReplicaClient]:
    """A writable directory replica of ls-0.5.17-4k (tests damage it)."""
    yield file_replica_from_vector("ls-0.5.17-4k", tmp_path / "replica")
