#!/usr/bin/env bash
# Measures the desktop app under Xvfb: cold start to first rendered list, RSS,
# and per-frame cost with a 5k-user room that keeps changing. Uses the release
# build of the app (as installed from the .deb/.rpm). USERS=N changes the room size.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p mesh-presence-app
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
export MESH_PRESENCE_APP="$PWD/$TARGET_DIR/release/mesh-presence"
cargo build --release -p mesh-presence-e2e --features e2e --bin app-bench
xvfb-run -a -s "-screen 0 1280x800x24" "$TARGET_DIR/release/app-bench"
