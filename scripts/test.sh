#!/usr/bin/env bash
# The project's one test command (`npm test`): formatting, lints (shellcheck
# on every script too), every test
# in the workspace (with a private redis-server for the Redis backend), the
# server package, then the end-to-end tests of the app in its real window.
# CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every test runner's output also goes to this log, so that the last line can
# add up what ran across the whole workspace and the end-to-end tests.
RESULTS=$(mktemp)

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== shellcheck"
# Every script of the project: the ones npm and CI run, and the benchmarks.
shellcheck scripts/*.sh .ci/run

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== redis-server for the Redis backend tests"
# A private redis-server on a free port, stopped on exit; the tests read
# MESH_TEST_REDIS_URL and give each test its own key prefix.
REDIS_PID=
CLUSTER_PIDS=()
CLUSTER_DIR=$(mktemp -d)
trap '[ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null; for p in "${CLUSTER_PIDS[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$RESULTS" "$CLUSTER_DIR"' EXIT
for _ in $(seq 20); do
  REDIS_PORT=$((20000 + RANDOM % 40000))
  # Taken already? Try another.
  (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null && continue
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null &
  REDIS_PID=$!
  for _ in $(seq 200); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break 2
    kill -0 "$REDIS_PID" 2>/dev/null || break
    sleep 0.05
  done
  kill "$REDIS_PID" 2>/dev/null || true
  REDIS_PID=
done
[ -n "$REDIS_PID" ] || { echo "could not start redis-server (is it installed?)" >&2; exit 1; }
export MESH_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/"
echo "redis-server on port $REDIS_PORT"

echo "== a three-node Redis Cluster for the cluster tests"
# Three primaries on free ports (each node also listens on its port + 10000
# for the cluster bus; both below Linux's ephemeral range, so that no test
# connection takes them), joined with redis-cli, stopped on exit.
free_pair() {
  while :; do
    p=$((20000 + RANDOM % 2700))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
    (exec 3<>"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null && continue
    echo "$p"; return
  done
}
CLUSTER_PORTS=()
for _ in 0 1 2; do
  p=$(free_pair)
  mkdir -p "$CLUSTER_DIR/$p"
  (cd "$CLUSTER_DIR/$p" && exec redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-node-timeout 2000 --save '' --appendonly no --daemonize no >/dev/null) &
  CLUSTER_PIDS+=($!)
  CLUSTER_PORTS+=("$p")
done
for p in "${CLUSTER_PORTS[@]}"; do
  for _ in $(seq 200); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
done
CLUSTER_NODES=()
for p in "${CLUSTER_PORTS[@]}"; do CLUSTER_NODES+=("127.0.0.1:$p"); done
redis-cli --cluster create "${CLUSTER_NODES[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
for p in "${CLUSTER_PORTS[@]}"; do
  for _ in $(seq 400); do
    redis-cli -p "$p" cluster info 2>/dev/null | grep -q cluster_state:ok && break
    sleep 0.05
  done
done
MESH_TEST_REDIS_CLUSTER=$(printf 'redis://127.0.0.1:%s,' "${CLUSTER_PORTS[@]}")
export MESH_TEST_REDIS_CLUSTER="${MESH_TEST_REDIS_CLUSTER%,}"
echo "redis cluster on ports ${CLUSTER_PORTS[*]}"

echo "== cargo test"
cargo test --workspace 2>&1 | tee -a "$RESULTS"

echo "== the server package: build, unpack, check the unit, run it"
bash scripts/test-package.sh 2>&1 | tee -a "$RESULTS"

echo "== end-to-end: the app in its real window (Xvfb + tauri-driver)"
bash scripts/e2e.sh 2>&1 | tee -a "$RESULTS"

awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "total: %d passed, %d failed\n", passed, failed }' "$RESULTS"
