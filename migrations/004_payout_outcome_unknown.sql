-- Schema 3 → 4: a withdrawal remembers when a payout attempt first left its outcome unknown
-- (a timeout after the request was sent, a 502, ...). Such a withdrawal is never refunded by
-- the worker: it is retried within --payout-retry-window and then left for staff to resolve.
-- It also remembers when the payout call under way started, so that a call the process never
-- heard back from (it was killed) counts as one of unknown outcome.
-- Existing rows get NULL: every attempt so far counted as a definite answer, and no call is
-- under way while the database is being migrated.
ALTER TABLE withdrawals ADD COLUMN outcome_unknown_since TEXT;
ALTER TABLE withdrawals ADD COLUMN payout_call_started_at TEXT;
