#!/usr/bin/env bash
# Two flotilla binaries against each other on the store write benchmark,
# alternated in one run so the machine's noise falls on both: for each
# round, a fresh 3-member cluster of A, `flotilla store bench` at 1, 16 and
# 256 clients, then the same with B.
#
#   scripts/bench-store-ab.sh BIN_A BIN_B [ROUNDS]
#
# To compare against an older commit, build it in a worktree with the same
# CARGO_TARGET_DIR (only the workspace crates are rebuilt) and copy its
# debug/flotilla aside before building this tree again.
set -euo pipefail
A=${1:?usage: bench-store-ab.sh BIN_A BIN_B [ROUNDS]}
B=${2:?usage: bench-store-ab.sh BIN_A BIN_B [ROUNDS]}
ROUNDS=${3:-2}
OPS=${OPS:-8000}
CLIENTS=${CLIENTS:-"1 16 256"}

A=$(readlink -f "$A")
B=$(readlink -f "$B")
cd "$(dirname "$0")/.."
. scripts/flotilla-cluster.sh

run() {
  local bin=$1 label=$2 work c
  PIDS=()
  work=$(mktemp -d /var/tmp/flotilla-ab.XXXXXX)
  flotilla_cluster_start "$bin" "$work" 17700
  for c in $CLIENTS; do
    printf '%-6s %8s ' "$label" "$c"
    "$bin" store --peer "$FLOTILLA_PEERS" --token "$FLOTILLA_CLUSTER_TOKEN" bench --clients "$c" --ops "$OPS" --value-size 256 | tail -n 1
  done
  kill "${PIDS[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}

printf '%-6s %8s %10s %8s %8s %8s\n' binary clients writes/s p50_ms p99_ms max_ms
for _ in $(seq 1 "$ROUNDS"); do
  run "$A" A
  run "$B" B
done
