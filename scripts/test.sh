#!/usr/bin/env bash
# Set up (idempotent, with what the tests need) and run every check: ruff, mypy (strict on the codecs), the test suite.
# Exits non-zero on any failure, including "no tests collected" (pytest exit code 5).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test || exit 1
export PATH="$PWD/.venv/bin:$PATH"

status=0
echo "== ruff" >&2
ruff check litefs_py tests bench examples || status=1
echo "== mypy" >&2
mypy litefs_py || status=1

echo "== pytest" >&2
pytest -q -p no:cacheprovider "$@"
rc=$?
if [ $rc -eq 5 ]; then
    echo "test.sh: pytest collected no tests; that is a failure" >&2
    rc=1
fi
[ $rc -eq 0 ] || status=1
exit $status
