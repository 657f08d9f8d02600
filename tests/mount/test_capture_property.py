"""Property: whatever two concurrent SQLite writers do, the LTX chain is the database.

Hypothesis draws a journal mode, a page size, a cache size and, for each of two writer
processes, a sequence of transactions (inserts, updates, deletes, cache-spilling blobs,
CREATE/DROP TABLE/INDEX, savepoints with ROLLBACK TO or RELEASE, whole-transaction rollbacks,
VACUUM). Both writers run at once with a busy timeout while a reader process loops
`SELECT count(*)`, `PRAGMA quick_check` and a monotonic-counter check, and sometimes
checkpoints the WAL (PASSIVE, RESTART or TRUNCATE). Afterwards:

- every committed transaction is in the database (a per-writer counter in `meta`);
- the number of new LTX files is the number of commits, plus at most one per VACUUM (a VACUUM
  may change nothing) and, in rollback-journal modes only, one per rolled-back transaction
  that left unjournaled freelist pages changed (see the comment in the test);
- the chain replays from TXID 1 to `-pos` with matching checksums and content, integrity_check
  is ok on both, and `litefs ltx verify` accepts every file (`sqlclient.verify_capture`).

Each example uses a new database name on one mount shared by the module.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests.mount.harness import LitefsMount
from tests.mount.sqlclient import (
    finish_client,
    ltx_files,
    read_live,
    run_client,
    sql,
    start_client,
    steps_spec,
    verify_capture,
)

MODES = ["DELETE", "TRUNCATE", "PERSIST", "WAL"]
_names = itertools.count()
# More examples for a soak run: LITEFS_PROPERTY_EXAMPLES=500 pytest tests/mount/...
EXAMPLES = int(os.environ.get("LITEFS_PROPERTY_EXAMPLES", "40"))


@pytest.fixture(scope="module")
def mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LitefsMount]:
    base = tmp_path_factory.mktemp("property")
    m = LitefsMount(base / "mnt", base / "data", base / "litefs.log")
    m.start()
    try:
        yield m
    finally:
        m.stop()


def _table(draw: Any) -> str:
    return f"t{draw(st.integers(0, 1))}"


@st.composite
def simple_op(draw: Any, w: int, big_max: int) -> list[str]:
    """One change, as a list of statements that cannot fail whatever the other writer did."""
    kind = draw(st.sampled_from(["insert", "insert", "update", "delete", "big", "index",
                                 "drop_index", "table", "drop_table"]))
    t = _table(draw)
    if kind == "insert":
        n = draw(st.integers(1, 30))
        size = draw(st.integers(0, 600))
        return [f"WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < {n}) "
                f"INSERT INTO {t}(w, v, b) SELECT {w}, printf('w{w}-%d', i), "
                f"randomblob({size}) FROM c"]
    if kind == "update":
        m = draw(st.integers(1, 5))
        return [f"UPDATE {t} SET v = v || '+', b = randomblob(length(b) + "
                f"{draw(st.integers(-50, 300))}) WHERE id % {m} = {draw(st.integers(0, m - 1))}"]
    if kind == "delete":
        m = draw(st.integers(2, 6))
        return [f"DELETE FROM {t} WHERE id % {m} = {draw(st.integers(0, m - 1))}"]
    if kind == "big":
        size = draw(st.integers(20_000, big_max))
        return [f"INSERT INTO {t}(w, v, b) VALUES ({w}, 'big', randomblob({size}))"]
    j = draw(st.integers(0, 2))
    if kind == "index":
        col = draw(st.sampled_from(["v", "b", "w, v"]))
        return [f"CREATE INDEX IF NOT EXISTS ix{w}_{j} ON {t}({col})"]
    if kind == "drop_index":
        return [f"DROP INDEX IF EXISTS ix{w}_{j}"]
    if kind == "table":
        return [f"CREATE TABLE IF NOT EXISTS s{w}_{j}(x, y)",
                f"INSERT INTO s{w}_{j} SELECT id, b FROM {t} LIMIT {draw(st.integers(0, 40))}"]
    return [f"DROP TABLE IF EXISTS s{w}_{j}"]


@st.composite
def transaction(draw: Any, w: int, big_max: int, rollback_to: bool) -> dict[str, Any]:
    if draw(st.integers(0, 9)) == 0:
        return {"vacuum": True}
    ops: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.integers(0, 3)) == 0:
            inner = [s for _ in range(draw(st.integers(1, 3)))
                     for s in draw(simple_op(w, big_max))]
            undo = rollback_to and draw(st.booleans())
            ops += ["SAVEPOINT sp", *inner]
            ops += ["ROLLBACK TO sp", "RELEASE sp"] if undo else ["RELEASE sp"]
        else:
            ops += draw(simple_op(w, big_max))
    return {"ops": ops, "rollback": draw(st.integers(0, 4)) == 0}


@st.composite
def scenario(draw: Any) -> dict[str, Any]:
    mode = draw(st.sampled_from(MODES))
    page_size = draw(st.sampled_from([512, 1024, 4096, 65536]))
    small_cache = draw(st.booleans())
    big_max = 200_000 if page_size >= 4096 else 60_000
    # WAL + cache spills + ROLLBACK TO hits the known WalTracker bug (see
    # test_capture_matrix.py::test_wal_rollback_to_after_in_place_overwrite); leave that
    # combination to the targeted test so this property stays meaningful for everything else.
    rollback_to = not (mode == "WAL" and small_cache)
    writers = [draw(st.lists(transaction(w, big_max, rollback_to), min_size=1, max_size=6))
               for w in (0, 1)]
    # The reader may also checkpoint (a no-op outside WAL mode): WAL restarts and truncations
    # then happen in another process, in the middle of the writers' work.
    checkpoint = draw(st.sampled_from([None, None, "PASSIVE", "RESTART", "TRUNCATE"]))
    return {"mode": mode, "page_size": page_size, "small_cache": small_cache,
            "writers": writers, "checkpoint": checkpoint}


@settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(sc=scenario())
def test_concurrent_writers_capture_everything(mount: LitefsMount, tmp_path: Path,
                                               sc: dict[str, Any]) -> None:
    name = f"prop{next(_names)}.db"
    note(f"database {name}: mode {sc['mode']}, page size {sc['page_size']}, "
         f"small cache {sc['small_cache']}, reader checkpoints {sc['checkpoint']}")
    run_client(steps_spec(mount, name, [
        sql(f"PRAGMA page_size={sc['page_size']}", f"PRAGMA journal_mode={sc['mode']}"),
        sql("BEGIN",
            "CREATE TABLE t0(id INTEGER PRIMARY KEY, w INT, v TEXT, b BLOB)",
            "CREATE TABLE t1(id INTEGER PRIMARY KEY, w INT, v TEXT, b BLOB)",
            "CREATE TABLE meta(w INTEGER PRIMARY KEY, n INT)",
            "INSERT INTO meta VALUES (0, 0), (1, 0)",
            "COMMIT"),
    ]))
    base = len(ltx_files(mount, name))
    stop = tmp_path / f"{name}.stop"
    # journal_mode is per connection except WAL: every writer sets it.
    setup = [f"PRAGMA journal_mode={sc['mode']}",
             f"PRAGMA cache_size={2 if sc['small_cache'] else -8000}"]
    reader = start_client({"kind": "reader", "db": mount.db(name), "stop_file": str(stop),
                           "timeout": 60, "checkpoint": sc["checkpoint"]})
    writers = [start_client({"kind": "writer", "db": mount.db(name), "writer": w,
                             "txns": txns, "setup": setup, "timeout": 60})
               for w, txns in enumerate(sc["writers"])]
    try:
        results = [finish_client(p, 120) for p in writers]
    finally:
        stop.touch()
        reader_result = finish_client(reader, 120)
    committed = sum(r["committed"] for r in results)
    vacuums = sum(r["vacuums"] for r in results)
    note(f"writers: {results}; reader: {reader_result}")
    assert reader_result["loops"] > 0
    rolled_back = sum(r["rolled_back"] for r in results)
    added = len(ltx_files(mount, name)) - base
    # In rollback-journal modes a rolled-back transaction may still leave changed bytes: SQLite
    # reuses freelist leaf pages without journaling them and does not restore them, so the
    # mount records those bytes (the chain must match the file). In WAL mode a rollback
    # never touches the database file.
    spurious = rolled_back if sc["mode"] != "WAL" else 0
    assert committed <= added <= committed + vacuums + spurious, (
        f"{added} LTX files for {committed} commits, {vacuums} VACUUMs and {rolled_back} "
        "rollbacks")
    live, _ = read_live(mount, name)
    assert live["tables"]["meta"] == [(0, 0, results[0]["committed"]),
                                      (1, 1, results[1]["committed"])]
    # One more small commit before comparing files: in rollback-journal modes a last
    # transaction that shrank the database is recorded with its old size (the known bug shown
    # by test_capture_matrix.py::test_shrinking_commit_records_the_new_size); the next commit
    # records the true size. Without this the property would fail on that bug alone.
    if sc["mode"] != "WAL":
        run_client(steps_spec(mount, name, [sql("INSERT INTO t0(w, v) VALUES (9, 'settle')")],
                              setup=[f"PRAGMA journal_mode={sc['mode']}"]))
    verify_capture(mount, name, tmp_path / name)
