"""CPython's own `test.test_sqlite3` suite passes with its temporary files on the mount.

The suite comes with the interpreter (`Lib/test/test_sqlite3`, part of CPython's `test`
package): a pyenv or python.org build includes it; Debian's and Ubuntu's python3 have it in
`libpython3.X-testsuite` (under /usr/lib/python3.X/test, on the venv's path since the venv's
base is /usr), which `bash scripts/setup.sh --test` installs when the venv runs that python.
`cpython_sqlite3_runner.py` runs it in a subprocess and reports per-test results as JSON.
It runs twice, with the same interpreter:

- baseline: working directory and `tempfile.tempdir` in a plain temporary directory;
- mount: working directory and `tempfile.tempdir` on the litefs mount, so the suite's
  databases (`os_helper.TESTFN`, relative to the working directory) and its
  `tempfile.mkdtemp()` directories are created there. ($TMPDIR would not do: `tempfile`'s
  probe write is refused by the mount and it falls back to /tmp; see the runner.)

The failing/erroring tests must be the same in both runs, except for `MOUNT_ONLY_FAILURES`,
each with the reason the mount differs by design; those must fail on the mount for exactly
that reason (the mount refusing `mkdir`), so the list cannot silently go stale. Afterwards the
mount must still serve a new database, its log must hold no traceback, and every database
the suite created must have an LTX chain that `litefs ltx verify` accepts and whose checksums
link up.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from litefs_py.ltx import (
    EMPTY_DATABASE_CHECKSUM,
    Decoder,
    parse_filename,
)
from litefs_py.store.ltx_log import LoggedRecord, read_log
from tests.mount.harness import LitefsMount
from tests.needs import cpython_suite_hint, missing


def _has_suite() -> bool:
    """Found, not imported: the suite runs only in the subprocesses. Either the interpreter's
    own `test.test_sqlite3`, or the copy `scripts/setup.sh --test` fetched into the venv for
    Debian's python3, which ships `test.support` (libpython3.X-testsuite) but not the sqlite3
    tests; the runner then adds that directory to the `test` package."""
    try:
        if importlib.util.find_spec("test.test_sqlite3") is not None:
            return True
        return importlib.util.find_spec("test.support") is not None and (
            Path(sys.prefix) / "cpython-tests/test/test_sqlite3/__init__.py").is_file()
    except ImportError:
        return False


@pytest.fixture(autouse=True)
def _cpython_test_package() -> None:
    if not _has_suite():
        missing(f"CPython's test.test_sqlite3 for {sys.executable} ({sys.base_prefix})",
                cpython_suite_hint())


RUNNER = Path(__file__).with_name("cpython_sqlite3_runner.py")
LITEFS = Path(sys.executable).with_name("litefs")
SUITE_TIMEOUT = 120.0
MIN_TESTS_USING_MOUNT = 15  # 20 with CPython 3.11.7's suite

_MKDIR_REASON = ("uses os_helper.temp_dir(), i.e. tempfile.mkdtemp(), which is on the mount "
                 "here, to get a directory to open as a database (expecting SQLITE_CANTOPEN): "
                 "the mount refuses mkdir (EPERM) by design, it is a flat directory of "
                 "databases")
# test id -> why it fails on the mount but not on a plain directory
MOUNT_ONLY_FAILURES = {
    "test.test_sqlite3.test_dbapi.ModuleTests.test_error_code_on_exception": _MKDIR_REASON,
    "test.test_sqlite3.test_dbapi.ConnectionTests.test_connection_bad_reinit": _MKDIR_REASON,
}


def run_suite(cwd: Path, result: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(RUNNER), "--tempdir-here", str(result)], cwd=cwd,
                          capture_output=True, text=True, errors="replace",
                          timeout=SUITE_TIMEOUT, check=False)
    if not result.exists():
        pytest.fail(f"the suite in {cwd} wrote no result (exit {proc.returncode}):\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    doc: dict[str, Any] = json.loads(result.read_text())
    doc["output"] = proc.stderr
    doc["returncode"] = proc.returncode
    return doc


def bad(doc: dict[str, Any]) -> set[str]:
    return set(doc["failures"]) | set(doc["errors"])


def ltx_files(db_dir: Path) -> list[LoggedRecord]:
    ltx_dir = db_dir / "ltx"
    if not ltx_dir.is_dir():
        return []
    return read_log(ltx_dir)


def check_chain(files: list[LoggedRecord]) -> None:
    """TXIDs 1..N without gaps; each file's pre-apply checksum is the previous post-apply one."""
    prev_max, prev_checksum = 0, None
    for p in files:
        lo, hi = parse_filename(p.name)
        assert lo == prev_max + 1, f"{p}: TXID gap after {prev_max}"
        with p.open() as f:
            dec = Decoder(f, name=str(p))
            trailer = dec.verify()
        h = dec.header
        if lo == 1:
            assert h.pre_apply_checksum == 0, f"{p}: a first LTX file must be a snapshot"
        else:
            assert h.pre_apply_checksum == prev_checksum, f"{p}: checksum chain broken"
        prev_max, prev_checksum = hi, trailer.post_apply_checksum


def test_cpython_sqlite3_suite_on_mount(litefs: LitefsMount, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    baseline = run_suite(plain, tmp_path / "baseline.json")
    assert baseline["tests_run"] > 400, baseline["output"][-4000:]

    mounted = run_suite(litefs.mount_dir, tmp_path / "mount.json")
    assert mounted["cwd"] == mounted["tempdir"] == str(litefs.mount_dir)
    assert mounted["tests_run"] == baseline["tests_run"]
    assert mounted["skipped"] == baseline["skipped"]
    # Not vacuous: these tests connected to a database file on the mount (or made a directory).
    assert set(mounted["cwd_use"]) == set(baseline["cwd_use"])
    assert len(mounted["cwd_use"]) >= MIN_TESTS_USING_MOUNT, sorted(mounted["cwd_use"])
    assert set(MOUNT_ONLY_FAILURES) <= set(mounted["cwd_use"])

    # The same tests fail, apart from those that differ by design, and only for that reason.
    base_bad, mount_bad = bad(baseline), bad(mounted)
    assert base_bad & set(MOUNT_ONLY_FAILURES) == set(), "skip list entry fails on plain dir"
    unexpected = {t: (mounted["failures"].get(t) or mounted["errors"][t])
                  for t in mount_bad - base_bad - set(MOUNT_ONLY_FAILURES)}
    assert not unexpected, "fail on the mount only:\n" + "\n".join(
        f"--- {t}\n{tb}" for t, tb in unexpected.items())
    assert base_bad - mount_bad == set(), "fail on a plain directory only"
    for t in MOUNT_ONLY_FAILURES:
        tb = mounted["errors"].get(t, "")
        assert "PermissionError: [Errno 1] Operation not permitted" in tb, (
            f"{t} no longer fails on the mount for the stated reason "
            f"(update MOUNT_ONLY_FAILURES):\n{tb or mounted['failures'].get(t)}")
        assert "mkdtemp" in tb, tb

    # The mount is still healthy: a new database commits and gets its position.
    con = sqlite3.connect(litefs.db("after.db"))
    try:
        con.execute("CREATE TABLE t(x)")
        con.execute("INSERT INTO t VALUES (1)")
        con.commit()
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        con.close()
    assert litefs.pos("after.db")[0] == 2  # CREATE TABLE autocommits, then the INSERT
    # The suite deleted every database it made, through the mount.
    assert sorted(os.listdir(litefs.mount_dir)) == ["after.db", "after.db-pos"]

    assert litefs.stop() == 0, litefs.log()[-4000:]
    log = litefs.log()
    assert "Traceback" not in log and "internal error" not in log, log[-8000:]
    assert "refusing mkdir" in log  # the MOUNT_ONLY_FAILURES, as the mount saw them

    # LTX files for the databases the suite created, and every chain verifies.
    dbs_dir = litefs.data_dir / "dbs"
    db_dirs = {os.fsencode(p.name): p for p in dbs_dir.iterdir() if p.is_dir()}
    created = {os.fsencode(mounted["testfn"])}
    if mounted["testfn_undecodable"] is not None:
        created.add(os.fsencode(mounted["testfn_undecodable"]))
    assert created <= set(db_dirs), sorted(db_dirs)
    all_files: list[LoggedRecord] = []
    for name, db_dir in db_dirs.items():
        files = ltx_files(db_dir)
        assert files or name not in created, f"{name!r}: no LTX files"
        check_chain(files)
        if name in created:
            # The suite unlinked it at the end: the last LTX file records the deletion.
            with files[-1].open() as f:
                dec = Decoder(f, name=str(files[-1]))
                trailer = dec.verify()
            assert dec.header.commit == 0
            assert trailer.post_apply_checksum == EMPTY_DATABASE_CHECKSUM
        all_files += files
    segments = dict.fromkeys(str(r.path) for r in all_files)
    verify = subprocess.run([str(LITEFS), "ltx", "verify", "-q", *segments],
                            capture_output=True, text=True, errors="replace", timeout=60,
                            check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
