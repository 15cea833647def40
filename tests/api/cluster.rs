//! Several processes on one PostgreSQL database (ARCHITECTURE.md, "Several processes on one
//! PostgreSQL database"): each test makes a database of its own, starts two real `wallet`
//! processes on it, and races requests across them from real threads. What the two must agree
//! on lives in the database, so every guarantee is checked through both processes.
//!
//! These tests need a PostgreSQL server (`WALLET_TEST_POSTGRES_URL`); without one each says
//! so on stderr and returns at once, so a plain `cargo test` needs nothing installed.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wallet::jobs::sealer::SEALER_LOCK;

/// The PostgreSQL server the tests run on: a URL whose user may create and drop databases.
const POSTGRES_URL_VAR: &str = "WALLET_TEST_POSTGRES_URL";
const PASSWORD: &str = "correct horse battery";
/// How long a process may take to start and answer `/health`.
const START_WITHIN: Duration = Duration::from_secs(30);
/// The longest a request may take before the test calls it lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

// ---- The database and the two processes ---------------------------------------------------

/// The server's URL from the environment, or `None` after saying on stderr why the test does
/// not run.
fn postgres_server() -> Option<String> {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("not run: needs PostgreSQL (set {POSTGRES_URL_VAR} to a server's URL)");
            None
        }
    }
}

/// A new database `cluster_<random>` on the server, dropped `WITH (FORCE)` with this value,
/// also when the test panics.
struct ClusterDb {
    server: String,
    name: String,
    url: String,
}

impl ClusterDb {
    fn create(server: &str) -> ClusterDb {
        let name = format!("cluster_{}", uuid::Uuid::new_v4().simple());
        let mut admin = postgres::Client::connect(server, postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {POSTGRES_URL_VAR} ({server}): {e}"));
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        ClusterDb {
            server: server.to_string(),
            url: crate::helpers::with_database(server, &name),
            name,
        }
    }

    /// Waits until a session other than `other_than` holds the sealer's session lock
    /// (`SEALER_LOCK`); returns that session's backend pid, or `None` if none took it
    /// `within`.
    fn wait_for_sealer(&self, other_than: Option<i32>, within: Duration) -> Option<i32> {
        let mut db = postgres::Client::connect(&self.url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.name));
        // A bigint advisory key is shown as its high half in classid, its low half in objid.
        let holder = "SELECT pid FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND objsubid = 1
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND (CAST(classid AS BIGINT) << 32) | CAST(objid AS BIGINT) = $1";
        let started = Instant::now();
        while started.elapsed() < within {
            let pid: Option<i32> = db
                .query_opt(holder, &[&SEALER_LOCK])
                .unwrap_or_else(|e| panic!("read pg_locks: {e}"))
                .map(|row| row.get(0));
            if let Some(pid) = pid.filter(|p| Some(*p) != other_than) {
                return Some(pid);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ClusterDb {
    fn drop(&mut self) {
        let dropped = postgres::Client::connect(&self.server, postgres::NoTls).and_then(|mut c| {
            c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
        });
        if let Err(e) = dropped {
            eprintln!("could not drop the test database {}: {e}", self.name);
        }
    }
}

/// One `wallet` process serving the database, killed (SIGKILL) and reaped when dropped.
struct Node {
    label: &'static str,
    base: String,
    child: Mutex<Child>,
    /// Everything the process wrote to stderr (its log, at level error).
    stderr: Arc<Mutex<String>>,
    agent: ureq::Agent,
}

impl Node {
    /// Starts the binary on `db_url`, on a port the kernel picks, with cheap password hashing,
    /// no snapshots, no login throttle and 4 writer connections (the server's
    /// `max_connections` is shared with the rest of the suite); waits for `/health` 200.
    fn start(label: &'static str, db_url: &str, extra: &[&str]) -> Node {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wallet"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("WALLET_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("WALLET_LOG", "error")
            .args(["--db", db_url, "--listen", "127.0.0.1:0"])
            .args(["--argon2-memory-kib", "64", "--argon2-iterations", "1"])
            .args(["--snapshot-cron", "off", "--login-failures-max", "0"])
            .args(["--db-writers", "4", "--requests-max", "16"])
            .args(["--pin-writer", "false"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start the wallet binary");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        // Reads the address, then keeps draining stdout so that the child never blocks on it.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(addr) = line.strip_prefix("wallet listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let base = rx.recv_timeout(START_WITHIN);
        let node = Node {
            label,
            base: base.clone().unwrap_or_default(),
            child: Mutex::new(child),
            stderr,
            agent: agent(),
        };
        if base.is_err() {
            // Stopped and reaped, so that its stderr is read to the end.
            drop(node.child.lock().unwrap().kill());
            let status = node.child.lock().unwrap().wait();
            let _ = stderr_reader.join();
            panic!(
                "process {label} never printed its address ({status:?}); stderr:\n{}",
                node.stderr()
            );
        }
        let deadline = Instant::now() + START_WITHIN;
        loop {
            match send(&node.agent, &node.base, "GET", "/health", None, None) {
                Ok(r) if r.status == 200 => return node,
                last => assert!(
                    Instant::now() < deadline,
                    "process {label} ({}) did not answer GET /health 200 within {START_WITHIN:?} \
                     (last: {last:?}); stderr:\n{}",
                    node.base,
                    node.stderr()
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGKILL, and reaps the process.
    fn kill9(&self) {
        let mut child = self.child.lock().unwrap();
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// A request through this node's own agent; a lost reply fails the test.
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        send(&self.agent, &self.base, method, path, token, body.as_ref()).unwrap_or_else(|e| {
            panic!(
                "{method} {path} on process {} ({}): no reply: {e}",
                self.label, self.base
            )
        })
    }

    fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call("POST", path, Some(token), Some(body))
    }

    /// Registers `username`; returns its token and user id.
    fn register(&self, username: &str) -> (String, i64) {
        let r = self.call(
            "POST",
            "/api/auth/register",
            None,
            Some(json!({
                "username": username, "email": format!("{username}@example.com"),
                "password": PASSWORD, "password_confirm": PASSWORD,
            })),
        );
        assert_eq!(
            r.status, 201,
            "register {username} on process {}: {}",
            self.label, r.body
        );
        (
            r.body["token"].as_str().unwrap().to_string(),
            r.body["user"]["id"].as_i64().unwrap(),
        )
    }

    fn deposit(&self, token: &str, amount: &str, reference: &str) {
        let r = self.post(
            "/api/wallets/me/deposit",
            token,
            json!({"amount": amount, "reference": reference}),
        );
        assert_eq!(
            r.status, 201,
            "deposit {amount} ({reference}) on process {}: {}",
            self.label, r.body
        );
    }

    /// The caller's balance as this node reads it, in minor units.
    fn balance(&self, token: &str) -> i64 {
        let r = self.call("GET", "/api/wallets/me", Some(token), None);
        assert_eq!(
            r.status, 200,
            "GET /api/wallets/me on process {}: {}",
            self.label, r.body
        );
        cents(r.body["balance"].as_str().expect("balance is a string"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Two processes, A and B, serving one new database.
struct Cluster {
    /// Declared before `db`: the processes stop before their database is dropped.
    nodes: [Node; 2],
    db: ClusterDb,
    /// The backend pid of A's sealer session, which holds `SEALER_LOCK`.
    sealer_a: i32,
}

impl Cluster {
    /// A, then B once A is the elected sealer (so killing A hands the chain over to B), or
    /// `None` when no PostgreSQL server is configured.
    fn start(extra: &[&str]) -> Option<Cluster> {
        let server = postgres_server()?;
        let db = ClusterDb::create(&server);
        let a = Node::start("A", &db.url, extra);
        let Some(sealer) = db.wait_for_sealer(None, Duration::from_secs(10)) else {
            panic!(
                "no sealer was elected 10 s after process A started; stderr of A:\n{}",
                a.stderr()
            );
        };
        let b = Node::start("B", &db.url, extra);
        Some(Cluster {
            nodes: [a, b],
            db,
            sealer_a: sealer,
        })
    }

    fn a(&self) -> &Node {
        &self.nodes[0]
    }

    fn b(&self) -> &Node {
        &self.nodes[1]
    }

    /// `wallet verify --db <url>` while the processes run: exits 0, or the test fails with its
    /// output. Returns how long it took (it first waits for the sealer to chain every
    /// committed entry).
    fn verify(&self) -> Duration {
        let started = Instant::now();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wallet"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("WALLET_") {
                cmd.env_remove(k);
            }
        }
        // Its output goes to files, which never fill up as a pipe would while it runs.
        let (stdout, stderr) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
        let mut child = cmd
            .args(["verify", "--db", &self.db.url])
            .env("WALLET_LOG", "error")
            .stdin(Stdio::null())
            .stdout(stdout.try_clone().unwrap())
            .stderr(stderr.try_clone().unwrap())
            .spawn()
            .expect("run wallet verify");
        let output = || {
            let mut text = String::new();
            for mut file in [&stdout, &stderr] {
                file.seek(SeekFrom::Start(0)).unwrap();
                file.read_to_string(&mut text).unwrap();
            }
            text
        };
        let within = Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "wallet verify still ran after {within:?}; output:\n{}",
                    output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            status.code(),
            Some(0),
            "wallet verify failed after {:?}:\n{}",
            started.elapsed(),
            output()
        );
        started.elapsed()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!(
                    "---- stderr of process {} ({}) ----\n{}",
                    node.label,
                    node.base,
                    node.stderr()
                );
            }
        }
    }
}

// ---- HTTP ---------------------------------------------------------------------------------

#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
    /// `Idempotent-Replayed: true` was sent.
    replayed: bool,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// The status and error code, for a tally: `201`, `422 insufficient_funds`.
    fn outcome(&self) -> String {
        match self.code() {
            "" => self.status.to_string(),
            code => format!("{} {code}", self.status),
        }
    }
}

/// An agent of one thread: its own connections, statuses as replies, a bound on every request.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .into()
}

/// One request; `Err` when no reply came (refused, reset, timed out).
fn send(
    agent: &ureq::Agent,
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<Reply, String> {
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Token {t}"));
    }
    let result = match body {
        Some(b) => agent.run(
            req.header("Content-Type", "application/json")
                .body(b.to_string())
                .expect("request"),
        ),
        None => agent.run(req.body(()).expect("request")),
    };
    let mut resp = result.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let replayed = resp
        .headers()
        .get("Idempotent-Replayed")
        .is_some_and(|v| v.as_bytes() == b"true");
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok(Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        replayed,
    })
}

/// Runs `f(i, agent)` on `n` threads that start together, each with an agent of its own
/// already connected to both processes; returns the results in order of `i`.
fn race<T: Send>(
    cluster: &Cluster,
    n: usize,
    f: impl Fn(usize, &ureq::Agent) -> T + Sync,
) -> Vec<T> {
    let barrier = Barrier::new(n);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, f) = (&barrier, &f);
                s.spawn(move || {
                    let agent = agent();
                    for node in &cluster.nodes {
                        let _ = send(&agent, &node.base, "GET", "/health", None, None);
                    }
                    barrier.wait();
                    f(i, &agent)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a racing thread panicked"))
            .collect()
    })
}

/// A short unique username.
fn name(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// `"12.34"` in minor units.
fn cents(amount: &str) -> i64 {
    let parsed = amount.split_once('.').and_then(|(whole, fraction)| {
        let whole: i64 = whole.parse().ok()?;
        let fraction: i64 = fraction.parse().ok().filter(|_| fraction.len() == 2)?;
        Some(whole * 100 + fraction)
    });
    parsed.unwrap_or_else(|| panic!("not an amount with two decimals: {amount:?}"))
}

/// Minor units as the API writes them.
fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
}

/// How many of each outcome, for a failure message: `{"201": 10, "422 insufficient_funds": 30}`.
fn tally<'a>(replies: impl IntoIterator<Item = &'a Reply>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in replies {
        *counts.entry(r.outcome()).or_insert(0) += 1;
    }
    counts
}

// ---- Tests --------------------------------------------------------------------------------

#[test]
fn forty_concurrent_withdrawals_through_two_processes_never_overdraw() {
    // A wallet holds 100.00; 40 threads withdraw 10.00 each at once, alternating between the
    // two processes. Exactly 10 succeed, each leaving a different balance from 90.00 down to
    // 0.00; the other 30 are 422 insufficient_funds; the balance is 0.00 on both processes and
    // the ledger verifies.
    let Some(cluster) = Cluster::start(&[]) else {
        return;
    };
    let (token, _) = cluster.a().register(&name("w"));
    cluster.b().deposit(&token, "100.00", "fund");

    let replies = race(&cluster, 40, |i, agent| {
        let node = &cluster.nodes[i % 2];
        let body = json!({"amount": "10.00", "reference": format!("w{i}")});
        let r = send(
            agent,
            &node.base,
            "POST",
            "/api/wallets/me/withdraw",
            Some(&token),
            Some(&body),
        );
        (
            node.label,
            r.unwrap_or_else(|e| {
                panic!("withdrawal w{i} on process {}: no reply: {e}", node.label)
            }),
        )
    });

    let counts = tally(replies.iter().map(|(_, r)| r));
    let per_node: BTreeMap<String, usize> = replies.iter().filter(|(_, r)| r.status == 201).fold(
        BTreeMap::new(),
        |mut m, (label, _)| {
            *m.entry(label.to_string()).or_insert(0) += 1;
            m
        },
    );
    let expected: BTreeMap<String, usize> = [
        ("201".to_string(), 10),
        ("422 insufficient_funds".to_string(), 30),
    ]
    .into();
    assert_eq!(
        counts,
        expected,
        "40 withdrawals of 10.00 from 100.00: outcomes (successes per process: {per_node:?}); \
         unexpected bodies: {:?}",
        replies
            .iter()
            .filter(|(_, r)| r.status != 201 && r.code() != "insufficient_funds")
            .map(|(l, r)| format!("{l}: {} {}", r.status, r.body))
            .collect::<Vec<_>>()
    );
    let mut after: Vec<i64> = replies
        .iter()
        .filter(|(_, r)| r.status == 201)
        .map(|(_, r)| cents(r.body["balance_after"].as_str().unwrap_or("?")))
        .collect();
    after.sort_unstable();
    assert_eq!(
        after,
        (0..10).map(|k| k * 1000).collect::<Vec<_>>(),
        "each successful withdrawal must see the one before it (balance_after of the 201s)"
    );
    for node in &cluster.nodes {
        assert_eq!(
            money(node.balance(&token)),
            "0.00",
            "balance read on process {}",
            node.label
        );
    }
    cluster.verify();
}

#[test]
fn thirty_identical_deposits_through_two_processes_move_money_once() {
    // 30 threads send the same deposit (same reference, same amount) at once, alternating
    // between the processes: exactly one is 201, the other 29 are 200 replays marked
    // `Idempotent-Replayed: true` carrying the same transaction id; the wallet holds the amount
    // once, in one transaction.
    let Some(cluster) = Cluster::start(&[]) else {
        return;
    };
    let (token, _) = cluster.a().register(&name("d"));
    let body = json!({"amount": "25.00", "reference": "same-deposit"});

    let replies = race(&cluster, 30, |i, agent| {
        let node = &cluster.nodes[i % 2];
        let r = send(
            agent,
            &node.base,
            "POST",
            "/api/wallets/me/deposit",
            Some(&token),
            Some(&body),
        );
        (
            node.label,
            r.unwrap_or_else(|e| panic!("deposit {i} on process {}: no reply: {e}", node.label)),
        )
    });

    let counts = tally(replies.iter().map(|(_, r)| r));
    let expected: BTreeMap<String, usize> =
        [("200".to_string(), 29), ("201".to_string(), 1)].into();
    assert_eq!(
        counts,
        expected,
        "30 identical deposits: outcomes; unexpected bodies: {:?}",
        replies
            .iter()
            .filter(|(_, r)| r.status != 201 && r.status != 200)
            .map(|(l, r)| format!("{l}: {} {}", r.status, r.body))
            .collect::<Vec<_>>()
    );
    let (_, created) = replies.iter().find(|(_, r)| r.status == 201).unwrap();
    let id = created.body["id"].as_str().expect("the 201 carries an id");
    for (label, r) in replies.iter().filter(|(_, r)| r.status == 200) {
        assert!(
            r.replayed && r.body["id"] == id,
            "a replay on process {label} must carry Idempotent-Replayed: true and id {id}; \
             got replayed={} {}",
            r.replayed,
            r.body
        );
    }
    for node in &cluster.nodes {
        assert_eq!(
            money(node.balance(&token)),
            "25.00",
            "balance on process {}",
            node.label
        );
    }
    let list = cluster
        .b()
        .call("GET", "/api/wallets/me/transactions", Some(&token), None);
    assert_eq!(list.body["count"], 1, "one transaction: {}", list.body);
    cluster.verify();
}

#[test]
fn a_token_revoked_on_one_process_is_refused_by_the_other_within_a_second() {
    // A token in use on process B (so B has it cached) is revoked by a logout on A. B refuses it
    // (401) within one second: the test polls B and fails if it is still accepted after 1.5 s.
    // A refuses it at once.
    let Some(cluster) = Cluster::start(&[]) else {
        return;
    };
    let (token, _) = cluster.a().register(&name("t"));
    let before = cluster
        .b()
        .call("GET", "/api/wallets/me", Some(&token), None);
    assert_eq!(
        before.status, 200,
        "the token on B before the logout: {}",
        before.body
    );

    let logout = cluster
        .a()
        .call("POST", "/api/auth/logout", Some(&token), None);
    assert_eq!(logout.status, 200, "logout on A: {}", logout.body);
    let revoked_at = Instant::now();
    let mut accepted = 0;
    let refused_after = loop {
        let r = cluster
            .b()
            .call("GET", "/api/wallets/me", Some(&token), None);
        let elapsed = revoked_at.elapsed();
        match r.status {
            401 => break elapsed,
            200 => accepted += 1,
            other => panic!("B answered {other} to the revoked token: {}", r.body),
        }
        assert!(
            elapsed < Duration::from_millis(1500),
            "B still accepted the token revoked on A after {elapsed:?} ({accepted} requests \
             accepted since the logout)"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("B refused the revoked token {refused_after:?} after the logout on A");
    let on_a = cluster
        .a()
        .call("GET", "/api/wallets/me", Some(&token), None);
    assert_eq!(on_a.status, 401, "A after its own logout: {}", on_a.body);
    assert_eq!(on_a.code(), "unauthorized");
}

// ---- A fake payout service: answers every call 200 and remembers its Idempotency-Key --------

struct FakePayout {
    url: String,
    addr: SocketAddr,
    keys: Arc<Mutex<Vec<String>>>,
    stopping: Arc<AtomicBool>,
}

impl FakePayout {
    fn start() -> FakePayout {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake payout service");
        let addr = listener.local_addr().unwrap();
        let keys = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let (k, stop) = (keys.clone(), stopping.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let k = k.clone();
                std::thread::spawn(move || pay(conn, &k));
            }
        });
        FakePayout {
            url: format!("http://{addr}/payouts"),
            addr,
            keys,
            stopping,
        }
    }

    fn keys(&self) -> Vec<String> {
        self.keys.lock().unwrap().clone()
    }
}

impl Drop for FakePayout {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads one request (head and `Content-Length` body), records its key, answers 200.
fn pay(conn: TcpStream, keys: &Mutex<Vec<String>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(conn.try_clone().expect("clone the socket"));
    let (mut key, mut length) = (None, 0usize);
    let mut first = true;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if std::mem::take(&mut first) {
            continue;
        }
        if let Some((n, v)) = line.split_once(':') {
            match n.trim().to_ascii_lowercase().as_str() {
                "idempotency-key" => key = Some(v.trim().to_string()),
                "content-length" => length = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    keys.lock()
        .unwrap()
        .push(key.unwrap_or_else(|| "<no Idempotency-Key>".into()));
    let text = r#"{"status":"paid"}"#;
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    );
    let mut conn = conn;
    let _ = conn.write_all(reply.as_bytes());
}

#[test]
fn scheduled_withdrawals_are_paid_once_with_two_processes_running() {
    // Both processes pay out to one fake payout service. Six withdrawals, scheduled through
    // either process for the same moment two seconds ahead, come due while both payout workers
    // run: each is paid exactly once (one call, keyed by its id), ends SUCCEEDED after one
    // attempt, and the wallet is debited once for each.
    let fake = FakePayout::start();
    let Some(cluster) = Cluster::start(&["--payout-url", &fake.url]) else {
        return;
    };
    let (token, _) = cluster.a().register(&name("p"));
    cluster.a().deposit(&token, "100.00", "fund");
    let due_in = Duration::from_millis(2000);
    let due_at = Instant::now() + due_in;
    let at = (chrono::Utc::now() + due_in).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let ids: Vec<String> = (0..6)
        .map(|i| {
            let node = &cluster.nodes[i % 2];
            let r = node.post(
                "/api/wallets/me/withdraw",
                &token,
                json!({"amount": "10.00", "reference": format!("payout-{i}"), "scheduled_at": at}),
            );
            assert_eq!(
                (r.status, r.body["status"].as_str()),
                (202, Some("PENDING")),
                "schedule withdrawal {i} on process {}: {}",
                node.label,
                r.body
            );
            r.body["id"].as_str().unwrap().to_string()
        })
        .collect();

    let deadline = due_at + Duration::from_secs(8);
    let last = loop {
        let last = ids
            .iter()
            .map(|id| {
                let r = cluster.b().call(
                    "GET",
                    &format!("/api/wallets/me/withdrawals/{id}"),
                    Some(&token),
                    None,
                );
                assert_eq!(r.status, 200, "GET withdrawal {id}: {}", r.body);
                r.body
            })
            .collect::<Vec<Value>>();
        if last.iter().all(|w| w["status"] == "SUCCEEDED") {
            eprintln!(
                "all SUCCEEDED {:?} after they came due",
                Instant::now().saturating_duration_since(due_at)
            );
            break last;
        }
        assert!(
            Instant::now() < deadline,
            "not all SUCCEEDED 8 s after they came due: {last:?}; payout calls: {:?}",
            fake.keys()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // A second payment would come from the other process's worker, which wakes at least once
    // a second: give it that long.
    std::thread::sleep(Duration::from_millis(1500));
    let mut keys = fake.keys();
    keys.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(
        keys, expected,
        "one payout call per withdrawal, keyed by its id (calls received vs withdrawal ids)"
    );
    for w in &last {
        assert_eq!(w["attempts"], 1, "one attempt: {w}");
    }
    assert_eq!(money(cluster.a().balance(&token)), "40.00");
    cluster.verify();
}

// ---- SIGKILL of one process under load ----------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Deposit,
    Transfer,
    Withdraw,
}

/// One write a client thread sent, and what it knows of its fate.
#[derive(Debug)]
struct Sent {
    op: Op,
    user: usize,
    amount: i64,
    reference: String,
    node: &'static str,
    outcome: Outcome,
}

#[derive(Debug)]
enum Outcome {
    /// A 2xx: its status and the id of the transaction (a transfer's outgoing half).
    Acknowledged(u16, String),
    /// 422 insufficient_funds: moved nothing.
    Refused,
    /// No reply, or 503 (the server lost its database connection around the commit): the
    /// write may or may not have happened.
    Unknown(String),
    /// Anything else: a failure of the test.
    Unexpected(u16, Value),
}

const USERS: usize = 4;

/// The request for `op` by user `user`; a transfer goes to the next user.
fn write_request(op: Op, amount: i64, reference: &str, to: i64) -> (&'static str, Value) {
    match op {
        Op::Deposit => (
            "/api/wallets/me/deposit",
            json!({"amount": money(amount), "reference": reference}),
        ),
        Op::Withdraw => (
            "/api/wallets/me/withdraw",
            json!({"amount": money(amount), "reference": reference}),
        ),
        Op::Transfer => (
            "/api/wallets/me/transfer",
            json!({"to_user_id": to, "amount": money(amount), "reference": reference}),
        ),
    }
}

fn classify(op: Op, reply: Result<Reply, String>) -> Outcome {
    match reply {
        Err(e) => Outcome::Unknown(e),
        Ok(r) if (200..300).contains(&r.status) => {
            let entry = if op == Op::Transfer {
                &r.body["transfer_out"]
            } else {
                &r.body
            };
            match entry["id"].as_str() {
                Some(id) => Outcome::Acknowledged(r.status, id.to_string()),
                None => Outcome::Unexpected(r.status, r.body),
            }
        }
        Ok(r) if r.status == 422 && r.code() == "insufficient_funds" => Outcome::Refused,
        Ok(r) if r.status == 503 => Outcome::Unknown(format!("503 {}", r.body)),
        Ok(r) => Outcome::Unexpected(r.status, r.body),
    }
}

#[test]
fn sigkill_of_one_process_under_load_loses_no_acknowledged_write() {
    // Four client threads deposit, transfer and withdraw with unique references through both
    // processes; process A is killed with SIGKILL mid-way and the clients go on through B.
    // Afterwards every acknowledged write replays on B (200, same transaction id), each write
    // whose reply was lost is settled by sending it again, every balance equals what the
    // acknowledged writes say, the total equals deposits minus withdrawals, and
    // `wallet verify` exits 0 (B's sealer takes over from A's).
    let Some(cluster) = Cluster::start(&[]) else {
        return;
    };
    let users: Vec<(String, i64)> = (0..USERS)
        .map(|u| cluster.nodes[u % 2].register(&name("k")))
        .collect();
    let killed = AtomicBool::new(false);
    let stop = AtomicBool::new(false);

    let (sent, handover) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..USERS)
            .map(|u| {
                let (users, killed, stop, cluster) = (&users, &killed, &stop, &cluster);
                s.spawn(move || {
                    let agent = agent();
                    let mut sent = Vec::new();
                    let mut i = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        let node = if killed.load(Ordering::SeqCst) {
                            cluster.b()
                        } else {
                            &cluster.nodes[(i + u) % 2]
                        };
                        let (op, amount) = match i % 3 {
                            0 => (Op::Deposit, 500 + (i % 7) as i64 * 100),
                            1 => (Op::Transfer, 200 + (i % 5) as i64 * 10),
                            _ => (Op::Withdraw, 100 + (i % 3) as i64 * 25),
                        };
                        let reference = format!("{op:?}-{u}-{i}");
                        let to = users[(u + 1) % USERS].1;
                        let (path, body) = write_request(op, amount, &reference, to);
                        let reply = send(
                            &agent,
                            &node.base,
                            "POST",
                            path,
                            Some(&users[u].0),
                            Some(&body),
                        );
                        sent.push(Sent {
                            op,
                            user: u,
                            amount,
                            reference,
                            node: node.label,
                            outcome: classify(op, reply),
                        });
                        i += 1;
                    }
                    sent
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        let kill_at = Instant::now();
        cluster.a().kill9();
        killed.store(true, Ordering::SeqCst);
        // A held the sealer's lock (`Cluster::start`); it dies with A's connection.
        let handover = cluster
            .db
            .wait_for_sealer(Some(cluster.sealer_a), Duration::from_secs(5))
            .map(|_| kill_at.elapsed());
        std::thread::sleep(Duration::from_millis(1000).saturating_sub(kill_at.elapsed()));
        stop.store(true, Ordering::SeqCst);
        let sent: Vec<Sent> = clients
            .into_iter()
            .flat_map(|c| c.join().expect("a client thread panicked"))
            .collect();
        (sent, handover)
    });
    let handover = handover.expect("B's sealer did not take over within 5 s of A's SIGKILL");

    let unexpected: Vec<String> = sent
        .iter()
        .filter_map(|w| match &w.outcome {
            Outcome::Unexpected(status, body) => Some(format!(
                "{:?} {} on {}: {status} {body}",
                w.op, w.reference, w.node
            )),
            _ => None,
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "replies that are neither 2xx, 422 insufficient_funds nor a lost reply: {unexpected:#?}"
    );
    let acked_on = |label: &str| {
        sent.iter()
            .filter(|w| w.node == label && matches!(w.outcome, Outcome::Acknowledged(..)))
            .count()
    };
    let (on_a, on_b) = (acked_on("A"), acked_on("B"));
    assert!(
        on_a > 0 && on_b > 0,
        "the load must be acknowledged by both processes: A {on_a}, B {on_b}"
    );
    let health = cluster.b().call("GET", "/health", None, None);
    assert_eq!(
        health.status, 200,
        "B's health after A was killed: {}",
        health.body
    );

    // Every acknowledged write is in the ledger: sending it again on B replays it. A write
    // whose reply was lost is settled the way a client would settle it: by sending it again.
    let mut expected = [0i64; USERS];
    let (mut deposited, mut withdrawn) = (0i64, 0i64);
    let mut unknown = 0;
    for w in &sent {
        let (path, body) =
            write_request(w.op, w.amount, &w.reference, users[(w.user + 1) % USERS].1);
        let again = classify(
            w.op,
            send(
                &cluster.b().agent,
                &cluster.b().base,
                "POST",
                path,
                Some(&users[w.user].0),
                Some(&body),
            ),
        );
        let done = match (&w.outcome, &again) {
            (Outcome::Acknowledged(_, id), Outcome::Acknowledged(200, replayed))
                if id == replayed =>
            {
                true
            }
            (Outcome::Acknowledged(_, id), _) => panic!(
                "{:?} {} of {} acknowledged by process {} (id {id}) is not in the ledger: sent \
                 again on B it got {again:?}",
                w.op,
                w.reference,
                money(w.amount),
                w.node
            ),
            (Outcome::Refused, _) => false,
            (Outcome::Unknown(_), Outcome::Acknowledged(..)) => {
                unknown += 1;
                true
            }
            (Outcome::Unknown(_), Outcome::Refused) => {
                unknown += 1;
                false
            }
            (Outcome::Unknown(why), _) => panic!(
                "{:?} {} sent to process {} got no reply ({why}); sent again on B: {again:?}",
                w.op, w.reference, w.node
            ),
            (Outcome::Unexpected(..), _) => unreachable!("checked above"),
        };
        if !done {
            continue;
        }
        match w.op {
            Op::Deposit => {
                expected[w.user] += w.amount;
                deposited += w.amount;
            }
            Op::Withdraw => {
                expected[w.user] -= w.amount;
                withdrawn += w.amount;
            }
            Op::Transfer => {
                expected[w.user] -= w.amount;
                expected[(w.user + 1) % USERS] += w.amount;
            }
        }
    }
    let actual: Vec<i64> = users.iter().map(|(t, _)| cluster.b().balance(t)).collect();
    assert_eq!(
        actual.iter().map(|c| money(*c)).collect::<Vec<_>>(),
        expected.iter().map(|c| money(*c)).collect::<Vec<_>>(),
        "balances on B (actual, left) against the acknowledged writes (expected, right)"
    );
    assert_eq!(
        money(actual.iter().sum()),
        money(deposited - withdrawn),
        "the sum of balances against acknowledged deposits minus withdrawals"
    );
    let verify = cluster.verify();
    eprintln!(
        "{} writes ({on_a} acknowledged by A, {on_b} by B, {unknown} settled after a lost \
         reply); B's sealer took over {handover:?} after the SIGKILL; verify took {verify:?}",
        sent.len()
    );
}

#[test]
fn opposite_transfers_through_two_processes_never_deadlock() {
    // X and Y hold 50.00 each. Three threads on process A transfer X→Y while three on B
    // transfer Y→X, 20 times each: every reply is 201 or 422 insufficient_funds (never a 500,
    // nor a 503 from a deadlock), each balance follows from the acknowledged transfers, the
    // total stays 100.00, and the ledger verifies.
    let Some(cluster) = Cluster::start(&[]) else {
        return;
    };
    let x = cluster.a().register(&name("x"));
    let y = cluster.b().register(&name("y"));
    cluster.a().deposit(&x.0, "50.00", "fund");
    cluster.b().deposit(&y.0, "50.00", "fund");
    const THREADS: usize = 6;
    const EACH: usize = 20;

    let replies = race(&cluster, THREADS, |t, agent| {
        let (node, from, to) = if t % 2 == 0 {
            (cluster.a(), &x, &y)
        } else {
            (cluster.b(), &y, &x)
        };
        (0..EACH)
            .map(|i| {
                let amount = 100 * (1 + (i + t) as i64 % 5);
                let body = json!({"to_user_id": to.1, "amount": money(amount), "reference": format!("t{t}-{i}")});
                let r = send(agent, &node.base, "POST", "/api/wallets/me/transfer", Some(&from.0), Some(&body))
                    .unwrap_or_else(|e| panic!("transfer t{t}-{i} on process {}: no reply: {e}", node.label));
                (t % 2 == 0, amount, r)
            })
            .collect::<Vec<_>>()
    });
    let replies: Vec<(bool, i64, Reply)> = replies.into_iter().flatten().collect();

    let bad: Vec<String> = replies
        .iter()
        .filter(|(_, _, r)| r.status != 201 && r.code() != "insufficient_funds")
        .map(|(x_to_y, _, r)| {
            format!(
                "{}: {} {}",
                if *x_to_y { "X→Y on A" } else { "Y→X on B" },
                r.status,
                r.body
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} opposite transfers were neither 201 nor 422 insufficient_funds (outcomes {:?}): {bad:#?}",
        bad.len(),
        replies.len(),
        tally(replies.iter().map(|(_, _, r)| r))
    );
    let moved: i64 = replies
        .iter()
        .filter(|(_, _, r)| r.status == 201)
        .map(|(x_to_y, amount, _)| if *x_to_y { *amount } else { -*amount })
        .sum();
    let (bx, by) = (cluster.b().balance(&x.0), cluster.a().balance(&y.0));
    assert_eq!(
        (money(bx), money(by)),
        (money(5000 - moved), money(5000 + moved)),
        "balances of X and Y against the acknowledged transfers (outcomes {:?})",
        tally(replies.iter().map(|(_, _, r)| r))
    );
    let mut ids = HashSet::new();
    for (_, _, r) in replies.iter().filter(|(_, _, r)| r.status == 201) {
        assert!(
            ids.insert(r.body["transfer_out"]["id"].to_string()),
            "one id twice: {}",
            r.body
        );
    }
    cluster.verify();
}
