#!/usr/bin/env bash
# Measures the desktop app under Xvfb: process start to first rendered list,
# RSS, and per-frame cost with a 5k-user room (5000 real connections to the
# app's embedded server) that keeps changing. The app is the release build,
# as installed from the .deb/.rpm; the measuring side is the debug build of
# tests/src/bin/app_bench.rs. USERS=N changes the room size.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p mesh-presence-app
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
export MESH_PRESENCE_APP="$PWD/$TARGET_DIR/release/mesh-presence"
xvfb-run -a -s "-screen 0 1280x800x24" \
  cargo run -p mesh-presence-e2e --features e2e --bin app-bench
