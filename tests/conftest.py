"""Fixtures shared by every test package: a real S3 server (moto_server) on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.s3_server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer, S3Bucket, create_bucket


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL (`http://127.0.0.1:<port>`) of a moto_server for the whole session."""
    with MotoServer() as server:
        yield server.endpoint


@pytest.fixture
def s3_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """A fresh, empty bucket; LITEFS_ACCESS_KEY_ID/LITEFS_SECRET_ACCESS_KEY are set for it."""
    monkeypatch.setenv("LITEFS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("LITEFS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    return S3Bucket(name=create_bucket(s3_server), endpoint=s3_server)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Iterator[None]:
    """Name every failed test once more, one short line each, as the last thing printed.

    With CI=true pytest never truncates assertion diffs, so the ordinary summary of a failed
    byte comparison can be thousands of lines long and push the test's name out of a log tail.
    """
    yield  # after pytest's own summaries, including the (untruncated) short summary
    failed = [r.nodeid for key in ("failed", "error") for r in terminalreporter.stats.get(key, [])
              if getattr(r, "nodeid", "")]
    if failed:
        terminalreporter.write_sep("=", f"{len(failed)} failed or errored (names only)")
        for nodeid in failed:
            terminalreporter.write_line(f"FAILED {nodeid}")
