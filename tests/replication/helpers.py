"""Helpers for the replication tests: the bucket as seen from outside, both restore programs,
dumps, configuration files and the SQLite client process."""

from __future__ import annotations

import json
import os
import select
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from litefs_py.ltx.filename import is_ltx_filename, parse_filename
from litefs_py.storage.base import LtxFileInfo
from tests.replication.sqlproc import dump_hash
from tests.s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, boto_client

REPO = Path(__file__).resolve().parents[2]
SQLPROC = Path(__file__).resolve().parent / "sqlproc.py"
SUBPROCESS_TIMEOUT = 60.0
T = TypeVar("T")
_CLIENTS: dict[str, Any] = {}


def s3(endpoint: str) -> Any:
    """A cached plain boto3 client (making one costs ~100 ms, too slow for polling)."""
    client = _CLIENTS.get(endpoint)
    if client is None:
        client = _CLIENTS[endpoint] = boto_client(endpoint)
    return client


# ---- waiting -------------------------------------------------------------------------------


def wait_until(pred: Callable[[], T], timeout: float, interval: float = 0.05,
               what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ---- the bucket from outside (plain boto3, not the code under test) -------------------------


@dataclass(frozen=True)
class Obj:
    level: int
    lo: int
    hi: int
    key: str
    size: int
    last_modified: datetime


def list_ltx(endpoint: str, bucket: str, prefix: str) -> list[Obj]:
    """Every `<prefix>/<level %04x>/<min>-<max>.ltx` object, in one paginated listing (moto
    answers a page atomically; a few hundred keys fit in one page)."""
    prefix = prefix.strip("/") + "/"
    out: list[Obj] = []
    pages = s3(endpoint).get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix)
    for page in pages:
        for o in page.get("Contents", []):
            rel = o["Key"][len(prefix):]
            parts = rel.split("/")
            if len(parts) != 2 or len(parts[0]) != 4 or not is_ltx_filename(parts[1]):
                continue
            lo, hi = parse_filename(parts[1])
            out.append(Obj(int(parts[0], 16), lo, hi, o["Key"], int(o["Size"]),
                           o["LastModified"]))
    out.sort(key=lambda o: (o.level, o.lo, o.hi))
    return out


def max_txid(objs: list[Obj]) -> int:
    return max((o.hi for o in objs), default=0)


def by_level(objs: list[Obj]) -> dict[int, list[LtxFileInfo]]:
    levels: dict[int, list[LtxFileInfo]] = {}
    for o in objs:
        levels.setdefault(o.level, []).append(LtxFileInfo(
            level=o.level, min_txid=o.lo, max_txid=o.hi, size=o.size,
            timestamp=o.last_modified, key=o.key))
    return levels


def chain_problem(objs: list[Obj]) -> str | None:
    """None if the listing holds a chain of files from TXID 1 to its highest TXID, else why
    not. Independent of the code under test: from TXID 0, repeatedly take, over every level,
    the file that starts at most one past the current TXID and reaches furthest."""
    if not objs:
        return "no LTX objects"
    latest = max_txid(objs)
    cur = 0
    while cur < latest:
        reach = max((o.hi for o in objs if o.lo <= cur + 1 and o.hi > cur), default=None)
        if reach is None:
            nxt = min((o.lo for o in objs if o.lo > cur + 1), default=None)
            return (f"no file continues TXID {cur:x} (next file starts at "
                    f"{'-' if nxt is None else f'{nxt:x}'}; latest {latest:x})")
        cur = reach
    return None


def describe(objs: list[Obj]) -> str:
    return ", ".join(f"L{o.level}:{o.lo:x}-{o.hi:x}" for o in objs)


def delete_keys(endpoint: str, bucket: str, keys: list[str]) -> None:
    client = s3(endpoint)
    for key in keys:
        client.delete_object(Bucket=bucket, Key=key)


def get_object(endpoint: str, bucket: str, key: str) -> tuple[bytes, dict[str, str]]:
    resp = s3(endpoint).get_object(Bucket=bucket, Key=key)
    return resp["Body"].read(), dict(resp.get("Metadata", {}))


def put_object(endpoint: str, bucket: str, key: str, data: bytes,
               metadata: dict[str, str]) -> None:
    s3(endpoint).put_object(Bucket=bucket, Key=key, Body=data, Metadata=metadata)


def put_requests(moto_log: Path, bucket: str, key_prefix: str) -> int:
    """PUT requests for keys under `key_prefix` in the moto_server access log (one line per
    request, e.g. `"PUT /bucket/backups/app.db/0000/...ltx HTTP/1.1" 200 -`)."""
    needle = f'"PUT /{bucket}/{key_prefix}'
    with open(moto_log, errors="replace") as f:
        return sum(1 for line in f if needle in line)


# ---- a mount's status document ------------------------------------------------------------


def replica_status(data_dir: Path, name: str = "app.db") -> dict[str, Any]:
    """The `replica` entry of database `name` in DATA/status.json ({} until there is one)."""
    try:
        doc = json.loads((data_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    rep: dict[str, Any] = doc.get("databases", {}).get(name, {}).get("replica") or {}
    return rep


def drill_status(data_dir: Path, name: str = "app.db") -> dict[str, Any]:
    """The restore drill's entry (`replica.validation`) of database `name`, or {}."""
    drill: dict[str, Any] = replica_status(data_dir, name).get("validation") or {}
    return drill


# ---- URLs ------------------------------------------------------------------------------------


def litefs_url(bucket: str, path: str, endpoint: str) -> str:
    return f"s3://{bucket}/{path.strip('/')}?endpoint={endpoint}"


def litestream_url(bucket: str, path: str, endpoint: str) -> str:
    q = urllib.parse.urlencode({"endpoint": endpoint, "region": REGION,
                                "forcePathStyle": "true"}, safe=":/")
    return f"s3://{bucket}/{path.strip('/')}?{q}"


# ---- configuration ------------------------------------------------------------------------


def write_config(path: Path, url: str, *, replica: dict[str, str] | None = None,
                 data: dict[str, str] | None = None) -> Path:
    lines = ["replica:", f"  url: {json.dumps(url)}"]
    for k, v in (replica or {}).items():
        lines.append(f"  {k}: {v}")
    if data:
        lines.append("data:")
        for k, v in data.items():
            lines.append(f"  {k}: {v}")
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- restore programs -----------------------------------------------------------------------


def litestream_binary() -> Path | None:
    candidate = Path(sys.executable).parent / "litestream"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("litestream")
    return Path(found) if found else None


def litestream_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env["AWS_ACCESS_KEY_ID"] = ACCESS_KEY_ID
    env["AWS_SECRET_ACCESS_KEY"] = SECRET_ACCESS_KEY
    env["AWS_REGION"] = REGION
    return env


def litefs_env() -> dict[str, str]:
    env = dict(os.environ)
    env["LITEFS_ACCESS_KEY_ID"] = ACCESS_KEY_ID
    env["LITEFS_SECRET_ACCESS_KEY"] = SECRET_ACCESS_KEY
    env["PYTHONPATH"] = str(REPO)
    return env


def litefs_cli(*args: str, timeout: float = SUBPROCESS_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "litefs_py", *args], capture_output=True,
                          text=True, timeout=timeout, env=litefs_env(), cwd=REPO, check=False)


def litefs_restore(url: str, out: Path, txid: int | None = None,
                   extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    args = ["restore", "--json", "-o", str(out), *extra]
    if txid is not None:
        args += ["--txid", f"{txid:016x}"]
    return litefs_cli(*args, url)


def litestream_restore(binary: Path, url: str, out: Path,
                       txid: int | None = None) -> subprocess.CompletedProcess[str]:
    args = [str(binary), "restore", "-o", str(out)]
    if txid is not None:
        args += ["-txid", f"{txid:016x}"]
    return subprocess.run([*args, url], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT, env=litestream_env(), check=False)


def restored_txid(proc: subprocess.CompletedProcess[str]) -> int:
    doc = json.loads(proc.stdout)
    return int(doc["txid"], 16)


# ---- databases --------------------------------------------------------------------------------


def _immutable(path: Path) -> sqlite3.Connection:
    uri = f"file:{urllib.parse.quote(str(path))}?immutable=1"
    return sqlite3.connect(uri, uri=True)


def file_hash(path: Path) -> str:
    """The dump hash of a plain database file (the same function the client process uses)."""
    con = _immutable(path)
    try:
        return dump_hash(con)
    finally:
        con.close()


def integrity(path: Path) -> str:
    con = _immutable(path)
    try:
        return "\n".join(str(r[0]) for r in con.execute("PRAGMA integrity_check"))
    finally:
        con.close()


def cli_dump(path: Path | str, *, immutable: bool = True) -> str:
    """`.dump` by the sqlite3 command-line shell (a separate process)."""
    target = f"file:{urllib.parse.quote(str(path))}?immutable=1" if immutable else str(path)
    proc = subprocess.run(["sqlite3", target, ".dump"], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT, check=False)
    assert proc.returncode == 0, f"sqlite3 .dump {path} failed: {proc.stderr}"
    return proc.stdout


# ---- the SQLite client process ----------------------------------------------------------------


class SqlProc:
    """One `sqlproc.py` process on a database (through the mount, or a plain file)."""

    def __init__(self, db: Path | str, *, wal: bool = False, synchronous: str | None = None,
                 timeout: float = 20.0) -> None:
        args = [sys.executable, str(SQLPROC), str(db)] + (["--wal"] if wal else []) + \
            ([f"--synchronous={synchronous}"] if synchronous else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        ready = self._read(timeout)
        assert ready.get("ready"), ready

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise AssertionError(f"sqlproc gave no answer within {timeout}s")
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"sqlproc exited ({self.proc.wait(5)}): {err}")
        reply: dict[str, Any] = json.loads(line)
        if "fatal" in reply:
            raise AssertionError(f"sqlproc failed: {reply['fatal']}")
        return reply

    def send(self, req: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()

    def request(self, req: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        self.send(req)
        return self._read(timeout)

    def reply(self, timeout: float = 60.0) -> dict[str, Any]:
        return self._read(timeout)

    def txns(self, n: int, *, size: int = 64, hash: bool = False,
             timeout: float = 60.0) -> list[list[Any]]:
        r = self.request({"op": "txn", "n": n, "size": size, "hash": hash}, timeout)
        assert r["error"] is None, f"commit failed: {r['error']}"
        commits: list[list[Any]] = r["commits"]
        return commits

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"op": "exit"})
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                self.proc.kill()
                self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.close()
