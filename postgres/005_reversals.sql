-- PostgreSQL schema 4 → 5 (SQLite's 8 → 9): staff reversals, as on SQLite. The CHECK on kind
-- is replaced by one that allows two more values (PostgreSQL checks it against the stored
-- rows once), and the immutability trigger covers the new column.
ALTER TABLE entries DROP CONSTRAINT entries_kind_check;
ALTER TABLE entries ADD CONSTRAINT entries_kind_check
    CHECK (kind = 'DEPOSIT' OR kind = 'WITHDRAWAL' OR kind = 'TRANSFER_IN' OR kind = 'TRANSFER_OUT'
           OR kind = 'REFUND' OR kind = 'REVERSAL_OUT' OR kind = 'REVERSAL_IN');
ALTER TABLE entries ADD COLUMN reverses TEXT COLLATE "C" REFERENCES entries (id)
    CHECK ((reverses IS NULL) = (kind <> 'REVERSAL_OUT' AND kind <> 'REVERSAL_IN'));
CREATE UNIQUE INDEX entries_reverses ON entries (reverses) WHERE reverses IS NOT NULL;
CREATE OR REPLACE FUNCTION entries_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.hash IS NULL AND NEW.hash IS NOT NULL
        AND (OLD.seq, OLD.id, OLD.wallet_key, OLD.kind, OLD.amount, OLD.balance_after,
             OLD.reference, OLD.counterparty_user_id, OLD.transfer_id, OLD.metadata,
             OLD.created_at, OLD.currency, OLD.reverses)
            IS NOT DISTINCT FROM
            (NEW.seq, NEW.id, NEW.wallet_key, NEW.kind, NEW.amount, NEW.balance_after,
             NEW.reference, NEW.counterparty_user_id, NEW.transfer_id, NEW.metadata,
             NEW.created_at, NEW.currency, NEW.reverses)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'ledger entries are immutable';
END $$;
UPDATE schema_version SET version = 5;
