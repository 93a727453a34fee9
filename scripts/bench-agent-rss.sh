#!/usr/bin/env bash
# Agent memory: one server process and one `flotilla agent` process on the
# given runtime (default process); 100 pods bound to the agent's node, each
# `sleep 3600`; prints the agent's RSS before and with the pods running.
#
#   scripts/bench-agent-rss.sh [RUNTIME] [PODS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
RUNTIME=${1:-process}
PODS=${2:-100}
cargo build --bin flotilla >&2
F="$CARGO_TARGET_DIR/debug/flotilla"
WORK=$(mktemp -d /var/tmp/flotilla-agent-rss.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
"$F" server --id 1 --data-dir "$WORK/s1" --peer 127.0.0.1:17601 --http 127.0.0.1:18281 --bootstrap >/dev/null 2>"$WORK/s1.log" &
PIDS+=($!)
for _ in $(seq 1 300); do [ -s "$WORK/s1/join-token" ] && break; sleep 0.1; done
export KUBECONFIG="$WORK/s1/admin.kubeconfig"
for _ in $(seq 1 300); do [ -s "$KUBECONFIG" ] && break; sleep 0.1; done
for _ in $(seq 1 300); do "$F" get namespaces 2>/dev/null | grep -q default && break; sleep 0.1; done
"$F" agent --name rss-node --server 127.0.0.1:17601 --token "$(cat "$WORK/s1/join-token")" --runtime "$RUNTIME" --state-dir "$WORK/agent" >/dev/null 2>"$WORK/agent.log" &
AGENT=$!
PIDS+=($AGENT)
for _ in $(seq 1 300); do "$F" get nodes 2>/dev/null | grep -q rss-node && break; sleep 0.1; done
sleep 2
rss() { awk '/VmRSS/ {print $2}' "/proc/$AGENT/status"; }
# The agent's own memory: what no other process shares (its heap, stacks
# and written pages), as opposed to RSS, which also counts the pages of
# the binary's code it has touched, shared with the server's process.
uss() { awk '/^Private_(Clean|Dirty)/ {s += $2} END {print s}' "/proc/$AGENT/smaps_rollup"; }
BEFORE=$(rss)
BEFORE_USS=$(uss)
for i in $(seq 1 "$PODS"); do
  printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: rss-%s}\nspec: {nodeName: rss-node, terminationGracePeriodSeconds: 1, containers: [{name: c, image: flotilla/busybox:latest, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}]}\n' "$i"
  echo '---'
done | "$F" apply -f - >/dev/null
for _ in $(seq 1 600); do
  n=$("$F" get pods 2>/dev/null | grep -c ' Running ' || true)
  [ "$n" -ge "$PODS" ] && break
  sleep 0.2
done
sleep 3
AFTER=$(rss)
AFTER_USS=$(uss)
echo "agent RSS on the $RUNTIME runtime: $((BEFORE / 1024)) MB idle, $((AFTER / 1024)) MB with $n running pods"
echo "agent's own memory (USS): $((BEFORE_USS / 1024)) MB idle, $((AFTER_USS / 1024)) MB with $n running pods"
echo "{\"runtime\":\"$RUNTIME\",\"pods\":$n,\"rss_idle_mb\":$((BEFORE / 1024)),\"rss_mb\":$((AFTER / 1024)),\"uss_idle_mb\":$((BEFORE_USS / 1024)),\"uss_mb\":$((AFTER_USS / 1024))}"
"$F" delete pod $(seq -f 'rss-%g' 1 "$PODS") >/dev/null 2>&1 || true
for _ in $(seq 1 300); do "$F" get pods 2>&1 | grep -q 'No resources' && break; sleep 0.2; done
