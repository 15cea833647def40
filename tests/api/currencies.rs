//! Several currencies (part 2): one balance per currency in each wallet, money that never
//! crosses from one currency to another, amounts at each currency's own scale, references
//! unique across currencies, the part-1 shape kept for clients that name no currency, and
//! `balance?at=`, snapshots and `wallet verify` per currency.

use std::sync::Arc;

use ::wallet::clock::{Clock, ManualClock, SharedClock, SystemClock};
use ::wallet::domain::{Currencies, Timestamp};
use ::wallet::ledger::snapshot;
use serde_json::{json, Value};

use crate::helpers::{name, Resp, TestApp, User};

const CURRENCIES: &str = "USD:2,EUR:2,JPY:0";

fn ts(s: &str) -> Timestamp {
    Timestamp::parse(s).unwrap_or_else(|e| panic!("timestamp {s:?}: {e}"))
}

/// A server whose currencies are `spec`, the first being the default.
fn app_with(spec: &str, clock: SharedClock) -> TestApp {
    let currencies = Currencies::parse(spec, 1_000_000_000).expect("currencies");
    TestApp::spawn_with(move |c| c.currencies = currencies, clock)
}

/// USD (default, 2 digits), EUR (2 digits) and JPY (no fractions).
fn multi_app() -> TestApp {
    app_with(CURRENCIES, Arc::new(SystemClock))
}

/// POST a money route with an optional currency (None: the field is left out).
fn send(app: &TestApp, u: &User, route: &str, mut body: Value, currency: Option<&str>) -> Resp {
    if let Some(c) = currency {
        body["currency"] = json!(c);
    }
    app.post(&format!("/api/wallets/me/{route}"), &u.token, body)
}

fn deposit(app: &TestApp, u: &User, amount: &str, reference: &str, currency: Option<&str>) -> Resp {
    send(
        app,
        u,
        "deposit",
        json!({"amount": amount, "reference": reference}),
        currency,
    )
}

fn withdraw(
    app: &TestApp,
    u: &User,
    amount: &str,
    reference: &str,
    currency: Option<&str>,
) -> Resp {
    send(
        app,
        u,
        "withdraw",
        json!({"amount": amount, "reference": reference}),
        currency,
    )
}

fn transfer(
    app: &TestApp,
    from: &User,
    to: &User,
    amount: &str,
    reference: &str,
    currency: Option<&str>,
) -> Resp {
    send(
        app,
        from,
        "transfer",
        json!({"to_user_id": to.id, "amount": amount, "reference": reference}),
        currency,
    )
}

fn created(r: Resp, what: &str) -> Value {
    assert_eq!(r.status, 201, "{what}: {}", r.body);
    r.body
}

fn wallet(app: &TestApp, u: &User) -> Value {
    let r = app.get("/api/wallets/me", &u.token);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// One `balances` line with nothing held.
fn line(currency: &str, balance: &str, zero: &str) -> Value {
    json!({"currency": currency, "balance": balance, "held": zero, "available": balance})
}

fn balances(app: &TestApp, u: &User) -> Value {
    wallet(app, u)["balances"].clone()
}

fn history(app: &TestApp, u: &User, query: &str) -> Vec<Value> {
    let r = app.get(
        &format!("/api/wallets/me/transactions?limit=100{query}"),
        &u.token,
    );
    assert_eq!(r.status, 200, "{query}: {}", r.body);
    let results = r.body["results"].as_array().unwrap().clone();
    assert_eq!(
        r.body["count"].as_u64(),
        Some(results.len() as u64),
        "{}",
        r.body
    );
    results
}

fn assert_field_error(r: &Resp, field: &str, what: &str) {
    assert_eq!(
        (r.status, r.code()),
        (422, "validation_error"),
        "{what}: {}",
        r.body
    );
    assert!(
        r.body["error"]["fields"][field].is_array(),
        "{what}: fields.{field} in {}",
        r.body
    );
}

fn entry_count(app: &TestApp) -> i64 {
    app.db()
        .query_one("SELECT count(*) FROM entries", &[])
        .unwrap()
        .get(0)
        .unwrap()
}

#[test]
fn deposits_and_transfers_in_two_currencies_never_mix() {
    // USD and EUR side by side: each entry carries its currency and the balance after it in
    // that currency only; a EUR transfer credits the recipient in EUR; each currency's funds are
    // its own (100 EUR does not pay 1 USD); history and balance filter by currency.
    let app = multi_app();
    let (a, b, c) = (
        app.register(&name("a")),
        app.register(&name("b")),
        app.register(&name("c")),
    );
    let d = created(deposit(&app, &a, "100.00", "usd-1", None), "USD deposit");
    assert_eq!(
        (
            d["currency"].as_str(),
            d["amount"].as_str(),
            d["balance_after"].as_str()
        ),
        (Some("USD"), Some("100.00"), Some("100.00"))
    );
    let e = created(deposit(&app, &a, "50", "eur-1", Some("EUR")), "EUR deposit");
    assert_eq!(
        (
            e["currency"].as_str(),
            e["amount"].as_str(),
            e["balance_after"].as_str()
        ),
        (Some("EUR"), Some("50.00"), Some("50.00")),
        "the EUR balance, not 150.00"
    );
    let t = created(
        transfer(&app, &a, &b, "20.00", "t-eur", Some("EUR")),
        "EUR transfer",
    );
    assert_eq!(t["transfer_out"]["currency"], "EUR");
    assert_eq!(t["transfer_out"]["balance_after"], "30.00");
    assert_eq!(t["transfer_in"]["currency"], "EUR");
    assert_eq!(t["transfer_in"]["amount"], "20.00");
    assert_eq!(t["transfer_in"]["balance_after"], "20.00");
    let t = created(
        transfer(&app, &a, &b, "7.25", "t-usd", None),
        "USD transfer",
    );
    assert_eq!(
        (
            t["transfer_out"]["currency"].as_str(),
            t["transfer_out"]["balance_after"].as_str()
        ),
        (Some("USD"), Some("92.75"))
    );
    assert_eq!(
        (
            t["transfer_in"]["currency"].as_str(),
            t["transfer_in"]["balance_after"].as_str()
        ),
        (Some("USD"), Some("7.25"))
    );
    let t = created(
        transfer(&app, &b, &a, "2.50", "back", Some("EUR")),
        "EUR back",
    );
    assert_eq!(t["transfer_out"]["balance_after"], "17.50");
    assert_eq!(t["transfer_in"]["balance_after"], "32.50");

    assert_eq!(
        balances(&app, &a),
        json!([line("EUR", "32.50", "0.00"), line("USD", "92.75", "0.00")])
    );
    assert_eq!(
        balances(&app, &b),
        json!([line("EUR", "17.50", "0.00"), line("USD", "7.25", "0.00")])
    );
    let wa = wallet(&app, &a);
    assert_eq!(
        (wa["currency"].as_str(), wa["balance"].as_str()),
        (Some("USD"), Some("92.75"))
    );

    // Insufficient funds are per currency.
    let short = withdraw(&app, &b, "7.26", "w1", None);
    assert_eq!(
        (short.status, short.code()),
        (422, "insufficient_funds"),
        "{}",
        short.body
    );
    let short = withdraw(&app, &b, "17.51", "w2", Some("EUR"));
    assert_eq!(
        (short.status, short.code()),
        (422, "insufficient_funds"),
        "{}",
        short.body
    );
    let w = created(
        withdraw(&app, &b, "17.50", "w3", Some("EUR")),
        "all the EUR",
    );
    assert_eq!(
        (w["currency"].as_str(), w["balance_after"].as_str()),
        (Some("EUR"), Some("0.00"))
    );
    assert_eq!(
        balances(&app, &b),
        json!([line("EUR", "0.00", "0.00"), line("USD", "7.25", "0.00")])
    );
    created(deposit(&app, &c, "100", "eur", Some("EUR")), "c's EUR");
    for r in [
        withdraw(&app, &c, "1", "usd", None),
        withdraw(&app, &c, "1", "usd-explicit", Some("USD")),
        transfer(&app, &c, &a, "1", "usd-t", Some("USD")),
    ] {
        assert_eq!(
            (r.status, r.code()),
            (422, "insufficient_funds"),
            "{}",
            r.body
        );
    }
    assert_eq!(
        balances(&app, &c),
        json!([line("EUR", "100.00", "0.00"), line("USD", "0.00", "0.00")])
    );

    // History and balance per currency.
    let eur = history(&app, &a, "&currency=EUR");
    let kinds: Vec<(&str, &str, &str)> = eur
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["amount"].as_str().unwrap(),
                e["currency"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("TRANSFER_IN", "2.50", "EUR"),
            ("TRANSFER_OUT", "20.00", "EUR"),
            ("DEPOSIT", "50.00", "EUR"),
        ]
    );
    let usd = history(&app, &a, "&currency=USD");
    assert_eq!(usd.len(), 2);
    assert!(usd.iter().all(|e| e["currency"] == "USD"), "{usd:?}");
    assert_eq!(
        history(&app, &a, "").len(),
        5,
        "every currency without a filter"
    );
    assert!(history(&app, &a, "&currency=JPY").is_empty());
    let r = app.get("/api/wallets/me/balance?currency=EUR", &a.token);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.body["balance"].as_str(), r.body["currency"].as_str()),
        (Some("32.50"), Some("EUR"))
    );
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
}

#[test]
fn a_zero_scale_currency_refuses_fractions_and_shows_whole_units() {
    // JPY has no fractional digits: "1.5", "1500.0" and 1.5 are 422 on `amount` on every
    // money route, "1500" is shown "1500". Each currency shows its own scale.
    let app = multi_app();
    let (a, b) = (app.register(&name("a")), app.register(&name("b")));
    for amount in [json!("1.5"), json!("1500.0"), json!(1.5), json!("0.5")] {
        let r = send(
            &app,
            &a,
            "deposit",
            json!({"amount": amount, "reference": "frac"}),
            Some("JPY"),
        );
        assert_field_error(&r, "amount", &format!("JPY {amount}"));
    }
    assert_eq!(balances(&app, &a), json!([line("USD", "0.00", "0.00")]));
    let d = created(deposit(&app, &a, "1500", "y1", Some("JPY")), "JPY 1500");
    assert_eq!(
        (
            d["currency"].as_str(),
            d["amount"].as_str(),
            d["balance_after"].as_str()
        ),
        (Some("JPY"), Some("1500"), Some("1500"))
    );
    let d = created(
        send(
            &app,
            &a,
            "deposit",
            json!({"amount": 250, "reference": "y2"}),
            Some("JPY"),
        ),
        "JPY 250 as a number",
    );
    assert_eq!(
        (d["amount"].as_str(), d["balance_after"].as_str()),
        (Some("250"), Some("1750"))
    );
    assert_field_error(
        &withdraw(&app, &a, "0.5", "w", Some("JPY")),
        "amount",
        "JPY withdraw 0.5",
    );
    assert_field_error(
        &transfer(&app, &a, &b, "1.5", "t", Some("JPY")),
        "amount",
        "JPY transfer 1.5",
    );
    let w = created(withdraw(&app, &a, "750", "w", Some("JPY")), "JPY withdraw");
    assert_eq!(w["balance_after"], "1000");
    let t = created(
        transfer(&app, &a, &b, "1", "t", Some("JPY")),
        "JPY transfer",
    );
    assert_eq!(
        (
            t["transfer_out"]["balance_after"].as_str(),
            t["transfer_in"]["balance_after"].as_str()
        ),
        (Some("999"), Some("1"))
    );
    let usd = created(deposit(&app, &a, "12.5", "u", None), "USD 12.5");
    assert_eq!(usd["amount"], "12.50");
    assert_field_error(
        &deposit(&app, &a, "0.001", "e", Some("EUR")),
        "amount",
        "EUR 0.001",
    );
    assert_eq!(
        balances(&app, &a),
        json!([line("JPY", "999", "0"), line("USD", "12.50", "0.00")])
    );
    assert_eq!(
        balances(&app, &b),
        json!([line("JPY", "1", "0"), line("USD", "0.00", "0.00")])
    );
    let r = app.get("/api/wallets/me/balance?currency=JPY", &a.token);
    assert_eq!(
        (
            r.status,
            r.body["balance"].as_str(),
            r.body["currency"].as_str()
        ),
        (200, Some("999"), Some("JPY")),
        "{}",
        r.body
    );
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
}

#[test]
fn the_same_reference_in_another_currency_is_a_conflict() {
    // References are unique per wallet and kind across currencies: the same reference with
    // another currency is 409 reference_conflict naming the holder and moves nothing; naming
    // the default currency explicitly is the same payload as leaving it out (a replay).
    let app = multi_app();
    let (a, b) = (app.register(&name("a")), app.register(&name("b")));
    let first = created(deposit(&app, &a, "10.00", "r1", None), "USD r1");
    let other = deposit(&app, &a, "10.00", "r1", Some("EUR"));
    assert_eq!(
        (other.status, other.code()),
        (409, "reference_conflict"),
        "{}",
        other.body
    );
    let holder = other.body["error"]["fields"]["reference"][0]
        .as_str()
        .unwrap_or_else(|| panic!("fields.reference in {}", other.body));
    assert!(holder.contains(first["id"].as_str().unwrap()), "{holder}");
    let again = deposit(&app, &a, "10", "r1", Some("USD"));
    assert_eq!(
        (again.status, again.header("Idempotent-Replayed")),
        (200, Some("true")),
        "{}",
        again.body
    );
    assert_eq!(again.body, first);

    created(
        deposit(&app, &a, "50", "eur-fund", Some("EUR")),
        "EUR funds",
    );
    created(withdraw(&app, &a, "1.00", "w1", Some("EUR")), "EUR w1");
    let r = withdraw(&app, &a, "1.00", "w1", None);
    assert_eq!(
        (r.status, r.code()),
        (409, "reference_conflict"),
        "{}",
        r.body
    );
    created(transfer(&app, &a, &b, "2.00", "t1", Some("EUR")), "EUR t1");
    let r = transfer(&app, &a, &b, "2.00", "t1", Some("USD"));
    assert_eq!(
        (r.status, r.code()),
        (409, "reference_conflict"),
        "{}",
        r.body
    );
    let r = transfer(&app, &a, &b, "2.00", "t1", Some("EUR"));
    assert_eq!(
        (r.status, r.header("Idempotent-Replayed")),
        (200, Some("true")),
        "{}",
        r.body
    );

    assert_eq!(
        balances(&app, &a),
        json!([line("EUR", "47.00", "0.00"), line("USD", "10.00", "0.00")])
    );
    assert_eq!(
        balances(&app, &b),
        json!([line("EUR", "2.00", "0.00"), line("USD", "0.00", "0.00")])
    );
    assert_eq!(
        entry_count(&app),
        5,
        "the USD and EUR deposits, the EUR withdrawal and the two halves of the EUR transfer"
    );
}

#[test]
fn an_unknown_currency_is_422_naming_the_field_in_bodies_and_queries() {
    // A code the deployment does not list (well-formed or not) is 422 validation_error with
    // fields.currency on every money route and on the history and balance queries; nothing
    // moves. A single-currency deployment refuses EUR the same way.
    let app = multi_app();
    let (a, b) = (app.register(&name("a")), app.register(&name("b")));
    created(deposit(&app, &a, "10", "fund", None), "fund");
    for currency in [
        json!("GBP"),
        json!("eur"),
        json!(""),
        json!("EURO"),
        json!("US D"),
        json!(978),
    ] {
        for (route, body) in [
            ("deposit", json!({"amount": "1", "reference": "x"})),
            ("withdraw", json!({"amount": "1", "reference": "x"})),
            (
                "transfer",
                json!({"amount": "1", "reference": "x", "to_user_id": b.id}),
            ),
            ("holds", json!({"amount": "1", "reference": "x"})),
        ] {
            let mut body = body;
            body["currency"] = currency.clone();
            let r = app.post(&format!("/api/wallets/me/{route}"), &a.token, body);
            assert_field_error(&r, "currency", &format!("{route} in {currency}"));
        }
    }
    for query in [
        "/api/wallets/me/transactions?currency=GBP",
        "/api/wallets/me/transactions?currency=eur",
        "/api/wallets/me/balance?currency=GBP",
        "/api/wallets/me/balance?currency=usd",
    ] {
        let r = app.get(query, &a.token);
        assert_field_error(&r, "currency", query);
    }
    assert_eq!(entry_count(&app), 1);
    assert_eq!(balances(&app, &a), json!([line("USD", "10.00", "0.00")]));
    assert_eq!(balances(&app, &b), json!([line("USD", "0.00", "0.00")]));

    let single = TestApp::spawn();
    let u = single.register(&name("u"));
    assert_field_error(
        &deposit(&single, &u, "1", "x", Some("EUR")),
        "currency",
        "EUR unconfigured",
    );
    assert_field_error(
        &single.get("/api/wallets/me/balance?currency=EUR", &u.token),
        "currency",
        "balance in EUR unconfigured",
    );
    assert_field_error(
        &single.get("/api/wallets/me/transactions?currency=EUR", &u.token),
        "currency",
        "history in EUR unconfigured",
    );
    let ok = created(deposit(&single, &u, "1", "y", Some("USD")), "USD named");
    assert_eq!(ok["currency"], "USD");
}

#[test]
fn a_part_one_client_sees_the_default_currency_and_its_balance_as_before() {
    // A client that never sends `currency`: every entry is in the default currency, the wallet
    // keeps `currency` and `balance` (the default's), and money in other currencies does not
    // change them. The default is the first listed, whatever it is.
    let app = multi_app();
    let (a, b) = (app.register(&name("a")), app.register(&name("b")));
    let d = created(app.deposit(&a, "100", "d"), "deposit");
    assert_eq!(
        (d["currency"].as_str(), d["amount"].as_str()),
        (Some("USD"), Some("100.00"))
    );
    let w = created(
        app.post(
            "/api/wallets/me/withdraw",
            &a.token,
            json!({"amount": "10", "reference": "w"}),
        ),
        "withdraw",
    );
    assert_eq!(w["currency"], "USD");
    let t = created(
        app.post(
            "/api/wallets/me/transfer",
            &a.token,
            json!({"to_username": b.username, "amount": 5, "reference": "t"}),
        ),
        "transfer",
    );
    assert_eq!(
        (
            t["transfer_out"]["currency"].as_str(),
            t["transfer_in"]["currency"].as_str()
        ),
        (Some("USD"), Some("USD"))
    );
    let wa = wallet(&app, &a);
    for key in [
        "id",
        "user_id",
        "currency",
        "balance",
        "last_balance",
        "last_balance_update",
        "recent_transactions",
    ] {
        assert!(wa.get(key).is_some(), "{key} in {wa}");
    }
    assert_eq!(
        (wa["currency"].as_str(), wa["balance"].as_str()),
        (Some("USD"), Some("85.00"))
    );
    assert_eq!(wa["balances"], json!([line("USD", "85.00", "0.00")]));
    let recent = wa["recent_transactions"].as_array().unwrap();
    assert_eq!(recent.len(), 3);
    assert!(recent.iter().all(|e| e["currency"] == "USD"), "{recent:?}");
    assert_eq!(app.balance(&a), "85.00");
    assert_eq!(app.balance(&b), "5.00");
    let r = app.get("/api/wallets/me/balance", &a.token);
    assert_eq!(
        (r.status, r.body["balance"].as_str()),
        (200, Some("85.00")),
        "{}",
        r.body
    );
    assert!(r.body["at"].is_string(), "{}", r.body);

    // Money in another currency leaves what a part-1 client reads alone.
    created(deposit(&app, &a, "999", "eur", Some("EUR")), "EUR deposit");
    let wa = wallet(&app, &a);
    assert_eq!(
        (wa["currency"].as_str(), wa["balance"].as_str()),
        (Some("USD"), Some("85.00"))
    );
    assert_eq!(
        wa["balances"],
        json!([line("EUR", "999.00", "0.00"), line("USD", "85.00", "0.00")])
    );
    let r = app.get("/api/wallets/me/balance", &a.token);
    assert_eq!(r.body["balance"], "85.00", "{}", r.body);
    let short = app.post(
        "/api/wallets/me/withdraw",
        &a.token,
        json!({"amount": "85.01", "reference": "more"}),
    );
    assert_eq!(
        (short.status, short.code()),
        (422, "insufficient_funds"),
        "{}",
        short.body
    );

    // A single-currency deployment, as in part 1.
    let single = TestApp::spawn();
    let u = single.register(&name("u"));
    let d = created(single.deposit(&u, "12.5", "d"), "single");
    assert_eq!(
        (d["currency"].as_str(), d["amount"].as_str()),
        (Some("USD"), Some("12.50"))
    );
    let wu = wallet(&single, &u);
    assert_eq!(
        (wu["currency"].as_str(), wu["balance"].as_str()),
        (Some("USD"), Some("12.50"))
    );
    assert_eq!(wu["balances"], json!([line("USD", "12.50", "0.00")]));

    // The default is whichever is listed first.
    let euro = app_with("EUR:2,USD:2", Arc::new(SystemClock));
    let v = euro.register(&name("v"));
    let d = created(euro.deposit(&v, "3", "d"), "EUR default");
    assert_eq!(
        (d["currency"].as_str(), d["amount"].as_str()),
        (Some("EUR"), Some("3.00"))
    );
    let wv = wallet(&euro, &v);
    assert_eq!(
        (wv["currency"].as_str(), wv["balance"].as_str()),
        (Some("EUR"), Some("3.00"))
    );
    assert_eq!(wv["balances"], json!([line("EUR", "3.00", "0.00")]));
    let r = euro.get("/api/wallets/me/balance", &v.token);
    assert_eq!(
        (r.body["balance"].as_str(), r.body["currency"].as_str()),
        (Some("3.00"), Some("EUR")),
        "{}",
        r.body
    );
}

/// The signed amount of a transaction, in minor units (scale 2).
fn signed_minor(t: &Value) -> i64 {
    let text = t["amount"].as_str().unwrap();
    let (int, frac) = text
        .split_once('.')
        .unwrap_or_else(|| panic!("{text} at scale 2"));
    assert_eq!(frac.len(), 2, "{text}");
    let minor = int.parse::<i64>().unwrap() * 100 + frac.parse::<i64>().unwrap();
    match t["type"].as_str().unwrap() {
        "DEPOSIT" | "TRANSFER_IN" | "REFUND" => minor,
        "WITHDRAWAL" | "TRANSFER_OUT" => -minor,
        other => panic!("unknown type {other}"),
    }
}

fn minor_text(v: i64) -> String {
    assert!(v >= 0, "{v}");
    format!("{}.{:02}", v / 100, v % 100)
}

/// The balance in `currency` at `at` by replaying the entries (newest first): their sum up to
/// `at`, which must also be the balance_after of the last of them.
fn replay(entries: &[Value], currency: &str, at: Timestamp) -> String {
    let upto: Vec<&Value> = entries
        .iter()
        .filter(|e| e["currency"] == currency && ts(e["created_at"].as_str().unwrap()) <= at)
        .collect();
    let sum: i64 = upto.iter().map(|e| signed_minor(e)).sum();
    let last = upto.first().map_or("0.00".to_string(), |e| {
        e["balance_after"].as_str().unwrap().to_string()
    });
    assert_eq!(
        minor_text(sum),
        last,
        "{currency}: sum and balance_after disagree at {}",
        at.to_text()
    );
    last
}

#[test]
fn balance_at_any_moment_in_each_currency_agrees_with_a_replay_of_the_entries() {
    // USD and EUR movements a second apart, a snapshot in the middle: balance?at=&currency=
    // at, just before and between every entry, at the cut-off and now equals the replay of
    // that currency's entries (and the known figures); without `currency` it is USD. The
    // snapshot keeps one row per currency, and last_balance is the default currency's.
    let clock = Arc::new(ManualClock::new(ts("2026-01-05T10:00:00.000000Z")));
    let app = app_with(CURRENCIES, clock.clone());
    let (a, b) = (app.register(&name("a")), app.register(&name("b")));
    let wallet_a = wallet(&app, &a)["id"].as_str().unwrap().to_string();
    let wallet_b = wallet(&app, &b)["id"].as_str().unwrap().to_string();
    let mut stamps: Vec<Timestamp> = Vec::new();
    let mut step = |r: Resp, what: &str| {
        assert_eq!(r.status, 201, "{what}: {}", r.body);
        let stamp = r.body["created_at"]
            .as_str()
            .or(r.body["transfer_out"]["created_at"].as_str())
            .unwrap_or_else(|| panic!("{what}: no created_at in {}", r.body));
        stamps.push(ts(stamp));
        clock.advance_ms(1000);
    };
    clock.advance_ms(1000);
    step(deposit(&app, &a, "100.00", "d-usd", None), "a +100 USD");
    step(
        deposit(&app, &a, "50.00", "d-eur", Some("EUR")),
        "a +50 EUR",
    );
    step(
        transfer(&app, &a, &b, "20.00", "t1", Some("EUR")),
        "a -20 EUR to b",
    );
    step(withdraw(&app, &a, "10.50", "w1", None), "a -10.50 USD");
    step(
        transfer(&app, &b, &a, "5.25", "t2", Some("EUR")),
        "b -5.25 EUR to a",
    );
    let cut = clock.now();
    // The run's own transactions come after its cut-off, as they do in real time.
    clock.advance_ms(1);
    let report =
        snapshot::run(&app.app.as_ref().unwrap().service().writer, cut).expect("snapshot run");
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    clock.advance_ms(1000);
    step(
        transfer(&app, &a, &b, "0.01", "t3", None),
        "a -0.01 USD to b",
    );
    step(withdraw(&app, &a, "0.75", "w2", Some("EUR")), "a -0.75 EUR");
    step(
        deposit(&app, &a, "1.00", "d-eur-2", Some("EUR")),
        "a +1 EUR",
    );
    let now = clock.now();

    let entries = history(&app, &a, "");
    assert_eq!(entries.len(), 8, "{entries:?}");
    let mut points = vec![ts("2025-12-31T00:00:00Z"), cut, cut.plus_millis(1), now];
    for s in &stamps {
        points.extend([*s, s.plus_micros(-1), s.plus_millis(500)]);
    }
    for at in &points {
        let usd = replay(&entries, "USD", *at);
        for (query, currency, expected) in [
            ("", "USD", usd.clone()),
            ("&currency=USD", "USD", usd.clone()),
            ("&currency=EUR", "EUR", replay(&entries, "EUR", *at)),
        ] {
            let r = app.get(
                &format!("/api/wallets/me/balance?at={}{query}", at.to_text()),
                &a.token,
            );
            assert_eq!(r.status, 200, "at {}{query}: {}", at.to_text(), r.body);
            assert_eq!(
                r.body,
                json!({"balance": expected, "at": at.to_text(), "currency": currency}),
                "at {}{query}",
                at.to_text()
            );
        }
    }
    // The known figures, not only the replay.
    for (at, usd, eur) in [
        (stamps[0].plus_micros(-1), "0.00", "0.00"),
        (stamps[1], "100.00", "50.00"),
        (stamps[2], "100.00", "30.00"),
        (cut, "89.50", "35.25"),
        (now, "89.49", "35.50"),
    ] {
        for (currency, expected) in [("USD", usd), ("EUR", eur)] {
            let r = app.get(
                &format!(
                    "/api/wallets/me/balance?at={}&currency={currency}",
                    at.to_text()
                ),
                &a.token,
            );
            assert_eq!(
                r.body["balance"],
                expected,
                "{currency} at {}",
                at.to_text()
            );
        }
    }
    let r = app.get(
        &format!("/api/wallets/me/balance?at={}&currency=EUR", cut.to_text()),
        &b.token,
    );
    assert_eq!(r.body["balance"], "14.75", "{}", r.body);

    // The snapshot: one row per wallet and currency, exact.
    let row = |wallet_id: &str, currency: &str| -> Vec<(i64, i64)> {
        app.db()
            .query(
                "SELECT balance, running FROM balance_snapshots
                 WHERE wallet_id = ?1 AND currency = ?2 AND run_id = ?3",
                &[&wallet_id, &currency, &report.run_id],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0).unwrap(), r.get(1).unwrap()))
            .collect()
    };
    assert_eq!(row(&wallet_a, "USD"), vec![(8_950, 8_950)]);
    assert_eq!(row(&wallet_a, "EUR"), vec![(3_525, 3_525)]);
    assert_eq!(row(&wallet_b, "EUR"), vec![(1_475, 1_475)]);
    assert!(
        row(&wallet_a, "JPY").is_empty(),
        "a wallet with no JPY has no JPY row"
    );
    let wa = wallet(&app, &a);
    assert_eq!(
        (
            wa["last_balance"].as_str(),
            wa["last_balance_update"].as_str()
        ),
        (Some("89.50"), Some(cut.to_text().as_str())),
        "last_balance is the default currency's"
    );
    assert_eq!(
        wa["balances"],
        json!([line("EUR", "35.50", "0.00"), line("USD", "89.49", "0.00")])
    );
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
}

#[test]
fn verify_catches_a_tampered_entry_in_a_non_default_currency() {
    // A ledger with USD and EUR verifies; then one EUR entry is rewritten behind the ledger's
    // back: its amount changed, or its currency changed to USD. Either way verify fails.
    for (what, tamper) in [
        (
            "amount",
            "UPDATE entries SET amount = amount + 100 WHERE id = ?1",
        ),
        (
            "currency",
            "UPDATE entries SET currency = 'USD' WHERE id = ?1",
        ),
    ] {
        let app = multi_app();
        let (a, b) = (app.register(&name("a")), app.register(&name("b")));
        created(deposit(&app, &a, "10.00", "usd", None), "USD");
        let eur = created(deposit(&app, &a, "50.00", "eur", Some("EUR")), "EUR");
        created(
            transfer(&app, &a, &b, "20.00", "t", Some("EUR")),
            "EUR transfer",
        );
        created(deposit(&app, &a, "1.00", "usd-2", None), "USD again");
        // Verify first: on PostgreSQL this also seals every entry into the chain, so the
        // tampering rewrites history, not an entry still waiting for its hash.
        let report = app.verify();
        assert!(
            report.ok(),
            "{what}: before tampering: {:?}",
            report.findings
        );
        let id = eur["id"].as_str().unwrap().to_string();
        let changed = app
            .db_rewriting_history()
            .execute(tamper, &[&id])
            .unwrap_or_else(|e| panic!("{tamper}: {e:?}"));
        assert_eq!(changed, 1, "{tamper}");
        let report = app.verify();
        assert!(
            !report.ok(),
            "{what} of a EUR entry changed, yet verify passed"
        );
        assert!(!report.findings.is_empty(), "{what}: {:?}", report.findings);
    }
}
