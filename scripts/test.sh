#!/usr/bin/env bash
# The whole test suite: unit tests, in-process cluster tests and the
# process-level tests in tests/. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo build --bins
cargo test --workspace -- --test-threads 2
