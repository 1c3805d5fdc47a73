#!/usr/bin/env bash
# `npm run bench`: builds the server and the load tool in release mode, then
# runs the three benchmarks of mesh-bench against a server it spawns:
# the burst (N=400 clients, K=3 states each), a steady 40k deliveries/s,
# and 10k idle connections. Extra arguments go to every mesh-bench run.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p mesh-server -p mesh-bench
bench="${CARGO_TARGET_DIR:-target}/release/mesh-bench"

echo "== burst: 400 clients x 3 states"
"$bench" --spawn-server -n 400 -k 3 "$@"
echo "== steady: 40k deliveries/s for 10 s"
"$bench" --spawn-server -n 400 --rate 40000 --duration 10 "$@"
echo "== idle: 10k connections"
"$bench" --spawn-server --idle 10000 "$@"
