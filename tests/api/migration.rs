//! Upgrading a database written by an older release: nothing lost, nothing changed, and the
//! ledger keeps working on it.
//!
//! `tests/fixtures/wallet-v1.db` was written by the schema-1 release through its HTTP API
//! (`tests/fixtures/make-wallet-v1.sh`): alice deposits 100.00 (`dep-1`, metadata
//! `{"source": "card"}`), sends bob 25.50, withdraws 10.00, schedules 5.00 for 2027 and 7.00
//! that the payout service refused (withdrawn, then refunded); bob sends carol 0.50; then one
//! snapshot ran.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use wallet::clock::SystemClock;

use crate::helpers::{sqlite_only, TestApp, User};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/wallet-v1.db");

/// Why these tests run on SQLite only: PostgreSQL starts at its own schema, version 1.
const SQLITE_SCHEMAS: &str = "upgrades SQLite files written by older schemas";

/// The app's SQLite file, opened as the tools of the schema's own version would.
fn sqlite(app: &TestApp) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(app.db_file()).expect("open db");
    c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    c
}

fn login(app: &TestApp, username: &str, id: i64) -> User {
    let r = app.post(
        "/api/auth/login",
        "",
        json!({"username": username, "password": format!("secret-{username}-pw")}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    User {
        id,
        username: username.into(),
        token: r.body["token"].as_str().unwrap().into(),
    }
}

#[test]
fn a_schema_1_database_is_upgraded_with_every_row_hash_and_balance_intact() {
    if sqlite_only(SQLITE_SCHEMAS) {
        return;
    }
    let app = TestApp::spawn_on(Some(Path::new(FIXTURE)), |_| {}, Arc::new(SystemClock));
    let db = sqlite(&app);
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, i64::from(wallet::db::SCHEMA_VERSION));
    let dangling: i64 = db
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(dangling, 0);
    // The hash chain covers every entry's content, the wallet's public id included: it
    // verifies only if all eight entries came through unchanged.
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!((report.entries, report.wallets), (8, 3));

    let alice = login(&app, "alice", 1);
    let bob = login(&app, "bob", 2);
    let carol = login(&app, "carol", 3);
    let me = app.get("/api/wallets/me", &alice.token);
    assert_eq!(me.body["id"], "0544c8fb-7414-4157-ad46-bb06b9e42a51");
    assert_eq!(me.body["balance"], "64.50");
    assert_eq!(me.body["last_balance"], "64.50");
    assert_eq!(app.balance(&bob), "25.00");
    assert_eq!(app.balance(&carol), "0.50");
    let history = app.get("/api/wallets/me/transactions", &alice.token);
    let kinds: Vec<&str> = history.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "REFUND",
            "WITHDRAWAL",
            "WITHDRAWAL",
            "TRANSFER_OUT",
            "DEPOSIT"
        ]
    );
    let withdrawals = app.get("/api/wallets/me/withdrawals", &alice.token);
    assert_eq!(withdrawals.body["count"], 2, "{}", withdrawals.body);

    // References taken before the upgrade are still taken: the same deposit replays the
    // original entry, a different one is a conflict.
    let replay = app.post(
        "/api/wallets/me/deposit",
        &alice.token,
        json!({"amount": "100.00", "reference": "dep-1", "metadata": {"source": "card"}}),
    );
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert_eq!(replay.body["id"], "01a1fe34-c314-749b-9ad5-2e2e2e3b4f03");
    let clash = app.post(
        "/api/wallets/me/deposit",
        &alice.token,
        json!({"amount": "1.00", "reference": "dep-1"}),
    );
    assert_eq!(clash.status, 409, "{}", clash.body);

    // Money moves on the upgraded ledger, and the chain continues from the old head.
    let sent = app.post(
        "/api/wallets/me/transfer",
        &alice.token,
        json!({"to_user_id": bob.id, "amount": "4.50", "reference": "after-upgrade"}),
    );
    assert_eq!(sent.status, 201, "{}", sent.body);
    assert_eq!(app.balance(&alice), "60.00");
    assert_eq!(app.balance(&bob), "29.50");
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.entries, 10);
}

#[test]
fn an_upgrade_that_would_lose_an_entry_stops_and_changes_nothing() {
    // An entry whose wallet row is missing cannot be carried over: the upgrade fails as a
    // whole and the file still holds the schema-1 database, entry included.
    if sqlite_only(SQLITE_SCHEMAS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wallet.db");
    std::fs::copy(FIXTURE, &path).unwrap();
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch(
            "PRAGMA foreign_keys = OFF;
             DROP TRIGGER entries_no_update;
             UPDATE entries SET wallet_id = 'no-such-wallet' WHERE seq = 8;",
        )
        .unwrap();
    }
    let config = wallet::config::Config::for_tests(path.clone());
    let started = wallet::startup::App::start_with(
        config,
        Arc::new(SystemClock),
        wallet::startup::TestHooks::default(),
    );
    let err = started.err().expect("the upgrade must fail").to_string();
    assert!(err.contains("schema version 1"), "{err}");
    let db = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    let orphan: i64 = db
        .query_row(
            "SELECT count(*) FROM entries WHERE wallet_id = 'no-such-wallet'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!((version, orphan), (1, 1));
}

/// A schema-2 database whose users were registered as `user0`, `user1`, … (password "correct
/// horse battery"), then renamed by hand to `stored`, each with the key schema 2 gave it: its
/// lowercase, and without what schemas 4 and 5 added: what schema 2 could hold.
fn schema_2_database_with_users(stored: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
    let mut app = TestApp::spawn();
    for i in 0..stored.len() {
        app.register(&format!("user{i}"));
    }
    app.stop();
    {
        let db = sqlite(&app);
        for (i, name) in stored.iter().enumerate() {
            db.execute(
                "UPDATE users SET username = ?1, username_key = ?2 WHERE username = ?3",
                rusqlite::params![name, name.to_lowercase(), format!("user{i}")],
            )
            .unwrap();
        }
        crate::helpers::undo_schema_6(&db);
        db.execute_batch(
            "DROP TABLE storage_probe;
             ALTER TABLE withdrawals DROP COLUMN outcome_unknown_since;
             ALTER TABLE withdrawals DROP COLUMN payout_call_started_at;
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wallet-v2.db");
    std::fs::copy(app.db_file(), &path).unwrap();
    (dir, path)
}

fn usernames(path: &Path) -> Vec<(String, String)> {
    rusqlite::Connection::open(path)
        .unwrap()
        .prepare("SELECT username, username_key FROM users ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn an_upgrade_that_would_merge_users_stops_and_names_them() {
    // Schema 2 compared usernames by lowercase, so alice, ＡＬＩＣＥ and 𝐚𝐥𝐢𝐜𝐞 could all be
    // registered, as could Straße and STRASSE. Schema 3 compares them after NFKC and case
    // folding: the upgrade refuses to start rather than merge anyone, names every user
    // concerned, and changes nothing.
    if sqlite_only(SQLITE_SCHEMAS) {
        return;
    }
    let (_dir, path) =
        schema_2_database_with_users(&["alice", "ＡＬＩＣＥ", "bob", "𝐚𝐥𝐢𝐜𝐞", "Straße", "STRASSE"]);
    let before = usernames(&path);
    let started = wallet::startup::App::start_with(
        wallet::config::Config::for_tests(path.clone()),
        Arc::new(SystemClock),
        wallet::startup::TestHooks::default(),
    );
    let err = started.err().expect("the upgrade must refuse").to_string();
    assert!(err.contains("schema version 2"), "{err}");
    for named in [
        r#"user 1 ("alice")"#,
        r#"user 2 ("ＡＬＩＣＥ")"#,
        r#"user 4 ("𝐚𝐥𝐢𝐜𝐞")"#,
        r#"user 5 ("Straße")"#,
        r#"user 6 ("STRASSE")"#,
    ] {
        assert!(err.contains(named), "{named} not named: {err}");
    }
    assert!(!err.contains("user 3"), "bob collides with nobody: {err}");
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
    assert_eq!(usernames(&path), before, "nothing changed");
}

#[test]
fn an_upgrade_stores_usernames_in_nfkc_with_their_new_keys() {
    // Without collisions the upgrade rewrites each username in NFKC form and its key after
    // case folding; users then log in under any spelling, and no new user can take the name.
    if sqlite_only(SQLITE_SCHEMAS) {
        return;
    }
    let (_dir, path) = schema_2_database_with_users(&["Ｄａｖｅ", "Straße", "erin"]);
    let app = TestApp::spawn_on(Some(&path), |_| {}, Arc::new(SystemClock));
    assert_eq!(
        usernames(app.db_file()),
        [
            ("Dave".to_string(), "dave".to_string()),
            ("Straße".into(), "strasse".into()),
            ("erin".into(), "erin".into())
        ]
    );
    for (spelling, id) in [("DAVE", 1), ("ｄａｖｅ", 1), ("STRASSE", 2)] {
        let r = app.post(
            "/api/auth/login",
            "",
            json!({"username": spelling, "password": "correct horse battery"}),
        );
        assert_eq!(r.status, 200, "{spelling}: {}", r.body);
        assert_eq!(r.body["user"]["id"], id);
    }
    let r = app.post(
        "/api/auth/register",
        "",
        json!({"username": "strasse", "email": "s@example.com",
               "password": "correct horse battery", "password_confirm": "correct horse battery"}),
    );
    assert_eq!((r.status, r.code()), (409, "username_taken"), "{}", r.body);
}

/// A port nothing listens on: every payout call is "unreachable", a definite "not paid".
fn unreachable_payout_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/payouts")
}

/// (status, attempts, outcome_unknown_since, payout_call_started_at, updated_at) by reference.
type PayoutColumns = (String, i64, Option<String>, Option<String>, String);

fn payout_columns(db: &rusqlite::Connection, reference: &str) -> PayoutColumns {
    db.query_row(
        "SELECT status, attempts, outcome_unknown_since, payout_call_started_at, updated_at
         FROM withdrawals WHERE reference = ?1",
        [reference],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )
    .unwrap()
}

#[test]
fn an_upgrade_never_lets_the_worker_refund_a_payout_the_old_server_was_making() {
    // Schema 3 retried a timeout or a 502 like any other failure, and kept no record of a call
    // under way. So after the upgrade, a withdrawal PROCESSING with attempts behind it counts
    // as one whose outcome is unknown, and any PROCESSING one as having had a call under way:
    // the worker never refunds either, even when every attempt it makes now is a definite
    // "not paid" (here: the payout service is unreachable), and leaves them for staff.
    if sqlite_only(SQLITE_SCHEMAS) {
        return;
    }
    let url = unreachable_payout_url();
    let mut app = TestApp::spawn_with(
        |c| {
            c.serve.payout_url = Some(url.clone());
            c.serve.payout_retry_base_ms = 3_600_000;
            c.serve.payout_attempts_max = 100;
        },
        Arc::new(SystemClock),
    );
    let alice = app.register("alice");
    assert_eq!(app.deposit(&alice, "100.00", "fund").status, 201);
    let at = app.clock().now().plus_millis(300).to_text();
    for reference in ["retried", "cut-off"] {
        let r = app.post(
            "/api/wallets/me/withdraw",
            &alice.token,
            json!({"amount": "10.00", "reference": reference, "scheduled_at": at}),
        );
        assert_eq!(r.status, 202, "{}", r.body);
    }
    // Both debited and tried once (unreachable; the next try is an hour away).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sqlite(&app)
        .query_row(
            "SELECT count(*) FROM withdrawals WHERE status = 'PROCESSING' AND attempts = 1",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
        < 2
    {
        assert!(std::time::Instant::now() < deadline, "never processed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    app.stop();
    // What schema 3 could hold: "retried" had two attempts (either might have been a timeout),
    // "cut-off" was debited and its first call never reported back (the server was killed).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wallet-v3.db");
    {
        let db = sqlite(&app);
        db.execute_batch(
            "UPDATE withdrawals SET attempts = 2, error_message = 'HTTP 502: bad gateway'
                 WHERE reference = 'retried';
             UPDATE withdrawals SET attempts = 0, error_message = NULL WHERE reference = 'cut-off';
             UPDATE withdrawals SET next_attempt_at = updated_at;
             PRAGMA foreign_keys = OFF;",
        )
        .unwrap();
        crate::helpers::undo_schema_6(&db);
        db.execute_batch(
            "DROP TABLE storage_probe;
             ALTER TABLE withdrawals DROP COLUMN outcome_unknown_since;
             ALTER TABLE withdrawals DROP COLUMN payout_call_started_at;
             PRAGMA user_version = 3;",
        )
        .unwrap();
    }
    std::fs::copy(app.db_file(), &path).unwrap();

    let upgraded = dir.path().join("upgraded.db");
    std::fs::copy(&path, &upgraded).unwrap();
    {
        let mut db = rusqlite::Connection::open(&upgraded).unwrap();
        wallet::db::migrate(&mut db).unwrap();
        let (status, attempts, unknown, started, updated) = payout_columns(&db, "retried");
        assert_eq!((status.as_str(), attempts), ("PROCESSING", 2));
        assert_eq!(unknown.as_deref(), Some(updated.as_str()));
        assert_eq!(started.as_deref(), Some(updated.as_str()));
        let (status, attempts, unknown, started, updated) = payout_columns(&db, "cut-off");
        assert_eq!((status.as_str(), attempts), ("PROCESSING", 0));
        assert_eq!(unknown, None, "no attempt of unknown outcome yet");
        assert_eq!(started.as_deref(), Some(updated.as_str()));
    }

    // The new server, paying out to the same unreachable service: three attempts would have
    // refunded both under the old rule. Neither is refunded; both are left for staff.
    let app = TestApp::spawn_on(
        Some(&path),
        |c| {
            c.serve.payout_url = Some(url.clone());
            c.serve.payout_retry_base_ms = 20;
            c.serve.payout_attempts_max = 3;
            c.serve.payout_retry_window = std::time::Duration::from_millis(500);
        },
        Arc::new(SystemClock),
    );
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    let db = sqlite(&app);
    for reference in ["retried", "cut-off"] {
        let (status, _, unknown, _, _) = payout_columns(&db, reference);
        assert_eq!(status, "PROCESSING", "{reference}");
        assert!(unknown.is_some(), "{reference}: outcome unknown");
    }
    let refunds: i64 = db
        .query_row(
            "SELECT count(*) FROM entries WHERE kind = 'REFUND'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(refunds, 0);
    assert_eq!(app.balance(&alice), "80.00");
    let left = app.get("/api/wallets/me/withdrawals", &alice.token);
    for w in left.body["results"].as_array().unwrap() {
        assert!(
            w["error_message"]
                .as_str()
                .is_some_and(|m| m.starts_with("payout outcome unknown")),
            "{w}"
        );
    }
}

const FIXTURE_V5: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/wallet-v5.db");

#[test]
fn a_schema_5_database_in_eur_keeps_its_money_in_eur_when_usd_becomes_the_default() {
    // `wallet-v5.db` was written through the API by the last single-currency release, serving
    // EUR (`tests/fixtures/make-wallet-v5.sh`; the same story as wallet-v1.db). It is upgraded
    // by a server whose default is now USD: the old money stays EUR, every old hash still
    // verifies, old references keep their meaning, and both currencies then move side by side.
    if sqlite_only(SQLITE_SCHEMAS) {
        return;
    }
    let app = TestApp::spawn_on(
        Some(Path::new(FIXTURE_V5)),
        |c| {
            c.currencies = wallet::domain::Currencies::parse("USD:2,EUR:2", 1_000_000_000).unwrap();
        },
        Arc::new(SystemClock),
    );
    let db = sqlite(&app);
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, i64::from(wallet::db::SCHEMA_VERSION));
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!((report.entries, report.wallets), (8, 3));
    let (currencies, from): (String, i64) = db
        .query_row(
            "SELECT (SELECT group_concat(code) FROM (SELECT code FROM currencies ORDER BY code)),
                    chain_currency_from FROM settings",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((currencies.as_str(), from), ("EUR,USD", 9));
    // Schema 9 widened the kind CHECK in place: the table's definition names the reversal
    // kinds, SQLite still finds the file sound, and the CHECK refuses what it refused before.
    let (definition, integrity): (String, String) = db
        .query_row(
            "SELECT (SELECT sql FROM sqlite_schema WHERE name = 'entries'),
                    (SELECT integrity_check FROM pragma_integrity_check)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        definition.contains("OR kind = 'REFUND' OR kind = 'REVERSAL_OUT' OR kind = 'REVERSAL_IN')"),
        "{definition}"
    );
    assert_eq!(integrity, "ok");
    // Without the trigger that would refuse the row first, in a transaction rolled back.
    db.execute_batch("BEGIN IMMEDIATE; DROP TRIGGER entries_balance_follows;")
        .unwrap();
    let refused = db.execute_batch(
        "INSERT INTO entries (seq, id, wallet_key, kind, amount, balance_after, reference, metadata,
             created_at, hash, currency)
         VALUES (100, 'x', 1, 'BONUS', 1, 1, 'r', '{}', '2026-01-01T00:00:00Z', zeroblob(32), 'EUR')",
    );
    db.execute_batch("ROLLBACK").unwrap();
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("CHECK constraint failed")),
        "{refused:?}"
    );

    let alice = login(&app, "alice", 1);
    let bob = login(&app, "bob", 2);
    let me = app.get("/api/wallets/me", &alice.token);
    assert_eq!(me.body["currency"], "USD", "{}", me.body);
    assert_eq!(me.body["balance"], "0.00");
    assert_eq!(
        me.body["balances"],
        json!([
            {"currency": "EUR", "balance": "64.50", "held": "0.00", "available": "64.50"},
            {"currency": "USD", "balance": "0.00", "held": "0.00", "available": "0.00"},
        ])
    );
    let history = app.get("/api/wallets/me/transactions", &alice.token);
    let results = history.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    assert!(
        results.iter().all(|e| e["currency"] == "EUR"),
        "{results:?}"
    );
    let eur_at_now = app.get("/api/wallets/me/balance?currency=EUR", &alice.token);
    assert_eq!(eur_at_now.body["balance"], "64.50");
    let withdrawals = app.get("/api/wallets/me/withdrawals", &alice.token);
    let listed = withdrawals.body["results"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|w| w["currency"] == "EUR"), "{listed:?}");

    // The old reference is EUR's: replayed when the request says EUR, a conflict when it
    // says nothing (now USD).
    let replay = app.post(
        "/api/wallets/me/deposit",
        &alice.token,
        json!({"amount": "100.00", "currency": "EUR", "reference": "dep-1", "metadata": {"source": "card"}}),
    );
    assert_eq!(replay.status, 200, "{}", replay.body);
    let clash = app.post(
        "/api/wallets/me/deposit",
        &alice.token,
        json!({"amount": "100.00", "reference": "dep-1", "metadata": {"source": "card"}}),
    );
    assert_eq!(clash.status, 409, "{}", clash.body);

    // Both currencies move; the chain goes on, now hashing each new entry's currency.
    assert_eq!(app.deposit(&alice, "3.00", "usd-1").status, 201);
    let sent = app.post(
        "/api/wallets/me/transfer",
        &alice.token,
        json!({"to_user_id": bob.id, "amount": "4.50", "currency": "EUR", "reference": "after"}),
    );
    assert_eq!(sent.status, 201, "{}", sent.body);
    assert_eq!(sent.body["transfer_in"]["currency"], "EUR");
    let bob_me = app.get("/api/wallets/me", &bob.token);
    assert_eq!(
        bob_me.body["balances"][0]["balance"], "29.50",
        "{}",
        bob_me.body
    );
    assert_eq!(app.balance(&alice), "3.00");
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.entries, 11);
    if let Some(out) = crate::copy::verify_chain_py(app.db_file()) {
        assert!(out.starts_with("11 entries"), "{out}");
    }
    // A tampered old entry (hashed without its currency) and a new one are both caught.
    db.execute_batch(
        "DROP TRIGGER entries_no_update;
         UPDATE entries SET currency = 'USD' WHERE seq = 1;",
    )
    .unwrap();
    let report = app.verify();
    assert!(!report.ok(), "a moved old entry went unnoticed");
}

#[test]
fn a_currency_holding_money_can_not_be_dropped_or_rescaled() {
    // Start-up errors that name the currency; the database is unchanged and serves again with
    // the right list.
    if sqlite_only(SQLITE_SCHEMAS) {
        return;
    }
    let mut app = TestApp::spawn_on(
        Some(Path::new(FIXTURE_V5)),
        |c| {
            c.currencies = wallet::domain::Currencies::parse("USD:2,EUR:2", 1_000_000_000).unwrap();
        },
        Arc::new(SystemClock),
    );
    app.stop();
    let target = app.target().clone();
    for (spec, named) in [("USD:2", "EUR"), ("USD:2,EUR:3", "EUR:2")] {
        let mut config = wallet::config::Config::for_tests(target.clone());
        config.currencies = wallet::domain::Currencies::parse(spec, 1_000_000_000).unwrap();
        let refused = wallet::App::start_with(
            config,
            Arc::new(SystemClock),
            wallet::startup::TestHooks::default(),
        );
        let Err(e) = refused else {
            panic!("{spec} was served on a database holding EUR");
        };
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(e.to_string().contains(named), "{spec}: {e}");
    }
}

/// PostgreSQL's schema 1 (`tests/fixtures/postgres-schema-1.sql`, as the last single-currency
/// release applied it).
const POSTGRES_SCHEMA_1: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/postgres-schema-1.sql"
));

#[test]
fn a_postgres_schema_1_ledger_is_upgraded_with_its_sealed_chain_intact() {
    // A ledger as the single-currency release left it on PostgreSQL (in EUR): two wallets,
    // a deposit and a transfer sealed into the chain with the bytes of that release, and a
    // scheduled withdrawal. The upgrade keeps every row, the old hashes verify, the money
    // stays EUR, and new entries go on in both currencies.
    use wallet::ledger::entries::{entry_hash, Entry, GENESIS_HASH};
    let store = crate::helpers::TestDb::new();
    if store.engine() != wallet::store::Engine::Postgres {
        eprintln!("not run: upgrades a PostgreSQL schema-1 database");
        return;
    }
    let db = store.sql();
    let wallet::store::Target::Postgres(url) = &store.target else {
        unreachable!()
    };
    let conn = wallet::store::postgres::PgConn::connect(url).unwrap();
    conn.batch(POSTGRES_SCHEMA_1).unwrap();
    let t = |s: u32| format!("2026-11-01T10:00:0{s}.000000Z");
    conn.batch(&format!(
        "INSERT INTO settings (id, currency, scale) VALUES (1, 'EUR', 2);
         INSERT INTO users (id, username, username_key, email, email_key, password_hash, date_joined)
             VALUES (1, 'ann', 'ann', 'ann@example.com', 'ann@example.com', 'x', '{t0}'),
                    (2, 'ben', 'ben', 'ben@example.com', 'ben@example.com', 'x', '{t0}');
         INSERT INTO wallets (key, id, user_id, balance, last_balance, last_balance_update, created_at)
             VALUES (1, 'w-ann', 1, 7450, 0, '{t0}', '{t0}'), (2, 'w-ben', 2, 2550, 0, '{t0}', '{t0}');
         SELECT setval('users_id_seq', 2); SELECT setval('wallets_key_seq', 2);",
        t0 = t(0)
    ))
    .unwrap();
    let entry =
        |seq: i64, wallet: &str, kind, amount, after, counterparty, transfer: Option<&str>| Entry {
            seq,
            id: format!("e{seq}"),
            wallet_id: wallet.to_string(),
            kind,
            amount: wallet::domain::MinorUnits::new(amount),
            balance_after: wallet::domain::MinorUnits::new(after),
            reference: "r".into(),
            counterparty_user_id: counterparty,
            transfer_id: transfer.map(str::to_string),
            metadata: wallet::domain::Metadata::empty(),
            created_at: wallet::domain::Timestamp::parse(&t(seq as u32)).unwrap(),
            currency: "EUR".into(),
            reverses: None,
        };
    use wallet::domain::EntryKind::*;
    let entries = [
        (1i64, entry(1, "w-ann", Deposit, 10_000, 10_000, None, None)),
        (
            1,
            entry(2, "w-ann", TransferOut, 2_550, 7_450, Some(2), Some("t1")),
        ),
        (
            2,
            entry(3, "w-ben", TransferIn, 2_550, 2_550, Some(1), Some("t1")),
        ),
    ];
    let mut prev = GENESIS_HASH;
    conn.batch("ALTER TABLE entries DISABLE TRIGGER entries_balance_follows")
        .unwrap();
    for (key, e) in &entries {
        // Schema 1 hashed eleven fields: no currency.
        let hash = entry_hash(&prev, e, i64::MAX);
        db.execute(
            "INSERT INTO entries (seq, id, wallet_key, kind, amount, balance_after, reference,
                 counterparty_user_id, transfer_id, metadata, created_at, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            &[
                &e.seq,
                &e.id,
                key,
                &e.kind.as_str(),
                &e.amount,
                &e.balance_after,
                &e.reference,
                &e.counterparty_user_id,
                &e.transfer_id,
                &e.metadata.as_str(),
                &e.created_at,
                &&hash[..],
            ],
        )
        .unwrap();
        prev = hash;
    }
    conn.batch("ALTER TABLE entries ENABLE TRIGGER entries_balance_follows; SELECT setval('entries_seq', 3);")
        .unwrap();
    db.execute(
        "UPDATE chain_head SET seq = 3, hash = ?1 WHERE id = 1",
        &[&&prev[..]],
    )
    .unwrap();
    db.execute(
        "INSERT INTO withdrawals (id, wallet_id, amount, reference, status, scheduled_at,
             next_attempt_at, created_at, updated_at)
         VALUES ('wd', 'w-ann', 500, 'later', 'PENDING', '2099-01-01T00:00:00.000000Z',
             '2099-01-01T00:00:00.000000Z', ?1, ?1)",
        &[&t(4)],
    )
    .unwrap();
    drop(db);
    drop(conn);

    let app = TestApp::spawn_on_db(
        store,
        |c| {
            c.currencies = wallet::domain::Currencies::parse("EUR:2,USD:2", 1_000_000_000).unwrap();
        },
        Arc::new(SystemClock),
    );
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!((report.entries, report.wallets), (3, 2));
    let db = app.db();
    let row = db
        .query_one(
            "SELECT (SELECT version FROM schema_version), (SELECT chain_currency_from FROM settings),
                 (SELECT string_agg(currency || ':' || balance, ',' ORDER BY wallet_key) FROM balances),
                 (SELECT string_agg(DISTINCT currency, ',') FROM entries),
                 (SELECT currency FROM withdrawals WHERE id = 'wd')",
            &[],
        )
        .unwrap();
    let got: (i64, i64, String, String, String) = (
        row.get(0).unwrap(),
        row.get(1).unwrap(),
        row.get(2).unwrap(),
        row.get(3).unwrap(),
        row.get(4).unwrap(),
    );
    assert_eq!(
        got,
        (
            wallet::store::postgres::SCHEMA_VERSION,
            4,
            "EUR:7450,EUR:2550".into(),
            "EUR".into(),
            "EUR".into()
        )
    );
    // New money in both currencies, hashed with its currency, after the old chain.
    let c = app.register("carl");
    assert_eq!(app.deposit(&c, "9.00", "eur").status, 201);
    let usd = app.post(
        "/api/wallets/me/deposit",
        &c.token,
        json!({"amount": "2.00", "currency": "USD", "reference": "usd"}),
    );
    assert_eq!(usd.status, 201, "{}", usd.body);
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.entries, 5);
}
