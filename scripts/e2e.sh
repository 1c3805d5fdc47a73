#!/usr/bin/env bash
# End-to-end tests of the desktop app in its real window: builds the app,
# then runs tests/ under a private Xvfb display; each test starts its own
# tauri-driver (and through it WebKitWebDriver and the app) with its own app
# data directories, and stops them when it ends. Screenshots of every step
# land in test-output/e2e/<test>/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

for tool in xvfb-run dbus-run-session tauri-driver WebKitWebDriver; do
  command -v "$tool" >/dev/null || { echo "e2e: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done

echo "== build the app (debug, assets embedded) and the standalone server"
cargo build -p mesh-presence-app
cargo build -p mesh-server --bin mesh-server
# Absolute, whether CARGO_TARGET_DIR is relative (to here) or absolute.
TARGET_DIR="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)"
export MESH_PRESENCE_APP="$TARGET_DIR/debug/mesh-presence"
export MESH_SERVER_BIN="$TARGET_DIR/debug/mesh-server"

echo "== lint and run the end-to-end tests"
cargo clippy -p mesh-presence-e2e --all-targets --features e2e -- -D warnings
# One test at a time: each drives a whole app on a small, shared machine.
# xvfb-run starts a private X server and stops it when the tests exit;
# dbus-run-session a private session bus, where a second copy of the app
# finds the first (and never one the desktop runs). Arguments select tests.
dbus-run-session -- xvfb-run -a -s "-screen 0 1280x800x24" \
  cargo test -p mesh-presence-e2e --features e2e -- --test-threads=1 "$@"
