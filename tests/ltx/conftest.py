"""Shared settings for the LTX codec tests.

The hypothesis profile is registered here and applied per test with
`settings(parent=settings.get_profile("ltx"), ...)`, so loading it does not change the settings
of other test packages in the same session.
"""

from __future__ import annotations

import shutil

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ltx",
    deadline=None,
    derandomize=False,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="session")
def sqlite3_cli() -> str:
    path = shutil.which("sqlite3")
    if path is None:
        pytest.skip("the sqlite3 command-line shell is not installed")
    return path
