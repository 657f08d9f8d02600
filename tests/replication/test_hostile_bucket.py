"""`litefs mount` uploading to a hostile bucket (#14 item 4): moto_server behind S3FaultProxy
(tests/s3_fault_proxy.py), real mounts, SQLite clients in their own processes.

(a) While a client commits, the level-0 PUTs meet 503 SlowDown and 500 before the server
    stores them, 500/503 and connection resets after it did, an answer whose Content-Length
    is longer than its body, refused listings, and a server clock 16 minutes ahead and then
    behind. Every acknowledged commit reaches the bucket, the level-0 objects stay one
    disjoint chain (no two cover a TXID), and the restore equals the client's database.
(b) More than 1,000 objects at level 0 (moto pages ListObjectsV2 at 1,000 keys, as S3 does):
    listings, StartAfter listings across a page, the restore plan, a cold start and the
    uploader's position all see every object.
(c) Another writer in the same path: two mounts that both continue one history (split
    brain), an object written by another program (as Litestream would), and a database with
    another history at the same TXID. The mount that meets another writer's object stops
    uploading (the bucket never interleaves the two), says so naming the object, shows it in
    `litefs status`, and resumes once only its own objects are there.
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from litefs_py.ltx import FLAG_V3_NO_CHECKSUM, Header, encode_bytes
from litefs_py.replica_clients import client_for_url
from litefs_py.replication.restore_plan import plan_restore
from litefs_py.storage.base import META_CHECKSUM, META_TIMESTAMP, format_timestamp
from litefs_py.store.page_table import PageTable
from tests.mount.harness import LitefsMount
from tests.replication.conftest import Bucket, Rig
from tests.replication.helpers import (
    chain_problem,
    describe,
    file_hash,
    integrity,
    list_ltx,
    litefs_restore,
    max_txid,
    replica_status,
    restored_txid,
    s3,
    wait_until,
    write_config,
)
from tests.replication.test_faults import _l0_chain_problem
from tests.s3_fault_proxy import Fault, S3FaultProxy

PREFIX = "backups/app.db"
PS = 4096


@pytest.fixture
def proxy(bucket: Bucket, rig: Rig) -> Iterator[S3FaultProxy]:
    p = S3FaultProxy(bucket.endpoint).start()
    rig.on_teardown(p.close)
    yield p


def _objs(bucket: Bucket) -> list[Any]:
    return list_ltx(bucket.endpoint, bucket.name, PREFIX)


def _bucket_txid(bucket: Bucket) -> int:
    return max_txid(_objs(bucket))


def _replica_status(m: LitefsMount) -> dict[str, Any]:
    return replica_status(m.data_dir)


def _restore_equals(rig: Rig, bucket: Bucket, txid: int, want: str, tag: str) -> None:
    out = rig.tmp / f"{tag}.db"
    proc = litefs_restore(bucket.url(PREFIX), out)  # straight to the server
    assert proc.returncode == 0, proc.stderr
    assert restored_txid(proc) == txid
    assert integrity(out) == "ok"
    assert file_hash(out) == want, f"{tag}: the restore differs from the client's database"


# ---- (a) faults on uploads ---------------------------------------------------------------------


@pytest.mark.time_limit(240)
def test_uploads_through_a_hostile_bucket_lose_nothing_and_never_duplicate(
        bucket: Bucket, rig: Rig, proxy: S3FaultProxy) -> None:
    m = rig.mount(write_config(rig.tmp / "litefs.yml", bucket.url(endpoint=proxy.endpoint)))
    m.start()
    client = rig.sql(m.db("app.db"))
    client.txns(2)
    wait_until(lambda: _bucket_txid(bucket) >= 2, 20, what="the first uploads")

    l0_put = rf"PUT /{bucket.name}/{PREFIX}/0000/"
    schedule = [
        Fault("error", l0_put, times=2),  # 503 SlowDown: botocore's own retries absorb it
        Fault("error", l0_put, times=4, status=500, code="InternalError"),  # the uploader's
        Fault("error_after", l0_put, times=1, status=500, code="InternalError"),
        Fault("error_after", l0_put, times=3),  # stored, and every attempt answered 503
        Fault("reset_after", l0_put, times=3),  # stored, and no answer at all
        Fault("long_length", l0_put, times=1),  # an answer that announces more than it has
        Fault("error", r"GET .*list-type=2", times=4),  # listings refused meanwhile
    ]
    # A writer thread commits all along (3 transactions at a time) until the faults are done.
    commits: list[list[Any]] = []
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            commits.extend(client.txns(3, size=200))
            time.sleep(0.02)

    writer = threading.Thread(target=write, name="committer")
    writer.start()
    try:
        for fault in schedule:
            proxy.add(fault)
            wait_until(lambda f=fault: f.hits >= (f.times or 1), 60,  # type: ignore[misc]
                       what=f"the uploader to meet {fault}")
        for offset in (16 * 60, -16 * 60, 0):
            proxy.clock_offset = offset
            before = proxy.count("PUT", l0_put)
            wait_until(lambda b=before: proxy.count("PUT", l0_put) >= b + 3, 60,  # type: ignore[misc]
                       what=f"uploads with the server's clock {offset:+} s off")
    finally:
        proxy.clear()
        proxy.clock_offset = 0
        stop.set()
        writer.join(60)
    assert not writer.is_alive(), "a commit hangs"
    final = client.request({"op": "hash"})
    last, last_hash = final["txid"], final["hash"]
    assert last == commits[-1][0], "every acknowledged commit is in the client's database"
    wait_until(lambda: _bucket_txid(bucket) >= last, 90,
               what=f"every TXID up to {last:x} in the bucket\n{m.log()[-3000:]}")
    objs = _objs(bucket)
    assert _l0_chain_problem(objs) is None, f"{_l0_chain_problem(objs)}: [{describe(objs)}]"
    assert chain_problem(objs) is None, chain_problem(objs)
    _restore_equals(rig, bucket, last, last_hash, "after-faults")
    skewed = proxy.count(fault="clock_skew")
    assert skewed >= 2, "the skewed clock was never refused: the test did not test it"
    log = m.log()
    assert "clock is 16 min" in log and "signing requests with the server's time" in log
    # Some failures outlasted botocore's own three attempts: the uploader's back-off ran.
    errors = _replica_status(m)["errors"]
    assert errors.get("transient", 0) + errors.get("unreachable", 0) >= 1, errors
    hits = sum(f.hits for f in schedule) + skewed
    kinds = {(f.action, f.status if "error" in f.action else 0) for f in schedule}
    print(f"{len(commits)} commits through {hits} injected faults ({len(kinds) + 1} kinds: "
          f"{sorted(kinds)} and clock skew); 0 lost; "
          f"{len([o for o in objs if o.level == 0])} level-0 objects, none overlapping; "
          f"uploader errors by kind {errors}")


# ---- (b) more than 1,000 objects ---------------------------------------------------------------


def _sqlite_history(path: Path, n: int) -> Iterator[tuple[int, dict[int, bytes], int]]:
    """(TXID, pages changed, database size in pages) for n transactions of a real SQLite
    database: TXID 1 creates the table (every page), each later one inserts a row."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute(f"PRAGMA page_size={PS}")
    con.execute("PRAGMA journal_mode=DELETE").fetchall()
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, k INT, v TEXT)")
    prev: dict[int, bytes] = {}
    for txid in range(1, n + 1):
        if txid > 1:
            con.execute("INSERT INTO t(k, v) VALUES (?, ?)", (txid, f"row {txid} " * 5))
        data = path.read_bytes()
        pages = {i // PS + 1: data[i:i + PS] for i in range(0, len(data), PS)}
        changed = {p: b for p, b in pages.items() if prev.get(p) != b}
        yield txid, changed, len(pages)
        prev = pages
    con.close()


def _write_history(bucket: Bucket, n: int, snapshot_at: int, tmp: Path) -> None:
    """n level-0 objects (one per transaction, with timestamp and checksum metadata, as the
    uploader writes them) and a level-9 snapshot at `snapshot_at`, PUT by plain boto3."""
    table = PageTable(PS)
    whole: dict[int, bytes] = {}
    jobs: list[tuple[str, bytes, dict[str, str]]] = []
    ts = int(time.time() * 1000) - n
    for txid, changed, commit in _sqlite_history(tmp / "source.db", n):
        old = table.page_count
        for pgno, page in changed.items():
            table.set_page(pgno, page)
        table.finish_growth(old, commit)
        whole.update(changed)
        meta = {META_TIMESTAMP: format_timestamp(ts + txid),
                META_CHECKSUM: f"{table.checksum:016x}"}
        header = Header(page_size=PS, commit=commit, min_txid=txid, max_txid=txid,
                        timestamp=ts + txid, flags=FLAG_V3_NO_CHECKSUM)
        jobs.append((f"{PREFIX}/0000/{txid:016x}-{txid:016x}.ltx",
                     encode_bytes(header, sorted(changed.items())), meta))
        if txid == snapshot_at:
            snap = Header(page_size=PS, commit=commit, min_txid=1, max_txid=txid,
                          timestamp=ts + txid, flags=FLAG_V3_NO_CHECKSUM)
            pages = sorted((p, b) for p, b in whole.items() if p <= commit)
            jobs.append((f"{PREFIX}/0009/{1:016x}-{txid:016x}.ltx",
                         encode_bytes(snap, pages), dict(meta)))
    raw = s3(bucket.endpoint)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda job: raw.put_object(Bucket=bucket.name, Key=job[0], Body=job[1],
                                                 Metadata=job[2]), jobs))


@pytest.mark.time_limit(240)
def test_more_than_a_thousand_objects_are_all_seen(bucket: Bucket, rig: Rig,
                                                   proxy: S3FaultProxy) -> None:
    n = 1100
    # The snapshot near the end keeps the cold start short (11 objects to read); the
    # listing of level 0 still holds all 1,100.
    _write_history(bucket, n, snapshot_at=1090, tmp=rig.tmp)
    url = bucket.url(endpoint=proxy.endpoint)
    client = client_for_url(f"s3://{bucket.name}/{PREFIX}?endpoint={proxy.endpoint}")
    l0_lists = r"list-type=2.*prefix=backups%2Fapp.db%2F0000"
    assert len(client.ltx_files(0)) == n
    assert proxy.count("GET", l0_lists) >= 2, "one ListObjectsV2 page held all the keys?"
    after = client.ltx_files_after(0, 50)  # from StartAfter, across a page boundary
    assert [i.min_txid for i in after] == list(range(51, n + 1))
    plan = plan_restore(client)
    assert plan.txid == n and plan.latest_txid == n
    assert [(i.level, i.min_txid) for i in plan.files[:2]] == [(9, 1), (0, 1091)]

    # A cold start restores all of it, and its uploader continues after TXID n.
    m = rig.mount(write_config(rig.tmp / "litefs.yml", url))
    m.start()
    sql = rig.sql(m.db("app.db"))
    assert sql.request({"op": "count"})["count"] == n - 1
    [[txid, *_]] = sql.txns(1)
    assert txid == n + 1
    [[last, _t, _s, last_hash]] = sql.txns(1, hash=True)
    wait_until(lambda: _bucket_txid(bucket) >= last, 30, what="the new commits in the bucket")
    objs = _objs(bucket)
    assert _l0_chain_problem(objs) is None, _l0_chain_problem(objs)
    assert "another history" not in m.log() and "another writer" not in m.log()
    _restore_equals(rig, bucket, last, last_hash, "paginated")


# ---- (c) another writer ------------------------------------------------------------------------


def _two_writer_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The check for another writer every 0.3 s instead of 10 s: the test's commits are slow.
    monkeypatch.setenv("LITEFS_WRITER_CHECK_INTERVAL", "0.3")
    monkeypatch.setenv("LITEFS_SLOW_RETRY", "1")


@pytest.mark.time_limit(150)
def test_a_second_writer_in_the_same_path_is_refused(
        bucket: Bucket, rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Split brain: B cold-starts from A's backups (the same history at TXID 3), then both
    commit. A's upload of TXID 4 is in the bucket first; B, before its own upload, finds it,
    and stops: the bucket holds A's history only, and says whose object B met."""
    _two_writer_env(monkeypatch)
    url = bucket.url()
    a = rig.mount(write_config(rig.tmp / "a.yml", url), name="a", data="a-data")
    a.start()
    sql_a = rig.sql(a.db("app.db"))
    sql_a.txns(2)
    wait_until(lambda: _bucket_txid(bucket) >= 3, 20, what="A's first uploads")
    b = rig.mount(write_config(rig.tmp / "b.yml", url), name="b", data="b-data")
    b.start()  # restores TXID 3 from the bucket
    sql_b = rig.sql(b.db("app.db"))
    assert sql_b.request({"op": "hash"})["txid"] == 3
    [[four, *_]] = sql_a.txns(1)
    wait_until(lambda: _bucket_txid(bucket) >= four, 20, what="A's TXID 4 in the bucket")
    sql_b.txns(3)  # B's own TXIDs 4..6
    wait_until(lambda: _replica_status(b).get("foreign_writer"), 30,
               what="B to notice A's object")
    rep = _replica_status(b)
    assert rep["error_kind"] == "foreign_writer" and rep["needs_fix"] is True, rep
    key = f"{PREFIX}/0000/{four:016x}-{four:016x}.ltx"
    assert key in rep["last_error"], rep["last_error"]
    assert f"written by {_replica_status(a)['writer']}" in rep["last_error"]
    assert "never interleave" in b.log()
    # A goes on; nothing of B's is in the bucket; the restore is A's history.
    last, _t, _s, last_hash = sql_a.txns(2, hash=True)[-1]
    wait_until(lambda: _bucket_txid(bucket) >= last, 20, what="A's later uploads")
    time.sleep(1.0)  # B's uploader retries meanwhile (LITEFS_SLOW_RETRY=1): still refused
    objs = _objs(bucket)
    assert _l0_chain_problem(objs) is None, describe(objs)
    assert _replica_status(b)["uploads"] == 0, "B uploaded after all"
    _restore_equals(rig, bucket, last, last_hash, "split-brain")
    assert not _replica_status(a).get("foreign_writer")


@pytest.mark.time_limit(120)
def test_an_object_of_another_program_stops_uploads_until_it_is_gone(
        bucket: Bucket, rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A level-0 object the mount did not write appears after its position (as Litestream
    replicating the same path would write): uploads stop, commits go on locally; once the
    object is deleted, uploads resume and catch up."""
    _two_writer_env(monkeypatch)
    m = rig.mount(write_config(rig.tmp / "litefs.yml", bucket.url()))
    m.start()
    sql = rig.sql(m.db("app.db"))
    sql.txns(2)
    wait_until(lambda: _bucket_txid(bucket) >= 3, 20, what="the first uploads")
    raw = s3(bucket.endpoint)
    alien = f"{PREFIX}/0000/{4:016x}-{4:016x}.ltx"
    header = Header(page_size=PS, commit=2, min_txid=4, max_txid=4, flags=FLAG_V3_NO_CHECKSUM,
                    timestamp=int(time.time() * 1000))
    raw.put_object(Bucket=bucket.name, Key=alien, Body=encode_bytes(header, [(2, bytes(PS))]))
    time.sleep(0.6)  # > the check interval: detected before the next upload, not after it
    sql.txns(3)
    wait_until(lambda: _replica_status(m).get("foreign_writer"), 30,
               what=f"the mount to notice the alien object\n{m.log()[-3000:]}")
    rep = _replica_status(m)
    assert alien in rep["last_error"]
    assert "without litefs-writer metadata: Litestream" in rep["last_error"]
    assert _bucket_txid(bucket) == 4 and rep["txid"] == f"{3:016x}"
    # `litefs status` says it too.
    proc = _litefs_status(m)
    assert "another writer is uploading" in proc and alien in proc, proc
    raw.delete_object(Bucket=bucket.name, Key=alien)
    [[last, _t, _s, last_hash]] = sql.txns(1, hash=True)
    wait_until(lambda: _bucket_txid(bucket) >= last and not
               _replica_status(m).get("foreign_writer"), 30,
               what=f"uploads to resume\n{m.log()[-3000:]}")
    assert "uploads resume" in m.log()
    objs = _objs(bucket)
    assert _l0_chain_problem(objs) is None, describe(objs)
    _restore_equals(rig, bucket, last, last_hash, "after-alien")


def _litefs_status(m: LitefsMount) -> str:
    from tests.replication.helpers import litefs_cli

    proc = litefs_cli("status", "--data-dir", str(m.data_dir))
    return proc.stdout + proc.stderr


@pytest.mark.time_limit(120)
def test_another_history_at_the_same_txid_is_refused_at_start(
        bucket: Bucket, rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database made on its own (its own TXIDs 1..3) pointed at a path whose backups are
    another database at TXID 3: the same TXID, another checksum. Nothing is uploaded."""
    _two_writer_env(monkeypatch)
    a = rig.mount(write_config(rig.tmp / "a.yml", bucket.url()), name="a", data="a-data")
    a.start()
    rig.sql(a.db("app.db")).txns(2)
    wait_until(lambda: _bucket_txid(bucket) >= 3, 20, what="A's uploads")
    a.stop()
    before = _objs(bucket)
    # C: its own database, first replicated elsewhere, then pointed at A's path.
    c = rig.mount(write_config(rig.tmp / "c.yml", bucket.url("elsewhere")), name="c",
                  data="c-data")
    c.start()
    sql_c = rig.sql(c.db("app.db"))
    sql_c.txns(2, size=99)
    sql_c.close()
    c.stop()
    c2 = rig.mount(write_config(rig.tmp / "c2.yml", bucket.url()), name="c2", data="c-data")
    c2.start()
    wait_until(lambda: _replica_status(c2).get("foreign_writer"), 30,
               what=f"C to refuse A's history\n{c2.log()[-3000:]}")
    rep = _replica_status(c2)
    assert "holds another history" in rep["last_error"]
    [newest] = [o.key for o in before if o.level == 0 and o.hi == 3]
    assert newest in rep["last_error"], rep["last_error"]
    rig.sql(c2.db("app.db")).txns(1)
    time.sleep(1.0)
    assert [o.key for o in _objs(bucket)] == [o.key for o in before], "C uploaded anyway"
