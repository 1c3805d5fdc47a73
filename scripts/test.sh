#!/usr/bin/env bash
# The project's one test command (`npm test`): formatting, lints, then every
# test in the workspace. CI runs exactly this after installing what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test --workspace

echo "== end-to-end: the app in its real window (Xvfb + tauri-driver)"
bash scripts/e2e.sh
