#!/usr/bin/env bash
# The hostile-input figures in BENCHMARKS.md: the hostile suite
# (crates/mesh-server/tests/hostile/) against the release server, one attack
# at a time, each lasting 5 s, with the 50 ms bystander target. Needs a
# redis-server on PATH (or MESH_TEST_REDIS_URL) for the Redis attacks.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p mesh-server
export MESH_HOSTILE_SERVER="$PWD/target/release/mesh-server"
export MESH_HOSTILE_SECONDS="${MESH_HOSTILE_SECONDS:-5}"
export MESH_HOSTILE_P99_MS="${MESH_HOSTILE_P99_MS:-50}"
cargo test --release -p mesh-server --test hostile -- --test-threads=1 --nocapture 2>&1 |
  grep -oE 'hostile: .*|^test result.*|FAILED|panicked.*'
