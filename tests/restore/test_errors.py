"""Every way a restore can fail says what, where and what to do, and leaves OUT untouched
(no OUT.tmp either). Real directory replicas (the project's file client) and a real S3
server; objects are damaged on disk or in the bucket, nothing is mocked."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest

from litefs_py.errors import ExitCode
from litefs_py.ltx import PageEncoding, encode_snapshot
from litefs_py.replica_clients import client_for_url
from litefs_py.replication import restore_database
from litefs_py.replication.restore import OutputExistsError
from litefs_py.replication.restore_plan import (
    ChainGapError,
    CorruptObjectError,
    MixedPageSizeError,
    NoSnapshotError,
    TxidNotFoundError,
)
from litefs_py.storage.file import FileReplicaClient
from tests.s3_server import S3Bucket, boto_client, upload_tree

from .conftest import CLI_ENV, VECTORS, dump_sha256, expected, run_cli

EXP = expected("ls-0.5.17-4k")


def _untouched(out: Path, before: bytes | None) -> None:
    assert not Path(f"{out}.tmp").exists()
    if before is None:
        assert not out.exists()
    else:
        assert out.read_bytes() == before


def _path(client: FileReplicaClient, level: int, lo: int, hi: int) -> Path:
    return client.ltx_path(level, lo, hi)


def test_gap_names_both_sides(replica_17: FileReplicaClient, tmp_path: Path) -> None:
    # L0 b is also inside L1 a-c: remove both, and nothing bridges TXID b.
    _path(replica_17, 0, 0xB, 0xB).unlink()
    _path(replica_17, 1, 0xA, 0xC).unlink()
    out = tmp_path / "out.db"
    with pytest.raises(ChainGapError) as info:
        restore_database(replica_17, out)
    msg = str(info.value)
    assert "TXID 000000000000000b missing between TXIDs 000000000000000a and " \
           "000000000000000c" in msg
    assert "level 0 file 000000000000000a-000000000000000a.ltx" in msg
    assert "level 0 file 000000000000000c-000000000000000c.ltx" in msg
    assert "--txid a" in msg
    assert "transaction not available" not in msg
    assert info.value.code == ExitCode.FAILED
    _untouched(out, None)
    # The fix the message names works: the newest complete state.
    res = run_cli("-o", str(out), "--txid", "a", str(replica_17.root))
    assert res.exit_code == 0, res.output
    # A target past the gap fails the same way (a TXID inside the gap too).
    with pytest.raises(ChainGapError):
        restore_database(replica_17, tmp_path / "c.db", txid=0xC)


def test_covered_l0_deleted_still_restores(replica_17: FileReplicaClient,
                                          tmp_path: Path) -> None:
    _path(replica_17, 0, 0xB, 0xB).unlink()
    out = tmp_path / "out.db"
    restore_database(replica_17, out)
    assert dump_sha256(out) == EXP["dump_sha256"]


def test_no_snapshot(replica_17: FileReplicaClient, tmp_path: Path) -> None:
    for level in (0, 1, 2, 9):
        _path(replica_17, level, 1, 1).unlink()
    out = tmp_path / "out.db"
    res = run_cli("-o", str(out), str(replica_17.root))
    assert res.exit_code == 1
    assert "there is no snapshot (level 9)" in res.output
    assert "starts at TXID 0000000000000002, not 1" in res.output
    _untouched(out, None)
    with pytest.raises(NoSnapshotError):
        restore_database(replica_17, out)


def _damage(victim: Path, damage: str) -> None:
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = data[:0]
    victim.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_corrupt_object_refused(replica_17: FileReplicaClient, tmp_path: Path,
                                damage: str) -> None:
    """L1 2-9 damaged and its level-0 files gone: nothing else holds TXIDs 2..9. The refusal
    names the object and the newest state that can be restored, with the flag for it."""
    victim = _path(replica_17, 1, 2, 9)
    _damage(victim, damage)
    for txid in range(2, 10):
        _path(replica_17, 0, txid, txid).unlink()
    out = tmp_path / "sub" / "out.db"
    res = run_cli("-o", str(out), str(replica_17.root))
    assert res.exit_code == 1, res.output
    assert f"object {victim} is corrupt: " in res.output
    assert "covers TXIDs 0000000000000002..0000000000000009" in res.output
    assert "the newest state that can be restored is TXID 0000000000000001" in res.output
    assert "--txid 1" in res.output
    _untouched(out, None)
    # An existing database survives a failed --force restore byte for byte.
    out.write_bytes(b"keep me")
    res = run_cli("-o", str(out), "--force", str(replica_17.root))
    assert res.exit_code == 1
    _untouched(out, b"keep me")
    # The flag the message offers works.
    res = run_cli("-o", str(tmp_path / "early.db"), "-txid", "1", str(replica_17.root))
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_corrupt_object_covered_by_others_is_restored_around(
        replica_17: FileReplicaClient, tmp_path: Path, damage: str) -> None:
    """L1 2-9 damaged while the level-0 files it merged are still there: the latest state
    is restored from them, every object verified, and the result names what it avoided."""
    victim = _path(replica_17, 1, 2, 9)
    _damage(victim, damage)
    out = tmp_path / "out.db"
    res = run_cli("--json", "-o", str(out), str(replica_17.root))
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert list(doc["avoided"]) == [str(victim)], doc
    assert doc["txid"] == "000000000000000c"
    assert dump_sha256(out) == EXP["dump_sha256"]
    assert not Path(f"{out}.tmp").exists()


def test_a_damaged_newest_object_is_never_dropped_silently(replica_17: FileReplicaClient,
                                                          tmp_path: Path) -> None:
    """Without the damaged objects the newest TXID would be b: a restore of "the latest"
    must not quietly give b; it refuses and names b as what can be restored."""
    _damage(_path(replica_17, 0, 0xC, 0xC), "truncate")
    _damage(_path(replica_17, 1, 0xA, 0xC), "flip")
    out = tmp_path / "out.db"
    res = run_cli("-o", str(out), str(replica_17.root))
    assert res.exit_code == 1, res.output
    assert "the newest state that can be restored is TXID 000000000000000b" in res.output
    assert "--txid b" in res.output
    _untouched(out, None)
    res = run_cli("-o", str(out), "--txid", "b", str(replica_17.root))
    assert res.exit_code == 0, res.output


def test_txid_too_high(replica_17: FileReplicaClient, tmp_path: Path) -> None:
    out = tmp_path / "out.db"
    with pytest.raises(TxidNotFoundError) as info:
        restore_database(replica_17, out, txid=0x20)
    assert "the latest backed-up TXID is 000000000000000c" in str(info.value)
    assert info.value.code == ExitCode.NOT_FOUND
    _untouched(out, None)


def test_output_exists(replica_17: FileReplicaClient, tmp_path: Path) -> None:
    out = tmp_path / "app.db"
    out.write_bytes(b"old database")
    Path(f"{out}-wal").write_bytes(b"old wal")
    Path(f"{out}-shm").write_bytes(b"old shm")
    with pytest.raises(OutputExistsError) as info:
        restore_database(replica_17, out)
    assert "--force" in str(info.value) and "--if-db-not-exists" in str(info.value)
    _untouched(out, b"old database")
    res = run_cli("-o", str(out), str(replica_17.root))
    assert res.exit_code == 1
    res = run_cli("-if-db-not-exists", "-o", str(out), str(replica_17.root))
    assert res.exit_code == 0 and "already exists" in res.output
    _untouched(out, b"old database")
    # --force replaces it, and removes the old WAL that SQLite would otherwise replay onto it.
    res = run_cli("--force", "-o", str(out), str(replica_17.root))
    assert res.exit_code == 0, res.output
    assert not Path(f"{out}-wal").exists() and not Path(f"{out}-shm").exists()
    assert dump_sha256(out) == EXP["dump_sha256"]


def test_stale_tmp_removed(replica_17: FileReplicaClient, tmp_path: Path) -> None:
    out = tmp_path / "app.db"
    Path(f"{out}.tmp").write_bytes(b"left by a crash" * 1000)
    restore_database(replica_17, out)
    assert dump_sha256(out) == EXP["dump_sha256"]
    assert not Path(f"{out}.tmp").exists()


# --- replicas written here with the project's encoder -----------------------------------------


def _db_bytes(tmp_path: Path, name: str, page_size: int, rows: int) -> bytes:
    path = tmp_path / name
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA page_size={page_size}")
    conn.execute("CREATE TABLE t(x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(str(i) * 50,) for i in range(rows)])
    conn.commit()
    conn.close()
    return path.read_bytes()


def _snapshot(db: bytes, page_size: int, txid: int) -> tuple[bytes, int]:
    buf = io.BytesIO()
    _, _, ck = encode_snapshot(io.BytesIO(db), buf, page_size=page_size, txid=txid,
                               timestamp=1_767_225_600_000 + txid, no_checksum=True,
                               page_encoding=PageEncoding.LZ4_BLOCK)
    return buf.getvalue(), ck


def test_post_apply_checksum_metadata(tmp_path: Path) -> None:
    db = _db_bytes(tmp_path, "a.db", 4096, 300)
    data, ck = _snapshot(db, 4096, 1)
    good = FileReplicaClient(tmp_path / "good")
    good.write_ltx(9, 1, 1, data, {"litefs-post-apply-checksum": f"{ck:016x}"})
    result = restore_database(good, tmp_path / "good.db")
    assert result.checksums_verified == 1 and result.checksum == ck
    assert (tmp_path / "good.db").read_bytes() == db
    bad = FileReplicaClient(tmp_path / "bad")
    bad.write_ltx(9, 1, 1, data, {"litefs-post-apply-checksum": f"{ck ^ 1:016x}"})
    out = tmp_path / "bad.db"
    with pytest.raises(CorruptObjectError) as info:
        restore_database(bad, out)
    assert "litefs-post-apply-checksum" in str(info.value)
    assert f"{ck:016x}" in str(info.value)
    _untouched(out, None)


def test_mixed_page_sizes(tmp_path: Path) -> None:
    big = _db_bytes(tmp_path, "big.db", 4096, 10)
    small = _db_bytes(tmp_path, "small.db", 1024, 10)
    client = FileReplicaClient(tmp_path / "replica")
    client.write_ltx(9, 1, 1, _snapshot(big, 4096, 1)[0], {})
    # A file of another database (1 KiB pages) continuing the chain.
    client.write_ltx(0, 2, 2, _snapshot(small, 1024, 2)[0].replace(
        (1).to_bytes(8, "big") + (2).to_bytes(8, "big"),
        (2).to_bytes(8, "big") + (2).to_bytes(8, "big"), 1), {})
    out = tmp_path / "out.db"
    res = run_cli("--dry-run", str(client.root))
    assert res.exit_code == 1
    assert "mix page sizes" in res.output and "1024" in res.output
    with pytest.raises(MixedPageSizeError):
        restore_database(client, out)
    _untouched(out, None)


# --- the same failures through the S3 client ------------------------------------------------


@pytest.fixture
def bucket_17(s3_bucket: S3Bucket) -> S3Bucket:
    upload_tree(s3_bucket.endpoint, s3_bucket.name, VECTORS / "ls-0.5.17-4k" / "bucket",
                VECTORS / "ls-0.5.17-4k" / "objects.json")
    return s3_bucket


def test_s3_gap_and_corruption(bucket_17: S3Bucket, tmp_path: Path) -> None:
    s3 = boto_client(bucket_17.endpoint)
    s3.delete_object(Bucket=bucket_17.name, Key="app.db/0000/000000000000000b-000000000000000b.ltx")
    s3.delete_object(Bucket=bucket_17.name, Key="app.db/0001/000000000000000a-000000000000000c.ltx")
    out = tmp_path / "out.db"
    res = run_cli("-o", str(out), bucket_17.url("app.db"))
    assert res.exit_code == 1
    assert "TXID 000000000000000b missing" in res.output
    assert "key app.db/0000/000000000000000a-000000000000000a.ltx" in res.output
    assert "key app.db/0000/000000000000000c-000000000000000c.ltx" in res.output
    _untouched(out, None)
    key = "app.db/0001/0000000000000002-0000000000000009.ltx"
    body = bytearray(s3.get_object(Bucket=bucket_17.name, Key=key)["Body"].read())
    body[5000] ^= 0xFF
    s3.put_object(Bucket=bucket_17.name, Key=key, Body=bytes(body))
    # The level-0 files 2..9 still cover the damaged L1 file: restored around it.
    client = client_for_url(bucket_17.url("app.db"), env=CLI_ENV)
    result = restore_database(client, out, txid=9)
    assert list(result.avoided) == [key]
    assert dump_sha256(out) == EXP["txid_checks"][4]["dump_sha256"]
    out.unlink()
    # Without level-0 TXID 7 nothing covers it: refused, and the newest state offered.
    s3.delete_object(Bucket=bucket_17.name, Key="app.db/0000/0000000000000007-0000000000000007.ltx")
    res = run_cli("-o", str(out), "--txid", "a", bucket_17.url("app.db"))
    assert res.exit_code == 1
    assert f"object {key} is corrupt" in res.output
    assert "the newest state that can be restored is TXID 0000000000000006" in res.output
    assert "--txid 6" in res.output
    _untouched(out, None)
    restore_database(client, out, txid=6)
    assert dump_sha256(out) == EXP["txid_checks"][1]["dump_sha256"]


def test_missing_parent_directories(replica_17: FileReplicaClient, tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "c" / "app.db"
    res = run_cli("-o", str(out), f"file://{replica_17.root}")
    assert res.exit_code == 0, res.output
    assert dump_sha256(out) == EXP["dump_sha256"]


def test_boot_script_spellings_real_entry_point(tmp_path: Path) -> None:
    """The installed `litefs` program, as a Litestream-era boot script calls it."""
    import subprocess
    import sys

    litefs = str(Path(sys.executable).parent / "litefs")
    out = tmp_path / "data" / "app.db"
    empty = tmp_path / "empty-replica"
    proc = subprocess.run([litefs, "restore", "-if-db-not-exists", "-if-replica-exists", "-o",
                           str(out), f"file://{empty}"], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "no backups found" in proc.stdout
    # An existing database: exit 0 before the replica is even contacted (no network needed).
    out.parent.mkdir(parents=True)
    out.write_bytes(b"db")
    proc = subprocess.run([litefs, "restore", "-if-db-not-exists", "-o", str(out),
                           "s3://bucket/app.db?endpoint=127.0.0.1:9"], capture_output=True,
                          text=True, timeout=30, env={**CLI_ENV, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "already exists" in proc.stdout


@pytest.mark.parametrize("damage", ["wal-frame", "lz4"])
def test_litestream_03_damage_refused(tmp_path: Path, damage: str) -> None:
    """A damaged 0.3 segment is an error naming it, not a silently older database."""
    import shutil

    import lz4.frame

    root = tmp_path / "replica"
    shutil.copytree(VECTORS / "ls-0.3.13-4k" / "bucket" / "store.db", root)
    gen = root / "generations" / "b296ecc375fc6323" / "wal"
    victim = gen / "00000001_00001038.wal.lz4"
    raw = victim.read_bytes()
    if damage == "wal-frame":
        wal = bytearray(lz4.frame.decompress(raw))
        wal[4120 * 3 + 500] ^= 0x01  # inside the 4th frame's page: its checksum breaks
        victim.write_bytes(lz4.frame.compress(bytes(wal)))
    else:
        victim.write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "out.db"
    res = run_cli("-o", str(out), str(root))
    assert res.exit_code == 1, res.output
    assert "generations/b296ecc375fc6323/wal/00000001_00001038.wal.lz4 is corrupt" in res.output
    _untouched(out, None)
    # The state before the damaged WAL index still restores.
    res = run_cli("-o", str(out), "-generation", "b296ecc375fc6323", "-index", "0", str(root))
    assert res.exit_code == 0, res.output
    assert dump_sha256(out) == expected("ls-0.3.13-4k")["index_checks"][0]["dump_sha256"]
