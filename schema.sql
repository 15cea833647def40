-- The wallet ledger's schema: the one source of truth, embedded in the binary and applied at
-- start-up when `PRAGMA user_version` is below the version in `src/db/mod.rs`.
--
-- Money is integer minor units (cents for USD). Timestamps are TEXT in one fixed format,
-- `YYYY-MM-DDTHH:MM:SS.ffffffZ`, so that text order is time order.
-- Ledger rows (`entries`) can be inserted, never updated or deleted: triggers abort both.

-- One row: the deployment's currency, fixed once the database holds money.
CREATE TABLE settings (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    currency        TEXT    NOT NULL,
    scale           INTEGER NOT NULL CHECK (scale BETWEEN 0 AND 8)
) STRICT;

CREATE TABLE users (
    id              INTEGER PRIMARY KEY,
    -- In Unicode NFKC form, as given at registration.
    username        TEXT    NOT NULL,
    -- The username after NFKC and full case folding (`domain::username_key`, which SQL can't
    -- compute): what registration, login, `to_username` and the login throttle compare.
    username_key    TEXT    NOT NULL UNIQUE,
    email           TEXT    NOT NULL,
    -- The lowercased email: uniqueness is case-insensitive.
    email_key       TEXT    NOT NULL UNIQUE,
    -- argon2id in PHC string format.
    password_hash   TEXT    NOT NULL,
    first_name      TEXT    NOT NULL DEFAULT '',
    last_name       TEXT    NOT NULL DEFAULT '',
    is_staff        INTEGER NOT NULL DEFAULT 0 CHECK (is_staff IN (0, 1)),
    date_joined     TEXT    NOT NULL
) STRICT;

-- Login tokens, one per login (per device). Only the SHA-256 of the token is stored.
CREATE TABLE tokens (
    id              INTEGER PRIMARY KEY,
    user_id         INTEGER NOT NULL REFERENCES users (id),
    token_hash      BLOB    NOT NULL UNIQUE,
    created_at      TEXT    NOT NULL,
    expires_at      TEXT    NOT NULL,
    revoked_at      TEXT
) STRICT;
CREATE INDEX tokens_user ON tokens (user_id);

-- Each user has exactly one wallet. `balance` is the running balance, kept in step with the
-- entries by the writer and checked by the trigger `entries_balance_follows`.
CREATE TABLE wallets (
    -- Internal key: ledger rows name their wallet by this integer, so the hot path looks
    -- wallets up by rowid and the per-wallet indexes stay small. `id` is the public UUID.
    key                 INTEGER PRIMARY KEY,
    id                  TEXT    NOT NULL UNIQUE,
    user_id             INTEGER NOT NULL UNIQUE REFERENCES users (id),
    balance             INTEGER NOT NULL DEFAULT 0 CHECK (balance >= 0),
    -- The balance as computed by the last snapshot, and that snapshot's cut-off time.
    last_balance        INTEGER NOT NULL DEFAULT 0 CHECK (last_balance >= 0),
    last_balance_update TEXT    NOT NULL,
    created_at          TEXT    NOT NULL
) STRICT;

-- The ledger: every movement of money, forever. The API calls these "transactions".
--
-- Lists of kinds are written as `kind = 'A' OR kind = 'B'`, not `kind IN ('A', 'B')`: SQLite
-- builds a temporary b-tree for every evaluation of an IN list of three or more, and these
-- conditions run on every insert.
CREATE TABLE entries (
    -- Global append order; also the pagination cursor and the hash chain's order.
    seq                  INTEGER PRIMARY KEY,
    -- UUIDv7: time-ordered, so its unique index grows at the end instead of dirtying a
    -- random page per entry.
    id                   TEXT    NOT NULL UNIQUE,
    wallet_key           INTEGER NOT NULL REFERENCES wallets (key),
    kind                 TEXT    NOT NULL
        CHECK (kind = 'DEPOSIT' OR kind = 'WITHDRAWAL' OR kind = 'TRANSFER_IN' OR kind = 'TRANSFER_OUT'
               OR kind = 'REFUND'),
    amount               INTEGER NOT NULL CHECK (amount > 0),
    balance_after        INTEGER NOT NULL CHECK (balance_after >= 0),
    reference            TEXT    NOT NULL CHECK (length(reference) BETWEEN 1 AND 255),
    counterparty_user_id INTEGER REFERENCES users (id),
    -- The two halves of a transfer share a transfer id.
    transfer_id          TEXT,
    -- Canonical JSON (sorted keys).
    metadata             TEXT    NOT NULL DEFAULT '{}',
    created_at           TEXT    NOT NULL,
    -- SHA-256 over the previous entry's hash and this entry's content, with the wallet named
    -- by its public id (ARCHITECTURE.md).
    hash                 BLOB    NOT NULL CHECK (length(hash) = 32)
) STRICT;
-- One index per wallet serves history, recent entries, time filters and snapshot sums: its
-- entries are (wallet_key, created_at, seq), and created_at never decreases with seq, so
-- "ORDER BY created_at DESC, seq DESC" is newest first without a sort. Every extra index is
-- one more page each entry dirties in the WAL.
CREATE INDEX entries_wallet_time ON entries (wallet_key, created_at);
-- References are unique per wallet and kind for the kinds a client sends. Incoming transfers
-- carry the sender's reference, and a refund its withdrawal's, so they are not unique.
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

-- An entry's balance_after must be its wallet's running balance: the writer moves the
-- wallet's balance by the entry's signed amount and inserts the entry right after, in the
-- same savepoint. (That each entry's balance_after is the previous one's plus or minus its
-- amount is checked by `wallet verify`; every snapshot checks that the entries sum to the
-- running balance. Checking it here too, with a lookup of the previous entry, cost 7% of the
-- writer's throughput.)
CREATE TRIGGER entries_balance_follows BEFORE INSERT ON entries
WHEN NEW.balance_after IS NOT (SELECT balance FROM wallets WHERE key = NEW.wallet_key)
BEGIN
    SELECT RAISE(ABORT, 'balance_after is not the wallet''s balance');
END;

-- Withdrawals scheduled for later and paid out by the worker thread.
CREATE TABLE withdrawals (
    id                    TEXT    PRIMARY KEY,
    wallet_id             TEXT    NOT NULL REFERENCES wallets (id),
    amount                INTEGER NOT NULL CHECK (amount > 0),
    reference             TEXT    NOT NULL CHECK (length(reference) BETWEEN 1 AND 255),
    metadata              TEXT    NOT NULL DEFAULT '{}',
    status                TEXT    NOT NULL
        CHECK (status IN ('PENDING', 'PROCESSING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
    scheduled_at          TEXT    NOT NULL,
    -- When the worker should next look at it: scheduled_at, then each retry's time.
    next_attempt_at       TEXT    NOT NULL,
    attempts              INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    error_message         TEXT,
    created_at            TEXT    NOT NULL,
    updated_at            TEXT    NOT NULL,
    transaction_id        TEXT    REFERENCES entries (id),
    refund_transaction_id TEXT    REFERENCES entries (id),
    -- When a payout attempt first ended without saying whether the money left (a timeout
    -- after the request was sent, a 502, ...). From then on nothing refunds it but staff.
    outcome_unknown_since TEXT,
    -- When the payout call now under way started; NULL when none is. Cleared when its outcome
    -- is recorded, so one found set by a new process never reported back: its outcome is unknown.
    payout_call_started_at TEXT,
    UNIQUE (wallet_id, reference),
    -- A failed withdrawal that took money always has its refund.
    CHECK (NOT (status = 'FAILED' AND transaction_id IS NOT NULL AND refund_transaction_id IS NULL))
) STRICT;
CREATE INDEX withdrawals_due ON withdrawals (status, next_attempt_at);
CREATE INDEX withdrawals_wallet ON withdrawals (wallet_id, created_at);

-- Nightly snapshots: one row per run, one row per wallet per run.
CREATE TABLE snapshot_runs (
    id          INTEGER PRIMARY KEY,
    cutoff      TEXT    NOT NULL,
    started_at  TEXT    NOT NULL,
    finished_at TEXT,
    wallets     INTEGER NOT NULL DEFAULT 0,
    mismatches  INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE balance_snapshots (
    wallet_id  TEXT    NOT NULL REFERENCES wallets (id),
    taken_at   TEXT    NOT NULL,
    balance    INTEGER NOT NULL CHECK (balance >= 0),
    -- What the running balance said at the cut-off; differs from `balance` only on a mismatch.
    running    INTEGER NOT NULL,
    run_id     INTEGER NOT NULL REFERENCES snapshot_runs (id),
    PRIMARY KEY (wallet_id, taken_at)
) STRICT;

-- Every staff action through /api/admin, with who did it.
CREATE TABLE audit_log (
    id            INTEGER PRIMARY KEY,
    staff_user_id INTEGER NOT NULL REFERENCES users (id),
    action        TEXT    NOT NULL,
    target        TEXT    NOT NULL,
    detail        TEXT    NOT NULL DEFAULT '{}',
    created_at    TEXT    NOT NULL
) STRICT;

-- Always empty: while writes are refused for a storage fault, the writer inserts a row of a few
-- KiB here and deletes it in the same transaction, at most once a second, to learn when the
-- storage takes writes again (`db::writer::probe`).
CREATE TABLE storage_probe (
    id     INTEGER PRIMARY KEY,
    filler BLOB    NOT NULL
) STRICT;
