//! Spawns the real service on 127.0.0.1:0 with a fresh database, and talks HTTP to it.
//!
//! The engine is chosen by the environment: SQLite in a temporary directory by default, or,
//! when `WALLET_TEST_POSTGRES_URL` names a PostgreSQL server (`.ci/postgres.sh start` prints
//! one), a new database on that server for each test, dropped when the test ends. Every test
//! body is the same on both engines; the few that are about SQLite's files say so with
//! `sqlite_only` and return early on PostgreSQL.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use wallet::clock::{GuardedClock, SharedClock, SystemClock};
use wallet::config::Config;
use wallet::startup::{App, TestHooks};
use wallet::store::postgres::PgConn;
use wallet::store::{Engine, Sql, Target};

/// The PostgreSQL server the tests run on, if any: a URL whose database the harness may
/// connect to as a user who may create and drop databases.
pub const POSTGRES_URL_VAR: &str = "WALLET_TEST_POSTGRES_URL";

/// Writer connections of a test server on PostgreSQL: each test has its own database but the
/// server's `max_connections` is shared by the tests that run at once.
const TEST_DB_WRITERS: u16 = 4;

/// The engine the tests run on.
pub fn engine() -> Engine {
    if postgres_url().is_some() {
        Engine::Postgres
    } else {
        Engine::Sqlite
    }
}

/// The PostgreSQL server the suite runs on, if it does.
pub fn postgres_url() -> Option<String> {
    std::env::var(POSTGRES_URL_VAR)
        .ok()
        .filter(|u| !u.is_empty())
}

/// For a test about SQLite's own files (its schema migrations, file modes, `flock`, `PRAGMA`s,
/// `wallet backup`): true on PostgreSQL, after saying on stderr that the test did not run and
/// why, so the test returns at once.
pub fn sqlite_only(reason: &str) -> bool {
    if engine() == Engine::Sqlite {
        return false;
    }
    eprintln!("not run on PostgreSQL (SQLite only): {reason}");
    true
}

/// `url` with its database name replaced by `database` (a query string is kept). The one
/// spelling the suite's tests share.
pub fn with_database(url: &str, database: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((url, query)) => (url, Some(query)),
        None => (url, None),
    };
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let server = match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    };
    match query {
        Some(q) => format!("{server}/{database}?{q}"),
        None => format!("{server}/{database}"),
    }
}

/// A fresh, empty database for one test: `wallet.db` in a temporary directory, or a new
/// database on the PostgreSQL server of `WALLET_TEST_POSTGRES_URL`, dropped with this value.
pub struct TestDb {
    pub target: Target,
    /// The server's own URL and the database made there, to drop it.
    postgres: Option<(String, String)>,
    dir: tempfile::TempDir,
}

impl TestDb {
    pub fn new() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let Some(server) = postgres_url() else {
            return TestDb {
                target: Target::Sqlite(dir.path().join("wallet.db")),
                postgres: None,
                dir,
            };
        };
        let database = format!("wallet_test_{}", uuid::Uuid::new_v4().simple());
        let admin = PgConn::connect(&server)
            .unwrap_or_else(|e| panic!("connect to {POSTGRES_URL_VAR} ({server}): {e}"));
        admin
            .batch(&format!("CREATE DATABASE {database}"))
            .unwrap_or_else(|e| panic!("create database {database}: {e:?}"));
        TestDb {
            target: Target::Postgres(with_database(&server, &database)),
            postgres: Some((server, database)),
            dir,
        }
    }

    pub fn engine(&self) -> Engine {
        self.target.engine()
    }

    /// A temporary directory of the test's own, for any other file it needs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The SQLite file; only for tests gated by `sqlite_only`.
    pub fn file(&self) -> &Path {
        self.target
            .path()
            .expect("a SQLite file: the test must return early with sqlite_only on PostgreSQL")
    }

    /// What `--db` takes: the file's path or the database's URL.
    pub fn arg(&self) -> OsString {
        match &self.target {
            Target::Sqlite(path) => path.clone().into_os_string(),
            Target::Postgres(url) => url.into(),
        }
    }

    /// A connection of its own to the database, as an auditor (or a saboteur) would open one.
    pub fn sql(&self) -> Box<dyn Sql> {
        match &self.target {
            Target::Sqlite(path) => {
                let c = rusqlite::Connection::open(path).expect("open db");
                c.busy_timeout(Duration::from_secs(10)).unwrap();
                Box::new(c)
            }
            Target::Postgres(url) => {
                Box::new(PgConn::connect(url).unwrap_or_else(|e| panic!("connect to {url}: {e}")))
            }
        }
    }

    /// Checks the whole ledger, as `wallet verify` does (on PostgreSQL, after the entries
    /// committed so far are sealed into the chain).
    pub fn verify(&self) -> wallet::verify::VerifyReport {
        wallet::verify::verify_target(&self.target).expect("verify runs")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((server, database)) = &self.postgres {
            let dropped = PgConn::connect(server)
                .map_err(|e| format!("{e}"))
                .and_then(|c| {
                    c.batch(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                        .map_err(|e| format!("{e:?}"))
                });
            if let Err(e) = dropped {
                eprintln!("could not drop the test database {database}: {e}");
            }
        }
    }
}

pub struct TestApp {
    pub base: String,
    pub app: Option<App>,
    agent: ureq::Agent,
    /// Dropped after the app has stopped (`Drop` for `TestApp` runs first).
    store: TestDb,
}

pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// A registered user and its token.
#[derive(Clone, Debug)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub token: String,
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .max_idle_connections_per_host(64)
        .build()
        .into()
}

impl TestApp {
    pub fn spawn() -> TestApp {
        TestApp::spawn_with(|_| {}, Arc::new(SystemClock))
    }

    pub fn spawn_with(tune: impl FnOnce(&mut Config), clock: SharedClock) -> TestApp {
        TestApp::spawn_on(None, tune, clock)
    }

    /// Starts on a copy of `fixture` (a SQLite database file, so only in a test gated by
    /// `sqlite_only`), or on a new database of the engine the tests run on.
    pub fn spawn_on(
        fixture: Option<&Path>,
        tune: impl FnOnce(&mut Config),
        clock: SharedClock,
    ) -> TestApp {
        // Errors only: request lines from every in-process server would bury test output.
        wallet::log::errors_only();
        let store = TestDb::new();
        if let Some(fixture) = fixture {
            std::fs::copy(fixture, store.file()).expect("copy the fixture database");
        }
        TestApp::spawn_on_db(store, tune, clock)
    }

    /// Starts on `store`, a database the test has prepared.
    pub fn spawn_on_db(
        store: TestDb,
        tune: impl FnOnce(&mut Config),
        clock: SharedClock,
    ) -> TestApp {
        wallet::log::errors_only();
        let mut config = Config::for_tests(store.target.clone());
        if store.engine() == Engine::Postgres {
            config.serve.db_writers = TEST_DB_WRITERS;
        }
        tune(&mut config);
        let app =
            App::start_with(config, clock, TestHooks { panic_route: true }).expect("start the app");
        TestApp {
            base: format!("http://{}", app.addr),
            app: Some(app),
            agent: agent(),
            store,
        }
    }

    /// The engine this app's database is on.
    pub fn engine(&self) -> Engine {
        self.store.engine()
    }

    pub fn on_postgres(&self) -> bool {
        self.engine() == Engine::Postgres
    }

    /// Where the ledger is, for another server or a tool on the same database.
    pub fn target(&self) -> &Target {
        &self.store.target
    }

    /// What `--db` takes to name this app's database (a path or a URL).
    pub fn db_arg(&self) -> OsString {
        self.store.arg()
    }

    /// The SQLite file; only for tests gated by `sqlite_only`.
    pub fn db_file(&self) -> &Path {
        self.store.file()
    }

    /// The clock the server runs on (the given wall clock, as the server believes it).
    pub fn clock(&self) -> &Arc<GuardedClock> {
        &self.app.as_ref().expect("running").service().clock
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        self.raw(
            method,
            path,
            token,
            body.map(|b| b.to_string()),
            Some("application/json"),
        )
    }

    pub fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
        content_type: Option<&str>,
    ) -> Resp {
        let url = format!("{}{}", self.base, path);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Token {t}"));
        }
        if let (Some(ct), Some(_)) = (content_type, &body) {
            req = req.header("Content-Type", ct);
        }
        let result = match body {
            Some(b) => self.agent.run(req.body(b).expect("request")),
            None => self.agent.run(req.body(()).expect("request")),
        };
        let mut resp = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp {
            status,
            body,
            headers,
        }
    }

    pub fn get(&self, path: &str, token: &str) -> Resp {
        self.request("GET", path, Some(token), None)
    }

    pub fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.request("POST", path, Some(token), Some(&body))
    }

    pub fn register(&self, username: &str) -> User {
        let r = self.request(
            "POST",
            "/api/auth/register",
            None,
            Some(&json!({
                "username": username, "email": format!("{username}@example.com"),
                "password": "correct horse battery", "password_confirm": "correct horse battery",
            })),
        );
        assert_eq!(r.status, 201, "register {username}: {}", r.body);
        User {
            id: r.body["user"]["id"].as_i64().unwrap(),
            username: username.to_string(),
            token: r.body["token"].as_str().unwrap().to_string(),
        }
    }

    pub fn deposit(&self, user: &User, amount: &str, reference: &str) -> Resp {
        self.post(
            "/api/wallets/me/deposit",
            &user.token,
            json!({"amount": amount, "reference": reference}),
        )
    }

    pub fn balance(&self, user: &User) -> String {
        let r = self.get("/api/wallets/me", &user.token);
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["balance"].as_str().unwrap().to_string()
    }

    /// A connection of its own to the app's database, as an auditor (or a saboteur) would
    /// open one.
    pub fn db(&self) -> Box<dyn Sql> {
        self.store.sql()
    }

    /// Checks the whole ledger, as `wallet verify` does.
    pub fn verify(&self) -> wallet::verify::VerifyReport {
        self.store.verify()
    }

    /// A connection of its own that may rewrite and delete ledger entries, which the schema
    /// forbids (the immutability triggers, and the foreign keys that keep an entry's wallet):
    /// what someone with the database and bad intent would do first. On SQLite the triggers are
    /// dropped from the database; on PostgreSQL triggers and foreign keys are off for this
    /// connection only. On PostgreSQL, rewrite only entries already sealed into the chain
    /// (after `verify`): the sealer would hash an unsealed rewritten row as if it were genuine.
    pub fn db_rewriting_history(&self) -> Box<dyn Sql> {
        let db = self.db();
        let statements: &[&str] = if self.on_postgres() {
            &["SET session_replication_role = replica"]
        } else {
            &[
                "DROP TRIGGER IF EXISTS entries_no_update",
                "DROP TRIGGER IF EXISTS entries_no_delete",
                "PRAGMA foreign_keys = OFF",
            ]
        };
        for sql in statements {
            db.execute(sql, &[])
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        }
        db
    }

    pub fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().expect("clean shutdown");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(app) = self.app.take() {
            let _ = app.shutdown();
        }
    }
}

/// A short unique name for a user in a test.
pub fn name(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Takes a current SQLite database back to the shape of schema 8: no `reverses`, and the
/// kind `CHECK` as schemas 2 to 8 wrote it (edited back in place, as schema 9 edited it).
pub fn undo_schema_9(db: &rusqlite::Connection) {
    db.execute_batch(
        "DROP INDEX entries_reverses;
         ALTER TABLE entries DROP COLUMN reverses;",
    )
    .expect("drop reverses");
    let table: String = db
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'entries'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let cookie: i64 = db
        .query_row("PRAGMA schema_version", [], |r| r.get(0))
        .unwrap();
    db.execute_batch("PRAGMA writable_schema = ON").unwrap();
    db.execute(
        "UPDATE sqlite_schema SET sql = ?1 WHERE type = 'table' AND name = 'entries'",
        [table.replace(" OR kind = 'REVERSAL_OUT' OR kind = 'REVERSAL_IN')", ")")],
    )
    .unwrap();
    db.execute_batch(&format!(
        "PRAGMA schema_version = {}; PRAGMA writable_schema = OFF; PRAGMA user_version = 8;",
        cookie + 1
    ))
    .unwrap();
}

/// Takes a current SQLite database back to the shape of schema 5 (one currency, no holds, no
/// staff tools, no console sessions), so
/// that a test can build an older database from one the current server wrote. The entries'
/// hashes keep their currency (schema 5 never hashed it): such a database is upgraded and
/// served, not verified.
pub fn undo_schema_6(db: &rusqlite::Connection) {
    undo_schema_9(db);
    db.execute_batch(
        "DROP TABLE console_sessions;
         DROP TRIGGER audit_log_no_update;
         DROP TRIGGER audit_log_no_delete;
         DROP INDEX audit_log_staff;
         DROP INDEX audit_log_target;
         ALTER TABLE audit_log DROP COLUMN reason;
         ALTER TABLE balances DROP COLUMN frozen;
         ALTER TABLE wallets DROP COLUMN frozen_at;
         ALTER TABLE wallets DROP COLUMN frozen_reason;
         DROP TABLE holds;
         DROP TRIGGER entries_balance_follows;
         ALTER TABLE wallets ADD COLUMN balance INTEGER NOT NULL DEFAULT 0 CHECK (balance >= 0);
         ALTER TABLE wallets ADD COLUMN last_balance INTEGER NOT NULL DEFAULT 0 CHECK (last_balance >= 0);
         ALTER TABLE wallets ADD COLUMN last_balance_update TEXT NOT NULL DEFAULT '';
         UPDATE wallets SET
             balance = COALESCE((SELECT balance FROM balances b WHERE b.wallet_key = wallets.key), 0),
             last_balance = COALESCE((SELECT last_balance FROM balances b WHERE b.wallet_key = wallets.key), 0),
             last_balance_update = COALESCE(
                 (SELECT last_balance_update FROM balances b WHERE b.wallet_key = wallets.key),
                 created_at);
         DROP TABLE balances;
         DROP TABLE currencies;
         CREATE TRIGGER entries_balance_follows BEFORE INSERT ON entries
         WHEN NEW.balance_after IS NOT (SELECT balance FROM wallets WHERE key = NEW.wallet_key)
         BEGIN
             SELECT RAISE(ABORT, 'balance_after is not the wallet''s balance');
         END;
         ALTER TABLE entries DROP COLUMN currency;
         ALTER TABLE withdrawals DROP COLUMN currency;
         CREATE TABLE balance_snapshots_v5 (
             wallet_id  TEXT    NOT NULL REFERENCES wallets (id),
             taken_at   TEXT    NOT NULL,
             balance    INTEGER NOT NULL CHECK (balance >= 0),
             running    INTEGER NOT NULL,
             run_id     INTEGER NOT NULL REFERENCES snapshot_runs (id),
             PRIMARY KEY (wallet_id, taken_at)
         ) STRICT;
         INSERT INTO balance_snapshots_v5 SELECT wallet_id, taken_at, balance, running, run_id
             FROM balance_snapshots;
         DROP TABLE balance_snapshots;
         ALTER TABLE balance_snapshots_v5 RENAME TO balance_snapshots;
         ALTER TABLE settings DROP COLUMN chain_currency_from;
         PRAGMA user_version = 5;",
    )
    .expect("take the database back to schema 5");
}

/// A staff user: registered, made staff in the database, then logged in again for a token
/// whose user is staff.
pub fn staff_user(app: &TestApp) -> User {
    let u = app.register(&name("staff"));
    app.db()
        .execute("UPDATE users SET is_staff = 1 WHERE id = ?1", &[&u.id])
        .unwrap();
    let r = app.request(
        "POST",
        "/api/auth/login",
        None,
        Some(&serde_json::json!({"username": u.username, "password": "correct horse battery"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["user"]["is_staff"], true);
    User {
        token: r.body["token"].as_str().unwrap().to_string(),
        ..u
    }
}
