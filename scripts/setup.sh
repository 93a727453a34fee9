#!/usr/bin/env bash
# Installs what building flotilla needs on a fresh Debian machine, and points
# cargo at a persistent target directory outside the clone, so RocksDB's C++
# (about 30 minutes on 2 cores) is compiled once per machine, not per clone.
# Sourced by run.sh, test.sh and the benchmark scripts.

need_pkgs=()
command -v clang >/dev/null 2>&1 || need_pkgs+=(clang)
# bindgen (RocksDB) loads libclang.so, the unversioned name only
# libclang-dev provides; clang alone brings just libclang-NN.so.1.
ls /usr/lib/llvm-*/lib/libclang.so /usr/lib/llvm-*/lib/libclang-*.so >/dev/null 2>&1 || need_pkgs+=(libclang-dev)
for extra in "$@"; do
  case "$extra" in
    etcd) command -v etcd >/dev/null 2>&1 || need_pkgs+=(etcd-server etcd-client) ;;
    protoc) command -v protoc >/dev/null 2>&1 || need_pkgs+=(protobuf-compiler) ;;
  esac
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${need_pkgs[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "${need_pkgs[@]}" >&2
fi
if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla-target}"
mkdir -p "$CARGO_TARGET_DIR"
