#!/usr/bin/env bash
# Drives the web console in headless Chromium through tests/browser/console.py (a small W3C
# WebDriver client, Python's standard library only):
#
#   bash tests/browser/run.sh [PATH_TO_WALLET_BINARY] [--screenshots]
#
# Installs Debian's chromium and chromium-driver when they are missing, starts the server on a
# free loopback port with a temporary database and a staff user made by `wallet
# createsuperuser`, starts chromedriver on a free port, and runs the script. With
# --screenshots the script also saves the main pages into docs/screenshots/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${1:-target/release/wallet}"
shift || true
if [[ "$BIN" != /* ]]; then
  if [[ -e "$PWD/$BIN" ]]; then BIN="$PWD/$BIN"; else BIN="$ROOT/$BIN"; fi
fi
if [[ ! -x "$BIN" ]]; then
  echo "run.sh: no executable at $BIN (build it with: cargo build --release)" >&2
  exit 2
fi
if ! command -v chromium > /dev/null || ! command -v chromedriver > /dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq > /dev/null
  apt-get install -y -qq chromium chromium-driver > /dev/null
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/wallet-console.XXXXXX")"
SERVER_PID=""
DRIVER_PID=""
# Each process is waited for before the directory goes (a server shutting down can still write
# its database's -wal file). Cleanup never changes the exit status.
cleanup() {
  local status=$?
  for pid in "$DRIVER_PID" "$SERVER_PID"; do
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  done
  if [[ $status -ne 0 ]]; then
    echo "---- server log ----" >&2; tail -n 20 "$TMP/server.log" >&2 2>/dev/null || true
    echo "---- chromedriver log ----" >&2; tail -n 20 "$TMP/driver.log" >&2 2>/dev/null || true
  fi
  rm -rf "$TMP" 2>/dev/null || true
  exit "$status"
}
trap cleanup EXIT

ADMIN_USERNAME="consoleadmin"
ADMIN_PASSWORD="console-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s\n' "$ADMIN_PASSWORD" | "$BIN" createsuperuser --db "$TMP/w.db" \
  --username "$ADMIN_USERNAME" --email consoleadmin@example.com > /dev/null

WALLET_LOG=off "$BIN" --db "$TMP/w.db" --listen 127.0.0.1:0 > "$TMP/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do grep -q "listening on" "$TMP/server.log" 2>/dev/null && break; sleep 0.1; done
BASE="$(sed -n 's/.*listening on //p' "$TMP/server.log" | head -n1)"
if [[ -z "$BASE" ]]; then echo "run.sh: the server did not start" >&2; exit 1; fi

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
chromedriver --port="$PORT" --allowed-ips=127.0.0.1 > "$TMP/driver.log" 2>&1 &
DRIVER_PID=$!

cd "$ROOT"
ADMIN_PASSWORD="$ADMIN_PASSWORD" python3 tests/browser/console.py \
  --base "$BASE" --driver "http://127.0.0.1:$PORT" --admin "$ADMIN_USERNAME" \
  --profile "$TMP/profile" "$@"
