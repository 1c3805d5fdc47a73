#!/usr/bin/env bash
# The scale-out benchmark: 400 clients in one room at a steady delivery
# rate, first on one in-memory server, then spread over two servers that
# share a private redis-server (200 clients each).
#   scripts/bench-redis.sh [RATE] [SECONDS]     (default 100000 deliveries/s, 10 s)
set -euo pipefail
cd "$(dirname "$0")/.."
RATE="${1:-100000}"
SECS="${2:-10}"
cargo build --release -q -p mesh-server -p mesh-bench
BIN=target/release

free_port() { while :; do p=$((20000 + RANDOM % 40000)); (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }; done; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "== memory backend: one instance, 400 clients"
P1=$(free_port)
RUST_LOG=warn "$BIN/mesh-server" --addr "127.0.0.1:$P1" >/dev/null & pids+=($!)
wait_port "$P1"
"$BIN/mesh-bench" --url "ws://127.0.0.1:$P1" -n 400 --rate "$RATE" --duration "$SECS" --threads 2
cleanup; pids=()

echo "== redis backend: two instances, 200 clients each"
RP=$(free_port)
redis-server --port "$RP" --save '' --appendonly no --daemonize no >/dev/null & pids+=($!)
wait_port "$RP"
A=$(free_port); B=$(free_port)
RUST_LOG=warn "$BIN/mesh-server" --addr "127.0.0.1:$A" --redis "redis://127.0.0.1:$RP/" >/dev/null & pids+=($!)
RUST_LOG=warn "$BIN/mesh-server" --addr "127.0.0.1:$B" --redis "redis://127.0.0.1:$RP/" >/dev/null & pids+=($!)
wait_port "$A"; wait_port "$B"
"$BIN/mesh-bench" --url "ws://127.0.0.1:$A" --also-url "ws://127.0.0.1:$B" -n 400 --rate "$RATE" --duration "$SECS" --threads 2
