-- What PostgreSQL itself allows for one transfer's statements, with no wallet server in the
-- way: the same seven round trips `wallet` sends for a transfer (see README "On PostgreSQL"),
-- run by pgbench. Set up a database with postgres/schema.sql and 200 funded wallets, then:
--
--   psql -d pgw -f postgres/schema.sql
--   psql -d pgw -c "CREATE SEQUENCE bench_ids;
--     INSERT INTO users (username, username_key, email, email_key, password_hash, date_joined)
--       SELECT 'u'||g, 'u'||g, 'e'||g, 'e'||g, 'x', 'x' FROM generate_series(1, 200) g;
--     INSERT INTO wallets (id, user_id, balance, last_balance_update, created_at)
--       SELECT 'w'||g, g, 1000000000, 'x', 'x' FROM generate_series(1, 200) g;"
--   pgbench -n -M prepared -c 8 -j 2 -T 10 -f tools/pgbench_transfer.sql pgw
--
-- Ids and references come from a sequence (the server's are time-ordered UUIDs: appended to
-- their indexes, not scattered). The stamp is PostgreSQL's clock instead of the server's.
-- pgbench reads `:name` as a variable, hence chr(58) for the colons of the time format.
\set a random(1, 200)
\set b random(1, 200)
\set amt random(1, 100)
BEGIN;
SELECT user_id, key, id FROM wallets WHERE user_id = CAST(:b AS bigint);
SELECT pg_advisory_xact_lock(29285, hashtext(CAST(:a AS text) || '-' || CAST(:client_id AS text) || '-' || random()));
SELECT e.seq, e.id, w.id, e.kind FROM entries e JOIN wallets w ON w.key = e.wallet_key WHERE e.wallet_key = CAST(:a AS bigint) AND e.kind = 'TRANSFER_OUT' AND e.reference = 'r' || CAST(:client_id AS text) || '-' || random();
WITH moved AS (UPDATE wallets SET balance = balance - CAST(:amt AS bigint), stamp_floor = GREATEST(CAST(to_char(now() AT TIME ZONE 'UTC', ('YYYY-MM-DD"T"HH24' || chr(58) || 'MI' || chr(58) || 'SS.US"Z"')) AS TEXT), to_char((CAST(stamp_floor AS timestamptz) + interval '1 microsecond') AT TIME ZONE 'UTC', ('YYYY-MM-DD"T"HH24' || chr(58) || 'MI' || chr(58) || 'SS.US"Z"')) COLLATE "C") WHERE key = CAST(:a AS bigint) AND balance - CAST(:amt AS bigint) >= 0 RETURNING key, balance, stamp_floor) INSERT INTO entries (id, wallet_key, kind, amount, balance_after, reference, counterparty_user_id, transfer_id, metadata, created_at) SELECT lpad(nextval('bench_ids')::text, 20, '0'), moved.key, 'TRANSFER_OUT', CAST(:amt AS bigint), moved.balance, 'r' || lpad(nextval('bench_ids')::text, 20, '0'), CAST(:b AS bigint), 't', '{}', moved.stamp_floor FROM moved RETURNING seq, balance_after, created_at;
WITH moved AS (UPDATE wallets SET balance = balance + CAST(:amt AS bigint), stamp_floor = GREATEST(CAST(to_char(now() AT TIME ZONE 'UTC', ('YYYY-MM-DD"T"HH24' || chr(58) || 'MI' || chr(58) || 'SS.US"Z"')) AS TEXT), to_char((CAST(stamp_floor AS timestamptz) + interval '1 microsecond') AT TIME ZONE 'UTC', ('YYYY-MM-DD"T"HH24' || chr(58) || 'MI' || chr(58) || 'SS.US"Z"')) COLLATE "C") WHERE key = CAST(:b AS bigint) RETURNING key, balance, stamp_floor) INSERT INTO entries (id, wallet_key, kind, amount, balance_after, reference, counterparty_user_id, transfer_id, metadata, created_at) SELECT lpad(nextval('bench_ids')::text, 20, '0'), moved.key, 'TRANSFER_IN', CAST(:amt AS bigint), moved.balance, 'r' || lpad(nextval('bench_ids')::text, 20, '0'), CAST(:a AS bigint), 't', '{}', moved.stamp_floor FROM moved RETURNING seq, balance_after, created_at;
COMMIT;
