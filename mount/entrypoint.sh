#!/bin/sh
# Container entrypoint: `litefs mount` with /etc/litefs.yml (LiteFS's default path; set
# LITEFS_CONFIG to use another), running the app given as arguments, or the config's `exec:`.
# litefs restores missing databases from the replica before the app starts, passes SIGTERM and
# SIGINT to the app, and exits with the app's exit status (128+N if signal N ended it), after
# uploads are drained and the mount is gone.
set -e
config=${LITEFS_CONFIG:-/etc/litefs.yml}
if [ ! -f "$config" ]; then
    echo "litefs-entrypoint: no config at $config: mount one (-v ./litefs.yml:$config:ro)" \
         "or set LITEFS_CONFIG; see docs/deploy.md" >&2
    exit 3
fi
if [ "$#" -gt 0 ]; then
    exec litefs mount --config "$config" -- "$@"
fi
exec litefs mount --config "$config"
