//! `wallet copy`: a ledger built through the API is copied to a new SQLite file, and (when
//! `WALLET_TEST_POSTGRES_URL` names a PostgreSQL server) to PostgreSQL and back, with every
//! row unchanged; refusals and failures leave the target as it was.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ::wallet::clock::SystemClock;
use ::wallet::config::Config;
use ::wallet::copy::{copy, CopyReport};
use ::wallet::error::StartupError;
use ::wallet::startup::{App, TestHooks};
use ::wallet::store::postgres::PgConn;
use ::wallet::store::{Row, Sql, Target};
use serde_json::{json, Value};

use crate::binary;
use crate::helpers::{agent, name, User};

/// Every table a copy carries, and the key that orders its rows.
const TABLES: [(&str, &str); 9] = [
    ("settings", "id"),
    ("users", "id"),
    ("tokens", "id"),
    ("wallets", "key"),
    ("entries", "seq"),
    ("withdrawals", "id"),
    ("snapshot_runs", "id"),
    ("balance_snapshots", "wallet_id, taken_at"),
    ("audit_log", "id"),
];

/// A server on a SQLite file of the test's own. Not `TestApp`, which runs on the engine the
/// environment picks: a copy here always starts from SQLite.
struct Served {
    app: Option<App>,
    base: String,
}

impl Served {
    fn start(target: Target) -> Served {
        ::wallet::log::errors_only();
        let mut config = Config::for_tests(target);
        config.serve.threads = 4;
        config.serve.db_writers = 2;
        let app = App::start_with(config, Arc::new(SystemClock), TestHooks::default())
            .expect("start the app");
        Served {
            base: format!("http://{}", app.addr),
            app: Some(app),
        }
    }

    /// A request, expecting `status`; returns the body.
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Value,
        status: u16,
    ) -> Value {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Token {t}"));
        }
        let req = req.header("Content-Type", "application/json");
        let mut r = agent()
            .run(req.body(body.to_string()).unwrap())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let text = r.body_mut().read_to_string().unwrap_or_default();
        assert_eq!(r.status().as_u16(), status, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    fn post(&self, path: &str, token: &str, body: Value, status: u16) -> Value {
        self.call("POST", path, Some(token), body, status)
    }

    fn register(&self, prefix: &str) -> User {
        let username = name(prefix);
        let body = json!({
            "username": username, "email": format!("{username}@example.com"),
            "password": "correct horse battery", "password_confirm": "correct horse battery",
        });
        let r = self.call("POST", "/api/auth/register", None, body, 201);
        User {
            id: r["user"]["id"].as_i64().unwrap(),
            username,
            token: r["token"].as_str().unwrap().to_string(),
        }
    }

    fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().expect("clean shutdown");
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(app) = self.app.take() {
            let _ = app.shutdown();
        }
    }
}

/// A ledger built through the API on SQLite, its server stopped: what its users saw.
struct Ledger {
    path: PathBuf,
    users: Vec<User>,
    /// Each user's wallet and history as the API showed them.
    seen: Vec<(Value, Value)>,
    _dir: tempfile::TempDir,
}

impl Ledger {
    fn db(&self) -> Target {
        Target::Sqlite(self.path.clone())
    }
}

/// Users, deposits (one with metadata), transfers, an immediate withdrawal, a scheduled one
/// and a cancelled one, a staff credit (with its audit row), a logout (a revoked token) and a
/// snapshot run.
fn ledger() -> Ledger {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wallet.db");
    let mut app = Served::start(Target::Sqlite(path.clone()));
    let users: Vec<User> = ["alice", "bob", "carol", "staff"]
        .iter()
        .map(|n| app.register(n))
        .collect();
    let [alice, bob, carol, staff] = [&users[0], &users[1], &users[2], &users[3]];
    // Made staff before its token is first used (the token cache holds the staff flag).
    sqlite(&path)
        .execute("UPDATE users SET is_staff = 1 WHERE id = ?1", [staff.id])
        .unwrap();
    let deposit = |u: &User, amount: &str, reference: &str, metadata: Value| {
        let body = json!({"amount": amount, "reference": reference, "metadata": metadata});
        app.post("/api/wallets/me/deposit", &u.token, body, 201);
    };
    deposit(alice, "100", "d-1", json!({}));
    deposit(bob, "50.25", "d-2", json!({}));
    deposit(
        carol,
        "0.07",
        "d-3",
        json!({"note": "ünïcode ✓, \"quoted\""}),
    );
    let transfer = |from: &User, to: &User, amount: &str, reference: &str| {
        let body = json!({"to_username": to.username, "amount": amount, "reference": reference});
        app.post("/api/wallets/me/transfer", &from.token, body, 201);
    };
    transfer(alice, bob, "12.34", "t-1");
    transfer(bob, carol, "5", "t-2");
    transfer(alice, carol, "1.01", "t-3");
    let withdraw = json!({"amount": "3", "reference": "w-1"});
    app.post("/api/wallets/me/withdraw", &bob.token, withdraw, 201);
    let now = app.app.as_ref().unwrap().service().clock.now();
    let tomorrow = now.plus_millis(86_400_000).to_text();
    let mut scheduled = Vec::new();
    for reference in ["w-2", "w-3"] {
        let body = json!({"amount": "1", "reference": reference, "scheduled_at": tomorrow});
        let r = app.post("/api/wallets/me/withdraw", &carol.token, body, 202);
        scheduled.push(r["id"].as_str().unwrap().to_string());
    }
    let cancel = format!("/api/wallets/me/withdrawals/{}/cancel", scheduled[1]);
    app.post(&cancel, &carol.token, json!({}), 200);
    let credit = format!("/api/admin/users/{}/credit", alice.id);
    let body = json!({"amount": "50", "reference": "goodwill"});
    app.post(&credit, &staff.token, body, 201);
    let login = json!({"username": alice.username, "password": "correct horse battery"});
    let extra = app.call("POST", "/api/auth/login", None, login, 200)["token"]
        .as_str()
        .unwrap()
        .to_string();
    app.post("/api/auth/logout", &extra, json!({}), 200);
    // `wallet snapshot`, beside the running server.
    assert!(::wallet::tools::snapshot_now(&::wallet::store::Target::Sqlite(path.clone())).unwrap());
    let seen = users.iter().map(|u| seen_by(&app.base, u)).collect();
    app.stop();
    Ledger {
        path,
        users,
        seen,
        _dir: dir,
    }
}

/// A user's wallet (balance, recent entries) and history, as a server at `base` shows them.
fn seen_by(base: &str, u: &User) -> (Value, Value) {
    let get = |path: &str| -> Value {
        let mut r = agent()
            .get(format!("{base}{path}"))
            .header("Authorization", format!("Token {}", u.token))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(r.status().as_u16(), 200, "GET {path}");
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    };
    (
        get("/api/wallets/me"),
        get("/api/wallets/me/transactions?limit=100")["results"].clone(),
    )
}

/// Every row of every table a copy carries, each with the columns the SQLite schema names,
/// in key order: two databases that dump alike hold the same ledger.
fn dump(conn: &dyn Sql) -> Vec<(&'static str, Vec<Row>)> {
    let schema = rusqlite::Connection::open_in_memory().unwrap();
    schema.execute_batch(::wallet::db::SCHEMA_SQL).unwrap();
    TABLES
        .iter()
        .map(|(table, key)| {
            let columns: Vec<String> = schema
                .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
                .unwrap()
                .query_map([table], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let sql = format!("SELECT {} FROM {table} ORDER BY {key}", columns.join(", "));
            (*table, conn.query(&sql, &[]).unwrap())
        })
        .collect()
}

fn sqlite(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

fn dump_file(path: &Path) -> Vec<(&'static str, Vec<Row>)> {
    dump(&sqlite(path))
}

/// The last entry's position and hash, read from a SQLite file.
fn last_entry(path: &Path) -> (i64, [u8; 32]) {
    sqlite(path)
        .query_row(
            "SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

fn rows_of(report: &CopyReport, table: &str) -> u64 {
    report
        .rows
        .iter()
        .find(|(t, _)| *t == table)
        .unwrap_or_else(|| panic!("{table} in {:?}", report.rows))
        .1
}

/// `tools/verify_chain.py` on a SQLite file: its output, or None without python3.
pub fn verify_chain_py(path: &Path) -> Option<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/verify_chain.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(path)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "verify_chain.py: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A SQLite copy: verified, and what an auditor's script recomputes.
fn check_sqlite_copy(path: &Path, head: (i64, [u8; 32])) {
    let mut conn = sqlite(path);
    let report = ::wallet::verify::verify(&mut conn).unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, ::wallet::db::SCHEMA_VERSION);
    assert_eq!(last_entry(path), head);
    if let Some(out) = verify_chain_py(path) {
        let hex: String = head.1.iter().map(|b| format!("{b:02x}")).collect();
        assert!(out.contains(&format!("chain head {hex}")), "{out}");
    }
}

#[test]
fn a_sqlite_ledger_copies_to_a_new_file_row_for_row_and_serves_the_same() {
    // Every row of every table arrives unchanged (ids, time stamps, hashes, token hashes,
    // withdrawals in every state, snapshots, the audit log); the copy verifies, by `verify`
    // and by tools/verify_chain.py; and a server on it shows each user, with their own
    // tokens, the same wallet and history.
    let ledger = ledger();
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("copy.db");
    let report = copy(&ledger.db(), &Target::Sqlite(to.clone())).unwrap();
    assert!(report.verify.ok(), "{:?}", report.verify.findings);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let source = dump_file(&ledger.path);
    assert_eq!(dump_file(&to), source);
    for (table, rows) in &source {
        assert_eq!(rows_of(&report, table), rows.len() as u64, "{table}");
    }
    assert_eq!(rows_of(&report, "entries"), 11);
    assert_eq!(rows_of(&report, "withdrawals"), 2);
    assert!(rows_of(&report, "balance_snapshots") >= 4);
    assert_eq!(rows_of(&report, "audit_log"), 1);
    assert_eq!(report.chain_head, last_entry(&ledger.path));
    check_sqlite_copy(&to, report.chain_head);
    // The WAL was folded into the file: the copy is one file.
    assert!(!dir.path().join("copy.db-wal").exists());

    let served = Served::start(Target::Sqlite(to.clone()));
    for (u, seen) in ledger.users.iter().zip(&ledger.seen) {
        assert_eq!(&seen_by(&served.base, u), seen, "{}", u.username);
    }
}

#[test]
fn the_command_line_copies_prints_the_counts_and_refuses_a_second_copy() {
    // `wallet copy` prints a row count per table and the verify result and exits 0; the same
    // copy again is refused (exit 2, a one-line reason) and leaves the first copy as it was.
    let ledger = ledger();
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("copy.db");
    let run = || {
        let mut cmd = binary::wallet(&ledger.path);
        cmd.arg("copy")
            .arg("--from")
            .arg(&ledger.path)
            .arg("--to")
            .arg(&to);
        binary::run(cmd, None, Duration::from_secs(60))
    };
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in ["users", "entries", "11 rows", "withdrawals", "audit_log"] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    assert!(
        stdout.contains("verified 11 entries in 4 wallets of the copy"),
        "{stdout}"
    );
    assert!(stdout.contains(": ok"), "{stdout}");
    let before = std::fs::read(&to).unwrap();
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("already exists and is not empty"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(std::fs::read(&to).unwrap(), before);
}

#[test]
fn a_copy_beside_a_running_server_is_a_snapshot_and_says_so() {
    // A server on the source does not stop a copy (it reads one consistent snapshot), but the
    // copy warns that later writes are not in it.
    let ledger = ledger();
    let _server = Served::start(ledger.db());
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("copy.db");
    let report = copy(&ledger.db(), &Target::Sqlite(to.clone())).unwrap();
    assert!(report.verify.ok(), "{:?}", report.verify.findings);
    assert!(
        report.warnings.len() == 1 && report.warnings[0].contains("a wallet server is serving"),
        "{:?}",
        report.warnings
    );
    assert_eq!(dump_file(&to), dump_file(&ledger.path));
}

/// The files in `dir`, by name.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn refusal(result: Result<CopyReport, StartupError>) -> String {
    match result {
        Ok(r) => panic!("copied: {:?}", r.rows),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_copy_into_anything_but_a_new_database_is_refused_and_changes_nothing() {
    // A non-empty file, the source itself (under another spelling too), a directory, a file in
    // a missing directory, a stale WAL: each refused with its reason, nothing created or
    // changed. A source that is not a current wallet ledger is refused before anything is
    // written.
    let ledger = ledger();
    let from = ledger.db();
    let dir = tempfile::tempdir().unwrap();

    let full = dir.path().join("full.db");
    std::fs::write(&full, b"not empty").unwrap();
    let why = refusal(copy(&from, &Target::Sqlite(full.clone())));
    assert!(why.contains("already exists and is not empty"), "{why}");
    assert_eq!(std::fs::read(&full).unwrap(), b"not empty");

    let source_bytes = std::fs::read(&ledger.path).unwrap();
    let again = ledger.path.parent().unwrap().join(".").join("wallet.db");
    for same in [ledger.path.clone(), again] {
        let why = refusal(copy(&from, &Target::Sqlite(same)));
        assert!(why.contains("same database as --from"), "{why}");
    }
    assert_eq!(std::fs::read(&ledger.path).unwrap(), source_bytes);

    let directory = dir.path().join("a-directory");
    std::fs::create_dir(&directory).unwrap();
    let why = refusal(copy(&from, &Target::Sqlite(directory.clone())));
    assert!(why.contains("is a directory"), "{why}");
    assert!(files_in(&directory).is_empty());

    let missing = dir.path().join("missing").join("copy.db");
    let why = refusal(copy(&from, &Target::Sqlite(missing)));
    assert!(why.contains("cannot create"), "{why}");

    let stale = dir.path().join("stale.db");
    std::fs::write(dir.path().join("stale.db-wal"), b"frames").unwrap();
    let why = refusal(copy(&from, &Target::Sqlite(stale.clone())));
    assert!(
        why.contains("stale.db-wal is left from another database"),
        "{why}"
    );
    assert!(!stale.exists());

    let old = dir.path().join("v1.db");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/wallet-v1.db"),
        &old,
    )
    .unwrap();
    let to = dir.path().join("from-v1.db");
    let why = refusal(copy(&Target::Sqlite(old), &Target::Sqlite(to.clone())));
    assert!(
        why.contains("schema version 1, older than") && why.contains("start"),
        "{why}"
    );
    let why = refusal(copy(
        &Target::Sqlite(dir.path().join("nothing.db")),
        &Target::Sqlite(to.clone()),
    ));
    assert!(why.contains("is not a database file"), "{why}");
    assert!(!to.exists());
    assert_eq!(
        files_in(dir.path()),
        ["a-directory", "full.db", "stale.db-wal", "v1.db"]
    );
}

/// A copy of the ledger in which an audit row names a user that does not exist (written with
/// foreign keys off, as a hand edit could): every table copies until `audit_log`, the last.
fn dangling_source(ledger: &Ledger, dir: &Path) -> PathBuf {
    let path = dir.join("dangling.db");
    sqlite(&ledger.path)
        .execute("VACUUM INTO ?1", [path.to_str().unwrap()])
        .unwrap();
    let conn = sqlite(&path);
    conn.execute_batch(
        "PRAGMA foreign_keys = OFF;
         INSERT INTO audit_log (id, staff_user_id, action, target, detail, created_at)
         VALUES (9999, 424242, 'credit', 'nobody', '{}', '2026-01-01T00:00:00.000000Z');",
    )
    .unwrap();
    path
}

#[test]
fn a_copy_that_fails_midway_leaves_no_file_behind() {
    // The failure comes after every other table is written, in the same transaction: the
    // error says the target is left as it was, and the file, its WAL and its shared memory
    // are gone. An empty file given as the target is left empty.
    let ledger = ledger();
    let dir = tempfile::tempdir().unwrap();
    let from = Target::Sqlite(dangling_source(&ledger, dir.path()));
    let to = dir.path().join("copy.db");
    let why = refusal(copy(&from, &Target::Sqlite(to.clone())));
    assert!(why.contains("it is left as it was"), "{why}");
    assert_eq!(files_in(dir.path()), ["dangling.db"]);

    std::fs::write(&to, b"").unwrap();
    let why = refusal(copy(&from, &Target::Sqlite(to.clone())));
    assert!(why.contains("it is left as it was"), "{why}");
    assert_eq!(files_in(dir.path()), ["copy.db", "dangling.db"]);
    assert_eq!(std::fs::metadata(&to).unwrap().len(), 0);
}

/// The PostgreSQL server for these tests, if there is one.
fn postgres_url() -> Option<String> {
    std::env::var("WALLET_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A new database on the test server, dropped with everything in it at the end.
struct PgDatabase {
    server: String,
    name: String,
    target: Target,
}

impl PgDatabase {
    fn create(server: &str) -> PgDatabase {
        let name = format!(
            "wallet_copy_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let admin = PgConn::connect(server).expect("connect to WALLET_TEST_POSTGRES_URL");
        admin.batch(&format!("CREATE DATABASE {name}")).unwrap();
        PgDatabase {
            server: server.to_string(),
            target: Target::Postgres(crate::helpers::with_database(server, &name)),
            name,
        }
    }

    fn conn(&self) -> PgConn {
        let Target::Postgres(url) = &self.target else {
            unreachable!()
        };
        PgConn::connect(url).unwrap()
    }

    fn tables(&self) -> i64 {
        self.conn()
            .query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()",
                &[],
            )
            .unwrap()
            .get(0)
            .unwrap()
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(admin) = PgConn::connect(&self.server) {
            let _ = admin.batch(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

#[test]
fn a_ledger_goes_to_postgres_and_back_unchanged_and_is_served_there() {
    // SQLite → PostgreSQL → SQLite: every row arrives unchanged both ways, the chain head
    // and sequences continue where the copy left them (a server on the PostgreSQL copy shows
    // the same wallets and histories, takes new users and money, and its sealer extends the
    // copied chain), and the copy back verifies by `verify` and tools/verify_chain.py.
    let Some(server) = postgres_url() else {
        eprintln!("skipped: set WALLET_TEST_POSTGRES_URL to copy to and from PostgreSQL");
        return;
    };
    let ledger = ledger();
    let pg = PgDatabase::create(&server);
    let report = copy(&ledger.db(), &pg.target).unwrap();
    assert!(report.verify.ok(), "{:?}", report.verify.findings);
    let source = dump_file(&ledger.path);
    let conn = pg.conn();
    assert_eq!(dump(&conn), source);
    let head = last_entry(&ledger.path);
    assert_eq!(report.chain_head, head);
    let stored = conn
        .query_one("SELECT seq, hash FROM chain_head WHERE id = 1", &[])
        .unwrap();
    assert_eq!(
        (
            stored.get::<i64>(0).unwrap(),
            stored.get::<[u8; 32]>(1).unwrap()
        ),
        head
    );
    let floors_follow_entries: i64 = conn
        .query_one(
            "SELECT count(*) FROM wallets w WHERE stamp_floor =
                 COALESCE((SELECT max(created_at) FROM entries e WHERE e.wallet_key = w.key),
                          '0001-01-01T00:00:00.000000Z')",
            &[],
        )
        .unwrap()
        .get(0)
        .unwrap();
    assert_eq!(floors_follow_entries, 4);
    // The balance trigger, off while the copy wrote the entries, is on again.
    let refused = conn.execute(
        "INSERT INTO entries (id, wallet_key, kind, amount, balance_after, reference, created_at)
         VALUES ('x', 1, 'DEPOSIT', 1, 999999999, 'x', '2026-01-01T00:00:00.000000Z')",
        &[],
    );
    let refused = format!("{:?}", refused.expect_err("an entry that does not follow"));
    assert!(
        refused.contains("balance_after is not the wallet"),
        "{refused}"
    );
    drop(conn);

    // Back to SQLite at once: the same rows as the original.
    let dir = tempfile::tempdir().unwrap();
    let back = dir.path().join("back.db");
    let report = copy(&pg.target, &Target::Sqlite(back.clone())).unwrap();
    assert!(report.verify.ok(), "{:?}", report.verify.findings);
    assert_eq!(dump_file(&back), source);
    check_sqlite_copy(&back, head);

    // Served on PostgreSQL: the same wallets and histories; new rows continue every sequence.
    let mut app = Served::start(pg.target.clone());
    for (u, seen) in ledger.users.iter().zip(&ledger.seen) {
        assert_eq!(&seen_by(&app.base, u), seen, "{}", u.username);
    }
    let dave = app.register("dave");
    let largest_user = source[1].1.len() as i64;
    assert_eq!(dave.id, largest_user + 1);
    let bob = &ledger.users[1];
    let body = json!({"to_username": dave.username, "amount": "2", "reference": "after-copy"});
    app.post("/api/wallets/me/transfer", &bob.token, body, 201);
    app.stop();
    let verified = ::wallet::verify::verify_target(&pg.target).unwrap();
    assert!(verified.ok(), "{:?}", verified.findings);
    assert_eq!(verified.entries, 13);

    // And back once more: the new rows too, the chain continued from the copied head.
    let again = dir.path().join("again.db");
    let report = copy(&pg.target, &Target::Sqlite(again.clone())).unwrap();
    assert!(report.verify.ok(), "{:?}", report.verify.findings);
    assert_eq!(dump_file(&again), dump(&pg.conn()));
    assert!(report.chain_head.0 > head.0);
    check_sqlite_copy(&again, report.chain_head);
}

#[test]
fn a_copy_into_postgres_refuses_a_database_in_use_and_leaves_a_failed_one_empty() {
    // A database that holds any table is refused and unchanged, as is the source named as its
    // own target; a source with an unsealed entry is refused until it is sealed; a copy that
    // fails on its last table leaves no table behind.
    let Some(server) = postgres_url() else {
        eprintln!("skipped: set WALLET_TEST_POSTGRES_URL to copy to and from PostgreSQL");
        return;
    };
    let ledger = ledger();
    let pg = PgDatabase::create(&server);
    copy(&ledger.db(), &pg.target).unwrap();
    let tables = pg.tables();
    let users = |pg: &PgDatabase| -> i64 {
        pg.conn()
            .query_one("SELECT count(*) FROM users", &[])
            .unwrap()
            .get(0)
            .unwrap()
    };
    let why = refusal(copy(&ledger.db(), &pg.target));
    assert!(why.contains("is not empty"), "{why}");
    let why = refusal(copy(&pg.target, &pg.target));
    assert!(why.contains("same database as --from"), "{why}");
    assert_eq!((pg.tables(), users(&pg)), (tables, 4));

    // An entry not yet sealed (its sealer is held up: another session holds the sealer's
    // lock) is refused after the wait, and no file is made; once sealed, it copies.
    let conn = pg.conn();
    let sealer = pg.conn();
    sealer
        .query_one(
            "SELECT pg_advisory_lock(?1)",
            &[&::wallet::jobs::sealer::SEALER_LOCK],
        )
        .unwrap();
    conn.batch(
        "BEGIN;
         UPDATE balances SET balance = balance + 1 WHERE wallet_key = 1 AND currency = 'USD';
         INSERT INTO entries (id, wallet_key, kind, amount, balance_after, reference, created_at, currency)
         SELECT 'unsealed', 1, 'DEPOSIT', 1, b.balance, 'unsealed', w.stamp_floor, 'USD'
         FROM wallets w JOIN balances b ON b.wallet_key = w.key AND b.currency = 'USD' WHERE w.key = 1;
         COMMIT;",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("copy.db");
    let why = refusal(copy(&pg.target, &Target::Sqlite(to.clone())));
    assert!(
        why.contains("1 entries of") && why.contains("not sealed"),
        "{why}"
    );
    assert!(files_in(dir.path()).is_empty());
    drop(sealer);
    let report = copy(&pg.target, &Target::Sqlite(to.clone())).unwrap();
    assert!(report.verify.ok(), "{:?}", report.verify.findings);
    assert_eq!(rows_of(&report, "entries"), 12);

    let failing = PgDatabase::create(&server);
    let from = Target::Sqlite(dangling_source(&ledger, dir.path()));
    let why = refusal(copy(&from, &failing.target));
    assert!(why.contains("it is left as it was"), "{why}");
    assert_eq!(failing.tables(), 0);
}

#[test]
fn a_transfer_written_on_postgres_replays_on_its_sqlite_copy() {
    // On PostgreSQL a transfer's halves are written in wallet key order, so a transfer to an
    // older wallet puts its incoming half first; copied to SQLite, where a replay looks for
    // the incoming half right after the outgoing one, the retry must still replay (200), not
    // fail for a missing half.
    let Some(server) = postgres_url() else {
        eprintln!("not run: needs PostgreSQL (set WALLET_TEST_POSTGRES_URL)");
        return;
    };
    let pg = PgDatabase::create(&server);
    let mut app = Served::start(pg.target.clone());
    let (older, newer) = (app.register("older"), app.register("newer"));
    app.post(
        "/api/wallets/me/deposit",
        &newer.token,
        json!({"amount": "10.00", "reference": "fund"}),
        201,
    );
    let transfer = json!({"to_user_id": older.id, "amount": "3.00", "reference": "pay"});
    let first = app.post(
        "/api/wallets/me/transfer",
        &newer.token,
        transfer.clone(),
        201,
    );
    app.stop();
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("copy.db");
    copy(&pg.target, &Target::Sqlite(to.clone())).unwrap();
    let copied = Served::start(Target::Sqlite(to));
    let replay = copied.post("/api/wallets/me/transfer", &newer.token, transfer, 200);
    assert_eq!(
        replay["transfer_in"]["id"], first["transfer_in"]["id"],
        "{replay}"
    );
    assert_eq!(
        replay["transfer_out"]["id"], first["transfer_out"]["id"],
        "{replay}"
    );
}
