-- Schema 2 → 3: a withdrawal remembers when a payout attempt first left its outcome unknown
-- (a timeout after the request was sent, a 502, ...). Such a withdrawal is never refunded by
-- the worker: it is retried within --payout-retry-window and then left for staff to resolve.
-- Existing rows get NULL: every attempt so far counted as a definite answer.
ALTER TABLE withdrawals ADD COLUMN outcome_unknown_since TEXT;
