-- Schema 8 → 9: staff reversals. `entries.kind` now allows REVERSAL_OUT and REVERSAL_IN (the
-- step `migrations::reversal_kinds_v9` edits the CHECK before this file runs). A reversal
-- names the entry it undoes; a reversal and only a reversal has one, and an entry is reversed
-- at most once (the unique index).
ALTER TABLE entries ADD COLUMN reverses TEXT REFERENCES entries (id)
    CHECK ((reverses IS NULL) = (kind <> 'REVERSAL_OUT' AND kind <> 'REVERSAL_IN'));
CREATE UNIQUE INDEX entries_reverses ON entries (reverses) WHERE reverses IS NOT NULL;
