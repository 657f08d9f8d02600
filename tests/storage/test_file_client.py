"""FileReplicaClient on real directories, what only it does: atomic writes, metadata sidecars
and the mtime timestamp, a layout `litestream replicate` wrote, temporary files, and the
errors of a read-only or full disk. What every client does is in test_client_suite.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from litefs_py.errors import ExitCode
from litefs_py.storage.base import META_CHECKSUM, META_TIMESTAMP, format_timestamp
from litefs_py.storage.errors import AccessDeniedError, ObjectNotFoundError, StorageFullError
from litefs_py.storage.file import FileReplicaClient
from tests.needs import missing
from tests.storage.helpers import TS, ltx_bytes, meta
from tests.vectors_path import VECTORS


def all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_delete_removes_sidecars_and_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    root = tmp_path / "backups" / "store.db"
    c = FileReplicaClient(root)
    for lo, hi in ((1, 1), (2, 3)):
        c.write_ltx(0, lo, hi, ltx_bytes(lo, hi, TS, 300), meta(TS))
    c.write_ltx(9, 1, 3, ltx_bytes(1, 3, TS, 7000), meta(TS))
    assert (root / "ltx/0/.meta/0000000000000001-0000000000000001.ltx.json").exists()
    c.delete_ltx(c.ltx_files(0))
    assert not (root / "ltx/0/.meta/0000000000000001-0000000000000001.ltx.json").exists()
    # no temporary file is left anywhere
    assert not [f for f in all_files(root) if f.endswith(".tmp")]


def test_metadata_sidecar_and_mtime(tmp_path: Path) -> None:
    c = FileReplicaClient(tmp_path)
    data = ltx_bytes(5, 7, TS)
    c.write_ltx(0, 5, 7, data, meta(TS, 0xFEDCBA9876543210))
    expected_ts = datetime(2026, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)

    path = tmp_path / "ltx" / "0" / "0000000000000005-0000000000000007.ltx"
    # Like Litestream's file client: the mtime is the LTX timestamp.
    assert path.stat().st_mtime_ns == TS * 1_000_000
    sidecar = tmp_path / "ltx" / "0" / ".meta" / "0000000000000005-0000000000000007.ltx.json"
    assert json.loads(sidecar.read_text()) == {
        META_TIMESTAMP: "2026-01-01T00:00:00.123Z",
        META_CHECKSUM: "fedcba9876543210",
        "size": len(data),
    }
    lazy = c.ltx_files(0)[0]
    assert lazy.timestamp == expected_ts  # from the mtime

    # Without the sidecar the timestamp still comes from the mtime.
    sidecar.unlink()
    bare = c.ltx_files(0, with_metadata=True)[0]
    assert bare.timestamp == expected_ts and bare.post_apply_checksum is None

    # A sidecar describing another file of that name (different size) is ignored.
    c.write_ltx(0, 5, 7, data, meta(TS, 1))
    path.write_bytes(data + b"x")
    assert c.ltx_files(0, with_metadata=True)[0].post_apply_checksum is None


def test_mtime_from_ltx_header_when_metadata_has_none(tmp_path: Path) -> None:
    c = FileReplicaClient(tmp_path)
    info = c.write_ltx(0, 1, 1, ltx_bytes(1, 1, TS + 5), {})
    assert info.metadata[META_TIMESTAMP] == format_timestamp(TS + 5)
    assert (tmp_path / "ltx/0/0000000000000001-0000000000000001.ltx").stat().st_mtime_ns == (
        (TS + 5) * 1_000_000)


def test_lists_a_litestream_file_layout(tmp_path: Path) -> None:
    """Files placed the way `litestream replicate` does (decimal level directories, mtime =
    LTX timestamp, no sidecars), other names ignored."""
    expected = json.loads((VECTORS / "ls-0.5.17-4k" / "expected.json").read_text())
    src = VECTORS / "ls-0.5.17-4k" / "bucket"
    for f in expected["ltx_files"]:
        dst = tmp_path / "ltx" / str(f["level"]) / Path(f["key"]).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / f["key"], dst)
        os.utime(dst, ns=(f["timestamp_ms"] * 1_000_000,) * 2)
    (tmp_path / "ltx" / "0" / "0000000000000099-0000000000000099.ltx.tmp").write_bytes(b"x")
    (tmp_path / "ltx" / "notalevel").mkdir()
    c = FileReplicaClient(tmp_path)
    assert c.levels() == sorted({f["level"] for f in expected["ltx_files"]})
    got = [(i.level, i.min_txid, i.max_txid, i.size, i.timestamp)
           for lvl in c.levels() for i in c.ltx_files(lvl, with_metadata=True)]
    want = sorted(
        (f["level"], int(f["min_txid"], 16), int(f["max_txid"], 16), f["size"],
          datetime.fromtimestamp(f["timestamp_ms"] / 1000, tz=UTC))
         for f in expected["ltx_files"])
    assert got == want


def test_raw_objects_skip_temporary_files_and_stay_inside_the_root(tmp_path: Path) -> None:
    c = FileReplicaClient(tmp_path)
    gen = tmp_path / "generations" / "0123456789abcdef"
    (gen / "wal").mkdir(parents=True)
    (gen / "wal" / "00000000_00000000.wal.lz4").write_bytes(b"wal0")
    (gen / "wal" / ".00000001_00000000.wal.lz4.123.ab.tmp").write_bytes(b"partial")
    assert [o.key for o in c.list_objects("generations/")] == [
        "generations/0123456789abcdef/wal/00000000_00000000.wal.lz4"]
    with pytest.raises(ObjectNotFoundError):
        c.get_object("../etc/passwd")


def test_check_creates_the_directory(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    FileReplicaClient(root).check()
    assert root.is_dir() and list(root.iterdir()) == []


@contextmanager
def unprivileged() -> Iterator[None]:
    """Run the block without root's permission override (as nobody when we are root)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_read_only_directory_is_access_denied() -> None:
    # A directory nobody can reach but not write (tmp_path's parents are private to root).
    base = Path(tempfile.mkdtemp(prefix="litefs-ro-"))
    try:
        base.chmod(0o755)
        root = base / "replica"
        root.mkdir(mode=0o555)
        root.chmod(0o555)
        c = FileReplicaClient(root)
        with unprivileged():
            with pytest.raises(AccessDeniedError) as write_err:
                c.write_ltx(0, 1, 1, ltx_bytes(1, 1, TS), meta())
            with pytest.raises(AccessDeniedError) as check_err:
                c.check()
        for err in (write_err.value, check_err.value):
            assert str(root) in str(err)
            assert "permission denied" in str(err)
            assert not err.retryable
        assert list(root.iterdir()) == []
    finally:
        base.chmod(0o755)
        (base / "replica").chmod(0o755)
        shutil.rmtree(base)


@contextmanager
def tiny_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                         capture_output=True, timeout=10, check=False)
    if res.returncode != 0:
        missing(f"mounting a tmpfs ({res.stderr.decode().strip()})", "run the tests as root")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True, timeout=10)


def test_full_disk_is_storage_full(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        missing("mounting a small tmpfs (needs root)", "run the tests as root")
    with tiny_tmpfs(tmp_path / "small", "64k") as mnt:
        c = FileReplicaClient(mnt / "store.db")
        c.write_ltx(0, 1, 1, ltx_bytes(1, 1, TS, 1000), meta())  # fits
        with pytest.raises(StorageFullError) as err:
            c.write_ltx(9, 1, 2, ltx_bytes(1, 2, TS, 256 * 1024), meta())
        level_dir = mnt / "store.db" / "ltx" / "9"
        assert str(level_dir) in str(err.value)
        assert err.value.retryable and err.value.code == ExitCode.IO
        # neither the partial data file nor its temporary file nor its sidecar remain
        assert c.ltx_files(9) == []
        assert [f for f in all_files(level_dir) if not f.startswith(".meta/")] == []
        assert all_files(level_dir / ".meta") == []
        assert [(i.min_txid, i.max_txid) for i in c.ltx_files(0)] == [(1, 1)]
