#!/usr/bin/env bash
# Set up (idempotent) and run the main job on a local default, no cloud account needed:
# `litefs mount` runs the example notes app (examples/webapp) from its exec: steps (schema
# migration, then the web server), a few notes are written through the app's HTTP API, and the
# database is restored from the replica by litefs and by the real Litestream.
#
# In a terminal it then keeps serving (open the printed URL in a browser) until Ctrl-C; with
# stdin not a terminal (CI, scripts) it stops cleanly and exits 0.
# Everything lives under ${LITEFS_DEMO_DIR:-/tmp/litefs-demo}; run it again to add more notes.
# The app listens on 127.0.0.1:${NOTES_PORT:-8081} (another free port if that one is taken).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
repo=$PWD
export PATH="$repo/.venv/bin:$PATH"
py="$repo/.venv/bin/python"
demo=${LITEFS_DEMO_DIR:-/tmp/litefs-demo}
mkdir -p "$demo"
demo=$(cd "$demo" && pwd)
log="$demo/litefs.log"

# The port asked for if it is free, else one the kernel picks.
free_port() {
    "$py" - "$1" <<'PY'
import socket, sys
for port in (int(sys.argv[1]), 0):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(s.getsockname()[1])
        break
PY
}
app_port=$(free_port "${NOTES_PORT:-8081}")
api_port=$(free_port 20202)

cat > "$demo/litefs.yml" <<YML
fuse: {dir: '$demo/mnt'}
data: {dir: '$demo/data'}
http: {addr: '127.0.0.1:$api_port'}   # litefs's own API (replicas, status)
replica:
  type: file
  path: '$demo/replica'                # store.db lives under $demo/replica/store.db/
exec:
  - cmd: ['$py', '$repo/examples/webapp/migrate.py']   # runs to completion first
    if-candidate: true
  - cmd: ['$py', '$repo/examples/webapp/app.py']       # the app litefs supervises
YML
export NOTES_DB="$demo/mnt/store.db" NOTES_BIND="127.0.0.1:$app_port"
export NOTES_URL="http://127.0.0.1:$app_port"
client() { "$py" "$repo/examples/webapp/client.py" "$@"; }

echo "== litefs mount --config $demo/litefs.yml (log: $log)"
: > "$log"
litefs mount --config "$demo/litefs.yml" >>"$log" 2>&1 </dev/null &
litefs_pid=$!

# Stop litefs (SIGTERM: it passes it to the app, waits for it, drains uploads, unmounts) and
# wait for it; its exit status is the app's. Runs at most once, also when this script fails.
litefs_status=""
stop_requested=0
stop_litefs() {
    [ -z "$litefs_status" ] || return 0
    kill -TERM "$litefs_pid" 2>/dev/null || true
    wait_litefs
}
wait_litefs() {
    local rc
    while :; do
        rc=0
        wait "$litefs_pid" || rc=$?
        if kill -0 "$litefs_pid" 2>/dev/null; then
            # wait was interrupted by a signal (Ctrl-C): make sure litefs stops, keep waiting.
            [ "$stop_requested" = 0 ] || kill -TERM "$litefs_pid" 2>/dev/null || true
            continue
        fi
        break
    done
    litefs_status=$rc
}
trap 'stop_litefs' EXIT
trap 'stop_requested=1' INT TERM

show_log() { echo "-- last lines of $log:"; tail -n 25 "$log"; }
if ! client wait --timeout 90; then
    echo "demo: the app did not come up" >&2
    show_log >&2
    exit 1
fi
grep -E "migrate: |exec\[" "$log" | sed 's/^/   /' || true

echo "== write notes through the HTTP API ($NOTES_URL/api/notes)"
client add --author demo "SQLite on a FUSE mount: every commit becomes an LTX file" \
    "the LTX files are shipped to the replica, in Litestream's layout" \
    "a restore brings it all back on a new machine"
client list --limit 5

echo "== the local LTX log and the replica"
# Wait (at most 30 s) until the replica holds everything the app wrote.
"$py" - "$demo/data/status.json" <<'PY'
import json, sys, time
deadline = time.monotonic() + 30
while True:
    try:
        db = json.load(open(sys.argv[1]))["databases"]["store.db"]
        if db["replica"]["txid"] == db["txid"]:
            print(f"   store.db at TXID {db['txid']}; the replica has it all")
            break
    except (OSError, ValueError, KeyError):
        pass
    if time.monotonic() > deadline:
        sys.exit("demo: the replica did not catch up in 30 s (see litefs status)")
    time.sleep(0.2)
PY
litefs ltx list "$demo/data/dbs/store.db/ltx" | tail -n 4
find "$demo/replica" -name '*.ltx' | sort | tail -n 5

echo "== restore from the replica into a new file (the app keeps running)"
rm -f "$demo/restored.db"
litefs restore -o "$demo/restored.db" "file://$demo/replica/store.db" --integrity-check
sqlite3 "$demo/restored.db" "SELECT count(*) || ' notes restored by litefs' FROM notes"
if command -v litestream >/dev/null; then
    rm -f "$demo/restored-by-litestream.db"
    env -u AWS_CA_BUNDLE litestream restore -o "$demo/restored-by-litestream.db" \
        "file://$demo/replica/store.db"
    sqlite3 "$demo/restored-by-litestream.db" \
        "SELECT count(*) || ' notes restored by Litestream 0.5' FROM notes"
fi

if [ -t 0 ]; then
    echo
    echo "== the notes app is serving: open $NOTES_URL/ in a browser"
    echo "   (JSON API: $NOTES_URL/api/notes; litefs log: tail -f $log)"
    echo "   Ctrl-C stops the app, uploads what is left and unmounts."
    wait_litefs
else
    echo "== stdin is not a terminal: stopping (in a terminal the app keeps serving at $NOTES_URL/)"
    stop_litefs
fi
trap - EXIT
if [ "$litefs_status" != 0 ]; then
    echo "demo: litefs mount exited with $litefs_status" >&2
    show_log >&2
    exit "$litefs_status"
fi
grep -E "exited with|unmounted" "$log" | sed 's/^/   /' || true
echo "== done: data in $demo (run again to add more notes)"
