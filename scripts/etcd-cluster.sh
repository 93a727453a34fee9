#!/usr/bin/env bash
# Start/stop a throwaway 3-member etcd cluster on loopback, for benchmarking
# flotilla's store against etcd on the same machine (see bench/etcd-bench).
#
#   scripts/etcd-cluster.sh start DIR   # data dirs + logs under DIR, pids in DIR/pids
#   scripts/etcd-cluster.sh stop DIR    # stops the members listed in DIR/pids
#
# Members (name: client port / peer port), all on 127.0.0.1:
#   e1: 2379 / 2380     e2: 22379 / 22380     e3: 32379 / 32380
# Client endpoints for tools:
#   http://127.0.0.1:2379,http://127.0.0.1:22379,http://127.0.0.1:32379
#
# `start` refuses to run if any of the ports already answers, and fails
# (stopping whatever it started) unless `etcdctl endpoint health` passes on all
# three members within 30 s. `stop` SIGTERMs the members one by one, SIGKILLing any
# that has not exited 10 s later.
# DIR itself is left in place; the caller removes it.
# Needs etcd and etcdctl (v3.4+) on PATH, or set ETCD / ETCDCTL.
set -euo pipefail

ETCD=${ETCD:-etcd}
ETCDCTL=${ETCDCTL:-etcdctl}
NAMES=(e1 e2 e3)
CLIENT_PORTS=(2379 22379 32379)
PEER_PORTS=(2380 22380 32380)
HEALTH_DEADLINE_S=30
STOP_GRACE_S=10

ENDPOINTS="http://127.0.0.1:2379,http://127.0.0.1:22379,http://127.0.0.1:32379"
INITIAL_CLUSTER="e1=http://127.0.0.1:2380,e2=http://127.0.0.1:22380,e3=http://127.0.0.1:32380"

die() { echo "etcd-cluster: $*" >&2; exit 1; }

usage() { die "usage: $0 {start|stop} DIR"; }

port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

stop_pids() { # $1 = pids file
    local pidfile=$1 pid pids=() deadline
    [[ -f $pidfile ]] || return 0
    while read -r pid; do
        [[ $pid =~ ^[0-9]+$ ]] && pids+=("$pid")
    done <"$pidfile"
    # One member at a time: SIGTERM'ing all at once makes the leader try to
    # hand leadership to a follower that is itself exiting, which stalls its
    # shutdown ~7 s ("leadership transfer failed").
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || continue
        deadline=$((SECONDS + STOP_GRACE_S))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "etcd-cluster: pid $pid did not exit after SIGTERM, sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -f "$pidfile"
}

start() {
    local dir=$1 i pid deadline
    command -v "$ETCD" >/dev/null || die "etcd not found (set ETCD)"
    command -v "$ETCDCTL" >/dev/null || die "etcdctl not found (set ETCDCTL)"
    for i in 0 1 2; do
        for p in "${CLIENT_PORTS[$i]}" "${PEER_PORTS[$i]}"; do
            port_answers "$p" && die "port $p on 127.0.0.1 is already in use"
        done
    done
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [[ -s $dir/pids ]] && die "$dir/pids exists; run '$0 stop $dir' first"
    : >"$dir/pids"

    for i in 0 1 2; do
        local name=${NAMES[$i]} cport=${CLIENT_PORTS[$i]} pport=${PEER_PORTS[$i]}
        nohup "$ETCD" \
            --name "$name" \
            --data-dir "$dir/$name.etcd" \
            --listen-client-urls "http://127.0.0.1:$cport" \
            --advertise-client-urls "http://127.0.0.1:$cport" \
            --listen-peer-urls "http://127.0.0.1:$pport" \
            --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
            --initial-cluster "$INITIAL_CLUSTER" \
            --initial-cluster-token flotilla-bench \
            --initial-cluster-state new \
            --logger zap --log-outputs stderr \
            >"$dir/$name.log" 2>&1 </dev/null &
        echo $! >>"$dir/pids"
    done

    deadline=$((SECONDS + HEALTH_DEADLINE_S))
    while :; do
        while read -r pid; do
            if ! kill -0 "$pid" 2>/dev/null; then
                stop_pids "$dir/pids"
                die "an etcd member (pid $pid) exited during startup; see $dir/e*.log"
            fi
        done <"$dir/pids"
        if ETCDCTL_API=3 "$ETCDCTL" --endpoints="$ENDPOINTS" --dial-timeout=2s \
            --command-timeout=3s endpoint health >"$dir/health.out" 2>&1; then
            break
        fi
        if ((SECONDS >= deadline)); then
            cat "$dir/health.out" >&2 || true
            stop_pids "$dir/pids"
            die "cluster not healthy within ${HEALTH_DEADLINE_S}s; see $dir/e*.log"
        fi
        sleep 0.5
    done
    echo "etcd-cluster: 3 members healthy ($ENDPOINTS); pids in $dir/pids"
}

[[ $# -eq 2 ]] || usage
case $1 in
    start) start "$2" ;;
    stop)
        [[ -f $2/pids ]] || die "no pids file at $2/pids"
        stop_pids "$2/pids"
        echo "etcd-cluster: stopped"
        ;;
    *) usage ;;
esac
