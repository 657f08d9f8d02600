"""Every Litestream vector restores through the real S3 client from a real S3 server
(moto_server) to exactly the states the real `litestream restore` produced."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from litefs_py.replica_clients import client_for_url
from litefs_py.replication import RestoreTarget, restore_database
from litefs_py.replication.restore_plan import format_time, metadata_loader, plan_from_files

from .conftest import (
    CLI_ENV,
    LTX_SETS,
    V03_SET,
    VectorBucket,
    dump_sha256,
    expected,
    integrity,
    run_cli,
)

REPO = Path(__file__).resolve().parents[2]
CHECKS = [(s, c["txid"], c["dump_sha256"]) for s in LTX_SETS for c in expected(s)["txid_checks"]]


def _client(vb: VectorBucket, prefix: str):  # type: ignore[no-untyped-def]
    return client_for_url(vb.url(prefix), env=CLI_ENV)


@pytest.mark.parametrize("set_name", LTX_SETS)
def test_latest_via_cli(vector_bucket: VectorBucket, tmp_path: Path, set_name: str) -> None:
    exp = expected(set_name)
    out = tmp_path / "restored" / "app.db"
    res = run_cli("-o", str(out), "--integrity-check", vector_bucket.url(exp["prefix"]))
    assert res.exit_code == 0, res.output
    assert f"TXID {exp['final_txid']}" in res.output
    assert dump_sha256(out) == exp["dump_sha256"]
    assert integrity(out) == "ok"
    # Like `litestream restore`: the bytes the backups hold, so the WAL-mode header stays.
    assert out.read_bytes()[18:20] == b"\x02\x02"
    assert not Path(f"{out}.tmp").exists()


@pytest.mark.parametrize(("set_name", "txid", "sha"), CHECKS)
def test_each_txid(vector_bucket: VectorBucket, tmp_path: Path, set_name: str, txid: str,
                   sha: str) -> None:
    client = _client(vector_bucket, expected(set_name)["prefix"])
    out = tmp_path / "out.db"
    result = restore_database(client, out, txid=int(txid, 16), integrity=True)
    assert result.txid == int(txid, 16)
    assert result.integrity == "ok"
    assert dump_sha256(out) == sha


@pytest.mark.parametrize("set_name", LTX_SETS)
def test_timestamps(vector_bucket: VectorBucket, tmp_path: Path, set_name: str) -> None:
    """`--timestamp T` restores the last TXID whose `litestream-timestamp` is <= T: at each
    capture's own time, and 1 ms before the next transaction."""
    exp = expected(set_name)
    client = _client(vector_bucket, exp["prefix"])
    l0 = {int(f["min_txid"], 16): f["timestamp_ms"] for f in exp["ltx_files"]
          if f["level"] == 0}
    # S3 lists no metadata: the planner HEADs only the files it considers (a spy counts).
    heads: list[str] = []
    real_head = client.ltx_metadata

    def counting_head(info):  # type: ignore[no-untyped-def]
        heads.append(info.key)
        return real_head(info)

    client.ltx_metadata = counting_head
    listing = {level: client.ltx_files(level) for level in client.levels()}
    resolve = metadata_loader(client)
    for check in exp["txid_checks"]:
        txid = int(check["txid"], 16)
        for ms in (l0[txid], l0.get(txid + 1, l0[txid] + 10_000) - 1):
            when = datetime.fromtimestamp(ms / 1000, tz=UTC)
            plan = plan_from_files(client.description, listing, RestoreTarget(timestamp=when),
                                   resolve=resolve)
            assert plan.txid == txid, (check["txid"], format_time(when))
    assert len(set(heads)) == len(heads)  # each object at most once
    assert len(heads) < sum(len(v) for v in listing.values())  # not every object
    for check in exp["txid_checks"]:
        txid = int(check["txid"], 16)
        out = tmp_path / f"{txid}.db"
        when = datetime.fromtimestamp(l0[txid] / 1000, tz=UTC)
        res = run_cli("-o", str(out), "--timestamp", format_time(when),
                      vector_bucket.url(exp["prefix"]))
        assert res.exit_code == 0, res.output
        assert dump_sha256(out) == check["dump_sha256"]


def test_timestamp_before_first_backup(vector_bucket: VectorBucket, tmp_path: Path) -> None:
    exp = expected("ls-0.5.17-4k")
    first = min(f["timestamp_ms"] for f in exp["ltx_files"])
    when = datetime.fromtimestamp(first / 1000, tz=UTC) - timedelta(seconds=1)
    out = tmp_path / "out.db"
    res = run_cli("-o", str(out), "-timestamp", format_time(when),
                  vector_bucket.url(exp["prefix"]))
    assert res.exit_code == 4
    assert "the first backup is from 2026-11-26T12:04:41.079Z" in res.output
    assert not out.exists() and not Path(f"{out}.tmp").exists()


def test_litestream_03_latest(vector_bucket: VectorBucket, tmp_path: Path) -> None:
    """A bucket with only Litestream 0.3 generations restores; the latest state is WAL index
    4 (the top-level dump_sha256, = source.db), not the workload's "final" capture."""
    exp = expected(V03_SET)
    out = tmp_path / "nested" / "dir" / "store.db"
    res = run_cli("-o", str(out), "--json", vector_bucket.url(exp["prefix"]))
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["format"] == "litestream-0.3"
    assert doc["generation"] == exp["final_generation"]
    assert doc["wal_index"] == exp["final_wal_index"]
    assert dump_sha256(out) == exp["dump_sha256"] == exp["final_restore"]["dump_sha256"]
    assert integrity(out) == "ok"


@pytest.mark.parametrize("check", expected(V03_SET)["index_checks"][:-1],
                         ids=lambda c: c["index"])
def test_litestream_03_index(vector_bucket: VectorBucket, tmp_path: Path,
                             check: dict[str, str]) -> None:
    out = tmp_path / "out.db"
    res = run_cli("-o", str(out), "-generation", check["generation"], "-index", check["index"],
                  vector_bucket.url(expected(V03_SET)["prefix"]))
    assert res.exit_code == 0, res.output
    assert dump_sha256(out) == check["dump_sha256"]


def test_endpoint_without_scheme(vector_bucket: VectorBucket, tmp_path: Path) -> None:
    exp = expected("ls-0.5.17-4k")
    out = tmp_path / "out.db"
    res = run_cli("-o", str(out), vector_bucket.url(exp["prefix"], scheme=False))
    assert res.exit_code == 0, res.output
    assert dump_sha256(out) == exp["dump_sha256"]


def test_empty_prefix(vector_bucket: VectorBucket, tmp_path: Path) -> None:
    out = tmp_path / "out.db"
    url = vector_bucket.url("nothing-here.db")
    res = run_cli("-if-replica-exists", "-o", str(out), url)
    assert res.exit_code == 0, res.output
    assert "no backups found at s3://" in res.output and "nothing restored" in res.output
    assert not out.exists()
    res = run_cli("-o", str(out), url)
    assert res.exit_code == 4
    assert (f"no backups found at s3://{vector_bucket.name}/nothing-here.db?endpoint="
            f"{vector_bucket.endpoint}: nothing has been replicated there yet") in res.output
    assert not out.exists() and not Path(f"{out}.tmp").exists()


def test_dry_run_and_json(vector_bucket: VectorBucket, tmp_path: Path) -> None:
    exp = expected("ls-0.5.17-4k")
    url = vector_bucket.url(exp["prefix"])
    out = tmp_path / "out.db"
    res = run_cli("-dry-run", "-o", str(out), url)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "3 file(s)" in lines[0] and "ends at TXID 000000000000000c" in lines[0]
    assert [ln.split()[:3] for ln in lines[2:]] == [
        ["9", "0000000000000001", "0000000000000001"],
        ["1", "0000000000000002", "0000000000000009"],
        ["1", "000000000000000a", "000000000000000c"],
    ]
    assert not out.exists()
    res = run_cli("--dry-run", "--json", "--txid", "7", url)  # no -o needed for a dry run
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["status"] == "plan" and doc["txid"] == "0000000000000007"
    assert [f["max_txid"][-1] for f in doc["files"]] == list("1234567")
    assert all(f["page_size"] == 4096 for f in doc["files"])
    res = run_cli("--json", "-o", str(out), "--txid", "0x9", url)
    doc = json.loads(res.output)
    assert doc["status"] == "restored" and doc["txid"] == "0000000000000009"
    assert doc["page_count"] == 181 and doc["output"] == str(out)
    res = run_cli("--json", "-o", str(out), url)
    assert res.exit_code == 1
    doc = json.loads(res.output.split("\nlitefs: ")[0])
    assert doc["status"] == "error" and doc["exit_code"] == 1


def test_db_name_from_config_into_data_dir(vector_bucket: VectorBucket, tmp_path: Path) -> None:
    """`litefs restore DB-NAME` installs the database where `litefs mount` keeps it, at the
    replica's TXID: the store's recovery resumes there (no new history)."""
    from litefs_py.store.db import DB
    from litefs_py.store.recovery import recover

    data = tmp_path / "data"
    cfg = tmp_path / "litefs.yml"
    cfg.write_text(f"data:\n  dir: {data}\nreplica:\n  url: s3://{vector_bucket.name}/db"
                   f"?endpoint={vector_bucket.endpoint}\n")
    res = run_cli("-config", str(cfg), "store.db")  # replica path: db/store.db (0.5.15 set)
    assert res.exit_code == 0, res.output
    db_file = data / "dbs" / "store.db" / "database"
    assert dump_sha256(db_file) == expected("ls-0.5.15-4k")["dump_sha256"]
    seeds = sorted(p.name for p in (data / "dbs" / "store.db" / "ltx").iterdir())
    assert seeds == ["0000000000000001-000000000000000c.ltx"]
    db = DB("store.db", data / "dbs" / "store.db")
    try:
        recover(db)
        assert db.txid == 0xC
    finally:
        db.close()
    res = run_cli("-config", str(cfg), "store.db", "-if-db-not-exists")
    assert res.exit_code == 0 and "already exists" in res.output
    res = run_cli("-config", str(cfg), "store.db")
    assert res.exit_code == 1 and "--force" in res.output
    res = run_cli("-config", str(cfg), "store.db", "--force", "--txid", "6")
    assert res.exit_code == 0, res.output
    assert dump_sha256(db_file) == expected("ls-0.5.15-4k")["txid_checks"][1]["dump_sha256"]
    assert sorted(p.name for p in (data / "dbs" / "store.db" / "ltx").iterdir()) == [
        "0000000000000001-0000000000000006.ltx"]
    # -o with a DB-NAME: a plain file.
    out = tmp_path / "copy.db"
    res = run_cli("-config", str(cfg), "-o", str(out), "store.db")
    assert res.exit_code == 0, res.output
    assert dump_sha256(out) == expected("ls-0.5.15-4k")["dump_sha256"]
    # Unknown name (no dbs entry needed with a default replica, so use a config without one).
    bare = tmp_path / "bare.yml"
    bare.write_text(f"data:\n  dir: {data}\n")
    res = run_cli("--config", str(bare), "store.db")
    assert res.exit_code == 4 and "has no replica" in res.output


def test_restored_database_is_usable(vector_bucket: VectorBucket, tmp_path: Path) -> None:
    """The restored WAL-mode database opens, reads and writes with any SQLite."""
    out = tmp_path / "app.db"
    restore_database(_client(vector_bucket, "app.db"), out)
    conn = sqlite3.connect(out)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1106
        conn.execute("INSERT INTO t(name) VALUES ('after restore')")
        conn.commit()
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()
    assert integrity(out) == "ok"


def test_cli_restore_never_imports_boto3(vector_bucket: VectorBucket, tmp_path: Path) -> None:
    """`litefs restore` reads through storage/s3_reader.py: start-up without boto3, botocore
    or PyYAML (the bulk of its import time); the result is the same database."""
    exp = expected(LTX_SETS[0])
    out = tmp_path / "out.db"
    code = ("import sys\n"
            "from litefs_py.cli import main\n"
            "try:\n    main(['restore', '-o', sys.argv[1], sys.argv[2]])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'boto3', 'botocore', 's3transfer', 'urllib3', 'yaml'})\n"
            "print('HEAVY', heavy)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LITEFS_"))}
    env.update(CLI_ENV)
    p = subprocess.run([sys.executable, "-c", code, str(out),
                        vector_bucket.url(exp["prefix"])], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("HEAVY []"), p.stdout
    assert dump_sha256(out) == exp["dump_sha256"]
