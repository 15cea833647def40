//! Scheduled withdrawals (issue 4) against a scripted fake payout service: outcomes, retries,
//! refunds, cancel, idempotency, validation, and a SIGKILL of the real binary mid-payout.
//! Payouts whose outcome is unknown (issue 11): the scenario table of the payout service's
//! answers, and staff resolving what the worker leaves for them.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::wallet::clock::{Clock, ManualClock, SystemClock};
use ::wallet::domain::Timestamp;
use serde_json::{json, Value};

use crate::helpers::{name, staff_user, Resp, TestApp, TestDb, User};

// ---- The fake payout service --------------------------------------------------------------

/// What the fake does with one call.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Replies at once with this status.
    Reply(u16),
    /// Sleeps this long (past the client's timeout), then tries to reply with the status.
    Hang(u64, u16),
    /// Never replies; holds the connection until the fake is dropped.
    Hold,
}

#[derive(Clone, Debug)]
struct Call {
    /// When the fake received the call, on its own clock.
    at: Instant,
    method: String,
    path: String,
    key: Option<String>,
    body: Value,
}

struct FakeState {
    script: Mutex<VecDeque<Step>>,
    fallback: Mutex<Step>,
    calls: Mutex<Vec<Call>>,
    stopping: AtomicBool,
}

struct FakePayout {
    url: String,
    addr: std::net::SocketAddr,
    state: Arc<FakeState>,
}

impl FakePayout {
    /// Answers calls with `script` in order, then with `fallback`.
    fn start(script: &[Step], fallback: Step) -> FakePayout {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(FakeState {
            script: Mutex::new(script.iter().copied().collect()),
            fallback: Mutex::new(fallback),
            calls: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(conn, &st));
            }
        });
        FakePayout {
            url: format!("http://{addr}/payouts"),
            addr,
            state,
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().unwrap().clone()
    }

    /// Waits until the fake has received `n` calls.
    fn wait_calls(&self, n: usize, within: Duration) -> Vec<Call> {
        let deadline = Instant::now() + within;
        loop {
            let calls = self.calls();
            if calls.len() >= n || Instant::now() > deadline {
                return calls;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for FakePayout {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: TcpStream, st: &FakeState) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(len) = header("content-length") {
        let len: usize = len.parse().unwrap_or(0);
        body.resize(len, 0);
        if reader.read_exact(&mut body).is_err() {
            return;
        }
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            if reader.read_line(&mut size).unwrap_or(0) == 0 {
                return;
            }
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            if reader.read_exact(&mut chunk).is_err() {
                return;
            }
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    st.calls.lock().unwrap().push(Call {
        at: Instant::now(),
        method,
        path,
        key: header("idempotency-key"),
        body: serde_json::from_slice(&body)
            .unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned())),
    });
    let step = st
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(*st.fallback.lock().unwrap());
    let status = match step {
        Step::Reply(s) => s,
        Step::Hang(ms, s) => {
            std::thread::sleep(Duration::from_millis(ms));
            s
        }
        Step::Hold => {
            while !st.stopping.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
    };
    let (reason, text) = match status {
        200..=299 => ("OK", r#"{"status":"paid"}"#),
        400 => ("Bad Request", r#"{"error":"account closed"}"#),
        _ => ("Internal Server Error", r#"{"error":"bank down"}"#),
    };
    // A redirect points somewhere that answers 200, as a maintenance page would.
    let location = if (300..400).contains(&status) {
        "Location: /moved\r\n"
    } else {
        ""
    };
    let reply = format!(
        "HTTP/1.1 {status} {reason}\r\n{location}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let mut conn = conn;
    let _ = conn.write_all(reply.as_bytes());
    let _ = conn.flush();
}

// ---- Helpers ------------------------------------------------------------------------------

const RETRY_BASE_MS: u64 = 20;
const TIMEOUT_MS: u64 = 300;
/// The retry window for an outcome that is unknown, short enough for tests on the real clock.
const RETRY_WINDOW: Duration = Duration::from_millis(1000);

fn app_with_payout(fake: &FakePayout) -> TestApp {
    app_paying_to(&fake.url)
}

fn app_paying_to(url: &str) -> TestApp {
    let url = url.to_string();
    TestApp::spawn_with(
        move |c| {
            c.serve.payout_url = Some(url);
            c.serve.payout_retry_base_ms = RETRY_BASE_MS;
            c.serve.payout_timeout_ms = TIMEOUT_MS;
            c.serve.payout_attempts_max = 3;
            c.serve.payout_retry_window = RETRY_WINDOW;
        },
        Arc::new(SystemClock),
    )
}

fn in_ms(app: &TestApp, ms: i64) -> String {
    app_now(app).plus_millis(ms).to_text()
}

fn app_now(app: &TestApp) -> Timestamp {
    app.clock().now()
}

fn schedule(app: &TestApp, u: &User, amount: &str, reference: &str, at: &str) -> Resp {
    app.post(
        "/api/wallets/me/withdraw",
        &u.token,
        json!({"amount": amount, "reference": reference, "scheduled_at": at}),
    )
}

/// Schedules a withdrawal 300 ms ahead and returns its id, checking the 202 PENDING reply.
/// How far ahead `schedule_ok` schedules: far enough that the request still arrives before
/// that moment on a loaded machine (300 ms was not, for the suite on PostgreSQL in CI).
const SCHEDULE_LEAD_MS: u64 = 800;

fn schedule_ok(app: &TestApp, u: &User, amount: &str, reference: &str) -> String {
    let at = in_ms(app, SCHEDULE_LEAD_MS as i64);
    let r = schedule(app, u, amount, reference, &at);
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["status"], "PENDING", "{}", r.body);
    r.body["id"].as_str().unwrap().to_string()
}

fn get_withdrawal(app: &TestApp, u: &User, id: &str) -> Resp {
    app.get(&format!("/api/wallets/me/withdrawals/{id}"), &u.token)
}

/// Polls until the withdrawal is SUCCEEDED, FAILED or CANCELLED (at most 10 s).
fn wait_final(app: &TestApp, u: &User, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get_withdrawal(app, u, id);
        assert_eq!(r.status, 200, "{}", r.body);
        let status = r.body["status"].as_str().unwrap().to_string();
        if ["SUCCEEDED", "FAILED", "CANCELLED"].contains(&status.as_str()) {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "withdrawal still {status} after 10 s: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (type, amount, balance_after, reference), newest first.
fn entries(app: &TestApp, u: &User) -> Vec<(String, String, String, String)> {
    full_entries(app, u)
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["amount"].as_str().unwrap().to_string(),
                e["balance_after"].as_str().unwrap().to_string(),
                e["reference"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn full_entries(app: &TestApp, u: &User) -> Vec<Value> {
    let r = app.get("/api/wallets/me/transactions?limit=100", &u.token);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["results"].as_array().unwrap().clone()
}

fn e(kind: &str, amount: &str, after: &str, reference: &str) -> (String, String, String, String) {
    (kind.into(), amount.into(), after.into(), reference.into())
}

/// The body the payout service must receive for this withdrawal.
fn payout_body(id: &str, u: &User, amount: &str, reference: &str) -> Value {
    json!({"withdrawal_id": id, "user_id": u.id, "amount": amount, "currency": "USD", "reference": reference})
}

/// Every call is a POST to the configured path with the withdrawal id as Idempotency-Key and
/// the same body.
fn assert_calls(calls: &[Call], n: usize, id: &str, body: &Value) {
    assert_eq!(calls.len(), n, "{calls:#?}");
    for c in calls {
        assert_eq!((c.method.as_str(), c.path.as_str()), ("POST", "/payouts"));
        assert_eq!(c.key.as_deref(), Some(id), "Idempotency-Key");
        assert_eq!(&c.body, body);
    }
}

/// A user holding 100.00.
fn funded(app: &TestApp) -> User {
    let u = app.register(&name("w"));
    let r = app.deposit(&u, "100.00", "fund");
    assert_eq!(r.status, 201, "{}", r.body);
    u
}

fn id_of_entry(entries: &[Value], kind: &str) -> Value {
    let found: Vec<&Value> = entries.iter().filter(|e| e["type"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}: {entries:?}");
    found[0]["id"].clone()
}

fn assert_verified(app: &TestApp) {
    let report = app.verify();
    assert!(report.ok(), "{:?}", report.findings);
}

// ---- Payout outcomes ----------------------------------------------------------------------

#[test]
fn balance_short_at_the_scheduled_time_fails_without_an_entry() {
    // When the money is gone by the scheduled time: FAILED with a message stating available and
    // required amounts, no WITHDRAWAL or REFUND entry, no payout call, balance untouched.
    let fake = FakePayout::start(&[], Step::Reply(200));
    let app = app_with_payout(&fake);
    let u = funded(&app);
    let id = schedule_ok(&app, &u, "80.00", "short");
    let r = app.post(
        "/api/wallets/me/withdraw",
        &u.token,
        json!({"amount": "50.00", "reference": "now"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let w = wait_final(&app, &u, &id);
    assert_eq!(
        (
            &w["status"],
            &w["attempts"],
            &w["transaction_id"],
            &w["refund_transaction_id"]
        ),
        (&json!("FAILED"), &json!(0), &Value::Null, &Value::Null),
        "{w}"
    );
    assert_eq!(
        w["error_message"],
        json!("insufficient funds at the scheduled time: available 50.00, required 80.00")
    );
    assert_eq!(
        entries(&app, &u),
        vec![
            e("WITHDRAWAL", "50.00", "50.00", "now"),
            e("DEPOSIT", "100.00", "100.00", "fund")
        ]
    );
    assert_eq!(app.balance(&u), "50.00");
    assert_eq!(fake.calls().len(), 0);
    assert_verified(&app);
}

#[test]
fn without_a_payout_service_a_scheduled_withdrawal_completes_internally() {
    // No payout URL configured: at its time the withdrawal is debited and SUCCEEDED, with no
    // attempt recorded.
    let app = TestApp::spawn();
    let u = funded(&app);
    let id = schedule_ok(&app, &u, "12.34", "internal");
    let w = wait_final(&app, &u, &id);
    assert_eq!(
        (
            &w["status"],
            &w["attempts"],
            &w["error_message"],
            &w["refund_transaction_id"]
        ),
        (&json!("SUCCEEDED"), &json!(0), &Value::Null, &Value::Null),
        "{w}"
    );
    let all = full_entries(&app, &u);
    assert_eq!(w["transaction_id"], id_of_entry(&all, "WITHDRAWAL"));
    assert_eq!(
        entries(&app, &u),
        vec![
            e("WITHDRAWAL", "12.34", "87.66", "internal"),
            e("DEPOSIT", "100.00", "100.00", "fund")
        ]
    );
    assert_eq!(app.balance(&u), "87.66");
    assert_verified(&app);
}

// ---- Cancel and ownership -----------------------------------------------------------------

#[test]
fn cancel_while_pending_stops_it_for_good() {
    // Cancel while PENDING: 200 CANCELLED; past its time it never runs (no entry, no call,
    // balance intact); a second cancel is 409 `conflict`.
    let fake = FakePayout::start(&[], Step::Reply(200));
    let app = app_with_payout(&fake);
    let u = funded(&app);
    let at = in_ms(&app, 300);
    let r = schedule(&app, &u, "30.00", "cancel-me", &at);
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let r = app.post(
        &format!("/api/wallets/me/withdrawals/{id}/cancel"),
        &u.token,
        json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (&r.body["id"], &r.body["status"]),
        (&json!(id), &json!("CANCELLED"))
    );
    // The scheduled moment passes (the only wall-clock wait: the worker runs on real time).
    let scheduled = Timestamp::parse(&at).unwrap();
    while app_now(&app) < scheduled.plus_millis(400) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let w = get_withdrawal(&app, &u, &id).body;
    assert_eq!(
        (&w["status"], &w["attempts"], &w["transaction_id"]),
        (&json!("CANCELLED"), &json!(0), &Value::Null)
    );
    assert_eq!(
        entries(&app, &u),
        vec![e("DEPOSIT", "100.00", "100.00", "fund")]
    );
    assert_eq!(app.balance(&u), "100.00");
    assert_eq!(fake.calls().len(), 0);
    let r = app.post(
        &format!("/api/wallets/me/withdrawals/{id}/cancel"),
        &u.token,
        json!({}),
    );
    assert_eq!((r.status, r.code()), (409, "conflict"), "{}", r.body);
    assert_verified(&app);
}

#[test]
fn cancel_after_it_ran_is_409_and_other_users_get_404() {
    // Once processed, cancel is 409 `conflict` and changes nothing; another user's withdrawal
    // is 404 `not_found` on get and on cancel, and an unknown id is 404 too.
    let fake = FakePayout::start(&[], Step::Reply(200));
    let app = app_with_payout(&fake);
    let u = funded(&app);
    let id = schedule_ok(&app, &u, "30.00", "done");
    assert_eq!(wait_final(&app, &u, &id)["status"], "SUCCEEDED");
    let r = app.post(
        &format!("/api/wallets/me/withdrawals/{id}/cancel"),
        &u.token,
        json!({}),
    );
    assert_eq!((r.status, r.code()), (409, "conflict"), "{}", r.body);
    assert_eq!(get_withdrawal(&app, &u, &id).body["status"], "SUCCEEDED");
    assert_eq!(app.balance(&u), "70.00");

    let pending_id = {
        let at = in_ms(&app, 3_600_000);
        let r = schedule(&app, &u, "1.00", "later", &at);
        assert_eq!(r.status, 202, "{}", r.body);
        r.body["id"].as_str().unwrap().to_string()
    };
    let other = app.register(&name("o"));
    for wid in [&id, &pending_id] {
        let r = get_withdrawal(&app, &other, wid);
        assert_eq!((r.status, r.code()), (404, "not_found"), "{}", r.body);
        let r = app.post(
            &format!("/api/wallets/me/withdrawals/{wid}/cancel"),
            &other.token,
            json!({}),
        );
        assert_eq!((r.status, r.code()), (404, "not_found"), "{}", r.body);
    }
    assert_eq!(
        get_withdrawal(&app, &u, &pending_id).body["status"],
        "PENDING"
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(get_withdrawal(&app, &u, &unknown).status, 404);
    assert_verified(&app);
}

// ---- Creation, idempotency, validation, listing -------------------------------------------

#[test]
fn scheduling_replies_202_pending_and_follows_the_reference_rules() {
    // Creation is 202 with a full PENDING withdrawal; the same reference and payload replays
    // 200 with Idempotent-Replayed; a different scheduled_at or amount is 409
    // reference_conflict; past and beyond-horizon times are 422 naming scheduled_at.
    let app = TestApp::spawn_with(
        |c| c.serve.schedule_horizon_days = 30,
        Arc::new(SystemClock),
    );
    let u = funded(&app);
    let at = in_ms(&app, 3_600_000);
    let r = schedule(&app, &u, "25.50", "ref-1", &at);
    assert_eq!(r.status, 202, "{}", r.body);
    let w = r.body.clone();
    let id = w["id"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{w}");
    let created = w["created_at"].as_str().unwrap();
    assert!(Timestamp::parse(created).is_ok(), "{w}");
    assert_eq!(
        w,
        json!({
            "id": id, "currency": "USD", "amount": "25.50", "reference": "ref-1", "metadata": {}, "status": "PENDING",
            "scheduled_at": at, "attempts": 0, "error_message": null, "created_at": created,
            "updated_at": created, "transaction_id": null, "refund_transaction_id": null,
        })
    );
    assert_eq!(
        app.balance(&u),
        "100.00",
        "nothing is debited before the scheduled time"
    );

    let replay = schedule(&app, &u, "25.50", "ref-1", &at);
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert_eq!(replay.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(replay.body, w);

    let later = Timestamp::parse(&at).unwrap().plus_millis(1000).to_text();
    for (amount, when) in [("25.50", later.as_str()), ("25.51", at.as_str())] {
        let r = schedule(&app, &u, amount, "ref-1", when);
        assert_eq!(
            (r.status, r.code()),
            (409, "reference_conflict"),
            "{}",
            r.body
        );
        assert_eq!(
            r.body["error"]["fields"]["reference"],
            json!([format!("already used by withdrawal {id}")])
        );
    }
    // The reference of an immediate withdrawal is taken for scheduled ones too.
    let r = app.post(
        "/api/wallets/me/withdraw",
        &u.token,
        json!({"amount": "1.00", "reference": "ref-now"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = schedule(&app, &u, "1.00", "ref-now", &at);
    assert_eq!(
        (r.status, r.code()),
        (409, "reference_conflict"),
        "{}",
        r.body
    );

    let past = in_ms(&app, -1000);
    let beyond = in_ms(&app, 31 * 86_400_000);
    for (when, why) in [
        (past.as_str(), "past"),
        (beyond.as_str(), "beyond the horizon"),
        ("tomorrow", "malformed"),
    ] {
        let r = schedule(&app, &u, "1.00", &format!("bad-{why}"), when);
        assert_eq!(
            (r.status, r.code()),
            (422, "validation_error"),
            "{why}: {}",
            r.body
        );
        assert!(
            r.body["error"]["fields"]["scheduled_at"].is_array(),
            "{why}: {}",
            r.body
        );
    }
    // Inside the horizon is fine; a failed request did not consume its reference.
    let r = schedule(&app, &u, "1.00", "bad-past", &in_ms(&app, 29 * 86_400_000));
    assert_eq!(r.status, 202, "{}", r.body);

    let list = app.get("/api/wallets/me/withdrawals", &u.token);
    assert_eq!(list.body["count"], 2, "{}", list.body);
    assert_eq!(app.balance(&u), "99.00");
    assert_verified(&app);
}

#[test]
fn list_filters_by_status() {
    // ?status= returns exactly the withdrawals in that state; no filter returns all, newest
    // first; an unknown status is 422.
    let app = TestApp::spawn();
    let u = funded(&app);
    let done = schedule_ok(&app, &u, "10.00", "l-done");
    let cancelled = {
        let r = schedule(&app, &u, "10.00", "l-cancel", &in_ms(&app, 3_600_000));
        r.body["id"].as_str().unwrap().to_string()
    };
    let r = app.post(
        &format!("/api/wallets/me/withdrawals/{cancelled}/cancel"),
        &u.token,
        json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let pending = {
        let r = schedule(&app, &u, "10.00", "l-pending", &in_ms(&app, 7_200_000));
        r.body["id"].as_str().unwrap().to_string()
    };
    assert_eq!(wait_final(&app, &u, &done)["status"], "SUCCEEDED");
    let ids = |q: &str| -> (Value, Vec<String>) {
        let r = app.get(&format!("/api/wallets/me/withdrawals{q}"), &u.token);
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        let ids = r.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap().to_string())
            .collect();
        (r.body["count"].clone(), ids)
    };
    assert_eq!(ids("?status=PENDING"), (json!(1), vec![pending.clone()]));
    assert_eq!(
        ids("?status=CANCELLED"),
        (json!(1), vec![cancelled.clone()])
    );
    assert_eq!(ids("?status=SUCCEEDED"), (json!(1), vec![done.clone()]));
    assert_eq!(ids("?status=FAILED"), (json!(0), vec![]));
    assert_eq!(ids(""), (json!(3), vec![pending, cancelled, done]));
    let r = app.get("/api/wallets/me/withdrawals?status=LOST", &u.token);
    assert_eq!(
        (r.status, r.code()),
        (422, "validation_error"),
        "{}",
        r.body
    );
    assert_verified(&app);
}

// ---- Crash safety: SIGKILL the real binary in the middle of a payout ----------------------

/// The real binary serving `db`, paying out to `payout_url` with short retries (within
/// `retry_window`, when given).
fn start_binary(
    db: impl AsRef<OsStr>,
    payout_url: &str,
    retry_window: Option<&str>,
) -> crate::binary::Server {
    let mut cmd = crate::binary::wallet(db);
    cmd.env("WALLET_PAYOUT_URL", payout_url)
        .env("WALLET_PAYOUT_RETRY_BASE_MS", "20")
        .env("WALLET_PAYOUT_TIMEOUT_MS", "20000");
    if let Some(window) = retry_window {
        cmd.env("WALLET_PAYOUT_RETRY_WINDOW", window);
    }
    crate::binary::Server::start(cmd)
}

/// On a running binary: registers a user, deposits 100.00 and schedules `amount` 300 ms ahead.
/// Returns the token, the user id and the withdrawal id.
fn binary_withdrawal(base: &str, amount: &str, reference: &str) -> (String, i64, String) {
    let username = name("k");
    let (status, reg) = call(
        base,
        "POST",
        "/api/auth/register",
        None,
        Some(
            json!({"username": username, "email": format!("{username}@example.com"),
            "password": "correct horse battery", "password_confirm": "correct horse battery"}),
        ),
    );
    assert_eq!(status, 201, "{reg}");
    let token = reg["token"].as_str().unwrap().to_string();
    let user_id = reg["user"]["id"].as_i64().unwrap();
    let (status, body) = call(
        base,
        "POST",
        "/api/wallets/me/deposit",
        Some(&token),
        Some(json!({"amount": "100.00", "reference": "fund"})),
    );
    assert_eq!(status, 201, "{body}");
    let at = Timestamp::from_datetime(chrono::Utc::now())
        .plus_millis(300)
        .to_text();
    let (status, w) = call(
        base,
        "POST",
        "/api/wallets/me/withdraw",
        Some(&token),
        Some(json!({"amount": amount, "reference": reference, "scheduled_at": at})),
    );
    assert_eq!(status, 202, "{w}");
    (token, user_id, w["id"].as_str().unwrap().to_string())
}

/// The fake holds the first call open; SIGKILLs the server while it waits for the answer.
fn kill_during_the_call(mut server: crate::binary::Server, fake: &FakePayout) {
    let calls = fake.wait_calls(1, Duration::from_secs(10));
    assert_eq!(calls.len(), 1, "the payout call never came");
    server.child.kill().expect("SIGKILL");
    server.child.wait().unwrap();
}

fn call(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let agent = crate::helpers::agent();
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Token {t}"));
    }
    let mut resp = match body {
        Some(b) => agent.run(
            req.header("Content-Type", "application/json")
                .body(b.to_string())
                .unwrap(),
        ),
        None => agent.run(req.body(()).unwrap()),
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn killed_mid_payout_the_withdrawal_completes_exactly_once_after_restart() {
    // SIGKILL while the payout call is in flight; on restart the PROCESSING withdrawal resumes
    // with the same Idempotency-Key and succeeds: one WITHDRAWAL entry, debited once, no refund,
    // and `wallet verify` exits 0.
    let fake = FakePayout::start(&[Step::Hold], Step::Reply(200));
    let db = TestDb::new();

    let first = start_binary(db.arg(), &fake.url, None);
    let (token, user_id, id) = binary_withdrawal(&first.base, "40.00", "kill");
    kill_during_the_call(first, &fake);
    {
        let row = db
            .sql()
            .query_one(
                "SELECT w.status, (SELECT balance FROM balances) FROM withdrawals w WHERE id = ?1",
                &[&id],
            )
            .unwrap();
        let (status, balance): (String, i64) = (row.get(0).unwrap(), row.get(1).unwrap());
        assert_eq!(
            (status.as_str(), balance),
            ("PROCESSING", 6000),
            "state left by the kill"
        );
    }

    let second = start_binary(db.arg(), &fake.url, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let w = loop {
        let (status, w) = call(
            &second.base,
            "GET",
            &format!("/api/wallets/me/withdrawals/{id}"),
            Some(&token),
            None,
        );
        assert_eq!(status, 200, "{w}");
        if w["status"] != "PROCESSING" && w["status"] != "PENDING" {
            break w;
        }
        assert!(Instant::now() < deadline, "still {w} after restart");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        (&w["status"], &w["refund_transaction_id"]),
        (&json!("SUCCEEDED"), &Value::Null),
        "{w}"
    );
    let (_, wallet) = call(&second.base, "GET", "/api/wallets/me", Some(&token), None);
    assert_eq!(wallet["balance"], "60.00");
    let (_, list) = call(
        &second.base,
        "GET",
        "/api/wallets/me/transactions?limit=100",
        Some(&token),
        None,
    );
    let kinds: Vec<(&str, &str, &str)> = list["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["amount"].as_str().unwrap(),
                e["balance_after"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("WITHDRAWAL", "40.00", "60.00"),
            ("DEPOSIT", "100.00", "100.00")
        ]
    );
    assert_eq!(w["transaction_id"], list["results"][0]["id"]);

    let calls = fake.calls();
    assert!(calls.len() >= 2, "{calls:#?}");
    let body = json!({"withdrawal_id": id, "user_id": user_id, "amount": "40.00", "currency": "USD", "reference": "kill"});
    assert_calls(&calls, calls.len(), &id, &body);

    // A clean stop, then the binary's own check of the whole ledger.
    let pid = second.child.id() as i32;
    // SAFETY: sends SIGTERM to the child this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let mut second = second;
    let deadline = Instant::now() + Duration::from_secs(10);
    while second.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_wallet"))
        .arg("--db")
        .arg(db.arg())
        .arg("verify")
        .env_remove("WALLET_DB")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(": OK"), "{stdout}");
}

#[test]
fn a_retry_after_the_scheduled_time_replays_instead_of_failing() {
    // A client that retries a scheduled withdrawal late (after it ran) gets the original
    // back, 200 and replayed, not a 422 that would invite a second withdrawal.
    let app = TestApp::spawn();
    let u = funded(&app);
    let at = in_ms(&app, 300);
    let first = schedule(&app, &u, "30.00", "late-retry", &at);
    assert_eq!(first.status, 202, "{}", first.body);
    let id = first.body["id"].as_str().unwrap().to_string();
    let done = wait_final(&app, &u, &id);
    assert_eq!(done["status"], "SUCCEEDED");
    let again = schedule(&app, &u, "30.00", "late-retry", &at);
    assert_eq!(
        (again.status, again.header("Idempotent-Replayed")),
        (200, Some("true")),
        "{}",
        again.body
    );
    assert_eq!(again.body["id"], json!(id));
    assert_eq!(again.body["status"], "SUCCEEDED");
    assert_eq!(app.balance(&u), "70.00");
    // A new reference with a time in the past is still refused.
    let past = schedule(&app, &u, "1.00", "late-new", &at);
    assert_eq!((past.status, past.code()), (422, "validation_error"));
}

#[test]
fn a_redirect_from_the_payout_service_is_not_a_payout() {
    // A 302 is a failed attempt, retried with the same POST: following it would turn the POST
    // into a GET whose 200 (from the page it points to) looked like a payout.
    let fake = FakePayout::start(&[Step::Reply(302)], Step::Reply(200));
    let app = app_with_payout(&fake);
    let u = funded(&app);
    let id = schedule_ok(&app, &u, "30.00", "redirected");
    let w = wait_final(&app, &u, &id);
    assert_eq!(
        (&w["status"], &w["attempts"]),
        (&json!("SUCCEEDED"), &json!(2)),
        "{w}"
    );
    let calls = fake.calls();
    assert_eq!(calls.len(), 2, "the redirect was not followed");
    assert!(
        calls
            .iter()
            .all(|c| c.method == "POST" && c.path == "/payouts"),
        "no GET of the redirect target"
    );
    assert_eq!(app.balance(&u), "70.00");
    assert_verified(&app);
}

// ---- Payouts whose outcome is unknown (issue 11) ------------------------------------------

/// Where the payout calls go in a scenario.
#[derive(Clone, Copy, Debug)]
enum Payee {
    /// The fake, answering with `script` in order, then with `fallback`.
    Fake(&'static [Step], Step),
    /// A port nobody listens on: every connection is refused.
    Nobody,
}

/// What a scenario must come to.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// SUCCEEDED after this many attempts, debited once.
    Paid(u32),
    /// FAILED after this many attempts, with this message (from the fake: exactly; when
    /// nobody listens, the operating system's words follow it), and refunded.
    Refunded(u32, &'static str),
    /// Left PROCESSING for staff once the retry window is over: not refunded, retried at least
    /// once with the same key, counted in /metrics.
    Unknown,
}

struct Scenario {
    name: &'static str,
    payee: Payee,
    expect: Expect,
}

use Step::{Hang, Reply};

/// The contract's "Payouts whose outcome is unknown", one row per sequence of answers. Only a
/// definite "not paid" refunds: no connection, a 400/401/403/404/422, or 500/503 on every
/// attempt. Anything else, once, makes the outcome unknown for good.
const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "200 at once",
        payee: Payee::Fake(&[], Reply(200)),
        expect: Expect::Paid(1),
    },
    Scenario {
        name: "500 twice, then 200 (retried with backoff)",
        payee: Payee::Fake(&[Reply(500), Reply(500)], Reply(200)),
        expect: Expect::Paid(3),
    },
    Scenario {
        name: "a call that hangs past the timeout, then 200 (the worker does not wait for it)",
        payee: Payee::Fake(&[Hang(2500, 200)], Reply(200)),
        expect: Expect::Paid(2),
    },
    Scenario {
        name: "502 every time",
        payee: Payee::Fake(&[], Reply(502)),
        expect: Expect::Unknown,
    },
    Scenario {
        name: "504 every time",
        payee: Payee::Fake(&[], Reply(504)),
        expect: Expect::Unknown,
    },
    Scenario {
        name: "409 every time",
        payee: Payee::Fake(&[], Reply(409)),
        expect: Expect::Unknown,
    },
    Scenario {
        name: "429 every time",
        payee: Payee::Fake(&[], Reply(429)),
        expect: Expect::Unknown,
    },
    Scenario {
        name: "418, a status the contract does not name",
        payee: Payee::Fake(&[], Reply(418)),
        expect: Expect::Unknown,
    },
    Scenario {
        name: "a timeout every time",
        payee: Payee::Fake(&[], Hang(2000, 200)),
        expect: Expect::Unknown,
    },
    Scenario {
        name: "500, then 502",
        payee: Payee::Fake(&[Reply(500)], Reply(502)),
        expect: Expect::Unknown,
    },
    Scenario {
        name: "502, then 500 (an earlier unknown outcome stays unknown)",
        payee: Payee::Fake(&[Reply(502)], Reply(500)),
        expect: Expect::Unknown,
    },
    Scenario {
        name: "a timeout, then 400",
        payee: Payee::Fake(&[Hang(2000, 200)], Reply(400)),
        expect: Expect::Unknown,
    },
    Scenario {
        name: "502, then 200",
        payee: Payee::Fake(&[Reply(502)], Reply(200)),
        expect: Expect::Paid(2),
    },
    Scenario {
        name: "connection refused every time",
        payee: Payee::Nobody,
        expect: Expect::Refunded(
            3,
            "payout failed after 3 attempts: payout service unreachable",
        ),
    },
    Scenario {
        name: "400 (final: the service's message is kept, no retry)",
        payee: Payee::Fake(&[], Reply(400)),
        expect: Expect::Refunded(1, r#"payout refused: HTTP 400: {"error":"account closed"}"#),
    },
    Scenario {
        name: "401",
        payee: Payee::Fake(&[], Reply(401)),
        expect: Expect::Refunded(1, r#"payout refused: HTTP 401: {"error":"bank down"}"#),
    },
    Scenario {
        name: "403",
        payee: Payee::Fake(&[], Reply(403)),
        expect: Expect::Refunded(1, r#"payout refused: HTTP 403: {"error":"bank down"}"#),
    },
    Scenario {
        name: "404",
        payee: Payee::Fake(&[], Reply(404)),
        expect: Expect::Refunded(1, r#"payout refused: HTTP 404: {"error":"bank down"}"#),
    },
    Scenario {
        name: "422",
        payee: Payee::Fake(&[], Reply(422)),
        expect: Expect::Refunded(1, r#"payout refused: HTTP 422: {"error":"bank down"}"#),
    },
    Scenario {
        name: "500, then 400",
        payee: Payee::Fake(&[Reply(500)], Reply(400)),
        expect: Expect::Refunded(2, r#"payout refused: HTTP 400: {"error":"account closed"}"#),
    },
    Scenario {
        name: "500 every time (exactly the maximum of attempts, then the last error)",
        payee: Payee::Fake(&[], Reply(500)),
        expect: Expect::Refunded(
            3,
            r#"payout failed after 3 attempts: HTTP 500: {"error":"bank down"}"#,
        ),
    },
    Scenario {
        name: "503 every time",
        payee: Payee::Fake(&[], Reply(503)),
        expect: Expect::Refunded(
            3,
            r#"payout failed after 3 attempts: HTTP 503: {"error":"bank down"}"#,
        ),
    },
    Scenario {
        name: "500, 503, 500",
        payee: Payee::Fake(&[Reply(500), Reply(503)], Reply(500)),
        expect: Expect::Refunded(
            3,
            r#"payout failed after 3 attempts: HTTP 500: {"error":"bank down"}"#,
        ),
    },
];

const OUTCOME_UNKNOWN: &str = "payout outcome unknown";

/// An http:// URL on which every connection is refused (a port that was just let go).
fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/payouts")
}

/// Polls the withdrawal (at most 10 s) until `done` says yes, and returns it.
fn wait_until(app: &TestApp, u: &User, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get_withdrawal(app, u, id);
        assert_eq!(r.status, 200, "{}", r.body);
        if done(&r.body) {
            return r.body;
        }
        assert!(Instant::now() < deadline, "still {} after 10 s", r.body);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Final, or left PROCESSING for staff.
fn settled(w: &Value) -> bool {
    ["SUCCEEDED", "FAILED", "CANCELLED"].contains(&w["status"].as_str().unwrap_or(""))
        || left_for_staff(w)
}

fn left_for_staff(w: &Value) -> bool {
    w["status"] == "PROCESSING"
        && w["error_message"]
            .as_str()
            .is_some_and(|m| m.starts_with(OUTCOME_UNKNOWN))
}

/// One sample from /metrics.
fn metric(app: &TestApp, name: &str) -> Option<f64> {
    let r = app.request("GET", "/metrics", None, None);
    assert_eq!(r.status, 200);
    let text = r.body.as_str().expect("metrics are text").to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
        .map(|v| v.parse().expect("a number"))
}

fn run_scenario(s: &Scenario) {
    let fake = match s.payee {
        Payee::Fake(script, fallback) => Some(FakePayout::start(script, fallback)),
        Payee::Nobody => None,
    };
    let url = fake.as_ref().map_or_else(refused_url, |f| f.url.clone());
    let app = app_paying_to(&url);
    let u = funded(&app);
    // Timed from when the withdrawal falls due (taken just before the request, so never
    // later than the real moment), not from the request.
    let due = Instant::now() + Duration::from_millis(SCHEDULE_LEAD_MS);
    let id = schedule_ok(&app, &u, "30.00", "row");
    let w = wait_until(&app, &u, &id, settled);
    let took = Instant::now().saturating_duration_since(due);
    let attempts = w["attempts"].as_u64().unwrap() as usize;
    let all = full_entries(&app, &u);
    assert_eq!(w["transaction_id"], id_of_entry(&all, "WITHDRAWAL"), "{w}");
    let debited = vec![
        e("WITHDRAWAL", "30.00", "70.00", "row"),
        e("DEPOSIT", "100.00", "100.00", "fund"),
    ];
    match s.expect {
        Expect::Paid(n) => {
            assert_eq!(
                (&w["status"], &w["attempts"], &w["refund_transaction_id"]),
                (&json!("SUCCEEDED"), &json!(n), &Value::Null),
                "{w}"
            );
            if n == 1 {
                assert_eq!(w["error_message"], Value::Null, "{w}");
            }
            // A hung call is given up at the payout timeout, not waited for: the next call
            // comes one timeout (and a short backoff) after it, where waiting would put the
            // hang's 2.5 s between them. Timed between the calls, on the fake's clock, so a
            // loaded machine's slow pick-up of the due withdrawal doesn't count.
            if let Some(fake) = &fake {
                let calls = fake.calls();
                for pair in calls.windows(2) {
                    let gap = pair[1].at.duration_since(pair[0].at);
                    assert!(
                        gap < Duration::from_millis(2400),
                        "the worker waited {gap:?} for a hung call (took {took:?} in all)"
                    );
                }
            }
            assert_eq!(entries(&app, &u), debited);
            assert_eq!(app.balance(&u), "70.00");
        }
        Expect::Refunded(n, message) => {
            assert_eq!(
                (&w["status"], &w["attempts"]),
                (&json!("FAILED"), &json!(n)),
                "{w}"
            );
            let error = w["error_message"].as_str().unwrap();
            match s.payee {
                Payee::Fake(..) => assert_eq!(error, message),
                Payee::Nobody => assert!(error.starts_with(message), "{error}"),
            }
            assert_eq!(w["refund_transaction_id"], id_of_entry(&all, "REFUND"));
            let mut refunded = vec![e("REFUND", "30.00", "100.00", "row")];
            refunded.extend(debited);
            assert_eq!(entries(&app, &u), refunded);
            assert_eq!(app.balance(&u), "100.00");
        }
        Expect::Unknown => {
            assert!(left_for_staff(&w), "{w}");
            assert_eq!(w["refund_transaction_id"], Value::Null, "{w}");
            assert!(attempts >= 2, "never retried: {w}");
            assert_eq!(
                entries(&app, &u),
                debited,
                "refunded although it may be paid"
            );
            assert_eq!(app.balance(&u), "70.00");
            assert_eq!(metric(&app, "wallet_payouts_outcome_unknown"), Some(1.0));
            // Left alone, it is not called for again (nor does the worker spin on it).
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(get_withdrawal(&app, &u, &id).body, w);
        }
    }
    if let Some(fake) = &fake {
        // Give a wrong extra call the time to happen, then check there was none.
        std::thread::sleep(Duration::from_millis(8 * RETRY_BASE_MS));
        let body = payout_body(&id, &u, "30.00", "row");
        assert_calls(&fake.calls(), attempts, &id, &body);
    }
    assert_verified(&app);
}

#[test]
fn payout_answers_decide_between_paid_refunded_and_unknown() {
    // Each row of SCENARIOS on its own server and fake payout service (in parallel): the final
    // state, the refund or its absence, the balance, the attempts, and that every call carried
    // the withdrawal id as Idempotency-Key with the same body. A row of unknown outcome is
    // retried within the window, then left PROCESSING with a message saying so, counted by
    // the `wallet_payouts_outcome_unknown` gauge, and not called again.
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = SCENARIOS
            .iter()
            .map(|s| (s.name, scope.spawn(move || run_scenario(s))))
            .collect();
        handles
            .into_iter()
            .filter_map(|(name, h)| {
                h.join().err().map(|panic| {
                    let why = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    format!("{name}: {why}")
                })
            })
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// A clock the test moves: the retry window and the backoff pass only when told to, so the
// number of calls is exact.

const START: &str = "2026-03-02T09:00:00.000000Z";

struct Manual {
    app: TestApp,
    clock: Arc<ManualClock>,
    fake: FakePayout,
    user: User,
    id: String,
}

/// A server on a manual clock paying out to a fake answering `fallback` (timeout `timeout_ms`,
/// retry window an hour), and a withdrawal of 30.00 from a wallet of 100.00 that is now due.
fn manual_withdrawal(fallback: Step, timeout_ms: u64) -> Manual {
    let clock = Arc::new(ManualClock::new(Timestamp::parse(START).unwrap()));
    let fake = FakePayout::start(&[], fallback);
    let url = fake.url.clone();
    let app = TestApp::spawn_with(
        move |c| {
            c.serve.payout_url = Some(url);
            c.serve.payout_retry_base_ms = RETRY_BASE_MS;
            c.serve.payout_timeout_ms = timeout_ms;
            c.serve.payout_attempts_max = 3;
            c.serve.payout_retry_window = Duration::from_secs(3600);
        },
        clock.clone(),
    );
    let user = funded(&app);
    let at = clock.now().plus_millis(10).to_text();
    let r = schedule(&app, &user, "30.00", "unknown", &at);
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    clock.advance_ms(10);
    Manual {
        app,
        clock,
        fake,
        user,
        id,
    }
}

/// Waits until `n` attempts are recorded; the withdrawal is PROCESSING and not refunded.
fn wait_attempts(m: &Manual, n: u64) -> Value {
    let w = wait_until(&m.app, &m.user, &m.id, |w| w["attempts"] == n);
    assert_eq!(
        (&w["status"], &w["refund_transaction_id"]),
        (&json!("PROCESSING"), &Value::Null),
        "{w}"
    );
    w
}

#[test]
fn a_payout_timing_out_after_the_request_was_sent_is_never_refunded() {
    // The issue's case: the payout service answers after 2 s, the timeout is 500 ms. Each try
    // times out after the request was sent, so whether the money left is unknown: three tries
    // with the same Idempotency-Key and body, then the window ends and the withdrawal stays
    // PROCESSING with a message saying the outcome is unknown: no REFUND entry, the balance
    // still debited, counted in /metrics, and no fourth call.
    let m = manual_withdrawal(Step::Hang(2000, 200), 500);
    for n in 1..=3 {
        let w = wait_attempts(&m, n);
        let error = w["error_message"].as_str().unwrap();
        assert!(error.contains("no answer"), "{error}");
        // Past the backoff, well inside the hour's window.
        m.clock.advance_ms(60_000);
        if n == 3 {
            // The window ends while the fourth try waits for its time.
            m.clock.advance_ms(3_600_000);
        }
    }
    let w = wait_until(&m.app, &m.user, &m.id, left_for_staff);
    assert_eq!(
        (&w["status"], &w["attempts"], &w["refund_transaction_id"]),
        (&json!("PROCESSING"), &json!(3), &Value::Null),
        "{w}"
    );
    assert!(
        w["error_message"].as_str().unwrap().contains("staff"),
        "{w}"
    );
    assert_eq!(
        entries(&m.app, &m.user),
        vec![
            e("WITHDRAWAL", "30.00", "70.00", "unknown"),
            e("DEPOSIT", "100.00", "100.00", "fund"),
        ]
    );
    assert_eq!(m.app.balance(&m.user), "70.00");
    assert_eq!(metric(&m.app, "wallet_payouts_outcome_unknown"), Some(1.0));
    assert_eq!(
        metric(&m.app, "wallet_payouts_outcome_unknown_total"),
        Some(1.0)
    );
    // More time passes: still left for staff, still no call.
    m.clock.advance_ms(7_200_000);
    std::thread::sleep(Duration::from_millis(300));
    let body = payout_body(&m.id, &m.user, "30.00", "unknown");
    assert_calls(&m.fake.calls(), 3, &m.id, &body);
    assert_eq!(
        get_withdrawal(&m.app, &m.user, &m.id).body["status"],
        "PROCESSING"
    );
    assert_verified(&m.app);
}

fn resolve(app: &TestApp, token: Option<&str>, id: &str, body: Value) -> Resp {
    app.request(
        "POST",
        &format!("/api/admin/withdrawals/{id}/resolve"),
        token,
        Some(&body),
    )
}

/// (staff_user_id, action, target, detail) of every audit row.
fn audit_rows(app: &TestApp) -> Vec<(i64, String, String, Value)> {
    app.db()
        .query(
            "SELECT staff_user_id, action, target, detail FROM audit_log ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0).unwrap(),
                r.get(1).unwrap(),
                r.get(2).unwrap(),
                serde_json::from_str(&r.get::<String>(3).unwrap()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn resolve_succeeded_marks_it_paid_and_is_audited() {
    // A withdrawal whose payout answered 502 (outcome unknown, PROCESSING, between tries):
    // staff resolve it as succeeded: 200 SUCCEEDED, no refund, still debited once; the audit
    // log names the staff user, the withdrawal, the outcome and the reason; a second resolve is
    // 409 `conflict`; the worker never calls for it again.
    let m = manual_withdrawal(Step::Reply(502), TIMEOUT_MS);
    wait_attempts(&m, 1);
    let staff = staff_user(&m.app);
    let reason = "the bank confirmed payout 7781 on 2 March";
    let r = resolve(
        &m.app,
        Some(&staff.token),
        &m.id,
        json!({"outcome": "succeeded", "reason": reason}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (
            &r.body["id"],
            &r.body["status"],
            &r.body["error_message"],
            &r.body["refund_transaction_id"],
            &r.body["attempts"]
        ),
        (
            &json!(m.id),
            &json!("SUCCEEDED"),
            &Value::Null,
            &Value::Null,
            &json!(1)
        ),
        "{}",
        r.body
    );
    assert_eq!(get_withdrawal(&m.app, &m.user, &m.id).body, r.body);
    assert_eq!(m.app.balance(&m.user), "70.00");
    assert_eq!(
        entries(&m.app, &m.user),
        vec![
            e("WITHDRAWAL", "30.00", "70.00", "unknown"),
            e("DEPOSIT", "100.00", "100.00", "fund"),
        ]
    );
    let audit = audit_rows(&m.app);
    assert_eq!(
        audit,
        vec![(
            staff.id,
            "resolve_withdrawal".to_string(),
            format!("withdrawal:{}", m.id),
            json!({"outcome": "succeeded", "reason": reason, "refund_transaction_id": null}),
        )]
    );
    let again = resolve(
        &m.app,
        Some(&staff.token),
        &m.id,
        json!({"outcome": "failed", "reason": "changed my mind"}),
    );
    assert_eq!(
        (again.status, again.code()),
        (409, "conflict"),
        "{}",
        again.body
    );
    assert_eq!(
        audit_rows(&m.app).len(),
        1,
        "a refused resolve is not audited"
    );
    // Its retry time comes and goes: no call.
    m.clock.advance_ms(60_000);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(m.fake.calls().len(), 1);
    assert_verified(&m.app);
}

#[test]
fn resolve_failed_refunds_in_the_same_transaction() {
    // Staff resolve a withdrawal left for them (its window over) as failed: 200 FAILED with
    // refund_transaction_id naming the new REFUND entry, the balance restored, the gauge back
    // to 0; the table's CHECK (FAILED with a debit needs its refund) holds and refuses to be
    // broken; a second resolve is 409 `conflict`; `wallet verify` passes.
    let m = manual_withdrawal(Step::Reply(502), TIMEOUT_MS);
    wait_attempts(&m, 1);
    m.clock.advance_ms(2 * 3_600_000);
    wait_until(&m.app, &m.user, &m.id, left_for_staff);
    assert_eq!(metric(&m.app, "wallet_payouts_outcome_unknown"), Some(1.0));
    let staff = staff_user(&m.app);
    let r = resolve(
        &m.app,
        Some(&staff.token),
        &m.id,
        json!({"outcome": "failed", "reason": "the bank has no payout with this key"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "FAILED", "{}", r.body);
    let all = full_entries(&m.app, &m.user);
    assert_eq!(r.body["refund_transaction_id"], id_of_entry(&all, "REFUND"));
    assert_eq!(r.body["transaction_id"], id_of_entry(&all, "WITHDRAWAL"));
    assert_eq!(
        entries(&m.app, &m.user),
        vec![
            e("REFUND", "30.00", "100.00", "unknown"),
            e("WITHDRAWAL", "30.00", "70.00", "unknown"),
            e("DEPOSIT", "100.00", "100.00", "fund"),
        ]
    );
    assert_eq!(m.app.balance(&m.user), "100.00");
    assert_eq!(metric(&m.app, "wallet_payouts_outcome_unknown"), Some(0.0));
    let audit = audit_rows(&m.app);
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(
        audit[0].3["refund_transaction_id"],
        r.body["refund_transaction_id"]
    );
    let db = m.app.db();
    let broken: i64 = db
        .query_one(
            "SELECT count(*) FROM withdrawals WHERE status = 'FAILED' AND transaction_id IS NOT NULL
             AND refund_transaction_id IS NULL",
            &[],
        )
        .unwrap()
        .get(0)
        .unwrap();
    assert_eq!(broken, 0);
    let err = db
        .execute(
            "UPDATE withdrawals SET refund_transaction_id = NULL WHERE id = ?1",
            &[&m.id],
        )
        .unwrap_err();
    let err = format!("{err:?}");
    assert!(err.to_lowercase().contains("check constraint"), "{err}");
    let again = resolve(
        &m.app,
        Some(&staff.token),
        &m.id,
        json!({"outcome": "failed", "reason": "again"}),
    );
    assert_eq!(
        (again.status, again.code()),
        (409, "conflict"),
        "{}",
        again.body
    );
    assert_eq!(m.app.balance(&m.user), "100.00", "refunded twice");
    assert_eq!(m.fake.calls().len(), 1);
    assert_verified(&m.app);
}

#[test]
fn resolve_is_for_staff_with_a_valid_body_on_a_processing_withdrawal_only() {
    // No token: 401. A user who is not staff (the owner included): 403 `forbidden`. A staff
    // user resolving their own withdrawal: 403. A missing or bad outcome or reason: 422
    // `validation_error` naming each field; broken JSON: 400. An unknown id: 404. A PENDING or
    // SUCCEEDED withdrawal: 409 `conflict`. None of them changes anything.
    let m = manual_withdrawal(Step::Reply(502), TIMEOUT_MS);
    wait_attempts(&m, 1);
    let staff = staff_user(&m.app);
    let ok = json!({"outcome": "failed", "reason": "checked"});
    let r = resolve(&m.app, None, &m.id, ok.clone());
    assert_eq!((r.status, r.code()), (401, "unauthorized"), "{}", r.body);
    let other = m.app.register(&name("o"));
    for who in [&m.user, &other] {
        let r = resolve(&m.app, Some(&who.token), &m.id, ok.clone());
        assert_eq!((r.status, r.code()), (403, "forbidden"), "{}", r.body);
    }
    let long = "x".repeat(501);
    for (body, fields) in [
        (json!({}), vec!["outcome", "reason"]),
        (json!({"reason": "checked"}), vec!["outcome"]),
        (
            json!({"outcome": "paid", "reason": "checked"}),
            vec!["outcome"],
        ),
        (
            json!({"outcome": "FAILED", "reason": "checked"}),
            vec!["outcome"],
        ),
        (
            json!({"outcome": true, "reason": "checked"}),
            vec!["outcome"],
        ),
        (json!({"outcome": "failed"}), vec!["reason"]),
        (json!({"outcome": "failed", "reason": ""}), vec!["reason"]),
        (
            json!({"outcome": "failed", "reason": "   "}),
            vec!["reason"],
        ),
        (json!({"outcome": "failed", "reason": null}), vec!["reason"]),
        (json!({"outcome": "failed", "reason": 7}), vec!["reason"]),
        (json!({"outcome": "failed", "reason": long}), vec!["reason"]),
        (
            json!({"outcome": null, "reason": []}),
            vec!["outcome", "reason"],
        ),
    ] {
        let r = resolve(&m.app, Some(&staff.token), &m.id, body.clone());
        assert_eq!(
            (r.status, r.code()),
            (422, "validation_error"),
            "{body}: {}",
            r.body
        );
        let named: Vec<&str> = r.body["error"]["fields"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(named, fields, "{body}: {}", r.body);
    }
    let r = m.app.raw(
        "POST",
        &format!("/api/admin/withdrawals/{}/resolve", m.id),
        Some(&staff.token),
        Some("{\"outcome\": ".into()),
        Some("application/json"),
    );
    assert_eq!((r.status, r.code()), (400, "malformed_json"), "{}", r.body);
    for unknown in [uuid::Uuid::new_v4().to_string(), "not-an-id".to_string()] {
        let r = resolve(&m.app, Some(&staff.token), &unknown, ok.clone());
        assert_eq!((r.status, r.code()), (404, "not_found"), "{}", r.body);
    }
    let r = m.app.request(
        "GET",
        &format!("/api/admin/withdrawals/{}/resolve", m.id),
        Some(&staff.token),
        None,
    );
    assert_eq!(r.status, 405, "{}", r.body);

    // A staff user's own PROCESSING withdrawal.
    m.app.deposit(&staff, "10.00", "staff-fund");
    let at = m.clock.now().plus_millis(10).to_text();
    let r = schedule(&m.app, &staff, "5.00", "mine", &at);
    assert_eq!(r.status, 202, "{}", r.body);
    let mine = r.body["id"].as_str().unwrap().to_string();
    m.clock.advance_ms(10);
    wait_until(&m.app, &staff, &mine, |w| w["attempts"] == 1);
    let r = resolve(&m.app, Some(&staff.token), &mine, ok.clone());
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{}", r.body);

    // Nothing changed so far.
    let w = get_withdrawal(&m.app, &m.user, &m.id).body;
    assert_eq!(
        (&w["status"], &w["attempts"]),
        (&json!("PROCESSING"), &json!(1))
    );
    assert_eq!(m.app.balance(&m.user), "70.00");
    assert!(audit_rows(&m.app).is_empty());

    // Not PROCESSING: a PENDING one (an hour ahead), then this one once paid.
    let later = m.clock.now().plus_millis(3_600_000).to_text();
    let r = schedule(&m.app, &m.user, "1.00", "later", &later);
    assert_eq!(r.status, 202, "{}", r.body);
    let pending = r.body["id"].as_str().unwrap().to_string();
    let r = resolve(&m.app, Some(&staff.token), &pending, ok.clone());
    assert_eq!((r.status, r.code()), (409, "conflict"), "{}", r.body);
    assert_eq!(
        get_withdrawal(&m.app, &m.user, &pending).body["status"],
        "PENDING"
    );
    let r = resolve(
        &m.app,
        Some(&staff.token),
        &m.id,
        json!({"outcome": "succeeded", "reason": "paid"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = resolve(&m.app, Some(&staff.token), &m.id, ok);
    assert_eq!((r.status, r.code()), (409, "conflict"), "{}", r.body);
    assert_eq!(m.app.balance(&m.user), "70.00");
    assert_verified(&m.app);
}

#[test]
fn resolve_is_409_while_a_payout_call_is_in_flight() {
    // While the worker waits for the payout service's answer, staff can't resolve the
    // withdrawal: the call may still pay it. 409 `conflict`, nothing changes; once the call
    // has ended (the connection drops: outcome unknown), the same request succeeds.
    let m = manual_withdrawal(Step::Hold, 20_000);
    let calls = m.fake.wait_calls(1, Duration::from_secs(10));
    assert_eq!(calls.len(), 1, "the payout call never came");
    let staff = staff_user(&m.app);
    let body = json!({"outcome": "failed", "reason": "the bank never saw it"});
    let r = resolve(&m.app, Some(&staff.token), &m.id, body.clone());
    assert_eq!((r.status, r.code()), (409, "conflict"), "{}", r.body);
    let w = get_withdrawal(&m.app, &m.user, &m.id).body;
    assert_eq!(
        (&w["status"], &w["attempts"]),
        (&json!("PROCESSING"), &json!(0))
    );
    assert_eq!(m.app.balance(&m.user), "70.00");
    // End the call: the fake lets the connection go without an answer.
    let Manual {
        app,
        fake,
        user,
        id,
        clock: _clock,
    } = m;
    drop(fake);
    let w = wait_until(&app, &user, &id, |w| w["attempts"] == 1);
    assert_eq!(w["status"], "PROCESSING", "{w}");
    let r = resolve(&app, Some(&staff.token), &id, body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "FAILED");
    assert_eq!(app.balance(&user), "100.00");
    assert_verified(&app);
}

#[test]
fn killed_mid_payout_then_unreachable_the_withdrawal_is_left_for_staff_not_refunded() {
    // SIGKILL while the payout call is in flight: whether that call paid is unknown. After the
    // restart every connection to the payout service is refused (which alone would refund),
    // so the withdrawal is retried within the window (1 s here), then left PROCESSING for
    // staff: still debited, no REFUND entry, a message saying the outcome is unknown, counted
    // in /metrics; `wallet verify` exits 0.
    let fake = FakePayout::start(&[Step::Hold], Step::Reply(200));
    let db = TestDb::new();
    let first = start_binary(db.arg(), &fake.url, Some("1s"));
    let (token, _, id) = binary_withdrawal(&first.base, "40.00", "kill-unknown");
    kill_during_the_call(first, &fake);

    let second = start_binary(db.arg(), &refused_url(), Some("1s"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let w = loop {
        let path = format!("/api/wallets/me/withdrawals/{id}");
        let (status, w) = call(&second.base, "GET", &path, Some(&token), None);
        assert_eq!(status, 200, "{w}");
        if w["status"] != "PROCESSING" || left_for_staff(&w) {
            break w;
        }
        assert!(Instant::now() < deadline, "still {w} after restart");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(left_for_staff(&w), "{w}");
    assert_eq!(w["refund_transaction_id"], Value::Null, "{w}");
    assert!(w["attempts"].as_u64().unwrap() >= 1, "{w}");
    let (_, wallet) = call(&second.base, "GET", "/api/wallets/me", Some(&token), None);
    assert_eq!(wallet["balance"], "60.00");
    let (_, list) = call(
        &second.base,
        "GET",
        "/api/wallets/me/transactions?type=REFUND",
        Some(&token),
        None,
    );
    assert_eq!(list["count"], 0, "{list}");
    let (_, metrics) = call(&second.base, "GET", "/metrics", None, None);
    assert!(
        metrics
            .as_str()
            .unwrap()
            .lines()
            .any(|l| l == "wallet_payouts_outcome_unknown 1"),
        "{metrics}"
    );
    drop(second);
    let out = Command::new(env!("CARGO_BIN_EXE_wallet"))
        .arg("--db")
        .arg(db.arg())
        .arg("verify")
        .env_remove("WALLET_DB")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

// ---- Reversals of scheduled withdrawals (issue 15) ---------------------------------------

fn reverse_entry(app: &TestApp, staff: &User, id: &Value, reference: &str) -> Resp {
    app.post(
        &format!("/api/admin/transactions/{}/reverse", id.as_str().unwrap()),
        &staff.token,
        json!({"reason": "customer dispute", "reference": reference}),
    )
}

#[test]
fn only_a_paid_scheduled_withdrawal_is_reversed_never_a_failed_one_or_its_refund() {
    // A refused payout (400) is FAILED and refunded: giving its WITHDRAWAL back again, or its
    // REFUND, would create money. A paid one (200) is given back once.
    let fake = FakePayout::start(&[Step::Reply(400)], Step::Reply(200));
    let app = app_with_payout(&fake);
    let staff = crate::helpers::staff_user(&app);
    let u = funded(&app);
    let failed = schedule_ok(&app, &u, "30.00", "refused");
    let failed = wait_final(&app, &u, &failed);
    assert_eq!(failed["status"], "FAILED", "{failed}");
    for (what, id) in [
        ("the failed withdrawal's entry", &failed["transaction_id"]),
        ("its refund", &failed["refund_transaction_id"]),
    ] {
        let r = reverse_entry(&app, &staff, id, what);
        assert_eq!(
            (r.status, r.code()),
            (422, "validation_error"),
            "{what}: {}",
            r.body
        );
    }
    assert_eq!(app.balance(&u), "100.00");

    let paid = schedule_ok(&app, &u, "40.00", "paid");
    let paid = wait_final(&app, &u, &paid);
    assert_eq!(paid["status"], "SUCCEEDED", "{paid}");
    assert_eq!(app.balance(&u), "60.00");
    let r = reverse_entry(&app, &staff, &paid["transaction_id"], "give-back");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        (&r.body["type"], &r.body["reverses"]),
        (&json!("REVERSAL_IN"), &paid["transaction_id"]),
        "{}",
        r.body
    );
    assert_eq!(app.balance(&u), "100.00");
    assert_verified(&app);
}
