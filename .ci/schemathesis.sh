#!/usr/bin/env bash
# Contract test: fuzz the live server against its own /openapi.json with schemathesis.
# Usage: .ci/schemathesis.sh [path/to/wallet [extra schemathesis run options...]]
#        (default target/release/wallet; e.g. `... target/release/wallet --report har --report-dir /tmp/st`)
# Env: ST_MAX_EXAMPLES (default 100), ST_SEED (default 1), ST_WORKERS (default 1),
#      ST_VERSION (pip spec, default "schemathesis>=4.32,<5").
# One worker by default: with two threads, hypothesis parsing its lambdas' source at once
# tripped CPython 3.11's "AST constructor recursion depth mismatch" inside schemathesis (a
# Runtime Error that failed a run with every test case passing).
set -euo pipefail

BIN="${1:-target/release/wallet}"
if [ "$#" -gt 0 ]; then shift; fi
case "$BIN" in /*) ;; *) BIN="$PWD/$BIN" ;; esac
[ -x "$BIN" ] || { echo "schemathesis.sh: no executable at $BIN" >&2; exit 2; }

MAX_EXAMPLES="${ST_MAX_EXAMPLES:-100}"
SEED="${ST_SEED:-1}"
WORKERS="${ST_WORKERS:-1}"
ST_SPEC="${ST_VERSION:-schemathesis>=4.32,<5}"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/wallet-st.XXXXXX")"
DB="$TMP/wallet.db"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# --- schemathesis: use an importable one of major version 4, else install into a venv ---
ST=()
if python3 -c 'import sys, schemathesis; from importlib.metadata import version; sys.exit(0 if version("schemathesis").split(".")[0] == "4" else 1)' 2>/dev/null; then
  ST=(python3 -m schemathesis.cli)
else
  echo "schemathesis.sh: installing $ST_SPEC into $TMP/venv" >&2
  python3 -m venv "$TMP/venv"
  "$TMP/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$ST_SPEC"
  ST=("$TMP/venv/bin/schemathesis")
fi
"${ST[@]}" --version

# --- a free port ---
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
BASE="http://127.0.0.1:$PORT"

# --- a staff user, created before the server opens the database ---
ADMIN_PW="ci-admin-$RANDOM$RANDOM-pass"
printf '%s\n' "$ADMIN_PW" | "$BIN" createsuperuser --db "$DB" --username ciadmin --email ciadmin@example.com >"$TMP/createsuperuser.log" 2>&1 \
  || { echo "schemathesis.sh: createsuperuser failed:" >&2; cat "$TMP/createsuperuser.log" >&2; exit 1; }

# --- the server ---
"$BIN" --db "$DB" --listen "127.0.0.1:$PORT" >"$TMP/server.log" 2>&1 &
SERVER_PID=$!
up=""
for _ in $(seq 1 300); do   # 300 x 0.1 s = 30 s
  if curl -fsS -o /dev/null "$BASE/health" 2>/dev/null; then up=1; break; fi
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$up" ]; then
  echo "schemathesis.sh: server did not become healthy within 30 s; its log:" >&2
  cat "$TMP/server.log" >&2
  exit 1
fi

json_field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# api METHOD PATH TOKEN BODY OUTFILE: a JSON request that must answer 2xx; prints the answer otherwise.
api() {
  local method="$1" path="$2" token="$3" body="$4" out="$5" code
  local auth=()
  [ -n "$token" ] && auth=(-H "Authorization: Token $token")
  code="$(curl -sS -o "$out" -w '%{http_code}' -X "$method" "$BASE$path" \
            -H 'Content-Type: application/json' "${auth[@]}" -d "$body")" || code=000
  case "$code" in
    2??) return 0 ;;
    *) echo "schemathesis.sh: $method $path answered $code: $(cat "$out" 2>/dev/null)" >&2; return 1 ;;
  esac
}

# a moment 30 days ahead, for a scheduled withdrawal that stays PENDING during the run
LATER="$(python3 -c 'import datetime as d; print((d.datetime.now(d.timezone.utc) + d.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ"))')"

# --- the users schemathesis acts as (a second one so that transfers can succeed) ---
PW="ci-user-$RANDOM$RANDOM-pass"
api POST /api/auth/register "" \
  "{\"username\":\"ciuser\",\"email\":\"ciuser@example.com\",\"password\":\"$PW\",\"password_confirm\":\"$PW\"}" "$TMP/reg.json"
USER_TOKEN="$(json_field token <"$TMP/reg.json")"
api POST /api/auth/register "" \
  "{\"username\":\"ciother\",\"email\":\"ciother@example.com\",\"password\":\"$PW\",\"password_confirm\":\"$PW\"}" "$TMP/reg2.json"
api POST /api/wallets/me/deposit "$USER_TOKEN" '{"amount":"5000.00","reference":"ci-seed-deposit"}' "$TMP/out.json"
api POST /api/wallets/me/withdraw "$USER_TOKEN" \
  '{"amount":"1.00","reference":"ci-seed-scheduled","scheduled_at":"'"$LATER"'"}' "$TMP/out.json"

# Run as the staff user when it has a wallet (so the wallet routes and the /api/admin routes
# both answer with their success shapes); otherwise as the plain user (admin routes then 403).
api POST /api/auth/login "" "{\"username\":\"ciadmin\",\"password\":\"$ADMIN_PW\"}" "$TMP/login.json"
ADMIN_TOKEN="$(json_field token <"$TMP/login.json")"
if api POST /api/wallets/me/deposit "$ADMIN_TOKEN" '{"amount":"5000.00","reference":"ci-seed-deposit"}' "$TMP/out.json" 2>/dev/null; then
  TOKEN="$ADMIN_TOKEN"; echo "schemathesis.sh: running as staff user ciadmin"
  api POST /api/wallets/me/withdraw "$TOKEN" \
    '{"amount":"1.00","reference":"ci-seed-scheduled","scheduled_at":"'"$LATER"'"}' "$TMP/out.json"
else
  TOKEN="$USER_TOKEN"; echo "schemathesis.sh: running as plain user ciuser"
fi

# --- the run (from $TMP: schemathesis leaves .hypothesis/ and .schemathesis/ in its working
# directory; report paths passed as extra options should be absolute) ---
cd "$TMP"
start=$(date +%s)
set +e
"${ST[@]}" run "$BASE/openapi.json" \
  -H "Authorization: Token $TOKEN" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --exclude-operation-id logout \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --workers "$WORKERS" \
  --request-timeout 10 \
  --generation-database none \
  --no-color \
  "$@"
status=$?
set -e
echo "schemathesis.sh: schemathesis exited $status after $(( $(date +%s) - start )) s"
if [ "$status" -ne 0 ]; then
  echo "schemathesis.sh: last lines of the server log:" >&2
  tail -n 50 "$TMP/server.log" >&2 || true
fi
exit "$status"
