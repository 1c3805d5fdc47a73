#!/usr/bin/env bash
# Tests the server package as an operator gets it, without root: builds it
# (scripts/package-server.sh), unpacks the .deb into a scratch folder, runs
# both binaries, checks the systemd unit offline with systemd-analyze (no
# running systemd needed) and that the check catches a broken unit, starts
# the unpacked server with the packaged options file and talks to it, and
# makes sure bad options are refused, with the reason, before a start.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

for tool in dpkg-deb systemd-analyze cargo-deb; do
  command -v "$tool" >/dev/null || { echo "package test: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done

passed=0
ok() { passed=$((passed + 1)); echo "ok $passed - $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# The .rpm is made from the same binaries and files by `npm run build`;
# this test checks the .deb, which this machine can unpack.
bash scripts/package-server.sh --deb-only
PACKAGES="${CARGO_TARGET_DIR:-target}/server-package"
DEB=$(ls "$PACKAGES"/mesh-server_*.deb)

ROOT=$(mktemp -d)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$ROOT"
}
trap cleanup EXIT
echo "== unpack $DEB"
dpkg-deb -x "$DEB" "$ROOT/fs"
dpkg-deb -e "$DEB" "$ROOT/control"
FS="$ROOT/fs"
SERVER="$FS/usr/bin/mesh-server"
ENV_FILE="$FS/etc/mesh-server/mesh-server.env"
UNIT=$(cd "$FS" && find . -path '*/systemd/system/mesh-server.service' | sed 's/^\.//')
[ -n "$UNIT" ] || fail "no mesh-server.service in the package"

for conffile in /etc/mesh-server/mesh-server.env /etc/mesh-server/auth-secret; do
  grep -qx "$conffile" "$ROOT/control/conffiles" || fail "$conffile is not a conffile"
  [ "$(stat -c %a "$FS$conffile")" = 600 ] || fail "$conffile is readable by others"
done
ok "the package holds the unit $UNIT and its options, kept on upgrade and private to root"

version=$(dpkg-deb -f "$DEB" Version)
"$SERVER" --version | grep -qx "mesh-server ${version%-*}" || fail "mesh-server --version: $("$SERVER" --version)"
"$FS/usr/bin/mesh" --version | grep -qx "mesh ${version%-*}" || fail "mesh --version"
ok "both binaries run: $("$SERVER" --version), $("$FS/usr/bin/mesh" --version)"

# --root makes systemd-analyze resolve the unit's paths (ExecStart=...) in
# the unpacked tree; --recursive-errors=no checks this unit and not the
# system units it orders itself after, which a scratch folder lacks.
verify() {
  systemd-analyze verify --man=no --recursive-errors=no --root="$FS" "$UNIT" 2>&1
}
out=$(verify) || fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify warns: $out"
ok "systemd-analyze verify accepts the unit"

cp "$FS$UNIT" "$ROOT/unit.good"
for breakage in 's/^ProtectSystem=strict$/ProtectSystem=strictest/' \
                's/^NoNewPrivileges=/NoNewPrivilege=/' \
                's|^ExecStart=/usr/bin/mesh-server|ExecStart=/usr/bin/mesh-serve|'; do
  sed "$breakage" "$ROOT/unit.good" > "$FS$UNIT"
  cmp -s "$ROOT/unit.good" "$FS$UNIT" && fail "$breakage changed nothing"
  if out=$(verify); then fail "systemd-analyze verify missed $breakage"; fi
  echo "  $breakage: $out" | head -1
done
cp "$ROOT/unit.good" "$FS$UNIT"
ok "systemd-analyze verify catches a broken unit"

exposure=$(systemd-analyze security --offline=true --root="$FS" --threshold=25 "$UNIT" 2>&1 | grep -o "Overall exposure level.*[0-9] [A-Z]*") ||
  fail "systemd-analyze security: $exposure"
ok "hardening: $exposure"

# The service's environment: the options file's settings and nothing else.
# The packaged address is kept, on a free port: 3000 may be taken here.
mapfile -t settings < <(grep -E '^[A-Z][A-Z0-9_]*=' "$ENV_FILE")
grep -qx 'MESH_ADDR=127.0.0.1:3000' "$ENV_FILE" || fail "the options file does not listen on 127.0.0.1:3000"
service_env=(env -i "${settings[@]}" MESH_ADDR=127.0.0.1:0)

out=$("${service_env[@]}" "$SERVER" --check-config 2>&1) || fail "--check-config refuses the packaged options: $out"
ok "--check-config accepts the packaged options: $out"

mkfifo "$ROOT/log"
"${service_env[@]}" "$SERVER" >"$ROOT/log" 2>&1 &
SERVER_PID=$!
exec 3<"$ROOT/log"
url=
while IFS= read -r -t 60 line <&3; do
  printf '%s\n' "$line" >>"$ROOT/server.log"
  url=$(grep -o 'ws://[^ ]*' <<<"$line" || true)
  [ -z "$url" ] || break
done
[ -n "$url" ] || fail "the server never said it was ready: $(cat "$ROOT/server.log")"
# Keep draining its logs so it never blocks on a full pipe.
cat <&3 >>"$ROOT/server.log" &
exec 3<&-
port=${url##*:}

# One plain HTTP GET on the server's port: the whole response.
http_get() {
  exec 4<>"/dev/tcp/127.0.0.1/$port"
  printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$1" >&4
  timeout 10 cat <&4
  exec 4<&-
}
status=$(http_get /healthz | head -1)
[[ $status == "HTTP/1.1 200"* ]] || fail "/healthz answered: $status"
metrics=$(http_get /metrics)
grep -q '^mesh_connections ' <<<"$metrics" || fail "/metrics answered: $metrics"
mesh=(env -i "$FS/usr/bin/mesh" --url "$url")
"${mesh[@]}" publish general '{"status":"installed"}' --no-wait >/dev/null || fail "mesh publish"
snapshot=$("${mesh[@]}" state general) || fail "mesh state"
grep -q '"present"' <<<"$snapshot" || fail "mesh state printed $snapshot"
ok "the unpacked server serves /healthz, /metrics and Mesh clients at $url"

kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || fail "the server exited with $? on SIGTERM"
SERVER_PID=
grep -q 'shutting down' "$ROOT/server.log" || fail "no shutdown log: $(cat "$ROOT/server.log")"
if grep -q $'\e' "$ROOT/server.log"; then fail "colour codes in logs that go to no terminal"; fi
ok "it logs to stdout without colours and stops cleanly on SIGTERM"

# Each bad setting, from the options file as the service would get it, is
# refused with exit status 2 (which the unit does not restart on) and a
# message naming what is wrong, both by --check-config and by a real start.
refuse() {
  local setting=$1 expected=$2 out
  for mode in --check-config ""; do
    if out=$(timeout 10 "${service_env[@]}" "$setting" "$SERVER" $mode 2>&1); then
      fail "$setting was accepted ($mode)"
    else
      status=$?
    fi
    [ "$status" -eq 2 ] || fail "$setting: exit status $status, not 2 ($mode): $out"
    grep -qF -- "$expected" <<<"$out" || fail "$setting: no \"$expected\" in: $out"
  done
  echo "  $setting: $(head -1 <<<"$out")"
}
refuse 'MESH_TRACK=doc:(' 'invalid room pattern "doc:("'
refuse 'MESH_MAX_FRAME_BYTES=0' '--max-frame-bytes'
refuse 'MESH_PING_INTERVAL=0s' '--ping-interval'
refuse 'MESH_REDIS_URL=http://127.0.0.1:6379' 'redis url'
refuse 'MESH_ADDR=localhost' '--addr'
# The packaged secret file is empty until the operator fills it.
refuse "MESH_AUTH_SECRET_FILE=$FS/etc/mesh-server/auth-secret" 'secret is empty'
ok "bad options are refused with the reason and exit status 2"

echo "test result: ok. $passed passed; 0 failed (server package)"
