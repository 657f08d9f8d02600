"""Backups, side by side: litefs-py against Litestream 0.5 on one S3 server (moto on loopback).

    .venv/bin/python bench/replication.py                  # full run (about 4 minutes)
    .venv/bin/python bench/replication.py --quick          # smoke test, under a minute
    .venv/bin/python bench/replication.py --py-spy out/    # also profile a litefs restore
    .venv/bin/python bench/replication.py --dump lag.json  # raw commit and object times
    .venv/bin/python bench/replication.py --litefs-src DIR # litefs from another source tree

One `moto_server` is started on 127.0.0.1 (tests/s3_server.py); every run gets its own bucket.
Litestream is the real binary (.venv/bin/litestream, run without AWS_CA_BUNDLE); litefs-py is
`python -m litefs_py mount` / `restore`. Both use their default settings (sync-interval 1s,
L1 compaction every 30 s, ...). Four measurements:

1. Commit -> object-visible lag. The same client (`bench/replication.py _client`, its own
   process) commits single-row INSERTs at a fixed rate (20/s; WAL, synchronous=NORMAL) (a) on
   a litefs mount whose database has an S3 replica and (b) on a plain file that
   `litestream replicate` watches; 2 rounds of 500 commits per tool [--quick: 1 round of 80],
   in alternating order (litefs, Litestream, Litestream, litefs), each on a fresh database,
   replicator and bucket. The client records `time.monotonic()` right
   after each COMMIT returns (CLOCK_MONOTONIC is system-wide) and, on litefs, the TXID in
   `<db>-pos`. A poller thread of this process lists the bucket's L0 prefix every 10 ms
   (ListObjectsV2 with start-after = the newest key seen, plus a full listing every second to
   catch anything out of order) and records when each key was first seen; a second thread
   downloads each new L0 object at once and applies it, in TXID order, to an in-memory copy
   of the database, then reads `max(id)`. So every object is known to contain exactly the
   commits with id <= that value, for both tools alike (Litestream's TXIDs count syncs, not
   commits, and moto's LastModified has one-second resolution, so neither TXIDs nor object
   times would do). A commit is visible at the first-seen time of the first object that
   contains it; lag = visible - commit. On litefs the `-pos` TXIDs give a second, independent
   mapping (first object whose max TXID >= the commit's TXID), which must agree. Poller and
   downloader talk to moto from 127.0.0.2, so the access log tells their requests apart.
   A second workload commits 1,000 [200] transactions as fast as possible (a burst), once per
   tool.

2. Restore time of the same database, at two sizes: ~11 MiB and ~100 MiB (rows of orders
   with text, an index), each built natively in WAL mode, then replicated by Litestream
   to one bucket and by litefs (database placed in its data directory, recorded as a snapshot
   at mount start) to another, followed by 50 [20] single-row commits at 20/s through each
   tool. Each bucket is then restored by both `litefs restore -o OUT URL` and
   `litestream restore -o OUT URL` (wall time of the whole command, start-up included, into a
   fresh empty directory; `sync` before each; CPU time of the process from wait4), runs
   rotating over the four pairs; median of 3 [1] per size. The floor is bare HTTP GETs of
   the objects litefs's restore plan names (`litefs restore --dry-run --json`), bytes
   discarded. Every output is checked: the same bytes from both tools per bucket, the row count, and
   `PRAGMA quick_check`. The target compares the two tools on the bucket Litestream wrote.

3. Requests per 1,000 transactions (cost). moto logs every HTTP request it serves (werkzeug's
   access log: client address, method, path, status). The lines between the start of a
   workload and the moment its last commit became visible are counted per method for that
   run's bucket and the tool's address (127.0.0.1): PUTs (split into L0 uploads and other
   levels: compaction and snapshots), POSTs (multipart, batch delete), LISTs, GETs, DELETEs.
   This counts requests, not objects, so overwritten or deleted objects and multipart parts
   are all included. S3 bills PUT, POST, COPY and LIST alike ("class A"). Compaction work
   that starts inside the window but finishes after it is counted only in part.

4. The lag-vs-requests curve of litefs's request budget (replica.upload-rate, a token bucket
   of L0 uploads per second): litefs alone at the same 20 commits/s under a few other
   budgets (no limit, 10/s, 2/s, 1/s; 500 [200] commits each), next to its default (the
   steady runs of 1.) and Litestream, with maintenance PUTs per level and the dollars a day
   of that load costs one database.

Percentiles are over all commits of all rounds of a tool; ratios are Litestream / litefs on
the same measure from the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import http.client
import io
import itertools
import json
import os
import queue
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (  # bench/common.py (the script's directory)
    LITEFS_SRC_HELP,
    REPO,
    add_run_options,
    default_signals,
    fill_orders,
    free_port,
    git_describe,
    insert_paced,
    lazy_unmount,
    log_tail,
    machine_line,
    percentile,
    py_spy_setup,
    run_in_workdir,
    run_json_client,
    start_fuse_server,
    summarize_collapsed,
    terminate,
    use_litefs_src,
)
from common import log as _log

HERE = Path(__file__).resolve()
LITESTREAM = REPO / ".venv" / "bin" / "litestream"
MiB = 2**20
PAGE_SIZE = 4096
DB_NAME = "bench.db"
POLLER_ADDR = "127.0.0.2"  # the poller's and downloader's source address (tools use 127.0.0.1)
POLL_INTERVAL = 0.010
FULL_LIST_INTERVAL = 1.0
ROW_CHARS = 100
TOOLS = ("litefs", "litestream")
S3_CLASS_A_PER_1000 = 0.005  # US$ per 1,000 PUT/COPY/POST/LIST requests (S3 Standard)
LABEL = {"litefs": "litefs-py", "litestream": "Litestream 0.5.17"}


@dataclass(frozen=True)
class Scale:
    name: str
    steady_rounds: int
    steady_txns: int  # per round
    rate: float  # commits per second
    burst_txns: int
    restore_db_sizes: tuple[int, ...]  # one restore database (and pair of buckets) per size
    restore_runs: int
    followup_txns: int = 50
    budget_txns: int = 500  # per point of the lag-vs-requests curve
    budget_rates: tuple[float, ...] = (0.0, 10.0, 2.0, 1.0)  # + the default (steady runs)


FULL = Scale("full", 2, 500, 20.0, 1000, (10 * MiB, 100 * MiB), 3)
QUICK = Scale("quick", 1, 80, 20.0, 200, (10 * MiB, 100 * MiB), 1, 20, budget_txns=200)

# Where `python -m litefs_py` runs from (--litefs-src); the repository by default.
LITEFS_SRC = REPO


# =============================================================================================
# Client: one workload per process, prints one JSON line.
# =============================================================================================

def client_main(arg: str) -> int:
    return run_json_client(run_workload, arg)


def run_workload(spec: dict[str, Any]) -> dict[str, Any]:
    con = sqlite3.connect(spec["path"], isolation_level=None, timeout=30)
    mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise RuntimeError(f"journal_mode is {mode}")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    rnd = random.Random(spec.get("seed", 1))
    values = [rnd.randbytes(ROW_CHARS // 2).hex() for _ in range(spec["n"])]
    pos_path = spec.get("pos")

    def read_txid() -> int:
        with open(pos_path, "rb") as f:
            return int(f.read().split(b"/")[0], 16)

    t0 = time.monotonic()
    rows = insert_paced(con, values, spec.get("rate"), read_txid if pos_path else None)
    seconds = time.monotonic() - t0
    con.close()
    return {"rows": rows, "seconds": seconds}


def make_client_cmd(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, str(HERE), "_client", json.dumps(spec)]


def run_client(spec: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    out = subprocess.run(make_client_cmd(spec), capture_output=True, text=True,
                         timeout=timeout, cwd=REPO)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"client failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    if "error" in result:
        raise RuntimeError(f"client on {spec['path']}: {result['error']}")
    return result


# =============================================================================================
# S3 side: moto, raw HTTP from the poller's address, the access log.
# =============================================================================================

sys.path.insert(0, str(REPO))
from tests.s3_server import (  # noqa: E402
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    MotoServer,
    boto_client,
)


def tool_env() -> dict[str, str]:
    """The tools' environment: test credentials; no AWS_CA_BUNDLE (Litestream fails on an
    unreadable one and loopback http needs none); no PYTHONDONTWRITEBYTECODE, so litefs runs
    from cached bytecode like an installed package instead of compiling itself at each start."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_CA_BUNDLE", "PYTHONDONTWRITEBYTECODE")
           and not k.startswith(("LITEFS_", "LITESTREAM_"))}
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
               AWS_REGION=REGION)
    return env


def replica_url(endpoint: str, bucket: str, path: str) -> str:
    return (f"s3://{bucket}/{path}?endpoint={endpoint}&region={REGION}"
            f"&forcePathStyle=true")


class RawS3:
    """Signed GETs to moto from POLLER_ADDR over plain http.client: cheap enough to poll every
    10 ms, and told apart from the tools' requests in the access log by the address."""

    def __init__(self, port: int) -> None:
        from botocore.auth import S3SigV4Auth
        from botocore.credentials import Credentials

        self.endpoint = f"http://127.0.0.1:{port}"
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                               source_address=(POLLER_ADDR, 0))
        self._auth = S3SigV4Auth(Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY), "s3", REGION)

    def _headers(self, path: str) -> dict[str, str]:
        from botocore.awsrequest import AWSRequest

        req = AWSRequest(method="GET", url=self.endpoint + path)
        self._auth.add_auth(req)
        return dict(req.headers.items())

    def request(self, path: str) -> bytes:
        for attempt in range(3):
            try:
                self.conn.request("GET", path, headers=self._headers(path))
                resp = self.conn.getresponse()
                body = resp.read()
                if resp.status == 404:
                    raise FileNotFoundError(path)
                if resp.status != 200:
                    raise RuntimeError(f"GET {path}: HTTP {resp.status}: {body[:200]!r}")
                if resp.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                return body
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                if attempt == 2:
                    raise
        raise AssertionError

    def list_keys(self, bucket: str, prefix: str, start_after: str = "") -> list[str]:
        keys: list[str] = []
        token = ""
        while True:
            q = {"list-type": "2", "prefix": prefix}
            if start_after:
                q["start-after"] = start_after
            if token:
                q["continuation-token"] = token
            body = self.request(f"/{bucket}?{urllib.parse.urlencode(q)}").decode()
            keys += [_xml_unescape(k) for k in re.findall(r"<Key>(.*?)</Key>", body)]
            m = re.search(r"<NextContinuationToken>(.*?)</NextContinuationToken>", body)
            if "<IsTruncated>true</IsTruncated>" not in body or not m:
                return keys
            token = _xml_unescape(m.group(1))

    def get(self, bucket: str, key: str) -> bytes:
        return self.request(f"/{bucket}/{urllib.parse.quote(key)}")

    def close(self) -> None:
        self.conn.close()


def _xml_unescape(s: str) -> str:
    return (s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
            .replace("&apos;", "'").replace("&amp;", "&"))


LTX_KEY_RE = re.compile(r"/([0-9a-f]{4})/([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")
ACCESS_RE = re.compile(r'^(\S+) - - \[[^\]]*\] "([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3})')


def parse_ltx_key(key: str) -> tuple[int, int, int] | None:
    m = LTX_KEY_RE.search("/" + key)
    return None if m is None else (int(m.group(1), 16), int(m.group(2), 16),
                                   int(m.group(3), 16))


def count_requests(log_path: Path, start: int, end: int, bucket: str,
                   addr: str = "127.0.0.1") -> Counter[str]:
    """Requests in moto's access log between byte offsets, for one bucket and client."""
    with open(log_path, "rb") as f:
        f.seek(start)
        text = f.read(end - start).decode(errors="replace")
    c: Counter[str] = Counter()
    for line in text.splitlines():
        m = ACCESS_RE.match(line)
        if m is None or m.group(1) != addr:
            continue
        method, target = m.group(2), m.group(3)
        path, _, query = target.partition("?")
        parts = path.lstrip("/").split("/", 1)
        if parts[0] != bucket:
            continue
        key = parts[1] if len(parts) > 1 else ""
        if method == "PUT":
            if not key:
                c["PUT bucket"] += 1
            elif "partNumber=" in query:
                c["PUT part"] += 1
            else:
                parsed = parse_ltx_key(key)
                if parsed and parsed[0] == 0:
                    c["PUT L0"] += 1
                else:
                    c["PUT other"] += 1  # compaction (L1-L3), snapshots (L9), anything else
                    if parsed:
                        c[f"PUT L{parsed[0]}"] += 1
        elif method == "GET":
            c["LIST" if not key else "GET"] += 1
        else:
            c[method] += 1
    return c


def log_size(path: Path) -> int:
    return os.path.getsize(path)


# =============================================================================================
# The poller: first-seen times of L0 keys, and what each object contains.
# =============================================================================================

@dataclass
class SeenObject:
    key: str
    min_txid: int
    max_txid: int
    first_seen: float  # monotonic
    size: int = 0
    max_id: int | None = None  # max(t.id) in the database after applying this object
    out_of_order: bool = False


class Poller:
    """Lists `prefix` (an L0 directory) every POLL_INTERVAL; a second thread downloads each new
    object and applies it, in TXID order, to an in-memory database image."""

    def __init__(self, port: int, bucket: str, prefix: str) -> None:
        self.port = port
        self.bucket = bucket
        self.prefix = prefix
        self.objects: dict[str, SeenObject] = {}
        self.applied: list[SeenObject] = []  # in TXID order, max_id known
        self.poll_times: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._q: queue.Queue[SeenObject | None] = queue.Queue()
        self._image = io.BytesIO()
        self._pending: dict[int, SeenObject] = {}
        self._next_txid = 1
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        self._threads = [threading.Thread(target=self._poll, name="poller", daemon=True),
                         threading.Thread(target=self._download, name="downloader",
                                          daemon=True)]

    def start(self) -> Poller:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._q.put(None)
        for t in self._threads:
            t.join(30)

    def _poll(self) -> None:
        s3 = RawS3(self.port)
        last_key = ""
        next_full = time.monotonic() + FULL_LIST_INTERVAL
        next_poll = time.monotonic()
        try:
            while not self._stop.is_set():
                t = time.monotonic()
                full = t >= next_full
                try:
                    keys = s3.list_keys(self.bucket, self.prefix,
                                        "" if full else last_key)
                except Exception as exc:  # moto hiccup: note it, keep polling
                    self.errors.append(f"list: {exc}")
                    keys = []
                seen_at = time.monotonic()
                self.poll_times.append(seen_at)
                if full:
                    next_full = seen_at + FULL_LIST_INTERVAL
                for key in keys:
                    if key in self.objects:
                        continue
                    parsed = parse_ltx_key(key)
                    if parsed is None:
                        continue
                    obj = SeenObject(key, parsed[1], parsed[2], seen_at,
                                     out_of_order=bool(last_key) and key < last_key)
                    self.objects[key] = obj
                    self._q.put(obj)
                    if key > last_key:
                        last_key = key
                next_poll += POLL_INTERVAL
                delay = next_poll - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_poll = time.monotonic()
        finally:
            s3.close()

    def _download(self) -> None:
        s3 = RawS3(self.port)
        try:
            while True:
                obj = self._q.get()
                if obj is None:
                    return
                try:
                    data = s3.get(self.bucket, obj.key)
                except Exception as exc:
                    self.errors.append(f"get {obj.key}: {exc}")
                    continue
                obj.size = len(data)
                self._blobs[obj.key] = data
                self._pending[obj.min_txid] = obj
                self._apply_ready()
        finally:
            s3.close()

    def _apply_ready(self) -> None:
        from litefs_py.ltx import Decoder
        from litefs_py.ltx.apply import apply_pages

        while self._next_txid in self._pending:
            obj = self._pending.pop(self._next_txid)
            data = self._blobs.pop(obj.key)
            try:
                apply_pages(self._image, Decoder(io.BytesIO(data), name=obj.key))
                obj.max_id = max_row_id(self._image.getvalue())
            except Exception as exc:
                self.errors.append(f"apply {obj.key}: {type(exc).__name__}: {exc}")
                obj.max_id = None
            with self.changed:
                self.applied.append(obj)
                self.changed.notify_all()
            self._next_txid = obj.max_txid + 1
        # Anything that cannot extend the chain (overlap after a restart) is reported.
        for lo in [lo for lo, o in self._pending.items() if o.max_txid < self._next_txid]:
            self.errors.append(f"object {self._pending.pop(lo).key} overlaps the chain")

    def max_applied_id(self) -> int:
        ids = [o.max_id for o in self.applied if o.max_id is not None]
        return max(ids, default=0)

    def max_seen_txid(self) -> int:
        return max((o.max_txid for o in list(self.objects.values())), default=0)

    def wait(self, pred: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 0.05))
        return True


def max_row_id(image: bytes) -> int:
    """max(id) of table t in a database image (0 if the table does not exist yet)."""
    if len(image) < 100:
        return 0
    data = bytearray(image)
    data[18] = data[19] = 1  # WAL -> rollback-journal header: a memdb cannot do WAL
    con = sqlite3.connect(":memory:")
    try:
        con.deserialize(bytes(data))
        try:
            row = con.execute("SELECT max(id) FROM t").fetchone()
        except sqlite3.OperationalError:
            return 0
        return int(row[0] or 0)
    finally:
        con.close()


# =============================================================================================
# The two replicators.
# =============================================================================================

class Replicator:
    """A `litefs mount` or a `litestream replicate` process for one database and bucket."""

    def __init__(self, tool: str, root: Path, endpoint: str, bucket: str,
                 replica_settings: dict[str, str] | None = None) -> None:
        self.tool = tool
        self.replica_settings = dict(replica_settings or {})  # litefs: extra replica keys
        self.root = root
        self.endpoint = endpoint
        self.bucket = bucket
        self.path = DB_NAME  # key prefix in the bucket
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / f"{tool}.log"
        root.mkdir(parents=True, exist_ok=True)
        if tool == "litefs":
            self.mount_dir = root / "mnt"
            self.data_dir = root / "data"
            self.db_path = self.mount_dir / DB_NAME
            self.pos_path: Path | None = self.mount_dir / f"{DB_NAME}-pos"
        else:
            self.db_path = root / "db" / DB_NAME
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            self.pos_path = None

    @property
    def l0_prefix(self) -> str:
        return f"{self.path}/0000/"

    @property
    def url(self) -> str:
        return replica_url(self.endpoint, self.bucket, self.path)

    def place_database(self, src: Path) -> None:
        """Put an existing database where this tool will find it before it starts."""
        if self.tool == "litefs":
            dest = self.data_dir / "dbs" / DB_NAME / "database"
            dest.parent.mkdir(parents=True, exist_ok=True)
        else:
            dest = self.db_path
        shutil.copyfile(src, dest)

    def start(self, timeout: float = 600) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        env = tool_env()
        if self.tool == "litefs":
            cfg = self.root / "litefs.yml"
            extra = "".join(f"      {k}: {v}\n" for k, v in self.replica_settings.items())
            # A free port for the replica API: the default :20202 may be taken on a shared
            # machine (nothing here connects to it).
            cfg.write_text(f"dbs:\n  - name: {DB_NAME}\n    replica:\n"
                           f"      url: \"{self.url}\"\n{extra}log:\n  level: info\n"
                           f"http:\n  addr: \"127.0.0.1:{free_port()}\"\n")
            self.mount_dir.mkdir(parents=True, exist_ok=True)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "litefs_py", "mount", "--mount-dir",
                   str(self.mount_dir), "--data-dir", str(self.data_dir), "--config", str(cfg)]
            env["PYTHONPATH"] = str(LITEFS_SRC)
            log.close()
            self.proc = start_fuse_server("litefs mount", cmd, self.mount_dir, self.log_path,
                                          cwd=LITEFS_SRC, env=env, timeout=timeout)
            return
        cfg = self.root / "litestream.yml"
        cfg.write_text(
            f"dbs:\n  - path: {self.db_path}\n    replica:\n      type: s3\n"
            f"      bucket: {self.bucket}\n      path: {self.path}\n"
            f"      endpoint: {self.endpoint}\n      region: {REGION}\n"
            f"      force-path-style: true\n      sync-interval: 1s\n")
        self.proc = subprocess.Popen([str(LITESTREAM), "replicate", "-config", str(cfg)],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
                                     preexec_fn=default_signals)
        log.close()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        try:
            terminate(proc, 120)
        finally:
            if self.tool == "litefs":
                lazy_unmount(self.mount_dir)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pos_txid(self) -> int:
        assert self.pos_path is not None
        return int(self.pos_path.read_text().split("/")[0], 16)

    def log_tail(self, n: int = 30) -> str:
        return log_tail(self.log_path, n)

    def log_problems(self) -> list[str]:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        pat = re.compile(r"\b(ERROR|WARNING|WARN|Traceback|panic)\b")
        return [ln for ln in lines if pat.search(ln) and "signal received" not in ln]


def create_schema(path: Path) -> None:
    con = sqlite3.connect(path, isolation_level=None, timeout=30)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    con.close()


# =============================================================================================
# Phase 1 + 3: lag and requests.
# =============================================================================================

@dataclass
class RunResult:
    tool: str
    workload: str
    round: int
    commits: int
    seconds: float  # client time for the commits
    lags: list[float]
    objects: int  # L0 objects during the workload
    requests: Counter[str]
    poll_period_ms: float
    pos_mismatches: int | None = None
    invisible: int = 0
    problems: list[str] = field(default_factory=list)
    upload_rate: float | None = None  # litefs's replica.upload-rate; None: the default


@dataclass
class RestoreCase:
    """The restores of one database size: both buckets, both tools, every run."""

    restores: dict[tuple[str, str], list[float]] = field(
        default_factory=lambda: defaultdict(list))  # (bucket written by, restored by) -> s
    restore_cpu: dict[tuple[str, str], list[float]] = field(
        default_factory=lambda: defaultdict(list))
    floors: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    restore_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    source_bytes: int = 0
    source_rows: int = 0


class Bench:
    def __init__(self, args: argparse.Namespace, scale: Scale, root: Path) -> None:
        self.args = args
        self.scale = scale
        self.root = root
        self.moto = MotoServer()
        self.replicators: list[Replicator] = []
        self.runs: list[RunResult] = []
        self.restore_cases: list[RestoreCase] = []
        self.dump: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.buckets = 0

    def new_bucket(self, label: str) -> str:
        self.buckets += 1
        name = f"bench-{self.buckets:02d}-{label}"
        boto_client(self.moto.endpoint).create_bucket(Bucket=name)
        return name

    def stop_all(self) -> None:
        for r in self.replicators:
            with contextlib.suppress(Exception):
                r.stop()

    # ---- one workload on one tool ----
    def lag_run(self, tool: str, workload: str, rnd: int, n: int, rate: float | None,
                seed: int, upload_rate: float | None = None) -> RunResult:
        bucket = self.new_bucket(f"{workload}-{tool}-{rnd}")
        settings = {"upload-rate": f"{upload_rate:g}"} if upload_rate is not None else {}
        rep = Replicator(tool, self.root / f"{workload}-{tool}-{rnd}", self.moto.endpoint,
                         bucket, settings)
        self.replicators.append(rep)
        poller = Poller(self.moto.port, bucket, rep.l0_prefix).start()
        problems: list[str] = []
        try:
            if tool == "litefs":
                rep.start()
                create_schema(rep.db_path)
                setup_txid = rep.pos_txid()
                ok = poller.wait(lambda: poller.max_seen_txid() >= setup_txid, 60)
            else:
                create_schema(rep.db_path)
                rep.start()
                ok = poller.wait(lambda: len(poller.applied) > 0, 60)
            if not ok:
                raise RuntimeError(f"{tool}: the empty database never reached the bucket:\n"
                                   f"{rep.log_tail()}")
            time.sleep(0.5)  # let start-up requests settle before the window opens
            first_key_count = len(poller.objects)
            log_start = log_size(self.moto.log_path)
            spec = {"path": str(rep.db_path), "n": n, "rate": rate, "seed": seed,
                    "pos": str(rep.pos_path) if rep.pos_path else None}
            result = run_client(spec)
            rows: list[tuple[int, float, int]] = [tuple(r) for r in result["rows"]]
            last_id = max(r[0] for r in rows)
            if not poller.wait(lambda: poller.max_applied_id() >= last_id, 60):
                problems.append(f"{tool} {workload} round {rnd}: commits up to id {last_id} "
                                f"not visible after 60 s (seen up to "
                                f"{poller.max_applied_id()})")
            log_end = log_size(self.moto.log_path)
        finally:
            poller.stop()
            problems += [f"{tool} {workload} round {rnd}: poller: {e}"
                         for e in poller.errors[:5]]
            rep.stop()
            problems += [f"{tool} log: {p}" for p in rep.log_problems()[:5]]
        objs = sorted(poller.applied, key=lambda o: o.min_txid)
        lags: list[float] = []
        invisible = 0
        pos_mismatch = 0 if tool == "litefs" else None
        by_txid = sorted(poller.objects.values(), key=lambda o: o.max_txid)
        for rowid, t_commit, txid in rows:
            covering = [o for o in objs if o.max_id is not None and o.max_id >= rowid]
            if not covering:
                invisible += 1
                continue
            visible = min(o.first_seen for o in covering)
            lags.append(visible - t_commit)
            if pos_mismatch is not None:
                by_pos = [o for o in by_txid if o.max_txid >= txid]
                if not by_pos or min(o.first_seen for o in by_pos) != visible:
                    pos_mismatch += 1
        out_of_order = sum(o.out_of_order for o in poller.objects.values())
        if out_of_order:
            problems.append(f"{tool} {workload} round {rnd}: {out_of_order} keys appeared out "
                            "of key order (first-seen time from a full listing)")
        polls = poller.poll_times
        periods = [b - a for a, b in itertools.pairwise(polls)]
        res = RunResult(tool, workload, rnd, len(rows), result["seconds"], lags,
                        len(poller.objects) - first_key_count,
                        count_requests(self.moto.log_path, log_start, log_end, bucket),
                        1000 * statistics.median(periods) if periods else float("nan"),
                        pos_mismatch, invisible, problems, upload_rate)
        self.problems += problems
        if self.args.dump:
            self.dump.append({
                "tool": tool, "workload": workload, "round": rnd, "bucket": bucket,
                "wall_minus_monotonic": time.time() - time.monotonic(),
                "commits": [{"id": r[0], "t": r[1], "txid": r[2]} for r in rows],
                "objects": [{"key": o.key, "first_seen": o.first_seen, "size": o.size,
                             "max_id": o.max_id} for o in objs],
                "requests": dict(res.requests)})
        _log(f"  {workload:<6} {tool:<10} round {rnd}: {len(rows)} commits in "
             f"{result['seconds']:.1f} s, lag p50 {1000 * _p(lags, 50):.0f} ms "
             f"p99 {1000 * _p(lags, 99):.0f} ms, {res.objects} L0 objects, "
             f"{res.requests['PUT L0'] + res.requests['PUT other']} PUTs")
        return res

    def phase_lag(self) -> None:
        s = self.scale
        for rnd in range(s.steady_rounds):
            order = TOOLS if rnd % 2 == 0 else TOOLS[::-1]
            for tool in order:
                self.runs.append(self.lag_run(tool, "steady", rnd + 1, s.steady_txns, s.rate,
                                              seed=100 + rnd))
        order = TOOLS if s.steady_rounds % 2 == 0 else TOOLS[::-1]
        for tool in order:
            self.runs.append(self.lag_run(tool, "burst", 1, s.burst_txns, None, seed=999))
        # The lag-vs-requests curve: litefs at the same steady rate under other budgets (the
        # default's point is the steady runs above).
        for i, upload_rate in enumerate(s.budget_rates):
            self.runs.append(self.lag_run("litefs", "budget", i + 1, s.budget_txns, s.rate,
                                          seed=300 + i, upload_rate=upload_rate))

    # ---- phase 2: restore ----
    def phase_restore(self) -> None:
        for target in self.scale.restore_db_sizes:
            case = RestoreCase()
            self.restore_cases.append(case)
            self.restore_case(target, case)

    def restore_case(self, target: int, case: RestoreCase) -> None:
        s = self.scale
        tag = f"{target // MiB}m"
        src = self.root / f"restore-src-{tag}" / DB_NAME
        src.parent.mkdir(parents=True)
        t0 = time.perf_counter()
        build_database(src, target)
        size = src.stat().st_size
        _log(f"built a {size / MiB:.1f} MiB database in {time.perf_counter() - t0:.1f} s")
        urls: dict[str, str] = {}
        for tool in TOOLS:
            bucket = self.new_bucket(f"restore-{tag}-{tool}")
            rep = Replicator(tool, self.root / f"restore-{tag}-{tool}", self.moto.endpoint,
                             bucket)
            self.replicators.append(rep)
            rep.place_database(src)
            t0 = time.perf_counter()
            rep.start()
            s3 = boto_client(self.moto.endpoint)
            target_txid = rep.pos_txid() if tool == "litefs" else 1

            def l0_max(s3: Any = s3, bucket: str = bucket, rep: Replicator = rep) -> int:
                keys = [k["Key"] for k in s3.list_objects_v2(
                    Bucket=bucket, Prefix=rep.l0_prefix).get("Contents", [])]
                parsed = [p for p in map(parse_ltx_key, keys) if p is not None]
                return max((p[2] for p in parsed), default=0)

            if not _wait_until(functools.partial(_at_least, l0_max, target_txid), 600):
                raise RuntimeError(f"{tool}: the database never reached the bucket:\n"
                                   f"{rep.log_tail()}")
            upload_s = time.perf_counter() - t0
            res = run_client({"path": str(rep.db_path), "n": s.followup_txns, "rate": s.rate,
                              "seed": 7, "pos": str(rep.pos_path) if rep.pos_path else None})
            if tool == "litefs":
                final = res["rows"][-1][2]
                _wait_until(functools.partial(_at_least, l0_max, final), 120)
            else:
                _wait_quiet(l0_max, 2.0, 120)  # Litestream syncs every second
            rep.stop()
            self.problems += [f"{tool} log (restore bucket): {p}"
                              for p in rep.log_problems()[:5]]
            urls[tool] = rep.url
            listing = boto_client(self.moto.endpoint).list_objects_v2(
                Bucket=bucket, Prefix=f"{rep.path}/")
            levels: Counter[int] = Counter()
            level_bytes: Counter[int] = Counter()
            for obj in listing.get("Contents", []):
                parsed = parse_ltx_key(obj["Key"])
                if parsed:
                    levels[parsed[0]] += 1
                    level_bytes[parsed[0]] += obj["Size"]
            case.restore_info[tool] = {
                "bucket": bucket, "upload_s": upload_s, "levels": dict(levels),
                "level_bytes": dict(level_bytes)}
            _log(f"  {tool} replicated the database in {upload_s:.1f} s; bucket: "
                 + ", ".join(f"L{lv}: {levels[lv]} ({level_bytes[lv] / MiB:.1f} MiB)"
                             for lv in sorted(levels)))
        con = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
        case.source_rows = con.execute("SELECT count(*) FROM orders").fetchone()[0]
        expected_rows = con.execute("SELECT count(*) FROM t").fetchone()[0] + s.followup_txns
        con.close()
        case.source_bytes = size
        digests: dict[tuple[str, str], set[str]] = defaultdict(set)
        pairs = [(b, t) for b in TOOLS for t in TOOLS]
        n_runs = max(1, self.args.restore_runs or s.restore_runs)
        for run in range(n_runs):
            for bucket_tool in TOOLS:
                secs, nobj, nbytes = self.download_floor(urls[bucket_tool])
                case.floors[bucket_tool].append(secs)
                case.restore_info[bucket_tool]["plan"] = (nobj, nbytes)
            order = pairs[run % 4:] + pairs[:run % 4]
            for bucket_tool, restorer in order:
                out_dir = self.root / f"out-{tag}-{run}-{bucket_tool}-{restorer}"
                out_dir.mkdir()
                out = out_dir / DB_NAME
                os.sync()
                timed = self.restore_once(restorer, urls[bucket_tool], out)
                if timed is None:
                    self.problems.append(f"{restorer} restore of the {bucket_tool} bucket "
                                         "failed")
                    shutil.rmtree(out_dir, ignore_errors=True)
                    continue
                secs, cpu = timed
                case.restores[(bucket_tool, restorer)].append(secs)
                case.restore_cpu[(bucket_tool, restorer)].append(cpu)
                digests[(bucket_tool, restorer)].add(_digest(out))
                if run == 0:
                    check = check_restored(out, expected_rows)
                    if check != "ok":
                        self.problems.append(f"{restorer} restore of the {bucket_tool} "
                                             f"bucket: {check}")
                _log(f"  restore run {run + 1}: {bucket_tool} bucket by {restorer}: "
                     f"{secs:.2f} s (CPU {cpu:.2f} s)")
                shutil.rmtree(out_dir, ignore_errors=True)
        for bucket_tool in TOOLS:
            ds = [digests[(bucket_tool, t)] for t in TOOLS if digests[(bucket_tool, t)]]
            same = len(set().union(*ds)) == 1 if ds else False
            case.restore_info[bucket_tool]["identical"] = same
            if not same:
                self.notes.append(f"restores of the {bucket_tool} bucket are not byte-identical "
                                  "across tools/runs")
        if self.args.py_spy:
            self.profile_restores(urls, tag)

    def restore_once(self, tool: str, url: str, out: Path,
                     prefix: list[str] | None = None) -> tuple[float, float] | None:
        """(wall seconds, CPU seconds of the restore process and its children), or None."""
        if tool == "litefs":
            cmd = [sys.executable, "-m", "litefs_py", "restore", "-o", str(out), url]
        else:
            cmd = [str(LITESTREAM), "restore", "-o", str(out), url]
        env = tool_env()
        env["PYTHONPATH"] = str(LITEFS_SRC)
        with tempfile.TemporaryFile() as output:
            t0 = time.perf_counter()
            p = subprocess.Popen([*(prefix or []), *cmd], stdout=output, stderr=output,
                                 stdin=subprocess.DEVNULL, env=env, cwd=LITEFS_SRC)
            _pid, status, usage = os.wait4(p.pid, 0)
            secs = time.perf_counter() - t0
            p.returncode = os.waitstatus_to_exitcode(status)
            output.seek(0)
            text = output.read().decode(errors="replace")
        if p.returncode != 0 or not out.exists():
            _log(f"  !! {tool} restore failed (exit {p.returncode}): {text[-1500:]}")
            return None
        return secs, usage.ru_utime + usage.ru_stime

    def download_floor(self, url: str) -> tuple[float, int, int]:
        """Fetch the objects of litefs's restore plan with bare HTTP GETs on one connection,
        discarding the bytes: what any restore must wait for from this server.
        Returns (seconds, objects, bytes)."""
        env = tool_env()
        env["PYTHONPATH"] = str(LITEFS_SRC)
        p = subprocess.run([sys.executable, "-m", "litefs_py", "restore", "--dry-run", "--json",
                            url], capture_output=True, text=True, env=env, cwd=LITEFS_SRC,
                           timeout=600)
        plan = json.loads(p.stdout)
        bucket = urllib.parse.urlsplit(url).netloc
        s3 = RawS3(self.moto.port)
        try:
            t0 = time.perf_counter()
            total = sum(len(s3.get(bucket, f["key"])) for f in plan["files"])
            secs = time.perf_counter() - t0
        finally:
            s3.close()
        return secs, len(plan["files"]), total

    def profile_restores(self, urls: dict[str, str], tag: str) -> None:
        found = py_spy_setup(self.args.py_spy, self.notes)
        if found is None:
            return
        py_spy, out_dir = found
        for bucket_tool, url in urls.items():
            for fmt, ext in (("raw", "txt"), ("flamegraph", "svg")):
                prof = out_dir / f"restore-{tag}-{bucket_tool}-bucket.{ext}"
                out = self.root / f"prof-{tag}-{bucket_tool}-{fmt}" / DB_NAME
                out.parent.mkdir()
                timed = self.restore_once("litefs", url, out,
                                          [py_spy, "record", "--rate", "250", "--idle",
                                           "--format", fmt, "-o", str(prof), "--"])
                shutil.rmtree(out.parent, ignore_errors=True)
                if timed is None:
                    self.notes.append(f"py-spy run of the {bucket_tool} restore failed")
            txt = out_dir / f"restore-{tag}-{bucket_tool}-bucket.txt"
            if txt.exists():
                summary = out_dir / f"restore-{tag}-{bucket_tool}-bucket-summary.txt"
                summary.write_text(summarize_collapsed(txt))
                self.notes.append(f"py-spy profile of litefs restoring the {bucket_tool} "
                                  f"bucket: {summary}")

    # ---- report ----
    def report(self) -> str:
        s = self.scale
        L: list[str] = []
        L.append(f"scale: {s.name}")
        for workload, title in (("steady", f"{s.steady_rounds} round(s) × {s.steady_txns:,} "
                                           f"single-row commits at {s.rate:g}/s"),
                                ("burst", f"{s.burst_txns:,} single-row commits, "
                                          "unthrottled")):
            runs = [r for r in self.runs if r.workload == workload]
            if not runs:
                continue
            L.append("")
            L.append(f"### Commit → object-visible lag: {title} (WAL, synchronous=NORMAL)")
            L.append("")
            L.append("| tool | commits | commit rate /s | p50 ms | p90 ms | p99 ms | max ms "
                     "| L0 objects | commits per object | poll period ms |")
            L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            stats: dict[str, dict[int, float]] = {}
            for tool in TOOLS:
                rs = [r for r in runs if r.tool == tool]
                if not rs:
                    continue
                lags = [x for r in rs for x in r.lags]
                commits = sum(r.commits for r in rs)
                objects = sum(r.objects for r in rs)
                secs = sum(r.seconds for r in rs)
                st = {p: _p(lags, p) for p in (50, 90, 99, 100)}
                stats[tool] = st
                L.append(f"| {LABEL[tool]} | {commits:,} | {commits / secs:.1f} | "
                         f"{_ms(st[50])} | {_ms(st[90])} | {_ms(st[99])} | {_ms(st[100])} | "
                         f"{objects:,} | {commits / objects if objects else float('nan'):.1f} "
                         f"| {statistics.median(r.poll_period_ms for r in rs):.1f} |")
            if len(stats) == 2:
                a, b = stats["litefs"], stats["litestream"]
                r50 = b[50] / a[50] if a[50] > 0 else float("inf")
                r99 = b[99] / a[99] if a[99] > 0 else float("inf")
                line = (f"Litestream / litefs-py: p50 {r50:.1f}×, p99 {r99:.1f}×")
                if workload == "steady":
                    line += (f" — target litefs-py p50 ≥ 5× lower: "
                             f"{'met' if r50 >= 5 else 'MISSED'}")
                L.append("")
                L.append(line)
            mism = [r.pos_mismatches for r in runs if r.pos_mismatches is not None]
            inv = sum(r.invisible for r in runs)
            if mism:
                L.append(f"litefs-py `-pos` TXID mapping disagrees with the content mapping for "
                         f"{sum(mism)} commit(s); {inv} commit(s) never became visible")
        if self.runs:
            self.report_requests(L)
            self.report_budget(L)
        self.report_restores(L)
        if self.notes:
            L.append("")
            L.extend(f"note: {n}" for n in self.notes)
        L.append("")
        if self.problems:
            L.append("PROBLEMS:")
            L.extend(f"  {p}" for p in self.problems)
        else:
            L.append("no problems: every commit became visible, mappings agree, restores "
                     "verified")
        return "\n".join(L)

    def report_requests(self, L: list[str]) -> None:
        L.append("")
        L.append("### Requests per 1,000 transactions (moto access log, during the workload)")
        L.append("")
        L.append("| workload | tool | L0 PUTs | other PUTs | POST | LIST | GET | DELETE | HEAD | "
                 "all PUT+POST | class A (PUT+POST+LIST) |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        per1k: dict[tuple[str, str], float] = {}
        for workload in ("steady", "burst"):
            for tool in TOOLS:
                rs = [r for r in self.runs if r.workload == workload and r.tool == tool]
                if not rs:
                    continue
                c: Counter[str] = Counter()
                for r in rs:
                    c.update(r.requests)
                k = 1000 / sum(r.commits for r in rs)
                puts = c["PUT L0"] + c["PUT other"] + c["PUT part"]
                put_post = puts + c["POST"]
                per1k[(workload, tool)] = put_post * k
                L.append(f"| {workload} | {LABEL[tool]} | {c['PUT L0'] * k:.0f} | "
                         f"{(c['PUT other'] + c['PUT part']) * k:.0f} | {c['POST'] * k:.0f} | "
                         f"{c['LIST'] * k:.0f} | {c['GET'] * k:.0f} | {c['DELETE'] * k:.0f} | "
                         f"{c['HEAD'] * k:.0f} | {put_post * k:.0f} | "
                         f"{(put_post + c['LIST']) * k:.0f} |")
        for workload in ("steady", "burst"):
            mine, theirs = per1k.get((workload, "litefs")), per1k.get((workload, "litestream"))
            if mine and theirs:
                L.append(f"{workload}: litefs-py makes {mine / theirs:.1f}× Litestream's "
                         "PUT+POST requests")

    def report_budget(self, L: list[str]) -> None:
        """The lag-vs-requests curve: litefs under several request budgets, the default and
        Litestream, all at the steady rate; maintenance requests counted per level; what a
        day of this load costs at S3's class A price."""
        s = self.scale
        points: list[tuple[str, list[RunResult]]] = []
        default = [r for r in self.runs if r.workload == "steady" and r.tool == "litefs"]
        if default:
            points.append((f"{default_upload_rate():g}/s (default)", default))
        for rate in sorted({r.upload_rate for r in self.runs if r.workload == "budget"
                            and r.upload_rate is not None}, key=lambda x: (x == 0, -x)):
            rs = [r for r in self.runs if r.workload == "budget" and r.upload_rate == rate]
            points.append(("no limit" if rate == 0 else f"{rate:g}/s", rs))
        theirs = [r for r in self.runs if r.workload == "steady" and r.tool == "litestream"]
        if len(points) < 2:
            return
        if theirs:
            points.append((LABEL["litestream"], theirs))
        L.append("")
        L.append(f"### Lag vs requests: litefs-py's request budget (replica.upload-rate) at "
                 f"{s.rate:g} commits/s")
        L.append("")
        L.append("Requests per 1,000 transactions from the moto access log during the "
                 "workload; maintenance = compaction (L1-L3) and snapshot (L9) PUTs. Cost: "
                 f"class A requests (PUT, POST, LIST) at ${S3_CLASS_A_PER_1000} per 1,000, "
                 f"for one database committing {s.rate:g}/s all day.")
        L.append("")
        L.append("| budget | commits | lag p50 ms | p99 ms | L0 PUTs | maintenance PUTs "
                 "(L1/L2/L3/L9) | POST | PUT+POST | × Litestream | Litestream p50 / this "
                 "| $ per day |")
        L.append("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
        base_p50 = _p([x for r in theirs for x in r.lags], 50) if theirs else float("nan")
        base_req = None
        rows = []
        for label, rs in points:
            c: Counter[str] = Counter()
            for r in rs:
                c.update(r.requests)
            commits = sum(r.commits for r in rs)
            k = 1000 / commits
            put_post = (c["PUT L0"] + c["PUT other"] + c["PUT part"] + c["POST"]) * k
            class_a = put_post + c["LIST"] * k
            lags = [x for r in rs for x in r.lags]
            rows.append((label, rs, c, commits, k, put_post, class_a, lags))
            if label == LABEL["litestream"]:
                base_req = put_post
        for label, _rs, c, commits, k, put_post, class_a, lags in rows:
            maint = "/".join(f"{c[f'PUT L{lv}'] * k:.0f}" for lv in (1, 2, 3, 9))
            times = f"{put_post / base_req:.1f}×" if base_req else "-"
            p50 = _p(lags, 50)
            faster = f"{base_p50 / p50:.1f}×" if p50 > 0 else "-"
            dollars = class_a / 1000 * s.rate * 86400 / 1000 * S3_CLASS_A_PER_1000
            L.append(f"| {label} | {commits:,} | {_ms(p50)} | {_ms(_p(lags, 99))} | "
                     f"{c['PUT L0'] * k:.0f} | {maint} | {c['POST'] * k:.0f} | "
                     f"{put_post:.0f} | {times} | {faster} | {dollars:.2f} |")
        if default and base_req:
            _label, _rs, _c, _n, _k, mine, *_ = rows[0]
            p50 = _p([x for r in default for x in r.lags], 50)
            L.append("")
            req_ok = "met" if mine <= 3 * base_req else "MISSED"
            lag_ok = "met" if base_p50 >= 5 * p50 else "MISSED"
            L.append(f"Default settings: litefs-py makes {mine / base_req:.1f}× Litestream's "
                     f"PUT+POST requests (target ≤ 3×: {req_ok}) with a lag p50 "
                     f"{base_p50 / p50:.1f}× lower (target ≥ 5×: {lag_ok})")

    def report_restores(self, L: list[str]) -> None:
        summary: list[str] = []
        for case in self.restore_cases:
            self.report_restore_case(L, case, summary)
        if len(summary) > 1:
            L.append("")
            L.append("Restore of the bucket Litestream wrote, litefs-py / Litestream (median of "
                     "each): " + "; ".join(summary))

    def report_restore_case(self, L: list[str], case: RestoreCase, summary: list[str]) -> None:
        s = self.scale
        if case.restores:
            L.append("")
            L.append(f"### Restore of the same {case.source_bytes / MiB:.0f} MiB database "
                     f"({case.source_rows:,} orders, then {s.followup_txns} single-row commits)")
            L.append("")
            L.append("| bucket written by | objects in the bucket | restored by | median s "
                     "(min–max) | CPU s | litefs-py / Litestream | same bytes |")
            L.append("|---|---|---|---:|---:|---:|---|")
            for bt in TOOLS:
                info = case.restore_info.get(bt, {})
                lv = info.get("levels", {})
                lb = info.get("level_bytes", {})
                objs = ", ".join(f"L{x}: {lv[x]} ({lb[x] / MiB:.1f} MiB)" for x in sorted(lv))
                for rt in TOOLS:
                    xs = case.restores.get((bt, rt), [])
                    if not xs:
                        L.append(f"| {LABEL[bt]} | {objs} | {LABEL[rt]} | failed | - | - | - |")
                        continue
                    ratio = "-"
                    if rt == "litefs":
                        ys = case.restores.get((bt, "litestream"), [])
                        if ys:
                            ratio = f"{statistics.median(xs) / statistics.median(ys):.2f}×"
                    L.append(f"| {LABEL[bt]} | {objs} | {LABEL[rt]} | "
                             f"{statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f}) | "
                             f"{statistics.median(case.restore_cpu[(bt, rt)]):.2f} | {ratio} | "
                             f"{'yes' if info.get('identical') else 'NO'} |")
                fl = case.floors.get(bt)
                if fl and "plan" in info:
                    nobj, nbytes = info["plan"]
                    L.append(f"| {LABEL[bt]} | | floor: bare GETs of the {nobj} planned objects "
                             f"({nbytes / MiB:.1f} MiB) | {statistics.median(fl):.2f} "
                             f"({min(fl):.2f}–{max(fl):.2f}) | - | - | - |")
            xs = case.restores.get(("litestream", "litefs"), [])
            ys = case.restores.get(("litestream", "litestream"), [])
            if xs and ys:
                same = statistics.median(xs) / statistics.median(ys)
                cpu = (statistics.median(case.restore_cpu[("litestream", "litefs")])
                       / statistics.median(case.restore_cpu[("litestream", "litestream")]))
                summary.append(f"{case.source_bytes / MiB:.0f} MiB {same:.2f}× "
                               f"({'met' if same <= 1.0 else 'MISSED'}; CPU {cpu:.2f}×)")
                L.append("")
                L.append(f"Same bucket (written by Litestream): litefs-py restore takes "
                         f"{same:.2f}× Litestream's wall time (CPU time {cpu:.2f}×) — target "
                         f"≤ 1.0×: {'met' if same <= 1.0 else 'MISSED'}")
            for bt in TOOLS:
                if bt in case.restore_info:
                    info = case.restore_info[bt]
                    L.append(f"{LABEL[bt]} replicated the {case.source_bytes / MiB:.0f} MiB "
                             f"database (first upload) in {info['upload_s']:.1f} s")


def default_upload_rate() -> float:
    """replica.upload-rate's default in the litefs being measured."""
    from litefs_py.config import ReplicaConfig

    fields = {f.name: f for f in dataclasses.fields(ReplicaConfig)}
    return float(fields["upload_rate"].default) if "upload_rate" in fields else 0.0


def _p(xs: list[float], p: float) -> float:
    return percentile(xs, p) if xs else float("nan")


def _ms(x: float) -> str:
    return f"{1000 * x:,.0f}"


def _at_least(value: Callable[[], int], n: int) -> bool:
    return value() >= n


def _wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False


def _wait_quiet(value: Callable[[], int], quiet: float, timeout: float) -> None:
    """Wait until value() has not changed for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = value(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        v = value()
        if v != last:
            last, since = v, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def _digest(path: Path) -> str:
    h = hashlib.blake2b()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_restored(path: Path, expected_rows: int) -> str:
    """quick_check, and the row count of `t` (the seed row plus the follow-up commits)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
        check = con.execute("PRAGMA quick_check").fetchall()
    finally:
        con.close()
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    if check != [("ok",)]:
        return "quick_check: " + "; ".join(r[0] for r in check[:3])
    if rows != expected_rows:
        return f"{rows:,} rows, expected {expected_rows:,}"
    return "ok"


# --- the restore database (the same rows as bench/codec.py's) -----------------------------


def build_database(path: Path, target_bytes: int) -> None:
    """About `target_bytes` of orders (text, integers, an index) plus the table `t` the
    workloads write; WAL mode at the end, as both replicators need."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute(f"PRAGMA page_size={PAGE_SIZE}")
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    fill_orders(con, target_bytes, PAGE_SIZE,
                setup=("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
                       "INSERT INTO t(v) VALUES ('seed')"))
    con.execute("PRAGMA journal_mode=WAL")
    con.close()


# --- profiles -----------------------------------------------------------------------------------

def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "_client":
        return client_main(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="80 commits per tool, a 200-commit burst, a 10 MiB database, one "
                         "restore run (a smoke test)")
    ap.add_argument("--skip-lag", action="store_true", help="skip the lag and request phase")
    ap.add_argument("--skip-restore", action="store_true", help="skip the restore phase")
    ap.add_argument("--restore-runs", type=int, default=None,
                    help="restores per (bucket, tool) pair; the median is reported "
                         "(default 3, --quick 1)")
    ap.add_argument("--budget-rates", metavar="R,R,...", default=None,
                    help="upload-rate values (per second; 0 = no limit) for the lag-vs-requests "
                         "curve (default 0,10,2,1); an empty string skips the curve")
    ap.add_argument("--budget-txns", type=int, default=None,
                    help="commits per point of the curve (default 500, --quick 200)")
    ap.add_argument("--py-spy", metavar="DIR",
                    help="after the timed restores, profile one litefs restore of each bucket "
                         "with py-spy (flame graph, collapsed stacks and a summary in DIR)")
    add_run_options(ap, dump="write every commit time and object first-seen time as JSON",
                    litefs_src=f"{LITEFS_SRC_HELP}; default: this repository")
    args = ap.parse_args()
    if args.litefs_src:
        global LITEFS_SRC
        LITEFS_SRC = use_litefs_src(ap, args.litefs_src)
        sys.path.insert(0, str(LITEFS_SRC))  # the poller decodes with the same codec
    if not LITESTREAM.exists():
        ap.error(f"{LITESTREAM} not found")
    scale = QUICK if args.quick else FULL
    if args.budget_rates is not None:
        rates = tuple(float(x) for x in args.budget_rates.split(",") if x.strip())
        scale = dataclasses.replace(scale, budget_rates=rates)
    if args.budget_txns is not None:
        scale = dataclasses.replace(scale, budget_txns=args.budget_txns)
    if os.geteuid() != 0:
        _log("warning: not root: the FUSE mount may fail")
    root = Path(tempfile.mkdtemp(prefix="litefs-repl-bench-", dir=args.tmp))
    bench = Bench(args, scale, root)
    load_start = os.getloadavg()[0]
    _log(f"work directory {root}")
    t0 = time.perf_counter()

    def run() -> None:
        bench.moto.start()
        _log(f"moto_server at {bench.moto.endpoint}")
        if not args.skip_lag:
            t1 = time.perf_counter()
            bench.phase_lag()
            _log(f"lag phase: {time.perf_counter() - t1:.0f} s")
        if not args.skip_restore:
            t1 = time.perf_counter()
            bench.phase_restore()
            _log(f"restore phase: {time.perf_counter() - t1:.0f} s")

    def stop() -> None:
        bench.stop_all()
        bench.moto.stop()  # after the mounts: they talk to it until they stop

    run_in_workdir(root, args.keep, run, stop)
    if args.dump:
        Path(args.dump).write_text(json.dumps(bench.dump))
    ls_version = subprocess.run([str(LITESTREAM), "version"], capture_output=True, text=True,
                                env=tool_env()).stdout.strip()
    print(f"litefs from {LITEFS_SRC}{git_describe(LITEFS_SRC)}; Litestream {ls_version}")
    print(machine_line(t0))
    print(f"load average at start {load_start:.1f}, at the end {os.getloadavg()[0]:.1f} "
          f"(a busy machine slows a mostly single-threaded process more than Go's)")
    print(bench.report())
    return 1 if bench.problems else 0


if __name__ == "__main__":
    sys.exit(main())
