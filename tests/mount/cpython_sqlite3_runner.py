"""Run CPython's own `test.test_sqlite3` suite in this process and write its results as JSON.

Usage: python cpython_sqlite3_runner.py [--tempdir-here] RESULT.json

Run it with the working directory set to where the suite's temporary files should live: the
suite creates its databases as `test.support.os_helper.TESTFN`, a relative name, so in the
working directory. Its temporary directories (`os_helper.temp_dir()`) come from
`tempfile.mkdtemp()`; `--tempdir-here` sets `tempfile.tempdir` to the working directory so
they are made there too. (Setting $TMPDIR is not enough for a litefs mount: `tempfile` probes
a candidate directory by writing b"blat" to a new file, which the mount refuses as a database
write outside any journal, so `tempfile` silently falls back to /tmp.)
RESULT.json must be an absolute path outside the working directory.

The JSON has the number of tests run, the ids of failed, erroring and skipped tests (a failed
subtest counts against its test), each problem's traceback, the TESTFN names used, and which
tests connected to a database or made a directory in the working directory (audit events).
Only the standard library is imported, so any interpreter with the `test` package can run it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
import unittest
import urllib.parse
from typing import Any

SUITE = "test.test_sqlite3"


def test_id(test: unittest.TestCase) -> str:
    """The id of the test method, also for a subtest or a class/module fixture error."""
    parent = getattr(test, "test_case", None)  # unittest.case._SubTest
    if isinstance(parent, unittest.TestCase):
        return parent.id()
    description = getattr(test, "description", None)  # unittest.suite._ErrorHolder
    if isinstance(description, str):
        return description
    return test.id()


def on_disk(database: object) -> str | None:
    """The file a `sqlite3.connect` argument names, None for an in-memory database."""
    try:
        name = os.fsdecode(os.fspath(database))  # type: ignore[call-overload]
    except TypeError:
        return None
    if name in ("", ":memory:") or "mode=memory" in name or name.startswith("file::memory:"):
        return None
    if name.startswith("file:"):
        name = urllib.parse.unquote(name[5:].split("?", 1)[0])
    return os.path.abspath(name)


class RecordingResult(unittest.TextTestResult):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.problems: dict[str, dict[str, str]] = {"failures": {}, "errors": {}}
        self.skip_reasons: dict[str, str] = {}
        # test id -> what it did in the working directory, from audit events
        self.cwd_use: dict[str, list[str]] = {}
        self._current = "<outside a test>"
        self._cwd = os.getcwd()
        sys.addaudithook(self._audit)

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        if event not in ("sqlite3.connect", "os.mkdir"):
            return
        try:  # an exception here would abort the audited operation
            if event == "sqlite3.connect":
                path, what = on_disk(args[0]), "connect"
            else:
                path, what = os.path.abspath(os.fsdecode(args[0])), "mkdir"
            if path is not None and os.path.dirname(path) == self._cwd:
                self.cwd_use.setdefault(self._current, []).append(f"{what} {path!r}")
        except Exception:
            pass

    def startTest(self, test: unittest.TestCase) -> None:
        self._current = test_id(test)
        super().startTest(test)

    def _note(self, kind: str, test: unittest.TestCase) -> None:
        # the formatted traceback is the last entry unittest appended to this kind's list
        tb = getattr(self, kind)[-1][1]
        tid = test_id(test)
        previous = self.problems[kind].get(tid)
        self.problems[kind][tid] = tb if previous is None else previous + "\n" + tb

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self._note("failures", test)

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self._note("errors", test)

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase,
                   err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._note("failures" if issubclass(err[0], test.failureException) else "errors",
                       subtest)

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self.problems["failures"][test_id(test)] = "unexpected success"

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self.skip_reasons[test_id(test)] = reason


# Where `scripts/setup.sh --test` puts CPython's own test_sqlite3 (as test/test_sqlite3) when
# the interpreter's `test` package lacks it: Debian's python3 ships test.support
# (libpython3.X-testsuite) but not the sqlite3 tests.
EXTRA_TESTS = os.path.join(sys.prefix, "cpython-tests")


def use_extra_tests() -> None:
    """Make `test.test_sqlite3` importable from EXTRA_TESTS if the interpreter has none."""
    import importlib.util

    try:
        if importlib.util.find_spec(SUITE) is not None:
            return
    except ImportError:
        return  # no `test` package at all: the import below reports it
    if os.path.isfile(os.path.join(EXTRA_TESTS, "test", "test_sqlite3", "__init__.py")):
        import test
        import test.support

        test.__path__.append(os.path.join(EXTRA_TESTS, "test"))
        # The package's load_tests discovers its modules relative to STDLIB_DIR, which must
        # contain it: point it at the directory that holds this `test/` instead.
        test.support.STDLIB_DIR = EXTRA_TESTS


def main() -> int:
    args = sys.argv[1:]
    tempdir_here = "--tempdir-here" in args
    if tempdir_here:
        args.remove("--tempdir-here")
    if len(args) != 1 or not os.path.isabs(args[0]):
        print(__doc__, file=sys.stderr)
        return 2
    out_path = args[0]
    if tempdir_here:
        tempfile.tempdir = os.getcwd()
    use_extra_tests()
    from test.support import os_helper

    suite = unittest.defaultTestLoader.loadTestsFromName(SUITE)
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2,
                                     resultclass=RecordingResult)
    result = runner.run(suite)
    assert isinstance(result, RecordingResult)
    undecodable = os_helper.TESTFN_UNDECODABLE
    doc = {
        "cwd": os.getcwd(),
        "python": sys.version,
        "suite_file": sys.modules[SUITE].__file__,
        "sqlite_version": sqlite3.sqlite_version,
        "tempdir": tempfile.gettempdir(),
        "tests_run": result.testsRun,
        "failures": result.problems["failures"],
        "errors": result.problems["errors"],
        "skipped": result.skip_reasons,
        "cwd_use": result.cwd_use,
        "testfn": os_helper.TESTFN,
        # bytes; kept as the str os.fsdecode gives (surrogate escapes) so JSON can carry it
        "testfn_undecodable": None if undecodable is None else os.fsdecode(undecodable),
    }
    with open(out_path, "w", encoding="utf-8", errors="surrogateescape") as f:
        json.dump(doc, f, indent=2, ensure_ascii=True)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
