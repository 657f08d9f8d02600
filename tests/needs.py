"""What a test needs from the machine, and what happens when it is not there.

`missing(what, install)` ends the test: on a developer's machine it skips, naming what to
install; with CI=true it fails with the same words, because CI must run everything
(`bash scripts/setup.sh --test` installs all of it on Debian and Ubuntu). tests/conftest.py
also turns any other skip into a failure under CI=true, except for tests marked `opt_in`
(long runs that only run when asked, e.g. LITEFS_SOAK=1).
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import NoReturn

import pytest

CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
SETUP_HINT = "`bash scripts/setup.sh --test` installs it on Debian/Ubuntu"


def missing(what: str, install: str) -> NoReturn:
    """Skip (fail under CI=true) because `what` is not available; `install` says how to get it."""
    message = f"{what} is not available: {install}"
    if CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def need_tool(name: str, package: str) -> str:
    """Path of command `name`, or missing() naming the Debian `package` that provides it."""
    path = shutil.which(name)
    if path is None:
        missing(f"the `{name}` command", f"apt-get install {package} ({SETUP_HINT})")
    return path


def cpython_suite_hint() -> str:
    """How to get CPython's `test` package for the interpreter running the tests."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if sys.base_prefix == "/usr":
        return (f"`bash scripts/setup.sh --test` installs libpython{version}-testsuite and "
                "fetches CPython's sqlite3 tests, which Debian leaves out of it, into "
                ".venv/cpython-tests (apt-get source, so deb-src must be reachable)")
    return (f"{sys.base_prefix} is a Python built without its `test` package; install a full "
            "build (pyenv builds include it), or make .venv from the distribution's python3 "
            f"(rm -rf .venv; PYTHON=/usr/bin/python3 bash scripts/setup.sh --test)")
