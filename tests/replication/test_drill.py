"""The continuous restore drill (`replica.validation-interval`, #14 item 5), on real mounts
against moto_server.

- With an interval of 1 s the drill restores the newest state from the bucket and verifies
  it against the object metadata and the local database; `litefs status` (text and --json)
  shows `last_verified_txid` / `last_verified_at`, and no temporary file stays behind.
- An object replaced by a valid LTX file with other page contents (and no checksum
  metadata, so the restore itself cannot tell): the drill's comparison with the local
  checksum fails, is logged as an error naming every object it applied, and is counted as a
  mismatch; once the object is put back the drill verifies again.
- A corrupt object: the drill's restore fails, naming the object; counted as a failure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from litefs_py.ltx import decode_bytes, encode_bytes
from litefs_py.storage.base import META_CHECKSUM
from tests.mount.harness import LitefsMount
from tests.replication.conftest import Bucket, Rig
from tests.replication.helpers import (
    drill_status,
    get_object,
    list_ltx,
    litefs_cli,
    max_txid,
    put_object,
    wait_until,
    write_config,
)

PREFIX = "backups/app.db"


# The drill runs at nice 19: on a loaded 2-core machine it is the last to get a CPU.
DRILL_WAIT = 90.0

def _drill(m: LitefsMount) -> dict[str, Any]:
    return drill_status(m.data_dir)


def _verified(m: LitefsMount, txid: int, after_runs: int = 0) -> bool:
    d = _drill(m)
    return (d.get("last_verified_txid") == f"{txid:016x}" and d.get("runs", 0) > after_runs)


def _mount(rig: Rig, bucket: Bucket) -> LitefsMount:
    m = rig.mount(write_config(rig.tmp / "litefs.yml", bucket.url(),
                               replica={"validation-interval": "1s"}))
    m.start()
    return m


@pytest.mark.time_limit(90)
def test_drill_verifies_and_reports_in_status(bucket: Bucket, rig: Rig) -> None:
    m = _mount(rig, bucket)
    sql = rig.sql(m.db("app.db"))
    [[txid, *_]] = sql.txns(3)[-1:]
    wait_until(lambda: _verified(m, txid), 30,
               what=f"the drill to verify TXID {txid:x}: {_drill(m)}\n{m.log()[-2000:]}")
    d = _drill(m)
    assert d["validation_interval"] == 1.0
    assert "object metadata" in d["verified_against"]
    assert any(s.startswith(("the local database", "local LTX file"))
               for s in d["verified_against"]), d
    assert d["failures"] == 0 and d["mismatches"] == 0 and d["last_failure"] is None
    assert d["last_verified_at"] and d["last_bytes_read"] > 0
    doc = json.loads(litefs_cli("status", "--json", "--data-dir", str(m.data_dir)).stdout)
    assert doc["databases"]["app.db"]["replica"]["validation"]["last_verified_txid"] == \
        f"{txid:016x}"
    text = litefs_cli("status", "--data-dir", str(m.data_dir)).stdout
    assert f"app.db: restore drill every 1s: verified TXID {txid:016x} at " in text, text
    assert "restore drill verified TXID" in m.log()
    m.stop()
    leftovers = list((m.data_dir / "drill").glob("*"))
    assert not leftovers, f"the drill left {leftovers}"


@pytest.mark.time_limit(120)
def test_drill_reports_a_mismatch_and_a_corrupt_object(bucket: Bucket, rig: Rig) -> None:
    m = _mount(rig, bucket)
    sql = rig.sql(m.db("app.db"))
    sql.txns(3)
    [[txid, *_]] = sql.txns(1, size=3000)
    wait_until(lambda: _verified(m, txid), DRILL_WAIT, what="a first verified drill")
    [newest] = [o for o in list_ltx(bucket.endpoint, bucket.name, PREFIX)
                if o.level == 0 and o.hi == txid]
    good, meta = get_object(bucket.endpoint, bucket.name, newest.key)

    # Other page contents, a valid LTX file, no checksum metadata: only the drill's own
    # comparison with the local database can tell.
    decoded = decode_bytes(good)
    pgno, page = decoded.pages[-1]
    changed = page[:-100] + bytes(b ^ 0x55 for b in page[-100:])
    forged = encode_bytes(decoded.header, [*decoded.pages[:-1], (pgno, changed)])
    put_object(bucket.endpoint, bucket.name, newest.key, forged,
               {k: v for k, v in meta.items() if k != META_CHECKSUM})
    wait_until(lambda: _drill(m).get("mismatches", 0) >= 1, DRILL_WAIT,
               what=f"the drill to find the mismatch: {_drill(m)}")
    d = _drill(m)
    assert d["failure_kinds"].get("mismatch", 0) >= 1
    assert newest.key in d["last_failure"] and "records" in d["last_failure"], d
    assert f"TXID {txid:016x}" in d["last_failure"]
    log = m.log()
    assert "ERROR litefs.replication: app.db: restore drill failed" in log
    assert newest.key in log

    # Put back: verified again.
    runs = _drill(m)["runs"]
    put_object(bucket.endpoint, bucket.name, newest.key, good, meta)
    wait_until(lambda: _verified(m, txid, runs) and _drill(m)["last_verified_at"] >
               _drill(m)["last_failure_at"], DRILL_WAIT, what="the drill to verify again")

    # A corrupt object (a flipped byte in a page): the drill's restore fails naming it.
    failures = _drill(m)["failures"]
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x01
    put_object(bucket.endpoint, bucket.name, newest.key, bytes(flipped), meta)
    wait_until(lambda: _drill(m).get("failures", 0) > failures, DRILL_WAIT,
               what=f"the drill to fail on the corrupt object: {_drill(m)}")
    d = _drill(m)
    # Refused ("is corrupt"), or — when a compaction covers it — gone around ("damaged"):
    # a failure naming the object either way.
    assert newest.key in d["last_failure"], d
    assert "corrupt" in d["last_failure"] or "damaged" in d["last_failure"], d
    assert d["failure_kinds"].get("damaged", 0) >= 1, d
    assert max_txid(list_ltx(bucket.endpoint, bucket.name, PREFIX)) == txid
    status = litefs_cli("status", "--data-dir", str(m.data_dir)).stdout
    assert "last failure at" in status and newest.key in status, status
    put_object(bucket.endpoint, bucket.name, newest.key, good, meta)
    assert not list(Path(m.data_dir / "drill").glob("*.tmp"))
