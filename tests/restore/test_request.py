"""One `RestoreRequest`, one planner for both bucket layouts, and dry runs that write nothing:
the Litestream vectors in a real S3 server (moto_server) and as a directory replica."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from litefs_py.errors import ExitCode, QuietError
from litefs_py.replica_clients import client_for_url
from litefs_py.replication import RestorePlan, RestoreRequest, make_plan, restore
from litefs_py.replication.legacy_v03 import LegacyPlan
from litefs_py.replication.restore import DryRunResult
from litefs_py.replication.restore_plan import NoBackupsError
from litefs_py.storage.file import FileReplicaClient

from .conftest import CLI_ENV, V03_SET, VectorBucket, expected


def test_one_planner_for_both_layouts(vector_bucket: VectorBucket) -> None:
    ltx = client_for_url(vector_bucket.url(expected("ls-0.5.17-4k")["prefix"]), env=CLI_ENV)
    v03 = client_for_url(vector_bucket.url(expected(V03_SET)["prefix"]), env=CLI_ENV)
    plan = make_plan(RestoreRequest(ltx, dry_run=True, txid=7))
    assert isinstance(plan, RestorePlan) and plan.txid == 7
    legacy = make_plan(RestoreRequest(v03, dry_run=True))
    assert isinstance(legacy, LegacyPlan)
    assert f"{legacy.wal_index:08x}" == expected(V03_SET)["final_wal_index"]
    with pytest.raises(QuietError, match=r"Litestream 0\.3 generations, which have no TXIDs") as e:
        make_plan(RestoreRequest(v03, dry_run=True, txid=3))
    assert e.value.code == ExitCode.USAGE
    # Asking for a generation of a bucket that has none: nothing to restore, said so.
    with pytest.raises(NoBackupsError, match=r"no Litestream 0\.3 generations"):
        make_plan(RestoreRequest(ltx, dry_run=True, generation="0123456789abcdef"))


def test_dry_run_into_a_data_directory_writes_nothing(replica_17: FileReplicaClient,
                                                      tmp_path: Path) -> None:
    data = tmp_path / "data"
    outcome = restore(RestoreRequest(replica_17, data_dir=data, name="app.db", dry_run=True))
    assert isinstance(outcome, DryRunResult)
    doc = outcome.to_json()
    assert doc["status"] == "plan" and doc["txid"] == "000000000000000c"
    assert doc["output"] == str(data / "dbs" / "app.db" / "database")
    assert all(f["page_size"] == 4096 for f in doc["files"])  # headers were read
    assert outcome.summary().startswith(f"restore plan for {replica_17.description}")
    assert not data.exists()
    empty = FileReplicaClient(tmp_path / "empty")
    skipped = restore(RestoreRequest(empty, dry_run=True, if_replica_exists=True))
    assert skipped.to_json() == {"status": "skipped: no backups",
                                 "replica": empty.description}


@pytest.mark.parametrize(("fields", "says"), [
    ({"txid": 3, "timestamp": "now"}, "give --txid or --timestamp, not both"),
    ({"generation": "0123456789abcdef", "txid": 3}, "--generation applies to Litestream 0.3"),
    ({"wal_index": 2}, "--index needs --generation"),
    ({"data_dir": "d", "name": "app.db"}, "to an output file or into a data directory"),
    ({"output": None}, "needs an output file (-o OUT) or a data directory"),
    ({"output": None, "data_dir": "d"}, "into a data directory needs the database name"),
])
def test_requests_that_mean_nothing_are_usage_errors(tmp_path: Path, fields: dict[str, object],
                                                     says: str) -> None:
    values = {"output": tmp_path / "out.db", **fields}
    if values.get("timestamp") == "now":
        values["timestamp"] = datetime.now(UTC)
    if isinstance(values.get("data_dir"), str):
        values["data_dir"] = tmp_path / str(values["data_dir"])
    with pytest.raises(QuietError, match=re.escape(says)) as e:
        RestoreRequest(FileReplicaClient(tmp_path / "r"), **values)  # type: ignore[arg-type]
    assert e.value.code == ExitCode.USAGE
    assert not (tmp_path / "out.db").exists()
