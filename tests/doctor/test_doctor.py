"""`litefs doctor` against a real S3 server (moto_server): all ok; bad credentials (moto in
IAM-auth mode); a missing bucket; an endpoint where nothing listens; a configuration file
with its own keys; a server whose clock is off and which ignores If-None-Match (moto behind a
rewriting proxy). The machine checks are run on paths that do and do not exist."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from litefs_py.doctor import Report, check_free_space, check_fuse, check_fusermount
from tests.s3_server import (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    MotoServer,
    S3Bucket,
    boto_client,
    free_port,
    raw_keys,
)

REPLICA_CHECKS = ["credentials", "endpoint", "list", "put", "get", "conditional writes",
                  "delete", "clock"]
MACHINE_CHECKS = ["/dev/fuse", "fusermount3", "free space"]


@dataclass
class Run:
    returncode: int
    doc: dict[str, Any]
    text: str  # the same run's text output

    def status(self) -> dict[str, str]:
        return {c["check"]: c["status"] for c in self.doc["checks"]}

    def check(self, name: str) -> dict[str, Any]:
        found = [c for c in self.doc["checks"] if c["check"] == name]
        assert len(found) == 1, (name, self.doc)
        return found[0]


def doctor(*args: str, tmp: Path, env: dict[str, str] | None = None,
           text: bool = False) -> Run:
    """`litefs doctor ARGS --json`, parsed; with `text`, the text output of a second run is
    checked against it (one line per check, FAIL lines with their fix)."""
    base = [sys.executable, "-m", "litefs_py", "doctor", "--data-dir", str(tmp / "data"), *args]
    js = subprocess.run([*base, "--json"], capture_output=True, text=True, timeout=120,
                        env=env, cwd=tmp)
    doc = json.loads(js.stdout)
    if not text:
        return Run(js.returncode, doc, "")
    out = subprocess.run(base, capture_output=True, text=True, timeout=120, env=env, cwd=tmp)
    assert js.returncode == out.returncode, (js, out)
    lines = out.stdout.splitlines()
    # One line per check, then the total; every FAIL line names its fix.
    assert len(lines) == len(doc["checks"]) + 1, out.stdout
    for line, check in zip(lines, doc["checks"], strict=False):
        assert line.startswith(f"{check['status']:<4}  {check['check']}"), (line, check)
        if check["status"] == "FAIL":
            assert "-> fix: " in line and check["fix"], line
    return Run(js.returncode, doc, out.stdout)


def test_all_ok_against_moto(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    run = doctor(s3_bucket.url("backups"), tmp=tmp_path, text=True)
    assert run.returncode == 0, run.text
    assert run.doc["ok"] is True
    assert list(run.status()) == REPLICA_CHECKS + MACHINE_CHECKS, run.text
    assert set(run.status().values()) == {"ok"}, run.text
    assert "from the environment (LITEFS_ACCESS_KEY_ID/LITEFS_SECRET_ACCESS_KEY)" in \
        run.check("credentials")["detail"]
    assert "loopback or private address" in run.check("endpoint")["detail"]
    assert "0s" in run.check("clock")["detail"] or "1s" in run.check("clock")["detail"]
    assert run.text.endswith("all ok\n")
    # The probe objects are gone again.
    assert raw_keys(s3_bucket.endpoint, s3_bucket.name) == []


def test_missing_bucket(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    run = doctor(f"s3://no-such-bucket/backups?endpoint={s3_bucket.endpoint}", tmp=tmp_path,
                 text=True)
    assert run.returncode == 1
    assert run.check("list")["status"] == "FAIL"
    assert "bucket no-such-bucket does not exist" in run.check("list")["detail"]
    assert run.check("list")["fix"].startswith("create the bucket")
    assert {run.status()[n] for n in ("put", "get", "delete", "conditional writes",
                                      "clock")} == {"skip"}
    assert "1 failed" in run.text


def test_wrong_endpoint(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    port = free_port()  # nothing listens there
    run = doctor(f"s3://{s3_bucket.name}/backups?endpoint=127.0.0.1:{port}", tmp=tmp_path)
    assert run.returncode == 1
    endpoint = run.check("endpoint")
    assert endpoint["status"] == "FAIL"
    assert f"cannot reach http://127.0.0.1:{port}" in endpoint["detail"]
    assert "replica.endpoint" in endpoint["fix"]
    assert run.check("list")["status"] == "FAIL"


@dataclass(frozen=True)
class AuthServer:
    endpoint: str
    bucket: str
    key_id: str
    secret: str


@pytest.fixture(scope="module")
def auth_server() -> Iterator[AuthServer]:
    """moto_server that checks signatures: one IAM user allowed everything in S3."""
    with MotoServer() as server:
        boto_client(server.endpoint).create_bucket(Bucket="doctor-auth")
        iam = boto_client(server.endpoint, "iam")
        iam.create_user(UserName="writer")
        key = iam.create_access_key(UserName="writer")["AccessKey"]
        iam.put_user_policy(UserName="writer", PolicyName="all-s3", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", '
            '"Resource": "*"}]}'))
        server.set_auth(0)
        yield AuthServer(server.endpoint, "doctor-auth", key["AccessKeyId"],
                         key["SecretAccessKey"])


def _env(**values: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LITEFS_", "LITESTREAM_", "AWS_"))}
    env.update(values)
    return env


@pytest.mark.parametrize("good", [True, False], ids=["good credentials", "bad credentials"])
def test_credentials_in_auth_mode(tmp_path: Path, auth_server: AuthServer, good: bool) -> None:
    env = _env(LITEFS_ACCESS_KEY_ID=auth_server.key_id,
               LITEFS_SECRET_ACCESS_KEY=auth_server.secret if good else "wrong-secret")
    url = f"s3://{auth_server.bucket}/app?endpoint={auth_server.endpoint}"
    run = doctor(url, tmp=tmp_path, env=env, text=not good)
    creds = run.check("credentials")
    masked = f"{auth_server.key_id[:4]}…{auth_server.key_id[-4:]}"
    assert masked in creds["detail"] and "LITEFS_ACCESS_KEY_ID" in creds["detail"]
    assert auth_server.secret not in json.dumps(run.doc) + run.text
    assert "wrong-secret" not in json.dumps(run.doc) + run.text
    if good:
        assert run.returncode == 0, run.text
        return
    assert run.returncode == 1
    assert creds["status"] == "FAIL"
    assert "credentials rejected" in creds["detail"] and "SignatureDoesNotMatch" in \
        creds["detail"]
    assert "LITEFS_ACCESS_KEY_ID/LITEFS_SECRET_ACCESS_KEY" in creds["fix"]
    assert run.check("list")["status"] == "FAIL"


def test_config_file_with_its_own_keys_and_two_replicas(tmp_path: Path,
                                                         s3_bucket: S3Bucket) -> None:
    config = tmp_path / "litefs.yml"
    config.write_text(
        f"data: {{dir: {str(tmp_path / 'data')!r}, spool-limit: 1000000TiB}}\n"
        f"access-key-id: {ACCESS_KEY_ID}\n"
        f"secret-access-key: {SECRET_ACCESS_KEY}\n"
        f"replica: {{url: 's3://{s3_bucket.name}/backups?endpoint={s3_bucket.endpoint}'}}\n"
        "dbs:\n"
        "  - name: cache.db\n"
        f"    replica: {{type: file, path: {str(tmp_path / 'cache-replica')!r}}}\n")
    run = doctor("--config", str(config), tmp=tmp_path, env=_env())
    assert run.check("config")["status"] == "ok"
    assert "2 replica location(s)" in run.check("config")["detail"]
    replicas = {c["replica"] for c in run.doc["checks"] if c["replica"]}
    assert replicas == {f"s3://{s3_bucket.name}/backups?endpoint={s3_bucket.endpoint}",
                        f"file://{tmp_path / 'cache-replica'}"}
    creds = run.check("credentials")  # only the s3 replica has credentials
    assert creds["status"] == "ok"
    assert f"access-key-id/secret-access-key (top level) in {config}" in creds["detail"]
    statuses = [c["status"] for c in run.doc["checks"] if c["replica"]]
    assert set(statuses) == {"ok"}, run.text
    # A spool limit no disk can hold: the free-space check fails and says what to change.
    space = run.check("free space")
    assert space["status"] == "FAIL" and "data.spool-limit" in space["fix"]
    assert run.returncode == 1


@contextmanager
def rewriting_proxy(upstream: str, clock_offset: timedelta) -> Iterator[str]:
    """An HTTP proxy in front of moto that drops If-None-Match from requests (a server that
    ignores conditional writes) and sends a Date header `clock_offset` away from now."""
    target = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("if-none-match", "host")}
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
            self.send_response_only(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in ("date", "content-length", "transfer-encoding",
                                     "connection", "server"):
                    self.send_header(k, v)
            self.send_header("Date", format_datetime(datetime.now(tz=UTC) + clock_offset,
                                                     usegmt=True))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_clock_skew_and_ignored_conditional_writes(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    with rewriting_proxy(s3_bucket.endpoint, timedelta(hours=-2)) as proxy:
        run = doctor(f"s3://{s3_bucket.name}/backups?endpoint={proxy}", tmp=tmp_path)
    clock = run.check("clock")
    assert clock["status"] == "FAIL", run.text
    assert "this machine is 7200s ahead of the server" in clock["detail"]
    assert "NTP" in clock["fix"]
    cond = run.check("conditional writes")
    assert cond["status"] == "warn" and "ignored If-None-Match" in cond["detail"]
    assert run.returncode == 1
    assert raw_keys(s3_bucket.endpoint, s3_bucket.name) == []


def test_machine_checks_name_what_is_missing(tmp_path: Path) -> None:
    report = Report()
    check_fuse(report, tmp_path / "no-fuse")
    check_fuse(report, tmp_path)  # a directory, not the device
    check_fuse(report)  # this machine's (the mount tests need it)
    check_fusermount(report, path=str(tmp_path))  # a PATH without it
    check_fusermount(report)
    check_free_space(report, tmp_path / "a" / "b", need=1)
    check_free_space(report, tmp_path, need=1 << 60)
    got = [(c.name, c.status) for c in report.checks]
    assert got == [("/dev/fuse", "FAIL"), ("/dev/fuse", "FAIL"), ("/dev/fuse", "ok"),
                   ("fusermount3", "FAIL"), ("fusermount3", "ok"), ("free space", "ok"),
                   ("free space", "FAIL")], report.checks
    assert "modprobe fuse" in (report.checks[0].fix or "")
    assert "apt-get install fuse3" in (report.checks[3].fix or "")
    assert "not there yet" in report.checks[5].detail


def test_ignored_conditional_writes_fail_when_the_lease_is_in_the_bucket(
        tmp_path: Path, s3_bucket: S3Bucket) -> None:
    """lease.type s3 keeps the lease in the replica bucket with conditional writes: storage
    that ignores If-None-Match could let two nodes win it, so doctor says FAIL (not a
    warning) and names the way out."""
    with rewriting_proxy(s3_bucket.endpoint, timedelta(0)) as proxy:
        config = tmp_path / "litefs.yml"
        config.write_text(
            f"data: {{dir: {str(tmp_path / 'data')!r}}}\n"
            f"access-key-id: {ACCESS_KEY_ID}\n"
            f"secret-access-key: {SECRET_ACCESS_KEY}\n"
            "lease: {type: s3, advertise-url: 'http://127.0.0.1:20202'}\n"
            f"replica: {{url: 's3://{s3_bucket.name}/backups?endpoint={proxy}'}}\n")
        run = doctor("--config", str(config), tmp=tmp_path, env=_env())
    assert run.check("config")["status"] == "ok", run.doc
    cond = run.check("conditional writes")
    assert cond["status"] == "FAIL" and "ignored If-None-Match" in cond["detail"], cond
    assert "lease.type etcd" in cond["fix"]
    assert run.returncode == 1
