-- What PostgreSQL itself allows for one transfer's statements, with no wallet server in the
-- way: the same seven round trips `wallet` sends for a transfer written alone
-- (`--db-group-max 1`; see README "On PostgreSQL"), run by pgbench. Set up a database
-- with postgres/schema.sql and 200 funded wallets, then:
--
--   psql -d pgw -f postgres/schema.sql
--   psql -d pgw -c "CREATE SEQUENCE bench_ids;
--     INSERT INTO currencies VALUES ('USD', 2);
--     INSERT INTO settings (id, currency, scale) VALUES (1, 'USD', 2);
--     INSERT INTO users (username, username_key, email, email_key, password_hash, date_joined)
--       SELECT 'u'||g, 'u'||g, 'e'||g, 'e'||g, 'x', 'x' FROM generate_series(1, 200) g;
--     INSERT INTO wallets (id, user_id, created_at) SELECT 'w'||g, g, 'x' FROM generate_series(1, 200) g;
--     INSERT INTO balances (wallet_key, currency, balance, last_balance_update)
--       SELECT key, 'USD', 1000000000, 'x' FROM wallets;"
--   pgbench -n -M prepared -c 8 -j 2 -T 10 -f tools/pgbench_transfer.sql pgw
--
-- Senders are wallets 1-100 and recipients 101-200. Ids and references come from a sequence
-- (the server's are time-ordered UUIDs: appended to their indexes, not scattered). The stamp is
-- a constant (the wallet's floor moves it on by a microsecond each time). pgbench reads
-- `:name` as a variable, hence chr(58) for the colons of the time format.
\set a random(1, 100)
\set b random(101, 200)
\set amt random(1, 100)
BEGIN;
SELECT user_id, key, id FROM wallets WHERE user_id = CAST(:b AS bigint);
SELECT pg_advisory_xact_lock(29285, hashtext(CAST(:a AS text) || '-' || random()));
SELECT e.seq FROM entries e WHERE e.wallet_key = CAST(:a AS bigint) AND e.kind = 'TRANSFER_OUT' AND e.reference = 'r' || random();
WITH stamped AS (UPDATE wallets SET stamp_floor = GREATEST(('2026-11-30T00' || chr(58) || '00' || chr(58) || '00.000000Z'), to_char((CAST(stamp_floor AS timestamptz) + interval '1 microsecond') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24' || chr(58) || 'MI' || chr(58) || 'SS.US"Z"') COLLATE "C") WHERE key = CAST(:a AS bigint) RETURNING key, stamp_floor, frozen_at), moved AS (UPDATE balances b SET balance = b.balance - CAST(:amt AS bigint) FROM stamped WHERE b.wallet_key = stamped.key AND b.currency = 'USD' AND b.balance - b.held - CAST(:amt AS bigint) >= 0 AND b.frozen = 0 RETURNING b.balance) INSERT INTO entries (id, wallet_key, kind, amount, balance_after, reference, counterparty_user_id, transfer_id, metadata, created_at, currency, reverses) SELECT lpad(nextval('bench_ids')::text, 20, '0'), stamped.key, 'TRANSFER_OUT', CAST(:amt AS bigint), moved.balance, 'r' || lpad(nextval('bench_ids')::text, 20, '0'), CAST(:b AS bigint), 't', '{}', stamped.stamp_floor, 'USD', NULL FROM stamped, moved RETURNING seq, balance_after, created_at;
WITH stamped AS (UPDATE wallets SET stamp_floor = GREATEST(('2026-11-30T00' || chr(58) || '00' || chr(58) || '00.000000Z'), to_char((CAST(stamp_floor AS timestamptz) + interval '1 microsecond') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24' || chr(58) || 'MI' || chr(58) || 'SS.US"Z"') COLLATE "C") WHERE key = CAST(:b AS bigint) RETURNING key, stamp_floor, frozen_at), moved AS (INSERT INTO balances (wallet_key, currency, balance, last_balance_update, frozen) SELECT stamped.key, 'USD', CAST(:amt AS bigint), 'x', CASE WHEN stamped.frozen_at IS NULL THEN 0 ELSE 1 END FROM stamped ON CONFLICT (wallet_key, currency) DO UPDATE SET balance = balances.balance + EXCLUDED.balance WHERE balances.balance <= 9000000000000 RETURNING balance) INSERT INTO entries (id, wallet_key, kind, amount, balance_after, reference, counterparty_user_id, transfer_id, metadata, created_at, currency, reverses) SELECT lpad(nextval('bench_ids')::text, 20, '0'), stamped.key, 'TRANSFER_IN', CAST(:amt AS bigint), moved.balance, 'r' || lpad(nextval('bench_ids')::text, 20, '0'), CAST(:a AS bigint), 't', '{}', stamped.stamp_floor, 'USD', NULL FROM stamped, moved RETURNING seq, balance_after, created_at;
COMMIT;
