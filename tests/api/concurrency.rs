//! Real threads against the real server: no overdraft, no lost update, no double spend.

use std::sync::{Arc, Barrier};

use serde_json::json;

use crate::helpers::{name, TestApp};

/// Runs `n` requests at once (released together by a barrier) and returns their statuses.
fn burst(
    app: &Arc<TestApp>,
    n: usize,
    make: impl Fn(usize) -> (String, String, serde_json::Value) + Send + Sync + 'static,
) -> Vec<u16> {
    let barrier = Arc::new(Barrier::new(n));
    let make = Arc::new(make);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (app, barrier, make) = (app.clone(), barrier.clone(), make.clone());
            std::thread::spawn(move || {
                let (path, token, body) = make(i);
                barrier.wait();
                app.post(&path, &token, body).status
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect()
}

#[test]
fn concurrent_withdrawals_never_overdraw() {
    // 40 withdrawals of 10 at once against 100: exactly 10 succeed, the balance ends at 0.
    let app = Arc::new(TestApp::spawn());
    let a = app.register(&name("a"));
    app.deposit(&a, "100", "fund");
    let token = a.token.clone();
    let statuses = burst(&app, 40, move |i| {
        (
            "/api/wallets/me/withdraw".into(),
            token.clone(),
            json!({"amount": "10", "reference": format!("w{i}")}),
        )
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 422).count(),
        30,
        "{statuses:?}"
    );
    assert_eq!(app.balance(&a), "0.00");
    assert!(app.verify().ok());
}

#[test]
fn concurrent_identical_deposits_move_money_once() {
    // 30 identical deposits with one reference: one 201, the rest 200 replays, one entry.
    let app = Arc::new(TestApp::spawn());
    let a = app.register(&name("a"));
    let token = a.token.clone();
    let statuses = burst(&app, 30, move |_| {
        (
            "/api/wallets/me/deposit".into(),
            token.clone(),
            json!({"amount": "7.50", "reference": "same"}),
        )
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        29,
        "{statuses:?}"
    );
    assert_eq!(app.balance(&a), "7.50");
    let n: i64 = app
        .db()
        .query_one("SELECT count(*) FROM entries", &[])
        .unwrap()
        .get(0)
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn concurrent_transfers_both_ways_conserve_money() {
    // 200 transfers at once in both directions between two wallets: only 201 or 422, money is
    // conserved, and each balance equals the sum of its entries.
    let app = Arc::new(TestApp::spawn());
    let (a, b) = (app.register(&name("a")), app.register(&name("b")));
    app.deposit(&a, "100", "fa");
    app.deposit(&b, "100", "fb");
    let (ua, ub) = (a.clone(), b.clone());
    let statuses = burst(&app, 200, move |i| {
        let (from, to) = if i % 2 == 0 { (&ua, &ub) } else { (&ub, &ua) };
        let amount = format!("{}.{:02}", 1 + i % 13, i % 100);
        (
            "/api/wallets/me/transfer".into(),
            from.token.clone(),
            json!({"to_user_id": to.id, "amount": amount, "reference": format!("t{i}")}),
        )
    });
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 422),
        "{statuses:?}"
    );
    assert!(statuses.contains(&201));
    let total: f64 = [app.balance(&a), app.balance(&b)]
        .iter()
        .map(|s| s.parse::<f64>().unwrap())
        .sum();
    assert_eq!(format!("{total:.2}"), "200.00");
    let mismatched: i64 = app
        .db()
        .query_one(
            "SELECT count(*) FROM balances b WHERE b.balance != (SELECT COALESCE(SUM(CASE WHEN kind IN ('DEPOSIT','TRANSFER_IN','REFUND') THEN amount ELSE -amount END), 0) FROM entries e WHERE e.wallet_key = b.wallet_key AND e.currency = b.currency)",
            &[],
        )
        .unwrap()
        .get(0)
        .unwrap();
    assert_eq!(mismatched, 0);
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
}
