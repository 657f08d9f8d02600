"""Codec demo: capture two states of a real SQLite database as LTX files and restore them.

Run by scripts/demo.sh. Writes into the directory given as the only argument.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from litefs_py.ltx import (
    Decoder,
    Encoder,
    Header,
    apply_ltx,
    database_checksum,
    encode_snapshot,
    format_filename,
    page_checksum,
    update_checksum,
)


def main(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "ltx").mkdir(parents=True)
    db = workdir / "store.db"
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, body TEXT)")
    con.executemany("INSERT INTO t(name, body) VALUES (?, ?)",
                    [(f"row {i}", "x" * 200) for i in range(2000)])
    con.commit()
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    now = int(time.time() * 1000)

    # TXID 1: a snapshot of the whole database.
    snap = workdir / "ltx" / format_filename(1, 1)
    with db.open("rb") as f, snap.open("wb") as out:
        _, trailer, ck = encode_snapshot(f, out, page_size=page_size, txid=1, timestamp=now)
    before = db.read_bytes()

    # TXID 2: one UPDATE; capture exactly the pages that changed.
    con.execute("UPDATE t SET name = 'changed' WHERE id % 100 = 0")
    con.commit()
    con.close()
    after = db.read_bytes()
    changed = [
        (i // page_size + 1, after[i:i + page_size])
        for i in range(0, len(after), page_size)
        if after[i:i + page_size] != before[i:i + page_size]
    ]
    new_ck = ck
    for pgno, page in changed:
        old = before[(pgno - 1) * page_size:pgno * page_size]
        new_ck = update_checksum(new_ck, page_checksum(pgno, old) if old else 0,
                                 page_checksum(pgno, page))
    inc = workdir / "ltx" / format_filename(2, 2)
    header = Header(page_size=page_size, commit=len(after) // page_size, min_txid=2, max_txid=2,
                    timestamp=now, pre_apply_checksum=ck)
    with inc.open("wb") as out:
        enc = Encoder(out, header)
        for pgno, page in changed:
            enc.encode_page(pgno, page)
        enc.finish(new_ck)
    print(f"\nwrote {snap.name} ({snap.stat().st_size} bytes) and {inc.name} "
          f"({len(changed)} changed pages)")

    subprocess.run(["litefs", "ltx", "verify", str(snap), str(inc)], check=True)
    subprocess.run(["litefs", "ltx", "list", str(workdir / "ltx")], check=True)

    restored = workdir / "restored.db"
    with restored.open("w+b") as out:
        for p in (snap, inc):
            with p.open("rb") as f:
                apply_ltx(out, f, name=str(p))
        out.seek(0)
        restored_ck = database_checksum(out, page_size)
    with inc.open("rb") as f:
        dec = Decoder(f)
        trailer = dec.verify()
    same = restored.read_bytes() == after
    print(f"restored {restored}: byte-identical to the source: {same}; rolling checksum "
          f"{restored_ck:016x} (LTX says {trailer.post_apply_checksum:016x})")
    if not same or restored_ck != trailer.post_apply_checksum:
        sys.exit(1)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/litefs-demo"))
