#!/usr/bin/env bash
# Builds flotilla and runs `flotilla up`: a single-member server (store and
# HTTP API on 127.0.0.1:8080) and a local node agent, with data in
# ./flotilla-data. Installs what is missing first. Extra arguments go to
# `flotilla up` (e.g. --runtime sim).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo build --bin flotilla
exec "$CARGO_TARGET_DIR/debug/flotilla" up --data-dir flotilla-data "$@"
