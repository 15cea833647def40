//! Spawns the real service on 127.0.0.1:0 with a fresh temporary database, and talks HTTP to it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use wallet::clock::{GuardedClock, SharedClock, SystemClock};
use wallet::config::Config;
use wallet::startup::{App, TestHooks};

pub struct TestApp {
    pub base: String,
    pub db: PathBuf,
    pub app: Option<App>,
    agent: ureq::Agent,
    _dir: tempfile::TempDir,
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

    /// Starts on a copy of `fixture` (a database file), or on a new database.
    pub fn spawn_on(
        fixture: Option<&std::path::Path>,
        tune: impl FnOnce(&mut Config),
        clock: SharedClock,
    ) -> TestApp {
        // Errors only: request lines from every in-process server would bury test output.
        wallet::log::errors_only();
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("wallet.db");
        if let Some(fixture) = fixture {
            std::fs::copy(fixture, &db).expect("copy the fixture database");
        }
        let mut config = Config::for_tests(db.clone());
        tune(&mut config);
        let app =
            App::start_with(config, clock, TestHooks { panic_route: true }).expect("start the app");
        TestApp {
            base: format!("http://{}", app.addr),
            db,
            app: Some(app),
            agent: agent(),
            _dir: dir,
        }
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

    /// Opens the database directly, as an auditor (or a saboteur) would.
    pub fn sql(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(&self.db).expect("open db");
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c
    }

    pub fn verify(&self) -> wallet::verify::VerifyReport {
        wallet::verify::verify(&mut self.sql()).expect("verify runs")
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
