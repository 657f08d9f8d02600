"""The example web app (examples/webapp) under a real `litefs mount`: migrations as the first
exec step, the server as the last; a real HTTP client; what it wrote is in the LTX log and
the replica (S3 on moto), and survives an unmount and a cold restore into a new data
directory."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from litefs_py.store.ltx_log import read_log
from tests.s3_server import S3Bucket
from tests.webapp.harness import WEBAPP, NotesMount


def status(data_dir: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads((data_dir / "status.json").read_text())
    return doc


def wait_replicated(m: NotesMount, txid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            db = status(m.data_dir)["databases"]["store.db"]  # type: ignore[index]
            if int(db["replica"]["txid"], 16) >= txid:
                return
        except (FileNotFoundError, KeyError, ValueError):
            pass
        assert time.monotonic() < deadline, f"replica never reached TXID {txid:x}:\n{m.log()}"
        time.sleep(0.1)


def restore_rows(url: str, out: Path) -> list[tuple[str, str]]:
    """The notes in a database restored from the replica by `litefs restore`."""
    subprocess.run([sys.executable, "-m", "litefs_py", "restore", "-o", str(out), url],
                   check=True, capture_output=True, timeout=60)
    with sqlite3.connect(out) as con:
        return con.execute("SELECT author, body FROM notes ORDER BY id").fetchall()


def test_notes_app_under_litefs_survives_unmount_and_cold_restore(
        tmp_path: Path, s3_bucket: S3Bucket) -> None:
    url = s3_bucket.url("notes")
    first = NotesMount(tmp_path, url, name="first")
    with first:
        assert "schema version 0 -> 2" in first.log()
        with first.client() as c:
            h = c.get("/healthz").json()
            assert h["ok"] and h["schema_version"] == 2 and h["notes"] == 0
            created = []
            for i in range(3):
                r = c.post("/api/notes", json={"body": f"note {i}", "author": "api"})
                assert r.status_code == 201, r.text
                assert r.headers["location"] == f"/api/notes/{r.json()['id']}"
                created.append(r.json())
            # The HTML form, as a browser posts it: a 303 back to the page, which shows it.
            r = c.post("/notes", data={"author": "browser", "body": "<b>from the form</b>"})
            assert r.status_code == 303 and r.headers["location"] == "/"
            page = c.get("/")
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            assert "&lt;b&gt;from the form&lt;/b&gt;" in page.text  # escaped
            # Read one, delete one, and the deleted one is gone.
            assert c.get(f"/api/notes/{created[0]['id']}").json() == created[0]
            assert c.delete(f"/api/notes/{created[1]['id']}").status_code == 204
            assert c.get(f"/api/notes/{created[1]['id']}").status_code == 404
            assert c.delete(f"/api/notes/{created[1]['id']}").status_code == 404
            listed = c.get("/api/notes").json()
            assert [n["body"] for n in listed] == ["<b>from the form</b>", "note 2", "note 0"]
            # Mistakes get a status and a reason, not a traceback.
            assert c.post("/api/notes", json={"author": "x"}).status_code == 400
            bad = c.put("/api/notes")
            assert bad.status_code == 405 and bad.headers["allow"] == "GET, HEAD, POST"
            assert c.get("/api/notes?limit=0").status_code == 400
            assert c.get("/nope").status_code == 404
            txid = int(c.get("/healthz").json()["litefs_txid"], 16)
        # Every write is a transaction in the local LTX log...
        log = read_log(first.data_dir / "dbs" / "store.db" / "ltx")
        assert log and log[-1].range.max_txid == txid
        # ...and reaches the replica while the app runs.
        wait_replicated(first, txid)
        expected = [("api", "note 0"), ("api", "note 2"), ("browser", "<b>from the form</b>")]
        assert restore_rows(s3_bucket.url("notes/store.db"), tmp_path / "live.db") == expected
    assert first.returncode == 0, first.log()  # SIGTERM: the app stops cleanly, so does litefs
    assert not first.mounted()

    # A new machine: empty data directory. The mount restores store.db from the replica
    # before the exec steps run; the migration finds the schema current; the notes are there.
    second = NotesMount(tmp_path, url, name="second")
    with second:
        assert "schema already at version 2" in second.log(), second.log()
        assert "restored" in second.log()
        with second.client() as c:
            assert [n["body"] for n in c.get("/api/notes").json()] == [
                "<b>from the form</b>", "note 2", "note 0"]
            r = c.post("/api/notes", json={"body": "after the restore"})
            assert r.status_code == 201 and r.json()["author"] == "anonymous"
            # The history goes on from the restored position.
            assert int(c.get("/healthz").json()["litefs_txid"], 16) == txid + 1
    assert second.returncode == 0, second.log()


def run_migrate(db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(WEBAPP / "migrate.py")], capture_output=True,
                          text=True, timeout=60, env={"NOTES_DB": str(db), "PATH": ""})


def test_migrate_is_idempotent_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    first = run_migrate(db)
    assert first.returncode == 0 and "schema version 0 -> 2" in first.stdout, first
    again = run_migrate(db)
    assert again.returncode == 0 and "already at version 2" in again.stdout, again
    with sqlite3.connect(db) as con:
        assert [r[0] for r in con.execute("SELECT version FROM schema_migrations")] == [1, 2]
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        con.execute("INSERT INTO schema_migrations(version, name) VALUES (3, 'from the future')")
    newer = run_migrate(db)
    assert newer.returncode == 1 and "newer than this code knows" in newer.stderr, newer
