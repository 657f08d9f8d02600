"""GET /metrics on real mounts, scraped with httpx and read with prometheus_client's own
parser: the values follow commits and uploads, upload errors are counted by kind against a
real S3 server, a read replica serves its own metrics, and the secret guards them unless
`http.metrics-public: true`."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from litefs_py.storage.retry import SLOW_RETRY_ENV
from tests.mount.harness import LitefsMount
from tests.replica.harness import Cluster, wait_same_pos
from tests.replication.conftest import Bucket, Rig
from tests.replication.helpers import wait_until
from tests.s3_server import create_bucket, new_bucket_name

SECRET = "metrics-test-secret"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int, secret: str | None = SECRET) -> Samples:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def config(path: Path, port: int, **sections: object) -> Path:
    doc: dict[str, object] = {"http": {"addr": f"127.0.0.1:{port}", "secret": SECRET}}
    doc.update(sections)
    path.write_text(yaml.safe_dump(doc))
    return path


def commit(m: LitefsMount, *statements: str) -> None:
    con = sqlite3.connect(m.db("app.db"))
    for statement in statements:
        con.execute(statement)
        con.commit()
    con.close()


def test_primary_metrics_follow_commits_and_uploads(rig: Rig) -> None:
    port = free_port()
    m = rig.mount(config(rig.tmp / "litefs.yml", port,
                         replica={"type": "file", "path": str(rig.tmp / "bucket")}))
    m.start()
    commit(m, "CREATE TABLE t(v)", *["INSERT INTO t VALUES (randomblob(5000))"] * 4)
    txid = m.pos("app.db")[0]
    wait_until(lambda: value(scrape(port), "litefs_upload_txid", db="app.db",
                             replica=f"file://{rig.tmp / 'bucket' / 'app.db'}") == txid,
               15, what="the upload")
    before = scrape(port)
    assert value(before, "litefs_info", role="primary", version=before_version(before)) == 1
    assert value(before, "litefs_db_txid", db="app.db") == txid
    assert value(before, "litefs_db_commits_total", db="app.db") == txid
    assert value(before, "litefs_db_ltx_files", db="app.db") == txid
    ltx_dir = m.data_dir / "dbs" / "app.db" / "ltx"
    assert value(before, "litefs_db_ltx_bytes", db="app.db") == sum(
        p.stat().st_size for p in ltx_dir.iterdir())
    assert value(before, "litefs_db_size_bytes", db="app.db") == (
        m.data_dir / "dbs" / "app.db" / "database").stat().st_size
    assert value(before, "litefs_upload_lag_seconds", db="app.db") == 0
    assert value(before, "litefs_upload_spool_bytes", db="app.db") == 0
    assert value(before, "litefs_uploads_total", db="app.db") >= 1
    assert value(before, "litefs_quarantine_bytes", db="app.db") == 0
    assert value(before, "litefs_stream_subscribers") == 0
    assert ("process_resident_memory_bytes", frozenset()) in before

    commit(m, *["INSERT INTO t VALUES (randomblob(3000))"] * 3)
    after = scrape(port)
    assert value(after, "litefs_db_txid", db="app.db") == txid + 3
    assert value(after, "litefs_db_commits_total", db="app.db") == txid + 3
    assert value(after, "litefs_db_ltx_bytes", db="app.db") > value(before, "litefs_db_ltx_bytes",
                                                                     db="app.db")
    wait_until(lambda: value(scrape(port), "litefs_uploads_total", db="app.db")
               > value(before, "litefs_uploads_total", db="app.db"), 15, what="another upload")

    # The secret guards /metrics like the rest of the API.
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=headers, timeout=10)
        assert r.status_code == 401 and "http.metrics-public" in r.text
    assert "refused GET /metrics" in m.log()
    m.stop()
    # A restart counts commits from its own start; the TXID carries on.
    m.start()
    commit(m, "INSERT INTO t VALUES (1)")
    again = scrape(port)
    assert value(again, "litefs_db_txid", db="app.db") == txid + 4
    assert value(again, "litefs_db_commits_total", db="app.db") == 1


def before_version(samples: Samples) -> str:
    for name, labels in samples:
        if name == "litefs_info":
            return dict(labels)["version"]
    raise AssertionError("no litefs_info")


def test_metrics_public_needs_no_secret_but_the_api_still_does(rig: Rig) -> None:
    port = free_port()
    m = rig.mount(config(rig.tmp / "litefs.yml", port,
                         http={"addr": f"127.0.0.1:{port}", "secret": SECRET,
                               "metrics-public": True}))
    m.start()
    commit(m, "CREATE TABLE t(v)")
    assert value(scrape(port, secret=None), "litefs_db_txid", db="app.db") == 1
    r = httpx.get(f"http://127.0.0.1:{port}/info", timeout=10)
    assert r.status_code == 401


@pytest.mark.time_limit(90)
def test_upload_errors_are_counted_by_kind(bucket: Bucket, rig: Rig,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A bucket that does not exist yet: the errors show up under kind no_bucket, the spool
    and the lag grow; once the bucket exists the uploads catch up and the counter stays."""
    monkeypatch.setenv(SLOW_RETRY_ENV, "1")
    port = free_port()
    missing = new_bucket_name()
    m = rig.mount(config(rig.tmp / "litefs.yml", port,
                         replica={"url": f"s3://{missing}/backups?endpoint={bucket.endpoint}"}))
    m.start()
    commit(m, "CREATE TABLE t(v)", "INSERT INTO t VALUES (randomblob(2000))")
    failing = wait_until(
        lambda: (s := scrape(port)).get(("litefs_upload_errors_total",
                                         frozenset({("db", "app.db"), ("kind", "no_bucket")})),
                                        0) >= 2 and s,
        20, interval=0.3, what="no_bucket errors in the metrics")
    assert value(failing, "litefs_upload_failures_in_a_row", db="app.db") >= 2
    assert value(failing, "litefs_upload_spool_bytes", db="app.db") > 0
    assert value(failing, "litefs_upload_lag_seconds", db="app.db") > 0
    assert value(failing, "litefs_uploads_total", db="app.db") == 0
    create_bucket(bucket.endpoint, missing)
    done = wait_until(lambda: (s := scrape(port))[("litefs_uploads_total",
                                                   frozenset({("db", "app.db")}))] >= 1 and s,
                      20, interval=0.3, what="uploads after the bucket was created")
    assert value(done, "litefs_upload_errors_total", db="app.db", kind="no_bucket") >= 2
    wait_until(lambda: value(scrape(port), "litefs_upload_failures_in_a_row", db="app.db") == 0,
               10, what="the failure run to end")


def test_replica_serves_its_own_metrics(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        primary = cluster.primary(secret=SECRET)
        replica_port = free_port()
        replica = cluster.replica(secret=SECRET,
                                  extra={"http": {"addr": f"127.0.0.1:{replica_port}",
                                                  "secret": SECRET}})
        commit(primary, "CREATE TABLE t(v)", *["INSERT INTO t VALUES (randomblob(4000))"] * 3)
        txid, _ = wait_same_pos(primary, replica, "app.db")
        s = wait_until(lambda: (x := scrape(replica_port))[
            ("litefs_replica_lag_txids", frozenset({("db", "app.db")}))] == 0 and x,
                       15, what="the replica's metrics to catch up")
        assert ("litefs_info", frozenset({("role", "replica"),
                                          ("version", before_version(s))})) in s
        assert value(s, "litefs_db_txid", db="app.db") == txid
        assert value(s, "litefs_replica_primary_txid", db="app.db") == txid
        assert value(s, "litefs_replica_source", source="primary") == 1
        applied = value(s, "litefs_replica_applied_files_total")
        assert applied >= 1
        commit(primary, "INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)")
        wait_same_pos(primary, replica, "app.db")
        later = scrape(replica_port)
        assert value(later, "litefs_db_txid", db="app.db") == txid + 2
        assert value(later, "litefs_replica_applied_files_total") > applied
        # A replica serves /metrics only, and guards it with the secret too.
        r = httpx.get(f"http://127.0.0.1:{replica_port}/info", timeout=10)
        assert r.status_code == 404 and "read replica" in r.text
        r = httpx.get(f"http://127.0.0.1:{replica_port}/metrics", timeout=10)
        assert r.status_code == 401
        # The primary's scrape sees the replica streaming from it.
        assert value(scrape(cluster.port), "litefs_stream_subscribers") == 1
    finally:
        cluster.close()
