#!/usr/bin/env bash
# Set everything up and start bso on the embedded SQLite database.
#
#   scripts/dev.sh                    # http://127.0.0.1:8000 (docs at /docs)
#   scripts/dev.sh --port 9000        # any `bso serve` option passes through
#
# Creates .venv (the newest Python 3.11-3.13 found) on first use and reinstalls only when
# pyproject.toml changes. Set BSO_DATABASE_URL to use another database.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

step "Python environment"
ensure_venv

step "Starting bso serve $*"
exec "$VENV_DIR/bin/bso" serve "$@"
