#!/usr/bin/env bash
# API mutation latency (create + update of ConfigMaps) against a 3-member
# cluster on loopback, at 1, 16 and 64 concurrent clients, side by side:
# HTTPS with the admin kubeconfig's client certificate, and plain HTTP on
# loopback (--insecure-http) with a bearer token. Authentication and
# authorization run on both.
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
TOKEN_FILE="$WORK/tokens.csv"
API_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$API_TOKEN,bench,1,system:masters" >"$TOKEN_FILE"
export FLOTILLA_TOKEN_AUTH_FILE="$TOKEN_FILE"
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$FLOTILLA" server --id 1 --data-dir "$WORK/s1" --peer 127.0.0.1:17501 --http 127.0.0.1:18181 --insecure-http 127.0.0.1:18281 --bootstrap >"$WORK/s1.out" 2>"$WORK/s1.log" &
PIDS+=($!)
for _ in $(seq 1 300); do [ -s "$WORK/s1/join-token" ] && break; sleep 0.1; done
TOKEN=$(cat "$WORK/s1/join-token")
for i in 2 3; do
  "$FLOTILLA" server --id $i --data-dir "$WORK/s$i" --peer 127.0.0.1:1750$i --http 127.0.0.1:1818$i --insecure-http 127.0.0.1:1828$i --join 127.0.0.1:17501 --token "$TOKEN" >"$WORK/s$i.out" 2>"$WORK/s$i.log" &
  PIDS+=($!)
done
export KUBECONFIG="$WORK/s1/admin.kubeconfig"
for _ in $(seq 1 300); do [ -s "$KUBECONFIG" ] && break; sleep 0.1; done
SERVERS=https://127.0.0.1:18181,https://127.0.0.1:18182,https://127.0.0.1:18183
PLAIN=http://127.0.0.1:18281,http://127.0.0.1:18282,http://127.0.0.1:18283
for _ in $(seq 1 600); do
  ok=0
  for s in ${SERVERS//,/ }; do "$FLOTILLA" --server "$s" get namespaces 2>/dev/null | grep -q default && ok=$((ok+1)); done
  [ "$ok" = 3 ] && break
  sleep 0.1
done
"$FLOTILLA" store --peer 127.0.0.1:17501 --token "$TOKEN" members

printf '\n%-6s %-8s %10s %10s %10s %10s %10s %12s\n' via clients create_p50 create_p99 update_p50 update_p99 max_ms mutations/s
for c in $CLIENTS; do
  for via in https http; do
    if [ "$via" = https ]; then
      line=$("$FLOTILLA" bench api --servers "$SERVERS" --clients "$c" --objects "$OBJECTS" --json | tail -n 1)
    else
      line=$("$FLOTILLA" --api-token "$API_TOKEN" bench api --servers "$PLAIN" --clients "$c" --objects "$OBJECTS" --json | tail -n 1)
    fi
    echo "$line" >>"$WORK/bench-api.jsonl"
    python3 - "$via" "$line" <<'PY'
import json, sys
r = json.loads(sys.argv[2])
print(f"{sys.argv[1]:<6} {r['clients']:<8} {r['create_p50_ms']:>10.2f} {r['create_p99_ms']:>10.2f} {r['update_p50_ms']:>10.2f} {r['update_p99_ms']:>10.2f} {r['max_ms']:>10.2f} {r['mutations_per_sec']:>12.1f}")
PY
  done
done
echo
echo "raw results: $WORK/bench-api.jsonl"
