//! Balance snapshots (issue 3): exact runs, mismatch reports, the cron thread, `balance?at=`
//! against a replay of the entries, and the `wallet snapshot` command.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::wallet::clock::{Clock, ManualClock, SystemClock};
use ::wallet::domain::Timestamp;
use ::wallet::ledger::snapshot::{self, Mismatch, RunReport};
use serde_json::{json, Value};

use crate::helpers::{name, Resp, TestApp, User};

const START: &str = "2026-01-05T10:00:00.000000Z";

fn ts(s: &str) -> Timestamp {
    Timestamp::parse(s).expect("timestamp")
}

/// An app whose clock only moves when the test says so.
fn manual_app() -> (TestApp, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(ts(START)));
    let app = TestApp::spawn_with(|_| {}, clock.clone());
    (app, clock)
}

fn run_snapshot(app: &TestApp, cutoff: Timestamp) -> RunReport {
    snapshot::run(&app.app.as_ref().expect("running").service().writer, cutoff)
        .expect("snapshot run")
}

fn wallet_of(app: &TestApp, u: &User) -> Value {
    let r = app.get("/api/wallets/me", &u.token);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

fn ok_deposit(app: &TestApp, u: &User, amount: &str, reference: &str) {
    let r = app.deposit(u, amount, reference);
    assert_eq!(r.status, 201, "deposit {reference}: {}", r.body);
}

fn withdraw(app: &TestApp, u: &User, amount: &str, reference: &str) -> Resp {
    app.post(
        "/api/wallets/me/withdraw",
        &u.token,
        json!({"amount": amount, "reference": reference}),
    )
}

fn ok_withdraw(app: &TestApp, u: &User, amount: &str, reference: &str) {
    let r = withdraw(app, u, amount, reference);
    assert_eq!(r.status, 201, "withdraw {reference}: {}", r.body);
}

fn transfer(app: &TestApp, from: &User, to: &User, amount: &str, reference: &str) -> Resp {
    app.post(
        "/api/wallets/me/transfer",
        &from.token,
        json!({"to_user_id": to.id, "amount": amount, "reference": reference}),
    )
}

fn ok_transfer(app: &TestApp, from: &User, to: &User, amount: &str, reference: &str) {
    let r = transfer(app, from, to, amount, reference);
    assert_eq!(r.status, 201, "transfer {reference}: {}", r.body);
}

/// (wallet_id, taken_at, balance, running, run_id), ordered by time then wallet.
fn snapshot_rows(app: &TestApp) -> Vec<(String, String, i64, i64, i64)> {
    app.db()
        .query("SELECT wallet_id, taken_at, balance, running, run_id FROM balance_snapshots ORDER BY taken_at, wallet_id", &[])
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0).unwrap(),
                r.get(1).unwrap(),
                r.get(2).unwrap(),
                r.get(3).unwrap(),
                r.get(4).unwrap(),
            )
        })
        .collect()
}

/// (id, cutoff, finished, wallets, mismatches) of every run.
fn run_rows(app: &TestApp) -> Vec<(i64, String, bool, i64, i64)> {
    app.db()
        .query("SELECT id, cutoff, finished_at IS NOT NULL, wallets, mismatches FROM snapshot_runs ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0).unwrap(),
                r.get(1).unwrap(),
                r.get(2).unwrap(),
                r.get(3).unwrap(),
                r.get(4).unwrap(),
            )
        })
        .collect()
}

/// Rows in the order `snapshot_rows` returns them: by time, then wallet.
fn sorted(mut v: Vec<(String, String, i64, i64, i64)>) -> Vec<(String, String, i64, i64, i64)> {
    v.sort_by(|x, y| (&x.1, &x.0).cmp(&(&y.1, &y.0)));
    v
}

#[test]
fn snapshot_run_is_exact_and_a_quiet_rerun_only_moves_the_time() {
    // last_balance, last_balance_update, history rows and the run row are exact across runs with
    // deposits, withdrawals and transfers on both sides of the cut-off; a run with no new entries
    // changes only the time.
    let (app, clock) = manual_app();
    let (a, b, c) = (
        app.register(&name("a")),
        app.register(&name("b")),
        app.register(&name("c")),
    );
    let (wa, wb, wc) = (
        wallet_of(&app, &a)["id"].as_str().unwrap().to_string(),
        wallet_of(&app, &b)["id"].as_str().unwrap().to_string(),
        wallet_of(&app, &c)["id"].as_str().unwrap().to_string(),
    );
    // A new wallet's last snapshot says 0 just before the wallet existed, so that an entry
    // stamped at its creation instant is counted by the first run.
    let created: String = app
        .db()
        .query_one("SELECT created_at FROM wallets WHERE id = ?1", &[&wa])
        .unwrap()
        .get(0)
        .unwrap();
    let created = Timestamp::from_stored(&created);
    assert!(created >= ts(START), "{created:?}");
    assert_eq!(
        wallet_of(&app, &a)["last_balance_update"],
        json!(created.plus_micros(-1).to_text()),
        "a new wallet's last_balance_update is just before its creation"
    );
    clock.advance_ms(1000);
    ok_deposit(&app, &a, "100.00", "da1");
    clock.advance_ms(1000);
    ok_deposit(&app, &b, "50.00", "db1");
    clock.advance_ms(1000);
    ok_withdraw(&app, &a, "30.00", "wa1");
    clock.advance_ms(1000);
    ok_transfer(&app, &a, &b, "20.00", "ta1");
    clock.advance_ms(1000);
    let cut1 = clock.now();
    // The run's own transactions come after its cut-off, as they do in real time.
    clock.advance_ms(1);
    clock.advance_ms(1000);
    ok_deposit(&app, &a, "5.00", "da2");
    clock.advance_ms(1000);
    ok_transfer(&app, &b, &a, "10.00", "tb1");
    clock.advance_ms(1000);
    ok_withdraw(&app, &b, "1.25", "wb1");
    clock.advance_ms(1000);

    let r1 = run_snapshot(&app, cut1);
    assert_eq!((r1.cutoff, r1.wallets), (cut1, 3));
    assert_eq!(r1.mismatches, vec![]);
    let (wal_a, wal_b, wal_c) = (
        wallet_of(&app, &a),
        wallet_of(&app, &b),
        wallet_of(&app, &c),
    );
    let t1 = cut1.to_text();
    assert_eq!(
        (
            &wal_a["balance"],
            &wal_a["last_balance"],
            &wal_a["last_balance_update"]
        ),
        (&json!("65.00"), &json!("50.00"), &json!(t1))
    );
    assert_eq!(
        (
            &wal_b["balance"],
            &wal_b["last_balance"],
            &wal_b["last_balance_update"]
        ),
        (&json!("58.75"), &json!("70.00"), &json!(t1))
    );
    assert_eq!(
        (
            &wal_c["balance"],
            &wal_c["last_balance"],
            &wal_c["last_balance_update"]
        ),
        (&json!("0.00"), &json!("0.00"), &json!(t1))
    );
    let mut expected = vec![
        (wa.clone(), t1.clone(), 5000, 5000, r1.run_id),
        (wb.clone(), t1.clone(), 7000, 7000, r1.run_id),
        (wc.clone(), t1.clone(), 0, 0, r1.run_id),
    ];
    assert_eq!(snapshot_rows(&app), sorted(expected.clone()));

    // A second run covers the entries after the first cut-off.
    let cut2 = clock.now();
    // The run's own transactions come after its cut-off, as they do in real time.
    clock.advance_ms(1);
    let r2 = run_snapshot(&app, cut2);
    assert_eq!((r2.wallets, r2.mismatches.len()), (3, 0));
    let t2 = cut2.to_text();
    for (u, last) in [(&a, "65.00"), (&b, "58.75"), (&c, "0.00")] {
        let w = wallet_of(&app, u);
        assert_eq!(
            (&w["balance"], &w["last_balance"], &w["last_balance_update"]),
            (&json!(last), &json!(last), &json!(t2))
        );
    }
    expected.extend([
        (wa.clone(), t2.clone(), 6500, 6500, r2.run_id),
        (wb.clone(), t2.clone(), 5875, 5875, r2.run_id),
        (wc.clone(), t2.clone(), 0, 0, r2.run_id),
    ]);
    assert_eq!(snapshot_rows(&app), sorted(expected.clone()));

    // A third run with no new entries: same figures, only the time moves.
    clock.advance_ms(60_000);
    let cut3 = clock.now();
    // The run's own transactions come after its cut-off, as they do in real time.
    clock.advance_ms(1);
    let r3 = run_snapshot(&app, cut3);
    assert_eq!((r3.wallets, r3.mismatches.len()), (3, 0));
    let t3 = cut3.to_text();
    for (u, last) in [(&a, "65.00"), (&b, "58.75"), (&c, "0.00")] {
        let w = wallet_of(&app, u);
        assert_eq!(
            (&w["balance"], &w["last_balance"], &w["last_balance_update"]),
            (&json!(last), &json!(last), &json!(t3))
        );
    }
    expected.extend([
        (wa.clone(), t3.clone(), 6500, 6500, r3.run_id),
        (wb.clone(), t3.clone(), 5875, 5875, r3.run_id),
        (wc.clone(), t3.clone(), 0, 0, r3.run_id),
    ]);
    assert_eq!(snapshot_rows(&app), sorted(expected));
    assert_eq!(
        run_rows(&app),
        vec![
            (r1.run_id, t1, true, 3, 0),
            (r2.run_id, t2, true, 3, 0),
            (r3.run_id, t3, true, 3, 0),
        ]
    );
    assert!(r1.run_id < r2.run_id && r2.run_id < r3.run_id);
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
}

#[test]
fn tampered_running_balance_is_reported_as_a_mismatch() {
    // A running balance changed behind the ledger's back is reported (wallet, computed, running)
    // in the RunReport and counted in snapshot_runs, and is never silently fixed.
    let (app, clock) = manual_app();
    let (a, b) = (app.register(&name("a")), app.register(&name("b")));
    let wa = wallet_of(&app, &a)["id"].as_str().unwrap().to_string();
    let wb = wallet_of(&app, &b)["id"].as_str().unwrap().to_string();
    clock.advance_ms(1000);
    ok_deposit(&app, &a, "100.00", "da");
    ok_deposit(&app, &b, "40.00", "db");
    clock.advance_ms(1000);
    let changed = app
        .db()
        .execute(
            "UPDATE balances SET balance = 12345 WHERE wallet_key = (SELECT key FROM wallets WHERE id = ?1)",
            &[&wa],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let cut = clock.now();
    // The run's own transactions come after its cut-off, as they do in real time.
    clock.advance_ms(1);
    let report = run_snapshot(&app, cut);
    assert_eq!(report.wallets, 2);
    assert_eq!(
        report.mismatches,
        vec![Mismatch {
            wallet_id: wa.clone(),
            currency: "USD".into(),
            computed: 10_000,
            running: 12_345,
        }]
    );
    assert_eq!(
        run_rows(&app),
        vec![(report.run_id, cut.to_text(), true, 2, 1)]
    );
    // The running balance is left as it was (not "fixed"); the history shows both figures.
    let w = wallet_of(&app, &a);
    assert_eq!(
        (&w["balance"], &w["last_balance"]),
        (&json!("123.45"), &json!("100.00"))
    );
    assert_eq!(
        snapshot_rows(&app),
        sorted(vec![
            (wa.clone(), cut.to_text(), 10_000, 12_345, report.run_id),
            (wb.clone(), cut.to_text(), 4_000, 4_000, report.run_id),
        ])
    );
    assert!(!app.verify().ok(), "verify must also see the tampering");
}

#[test]
fn every_second_cron_snapshots_while_transfers_keep_succeeding() {
    // With a cron firing every second, last_balance_update moves within a few seconds while
    // transfers from several threads keep getting only 201/422; once they stop, a run catches
    // last_balance up to the running balance exactly, with no mismatch recorded.
    let app = Arc::new(TestApp::spawn_with(
        |c| {
            c.serve.snapshot_cron = "* * * * * *".into();
            c.snapshot_schedule = ::wallet::config::parse_cron("* * * * * *").unwrap();
        },
        Arc::new(SystemClock),
    ));
    let (a, b) = (app.register(&name("a")), app.register(&name("b")));
    ok_deposit(&app, &a, "500.00", "fa");
    ok_deposit(&app, &b, "500.00", "fb");
    let first = wallet_of(&app, &a)["last_balance_update"]
        .as_str()
        .unwrap()
        .to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(Mutex::new(Vec::<(u16, Duration)>::new()));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (app, stop, statuses) = (app.clone(), stop.clone(), statuses.clone());
            let (from, to) = if t % 2 == 0 {
                (a.clone(), b.clone())
            } else {
                (b.clone(), a.clone())
            };
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let r = transfer(
                        &app,
                        &from,
                        &to,
                        &format!("{}.{:02}", 1 + i % 7, i % 100),
                        &format!("t{t}-{i}"),
                    );
                    statuses.lock().unwrap().push((r.status, started.elapsed()));
                    i += 1;
                }
            })
        })
        .collect();
    // Watch last_balance_update move at least twice while the transfers run.
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut seen = vec![first.clone()];
    while seen.len() < 3 && Instant::now() < deadline {
        let t = wallet_of(&app, &a)["last_balance_update"]
            .as_str()
            .unwrap()
            .to_string();
        if &t != seen.last().unwrap() {
            assert!(
                t > *seen.last().unwrap(),
                "last_balance_update went backwards: {seen:?} then {t}"
            );
            seen.push(t);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("transfer thread");
    }
    assert!(
        seen.len() >= 3,
        "last_balance_update moved fewer than twice in 6 s: {seen:?}"
    );
    let statuses = statuses.lock().unwrap().clone();
    let bad: Vec<_> = statuses
        .iter()
        .filter(|(s, _)| *s != 201 && *s != 422)
        .collect();
    assert!(bad.is_empty(), "transfers got {bad:?}");
    let ok = statuses.iter().filter(|(s, _)| *s == 201).count();
    assert!(
        ok >= 20,
        "only {ok} transfers succeeded of {}",
        statuses.len()
    );
    let slowest = statuses.iter().map(|(_, d)| *d).max().unwrap();
    assert!(
        slowest < Duration::from_secs(2),
        "a transfer took {slowest:?}"
    );

    // After the transfers stop, the next run's last_balance equals the running balance.
    let quiet = app.clock().now().to_text();
    let deadline = Instant::now() + Duration::from_secs(4);
    let caught_up = loop {
        let (wa, wb) = (wallet_of(&app, &a), wallet_of(&app, &b));
        let done = [&wa, &wb]
            .iter()
            .all(|w| w["last_balance_update"].as_str().unwrap() > quiet.as_str());
        if done || Instant::now() > deadline {
            break (wa, wb);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for w in [&caught_up.0, &caught_up.1] {
        assert!(
            w["last_balance_update"].as_str().unwrap() > quiet.as_str(),
            "{w}"
        );
        assert_eq!(w["last_balance"], w["balance"], "{w}");
    }
    let total: i64 = [&caught_up.0, &caught_up.1]
        .iter()
        .map(|w| {
            w["balance"]
                .as_str()
                .unwrap()
                .replace('.', "")
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    assert_eq!(total, 100_000, "money conserved");
    // A run updates the wallets in one transaction and records that it finished in a later
    // one, so the run that caught up may not say so yet: wait for it (the cron fires every
    // second).
    let finished_runs = || -> (i64, i64) {
        let row = app
            .db()
            .query_one(
                "SELECT count(*), CAST(COALESCE(SUM(mismatches), 0) AS BIGINT) FROM snapshot_runs
                 WHERE finished_at IS NOT NULL",
                &[],
            )
            .unwrap();
        (row.get(0).unwrap(), row.get(1).unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(4);
    let (runs, mismatches) = loop {
        let (runs, mismatches) = finished_runs();
        if runs >= 3 || Instant::now() > deadline {
            break (runs, mismatches);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(runs >= 3, "{runs} runs");
    assert_eq!(mismatches, 0);
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
}

#[test]
fn entry_stamped_at_the_wallets_creation_instant_is_counted_by_the_snapshot() {
    // An entry sharing its wallet's creation timestamp (the writer clamps time so it never goes
    // backwards, so equal stamps happen when the wall clock stalls or steps back) is part of
    // the balance at that instant: the snapshot counts it, reports no mismatch, and
    // balance?at= afterwards still agrees with the running balance.
    let (app, clock) = manual_app();
    let a = app.register(&name("a"));
    ok_deposit(&app, &a, "100.00", "same-instant");
    clock.advance_ms(1000);
    let cut = clock.now();
    // The run's own transactions come after its cut-off, as they do in real time.
    clock.advance_ms(1);
    let report = run_snapshot(&app, cut);
    assert_eq!(report.mismatches, vec![], "a false mismatch");
    let w = wallet_of(&app, &a);
    assert_eq!(
        (&w["balance"], &w["last_balance"], &w["last_balance_update"]),
        (&json!("100.00"), &json!("100.00"), &json!(cut.to_text()))
    );
    let r = balance_at(&app, &a, &cut.to_text());
    assert_eq!(r.body["balance"], json!("100.00"));
}

/// The signed amount of a transaction, in minor units.
fn signed_minor(t: &Value) -> i64 {
    let minor: i64 = t["amount"]
        .as_str()
        .unwrap()
        .replace('.', "")
        .parse()
        .unwrap();
    match t["type"].as_str().unwrap() {
        "DEPOSIT" | "TRANSFER_IN" | "REFUND" => minor,
        "WITHDRAWAL" | "TRANSFER_OUT" => -minor,
        other => panic!("unknown type {other}"),
    }
}

fn minor_text(v: i64) -> String {
    format!("{}.{:02}", v / 100, v % 100)
}

/// The balance at `at` by replaying the entries: their sum up to `at`, and the balance_after of
/// the last one at or before it; the two must agree.
fn replay(entries: &[Value], at: Timestamp) -> String {
    let upto: Vec<&Value> = entries
        .iter()
        .filter(|e| ts(e["created_at"].as_str().unwrap()) <= at)
        .collect();
    let sum: i64 = upto.iter().map(|e| signed_minor(e)).sum();
    // Newest first: the first one at or before `at` is the last one written.
    let last = upto.first().map_or("0.00".to_string(), |e| {
        e["balance_after"].as_str().unwrap().to_string()
    });
    assert_eq!(
        minor_text(sum),
        last,
        "sum and balance_after disagree at {}",
        at.to_text()
    );
    last
}

fn balance_at(app: &TestApp, u: &User, at: &str) -> Resp {
    app.get(&format!("/api/wallets/me/balance?at={at}"), &u.token)
}

#[test]
fn balance_at_any_moment_agrees_with_a_replay_of_the_entries() {
    // balance?at= before any entry, between entries, at and after a snapshot and between it and
    // later entries equals both a replay of the entries and the known figure; future and
    // malformed timestamps are 422 naming `at`.
    let (app, clock) = manual_app();
    let (a, b) = (app.register(&name("a")), app.register(&name("b")));
    clock.advance_ms(500);
    ok_deposit(&app, &b, "100.00", "fb");
    let t0 = clock.now();
    clock.advance_ms(1000);
    ok_deposit(&app, &a, "100.00", "d1");
    let t1 = clock.now();
    clock.advance_ms(1000);
    ok_withdraw(&app, &a, "25.50", "w1");
    let t2 = clock.now();
    clock.advance_ms(1000);
    ok_transfer(&app, &a, &b, "10.00", "x1");
    let t3 = clock.now();
    clock.advance_ms(1000);
    let snap = clock.now();
    let report = run_snapshot(&app, snap);
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    clock.advance_ms(1000);
    ok_transfer(&app, &b, &a, "5.00", "x2");
    let t5 = clock.now();
    clock.advance_ms(1000);
    ok_deposit(&app, &a, "0.01", "d2");
    let t6 = clock.now();
    clock.advance_ms(1000);
    let now = clock.now();

    let r = app.get("/api/wallets/me/transactions?limit=100", &a.token);
    assert_eq!(r.status, 200, "{}", r.body);
    let entries = r.body["results"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 5);

    let points: Vec<(Timestamp, &str)> = vec![
        (ts("2025-12-31T00:00:00Z"), "0.00"), // before the wallet existed
        (t0, "0.00"),                         // wallet exists, no entry yet
        (t0.plus_millis(500), "0.00"),
        (t1, "100.00"), // at an entry's own time: included
        (t1.plus_millis(500), "100.00"),
        (t2.plus_millis(1), "74.50"),
        (t3, "64.50"),
        (snap, "64.50"),                  // at the snapshot's cut-off
        (snap.plus_millis(500), "64.50"), // between the snapshot and later entries
        (t5.plus_millis(-1), "64.50"),
        (t5, "69.50"),
        (t6.plus_millis(999), "69.51"),
        (now, "69.51"),
    ];
    for (at, expected) in &points {
        let r = balance_at(&app, &a, &at.to_text());
        assert_eq!(r.status, 200, "at {}: {}", at.to_text(), r.body);
        assert_eq!(
            r.body,
            json!({"balance": expected, "at": at.to_text(), "currency": "USD"}),
            "at {}",
            at.to_text()
        );
        assert_eq!(
            replay(&entries, *at),
            *expected,
            "replay at {}",
            at.to_text()
        );
    }
    // An offset is read as the same instant (`+` sent URL-encoded).
    let offset = (t1.plus_millis(500).datetime() + chrono::Duration::hours(2))
        .format("%Y-%m-%dT%H:%M:%S%.6f%%2B02:00")
        .to_string();
    let r = balance_at(&app, &a, &offset);
    assert_eq!(r.status, 200, "{offset}: {}", r.body);
    assert_eq!(
        r.body,
        json!({"balance": "100.00", "at": t1.plus_millis(500).to_text(), "currency": "USD"})
    );
    // Without `at`: now.
    let r = app.get("/api/wallets/me/balance", &a.token);
    assert_eq!(
        r.body,
        json!({"balance": "69.51", "at": now.to_text(), "currency": "USD"})
    );
    // The other wallet, across the same snapshot.
    for (at, expected) in [
        (t0, "100.00"),
        (t3, "110.00"),
        (snap.plus_millis(1), "110.00"),
        (now, "105.00"),
    ] {
        let r = balance_at(&app, &b, &at.to_text());
        assert_eq!(r.body["balance"], json!(expected), "b at {}", at.to_text());
    }
    // Future and malformed: 422 naming `at`.
    for bad in [
        now.plus_millis(1).to_text(),
        "yesterday".to_string(),
        "2026-13-01T00:00:00Z".to_string(),
    ] {
        let r = balance_at(&app, &a, &bad);
        assert_eq!(
            (r.status, r.code()),
            (422, "validation_error"),
            "{bad}: {}",
            r.body
        );
        assert!(
            r.body["error"]["fields"]["at"].is_array(),
            "{bad}: {}",
            r.body
        );
    }
}

fn run_cli(db: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wallet"))
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("WALLET_DB")
        .output()
        .expect("run the wallet binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Checks `snapshot run N: cut-off T, W wallets, M mismatches, S.SSSs` and returns T.
fn check_summary(line: &str, run: i64, wallets: u64, mismatches: u64) -> Timestamp {
    let prefix = format!("snapshot run {run}: cut-off ");
    let rest = line
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("summary {line:?} does not start with {prefix:?}"));
    let (cutoff, rest) = rest.split_once(", ").expect("cut-off");
    let tail = format!("{wallets} wallets, {mismatches} mismatches, ");
    let secs = rest
        .strip_prefix(&tail)
        .unwrap_or_else(|| panic!("summary {line:?}: expected {tail:?}"));
    let secs = secs.strip_suffix('s').expect("seconds");
    assert!(secs.parse::<f64>().is_ok(), "{line}");
    ts(cutoff)
}

#[test]
fn snapshot_command_prints_its_run_and_exits_1_on_a_mismatch() {
    // `wallet snapshot` against a running server's database exits 0 and prints its run; after the
    // server stops and a balance is tampered with, it exits 1 and names the wallet and figures.
    let mut app = TestApp::spawn();
    let (a, b) = (app.register(&name("a")), app.register(&name("b")));
    ok_deposit(&app, &a, "100.00", "fa");
    ok_transfer(&app, &a, &b, "12.34", "t1");
    let wa = wallet_of(&app, &a)["id"].as_str().unwrap().to_string();
    let before = app.clock().now();
    let (code, out, err) = run_cli(app.db_arg(), &["snapshot"]);
    assert_eq!(code, 0, "stdout {out}\nstderr {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let cut = check_summary(lines[0], 1, 2, 0);
    assert!(cut >= before && cut <= app.clock().now(), "{out}");
    // The running server sees the command's run.
    let w = wallet_of(&app, &a);
    assert_eq!(
        (&w["last_balance"], &w["last_balance_update"]),
        (&json!("87.66"), &json!(cut.to_text()))
    );
    assert_eq!(wallet_of(&app, &b)["last_balance"], json!("12.34"));
    assert_eq!(run_rows(&app), vec![(1, cut.to_text(), true, 2, 0)]);

    app.stop();
    app.db()
        .execute(
            "UPDATE balances SET balance = 99999 WHERE wallet_key = (SELECT key FROM wallets WHERE id = ?1)",
            &[&wa],
        )
        .unwrap();
    let (code, out, err) = run_cli(app.db_arg(), &["snapshot"]);
    assert_eq!(code, 1, "stdout {out}\nstderr {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let cut2 = check_summary(lines[0], 2, 2, 1);
    assert!(cut2 > cut);
    assert_eq!(
        lines[1],
        format!("mismatch: wallet {wa} computed 8766 from entries, running balance 99999")
    );
    assert_eq!(run_rows(&app)[1], (2, cut2.to_text(), true, 2, 1));
}
