#!/usr/bin/env bash
# API mutation latency (create + update of ConfigMaps) against a 3-member
# cluster on loopback, at 1, 16 and 64 concurrent clients.
#
#   scripts/bench-api.sh [OBJECTS_PER_CLIENT]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
OBJECTS=${1:-100}
CLIENTS=${CLIENTS:-"1 16 64"}
cargo build --bin flotilla
FLOTILLA="$CARGO_TARGET_DIR/debug/flotilla"
WORK=$(mktemp -d /var/tmp/flotilla-bench-api.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$FLOTILLA" server --id 1 --data-dir "$WORK/s1" --peer 127.0.0.1:17501 --http 127.0.0.1:18181 --bootstrap >"$WORK/s1.out" 2>"$WORK/s1.log" &
PIDS+=($!)
for _ in $(seq 1 300); do [ -s "$WORK/s1/join-token" ] && break; sleep 0.1; done
TOKEN=$(cat "$WORK/s1/join-token")
for i in 2 3; do
  "$FLOTILLA" server --id $i --data-dir "$WORK/s$i" --peer 127.0.0.1:1750$i --http 127.0.0.1:1818$i --join 127.0.0.1:17501 --token "$TOKEN" >"$WORK/s$i.out" 2>"$WORK/s$i.log" &
  PIDS+=($!)
done
SERVERS=http://127.0.0.1:18181,http://127.0.0.1:18182,http://127.0.0.1:18183
for _ in $(seq 1 600); do
  ok=0
  for s in ${SERVERS//,/ }; do "$FLOTILLA" --server "$s" get namespaces 2>/dev/null | grep -q default && ok=$((ok+1)); done
  [ "$ok" = 3 ] && break
  sleep 0.1
done
"$FLOTILLA" store --peer 127.0.0.1:17501 --token "$TOKEN" members

printf '\n%-8s %10s %10s %10s %10s %10s %12s\n' clients create_p50 create_p99 update_p50 update_p99 max_ms mutations/s
for c in $CLIENTS; do
  line=$("$FLOTILLA" bench api --servers "$SERVERS" --clients "$c" --objects "$OBJECTS" --json | tail -n 1)
  echo "$line" >>"$WORK/bench-api.jsonl"
  python3 - "$line" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print(f"{r['clients']:<8} {r['create_p50_ms']:>10.2f} {r['create_p99_ms']:>10.2f} {r['update_p50_ms']:>10.2f} {r['update_p99_ms']:>10.2f} {r['max_ms']:>10.2f} {r['mutations_per_sec']:>12.1f}")
PY
done
echo
echo "raw results: $WORK/bench-api.jsonl"
