"""`ltx_files_after(level, txid)`: the files of a level whose min TXID is past `txid`, listed
cheaply — S3 with ListObjectsV2 StartAfter (checked on the wire and by the number of keys the
server returns), the file replica by name before any stat — and always equal to filtering the
full listing (the base class's default)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from litefs_py.replica_clients import client_for_url
from litefs_py.storage.base import LtxFileInfo, ReplicaClient
from litefs_py.storage.file import FileReplicaClient
from litefs_py.storage.s3 import S3ReplicaClient
from tests.s3_server import S3Bucket, boto_client
from tests.storage.helpers import ltx_bytes

TS = 1_767_225_600_123
L0 = [(1, 1), (2, 3), (4, 4), (5, 9), (10, 10), (0x10, 0x10), (0x11, 0x1F), (0x100, 0x100)]
L1 = [(1, 3), (4, 10)]


def _populate(client: ReplicaClient) -> None:
    for lo, hi in L0:
        client.write_ltx(0, lo, hi, ltx_bytes(lo, hi, TS + lo, 200), {})
    for lo, hi in L1:
        client.write_ltx(1, lo, hi, ltx_bytes(lo, hi, TS + hi, 300), {})


def _spans(infos: list[LtxFileInfo]) -> list[tuple[int, int]]:
    return [(i.min_txid, i.max_txid) for i in infos]


def _default(client: ReplicaClient, level: int, txid: int) -> list[LtxFileInfo]:
    """The base class's implementation (filtering ltx_files), for comparison."""
    return ReplicaClient.ltx_files_after(client, level, txid)


def _check_semantics(client: ReplicaClient) -> None:
    for txid in (0, 1, 2, 3, 4, 9, 0xF, 0x10, 0x11, 0x12, 0xFF, 0x100, 0x101, (1 << 64) - 1):
        expected = [s for s in L0 if s[0] > txid]
        got = client.ltx_files_after(0, txid)
        assert _spans(got) == expected, f"after {txid:x}"
        assert got == _default(client, 0, txid), f"after {txid:x}"
        assert all(i.level == 0 for i in got)
    # A file that starts at txid is not "after" it, whatever its max.
    assert _spans(client.ltx_files_after(0, 2)) == [s for s in L0 if s[0] > 2]
    assert _spans(client.ltx_files_after(1, 3)) == [(4, 10)]
    assert _spans(client.ltx_files_after(1, 4)) == []
    assert client.ltx_files_after(2, 0) == []  # a level with no files
    assert client.ltx_files_after(9, 0) == []


# ---- file replica ---------------------------------------------------------------------------


def test_file_semantics(tmp_path: Path) -> None:
    client = FileReplicaClient(tmp_path / "app.db")
    assert client.ltx_files_after(0, 0) == []  # nothing written yet: no directory at all
    _populate(client)
    # Things in a level directory that are not LTX files are never listed.
    level0 = client.level_dir(0)
    (level0 / "0000000000000020-0000000000000020.ltx.tmp").write_bytes(b"x")
    (level0 / ".0000000000000021-0000000000000021.ltx.1.ab.tmp").write_bytes(b"x")
    (level0 / "0000000000000022-0000000000000022.ltx").mkdir()
    _check_semantics(client)


def test_file_stats_only_newer_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Older files are skipped by name: none of them is stat'ed."""
    client = FileReplicaClient(tmp_path / "app.db")
    for n in range(1, 51):
        client.write_ltx(0, n, n, ltx_bytes(n, n, TS, 120), {})
    stat_names: list[str] = []
    real_scandir = os.scandir

    class Entry:
        def __init__(self, entry: os.DirEntry[str]) -> None:
            self._e = entry
            self.name = entry.name

        def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
            stat_names.append(self.name)
            return self._e.stat(follow_symlinks=follow_symlinks)

        def is_file(self) -> bool:
            return self._e.is_file()

    class Scan:
        def __init__(self, path: Any) -> None:
            self._it = real_scandir(path)

        def __enter__(self) -> Iterator[Entry]:
            return (Entry(e) for e in self._it)

        def __exit__(self, *exc: object) -> None:
            self._it.close()

    monkeypatch.setattr("litefs_py.storage.file.os.scandir", Scan)
    assert _spans(client.ltx_files_after(0, 48)) == [(49, 49), (50, 50)]
    assert sorted(stat_names) == ["0000000000000031-0000000000000031.ltx",
                                  "0000000000000032-0000000000000032.ltx"]
    stat_names.clear()
    assert client.ltx_files_after(0, 50) == []
    assert stat_names == []


# ---- S3 -------------------------------------------------------------------------------------


class ListRecorder:
    """Every ListObjectsV2 the client sends (its query) and how many keys each answer held."""

    def __init__(self, client: S3ReplicaClient) -> None:
        self.queries: list[dict[str, list[str]]] = []
        self.key_counts: list[int] = []
        events = client.boto_client.meta.events
        events.register("before-send.s3.ListObjectsV2", self._request)
        events.register("after-call.s3.ListObjectsV2", self._response)

    def _request(self, request: Any, **_: Any) -> None:
        self.queries.append(parse_qs(urlsplit(request.url).query))

    def _response(self, parsed: dict[str, Any], **_: Any) -> None:
        self.key_counts.append(len(parsed.get("Contents", [])))

    def clear(self) -> None:
        self.queries.clear()
        self.key_counts.clear()


@pytest.fixture
def s3(s3_bucket: S3Bucket) -> Iterator[S3ReplicaClient]:
    c = client_for_url(s3_bucket.url("backups/app.db"))
    assert isinstance(c, S3ReplicaClient)
    yield c
    c.close()


def test_s3_semantics(s3: S3ReplicaClient, s3_bucket: S3Bucket) -> None:
    _populate(s3)
    # Keys under the level prefix that are not LTX files (written by someone else).
    raw = boto_client(s3_bucket.endpoint)
    for key in ("backups/app.db/0000/0000000000000020-0000000000000020.ltx.bak",
                "backups/app.db/0000/zzz", "backups/app.db/0000/sub/0000000000000030-"
                "0000000000000030.ltx"):
        raw.put_object(Bucket=s3_bucket.name, Key=key, Body=b"x")
    # Neighbouring databases and levels share key prefixes; none of theirs may appear.
    raw.put_object(Bucket=s3_bucket.name, Body=b"x",
                   Key="backups/app.db2/0000/0000000000000050-0000000000000050.ltx")
    _check_semantics(s3)


def test_s3_lists_from_start_after(s3: S3ReplicaClient) -> None:
    for n in range(1, 41):
        s3.write_ltx(0, n, n, ltx_bytes(n, n, TS, 100), {})
    rec = ListRecorder(s3)

    # Caught up: one request, the server returns no key at all.
    assert s3.ltx_files_after(0, 40) == []
    assert len(rec.queries) == 1
    q = rec.queries[0]
    assert q["start-after"] == ["backups/app.db/0000/0000000000000028-ffffffffffffffff.ltx"]
    assert q["prefix"] == ["backups/app.db/0000/"]
    assert rec.key_counts == [0]

    # Two new files: exactly those two keys come back.
    s3.write_ltx(0, 41, 41, ltx_bytes(41, 41, TS, 100), {})
    s3.write_ltx(0, 42, 43, ltx_bytes(42, 43, TS, 100), {})
    rec.clear()
    assert _spans(s3.ltx_files_after(0, 40)) == [(41, 41), (42, 43)]
    assert rec.key_counts == [2]

    # Behind by some: only the files after the position are sent by the server.
    rec.clear()
    assert _spans(s3.ltx_files_after(0, 37)) == [(38, 38), (39, 39), (40, 40), (41, 41),
                                                  (42, 43)]
    assert rec.key_counts == [5]

    # The full listing, for contrast, returns all 42 keys.
    rec.clear()
    assert len(s3.ltx_files(0)) == 42
    assert rec.key_counts == [42]
    assert "start-after" not in rec.queries[0]
