"""The per-database request budget (replica.upload-rate / upload-burst, replication/budget.py).

- The token bucket itself, on a clock the test turns: a full bucket lets `burst` uploads go
  at once, then one per 1/rate seconds; idle time refills it, never beyond `burst`.
- A real mount with an S3 replica on moto under a steady paced load (a separate SQLite
  process committing every ~50 ms): L0 PUT requests, counted in moto's access log (not by the
  code under test), stay within what the budget allows for the elapsed time, are far fewer
  than the same load makes with no limit, and every commit still reaches the bucket.
- A sporadic commit on an idle database is uploaded at once; the next one right after it,
  with the budget spent, waits for the budget. Times are compared with the configured upload
  period, not with absolute thresholds.
"""

from __future__ import annotations

import json
import time

import pytest

from litefs_py.replication.budget import RequestBudget
from tests.replication.conftest import Bucket, Rig
from tests.replication.helpers import (
    SqlProc,
    list_ltx,
    max_txid,
    put_requests,
    wait_until,
    write_config,
)

PREFIX = "backups/app.db"
L0 = PREFIX + "/0000/"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket() -> None:
    clock = Clock()
    b = RequestBudget(4.0, 3, clock=clock)
    for _ in range(3):  # a full bucket: a burst goes at once
        assert b.delay() == 0
        b.spend()
    assert b.delay() == pytest.approx(0.25)  # then one per 1/rate
    clock.now += 0.1
    assert b.delay() == pytest.approx(0.15)
    clock.now += 0.15
    assert b.delay() == 0
    b.spend()
    clock.now += 60  # a quiet minute refills it, but only up to the burst
    assert b.tokens() == pytest.approx(3.0)
    assert b.grace == pytest.approx(0.125)
    assert b.spent == 4
    unlimited = RequestBudget(0, 1, clock=clock)
    for _ in range(100):
        assert unlimited.delay() == 0
        unlimited.spend()
    assert not unlimited.limited and unlimited.spent == 100


def test_bad_budget() -> None:
    with pytest.raises(ValueError, match="rate"):
        RequestBudget(-1, 1)
    with pytest.raises(ValueError, match="burst"):
        RequestBudget(1, 0)


def _steady(bucket: Bucket, rig: Rig, name: str, replica: dict[str, str],
            seconds: float) -> tuple[int, float, int, dict[str, object]]:
    """Commit every ~50 ms for `seconds` through a mount; returns (L0 PUTs during the load
    and until its last commit is in the bucket, elapsed seconds, commits, the uploader's
    status entry)."""
    m = rig.mount(write_config(rig.tmp / f"{name}.yml", bucket.url(f"backups-{name}"),
                               replica=replica), name=name, data=f"data-{name}")
    m.start()
    client = SqlProc(m.db("app.db"), wal=True, synchronous="NORMAL")
    rig.procs.append(client)
    client.txns(1)
    prefix = f"backups-{name}/app.db"
    wait_until(lambda: max_txid(list_ltx(bucket.endpoint, bucket.name, prefix)) >= 1, 10,
               what="the first transaction in the bucket")
    before = put_requests(bucket.log, bucket.name, prefix + "/0000/")
    t0 = time.monotonic()
    r = client.request({"op": "loop", "seconds": seconds, "interval": 0.05}, timeout=120)
    assert r["error"] is None, r["error"]
    last = r["commits"][-1][0]
    wait_until(lambda: max_txid(list_ltx(bucket.endpoint, bucket.name, prefix)) >= last, 30,
               what="the last commit of the steady load in the bucket")
    elapsed = time.monotonic() - t0
    puts = put_requests(bucket.log, bucket.name, prefix + "/0000/") - before
    time.sleep(1.2)  # DATA/status.json is rewritten every second
    status = json.loads((m.data_dir / "status.json").read_text())
    entry = status["databases"]["app.db"]["replica"]
    client.close()
    m.stop()
    return puts, elapsed, len(r["commits"]), entry


def test_steady_load_is_held_to_the_budget(bucket: Bucket, rig: Rig) -> None:
    rate, burst = 3.0, 2
    budgeted = _steady(bucket, rig, "budget", {"upload-rate": f"{rate:g}",
                                               "upload-burst": str(burst)}, 6.0)
    unlimited = _steady(bucket, rig, "nolimit", {"upload-rate": "0"}, 6.0)
    puts, elapsed, commits, status = budgeted
    summary = (f"budget {rate:g}/s: {puts} L0 PUTs for {commits} commits in {elapsed:.1f}s; "
               f"no limit: {unlimited[0]} PUTs for {unlimited[2]} commits in "
               f"{unlimited[1]:.1f}s; status {status}")
    print(summary)
    # A token bucket never allows more than the burst plus rate × time (+1: the upload that
    # carried the last commit may start just as the window closes).
    assert puts <= burst + rate * elapsed + 1, summary
    # The load really was steady and faster than the budget, so batching was needed...
    assert commits >= 3 * rate * 6.0, summary
    # ...and it batched: far fewer requests than the same load with no limit.
    per_commit, per_commit_unlimited = puts / commits, unlimited[0] / unlimited[2]
    assert per_commit * 1.5 <= per_commit_unlimited, summary
    budget = status["upload_budget"]
    assert isinstance(budget, dict)
    assert budget["rate_per_second"] == rate and budget["burst"] == burst
    assert budget["deferred"] > 0, summary


def test_sporadic_commit_goes_at_once(bucket: Bucket, rig: Rig) -> None:
    rate = 0.5  # one upload per 2 s once the burst is spent
    period = 1 / rate
    m = rig.mount(write_config(rig.tmp / "litefs.yml", bucket.url(),
                               replica={"upload-rate": "30/m", "upload-burst": "1"}))
    m.start()
    client = SqlProc(m.db("app.db"), wal=True, synchronous="NORMAL")
    rig.procs.append(client)
    [[setup, *_]] = client.txns(1)  # the schema and a first row: a few uploads
    wait_until(lambda: max_txid(list_ltx(bucket.endpoint, bucket.name, PREFIX)) >= setup,
               4 * period + 10, what="the set-up transactions in the bucket")
    time.sleep(period + 0.5)  # idle: the bucket refills

    def lag_of_next_commit() -> float:
        [[txid, t_done, _secs, _h]] = client.txns(1)
        wait_until(lambda: max_txid(list_ltx(bucket.endpoint, bucket.name, PREFIX)) >= txid,
                   2 * period + 10, interval=0.01, what=f"TXID {txid:x} in the bucket")
        return time.monotonic() - t_done

    sporadic = lag_of_next_commit()  # the one token: uploaded at once
    spent = lag_of_next_commit()  # right after, with the budget spent: waits for it
    summary = f"sporadic commit {sporadic:.2f}s, the next {spent:.2f}s (period {period:g}s)"
    print(summary)
    assert sporadic < period / 4, summary
    assert spent > period / 2, summary
    assert spent > 3 * sporadic, summary
