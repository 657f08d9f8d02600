"""Taking over a LiteFS data directory (store/litefs_import.py): LiteFS's own fixture data
directory, and LiteFS-style histories written by the independent v1 writer of tests/ltx."""

from __future__ import annotations

import io
import logging
import shutil
import sqlite3
from pathlib import Path

import pytest

import litefs_py.store.litefs_import as litefs_import
from litefs_py.ltx import Decoder, Version, database_checksum, detect_version, format_filename
from litefs_py.store.recovery import DatabaseDivergedError
from litefs_py.store.store import Store
from litefs_py.types import FileKind
from tests.ltx.helpers import raw_header, ref_encode_v1
from tests.store.helpers import assert_captured
from tests.store.sqlite_vfs import StoreVFS, execute
from tests.vectors_path import VECTORS

LITEFS_DIR = VECTORS / "litefs" / "store" / "open-and-write-snapshot"
LITEFS_TXID, LITEFS_CHECKSUM = 0xD, 0xFE3831A381C602B9
PS = 4096


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="litefs.store")
    return caplog


def litefs_copy(data: Path) -> Path:
    """A copy of LiteFS's data directory vector (one database, sqlite.db, at TXID 13)."""
    if not (LITEFS_DIR / "dbs").is_dir():
        raise FileNotFoundError(f"missing test vector {LITEFS_DIR} (tests/vectors/README.md)")
    shutil.copytree(LITEFS_DIR, data, dirs_exist_ok=True)
    return data / "dbs" / "sqlite.db"


def quarantine_entries(root: Path, reason: str) -> list[Path]:
    return sorted((root / "quarantine").glob(f"*Z-{reason}-*"))


def write_litefs_history(root: Path, statements: list[str], *, compress: bool = True) -> None:
    """A LiteFS-style database directory: `database` after every statement, and one LTX v1
    file per statement (the first a snapshot), written by the reference v1 writer."""
    (root / "ltx").mkdir(parents=True)
    work = root.parent / f"{root.name}.work"
    con = sqlite3.connect(work)
    con.execute("PRAGMA journal_mode=DELETE")
    before: dict[int, bytes] = {}
    checksum = 0
    for txid, statement in enumerate(statements, start=1):
        con.execute(statement)
        con.commit()
        data = work.read_bytes()
        pages = {i + 1: data[i * PS:(i + 1) * PS] for i in range(len(data) // PS)}
        changed = [(p, d) for p, d in sorted(pages.items()) if txid == 1 or before.get(p) != d]
        post = database_checksum(io.BytesIO(data), PS)
        header = raw_header(page_size=PS, commit=len(pages), min_txid=txid, max_txid=txid,
                            timestamp=1_700_000_000_000 + txid, flags=1 if compress else 0,
                            pre_apply_checksum=0 if txid == 1 else checksum)
        (root / "ltx" / format_filename(txid, txid)).write_bytes(
            ref_encode_v1(header, changed, post, compress=compress))
        before, checksum = pages, post
    con.close()
    shutil.move(work, root / "database")


def test_litefs_vector_is_served_at_its_txid_and_continues(
        vfs: StoreVFS, store: Store, logs: pytest.LogCaptureFixture) -> None:
    root = litefs_copy(store.data_dir)
    original = (root / "ltx" / "000000000000000d-000000000000000d.ltx").read_bytes()
    database = (root / "database").read_bytes()
    store.open()
    db = store.dbs["sqlite.db"]
    assert db.pos == (LITEFS_TXID, LITEFS_CHECKSUM)
    assert "importing a LiteFS data directory" in logs.text
    # The record is v3 now, with LiteFS's header fields and checksums; the database is as
    # LiteFS left it; LiteFS's file is in the quarantine, byte for byte.
    assert [tuple(r) for r in db.ltx] == [(LITEFS_TXID, LITEFS_TXID)]
    with db.ltx.open(db.ltx.last_range()) as f:  # type: ignore[arg-type]
        assert detect_version(f) is Version.V3
        dec = Decoder(f)
        assert [p for p, _ in dec.pages()] == [1, 7, 8]
        assert dec.header.pre_apply_checksum == 0x9C74A15B4E4F246C
    assert db.path(FileKind.DATABASE).read_bytes() == database
    kept = quarantine_entries(root, "litefs-v1-ltx")
    assert len(kept) == 1
    assert (kept[0] / "000000000000000d-000000000000000d.ltx").read_bytes() == original
    # The next commit is TXID 14, chained to LiteFS's TXID 13.
    con = vfs.connect("sqlite.db")
    execute(con, "INSERT INTO User VALUES ('u2', 'someone@example.com', 1, 1)")
    con.close()
    assert db.txid == LITEFS_TXID + 1
    nxt = db.ltx.last()
    assert nxt is not None and nxt.header.min_txid == LITEFS_TXID + 1
    assert nxt.header.pre_apply_checksum == LITEFS_CHECKSUM
    store.close()
    # A second start finds nothing to import and resumes where it was.
    logs.clear()
    again = Store(store.data_dir)
    again.open()
    assert again.dbs["sqlite.db"].txid == LITEFS_TXID + 1
    assert "importing" not in logs.text
    assert len(quarantine_entries(root, "litefs-v1-ltx")) == 1
    again.close()


@pytest.mark.parametrize("compress", [True, False])
def test_litefs_history_is_kept(tmp_path: Path, compress: bool) -> None:
    root = tmp_path / "data" / "dbs" / "app.db"
    write_litefs_history(root, [
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v)",
        *[f"INSERT INTO t(v) VALUES (randomblob({3000 + i}))" for i in range(5)],
        "UPDATE t SET v = 'small' WHERE id = 2",
        "DELETE FROM t WHERE id = 3",
    ])
    originals = {p.name: p.read_bytes() for p in (root / "ltx").iterdir()}
    store = Store(tmp_path / "data")
    store.open()
    db = store.dbs["app.db"]
    assert db.txid == 8
    assert [tuple(r) for r in db.ltx] == [(i, i) for i in range(1, 9)]
    assert_captured(db)  # the converted log replays, chained, to exactly the database
    (kept,) = quarantine_entries(root, "litefs-v1-ltx")
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == originals
    store.close()


def test_an_interrupted_import_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data" / "dbs" / "app.db"
    write_litefs_history(root, ["CREATE TABLE t(v)",
                                *[f"INSERT INTO t VALUES ({i})" for i in range(5)]])
    originals = {p.name: p.read_bytes() for p in (root / "ltx").iterdir()}
    real = litefs_import._convert
    calls = []

    def crash_on_third(path: Path, staging: Path) -> None:
        calls.append(path)
        if len(calls) == 3:
            (path.parent / (path.name + ".litefs-import.tmp")).write_bytes(b"half written")
            raise KeyboardInterrupt  # the process dies here
        real(path, staging)

    monkeypatch.setattr(litefs_import, "_convert", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        Store(tmp_path / "data").open()
    monkeypatch.setattr(litefs_import, "_convert", real)
    store = Store(tmp_path / "data")
    store.open()
    db = store.dbs["app.db"]
    assert db.txid == 6
    assert_captured(db)
    assert not list((root / "ltx").glob("*.tmp"))
    (kept,) = quarantine_entries(root, "litefs-v1-ltx")  # one entry, every original
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == originals
    store.close()


def test_litefs_unfinished_ltx_file_is_quarantined(tmp_path: Path) -> None:
    root = litefs_copy(tmp_path / "data")
    unfinished = root / "ltx" / "000000000000000e-000000000000000e.ltx.tmp"
    unfinished.write_bytes(b"LTX1 cut short")
    store = Store(tmp_path / "data")
    store.open()
    assert store.dbs["sqlite.db"].txid == LITEFS_TXID
    (kept,) = quarantine_entries(root, "unfinished-ltx")
    assert kept.read_bytes() == b"LTX1 cut short" and not unfinished.exists()
    store.close()


def test_litefs_crash_before_the_database_write_is_repaired(
        tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    """LiteFS writes a transaction's LTX file before the database and re-applies the last
    file when it starts: a data directory left by such a crash is repaired the same way."""
    root = litefs_copy(tmp_path / "data")
    good = (root / "database").read_bytes()
    with open(root / "database", "r+b") as f:  # page 7 is in TXID 13: not written yet
        f.seek(6 * PS)
        f.write(bytes(PS))
    damaged = (root / "database").read_bytes()
    store = Store(tmp_path / "data")
    store.open()
    assert store.dbs["sqlite.db"].pos == (LITEFS_TXID, LITEFS_CHECKSUM)
    assert (root / "database").read_bytes() == good
    (kept,) = quarantine_entries(root, "before-reapply")
    assert kept.read_bytes() == damaged
    assert "re-applied the last LTX record after an interrupted commit" in logs.text
    store.close()


def test_litefs_database_changed_elsewhere_is_refused_and_left_as_it_is(
        tmp_path: Path) -> None:
    root = litefs_copy(tmp_path / "data")
    with open(root / "database", "r+b") as f:  # page 3 is not in TXID 13: re-applying is no fix
        f.seek(2 * PS + 200)
        f.write(b"changed outside LiteFS")
    damaged = (root / "database").read_bytes()
    store = Store(tmp_path / "data")
    with pytest.raises(DatabaseDivergedError, match="litefs recover"):
        store.open()
    assert (root / "database").read_bytes() == damaged
    assert not quarantine_entries(root, "before-reapply")  # nothing was tried on it
    store.close()
