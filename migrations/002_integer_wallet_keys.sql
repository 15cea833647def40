-- Schema 1 → 2: ledger rows name their wallet by an integer key instead of its UUID text, and
-- lists of kinds are OR chains instead of IN lists (see schema.sql). Both tables are rebuilt
-- the way SQLite's ALTER TABLE documentation prescribes: create the new table, copy, drop the
-- old one, rename. Every row, id, hash and time stamp is copied unchanged, so the hash chain
-- still verifies. The caller runs this in one transaction with foreign keys off, then runs
-- `PRAGMA foreign_key_check` before it commits.

CREATE TABLE wallets_v2 (
    key                 INTEGER PRIMARY KEY,
    id                  TEXT    NOT NULL UNIQUE,
    user_id             INTEGER NOT NULL UNIQUE REFERENCES users (id),
    balance             INTEGER NOT NULL DEFAULT 0 CHECK (balance >= 0),
    last_balance        INTEGER NOT NULL DEFAULT 0 CHECK (last_balance >= 0),
    last_balance_update TEXT    NOT NULL,
    created_at          TEXT    NOT NULL
) STRICT;
INSERT INTO wallets_v2 (key, id, user_id, balance, last_balance, last_balance_update, created_at)
    SELECT rowid, id, user_id, balance, last_balance, last_balance_update, created_at
    FROM wallets ORDER BY rowid;

CREATE TABLE entries_v2 (
    seq                  INTEGER PRIMARY KEY,
    id                   TEXT    NOT NULL UNIQUE,
    wallet_key           INTEGER NOT NULL REFERENCES wallets (key),
    kind                 TEXT    NOT NULL
        CHECK (kind = 'DEPOSIT' OR kind = 'WITHDRAWAL' OR kind = 'TRANSFER_IN' OR kind = 'TRANSFER_OUT'
               OR kind = 'REFUND'),
    amount               INTEGER NOT NULL CHECK (amount > 0),
    balance_after        INTEGER NOT NULL CHECK (balance_after >= 0),
    reference            TEXT    NOT NULL CHECK (length(reference) BETWEEN 1 AND 255),
    counterparty_user_id INTEGER REFERENCES users (id),
    transfer_id          TEXT,
    metadata             TEXT    NOT NULL DEFAULT '{}',
    created_at           TEXT    NOT NULL,
    hash                 BLOB    NOT NULL CHECK (length(hash) = 32)
) STRICT;
INSERT INTO entries_v2 (seq, id, wallet_key, kind, amount, balance_after, reference,
        counterparty_user_id, transfer_id, metadata, created_at, hash)
    SELECT e.seq, e.id, w.key, e.kind, e.amount, e.balance_after, e.reference,
        e.counterparty_user_id, e.transfer_id, e.metadata, e.created_at, e.hash
    -- A LEFT JOIN: an entry whose wallet is missing fails NOT NULL and stops the migration,
    -- instead of being left behind.
    FROM entries e LEFT JOIN wallets_v2 w ON w.id = e.wallet_id ORDER BY e.seq;

DROP TABLE entries;
DROP TABLE wallets;
ALTER TABLE wallets_v2 RENAME TO wallets;
ALTER TABLE entries_v2 RENAME TO entries;

CREATE INDEX entries_wallet_time ON entries (wallet_key, created_at);
CREATE UNIQUE INDEX entries_reference ON entries (wallet_key, kind, reference)
    WHERE kind = 'DEPOSIT' OR kind = 'WITHDRAWAL' OR kind = 'TRANSFER_OUT';

CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries
BEGIN
    SELECT RAISE(ABORT, 'ledger entries are immutable');
END;

CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries
BEGIN
    SELECT RAISE(ABORT, 'ledger entries are immutable');
END;

CREATE TRIGGER entries_balance_follows BEFORE INSERT ON entries
WHEN NEW.balance_after IS NOT (SELECT balance FROM wallets WHERE key = NEW.wallet_key)
BEGIN
    SELECT RAISE(ABORT, 'balance_after is not the wallet''s balance');
END;
