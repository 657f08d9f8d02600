#!/usr/bin/env bash
# Set up (idempotent) and run the main job on a local default, no cloud account needed:
# `litefs mount` with a directory replica, an unchanged SQLite application running under it,
# then a restore from the replica (by litefs and, if installed, by the real Litestream).
# Everything lives under ${LITEFS_DEMO_DIR:-/tmp/litefs-demo}; run it again to add more rows.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
demo=${LITEFS_DEMO_DIR:-/tmp/litefs-demo}
mkdir -p "$demo"
cat > "$demo/litefs.yml" <<YML
fuse: {dir: $demo/mnt}
data: {dir: $demo/data}
replica:
  type: file
  path: $demo/replica      # store.db lives under $demo/replica/store.db/
YML

echo "== litefs mount (the app runs under it; the mount goes away when it exits)"
litefs mount --config "$demo/litefs.yml" -- python examples/demo_app.py "$demo/mnt/store.db"

echo "== the local LTX log and the replica"
litefs ltx list "$demo/data/dbs/store.db/ltx" | tail -n 4
find "$demo/replica" -name '*.ltx' | sort | tail -n 5

echo "== restore from the replica into a new file"
rm -f "$demo/restored.db"
litefs restore -o "$demo/restored.db" "file://$demo/replica/store.db" --integrity-check
sqlite3 "$demo/restored.db" "SELECT count(*) || ' orders restored' FROM orders"
if command -v litestream >/dev/null; then
    rm -f "$demo/restored-by-litestream.db"
    env -u AWS_CA_BUNDLE litestream restore -o "$demo/restored-by-litestream.db" \
        "file://$demo/replica/store.db"
    sqlite3 "$demo/restored-by-litestream.db" \
        "SELECT count(*) || ' orders restored by Litestream 0.5' FROM orders"
fi
