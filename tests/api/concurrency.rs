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
    burst_replies(app, n, make)
        .into_iter()
        .map(|r| r.status)
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

/// Runs `n` requests at once (released together by a barrier) and returns their replies.
fn burst_replies(
    app: &Arc<TestApp>,
    n: usize,
    make: impl Fn(usize) -> (String, String, serde_json::Value) + Send + Sync + 'static,
) -> Vec<crate::helpers::Resp> {
    let barrier = Arc::new(Barrier::new(n));
    let make = Arc::new(make);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (app, barrier, make) = (app.clone(), barrier.clone(), make.clone());
            std::thread::spawn(move || {
                let (path, token, body) = make(i);
                barrier.wait();
                app.post(&path, &token, body)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect()
}

#[test]
fn transfers_and_deposits_sent_together_each_get_the_answer_they_would_get_alone() {
    // On PostgreSQL transfers and deposits arriving together are written as a group
    // (`ledger::batch`), which leaves every case but the plain one to the request alone.
    let app = Arc::new(TestApp::spawn());
    mixed_writes_at_once(&app);
    if app.on_postgres() {
        // Groups did form, and wrote several requests each.
        let (groups, grouped) = (
            counter(&app, "wallet_write_groups_total"),
            counter(&app, "wallet_writes_grouped_total"),
        );
        assert!(grouped > groups, "{grouped} requests in {groups} groups");
    }
}

/// A counter of the server's `/metrics`.
fn counter(app: &TestApp, name: &str) -> u64 {
    let metrics = app.raw("GET", "/metrics", None, None, None);
    metrics
        .body
        .as_str()
        .unwrap_or("")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[test]
fn transfers_and_deposits_sent_together_get_the_same_answers_when_each_is_written_alone() {
    let app = Arc::new(TestApp::spawn_with(
        |c| c.serve.db_group_max = 1,
        Arc::new(wallet::clock::SystemClock),
    ));
    mixed_writes_at_once(&app);
}

/// Requests of each case in `mixed_writes_at_once`.
const PER_CASE: usize = 8;
/// Cases in `mixed_writes_at_once`.
const CASES: usize = 12;

/// 96 transfers and deposits at once, 8 of each of 12 cases, so that groups mix them. Transfers:
/// plain ones, one request repeated (one 201, replays of it), one reference with different
/// amounts (one 201, conflicts), oneself, an unknown user, a wallet that can pay only one of
/// its transfers, a recipient named by username, and a frozen sender. Deposits: plain ones,
/// one repeated, one reference with different amounts, and into a frozen wallet (which may
/// receive). Checks every answer and every balance.
fn mixed_writes_at_once(app: &Arc<TestApp>) {
    let users: Vec<_> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|n| app.register(&name(n)))
        .collect();
    for (u, amount) in users.iter().zip(["50", "50", "50", "50", "50", "10"]) {
        app.deposit(u, amount, "fund");
    }
    let staff = crate::helpers::staff_user(app);
    let frozen = app.post(
        &format!("/api/admin/users/{}/freeze", users[5].id),
        &staff.token,
        json!({"reason": "test"}),
    );
    assert_eq!(frozen.status, 200, "{:?}", frozen.body);
    let u = users.clone();
    let replies = burst_replies(app, PER_CASE * CASES, move |i| {
        let nth = 1 + i / CASES;
        let transfer = |from: usize, body| (from, "transfer", body);
        let deposit = |into: usize, body| (into, "deposit", body);
        let (who, path, body) = match i % CASES {
            0 => transfer(
                0,
                json!({"to_user_id": u[1].id, "amount": "1", "reference": format!("p{i}")}),
            ),
            1 => transfer(
                2,
                json!({"to_user_id": u[3].id, "amount": "2", "reference": "dup"}),
            ),
            2 => transfer(
                3,
                json!({"to_user_id": u[0].id, "amount": format!("{nth}"), "reference": "conf"}),
            ),
            3 => transfer(
                0,
                json!({"to_user_id": u[0].id, "amount": "1", "reference": format!("s{i}")}),
            ),
            4 => transfer(
                1,
                json!({"to_username": "nobody-at-all", "amount": "1", "reference": format!("n{i}")}),
            ),
            5 => transfer(
                4,
                json!({"to_user_id": u[0].id, "amount": "30", "reference": format!("o{i}")}),
            ),
            6 => transfer(
                1,
                json!({"to_username": u[2].username, "amount": "1", "reference": format!("u{i}")}),
            ),
            7 => transfer(
                5,
                json!({"to_user_id": u[0].id, "amount": "1", "reference": format!("f{i}")}),
            ),
            8 => deposit(1, json!({"amount": "1", "reference": format!("d{i}")})),
            9 => deposit(2, json!({"amount": "3", "reference": "ddup"})),
            10 => deposit(3, json!({"amount": format!("{nth}"), "reference": "dconf"})),
            _ => deposit(5, json!({"amount": "1", "reference": format!("df{i}")})),
        };
        (
            format!("/api/wallets/me/{path}"),
            u[who].token.clone(),
            body,
        )
    });
    let case = |k: usize| -> Vec<&crate::helpers::Resp> {
        replies
            .iter()
            .enumerate()
            .filter(|(i, _)| i % CASES == k)
            .map(|(_, r)| r)
            .collect()
    };
    let statuses = |k: usize| -> Vec<u16> {
        let mut s: Vec<u16> = case(k).iter().map(|r| r.status).collect();
        s.sort_unstable();
        s
    };
    let all = |status: u16| vec![status; PER_CASE];
    let one_then = |first: u16, rest: u16| {
        let mut s = [vec![first], vec![rest; PER_CASE - 1]].concat();
        s.sort_unstable();
        s
    };
    // The amount of the one request of case `k` that was written.
    let winner = |k: usize, field: &str| -> i64 {
        let r = case(k).into_iter().find(|r| r.status == 201).unwrap();
        let amount = if field.is_empty() {
            &r.body["amount"]
        } else {
            &r.body[field]["amount"]
        };
        amount.as_str().unwrap().parse::<f64>().unwrap() as i64
    };
    assert_eq!(statuses(0), all(201));
    // A repeated request: one 201, the others replays naming the same entry.
    for (k, id) in [(1, "/transfer_out/id"), (9, "/id")] {
        assert_eq!(statuses(k), one_then(201, 200));
        let ids: std::collections::HashSet<_> = case(k)
            .iter()
            .map(|r| {
                r.body
                    .pointer(id)
                    .and_then(|v| v.as_str())
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(ids.len(), 1, "replays name one entry");
        assert!(case(k)
            .iter()
            .filter(|r| r.status == 200)
            .all(|r| r.header("idempotent-replayed") == Some("true")));
    }
    assert_eq!(statuses(2), one_then(201, 409));
    assert_eq!(statuses(10), one_then(201, 409));
    for (k, code) in [(3, "validation_error"), (4, "validation_error")] {
        assert_eq!(statuses(k), all(422));
        assert!(case(k).iter().all(|r| r.code() == code));
    }
    assert_eq!(statuses(5), one_then(201, 422));
    assert!(case(5)
        .iter()
        .filter(|r| r.status == 422)
        .all(|r| r.code() == "insufficient_funds"));
    assert_eq!(statuses(6), all(201));
    assert_eq!(statuses(7), all(403));
    assert!(case(7).iter().all(|r| r.code() == "wallet_frozen"));
    for k in [8, 11] {
        assert_eq!(statuses(k), all(201));
    }
    // What moved, wallet by wallet: a sends n, gets the conflict's winner and the overdraw's
    // one 30; b gets n, sends n and is paid n; c sends one 2, gets n and one deposit of 3;
    // d gets 2, sends the winner and is paid the deposit conflict's winner; f is paid n.
    let n = PER_CASE as i64;
    let (won, deposit_won) = (winner(2, "transfer_out"), winner(10, ""));
    let expected = [
        50 - n + won + 30,
        50 + n,
        50 - 2 + n + 3,
        50 + 2 - won + deposit_won,
        50 - 30,
        10 + n,
    ];
    for (u, want) in users.iter().zip(expected) {
        assert_eq!(app.balance(u), format!("{want}.00"), "{}", u.username);
    }
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
}

/// A server, its users a, b, c and d, and the connection whose transaction holds a's wallet.
type HeldWallet = (
    Arc<TestApp>,
    Vec<crate::helpers::User>,
    Box<dyn wallet::store::Sql>,
);

/// On PostgreSQL, a server with `db_writers` writer connections, users a, b, c and d with 10
/// each, and a transaction outside the server that holds a's wallet row until it ends (a
/// stuck client, an operator's session). `None` on SQLite, which has one writer: a held
/// write lock holds all.
fn a_held_by_a_transaction(db_writers: u16) -> Option<HeldWallet> {
    let app = Arc::new(TestApp::spawn_with(
        |c| c.serve.db_writers = db_writers,
        Arc::new(wallet::clock::SystemClock),
    ));
    if !app.on_postgres() {
        eprintln!("not run: PostgreSQL only (SQLite has one writer: a held write lock holds all)");
        return None;
    }
    let users: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| app.register(&name(n)))
        .collect();
    for u in &users {
        app.deposit(u, "10", "fund");
    }
    let holder = app.db();
    holder.execute("BEGIN", &[]).unwrap();
    holder
        .query(
            "SELECT key FROM wallets WHERE user_id = ?1 FOR NO KEY UPDATE",
            &[&users[0].id],
        )
        .unwrap();
    Some((app, users, holder))
}

#[test]
fn a_wallet_locked_elsewhere_holds_up_only_its_own_transfers() {
    // A transaction outside the server holds wallet a's row (a stuck client, an operator's
    // session). A group does not wait for it: it writes the transfers that don't touch a
    // while a is still held, and puts a's own off to the next groups, then hands them back;
    // alone, each waits for a at most `BUSY_WALLET_WAIT_MS_MAX`: written if a is released by
    // then, else refused with 503 having moved nothing. (Each holds a writer connection while
    // it waits, so the server gets more writers than there are of them; the next test has
    // fewer.)
    let Some((app, users, holder)) = a_held_by_a_transaction(8) else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..12 {
        let (app, tx) = (app.clone(), tx.clone());
        let (from, to) = match i % 3 {
            0 => (users[0].clone(), users[1].clone()),
            _ => (users[2].clone(), users[3].clone()),
        };
        std::thread::spawn(move || {
            let r = app.post(
                "/api/wallets/me/transfer",
                &from.token,
                json!({"to_user_id": to.id, "amount": "0.10", "reference": format!("t{i}")}),
            );
            let _ = tx.send((i, r.status));
        });
    }
    // The eight that don't touch a arrive while it is held (well within the 30 s statement
    // timeout that a's own wait for).
    let mut done = Vec::new();
    while done.len() < 8 {
        let (i, status) = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("transfers that don't touch the held wallet are written meanwhile");
        assert_ne!(
            i % 3,
            0,
            "a transfer from the held wallet finished while it was held"
        );
        assert_eq!(status, 201);
        done.push(i);
    }
    // a's transfers were put off by groups, not waited for.
    assert!(counter(&app, "wallet_writes_put_off_total") >= 4);
    holder.execute("ROLLBACK", &[]).unwrap();
    let mut written = 0;
    for _ in 0..4 {
        let (i, status) = rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap();
        assert_eq!(i % 3, 0);
        assert!(status == 201 || status == 503, "{status}");
        written += usize::from(status == 201);
    }
    // Exactly the transfers answered 201 moved money.
    let a = format!("{:.2}", 10.0 - 0.10 * written as f64);
    assert_eq!(app.balance(&users[0]), a);
    assert_eq!(app.balance(&users[3]), "10.80");
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
}

#[test]
fn plain_deposits_are_written_by_groups_and_only_the_others_alone() {
    // A group leaves every request it doesn't write to be written alone, which gives the
    // same answer: were the group's SQL for deposits wrong, every deposit would quietly be
    // written alone and the tests above would still pass. The counters tell the two apart.
    let app = Arc::new(TestApp::spawn());
    if !app.on_postgres() {
        eprintln!("not run: PostgreSQL only (SQLite writes no groups)");
        return;
    }
    let users: Vec<_> = (0..4)
        .map(|i| app.register(&name(&format!("g{i}"))))
        .collect();
    // A first credit in a currency creates the balance: that one is written alone.
    for u in &users {
        app.deposit(u, "1", "first");
    }
    let grouped = || counter(&app, "wallet_writes_grouped_total");
    let alone = || counter(&app, "wallet_writes_handed_back_total");
    let (grouped_before, alone_before) = (grouped(), alone());
    let tokens: Vec<String> = users.iter().map(|u| u.token.clone()).collect();
    let statuses = burst(&app, 16, move |i| {
        (
            "/api/wallets/me/deposit".into(),
            tokens[i % 4].clone(),
            json!({"amount": "0.25", "reference": format!("d{i}")}),
        )
    });
    assert_eq!(statuses, vec![201; 16]);
    assert_eq!(
        grouped() - grouped_before,
        16,
        "every plain deposit by a group"
    );
    assert_eq!(alone(), alone_before, "no plain deposit written alone");

    // A stored reference again (a replay): the group finds it and leaves it alone.
    let r = app.post(
        "/api/wallets/me/deposit",
        &users[0].token,
        json!({"amount": "0.25", "reference": "d0"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(grouped() - grouped_before, 16);
    assert_eq!(alone() - alone_before, 1);
    for u in &users {
        assert_eq!(app.balance(u), "2.00");
    }
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
}

#[test]
fn a_group_plans_its_reference_probe_on_each_call() {
    // The probe's prepared plan, kept from a ledger of a few rows, scanned all of `entries`
    // for each reference once the ledger had grown (README, "On PostgreSQL": bench runs at a
    // third of the rate). Groups written here on one connection must leave their other
    // statements prepared on it, and the probe not: it is planned on each call.
    use wallet::domain::{Amount, Metadata, Reference};
    use wallet::ledger::batch::{self, DepositItem, GroupItem};
    let app = TestApp::spawn();
    if !app.on_postgres() {
        eprintln!("not run: PostgreSQL only (SQLite writes no groups)");
        return;
    }
    let u = app.register(&name("p"));
    app.deposit(&u, "1", "first");
    let service = app.app.as_ref().unwrap().service().clone();
    let usd = service.config.currency().clone();
    let db = app.db();
    let wallet = wallet::ledger::queries::wallet_of_user(&*db, u.id)
        .unwrap()
        .wallet_ref();
    for i in 0..8 {
        db.execute("BEGIN", &[]).unwrap();
        let item = GroupItem::Deposit(DepositItem {
            wallet: wallet.clone(),
            movement: wallet::ledger::Movement {
                currency: usd.clone(),
                amount: Amount::parse_text("0.50", &usd).unwrap(),
                reference: Reference::parse(&format!("g{i}")).unwrap(),
                metadata: Metadata::empty(),
            },
        });
        let fates = batch::writes(&*db, service.clock.now(), &[item]).unwrap();
        assert!(
            matches!(fates.as_slice(), [wallet::db::grouped::Fate::Written(_)]),
            "{fates:?}"
        );
        db.execute("COMMIT", &[]).unwrap();
    }
    assert_eq!(app.balance(&u), "5.00");
    let prepared: Vec<String> = db
        .query("SELECT statement FROM pg_prepared_statements", &[])
        .unwrap()
        .into_iter()
        .map(|r| r.get::<String>(0).unwrap())
        .collect();
    let probe = batch::REFERENCES_TAKEN_SQL.replace("?1", "$1");
    assert!(
        prepared.iter().any(|s| s.contains("SKIP LOCKED")),
        "the group's wallet locks are prepared: {prepared:?}"
    );
    assert!(
        !prepared.contains(&probe),
        "the probe is prepared: {prepared:?}"
    );

    // The unprepared path gives each kind of value as the prepared one does.
    let sql = "SELECT CAST(?1 AS BIGINT), ?2 || 'x', CAST(?3 AS BIGINT), length(CAST(?4 AS BYTEA)), ?5 + 1";
    let blob: &[u8] = b"\x00\x01\x02";
    let params: [&dyn wallet::store::ToParam; 5] = [&7i64, &"a", &None::<i64>, &blob, &41i64];
    let (a, b) = (
        db.query(sql, &params).unwrap(),
        db.query_planned_now(sql, &params).unwrap(),
    );
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert_eq!(b[0].get::<i64>(4).unwrap(), 42);
}

#[test]
fn a_group_looks_up_references_through_their_unique_index() {
    // A group asks whether each request's reference is taken with one probe of
    // `entries_reference` per reference. Were its condition one the index's predicate does
    // not imply, the probe would read all of a wallet's entries instead: with scans of the
    // table made costly, the plan must use the index. (This guards the condition; that the
    // plan is made anew on each call is the test above.)
    let app = TestApp::spawn();
    if !app.on_postgres() {
        eprintln!("not run: PostgreSQL only (SQLite writes no groups)");
        return;
    }
    let db = app.db();
    db.execute("SET enable_seqscan = off", &[]).unwrap();
    db.execute("SET enable_bitmapscan = off", &[]).unwrap();
    let wanted =
        json!([{"k": 1, "r": "x", "kind": "DEPOSIT"}, {"k": 2, "r": "y", "kind": "TRANSFER_OUT"}]);
    let plan: Vec<String> = db
        .query(
            &format!("EXPLAIN {}", *wallet::ledger::batch::REFERENCES_TAKEN_SQL),
            &[&wanted.to_string()],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get::<String>(0).unwrap())
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Scan using entries_reference on entries"),
        "{plan}"
    );
    assert!(
        plan.contains("(reference = "),
        "all three columns probed: {plan}"
    );
}

#[test]
fn requests_for_a_wallet_held_elsewhere_never_take_every_writer() {
    // A stuck transaction holds wallet a, and more requests for a arrive than the server has
    // writer connections. Each is put off by the groups, then written alone, where it waits
    // for a at most `BUSY_WALLET_WAIT_MS_MAX` and is refused with 503: the writers stay free,
    // and a transfer between two other wallets is written meanwhile (not after the 30 s
    // statement timeout, which is how long each waited before).
    let Some((app, users, holder)) = a_held_by_a_transaction(2) else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let send = |i: usize, from: &crate::helpers::User, to: &crate::helpers::User| {
        let (app, tx, from, to) = (app.clone(), tx.clone(), from.clone(), to.clone());
        std::thread::spawn(move || {
            let r = app.post(
                "/api/wallets/me/transfer",
                &from.token,
                json!({"to_user_id": to.id, "amount": "1", "reference": format!("t{i}")}),
            );
            let _ = tx.send((i, r.status));
        });
    };
    for i in 0..6 {
        send(i, &users[0], &users[1]);
    }
    // Both writers are waiting for a before the other transfer is sent.
    let watcher = app.db();
    let waiting = || -> i64 {
        watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0)
            .unwrap()
    };
    let t0 = std::time::Instant::now();
    while waiting() < 2 {
        assert!(
            t0.elapsed().as_secs() < 10,
            "a's transfers never waited for it"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    send(100, &users[2], &users[3]);
    let mut refused = 0;
    loop {
        let (i, status) = rx
            .recv_timeout(std::time::Duration::from_secs(15))
            .expect("the other transfer is written while a is held");
        if i == 100 {
            assert_eq!(status, 201);
            break;
        }
        assert_eq!(status, 503, "a transfer from the held wallet");
        refused += 1;
    }
    for _ in refused..6 {
        let (_, status) = rx.recv_timeout(std::time::Duration::from_secs(15)).unwrap();
        assert_eq!(status, 503);
    }
    holder.execute("ROLLBACK", &[]).unwrap();
    // Released, a's transfers are written again (the refused ones moved nothing).
    let r = app.post(
        "/api/wallets/me/transfer",
        &users[0].token,
        json!({"to_user_id": users[1].id, "amount": "1", "reference": "t0"}),
    );
    assert_eq!(r.status, 201);
    assert_eq!(app.balance(&users[0]), "9.00");
    assert_eq!(app.balance(&users[3]), "11.00");
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
}
