-- Schema 6 → 7: staff tools. A wallet can be frozen (it receives money but sends none): the
-- flag is kept on each of its balances, so the one statement that takes money checks it (no
-- extra read per debit), and on the wallet with when and why. The audit log records each
-- action's reason and becomes append-only, with indexes for its API's filters.
ALTER TABLE wallets ADD COLUMN frozen_at TEXT;
ALTER TABLE wallets ADD COLUMN frozen_reason TEXT;
ALTER TABLE balances ADD COLUMN frozen INTEGER NOT NULL DEFAULT 0 CHECK (frozen IN (0, 1));
ALTER TABLE audit_log ADD COLUMN reason TEXT;
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
