//! Operating the service (issue 7) with the real binary where it matters: graceful shutdown on
//! SIGTERM, online backups, staff routes and their audit trail, settings errors, request logs
//! and metrics.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use std::sync::Arc;

use serde_json::{json, Value};
use wallet::clock::{Clock, ManualClock, SystemClock};
use wallet::config::Config;
use wallet::domain::Timestamp;
use wallet::startup::{App, TestHooks};
use wallet::store::Sql;

use crate::binary::{self, call, Server};
use crate::helpers::{agent, name, sqlite_only, TestApp, TestDb};

const PASSWORD: &str = "correct horse battery";

fn register(base: &str, username: &str, password: &str) -> (i64, String) {
    let r = call(
        &agent(),
        base,
        "POST",
        "/api/auth/register",
        None,
        Some(
            &json!({"username": username, "email": format!("{username}@example.com"),
            "password": password, "password_confirm": password}),
        ),
        &[],
    )
    .expect("register answers");
    assert_eq!(r.status, 201, "{}", r.body);
    (
        r.body["user"]["id"].as_i64().unwrap(),
        r.body["token"].as_str().unwrap().to_string(),
    )
}

fn wal_len(db: &Path) -> Option<u64> {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).ok().map(|m| m.len())
}

fn status_of(reply: &[u8]) -> u16 {
    String::from_utf8_lossy(reply)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

// ---- Shutdown ----------------------------------------------------------------------------

#[test]
fn sigterm_lets_in_flight_requests_finish_and_checkpoints_the_wal() {
    // SIGTERM while a login (argon2 at 256 MiB) and a deposit (half its body sent) are
    // in flight: both complete with their normal status after the signal, the deposit is in the
    // ledger, the process exits 0 and (on SQLite) the WAL is checkpointed (empty or gone).
    let db = TestDb::new();
    let mut cmd = binary::wallet(db.arg());
    // A costly password hash, so that a login takes a while (about as long as the register).
    cmd.env("WALLET_ARGON2_MEMORY_KIB", "262144")
        .env("WALLET_ARGON2_ITERATIONS", "2");
    let mut server = Server::start(cmd);
    let username = name("t");
    let hashing = Instant::now();
    let (_, token) = register(&server.base, &username, PASSWORD);
    let hash_time = hashing.elapsed();
    let a = agent();
    let r = call(
        &a,
        &server.base,
        "POST",
        "/api/wallets/me/deposit",
        Some(&token),
        Some(&json!({"amount": "10.00", "reference": "before"})),
        &[],
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    if let Some(file) = db.target.path() {
        assert!(
            wal_len(file).unwrap_or(0) > 0,
            "the WAL holds the writes before shutdown"
        );
    }

    // In flight 1: a login, whose password check alone takes a good fraction of a second.
    let base = server.base.clone();
    let login_user = username.clone();
    let login = std::thread::spawn(move || {
        let r = call(
            &agent(),
            &base,
            "POST",
            "/api/auth/login",
            None,
            Some(&json!({"username": login_user, "password": PASSWORD})),
            &[],
        );
        (r, Instant::now())
    });
    // In flight 2: a deposit whose head and half its body have arrived. Its body is read
    // before it takes a request place, but it is in flight from its head on, so the stop
    // waits for it.
    let body =
        json!({"amount": "7.00", "reference": "in-flight", "metadata": {"note": "n".repeat(1500)}})
            .to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        conn,
        "POST /api/wallets/me/deposit HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Token {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{first}",
        body.len()
    )
    .unwrap();
    conn.flush().unwrap();
    std::thread::sleep((hash_time / 3).max(Duration::from_millis(50)));

    server.sigterm();
    let signalled = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited with a request in flight"
    );
    conn.write_all(rest.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply);
    assert_eq!(
        status_of(&reply),
        201,
        "the in-flight deposit: {}",
        String::from_utf8_lossy(&reply)
    );
    let (login, answered) = login.join().unwrap();
    let login = login.expect("the in-flight login answers");
    assert_eq!(login.status, 200, "the in-flight login: {}", login.body);
    assert!(
        answered > signalled,
        "the login ended before SIGTERM (hashing took {hash_time:?}): nothing was proved"
    );
    assert!(login.body["token"].is_string(), "{}", login.body);

    let status = server.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    if let Some(file) = db.target.path() {
        let wal = wal_len(file);
        assert!(
            wal.unwrap_or(0) == 0,
            "the WAL was not checkpointed: {wal:?} bytes"
        );
    }
    let n: i64 = db
        .sql()
        .query_one(
            "SELECT count(*) FROM entries WHERE reference = 'in-flight' AND amount = 700",
            &[],
        )
        .unwrap()
        .get(0)
        .unwrap();
    assert_eq!(n, 1, "the in-flight deposit is in the ledger");
    let (code, out) = binary::verify(db.arg());
    assert_eq!(code, Some(0), "{out}");
}

// ---- Backups -----------------------------------------------------------------------------

#[test]
fn backup_while_writing_is_a_verified_copy_and_never_overwrites() {
    // `wallet backup FILE` during a stream of deposits exits 0; the copy passes `wallet verify`
    // and holds the users and every deposit acknowledged before the backup began. A second
    // backup onto the same file fails with a clear message and leaves the copy as it was.
    if sqlite_only("`wallet backup` copies a SQLite file") {
        return;
    }
    let app = TestApp::spawn();
    let users: Vec<_> = (0..3).map(|_| app.register(&name("b"))).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (base, stop, acked) = (app.base.clone(), stop.clone(), acked.clone());
        let tokens: Vec<String> = users.iter().map(|u| u.token.clone()).collect();
        std::thread::spawn(move || {
            let a = agent();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && n < 5000 {
                let r = call(
                    &a,
                    &base,
                    "POST",
                    "/api/wallets/me/deposit",
                    Some(&tokens[n % tokens.len()]),
                    Some(&json!({"amount": "1.25", "reference": format!("w{n}")})),
                    &[],
                )
                .expect("deposit answers");
                assert_eq!(r.status, 201, "{}", r.body);
                acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                n += 1;
            }
        })
    };
    while acked.load(std::sync::atomic::Ordering::SeqCst) < 20 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let acked_before = acked.load(std::sync::atomic::Ordering::SeqCst) as i64;
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.db");
    let mut cmd = binary::wallet(app.db_file());
    cmd.arg("backup").arg(&copy);
    let out = binary::run(cmd, None, Duration::from_secs(60));
    let during = acked.load(std::sync::atomic::Ordering::SeqCst) as i64;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        during > acked_before,
        "no deposit ran while the backup ran; the test proves less than it says"
    );

    let (code, report) = binary::verify(&copy);
    assert_eq!(code, Some(0), "verify on the copy: {report}");
    let c = rusqlite::Connection::open(&copy).unwrap();
    let mut names: Vec<String> = c
        .prepare("SELECT username FROM users ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut expected: Vec<String> = users.iter().map(|u| u.username.clone()).collect();
    names.sort();
    expected.sort();
    assert_eq!(names, expected);
    let entries: i64 = c
        .query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
        .unwrap();
    assert!(
        entries >= acked_before,
        "the copy has {entries} entries, but {acked_before} were acknowledged before it began"
    );
    drop(c);

    let before = std::fs::read(&copy).unwrap();
    let mut cmd = binary::wallet(app.db_file());
    cmd.arg("backup").arg(&copy);
    let out = binary::run(cmd, None, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "a backup overwrote {copy:?}");
    assert!(
        stderr.contains("exists already") && stderr.contains("copy.db"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        before,
        "the existing file changed"
    );
}

// ---- Staff -------------------------------------------------------------------------------

fn createsuperuser(
    db: impl AsRef<std::ffi::OsStr>,
    username: &str,
    email: &str,
    password: &str,
) -> std::process::Output {
    let mut cmd = binary::wallet(db);
    cmd.args(["createsuperuser", "--username", username, "--email", email]);
    binary::run(cmd, Some(&format!("{password}\n")), Duration::from_secs(60))
}

#[test]
fn staff_routes_read_any_account_and_credit_with_an_audit_trail() {
    // A staff user made by `wallet createsuperuser` (while the app runs) lists, searches and
    // reads users, wallets and transactions and credits a wallet (201, replay 200, conflict
    // 409); others get 403 `forbidden`; unknown users 404; every staff action is audited with
    // the staff user's id, and the credit moves money like a deposit.
    let app = TestApp::spawn();
    let alice = app.register(&name("alice"));
    let bob = app.register(&name("bob"));
    let admin = name("admin");
    let out = createsuperuser(
        app.db_arg(),
        &admin,
        &format!("{admin}@example.com"),
        "a long admin password",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "createsuperuser: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created staff user"));
    let r = app.request(
        "POST",
        "/api/auth/login",
        None,
        Some(&json!({"username": admin, "password": "a long admin password"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["user"]["is_staff"], true);
    let staff_id = r.body["user"]["id"].as_i64().unwrap();
    let staff = r.body["token"].as_str().unwrap().to_string();

    // List and search.
    let r = app.get("/api/admin/users", &staff);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["count"], 3, "{}", r.body);
    let r = app.get(
        &format!("/api/admin/users?search={}", &alice.username[2..]),
        &staff,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["count"], 1, "{}", r.body);
    assert_eq!(r.body["results"][0]["username"], alice.username.as_str());
    assert_eq!(r.body["results"][0]["is_staff"], false);

    // One user, the wallet, the credit and its replay and conflict.
    let r = app.get(&format!("/api/admin/users/{}", alice.id), &staff);
    assert_eq!(
        (r.status, &r.body["username"]),
        (200, &json!(alice.username)),
        "{}",
        r.body
    );
    let credit = format!("/api/admin/users/{}/credit", alice.id);
    let r = app.post(
        &credit,
        &staff,
        json!({"amount": "50", "reference": "goodwill-7"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        (&r.body["type"], &r.body["amount"]),
        (&json!("DEPOSIT"), &json!("50.00"))
    );
    let entry_id = r.body["id"].clone();
    let r = app.post(
        &credit,
        &staff,
        json!({"amount": "50.00", "reference": "goodwill-7"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(r.body["id"], entry_id);
    let r = app.post(
        &credit,
        &staff,
        json!({"amount": "51", "reference": "goodwill-7"}),
    );
    assert_eq!(
        (r.status, r.code()),
        (409, "reference_conflict"),
        "{}",
        r.body
    );
    let r = app.get(&format!("/api/admin/users/{}/wallet", alice.id), &staff);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (&r.body["user_id"], &r.body["balance"]),
        (&json!(alice.id), &json!("50.00"))
    );
    assert_eq!(app.balance(&alice), "50.00");
    assert_eq!(app.balance(&bob), "0.00");
    let r = app.get(
        &format!("/api/admin/users/{}/transactions", alice.id),
        &staff,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["count"], 1, "{}", r.body);
    assert_eq!(r.body["results"][0]["id"], entry_id);

    // Everyone else is forbidden; unknown users are not found.
    let staff_paths = [
        ("GET", "/api/admin/users".to_string()),
        ("GET", format!("/api/admin/users/{}", bob.id)),
        ("GET", format!("/api/admin/users/{}/wallet", bob.id)),
        ("GET", format!("/api/admin/users/{}/transactions", bob.id)),
        ("POST", format!("/api/admin/users/{}/credit", alice.id)),
    ];
    let body = json!({"amount": "1000", "reference": "self-help"});
    for (method, path) in &staff_paths {
        let r = app.request(method, path, Some(&alice.token), Some(&body));
        assert_eq!((r.status, r.code()), (403, "forbidden"), "{method} {path}");
        let r = app.request(method, path, None, Some(&body));
        assert_eq!(r.status, 401, "{method} {path} without a token");
    }
    for suffix in ["", "/wallet", "/transactions", "/credit"] {
        let path = format!("/api/admin/users/999999{suffix}");
        let method = if suffix == "/credit" { "POST" } else { "GET" };
        let r = app.request(method, &path, Some(&staff), Some(&body));
        assert_eq!((r.status, r.code()), (404, "not_found"), "{method} {path}");
    }
    assert_eq!(app.balance(&alice), "50.00", "a refused credit moved money");
    assert_eq!(app.balance(&bob), "0.00");

    // The audit trail: every row is the staff user's, and each kind of action is there.
    let rows: Vec<(i64, String, String)> = app
        .db()
        .query(
            "SELECT staff_user_id, action, target FROM audit_log ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0).unwrap(), r.get(1).unwrap(), r.get(2).unwrap()))
        .collect();
    assert!(
        rows.iter().all(|(id, _, _)| *id == staff_id),
        "audit rows not by the staff user: {rows:?}"
    );
    let target = format!("user:{}", alice.id);
    for action in ["read_user", "read_wallet", "read_transactions", "credit"] {
        assert!(
            rows.iter().any(|(_, a, t)| a == action && *t == target),
            "no audited {action} on {target}: {rows:?}"
        );
    }
    assert_eq!(
        rows.iter().filter(|(_, a, _)| a == "list_users").count(),
        2,
        "{rows:?}"
    );
    assert_eq!(
        rows.iter().filter(|(_, a, _)| a == "credit").count(),
        1,
        "a replay or a refused credit was audited as a credit: {rows:?}"
    );
    assert!(app.verify().ok(), "{:?}", app.verify().findings);
}

// ---- Settings and commands -----------------------------------------------------------------

#[test]
fn createsuperuser_with_a_bad_email_exits_2_naming_the_flag() {
    // A bad --email is a one-line error naming `--email`, exit code 2, and creates nobody.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wallet.db");
    let out = createsuperuser(&db, &name("admin"), "not-an-email", "a long admin password");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--email"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    if db.exists() {
        let n: i64 = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}

#[test]
fn bad_settings_exit_2_with_one_line_naming_the_setting() {
    // `--threads 0` (refused by the flag parser) and `--snapshot-cron nope` (refused by the
    // config check) each exit 2 with a single line that names the setting, serving nothing.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wallet.db");
    for (args, setting) in [
        (["--threads", "0"], "--threads"),
        (["--snapshot-cron", "nope"], "--snapshot-cron"),
    ] {
        let mut cmd = binary::wallet(&db);
        cmd.args(["--listen", "127.0.0.1:0"]).args(args);
        let out = binary::run(cmd, None, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(setting), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("listening"),
            "{args:?} served anyway"
        );
    }
}

#[test]
fn renamed_settings_are_still_read_from_their_old_variables() {
    // `WALLET_THREADS` and `WALLET_DB_TRANSFER_GROUP_MAX` are the old names of
    // `WALLET_REQUESTS_MAX` and `WALLET_DB_GROUP_MAX`: a deployment that still sets them must
    // not be silently ignored. Read, a 0 is refused (exit 2) naming the setting's flag; the
    // new variable, when set, wins.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wallet.db");
    for (old, new, flag) in [
        ("WALLET_THREADS", "WALLET_REQUESTS_MAX", "--requests-max"),
        (
            "WALLET_DB_TRANSFER_GROUP_MAX",
            "WALLET_DB_GROUP_MAX",
            "--db-group-max",
        ),
    ] {
        let mut cmd = binary::wallet(&db);
        cmd.args(["--listen", "127.0.0.1:0"])
            .env(old, "0")
            .env_remove(new);
        let out = binary::run(cmd, None, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{old}=0: {stderr}");
        assert!(stderr.contains(flag), "{old}=0: {stderr}");

        let mut cmd = binary::wallet(&db);
        cmd.env(old, "0").env(new, "3");
        let mut server = Server::start(cmd);
        let reply = call(&agent(), &server.base, "GET", "/health", None, None, &[]).unwrap();
        assert_eq!(reply.status, 200, "{new} set beside {old}");
        server.sigterm();
        assert!(server.wait_exit(Duration::from_secs(20)).success());
    }
}

// ---- Logs and metrics ----------------------------------------------------------------------

#[test]
fn request_log_line_has_route_status_and_request_id_but_no_secrets() {
    // With WALLET_LOG=info a login carrying a token header, a password in its body and
    // `X-Request-Id: trace-me-1` gives exactly one log line with the method, the route
    // template, the status and the id, and the log holds no token, password or body text.
    let db = TestDb::new();
    let log_path = db.dir().join("stderr.log");
    let mut cmd = binary::wallet(db.arg());
    cmd.env("WALLET_LOG", "info")
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()));
    let mut server = Server::start(cmd);
    let username = name("logme");
    let password = format!("pw-{}", name("secret"));
    let (_, token) = register(&server.base, &username, &password);
    let r = call(
        &agent(),
        &server.base,
        "POST",
        "/api/auth/login",
        Some(&token),
        Some(&json!({"username": username, "password": password})),
        &[("X-Request-Id", "trace-me-1")],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("X-Request-Id"), Some("trace-me-1"));
    let new_token = r.body["token"].as_str().unwrap().to_string();
    server.sigterm();
    assert_eq!(server.wait_exit(Duration::from_secs(15)).code(), Some(0));

    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("trace-me-1")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    for part in ["POST", "/api/auth/login", " 200 "] {
        assert!(
            lines[0].contains(part),
            "{part:?} missing from {:?}",
            lines[0]
        );
    }
    for (what, secret) in [
        ("the token", token.as_str()),
        ("the issued token", new_token.as_str()),
        ("the password", password.as_str()),
        ("the body's username", username.as_str()),
    ] {
        assert!(!log.contains(secret), "the log contains {what}:\n{log}");
    }
}

#[test]
fn metrics_count_money_moved_exactly_and_carry_no_user_data() {
    // After deposits of 12.34 + 100 + 0.01 (a replay and a refused withdrawal besides, and a
    // path holding the username), /metrics shows exactly 11235 minor units of DEPOSIT and 500
    // of WITHDRAWAL, and no username, email or token anywhere.
    let app = TestApp::spawn();
    let u = app.register(&name("metric"));
    for (amount, reference) in [
        ("12.34", "m1"),
        ("100", "m2"),
        ("0.01", "m3"),
        ("100", "m2"),
    ] {
        let r = app.deposit(&u, amount, reference);
        assert!(r.status == 201 || r.status == 200, "{}", r.body);
    }
    let r = app.post(
        "/api/wallets/me/withdraw",
        &u.token,
        json!({"amount": "5", "reference": "w1"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = app.post(
        "/api/wallets/me/withdraw",
        &u.token,
        json!({"amount": "1000", "reference": "w2"}),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    let r = app.get(
        &format!("/api/wallets/me/withdrawals/{}", u.username),
        &u.token,
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = app.raw("GET", &format!("/{}", u.username), None, None, None);
    assert_eq!(r.status, 404);

    let r = app.raw("GET", "/metrics", None, None, None);
    assert_eq!(r.status, 200);
    let Value::String(text) = r.body else {
        panic!("metrics are not text: {}", r.body)
    };
    let lines: Vec<&str> = text.lines().collect();
    for line in [
        "wallet_money_moved_minor_total{currency=\"USD\",type=\"DEPOSIT\"} 11235",
        "wallet_money_moved_minor_total{currency=\"USD\",type=\"WITHDRAWAL\"} 500",
    ] {
        assert!(lines.contains(&line), "no {line:?} in:\n{text}");
    }
    for secret in [
        u.username.as_str(),
        &format!("{}@example.com", u.username),
        &u.token,
    ] {
        assert!(!text.contains(secret), "metrics contain {secret:?}");
    }
}

/// `wallet bench` for 1 s with 4 users and 6 clients, and `extra`: its JSON report, once it
/// exited 0.
fn short_bench(extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = binary::wallet(dir.path().join("unused.db"));
    cmd.args([
        "bench",
        "--users",
        "4",
        "--clients",
        "6",
        "--duration",
        "1",
        "--json",
    ])
    .args(extra);
    let out = binary::run(cmd, None, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn bench_reports_every_figure_and_checks_the_money_invariant() {
    // The benchmark is a deliverable: a short run over real HTTP (a child server on a
    // temporary database) and without HTTP must print one JSON object with the figures
    // scripts read, no errors, and an invariant that held.
    let report = short_bench(&["--raw"]);
    for field in [
        "transfers_per_s",
        "raw_transfers_per_s",
        "http_to_raw_ratio",
        "p99_ms",
        "server_peak_rss_mib",
    ] {
        assert!(report[field].as_f64().is_some(), "{field}: {report}");
    }
    assert!(
        report["transfers_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["invariant_held"], true, "{report}");
    assert_eq!(report["verify_ok"], true, "{report}");
    let transfers = report["transfers"]["count"].as_u64().unwrap();
    let created = report["transfers"]["statuses"]["201"].as_u64().unwrap_or(0);
    assert_eq!(transfers, created, "{report}");
    assert!(
        report["write_groups"].is_null(),
        "SQLite writes no groups: {report}"
    );
}

#[test]
fn bench_on_postgres_reports_how_the_groups_wrote() {
    // On PostgreSQL the report says how the writes were written (groups, requests grouped,
    // put off, handed back; from the servers' `/metrics`), which explains its figures.
    let Some(url) = crate::helpers::postgres_url() else {
        eprintln!("not run: PostgreSQL only (SQLite writes no groups)");
        return;
    };
    let database = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let report = short_bench(&["--db", &crate::helpers::with_database(&url, &database)]);
    assert_eq!(report["invariant_held"], true, "{report}");
    let groups = &report["write_groups"];
    let grouped = groups["writes_grouped"].as_u64().expect("writes_grouped");
    let written = report["transfers"]["count"].as_u64().unwrap()
        + report["deposits"]["count"].as_u64().unwrap();
    assert!(grouped > 0 && grouped <= written, "{report}");
    assert!(groups["groups"].as_u64().unwrap() <= grouped, "{report}");
    for field in ["put_off", "handed_back"] {
        assert!(groups[field].as_u64().is_some(), "{field}: {report}");
    }
}

/// The CPUs a thread of process `pid` may run on, from `/proc` (`Cpus_allowed_list`).
fn allowed_cpus(pid: u32, tid: &str) -> Vec<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

#[test]
fn the_writer_has_a_cpu_of_its_own() {
    // On two or more CPUs, the server keeps one for the writer thread and every other thread
    // (request handlers included, started after the writer) off it; `--pin-writer false`
    // leaves every thread free.
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = tempfile::tempdir().unwrap();
    for pinned in [true, false] {
        let mut cmd = binary::wallet(dir.path().join(format!("w{pinned}.db")));
        cmd.args(["--pin-writer", if pinned { "true" } else { "false" }]);
        let server = Server::start(cmd);
        // A request, so that a connection thread exists too.
        let reply = call(&agent(), &server.base, "GET", "/health", None, None, &[]).unwrap();
        assert_eq!(reply.status, 200);
        let pid = server.child.id();
        let threads: Vec<(String, Vec<usize>)> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .map(|t| {
                let tid = t.unwrap().file_name().to_string_lossy().into_owned();
                let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                    .unwrap_or_default();
                (comm.trim().to_string(), allowed_cpus(pid, &tid))
            })
            .collect();
        let writer = &threads.iter().find(|(n, _)| n == "writer").unwrap().1;
        if pinned && available >= 2 {
            assert_eq!(writer.len(), 1, "{threads:?}");
            for (name, cpus) in threads.iter().filter(|(n, _)| n != "writer") {
                assert!(
                    !cpus.contains(&writer[0]),
                    "{name} may run on the writer's CPU: {threads:?}"
                );
            }
        } else {
            assert_eq!(writer.len(), available, "{threads:?}");
        }
    }
}

// ---- Time: a wall clock that leaps -------------------------------------------------------

fn ts(s: &str) -> Timestamp {
    Timestamp::parse(s).expect("timestamp")
}

fn stamp_of(r: &crate::helpers::Resp) -> String {
    r.body["created_at"]
        .as_str()
        .unwrap_or_else(|| panic!("no created_at in {}", r.body))
        .to_string()
}

#[test]
fn a_wall_clock_that_leaps_ahead_for_a_second_is_never_adopted() {
    // The wall clock jumps two years ahead for one second and is then corrected. Nothing is
    // stamped in 2028: entries stay in order at the time reckoned from the monotonic clock;
    // meanwhile /health says `degraded` with a `clock` reason and /metrics counts the leap.
    // Afterwards a withdrawal for tomorrow is accepted, `balance?at=` now counts every deposit,
    // a new token expires a week from now, and /health is ok again.
    let clock = Arc::new(ManualClock::new(ts("2026-11-30T10:00:00Z")));
    let app = TestApp::spawn_with(|_| {}, clock.clone());
    let u = app.register(&name("leap"));
    let before = app.deposit(&u, "10.00", "before");
    assert_eq!(before.status, 201, "{}", before.body);
    clock.advance_ms(1_000);
    clock.set(ts("2028-11-30T10:00:01Z"));
    let during = app.deposit(&u, "20.00", "during");
    assert_eq!(during.status, 201, "{}", during.body);
    let health = app.request("GET", "/health", None, None);
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.body["status"], "degraded", "{}", health.body);
    assert_eq!(health.body["clock"], "wall_clock_ahead", "{}", health.body);
    assert!(
        health.body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("wall clock")),
        "{}",
        health.body
    );
    let metrics = app.request("GET", "/metrics", None, None);
    let metrics = metrics.body.as_str().unwrap_or_default().to_string();
    assert!(metrics.contains("wallet_clock_leaps_total 1"), "{metrics}");
    assert!(
        !metrics.contains("wallet_clock_wall_ahead_seconds 0\n"),
        "{metrics}"
    );
    // Corrected a second later.
    clock.advance_ms(1_000);
    clock.set(ts("2026-11-30T10:00:02Z"));
    clock.advance_ms(1_000);
    let after = app.deposit(&u, "30.00", "after");
    assert_eq!(after.status, 201, "{}", after.body);
    let stamps = [stamp_of(&before), stamp_of(&during), stamp_of(&after)];
    assert!(
        stamps.iter().all(|s| s.as_str() < "2026-11-30T10:00:04Z"),
        "{stamps:?}"
    );
    assert!(stamps[0] < stamps[1] && stamps[1] < stamps[2], "{stamps:?}");
    let health = app.request("GET", "/health", None, None);
    assert_eq!(
        health.body,
        json!({"status": "ok", "database": "ok", "storage": "ok", "clock": "ok"})
    );
    let tomorrow = app.post(
        "/api/wallets/me/withdraw",
        &u.token,
        json!({"amount": "5.00", "reference": "tomorrow", "scheduled_at": "2026-12-01T10:00:00Z"}),
    );
    assert_eq!(tomorrow.status, 202, "{}", tomorrow.body);
    let balance = app.get("/api/wallets/me/balance?at=2026-11-30T10:00:03Z", &u.token);
    assert_eq!(balance.status, 200, "{}", balance.body);
    assert_eq!(balance.body["balance"], "60.00", "{}", balance.body);
    let login = app.request(
        "POST",
        "/api/auth/login",
        None,
        Some(&json!({"username": u.username, "password": PASSWORD})),
    );
    assert_eq!(login.status, 200, "{}", login.body);
    let expires = login.body["expires_at"].as_str().unwrap_or_default();
    assert!(expires.starts_with("2026-12-07T10:00:0"), "{}", login.body);
}

#[test]
fn a_wall_clock_set_back_keeps_stamps_in_order_and_says_so() {
    // The wall clock is set back a year: new entries are still stamped after the newest one,
    // and /health says `degraded`, `clock: wall_clock_behind` while stamps are held ahead of
    // the clock. Set forward again, the clock is followed with no alert.
    let clock = Arc::new(ManualClock::new(ts("2026-11-30T10:00:00Z")));
    let app = TestApp::spawn_with(|_| {}, clock.clone());
    let u = app.register(&name("back"));
    let first = app.deposit(&u, "1.00", "first");
    clock.set(ts("2025-11-30T10:00:00Z"));
    let second = app.deposit(&u, "1.00", "second");
    assert_eq!(second.status, 201, "{}", second.body);
    assert!(stamp_of(&second) > stamp_of(&first), "{}", second.body);
    let health = app.request("GET", "/health", None, None);
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.body["status"], "degraded", "{}", health.body);
    assert_eq!(health.body["clock"], "wall_clock_behind", "{}", health.body);
    clock.set(ts("2026-11-30T10:00:01Z"));
    let third = app.deposit(&u, "1.00", "third");
    assert_eq!(stamp_of(&third), "2026-11-30T10:00:01.000000Z");
    let health = app.request("GET", "/health", None, None);
    assert_eq!(health.body["status"], "ok", "{}", health.body);
    let metrics = app.request("GET", "/metrics", None, None);
    let metrics = metrics.body.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains("wallet_clock_steps_back_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("wallet_clock_leaps_total 0"), "{metrics}");
}

#[test]
fn a_ledger_stamped_far_ahead_of_the_clock_is_refused_at_start_up_unless_accepted() {
    // A database whose newest entry was stamped by a clock two years ahead: the binary refuses
    // to start (exit 1), naming the stamp and the way out. With --accept-future-stamps it
    // starts, and a new entry is stamped after that one (time stamps never go back), with
    // /health `degraded` meanwhile.
    let ahead = SystemClock.now().plus_millis(2 * 365 * 86_400_000);
    let mut app = TestApp::spawn_with(|_| {}, Arc::new(ManualClock::new(ahead)));
    let u = app.register(&name("ahead"));
    let future = stamp_of(&app.deposit(&u, "10.00", "from-the-future"));
    assert!(future.as_str() > "2028", "{future}");
    app.stop();

    let mut cmd = binary::wallet(app.db_arg());
    cmd.args(["--listen", "127.0.0.1:0", "--snapshot-cron", "off"]);
    let out = binary::run(cmd, None, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&future), "{stderr}");
    assert!(stderr.contains("--accept-future-stamps"), "{stderr}");

    let mut cmd = binary::wallet(app.db_arg());
    cmd.arg("--accept-future-stamps");
    let server = Server::start(cmd);
    let (_, token) = register(&server.base, &name("later"), PASSWORD);
    let r = call(
        &agent(),
        &server.base,
        "POST",
        "/api/wallets/me/deposit",
        Some(&token),
        Some(&json!({"amount": "1.00", "reference": "after-restart"})),
        &[],
    )
    .expect("deposit answers");
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(stamp_of(&r) > future, "{} after {future}", stamp_of(&r));
    // Not silent: /health is degraded while new stamps are held ahead of the clock.
    let health = call(&agent(), &server.base, "GET", "/health", None, None, &[]).unwrap();
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.body["status"], "degraded", "{}", health.body);
    assert_eq!(health.body["clock"], "wall_clock_behind", "{}", health.body);
}

// ---- Storage faults ----------------------------------------------------------------------

/// Sets `PRAGMA max_page_count` on the writer's own connection: at the database's current
/// size, every write that needs a new page fails with `SQLITE_FULL`, as on a full disk.
fn hold_database_at(app: &TestApp, pages: i64) {
    app.app
        .as_ref()
        .expect("running")
        .service()
        .writer
        .execute(move |c, _| {
            c.query_one(&format!("PRAGMA max_page_count = {pages}"), &[])?
                .get::<i64>(0)
        })
        .expect("set max_page_count");
}

fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// Asks /health until it answers 200, for at most `within`; returns the last answer.
fn health_within(
    within: Duration,
    health: impl Fn() -> crate::helpers::Resp,
) -> crate::helpers::Resp {
    let deadline = Instant::now() + within;
    loop {
        let r = health();
        if r.status == 200 || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Deposits 1.00 with references d0, d1, … until one is answered 503, and returns how many
/// were acknowledged (201) before it (so the refused one is `d{that number}`) and its reply;
/// None if 20,000 all went through. Any other status fails the test.
fn deposit_until_refused(
    deposit: impl Fn(&str) -> crate::helpers::Resp,
) -> Option<(i64, crate::helpers::Resp)> {
    for i in 0..20_000 {
        let r = deposit(&format!("d{i}"));
        match r.status {
            201 => {}
            503 => return Some((i, r)),
            s => panic!("deposit {i}: {s} {}", r.body),
        }
    }
    None
}

#[test]
fn a_full_disk_refuses_writes_with_503_and_they_resume_once_space_is_freed() {
    // The database can't grow (held at its size by max_page_count, as by a full disk). Writes
    // then get 503 `unavailable` with Retry-After and nothing internal in the body; reads go on;
    // /health is 503 saying the storage is full; /metrics counts the refusals. Once space is
    // freed, the refused request retried with the same reference succeeds, /health is ok, and
    // no acknowledged deposit is lost.
    if sqlite_only("a full disk is simulated with SQLite's PRAGMA max_page_count") {
        return;
    }
    let app = TestApp::spawn();
    let u = app.register(&name("full"));
    hold_database_at(&app, 1);
    let (acknowledged, r) = deposit_until_refused(|reference| app.deposit(&u, "1.00", reference))
        .expect("a database that cannot grow refused a write");
    assert_eq!(r.code(), "unavailable", "{}", r.body);
    assert!(r.header("Retry-After").is_some(), "{:?}", r.headers);
    let text = r.body.to_string().to_lowercase();
    assert!(
        !text.contains("sqlite") && !text.contains("database or disk"),
        "{text}"
    );
    assert_eq!(app.balance(&u), format!("{acknowledged}.00"), "reads go on");
    let health = app.request("GET", "/health", None, None);
    assert_eq!(health.status, 503, "{}", health.body);
    assert_eq!(health.body["storage"], "full", "{}", health.body);
    assert_eq!(health.body["database"], "ok", "{}", health.body);
    assert!(health.header("Retry-After").is_some());
    assert!(
        health.body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("full")),
        "{}",
        health.body
    );
    // The writer's probes (once a second) find the storage still full: still 503.
    std::thread::sleep(Duration::from_millis(2_500));
    let health = app.request("GET", "/health", None, None);
    assert_eq!(health.status, 503, "still full: {}", health.body);
    let again = app.deposit(&u, "1.00", &format!("d{acknowledged}"));
    assert_eq!(again.status, 503, "still full: {}", again.body);
    let metrics = app.request("GET", "/metrics", None, None);
    let metrics = metrics.body.as_str().unwrap_or_default().to_string();
    assert!(
        metric(
            &metrics,
            "wallet_storage_refused_writes_total{reason=\"full\"}"
        ) >= 2.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "wallet_storage_fault{reason=\"full\"}"),
        1.0
    );

    // Space is freed. With no client write at all (a load balancer sends none to a node whose
    // /health is 503), /health is 200 again within a few seconds: the writer probes the
    // storage once a second while the fault stands. The probe leaves nothing behind.
    hold_database_at(&app, 1_073_741_823);
    let health = health_within(Duration::from_secs(5), || {
        app.request("GET", "/health", None, None)
    });
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.body["storage"], "ok", "{}", health.body);
    let row = app
        .db()
        .query_one(
            "SELECT (SELECT count(*) FROM entries), (SELECT count(*) FROM storage_probe)",
            &[],
        )
        .unwrap();
    let (entries, probes): (i64, i64) = (row.get(0).unwrap(), row.get(1).unwrap());
    assert_eq!((entries, probes), (acknowledged, 0));
    // The same request goes through, with nothing else to do.
    let retried = app.deposit(&u, "1.00", &format!("d{acknowledged}"));
    assert_eq!(retried.status, 201, "{}", retried.body);
    let metrics = app.request("GET", "/metrics", None, None);
    let metrics = metrics.body.as_str().unwrap_or_default().to_string();
    assert_eq!(
        metric(&metrics, "wallet_storage_fault{reason=\"full\"}"),
        0.0
    );
    assert_eq!(app.balance(&u), format!("{}.00", acknowledged + 1));
    let entries: i64 = app
        .db()
        .query_one("SELECT count(*) FROM entries", &[])
        .unwrap()
        .get(0)
        .unwrap();
    assert_eq!(entries, acknowledged + 1);
    assert!(app.verify().ok());
}

/// Runs `cmd` as `nobody` when this test runs as root, who may write any file whatever its
/// mode; an ordinary user is refused by the mode bits alone.
fn as_unprivileged(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(65_534).gid(65_534);
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn a_database_the_server_cannot_write_is_refused_at_start_up() {
    // A database file the server may not write, then a directory it may not write in (where
    // SQLite keeps the -wal and -shm files): each is refused at start-up with a one-line
    // message naming what to fix and exit code 2, rather than a server that says it is healthy
    // and answers every write with 500. The same command starts once both are writable.
    if sqlite_only("the modes of the database file and of its directory") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wallet.db");
    let setup = App::start_with(
        Config::for_tests(db.clone()),
        Arc::new(SystemClock),
        TestHooks::default(),
    )
    .expect("create the database");
    setup.shutdown().expect("clean shutdown");
    let start = |expect_exit: Option<i32>| {
        let mut cmd = binary::wallet(&db);
        cmd.args(["--listen", "127.0.0.1:0", "--snapshot-cron", "off"]);
        as_unprivileged(&mut cmd);
        let out = binary::run(cmd, None, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), expect_exit, "{stderr}");
        stderr
    };

    chmod(dir.path(), 0o777);
    chmod(&db, 0o444);
    let stderr = start(Some(2));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: --db/WALLET_DB:"), "{stderr}");
    assert!(
        stderr.contains(&db.display().to_string()) && stderr.contains("read-only"),
        "{stderr}"
    );

    chmod(&db, 0o666);
    chmod(dir.path(), 0o555);
    let stderr = start(Some(2));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&dir.path().display().to_string()) && stderr.contains("directory"),
        "{stderr}"
    );

    chmod(dir.path(), 0o777);
    let mut cmd = binary::wallet(&db);
    as_unprivileged(&mut cmd);
    let server = Server::start(cmd);
    let (_, token) = register(&server.base, &name("writable"), PASSWORD);
    assert!(!token.is_empty());
}

/// Unmounts a test's file system, whatever the test's outcome.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_really_full_file_system_refuses_writes_with_503_and_they_resume_once_space_is_freed() {
    // The same as above on a real full disk: the database on a 4 MiB tmpfs, filled to the last
    // byte by another file. Writes get 503 with Retry-After and /health says `full`; once the
    // other file is deleted, the refused deposit retried succeeds and nothing acknowledged is
    // lost. Mounting needs root: elsewhere the test says so and passes (the max_page_count test
    // above covers the same path portably).
    if sqlite_only("the database file on a full file system") {
        return;
    }
    wallet::log::errors_only();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .stderr(Stdio::null())
        .status();
    if !mounted.as_ref().is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot mount a tmpfs here ({mounted:?}); needs root");
        return;
    }
    let _unmount = Mounted(mnt.clone());
    let app = App::start_with(
        Config::for_tests(mnt.join("wallet.db")),
        Arc::new(SystemClock),
        TestHooks::default(),
    )
    .expect("start on the tmpfs");
    let base = format!("http://{}", app.addr);
    let agent = agent();
    let (_, token) = register(&base, &name("disk"), PASSWORD);
    let deposit = |reference: &str| {
        call(
            &agent,
            &base,
            "POST",
            "/api/wallets/me/deposit",
            Some(&token),
            Some(&json!({"amount": "1.00", "reference": reference})),
            &[],
        )
        .expect("deposit answers")
    };
    // Fill the file system.
    let ballast = mnt.join("ballast");
    {
        let mut f = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![7u8; 4096];
        let mut written = 0;
        while f.write_all(&chunk).is_ok() {
            written += chunk.len();
            assert!(written <= 4 << 20, "the tmpfs holds more than its size");
        }
    }
    let (acknowledged, r) =
        deposit_until_refused(deposit).expect("a full file system refused a write");
    assert_eq!(r.code(), "unavailable", "{}", r.body);
    assert!(r.header("Retry-After").is_some(), "{:?}", r.headers);
    let health = call(&agent, &base, "GET", "/health", None, None, &[]).unwrap();
    assert_eq!(health.status, 503, "{}", health.body);
    assert_eq!(health.body["storage"], "full", "{}", health.body);

    // Space is freed: /health is 200 again without any client write, and then the refused
    // deposit goes through.
    std::fs::remove_file(&ballast).unwrap();
    let health = health_within(Duration::from_secs(5), || {
        call(&agent, &base, "GET", "/health", None, None, &[]).unwrap()
    });
    assert_eq!(health.status, 200, "{}", health.body);
    let retried = deposit(&format!("d{acknowledged}"));
    assert_eq!(retried.status, 201, "{}", retried.body);
    let wallet = call(
        &agent,
        &base,
        "GET",
        "/api/wallets/me",
        Some(&token),
        None,
        &[],
    )
    .unwrap();
    assert_eq!(
        wallet.body["balance"],
        format!("{}.00", acknowledged + 1),
        "{}",
        wallet.body
    );
    app.shutdown().expect("clean shutdown");
    let (code, out) = binary::verify(mnt.join("wallet.db"));
    assert_eq!(code, Some(0), "{out}");
}

/// PostgreSQL's counterpart of the full disk: the database stops taking writes (here it is
/// made read-only, as a standby is, and the server's connections are cut so that they come
/// back read-only). Writes get 503 and `/health` says `read_only`; reads go on; once the
/// database takes writes again, `/health` is 200 within seconds without any client write
/// (the writers probe it once a second), and a deposit succeeds.
#[test]
fn a_postgres_database_that_stops_taking_writes_is_503_and_recovers_by_itself() {
    let app = TestApp::spawn();
    if !app.on_postgres() {
        eprintln!("not run: PostgreSQL only (SQLite's storage faults have their own tests)");
        return;
    }
    let u = app.register(&name("ro"));
    assert_eq!(app.deposit(&u, "1.00", "before").status, 201);
    let db = app.db();
    let database: String = db
        .query_one("SELECT CAST(current_database() AS TEXT)", &[])
        .unwrap()
        .get(0)
        .unwrap();
    let cut_server_connections = || {
        db.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap();
    };
    let set = |read_only: bool| {
        db.execute(
            &format!(
                "ALTER DATABASE \"{database}\" SET default_transaction_read_only = {}",
                if read_only { "on" } else { "off" }
            ),
            &[],
        )
        .unwrap();
        cut_server_connections();
    };
    set(true);
    // Writer connections come back within a second or two, read-only.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let r = app.deposit(&u, "1.00", "while-read-only");
        assert_ne!(r.status, 500, "{}", r.body);
        assert_ne!(
            r.status, 201,
            "a write went through a read-only database: {}",
            r.body
        );
        let health = app.request("GET", "/health", None, None);
        if health.body["storage"] == "read_only" {
            break (r, health);
        }
        assert!(
            Instant::now() < deadline,
            "never refused as read-only: {} {}",
            r.body,
            health.body
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (r, health) = refused;
    assert_eq!((r.status, r.code()), (503, "unavailable"), "{}", r.body);
    assert!(
        !r.body.to_string().to_lowercase().contains("postgres"),
        "{}",
        r.body
    );
    assert_eq!(health.status, 503, "{}", health.body);
    assert_eq!(app.balance(&u), "1.00", "reads go on");

    set(false);
    let health = health_within(Duration::from_secs(10), || {
        app.request("GET", "/health", None, None)
    });
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.body["storage"], "ok", "{}", health.body);
    let again = app.deposit(&u, "1.00", "after");
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(app.balance(&u), "2.00");
    let probes: i64 = db
        .query_one("SELECT count(*) FROM storage_probe", &[])
        .unwrap()
        .get(0)
        .unwrap();
    assert_eq!(probes, 0, "the probe leaves nothing behind");
}

#[test]
fn every_process_on_a_postgres_database_serves_its_one_currency() {
    // A second process started with another currency (or scale) is refused, even while the
    // ledger holds no money: the first one is serving the database already, and the same minor
    // units would read differently on the two.
    let app = TestApp::spawn();
    if !app.on_postgres() {
        eprintln!("not run: PostgreSQL only (one SQLite file has one server)");
        return;
    }
    let mut serve = Config::for_tests(app.target().clone()).serve;
    serve.currency = "JPY".into();
    serve.currency_scale = 0;
    let config = Config::from_args(app.target().clone(), serve).expect("valid settings");
    let refused = wallet::App::start_with(
        config,
        Arc::new(SystemClock),
        wallet::startup::TestHooks::default(),
    );
    let Err(e) = refused else {
        panic!("a second currency was served on one database");
    };
    assert_eq!(e.exit_code(), 2, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("--currency") && text.contains("USD"),
        "{text}"
    );
    // The first process goes on as it was.
    let u = app.register(&name("cur"));
    assert_eq!(app.deposit(&u, "1.50", "d").status, 201);
    assert_eq!(app.balance(&u), "1.50");
}

#[test]
fn while_postgres_is_away_writes_get_503_at_once_and_none_runs_later() {
    // The database stops taking connections and the server's are cut: every writer is
    // reconnecting. A write must not wait in the queue for as long as the database is away
    // (and then commit long after its client gave up): it gets 503 within a few seconds, and
    // once the database is back, none of those writes has happened.
    let app = TestApp::spawn();
    if !app.on_postgres() {
        eprintln!("not run: PostgreSQL only");
        return;
    }
    let u = app.register(&name("away"));
    assert_eq!(app.deposit(&u, "1.00", "before").status, 201);
    let admin_url = std::env::var("WALLET_TEST_POSTGRES_URL").expect("set on PostgreSQL");
    let admin = wallet::store::postgres::PgConn::connect(&admin_url).unwrap();
    let database: String = app
        .db()
        .query_one("SELECT CAST(current_database() AS TEXT)", &[])
        .unwrap()
        .get(0)
        .unwrap();
    let allow = |yes: bool| {
        admin
            .batch(&format!(
                "ALTER DATABASE \"{database}\" WITH ALLOW_CONNECTIONS {yes}"
            ))
            .unwrap();
        if !yes {
            admin
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ?1",
                    &[&database],
                )
                .unwrap();
        }
    };
    allow(false);
    let started = Instant::now();
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let (app, u) = (&app, &u);
                s.spawn(move || {
                    let r = app.deposit(u, "1.00", &format!("away-{i}"));
                    (r.status, r.body.to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = started.elapsed();
    allow(true);
    for (status, body) in &answers {
        assert_eq!(*status, 503, "{body}");
    }
    assert!(
        took < Duration::from_secs(8),
        "writes waited {took:?} for the database"
    );
    // Back: writes go through again, and none of the refused ones ran meanwhile.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = app.deposit(&u, "1.00", "after");
        if r.status == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {}", r.body);
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(app.balance(&u), "2.00", "a refused write ran later");
}
