"""Errors of the S3 client: each maps to a storage error class whose message names the
bucket/key/endpoint and the fix.

Bad credentials are tested against moto_server in IAM-auth mode (a separate server: moto's
`/moto-api/reset-auth` turns authentication on after the IAM users are created), and the
same mapping against a stub returning S3's XML errors; 5xx/SlowDown via the stub."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from litefs_py.errors import ExitCode
from litefs_py.replica_clients import client_for_url
from litefs_py.storage.errors import (
    AccessDeniedError,
    EndpointUnreachableError,
    NoSuchBucketError,
    StorageError,
    TransientStorageError,
)
from litefs_py.storage.s3 import S3ReplicaClient
from tests.s3_server import MotoServer, S3Bucket, boto_client, free_port
from tests.storage.helpers import ltx_bytes, silent_server, stub_s3

TS = 1_767_225_600_123


def operations(c: S3ReplicaClient) -> list[tuple[str, Callable[[], object]]]:
    return [
        ("check", c.check),
        ("write_ltx", lambda: c.write_ltx(0, 1, 1, ltx_bytes(1, 1, TS), {})),
        ("ltx_files", lambda: c.ltx_files(0)),
        ("levels", c.levels),
    ]


def test_no_such_bucket(s3_server: str, s3_bucket: S3Bucket) -> None:
    c = client_for_url(f"s3://no-such-bucket-here/app.db?endpoint={s3_server}")
    assert isinstance(c, S3ReplicaClient)
    try:
        for name, op in operations(c):
            with pytest.raises(NoSuchBucketError) as err:
                op()
            msg = str(err.value)
            assert msg == (f"bucket no-such-bucket-here does not exist at {s3_server}; create "
                           f"it or fix replica.bucket"), name
            assert not err.value.retryable
            assert err.value.code == ExitCode.NOT_FOUND
    finally:
        c.close()


def test_unreachable_endpoint_fails_fast(s3_bucket: S3Bucket) -> None:
    port = free_port()  # nothing listens there
    c = client_for_url(f"s3://{s3_bucket.name}/app.db?endpoint=127.0.0.1:{port}")
    assert isinstance(c, S3ReplicaClient)
    try:
        for name, op in operations(c)[:2]:
            t0 = time.monotonic()
            with pytest.raises(EndpointUnreachableError) as err:
                op()
            assert time.monotonic() - t0 < 10, name
            assert str(err.value).startswith(f"cannot reach http://127.0.0.1:{port}: ")
            assert err.value.retryable
    finally:
        c.close()


def test_read_timeout_is_unreachable() -> None:
    with silent_server() as endpoint:
        c = S3ReplicaClient("bucket", "app.db", endpoint=endpoint, access_key_id="k",
                            secret_access_key="s", read_timeout=0.5, max_attempts=1)
        try:
            t0 = time.monotonic()
            with pytest.raises(EndpointUnreachableError, match=f"cannot reach {endpoint}: "):
                c.check()
            assert time.monotonic() - t0 < 5
        finally:
            c.close()


@pytest.mark.parametrize(("status", "code"), [
    (503, "SlowDown"), (500, "InternalError"), (503, "ServiceUnavailable"),
])
def test_server_errors_are_transient_and_retried_a_few_times(status: int, code: str) -> None:
    with stub_s3(status, code) as (stub, endpoint):
        c = S3ReplicaClient("bucket", "app.db", endpoint=endpoint, access_key_id="k",
                            secret_access_key="s")
        try:
            with pytest.raises(TransientStorageError) as err:
                c.write_ltx(0, 1, 1, ltx_bytes(1, 1, TS), {})
        finally:
            c.close()
    assert err.value.retryable
    assert str(err.value).startswith(f"{endpoint} is failing ({code}: stubbed error) while "
                                     f"writing s3://bucket/app.db/0000/")
    assert len(stub.requests) == 3  # botocore standard mode, 3 attempts in all


@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "SignatureDoesNotMatch"])
def test_credential_errors_from_a_stub(code: str) -> None:
    with stub_s3(403, code) as (_stub, endpoint):
        c = S3ReplicaClient("bucket", "app.db", endpoint=endpoint, access_key_id="AKIA12345678",
                            secret_access_key="s", credentials_source="LITEFS_ACCESS_KEY_ID")
        try:
            with pytest.raises(AccessDeniedError) as err:
                c.check()
        finally:
            c.close()
    msg = str(err.value)
    assert msg.startswith(f"credentials rejected by {endpoint} ({code}: stubbed error; key "
                          f"AKIA…5678 from LITEFS_ACCESS_KEY_ID): check LITEFS_ACCESS_KEY_ID/")
    assert not err.value.retryable


def test_wrong_region_names_the_setting() -> None:
    message = "the region 'us-east-1' is wrong; expecting 'eu-west-1'"
    with stub_s3(400, "AuthorizationHeaderMalformed", message) as (_stub, endpoint):
        c = S3ReplicaClient("bucket", "", endpoint=endpoint, access_key_id="k",
                            secret_access_key="s")
        try:
            with pytest.raises(StorageError) as err:
                c.check()
        finally:
            c.close()
    assert "expecting 'eu-west-1'" in str(err.value)
    assert "set replica.region" in str(err.value)
    assert err.value.code == ExitCode.CONFIG


# --- moto_server with IAM authentication -----------------------------------------------------


@dataclass
class AuthServer:
    endpoint: str
    bucket: str
    key_id: str  # may use the bucket
    secret: str
    unprivileged_key_id: str  # a valid key without any policy
    unprivileged_secret: str


@pytest.fixture(scope="module")
def auth_server() -> Iterator[AuthServer]:
    with MotoServer() as server:
        bucket = "auth-bucket"
        boto_client(server.endpoint).create_bucket(Bucket=bucket)
        iam = boto_client(server.endpoint, "iam")
        keys = []
        for user in ("writer", "nobody"):
            iam.create_user(UserName=user)
            keys.append(iam.create_access_key(UserName=user)["AccessKey"])
        iam.put_user_policy(UserName="writer", PolicyName="all-s3", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", '
            '"Resource": "*"}]}'))
        server.set_auth(0)  # from now on every request is authenticated
        yield AuthServer(server.endpoint, bucket, keys[0]["AccessKeyId"],
                         keys[0]["SecretAccessKey"], keys[1]["AccessKeyId"],
                         keys[1]["SecretAccessKey"])


def _client(auth: AuthServer, key_id: str, secret: str,
            monkeypatch: pytest.MonkeyPatch) -> S3ReplicaClient:
    monkeypatch.setenv("LITEFS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("LITEFS_SECRET_ACCESS_KEY", secret)
    c = client_for_url(f"s3://{auth.bucket}/app.db?endpoint={auth.endpoint}")
    assert isinstance(c, S3ReplicaClient)
    return c


def test_valid_credentials_work_in_auth_mode(auth_server: AuthServer,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    c = _client(auth_server, auth_server.key_id, auth_server.secret, monkeypatch)
    try:
        c.check()
        c.write_ltx(0, 1, 1, ltx_bytes(1, 1, TS), {})
        assert [i.max_txid for i in c.ltx_files(0)] == [1]
    finally:
        c.close()


@pytest.mark.parametrize("case", ["unknown key", "wrong secret"])
def test_rejected_credentials(auth_server: AuthServer, monkeypatch: pytest.MonkeyPatch,
                              case: str) -> None:
    if case == "unknown key":
        key_id, secret, code = "AKIAUNKNOWNKEY000000", "whatever", "InvalidAccessKeyId"
    else:
        key_id, secret, code = auth_server.key_id, "wrong-secret", "SignatureDoesNotMatch"
    c = _client(auth_server, key_id, secret, monkeypatch)
    try:
        for name, op in operations(c):
            with pytest.raises(AccessDeniedError) as err:
                op()
            msg = str(err.value)
            assert msg.startswith(f"credentials rejected by {auth_server.endpoint} ({code}"), name
            assert f"{key_id[:4]}…{key_id[-4:]} from LITEFS_ACCESS_KEY_ID" in msg
            assert "check LITEFS_ACCESS_KEY_ID/LITEFS_SECRET_ACCESS_KEY" in msg
            assert secret not in msg
            assert not err.value.retryable
    finally:
        c.close()


def test_key_without_permission_is_access_denied(auth_server: AuthServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    c = _client(auth_server, auth_server.unprivileged_key_id, auth_server.unprivileged_secret,
                monkeypatch)
    try:
        with pytest.raises(AccessDeniedError) as err:
            c.check()
    finally:
        c.close()
    msg = str(err.value)
    assert msg.startswith(f"access denied by {auth_server.endpoint} while listing "
                          f"s3://{auth_server.bucket}/app.db/ (AccessDenied")
    assert f"delete in bucket {auth_server.bucket}" in msg
