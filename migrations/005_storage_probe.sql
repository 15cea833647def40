-- Schema 4 → 5: an always-empty table that the writer writes to, and empties in the same
-- transaction, to learn when storage that refused writes (a full disk) takes them again.
CREATE TABLE storage_probe (
    id     INTEGER PRIMARY KEY,
    filler BLOB    NOT NULL
) STRICT;
