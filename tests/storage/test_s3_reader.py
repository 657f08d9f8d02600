"""The small signed-HTTP reader `litefs restore` uses (storage/s3_reader.py): it signs as
botocore does, a moto_server that checks signatures accepts it, it fails with the same
messages as the boto3 client, and it is chosen only when it can stand in for
boto3. tests/restore/test_vectors_s3.py checks that a restore through it never imports boto3."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime

import botocore.auth
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from litefs_py.config import parse_replica_url
from litefs_py.replica_clients import client_for, client_for_url
from litefs_py.storage.errors import (
    AccessDeniedError,
    EndpointUnreachableError,
    NoSuchBucketError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
)
from litefs_py.storage.s3 import S3ReplicaClient
from litefs_py.storage.s3_reader import S3ReaderClient
from litefs_py.storage.sigv4 import Signer, StaticCredentials, canonical_query
from tests.s3_server import S3Bucket, free_port
from tests.storage.helpers import ltx_bytes, meta, silent_server, stub_s3
from tests.storage.test_s3_errors import AuthServer, auth_server  # noqa: F401 - a fixture

TS = 1_767_225_600_123


# --- signing --------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "params", "headers", "token"), [
    ("/bucket/app.db/0000/0000000000000001-0000000000000001.ltx", {}, {}, None),
    ("/bucket/", {"list-type": "2", "prefix": "a b/c+d~é", "start-after": "x/y"}, {}, None),
    ("/b/k%20with%2Bodd~chars/%C3%A9", {}, {"Range": "bytes=0-99"}, "session/token+="),
    ("/", {"list-type": "2", "delimiter": "/", "continuation-token": "1=="}, {}, None),
])
def test_signs_byte_for_byte_like_botocore(path: str, params: dict[str, str],
                                           headers: dict[str, str], token: str | None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    monkeypatch.setattr(botocore.auth, "get_current_datetime",
                        lambda: when.replace(tzinfo=None))
    host = "127.0.0.1:9000"
    query = canonical_query(params)
    mine = dict(headers)
    Signer(StaticCredentials("AKIDEXAMPLE", "secret/key+", token), "eu-west-1").sign(
        "GET", host, path, query, mine, when)

    url = f"http://{host}{path}" + (f"?{query}" if query else "")
    req = AWSRequest(method="GET", url=url, headers=dict(headers))
    S3SigV4Auth(Credentials("AKIDEXAMPLE", "secret/key+", token), "s3", "eu-west-1").add_auth(req)
    theirs = dict(req.headers.items())
    # botocore signs the SHA-256 of the (empty) body for plain http, as we do.
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256"):
        assert mine[name] == theirs[name], name
    if token:
        assert mine["X-Amz-Security-Token"] == theirs["X-Amz-Security-Token"]


def test_reads_from_a_server_that_checks_signatures(auth_server: AuthServer,  # noqa: F811
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    reader = _auth_reader(auth_server, auth_server.key_id, auth_server.secret, monkeypatch)
    writer = reader.writer()  # boto3, for the writes
    writer.write_ltx(0, 1, 1, ltx_bytes(1, 1, TS, 9000), meta())
    writer.write_ltx(0, 2, 3, ltx_bytes(2, 3, TS), meta())
    try:
        reader.check()
        assert reader.levels() == [0]
        infos = reader.ltx_files(0, with_metadata=True)
        assert [(i.min_txid, i.max_txid) for i in infos] == [(1, 1), (2, 3)]
        assert infos[0].post_apply_checksum == 0x0123456789ABCDEF
        assert reader.read_ltx(infos[0], 10, 20) == ltx_bytes(1, 1, TS, 9000)[10:20]
        assert b"".join(reader.open_ltx(infos[1])) == ltx_bytes(2, 3, TS)
        assert reader.server_time() is not None
    finally:
        reader.close()


@pytest.mark.parametrize("case", ["wrong secret", "no permission"])
def test_rejected_like_the_boto3_client(auth_server: AuthServer,  # noqa: F811
                                        monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    if case == "wrong secret":
        key_id, secret = auth_server.key_id, "wrong-secret"
    else:
        key_id, secret = auth_server.unprivileged_key_id, auth_server.unprivileged_secret
    reader = _auth_reader(auth_server, key_id, secret, monkeypatch)
    boto = client_for_url(f"s3://{auth_server.bucket}/app.db?endpoint={auth_server.endpoint}")
    assert isinstance(boto, S3ReplicaClient)
    try:
        for op in ("check", "levels"):
            errors = []
            for c in (reader, boto):
                with pytest.raises(AccessDeniedError) as err:
                    getattr(c, op)()
                errors.append(err.value)
            assert type(errors[0]) is type(errors[1]), op
            assert _without_request_ids(str(errors[0])) == _without_request_ids(
                str(errors[1])), op
    finally:
        reader.close()
        boto.close()


def _auth_reader(auth: AuthServer, key_id: str, secret: str,
                 monkeypatch: pytest.MonkeyPatch) -> S3ReaderClient:
    monkeypatch.setenv("LITEFS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("LITEFS_SECRET_ACCESS_KEY", secret)
    c = client_for_url(f"s3://{auth.bucket}/app.db?endpoint={auth.endpoint}", reading=True)
    assert isinstance(c, S3ReaderClient)
    return c


def _without_request_ids(message: str) -> str:
    return message.split(" (")[0] + message[message.find(";"):]


# --- failures ---------------------------------------------------------------------------------


def test_missing_bucket_and_object(s3_bucket: S3Bucket) -> None:
    reader = client_for_url(s3_bucket.url("app.db"), reading=True)
    writer = client_for_url(s3_bucket.url("app.db"))
    gone = client_for_url(f"s3://no-such-bucket-here/app.db?endpoint={s3_bucket.endpoint}",
                          reading=True)
    with closing(reader), closing(writer), closing(gone):
        info = writer.write_ltx(0, 1, 1, ltx_bytes(1, 1, TS), meta())
        writer.delete_ltx([info])
        with pytest.raises(ObjectNotFoundError, match=r"does not exist at .* retention"):
            reader.read_ltx(info)
        with pytest.raises(ObjectNotFoundError):
            reader.ltx_metadata(info)
        with pytest.raises(NoSuchBucketError, match="bucket no-such-bucket-here does not exist"):
            gone.levels()


def test_unreachable_and_silent_endpoints_fail_fast(s3_bucket: S3Bucket) -> None:
    port = free_port()
    c = client_for_url(f"s3://{s3_bucket.name}/app.db?endpoint=127.0.0.1:{port}", reading=True)
    with closing(c), pytest.raises(EndpointUnreachableError,
                                   match=f"^cannot reach http://127.0.0.1:{port}: .*check "
                                         "replica.endpoint"):
        c.check()
    with silent_server() as endpoint:
        quiet = S3ReaderClient("bucket", "app.db", endpoint=endpoint,
                               credentials=StaticCredentials("k", "s"), read_timeout=0.5,
                               max_attempts=1)
        with closing(quiet), pytest.raises(StorageError) as err:
            quiet.check()
        assert err.value.retryable


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError")])
def test_server_errors_retried_three_times_then_transient(status: int, code: str) -> None:
    with stub_s3(status, code) as (stub, endpoint):
        c = S3ReaderClient("bucket", "app.db", endpoint=endpoint,
                           credentials=StaticCredentials("k", "s"))
        with closing(c), pytest.raises(TransientStorageError) as err:
            c.levels()
    assert str(err.value).startswith(f"{endpoint} is failing ({code}: stubbed error) while ")
    assert len(stub.requests) == 3


def test_wrong_region_names_the_setting() -> None:
    message = "the region 'us-east-1' is wrong; expecting 'eu-west-1'"
    with stub_s3(400, "AuthorizationHeaderMalformed", message) as (_stub, endpoint):
        c = S3ReaderClient("bucket", "", endpoint=endpoint,
                           credentials=StaticCredentials("k", "s"))
        with closing(c), pytest.raises(StorageError, match=r"set replica\.region") as err:
            c.check()
    assert not err.value.retryable


# --- when it is used ------------------------------------------------------------------------


def _replica(url: str) -> Callable[[dict[str, str]], object]:
    return lambda env: client_for(parse_replica_url(url), env, reading=True)


@pytest.mark.parametrize(("env", "reader"), [
    ({"LITEFS_ACCESS_KEY_ID": "k", "LITEFS_SECRET_ACCESS_KEY": "s"}, True),
    ({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}, True),
    ({}, False),  # the AWS chain: profiles, SSO, instance roles are boto3's
    ({"AWS_PROFILE": "x"}, False),
    ({"LITEFS_ACCESS_KEY_ID": "k", "LITEFS_SECRET_ACCESS_KEY": "s",
      "HTTPS_PROXY": "http://proxy:3128"}, False),
])
def test_chosen_only_where_it_stands_in_for_boto3(env: dict[str, str], reader: bool) -> None:
    c = _replica("s3://bucket/app.db?endpoint=http://127.0.0.1:9")(env)
    assert isinstance(c, S3ReaderClient if reader else S3ReplicaClient)


def test_aws_needs_a_known_region() -> None:
    keys = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    assert isinstance(_replica("s3://bucket/app.db")(keys), S3ReplicaClient)  # ~/.aws/config
    c = _replica("s3://bucket/app.db")({**keys, "AWS_REGION": "eu-west-1"})
    assert isinstance(c, S3ReaderClient)
    assert c.endpoint_url == "https://s3.eu-west-1.amazonaws.com"
    assert c.host == "bucket.s3.eu-west-1.amazonaws.com"  # virtual-hosted, as boto3 does
    dotted = _replica("s3://my.bucket/app.db?region=eu-west-1")(keys)
    assert isinstance(dotted, S3ReaderClient)
    assert dotted.host == "s3.eu-west-1.amazonaws.com"  # path style: dots break TLS names
