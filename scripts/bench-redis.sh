#!/usr/bin/env bash
# The scale-out benchmark: 400 clients in one room at a steady delivery
# rate, first on one in-memory server, then spread over two servers that
# share a private redis-server (200 clients each), then the same on a
# private three-node Redis Cluster;
#   scripts/bench-redis.sh [RATE] [SECONDS]     (default 100000 deliveries/s, 10 s)
# then four instances with one room of 100 clients each (ROOMS_RATE
# deliveries/s in all, default 40000), by interest and with every instance
# in every room.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE="${1:-100000}"
SECS="${2:-10}"
cargo build --release -q -p mesh-server -p mesh-bench -p mesh-client
BIN="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release"

# free_port VAR: sets VAR to a port nobody listens on and that this script
# has not handed out yet (two servers started together cannot get the same).
TAKEN=" "
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    case "$TAKEN" in *" $p "*) continue ;; esac
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
    TAKEN="$TAKEN$p "
    printf -v "$1" '%s' "$p"
    return
  done
}
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "== memory backend: one instance, 400 clients"
free_port P1
RUST_LOG=warn "$BIN/mesh-server" --addr "127.0.0.1:$P1" >/dev/null & pids+=($!)
wait_port "$P1"
"$BIN/mesh-bench" --url "ws://127.0.0.1:$P1" -n 400 --rate "$RATE" --duration "$SECS" --threads 2
cleanup; pids=()

echo "== redis backend: two instances, 200 clients each"
free_port RP
redis-server --port "$RP" --save '' --appendonly no --daemonize no >/dev/null & pids+=($!)
wait_port "$RP"
free_port A; free_port B
RUST_LOG=warn "$BIN/mesh-server" --addr "127.0.0.1:$A" --redis "redis://127.0.0.1:$RP/" >/dev/null & pids+=($!)
RUST_LOG=warn "$BIN/mesh-server" --addr "127.0.0.1:$B" --redis "redis://127.0.0.1:$RP/" >/dev/null & pids+=($!)
wait_port "$A"; wait_port "$B"
"$BIN/mesh-bench" --url "ws://127.0.0.1:$A" --also-url "ws://127.0.0.1:$B" -n 400 --rate "$RATE" --duration "$SECS" --threads 2
cleanup; pids=()

echo "== redis cluster (three nodes): two instances, 200 clients each"
CDIR=$(mktemp -d)
CPORTS=()
CNODES=()
for _ in 0 1 2; do
  # Below Linux's ephemeral range, with the cluster bus port (+ 10000) free
  # too, and never one handed out already: the nodes start in the
  # background, so a port picked a moment ago may not listen yet.
  while :; do
    p=$((20000 + RANDOM % 2700))
    case "$TAKEN" in *" $p "* | *" $((p + 10000)) "*) continue ;; esac
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
    (exec 3<>"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null && continue
    TAKEN="$TAKEN$p $((p + 10000)) "
    break
  done
  mkdir -p "$CDIR/$p"
  (cd "$CDIR/$p" && exec redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
    --save '' --appendonly no --daemonize no >/dev/null) & pids+=($!)
  CPORTS+=("$p")
  CNODES+=("127.0.0.1:$p")
done
for p in "${CPORTS[@]}"; do wait_port "$p"; done
redis-cli --cluster create "${CNODES[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
for p in "${CPORTS[@]}"; do
  until redis-cli -p "$p" cluster info | grep -q cluster_state:ok; do sleep 0.05; done
done
SEEDS=$(printf 'redis://127.0.0.1:%s,' "${CPORTS[@]}"); SEEDS="${SEEDS%,}"
free_port A; free_port B
RUST_LOG=warn "$BIN/mesh-server" --addr "127.0.0.1:$A" --redis-cluster "$SEEDS" >/dev/null & pids+=($!)
RUST_LOG=warn "$BIN/mesh-server" --addr "127.0.0.1:$B" --redis-cluster "$SEEDS" >/dev/null & pids+=($!)
wait_port "$A"; wait_port "$B"
"$BIN/mesh-bench" --url "ws://127.0.0.1:$A" --also-url "ws://127.0.0.1:$B" -n 400 --rate "$RATE" --duration "$SECS" --threads 2
cleanup; pids=(); rm -rf "$CDIR"

# Fan-out by interest: each instance should receive only its own room's
# updates. ROOMS_RATE is the total delivery rate of the four rooms.
ROOMS_RATE="${ROOMS_RATE:-40000}"
received() { # PORT -> mesh_backend_messages_received_total of that instance
  exec 3<>"/dev/tcp/127.0.0.1/$1"
  printf 'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n' >&3
  awk '/^mesh_backend_messages_received_total / { print $2 }' <&3
  exec 3<&-
}
echo "== redis backend: four instances, four rooms of 100 clients, each room on one instance"
free_port RP
redis-server --port "$RP" --save '' --appendonly no --daemonize no >/dev/null & pids+=($!)
wait_port "$RP"
PORTS=()
for i in 0 1 2 3; do
  free_port P; PORTS+=("$P")
  RUST_LOG=warn "$BIN/mesh-server" --addr "127.0.0.1:$P" --redis "redis://127.0.0.1:$RP/" >/dev/null & pids+=($!)
done
for P in "${PORTS[@]}"; do wait_port "$P"; done
four_rooms() { # LABEL
  local before=() after=() benches=() i
  for i in 0 1 2 3; do before+=("$(received "${PORTS[$i]}")"); done
  for i in 0 1 2 3; do
    "$BIN/mesh-bench" --url "ws://127.0.0.1:${PORTS[$i]}" --room "room$i" -n 100 \
      --rate $((ROOMS_RATE / 4)) --duration "$SECS" > "$TMP/bench$i.txt" & benches+=($!)
  done
  wait "${benches[@]}"
  for i in 0 1 2 3; do after+=("$(received "${PORTS[$i]}")"); done
  for i in 0 1 2 3; do
    echo "$1: instance $i (room$i): $(grep -h '^steady' "$TMP/bench$i.txt" | sed 's/.*(\(.*\)\/s)/\1 deliveries\/s/'), $(grep -h 'p99' "$TMP/bench$i.txt" | head -1), received from others: $(( ${after[$i]} - ${before[$i]} ))"
  done
}
TMP=$(mktemp -d)
four_rooms "by interest"
# What one shared channel cost: every instance interested in every room
# (a watcher of each room on each instance), as when all updates went to
# every instance.
for i in 0 1 2 3; do for r in 0 1 2 3; do
  "$BIN/mesh" --url "ws://127.0.0.1:${PORTS[$i]}" watch "room$r" --json >/dev/null & pids+=($!)
done; done
sleep 1 # the watchers connect; nothing to wait on but their start
four_rooms "every instance in every room"
rm -rf "$TMP"
