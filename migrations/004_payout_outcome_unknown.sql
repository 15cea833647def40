-- Schema 3 → 4: a withdrawal remembers when a payout attempt first left its outcome unknown
-- (a timeout after the request was sent, a 502, ...). Such a withdrawal is never refunded by
-- the worker: it is retried within --payout-retry-window and then left for staff to resolve.
-- It also remembers when the payout call under way started, so that a call the process never
-- heard back from (it was killed) counts as one of unknown outcome.
ALTER TABLE withdrawals ADD COLUMN outcome_unknown_since TEXT;
ALTER TABLE withdrawals ADD COLUMN payout_call_started_at TEXT;

-- Existing rows are filled in conservatively. Schema 3 retried timeouts and 502s like any
-- other failure and kept no record of them, so a PROCESSING withdrawal with attempts behind it
-- may have had one whose outcome is unknown: it must never be refunded by the worker again
-- (else the next 500 or unreachable attempt reaching --payout-attempts-max would refund money
-- that may have left). Its window counts from its last update, the nearest time known.
UPDATE withdrawals SET outcome_unknown_since = updated_at
    WHERE status = 'PROCESSING' AND attempts > 0;
-- And any PROCESSING withdrawal may have had a call under way when the old server stopped
-- (killed mid-call, or stopped with one in flight): marked as started, its next look counts
-- a call that never reported back as one of unknown outcome, as the new server does.
UPDATE withdrawals SET payout_call_started_at = updated_at WHERE status = 'PROCESSING';
