"""`python migrate.py`: bring the notes database's schema up to date, then exit.

Run it as the first `exec:` step (litefs runs it to completion before starting the app, and
only on a lease candidate with `if-candidate: true`). Idempotent: a second run changes
nothing. Exit status 0 when the schema is current, 1 (with the reason) when it could not be
brought there; litefs then unmounts and exits with that status instead of starting the app.
"""

from __future__ import annotations

import sqlite3
import sys

import notes_db


def main() -> int:
    path = notes_db.db_path()
    try:
        con = notes_db.connect(path)
        try:
            before = notes_db.schema_version(con)
            if before > notes_db.LATEST:
                print(f"migrate: {path} is at schema version {before}, newer than this code "
                      f"knows ({notes_db.LATEST}): deploy the newer app", file=sys.stderr)
                return 1
            applied = notes_db.migrate(con)
        finally:
            con.close()
    except sqlite3.Error as exc:
        print(f"migrate: cannot migrate {path}: {exc}", file=sys.stderr)
        return 1
    if applied:
        steps = ", ".join(f"{m.version} ({m.name})" for m in applied)
        print(f"migrate: {path}: schema version {before} -> {notes_db.LATEST}; applied {steps}")
    else:
        print(f"migrate: {path}: schema already at version {notes_db.LATEST}; nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
