"""`litefs mount` against its replica at start: a scheme-less endpoint, an empty bucket, and a
cold start that must restore every database before the mount is served."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.replication.conftest import Bucket, Rig
from tests.replication.helpers import (
    describe,
    file_hash,
    list_ltx,
    litefs_restore,
    max_txid,
    restored_txid,
    wait_until,
    write_config,
)

PREFIX = "backups/app.db"


@pytest.mark.time_limit(45)
def test_empty_bucket_and_endpoint_without_scheme(bucket: Bucket, rig: Rig) -> None:
    """`endpoint=127.0.0.1:PORT` (no http://) works for the mount and for `litefs restore`;
    an empty bucket means starting empty, without an error."""
    host_port = bucket.endpoint.removeprefix("http://")
    url = f"s3://{bucket.name}/backups?endpoint={host_port}"
    m = rig.mount(write_config(rig.tmp / "litefs.yml", url))
    m.start()
    assert list(m.mount_dir.iterdir()) == [], "an empty bucket gives an empty mount"
    client = rig.sql(m.db("app.db"))
    commits = client.txns(3, hash=True)
    last = commits[-1][0]
    assert last == 4, "TXIDs start at 1 (CREATE TABLE) in an empty bucket"
    wait_until(lambda: max_txid(list_ltx(bucket.endpoint, bucket.name, PREFIX)) >= last, 5,
               what="the transactions in the bucket")
    objs = list_ltx(bucket.endpoint, bucket.name, PREFIX)
    assert min(o.lo for o in objs) == 1, describe(objs)
    out = rig.tmp / "restored.db"
    proc = litefs_restore(f"s3://{bucket.name}/{PREFIX}?endpoint={host_port}", out)
    assert proc.returncode == 0, proc.stderr
    assert restored_txid(proc) == last and file_hash(out) == commits[-1][3]
    client.close()
    m.stop()
    problems = [line for line in m.log().splitlines() if " ERROR " in line or " WARNING " in line]
    assert not problems, "\n".join(problems)


# A client that waits for the database to appear in the mount directory and queries it the
# moment it does: its very first query must see the restored rows.
FIRST_QUERY = textwrap.dedent("""
    import json, os, sqlite3, sys, time
    db = sys.argv[1]
    deadline = time.monotonic() + 30
    while not os.path.exists(db):
        if time.monotonic() > deadline:
            sys.exit("the database never appeared")
        time.sleep(0.002)
    con = sqlite3.connect(db, timeout=10)
    n, = con.execute("SELECT count(*) FROM t").fetchone()
    print(json.dumps({"count": n}))
""")


@pytest.mark.time_limit(60)
def test_cold_start_restores_before_serving(bucket: Bucket, rig: Rig) -> None:
    """Stop the mount right after the last COMMIT (a clean stop ships what is left), delete
    the data directory, start again: every database of the bucket is back before the mount
    is served, and TXIDs continue."""
    config = write_config(rig.tmp / "litefs.yml", bucket.url())
    m = rig.mount(config)
    m.start()
    other = rig.sql(m.db("other.db"))
    [[other_txid, _t, _s, other_hash]] = other.txns(1, hash=True)
    other.close()
    client = rig.sql(m.db("app.db"))
    commits = client.txns(20, size=500, hash=True)
    old_txid, old_hash = commits[-1][0], commits[-1][3]
    old_count = client.request({"op": "count"})["count"]
    client.close()
    m.stop()
    assert max_txid(list_ltx(bucket.endpoint, bucket.name, PREFIX)) == old_txid, \
        "a clean stop leaves the replica current"

    shutil.rmtree(m.data_dir)
    first = subprocess.Popen([sys.executable, "-c", FIRST_QUERY, m.db("app.db")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def reap() -> None:
        first.kill()
        first.communicate(timeout=5)

    rig.on_teardown(reap)
    m.start()
    out, err = first.communicate(timeout=20)
    assert first.returncode == 0, err
    assert json.loads(out)["count"] == old_count, \
        "the first query after a cold start did not see the restored rows"

    assert m.pos("app.db")[0] == old_txid, "the mount starts at the replica's TXID"
    assert m.pos("other.db")[0] == other_txid, "every database of the bucket is restored"
    other = rig.sql(m.db("other.db"))
    assert other.request({"op": "hash"})["hash"] == other_hash
    client = rig.sql(m.db("app.db"))
    assert client.request({"op": "hash"})["hash"] == old_hash
    [[txid, _t, _s, new_hash]] = client.txns(1, hash=True)
    assert txid == old_txid + 1, "TXIDs continue after a cold start"
    wait_until(lambda: max_txid(list_ltx(bucket.endpoint, bucket.name, PREFIX)) >= txid, 5,
               what="the first commit after the cold start in the bucket")
    new = [o for o in list_ltx(bucket.endpoint, bucket.name, PREFIX) if o.hi > old_txid]
    assert [(o.level, o.lo, o.hi) for o in new] == [(0, txid, txid)], describe(new)
    restored = rig.tmp / "after-cold-start.db"
    proc = litefs_restore(bucket.url(PREFIX), restored)
    assert proc.returncode == 0, proc.stderr
    assert restored_txid(proc) == txid and file_hash(restored) == new_hash
