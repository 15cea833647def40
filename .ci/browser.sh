#!/usr/bin/env bash
# Renders /docs in headless Chromium, as a user's browser would: the page must build its list
# of operations from /openapi.json with nothing loaded from elsewhere, under its own
# Content-Security-Policy (a blocked script would leave the "Loading" paragraph in place).
# Installs Chromium from Debian's packages when it is missing.
set -euo pipefail
BIN="${1:-target/release/wallet}"
if ! command -v chromium > /dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq > /dev/null
  apt-get install -y -qq chromium > /dev/null
fi
TMP="$(mktemp -d)"
PID=""
# The server is waited for before its directory goes: a server still shutting down can write its
# database's -wal file back while rm walks the directory. Cleanup never changes the exit status.
cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$TMP" 2>/dev/null || true
}
trap cleanup EXIT
WALLET_LOG=off "$BIN" --db "$TMP/w.db" --listen 127.0.0.1:0 > "$TMP/out" 2>&1 &
PID=$!
for _ in $(seq 1 100); do grep -q "listening on" "$TMP/out" 2>/dev/null && break; sleep 0.1; done
B="$(sed -n 's/.*listening on //p' "$TMP/out" | head -n1)"
# No network but this server: a page that reached for another host would fail to render.
timeout 60 chromium --headless=new --no-sandbox --disable-gpu --no-first-run \
  --host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1" \
  --virtual-time-budget=10000 --enable-logging=stderr --v=0 \
  --dump-dom "$B/docs" > "$TMP/dom.html" 2> "$TMP/chromium.log" || true
if grep -qi "Content Security Policy" "$TMP/chromium.log"; then
  echo "browser: the page broke its own Content-Security-Policy:"
  grep -i "Content Security Policy" "$TMP/chromium.log" | head -n 5
  exit 1
fi
for want in 'data-rendered=' '/api/wallets/me/transfer' '/api/admin/withdrawals/{id}/resolve'; do
  if ! grep -qF "$want" "$TMP/dom.html"; then
    echo "browser: /docs did not render ($want missing). DOM:"
    head -c 2000 "$TMP/dom.html"
    exit 1
  fi
done
echo "browser: /docs rendered $(grep -o 'data-rendered="[0-9]*"' "$TMP/dom.html") groups of operations in headless Chromium, nothing blocked"
