use serde_json::json;

use crate::helpers::{name, TestApp};

#[test]
fn deposit_withdraw_transfer_happy_paths() {
    // Money moves exactly, each entry records the balance after it, and the wallet shows the
    // newest entries first.
    let app = TestApp::spawn();
    let (a, b) = (app.register(&name("a")), app.register(&name("b")));
    let d = app.deposit(&a, "100.10", "dep-1");
    assert_eq!(d.status, 201, "{}", d.body);
    assert_eq!(d.body["type"], "DEPOSIT");
    assert_eq!(d.body["amount"], "100.10");
    assert_eq!(d.body["balance_after"], "100.10");
    assert_eq!(d.body["metadata"], json!({}));
    let d2 = app.post(
        "/api/wallets/me/deposit",
        &a.token,
        json!({"amount": 0.2, "reference": "dep-2", "metadata": {"note": "float text"}}),
    );
    assert_eq!(
        d2.body["amount"], "0.20",
        "0.2 read from its text, not via f64"
    );
    assert_eq!(d2.body["metadata"], json!({"note": "float text"}));

    let w = app.post(
        "/api/wallets/me/withdraw",
        &a.token,
        json!({"amount": "0.30", "reference": "wd-1"}),
    );
    assert_eq!(w.status, 201, "{}", w.body);
    assert_eq!(
        (w.body["type"].as_str(), w.body["balance_after"].as_str()),
        (Some("WITHDRAWAL"), Some("100.00"))
    );

    let t = app.post(
        "/api/wallets/me/transfer",
        &a.token,
        json!({"to_user_id": b.id, "amount": 25, "reference": "tr-1"}),
    );
    assert_eq!(t.status, 201, "{}", t.body);
    assert_eq!(t.body["transfer_out"]["type"], "TRANSFER_OUT");
    assert_eq!(t.body["transfer_out"]["balance_after"], "75.00");
    assert_eq!(t.body["transfer_out"]["counterparty_user_id"], b.id);
    assert_eq!(t.body["transfer_in"]["type"], "TRANSFER_IN");
    assert_eq!(t.body["transfer_in"]["balance_after"], "25.00");
    assert_eq!(t.body["transfer_in"]["counterparty_user_id"], a.id);
    assert_eq!(t.body["transfer_in"]["reference"], "tr-1");
    let t2 = app.post(
        "/api/wallets/me/transfer",
        &b.token,
        json!({"to_username": a.username.to_uppercase(), "amount": "5", "reference": "back"}),
    );
    assert_eq!(t2.status, 201, "{}", t2.body);

    let wallet = app.get("/api/wallets/me", &a.token);
    assert_eq!(wallet.body["balance"], "80.00");
    assert_eq!(wallet.body["currency"], "USD");
    assert_eq!(wallet.body["user_id"], a.id);
    let recent = wallet.body["recent_transactions"].as_array().unwrap();
    assert_eq!(recent.len(), 5);
    assert_eq!(recent[0]["type"], "TRANSFER_IN", "newest first");
    assert_eq!(app.balance(&b), "20.00");
    assert!(app.verify().ok());
}

#[test]
fn insufficient_funds_changes_nothing_and_keeps_the_reference_free() {
    // A debit beyond the balance is 422 insufficient_funds, writes nothing, and its reference
    // can be used again by a request that succeeds.
    let app = TestApp::spawn();
    let (a, b) = (app.register(&name("a")), app.register(&name("b")));
    app.deposit(&a, "10.00", "d");
    let r = app.post(
        "/api/wallets/me/withdraw",
        &a.token,
        json!({"amount": "10.01", "reference": "big"}),
    );
    assert_eq!((r.status, r.code()), (422, "insufficient_funds"));
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("10.00"));
    let r = app.post(
        "/api/wallets/me/transfer",
        &a.token,
        json!({"to_user_id": b.id, "amount": "11", "reference": "big-t"}),
    );
    assert_eq!(r.code(), "insufficient_funds");
    assert_eq!(app.balance(&a), "10.00");
    assert_eq!(app.balance(&b), "0.00");
    let entries: i64 = app
        .db()
        .query_one("SELECT count(*) FROM entries", &[])
        .unwrap()
        .get(0)
        .unwrap();
    assert_eq!(entries, 1);
    let ok = app.post(
        "/api/wallets/me/withdraw",
        &a.token,
        json!({"amount": "10.00", "reference": "big"}),
    );
    assert_eq!(
        ok.status, 201,
        "a failed request does not consume its reference: {}",
        ok.body
    );
    assert_eq!(app.balance(&a), "0.00");
}

#[test]
fn references_replay_or_conflict() {
    // Same kind + reference + payload replays the original (200, header, no money moved);
    // a different amount, recipient or metadata is 409 naming the holder.
    let app = TestApp::spawn();
    let (a, b, c) = (
        app.register(&name("a")),
        app.register(&name("b")),
        app.register(&name("c")),
    );
    let first = app.post(
        "/api/wallets/me/deposit",
        &a.token,
        json!({"amount": "50", "reference": "r1", "metadata": {"x": 1}}),
    );
    assert_eq!(first.status, 201);
    let again = app.post(
        "/api/wallets/me/deposit",
        &a.token,
        json!({"amount": "50.00", "reference": "r1", "metadata": {"x": 1}}),
    );
    assert_eq!(again.status, 200);
    assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(again.body, first.body, "the original result");
    assert_eq!(app.balance(&a), "50.00");
    let other_amount = app.post(
        "/api/wallets/me/deposit",
        &a.token,
        json!({"amount": "51", "reference": "r1", "metadata": {"x": 1}}),
    );
    assert_eq!(
        (other_amount.status, other_amount.code()),
        (409, "reference_conflict")
    );
    let holder = other_amount.body["error"]["fields"]["reference"][0]
        .as_str()
        .unwrap();
    assert!(
        holder.contains(first.body["id"].as_str().unwrap()),
        "{holder}"
    );
    let other_meta = app.post(
        "/api/wallets/me/deposit",
        &a.token,
        json!({"amount": "50", "reference": "r1", "metadata": {"x": 2}}),
    );
    assert_eq!(other_meta.code(), "reference_conflict");

    // References are per kind: a withdrawal may reuse a deposit's reference.
    let w = app.post(
        "/api/wallets/me/withdraw",
        &a.token,
        json!({"amount": "1", "reference": "r1"}),
    );
    assert_eq!(w.status, 201);

    let t = app.post(
        "/api/wallets/me/transfer",
        &a.token,
        json!({"to_user_id": b.id, "amount": "5", "reference": "t1"}),
    );
    assert_eq!(t.status, 201);
    let t_again = app.post(
        "/api/wallets/me/transfer",
        &a.token,
        json!({"to_username": b.username, "amount": "5", "reference": "t1"}),
    );
    assert_eq!(
        (t_again.status, t_again.header("Idempotent-Replayed")),
        (200, Some("true"))
    );
    assert_eq!(t_again.body, t.body);
    let t_other = app.post(
        "/api/wallets/me/transfer",
        &a.token,
        json!({"to_user_id": c.id, "amount": "5", "reference": "t1"}),
    );
    assert_eq!(t_other.code(), "reference_conflict");
    assert_eq!(app.balance(&a), "44.00");
    assert_eq!(app.balance(&b), "5.00");

    // The Idempotency-Key header may stand in for the field.
    let agent = crate::helpers::agent();
    let send = || {
        agent
            .post(&format!("{}/api/wallets/me/deposit", app.base))
            .header("Authorization", &format!("Token {}", a.token))
            .header("Idempotency-Key", "hdr-1")
            .header("Content-Type", "application/json")
            .send(r#"{"amount": "1"}"#)
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!((send(), send()), (201, 200));
    assert_eq!(app.balance(&a), "45.00");
}

#[test]
fn transfers_to_oneself_or_nobody_are_422() {
    // The recipient must be another existing user, named by exactly one field.
    let app = TestApp::spawn();
    let a = app.register(&name("a"));
    app.deposit(&a, "10", "d");
    for (body, field) in [
        (
            json!({"to_user_id": a.id, "amount": "1", "reference": "x"}),
            "to_user_id",
        ),
        (
            json!({"to_username": a.username, "amount": "1", "reference": "x"}),
            "to_username",
        ),
        (
            json!({"to_user_id": 999_999, "amount": "1", "reference": "x"}),
            "to_user_id",
        ),
        (
            json!({"to_username": "ghost-user", "amount": "1", "reference": "x"}),
            "to_username",
        ),
        (
            json!({"to_user_id": "1", "amount": "1", "reference": "x"}),
            "to_user_id",
        ),
        (json!({"amount": "1", "reference": "x"}), "to_user_id"),
    ] {
        let r = app.post("/api/wallets/me/transfer", &a.token, body.clone());
        assert_eq!((r.status, r.code()), (422, "validation_error"), "{body}");
        assert!(
            r.body["error"]["fields"][field].is_array(),
            "{body} → {}",
            r.body
        );
    }
    assert_eq!(app.balance(&a), "10.00");
}

#[test]
fn bad_amounts_are_422_naming_the_field_and_change_nothing() {
    // Every rejected form from the contract, over HTTP.
    let app = TestApp::spawn();
    let a = app.register(&name("a"));
    for amount in [
        json!("1e3"),
        json!("-0"),
        json!("NaN"),
        json!(" 5"),
        json!("5,00"),
        json!(null),
        json!(true),
        json!([1]),
        json!({"v": 1}),
        json!(0),
        json!(-5),
        json!("0.001"),
        json!("1000000000.01"),
    ] {
        let r = app.post(
            "/api/wallets/me/deposit",
            &a.token,
            json!({"amount": amount, "reference": "bad"}),
        );
        assert_eq!(r.status, 422, "{amount}");
        assert!(
            r.body["error"]["fields"]["amount"].is_array(),
            "{amount}: {}",
            r.body
        );
    }
    let r = app.raw(
        "POST",
        "/api/wallets/me/deposit",
        Some(&a.token),
        Some(r#"{"amount": 1e3, "reference": "bad"}"#.into()),
        Some("application/json"),
    );
    assert!(
        r.body["error"]["fields"]["amount"].is_array(),
        "1e3 as a JSON number: {}",
        r.body
    );
    let r = app.post(
        "/api/wallets/me/deposit",
        &a.token,
        json!({"amount": "1", "reference": "", "metadata": [1]}),
    );
    assert!(
        r.body["error"]["fields"]["reference"].is_array()
            && r.body["error"]["fields"]["metadata"].is_array()
    );
    let r = app.post(
        "/api/wallets/me/deposit",
        &a.token,
        json!({"amount": "1", "reference": "r".repeat(256)}),
    );
    assert!(r.body["error"]["fields"]["reference"].is_array());
    let r = app.post(
        "/api/wallets/me/deposit",
        &a.token,
        json!({"amount": "1", "reference": "m", "metadata": {"k": "x".repeat(5000)}}),
    );
    assert!(r.body["error"]["fields"]["metadata"].is_array());
    assert_eq!(app.balance(&a), "0.00");
    let max = app.deposit(&a, "1000000000.00", "max");
    assert_eq!(max.status, 201, "the maximum itself is accepted");
}

#[test]
fn history_pages_with_offset_cursor_and_filters() {
    // limit/offset pages, a cursor that stays stable while new entries arrive, and filters.
    let app = TestApp::spawn();
    let (a, b) = (app.register(&name("a")), app.register(&name("b")));
    for i in 0..25 {
        assert_eq!(app.deposit(&a, "1", &format!("d{i}")).status, 201);
    }
    app.post(
        "/api/wallets/me/transfer",
        &a.token,
        json!({"to_user_id": b.id, "amount": "2", "reference": "t"}),
    );
    let p = app.get("/api/wallets/me/transactions", &a.token);
    assert_eq!(
        (
            p.body["count"].as_i64(),
            p.body["limit"].as_i64(),
            p.body["offset"].as_i64()
        ),
        (Some(26), Some(20), Some(0))
    );
    assert_eq!(p.body["results"].as_array().unwrap().len(), 20);
    assert_eq!(p.body["results"][0]["type"], "TRANSFER_OUT");
    let p2 = app.get("/api/wallets/me/transactions?limit=10&offset=20", &a.token);
    assert_eq!(p2.body["results"].as_array().unwrap().len(), 6);
    assert!(p2.body["next_cursor"].is_null());

    let first = app.get("/api/wallets/me/transactions?limit=10", &a.token);
    let cursor = first.body["next_cursor"].as_str().unwrap().to_string();
    // New entries arrive between pages; the cursor continues where the first page ended.
    app.deposit(&a, "1", "late-1");
    app.deposit(&a, "1", "late-2");
    let second = app.get(
        &format!("/api/wallets/me/transactions?limit=10&cursor={cursor}"),
        &a.token,
    );
    let last_of_first = first.body["results"][9]["reference"].as_str().unwrap();
    let first_of_second = second.body["results"][0]["reference"].as_str().unwrap();
    let n = |r: &str| r.trim_start_matches('d').parse::<i32>().unwrap();
    assert_eq!(
        n(first_of_second),
        n(last_of_first) - 1,
        "no gap and no repeat across pages"
    );

    let deposits = app.get("/api/wallets/me/transactions?type=TRANSFER_OUT", &a.token);
    assert_eq!(deposits.body["count"], 1);
    let future = app.get(
        "/api/wallets/me/transactions?from=2999-01-01T00:00:00Z",
        &a.token,
    );
    assert_eq!(future.body["count"], 0);
    let past = app.get(
        "/api/wallets/me/transactions?to=2000-01-01T00%3A00%3A00%2B00%3A00",
        &a.token,
    );
    assert_eq!(past.body["count"], 0);
    for bad in [
        "limit=0",
        "limit=101",
        "limit=x",
        "offset=-1",
        "cursor=abc",
        "type=GIFT",
        "from=yesterday",
    ] {
        let r = app.get(&format!("/api/wallets/me/transactions?{bad}"), &a.token);
        assert_eq!((r.status, r.code()), (422, "validation_error"), "{bad}");
    }
}

#[test]
fn balance_now_and_validation() {
    // The balance endpoint answers now by default, and refuses future or malformed times.
    let app = TestApp::spawn();
    let a = app.register(&name("a"));
    app.deposit(&a, "12.34", "d");
    let r = app.get("/api/wallets/me/balance", &a.token);
    assert_eq!((r.status, r.body["balance"].as_str()), (200, Some("12.34")));
    let r = app.get("/api/wallets/me/balance?at=2999-01-01T00:00:00Z", &a.token);
    assert_eq!((r.status, r.code()), (422, "validation_error"));
    let r = app.get("/api/wallets/me/balance?at=garbage", &a.token);
    assert!(r.body["error"]["fields"]["at"].is_array());
    let r = app.get("/api/wallets/me/balance?at=2000-01-01T00:00:00Z", &a.token);
    assert_eq!(r.body["balance"], "0.00");
}

#[test]
fn users_see_only_their_own_wallet() {
    // Every wallet route acts on the caller's wallet; nothing names another user's.
    let app = TestApp::spawn();
    let (a, b) = (app.register(&name("a")), app.register(&name("b")));
    app.deposit(&a, "70", "secret");
    let bw = app.get("/api/wallets/me", &b.token);
    assert_eq!(bw.body["balance"], "0.00");
    assert_eq!(bw.body["recent_transactions"], json!([]));
    let bt = app.get("/api/wallets/me/transactions", &b.token);
    assert_eq!(bt.body["count"], 0);
    let r = app.get(&format!("/api/admin/users/{}/wallet", a.id), &b.token);
    assert_eq!((r.status, r.code()), (403, "forbidden"));
}

#[test]
fn ledger_rows_cannot_be_rewritten() {
    // Even with a connection of one's own to the database, UPDATE and DELETE on the ledger
    // abort, and a balance can never be stored negative.
    let app = TestApp::spawn();
    let a = app.register(&name("a"));
    app.deposit(&a, "5", "d");
    let db = app.db();
    let upd = db.execute("UPDATE entries SET amount = 1", &[]);
    assert!(format!("{:?}", upd.unwrap_err()).contains("immutable"));
    let del = db.execute("DELETE FROM entries", &[]);
    assert!(format!("{:?}", del.unwrap_err()).contains("immutable"));
    assert!(
        db.execute("UPDATE balances SET balance = -1", &[]).is_err(),
        "CHECK (balance >= 0)"
    );
    assert!(
        db.execute("UPDATE balances SET held = balance + 1", &[])
            .is_err(),
        "CHECK (held <= balance)"
    );
    assert!(
        db.execute("UPDATE balances SET held = -1", &[]).is_err(),
        "CHECK (held >= 0)"
    );
    // An entry must carry its wallet's running balance.
    let insert = |amount: i64, balance_after: i64| {
        db.execute(
            "INSERT INTO entries (seq, id, wallet_key, kind, amount, balance_after, reference,
                 created_at, hash, currency)
             SELECT 99, 'forged', key, 'DEPOSIT', ?1, ?2, 'forged', '2099-01-01T00:00:00.000000Z',
                 ?3, 'USD' FROM wallets",
            &[&amount, &balance_after, &[0u8; 32]],
        )
    };
    db.execute("UPDATE balances SET balance = 501", &[])
        .unwrap();
    let err = format!("{:?}", insert(1, 600).unwrap_err());
    assert!(err.contains("is not the wallet's balance"), "{err}");
    insert(1, 501).expect("an entry that carries the wallet's balance is accepted");
}

#[test]
fn operator_credits_and_user_deposits_never_share_references() {
    // An operator credit with the reference a user already used for a deposit is a new credit
    // (stored as "admin:<reference>"), not a replay of the user's deposit; and users cannot
    // send references in the operators' namespace.
    let app = TestApp::spawn();
    let (staff, user) = (app.register(&name("op")), app.register(&name("u")));
    // Made staff before its token is first used (the token cache holds the staff flag).
    app.db()
        .execute("UPDATE users SET is_staff = 1 WHERE id = ?1", &[&staff.id])
        .unwrap();
    assert_eq!(app.deposit(&user, "50", "goodwill-7").status, 201);
    let credit = app.post(
        &format!("/api/admin/users/{}/credit", user.id),
        &staff.token,
        json!({"amount": "50", "reference": "goodwill-7"}),
    );
    assert_eq!(credit.status, 201, "{}", credit.body);
    assert_eq!(credit.body["reference"], "admin:goodwill-7");
    let again = app.post(
        &format!("/api/admin/users/{}/credit", user.id),
        &staff.token,
        json!({"amount": "50", "reference": "goodwill-7"}),
    );
    assert_eq!(
        (again.status, again.header("Idempotent-Replayed")),
        (200, Some("true"))
    );
    assert_eq!(app.balance(&user), "100.00");
    let audits: i64 = app
        .db()
        .query_one(
            "SELECT count(*) FROM audit_log WHERE action = 'credit'",
            &[],
        )
        .unwrap()
        .get(0)
        .unwrap();
    assert_eq!(audits, 1, "one credit, one audit row");
    let reserved = app.deposit(&user, "1", "admin:goodwill-7");
    assert_eq!(
        (reserved.status, reserved.code()),
        (422, "validation_error")
    );
    assert_eq!(app.balance(&user), "100.00");
}

#[test]
fn one_transaction_by_id_for_its_owner_only() {
    // `GET /api/wallets/me/transactions/{id}`: the caller's entry exactly as the list shows
    // it; another wallet's entry, a missing one and a malformed id are all 404.
    let app = TestApp::spawn();
    let a = app.register(&name("txa"));
    let b = app.register(&name("txb"));
    let d = app.deposit(&a, "12.34", "one");
    assert_eq!(d.status, 201, "{}", d.body);
    let id = d.body["id"].as_str().unwrap();
    let r = app.get(&format!("/api/wallets/me/transactions/{id}"), &a.token);
    assert_eq!(r.status, 200, "{}", r.body);
    let listed = app.get("/api/wallets/me/transactions", &a.token);
    assert_eq!(r.body, listed.body["results"][0]);
    assert_eq!(r.body, d.body);
    for (who, path) in [
        (&b, format!("/api/wallets/me/transactions/{id}")),
        (
            &a,
            format!("/api/wallets/me/transactions/{}", uuid::Uuid::new_v4()),
        ),
        (&a, "/api/wallets/me/transactions/not-a-uuid".to_string()),
    ] {
        let r = app.get(&path, &who.token);
        assert_eq!(
            (r.status, r.code()),
            (404, "not_found"),
            "{path}: {}",
            r.body
        );
    }
}

#[test]
fn null_is_absent_only_where_the_type_allows_it() {
    // `metadata` and `scheduled_at` may be null (the same as leaving them out); a null name,
    // reference or currency is 422 naming the field, and changes nothing.
    let app = TestApp::spawn();
    let u = app.register(&name("nul"));
    let r = app.post(
        "/api/wallets/me/deposit",
        &u.token,
        json!({"amount": "5.00", "reference": "n1", "metadata": null}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["metadata"], json!({}));
    let r = app.post(
        "/api/wallets/me/withdraw",
        &u.token,
        json!({"amount": "1.00", "reference": "n2", "scheduled_at": null}),
    );
    assert_eq!(r.status, 201, "an immediate withdrawal: {}", r.body);
    for (body, field) in [
        (json!({"amount": "1.00", "reference": null}), "reference"),
        (
            json!({"amount": "1.00", "reference": "n3", "currency": null}),
            "currency",
        ),
        (json!({"amount": null, "reference": "n4"}), "amount"),
    ] {
        let r = app.post("/api/wallets/me/deposit", &u.token, body.clone());
        assert_eq!(
            (r.status, r.code()),
            (422, "validation_error"),
            "{body}: {}",
            r.body
        );
        assert!(
            r.body["error"]["fields"][field].is_array(),
            "{body}: {}",
            r.body
        );
    }
    let r = app.post(
        "/api/auth/register",
        "",
        json!({"username": name("nul2"), "email": "nul2@example.com", "password": "correct horse battery",
               "password_confirm": "correct horse battery", "first_name": null}),
    );
    assert_eq!(
        (r.status, r.code()),
        (422, "validation_error"),
        "{}",
        r.body
    );
    assert!(
        r.body["error"]["fields"]["first_name"].is_array(),
        "{}",
        r.body
    );
    assert_eq!(app.balance(&u), "4.00");
}
