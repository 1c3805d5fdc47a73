#!/usr/bin/env bash
# Measures the desktop app under Xvfb: process start to first rendered list,
# RSS (the app, WebKit's web and network processes), and frames: the idle
# window, then a 5k-user room (5000 real connections) that keeps changing,
# is scrolled top to bottom and empties. The app is built as shipped (profile
# `desktop`), the standalone server and the measuring side
# (tests/src/bin/app_bench.rs, which also plays the 5000 users) as release.
# USERS=N changes the room size; UPDATE_SECS=N how long it keeps changing;
# ROOM_SERVER=embedded puts the room on the app's embedded server instead;
# SCROLL=0 skips the scroll; SCROLL_PAGE_JS runs a script in the page before the
# scroll (see tests/src/bin/app_bench.rs), to measure what a part of the list costs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --profile desktop -p mesh-presence-app
cargo build --release -p mesh-server
# Absolute, whether CARGO_TARGET_DIR is relative (to here) or absolute.
TARGET_DIR="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)"
export MESH_PRESENCE_APP="$TARGET_DIR/desktop/mesh-presence"
export MESH_SERVER_BIN="$TARGET_DIR/release/mesh-server"
xvfb-run -a -s "-screen 0 1280x800x24" \
  cargo run --release -p mesh-presence-e2e --features e2e --bin app-bench
