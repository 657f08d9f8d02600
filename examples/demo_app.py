"""A tiny application for the demo: it knows nothing of litefs, it just uses SQLite.

Run under `litefs mount -- python examples/demo_app.py DB`: each run adds a few orders in
separate transactions and prints what the database holds.
"""

from __future__ import annotations

import sqlite3
import sys
import time


def main(path: str) -> None:
    con = sqlite3.connect(path, timeout=10)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE IF NOT EXISTS orders("
                "id INTEGER PRIMARY KEY, item TEXT NOT NULL, qty INTEGER, at REAL)")
    con.commit()
    for i in range(5):
        with con:
            con.execute("INSERT INTO orders(item, qty, at) VALUES (?, ?, ?)",
                        (f"widget-{i}", i + 1, time.time()))
    count, total = con.execute("SELECT count(*), sum(qty) FROM orders").fetchone()
    print(f"demo app: {path} holds {count} orders, {total} items")
    with open(path + "-pos") as f:
        print(f"demo app: litefs position (TXID/checksum) {f.read().strip()}")
    con.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/litefs/store.db")
