"""Commit → object visible, and batching under load (default replica settings).

- Latency: after a COMMIT returns (in a separate SQLite process), the transaction's TXID —
  read from `<db>-pos` right after the COMMIT — must appear in the bucket (the highest max
  TXID over every level, listed with plain boto3) within about a second. Both sides take
  CLOCK_MONOTONIC, which is system-wide on Linux, so the client's "commit returned" time and
  the test's "key listed" time compare directly. Commits are spaced irregularly so they do
  not line up with any timer of the uploader.
- Batching: a burst of 500 small transactions (WAL, synchronous=NORMAL: commits much faster
  than PUTs) must not become 500 PUTs. Counted independently of the code under test: the
  level-0 objects that cover the burst (each upload is one new key named after the TXID range
  it covers) and the PUT requests for level-0 keys in moto_server's access log (which also
  counts retries and re-PUTs of one key); the uploader's own count in DATA/status.json must
  agree. At most a tenth of the commits, and the level-0 ranges must tile the burst exactly.
"""

from __future__ import annotations

import json
import random
import signal
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.mount.harness import LitefsMount
from tests.replication.conftest import Bucket, Rig
from tests.replication.helpers import (
    Obj,
    SqlProc,
    describe,
    file_hash,
    list_ltx,
    litefs_restore,
    max_txid,
    put_requests,
    restored_txid,
    wait_until,
    write_config,
)
from tests.s3_server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer, create_bucket

PREFIX = "backups/app.db"
LATENCY_LIMIT = 1.0  # seconds from COMMIT returning to the TXID being listed
BURST = 500


def test_commit_is_in_the_bucket_within_a_second(bucket: Bucket, rig: Rig) -> None:
    m = rig.mount(write_config(rig.tmp / "litefs.yml", bucket.url()))
    m.start()
    client = rig.sql(m.db("app.db"))
    client.txns(1)
    wait_until(lambda: max_txid(list_ltx(bucket.endpoint, bucket.name, PREFIX)) >= 1, 5,
               what="the first transaction in the bucket")
    rng = random.Random(7)
    latencies: list[tuple[int, float]] = []
    for _ in range(12):
        time.sleep(rng.uniform(0.0, 0.4))
        [[txid, t_done, _secs, _h]] = client.txns(1)
        while max_txid(list_ltx(bucket.endpoint, bucket.name, PREFIX)) < txid:
            assert time.monotonic() - t_done < 10, f"TXID {txid:x} never reached the bucket"
            time.sleep(0.01)
        latencies.append((txid, time.monotonic() - t_done))
    worst = max(latencies, key=lambda x: x[1])
    summary = (f"commit→listed latencies: median {statistics.median(s for _, s in latencies):.3f}s"
               f", worst {worst[1]:.3f}s (TXID {worst[0]:x})")
    print(summary)
    assert worst[1] <= LATENCY_LIMIT, summary


@dataclass
class Burst:
    first: int
    last: int
    seconds: float
    l0: list[Obj]  # the level-0 objects written for the burst
    puts: int  # PUT requests for level-0 keys during the burst (moto's access log)
    status_puts: int | None  # the uploader's own count (DATA/status.json), if it has one
    restored_txid: int
    restored_hash: str
    source: dict[str, Any]  # {"hash", "txid"} as the client sees the database


@pytest.fixture(scope="module")
def burst(moto: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Burst]:
    """One burst of BURST small transactions, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("burst")
    signal.alarm(120)
    name = create_bucket(moto.endpoint)
    url = f"s3://{name}/backups?endpoint={moto.endpoint}"
    m = LitefsMount(tmp / "mnt", tmp / "data", tmp / "litefs.log",
                    extra_args=["--config", str(write_config(tmp / "litefs.yml", url))])
    client = None
    mp = pytest.MonkeyPatch()
    mp.setenv("LITEFS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    mp.setenv("LITEFS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    try:
        m.start()
        # WAL with synchronous=NORMAL, as most web apps run SQLite: no fsync per commit, so
        # commits come much faster than PUTs can go out.
        client = SqlProc(m.db("app.db"), wal=True, synchronous="NORMAL")
        client.txns(1)
        wait_until(lambda: max_txid(list_ltx(moto.endpoint, name, PREFIX)) >= 1, 5,
                   what="the first transaction in the bucket")
        time.sleep(1.2)  # DATA/status.json (rewritten every second) has app.db by now
        before_puts = put_requests(moto.log_path, name, PREFIX + "/0000/")
        before_status = _status_puts(m)
        before = {o.key for o in list_ltx(moto.endpoint, name, PREFIX) if o.level == 0}
        started = time.monotonic()
        commits = client.txns(BURST, size=32, timeout=120)
        seconds = time.monotonic() - started
        first, last = commits[0][0], commits[-1][0]
        assert last - first + 1 == BURST, "every transaction of the burst has its own TXID"
        wait_until(lambda: max_txid(list_ltx(moto.endpoint, name, PREFIX)) >= last, 15,
                   what="the end of the burst in the bucket")
        time.sleep(0.5)  # nothing more should come; let a straggler show up if there is one
        l0 = [o for o in list_ltx(moto.endpoint, name, PREFIX)
              if o.level == 0 and o.key not in before]
        puts = put_requests(moto.log_path, name, PREFIX + "/0000/") - before_puts
        time.sleep(1.2)  # DATA/status.json is rewritten every second
        after_status = _status_puts(m)
        status_puts = None if before_status is None or after_status is None \
            else after_status - before_status
        source = client.request({"op": "hash"})
        out = tmp / "restored.db"
        env_url = f"s3://{name}/{PREFIX}?endpoint={moto.endpoint}"
        proc = litefs_restore(env_url, out)
        assert proc.returncode == 0, proc.stderr
        print(f"{BURST} commits in {seconds:.2f}s → {len(l0)} level-0 objects, {puts} PUTs "
              f"(moto's log), {status_puts} PUTs (litefs status)")
        yield Burst(first, last, seconds, sorted(l0, key=lambda o: o.lo), puts, status_puts,
                    restored_txid(proc), file_hash(out), source)
    finally:
        signal.alarm(0)
        if client is not None:
            client.kill()
        m.stop()
        mp.undo()


def _status_puts(m: LitefsMount) -> int | None:
    """The uploader's PUT count from DATA/status.json (None if the mount writes none)."""
    try:
        doc = json.loads((m.data_dir / "status.json").read_text())
        return int(doc["databases"]["app.db"]["replica"]["put_requests"])
    except (OSError, ValueError, KeyError):
        return None


def test_burst_tiles_and_restores(burst: Burst) -> None:
    """The level-0 objects of the burst cover its TXIDs exactly once, and restore to what
    the client sees."""
    cur = burst.first - 1
    for o in burst.l0:
        assert o.lo == cur + 1, f"level-0 ranges do not tile the burst: {describe(burst.l0)}"
        cur = o.hi
    assert cur == burst.last, f"level-0 ranges end at {cur:x}, burst ends at {burst.last:x}"
    assert burst.source["txid"] == burst.last == burst.restored_txid
    assert burst.restored_hash == burst.source["hash"]
    # The uploader's own count, when it reports one, agrees with the server's log.
    if burst.status_puts is not None:
        assert burst.status_puts == burst.puts == len(burst.l0)


def test_burst_is_batched(burst: Burst) -> None:
    summary = (f"{BURST} commits in {burst.seconds:.1f}s became {len(burst.l0)} level-0 "
               f"objects and {burst.puts} PUT requests")
    # Before the batch window (commit 3f4adab) the uploader PUT as soon as a commit woke it:
    # 270-400 PUTs for this burst in rollback-journal mode, ~100 in WAL mode.
    assert len(burst.l0) <= BURST // 10, summary
    assert burst.puts <= BURST // 10, summary
    # And no more than the default request budget allows (replica.upload-rate 4/s after a
    # burst of 5; +1: the upload of the last commit may start as the burst ends).
    assert burst.puts <= 5 + 4 * burst.seconds + 1, summary
