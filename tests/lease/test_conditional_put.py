"""Conditional writes on both storage clients (the lease object's foundation): If-None-Match
creates only once, If-Match writes only over the ETag named, and of N writers racing with the
same condition exactly one wins — for S3 against a real moto_server, for a directory across
separate processes sharing it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from litefs_py.replica_clients import client_for_url
from litefs_py.storage.base import ReplicaClient
from litefs_py.storage.errors import ObjectNotFoundError, PreconditionFailedError
from litefs_py.storage.file import FileReplicaClient
from litefs_py.storage.s3 import S3ReplicaClient
from tests.s3_server import S3Bucket, boto_client

KEY = "litefs-lease.json"


@pytest.fixture(params=["file", "s3"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReplicaClient]:
    if request.param == "file":
        yield FileReplicaClient(tmp_path / "replica")
        return
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    c = client_for_url(bucket.url("backups"))
    assert isinstance(c, S3ReplicaClient)
    yield c
    c.close()


def test_if_none_match_creates_once(client: ReplicaClient) -> None:
    with pytest.raises(ObjectNotFoundError):
        client.get_object_tagged(KEY)
    etag = client.put_object_if(KEY, b"first", if_none_match=True)
    got = client.get_object_tagged(KEY)
    assert got.data == b"first" and got.etag == etag
    with pytest.raises(PreconditionFailedError):
        client.put_object_if(KEY, b"second", if_none_match=True)
    assert client.get_object_tagged(KEY).data == b"first"
    assert client.get_object(KEY) == b"first"  # an ordinary raw object too


def test_if_match_writes_only_over_the_named_etag(client: ReplicaClient) -> None:
    first = client.put_object_if(KEY, b"one", if_none_match=True)
    second = client.put_object_if(KEY, b"two", if_match=first)
    assert second != first
    assert client.get_object_tagged(KEY).etag == second
    with pytest.raises(PreconditionFailedError):
        client.put_object_if(KEY, b"three", if_match=first)  # stale ETag
    assert client.get_object_tagged(KEY).data == b"two"
    with pytest.raises(PreconditionFailedError):
        client.put_object_if("other.json", b"x", if_match=second)  # no such object


def test_exactly_one_condition(client: ReplicaClient) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        client.put_object_if(KEY, b"x")
    with pytest.raises(ValueError, match="exactly one"):
        client.put_object_if(KEY, b"x", if_none_match=True, if_match='"abc"')


def test_s3_sends_the_conditional_headers(s3_bucket: S3Bucket) -> None:
    """What reaches the server, seen with a plain boto3 client independent of ours."""
    c = client_for_url(s3_bucket.url("backups"))
    assert isinstance(c, S3ReplicaClient)
    sent: list[dict[str, str]] = []

    def record(request: Any, **_: Any) -> None:
        sent.append({k.lower(): v.decode() if isinstance(v, bytes) else str(v)
                     for k, v in request.headers.items()})

    c.boto_client.meta.events.register("before-send.s3.PutObject", record)
    etag = c.put_object_if(KEY, b"a", if_none_match=True)
    c.put_object_if(KEY, b"b", if_match=etag)
    assert sent[0].get("if-none-match") == "*" and "if-match" not in sent[0]
    assert sent[1].get("if-match") == etag and "if-none-match" not in sent[1]
    raw = boto_client(s3_bucket.endpoint).get_object(Bucket=s3_bucket.name,
                                                     Key=f"backups/{KEY}")
    assert raw["Body"].read() == b"b"
    c.close()


def _race(clients: list[S3ReplicaClient], etag: str | None) -> list[int]:
    """Every client writes KEY at once (after a barrier); the indexes of those that won."""
    barrier = threading.Barrier(len(clients))
    wins: list[int] = []

    def write(i: int) -> None:
        barrier.wait()
        try:
            if etag is None:
                clients[i].put_object_if(KEY, f"w{i}".encode(), if_none_match=True)
            else:
                clients[i].put_object_if(KEY, f"r{i}".encode(), if_match=etag)
        except PreconditionFailedError:
            return
        wins.append(i)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return wins


def test_racing_writers_one_wins_s3(s3_bucket: S3Bucket) -> None:
    # One client shared by 8 threads (boto3 clients are thread-safe and pool connections:
    # the requests are concurrent; making 8 clients would only cost seconds).
    c = client_for_url(s3_bucket.url("backups"))
    assert isinstance(c, S3ReplicaClient)
    clients = [c] * 8
    wins = _race(clients, None)
    assert len(wins) == 1, f"create: winners {wins}"
    assert c.get_object(KEY) == f"w{wins[0]}".encode()
    wins = _race(clients, c.get_object_tagged(KEY).etag)
    assert len(wins) == 1, f"replace: winners {wins}"
    assert c.get_object(KEY) == f"r{wins[0]}".encode()
    c.close()


# One writer process: waits for the shared start time, tries its conditional write, prints
# "won" or "lost". Only the file client is imported, so the processes start quickly.
_FILE_WRITER = """
import sys, time
from litefs_py.storage.errors import PreconditionFailedError
from litefs_py.storage.file import FileReplicaClient
root, key, i, etag, start = sys.argv[1:6]
client = FileReplicaClient(root)
time.sleep(max(0.0, float(start) - time.time()))
try:
    if etag == "-":
        client.put_object_if(key, f"w{i}".encode(), if_none_match=True)
    else:
        client.put_object_if(key, f"r{i}".encode(), if_match=etag)
except PreconditionFailedError:
    print("lost")
else:
    print("won")
"""


def test_racing_writers_one_wins_file_across_processes(tmp_path: Path) -> None:
    """Separate processes sharing one directory (the file backend's promise)."""
    root = str(tmp_path / "shared")
    for condition in ("create", "replace"):
        etag = (FileReplicaClient(root).get_object_tagged(KEY).etag
                if condition == "replace" else "-")
        start = time.time() + 1.0  # every process started and waiting by then
        procs = [subprocess.Popen([sys.executable, "-c", _FILE_WRITER, root, KEY, str(i), etag,
                                   str(start)], stdout=subprocess.PIPE, text=True)
                 for i in range(4)]
        outcomes = [p.communicate(timeout=30)[0].strip() for p in procs]
        wins = [i for i, out in enumerate(outcomes) if out == "won"]
        assert len(wins) == 1 and outcomes.count("lost") == 3, f"{condition}: {outcomes}"
        prefix = "w" if condition == "create" else "r"
        assert FileReplicaClient(root).get_object(KEY) == f"{prefix}{wins[0]}".encode()
