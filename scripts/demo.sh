#!/usr/bin/env bash
# Set up (idempotent) and run the main job on a local default: no cloud account needed.
# Until `litefs mount` lands (issue 3) this shows the CLI and a codec round trip:
# a real SQLite database -> LTX snapshot + incremental -> verify -> list -> apply -> compare.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
litefs --help
exec python examples/codec_demo.py "${1:-${TMPDIR:-/tmp}/litefs-demo}"
