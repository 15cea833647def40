//! Staff tools (part 2): freezing a wallet, the audit log as an API, and the rules they share:
//! every action takes a reason and is audited, and no staff member acts on their own wallet.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{name, staff_user, Resp, TestApp, User};

fn funded(app: &TestApp, prefix: &str, amount: &str) -> User {
    let u = app.register(&name(prefix));
    assert_eq!(app.deposit(&u, amount, "fund").status, 201);
    u
}

fn freeze(app: &TestApp, staff: &User, who: &User, body: Value) -> Resp {
    app.post(
        &format!("/api/admin/users/{}/freeze", who.id),
        &staff.token,
        body,
    )
}

fn unfreeze(app: &TestApp, staff: &User, who: &User, body: Value) -> Resp {
    app.post(
        &format!("/api/admin/users/{}/unfreeze", who.id),
        &staff.token,
        body,
    )
}

fn assert_frozen_error(r: &Resp, what: &str) {
    assert_eq!(
        (r.status, r.code()),
        (403, "wallet_frozen"),
        "{what}: {}",
        r.body
    );
}

fn audit(app: &TestApp, staff: &User, query: &str) -> Value {
    let r = app.get(&format!("/api/admin/audit{query}"), &staff.token);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

#[test]
fn a_frozen_wallet_receives_money_but_sends_none() {
    let app = TestApp::spawn();
    let staff = staff_user(&app);
    let a = funded(&app, "frz", "100.00");
    let b = funded(&app, "other", "50.00");
    // A hold made to `a` before the freeze, and one `a` made to `b`.
    let promise = app.post(
        "/api/wallets/me/holds",
        &a.token,
        json!({"amount": "10.00", "reference": "to-b", "to_user_id": b.id}),
    );
    assert_eq!(promise.status, 201, "{}", promise.body);
    let r = freeze(&app, &staff, &a, json!({"reason": "card reported stolen"}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["frozen"], true, "{}", r.body);
    assert_eq!(r.body["frozen_reason"], "card reported stolen");
    assert_eq!(r.body["id"], a.id);

    // Every debit `a` starts is refused, and changes nothing.
    let attempts = [
        (
            "/api/wallets/me/withdraw",
            json!({"amount": "1.00", "reference": "w"}),
        ),
        (
            "/api/wallets/me/transfer",
            json!({"amount": "1.00", "reference": "t", "to_user_id": b.id}),
        ),
        (
            "/api/wallets/me/holds",
            json!({"amount": "1.00", "reference": "h"}),
        ),
    ];
    for (path, body) in attempts {
        assert_frozen_error(&app.post(path, &a.token, body), path);
    }
    // A recipient capturing a hold from the frozen payer is refused the same way.
    let capture = app.post(
        &format!(
            "/api/wallets/me/holds/{}/capture",
            promise.body["id"].as_str().unwrap()
        ),
        &b.token,
        json!({}),
    );
    assert_frozen_error(&capture, "capture of the frozen payer's hold");
    // Money still arrives.
    assert_eq!(app.deposit(&a, "5.00", "in").status, 201);
    let sent = app.post(
        "/api/wallets/me/transfer",
        &b.token,
        json!({"amount": "2.00", "reference": "to-a", "to_user_id": a.id}),
    );
    assert_eq!(sent.status, 201, "{}", sent.body);
    assert_eq!(app.balance(&a), "107.00");
    // The user still reads everything.
    assert_eq!(app.get("/api/wallets/me", &a.token).status, 200);

    let r = unfreeze(&app, &staff, &a, json!({"reason": "card found"}));
    assert_eq!(
        (r.status, &r.body["frozen"]),
        (200, &json!(false)),
        "{}",
        r.body
    );
    let w = app.post(
        "/api/wallets/me/withdraw",
        &a.token,
        json!({"amount": "1.00", "reference": "w"}),
    );
    assert_eq!(
        w.status, 201,
        "the refused reference was not consumed: {}",
        w.body
    );
    assert_eq!(app.balance(&a), "106.00");
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
}

#[test]
fn a_scheduled_withdrawal_coming_due_on_a_frozen_wallet_fails_with_the_reason() {
    let app = TestApp::spawn();
    let staff = staff_user(&app);
    let a = funded(&app, "sched", "100.00");
    let at = wallet::domain::Timestamp::from_micros(app.clock().now().micros() + 800_000).unwrap();
    let w = app.post(
        "/api/wallets/me/withdraw",
        &a.token,
        json!({"amount": "30.00", "reference": "later", "scheduled_at": at.to_text()}),
    );
    assert_eq!(w.status, 202, "{}", w.body);
    assert_eq!(
        freeze(&app, &staff, &a, json!({"reason": "investigation"})).status,
        200
    );
    let id = w.body["id"].as_str().unwrap();
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
            .is_some_and(|m| m.contains("wallet_frozen")),
        "{done}"
    );
    assert_eq!(app.balance(&a), "100.00");
}

#[test]
fn a_currency_first_credited_while_frozen_is_frozen_too() {
    // A balance created after the freeze (the wallet's first EUR) copies the wallet's state.
    let app = TestApp::spawn_with(
        |c| {
            c.currencies = wallet::domain::Currencies::parse("USD:2,EUR:2", 1_000_000_000).unwrap();
        },
        std::sync::Arc::new(wallet::clock::SystemClock),
    );
    let staff = staff_user(&app);
    let a = funded(&app, "eur", "1.00");
    assert_eq!(freeze(&app, &staff, &a, json!({"reason": "r"})).status, 200);
    let d = app.post(
        "/api/wallets/me/deposit",
        &a.token,
        json!({"amount": "9.00", "currency": "EUR", "reference": "eur"}),
    );
    assert_eq!(d.status, 201, "{}", d.body);
    let w = app.post(
        "/api/wallets/me/withdraw",
        &a.token,
        json!({"amount": "1.00", "currency": "EUR", "reference": "w"}),
    );
    assert_frozen_error(&w, "EUR withdrawal");
}

#[test]
fn staff_actions_need_a_reason_staff_and_someone_else() {
    let app = TestApp::spawn();
    let staff = staff_user(&app);
    let a = funded(&app, "who", "10.00");
    // No reason, a blank one, or one of 501 characters: 422 naming it.
    for body in [
        json!({}),
        json!({"reason": "  "}),
        json!({"reason": "x".repeat(501)}),
    ] {
        let r = freeze(&app, &staff, &a, body.clone());
        assert_eq!(
            (r.status, r.code()),
            (422, "validation_error"),
            "{body}: {}",
            r.body
        );
        assert!(r.body["error"]["fields"]["reason"].is_array(), "{}", r.body);
    }
    // A user who is not staff: 403, and nothing is frozen.
    let r = freeze(&app, &a, &a, json!({"reason": "me"}));
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{}", r.body);
    // Staff can't freeze, unfreeze or credit their own wallet.
    for r in [
        freeze(&app, &staff, &staff, json!({"reason": "self"})),
        unfreeze(&app, &staff, &staff, json!({"reason": "self"})),
        app.post(
            &format!("/api/admin/users/{}/credit", staff.id),
            &staff.token,
            json!({"amount": "1.00", "reference": "self", "reason": "self"}),
        ),
    ] {
        assert_eq!((r.status, r.code()), (403, "forbidden"), "{}", r.body);
    }
    // An unknown user: 404.
    let ghost = User {
        id: 999_999,
        ..a.clone()
    };
    let r = freeze(&app, &staff, &ghost, json!({"reason": "r"}));
    assert_eq!((r.status, r.code()), (404, "not_found"), "{}", r.body);
    // Nothing was frozen, nothing audited but nothing at all.
    assert_eq!(
        app.post(
            "/api/wallets/me/withdraw",
            &a.token,
            json!({"amount": "1.00", "reference": "still-free"}),
        )
        .status,
        201
    );
    assert_eq!(audit(&app, &staff, "")["count"], 0);
}

#[test]
fn the_audit_log_records_every_staff_action_with_its_reason_and_is_append_only() {
    let app = TestApp::spawn();
    let staff = staff_user(&app);
    let a = funded(&app, "aud", "10.00");
    assert_eq!(
        freeze(&app, &staff, &a, json!({"reason": "first"})).status,
        200
    );
    assert_eq!(
        unfreeze(&app, &staff, &a, json!({"reason": "second"})).status,
        200
    );
    let credit = app.post(
        &format!("/api/admin/users/{}/credit", a.id),
        &staff.token,
        json!({"amount": "3.00", "reference": "c1", "reason": "goodwill"}),
    );
    assert_eq!(credit.status, 201, "{}", credit.body);
    // Part 1's credit without a reason still works, and is audited without one.
    let plain = app.post(
        &format!("/api/admin/users/{}/credit", a.id),
        &staff.token,
        json!({"amount": "1.00", "reference": "c2"}),
    );
    assert_eq!(plain.status, 201, "{}", plain.body);
    assert_eq!(
        app.get(&format!("/api/admin/users/{}", a.id), &staff.token)
            .status,
        200
    );
    let all = audit(&app, &staff, "");
    let rows = all["results"].as_array().unwrap();
    let seen: Vec<(&str, &str, Value)> = rows
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["target"].as_str().unwrap(),
                r["reason"].clone(),
            )
        })
        .collect();
    let target = format!("user:{}", a.id);
    assert_eq!(
        seen,
        vec![
            ("read_user", target.as_str(), Value::Null),
            ("credit", target.as_str(), Value::Null),
            ("credit", target.as_str(), json!("goodwill")),
            ("unfreeze", target.as_str(), json!("second")),
            ("freeze", target.as_str(), json!("first")),
        ],
        "newest first: {all}"
    );
    assert!(rows.iter().all(|r| r["staff_user_id"] == staff.id));
    assert_eq!(rows[2]["detail"]["entry_id"], credit.body["id"]);
    // Filters and paging.
    let by_target = audit(&app, &staff, &format!("?target=user:{}&limit=2", a.id));
    assert_eq!(
        (
            by_target["count"].clone(),
            by_target["results"].as_array().unwrap().len()
        ),
        (json!(5), 2)
    );
    assert_eq!(audit(&app, &staff, "?target=user:0")["count"], 0);
    assert_eq!(
        audit(&app, &staff, &format!("?staff_user_id={}", a.id))["count"],
        0
    );
    let bad = app.get("/api/admin/audit?staff_user_id=x", &staff.token);
    assert_eq!(
        (bad.status, bad.code()),
        (422, "validation_error"),
        "{}",
        bad.body
    );
    // Only staff read it.
    let r = app.get("/api/admin/audit", &a.token);
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    // The database refuses to rewrite or remove a row.
    let db = app.db();
    assert!(db
        .execute("UPDATE audit_log SET reason = 'x'", &[])
        .is_err());
    assert!(db.execute("DELETE FROM audit_log", &[]).is_err());
    assert_eq!(audit(&app, &staff, "")["count"], 5);
}

/// The CSV body of a response, split into its CRLF-ended lines.
fn csv_lines(r: &Resp) -> Vec<String> {
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("Content-Type")
            .is_some_and(|t| t.starts_with("text/csv")),
        "{:?}",
        r.headers
    );
    let text = r.body.as_str().expect("a CSV body");
    assert!(text.ends_with("\r\n"), "CRLF line ends");
    assert!(!text.replace("\r\n", "").contains('\n'), "no bare LF");
    text.split_terminator("\r\n").map(str::to_string).collect()
}

#[test]
fn a_csv_export_has_every_row_newest_first_and_defuses_formulas() {
    // More rows than one page of the stream (500), a reference a spreadsheet would run as a
    // formula, and metadata with commas and quotes.
    let app = TestApp::spawn();
    let a = app.register(&name("csv"));
    let b = app.register(&name("csvb"));
    let first = app.post(
        "/api/wallets/me/deposit",
        &a.token,
        json!({"amount": "7.00", "reference": "=HYPERLINK(\"http://evil\",\"x\")",
               "metadata": {"note": "a, \"quoted\" note"}}),
    );
    assert_eq!(first.status, 201, "{}", first.body);
    for i in 0..520 {
        assert_eq!(app.deposit(&a, "0.01", &format!("d{i}")).status, 201);
    }
    let sent = app.post(
        "/api/wallets/me/transfer",
        &a.token,
        json!({"amount": "1.00", "reference": "-5", "to_user_id": b.id}),
    );
    assert_eq!(sent.status, 201);
    let lines = csv_lines(&app.get("/api/wallets/me/transactions.csv", &a.token));
    assert_eq!(
        lines[0],
        "id,type,amount,currency,balance_after,reference,counterparty_user_id,created_at,metadata"
    );
    assert_eq!(lines.len(), 1 + 522, "header and every entry");
    // Newest first, as the JSON list.
    let newest = app.get("/api/wallets/me/transactions?limit=3", &a.token);
    for (i, e) in newest.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        assert!(
            lines[1 + i].starts_with(e["id"].as_str().unwrap()),
            "{}",
            lines[1 + i]
        );
    }
    // The transfer: its reference defused, the counterparty named.
    assert_eq!(
        lines[1],
        format!(
            "{},TRANSFER_OUT,1.00,USD,11.20,'-5,{},{},{{}}",
            sent.body["transfer_out"]["id"].as_str().unwrap(),
            b.id,
            sent.body["transfer_out"]["created_at"].as_str().unwrap()
        )
    );
    // The first deposit: formula defused inside its quotes, quotes doubled, commas quoted.
    assert_eq!(
        lines[522],
        format!(
            "{},DEPOSIT,7.00,USD,7.00,\"'=HYPERLINK(\"\"http://evil\"\",\"\"x\"\")\",,{},\"{{\"\"note\"\":\"\"a, \\\"\"quoted\\\"\" note\"\"}}\"",
            first.body["id"].as_str().unwrap(),
            first.body["created_at"].as_str().unwrap()
        )
    );
    // The list's filters apply; paging parameters do not cut the export.
    let transfers = csv_lines(&app.get(
        "/api/wallets/me/transactions.csv?type=TRANSFER_OUT&limit=1",
        &a.token,
    ));
    assert_eq!(transfers.len(), 2);
    let bad = app.get("/api/wallets/me/transactions.csv?type=NOPE", &a.token);
    assert_eq!(
        (bad.status, bad.code()),
        (422, "validation_error"),
        "{}",
        bad.body
    );
    // b sees only b's.
    assert_eq!(
        csv_lines(&app.get("/api/wallets/me/transactions.csv", &b.token)).len(),
        2
    );
}

#[test]
fn staff_export_any_users_history_and_the_export_is_audited() {
    let app = TestApp::spawn();
    let staff = staff_user(&app);
    let a = funded(&app, "exp", "3.00");
    let path = format!("/api/admin/users/{}/transactions.csv", a.id);
    let lines = csv_lines(&app.get(&path, &staff.token));
    assert_eq!(lines.len(), 2);
    assert!(
        lines[1].contains(",DEPOSIT,3.00,USD,3.00,fund,"),
        "{}",
        lines[1]
    );
    let r = app.get(&path, &a.token);
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    let log = audit(&app, &staff, &format!("?target=user:{}", a.id));
    assert_eq!(log["results"][0]["action"], "export_transactions", "{log}");
}

#[test]
fn a_frozen_wallet_cannot_schedule_and_a_freeze_is_not_repeated() {
    let app = TestApp::spawn();
    let staff = staff_user(&app);
    let a = funded(&app, "twice", "10.00");
    assert_eq!(
        freeze(&app, &staff, &a, json!({"reason": "one"})).status,
        200
    );
    let again = freeze(&app, &staff, &a, json!({"reason": "two"}));
    assert_eq!(
        (again.status, again.code()),
        (409, "conflict"),
        "{}",
        again.body
    );
    let user = app.get(&format!("/api/admin/users/{}", a.id), &staff.token);
    assert_eq!(
        user.body["frozen_reason"], "one",
        "the first freeze is kept: {}",
        user.body
    );
    let at =
        wallet::domain::Timestamp::from_micros(app.clock().now().micros() + 3_600_000_000).unwrap();
    let w = app.post(
        "/api/wallets/me/withdraw",
        &a.token,
        json!({"amount": "1.00", "reference": "later", "scheduled_at": at.to_text()}),
    );
    assert_frozen_error(&w, "a scheduled withdrawal");
    assert_eq!(
        unfreeze(&app, &staff, &a, json!({"reason": "ok"})).status,
        200
    );
    let again = unfreeze(&app, &staff, &a, json!({"reason": "ok"}));
    assert_eq!(
        (again.status, again.code()),
        (409, "conflict"),
        "{}",
        again.body
    );
    // Audited once each: the refused repeats wrote nothing.
    let log = audit(&app, &staff, &format!("?target=user:{}", a.id));
    let actions: Vec<&str> = log["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["unfreeze", "read_user", "freeze"], "{log}");
}
