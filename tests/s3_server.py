"""A real S3 server for tests: `moto_server` on 127.0.0.1, started and stopped by fixtures.

`MotoServer.start()` picks a free port, starts the process (without AWS_CA_BUNDLE, which
nothing on loopback http needs), waits until it answers and `stop()` kills it. Helpers create
buckets and upload a local tree (the Litestream vectors) with the metadata of objects.json.
Tests may use boto3 directly here to look at raw keys independently of the code under test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.config

ACCESS_KEY_ID = "testkey"
SECRET_ACCESS_KEY = "testsecret"
REGION = "us-east-1"
START_TIMEOUT = 30.0  # seconds until the server must answer


def free_port() -> int:
    """A TCP port nothing listens on right now (nothing will, unless someone takes it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _moto_server_binary() -> str:
    candidate = Path(sys.executable).parent / "moto_server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("moto_server")
    if found is None:
        raise RuntimeError("moto_server not found: pip install 'moto[server]'")
    return found


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


class MotoServer:
    """One moto_server process. `endpoint` is `http://127.0.0.1:<port>`."""

    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        self.extra_env = dict(extra_env or {})
        self.port = 0
        self.endpoint = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._logdir = tempfile.mkdtemp(prefix="moto-")
        self.log_path = Path(self._logdir) / "moto_server.log"

    def start(self, timeout: float = START_TIMEOUT) -> MotoServer:
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        env.update(self.extra_env)
        deadline = time.monotonic() + timeout
        for _attempt in range(3):  # the free port may be taken between probe and bind
            self.port = free_port()
            self.endpoint = f"http://127.0.0.1:{self.port}"
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [_moto_server_binary(), "-H", "127.0.0.1", "-p", str(self.port)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                )
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break  # exited: port taken? try another
                if self._answers():
                    return self
                time.sleep(0.05)
            else:
                tail = self._log_tail()
                self.stop()
                raise RuntimeError(f"moto_server did not answer within {timeout}s; log:\n"
                                   f"{tail}")
            self.proc.wait()
            self.proc = None
        raise RuntimeError(f"moto_server exited at start; log:\n{self._log_tail()}")

    def _answers(self) -> bool:
        try:
            with _no_proxy_opener().open(f"{self.endpoint}/moto-api/", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        shutil.rmtree(self._logdir, ignore_errors=True)

    def set_auth(self, initial_no_auth_action_count: int) -> None:
        """Turn on IAM authentication after `n` more requests (moto's reset-auth API)."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth",
                                     data=str(initial_no_auth_action_count).encode(),
                                     headers={"Content-Type": "text/plain"}, method="POST")
        with _no_proxy_opener().open(req, timeout=5) as resp:
            assert resp.status == 200

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def boto_client(endpoint: str, service: str = "s3", *, access_key_id: str = ACCESS_KEY_ID,
                secret_access_key: str = SECRET_ACCESS_KEY) -> Any:
    """A plain boto3 client for test setup and for looking at raw keys."""
    return boto3.session.Session().client(
        service, endpoint_url=endpoint, region_name=REGION,
        aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
        config=botocore.config.Config(s3={"addressing_style": "path"},
                                      retries={"mode": "standard", "total_max_attempts": 2},
                                      connect_timeout=5, read_timeout=10,
                                      request_checksum_calculation="when_required"),
    )


def new_bucket_name() -> str:
    return f"test-{uuid.uuid4().hex[:16]}"


def create_bucket(endpoint: str, bucket: str | None = None) -> str:
    bucket = bucket or new_bucket_name()
    boto_client(endpoint).create_bucket(Bucket=bucket)
    return bucket


def raw_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    """Every key in the bucket under `prefix`, sorted."""
    keys: list[str] = []
    pages = boto_client(endpoint).get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix)
    for page in pages:
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return sorted(keys)


def upload_tree(endpoint: str, bucket: str, tree: Path,
                objects_json: Path | None = None) -> list[str]:
    """Upload every file under `tree` with its relative path as key. With `objects_json`
    (a vector set's objects.json), each object gets the user metadata recorded there
    (`litestream-timestamp`) and its content type. Returns the keys, sorted."""
    recorded: dict[str, dict[str, Any]] = {}
    if objects_json is not None:
        for obj in json.loads(objects_json.read_text())["objects"]:
            recorded[obj["key"]] = obj
    client = boto_client(endpoint)
    keys = []
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        key = path.relative_to(tree).as_posix()
        info = recorded.get(key, {})
        client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(),
                          Metadata=dict(info.get("metadata") or {}),
                          ContentType=info.get("content_type") or "application/octet-stream")
        keys.append(key)
    return keys


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the test server (the `s3_bucket` fixture)."""

    name: str
    endpoint: str

    def url(self, path: str = "") -> str:
        """The replica URL of `path` in this bucket, endpoint included."""
        return f"s3://{self.name}/{path.strip('/')}?endpoint={self.endpoint}"
