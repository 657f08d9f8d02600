"""Where the test vectors live: `tests/vectors/`, inside the clone (see its README).

They are files written by the real Litestream and LiteFS programs. A test that needs one and
does not find it fails with the path; it never skips.
"""

from __future__ import annotations

from pathlib import Path

VECTORS = Path(__file__).resolve().parent / "vectors"
