#!/usr/bin/env bash
# The whole test suite: unit tests, in-process cluster tests and the
# process-level tests in tests/. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo build --bins
cargo test --workspace -- --test-threads 2
# A bounded fuzzing pass over the decoders that face unauthenticated input.
scripts/fuzz.sh "${FLOTILLA_FUZZ_SECONDS:-30}"
