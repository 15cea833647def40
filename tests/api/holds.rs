//! Holds (part 2): authorize now, capture or void later. Money held is not available to any
//! debit; a capture moves it once (a transfer to the recipient, or a withdrawal), a void or the
//! expiry releases it. Real threads against the real server for the races, and a real clock
//! for the expiry (with a manual clock only where the exact instant matters).

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ::wallet::clock::{Clock, ManualClock, SystemClock};
use ::wallet::config::Config;
use ::wallet::domain::{Currencies, Timestamp};
use ::wallet::startup::{App, TestHooks};
use serde_json::{json, Value};

use crate::helpers::{name, staff_user, Resp, TestApp, User};

const DAY_MICROS: i64 = 86_400 * 1_000_000;

fn ts(s: &str) -> Timestamp {
    Timestamp::parse(s).unwrap_or_else(|e| panic!("timestamp {s:?}: {e}"))
}

fn ts_of(v: &Value, field: &str) -> Timestamp {
    ts(v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {v}")))
}

/// Minor units shown at scale 2.
fn text(m: i64) -> String {
    assert!(m >= 0, "{m}");
    format!("{}.{:02}", m / 100, m % 100)
}

fn funded(app: &TestApp, prefix: &str, amount: &str) -> User {
    let u = app.register(&name(prefix));
    let r = app.deposit(&u, amount, "fund");
    assert_eq!(r.status, 201, "{}", r.body);
    u
}

fn create(app: &TestApp, u: &User, body: Value) -> Resp {
    app.post("/api/wallets/me/holds", &u.token, body)
}

/// Creates a hold, checks the 201 HELD reply, returns its body.
fn ok_hold(app: &TestApp, u: &User, body: Value) -> Value {
    let r = create(app, u, body.clone());
    assert_eq!(r.status, 201, "hold {body}: {}", r.body);
    assert_eq!(r.body["status"], "HELD", "{}", r.body);
    assert_eq!(
        r.header("Idempotent-Replayed"),
        None,
        "a new hold is no replay"
    );
    r.body
}

fn id_of(hold: &Value) -> String {
    hold["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {hold}"))
        .to_string()
}

fn capture(app: &TestApp, u: &User, id: &str, body: Value) -> Resp {
    app.post(
        &format!("/api/wallets/me/holds/{id}/capture"),
        &u.token,
        body,
    )
}

fn void(app: &TestApp, u: &User, id: &str) -> Resp {
    app.post(
        &format!("/api/wallets/me/holds/{id}/void"),
        &u.token,
        json!({}),
    )
}

fn get_hold(app: &TestApp, u: &User, id: &str) -> Resp {
    app.get(&format!("/api/wallets/me/holds/{id}"), &u.token)
}

fn list(app: &TestApp, u: &User, query: &str) -> Resp {
    app.get(&format!("/api/wallets/me/holds{query}"), &u.token)
}

/// The ids listed by a 200 list reply, checking that `count` agrees.
fn listed(r: &Resp) -> BTreeSet<String> {
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {}", r.body));
    assert_eq!(
        r.body["count"].as_u64(),
        Some(results.len() as u64),
        "{}",
        r.body
    );
    results.iter().map(id_of).collect()
}

fn set<S: AsRef<str>>(ids: &[S]) -> BTreeSet<String> {
    ids.iter().map(|s| s.as_ref().to_string()).collect()
}

fn none() -> BTreeSet<String> {
    BTreeSet::new()
}

/// The `balances` line of one currency in GET /api/wallets/me.
fn money(app: &TestApp, u: &User, currency: &str) -> Value {
    let r = app.get("/api/wallets/me", &u.token);
    assert_eq!(r.status, 200, "{}", r.body);
    let lines = r.body["balances"]
        .as_array()
        .unwrap_or_else(|| panic!("no balances in {}", r.body));
    let found: Vec<&Value> = lines.iter().filter(|l| l["currency"] == currency).collect();
    assert_eq!(found.len(), 1, "one {currency} line in {}", r.body);
    found[0].clone()
}

/// Checks balance, held and available of one currency exactly.
fn assert_money(
    app: &TestApp,
    u: &User,
    currency: &str,
    balance: &str,
    held: &str,
    available: &str,
) {
    assert_eq!(
        money(app, u, currency),
        json!({"currency": currency, "balance": balance, "held": held, "available": available}),
        "{} in {currency}",
        u.username
    );
}

/// Every transaction of the caller, newest first.
fn history(app: &TestApp, u: &User) -> Vec<Value> {
    let r = app.get("/api/wallets/me/transactions?limit=100", &u.token);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["results"].as_array().unwrap().clone()
}

/// The caller's transactions that a capture of this hold wrote.
fn entries_of_hold(app: &TestApp, u: &User, hold_id: &str) -> Vec<Value> {
    let reference = format!("hold:{hold_id}");
    history(app, u)
        .into_iter()
        .filter(|e| e["reference"] == reference.as_str())
        .collect()
}

fn assert_422(r: &Resp, code: &str, field: Option<&str>, what: &str) {
    assert_eq!((r.status, r.code()), (422, code), "{what}: {}", r.body);
    if let Some(field) = field {
        assert!(
            r.body["error"]["fields"][field].is_array(),
            "{what}: fields.{field} in {}",
            r.body
        );
    }
}

fn assert_error(r: &Resp, status: u16, code: &str, what: &str) {
    assert_eq!((r.status, r.code()), (status, code), "{what}: {}", r.body);
}

fn assert_verified(app: &TestApp) {
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
}

/// Polls the hold (as `u`) until it is no longer HELD, for at most `within`.
fn wait_not_held(app: &TestApp, u: &User, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let r = get_hold(app, u, id);
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body["status"] != "HELD" {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "hold still HELD after {within:?}: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks an EXPIRED hold: nothing captured, no entry, and the server expired it at (not
/// before) its time and within about a second of it.
fn assert_expired_on_time(hold: &Value) {
    assert_eq!(hold["status"], "EXPIRED", "{hold}");
    assert_eq!(hold["captured_amount"], Value::Null, "{hold}");
    assert_eq!(hold["transaction_ids"], json!([]), "{hold}");
    let (expires, updated) = (ts_of(hold, "expires_at"), ts_of(hold, "updated_at"));
    assert!(updated >= expires, "expired before its time: {hold}");
    assert!(
        updated.micros() - expires.micros() <= 2_000_000,
        "expired more than 2 s after its time (the contract says within a second): {hold}"
    );
}

// ---- Basics ---------------------------------------------------------------------------------

#[test]
fn a_hold_reserves_money_and_its_capture_by_the_recipient_is_one_transfer() {
    // A hold to a recipient leaves the balance alone and moves 40.00 from available to held;
    // the recipient's capture writes TRANSFER_OUT + TRANSFER_IN (one transfer) with reference
    // hold:<id>; a second capture replays, another amount or a void is 409.
    let app = TestApp::spawn();
    let a = funded(&app, "payer", "100.00");
    let b = app.register(&name("payee"));
    let h = ok_hold(
        &app,
        &a,
        json!({"amount": "40", "reference": "order-1", "to_user_id": b.id, "metadata": {"order": 7}}),
    );
    let id = id_of(&h);
    assert_eq!(h["amount"], "40.00");
    assert_eq!(h["currency"], "USD");
    assert_eq!(h["captured_amount"], Value::Null);
    assert_eq!(h["reference"], "order-1");
    assert_eq!(h["payer_user_id"], a.id);
    assert_eq!(h["to_user_id"], b.id);
    assert_eq!(h["metadata"], json!({"order": 7}));
    assert_eq!(h["transaction_ids"], json!([]));
    // Default expiry: 7 days.
    let lasts = ts_of(&h, "expires_at").micros() - ts_of(&h, "created_at").micros();
    assert!(
        (lasts - 7 * DAY_MICROS).abs() <= 5_000_000,
        "default expiry is 7 days: {h}"
    );

    assert_money(&app, &a, "USD", "100.00", "40.00", "60.00");
    assert_eq!(app.balance(&a), "100.00", "a hold moves no money");
    assert_money(&app, &b, "USD", "0.00", "0.00", "0.00");
    assert_eq!(history(&app, &a).len(), 1, "a hold writes no entry");
    for u in [&a, &b] {
        let r = get_hold(&app, u, &id);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            (r.body["id"].as_str(), r.body["status"].as_str()),
            (Some(id.as_str()), Some("HELD"))
        );
    }

    let c = capture(&app, &b, &id, json!({}));
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.header("Idempotent-Replayed"), None, "{}", c.body);
    assert_eq!(c.body["status"], "CAPTURED");
    assert_eq!(c.body["captured_amount"], "40.00");
    assert_eq!(c.body["amount"], "40.00");
    let tids = c.body["transaction_ids"].as_array().unwrap().clone();
    assert_eq!(tids.len(), 2, "[transfer_out, transfer_in]: {}", c.body);

    assert_money(&app, &a, "USD", "60.00", "0.00", "60.00");
    assert_money(&app, &b, "USD", "40.00", "0.00", "40.00");
    let out = entries_of_hold(&app, &a, &id);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["id"], tids[0]);
    assert_eq!(out[0]["type"], "TRANSFER_OUT");
    assert_eq!(out[0]["amount"], "40.00");
    assert_eq!(out[0]["balance_after"], "60.00");
    assert_eq!(out[0]["currency"], "USD");
    assert_eq!(out[0]["counterparty_user_id"], b.id);
    let inn = entries_of_hold(&app, &b, &id);
    assert_eq!(inn.len(), 1, "{inn:?}");
    assert_eq!(inn[0]["id"], tids[1]);
    assert_eq!(inn[0]["type"], "TRANSFER_IN");
    assert_eq!(inn[0]["amount"], "40.00");
    assert_eq!(inn[0]["balance_after"], "40.00");
    assert_eq!(inn[0]["counterparty_user_id"], a.id);
    // Both halves are one transfer.
    let halves = app
        .db()
        .query(
            "SELECT transfer_id FROM entries WHERE reference = ?1",
            &[&format!("hold:{id}")],
        )
        .unwrap();
    assert_eq!(halves.len(), 2);
    let t0: Option<String> = halves[0].get(0).unwrap();
    let t1: Option<String> = halves[1].get(0).unwrap();
    assert!(t0.is_some() && t0 == t1, "{t0:?} {t1:?}");

    // The same capture again replays; any other capture or a void is too late.
    for body in [
        json!({}),
        json!({"amount": "40.00"}),
        json!({"amount": "40"}),
    ] {
        let again = capture(&app, &b, &id, body.clone());
        assert_eq!(again.status, 200, "{body}: {}", again.body);
        assert_eq!(again.header("Idempotent-Replayed"), Some("true"), "{body}");
        assert_eq!(again.body["status"], "CAPTURED");
        assert_eq!(again.body["captured_amount"], "40.00");
        assert_eq!(again.body["transaction_ids"], json!(tids));
    }
    assert_error(
        &capture(&app, &b, &id, json!({"amount": "10"})),
        409,
        "conflict",
        "another amount",
    );
    assert_error(&void(&app, &b, &id), 409, "conflict", "void after capture");
    assert_money(&app, &a, "USD", "60.00", "0.00", "60.00");
    assert_money(&app, &b, "USD", "40.00", "0.00", "40.00");
    assert_eq!(history(&app, &a).len(), 2);
    assert_verified(&app);
}

#[test]
fn capture_without_recipient_is_a_withdrawal_and_a_partial_capture_releases_the_rest() {
    // A hold with no recipient is captured by the payer as one WITHDRAWAL; capturing 25.00 of
    // 60.00 takes 25.00 and gives the other 35.00 back to available. Amounts over the hold or in
    // a wrong form are 422 on `amount` and leave it HELD.
    let app = TestApp::spawn();
    let a = funded(&app, "payer", "100.00");
    let h = ok_hold(&app, &a, json!({"amount": "60.00", "reference": "auth-1"}));
    let id = id_of(&h);
    assert_eq!(h["to_user_id"], Value::Null, "{h}");
    assert_money(&app, &a, "USD", "100.00", "60.00", "40.00");

    for amount in [
        json!("60.01"),
        json!("0"),
        json!("1.001"),
        json!("-5"),
        json!("abc"),
    ] {
        let r = capture(&app, &a, &id, json!({"amount": amount}));
        assert_422(
            &r,
            "validation_error",
            Some("amount"),
            &format!("capture {amount}"),
        );
    }
    assert_eq!(get_hold(&app, &a, &id).body["status"], "HELD");
    assert_money(&app, &a, "USD", "100.00", "60.00", "40.00");

    let c = capture(&app, &a, &id, json!({"amount": "25"}));
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.header("Idempotent-Replayed"), None);
    assert_eq!(c.body["status"], "CAPTURED");
    assert_eq!(c.body["amount"], "60.00");
    assert_eq!(c.body["captured_amount"], "25.00");
    let tids = c.body["transaction_ids"].as_array().unwrap().clone();
    assert_eq!(tids.len(), 1, "[withdrawal]: {}", c.body);
    assert_money(&app, &a, "USD", "75.00", "0.00", "75.00");
    let w = entries_of_hold(&app, &a, &id);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0]["id"], tids[0]);
    assert_eq!(w[0]["type"], "WITHDRAWAL");
    assert_eq!(w[0]["amount"], "25.00");
    assert_eq!(w[0]["balance_after"], "75.00");
    assert_eq!(w[0]["currency"], "USD");

    let again = capture(&app, &a, &id, json!({"amount": "25.00"}));
    assert_eq!(
        (again.status, again.header("Idempotent-Replayed")),
        (200, Some("true")),
        "{}",
        again.body
    );
    assert_eq!(again.body["captured_amount"], "25.00");
    // Omitted means the whole hold (60.00), which is not what was captured.
    assert_error(
        &capture(&app, &a, &id, json!({})),
        409,
        "conflict",
        "whole after partial",
    );
    assert_error(
        &capture(&app, &a, &id, json!({"amount": "30"})),
        409,
        "conflict",
        "other amount",
    );
    assert_money(&app, &a, "USD", "75.00", "0.00", "75.00");
    // The released 35.00 really is available.
    let all = app.post(
        "/api/wallets/me/withdraw",
        &a.token,
        json!({"amount": "75.00", "reference": "all"}),
    );
    assert_eq!(all.status, 201, "{}", all.body);
    assert_money(&app, &a, "USD", "0.00", "0.00", "0.00");
    assert_verified(&app);
}

#[test]
fn void_releases_the_hold_and_only_a_held_hold_changes_state() {
    // The payer voids its own hold; the recipient voids one made out to it. Each release gives
    // the amount back to available, writes no entry, and a second void or a capture is 409.
    let app = TestApp::spawn();
    let a = funded(&app, "payer", "100.00");
    let b = app.register(&name("payee"));
    let h1 = id_of(&ok_hold(
        &app,
        &a,
        json!({"amount": "30", "reference": "h1"}),
    ));
    let h2 = id_of(&ok_hold(
        &app,
        &a,
        json!({"amount": "50", "reference": "h2", "to_username": b.username}),
    ));
    assert_money(&app, &a, "USD", "100.00", "80.00", "20.00");

    let v = void(&app, &a, &h1);
    assert_eq!(v.status, 200, "{}", v.body);
    assert_eq!(v.body["status"], "VOIDED");
    assert_eq!(v.body["captured_amount"], Value::Null);
    assert_eq!(v.body["transaction_ids"], json!([]));
    assert_money(&app, &a, "USD", "100.00", "50.00", "50.00");
    assert_error(&void(&app, &a, &h1), 409, "conflict", "second void");
    assert_error(
        &capture(&app, &a, &h1, json!({})),
        409,
        "conflict",
        "capture after void",
    );

    let v = void(&app, &b, &h2);
    assert_eq!(v.status, 200, "{}", v.body);
    assert_eq!(v.body["status"], "VOIDED");
    assert_money(&app, &a, "USD", "100.00", "0.00", "100.00");
    assert_money(&app, &b, "USD", "0.00", "0.00", "0.00");
    assert_error(
        &capture(&app, &b, &h2, json!({})),
        409,
        "conflict",
        "capture after void",
    );
    assert_eq!(get_hold(&app, &a, &h1).body["status"], "VOIDED");
    assert_eq!(get_hold(&app, &b, &h2).body["status"], "VOIDED");
    assert_eq!(history(&app, &a).len(), 1, "voids write no entry");
    assert_eq!(history(&app, &b).len(), 0);
    assert_verified(&app);
}

#[test]
fn every_debit_needs_available_not_balance() {
    // With 60.00 of 100.00 held, a withdrawal, a transfer or a new hold of 40.01 is 422
    // insufficient_funds and changes nothing; 40.00 goes through; the void frees the rest.
    let app = TestApp::spawn();
    let a = funded(&app, "payer", "100.00");
    let b = app.register(&name("other"));
    let h = id_of(&ok_hold(
        &app,
        &a,
        json!({"amount": "60", "reference": "big"}),
    ));
    let withdraw = |amount: &str, reference: &str| {
        app.post(
            "/api/wallets/me/withdraw",
            &a.token,
            json!({"amount": amount, "reference": reference}),
        )
    };
    let transfer = |amount: &str, reference: &str| {
        app.post(
            "/api/wallets/me/transfer",
            &a.token,
            json!({"to_user_id": b.id, "amount": amount, "reference": reference}),
        )
    };
    assert_422(
        &withdraw("40.01", "w"),
        "insufficient_funds",
        None,
        "withdraw",
    );
    assert_422(
        &transfer("40.01", "t"),
        "insufficient_funds",
        None,
        "transfer",
    );
    assert_422(
        &create(&app, &a, json!({"amount": "40.01", "reference": "h"})),
        "insufficient_funds",
        None,
        "hold",
    );
    assert_money(&app, &a, "USD", "100.00", "60.00", "40.00");
    let w = withdraw("40.00", "w");
    assert_eq!(w.status, 201, "{}", w.body);
    assert_eq!(w.body["balance_after"], "60.00");
    assert_money(&app, &a, "USD", "60.00", "60.00", "0.00");
    assert_422(
        &transfer("0.01", "t"),
        "insufficient_funds",
        None,
        "transfer at 0",
    );
    assert_422(
        &create(&app, &a, json!({"amount": "0.01", "reference": "h"})),
        "insufficient_funds",
        None,
        "hold at 0",
    );
    assert_eq!(void(&app, &a, &h).status, 200);
    assert_money(&app, &a, "USD", "60.00", "0.00", "60.00");
    let t = transfer("60.00", "t");
    assert_eq!(t.status, 201, "{}", t.body);
    assert_money(&app, &a, "USD", "0.00", "0.00", "0.00");
    assert_money(&app, &b, "USD", "60.00", "0.00", "60.00");
    assert_verified(&app);
}

#[test]
fn holds_are_per_currency_and_a_capture_credits_the_same_currency() {
    // A EUR hold reserves EUR only: USD stays fully available, EUR available drops. Captured
    // by the recipient, it moves EUR and only EUR.
    let app = TestApp::spawn_with(
        |c| c.currencies = Currencies::parse("USD:2,EUR:2,JPY:0", 1_000_000_000).unwrap(),
        Arc::new(SystemClock),
    );
    let a = funded(&app, "payer", "10.00");
    let b = app.register(&name("payee"));
    let eur = app.post(
        "/api/wallets/me/deposit",
        &a.token,
        json!({"amount": "100", "reference": "eur", "currency": "EUR"}),
    );
    assert_eq!(eur.status, 201, "{}", eur.body);
    let h = ok_hold(
        &app,
        &a,
        json!({"amount": "60", "currency": "EUR", "reference": "e1", "to_user_id": b.id}),
    );
    assert_eq!(
        (h["amount"].as_str(), h["currency"].as_str()),
        (Some("60.00"), Some("EUR"))
    );
    assert_money(&app, &a, "EUR", "100.00", "60.00", "40.00");
    assert_money(&app, &a, "USD", "10.00", "0.00", "10.00");
    assert_422(
        &app.post(
            "/api/wallets/me/withdraw",
            &a.token,
            json!({"amount": "40.01", "reference": "w-eur", "currency": "EUR"}),
        ),
        "insufficient_funds",
        None,
        "EUR beyond available",
    );
    let w = app.post(
        "/api/wallets/me/withdraw",
        &a.token,
        json!({"amount": "10.00", "reference": "w-usd"}),
    );
    assert_eq!(w.status, 201, "USD is not held: {}", w.body);
    assert_422(
        &create(&app, &a, json!({"amount": "0.01", "reference": "u1"})),
        "insufficient_funds",
        None,
        "USD hold at 0 USD",
    );
    assert_422(
        &create(
            &app,
            &a,
            json!({"amount": "1.5", "currency": "JPY", "reference": "j1"}),
        ),
        "validation_error",
        Some("amount"),
        "JPY has no fractions",
    );
    assert_422(
        &create(
            &app,
            &a,
            json!({"amount": "100", "currency": "JPY", "reference": "j1"}),
        ),
        "insufficient_funds",
        None,
        "no JPY",
    );
    assert_422(
        &create(
            &app,
            &a,
            json!({"amount": "1", "currency": "GBP", "reference": "g1"}),
        ),
        "validation_error",
        Some("currency"),
        "unconfigured currency",
    );

    let c = capture(&app, &b, &id_of(&h), json!({"amount": "25.5"}));
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.body["captured_amount"], "25.50");
    assert_eq!(c.body["currency"], "EUR");
    assert_money(&app, &a, "EUR", "74.50", "0.00", "74.50");
    assert_money(&app, &a, "USD", "0.00", "0.00", "0.00");
    assert_money(&app, &b, "EUR", "25.50", "0.00", "25.50");
    assert_money(&app, &b, "USD", "0.00", "0.00", "0.00");
    let inn = entries_of_hold(&app, &b, &id_of(&h));
    assert_eq!(inn.len(), 1, "{inn:?}");
    assert_eq!(
        (
            inn[0]["type"].as_str(),
            inn[0]["currency"].as_str(),
            inn[0]["amount"].as_str()
        ),
        (Some("TRANSFER_IN"), Some("EUR"), Some("25.50"))
    );
    assert_verified(&app);
}

// ---- Who may act ----------------------------------------------------------------------------

#[test]
fn only_the_recipient_acts_on_a_promise_and_only_the_payer_on_its_own_hold() {
    // A hold to a recipient: the payer gets 403 forbidden on capture and void (it may still
    // read it), a third user 404 on everything. A hold without a recipient: anyone but the
    // payer gets 404. Refused calls change nothing.
    let app = TestApp::spawn();
    let a = funded(&app, "payer", "100.00");
    let (b, c) = (app.register(&name("payee")), app.register(&name("third")));
    let promise = id_of(&ok_hold(
        &app,
        &a,
        json!({"amount": "10", "reference": "p", "to_user_id": b.id}),
    ));
    let own = id_of(&ok_hold(&app, &a, json!({"amount": "5", "reference": "o"})));

    assert_error(
        &capture(&app, &a, &promise, json!({})),
        403,
        "forbidden",
        "payer captures",
    );
    assert_error(&void(&app, &a, &promise), 403, "forbidden", "payer voids");
    assert_eq!(
        get_hold(&app, &a, &promise).status,
        200,
        "the payer may read it"
    );
    for (u, id) in [(&c, &promise), (&c, &own), (&b, &own)] {
        assert_error(
            &capture(&app, u, id, json!({})),
            404,
            "not_found",
            "capture by another",
        );
        assert_error(&void(&app, u, id), 404, "not_found", "void by another");
        assert_error(&get_hold(&app, u, id), 404, "not_found", "read by another");
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_error(
        &get_hold(&app, &a, &unknown),
        404,
        "not_found",
        "unknown id",
    );
    assert_error(
        &capture(&app, &a, &unknown, json!({})),
        404,
        "not_found",
        "unknown id",
    );
    assert_error(&void(&app, &a, &unknown), 404, "not_found", "unknown id");
    assert_eq!(get_hold(&app, &b, &promise).body["status"], "HELD");
    assert_eq!(get_hold(&app, &a, &own).body["status"], "HELD");
    assert_money(&app, &a, "USD", "100.00", "15.00", "85.00");

    let r = capture(&app, &a, &own, json!({}));
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("CAPTURED")),
        "{}",
        r.body
    );
    let r = capture(&app, &b, &promise, json!({}));
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("CAPTURED")),
        "{}",
        r.body
    );
    assert_money(&app, &a, "USD", "85.00", "0.00", "85.00");
    assert_money(&app, &b, "USD", "10.00", "0.00", "10.00");
    assert_money(&app, &c, "USD", "0.00", "0.00", "0.00");
    assert_verified(&app);
}

#[test]
fn listing_holds_by_status_and_role() {
    // Each user lists the holds it pays or receives, filtered by status and role; a stranger
    // lists none. Bad filters are 422.
    let app = TestApp::spawn();
    let a = funded(&app, "a", "100.00");
    let b = funded(&app, "b", "100.00");
    let c = app.register(&name("c"));
    let h1 = id_of(&ok_hold(
        &app,
        &a,
        json!({"amount": "10", "reference": "1", "to_user_id": b.id}),
    ));
    let h2 = id_of(&ok_hold(
        &app,
        &a,
        json!({"amount": "20", "reference": "2"}),
    ));
    let h3 = id_of(&ok_hold(
        &app,
        &b,
        json!({"amount": "5", "reference": "3", "to_user_id": a.id}),
    ));
    assert_eq!(void(&app, &a, &h2).status, 200);

    assert_eq!(listed(&list(&app, &a, "")), set(&[&h1, &h2, &h3]));
    assert_eq!(listed(&list(&app, &a, "?role=payer")), set(&[&h1, &h2]));
    assert_eq!(listed(&list(&app, &a, "?role=recipient")), set(&[&h3]));
    assert_eq!(listed(&list(&app, &a, "?status=HELD")), set(&[&h1, &h3]));
    assert_eq!(
        listed(&list(&app, &a, "?status=HELD&role=payer")),
        set(&[&h1])
    );
    assert_eq!(listed(&list(&app, &a, "?status=VOIDED")), set(&[&h2]));
    assert_eq!(listed(&list(&app, &a, "?status=CAPTURED")), none());
    assert_eq!(listed(&list(&app, &b, "?role=recipient")), set(&[&h1]));
    assert_eq!(listed(&list(&app, &b, "?role=payer")), set(&[&h3]));
    assert_eq!(listed(&list(&app, &c, "")), none());
    for bad in ["?status=NOPE", "?role=boss"] {
        let r = list(&app, &a, bad);
        assert_422(&r, "validation_error", None, bad);
    }
}

#[test]
fn staff_capture_and_void_any_hold_with_a_reason() {
    // Staff capture (part of) a hold made out to a recipient and void another, each with a
    // reason and one audit row; without a reason it is 422; other users get 403.
    let app = TestApp::spawn();
    let a = funded(&app, "payer", "100.00");
    let b = app.register(&name("payee"));
    let staff = staff_user(&app);
    let promise = id_of(&ok_hold(
        &app,
        &a,
        json!({"amount": "40", "reference": "p", "to_user_id": b.id}),
    ));
    let own = id_of(&ok_hold(
        &app,
        &a,
        json!({"amount": "30", "reference": "o"}),
    ));
    let admin = |who: &User, id: &str, action: &str, body: Value| {
        app.post(&format!("/api/admin/holds/{id}/{action}"), &who.token, body)
    };

    assert_422(
        &admin(&staff, &promise, "capture", json!({"amount": "15"})),
        "validation_error",
        Some("reason"),
        "capture without a reason",
    );
    assert_422(
        &admin(&staff, &own, "void", json!({})),
        "validation_error",
        Some("reason"),
        "void without a reason",
    );
    for (u, action) in [(&b, "capture"), (&a, "void")] {
        assert_error(
            &admin(u, &promise, action, json!({"reason": "mine"})),
            403,
            "forbidden",
            "not staff",
        );
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_error(
        &admin(&staff, &unknown, "void", json!({"reason": "x"})),
        404,
        "not_found",
        "unknown hold",
    );
    assert_money(&app, &a, "USD", "100.00", "70.00", "30.00");

    let c = admin(
        &staff,
        &promise,
        "capture",
        json!({"amount": "15", "reason": "dispute settled"}),
    );
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.body["status"], "CAPTURED");
    assert_eq!(c.body["captured_amount"], "15.00");
    let v = admin(&staff, &own, "void", json!({"reason": "customer called"}));
    assert_eq!(v.status, 200, "{}", v.body);
    assert_eq!(v.body["status"], "VOIDED");
    assert_money(&app, &a, "USD", "85.00", "0.00", "85.00");
    assert_money(&app, &b, "USD", "15.00", "0.00", "15.00");
    assert_eq!(entries_of_hold(&app, &b, &promise).len(), 1);
    for id in [&promise, &own] {
        let audits: i64 = app
            .db()
            .query_one(
                "SELECT count(*) FROM audit_log WHERE target = ?1 AND staff_user_id = ?2",
                &[&format!("hold:{id}"), &staff.id],
            )
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(audits, 1, "one audit row for hold:{id}");
    }
    assert_verified(&app);
}

// ---- References and validation --------------------------------------------------------------

#[test]
fn hold_creation_replays_or_conflicts_by_reference() {
    // The same reference and payload replays the hold (200, header, nothing more held); another
    // amount, recipient or metadata is 409 reference_conflict; a refused request (422) does not
    // consume its reference.
    let app = TestApp::spawn();
    let a = funded(&app, "payer", "100.00");
    let (b, c) = (app.register(&name("b")), app.register(&name("c")));
    let body =
        json!({"amount": "30", "reference": "order-1", "to_user_id": b.id, "metadata": {"n": 1}});
    let first = ok_hold(&app, &a, body);
    let again = create(
        &app,
        &a,
        json!({"amount": "30.00", "reference": "order-1", "to_username": b.username, "metadata": {"n": 1}}),
    );
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(again.body, first, "the original hold");
    assert_money(&app, &a, "USD", "100.00", "30.00", "70.00");
    for (what, other) in [
        (
            "amount",
            json!({"amount": "31", "reference": "order-1", "to_user_id": b.id, "metadata": {"n": 1}}),
        ),
        (
            "recipient",
            json!({"amount": "30", "reference": "order-1", "to_user_id": c.id, "metadata": {"n": 1}}),
        ),
        (
            "no recipient",
            json!({"amount": "30", "reference": "order-1", "metadata": {"n": 1}}),
        ),
        (
            "metadata",
            json!({"amount": "30", "reference": "order-1", "to_user_id": b.id, "metadata": {"n": 2}}),
        ),
    ] {
        let r = create(&app, &a, other);
        assert_error(&r, 409, "reference_conflict", what);
    }
    assert_money(&app, &a, "USD", "100.00", "30.00", "70.00");
    assert_eq!(listed(&list(&app, &a, "")), set(&[&id_of(&first)]));

    let short = create(&app, &a, json!({"amount": "70.01", "reference": "order-2"}));
    assert_422(&short, "insufficient_funds", None, "beyond available");
    let ok = ok_hold(&app, &a, json!({"amount": "70", "reference": "order-2"}));
    assert_eq!(ok["amount"], "70.00");
    assert_money(&app, &a, "USD", "100.00", "100.00", "0.00");
}

#[test]
fn hold_references_expiries_and_recipients_are_validated() {
    // `hold:` references are reserved on every money route; a hold to oneself is 422; the
    // expiry must be 1 s..30 days (the default maximum). A refused request holds nothing and
    // keeps its reference free.
    let app = TestApp::spawn();
    let a = funded(&app, "payer", "100.00");
    let b = app.register(&name("payee"));
    for (path, body) in [
        (
            "/api/wallets/me/holds",
            json!({"amount": "1", "reference": "hold:x"}),
        ),
        (
            "/api/wallets/me/deposit",
            json!({"amount": "1", "reference": "hold:x"}),
        ),
        (
            "/api/wallets/me/withdraw",
            json!({"amount": "1", "reference": "hold:x"}),
        ),
        (
            "/api/wallets/me/transfer",
            json!({"amount": "1", "reference": "hold:x", "to_user_id": b.id}),
        ),
    ] {
        let r = app.post(path, &a.token, body);
        assert_422(&r, "validation_error", Some("reference"), path);
    }
    for (field, body) in [
        (
            "to_user_id",
            json!({"amount": "1", "reference": "x", "to_user_id": a.id}),
        ),
        (
            "to_username",
            json!({"amount": "1", "reference": "x", "to_username": a.username}),
        ),
        (
            "to_user_id",
            json!({"amount": "1", "reference": "x", "to_user_id": 999_999}),
        ),
        (
            "expires_in_s",
            json!({"amount": "1", "reference": "x", "expires_in_s": 0}),
        ),
        (
            "expires_in_s",
            json!({"amount": "1", "reference": "x", "expires_in_s": -1}),
        ),
        (
            "expires_in_s",
            json!({"amount": "1", "reference": "x", "expires_in_s": 2_592_001}),
        ),
        (
            "expires_in_s",
            json!({"amount": "1", "reference": "x", "expires_in_s": "soon"}),
        ),
        ("amount", json!({"amount": "0", "reference": "x"})),
        ("reference", json!({"amount": "1", "reference": ""})),
    ] {
        let r = create(&app, &a, body.clone());
        assert_422(&r, "validation_error", Some(field), &body.to_string());
    }
    assert_money(&app, &a, "USD", "100.00", "0.00", "100.00");

    let longest = ok_hold(
        &app,
        &a,
        json!({"amount": "1", "reference": "x", "expires_in_s": 2_592_000, "to_user_id": b.id}),
    );
    let lasts = ts_of(&longest, "expires_at").micros() - ts_of(&longest, "created_at").micros();
    assert!((lasts - 30 * DAY_MICROS).abs() <= 5_000_000, "{longest}");
    // An explicit expires_at is kept as given.
    let at = Timestamp::from_micros((app.clock().now().micros() / 1_000_000 + 3_600) * 1_000_000)
        .unwrap();
    let fixed = ok_hold(
        &app,
        &a,
        json!({"amount": "2", "reference": "y", "expires_at": at.to_text()}),
    );
    assert_eq!(ts_of(&fixed, "expires_at"), at, "{fixed}");
    assert_money(&app, &a, "USD", "100.00", "3.00", "97.00");
    assert_eq!(history(&app, &a).len(), 1, "refused requests wrote nothing");
}

// ---- Concurrency ----------------------------------------------------------------------------

#[test]
fn concurrent_withdrawals_transfers_and_holds_never_overcommit_available() {
    // 50 debits at once against 100.00: withdrawals, transfers and holds of 2.00..10.99. Each
    // is 201 or 422 insufficient_funds; the balance is 100.00 minus the withdrawals and
    // transfers that succeeded, held is the sum of the holds that succeeded, available never
    // goes below zero, and every refused amount was really more than was left.
    let app = TestApp::spawn();
    let a = funded(&app, "payer", "100.00");
    let b = app.register(&name("payee"));
    let n = 50;
    let barrier = Barrier::new(n);
    let results: Vec<(usize, i64, Resp)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (app, a, b, barrier) = (&app, &a, &b, &barrier);
                s.spawn(move || {
                    let amount = 200 + (i as i64 * 137) % 900;
                    let (path, body) = match i % 3 {
                        0 => (
                            "/api/wallets/me/withdraw",
                            json!({"amount": text(amount), "reference": format!("w{i}")}),
                        ),
                        1 => (
                            "/api/wallets/me/transfer",
                            json!({"amount": text(amount), "reference": format!("t{i}"), "to_user_id": b.id}),
                        ),
                        _ => (
                            "/api/wallets/me/holds",
                            json!({"amount": text(amount), "reference": format!("h{i}")}),
                        ),
                    };
                    barrier.wait();
                    (i, amount, app.post(path, &a.token, body))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (mut withdrawn, mut transferred, mut held, mut holds_ok) = (0i64, 0i64, 0i64, 0usize);
    let mut refused = Vec::new();
    for (i, amount, r) in &results {
        match r.status {
            201 => match i % 3 {
                0 => {
                    assert_eq!(r.body["type"], "WITHDRAWAL", "{}", r.body);
                    withdrawn += amount;
                }
                1 => {
                    assert_eq!(r.body["transfer_out"]["amount"], text(*amount).as_str());
                    transferred += amount;
                }
                _ => {
                    assert_eq!(r.body["status"], "HELD", "{}", r.body);
                    assert_eq!(r.body["amount"], text(*amount).as_str());
                    held += amount;
                    holds_ok += 1;
                }
            },
            422 => {
                assert_eq!(r.code(), "insufficient_funds", "{}", r.body);
                refused.push(*amount);
            }
            other => panic!("request {i}: {other} {}", r.body),
        }
    }
    assert!(
        !refused.is_empty(),
        "50 debits of ~6.50 cannot all fit in 100.00"
    );
    assert!(withdrawn + transferred + held > 0);
    let balance = 10_000 - withdrawn - transferred;
    let available = balance - held;
    assert!(available >= 0, "balance {balance}, held {held}");
    assert_money(
        &app,
        &a,
        "USD",
        &text(balance),
        &text(held),
        &text(available),
    );
    assert_money(
        &app,
        &b,
        "USD",
        &text(transferred),
        "0.00",
        &text(transferred),
    );
    // Available only went down during the burst, so each refusal saw at least what is left.
    for amount in &refused {
        assert!(
            *amount > available,
            "{} was refused but {} is still available",
            text(*amount),
            text(available)
        );
    }
    let r = list(&app, &a, "?status=HELD&role=payer");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["count"].as_u64(),
        Some(holds_ok as u64),
        "{}",
        r.body
    );
    assert_verified(&app);
}

#[test]
fn concurrent_captures_of_one_hold_move_money_once() {
    // 20 captures of one 50.00 hold at once, by its recipient, asking for the whole hold (by
    // omission, "50.00" or "50") or for 20.00: exactly one moves money; those asking for what
    // it captured replay (200 with the header), the others are 409 conflict.
    let app = TestApp::spawn();
    let a = funded(&app, "payer", "100.00");
    let b = app.register(&name("payee"));
    let id = id_of(&ok_hold(
        &app,
        &a,
        json!({"amount": "50", "reference": "one", "to_user_id": b.id}),
    ));
    let asks = |i: usize| -> (Value, i64) {
        match i % 4 {
            0 => (json!({}), 5_000),
            1 => (json!({"amount": "50.00"}), 5_000),
            2 => (json!({"amount": "50"}), 5_000),
            _ => (json!({"amount": "20.00"}), 2_000),
        }
    };
    let n = 20;
    let barrier = Barrier::new(n);
    let results: Vec<(i64, Resp)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (app, b, id, barrier) = (&app, &b, &id, &barrier);
                s.spawn(move || {
                    let (body, wanted) = asks(i);
                    barrier.wait();
                    (wanted, capture(app, b, id, body))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<&(i64, Resp)> = results
        .iter()
        .filter(|(_, r)| r.status == 200 && r.header("Idempotent-Replayed").is_none())
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "{:?}",
        results
            .iter()
            .map(|(_, r)| (r.status, r.body.clone()))
            .collect::<Vec<_>>()
    );
    let captured = winners[0].0;
    assert_eq!(
        winners[0].1.body["captured_amount"],
        text(captured).as_str()
    );
    for (wanted, r) in &results {
        if *wanted == captured {
            assert_eq!(r.status, 200, "asked for what was captured: {}", r.body);
            assert_eq!(r.body["status"], "CAPTURED");
            assert_eq!(r.body["captured_amount"], text(captured).as_str());
        } else {
            assert_error(r, 409, "conflict", "asked for another amount");
        }
    }
    assert_money(
        &app,
        &a,
        "USD",
        &text(10_000 - captured),
        "0.00",
        &text(10_000 - captured),
    );
    assert_money(&app, &b, "USD", &text(captured), "0.00", &text(captured));
    assert_eq!(entries_of_hold(&app, &a, &id).len(), 1, "one TRANSFER_OUT");
    assert_eq!(entries_of_hold(&app, &b, &id).len(), 1, "one TRANSFER_IN");
    assert_verified(&app);
}

// ---- Expiry ---------------------------------------------------------------------------------

#[test]
fn an_expired_hold_frees_held_and_can_no_longer_be_captured_or_voided() {
    // A 1 s hold: HELD whenever read before its time, then EXPIRED by the server itself (no
    // client call) within about a second, with held back to 0.00 and no entry; capture and
    // void are then 409.
    let app = TestApp::spawn();
    let a = funded(&app, "payer", "100.00");
    let b = app.register(&name("payee"));
    let h = ok_hold(
        &app,
        &a,
        json!({"amount": "40", "reference": "short", "to_user_id": b.id, "expires_in_s": 1}),
    );
    let id = id_of(&h);
    let expires = ts_of(&h, "expires_at");
    let lasts = expires.micros() - ts_of(&h, "created_at").micros();
    assert!((lasts - 1_000_000).abs() <= 500_000, "expires_in_s 1: {h}");
    assert_money(&app, &a, "USD", "100.00", "40.00", "60.00");
    let deadline = Instant::now() + Duration::from_secs(5);
    let expired = loop {
        let r = get_hold(&app, &a, &id);
        let received = app.clock().now();
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body["status"] != "HELD" {
            assert!(
                received >= expires,
                "not HELD in a reply received at {}, before its time: {}",
                received.to_text(),
                r.body
            );
            break r.body;
        }
        assert!(
            Instant::now() < deadline,
            "still HELD after 5 s: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_expired_on_time(&expired);
    assert_eq!(expired["id"], id.as_str());
    assert_money(&app, &a, "USD", "100.00", "0.00", "100.00");
    assert_money(&app, &b, "USD", "0.00", "0.00", "0.00");
    assert!(entries_of_hold(&app, &a, &id).is_empty());
    assert_eq!(history(&app, &a).len(), 1);
    assert_error(
        &capture(&app, &b, &id, json!({})),
        409,
        "conflict",
        "capture after expiry",
    );
    assert_error(&void(&app, &b, &id), 409, "conflict", "void after expiry");
    assert_eq!(listed(&list(&app, &a, "?status=EXPIRED")), set(&[&id]));
    assert_eq!(listed(&list(&app, &a, "?status=HELD")), none());
    let all = app.post(
        "/api/wallets/me/withdraw",
        &a.token,
        json!({"amount": "100", "reference": "all"}),
    );
    assert_eq!(
        all.status, 201,
        "the released money is available: {}",
        all.body
    );
    assert_verified(&app);
}

#[test]
fn a_capture_racing_the_expiry_ends_captured_or_expired_never_both() {
    // Seven 1 s holds, each captured by its payer at a moment around its expiry (60 ms before
    // to 60 ms after). Each ends CAPTURED (the capture 200, one WITHDRAWAL stamped before the
    // expiry) or EXPIRED (the capture 409, no entry), never both; a capture sent once the
    // server's clock had reached expires_at is refused, one answered before it succeeded; and
    // the balance moved by exactly the captured holds.
    let app = TestApp::spawn();
    let a = funded(&app, "payer", "100.00");
    const OFFSETS_MS: [i64; 7] = [-60, -20, -5, 0, 5, 20, 60];
    let holds: Vec<(String, i64, Timestamp)> = (0..OFFSETS_MS.len())
        .map(|i| {
            let amount = 100 * (i as i64 + 1);
            let h = ok_hold(
                &app,
                &a,
                json!({"amount": text(amount), "reference": format!("r{i}"), "expires_in_s": 1}),
            );
            (id_of(&h), amount, ts_of(&h, "expires_at"))
        })
        .collect();
    let results: Vec<(Timestamp, Timestamp, Resp)> = std::thread::scope(|s| {
        let handles: Vec<_> = holds
            .iter()
            .zip(OFFSETS_MS)
            .map(|((id, _, expires), offset)| {
                let (app, a) = (&app, &a);
                s.spawn(move || {
                    let target = expires.plus_millis(offset);
                    loop {
                        let left = target.micros() - app.clock().now().micros();
                        if left <= 0 {
                            break;
                        }
                        std::thread::sleep(Duration::from_micros(left as u64));
                    }
                    let sent = app.clock().now();
                    let r = capture(app, a, id, json!({}));
                    let received = app.clock().now();
                    (sent, received, r)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut captured = 0i64;
    for ((id, amount, expires), (sent, received, r)) in holds.iter().zip(&results) {
        let what = format!(
            "hold {id} expiring {}, capture sent {} answered {}: {} {}",
            expires.to_text(),
            sent.to_text(),
            received.to_text(),
            r.status,
            r.body
        );
        assert!(
            r.status == 200 || (r.status == 409 && r.code() == "conflict"),
            "{what}"
        );
        if *sent >= *expires {
            assert_eq!(r.status, 409, "sent at or after the expiry: {what}");
        }
        if received.plus_millis(2) < *expires {
            assert_eq!(r.status, 200, "answered before the expiry: {what}");
        }
        let last = wait_not_held(&app, &a, id, Duration::from_secs(5));
        let entries = entries_of_hold(&app, &a, id);
        if r.status == 200 {
            assert_eq!(last["status"], "CAPTURED", "{what}; now {last}");
            assert_eq!(last["captured_amount"], text(*amount).as_str(), "{last}");
            assert_eq!(entries.len(), 1, "{what}: {entries:?}");
            assert_eq!(last["transaction_ids"], json!([entries[0]["id"]]), "{last}");
            assert_eq!(entries[0]["type"], "WITHDRAWAL");
            assert!(
                ts_of(&entries[0], "created_at") < *expires,
                "captured after its expiry: {what}; entry {}",
                entries[0]
            );
            captured += amount;
        } else {
            assert_expired_on_time(&last);
            assert!(entries.is_empty(), "{what}: {entries:?}");
        }
    }
    let balance = text(10_000 - captured);
    assert_money(&app, &a, "USD", &balance, "0.00", &balance);
    assert_verified(&app);
}

#[test]
fn capture_is_refused_from_the_expiry_instant_on_the_servers_clock() {
    // On a manual clock: a capture 1 ms before expires_at succeeds; one 2 ms after it (even if
    // the expiry has not been processed yet) is 409 and moves nothing; so is a void.
    let clock = Arc::new(ManualClock::new(ts("2026-03-02T09:00:00Z")));
    let app = TestApp::spawn_with(|_| {}, clock.clone());
    let a = funded(&app, "payer", "100.00");
    let h1 = ok_hold(
        &app,
        &a,
        json!({"amount": "10", "reference": "h1", "expires_in_s": 60}),
    );
    let h2 = ok_hold(
        &app,
        &a,
        json!({"amount": "20", "reference": "h2", "expires_in_s": 120}),
    );
    let h3 = ok_hold(
        &app,
        &a,
        json!({"amount": "30", "reference": "h3", "expires_in_s": 120}),
    );
    assert_money(&app, &a, "USD", "100.00", "60.00", "40.00");
    let ms_until = |t: Timestamp| (t.micros() - clock.now().micros()).div_euclid(1_000);

    clock.advance_ms(ms_until(ts_of(&h1, "expires_at")) - 1);
    assert!(clock.now() < ts_of(&h1, "expires_at"));
    let c = capture(&app, &a, &id_of(&h1), json!({}));
    assert_eq!(c.status, 200, "1 ms before the expiry: {}", c.body);
    assert_eq!(c.body["status"], "CAPTURED");

    clock.advance_ms(ms_until(ts_of(&h2, "expires_at")) + 2);
    assert!(clock.now() > ts_of(&h2, "expires_at") && clock.now() > ts_of(&h3, "expires_at"));
    assert_error(
        &capture(&app, &a, &id_of(&h2), json!({})),
        409,
        "conflict",
        "2 ms after the expiry",
    );
    assert_error(
        &void(&app, &a, &id_of(&h3)),
        409,
        "conflict",
        "void after the expiry",
    );
    for h in [&h2, &h3] {
        let r = get_hold(&app, &a, &id_of(h));
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.body["status"] == "HELD" || r.body["status"] == "EXPIRED",
            "{}",
            r.body
        );
        assert_eq!(r.body["captured_amount"], Value::Null, "{}", r.body);
        assert!(entries_of_hold(&app, &a, &id_of(h)).is_empty());
    }
    assert_eq!(
        app.balance(&a),
        "90.00",
        "only the capture in time moved money"
    );
}

/// Stops the app's server and starts a new one on the same database, as after a restart.
fn restart(app: &mut TestApp) {
    app.stop();
    let mut config = Config::for_tests(app.target().clone());
    if app.on_postgres() {
        // As the harness does: each test's database shares the server's connections.
        config.serve.db_writers = 4;
    }
    let started = App::start_with(config, Arc::new(SystemClock), TestHooks::default())
        .expect("restart on the same database");
    app.base = format!("http://{}", started.addr);
    app.app = Some(started);
}

#[test]
fn holds_expire_across_a_restart() {
    // Two holds; the server stops at once. The first expires while no server runs and is
    // EXPIRED soon after the next start-up; the second expires on time under the new server.
    // Both release their money.
    let mut app = TestApp::spawn();
    let a = funded(&app, "payer", "100.00");
    let h1 = ok_hold(
        &app,
        &a,
        json!({"amount": "10", "reference": "h1", "expires_in_s": 1}),
    );
    let h2 = ok_hold(
        &app,
        &a,
        json!({"amount": "20", "reference": "h2", "expires_in_s": 2}),
    );
    assert_money(&app, &a, "USD", "100.00", "30.00", "70.00");
    app.stop();
    let resume_at = ts_of(&h1, "expires_at").plus_millis(300);
    loop {
        let left = resume_at.micros() - SystemClock.now().micros();
        if left <= 0 {
            break;
        }
        std::thread::sleep(Duration::from_micros(left as u64));
    }
    restart(&mut app);
    let started = app.clock().now();
    let first = wait_not_held(&app, &a, &id_of(&h1), Duration::from_secs(5));
    assert_eq!(first["status"], "EXPIRED", "{first}");
    assert_eq!(first["captured_amount"], Value::Null);
    let updated = ts_of(&first, "updated_at");
    assert!(updated >= ts_of(&h1, "expires_at"), "{first}");
    assert!(
        updated.micros() - started.micros() <= 2_000_000,
        "expired more than 2 s after start-up ({}): {first}",
        started.to_text()
    );
    let r = app.get("/api/wallets/me", &a.token);
    if app.clock().now() < ts_of(&h2, "expires_at") {
        let usd = r.body["balances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["currency"] == "USD")
            .cloned();
        assert_eq!(
            usd,
            Some(
                json!({"currency": "USD", "balance": "100.00", "held": "20.00", "available": "80.00"})
            ),
            "{}",
            r.body
        );
    }
    let second = wait_not_held(&app, &a, &id_of(&h2), Duration::from_secs(5));
    assert_expired_on_time(&second);
    assert_money(&app, &a, "USD", "100.00", "0.00", "100.00");
    assert_eq!(history(&app, &a).len(), 1);
    assert_verified(&app);
}

#[test]
fn a_scheduled_withdrawal_coming_due_needs_available_not_balance() {
    // Scheduled when the money was free, it comes due after a hold took most of it: it fails
    // at its time like any short withdrawal, and the held money stays reserved.
    let app = TestApp::spawn();
    let a = funded(&app, "sched", "100.00");
    // Well ahead of a loaded machine's request.
    let at = Timestamp::from_micros(app.clock().now().micros() + 800_000).unwrap();
    let w = app.post(
        "/api/wallets/me/withdraw",
        &a.token,
        json!({"amount": "80.00", "reference": "later", "scheduled_at": at.to_text()}),
    );
    assert_eq!(w.status, 202, "{}", w.body);
    ok_hold(&app, &a, json!({"amount": "50.00", "reference": "h"}));
    let id = w.body["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        let r = app.get(&format!("/api/wallets/me/withdrawals/{id}"), &a.token);
        if r.body["status"] != "PENDING" {
            break r.body;
        }
        assert!(Instant::now() < deadline, "never came due: {}", r.body);
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(done["status"], "FAILED", "{done}");
    assert!(
        done["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("available 50.00")),
        "{done}"
    );
    assert_money(&app, &a, "USD", "100.00", "50.00", "50.00");
    assert_verified(&app);
}

#[test]
fn verify_catches_held_money_out_of_step_with_the_holds() {
    // `held` is what the HELD holds reserve: raised or lowered by hand, `verify` says so.
    let app = TestApp::spawn();
    let a = funded(&app, "vh", "100.00");
    ok_hold(&app, &a, json!({"amount": "30.00", "reference": "h"}));
    assert_verified(&app);
    app.db()
        .execute("UPDATE balances SET held = held - 1", &[])
        .unwrap();
    let report = app.verify();
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.contains("HELD holds sum to 3000")),
        "{:?}",
        report.findings
    );
}
