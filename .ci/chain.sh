#!/usr/bin/env bash
# Moves money through a live server (with two staff reversals), then checks that tools/verify_chain.py (Python's standard
# library only) and `wallet verify` agree that the ledger's hash chain is intact, and that both
# catch an entry edited behind the triggers' back.
set -euo pipefail
BIN="${1:-target/release/wallet}"
TMP="$(mktemp -d)"
PID=""
# The server is waited for before its directory goes: a server still shutting down can write its
# database's -wal file back while rm walks the directory. Cleanup never changes the exit status.
cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$TMP" 2>/dev/null || true
}
trap cleanup EXIT
printf '%s\n' 'chain staff pass 1' | WALLET_ARGON2_MEMORY_KIB=64 WALLET_ARGON2_ITERATIONS=1 \
  "$BIN" createsuperuser --db "$TMP/w.db" --username chainstaff --email chainstaff@example.com > /dev/null
WALLET_LOG=off WALLET_ARGON2_MEMORY_KIB=64 WALLET_ARGON2_ITERATIONS=1 \
  "$BIN" --db "$TMP/w.db" --listen 127.0.0.1:0 > "$TMP/out" 2>&1 &
PID=$!
for _ in $(seq 1 100); do grep -q "listening on" "$TMP/out" 2>/dev/null && break; sleep 0.1; done
B="$(sed -n 's/.*listening on //p' "$TMP/out" | head -n1)"
J='Content-Type: application/json'
reg() { curl -sf -XPOST "$B/api/auth/register" -H "$J" -d "{\"username\":\"$1\",\"email\":\"$1@example.com\",\"password\":\"chain pass 1\",\"password_confirm\":\"chain pass 1\"}" | python3 -c 'import sys,json; print(json.load(sys.stdin)["token"])'; }
TA="$(reg chaina)"; reg chainb > /dev/null
for i in 1 2 3 4 5; do
  curl -sf -XPOST "$B/api/wallets/me/deposit" -H "$J" -H "Authorization: Token $TA" -d "{\"amount\":\"1$i.25\",\"reference\":\"d$i\",\"metadata\":{\"note\":\"é ✓ $i\"}}" > /dev/null
  curl -sf -XPOST "$B/api/wallets/me/transfer" -H "$J" -H "Authorization: Token $TA" -d "{\"to_username\":\"chainb\",\"amount\":\"$i\",\"reference\":\"t|$i\"}" > /dev/null
done
# A staff reversal of a deposit and of a transfer: their entries hash `reverses` too.
login() { curl -sf -XPOST "$B/api/auth/login" -H "$J" -d "{\"username\":\"$1\",\"password\":\"$2\"}" | python3 -c 'import sys,json; print(json.load(sys.stdin)["token"])'; }
TS="$(login chainstaff 'chain staff pass 1')"
tx_of() { curl -sf "$B/api/wallets/me/transactions?type=$1&limit=1" -H "Authorization: Token $TA" | python3 -c 'import sys,json; print(json.load(sys.stdin)["results"][0]["id"])'; }
for kind in DEPOSIT TRANSFER_OUT; do
  curl -sf -XPOST "$B/api/admin/transactions/$(tx_of $kind)/reverse" -H "$J" -H "Authorization: Token $TS" \
    -d "{\"reason\":\"chain check\",\"reference\":\"rv-$kind\"}" > /dev/null
done
python3 tools/verify_chain.py "$TMP/w.db"
"$BIN" --db "$TMP/w.db" verify
kill "$PID"; wait "$PID" 2>/dev/null || true
# Tamper: edit one amount behind the triggers' back. Both checkers must now fail.
sqlite3_py='import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript("DROP TRIGGER entries_no_update; UPDATE entries SET amount = amount + 1 WHERE seq = 3;"); c.commit()'
python3 -c "$sqlite3_py" "$TMP/w.db"
if python3 tools/verify_chain.py "$TMP/w.db"; then echo "verify_chain.py missed the tampering"; exit 1; fi
if "$BIN" --db "$TMP/w.db" verify; then echo "wallet verify missed the tampering"; exit 1; fi
echo "chain: both implementations agree, and both catch tampering"
