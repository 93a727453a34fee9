#!/usr/bin/env bash
# Bounded fuzzing (cargo-fuzz, libFuzzer) of what flotilla decodes before it
# knows who sent it: peer-port frames and bearer tokens. Each target runs
# for SECONDS (default 60) from its seeds and the corpus kept from earlier
# runs; any crash, panic or allocation over 512 MiB fails the script and
# leaves the input under raft/fuzz/artifacts. Needs a nightly toolchain;
# installs cargo-fuzz from crates.io when missing. The test script runs a
# short pass.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
. scripts/setup.sh
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: SKIPPED, no nightly toolchain (rustup toolchain install nightly)" >&2
  exit 0
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz >&2
fi
# Its own target directory: sanitizer flags would rebuild everything in
# the main one. The store (RocksDB) is left out of the fuzz build.
fuzz_target_dir="${FLOTILLA_FUZZ_TARGET_DIR:-$HOME/.cache/flotilla-fuzz-target}"
corpus_root="$fuzz_target_dir/corpus"
cd raft
for target in peer_frame service_account_token; do
  mkdir -p "$corpus_root/$target" "fuzz/seeds/$target"
  echo "fuzz: $target for ${seconds}s" >&2
  cargo +nightly fuzz run --target-dir "$fuzz_target_dir" "$target" "$corpus_root/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -malloc_limit_mb=512 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
done
