"""Restores from a hostile S3 (#14 item 4): moto_server behind S3FaultProxy, which answers
like a failing provider. The bucket is the Litestream 0.5.17 vector set (L0 1..c, L1 1-1,
2-9 and a-c, L2, an L9 snapshot); its expected dump is recorded in the set.

- Transient faults on every kind of request (503 SlowDown and 500 before the server acts or
  after it, resets mid-body, a Content-Length shorter or longer than the body, a flipped bit
  in transit, a 404 once for a listed object, refused listings and GETs — a restore takes the
  objects' metadata from the GET's headers, no HEAD): the restore retries, resumes, re-reads,
  and gives the exact database; nothing is left behind.
- Persistent faults (an object that always arrives damaged, one that always answers 404):
  the restore goes around what other objects cover; what nothing covers is named, with the
  newest TXID that can still be restored and the flag that does it, which then works — and
  neither OUT nor OUT.tmp exists after a refusal.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from litefs_py.replica_clients import client_for_url
from litefs_py.replication import restore_database
from litefs_py.replication.restore_plan import DamagedBackupError
from tests.s3_fault_proxy import Fault, S3FaultProxy
from tests.s3_server import S3Bucket, upload_tree

from .conftest import CLI_ENV, VECTORS, dump_sha256, expected, run_cli

SET = "ls-0.5.17-4k"
EXP = expected(SET)
L0_7 = "app.db/0000/0000000000000007-0000000000000007.ltx"
L1_2_9 = "app.db/0001/0000000000000002-0000000000000009.ltx"
L1_A_C = "app.db/0001/000000000000000a-000000000000000c.ltx"
L9 = "app.db/0009/0000000000000001-0000000000000001.ltx"


@pytest.fixture
def hostile(s3_bucket: S3Bucket) -> Iterator[tuple[S3FaultProxy, str]]:
    """The vector set in a fresh bucket, and a proxy in front of the server; the replica URL
    points at the proxy."""
    upload_tree(s3_bucket.endpoint, s3_bucket.name, VECTORS / SET / "bucket",
                VECTORS / SET / "objects.json")
    with S3FaultProxy(s3_bucket.endpoint) as proxy:
        yield proxy, f"s3://{s3_bucket.name}/app.db?endpoint={proxy.endpoint}"


def _nothing_left(out: Path) -> None:
    assert not out.exists(), f"{out} was written by a refused restore"
    assert not Path(f"{out}.tmp").exists(), "a partial OUT.tmp was left behind"


def test_transient_faults_on_every_request_kind_are_survived(
        hostile: tuple[S3FaultProxy, str], tmp_path: Path) -> None:
    proxy, url = hostile
    faults = [
        Fault("error", r"list-type=2", method="GET", times=4),  # > botocore's 3 attempts
        Fault("error", L9, method="GET", times=4),
        Fault("error", L1_A_C, method="GET", times=4, status=500, code="InternalError"),
        Fault("error_after", L1_2_9, method="GET", times=1, status=500, code="InternalError"),
        Fault("reset_mid_body", L1_2_9, method="GET", times=2),
        Fault("short_length", L1_A_C, method="GET", times=1, delta=500),
        Fault("long_length", L1_A_C, method="GET", times=1),
        Fault("flip_body", L1_A_C, method="GET", times=1),
        Fault("not_found", L1_2_9, method="GET", times=1),
        Fault("reset_after", L9, method="GET", times=1),
    ]
    for f in faults:
        proxy.add(f)
    client = client_for_url(url, env=CLI_ENV)
    out = tmp_path / "out.db"
    result = restore_database(client, out)
    assert result.txid == 0xC and not result.avoided
    assert dump_sha256(out) == EXP["dump_sha256"]
    assert not Path(f"{out}.tmp").exists()
    missed = [f for f in faults if f.hits != f.times]
    assert not missed, f"faults the restore never ran into: {missed}"
    print(f"restore survived {sum(f.hits for f in faults)} injected faults of "
          f"{len({f.action for f in faults})} kinds in {len(proxy.exchanges)} requests")


def test_persistent_damage_is_named_with_the_newest_restorable_txid(
        hostile: tuple[S3FaultProxy, str], tmp_path: Path) -> None:
    proxy, url = hostile
    # Always damaged in transit: the L1 file 2-9. The level-0 files 2..9 cover it.
    proxy.add(Fault("flip_body", L1_2_9, method="GET", times=None))
    out = tmp_path / "sub" / "out.db"
    res = run_cli("--json", "-o", str(out), url)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert list(doc["avoided"]) == [L1_2_9]
    assert doc["txid"] == "000000000000000c"
    assert dump_sha256(out) == EXP["dump_sha256"]
    assert "went around" in restore_summary(url, tmp_path / "again.db")

    # Level-0 TXID 7 always answers 404 although it is listed: now nothing covers 7.
    proxy.add(Fault("not_found", L0_7, method="GET", times=None))
    proxy.add(Fault("not_found", L0_7, method="HEAD", times=None))
    out2 = tmp_path / "sub" / "out2.db"
    res = run_cli("-o", str(out2), url)
    assert res.exit_code == 1, res.output
    assert f"object {L1_2_9} is corrupt" in res.output
    assert f"object {L0_7} is missing" in res.output
    assert "the newest state that can be restored is TXID 0000000000000006" in res.output
    assert "--txid 6" in res.output
    _nothing_left(out2)
    with pytest.raises(DamagedBackupError) as info:
        restore_database(client_for_url(url, env=CLI_ENV), out2)
    assert info.value.restorable == 6 and set(info.value.damaged) == {L1_2_9, L0_7}
    _nothing_left(out2)
    # The flag it offers works, through the same hostile server.
    res = run_cli("-o", str(out2), "--txid", "6", url)
    assert res.exit_code == 0, res.output
    assert dump_sha256(out2) == EXP["txid_checks"][1]["dump_sha256"]


def restore_summary(url: str, out: Path) -> str:
    return restore_database(client_for_url(url, env=CLI_ENV), out).summary()


@pytest.mark.parametrize("reading", [False, True], ids=["boto3", "reader"])
def test_clock_skew_is_corrected_from_the_server_time(
        hostile: tuple[S3FaultProxy, str], tmp_path: Path,
        caplog: pytest.LogCaptureFixture, reading: bool) -> None:
    """The server's clock 16 minutes ahead, then 16 minutes behind: S3 would refuse every
    request (RequestTimeTooSkewed); the client signs with the server's time instead, and
    says the clock is wrong. Both the boto3 client and the signed-HTTP reader that `litefs
    restore` uses."""
    proxy, url = hostile
    for offset, word in ((16 * 60, "behind"), (-16 * 60, "ahead of")):
        proxy.clock_offset = offset
        out = tmp_path / f"skew{offset}.db"
        caplog.clear()
        client = client_for_url(url, env=CLI_ENV, reading=reading)
        assert type(client).__name__ == ("S3ReaderClient" if reading else "S3ReplicaClient")
        try:
            result = restore_database(client, out)
        finally:
            client.close()  # type: ignore[attr-defined]
        assert result.txid == 0xC
        assert dump_sha256(out) == EXP["dump_sha256"]
        assert f"clock is 16 min 0 s {word} the server's" in caplog.text or \
            f"clock is 15 min 59 s {word} the server's" in caplog.text or \
            f"clock is 16 min 1 s {word} the server's" in caplog.text, caplog.text
        assert proxy.count(fault="clock_skew") >= 1
