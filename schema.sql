-- The wallet ledger's schema: the one source of truth, embedded in the binary and applied at
-- start-up when `PRAGMA user_version` is below the version in `src/db/mod.rs`.
--
-- Money is integer minor units (cents for USD). Timestamps are TEXT in one fixed format,
-- `YYYY-MM-DDTHH:MM:SS.ffffffZ`, so that text order is time order.
-- Ledger rows (`entries`) can be inserted, never updated or deleted: triggers abort both.

-- One row. `currency` and `scale`: the deployment's default currency when the database was
-- created; entries written before schema 6 (one currency per ledger) are in this currency.
-- `chain_currency_from`: the first position whose entry has its currency in the hash chain
-- (1 for a ledger created with currencies; the next position at the upgrade otherwise).
CREATE TABLE settings (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    currency            TEXT    NOT NULL,
    scale               INTEGER NOT NULL CHECK (scale BETWEEN 0 AND 8),
    chain_currency_from INTEGER NOT NULL DEFAULT 1 CHECK (chain_currency_from >= 1)
) STRICT;

-- Every currency money has been kept in, with its scale: stored minor units mean nothing at
-- another scale, so a currency with a balance keeps its scale and stays configured.
CREATE TABLE currencies (
    code            TEXT    PRIMARY KEY CHECK (length(code) BETWEEN 3 AND 8),
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

-- The web console's sessions: apart from API tokens, so the API can never accept a console
-- cookie. Only a hash of the cookie's secret is stored.
CREATE TABLE console_sessions (
    id              INTEGER PRIMARY KEY,
    user_id         INTEGER NOT NULL REFERENCES users (id),
    session_hash    BLOB    NOT NULL UNIQUE CHECK (length(session_hash) = 32),
    created_at      TEXT    NOT NULL,
    expires_at      TEXT    NOT NULL,
    revoked_at      TEXT
) STRICT;
CREATE INDEX console_sessions_user ON console_sessions (user_id);

-- Each user has exactly one wallet, with a balance per currency (`balances`).
CREATE TABLE wallets (
    -- Internal key: ledger rows name their wallet by this integer, so the hot path looks
    -- wallets up by rowid and the per-wallet indexes stay small. `id` is the public UUID.
    key                 INTEGER PRIMARY KEY,
    id                  TEXT    NOT NULL UNIQUE,
    user_id             INTEGER NOT NULL UNIQUE REFERENCES users (id),
    created_at          TEXT    NOT NULL,
    frozen_at           TEXT,
    frozen_reason       TEXT
) STRICT;
-- `frozen_at`, `frozen_reason`: when staff froze the wallet, and why; NULL while it is not
-- frozen (`balances.frozen` is what a debit checks). Comments stay outside the column list:
-- SQLite edits that text to drop a column, and a comment there breaks it.

-- A wallet's money in one currency: a row from the first credit in that currency on.
-- `balance` is the running balance, kept in step with the entries by the writer and checked
-- by the trigger `entries_balance_follows`; `held` is what HELD holds reserve of it, so
-- `balance - held` (available) is what a debit may take.
CREATE TABLE balances (
    wallet_key          INTEGER NOT NULL REFERENCES wallets (key),
    currency            TEXT    NOT NULL REFERENCES currencies (code),
    balance             INTEGER NOT NULL DEFAULT 0 CHECK (balance >= 0),
    held                INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0 AND held <= balance),
    -- The balance as computed by the last snapshot, and that snapshot's cut-off time.
    last_balance        INTEGER NOT NULL DEFAULT 0 CHECK (last_balance >= 0),
    last_balance_update TEXT    NOT NULL,
    frozen              INTEGER NOT NULL DEFAULT 0 CHECK (frozen IN (0, 1)),
    PRIMARY KEY (wallet_key, currency)
) STRICT, WITHOUT ROWID;
-- `frozen`: 1 while the wallet is frozen; it receives but sends nothing (every debit's
-- statement checks it, so a debit costs no extra read).

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
               OR kind = 'REFUND' OR kind = 'REVERSAL_OUT' OR kind = 'REVERSAL_IN'),
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
    hash                 BLOB    NOT NULL CHECK (length(hash) = 32),
    currency             TEXT    NOT NULL,
    reverses             TEXT    REFERENCES entries (id)
        CHECK ((reverses IS NULL) = (kind <> 'REVERSAL_OUT' AND kind <> 'REVERSAL_IN'))
) STRICT;
-- `currency` is the balance an entry moves. It is the last column because an upgraded
-- database adds it there (with its old currency as the value of the rows before).
-- One index per wallet serves history, recent entries, time filters and snapshot sums: its
-- entries are (wallet_key, created_at, seq), and created_at never decreases with seq, so
-- "ORDER BY created_at DESC, seq DESC" is newest first without a sort. Every extra index is
-- one more page each entry dirties in the WAL.
CREATE INDEX entries_wallet_time ON entries (wallet_key, created_at);
-- References are unique per wallet and kind for the kinds a client sends. Incoming transfers
-- carry the sender's reference, and a refund its withdrawal's, so they are not unique.
CREATE UNIQUE INDEX entries_reference ON entries (wallet_key, kind, reference)
    WHERE kind = 'DEPOSIT' OR kind = 'WITHDRAWAL' OR kind = 'TRANSFER_OUT';
-- A reversal names the entry it undoes, and an entry is reversed at most once.
CREATE UNIQUE INDEX entries_reverses ON entries (reverses) WHERE reverses IS NOT NULL;

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
WHEN NEW.balance_after IS NOT
    (SELECT balance FROM balances WHERE wallet_key = NEW.wallet_key AND currency = NEW.currency)
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
    currency              TEXT    NOT NULL,
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
    currency   TEXT    NOT NULL,
    PRIMARY KEY (wallet_id, currency, taken_at)
) STRICT;

-- Holds: money reserved in the payer's balance (its `held`) until captured, voided or
-- expired, each exactly once: a hold leaves HELD once, and never changes after
-- (`holds_settled`).
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
    -- The capture's entries: the payer's (TRANSFER_OUT or WITHDRAWAL), the recipient's.
    out_entry_id    TEXT    REFERENCES entries (id),
    in_entry_id     TEXT    REFERENCES entries (id),
    UNIQUE (wallet_key, reference),
    CHECK ((status = 'CAPTURED') = (captured_amount IS NOT NULL AND out_entry_id IS NOT NULL)),
    CHECK ((in_entry_id IS NOT NULL) = (status = 'CAPTURED' AND to_user_id IS NOT NULL))
) STRICT;
-- The expiry worker's next hold: the HELD one that expires first.
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

-- Every staff action through /api/admin, with who did it.
CREATE TABLE audit_log (
    id            INTEGER PRIMARY KEY,
    staff_user_id INTEGER NOT NULL REFERENCES users (id),
    action        TEXT    NOT NULL,
    target        TEXT    NOT NULL,
    detail        TEXT    NOT NULL DEFAULT '{}',
    created_at    TEXT    NOT NULL,
    reason        TEXT
) STRICT;
CREATE INDEX audit_log_staff ON audit_log (staff_user_id, id);
CREATE INDEX audit_log_target ON audit_log (target, id);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

-- Always empty: while writes are refused for a storage fault, the writer inserts a row of a few
-- KiB here and deletes it in the same transaction, at most once a second, to learn when the
-- storage takes writes again (`db::writer::probe`).
CREATE TABLE storage_probe (
    id     INTEGER PRIMARY KEY,
    filler BLOB    NOT NULL
) STRICT;
