#!/bin/sh
# Container entrypoint: mount the database directory, then run the app under supervision.
# `litefs mount` restores missing databases from the replica before the app starts.
# Usage: entrypoint.sh [APP COMMAND...]   (config: /etc/litefs.yml or ./litefs.yml)
set -e
if [ "$#" -gt 0 ]; then
    exec litefs mount -- "$@"
fi
exec litefs mount
