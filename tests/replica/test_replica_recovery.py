"""A replica recovers with no operator: after being down, after the primary trimmed what it
needs, after its own crash, after the primary restarts, after the primary's history changed;
and it refuses what it must refuse (a wrong secret, writes)."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from litefs_py.store.ltx_log import read_log
from tests.mount.harness import LitefsMount
from tests.replica.harness import (
    Cluster,
    exits_on_sigterm,
    free_port,
    read_pos,
    wait_for,
    wait_same_pos,
    write_config,
)

DB = "app.db"
INFO_PATH = "/litefs/v1/info"


# ---- helpers -------------------------------------------------------------------------------


def connect(m: LitefsMount, name: str = DB) -> sqlite3.Connection:
    return sqlite3.connect(m.db(name), isolation_level=None, timeout=10)


def make_table(m: LitefsMount, rows: int = 0, *, tag: str = "a",
               journal_mode: str = "wal") -> None:
    con = connect(m)
    con.execute(f"PRAGMA journal_mode={journal_mode}")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    insert(con, rows, tag)
    con.close()


def insert(con: sqlite3.Connection, n: int, tag: str = "a") -> None:
    """`n` transactions of one row each."""
    for i in range(n):
        con.execute("INSERT INTO t (v) VALUES (?)", (f"{tag}-{i}-" + "x" * 40,))


def commit_rows(m: LitefsMount, n: int, tag: str = "a") -> None:
    con = connect(m)
    insert(con, n, tag)
    con.close()


def rows(m: LitefsMount, name: str = DB) -> list[tuple[object, ...]]:
    con = connect(m, name)
    try:
        return con.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    finally:
        con.close()


def integrity(m: LitefsMount, name: str = DB) -> str:
    con = connect(m, name)
    try:
        return str(con.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        con.close()


def replica_status(m: LitefsMount) -> dict[str, Any] | None:
    """`replica_of` from DATA/status.json, only when written by the running process."""
    try:
        doc = json.loads((m.data_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None
    if m.proc is None or doc.get("pid") != m.proc.pid:
        return None
    rep = doc.get("replica_of")
    return rep if isinstance(rep, dict) else None


def wait_status(m: LitefsMount, pred: Callable[[dict[str, Any]], bool], what: str,
                timeout: float = 15.0) -> dict[str, Any]:
    """Waits for a status.json (of the running process) that satisfies `pred`."""
    found: list[dict[str, Any]] = []

    def check() -> bool:
        st = replica_status(m)
        if st is not None and pred(st):
            found.append(st)
            return True
        return False

    wait_for(check, timeout, f"{what} (status: {replica_status(m)})", interval=0.1)
    return found[0]


def since(m: LitefsMount, offset: int) -> str:
    return m.log()[offset:]


def log_len(m: LitefsMount) -> int:
    return len(m.log())


def local_ranges(m: LitefsMount, name: str = DB) -> list[tuple[int, int]]:
    """The TXID ranges of the local log's records (segments, or old one-file records)."""
    return [(r.range.min_txid, r.range.max_txid)
            for r in read_log(m.data_dir / "dbs" / name / "ltx")]


def local_ipv4_addresses() -> list[str]:
    """This host's non-loopback IPv4 addresses."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                         timeout=10).stdout
    addrs = []
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            addr = fields[fields.index("inet") + 1].split("/")[0]
            if not addr.startswith("127."):
                addrs.append(addr)
    return addrs


# ---- crashes: SIGKILL, and the FUSE connection of a mount that cannot exit -----------------

FUSECTL = Path("/sys/fs/fuse/connections")


def fuse_connection(mount_dir: Path) -> int | None:
    """The FUSE connection number (the mount's device minor) of the mount at `mount_dir`, read
    from /proc/self/mountinfo (a stat could hang on a dead server)."""
    target = str(mount_dir)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4] == target and " - fuse" in line:
                return int(fields[2].split(":")[1])
    return None


def abort_fuse_connection(conn: int) -> bool:
    """Abort a FUSE connection through fusectl (mounted here if it is not): every request
    waiting on it fails, so a process stuck on it can exit."""
    if not FUSECTL.is_dir():
        return False
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    if not any(len(line.split()) > 2 and line.split()[2] == "fusectl" for line in mounts):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(FUSECTL)],
                       capture_output=True, timeout=10)
    try:
        (FUSECTL / str(conn) / "abort").write_text("1")
        return True
    except OSError:
        return False


def crash(m: LitefsMount, wait: float) -> bool:
    """SIGKILL the mount process. Returns whether it exited by itself within `wait` seconds;
    if it did not, its FUSE connection is aborted (see test_killed_replica_exits) so that it
    exits, and the test can go on to check what the crash left on disk."""
    assert m.proc is not None
    conn = fuse_connection(m.mount_dir)
    m.proc.kill()
    try:
        m.proc.wait(wait)
        return True
    except subprocess.TimeoutExpired:
        STUCK_STACKS.append(_kernel_stacks(m.proc.pid))
        if conn is not None:
            abort_fuse_connection(conn)
        m.proc.wait(10)
        return False


# Kernel stacks of every SIGKILLed node that did not exit (for the assertion messages).
STUCK_STACKS: list[str] = []


def _kernel_stacks(pid: int) -> str:
    """Where each thread of a process that cannot exit waits in the kernel (root only)."""
    out = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            out.append(f"thread {task.name}:\n{(task / 'stack').read_text()}")
        except OSError as exc:
            out.append(f"thread {task.name}: {exc}")
    return "\n".join(out)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """conftest's cluster, with a teardown that survives a node that cannot exit: every node
    is stopped, and a stuck one has its FUSE connection aborted (never left behind)."""
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        for m in reversed(c.nodes):
            conn = fuse_connection(m.mount_dir)
            try:
                m.stop(timeout=10)
            except subprocess.TimeoutExpired:
                if conn is not None:
                    abort_fuse_connection(conn)
                if m.proc is not None:
                    m.proc.wait(10)
                m.stop()


# ---- catch-up ------------------------------------------------------------------------------


def test_catch_up_after_1000_transactions_uses_incremental_files(cluster: Cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica()
    make_table(primary, 5)
    wait_same_pos(primary, replica, DB)
    wait_status(replica, lambda s: s["snapshots"] == 1, "the replica's first snapshot")
    replica.stop()

    commit_rows(primary, 1000, tag="down")
    primary_log = log_len(primary)
    replica_log = log_len(replica)
    replica.start()
    wait_same_pos(primary, replica, DB, timeout=60)
    st = wait_status(replica, lambda s: s["applied_files"] >= 1000,
                     "1,000 files applied after the restart")
    assert st["snapshots"] == 0, st
    assert st["applied_files"] == 1000, st  # one file per transaction, none skipped
    assert "sending a snapshot" not in since(primary, primary_log)
    assert "applied a snapshot" not in since(replica, replica_log)
    assert rows(replica) == rows(primary)
    assert len(rows(replica)) == 1005
    assert integrity(replica) == "ok"


def test_resnapshot_when_retention_removed_the_needed_files(cluster: Cluster) -> None:
    primary = cluster.primary(extra={"data": {"retention": "1s"}})
    replica = cluster.replica()
    make_table(primary, 3)
    stopped_at, _ = wait_same_pos(primary, replica, DB)
    replica.stop()

    commit_rows(primary, 20, tag="gone")
    # Retention deletes whole segments once they are 1 s old, never the newest: after 1 s
    # the next commit starts a new segment, and the records the replica needs go.
    time.sleep(1.2)
    commit_rows(primary, 1, tag="rotate")
    wait_for(lambda: local_ranges(primary)[0][0] > stopped_at + 1, 15,
             f"the primary's local log to be trimmed ({local_ranges(primary)})", interval=0.2)
    primary_log = log_len(primary)
    replica_log = log_len(replica)
    replica.start()
    want = wait_same_pos(primary, replica, DB)
    st = wait_status(replica, lambda s: s["snapshots"] >= 1, "a snapshot")
    assert st["snapshots"] == 1, st
    sent = since(primary, primary_log)
    assert "sending a snapshot" in sent
    assert (f"TXID {stopped_at + 1:016x}, the next one the replica needs, is no longer in "
            "the primary's local log") in sent, sent
    assert f"applied a snapshot at TXID {want[0]:016x}" in since(replica, replica_log)
    assert rows(replica) == rows(primary)
    assert integrity(replica) == "ok"
    # And it follows on from the snapshot with incremental files.
    commit_rows(primary, 3, tag="after")
    wait_same_pos(primary, replica, DB)
    assert rows(replica) == rows(primary)


@pytest.mark.parametrize("new_txns", [0, 7])
def test_restart_resumes_from_its_position(cluster: Cluster, new_txns: int) -> None:
    primary = cluster.primary()
    replica = cluster.replica()
    make_table(primary, 10)
    wait_same_pos(primary, replica, DB)
    replica.stop()
    commit_rows(primary, new_txns, tag="while-down")
    primary_log = log_len(primary)
    replica_log = log_len(replica)
    replica.start()
    wait_same_pos(primary, replica, DB)
    st = wait_status(replica, lambda s: s["source"] == "primary"
                     and s["applied_files"] >= new_txns, "the replica to be streaming")
    assert st["snapshots"] == 0, st
    assert st["applied_files"] == new_txns, st
    assert "sending a snapshot" not in since(primary, primary_log)
    assert "applied a snapshot" not in since(replica, replica_log)
    assert rows(replica) == rows(primary)
    # And it keeps following.
    commit_rows(primary, 2, tag="after")
    wait_same_pos(primary, replica, DB)
    assert rows(replica) == rows(primary)


# ---- crash of the replica ------------------------------------------------------------------


class Writer(threading.Thread):
    """Commits multi-page transactions on the primary until stopped."""

    def __init__(self, m: LitefsMount) -> None:
        super().__init__(daemon=True)
        self.m = m
        self.halt = threading.Event()
        self.commits = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            con = connect(self.m)
            rnd = random.Random(7)
            while not self.halt.is_set():
                con.execute("BEGIN")
                for _ in range(40):
                    con.execute("INSERT INTO t (v) VALUES (?)", (rnd.randbytes(600).hex(),))
                if self.commits % 3 == 2:  # rewrites pages all over the table too
                    con.execute("UPDATE t SET v = substr(v, 2) || 'y' WHERE id % 17 = ?",
                                (self.commits % 17,))
                con.execute("COMMIT")
                self.commits += 1
            con.close()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def committed(self, n: int) -> Callable[[], bool]:
        return lambda: self.commits >= n

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        if self.error is not None:
            raise self.error


def test_killed_replica_exits(cluster: Cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica()
    make_table(primary, 3)  # more than one file: the second one opens the reader fence
    wait_same_pos(primary, replica, DB)
    exited = crash(replica, wait=8)
    assert exited, ("the SIGKILLed replica did not exit within 8 s (stuck in FUSE "
                    f"request_wait_answer from fuse_flush at do_exit?):\n{STUCK_STACKS[-1:]}")
    replica.start()
    wait_same_pos(primary, replica, DB)


def test_replica_killed_while_applying_is_consistent(cluster: Cluster) -> None:
    """SIGKILL (a crash) while it applies large transactions; what it left on disk must be
    consistent after a restart, and it catches up with the primary."""
    primary = cluster.primary()
    replica = cluster.replica()
    make_table(primary, 0)
    wait_same_pos(primary, replica, DB)
    writer = Writer(primary)
    writer.start()
    rnd = random.Random(11)
    try:
        for _ in range(4):
            before = writer.commits
            wait_for(writer.committed(before + 5), 20, "the writer to commit")
            time.sleep(rnd.uniform(0.05, 0.4))
            assert crash(replica, wait=8), ("the SIGKILLed replica did not exit by itself; "
                                            f"kernel stacks:\n{STUCK_STACKS[-1:]}")
            time.sleep(rnd.uniform(0.0, 0.2))
            replica.start()
            # It serves consistent data right away, while it catches up.
            assert integrity(replica) == "ok"
            wait_for(lambda: (read_pos(replica, DB) or (0, 0))[0] > 0, 20, "a position")
    finally:
        writer.stop()
    assert writer.commits > 20
    wait_same_pos(primary, replica, DB, timeout=60)
    assert integrity(replica) == "ok"
    assert rows(replica) == rows(primary)
    # The replica still follows.
    commit_rows(primary, 3, tag="after")
    wait_same_pos(primary, replica, DB)
    assert rows(replica) == rows(primary)


# ---- restart of the primary ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_replica_reconnects_after_primary_restart(cluster: Cluster, how: str) -> None:
    primary = cluster.primary()
    replica = cluster.replica()
    make_table(primary, 10)
    wait_same_pos(primary, replica, DB)
    before = wait_status(replica, lambda s: s["source"] == "primary", "streaming")
    reader = connect(replica)
    last = reader.execute("SELECT count(*), max(v) FROM t").fetchone()
    assert last[0] == 10

    if how == "stop":
        primary.stop()
    else:
        primary.kill()
    # While the primary is down, readers on the replica read the last state.
    wait_status(replica, lambda s: s["source"] == "none" and s["reconnects"] > before["reconnects"],
                "the replica to notice the primary is gone")
    for _ in range(10):
        assert reader.execute("SELECT count(*), max(v) FROM t").fetchone() == last
        other = connect(replica)
        assert other.execute("SELECT count(*), max(v) FROM t").fetchone() == last
        other.close()
        assert float((replica.mount_dir / ".lag").read_text()) >= 0
        time.sleep(0.1)
    assert integrity(replica) == "ok"

    replica_log = log_len(replica)
    primary.start()  # same port, same data: the replica reconnects by itself
    commit_rows(primary, 5, tag="after")
    wait_same_pos(primary, replica, DB, timeout=30)
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (15,)
    assert rows(replica) == rows(primary)
    st = wait_status(replica, lambda s: s["source"] == "primary", "streaming again")
    # It resumed from its position: no snapshot was needed.
    assert st["snapshots"] == before["snapshots"], st
    assert "applied a snapshot" not in since(replica, replica_log)
    assert "streaming from the primary" in since(replica, replica_log)
    reader.close()


def test_primary_stops_while_a_replica_does_not_read(cluster: Cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica()
    make_table(primary, 1)
    wait_same_pos(primary, replica, DB)
    assert replica.proc is not None and primary.proc is not None
    replica.proc.send_signal(signal.SIGSTOP)  # alive, connected, not reading (a hung host)
    try:
        con = connect(primary)
        for _ in range(15):  # ~3 MB for the replica: more than the socket buffers hold
            con.execute("INSERT INTO t (v) VALUES (?)", (os.urandom(100_000).hex(),))
        con.close()
        time.sleep(0.5)
        exited = exits_on_sigterm(primary)
    finally:
        replica.proc.send_signal(signal.SIGCONT)
    assert exited, ("the primary did not exit within 10 s of SIGTERM; its log ends with:\n"
                    + primary.log()[-600:])


# ---- a different history -------------------------------------------------------------------


def replace_primary(cluster: Cluster, a: LitefsMount, b_rows: int) -> LitefsMount:
    """Build primary B (app.db with `b_rows` rows of its own history) on another port, then
    stop A and start B at A's address: the replica reconnects to B by itself."""
    b_cfg = cluster.root / "b.yml"
    write_config(b_cfg, candidate=True, port=free_port(), advertise_url=cluster.url)
    b = cluster.node("b", b_cfg)
    b.start()
    make_table(b, b_rows, tag="B")
    b.stop()
    write_config(b_cfg, candidate=True, port=cluster.port, advertise_url=cluster.url)
    a.stop()
    b.start()
    return b


@pytest.mark.parametrize("case", ["ahead", "same_txid", "behind"])
def test_diverged_replica_resnapshots(cluster: Cluster, case: str) -> None:
    """The replica follows A; A is replaced (same address) by B whose app.db has another
    history. The replica re-snapshots from B by itself and the primary logs exactly why."""
    a = cluster.primary(name="a")
    replica = cluster.replica()
    make_table(a, 10, tag="A")
    a_txid, a_checksum = wait_same_pos(a, replica, DB)
    replica_log = log_len(replica)
    b = replace_primary(cluster, a, {"ahead": 5, "same_txid": 10, "behind": 15}[case])
    b_txid, _ = wait_same_pos(b, replica, DB, timeout=30)
    assert (b_txid < a_txid, b_txid == a_txid, b_txid > a_txid) == (
        case == "ahead", case == "same_txid", case == "behind")
    assert rows(replica) == rows(b)
    assert integrity(replica) == "ok"
    if case == "ahead":
        why = (f"the replica is at TXID {a_txid:016x}, ahead of the primary's {b_txid:016x} "
               "(a different history)")
    else:
        why = f"at TXID {a_txid:016x} the replica's checksum {a_checksum:016x} differs"
    sent = b.log()
    assert f"sending a snapshot to replica {socket.gethostname()}: {why}" in sent, sent
    assert f"applied a snapshot at TXID {b_txid:016x}" in since(replica, replica_log)
    # And it follows B from there.
    commit_rows(b, 2, tag="B2")
    wait_same_pos(b, replica, DB)
    assert rows(replica) == rows(b)


def test_diverged_replica_logs_why(cluster: Cluster) -> None:
    a = cluster.primary(name="a")
    replica = cluster.replica()
    make_table(a, 10, tag="A")
    a_txid, _ = wait_same_pos(a, replica, DB)
    replica_log = log_len(replica)
    b = replace_primary(cluster, a, 5)
    wait_same_pos(b, replica, DB, timeout=30)
    assert "a different history" in b.log()  # the primary says why ...
    assert f"{a_txid:016x}" in since(replica, replica_log)  # ... the replica does not


# ---- the secret ----------------------------------------------------------------------------


def test_wrong_secret_is_refused(cluster: Cluster) -> None:
    primary = cluster.primary(secret="right-secret")
    replica = cluster.replica(secret="wrong-secret")
    make_table(primary, 3)
    wait_for(lambda: "(HTTP 401)" in replica.log(), 15, "the replica to log the refusal")
    assert (f"{cluster.url} refused this replica's secret (HTTP 401)") in replica.log()
    wait_for(lambda: "refused a replication request from 127.0.0.1: wrong or missing secret"
             in primary.log(), 15, "the primary to log the refusal")
    st = wait_status(replica, lambda s: s["last_error"] is not None, "an error in status")
    assert "HTTP 401" in str(st["last_error"]) and st["applied_files"] == 0, st
    assert st["source"] == "none"
    time.sleep(1.0)  # nothing replicates, however long it waits
    assert not (replica.mount_dir / f"{DB}-pos").exists()
    assert DB not in os.listdir(replica.mount_dir)

    # Raw requests: no secret and a wrong one get 401, the right one 200.
    url = cluster.url + INFO_PATH
    assert httpx.get(url, timeout=5).status_code == 401
    r = httpx.get(url, headers={"Authorization": "Bearer wrong-secret"}, timeout=5)
    assert r.status_code == 401 and "secret" in r.json()["error"]
    assert httpx.get(url, headers={"Authorization": "right-secret"}, timeout=5).status_code == 401
    r = httpx.get(url, headers={"Authorization": "Bearer right-secret"}, timeout=5)
    assert r.status_code == 200
    info = r.json()
    assert info["protocol"] == 1 and info["primary"] == cluster.url
    pos = read_pos(primary, DB)
    assert pos is not None and info["dbs"][DB]["txid"] == f"{pos[0]:016x}"
    r = httpx.post(cluster.url + "/litefs/v1/stream", json={"protocol": 1, "dbs": {}},
                   timeout=5)
    assert r.status_code == 401


def test_secret_binds_all_addresses_and_no_secret_binds_loopback_only(cluster: Cluster) -> None:
    others = local_ipv4_addresses()
    if not others:
        pytest.skip("this host has no non-loopback IPv4 address to try")
    # Without a secret: loopback only, and the log says so.
    primary = cluster.primary()
    assert (f"http.secret is not set: the replication API listens on 127.0.0.1:{cluster.port} "
            "only") in primary.log()
    assert httpx.get(cluster.url + INFO_PATH, timeout=5).status_code == 200
    for addr in others:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{addr}:{cluster.port}{INFO_PATH}", timeout=5)
    primary.stop()
    # With a secret: every address.
    secret_cfg = cluster.root / "with-secret.yml"
    write_config(secret_cfg, candidate=True, port=cluster.port, advertise_url=cluster.url,
                 secret="s3cret")
    primary.extra_args = ["--config", str(secret_cfg)]
    primary.start()
    assert "http.secret is not set" not in since(primary, primary.log().rfind("mounted"))
    for addr in others:
        r = httpx.get(f"http://{addr}:{cluster.port}{INFO_PATH}", timeout=5,
                      headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200


# ---- writes on the replica -----------------------------------------------------------------


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_writes_on_the_replica_are_refused(cluster: Cluster, journal_mode: str) -> None:
    primary = cluster.primary()
    replica = cluster.replica()
    make_table(primary, 3, journal_mode=journal_mode)
    wait_same_pos(primary, replica, DB)
    mnt = replica.mount_dir

    con = connect(replica)
    with pytest.raises(sqlite3.OperationalError, match="attempt to write a readonly database"):
        con.execute("INSERT INTO t (v) VALUES ('nope')")
    with pytest.raises(sqlite3.OperationalError, match="attempt to write a readonly database"):
        con.execute("CREATE TABLE u (x)")
    con.close()

    cli = subprocess.run(["sqlite3", str(mnt / DB), "INSERT INTO t (v) VALUES ('cli');"],
                         capture_output=True, text=True, timeout=30)
    assert cli.returncode != 0
    assert "attempt to write a readonly database" in cli.stderr, cli.stderr
    cli = subprocess.run(["sqlite3", str(mnt / DB), "SELECT count(*) FROM t;"],
                         capture_output=True, text=True, timeout=30)
    assert (cli.returncode, cli.stdout.strip()) == (0, "3"), cli.stderr

    def refused(fn: Callable[..., object], *args: object) -> int:
        with pytest.raises(OSError) as info:
            fn(*args)
        return int(info.value.errno or 0)

    assert refused(lambda: open(mnt / "new.db", "w")) == errno.EROFS  # noqa: SIM115
    assert refused(lambda: open(mnt / DB, "r+b")) == errno.EROFS  # noqa: SIM115
    assert refused(lambda: open(mnt / DB, "ab")) == errno.EROFS  # noqa: SIM115
    assert refused(os.truncate, mnt / DB, 0) == errno.EROFS
    assert refused(os.unlink, mnt / DB) == errno.EROFS
    assert refused(os.unlink, mnt / f"{DB}-pos") in (errno.EROFS, errno.EPERM, errno.EACCES)
    assert refused(os.mkdir, mnt / "sub") in (errno.EROFS, errno.EPERM)
    assert refused(os.rename, mnt / DB, mnt / "other.db") in (errno.EROFS, errno.EPERM)
    assert refused(os.rmdir, mnt / DB) in (errno.EROFS, errno.ENOTDIR)
    assert refused(os.chmod, mnt / DB, 0o600) == errno.EROFS
    # A new database: SQLite cannot create its file.
    with pytest.raises(sqlite3.OperationalError, match="unable to open database file"):
        sqlite3.connect(mnt / "new.db", isolation_level=None).execute("CREATE TABLE x (y)")
    cli = subprocess.run(["sqlite3", str(mnt / "new.db"), "CREATE TABLE x (y);"],
                         capture_output=True, text=True, timeout=30)
    assert cli.returncode != 0 and "unable to open database" in cli.stderr, cli.stderr
    assert "refusing a write: this is a read-only replica" in replica.log()

    # The mount is healthy: nothing changed, and replication goes on.
    names = set(os.listdir(mnt))
    assert "new.db" not in names and "sub" not in names and "other.db" not in names
    assert DB in names
    commit_rows(primary, 4, tag="after")
    wait_same_pos(primary, replica, DB)
    assert rows(replica) == rows(primary)
    assert integrity(replica) == "ok"
    assert replica.proc is not None and replica.proc.poll() is None


def test_rename_on_the_replica_is_erofs(cluster: Cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica()
    make_table(primary, 1)
    wait_same_pos(primary, replica, DB)
    with pytest.raises(OSError) as info:
        os.rename(replica.mount_dir / DB, replica.mount_dir / "other.db")
    assert info.value.errno == errno.EROFS, errno.errorcode.get(info.value.errno or 0)
