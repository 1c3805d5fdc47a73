#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build, run and test
# Mesh Presence: system packages (as root), tauri-driver, the packaging
# tool cargo-deb, and npm packages; with --build (`npm run build`) also
# cargo-generate-rpm, which only the .rpm needs and takes minutes to build.
# Every step is skipped when already done, so it is cheap to run again.
set -euo pipefail
PACKAGING_TOOLS=(cargo-deb)
[ "${1:-}" != --build ] || PACKAGING_TOOLS+=(cargo-generate-rpm)
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # Tauri 2 on Linux
  libwebkit2gtk-4.1-dev libgtk-3-dev libayatana-appindicator3-dev
  librsvg2-dev libsoup-3.0-dev libjavascriptcoregtk-4.1-dev
  build-essential pkg-config libssl-dev file
  # end-to-end tests in the real window, in a private D-Bus session
  # (dbus-run-session: how one copy of the app finds the running one)
  xvfb webkit2gtk-driver imagemagick dbus
  # the Redis backend and its tests
  redis-server
  # the server package's test: systemd-analyze checks its unit
  systemd
  # `npm test` lints every script
  shellcheck
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  SUDO=
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}"
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v tauri-driver >/dev/null 2>&1; then
  echo "== cargo install tauri-driver"
  cargo install tauri-driver --locked --version '^2'
fi

# The server package (scripts/package-server.sh).
for tool in "${PACKAGING_TOOLS[@]}"; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "== cargo install $tool"
    cargo install "$tool" --locked
  fi
done

if [ ! -x node_modules/.bin/tauri ]; then
  echo "== npm ci"
  npm ci --no-audit --no-fund
fi
