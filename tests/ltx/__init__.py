"""Tests for the pure LTX codec (`litefs_py.ltx`)."""
