"""Replication end to end: a real `litefs mount` shipping to a real S3 server (moto_server),
restored by `litefs restore` and by the real Litestream 0.5.17 binary."""
