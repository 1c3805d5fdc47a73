#!/usr/bin/env bash
# Builds the server package: `mesh-server` and the `mesh` command-line tool
# (the `dist` profile: release, stripped), the systemd unit and the options
# file, as a .deb (cargo-deb) and an .rpm (cargo-generate-rpm), both in
# target/server-package/. Only the two binaries are built.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
OUT="$TARGET_DIR/server-package"

echo "== build mesh-server and mesh (profile dist)"
cargo build --profile dist -p mesh-server --bin mesh-server -p mesh-client --bin mesh

echo "== package"
rm -rf "$OUT"
mkdir -p "$OUT"
cargo deb -p mesh-server --no-build --profile dist --output "$OUT/"
cargo generate-rpm -p crates/mesh-server --profile dist --output "$OUT/"
ls -1 "$OUT"/*.deb "$OUT"/*.rpm
