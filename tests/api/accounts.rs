use std::time::{Duration, Instant};

use serde_json::json;

use crate::binary::{self, Server};
use crate::helpers::{name, sqlite_only, TestApp};

#[test]
fn register_login_profile_logout() {
    // The account life cycle: register returns a token, login issues another, each works
    // alone, and logout revokes only the token that called it.
    let app = TestApp::spawn();
    let user = app.register(&name("alice"));
    let r = app.get("/api/auth/profile", &user.token);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["username"], user.username.as_str());
    assert_eq!(r.body["is_staff"], false);
    for key in ["id", "email", "first_name", "last_name", "date_joined"] {
        assert!(r.body.get(key).is_some(), "profile lacks {key}");
    }

    let login = app.request(
        "POST",
        "/api/auth/login/",
        None,
        Some(
            &json!({"username": user.username.to_uppercase(), "password": "correct horse battery"}),
        ),
    );
    assert_eq!(login.status, 200, "{}", login.body);
    let second = login.body["token"].as_str().unwrap().to_string();
    assert_ne!(second, user.token, "every login issues a new token");
    assert!(login.body["expires_at"].as_str().unwrap().ends_with('Z'));

    let out = app.request("POST", "/api/auth/logout", Some(&second), None);
    assert_eq!(out.status, 200);
    assert!(out.body["detail"].is_string());
    assert_eq!(app.get("/api/auth/profile", &second).code(), "unauthorized");
    assert_eq!(
        app.get("/api/auth/profile", &user.token).status,
        200,
        "the other device's token still works"
    );
}

#[test]
fn registration_validation_and_duplicates() {
    // Each invalid field is named; duplicates are 409 with their own codes, case-insensitively.
    let app = TestApp::spawn();
    let r = app.request(
        "POST",
        "/api/auth/register",
        None,
        Some(&json!({
            "username": "a b", "email": "nope", "password": "short", "password_confirm": "other"
        })),
    );
    assert_eq!(r.status, 422);
    assert_eq!(r.code(), "validation_error");
    for f in ["username", "email", "password", "password_confirm"] {
        assert!(
            r.body["error"]["fields"][f].is_array(),
            "{f} not named: {}",
            r.body
        );
    }
    let r = app.request("POST", "/api/auth/register", None, Some(&json!({
        "username": "samename", "email": "s@example.com", "password": "samename", "password_confirm": "samename"
    })));
    assert!(
        r.body["error"]["fields"]["password"].is_array(),
        "password equal to username: {}",
        r.body
    );
    let r = app.request("POST", "/api/auth/register", None, Some(&json!({})));
    assert_eq!(r.status, 422);

    let u = app.register("dupuser");
    let r = app.request("POST", "/api/auth/register", None, Some(&json!({
        "username": "DupUser", "email": "other@example.com", "password": "correct horse", "password_confirm": "correct horse"
    })));
    assert_eq!((r.status, r.code()), (409, "username_taken"));
    let r = app.request("POST", "/api/auth/register", None, Some(&json!({
        "username": "other", "email": format!("{}@EXAMPLE.com", u.username), "password": "correct horse", "password_confirm": "correct horse"
    })));
    assert_eq!((r.status, r.code()), (409, "email_taken"));
}

#[test]
fn login_failures_are_indistinguishable_and_throttled() {
    // Unknown user and wrong password get the same status, code and message; repeated
    // failures are throttled with 429 and Retry-After.
    let app = TestApp::spawn_with(
        |c| c.serve.login_failures_max = 3,
        std::sync::Arc::new(wallet::clock::SystemClock),
    );
    let u = app.register(&name("carol"));
    let wrong = app.request(
        "POST",
        "/api/auth/login",
        None,
        Some(&json!({"username": u.username, "password": "wrong password"})),
    );
    let unknown = app.request(
        "POST",
        "/api/auth/login",
        None,
        Some(&json!({"username": "nobody-here", "password": "wrong password"})),
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(wrong.code(), "invalid_credentials");
    let _ = app.request(
        "POST",
        "/api/auth/login",
        None,
        Some(&json!({"username": u.username, "password": "wrong again"})),
    );
    let _ = app.request(
        "POST",
        "/api/auth/login",
        None,
        Some(&json!({"username": u.username, "password": "wrong thrice"})),
    );
    let limited = app.request(
        "POST",
        "/api/auth/login",
        None,
        Some(&json!({"username": u.username, "password": "correct horse battery"})),
    );
    assert_eq!((limited.status, limited.code()), (429, "rate_limited"));
    assert!(limited
        .header("Retry-After")
        .is_some_and(|v| v.parse::<u64>().unwrap() >= 1));
}

#[test]
fn tokens_are_required_valid_and_expire() {
    // Missing, malformed, unknown and expired tokens are all 401; both schemes work.
    let app = TestApp::spawn_with(
        |c| c.serve.token_ttl = std::time::Duration::from_secs(1),
        std::sync::Arc::new(wallet::clock::SystemClock),
    );
    let u = app.register(&name("dave"));
    assert_eq!(
        app.request("GET", "/api/wallets/me", None, None).code(),
        "unauthorized"
    );
    assert_eq!(
        app.get("/api/wallets/me", "not-a-token").code(),
        "unauthorized"
    );
    let r = app.raw("GET", "/api/wallets/me", None, None, None);
    assert_eq!(r.status, 401);
    let bearer = {
        let agent = crate::helpers::agent();
        let resp = agent
            .get(&format!("{}/api/wallets/me", app.base))
            .header("Authorization", &format!("Bearer {}", u.token))
            .call()
            .unwrap();
        resp.status().as_u16()
    };
    assert_eq!(bearer, 200);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        app.get("/api/wallets/me", &u.token).code(),
        "unauthorized",
        "expired token refused"
    );
}

#[test]
fn tokens_and_passwords_are_stored_safely() {
    // Only the token's hash is stored, and the password is argon2id in PHC format.
    let app = TestApp::spawn();
    let u = app.register(&name("erin"));
    let db = app.db();
    let hash: String = db
        .query_one("SELECT password_hash FROM users WHERE id = ?1", &[&u.id])
        .unwrap()
        .get(0)
        .unwrap();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    let count = |token_hash: &[u8]| -> i64 {
        db.query_one(
            "SELECT count(*) FROM tokens WHERE token_hash = ?1",
            &[&token_hash],
        )
        .unwrap()
        .get(0)
        .unwrap()
    };
    assert_eq!(
        count(u.token.as_bytes()),
        0,
        "the token itself is not stored"
    );
    let hashed = count(&wallet::accounts::hash_token(&u.token));
    assert_eq!(hashed, 1);
}

#[test]
fn behind_a_trusted_proxy_each_client_is_throttled_alone() {
    // Behind a reverse proxy every connection comes from the proxy. With --trusted-proxy, one
    // client's failed logins (by X-Forwarded-For) do not lock out another client; without it,
    // the header is ignored, so nobody can pick their own address.
    let app = TestApp::spawn_with(
        |c| {
            c.serve.login_failures_max = 3;
            c.serve.trusted_proxy = Some("127.0.0.1".parse().unwrap());
        },
        std::sync::Arc::new(wallet::clock::SystemClock),
    );
    let u = app.register(&name("bob"));
    for i in 0..3 {
        assert_eq!(
            login_from(&app, "203.0.113.7", &format!("guess{i}"), "wrong password"),
            401
        );
    }
    assert_eq!(
        login_from(&app, "203.0.113.7", &u.username, "correct horse battery"),
        429,
        "the guessing client is throttled"
    );
    assert_eq!(
        login_from(&app, "203.0.113.8", &u.username, "correct horse battery"),
        200,
        "another client is not"
    );

    // Without a trusted proxy, X-Forwarded-For changes nothing: all of these share 127.0.0.1.
    let plain = TestApp::spawn_with(
        |c| c.serve.login_failures_max = 3,
        std::sync::Arc::new(wallet::clock::SystemClock),
    );
    let v = plain.register(&name("carl"));
    for i in 0..3 {
        assert_eq!(
            login_from(
                &plain,
                &format!("198.51.100.{i}"),
                &format!("guess{i}"),
                "wrong password"
            ),
            401
        );
    }
    assert_eq!(
        login_from(
            &plain,
            "198.51.100.99",
            &v.username,
            "correct horse battery"
        ),
        429
    );
}

/// A login sent with `X-Forwarded-For: forwarded`; returns the status.
fn login_from(app: &TestApp, forwarded: &str, username: &str, password: &str) -> u16 {
    crate::helpers::agent()
        .post(&format!("{}/api/auth/login", app.base))
        .header("Content-Type", "application/json")
        .header("X-Forwarded-For", forwarded)
        .send(json!({"username": username, "password": password}).to_string())
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn a_token_revoked_in_the_database_stops_working_within_a_second() {
    // An operator revokes a token by hand (or another process does): the running server's
    // token cache must not keep accepting it. It stops working within a second.
    let app = TestApp::spawn();
    let u = app.register(&name("mallory"));
    for _ in 0..3 {
        assert_eq!(app.get("/api/auth/profile", &u.token).status, 200);
    }
    let revoked = app
        .db()
        .execute(
            "UPDATE tokens SET revoked_at = '2026-01-01T00:00:00.000000Z' WHERE token_hash = ?1",
            &[&wallet::accounts::hash_token(&u.token)],
        )
        .unwrap();
    assert_eq!(revoked, 1);
    let started = Instant::now();
    let refused_after = loop {
        let r = app.get("/api/auth/profile", &u.token);
        if r.status == 401 {
            assert_eq!(r.code(), "unauthorized");
            break started.elapsed();
        }
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the revoked token still works after 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Generous for a loaded machine; the bound the server keeps is 0.5 s plus one read.
    assert!(refused_after < Duration::from_secs(2), "{refused_after:?}");
    // And it stays refused.
    assert_eq!(app.get("/api/auth/profile", &u.token).status, 401);
}

#[test]
fn a_second_server_on_one_database_is_refused_and_the_tools_still_run() {
    // Two serving processes on one file would each trust their own token cache and throttle,
    // and both write. The second (the real binary) exits non-zero with a clear message, while
    // `verify`, `backup` and `snapshot` keep working beside the first, as the README promises.
    if sqlite_only(
        "the serve lock is a flock on the file; PostgreSQL has several servers by design",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wallet.db");
    let first = Server::start(binary::wallet(&db));
    let agent = crate::helpers::agent();
    let body = json!({
        "username": "first", "email": "first@example.com",
        "password": "correct horse battery", "password_confirm": "correct horse battery",
    });
    let r = binary::call(
        &agent,
        &first.base,
        "POST",
        "/api/auth/register",
        None,
        Some(&body),
        &[],
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);

    let mut second = binary::wallet(&db);
    second.args(["--listen", "127.0.0.1:0", "--snapshot-cron", "off"]);
    let out = binary::run(second, None, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("already serving") && stderr.contains(&db.display().to_string()),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("process {}", first.child.id())),
        "names the holder: {stderr}"
    );

    for args in [vec!["verify"], vec!["snapshot"]] {
        let mut cmd = binary::wallet(&db);
        cmd.args(&args);
        let out = binary::run(cmd, None, Duration::from_secs(60));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let copy = dir.path().join("copy.db");
    let mut backup = binary::wallet(&db);
    backup.arg("backup").arg(&copy);
    let out = binary::run(backup, None, Duration::from_secs(60));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(binary::verify(&copy).0, Some(0));

    // The first server still serves; once it is gone (even by SIGKILL), a new one may start.
    let r = binary::call(&agent, &first.base, "GET", "/health", None, None, &[]).unwrap();
    assert_eq!(r.status, 200);
    let mut first = first;
    first.sigkill();
    let again = Server::start(binary::wallet(&db));
    let r = binary::call(&agent, &again.base, "GET", "/health", None, None, &[]).unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn a_second_server_by_another_path_to_the_same_file_is_refused() {
    // The lock is named after the database's canonical path: a symbolic link to the file, a
    // link to its directory, or a path through `..` names the same lock, not a new one.
    if sqlite_only("the serve lock is a flock on the file's canonical path") {
        return;
    }
    let app = TestApp::spawn();
    let dir = app.db_file().parent().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let file_link = elsewhere.path().join("linked.db");
    std::os::unix::fs::symlink(app.db_file(), &file_link).unwrap();
    let dir_link = elsewhere.path().join("dir");
    std::os::unix::fs::symlink(dir, &dir_link).unwrap();
    let dotted = dir
        .join("..")
        .join(dir.file_name().unwrap())
        .join("wallet.db");
    for path in [file_link, dir_link.join("wallet.db"), dotted] {
        let second = wallet::startup::App::start_with(
            wallet::config::Config::for_tests(path.clone()),
            std::sync::Arc::new(wallet::clock::SystemClock),
            wallet::startup::TestHooks::default(),
        );
        let err = second
            .err()
            .unwrap_or_else(|| panic!("a second server on {}", path.display()))
            .to_string();
        assert!(err.contains("already serving"), "{}: {err}", path.display());
    }
}

#[test]
fn a_tool_that_would_migrate_the_schema_under_a_running_server_is_refused() {
    // A newer `wallet snapshot` (or `createsuperuser`, `verify`) beside a server of the schema
    // before: it would change the tables under the running server. Here the server runs on a
    // database set back to schema 4 (what that server would have). The tool exits 1 with a
    // message naming the server and what to do, and the schema is unchanged; once the server
    // is gone, the same command migrates and runs.
    if sqlite_only("SQLite's schema migrations and the serve lock that guards them") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wallet.db");
    let mut server = Server::start(binary::wallet(&db));
    let version = || -> i64 {
        rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        crate::helpers::undo_schema_6(&conn);
        conn.execute_batch("DROP TABLE storage_probe; PRAGMA user_version = 4;")
            .unwrap();
    }
    for tool in ["snapshot", "verify"] {
        let mut cmd = binary::wallet(&db);
        cmd.arg(tool);
        let out = binary::run(cmd, None, Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{tool}: {stderr}");
        assert!(
            stderr.contains("cannot migrate")
                && stderr.contains("schema version 4")
                && stderr.contains(&format!("process {}", server.child.id()))
                && stderr.contains("stop the server"),
            "{tool}: {stderr}"
        );
        assert_eq!(version(), 4, "{tool} left the schema alone");
    }
    server.sigkill();
    let mut cmd = binary::wallet(&db);
    cmd.arg("snapshot");
    let out = binary::run(cmd, None, Duration::from_secs(60));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(version(), i64::from(wallet::db::SCHEMA_VERSION));
}

#[test]
fn a_second_server_in_the_same_process_is_refused_too() {
    // The lock is per open file, so even a second `App` in one process is refused, and the
    // first one's shutdown lets the next start.
    if sqlite_only(
        "the serve lock is a flock on the file; PostgreSQL has several servers by design",
    ) {
        return;
    }
    let mut app = TestApp::spawn();
    let second = wallet::startup::App::start_with(
        wallet::config::Config::for_tests(app.target().clone()),
        std::sync::Arc::new(wallet::clock::SystemClock),
        wallet::startup::TestHooks::default(),
    );
    let err = second
        .err()
        .expect("a second server on the same file")
        .to_string();
    assert!(err.contains("already serving"), "{err}");
    app.stop();
    let third = wallet::startup::App::start_with(
        wallet::config::Config::for_tests(app.target().clone()),
        std::sync::Arc::new(wallet::clock::SystemClock),
        wallet::startup::TestHooks::default(),
    )
    .expect("starts once the first has stopped");
    third.shutdown().unwrap();
}

#[test]
fn concurrent_wrong_passwords_are_checked_at_most_the_limit() {
    // 40 wrong passwords for one user at once, limit 10: each attempt is reserved before its
    // password is hashed, so at most 10 passwords are checked (401); the rest are 429, or 503
    // from the full hashing queue (never checked either).
    let app = TestApp::spawn_with(
        |c| {
            c.serve.login_failures_max = 10;
            // A hash that takes a few milliseconds, so the guesses really overlap.
            c.serve.argon2_memory_kib = 8 * 1024;
            c.serve.argon2_iterations = 2;
        },
        std::sync::Arc::new(wallet::clock::SystemClock),
    );
    let u = app.register(&name("target"));
    let barrier = std::sync::Barrier::new(40);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..40)
            .map(|i| {
                let (app, barrier, username) = (&app, &barrier, &u.username);
                scope.spawn(move || {
                    let agent = crate::helpers::agent();
                    barrier.wait();
                    let body = json!({"username": username, "password": format!("guess {i}")});
                    binary::call(
                        &agent,
                        &app.base,
                        "POST",
                        "/api/auth/login",
                        None,
                        Some(&body),
                        &[],
                    )
                    .expect("an answer")
                    .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        statuses.iter().all(|s| [401, 429, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(checked <= 10, "{checked} passwords checked: {statuses:?}");
    assert!(throttled > 0, "the throttle engaged: {statuses:?}");
    // The server's own count of checked wrong passwords agrees.
    let metrics = app.raw("GET", "/metrics", None, None, None);
    let failed: u64 = metrics
        .body
        .as_str()
        .unwrap_or("")
        .lines()
        .find_map(|l| l.strip_prefix("wallet_failed_logins_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("wallet_failed_logins_total");
    assert!(failed <= 10, "{failed}");
    // The owner is throttled too now, for this window.
    let r = app.request(
        "POST",
        "/api/auth/login",
        None,
        Some(&json!({"username": u.username, "password": "correct horse battery"})),
    );
    assert_eq!(r.status, 429);
}

#[test]
fn usernames_are_normalised_and_compared_after_case_folding() {
    // ａｌｉｃｅ (fullwidth), 𝐚𝐥𝐢𝐜𝐞 (mathematical bold) and ALICE are one name, stored as
    // alice; straße and STRASSE are one name. Registration, login and to_username agree.
    let app = TestApp::spawn();
    let register = |username: &str, email: &str| {
        app.request(
            "POST",
            "/api/auth/register",
            None,
            Some(&json!({
                "username": username, "email": email,
                "password": "correct horse battery", "password_confirm": "correct horse battery",
            })),
        )
    };
    let r = register("ａｌｉｃｅ", "alice@example.com");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.body["user"]["username"], "alice",
        "stored and shown in NFKC"
    );
    let alice_token = r.body["token"].as_str().unwrap().to_string();
    for same in ["alice", "𝐚𝐥𝐢𝐜𝐞", "ALICE", "Ａｌｉｃｅ"] {
        let r = register(same, &format!("{}@example.com", name("x")));
        assert_eq!(
            (r.status, r.code()),
            (409, "username_taken"),
            "{same}: {}",
            r.body
        );
    }
    let r = register("straße", "strasse@example.com");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["user"]["username"], "straße");
    let strasse_id = r.body["user"]["id"].as_i64().unwrap();
    let r = register("STRASSE", "other@example.com");
    assert_eq!((r.status, r.code()), (409, "username_taken"), "{}", r.body);
    // NFKC output is validated: ½ becomes 1⁄2, whose fraction slash is not allowed.
    let r = register("x½y", "half@example.com");
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body["error"]["fields"]["username"].is_array(),
        "{}",
        r.body
    );

    for spelling in ["𝐀𝐋𝐈𝐂𝐄", "ａｌｉｃｅ", "Alice"] {
        let r = app.request(
            "POST",
            "/api/auth/login",
            None,
            Some(&json!({"username": spelling, "password": "correct horse battery"})),
        );
        assert_eq!(r.status, 200, "{spelling}: {}", r.body);
        assert_eq!(r.body["user"]["username"], "alice");
    }
    let r = app.post(
        "/api/wallets/me/deposit",
        &alice_token,
        json!({"amount": "10.00", "reference": "d1"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = app.post(
        "/api/wallets/me/transfer",
        &alice_token,
        json!({"to_username": "ＳＴＲＡＳＳＥ", "amount": "1.00", "reference": "t1"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["transfer_out"]["counterparty_user_id"], strasse_id);
    let r = app.post(
        "/api/wallets/me/transfer",
        &alice_token,
        json!({"to_username": "𝐚𝐥𝐢𝐜𝐞", "amount": "1.00", "reference": "t2"}),
    );
    assert_eq!(
        r.status, 422,
        "to oneself under another spelling: {}",
        r.body
    );
}

#[test]
fn every_spelling_of_a_username_shares_one_failed_login_count() {
    // The throttle keys a username by its normalised form: three failures spread over three
    // spellings (from three addresses, behind a trusted proxy) use up a limit of three.
    let app = TestApp::spawn_with(
        |c| {
            c.serve.login_failures_max = 3;
            c.serve.trusted_proxy = Some("127.0.0.1".parse().unwrap());
        },
        std::sync::Arc::new(wallet::clock::SystemClock),
    );
    app.register("alice");
    for (i, spelling) in ["ALICE", "ａｌｉｃｅ", "𝐚𝐥𝐢𝐜𝐞"].iter().enumerate() {
        let from = format!("203.0.113.{i}");
        assert_eq!(login_from(&app, &from, spelling, "wrong password"), 401);
    }
    assert_eq!(
        login_from(&app, "203.0.113.9", "alice", "correct horse battery"),
        429
    );
}

#[test]
fn one_name_registered_many_times_at_once_makes_one_account() {
    // Eight registrations of one username at once (each with its own email): one account,
    // and the other seven hear the name is taken. On PostgreSQL they run on several writer
    // connections side by side, where a check-then-insert would let two pass the check.
    let app = TestApp::spawn();
    let username = name("same");
    let statuses: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (app, username) = (&app, &username);
                s.spawn(move || {
                    let r = app.request(
                        "POST",
                        "/api/auth/register",
                        None,
                        Some(&serde_json::json!({
                            "username": username,
                            "email": format!("same{i}@example.com"),
                            "password": "correct horse battery",
                            "password_confirm": "correct horse battery",
                        })),
                    );
                    (r.status, r.code().to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created = statuses.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(created, 1, "{statuses:?}");
    for (status, code) in statuses.iter().filter(|(s, _)| *s != 201) {
        assert_eq!(
            (*status, code.as_str()),
            (409, "username_taken"),
            "{statuses:?}"
        );
    }
}
