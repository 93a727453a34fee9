#!/usr/bin/env bash
# flotilla against Docker Swarm on the same Docker engine, side by side in
# one run: ramp a replicated busybox workload 0 -> 30 -> 100, then
# `docker kill` one replica's container and time until it runs again. Also
# times the raw engine starting 30 containers one after another.
#
#   scripts/bench-swarm.sh [--json]
#
# Needs a Docker engine; initialises a single-node swarm if none is active
# and leaves it again at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
JSON=${1:-}
cargo build --bins -q
FLOTILLA="$CARGO_TARGET_DIR/debug/flotilla"
scripts/build-image.sh >/dev/null
IMAGE=flotilla/busybox:latest

now() { date +%s.%N; }
since() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.3f", a - b }'; }
wait_for() { # wait_for SECONDS COMMAND... : until COMMAND succeeds
  local limit=$1; shift
  local start; start=$(now)
  until "$@"; do
    if awk -v t="$(since "$start")" -v l="$limit" 'BEGIN { exit !(t > l) }'; then echo "timed out: $*" >&2; return 1; fi
    sleep 0.1
  done
}

# --- the raw engine ---
start=$(now)
for i in $(seq 1 30); do docker run -d --name "raw-bench-$i" "$IMAGE" sleep 3600 >/dev/null; done
raw_secs=$(since "$start")
docker rm -f $(docker ps -aq --filter name=raw-bench-) >/dev/null
raw_rate=$(awk -v s="$raw_secs" 'BEGIN { printf "%.2f", 30 / s }')

# --- flotilla ---
WORK=$(mktemp -d)
DATA=$WORK/data
HTTP=127.0.0.1:18481
"$FLOTILLA" up --runtime docker --data-dir "$DATA" --http "$HTTP" --peer 127.0.0.1:17481 --node-name bench >"$WORK/up.log" 2>&1 &
UP=$!
cleanup() {
  kill "$UP" 2>/dev/null || true
  docker rm -f $(docker ps -aq --filter label=io.flotilla.node=bench) >/dev/null 2>&1 || true
  docker service rm bench-swarm >/dev/null 2>&1 || true
  if [[ "${SWARM_INIT:-}" == 1 ]]; then docker swarm leave --force >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
export KUBECONFIG="$DATA/admin.kubeconfig"
for _ in $(seq 1 300); do [ -s "$KUBECONFIG" ] && break; sleep 0.1; done
wait_for 60 bash -c "'$FLOTILLA' get nodes 2>/dev/null | grep -q ' Ready '"
running_f() { "$FLOTILLA" get pods 2>/dev/null | grep -c '^boxes-.* Running ' || true; }
at_least_f() { [[ $(running_f) -ge $1 ]]; }
"$FLOTILLA" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: boxes}
spec:
  replicas: 0
  selector: {matchLabels: {app: boxes}}
  template:
    metadata: {labels: {app: boxes}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: main, image: '$IMAGE', imagePullPolicy: IfNotPresent, command: [sleep, '3600']}]
EOF
start=$(now); "$FLOTILLA" scale deployment boxes --replicas 30 >/dev/null
wait_for 300 at_least_f 30; f_ramp30=$(since "$start")
start=$(now); "$FLOTILLA" scale deployment boxes --replicas 100 >/dev/null
wait_for 600 at_least_f 100; f_ramp100=$(since "$start")
victim=$(docker ps -q --filter label=io.flotilla.node=bench | head -1)
victim_pod=$(docker inspect -f '{{index .Config.Labels "io.flotilla.pod"}}' "$victim")
restarted_f() { "$FLOTILLA" get pods 2>/dev/null | awk -v p="$victim_pod" '$1 == p {print $3, $4}' | grep -q '^Running [1-9]'; }
start=$(now); docker kill "$victim" >/dev/null
wait_for 120 restarted_f; f_kill=$(since "$start")
"$FLOTILLA" delete deployment boxes >/dev/null
wait_for 300 bash -c "[[ -z \$(docker ps -q --filter label=io.flotilla.node=bench) ]]"
kill "$UP"; wait "$UP" 2>/dev/null || true

# --- Docker Swarm ---
if [[ $(docker info --format '{{.Swarm.LocalNodeState}}') != active ]]; then
  docker swarm init --advertise-addr 127.0.0.1 >/dev/null
  SWARM_INIT=1
fi
running_s() { docker service ps bench-swarm --filter desired-state=running --format '{{.CurrentState}}' 2>/dev/null | grep -c '^Running' || true; }
at_least_s() { [[ $(running_s) -ge $1 ]]; }
docker service create --detach --name bench-swarm --replicas 0 "$IMAGE" sleep 3600 >/dev/null
start=$(now); docker service scale --detach bench-swarm=30 >/dev/null
wait_for 300 at_least_s 30; s_ramp30=$(since "$start")
start=$(now); docker service scale --detach bench-swarm=100 >/dev/null
wait_for 600 at_least_s 100; s_ramp100=$(since "$start")
below_s() { [[ $(running_s) -lt $1 ]]; }
victim=$(docker ps -q --filter label=com.docker.swarm.service.name=bench-swarm | head -1)
start=$(now); docker kill "$victim" >/dev/null
wait_for 30 below_s 100 || true
wait_for 120 at_least_s 100; s_kill=$(since "$start")
docker service rm bench-swarm >/dev/null

printf 'flotilla against Docker Swarm on one Docker engine (busybox, sleep 3600)\n'
printf '%-28s %10s %10s\n' "" flotilla swarm
printf '%-28s %10.1f %10.1f\n' "ramp 0 -> 30 replicas, s" "$f_ramp30" "$s_ramp30"
printf '%-28s %10.1f %10.1f\n' "ramp 30 -> 100 replicas, s" "$f_ramp100" "$s_ramp100"
printf '%-28s %10.2f %10.2f\n' "killed container back, s" "$f_kill" "$s_kill"
printf 'raw engine: 30 containers started one by one in %.1f s (%.2f containers/s)\n' "$raw_secs" "$raw_rate"
if [[ "$JSON" == --json ]]; then
  printf '{"flotilla_ramp30_s": %.2f, "flotilla_ramp100_s": %.2f, "flotilla_kill_s": %.2f, "swarm_ramp30_s": %.2f, "swarm_ramp100_s": %.2f, "swarm_kill_s": %.2f, "raw_containers_per_sec": %.2f}\n' \
    "$f_ramp30" "$f_ramp100" "$f_kill" "$s_ramp30" "$s_ramp100" "$s_kill" "$raw_rate"
fi
