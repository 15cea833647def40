#!/usr/bin/env python3
"""Recomputes wallet's ledger hash chain with nothing but Python's standard library.

Usage: python3 tools/verify_chain.py wallet.db
Prints the number of entries and the chain head, or the first entry whose hash differs.
The bytes hashed are documented in ARCHITECTURE.md ("The hash chain").
"""
import hashlib
import sqlite3
import sys


def field(text: str) -> bytes:
    data = text.encode("utf-8")
    return len(data).to_bytes(4, "big") + data


def has_column(db: sqlite3.Connection, table: str, column: str) -> bool:
    return any(r[1] == column for r in db.execute(f"PRAGMA table_info({table})"))


def main(path: str) -> int:
    # Read-only, so it is safe beside a running server.
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    prev = bytes(32)
    count = 0
    # Entries from this position on have their currency hashed last (schema 6: several
    # currencies); the ones before keep the bytes they were sealed with.
    row = db.execute(
        "SELECT chain_currency_from FROM settings WHERE id = 1"
        if has_column(db, "settings", "chain_currency_from")
        else "SELECT NULL"
    ).fetchone()
    currency_from = row[0] if row and row[0] is not None else None
    # Entries name their wallet by an integer key; the chain covers its public id. A LEFT JOIN,
    # so that an entry whose wallet is missing is reported, not skipped.
    # A reversal (schema 9) has the id of the entry it undoes hashed after the currency; every
    # other entry has nothing there.
    rows = db.execute(
        "SELECT e.seq, e.id, w.id, e.kind, e.amount, e.balance_after, e.reference,"
        " e.counterparty_user_id, e.transfer_id, e.metadata, e.created_at, e.hash, "
        + ("e.currency" if currency_from is not None else "NULL")
        + ", "
        + ("e.reverses" if has_column(db, "entries", "reverses") else "NULL")
        + " FROM entries e LEFT JOIN wallets w ON w.key = e.wallet_key ORDER BY e.seq"
    )
    for row in rows:
        *values, stored, currency, reverses = row
        if currency_from is not None and values[0] >= currency_from:
            values.append(currency)
        if reverses is not None:
            values.append(reverses)
        if values[2] is None:
            print(f"entry seq {values[0]}: its wallet does not exist")
            return 1
        h = hashlib.sha256(prev)
        for v in values:
            h.update(field("" if v is None else str(v)))
        if h.digest() != stored:
            print(f"entry seq {values[0]}: hash mismatch (recomputed {h.hexdigest()}, stored {stored.hex()})")
            return 1
        prev = stored
        count += 1
    print(f"{count} entries, chain head {prev.hex()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "wallet.db"))
