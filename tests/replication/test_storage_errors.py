"""Failures that waiting cannot fix are reported at once, with the fix, and retried slowly
until the fix is made; nothing is lost meanwhile and the replica catches up without a restart.

Real mounts against a real S3 server (moto_server): a bucket that does not exist yet, and
credentials the server rejects (a moto_server of its own with IAM authentication turned on;
"fixed" = the server accepts them again, as when a key is re-enabled). LITEFS_SLOW_RETRY=2
shortens the slow pace (30-60 s) to 1-2 s so the tests see several slow attempts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from litefs_py.storage.retry import SLOW_RETRY_ENV, RetryPolicy
from tests.mount.harness import LitefsMount
from tests.replication.conftest import Bucket, Rig
from tests.replication.helpers import (
    file_hash,
    list_ltx,
    litefs_cli,
    litefs_restore,
    max_txid,
    restored_txid,
    wait_until,
    write_config,
)
from tests.s3_server import MotoServer, create_bucket, new_bucket_name

PREFIX = "backups/app.db"
SLOW = 2.0


def status(m: LitefsMount, config: str) -> dict[str, Any]:
    proc = litefs_cli("status", "--json", "--config", config, "--data-dir", str(m.data_dir))
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def replica_status(m: LitefsMount, config: str) -> dict[str, Any]:
    """The replica entry of app.db (empty until the mount has written it)."""
    db = status(m, config)["databases"].get("app.db", {})
    rep: dict[str, Any] = db.get("replica") or {"last_error": None, "errors": {}}
    return rep


def upload_errors(m: LitefsMount) -> list[str]:
    return [line for line in m.log().splitlines() if "upload to" in line and "failed" in line]


def fails_then_recovers(rig: Rig, endpoint: str, bucket: str, kind: str, fix_text: str,
                        fix: Any) -> None:
    """Commit while the replica refuses, check what the status and the log say, make the
    fix, and check the replica catches up with every commit."""
    config = write_config(rig.tmp / "litefs.yml", f"s3://{bucket}/backups?endpoint={endpoint}")
    m = rig.mount(config)
    m.start()
    client = rig.sql(m.db("app.db"))
    commits = client.txns(5, hash=True)
    last, last_hash = commits[-1][0], commits[-1][3]

    rep = wait_until(lambda: (r := replica_status(m, str(config)))["last_error"] and r, 15,
                     interval=0.3, what=f"a {kind} error in the status")
    assert rep["error_kind"] == kind and rep["needs_fix"] is True, rep
    assert fix_text in rep["last_error"], rep
    assert rep["errors"][kind] >= 1 and rep["uploads"] == 0, rep
    assert 0 <= rep["next_attempt_in"] <= SLOW, rep
    text = litefs_cli("status", "--config", str(config), "--data-dir", str(m.data_dir))
    assert fix_text in text.stdout and "retrying cannot fix this" in text.stdout, text.stdout

    # Slow attempts go on (counted), each logged once: one clear line naming the fix.
    wait_until(lambda: replica_status(m, str(config))["errors"].get(kind, 0) >= 3, 10, interval=0.3,
               what="more slow attempts")
    said = upload_errors(m)
    assert len(said) == 1, said
    assert "ERROR" in said[0] and fix_text in said[0] and "Retrying cannot fix this" in said[0]
    more = client.txns(3, hash=True)  # commits go on meanwhile
    last, last_hash = more[-1][0], more[-1][3]

    fix()
    wait_until(lambda: max_txid(list_ltx(endpoint, bucket, PREFIX)) >= last, 15,
               what="the spooled commits in the bucket after the fix")
    rep = wait_until(lambda: (r := replica_status(m, str(config)))["last_error"] is None and r,
                     5, interval=0.3, what="the error to clear from the status")
    assert rep["uploads"] >= 1 and rep["errors"][kind] >= 3 and rep["needs_fix"] is None, rep
    assert "work again" in m.log()
    out = rig.tmp / "restored.db"
    proc = litefs_restore(f"s3://{bucket}/{PREFIX}?endpoint={endpoint}", out)
    assert proc.returncode == 0, proc.stderr
    assert restored_txid(proc) == last and file_hash(out) == last_hash


@pytest.fixture
def slow_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SLOW_RETRY_ENV, str(SLOW))


@pytest.mark.time_limit(90)
def test_missing_bucket_is_reported_and_recovers_once_created(bucket: Bucket, rig: Rig,
                                                              slow_retry: None) -> None:
    missing = new_bucket_name()
    fails_then_recovers(rig, bucket.endpoint, missing, "no_bucket",
                        f"bucket {missing} does not exist",
                        lambda: create_bucket(bucket.endpoint, missing))


@pytest.fixture
def auth_moto() -> Iterator[MotoServer]:
    """A moto_server of its own: IAM authentication is server-wide."""
    with MotoServer() as server:
        yield server


@pytest.mark.time_limit(90)
def test_rejected_credentials_are_reported_and_recover(auth_moto: MotoServer, rig: Rig,
                                                       slow_retry: None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.s3_server import ACCESS_KEY_ID, SECRET_ACCESS_KEY

    monkeypatch.setenv("LITEFS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("LITEFS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    name = create_bucket(auth_moto.endpoint)
    auth_moto.set_auth(0)  # from now on the test key is unknown to the server
    try:
        fails_then_recovers(rig, auth_moto.endpoint, name, "credentials",
                            "check LITEFS_ACCESS_KEY_ID/LITEFS_SECRET_ACCESS_KEY",
                            lambda: auth_moto.set_auth(1 << 30))
    finally:
        auth_moto.set_auth(1 << 30)


def test_policy_backs_off_with_jitter_and_a_cap() -> None:
    policy = RetryPolicy(initial=0.25, cap=30.0, jitter=0.2, slow=(30.0, 60.0))
    for n, base in [(1, 0.25), (2, 0.5), (3, 1.0), (8, 30.0), (50, 30.0)]:
        delays = {policy.delay(n) for _ in range(50)}
        assert all(base * 0.8 <= d <= base for d in delays), (n, delays)
        assert len(delays) > 1, "no jitter"
    slow = [policy.delay(1, retryable=False) for _ in range(50)]
    assert all(30.0 <= d <= 60.0 for d in slow) and max(slow) - min(slow) > 1
