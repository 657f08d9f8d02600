"""The notes app's database: where it is, how to open it, and its schema migrations.

Nothing here knows about litefs: it is an ordinary SQLite database that happens to live on
the litefs mount (`/litefs/store.db` by default; `NOTES_DB` names another file).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass

DEFAULT_DB = "/litefs/store.db"
BUSY_TIMEOUT_MS = 5000  # wait this long for another connection's write lock, then fail


def db_path() -> str:
    return os.environ.get("NOTES_DB") or DEFAULT_DB


def connect(path: str | None = None) -> sqlite3.Connection:
    """A connection as a web app keeps one per worker thread: WAL (readers never wait for
    the writer), a busy timeout (writers queue instead of failing at once), synchronous=NORMAL
    (the usual WAL setting: no fsync per commit). Autocommit mode: callers say BEGIN
    themselves, so a write transaction can take its lock up front (BEGIN IMMEDIATE)."""
    con = sqlite3.connect(path or db_path(), timeout=BUSY_TIMEOUT_MS / 1000,
                          isolation_level=None, check_same_thread=False)
    con.row_factory = sqlite3.Row
    con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("PRAGMA foreign_keys=ON")
    return con


# ---- migrations ------------------------------------------------------------------------------
# Append only: a shipped migration is never edited, a change is a new one. Each runs in its own
# transaction together with the row that records it, so a crash leaves it done or not done.


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: tuple[str, ...]


MIGRATIONS = (
    Migration(1, "create notes", (
        "CREATE TABLE notes ("
        " id INTEGER PRIMARY KEY,"
        " body TEXT NOT NULL,"
        " created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
    )),
    Migration(2, "notes have an author; list newest first cheaply", (
        "ALTER TABLE notes ADD COLUMN author TEXT NOT NULL DEFAULT 'anonymous'",
        "CREATE INDEX notes_created_at ON notes(created_at)",
    )),
)
LATEST = MIGRATIONS[-1].version

_VERSION_TABLE = ("CREATE TABLE IF NOT EXISTS schema_migrations ("
                  " version INTEGER PRIMARY KEY,"
                  " name TEXT NOT NULL,"
                  " applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))")


def schema_version(con: sqlite3.Connection) -> int:
    """The highest applied migration, 0 for a new (or not yet migrated) database."""
    exists = con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                         "name = 'schema_migrations'").fetchone()
    if exists is None:
        return 0
    row = con.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)


def migrate(con: sqlite3.Connection) -> list[Migration]:
    """Apply every pending migration; return those applied (none when up to date).

    Safe to run again and concurrently: each step takes the write lock (BEGIN IMMEDIATE) and
    re-reads the version under it before applying anything."""
    applied = []
    for m in MIGRATIONS:
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute(_VERSION_TABLE)
            if schema_version(con) >= m.version:
                con.execute("COMMIT")
                continue
            for stmt in m.sql:
                con.execute(stmt)
            con.execute("INSERT INTO schema_migrations(version, name) VALUES (?, ?)",
                        (m.version, m.name))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        applied.append(m)
    return applied
