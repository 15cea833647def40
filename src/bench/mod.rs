//! `wallet bench`: a load generator over real HTTP, and (with `--raw`) the same transfer code
//! path against SQLite with no HTTP, so the two can be compared in one run.
//!
//! Without `--url` it starts this binary as a child server on a temporary database (so the
//! server's resident memory can be read), registers `--users` users, funds them, then runs
//! `--clients` keep-alive clients for `--duration` seconds: 80% transfers to random users, 10%
//! deposits, 10% balance reads, each write with a unique reference.
//!
//! With a PostgreSQL `--db` it creates that database, starts `--processes` child servers on it
//! (as behind a load balancer: client `i` talks to server `i % processes`), and drops the
//! database at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use postgres::error::SqlState;
use rand::Rng;
use serde_json::{json, Value};

use wallet::clock::SystemClock;
use wallet::config::{
    DB_BATCH_MAX_DEFAULT, DB_GROUP_MAX_CEILING, DB_GROUP_MAX_DEFAULT, DB_WRITERS_CEILING,
    DB_WRITERS_DEFAULT, WRITE_BATCH_MAX_CEILING,
};
use wallet::db::{self, Synchronous, Writer};
use wallet::domain::{Amount, Currency, Metadata, Reference};
use wallet::error::StartupError;
use wallet::ledger::{self, Movement, Recipient, TransferRequest, WalletRef};
use wallet::store::Target;

mod evented;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Target a running server instead of starting one on a temporary database.
    #[arg(long)]
    pub url: Option<String>,
    /// A PostgreSQL URL, `postgres://user@host:port/dbname`: the child servers serve `dbname`
    /// instead of a temporary SQLite file. The bench creates `dbname` (connecting to the same
    /// server's `postgres` database; it needs CREATEDB) and refuses it if it exists already, so
    /// it never writes into a ledger that holds data. It drops it at the end, unless the money
    /// invariant or `verify` failed: then it is kept for inspection and its name printed. This
    /// is also the server's `--db`, so WALLET_DB sets it too; a SQLite path (such as the
    /// default) is ignored: the bench then serves its own temporary SQLite file.
    #[arg(long)]
    pub db: Option<Target>,
    /// Child servers started on the same database; client `i` talks to server `i % processes`
    /// (in setup, the mix and the final balance reads). Above 1 needs a PostgreSQL `--db`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=PROCESSES_MAX as i64))]
    pub processes: u32,
    /// PostgreSQL only: `--db-writers` of each child server (connections writing side by side).
    #[arg(long, default_value_t = DB_WRITERS_DEFAULT, value_parser = clap::value_parser!(u16).range(1..=DB_WRITERS_CEILING as i64))]
    pub db_writers: u16,
    /// PostgreSQL only: `--db-batch-max` of each child server (requests per transaction).
    #[arg(long, default_value_t = DB_BATCH_MAX_DEFAULT, value_parser = clap::value_parser!(u16).range(1..=WRITE_BATCH_MAX_CEILING as i64))]
    pub db_batch_max: u16,
    /// PostgreSQL only: `--db-group-max` of each child server (transfers and deposits
    /// written together; 1: each alone).
    #[arg(long, alias = "db-transfer-group-max", default_value_t = DB_GROUP_MAX_DEFAULT, value_parser = clap::value_parser!(u16).range(1..=DB_GROUP_MAX_CEILING as i64))]
    pub db_group_max: u16,
    /// Users to register and fund.
    #[arg(long, default_value_t = 200)]
    pub users: u32,
    /// Concurrent keep-alive clients.
    #[arg(long, default_value_t = 64)]
    pub clients: u32,
    /// What the clients send: `transfers` (80% transfers, 10% deposits, 10% balance reads) or
    /// `holds` (a hold to another user, then its capture by the recipient).
    #[arg(long, value_enum, default_value_t = evented::MixKind::Transfers)]
    pub mix: evented::MixKind,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Extra clients that log in over and over beside the mix (argon2 pressure). Like real
    /// clients, they wait `Retry-After` (1 s) after a 503.
    #[arg(long, default_value_t = 0)]
    pub login_storm: u32,
    /// Storm clients retry a 503 at once instead of waiting `Retry-After` (an abusive flood).
    #[arg(long)]
    pub storm_ignores_retry_after: bool,
    /// Durability of the child server: full (default) or normal.
    #[arg(long, value_enum, default_value_t = Synchronous::Full)]
    pub synchronous: Synchronous,
    /// Most requests per commit in the child server (1 turns group commit off).
    #[arg(long, default_value_t = 256)]
    pub write_batch_max: u16,
    /// Also measure the same transfer code path against SQLite with no HTTP.
    #[arg(long)]
    pub raw: bool,
    /// Measure only the no-HTTP transfer path (for profiling the ledger and the writer).
    #[arg(long)]
    pub raw_only: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

const PASSWORD: &str = "bench password 1";
/// The most child servers `--processes` starts (each holds `--db-writers` connections and a
/// reader pool on the database server).
const PROCESSES_MAX: u32 = 16;

#[derive(Default)]
struct OpStats {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
}

impl OpStats {
    fn record(&mut self, took: Duration, status: Option<u16>) {
        self.latencies_us
            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        match status {
            Some(s) => *self.statuses.entry(s).or_default() += 1,
            None => self.transport_errors += 1,
        }
    }

    fn merge(&mut self, other: OpStats) {
        self.latencies_us.extend(other.latencies_us);
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
    }

    fn summary(&mut self, seconds: f64) -> Value {
        self.latencies_us.sort_unstable();
        let pct = |p: f64| -> f64 {
            if self.latencies_us.is_empty() {
                return 0.0;
            }
            let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
            f64::from(self.latencies_us[i]) / 1000.0
        };
        let errors: BTreeMap<String, u64> = self
            .statuses
            .iter()
            .filter(|(s, _)| **s >= 400 && **s != 422)
            .map(|(s, n)| (s.to_string(), *n))
            .chain(
                (self.transport_errors > 0)
                    .then(|| ("transport".to_string(), self.transport_errors)),
            )
            .collect();
        json!({
            "count": self.latencies_us.len(),
            "per_s": (self.latencies_us.len() as f64 / seconds).round(),
            "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99), "max_ms": pct(1.0),
            "statuses": self.statuses.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
            "errors": errors,
        })
    }
}

/// A minimal HTTP/1.1 keep-alive client over one `TcpStream`: the load generator shares the
/// two cores with the server, so it must spend as little as possible per request (a general
/// client such as ureq used more CPU than the server's own request handling).
struct Client {
    addr: String,
    conn: Option<std::io::BufReader<std::net::TcpStream>>,
}

impl Client {
    fn new(base: &str) -> Client {
        Client {
            addr: base
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string(),
            conn: None,
        }
    }

    /// Returns the status and the body as JSON (`Null` if it is not), or `None` on a transport
    /// error.
    fn call(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Option<(u16, Value)> {
        let (status, bytes) = self.call_raw(method, path, token, body)?;
        Some((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Returns the status and the body's bytes, or `None` on a transport error.
    fn call_raw(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Option<(u16, Vec<u8>)> {
        // One retry on a fresh connection: the server may have closed an idle one.
        for _ in 0..2 {
            if self.conn.is_none() {
                let stream = std::net::TcpStream::connect(&self.addr).ok()?;
                stream.set_nodelay(true).ok()?;
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .ok()?;
                self.conn = Some(std::io::BufReader::new(stream));
            }
            match self.exchange(method, path, token, body) {
                Ok(reply) => return Some(reply),
                Err(_) => self.conn = None,
            }
        }
        None
    }

    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        use std::io::{BufRead, Read, Write};
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no connection"))?;
        let payload = body.map(Value::to_string).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n",
            payload.len()
        );
        if body.is_some() {
            req.push_str("Content-Type: application/json\r\n");
        }
        if let Some(t) = token {
            req.push_str("Authorization: Token ");
            req.push_str(t);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        req.push_str(&payload);
        conn.get_mut().write_all(req.as_bytes())?;
        let mut line = String::new();
        conn.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other("bad status line"))?;
        let (mut length, mut close) = (0usize, false);
        loop {
            line.clear();
            if conn.read_line(&mut line)? == 0 {
                return Err(std::io::Error::other("closed"));
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("connection")
                    && value.trim().eq_ignore_ascii_case("close")
                {
                    close = true;
                }
            }
        }
        let mut buf = vec![0u8; length];
        conn.read_exact(&mut buf)?;
        if close {
            self.conn = None;
        }
        Ok((status, buf))
    }
}

/// The PostgreSQL group counters of `/metrics`, summed over the servers: how the writes were
/// written, which explains a throughput figure. `None` when a server does not report them
/// (SQLite, or groups off).
fn group_counters(bases: &[String]) -> Option<[u64; GROUP_COUNTERS.len()]> {
    let mut sums = [0u64; GROUP_COUNTERS.len()];
    for base in bases {
        let (status, body) = Client::new(base).call_raw("GET", "/metrics", None, None)?;
        if status != 200 {
            return None;
        }
        let text = String::from_utf8_lossy(&body);
        for (sum, name) in sums.iter_mut().zip(GROUP_COUNTERS) {
            // A sample is `name value` (an optional time stamp may follow).
            let value = text.lines().find_map(|line| {
                let mut fields = line.split_whitespace();
                (fields.next() == Some(name)).then(|| fields.next()?.parse::<u64>().ok())?
            })?;
            *sum += value;
        }
    }
    Some(sums)
}

/// In the order `group_counters` returns them.
const GROUP_COUNTERS: [&str; 4] = [
    "wallet_write_groups_total",
    "wallet_writes_grouped_total",
    "wallet_writes_put_off_total",
    "wallet_writes_handed_back_total",
];

struct BenchUser {
    id: i64,
    username: String,
    token: String,
}

/// The database the child servers share: a temporary SQLite file, or a PostgreSQL database the
/// bench created. Removed on drop, which must come after the servers stopped.
struct BenchDb {
    target: Target,
    cleanup: Cleanup,
}

enum Cleanup {
    /// Remove this temporary directory.
    Directory(PathBuf),
    /// Drop database `name`, connecting to the same server's maintenance database.
    Database {
        maintenance: Box<postgres::Config>,
        name: String,
    },
    /// Leave the database for inspection.
    Keep,
}

impl BenchDb {
    fn temporary_sqlite() -> Result<BenchDb, String> {
        let dir =
            std::env::temp_dir().join(format!("wallet-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        Ok(BenchDb {
            target: Target::Sqlite(dir.join("bench.db")),
            cleanup: Cleanup::Directory(dir),
        })
    }

    /// Creates the database `url` names. One that exists already is refused: it may hold a
    /// ledger, and the bench drops its database at the end.
    fn create_postgres(url: &str) -> Result<BenchDb, String> {
        let shown = wallet::store::redact_password(url);
        let config: postgres::Config = url.parse().map_err(|e| format!("--db {shown}: {e}"))?;
        let name = config
            .get_dbname()
            .ok_or_else(|| format!("--db {shown}: name the database to create in the URL's path"))?
            .to_string();
        let mut maintenance = config.clone();
        maintenance.dbname("postgres");
        let mut admin = maintenance.connect(postgres::NoTls).map_err(|e| {
            let e = error_chain(&e);
            format!("cannot connect to the `postgres` database beside {shown}: {e}")
        })?;
        match admin.batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name))) {
            Ok(()) => Ok(BenchDb {
                target: Target::Postgres(url.to_string()),
                cleanup: Cleanup::Database {
                    maintenance: Box::new(maintenance),
                    name,
                },
            }),
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Err(format!(
                "--db {shown}: database {name:?} already exists; the bench creates the \
                 database it is given and drops it afterwards, so name one that does not exist"
            )),
            Err(e) => Err(format!(
                "cannot create database {name:?}: {}",
                error_chain(&e)
            )),
        }
    }

    fn engine(&self) -> &'static str {
        match self.target {
            Target::Sqlite(_) => "sqlite",
            Target::Postgres(_) => "postgresql",
        }
    }

    /// Leaves a PostgreSQL database in place and says so; a temporary SQLite file is still
    /// removed, as it always was.
    fn keep_for_inspection(&mut self) {
        if let Cleanup::Database { name, .. } = &self.cleanup {
            eprintln!(
                "database {name:?} kept for inspection (drop it with: DROP DATABASE {})",
                quote_ident(name)
            );
            self.cleanup = Cleanup::Keep;
        }
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Directory(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Database { maintenance, name } => {
                // FORCE: a stopped server's sessions may take a moment to end on the server.
                let dropped = maintenance.connect(postgres::NoTls).and_then(|mut admin| {
                    admin.batch_execute(&format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        quote_ident(name)
                    ))
                });
                if let Err(e) = dropped {
                    let e = error_chain(&e);
                    eprintln!("the bench's database {name:?} was not dropped: {e}");
                }
            }
            Cleanup::Keep => {}
        }
    }
}

/// An error and its causes, for a message: the postgres crate says "error connecting to
/// server" and keeps the reason (refused, unknown host, ...) as its source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// `name` as a PostgreSQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A child server on the bench's database; killed on drop.
struct ChildServer {
    child: Child,
    base: String,
}

impl ChildServer {
    fn start(args: &BenchArgs, target: &Target) -> Result<ChildServer, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let sync = match args.synchronous {
            Synchronous::Full => "full",
            Synchronous::Normal => "normal",
        };
        // Not `Display`: it hides the URL's password, which the server needs.
        let db = match target {
            Target::Sqlite(path) => path.to_string_lossy().into_owned(),
            Target::Postgres(url) => url.clone(),
        };
        let mut command = Command::new(exe);
        command
            .args(["--db", &db, "--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--synchronous",
                sync,
                "--write-batch-max",
                &args.write_batch_max.to_string(),
            ]);
        if let Target::Postgres(_) = target {
            command.args(["--db-writers", &args.db_writers.to_string()]);
            command.args(["--db-batch-max", &args.db_batch_max.to_string()]);
            command.args(["--db-group-max", &args.db_group_max.to_string()]);
        }
        let child = command
            .args(["--snapshot-cron", "off", "--login-failures-max", "0"])
            // A load generator is many clients from one address, far past a client's rate.
            .args(["--rate-limit-user", "off", "--rate-limit-anon", "off"])
            .env("WALLET_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the server: {e}"))?;
        let server = ChildServer {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let mut probe = Client::new(&server.base);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if probe
                .call("GET", "/health", None, None)
                .is_some_and(|(s, _)| s == 200)
            {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("the server did not answer /health within 30 s".into())
    }

    /// Peak resident memory of the server process, in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Registers and funds `n` users over `clients` (at most 16) connections, connection `i` to
/// `bases[i % bases.len()]`.
fn setup_users(bases: &[String], n: u32, clients: u32) -> Result<Vec<BenchUser>, String> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..6].to_string();
    let next = Arc::new(Mutex::new(0u32));
    let users = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..clients.clamp(1, 16) as usize)
        .map(|i| {
            let (next, users, base, run) = (next.clone(), users.clone(), bases[i % bases.len()].clone(), run.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let mut c = Client::new(&base);
                loop {
                    let i = {
                        let mut g = next.lock().unwrap_or_else(|p| p.into_inner());
                        if *g >= n {
                            return Ok(());
                        }
                        *g += 1;
                        *g
                    };
                    let username = format!("bench{run}u{i}");
                    let body = json!({"username": username, "email": format!("{username}@bench.invalid"), "password": PASSWORD, "password_confirm": PASSWORD});
                    let (status, v) = c.call("POST", "/api/auth/register", None, Some(&body)).ok_or("register: transport error")?;
                    if status != 201 {
                        return Err(format!("register answered {status}: {v}"));
                    }
                    let token = v["token"].as_str().unwrap_or_default().to_string();
                    let fund = json!({"amount": "1000000.00", "reference": "bench-fund"});
                    let (status, v) = c.call("POST", "/api/wallets/me/deposit", Some(&token), Some(&fund)).ok_or("fund: transport error")?;
                    if status != 201 {
                        return Err(format!("funding answered {status}: {v}"));
                    }
                    let user_id = c
                        .call("GET", "/api/auth/profile", Some(&token), None)
                        .and_then(|(_, v)| v["id"].as_i64())
                        .ok_or("profile failed")?;
                    users.lock().unwrap_or_else(|p| p.into_inner()).push(BenchUser { id: user_id, username, token });
                }
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| "a setup thread panicked".to_string())??;
    }
    let users = std::mem::take(&mut *users.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(users)
}

struct MixResult {
    transfers: OpStats,
    deposits: OpStats,
    reads: OpStats,
    holds: OpStats,
    captures: OpStats,
    logins: OpStats,
    deposited_minor: i64,
    seconds: f64,
}

/// The mix, and the login storm beside it; client `i` of each talks to `bases[i % bases.len()]`.
fn run_mix(
    bases: &[String],
    users: &Arc<Vec<BenchUser>>,
    args: &BenchArgs,
) -> Result<MixResult, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mix = {
        let users = users.clone();
        let addrs: Vec<String> = bases
            .iter()
            .map(|b| b.trim_start_matches("http://").to_string())
            .collect();
        let (clients, duration, kind) =
            (args.clients, Duration::from_secs(args.duration), args.mix);
        std::thread::spawn(move || evented::run(&addrs, &users, clients, duration, kind))
    };
    let ignore_retry_after = args.storm_ignores_retry_after;
    let stormers: Vec<_> = (0..args.login_storm as usize)
        .map(|i| {
            let (users, stop, base) = (users.clone(), stop.clone(), bases[i % bases.len()].clone());
            std::thread::spawn(move || {
                let mut c = Client::new(&base);
                let mut rng = rand::rng();
                let mut l = OpStats::default();
                while !stop.load(Ordering::Relaxed) {
                    let u = &users[rng.random_range(0..users.len())];
                    let t0 = Instant::now();
                    let res = c.call(
                        "POST",
                        "/api/auth/login",
                        None,
                        Some(&json!({"username": u.username, "password": PASSWORD})),
                    );
                    let status = res.map(|(s, _)| s);
                    l.record(t0.elapsed(), status);
                    if status == Some(503) && !ignore_retry_after {
                        // The server always answers 503 with `Retry-After: 1`.
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
                l
            })
        })
        .collect();
    let mix = mix
        .join()
        .map_err(|_| "the load generator panicked".to_string())??;
    stop.store(true, Ordering::Relaxed);
    // Rates are over the mix's own time: storm clients may still be sleeping out a
    // `Retry-After` when it ends.
    let mut out = MixResult {
        transfers: mix.transfers,
        deposits: mix.deposits,
        reads: mix.reads,
        holds: mix.holds,
        captures: mix.captures,
        logins: OpStats::default(),
        deposited_minor: mix.deposited_minor,
        seconds: mix.seconds,
    };
    for s in stormers {
        if let Ok(l) = s.join() {
            out.logins.merge(l);
        }
    }
    Ok(out)
}

/// Creates a user (who cannot log in) and funds its wallet, for the no-HTTP measurements.
/// Returns the user id and wallet id.
fn funded_user(
    conn: &dyn wallet::store::Sql,
    now: wallet::domain::Timestamp,
    c: &Currency,
    name: &str,
    amount: &str,
) -> Result<(i64, WalletRef), wallet::error::AppError> {
    use wallet::error::AppError;
    let u = wallet::accounts::NewUser {
        username: wallet::domain::Username::parse(name)
            .map_err(|e| AppError::Internal(e.into()))?,
        email: wallet::domain::Email::parse(&format!("{name}@bench.invalid"))
            .map_err(|e| AppError::Internal(e.into()))?,
        password_hash: "not a login".into(),
        first_name: String::new(),
        last_name: String::new(),
        is_staff: false,
    };
    let user = wallet::accounts::create_user(conn, now, &u, None)?;
    let w = ledger::queries::wallet_of_user(conn, user.id)?.wallet_ref();
    let m = Movement {
        currency: c.clone(),
        amount: Amount::parse_text(amount, c).map_err(|e| AppError::Internal(e.0.into()))?,
        reference: Reference::parse("fund").map_err(|e| AppError::Internal(e.into()))?,
        metadata: Metadata::empty(),
    };
    ledger::deposit(conn, now, &w, &m)?;
    Ok((user.id, w))
}

/// The same transfer code path (writer, group commit, savepoints, `ledger::transfer`) with
/// no HTTP: `clients` threads submit transfers for `seconds`.
fn raw_transfers(clients: u32, users: u32, seconds: u64, sync: Synchronous) -> Result<f64, String> {
    let dir = std::env::temp_dir().join(format!(
        "wallet-bench-raw-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = raw_in(&dir.join("raw.db"), clients, users, seconds, sync);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn raw_in(
    path: &Path,
    clients: u32,
    users: u32,
    seconds: u64,
    sync: Synchronous,
) -> Result<f64, String> {
    let mut conn = db::open(path, sync).map_err(|e| e.to_string())?;
    db::migrate(&mut conn).map_err(|e| e.to_string())?;
    let currency = Currency::new("USD", 2, 1_000_000_000)?;
    db::check_currencies(&conn, &wallet::domain::Currencies::single(currency.clone()))
        .map_err(|e| e.to_string())?;
    let (writer, handle) = Writer::start(conn, Arc::new(SystemClock), 256, 4096);
    let checkpoint_wakeup = Arc::new(wallet::clock::Wakeup::default());
    let checkpointer =
        db::start_checkpointer(path, sync, checkpoint_wakeup.clone()).map_err(|e| e.to_string())?;
    let users = users.max(2);
    let wallets: Vec<(i64, WalletRef)> = {
        let c = currency.clone();
        writer
            .execute(move |conn, now| {
                let mut out = Vec::new();
                for i in 0..users {
                    out.push(funded_user(conn, now, &c, &format!("raw{i}"), "1000000")?);
                }
                Ok(out)
            })
            .map_err(|e| format!("raw setup: {e:?}"))?
    };
    let wallets = Arc::new(wallets);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|k| {
            let (writer, wallets, stop, currency) = (
                writer.clone(),
                wallets.clone(),
                stop.clone(),
                currency.clone(),
            );
            std::thread::spawn(move || raw_client(k, &writer, &wallets, &stop, &currency))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let done: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    let rate = done as f64 / started.elapsed().as_secs_f64();
    let (batches, jobs) = (
        writer.stats.batches.load(Ordering::Relaxed),
        writer.stats.jobs.load(Ordering::Relaxed),
    );
    eprintln!(
        "raw: {jobs} write jobs in {batches} transactions ({:.1} per commit)",
        jobs as f64 / batches.max(1) as f64
    );
    drop(writer);
    let _ = handle.join();
    checkpoint_wakeup.stop();
    let _ = checkpointer.join();
    Ok(rate)
}

/// One raw client: random transfers of 0.50 between the wallets until `stop`; returns how
/// many the writer committed.
fn raw_client(
    k: u32,
    writer: &Writer,
    wallets: &[(i64, WalletRef)],
    stop: &AtomicBool,
    currency: &Currency,
) -> u64 {
    let mut rng = rand::rng();
    let mut done = 0u64;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let from = wallets[rng.random_range(0..wallets.len())].clone();
        let mut to = wallets[rng.random_range(0..wallets.len())].0;
        while to == from.0 {
            to = wallets[rng.random_range(0..wallets.len())].0;
        }
        let (Ok(amount), Ok(reference)) = (
            Amount::parse_text("0.50", currency),
            Reference::parse(&format!("r{k}-{seq}")),
        ) else {
            return done;
        };
        let req = TransferRequest {
            to: Recipient::UserId(to),
            movement: Movement {
                currency: currency.clone(),
                amount,
                reference,
                metadata: Metadata::empty(),
            },
        };
        if writer
            .execute(move |conn, now| ledger::transfer(conn, now, (from.0, &from.1), &req))
            .is_ok()
        {
            done += 1;
        }
    }
    done
}

/// Runs the benchmark. `Ok(false)` when the money invariant did not hold.
pub fn run(args: &BenchArgs) -> Result<bool, StartupError> {
    if args.clients == 0 || args.users < 2 || args.duration == 0 {
        return Err(StartupError::Setting(
            "--clients and --duration must be at least 1, --users at least 2".into(),
        ));
    }
    check_servers(args)?;
    run_checked(args).map_err(StartupError::failed)
}

/// The PostgreSQL URL of `--db`, if it is one.
fn postgres_url(args: &BenchArgs) -> Option<&str> {
    match &args.db {
        Some(Target::Postgres(url)) => Some(url),
        _ => None,
    }
}

/// Refuses the combinations of `--db`, `--processes`, `--url` and `--raw` that cannot mean what
/// they say.
fn check_servers(args: &BenchArgs) -> Result<(), StartupError> {
    let postgres = postgres_url(args).is_some();
    if postgres && (args.raw || args.raw_only) {
        return Err(StartupError::setting(
            "--raw/--raw-only",
            "they measure SQLite only; leave out the PostgreSQL --db (or WALLET_DB)",
        ));
    }
    if args.url.is_some() && (postgres || args.processes > 1) {
        return Err(StartupError::setting(
            "--url",
            "it measures a server already running; --db (or WALLET_DB) and --processes are for \
             the servers the bench starts itself: give one or the other",
        ));
    }
    if args.processes > 1 && !postgres {
        return Err(StartupError::setting(
            "--processes",
            format!(
                "{} servers on one database need a PostgreSQL --db; a SQLite file is served by \
                 one process",
                args.processes
            ),
        ));
    }
    Ok(())
}

/// The database and the child servers on it, or neither with `--url`.
fn start_servers(args: &BenchArgs) -> Result<(Option<BenchDb>, Vec<ChildServer>), String> {
    if args.url.is_some() {
        return Ok((None, Vec::new()));
    }
    let db = match postgres_url(args) {
        Some(url) => BenchDb::create_postgres(url)?,
        None => BenchDb::temporary_sqlite()?,
    };
    // One after the other: the first applies the schema, and each port is taken before the
    // next is chosen.
    let servers = (0..args.processes)
        .map(|_| ChildServer::start(args, &db.target))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((Some(db), servers))
}

/// What the run checked after the mix, for the report.
struct Checked {
    setup_s: f64,
    total_minor: i64,
    expected_minor: i64,
    invariant_held: bool,
    verify_ok: Value,
    /// How many findings `verify` had (it lists only the first few on standard error).
    verify_findings: Value,
    /// Per child server, in start order.
    peak_rss_kib: Vec<Option<u64>>,
    /// `GROUP_COUNTERS` over the mix (not the set-up), summed over the servers.
    groups: Option<[u64; GROUP_COUNTERS.len()]>,
}

fn run_checked(args: &BenchArgs) -> Result<bool, String> {
    if args.raw_only {
        let rate = raw_transfers(args.clients, args.users, args.duration, args.synchronous)?;
        println!(
            "raw transfers (no HTTP): {rate:.0}/s with {} clients, synchronous={:?}",
            args.clients, args.synchronous
        );
        return Ok(true);
    }
    // Declared before the servers, so that on an early return they stop before it goes.
    let (mut db, servers) = start_servers(args)?;
    let bases: Vec<String> = match &args.url {
        Some(url) => vec![url.trim_end_matches('/').to_string()],
        None => servers.iter().map(|s| s.base.clone()).collect(),
    };
    let t0 = Instant::now();
    let users = Arc::new(setup_users(&bases, args.users, args.clients)?);
    let setup_s = t0.elapsed().as_secs_f64();
    let groups_before = group_counters(&bases);
    let mut mix = run_mix(&bases, &users, args)?;
    let groups = group_counters(&bases)
        .zip(groups_before)
        .map(|(after, before)| std::array::from_fn(|i| after[i].saturating_sub(before[i])));

    // The money invariant: the bench's users only trade among themselves, so their balances
    // must sum to what was deposited into them.
    let total = balances_sum(&bases, &users)?;
    let expected = i64::from(args.users) * 100_000_000 + mix.deposited_minor;
    let mut invariant_held = total == expected;
    let (mut verify_ok, mut verify_findings) = (Value::Null, Value::Null);
    if let Some(db) = &db {
        let report = wallet::verify::verify_target(&db.target).map_err(|e| format!("{e:?}"))?;
        if !report.ok() {
            eprintln!("wallet verify: {} findings", report.findings_total);
            for finding in &report.findings {
                eprintln!("  {finding}");
            }
        }
        invariant_held &= report.ok();
        verify_ok = json!(report.ok());
        verify_findings = json!(report.findings_total);
    }
    let checked = Checked {
        setup_s,
        total_minor: total,
        expected_minor: expected,
        invariant_held,
        verify_ok,
        verify_findings,
        peak_rss_kib: servers.iter().map(ChildServer::peak_rss_kib).collect(),
        groups,
    };
    drop(servers);
    let engine = db.as_ref().map(BenchDb::engine);
    if let (false, Some(db)) = (invariant_held, &mut db) {
        db.keep_for_inspection();
    }
    drop(db);

    let raw = if args.raw {
        Some(raw_transfers(
            args.clients,
            args.users,
            args.duration,
            args.synchronous,
        )?)
    } else {
        None
    };
    let report = report_json(args, engine, &mut mix, &checked, raw);
    if args.json {
        println!("{report}");
    } else {
        print_table(&report);
    }
    Ok(invariant_held)
}

/// The report: what ran (engine, server processes, settings) and what it measured.
fn report_json(
    args: &BenchArgs,
    engine: Option<&str>,
    mix: &mut MixResult,
    checked: &Checked,
    raw: Option<f64>,
) -> Value {
    let seconds = mix.seconds;
    let transfers = mix.transfers.summary(seconds);
    let deposits = mix.deposits.summary(seconds);
    let reads = mix.reads.summary(seconds);
    let holds = mix.holds.summary(seconds);
    let captures = mix.captures.summary(seconds);
    let errors = errors_in(&[&transfers, &deposits, &reads, &holds, &captures]);
    let postgres = engine == Some("postgresql");
    let mib = |kib: u64| (kib as f64 / 1024.0 * 10.0).round() / 10.0;
    let rss = &checked.peak_rss_kib;
    let rss_sum_kib = if rss.is_empty() {
        None
    } else {
        rss.iter().copied().sum::<Option<u64>>()
    };
    json!({
        "engine": engine, "processes": engine.map(|_| args.processes),
        "clients": args.clients, "users": args.users, "duration_s": seconds, "setup_s": checked.setup_s,
        "synchronous": (!postgres).then(|| format!("{:?}", args.synchronous).to_lowercase()),
        "write_batch_max": (!postgres).then_some(args.write_batch_max),
        "db_writers": postgres.then_some(args.db_writers),
        "db_batch_max": postgres.then_some(args.db_batch_max),
        "db_group_max": postgres.then_some(args.db_group_max),
        "transfers_per_s": transfers["per_s"], "p50_ms": transfers["p50_ms"], "p99_ms": transfers["p99_ms"],
        "raw_transfers_per_s": raw.map(f64::round),
        "http_to_raw_ratio": raw.map(|r| (transfers["per_s"].as_f64().unwrap_or(0.0) / r * 1000.0).round() / 1000.0),
        "errors": errors,
        "invariant_held": checked.invariant_held, "verify_ok": checked.verify_ok,
        "verify_findings": checked.verify_findings,
        "expected_total_minor": checked.expected_minor, "total_minor": checked.total_minor,
        "server_peak_rss_mib": rss_sum_kib.map(mib),
        "server_peak_rss_mib_per_process": rss.iter().map(|k| k.map(mib)).collect::<Vec<_>>(),
        "write_groups": checked.groups.map(|[groups, grouped, put_off, handed_back]| json!({
            "groups": groups, "writes_grouped": grouped, "put_off": put_off, "handed_back": handed_back,
        })),
        "transfers": transfers,
        "deposits": deposits,
        "balance_reads": reads,
        "mix": format!("{:?}", args.mix).to_lowercase(),
        "holds": if args.mix == evented::MixKind::Holds { holds } else { Value::Null },
        "captures": if args.mix == evented::MixKind::Holds { captures } else { Value::Null },
        "logins": if args.login_storm > 0 { mix.logins.summary(seconds) } else { Value::Null },
    })
}

/// The sum of the users' balances, in minor units, as the API reports them; user `i`'s read
/// from `bases[i % bases.len()]`.
fn balances_sum(bases: &[String], users: &[BenchUser]) -> Result<i64, String> {
    let mut clients: Vec<Client> = bases.iter().map(|b| Client::new(b)).collect();
    let usd = Currency::new("USD", 2, i64::MAX / 1000)?;
    let mut total = 0i64;
    for (i, u) in users.iter().enumerate() {
        let n = clients.len();
        let (_, v) = clients[i % n]
            .call("GET", "/api/wallets/me", Some(&u.token), None)
            .ok_or("cannot read a balance")?;
        let text = v["balance"].as_str().unwrap_or("0");
        total += Amount::parse_text(text, &usd)
            .map(Amount::minor)
            .unwrap_or(0);
    }
    Ok(total)
}

/// Errors of every kind in the given summaries.
fn errors_in(summaries: &[&Value]) -> u64 {
    summaries
        .iter()
        .flat_map(|s| {
            s["errors"]
                .as_object()
                .cloned()
                .unwrap_or_default()
                .into_values()
        })
        .filter_map(|v| v.as_u64())
        .sum()
}

/// The first line of the table: what ran.
fn table_heading(r: &Value) -> String {
    let servers = match (r["engine"].as_str(), r["processes"].as_u64()) {
        (Some(engine), Some(1)) => format!("{engine}, 1 server process, "),
        (Some(engine), Some(n)) => format!("{engine}, {n} server processes, "),
        _ => "the server at --url, ".to_string(),
    };
    let settings = if r["db_writers"].is_null() {
        format!(
            "synchronous={}, write_batch_max={}",
            r["synchronous"].as_str().unwrap_or(""),
            r["write_batch_max"]
        )
    } else {
        format!(
            "db_writers={}, db_batch_max={}, db_group_max={}",
            r["db_writers"], r["db_batch_max"], r["db_group_max"]
        )
    };
    format!(
        "wallet bench: {servers}{} clients, {} users, {:.1} s, {settings}",
        r["clients"],
        r["users"],
        r["duration_s"].as_f64().unwrap_or(0.0),
    )
}

fn print_table(r: &Value) {
    println!("{}", table_heading(r));
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  statuses",
        "operation", "count", "per s", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    for (name, key) in [
        ("transfer", "transfers"),
        ("deposit", "deposits"),
        ("balance read", "balance_reads"),
        ("hold", "holds"),
        ("capture", "captures"),
        ("login", "logins"),
    ] {
        let s = &r[key];
        // The holds mix sends nothing else.
        if s.is_null() || (r["mix"] == "holds" && s["count"] == 0) {
            continue;
        }
        println!(
            "{:<14} {:>9} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2}  {}",
            name,
            s["count"],
            s["per_s"],
            s["p50_ms"].as_f64().unwrap_or(0.0),
            s["p95_ms"].as_f64().unwrap_or(0.0),
            s["p99_ms"].as_f64().unwrap_or(0.0),
            s["max_ms"].as_f64().unwrap_or(0.0),
            s["statuses"]
        );
    }
    if let Some(raw) = r["raw_transfers_per_s"].as_f64() {
        println!(
            "raw transfers (no HTTP, same code path): {raw:.0}/s; HTTP reaches {:.1}% of it",
            r["http_to_raw_ratio"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
    println!("errors (non-422 4xx/5xx and transport): {}", r["errors"]);
    let g = &r["write_groups"];
    if let Some(groups) = g["groups"].as_u64() {
        let grouped = g["writes_grouped"].as_u64().unwrap_or(0);
        let mean = if groups == 0 {
            0.0
        } else {
            grouped as f64 / groups as f64
        };
        println!(
            "write groups: {groups} groups wrote {grouped} writes ({mean:.1} each); put off {}; handed back to be written alone {}",
            g["put_off"], g["handed_back"]
        );
    }
    if let Some(rss) = r["server_peak_rss_mib"].as_f64() {
        let per_process = r["server_peak_rss_mib_per_process"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let summed = match per_process.len() {
            0 | 1 => String::new(),
            n => {
                let each: Vec<String> = per_process.iter().map(Value::to_string).collect();
                format!(", summed over {n} processes ({} MiB)", each.join(" + "))
            }
        };
        let not_database = if r["engine"] == "postgresql" {
            "; PostgreSQL's own not included"
        } else {
            ""
        };
        println!("server peak resident memory: {rss:.1} MiB{summed}{not_database}");
    }
    println!(
        "money invariant (sum of balances = deposits; wallet verify): {}",
        if r["invariant_held"].as_bool().unwrap_or(false) {
            "held".to_string()
        } else {
            // Which half failed: the sum, or `verify` (its findings are on standard error).
            format!(
                "BROKEN (sum of balances {} minor units, deposits {}; verify findings: {})",
                r["total_minor"], r["expected_total_minor"], r["verify_findings"]
            )
        }
    );
}

#[derive(Args, Debug, Clone)]
pub struct SnapshotBenchArgs {
    /// Wallets to create.
    #[arg(long, default_value_t = 100_000)]
    pub wallets: u32,
    /// Ledger entries to create (one deposit per wallet, the rest transfers).
    #[arg(long, default_value_t = 1_000_000)]
    pub entries: u32,
    /// Concurrent HTTP clients doing transfers while measuring.
    #[arg(long, default_value_t = 16)]
    pub clients: u32,
    /// Seconds of transfers measured without a snapshot running.
    #[arg(long, default_value_t = 5)]
    pub baseline: u64,
    /// Entries in one extra wallet, to compare reading it with reading a wallet of ~10
    /// entries (0 skips the comparison).
    #[arg(long, default_value_t = 1_000_000)]
    pub deep_entries: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Seeds `wallets` wallets and `entries` entries through the real writer (one job per
/// thousand operations).
fn seed(
    writer: &Writer,
    currency: &Currency,
    wallets: u32,
    entries: u32,
) -> Result<Vec<(i64, WalletRef)>, String> {
    let mut ids: Vec<(i64, WalletRef)> = Vec::with_capacity(wallets as usize);
    const CHUNK: u32 = 1000;
    let mut made = 0;
    while made < wallets {
        let (from, to) = (made, (made + CHUNK).min(wallets));
        let c = currency.clone();
        let chunk = writer
            .execute(move |conn, now| {
                let mut out = Vec::new();
                for i in from..to {
                    out.push(funded_user(conn, now, &c, &format!("seed{i}"), "1000")?);
                }
                Ok(out)
            })
            .map_err(|e| format!("seeding wallets: {e:?}"))?;
        ids.extend(chunk);
        made = to;
    }
    let transfers = entries.saturating_sub(wallets) / 2;
    let ids_shared = Arc::new(ids.clone());
    let mut done = 0;
    while done < transfers {
        let (from, to) = (done, (done + CHUNK).min(transfers));
        let (c, ids) = (currency.clone(), ids_shared.clone());
        writer
            .execute(move |conn, now| {
                let mut rng = rand::rng();
                for i in from..to {
                    let a = &ids[rng.random_range(0..ids.len())];
                    let mut b = &ids[rng.random_range(0..ids.len())];
                    while b.0 == a.0 {
                        b = &ids[rng.random_range(0..ids.len())];
                    }
                    let req = TransferRequest {
                        to: Recipient::UserId(b.0),
                        movement: Movement {
                            currency: c.clone(),
                            amount: Amount::parse_text("0.01", &c)
                                .map_err(|e| wallet::error::AppError::Internal(e.0.into()))?,
                            reference: Reference::parse(&format!("seed-{i}"))
                                .map_err(|e| wallet::error::AppError::Internal(e.into()))?,
                            metadata: Metadata::empty(),
                        },
                    };
                    ledger::transfer(conn, now, (a.0, &a.1), &req)?;
                }
                Ok(())
            })
            .map_err(|e| format!("seeding transfers: {e:?}"))?;
        done = to;
    }
    Ok(ids)
}

/// HTTP transfers among `users` for `seconds`, or until `until` says stop.
/// Sequential `GET /api/wallets/me` per wallet in the read comparison.
const WALLET_READS: u32 = 2_000;

/// One more user whose wallet gets `entries` deposits of 0.01; returns the user id.
fn seed_deep_wallet(writer: &Writer, currency: &Currency, entries: u32) -> Result<i64, String> {
    let c = currency.clone();
    let (user_id, wallet) = writer
        .execute(move |conn, now| funded_user(conn, now, &c, "deep", "1"))
        .map_err(|e| format!("seeding the deep wallet: {e:?}"))?;
    const CHUNK: u32 = 5_000;
    let mut done = 1; // the funding deposit
    while done < entries {
        let (from, to) = (done, (done + CHUNK).min(entries));
        let (c, wallet) = (currency.clone(), wallet.clone());
        writer
            .execute(move |conn, now| {
                for i in from..to {
                    let m = Movement {
                        currency: c.clone(),
                        amount: Amount::parse_text("0.01", &c)
                            .map_err(|e| wallet::error::AppError::Internal(e.0.into()))?,
                        reference: Reference::parse(&format!("deep-{i}"))
                            .map_err(|e| wallet::error::AppError::Internal(e.into()))?,
                        metadata: Metadata::empty(),
                    };
                    ledger::deposit(conn, now, &wallet, &m)?;
                }
                Ok(())
            })
            .map_err(|e| format!("seeding the deep wallet: {e:?}"))?;
        done = to;
    }
    Ok(user_id)
}

fn timed_transfers(
    base: &str,
    users: &Arc<Vec<BenchUser>>,
    clients: u32,
    stop: &Arc<AtomicBool>,
) -> OpStats {
    let threads: Vec<_> = (0..clients)
        .map(|k| {
            let (users, stop, base) = (users.clone(), stop.clone(), base.to_string());
            std::thread::spawn(move || {
                let mut c = Client::new(&base);
                let mut rng = rand::rng();
                let mut stats = OpStats::default();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let from = &users[rng.random_range(0..users.len())];
                    let mut to = &users[rng.random_range(0..users.len())];
                    while to.id == from.id {
                        to = &users[rng.random_range(0..users.len())];
                    }
                    let body = json!({"to_user_id": to.id, "amount": "0.01", "reference": format!("s{k}-{seq}-{}", uuid::Uuid::new_v4().simple())});
                    let t0 = Instant::now();
                    let res = c.call("POST", "/api/wallets/me/transfer", Some(&from.token), Some(&body));
                    stats.record(t0.elapsed(), res.map(|(s, _)| s));
                }
                stats
            })
        })
        .collect();
    let mut all = OpStats::default();
    for t in threads {
        if let Ok(s) = t.join() {
            all.merge(s);
        }
    }
    all
}

/// `wallet bench-snapshot`: how long a snapshot of a large ledger takes, and what it costs
/// transfers running at the same time. Also times `wallet verify` on the same ledger.
pub fn run_snapshot_bench(args: &SnapshotBenchArgs) -> Result<bool, StartupError> {
    run_snapshot_bench_checked(args).map_err(StartupError::failed)
}

fn run_snapshot_bench_checked(args: &SnapshotBenchArgs) -> Result<bool, String> {
    let dir = std::env::temp_dir().join(format!(
        "wallet-bench-snap-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = snapshot_bench_in(&dir, args);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The seeded ledger of `bench-snapshot`, and how long seeding and `verify` took.
struct Seeded {
    seed_s: f64,
    report: wallet::verify::VerifyReport,
    verify_s: f64,
    /// The wallet with a long history (`--deep-entries`), if any.
    deep_id: Option<i64>,
}

fn seed_ledger(
    path: &Path,
    args: &SnapshotBenchArgs,
    currency: &Currency,
) -> Result<Seeded, String> {
    let t0 = Instant::now();
    {
        let mut conn = db::open(path, Synchronous::Normal).map_err(|e| e.to_string())?;
        db::migrate(&mut conn).map_err(|e| e.to_string())?;
        db::check_currencies(&conn, &wallet::domain::Currencies::single(currency.clone()))
            .map_err(|e| e.to_string())?;
        let (writer, handle) = Writer::start(conn, Arc::new(SystemClock), 256, 4096);
        seed(&writer, currency, args.wallets, args.entries)?;
        drop(writer);
        let _ = handle.join();
    }
    let seed_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let report =
        wallet::verify::verify(&mut rusqlite::Connection::open(path).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{e:?}"))?;
    let verify_s = t1.elapsed().as_secs_f64();
    // One wallet with a long history, seeded after `verify` so that figure stays comparable.
    let deep_id = if args.deep_entries > 0 {
        let mut conn = db::open(path, Synchronous::Normal).map_err(|e| e.to_string())?;
        db::migrate(&mut conn).map_err(|e| e.to_string())?;
        let (writer, handle) = Writer::start(conn, Arc::new(SystemClock), 256, 4096);
        let id = seed_deep_wallet(&writer, currency, args.deep_entries)?;
        drop(writer);
        let _ = handle.join();
        Some(id)
    } else {
        None
    };
    Ok(Seeded {
        seed_s,
        report,
        verify_s,
        deep_id,
    })
}

/// Tokens for the first 200 seeded users, issued directly.
fn issue_tokens(app: &wallet::App, path: &Path) -> Result<Vec<BenchUser>, String> {
    let conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
    let mut stmt = conn
        .prepare("SELECT id, username FROM users ORDER BY id LIMIT 200")
        .map_err(|e| e.to_string())?;
    let rows: Vec<(i64, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    rows.into_iter()
        .map(|(id, username)| {
            let token = wallet::accounts::new_token(app.service().now(), Duration::from_secs(3600));
            let secret = token.secret.clone();
            app.service()
                .writer
                .execute(move |conn, now| wallet::accounts::store_token(conn, now, id, &token))
                .map(|()| BenchUser {
                    id,
                    username,
                    token: secret,
                })
                .map_err(|e| format!("{e:?}"))
        })
        .collect()
}

/// `GET /api/wallets/me` for a wallet of a few entries and for the deep one: (shallow, deep).
fn time_wallet_reads(
    app: &wallet::App,
    base: &str,
    deep_id: Option<i64>,
    users: &[BenchUser],
) -> Result<Option<(Value, Value)>, String> {
    Ok(match (deep_id, users.first()) {
        (Some(deep_id), Some(shallow)) => {
            let token = wallet::accounts::new_token(app.service().now(), Duration::from_secs(3600));
            let deep_token = token.secret.clone();
            app.service()
                .writer
                .execute(move |conn, now| wallet::accounts::store_token(conn, now, deep_id, &token))
                .map_err(|e| format!("{e:?}"))?;
            let mut c = Client::new(base);
            let mut time_reads = |token: &str| {
                let mut stats = OpStats::default();
                for _ in 0..WALLET_READS {
                    let t = Instant::now();
                    let r = c.call("GET", "/api/wallets/me", Some(token), None);
                    stats.record(t.elapsed(), r.map(|(s, _)| s));
                }
                stats.summary(1.0)
            };
            Some((time_reads(&shallow.token), time_reads(&deep_token)))
        }
        _ => None,
    })
}

/// Transfers by `clients` clients for `secs` seconds.
fn transfers_for(base: &str, users: &Arc<Vec<BenchUser>>, clients: u32, secs: u64) -> OpStats {
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            stop.store(true, Ordering::Relaxed);
        })
    };
    let stats = timed_transfers(base, users, clients, &stop);
    let _ = stopper.join();
    stats
}

/// Transfers by `clients` clients while one snapshot runs: their figures, the snapshot's
/// seconds and its report.
fn transfers_during_snapshot(
    app: &wallet::App,
    base: &str,
    users: &Arc<Vec<BenchUser>>,
    clients: u32,
) -> Result<(OpStats, f64, wallet::ledger::snapshot::RunReport), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let snapshot_thread = {
        let (writer, stop, now) = (
            app.service().writer.clone(),
            stop.clone(),
            app.service().now(),
        );
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = wallet::ledger::snapshot::run(&writer, now);
            stop.store(true, Ordering::Relaxed);
            (t.elapsed().as_secs_f64(), r)
        })
    };
    let during = timed_transfers(base, users, clients, &stop);
    let (snapshot_s, snap) = snapshot_thread
        .join()
        .map_err(|_| "snapshot thread panicked".to_string())?;
    let snap = snap.map_err(|e| format!("snapshot failed: {e:?}"))?;
    Ok((during, snapshot_s, snap))
}

fn snapshot_bench_in(dir: &Path, args: &SnapshotBenchArgs) -> Result<bool, String> {
    let path = dir.join("snap.db");
    let currency = Currency::new("USD", 2, 1_000_000_000)?;
    let Seeded {
        seed_s,
        report,
        verify_s,
        deep_id,
    } = seed_ledger(&path, args, &currency)?;

    let mut config = wallet::config::Config::for_tests(path.clone());
    config.serve.argon2_memory_kib = 19_456;
    config.serve.argon2_iterations = 2;
    config.serve.threads = 64;
    wallet::log::errors_only();
    let app = wallet::App::start(config).map_err(|e| e.to_string())?;
    let base = format!("http://{}", app.addr);
    let users = Arc::new(issue_tokens(&app, &path)?);
    let reads = time_wallet_reads(&app, &base, deep_id, &users)?;
    let mut baseline = transfers_for(&base, &users, args.clients, args.baseline);
    let (mut during, snapshot_s, snap) =
        transfers_during_snapshot(&app, &base, &users, args.clients)?;
    app.shutdown().map_err(|e| e.to_string())?;

    let base_s = baseline.summary(args.baseline as f64);
    let during_s = during.summary(snapshot_s);
    let out = json!({
        "wallets": args.wallets, "entries": report.entries, "seed_s": seed_s,
        "verify_s": verify_s, "verify_ok": report.ok(),
        "snapshot_s": snapshot_s, "snapshot_wallets": snap.wallets, "snapshot_mismatches": snap.mismatches.len(),
        "transfers_without_snapshot": base_s, "transfers_during_snapshot": during_s,
        "deep_entries": args.deep_entries,
        "wallet_read_shallow": reads.as_ref().map(|r| r.0.clone()),
        "wallet_read_deep": reads.as_ref().map(|r| r.1.clone()),
    });
    if args.json {
        println!("{out}");
    } else {
        print_snapshot_bench(&out);
    }
    Ok(report.ok() && snap.mismatches.is_empty())
}

/// `bench-snapshot`'s figures as a table, from its JSON.
fn print_snapshot_bench(out: &Value) {
    let f = |key: &str| out[key].as_f64().unwrap_or(0.0);
    println!(
        "seeded {} wallets and {} entries in {:.1} s",
        out["wallets"],
        out["entries"],
        f("seed_s")
    );
    println!(
        "wallet verify: {:.2} s, {}",
        f("verify_s"),
        if out["verify_ok"] == true {
            "OK"
        } else {
            "FINDINGS"
        }
    );
    println!(
        "snapshot of {} wallets: {:.2} s, {} mismatches",
        out["snapshot_wallets"],
        f("snapshot_s"),
        out["snapshot_mismatches"]
    );
    if let (Value::Object(_), Value::Object(_)) =
        (&out["wallet_read_shallow"], &out["wallet_read_deep"])
    {
        for (label, r) in [
            (
                "a wallet of ~10 entries".to_string(),
                &out["wallet_read_shallow"],
            ),
            (
                format!("a wallet of {} entries", out["deep_entries"]),
                &out["wallet_read_deep"],
            ),
        ] {
            println!(
                "GET /api/wallets/me, {label}: p50 {:.3} ms, p99 {:.3} ms over {WALLET_READS} reads, statuses {}",
                r["p50_ms"].as_f64().unwrap_or(0.0),
                r["p99_ms"].as_f64().unwrap_or(0.0),
                r["statuses"]
            );
        }
    }
    for (label, s) in [
        (
            "transfers without a snapshot",
            &out["transfers_without_snapshot"],
        ),
        (
            "transfers during the snapshot",
            &out["transfers_during_snapshot"],
        ),
    ] {
        println!(
            "{label}: {} at {}/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, statuses {}",
            s["count"],
            s["per_s"],
            s["p50_ms"].as_f64().unwrap_or(0.0),
            s["p99_ms"].as_f64().unwrap_or(0.0),
            s["max_ms"].as_f64().unwrap_or(0.0),
            s["statuses"]
        );
    }
}
