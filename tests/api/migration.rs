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

use crate::helpers::{TestApp, User};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/wallet-v1.db");

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
    let app = TestApp::spawn_on(Some(Path::new(FIXTURE)), |_| {}, Arc::new(SystemClock));
    let db = app.sql();
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 3);
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
    let err = started.err().expect("the upgrade must fail");
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
