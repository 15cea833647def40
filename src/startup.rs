//! Starting and stopping the whole service. Tests drive this same path: `App::start` with
//! `--listen 127.0.0.1:0`, read `addr`, talk HTTP, `shutdown`.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::accounts::{LoginThrottle, PasswordGuard, RateLimiter, TokenCache};
use crate::clock::{GuardedClock, SharedClock, SystemClock, Wakeup, WALL_LEAP_MS_MAX};
use crate::config::Config;
use crate::config::Target;
use crate::db::grouped::Grouped;
use crate::db::pg_writer::PgWriter;
use crate::db::{self, Writer};
use crate::domain::Timestamp;
use crate::error::StartupError;
use crate::http::HttpServer;
use crate::jobs::holds::HoldExpiry;
use crate::jobs::payout::{Claims, InFlight, PayoutSettings, PayoutWorker};
use crate::jobs::sealer::Sealer;
use crate::jobs::snapshot::SnapshotJob;
use crate::metrics::Metrics;
use crate::service::Service;
use crate::store::postgres::PgConn;
use crate::store::Sql;

/// Reader connections: readers are quick, and workers waiting on the writer hold none.
pub const READER_CONNECTIONS_MAX: u32 = 16;
// The pool's size is `--requests-max` clamped to 2..=READER_CONNECTIONS_MAX (`clamp` panics on
// an empty range).
const _: () = assert!(READER_CONNECTIONS_MAX >= 2);

pub struct App {
    pub addr: SocketAddr,
    http: HttpServer,
    service: Arc<Service>,
    writer_threads: Vec<JoinHandle<()>>,
    jobs: Vec<JoinHandle<()>>,
    wakeups: Vec<Arc<Wakeup>>,
    /// SQLite only: held until the process exits, or until `shutdown` has checkpointed.
    /// On PostgreSQL several processes serve one database and none is held.
    serve_lock: Option<db::ServeLock>,
}

/// What the storage engine started: the writer and its threads, the readers, the lock that
/// keeps other servers off a SQLite file, and the engine's own background thread (SQLite's
/// WAL checkpointer, PostgreSQL's chain sealer) with what stops it.
struct Storage {
    writer: Writer,
    writer_threads: Vec<JoinHandle<()>>,
    pool: db::Pool,
    serve_lock: Option<db::ServeLock>,
    job: (JoinHandle<()>, Arc<Wakeup>),
}

/// Options that tests set and production never does.
#[derive(Default, Clone)]
pub struct TestHooks {
    /// Routes `/__test/panic`, to prove a panicking handler costs one request only.
    pub panic_route: bool,
}

impl App {
    pub fn start(config: Config) -> Result<App, StartupError> {
        App::start_with(config, Arc::new(SystemClock), TestHooks::default())
    }

    /// Starts the service on `wall`, the wall clock (a `ManualClock` in tests), which it reads
    /// only through a `GuardedClock`.
    pub fn start_with(
        config: Config,
        wall: SharedClock,
        hooks: TestHooks,
    ) -> Result<App, StartupError> {
        raise_descriptor_limit();
        tune_malloc();
        let clock = Arc::new(GuardedClock::new(wall));
        let storage = match &config.db {
            Target::Sqlite(path) => open_sqlite(&config, path, &clock)?,
            Target::Postgres(url) => open_postgres(&config, url, &clock)?,
        };
        let threads = usize::from(config.serve.threads);
        let service = new_service(&config, storage.pool, storage.writer, clock)?;
        let listener = TcpListener::bind(config.serve.listen).map_err(|e| {
            StartupError::setting(
                "--listen/WALLET_LISTEN",
                format!("cannot listen on {}: {e}", config.serve.listen),
            )
        })?;
        let http = HttpServer::start(service.clone(), listener, threads, hooks.panic_route)
            .map_err(StartupError::failed)?;
        let (mut jobs, mut wakeups) = spawn_jobs(&config, &service);
        jobs.insert(0, storage.job.0);
        wakeups.push(storage.job.1);
        Ok(App {
            addr: http.addr,
            http,
            service,
            writer_threads: storage.writer_threads,
            jobs,
            wakeups,
            serve_lock: storage.serve_lock,
        })
    }

    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, stops the
    /// background threads, lets the writer drain, and checkpoints the WAL.
    pub fn shutdown(self) -> Result<(), StartupError> {
        let grace = Duration::from_millis(self.service.config.serve.shutdown_grace_ms);
        let target = self.service.config.db.clone();
        let sync = self.service.config.serve.synchronous;
        self.http.stop(grace);
        for w in &self.wakeups {
            w.stop();
        }
        for j in self.jobs {
            let _ = j.join();
        }
        // The writer threads end once the last `Writer` handle (inside the service) is gone.
        drop(self.service);
        for t in self.writer_threads {
            let _ = t.join();
        }
        let Target::Sqlite(db_path) = target else {
            return Ok(());
        };
        let conn = db::open(&db_path, sync).map_err(|e| StartupError::failed(e.to_string()))?;
        let checkpointed = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| StartupError::caused_by("checkpoint", e));
        drop(conn);
        // Only now may another server start on the file.
        drop(self.serve_lock);
        checkpointed
    }
}

/// SQLite: takes the serve lock, opens and migrates the file, starts the one writer, the
/// reader pool and the WAL checkpointer.
fn open_sqlite(
    config: &Config,
    path: &Path,
    clock: &Arc<GuardedClock>,
) -> Result<Storage, StartupError> {
    // First of all: a second server must not even migrate the file under the first one.
    let serve_lock = db::lock_for_serving(path)?;
    let conn = open_database(config, path, clock.now())?;
    let (writer, writer_thread) = start_writer(config, conn, clock);
    let threads = config.serve.threads as u32;
    let pool = db::reader_pool(path, threads.clamp(2, READER_CONNECTIONS_MAX) + 2)?;
    let wakeup = Arc::new(Wakeup::default());
    let checkpointer = db::start_checkpointer(path, config.serve.synchronous, wakeup.clone())?;
    Ok(Storage {
        writer,
        writer_threads: vec![writer_thread],
        pool,
        serve_lock: Some(serve_lock),
        job: (checkpointer, wakeup),
    })
}

/// PostgreSQL: applies the schema (once, however many processes start together), checks the
/// settings, and starts `--db-writers` writer connections, the reader pool and the sealer.
fn open_postgres(
    config: &Config,
    url: &str,
    clock: &Arc<GuardedClock>,
) -> Result<Storage, StartupError> {
    let connect = || {
        PgConn::connect(url).map_err(|e| {
            StartupError::setting(
                "--db/WALLET_DB",
                format!("cannot connect to {}: {e}", config.db),
            )
        })
    };
    let conn = connect()?;
    crate::store::postgres::migrate(&conn).map_err(StartupError::failed)?;
    db::check_currencies(&conn, &config.currencies)?;
    check_newest_stamp(&conn, clock.now(), config.serve.accept_future_stamps)?;
    let newest = db::newest_entry_stamp(&conn)?;
    let mut writers = vec![conn];
    for _ in 1..config.serve.db_writers {
        writers.push(connect()?);
    }
    let stats = Arc::new(db::WriterStats::default());
    let (pg, writer_threads) = PgWriter::start(
        url,
        writers,
        clock.clone() as SharedClock,
        (
            config.serve.write_queue_max as usize,
            usize::from(config.serve.db_batch_max),
        ),
        (stats.clone(), newest),
    );
    let threads = config.serve.threads as u32;
    let pool = db::postgres_pool(url, threads.clamp(2, READER_CONNECTIONS_MAX) + 2)?;
    let wakeup = Arc::new(Wakeup::default());
    let sealer = Sealer {
        url: url.to_string(),
        wakeup: wakeup.clone(),
    }
    .spawn();
    Ok(Storage {
        writer: Writer::postgres(pg, stats),
        writer_threads,
        pool,
        serve_lock: None,
        job: (sealer, wakeup),
    })
}

/// Opens the database for the writer, refusing one this process can't write, then migrates
/// it and checks it may be served with these settings and this clock.
fn open_database(
    config: &Config,
    path: &Path,
    now: Timestamp,
) -> Result<rusqlite::Connection, StartupError> {
    db::check_writable_path(path)?;
    let mut conn = db::open(path, config.serve.synchronous).map_err(|e| {
        StartupError::setting(
            "--db/WALLET_DB",
            format!("cannot open {}: {e}", path.display()),
        )
    })?;
    db::check_writable(path, &conn)?;
    db::migrate(&mut conn)?;
    db::check_currencies(&conn, &config.currencies)?;
    check_newest_stamp(&conn, now, config.serve.accept_future_stamps)?;
    conn.execute_batch(&format!("PRAGMA cache_size = -{}", db::WRITER_CACHE_KIB))
        .map_err(|e| StartupError::caused_by("cannot size the writer's cache", e))?;
    Ok(conn)
}

/// Starts the writer on `conn`, on a CPU of its own when `--pin-writer` asks for one. Called
/// before any other thread starts: they all inherit the CPUs this thread keeps.
fn start_writer(
    config: &Config,
    conn: rusqlite::Connection,
    clock: &Arc<GuardedClock>,
) -> (Writer, JoinHandle<()>) {
    let writer_cpu = if config.serve.pin_writer {
        crate::sys::reserve_cpu_for_writer()
    } else {
        None
    };
    Writer::start_on(
        conn,
        clock.clone() as SharedClock,
        usize::from(config.serve.write_batch_max),
        config.serve.write_queue_max as usize,
        writer_cpu,
    )
}

/// What every request shares; starts the password hashing threads.
fn new_service(
    config: &Config,
    pool: db::Pool,
    writer: Writer,
    clock: Arc<GuardedClock>,
) -> Result<Arc<Service>, StartupError> {
    let passwords = PasswordGuard::new(
        config.serve.argon2_memory_kib,
        config.serve.argon2_iterations,
        config.hash_threads,
    )
    .map_err(StartupError::failed)?;
    let (writer_engine, group_writer) = (writer.engine(), writer.clone());
    Ok(Arc::new(Service {
        throttle: LoginThrottle::new(
            config.serve.login_failures_max,
            config.serve.login_window,
            crate::accounts::THROTTLE_KEYS_MAX,
        ),
        tokens: TokenCache::default(),
        config: config.clone(),
        pool,
        writer,
        clock,
        passwords,
        metrics: Arc::new(Metrics::default()),
        payout_wakeup: Arc::new(Wakeup::default()),
        payouts_in_flight: Arc::new(InFlight::default()),
        holds_wakeup: Arc::new(Wakeup::default()),
        user_rate: RateLimiter::new(config.serve.rate_limit_user.0),
        anon_rate: RateLimiter::new(config.serve.rate_limit_anon.0),
        // Not beside `--db-batch-max`: a batch holds its other requests' wallets while a
        // group in it waits for its locks, which could close a cycle with another batch.
        write_groups: (writer_engine == crate::store::Engine::Postgres
            && config.serve.db_group_max > 1
            && config.serve.db_batch_max == 1)
            .then(|| {
                Grouped::start(
                    "write-group",
                    group_writer,
                    (
                        usize::from(config.serve.db_group_max),
                        config.serve.write_queue_max as usize,
                    ),
                    crate::ledger::batch::writes,
                )
            }),
    }))
}

/// Starts the payout worker and, when scheduled, the snapshot job, on the service's writer,
/// pool, clock and metrics. Returns their threads and what wakes or stops them.
fn spawn_jobs(config: &Config, service: &Service) -> (Vec<JoinHandle<()>>, Vec<Arc<Wakeup>>) {
    let clock = service.clock.clone() as SharedClock;
    let payouts = PayoutWorker {
        claims: Claims::new(match &config.db {
            Target::Postgres(url) => Some(url.clone()),
            Target::Sqlite(_) => None,
        }),
        settings: PayoutSettings {
            url: config.serve.payout_url.clone(),
            attempts_max: config.serve.payout_attempts_max,
            retry_base_ms: config.serve.payout_retry_base_ms,
            timeout_ms: config.serve.payout_timeout_ms,
            retry_window: config.serve.payout_retry_window,
        },
        currencies: config.currencies.clone(),
        writer: service.writer.clone(),
        pool: service.pool.clone(),
        clock: clock.clone(),
        wakeup: service.payout_wakeup.clone(),
        metrics: service.metrics.clone(),
        in_flight: service.payouts_in_flight.clone(),
    };
    let expiry = HoldExpiry {
        writer: service.writer.clone(),
        pool: service.pool.clone(),
        clock: clock.clone(),
        wakeup: service.holds_wakeup.clone(),
    };
    let mut jobs = vec![payouts.spawn(), expiry.spawn()];
    let snapshot_wakeup = Arc::new(Wakeup::default());
    if let Some(schedule) = config.snapshot_schedule.clone() {
        let snapshots = SnapshotJob {
            schedule,
            writer: service.writer.clone(),
            pool: service.pool.clone(),
            clock,
            wakeup: snapshot_wakeup.clone(),
            metrics: service.metrics.clone(),
        };
        jobs.push(snapshots.spawn());
    }
    (
        jobs,
        vec![
            service.payout_wakeup.clone(),
            service.holds_wakeup.clone(),
            snapshot_wakeup,
        ],
    )
}

/// Refuses to start on a ledger whose newest entry is stamped more than `WALL_LEAP_MS_MAX` ahead
/// of the clock, unless told to accept it: the writer never stamps before the newest entry, so
/// starting would silently carry a clock that was once ahead into every new entry.
fn check_newest_stamp(conn: &dyn Sql, now: Timestamp, accept: bool) -> Result<(), StartupError> {
    let Some(newest) = db::newest_entry_stamp(conn)? else {
        return Ok(());
    };
    let ahead_ms = (newest.micros() - now.micros()) / 1_000;
    if ahead_ms <= WALL_LEAP_MS_MAX {
        return Ok(());
    }
    let what = format!(
        "the newest ledger entry is stamped {}, {} ahead of this machine's clock ({})",
        newest.to_text(),
        human_ms(ahead_ms),
        now.to_text()
    );
    if accept {
        crate::log::error(&format!(
            "clock: {what}; starting anyway (--accept-future-stamps): new entries are stamped after it until the clock passes it"
        ));
        return Ok(());
    }
    Err(StartupError::failed(format!(
        "{what}. Time stamps never go back, so every new entry, token expiry and schedule check would follow that \
         time. If this clock is wrong, correct it and start again. If the entry was stamped by a clock that was \
         ahead, either wait until {} or start with --accept-future-stamps (WALLET_ACCEPT_FUTURE_STAMPS=true) to \
         stamp new entries after it until then",
        newest.to_text()
    )))
}

fn human_ms(ms: i64) -> String {
    match ms {
        ms if ms >= 2 * 86_400_000 => format!("{:.1} days", ms as f64 / 86_400_000.0),
        ms if ms >= 2 * 3_600_000 => format!("{:.1} hours", ms as f64 / 3_600_000.0),
        ms => format!("{:.1} s", ms as f64 / 1_000.0),
    }
}

/// Each connection costs descriptors; the default soft limit (often 1024) is far below what a
/// server needs, and tiny_http stops accepting for good when `accept` fails with EMFILE.
fn raise_descriptor_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Keeps resident memory bounded under glibc. argon2 allocates 19 MiB per hash; with glibc's
/// dynamic mmap threshold, once such a block is freed later ones come from an arena and stay
/// resident (two arenas of 58 MiB were measured after a benchmark: 221 MiB peak RSS, 32 MiB
/// with this). A fixed threshold sends every large block to mmap, which returns it to the OS
/// on free.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before the threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
    }
}
