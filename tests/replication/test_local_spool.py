"""The local LTX log is the spool: with `data.retention: 1s`, files are deleted once they are
in the replica (except the newest), kept while the endpoint is down, kept across a restart
with the endpoint down, and said loudly when they exceed `data.spool-limit`.

The endpoint is a TCP proxy in front of moto_server; "down" = connections refused/reset.
"""

from __future__ import annotations

import re
import time

import pytest

from litefs_py.store.ltx_log import read_log
from tests.mount.harness import LitefsMount
from tests.replication.conftest import Bucket, Rig
from tests.replication.helpers import (
    file_hash,
    list_ltx,
    litefs_restore,
    max_txid,
    restored_txid,
    wait_until,
    write_config,
)

PREFIX = "backups/app.db"
# What a spool-limit warning says: "(limit 16000)", "spool-limit", "spool limit".
SPOOL_WARNING = re.compile(r"\blimit \d|spool[- ]limit", re.IGNORECASE)


def _moto_port(bucket: Bucket) -> int:
    return int(bucket.endpoint.rsplit(":", 1)[1])


def local_ltx(m: LitefsMount, name: str = "app.db") -> list[tuple[int, int]]:
    """The TXID ranges of the local log's records (in segments, or old one-file records)."""
    return [tuple(rec.range) for rec in read_log(m.data_dir / "dbs" / name / "ltx")]


def _in_bucket(bucket: Bucket) -> int:
    return max_txid(list_ltx(bucket.endpoint, bucket.name, PREFIX))


def _check_restore(rig: Rig, bucket: Bucket, txid: int, want: str, tag: str) -> None:
    out = rig.tmp / f"{tag}.db"
    proc = litefs_restore(bucket.url(PREFIX), out)
    assert proc.returncode == 0, proc.stderr
    assert restored_txid(proc) == txid and file_hash(out) == want


@pytest.mark.time_limit(60)
def test_retention_deletes_uploaded_files_and_keeps_the_spool(bucket: Bucket, rig: Rig) -> None:
    """Uploaded files go after 1 s except the newest; while the endpoint is down nothing goes,
    across a clean stop too; once it is back the spool is shipped, then deleted."""
    proxy = rig.proxy(_moto_port(bucket))
    m = rig.mount(write_config(rig.tmp / "litefs.yml", bucket.url(endpoint=proxy.endpoint),
                               data={"retention": "1s"}))
    m.start()
    client = rig.sql(m.db("app.db"))
    for _ in range(5):
        client.txns(1)
        time.sleep(0.2)
    # The log is deleted a whole segment at a time, never the newest one; a new segment
    # starts at the first commit once the active one is `retention` old. So: wait that long,
    # commit once more, and every older record (uploaded, older than 1 s) must go.
    time.sleep(1.2)
    client.txns(1)
    txid = m.pos("app.db")[0]
    wait_until(lambda: _in_bucket(bucket) >= txid, 5, what="the transactions in the bucket")
    wait_until(lambda: local_ltx(m) == [(txid, txid)], 5,
               what=f"only the newest local record to remain (have {local_ltx(m)})")

    proxy.down()
    commits = client.txns(6, hash=True)
    down_txid = commits[-1][0]
    time.sleep(3.5)  # > retention + sync-interval, several failed upload attempts
    assert [r for r in local_ltx(m) if r[0] > txid] == [
        (t, t) for t in range(txid + 1, down_txid + 1)], \
        "nothing may be deleted locally while it is not in the replica"
    assert _in_bucket(bucket) == txid

    # A clean stop while the endpoint is down keeps the spool; the next run ships it.
    client.close()
    m.stop()
    assert [r for r in local_ltx(m) if r[0] > txid] == [
        (t, t) for t in range(txid + 1, down_txid + 1)]
    proxy.up()
    m.start()
    wait_until(lambda: _in_bucket(bucket) >= down_txid, 15,
               what="the spool in the bucket after the endpoint came back")
    _check_restore(rig, bucket, down_txid, commits[-1][3], "after-spool")
    time.sleep(1.2)  # the spool's segment is then `retention` old: the next commit rotates
    client = rig.sql(m.db("app.db"))
    client.txns(1)
    client.close()
    last = m.pos("app.db")[0]
    wait_until(lambda: local_ltx(m) == [(last, last)], 8,
               what=f"the uploaded spool to be deleted locally (have {local_ltx(m)})")


@pytest.mark.time_limit(60)
def test_restart_with_the_endpoint_down_loses_nothing(bucket: Bucket, rig: Rig) -> None:
    proxy = rig.proxy(_moto_port(bucket))
    m = rig.mount(write_config(rig.tmp / "litefs.yml", bucket.url(endpoint=proxy.endpoint),
                               data={"retention": "1s"}))
    m.start()
    client = rig.sql(m.db("app.db"))
    client.txns(3)
    uploaded = m.pos("app.db")[0]
    wait_until(lambda: _in_bucket(bucket) >= uploaded, 5, what="the first transactions")
    proxy.down()
    commits = client.txns(4, hash=True)
    last, last_hash = commits[-1][0], commits[-1][3]
    time.sleep(1.5)
    client.close()
    m.stop()
    spooled = local_ltx(m)
    assert spooled[-1] == (last, last)

    try:
        m.start()  # the endpoint is still down
    except RuntimeError as exc:
        raise AssertionError(f"the mount did not start with the endpoint down: {exc}") from None
    assert local_ltx(m)[-4:] == spooled[-4:], "the spool survived the restart"
    client = rig.sql(m.db("app.db"))
    assert client.request({"op": "hash"}) == {"hash": last_hash, "txid": last}
    proxy.up()
    wait_until(lambda: _in_bucket(bucket) >= last, 15,
               what="the spool in the bucket after the endpoint came back")
    _check_restore(rig, bucket, last, last_hash, "after-restart")


@pytest.mark.time_limit(45)
def test_files_uploaded_before_a_restart_are_deleted(bucket: Bucket, rig: Rig) -> None:
    """LTX files already in the replica when the mount starts (uploaded by the previous run
    less than data.retention before it stopped) are deleted too. (Regression: until commit
    3f4adab only files uploaded by the running process were ever deleted.)"""
    config = write_config(rig.tmp / "litefs.yml", bucket.url(), data={"retention": "2s"})
    m = rig.mount(config)
    m.start()
    client = rig.sql(m.db("app.db"))
    client.txns(4)
    txid = m.pos("app.db")[0]
    wait_until(lambda: _in_bucket(bucket) >= txid, 5, what="the transactions in the bucket")
    client.close()
    m.stop()  # within the 2 s retention: the uploaded files are still here
    assert len(local_ltx(m)) > 1
    m.start()
    # Whole segments go, never the newest: once the old run's segment is `retention` old, a
    # commit starts a new one, and the old run's records (uploaded) must then be deleted.
    time.sleep(2.2)
    client = rig.sql(m.db("app.db"))
    client.txns(1)
    client.close()
    last = m.pos("app.db")[0]
    assert last == txid + 1
    wait_until(lambda: local_ltx(m) == [(last, last)], 8,
               what=f"uploaded records of the previous run to be deleted (have {local_ltx(m)})")


@pytest.mark.time_limit(45)
def test_spool_limit_is_reported_while_the_endpoint_is_down(bucket: Bucket, rig: Rig) -> None:
    proxy = rig.proxy(_moto_port(bucket))
    m = rig.mount(write_config(rig.tmp / "litefs.yml", bucket.url(endpoint=proxy.endpoint),
                               data={"spool-limit": "16k"}))
    m.start()
    client = rig.sql(m.db("app.db"))
    client.txns(1)
    wait_until(lambda: _in_bucket(bucket) >= 2, 5, what="the first transactions")
    proxy.down()
    client.txns(20, size=3000)
    ltx_dir = m.data_dir / "dbs" / "app.db" / "ltx"
    spool = sum(rec.length for rec in read_log(ltx_dir))
    assert spool > 16_000, "the spool exceeds the limit"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        said = [line for line in m.log().splitlines()
                if ("WARNING" in line or "ERROR" in line) and SPOOL_WARNING.search(line)]
        if said:
            break
        time.sleep(0.2)
    assert said, f"{spool} bytes spooled over a 16000-byte limit and nothing was logged"
