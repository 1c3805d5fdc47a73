#!/usr/bin/env bash
# Builds the server package: `mesh-server` and the `mesh` command-line tool
# (the `dist` profile: release, stripped), the systemd unit and the options
# file, as a .deb (cargo-deb) and an .rpm (cargo-generate-rpm), both in
# target/server-package/. Only the two binaries are built.
#
#   --deb-only   skip the .rpm (the package test checks the .deb only)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
OUT="$TARGET_DIR/server-package"
RPM=yes
for arg in "$@"; do
  case "$arg" in
    --deb-only) RPM=no ;;
    *) echo "package-server.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
for tool in cargo-deb $([ "$RPM" = no ] || echo cargo-generate-rpm); do
  command -v "$tool" >/dev/null || { echo "package-server.sh: $tool is missing (scripts/setup.sh --build installs it)" >&2; exit 1; }
done

echo "== build mesh-server and mesh (profile dist)"
cargo build --profile dist -p mesh-server --bin mesh-server -p mesh-client --bin mesh

echo "== package"
rm -rf "$OUT"
mkdir -p "$OUT"
cargo deb -p mesh-server --no-build --profile dist --output "$OUT/"
if [ "$RPM" = yes ]; then
  cargo generate-rpm -p crates/mesh-server --profile dist --output "$OUT/"
fi
ls -1 "$OUT"/*
