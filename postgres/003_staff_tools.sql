-- PostgreSQL schema 2 → 3 (SQLite's 6 → 7): staff tools, as on SQLite.
ALTER TABLE wallets ADD COLUMN frozen_at TEXT COLLATE "C";
ALTER TABLE wallets ADD COLUMN frozen_reason TEXT COLLATE "C";
ALTER TABLE balances ADD COLUMN frozen BIGINT NOT NULL DEFAULT 0 CHECK (frozen IN (0, 1));
ALTER TABLE audit_log ADD COLUMN reason TEXT COLLATE "C";
CREATE INDEX audit_log_staff ON audit_log (staff_user_id, id);
CREATE INDEX audit_log_target ON audit_log (target, id);
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
UPDATE schema_version SET version = 3;
