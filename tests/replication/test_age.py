"""Encryption at rest with age (`replica.age`, #14 item 7): real mounts, moto_server, keys
made in the test with pyrage.

- A primary with recipients and identities: every object in the bucket is an age file
  (`litefs-encryption: age`), the compacted ones too; its restore drill verifies; `litefs
  restore` with the identity (configuration, or --age-identity FILE) gives the database.
- Without an identity, or with one it was not encrypted for: one clear error (exit 3), no
  output. The real `litestream restore` fails on the bucket and leaves no database.
- A read replica following the encrypted bucket (identities only) serves the same database.
- A bucket written before encryption was turned on keeps restoring: plain objects are read
  as they are, new ones are encrypted.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pyrage
import pytest

from litefs_py.storage.age import AGE_MAGIC
from tests.mount.harness import LitefsMount
from tests.replica.harness import Cluster, wait_same_pos
from tests.replication.conftest import Bucket, Rig
from tests.replication.helpers import (
    SqlProc,
    drill_status,
    file_hash,
    get_object,
    integrity,
    list_ltx,
    litefs_cli,
    litestream_restore,
    max_txid,
    wait_until,
    write_config,
)

PREFIX = "backups/app.db"


def _keys() -> tuple[str, str]:
    ident = pyrage.x25519.Identity.generate()
    return str(ident.to_public()), str(ident)


def _age(recipient: str | None, identity: str | None) -> str:
    parts = []
    if recipient:
        parts.append(f"recipients: [{recipient}]")
    if identity:
        parts.append(f"identities: [{identity}]")
    return "{" + ", ".join(parts) + "}"


def _drill(m: LitefsMount) -> dict[str, Any]:
    return drill_status(m.data_dir)


def _no_output(out: Path) -> None:
    assert not out.exists() and not Path(f"{out}.tmp").exists()


@pytest.mark.time_limit(150)
def test_encrypted_bucket_end_to_end(bucket: Bucket, rig: Rig, litestream: Path) -> None:
    public, secret = _keys()
    cfg = write_config(rig.tmp / "litefs.yml", bucket.url(), replica={
        "age": _age(public, secret), "validation-interval": "1s", "l1-interval": "1s"})
    m = rig.mount(cfg)
    m.start()
    sql = rig.sql(m.db("app.db"))
    sql.txns(5, size=500)
    last, _t, _s, last_hash = sql.txns(1, hash=True)[-1]
    wait_until(lambda: max_txid(list_ltx(bucket.endpoint, bucket.name, PREFIX)) >= last, 20,
               what="the uploads")
    wait_until(lambda: any(o.level == 1 for o in list_ltx(bucket.endpoint, bucket.name,
                                                            PREFIX)), 30,
               what="a compacted (level-1) object")
    wait_until(lambda: _drill(m).get("last_verified_txid") == f"{last:016x}", 30,
               what=f"the drill on the encrypted bucket: {_drill(m)}\n{m.log()[-2000:]}")
    assert _drill(m)["failures"] == 0
    objs = list_ltx(bucket.endpoint, bucket.name, PREFIX)
    for o in objs:
        data, meta = get_object(bucket.endpoint, bucket.name, o.key)
        assert data.startswith(AGE_MAGIC), f"{o.key} is not encrypted"
        assert meta.get("litefs-encryption") == "age"
        assert b"SQLite format 3" not in data
        assert meta.get("litestream-timestamp"), "planning metadata stays readable"

    # litefs restore: the identity from the configuration, or from a file.
    out = rig.tmp / "restored.db"
    proc = litefs_cli("restore", "--config", str(cfg), "-o", str(out), "app.db")
    assert proc.returncode == 0, proc.stderr
    assert file_hash(out) == last_hash and integrity(out) == "ok"
    identity_file = rig.tmp / "key.txt"
    identity_file.write_text(f"# created: by the test\n{secret}\n")
    out2 = rig.tmp / "restored2.db"
    url = bucket.url(PREFIX)
    proc = litefs_cli("restore", "--age-identity", str(identity_file), "-o", str(out2), url)
    assert proc.returncode == 0, proc.stderr
    assert file_hash(out2) == last_hash

    # No identity, a wrong one: one clear error, exit 3, nothing written.
    out3 = rig.tmp / "nope.db"
    proc = litefs_cli("restore", "-o", str(out3), url)
    assert proc.returncode == 3, proc.stderr
    assert "is encrypted with age and no identity was given" in proc.stderr
    assert "replica.age.identities" in proc.stderr and "Traceback" not in proc.stderr
    _no_output(out3)
    wrong = rig.tmp / "wrong.txt"
    wrong.write_text(str(pyrage.x25519.Identity.generate()) + "\n")
    proc = litefs_cli("restore", "--age-identity", str(wrong), "-o", str(out3), url)
    assert proc.returncode == 3, proc.stderr
    assert "none of the 1 identities" in proc.stderr and "Traceback" not in proc.stderr
    _no_output(out3)

    # The real Litestream cannot read it, and says so rather than writing garbage.
    ls_out = rig.tmp / "litestream.db"
    lproc = litestream_restore(litestream, bucket.ls_url(PREFIX), ls_out)
    assert lproc.returncode != 0, f"litestream restored an encrypted bucket: {lproc.stdout}"
    assert not ls_out.exists() or _unreadable(ls_out), "litestream wrote a database"
    print(f"litestream restore on the encrypted bucket: exit {lproc.returncode}: "
          f"{lproc.stderr.strip().splitlines()[-1] if lproc.stderr.strip() else ''}")


def _unreadable(path: Path) -> bool:
    try:
        con = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            return con.execute("PRAGMA integrity_check").fetchone()[0] != "ok"
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return True


@pytest.mark.time_limit(150)
def test_read_replica_follows_an_encrypted_bucket(bucket: Bucket, tmp_path: Path) -> None:
    public, secret = _keys()
    url = bucket.url()
    cluster = Cluster(tmp_path)
    try:
        primary = cluster.primary(extra={"replica": {"url": url, "age": {
            "recipients": [public], "identities": [secret]}}})
        replica = cluster.replica(primary_url=None, extra={"replica": {"url": url, "age": {
            "identities": [secret]}}})
        writer = SqlProc(primary.db("app.db"))
        try:
            writer.txns(4, size=300)
            wait_same_pos(primary, replica, "app.db", timeout=60)
            last, _t, _s, last_hash = writer.txns(3, size=300, hash=True)[-1]
            pos = wait_same_pos(primary, replica, "app.db", timeout=60)
        finally:
            writer.kill()
        assert pos[0] == last
        reader = SqlProc(replica.db("app.db"))
        try:
            assert reader.request({"op": "hash"})["hash"] == last_hash
        finally:
            reader.kill()
        assert "Traceback" not in replica.log()
    finally:
        cluster.close()


@pytest.mark.time_limit(120)
def test_turning_encryption_on_keeps_old_backups_restorable(bucket: Bucket, rig: Rig) -> None:
    public, secret = _keys()
    plain = rig.mount(write_config(rig.tmp / "plain.yml", bucket.url()), name="p")
    plain.start()
    sql = rig.sql(plain.db("app.db"))
    sql.txns(3)
    wait_until(lambda: max_txid(list_ltx(bucket.endpoint, bucket.name, PREFIX)) >= 4, 20,
               what="plain uploads")
    sql.close()
    plain.stop()
    cfg = write_config(rig.tmp / "enc.yml", bucket.url(), replica={"age": _age(public, secret)})
    enc = rig.mount(cfg, name="e")
    enc.start()
    sql = rig.sql(enc.db("app.db"))
    last, _t, _s, last_hash = sql.txns(2, hash=True)[-1]
    wait_until(lambda: max_txid(list_ltx(bucket.endpoint, bucket.name, PREFIX)) >= last, 20,
               what="encrypted uploads")
    kinds = {o.hi: get_object(bucket.endpoint, bucket.name, o.key)[0].startswith(AGE_MAGIC)
             for o in list_ltx(bucket.endpoint, bucket.name, PREFIX) if o.level == 0}
    assert kinds[last] and not kinds[4], kinds
    out = rig.tmp / "mixed.db"
    proc = litefs_cli("restore", "--config", str(cfg), "-o", str(out), "app.db")
    assert proc.returncode == 0, proc.stderr
    assert file_hash(out) == last_hash
