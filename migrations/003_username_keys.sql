-- Schema 2 → 3: usernames are stored in Unicode NFKC form, and `username_key` (UNIQUE, the
-- key that registration, login, `to_username` and the login throttle compare) becomes NFKC
-- with full case folding (`domain::username_key`) instead of `lower()`. SQLite can compute
-- neither, so before this file runs, `db::migrations` has filled `temp.usernames_v3`
-- (id, username, username_key) in Rust, and has stopped the migration, naming them, if two
-- users' new keys collide: no account is ever merged into another.
--
-- The keys are updated in two steps because SQLite checks UNIQUE row by row: one user's new
-- key may still be another's old one. No username holds a control character, so the
-- placeholders collide with nothing.

UPDATE users SET username_key = char(1) || id;
UPDATE users SET (username, username_key) =
    (SELECT n.username, n.username_key FROM temp.usernames_v3 n WHERE n.id = users.id);
DROP TABLE temp.usernames_v3;
