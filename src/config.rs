//! The server's settings: flags with environment fallbacks (`ServeArgs`, which the binary's
//! command line in `cli.rs` flattens; `wallet --help` shows them all), and `Config`, the
//! checked and derived settings the service runs with.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser};

use crate::accounts::Rate;
use crate::db::Synchronous;
use crate::domain::{Currencies, Currency};
use crate::error::StartupError;
pub use crate::store::Target;

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "WALLET_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    /// Requests handled at once (each holds its place while its write is committed, so more
    /// than cores); more wait their turn in arrival order. Logins have their own places.
    /// Formerly `--threads`/`WALLET_THREADS`, which are still accepted.
    #[arg(long = "requests-max", alias = "threads", value_name = "N", env = ENV_REQUESTS_MAX, default_value_t = REQUESTS_MAX_DEFAULT, value_parser = clap::value_parser!(u16).range(1..=REQUESTS_MAX_CEILING as i64))]
    pub threads: u16,

    /// How long a login token lasts: seconds, or a number with s, m, h or d.
    #[arg(long, env = "WALLET_TOKEN_TTL", default_value = "7d", value_parser = parse_duration)]
    pub token_ttl: Duration,

    /// The deployment's currency code.
    #[arg(long, env = "WALLET_CURRENCY", default_value = "USD")]
    pub currency: String,

    /// Fractional digits of the currency; fixed once the database holds money.
    #[arg(long, env = "WALLET_CURRENCY_SCALE", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=8))]
    pub currency_scale: u32,

    /// Several currencies, the default first: `USD:2,EUR:2,JPY:0` (code 3-8 uppercase
    /// letters, scale 0-8). Replaces --currency/--currency-scale, which name a single one.
    #[arg(long, env = "WALLET_CURRENCIES")]
    pub currencies: Option<String>,

    /// Longest a hold may last before it expires: seconds, or a number with s, m, h or d.
    #[arg(long, env = "WALLET_HOLD_EXPIRY_MAX", default_value = "30d", value_parser = parse_duration)]
    pub hold_expiry_max: Duration,

    /// The largest amount one request may move, in whole units.
    #[arg(long, env = "WALLET_AMOUNT_MAX", default_value_t = 1_000_000_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub amount_max: i64,

    /// Largest request body accepted, in bytes (413 above it).
    #[arg(long, env = "WALLET_REQUEST_BODY_BYTES_MAX", default_value_t = REQUEST_BODY_BYTES_MAX_DEFAULT, value_parser = clap::value_parser!(u64).range(REQUEST_BODY_BYTES_MAX_FLOOR..=REQUEST_BODY_BYTES_MAX_CEILING as u64))]
    pub request_body_bytes_max: u64,

    /// SQLite durability: `full` survives power loss; `normal` only a process crash.
    #[arg(long, env = "WALLET_SYNCHRONOUS", value_enum, default_value_t = Synchronous::Full)]
    pub synchronous: Synchronous,

    /// Most requests committed together in one SQLite transaction (group commit).
    #[arg(long, env = "WALLET_WRITE_BATCH_MAX", default_value_t = WRITE_BATCH_MAX_DEFAULT, value_parser = clap::value_parser!(u16).range(1..=WRITE_BATCH_MAX_CEILING as i64))]
    pub write_batch_max: u16,

    /// PostgreSQL only: connections that write side by side (each runs one request's write per
    /// transaction; the database's row locks decide between them).
    #[arg(long, env = "WALLET_DB_WRITERS", default_value_t = DB_WRITERS_DEFAULT, value_parser = clap::value_parser!(u16).range(1..=DB_WRITERS_CEILING as i64))]
    pub db_writers: u16,

    /// PostgreSQL only: most requests one writer connection commits together, each in its own
    /// savepoint (1: one transaction per request).
    #[arg(long, env = "WALLET_DB_BATCH_MAX", default_value_t = DB_BATCH_MAX_DEFAULT, value_parser = clap::value_parser!(u16).range(1..=WRITE_BATCH_MAX_CEILING as i64))]
    pub db_batch_max: u16,

    /// PostgreSQL only: most transfers and deposits written together in one transaction, a
    /// statement per step rather than per request (1: each in a transaction of its own; off
    /// while `--db-batch-max` is above 1).
    #[arg(long, alias = "db-transfer-group-max", env = ENV_DB_GROUP_MAX, default_value_t = DB_GROUP_MAX_DEFAULT, value_parser = clap::value_parser!(u16).range(1..=DB_GROUP_MAX_CEILING as i64))]
    pub db_group_max: u16,

    /// Most writes waiting for the writer; beyond it requests get 503 instead of queueing forever.
    #[arg(long, env = "WALLET_WRITE_QUEUE_MAX", default_value_t = WRITE_QUEUE_MAX_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=WRITE_QUEUE_MAX_CEILING as i64))]
    pub write_queue_max: u32,

    /// Password hashes computed at once (argon2 is deliberately slow; this keeps a login storm
    /// from starving money movement). Default: cores - 1, at least 1.
    #[arg(long, env = "WALLET_HASH_THREADS")]
    pub hash_threads: Option<u16>,

    /// argon2id memory cost in KiB (OWASP's minimum is 19456).
    #[arg(long, env = "WALLET_ARGON2_MEMORY_KIB", default_value_t = 19_456, value_parser = clap::value_parser!(u32).range(8..=1_048_576))]
    pub argon2_memory_kib: u32,

    /// argon2id iterations.
    #[arg(long, env = "WALLET_ARGON2_ITERATIONS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub argon2_iterations: u32,

    /// Failed logins allowed per username and per client address within the window; 0 turns
    /// throttling off.
    #[arg(long, env = "WALLET_LOGIN_FAILURES_MAX", default_value_t = 10)]
    pub login_failures_max: u32,

    /// Requests per user (whatever token it sends), like `6000/min`, `10/s`, `1000/hour`;
    /// `off` for none. Over it: 429 with `Retry-After`.
    #[arg(long, env = "WALLET_RATE_LIMIT_USER", default_value = "6000/min", value_parser = parse_rate)]
    pub rate_limit_user: RateLimit,

    /// Requests per client address without a valid token (logins, registrations, public
    /// routes), as `--rate-limit-user`.
    #[arg(long, env = "WALLET_RATE_LIMIT_ANON", default_value = "600/min", value_parser = parse_rate)]
    pub rate_limit_anon: RateLimit,

    /// The failed-login window.
    #[arg(long, env = "WALLET_LOGIN_WINDOW", default_value = "5m", value_parser = parse_duration)]
    pub login_window: Duration,

    /// When to snapshot every wallet's balance: a cron expression with seconds
    /// (`sec min hour day month weekday`), in UTC, or `off`.
    #[arg(long, env = "WALLET_SNAPSHOT_CRON", default_value = "0 0 0 * * *")]
    pub snapshot_cron: String,

    /// Where scheduled withdrawals are paid out (POST JSON). Unset: they complete internally.
    #[arg(long, env = "WALLET_PAYOUT_URL")]
    pub payout_url: Option<String>,

    /// Payout attempts before a withdrawal fails and is refunded, when every one of them was a
    /// 500, 503 or a connection not made (any other failure leaves the outcome unknown).
    #[arg(long, env = "WALLET_PAYOUT_ATTEMPTS_MAX", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub payout_attempts_max: u32,

    /// Delay before the first payout retry, in ms; it doubles on each retry.
    #[arg(long, env = "WALLET_PAYOUT_RETRY_BASE_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub payout_retry_base_ms: u64,

    /// Timeout of one payout call, in ms: for connecting, and then for the answer (the whole
    /// call at most twice this).
    #[arg(long, env = "WALLET_PAYOUT_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=300_000))]
    pub payout_timeout_ms: u64,

    /// How long to keep retrying a payout whose outcome is unknown (a timeout after the request
    /// was sent, a 502, ...), counted from the first such attempt; then it stays PROCESSING
    /// for staff to resolve. Seconds, or a number with s, m, h or d.
    #[arg(long, env = "WALLET_PAYOUT_RETRY_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub payout_retry_window: Duration,

    /// How far ahead a withdrawal may be scheduled, in days.
    #[arg(long, env = "WALLET_SCHEDULE_HORIZON_DAYS", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub schedule_horizon_days: u32,

    /// Socket read/write timeout, in ms: a client that sends nothing for this long (an idle
    /// keep-alive connection, a stalled body) is disconnected.
    #[arg(long, env = "WALLET_SOCKET_TIMEOUT_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub socket_timeout_ms: u64,

    /// Open connections at most (each costs a thread and two descriptors); beyond it a new
    /// connection is answered 503 and closed.
    #[arg(long, env = "WALLET_CONNECTIONS_MAX", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub connections_max: u32,

    /// Open connections from one client address at most, so that one client cannot hold every
    /// place (slowloris); beyond it a new connection is answered 503 and closed. 127.0.0.1, ::1
    /// and `--trusted-proxy` are exempt: a load generator or a reverse proxy holds many.
    #[arg(long, env = "WALLET_CONNECTIONS_PER_ADDRESS_MAX", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub connections_per_address_max: u32,

    /// How long a request's head (request line and headers) may take to arrive once its first
    /// byte has, in ms; a slower one is answered 408 and the connection closed.
    #[arg(long, env = "WALLET_REQUEST_HEAD_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub request_head_timeout_ms: u64,

    /// The address of a reverse proxy in front of the service. Requests from it are
    /// attributed to the last address in their `X-Forwarded-For` (for failed-login
    /// throttling); from anyone else that header is ignored.
    #[arg(long, env = "WALLET_TRUSTED_PROXY")]
    pub trusted_proxy: Option<std::net::IpAddr>,

    /// The address users reach the server at (`https://wallet.example.com`), as a reverse
    /// proxy serves it. With `https://`, console cookies are marked `Secure`; its origin is the
    /// one console forms may be posted from.
    #[arg(long, env = "WALLET_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// How long in-flight requests may take to finish at shutdown, in ms.
    #[arg(long, env = "WALLET_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    /// Give the writer thread a CPU of its own (the last this process may use) and keep every
    /// other thread of the server off it, when two or more CPUs are available: `true` or
    /// `false`.
    #[arg(long, env = "WALLET_PIN_WRITER", default_value_t = true, action = clap::ArgAction::Set)]
    pub pin_writer: bool,

    /// Start even though the newest ledger entry is stamped more than 5 s ahead of this
    /// machine's clock. New entries are then stamped after it (time stamps never go back)
    /// until the clock passes it. Without this flag, such a database is refused at start-up.
    #[arg(long, env = "WALLET_ACCEPT_FUTURE_STAMPS")]
    pub accept_future_stamps: bool,
}

/// `ServeArgs` parsed alone, for defaults and tests; the binary's command line flattens them.
#[derive(Parser, Debug)]
#[command(name = "wallet")]
struct ServeOnly {
    #[command(flatten)]
    serve: ServeArgs,
}

impl ServeArgs {
    /// Every setting at its default (environment variables apply, as on the command line),
    /// listening on a free port of 127.0.0.1.
    pub fn defaults() -> ServeArgs {
        ServeOnly::parse_from(["wallet", "--listen", "127.0.0.1:0"]).serve
    }
}

/// Parses `90`, `90s`, `15m`, `24h` or `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 90s, 15m, 24h or 7d"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .filter(|s| *s > 0 && *s <= 10 * 365 * 86_400)
    .ok_or_else(|| {
        format!("{s:?} is not a duration from 1s to 3650d such as 90s, 15m, 24h or 7d")
    })?;
    Ok(Duration::from_secs(secs))
}

/// `--rate-limit-user`/`--rate-limit-anon`: a rate, or `None` for `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit(pub Option<Rate>);

fn parse_rate(s: &str) -> Result<RateLimit, String> {
    Rate::parse(s).map(RateLimit)
}

/// The checked, derived settings the server runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub db: Target,
    pub serve: ServeArgs,
    /// Every currency money may be in, the default first.
    pub currencies: Currencies,
    pub snapshot_schedule: Option<cron::Schedule>,
    pub hash_threads: usize,
}

impl Config {
    /// Checks what clap cannot. The error names the setting, for a one-line message.
    pub fn from_args(db: Target, serve: ServeArgs) -> Result<Config, StartupError> {
        let currencies = match &serve.currencies {
            Some(_) if serve.currency != "USD" || serve.currency_scale != 2 => {
                return Err(StartupError::setting(
                    "--currencies/WALLET_CURRENCIES",
                    "give either --currencies or --currency/--currency-scale, not both \
                     (the first of --currencies is the default)",
                ))
            }
            Some(spec) => Currencies::parse(spec, serve.amount_max)
                .map_err(|e| StartupError::setting("--currencies/WALLET_CURRENCIES", e))?,
            None => Currencies::single(
                Currency::new(&serve.currency, serve.currency_scale, serve.amount_max)
                    .map_err(|e| StartupError::setting("--currency/WALLET_CURRENCY", e))?,
            ),
        };
        let snapshot_schedule = parse_cron(&serve.snapshot_cron)
            .map_err(|e| StartupError::setting("--snapshot-cron/WALLET_SNAPSHOT_CRON", e))?;
        if let Some(url) = &serve.payout_url {
            // The payout client is built without TLS (no TLS library in the binary): an https
            // URL would fail every attempt and refund every withdrawal, so refuse it here.
            if !url.starts_with("http://") {
                return Err(StartupError::setting(
                    "--payout-url/WALLET_PAYOUT_URL",
                    format!(
                        "{url:?} must be an http:// URL (TLS is not built in; \
                         for an https service, point this at a local TLS-terminating relay)"
                    ),
                ));
            }
        }
        if let Some(url) = &serve.public_url {
            let origin = url.trim_end_matches('/');
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            if host.is_none_or(|h| h.is_empty() || h.contains(['/', '?', '#', ' '])) {
                return Err(StartupError::setting(
                    "--public-url/WALLET_PUBLIC_URL",
                    format!("{url:?} must be an http:// or https:// origin such as https://wallet.example.com"),
                ));
            }
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let hash_threads = match serve.hash_threads {
            Some(0) => {
                return Err(StartupError::setting(
                    "--hash-threads/WALLET_HASH_THREADS",
                    "must be at least 1",
                ))
            }
            Some(n) => usize::from(n),
            None => cores.saturating_sub(1).max(1),
        };
        Ok(Config {
            db,
            serve,
            currencies,
            snapshot_schedule,
            hash_threads,
        })
    }

    /// The currency of a request that names none.
    pub fn currency(&self) -> &Currency {
        self.currencies.default_currency()
    }

    /// Settings for tests and tools: everything default, cheap password hashing.
    pub fn for_tests(db: impl Into<Target>) -> Config {
        let mut serve = ServeArgs::defaults();
        serve.argon2_memory_kib = 64;
        serve.argon2_iterations = 1;
        serve.threads = 32;
        serve.snapshot_cron = "off".into();
        // Many tests send more than a client would; the rate limit tests turn it on.
        serve.rate_limit_user = RateLimit(None);
        serve.rate_limit_anon = RateLimit(None);
        // Many test servers share one process and its threads: none may claim a CPU.
        serve.pin_writer = false;
        Config::from_args(db.into(), serve).expect("test defaults are valid")
    }
}

/// The default and the largest `--requests-max`.
pub const REQUESTS_MAX_DEFAULT: u16 = 64;
pub const REQUESTS_MAX_CEILING: u16 = 1024;
const _: () = assert!(REQUESTS_MAX_DEFAULT >= 1 && REQUESTS_MAX_DEFAULT <= REQUESTS_MAX_CEILING);
/// The default and the largest `--write-batch-max` and `--write-queue-max`. A batch takes
/// jobs from the queue, so by default the queue holds several batches' worth: a burst waits
/// for the next commit instead of being refused with 503.
pub const WRITE_BATCH_MAX_DEFAULT: u16 = 256;
pub const WRITE_BATCH_MAX_CEILING: u16 = 4096;
pub const WRITE_QUEUE_MAX_DEFAULT: u32 = 4096;
pub const WRITE_QUEUE_MAX_CEILING: u32 = 1_000_000;
const _: () = assert!(WRITE_BATCH_MAX_DEFAULT <= WRITE_BATCH_MAX_CEILING);
const _: () = assert!(WRITE_QUEUE_MAX_DEFAULT <= WRITE_QUEUE_MAX_CEILING);
const _: () = assert!(WRITE_BATCH_MAX_DEFAULT as u32 * 2 <= WRITE_QUEUE_MAX_DEFAULT);
const _: () = assert!(WRITE_BATCH_MAX_CEILING as u32 <= WRITE_QUEUE_MAX_CEILING);
/// The default and the largest `--db-writers`. Each is a PostgreSQL connection (a server
/// process); a few more than the database's cores keep it busy while others wait on fsync.
pub const DB_WRITERS_DEFAULT: u16 = 8;
pub const DB_WRITERS_CEILING: u16 = 256;
/// The default `--db-batch-max` (README, "Performance": one transaction per request against
/// batches, measured).
pub const DB_BATCH_MAX_DEFAULT: u16 = 1;
/// The default and the largest `--db-group-max` (README, "On PostgreSQL": transfers and
/// deposits alone against groups, measured). A group holds its wallets' row locks until it commits, so
/// a larger one makes other writes to those wallets wait longer.
pub const DB_GROUP_MAX_DEFAULT: u16 = 64;
pub const DB_GROUP_MAX_CEILING: u16 = 1000;
const _: () = assert!(DB_WRITERS_DEFAULT >= 1 && DB_WRITERS_DEFAULT <= DB_WRITERS_CEILING);

/// The default and the smallest `--request-body-bytes-max`.
pub const REQUEST_BODY_BYTES_MAX_DEFAULT: u64 = 65_536;
pub const REQUEST_BODY_BYTES_MAX_FLOOR: u64 = 1024;
const _: () = assert!(
    REQUEST_BODY_BYTES_MAX_FLOOR <= REQUEST_BODY_BYTES_MAX_DEFAULT
        && REQUEST_BODY_BYTES_MAX_DEFAULT <= REQUEST_BODY_BYTES_MAX_CEILING as u64
);
/// The environment variable of `--requests-max`, and its older name, read when it is unset.
pub const ENV_REQUESTS_MAX: &str = "WALLET_REQUESTS_MAX";
pub const ENV_REQUESTS_MAX_OLD: &str = "WALLET_THREADS";
/// The environment variable of `--db-group-max`, and its older name (of
/// `--db-transfer-group-max`, before deposits joined the groups), read when it is unset.
pub const ENV_DB_GROUP_MAX: &str = "WALLET_DB_GROUP_MAX";
pub const ENV_DB_GROUP_MAX_OLD: &str = "WALLET_DB_TRANSFER_GROUP_MAX";

/// The largest `--request-body-bytes-max` accepted.
pub const REQUEST_BODY_BYTES_MAX_CEILING: usize = 16 * 1024 * 1024;

/// `off` disables the schedule; anything else must be a valid cron expression (UTC).
pub fn parse_cron(s: &str) -> Result<Option<cron::Schedule>, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse::<cron::Schedule>().map(Some).map_err(|e| {
        // The cron crate's message spans lines (it draws a caret); keep its last line so the
        // start-up error stays one line.
        let text = e.to_string();
        let reason = text.lines().map(str::trim).rfind(|l| !l.is_empty() && *l != "^").unwrap_or("invalid");
        format!("{s:?} is not a cron expression such as \"0 0 0 * * *\" (sec min hour day month weekday): {reason}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn the_payout_retry_window_defaults_to_a_day() {
        let serve = ServeOnly::parse_from(["wallet"]).serve;
        assert_eq!(serve.payout_retry_window, Duration::from_secs(86_400));
        let serve = ServeOnly::parse_from(["wallet", "--payout-retry-window", "90m"]).serve;
        assert_eq!(serve.payout_retry_window, Duration::from_secs(5_400));
        assert!(ServeOnly::try_parse_from(["wallet", "--payout-retry-window", "0"]).is_err());
    }

    #[test]
    fn cron_expressions() {
        assert!(parse_cron("off").unwrap().is_none());
        assert!(parse_cron("0 0 0 * * *").unwrap().is_some());
        let err = parse_cron("every night").unwrap_err();
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let serve = ServeOnly::parse_from(["wallet", "--snapshot-cron", "nope"]).serve;
        let err = Config::from_args("x.db".into(), serve)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--snapshot-cron"), "{err}");
        let serve =
            ServeOnly::parse_from(["wallet", "--payout-url", "https://bank.example/payouts"]).serve;
        let err = Config::from_args("x.db".into(), serve)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--payout-url") && err.contains("TLS"),
            "{err}"
        );
        let serve = ServeOnly::parse_from(["wallet", "--currency", "dollars"]).serve;
        let err = Config::from_args("x.db".into(), serve)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--currency"), "{err}");
    }
}
