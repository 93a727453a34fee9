# Sourced by the store benchmarks: starts three `flotilla server` members on
# loopback and waits until all three are voters.
#
#   flotilla_cluster_start BIN DIR PORT_BASE
#
# Members listen on PORT_BASE+1..3 (peer) and PORT_BASE+1001..1003 (HTTP),
# keep their data and logs under DIR, and are added to the caller's PIDS
# array. Sets FLOTILLA_PEERS (comma-separated) and FLOTILLA_CLUSTER_TOKEN.
flotilla_cluster_start() {
  local bin=$1 dir=$2 base=$3 peers=() i
  for i in 1 2 3; do peers+=("127.0.0.1:$((base + i))"); done
  "$bin" server --id 1 --data-dir "$dir/f1" --peer "${peers[0]}" --http "127.0.0.1:$((base + 1001))" --bootstrap \
    >"$dir/f1.out" 2>"$dir/f1.log" &
  PIDS+=($!)
  for _ in $(seq 1 300); do [ -s "$dir/f1/join-token" ] && break; sleep 0.1; done
  FLOTILLA_CLUSTER_TOKEN=$(cat "$dir/f1/join-token")
  for i in 2 3; do
    "$bin" server --id $i --data-dir "$dir/f$i" --peer "${peers[$((i - 1))]}" --http "127.0.0.1:$((base + 1000 + i))" \
      --join "${peers[0]}" --token "$FLOTILLA_CLUSTER_TOKEN" >"$dir/f$i.out" 2>"$dir/f$i.log" &
    PIDS+=($!)
  done
  FLOTILLA_PEERS=$(IFS=,; echo "${peers[*]}")
  local n
  for _ in $(seq 1 600); do
    n=$("$bin" store --peer "$FLOTILLA_PEERS" --token "$FLOTILLA_CLUSTER_TOKEN" members 2>/dev/null | grep -cE 'leader|follower' || true)
    [ "$n" = 3 ] && return 0
    sleep 0.1
  done
  echo "flotilla-cluster: the members in $dir did not form a cluster; see $dir/f*.log" >&2
  return 1
}
