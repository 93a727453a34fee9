#!/usr/bin/env bash
# Builds flotilla and starts a single-member cluster in ./flotilla-data
# (peer port 127.0.0.1:7400). Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo build --bin flotilla
if [ -f flotilla-data/member.json ]; then
  exec "$CARGO_TARGET_DIR/debug/flotilla" server --id 1 --data-dir flotilla-data "$@"
else
  exec "$CARGO_TARGET_DIR/debug/flotilla" server --id 1 --data-dir flotilla-data --bootstrap "$@"
fi
