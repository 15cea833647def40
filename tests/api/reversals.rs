//! Staff reversals (part 2): a deposit, a paid withdrawal or a transfer undone by new entries
//! that name it, at most once, never overdrawing anyone, never for oneself, always audited.

use serde_json::{json, Value};

use crate::helpers::{name, staff_user, Resp, TestApp, User};

fn funded(app: &TestApp, prefix: &str, amount: &str) -> User {
    let u = app.register(&name(prefix));
    assert_eq!(app.deposit(&u, amount, "fund").status, 201);
    u
}

fn reverse(app: &TestApp, staff: &User, id: &str, body: Value) -> Resp {
    app.post(
        &format!("/api/admin/transactions/{id}/reverse"),
        &staff.token,
        body,
    )
}

fn reason(reference: &str) -> Value {
    json!({"reason": "made in error, ticket 4411", "reference": reference})
}

/// The user's entries, newest first.
fn history(app: &TestApp, u: &User) -> Vec<Value> {
    let r = app.get("/api/wallets/me/transactions?limit=100", &u.token);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["results"].as_array().unwrap().clone()
}

fn entry_id(app: &TestApp, u: &User, kind: &str) -> String {
    history(app, u)
        .iter()
        .find(|e| e["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} entry"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn transfer(app: &TestApp, from: &User, to: &User, amount: &str, reference: &str) -> Resp {
    app.post(
        "/api/wallets/me/transfer",
        &from.token,
        json!({"amount": amount, "reference": reference, "to_user_id": to.id}),
    )
}

fn audit_rows(app: &TestApp, staff: &User, target: &str) -> Vec<Value> {
    let r = app.get(&format!("/api/admin/audit?target={target}"), &staff.token);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["results"].as_array().unwrap().clone()
}

fn assert_verified(app: &TestApp) {
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
}

#[test]
fn reversals_of_a_deposit_take_it_back_once_and_replay() {
    let app = TestApp::spawn();
    let staff = staff_user(&app);
    let u = funded(&app, "rvd", "100.00");
    let deposit = entry_id(&app, &u, "DEPOSIT");

    let r = reverse(&app, &staff, &deposit, reason("rv-1"));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        (&r.body["type"], &r.body["amount"], &r.body["balance_after"]),
        (&json!("REVERSAL_OUT"), &json!("100.00"), &json!("0.00")),
        "{}",
        r.body
    );
    assert_eq!(r.body["reverses"], deposit.as_str());
    assert_eq!(r.body["reference"], "rv-1");
    assert_eq!(app.balance(&u), "0.00");
    // The user sees it in their history, naming what it reverses; the deposit is unchanged.
    let h = history(&app, &u);
    assert_eq!(h.len(), 2);
    assert_eq!(h[0]["type"], "REVERSAL_OUT");
    assert_eq!(h[0]["reverses"], deposit.as_str());
    assert_eq!(h[1]["id"], deposit.as_str());
    assert!(h[1].get("reverses").is_none(), "{}", h[1]);

    // The same reference replays; another is a conflict; neither moves money.
    let again = reverse(&app, &staff, &deposit, reason("rv-1"));
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(again.body["id"], r.body["id"]);
    let other = reverse(&app, &staff, &deposit, reason("rv-2"));
    assert_eq!(
        (other.status, other.code()),
        (409, "conflict"),
        "{}",
        other.body
    );
    assert_eq!(app.balance(&u), "0.00");
    assert_eq!(history(&app, &u).len(), 2);

    // One audit row, with the reason, for the one reversal that moved money.
    let rows = audit_rows(&app, &staff, &format!("transaction:{deposit}"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["action"], "reverse");
    assert_eq!(rows[0]["reason"], "made in error, ticket 4411");
    assert_eq!(rows[0]["staff_user_id"], staff.id);
    assert_eq!(rows[0]["detail"]["entry_ids"], json!([r.body["id"]]));
    assert_verified(&app);
}

#[test]
fn reversals_of_a_transfer_move_it_back_whichever_half_is_named() {
    let app = TestApp::spawn();
    let staff = staff_user(&app);
    let a = funded(&app, "rvta", "100.00");
    let b = funded(&app, "rvtb", "5.00");
    assert_eq!(transfer(&app, &a, &b, "30.00", "pay").status, 201);
    let incoming = entry_id(&app, &b, "TRANSFER_IN");
    let outgoing = entry_id(&app, &a, "TRANSFER_OUT");

    let r = reverse(&app, &staff, &incoming, reason("rv-t"));
    assert_eq!(r.status, 201, "{}", r.body);
    let (out, inn) = (&r.body["reversal_out"], &r.body["reversal_in"]);
    assert_eq!(
        (
            &out["type"],
            &out["amount"],
            &out["reverses"],
            &out["counterparty_user_id"]
        ),
        (
            &json!("REVERSAL_OUT"),
            &json!("30.00"),
            &json!(incoming),
            &json!(a.id)
        ),
        "{}",
        r.body
    );
    assert_eq!(
        (
            &inn["type"],
            &inn["amount"],
            &inn["reverses"],
            &inn["counterparty_user_id"]
        ),
        (
            &json!("REVERSAL_IN"),
            &json!("30.00"),
            &json!(outgoing),
            &json!(b.id)
        ),
        "{}",
        r.body
    );
    assert_eq!(
        (app.balance(&a), app.balance(&b)),
        ("100.00".into(), "5.00".into())
    );

    // The other half names the same transfer: replayed with the reference, else 409.
    let again = reverse(&app, &staff, &outgoing, reason("rv-t"));
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["reversal_out"]["id"], out["id"]);
    assert_eq!(again.body["reversal_in"]["id"], inn["id"]);
    let other = reverse(&app, &staff, &outgoing, reason("rv-t2"));
    assert_eq!(
        (other.status, other.code()),
        (409, "conflict"),
        "{}",
        other.body
    );
    assert_eq!(
        (app.balance(&a), app.balance(&b)),
        ("100.00".into(), "5.00".into())
    );
    assert_verified(&app);
}

#[test]
fn reversals_of_an_immediate_withdrawal_give_it_back() {
    let app = TestApp::spawn();
    let staff = staff_user(&app);
    let u = funded(&app, "rvw", "50.00");
    let w = app.post(
        "/api/wallets/me/withdraw",
        &u.token,
        json!({"amount": "20.00", "reference": "atm"}),
    );
    assert_eq!(w.status, 201, "{}", w.body);
    let r = reverse(&app, &staff, w.body["id"].as_str().unwrap(), reason("rv-w"));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        (
            &r.body["type"],
            &r.body["balance_after"],
            &r.body["reverses"]
        ),
        (&json!("REVERSAL_IN"), &json!("50.00"), &w.body["id"]),
        "{}",
        r.body
    );
    assert_eq!(app.balance(&u), "50.00");
    assert_verified(&app);
}

#[test]
fn reversals_never_overdraw_and_reach_a_frozen_wallet() {
    let app = TestApp::spawn();
    let staff = staff_user(&app);
    let a = funded(&app, "rvoa", "100.00");
    let b = funded(&app, "rvob", "10.00");
    assert_eq!(transfer(&app, &a, &b, "40.00", "pay").status, 201);
    // `b` holds 15.00 of its 50.00: the 40.00 is there, but only 35.00 of it is available.
    let hold = app.post(
        "/api/wallets/me/holds",
        &b.token,
        json!({"amount": "15.00", "reference": "h"}),
    );
    assert_eq!(hold.status, 201, "{}", hold.body);
    let incoming = entry_id(&app, &b, "TRANSFER_IN");
    let r = reverse(&app, &staff, &incoming, reason("rv-o"));
    assert_eq!(
        (r.status, r.code()),
        (422, "insufficient_funds"),
        "{}",
        r.body
    );
    assert_eq!(
        r.body["error"]["message"],
        "insufficient funds: available 35.00, required 40.00"
    );
    assert_eq!(
        (app.balance(&a), app.balance(&b)),
        ("60.00".into(), "50.00".into())
    );
    assert!(audit_rows(&app, &staff, &format!("transaction:{incoming}")).is_empty());

    // Frozen, `b` sends nothing itself, but staff still take back what it can spare.
    let f = app.post(
        &format!("/api/admin/users/{}/freeze", b.id),
        &staff.token,
        json!({"reason": "fraud review"}),
    );
    assert_eq!(f.status, 200, "{}", f.body);
    let deposit = entry_id(&app, &b, "DEPOSIT");
    let r = reverse(&app, &staff, &deposit, reason("rv-f"));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(app.balance(&b), "40.00");
    assert_verified(&app);
}

#[test]
fn reversals_refuse_what_would_create_money_or_serve_oneself() {
    let app = TestApp::spawn();
    let staff = staff_user(&app);
    let u = funded(&app, "rvr", "100.00");
    let deposit = entry_id(&app, &u, "DEPOSIT");
    let r = reverse(&app, &staff, &deposit, reason("rv-1"));
    assert_eq!(r.status, 201, "{}", r.body);

    // A reversal can't be reversed.
    let twice = reverse(&app, &staff, r.body["id"].as_str().unwrap(), reason("rv-x"));
    assert_eq!(
        (twice.status, twice.code()),
        (422, "validation_error"),
        "{}",
        twice.body
    );
    assert!(
        twice.body["error"]["fields"]["id"].is_array(),
        "{}",
        twice.body
    );

    // Not staff: 403. Unknown transaction: 404. No reason or reference: 422.
    let r = reverse(&app, &u, &deposit, reason("rv-u"));
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{}", r.body);
    let r = reverse(
        &app,
        &staff,
        &uuid::Uuid::new_v4().to_string(),
        reason("rv-n"),
    );
    assert_eq!((r.status, r.code()), (404, "not_found"), "{}", r.body);
    let other = funded(&app, "rvr2", "10.00");
    let d2 = entry_id(&app, &other, "DEPOSIT");
    for body in [
        json!({"reference": "r"}),
        json!({"reason": "why"}),
        json!({"reason": " ", "reference": "r"}),
    ] {
        let r = reverse(&app, &staff, &d2, body.clone());
        assert_eq!(
            (r.status, r.code()),
            (422, "validation_error"),
            "{body}: {}",
            r.body
        );
    }

    // Staff can't reverse their own deposit, nor a transfer they sent or received.
    assert_eq!(app.deposit(&staff, "10.00", "own").status, 201);
    let own = entry_id(&app, &staff, "DEPOSIT");
    let r = reverse(&app, &staff, &own, reason("rv-own"));
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{}", r.body);
    assert_eq!(
        transfer(&app, &other, &staff, "5.00", "to-staff").status,
        201
    );
    let sent = entry_id(&app, &other, "TRANSFER_OUT");
    let r = reverse(&app, &staff, &sent, reason("rv-mine"));
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{}", r.body);
    assert_eq!(
        (app.balance(&other), app.balance(&staff)),
        ("5.00".into(), "15.00".into())
    );
    assert_verified(&app);
}

#[test]
fn reversals_at_once_of_one_transaction_reverse_it_once() {
    // Eight staff requests with different references race for one deposit: one reverses it,
    // the rest are 409, and the balance moved once.
    let app = TestApp::spawn();
    let staff = staff_user(&app);
    let u = funded(&app, "rvc", "100.00");
    let deposit = entry_id(&app, &u, "DEPOSIT");
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (app, staff, deposit) = (&app, &staff, &deposit);
                s.spawn(move || reverse(app, staff, deposit, reason(&format!("race-{i}"))).status)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        7,
        "{statuses:?}"
    );
    assert_eq!(app.balance(&u), "0.00");
    assert_verified(&app);
}
