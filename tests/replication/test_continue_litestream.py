"""A bucket written by the real `litestream replicate` (0.5.17) is continued by `litefs mount`.

A database (WAL mode, a plain file) gets a few transactions while Litestream replicates it to
`s3://BUCKET/backups/app.db`; Litestream is stopped. Then `litefs mount` starts with the
replica `s3://BUCKET/backups` and an empty data directory: it must restore app.db before the
mount is served, at Litestream's highest TXID (Litestream's TXIDs count its uploads, not
SQLite commits), with the same content; new commits through the mount must get the TXIDs
after Litestream's, and at the end `litestream restore` and `litefs restore` must both give
the final state.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.replication.conftest import Bucket, Rig
from tests.replication.helpers import (
    cli_dump,
    describe,
    file_hash,
    integrity,
    list_ltx,
    litefs_restore,
    litestream_env,
    litestream_restore,
    max_txid,
    restored_txid,
    wait_until,
    write_config,
)

PREFIX = "backups/app.db"


@pytest.mark.interop
@pytest.mark.time_limit(90)
def test_litefs_continues_a_litestream_bucket(bucket: Bucket, rig: Rig,
                                             litestream: Path) -> None:
    src = rig.tmp / "src" / "app.db"
    src.parent.mkdir()
    writer = rig.sql(src, wal=True)
    writer.txns(2)
    ls = subprocess.Popen([str(litestream), "replicate", str(src), bucket.ls_url(PREFIX)],
                          env=litestream_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)

    def stop_litestream() -> str:
        if ls.poll() is None:
            ls.send_signal(signal.SIGTERM)
            try:
                ls.wait(15)
            except subprocess.TimeoutExpired:
                ls.kill()
                ls.wait(10)
        if ls.stdout is None or ls.stdout.closed:
            return ""
        out = ls.stdout.read()
        ls.stdout.close()
        return out

    rig.on_teardown(stop_litestream)
    wait_until(lambda: max_txid(list_ltx(bucket.endpoint, bucket.name, PREFIX)) >= 1, 15,
               what="Litestream's first upload")
    for _ in range(3):  # a few Litestream syncs, two transactions each
        writer.txns(2, size=300)
        time.sleep(1.2)
    source = writer.request({"op": "hash"})
    time.sleep(1.5)  # one more sync interval
    ls_log = stop_litestream()
    writer.close()
    objs = list_ltx(bucket.endpoint, bucket.name, PREFIX)
    ls_max = max_txid(objs)
    assert ls_max >= 3, f"Litestream uploaded only [{describe(objs)}]:\n{ls_log}"
    theirs = rig.tmp / "litestream-before.db"
    lproc = litestream_restore(litestream, bucket.ls_url(PREFIX), theirs)
    assert lproc.returncode == 0, lproc.stderr
    assert file_hash(theirs) == source["hash"], "Litestream captured every transaction"

    # litefs takes over with no local data.
    m = rig.mount(write_config(rig.tmp / "litefs.yml", bucket.url("backups")))
    m.start()
    assert m.pos("app.db")[0] == ls_max, \
        f"restored at TXID {m.pos('app.db')[0]:x}, Litestream's max is {ls_max:x}"
    client = rig.sql(m.db("app.db"))
    assert client.request({"op": "hash"})["hash"] == source["hash"]
    commits = client.txns(5, size=300, hash=True)
    assert [c[0] for c in commits] == list(range(ls_max + 1, ls_max + 6))
    final_txid, final_hash = commits[-1][0], commits[-1][3]
    wait_until(lambda: max_txid(list_ltx(bucket.endpoint, bucket.name, PREFIX)) >= final_txid,
               10, what="the new TXIDs in the bucket")
    new = [o for o in list_ltx(bucket.endpoint, bucket.name, PREFIX) if o.hi > ls_max]
    assert new and min(o.lo for o in new) == ls_max + 1, \
        f"new objects must continue after {ls_max:x}: [{describe(new)}]"
    source_dump = cli_dump(m.db("app.db"), immutable=False)

    ours, theirs = rig.tmp / "final-litefs.db", rig.tmp / "final-litestream.db"
    proc = litefs_restore(bucket.url(PREFIX), ours)
    assert proc.returncode == 0, proc.stderr
    assert restored_txid(proc) == final_txid
    lproc = litestream_restore(litestream, bucket.ls_url(PREFIX), theirs)
    assert lproc.returncode == 0, lproc.stderr
    for path in (ours, theirs):
        assert integrity(path) == "ok"
        assert file_hash(path) == final_hash, f"{path.name} is not the final state"
        assert cli_dump(path) == source_dump
