#!/usr/bin/env bash
# Store write benchmark, flotilla against etcd, side by side in one run on
# this machine: a 3-member flotilla cluster and a 3-member etcd cluster on
# loopback, both fsyncing on the same disk, driven by the same workload
# (N clients, each putting one key at a time) at 1, 16 and 256 clients.
#
#   scripts/bench-store.sh [OPS_PER_RUN] [VALUE_SIZE]
#
# Prints one table; the JSON lines of every run go to bench-store.jsonl in
# the work directory, which is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh etcd protoc
OPS=${1:-10000}
VALUE_SIZE=${2:-256}
CLIENTS=${CLIENTS:-"1 16 256"}

cargo build --bin flotilla
FLOTILLA="$CARGO_TARGET_DIR/debug/flotilla"
(cd bench/etcd-bench && CARGO_TARGET_DIR="$HOME/.cache/flotilla-etcd-bench-target" cargo build)
ETCD_BENCH="$HOME/.cache/flotilla-etcd-bench-target/debug/etcd-bench"

WORK=$(mktemp -d /var/tmp/flotilla-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  scripts/etcd-cluster.sh stop "$WORK/etcd" >/dev/null 2>&1 || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

. scripts/flotilla-cluster.sh
flotilla_cluster_start "$FLOTILLA" "$WORK" 17400
ALL=$FLOTILLA_PEERS
TOKEN=$FLOTILLA_CLUSTER_TOKEN
"$FLOTILLA" store --peer "$ALL" --token "$TOKEN" members

mkdir -p "$WORK/etcd"
scripts/etcd-cluster.sh start "$WORK/etcd"
ENDPOINTS=http://127.0.0.1:2379,http://127.0.0.1:22379,http://127.0.0.1:32379

printf '\n%-9s %-9s %12s %9s %9s %9s\n' system clients writes/s p50_ms p99_ms max_ms
for c in $CLIENTS; do
  for system in flotilla etcd; do
    if [ $system = flotilla ]; then
      line=$("$FLOTILLA" store --peer "$ALL" --token "$TOKEN" bench --clients "$c" --ops "$OPS" --value-size "$VALUE_SIZE" --json | tail -n 1)
    else
      line=$("$ETCD_BENCH" --endpoints "$ENDPOINTS" --clients "$c" --ops "$OPS" --value-size "$VALUE_SIZE" --json | tail -n 1)
    fi
    echo "$line" >>"$WORK/bench-store.jsonl"
    python3 - "$line" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print(f"{r['system']:<9} {r['clients']:<9} {r['writes_per_sec']:>12.1f} {r['p50_ms']:>9.2f} {r['p99_ms']:>9.2f} {r['max_ms']:>9.2f}")
PY
  done
done
echo
echo "raw results: $WORK/bench-store.jsonl"
