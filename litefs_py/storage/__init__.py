"""Replica clients: where LTX files are shipped (S3-compatible storage or a directory)."""
