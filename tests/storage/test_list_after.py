"""`ltx_files_after(level, txid)` is cheap: S3 lists with ListObjectsV2 StartAfter (checked on
the wire and by the number of keys the server returns), the file replica skips older names
before any stat. That it always equals filtering the full listing, on every backend, is
tested in test_client_suite.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from litefs_py.storage.base import LtxFileInfo
from litefs_py.storage.file import FileReplicaClient
from litefs_py.storage.s3 import S3ReplicaClient
from tests.storage.helpers import ltx_bytes

TS = 1_767_225_600_123
def _spans(infos: list[LtxFileInfo]) -> list[tuple[int, int]]:
    return [(i.min_txid, i.max_txid) for i in infos]


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
