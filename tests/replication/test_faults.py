"""Faults between `litefs mount` and its bucket, and damaged objects in the bucket.

(a) The endpoint goes away for ~5 s while a client commits (a TCP proxy between the mount and
    moto_server is stopped: new connections refused, open ones reset). No commit may fail or
    stall noticeably; once the proxy is back every TXID reaches the bucket, and restores
    equal the source.
(b) SIGKILL of the mount during a burst of commits, with uploads slowed by the proxy so a PUT
    is in flight most of the time; remount → the bucket catches up, the level-0 ranges still
    form one chain (no overlapping or duplicated range), and both restore programs give the
    source. Every acknowledged commit survives.
(c) A corrupted object and a truncated object: `litefs restore` refuses, names the object's
    key, and leaves no partial output (neither OUT nor OUT.tmp; an existing OUT replaced with
    --force stays as it was). Single-byte flips all over one object are all caught. A cold
    start of `litefs mount` from such a bucket refuses the same way and leaves no database.
"""

from __future__ import annotations

import functools
import shutil
import time
from pathlib import Path

import pytest

from tests.mount.harness import LitefsMount, force_unmount, is_mounted
from tests.replication.conftest import Bucket, Rig
from tests.replication.helpers import (
    Obj,
    SqlProc,
    chain_problem,
    delete_keys,
    describe,
    file_hash,
    get_object,
    integrity,
    list_ltx,
    litefs_restore,
    litestream_restore,
    max_txid,
    put_object,
    restored_txid,
    wait_until,
    write_config,
)
from tests.replication.proxy import TcpProxy

PREFIX = "backups/app.db"
STALL_LIMIT = 0.5  # seconds: no commit may take longer while the endpoint is down


def _moto_port(bucket: Bucket) -> int:
    return int(bucket.endpoint.rsplit(":", 1)[1])


def _mount_behind_proxy(bucket: Bucket, rig: Rig, *,
                        delay: float = 0.0) -> tuple[TcpProxy, LitefsMount, SqlProc]:
    """A started mount whose replica endpoint is a TCP proxy in front of the S3 server, and a
    SQL client process on its app.db."""
    proxy = rig.proxy(_moto_port(bucket), delay=delay)
    m = rig.mount(write_config(rig.tmp / "litefs.yml", bucket.url(endpoint=proxy.endpoint)))
    m.start()
    return proxy, m, rig.sql(m.db("app.db"))


def _bucket_txid(bucket: Bucket) -> int:
    """The highest TXID of the level-0 objects in the bucket."""
    return max_txid(list_ltx(bucket.endpoint, bucket.name, PREFIX))


def _l0_chain_problem(objs: list[Obj]) -> str | None:
    """Level-0 ranges must be disjoint and contiguous from TXID 1."""
    cur = 0
    for o in sorted((o for o in objs if o.level == 0), key=lambda o: (o.lo, o.hi)):
        if o.lo != cur + 1:
            return f"level-0 object {o.lo:x}-{o.hi:x} follows TXID {cur:x}"
        cur = o.hi
    return None


def _restores_equal(rig: Rig, bucket: Bucket, litestream: Path, txid: int, want: str,
                    tag: str) -> None:
    ours, theirs = rig.tmp / f"{tag}-litefs.db", rig.tmp / f"{tag}-litestream.db"
    proc = litefs_restore(bucket.url(PREFIX), ours)
    assert proc.returncode == 0, proc.stderr
    assert restored_txid(proc) == txid
    lproc = litestream_restore(litestream, bucket.ls_url(PREFIX), theirs)
    assert lproc.returncode == 0, lproc.stderr
    for path in (ours, theirs):
        assert integrity(path) == "ok"
        assert file_hash(path) == want, f"{path.name} differs from the source"


# ---- (a) endpoint down -----------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.time_limit(300)
@pytest.mark.parametrize(("down_for", "interval"), [
    pytest.param(5.0, 0.03, id="5s"),
    # "Survives the endpoint being down for minutes": longer than several of the uploader's
    # 30 s maximum backoffs, so retries keep going at the cap and still catch up.
    pytest.param(150.0, 0.1, id="150s"),
])
def test_endpoint_down_during_writes(bucket: Bucket, rig: Rig, litestream: Path,
                                     down_for: float, interval: float) -> None:
    proxy, _mount, client = _mount_behind_proxy(bucket, rig)
    client.txns(2)
    wait_until(lambda: _bucket_txid(bucket) >= 2, 5,
               what="the first transactions in the bucket")

    client.send({"op": "loop", "seconds": down_for + 4.0, "interval": interval, "size": 200,
                 "hash": True})
    time.sleep(2.0)
    proxy.down()
    down_at = time.monotonic()
    time.sleep(down_for)
    reached_while_down = _bucket_txid(bucket)
    proxy.up()
    up_at = time.monotonic()
    loop = client.reply(timeout=30)
    assert loop["error"] is None, f"a commit failed while the endpoint was down: {loop['error']}"
    commits = loop["commits"]
    during = [c for c in commits if down_at <= c[1] <= up_at]
    before = [c for c in commits if c[1] < down_at]
    # The commit rate while the endpoint was down, against the rate just before it in the
    # same run (a ratio: a loaded machine slows both alike). A stall would make it ~0.
    rate_down = len(during) / (up_at - down_at)
    rate_before = len(before) / max(down_at - commits[0][1], 1e-3)
    assert len(during) > 10 and rate_down >= 0.5 * rate_before, \
        (f"the client kept committing while the endpoint was down: {rate_down:.1f}/s down vs "
         f"{rate_before:.1f}/s before")
    slowest = max(commits, key=lambda c: c[2])
    assert slowest[2] < STALL_LIMIT, \
        f"TXID {slowest[0]:x} took {slowest[2]:.2f}s to commit (endpoint down: commits stall)"
    last, last_hash = commits[-1][0], commits[-1][3]
    assert reached_while_down < during[-1][0], "nothing after the outage reached the bucket"

    # After a long outage the next retry can be one maximum backoff away (30 s, jittered to
    # at most 45 s).
    wait_until(lambda: _bucket_txid(bucket) >= last,
               20 if down_for < 30 else 70,
               what="every TXID in the bucket after the endpoint came back")
    caught_up = time.monotonic() - up_at
    objs = list_ltx(bucket.endpoint, bucket.name, PREFIX)
    assert chain_problem(objs) is None, chain_problem(objs)
    assert _l0_chain_problem(objs) is None, _l0_chain_problem(objs)
    _restores_equal(rig, bucket, litestream, last, last_hash, "after-outage")
    def p95(cs: list[list[float]]) -> float:
        return sorted(c[2] for c in cs)[int(len(cs) * 0.95)] * 1000

    others = [c for c in commits if not down_at <= c[1] <= up_at]
    print(f"{len(commits)} commits ({len(during)} while down), slowest {slowest[2] * 1000:.0f} "
          f"ms, p95 {p95(during):.0f} ms while down vs {p95(others):.0f} ms otherwise; caught "
          f"up {caught_up:.1f}s after the endpoint came back")


@pytest.mark.interop
@pytest.mark.time_limit(120)
def test_upload_stored_but_unacknowledged_is_not_uploaded_twice(bucket: Bucket, rig: Rig,
                                                                litestream: Path) -> None:
    """The server stores an L0 object but the client never gets the answer (connection
    reset, retries refused). After the outage the uploader must notice the object arrived and
    continue after it, not upload its TXIDs again in a larger, overlapping object (which the
    150 s outage above produced before this was fixed)."""
    proxy, m, client = _mount_behind_proxy(bucket, rig)
    client.txns(3)
    wait_until(lambda: _bucket_txid(bucket) >= 4, 5,
               what="the first transactions in the bucket")
    # The uploader's next level-0 PUT (path-style request line); not a GET or a PUT of the
    # maintainer's compactions and snapshots, which may run at the same time.
    proxy.lose_response_once(f"PUT /{bucket.name}/{PREFIX}/0000/".encode())
    client.txns(1)
    try:
        wait_until(lambda: proxy.lost_responses == 1, 30, what="an upload whose answer was lost")
    except AssertionError as exc:  # say what the uploader sent instead
        raise AssertionError(
            f"{exc}; the last requests through the proxy (time, request line, answered at): "
            f"{list(proxy.requests)[-12:]}\n--- mount log ---\n{m.log()[-4000:]}") from None
    stored = _bucket_txid(bucket)
    assert stored >= 5, "the server should have stored the upload whose answer was lost"
    client.txns(20)  # committed while the endpoint is down
    # Down until the uploader has given up on that PUT: botocore retries it, and a retry that
    # reached the endpoint back up would simply be answered (no lost answer left to learn).
    wait_until(lambda: "failed: " in m.log(), 60, what="the uploader to report the failed upload")
    proxy.up()
    last = client.request({"op": "hash"})
    wait_until(lambda: _bucket_txid(bucket) >= last["txid"],
               70, what="every TXID in the bucket after the endpoint came back")
    objs = list_ltx(bucket.endpoint, bucket.name, PREFIX)
    assert _l0_chain_problem(objs) is None, _l0_chain_problem(objs)
    log_text = m.log()
    assert "although the request failed" in log_text, log_text[-4000:]
    _restores_equal(rig, bucket, litestream, last["txid"], last["hash"], "lost-answer")


# ---- (b) SIGKILL mid-upload -------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.time_limit(75)
def test_sigkill_during_uploads_then_remount(bucket: Bucket, rig: Rig,
                                            litestream: Path) -> None:
    # A PUT takes a while: one is in flight most of the time.
    proxy, m, client = _mount_behind_proxy(bucket, rig, delay=0.04)
    client.txns(2)
    client.send({"op": "loop", "seconds": 6.0, "interval": 0.0, "size": 500})
    time.sleep(2.5)
    before_kill = list_ltx(bucket.endpoint, bucket.name, PREFIX)
    m.kill()
    loop = client.reply(timeout=30)
    client.kill()
    acknowledged = loop["commits"]
    assert acknowledged, "commits were acknowledged before the kill"
    assert loop["error"] is not None, "the kill interrupted the client"
    last_ack = acknowledged[-1][0]
    assert max_txid(before_kill) < last_ack, "the kill came with uploads still pending"

    proxy.delay = 0.0
    # The dead mount is cleared here rather than by the restarted litefs (tests/mount covers
    # that): the shared harness's start() trips over a dead mount point (its mkdir(exist_ok)
    # stats it: ENOTCONN) and can take the dead mount's entry for the new one.
    force_unmount(m.mount_dir)
    wait_until(lambda: not is_mounted(m.mount_dir), 5, what="the dead mount to go")
    m.start()
    client = rig.sql(m.db("app.db"))
    now = client.request({"op": "hash"})
    count = client.request({"op": "count"})["count"]
    # Every acknowledged commit added a row (the client's CREATE TABLE is TXID 1; the two
    # first transactions, then the loop's).
    assert now["txid"] >= last_ack
    assert count >= 2 + len(acknowledged)
    wait_until(lambda: _bucket_txid(bucket) >= now["txid"],
               20, what="the bucket catching up after the remount")
    objs = list_ltx(bucket.endpoint, bucket.name, PREFIX)
    assert _l0_chain_problem(objs) is None, f"{_l0_chain_problem(objs)}: [{describe(objs)}]"
    assert chain_problem(objs) is None, chain_problem(objs)
    _restores_equal(rig, bucket, litestream, now["txid"], now["hash"], "after-kill")
    # Writes go on after the remount, and reach the bucket too.
    [[txid, *_]] = client.txns(1)
    wait_until(lambda: _bucket_txid(bucket) >= txid, 5,
               what="a commit after the remount")
    print(f"{len(acknowledged)} commits acknowledged before SIGKILL; bucket was at "
          f"{max_txid(before_kill):x}, local at {last_ack:x}; after remount [{describe(objs)}]")


# ---- (c) damaged objects ----------------------------------------------------------------------


@pytest.fixture
def small_bucket(bucket: Bucket, rig: Rig) -> list[Obj]:
    """Six transactions, one level-0 object each (idle commits are uploaded one by one)."""
    m = rig.mount(write_config(rig.tmp / "litefs.yml", bucket.url()))
    m.start()
    client = rig.sql(m.db("app.db"))  # CREATE TABLE: TXID 1
    wait_until(lambda: _bucket_txid(bucket) >= 1, 5,
               what="TXID 1 in the bucket")
    for _ in range(5):
        [[txid, *_]] = client.txns(1, size=3000)
        wait_until(functools.partial(_reached, bucket, txid), 5,
                   what=f"TXID {txid:x} in the bucket")
    client.close()
    m.stop()
    # Only level 0: a compaction that ran meanwhile (L1 every 30 s of wall clock) would cover
    # the damaged objects, and the restore would go around them instead of refusing
    # (tests/restore/test_hostile_bucket.py tests that).
    compacted = [o.key for o in list_ltx(bucket.endpoint, bucket.name, PREFIX) if o.level]
    delete_keys(bucket.endpoint, bucket.name, compacted)
    objs = [o for o in list_ltx(bucket.endpoint, bucket.name, PREFIX) if o.level == 0]
    assert [(o.lo, o.hi) for o in objs] == [(t, t) for t in range(1, 7)], describe(objs)
    return objs


def _reached(bucket: Bucket, txid: int) -> bool:
    return _bucket_txid(bucket) >= txid


def _refuses(rig: Rig, bucket: Bucket, key: str, out: Path, *extra: str) -> str:
    proc = litefs_restore(bucket.url(PREFIX), out, extra=extra)
    assert proc.returncode != 0, f"restore succeeded despite damaged {key}"
    assert key in proc.stderr, f"the error does not name {key}: {proc.stderr}"
    assert not Path(f"{out}.tmp").exists(), "a partial OUT.tmp was left behind"
    return proc.stderr


def test_corrupted_and_truncated_objects_are_refused(bucket: Bucket, rig: Rig,
                                                     small_bucket: list[Obj]) -> None:
    from litefs_py.replica_clients import client_for_url
    from litefs_py.replication.restore import restore_database

    objs = small_bucket
    middle, last = objs[3], objs[-1]
    good_middle = get_object(bucket.endpoint, bucket.name, middle.key)
    good_last = get_object(bucket.endpoint, bucket.name, last.key)

    # One flipped byte in the middle of a page of a middle object.
    data, meta = good_middle
    bad = bytearray(data)
    bad[100 + (len(data) - 100) // 3] ^= 0x5A
    put_object(bucket.endpoint, bucket.name, middle.key, bytes(bad), meta)
    out = rig.tmp / "out" / "app.db"
    _refuses(rig, bucket, middle.key, out)
    assert not out.exists(), "no output for a refused restore"
    # An existing database replaced with --force stays as it was when the restore fails.
    out.write_bytes(b"previous contents")
    _refuses(rig, bucket, middle.key, out, "--force")
    assert out.read_bytes() == b"previous contents"
    # The state before the damaged object is still reachable (in-process: same code).
    client = client_for_url(bucket.url(PREFIX))
    ok = rig.tmp / "before-damage.db"
    assert restore_database(client, ok, txid=middle.lo - 1).txid == middle.lo - 1
    assert integrity(ok) == "ok"
    put_object(bucket.endpoint, bucket.name, middle.key, *good_middle)

    # The last object cut in half.
    data, meta = good_last
    put_object(bucket.endpoint, bucket.name, last.key, data[: len(data) // 2], meta)
    out.unlink()
    _refuses(rig, bucket, last.key, out)
    assert not out.exists()
    put_object(bucket.endpoint, bucket.name, last.key, *good_last)
    assert restore_database(client, out).txid == last.hi, "the repaired bucket restores"


def test_every_byte_flip_and_truncation_is_caught(bucket: Bucket, rig: Rig,
                                                  small_bucket: list[Obj]) -> None:
    """In-process sweep (the same restore_database the CLI runs): single-bit flips at ~25
    positions over one object — header, page frames, end of pages, index, trailer — and 6
    truncations."""
    from litefs_py.replica_clients import client_for_url
    from litefs_py.replication.restore import restore_database

    target = small_bucket[2]
    data, meta = get_object(bucket.endpoint, bucket.name, target.key)
    n = len(data)
    flips = sorted({*range(3, 100, 12), *range(100, n - 16, max(1, (n - 116) // 10)),
                    *range(n - 16, n, 5), n - 1})
    cuts = sorted({0, 50, 100, n // 2, n - 16, n - 1})
    client = client_for_url(bucket.url(PREFIX))
    missed: list[str] = []
    for label, blob in ([(f"flip@{i}", data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:])
                         for i in flips] + [(f"cut@{c}", data[:c]) for c in cuts]):
        put_object(bucket.endpoint, bucket.name, target.key, blob, meta)
        out = rig.tmp / "sweep.db"
        try:
            restore_database(client, out)
        except Exception as exc:
            if target.key not in str(exc):
                missed.append(f"{label}: error does not name the key: {exc}")
        else:
            missed.append(f"{label}: restored without complaint")
        if out.exists() or Path(f"{out}.tmp").exists():
            missed.append(f"{label}: left output behind")
            out.unlink(missing_ok=True)
            Path(f"{out}.tmp").unlink(missing_ok=True)
    put_object(bucket.endpoint, bucket.name, target.key, data, meta)
    assert not missed, f"{len(missed)} damaged variants of {target.key} ({n} bytes):\n" + \
        "\n".join(missed)


def test_cold_start_from_a_damaged_bucket_refuses(bucket: Bucket, rig: Rig,
                                                  small_bucket: list[Obj]) -> None:
    target = small_bucket[4]
    data, meta = get_object(bucket.endpoint, bucket.name, target.key)
    put_object(bucket.endpoint, bucket.name, target.key, data[:-40], meta)
    shutil.rmtree(rig.tmp / "data")
    m = rig.mount(rig.tmp / "litefs.yml", name="cold")
    with pytest.raises(RuntimeError, match="exited") as info:
        m.start()
    assert target.key in str(info.value), f"the refusal does not name the key: {info.value}"
    dbs = rig.tmp / "data" / "dbs"
    assert not (dbs / "app.db").exists(), "a partial database was installed"
    leftovers = [p for p in (rig.tmp / "data").rglob("*") if p.is_file() and p.name != "lock"]
    assert not leftovers, f"the refused restore left files: {leftovers}"
