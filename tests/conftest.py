"""Fixtures shared by every test package: a real S3 server (moto_server) on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.needs import CI
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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "opt_in: runs only when asked (an environment variable); skipping it is "
        "not a CI failure")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """Under CI=true a skip is a failure (CI must run every test; tests/needs.py says how a
    test names what to install), except for tests marked `opt_in`, which run only when asked.
    Expected failures (xfail) stay what they are."""
    report: pytest.TestReport = yield
    if (CI and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("opt_in") is None):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: a test may not skip in CI, but this one did: {reason}"
    return report
