-- Schema 5 → 6: several currencies and holds. Before it, `migrations::currencies_v6` has added
-- `currency` to entries and withdrawals with the database's currency (from `settings`) as the
-- value of every existing row: entries written before this upgrade are in the currency the
-- deployment had when they were written, whatever `--currencies` lists first now.

-- Entries from the next position on have their currency in the hash chain; the ones before
-- keep the bytes they were sealed with, so every existing chain still verifies.
ALTER TABLE settings ADD COLUMN chain_currency_from INTEGER NOT NULL DEFAULT 1
    CHECK (chain_currency_from >= 1);
UPDATE settings SET chain_currency_from = (SELECT COALESCE(max(seq), 0) + 1 FROM entries);

CREATE TABLE currencies (
    code            TEXT    PRIMARY KEY CHECK (length(code) BETWEEN 3 AND 8),
    scale           INTEGER NOT NULL CHECK (scale BETWEEN 0 AND 8)
) STRICT;
INSERT INTO currencies (code, scale) SELECT currency, scale FROM settings;

-- The one balance of each wallet becomes its balance in the database's currency.
CREATE TABLE balances (
    wallet_key          INTEGER NOT NULL REFERENCES wallets (key),
    currency            TEXT    NOT NULL REFERENCES currencies (code),
    balance             INTEGER NOT NULL DEFAULT 0 CHECK (balance >= 0),
    held                INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0 AND held <= balance),
    last_balance        INTEGER NOT NULL DEFAULT 0 CHECK (last_balance >= 0),
    last_balance_update TEXT    NOT NULL,
    PRIMARY KEY (wallet_key, currency)
) STRICT, WITHOUT ROWID;
INSERT INTO balances (wallet_key, currency, balance, held, last_balance, last_balance_update)
    SELECT w.key, s.currency, w.balance, 0, w.last_balance, w.last_balance_update
    FROM wallets w CROSS JOIN settings s ORDER BY w.key;

DROP TRIGGER entries_balance_follows;
ALTER TABLE wallets DROP COLUMN balance;
ALTER TABLE wallets DROP COLUMN last_balance;
ALTER TABLE wallets DROP COLUMN last_balance_update;
CREATE TRIGGER entries_balance_follows BEFORE INSERT ON entries
WHEN NEW.balance_after IS NOT
    (SELECT balance FROM balances WHERE wallet_key = NEW.wallet_key AND currency = NEW.currency)
BEGIN
    SELECT RAISE(ABORT, 'balance_after is not the wallet''s balance');
END;

-- Snapshots are per currency: rebuilt with the currency in the key.
CREATE TABLE balance_snapshots_v6 (
    wallet_id  TEXT    NOT NULL REFERENCES wallets (id),
    taken_at   TEXT    NOT NULL,
    balance    INTEGER NOT NULL CHECK (balance >= 0),
    running    INTEGER NOT NULL,
    run_id     INTEGER NOT NULL REFERENCES snapshot_runs (id),
    currency   TEXT    NOT NULL,
    PRIMARY KEY (wallet_id, currency, taken_at)
) STRICT;
INSERT INTO balance_snapshots_v6 (wallet_id, taken_at, balance, running, run_id, currency)
    SELECT b.wallet_id, b.taken_at, b.balance, b.running, b.run_id, s.currency
    FROM balance_snapshots b CROSS JOIN settings s;
DROP TABLE balance_snapshots;
ALTER TABLE balance_snapshots_v6 RENAME TO balance_snapshots;

CREATE TABLE holds (
    key             INTEGER PRIMARY KEY,
    id              TEXT    NOT NULL UNIQUE,
    wallet_key      INTEGER NOT NULL REFERENCES wallets (key),
    currency        TEXT    NOT NULL REFERENCES currencies (code),
    amount          INTEGER NOT NULL CHECK (amount > 0),
    reference       TEXT    NOT NULL CHECK (length(reference) BETWEEN 1 AND 255),
    to_user_id      INTEGER REFERENCES users (id),
    metadata        TEXT    NOT NULL DEFAULT '{}',
    status          TEXT    NOT NULL
        CHECK (status = 'HELD' OR status = 'CAPTURED' OR status = 'VOIDED' OR status = 'EXPIRED'),
    expires_at      TEXT    NOT NULL,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    captured_amount INTEGER CHECK (captured_amount > 0 AND captured_amount <= amount),
    out_entry_id    TEXT    REFERENCES entries (id),
    in_entry_id     TEXT    REFERENCES entries (id),
    UNIQUE (wallet_key, reference),
    CHECK ((status = 'CAPTURED') = (captured_amount IS NOT NULL AND out_entry_id IS NOT NULL)),
    CHECK ((in_entry_id IS NOT NULL) = (status = 'CAPTURED' AND to_user_id IS NOT NULL))
) STRICT;
CREATE INDEX holds_expiry ON holds (expires_at) WHERE status = 'HELD';
CREATE INDEX holds_recipient ON holds (to_user_id, created_at) WHERE to_user_id IS NOT NULL;
CREATE INDEX holds_payer ON holds (wallet_key, created_at);

CREATE TRIGGER holds_settled BEFORE UPDATE ON holds
WHEN OLD.status <> 'HELD'
    OR NEW.id IS NOT OLD.id OR NEW.wallet_key IS NOT OLD.wallet_key
    OR NEW.currency IS NOT OLD.currency OR NEW.amount IS NOT OLD.amount
    OR NEW.reference IS NOT OLD.reference OR NEW.to_user_id IS NOT OLD.to_user_id
    OR NEW.metadata IS NOT OLD.metadata OR NEW.expires_at IS NOT OLD.expires_at
    OR NEW.created_at IS NOT OLD.created_at
BEGIN
    SELECT RAISE(ABORT, 'a hold changes only once, from HELD');
END;

CREATE TRIGGER holds_no_delete BEFORE DELETE ON holds
BEGIN
    SELECT RAISE(ABORT, 'holds are kept');
END;
