"""Shared settings for the LTX codec tests.

The hypothesis profile is registered here and applied per test with
`settings(parent=settings.get_profile("ltx"), ...)`, so loading it does not change the settings
of other test packages in the same session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from litefs_py.ltx import decoder, encoder, page_encoding, varint
from tests.needs import need_tool

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
    return need_tool("sqlite3", "sqlite3")


# Every LTX test runs twice: with the compiled hot loops (litefs_py/ltx/_frames.c, built by
# setup.py) and with the pure Python code they replace, which must give the same results.
CODEC_PATHS = ["compiled", "pure"]


@pytest.fixture(scope="package", params=CODEC_PATHS, autouse=True)
def codec_path(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "compiled":
        assert decoder._compiled_frames is not None, (
            "litefs_py/ltx/_frames.c is not built: run scripts/setup.sh (needs a C compiler)")
        yield request.param
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decoder, "_compiled_frames", None)
        mp.setattr(encoder, "_compiled_frames", None)
        mp.setattr(encoder, "_compiled_file", None)
        mp.setattr(decoder, "encode_index", varint.encode_index_py)
        mp.setattr(encoder, "encode_index", varint.encode_index_py)
        mp.setattr(page_encoding, "_xxh32", None)
        yield request.param
