#!/usr/bin/env bash
# Runs the Postman collection against a freshly started server on an empty database.
#
#   .ci/newman.sh [PATH_TO_RELEASE_BINARY] [COLLECTION]
#       (defaults: target/release/wallet, wallet.postman_collection.json)
#
# With tests/fixtures/part1.postman_collection.json (the first wave's collection, unchanged),
# it shows that a client written for part 1 does not notice part 2: the same server, with
# two currencies, passes it as it is.
#
# It makes a temporary database, creates the staff user `ciadmin` with createsuperuser,
# starts the server on a free loopback port (with the currencies USD and EUR), waits for /health,
# runs newman (installing it under the temporary directory when it is not on PATH) and exits
# with newman's status.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

BIN="${1:-target/release/wallet}"
COLLECTION="${2:-wallet.postman_collection.json}"
if [[ "$BIN" != /* ]]; then
    if [[ -e "$PWD/$BIN" ]]; then BIN="$PWD/$BIN"; else BIN="$ROOT/$BIN"; fi
fi
if [[ ! -x "$BIN" ]]; then
    echo "newman.sh: no executable at $BIN (build it with: cargo build --release)" >&2
    exit 2
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/wallet-newman.XXXXXX")"
DB="$TMP/wallet.db"
SERVER_LOG="$TMP/server.log"
SERVER_PID=""

cleanup() {
    local status=$?
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        # Give it a moment to shut down cleanly, then insist.
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ $status -ne 0 && -s "$SERVER_LOG" ]]; then
        echo "---- last lines of the server log ----" >&2
        tail -n 40 "$SERVER_LOG" >&2 || true
    fi
    rm -rf "$TMP" 2>/dev/null || true
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Letters and digits only, so it can sit inside the collection's JSON body as it is.
ADMIN_USERNAME="ciadmin"
ADMIN_PASSWORD="${ADMIN_PASSWORD:-ci-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}"

printf '%s\n' "$ADMIN_PASSWORD" | "$BIN" createsuperuser --db "$DB" \
    --username "$ADMIN_USERNAME" --email ciadmin@example.com

free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
    else
        echo $((20000 + RANDOM % 20000))
    fi
}
PORT="${PORT:-$(free_port)}"
BASE_URL="http://127.0.0.1:$PORT"

# Two currencies, USD the default: the collection's "Currencies and holds" folder uses EUR.
"$BIN" --db "$DB" --listen "127.0.0.1:$PORT" --currencies USD:2,EUR:2 >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!

# Wait up to 30 s for GET /health to answer 200.
ready=""
for _ in $(seq 1 60); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "newman.sh: the server exited before it was ready" >&2
        exit 1
    fi
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$BASE_URL/health" || true)"
    if [[ "$code" == "200" ]]; then ready=1; break; fi
    sleep 0.5
done
if [[ -z "$ready" ]]; then
    echo "newman.sh: $BASE_URL/health did not answer 200 within 30 s" >&2
    exit 1
fi
echo "newman.sh: server ready at $BASE_URL (pid $SERVER_PID)"

if command -v newman >/dev/null 2>&1; then
    NEWMAN="newman"
else
    echo "newman.sh: newman is not on PATH; installing it under $TMP/npm"
    npm install --no-save --no-audit --no-fund --loglevel=error --prefix "$TMP/npm" newman >&2
    NEWMAN="$TMP/npm/node_modules/.bin/newman"
fi

cd "$ROOT"
set +e
"$NEWMAN" run "$COLLECTION" \
    -e wallet.postman_environment.json \
    --env-var "baseUrl=$BASE_URL" \
    --env-var "adminUsername=$ADMIN_USERNAME" \
    --env-var "adminPassword=$ADMIN_PASSWORD" \
    --timeout-request 30000 \
    --reporters cli,json --reporter-json-export "$TMP/newman.json"
newman_status=$?
set -e

# One plain closing line with the assertion counts.
if [[ -s "$TMP/newman.json" ]] && command -v node >/dev/null 2>&1; then
    node -e '
        const a = require(process.argv[1]).run.stats.assertions;
        console.log(`newman: ${a.total - a.failed} passed, ${a.failed} failed`);
    ' "$TMP/newman.json" || true
fi

exit "$newman_status"
