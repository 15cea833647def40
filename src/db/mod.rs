//! Storage: opening SQLite, applying `schema.sql`, the reader pool and the single writer.

pub mod audit;
mod error;
pub mod grouped;
pub mod health;
mod migrations;
pub mod payouts;
pub mod pg_writer;
pub mod writer;

use std::path::Path;
use std::time::Duration;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::Connection;

use crate::domain::{Currencies, Timestamp};
use crate::error::{AppError, StartupError};
use crate::store::Sql;

pub use writer::{Writer, WriterStats};

/// The schema, embedded so the binary is all a user needs.
pub const SCHEMA_SQL: &str = include_str!("../../schema.sql");
/// `PRAGMA user_version` after `SCHEMA_SQL`; each migration bumps it by one.
pub const SCHEMA_VERSION: i32 = 9;
/// `MIGRATIONS[i]` takes a database from version `i + 1` to `i + 2`. A new database gets
/// `SCHEMA_SQL` directly.
const MIGRATIONS: &[migrations::Migration] = &[
    migrations::Migration {
        prepare: None,
        sql: include_str!("../../migrations/002_integer_wallet_keys.sql"),
    },
    migrations::Migration {
        prepare: Some(migrations::usernames_v3),
        sql: include_str!("../../migrations/003_username_keys.sql"),
    },
    migrations::Migration {
        prepare: None,
        sql: include_str!("../../migrations/004_payout_outcome_unknown.sql"),
    },
    migrations::Migration {
        prepare: None,
        sql: include_str!("../../migrations/005_storage_probe.sql"),
    },
    migrations::Migration {
        prepare: Some(migrations::currencies_v6),
        sql: include_str!("../../migrations/006_currencies_and_holds.sql"),
    },
    migrations::Migration {
        prepare: None,
        sql: include_str!("../../migrations/007_staff_tools.sql"),
    },
    migrations::Migration {
        prepare: None,
        sql: include_str!("../../migrations/008_console_sessions.sql"),
    },
    migrations::Migration {
        prepare: Some(migrations::reversal_kinds_v9),
        sql: include_str!("../../migrations/009_reversals.sql"),
    },
];
const _: () = assert!(MIGRATIONS.len() as i32 == SCHEMA_VERSION - 1);
/// How long a connection waits for another process's lock (say `wallet snapshot`) before
/// giving up with 503. Inside the server only the writer writes, so it never waits on itself.
pub const BUSY_TIMEOUT_MS: u64 = 5_000;

/// The reader connections of either engine; a connection taken from it reads as `&dyn Sql`.
#[derive(Clone)]
pub enum Pool {
    Sqlite(r2d2::Pool<SqliteConnectionManager>),
    Postgres(r2d2::Pool<crate::store::postgres::PgManager>),
}

/// A reader connection, given back to its pool when dropped.
pub enum PooledConn {
    Sqlite(r2d2::PooledConnection<SqliteConnectionManager>),
    // Boxed: a PostgreSQL client is twice the size of a SQLite handle.
    Postgres(Box<r2d2::PooledConnection<crate::store::postgres::PgManager>>),
}

impl std::ops::Deref for PooledConn {
    type Target = dyn crate::store::Sql;

    fn deref(&self) -> &(dyn crate::store::Sql + 'static) {
        match self {
            PooledConn::Sqlite(c) => &**c,
            PooledConn::Postgres(c) => &***c,
        }
    }
}

impl Pool {
    pub fn get(&self) -> Result<PooledConn, r2d2::Error> {
        Ok(match self {
            Pool::Sqlite(p) => PooledConn::Sqlite(p.get()?),
            Pool::Postgres(p) => PooledConn::Postgres(Box::new(p.get()?)),
        })
    }

    /// Connections open, and of those idle.
    pub fn state(&self) -> (u32, u32) {
        let s = match self {
            Pool::Sqlite(p) => p.state(),
            Pool::Postgres(p) => p.state(),
        };
        (s.connections, s.idle_connections)
    }
}

/// A pool of reader connections to PostgreSQL.
pub fn postgres_pool(url: &str, size: u32) -> Result<Pool, StartupError> {
    r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(size.min(4)))
        .connection_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
        .build(crate::store::postgres::PgManager::new(url))
        .map(Pool::Postgres)
        .map_err(|e| StartupError::caused_by("cannot open database pool", e))
}

/// SQLite's durability setting (`PRAGMA synchronous`), chosen by `--synchronous`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Synchronous {
    /// An acknowledged write survives power loss (fsync on every commit).
    Full,
    /// Survives a crash of the process, not of the machine.
    Normal,
}

fn sync_pragma(sync: Synchronous) -> &'static str {
    match sync {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    }
}

/// WAL size after which the writer checkpoints by itself, which is what lets the WAL start
/// over from its beginning.
///
/// The checkpointer thread copies the WAL into the database file in the background, but under
/// steady load it never catches up exactly (the writer appends while it copies), and SQLite
/// restarts the WAL only at a write that finds it wholly copied. So the writer itself copies
/// the last few hundred milliseconds' pages and syncs the database file once the WAL holds
/// this many bytes: a 10–25 ms commit. At 40 MiB that happened several times a second
/// and was the whole of the p99 (15–18 ms); at 200 MiB it happens
/// every few seconds under full load, and p99 fell to 8 ms. The WAL file keeps its largest
/// size until shutdown truncates it.
pub const WRITER_AUTOCHECKPOINT_BYTES: u64 = 200 * 1024 * 1024;
/// How often the checkpointer copies the WAL back into the database file.
pub const CHECKPOINT_INTERVAL_MS: u64 = 250;
/// Page cache of the writer's connection, in KiB (SQLite's default is 2 MiB): a large ledger's
/// hot pages (wallets, index leaves) then stay in memory instead of being read again.
pub const WRITER_CACHE_KIB: u32 = 16 * 1024;
/// Page size of a new database. Each commit writes every page it touched to the WAL, and a
/// transfer touches a few scattered index pages (its wallets' history tails): 2 KiB pages
/// measured 10% more transfers per second than SQLite's default 4 KiB, and 8 KiB 18% fewer.
/// A database created with another page size keeps it.
pub const PAGE_SIZE_BYTES: u32 = 2048;
/// Size the WAL file is truncated to after a checkpoint resets it: above the size that
/// `WRITER_AUTOCHECKPOINT_BYTES` allows, so a restarted WAL overwrites blocks it already has
/// (a commit that grows the file also has to sync its size).
pub const WAL_SIZE_LIMIT_BYTES: u64 = 256 * 1024 * 1024;
const _: () = assert!(WAL_SIZE_LIMIT_BYTES > WRITER_AUTOCHECKPOINT_BYTES);
// The checkpointer copies the WAL several times within the time a connection waits for a lock.
const _: () = assert!(CHECKPOINT_INTERVAL_MS * 4 <= BUSY_TIMEOUT_MS);

/// Process-wide SQLite settings, applied once before the first connection: memory statistics
/// off. They take a global mutex on every allocation, which measured ~10% of the writer's time.
fn tune_sqlite_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_config is called before any connection exists (the Once runs
        // before `Connection::open` in this module), as SQLite requires; it returns an error
        // code, not UB, if SQLite was already initialised.
        unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS,
                0 as std::os::raw::c_int,
            );
        }
    });
}

/// The lock that makes `serve` the only serving process on a database: an exclusive `flock`
/// on the sidecar file `<db>-serve.lock`, held for the life of the process. Two servers on one
/// file would each trust their own token cache, throttle and idempotency view, and both write;
/// the command-line tools (`verify`, `backup`, `snapshot`, `createsuperuser`) take it only to
/// migrate the schema (`lock_for_migration`), so otherwise they keep working beside a server.
/// `<db>` is the database's canonical path (`canonical_db_path`), so a symlink or another
/// spelling of the path names the same lock. The kernel releases the lock when the process
/// ends, however it ends (SIGKILL included), so a stale file never blocks a restart. The file
/// stays; it holds the pid of the process that last took it, for the error message.
pub struct ServeLock {
    _file: std::fs::File,
}

/// The database's path with symbolic links, `.` and `..` resolved, so that every path to one
/// file names one serve lock. A file not created yet is named by its directory's canonical
/// path (a symbolic link to it is followed first); a path whose directory is missing too is
/// kept as given (opening it fails anyway). Hard links are not recognised.
pub fn canonical_db_path(db: &Path) -> std::path::PathBuf {
    let mut path = db.to_path_buf();
    // A dangling link names the file it will create: follow it, as SQLite does.
    for _ in 0..40 {
        match std::fs::canonicalize(&path) {
            Ok(p) => return p,
            Err(_) => match std::fs::read_link(&path) {
                Ok(target) => {
                    path = match path.parent() {
                        Some(dir) => dir.join(target),
                        None => target,
                    }
                }
                Err(_) => break,
            },
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match (std::fs::canonicalize(dir), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => db.to_path_buf(),
    }
}

pub fn serve_lock_path(db: &Path) -> std::path::PathBuf {
    let mut name = canonical_db_path(db).into_os_string();
    name.push("-serve.lock");
    name.into()
}

/// Takes the serve lock on `db`, or says which process holds it.
pub fn lock_for_serving(db: &Path) -> Result<ServeLock, StartupError> {
    try_lock(db)?.map_err(|holder| {
        StartupError::failed(format!(
            "cannot serve {}: another wallet server{holder} is already serving it (it holds \
             the lock on {}); stop that one first, or serve another --db. `wallet verify`, \
             `backup` and `snapshot` run beside a server",
            db.display(),
            serve_lock_path(db).display()
        ))
    })
}

/// Takes the serve lock for a command-line tool that must migrate the schema (`from` is the
/// database's version), so that no tool changes the schema under a running server, which
/// would go on with the tables it knew. Refused, saying why, while a server holds it.
pub fn lock_for_migration(db: &Path, from: i32) -> Result<ServeLock, StartupError> {
    try_lock(db)?.map_err(|holder| {
        StartupError::failed(format!(
            "cannot migrate {} from schema version {from} to {SCHEMA_VERSION}: a wallet server{holder} \
             is serving it, and a tool never changes the schema under a running server; stop \
             the server and run this again, or upgrade the server first (it migrates at start-up)",
            db.display()
        ))
    })
}

/// The lock, or, when another process holds it, a note naming that process for a message.
fn try_lock(db: &Path) -> Result<Result<ServeLock, String>, StartupError> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let path = serve_lock_path(db);
    // `flock` needs no write access: a lock file left by another user (say root, before the
    // service account took over) is locked through a read-only descriptor, so that the
    // writability checks that follow can name what is really wrong.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => std::fs::File::open(&path).map_err(|_| e),
            _ => Err(e),
        })
        .map_err(|e| {
            StartupError::setting(
                "--db/WALLET_DB",
                format!("cannot open {}: {e}", path.display()),
            )
        })?;
    // SAFETY: flock on a descriptor this function owns; it only changes the lock's state.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(StartupError::setting(
                "--db/WALLET_DB",
                format!("cannot lock {}: {err}", path.display()),
            ));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Ok(Err(match holder.trim().parse::<u32>() {
            Ok(pid) => format!(" (process {pid})"),
            Err(_) => String::new(),
        }));
    }
    // The pid is only for that message: failing to write it changes nothing.
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(Ok(ServeLock { _file: file }))
}

/// The database's schema version (`PRAGMA user_version`; 0 for a new file).
pub fn schema_version(conn: &Connection) -> Result<i32, StartupError> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| StartupError::caused_by("cannot read the database", e))
}

/// Opens a read-write connection with the service's pragmas.
pub fn open(path: &Path, sync: Synchronous) -> rusqlite::Result<Connection> {
    tune_sqlite_once();
    let conn = Connection::open(path)?;
    configure(&conn, sync)?;
    Ok(conn)
}

fn configure(conn: &Connection, sync: Synchronous) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
    // Takes effect only while the file is still empty, before the first write (journal_mode).
    conn.execute_batch(&format!("PRAGMA page_size = {PAGE_SIZE_BYTES}"))?;
    // journal_mode returns a row, so it is read rather than executed.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidQuery);
    }
    // temp_store = MEMORY keeps each savepoint's sub-journal (the pages a job changed, in case
    // it rolls back) in memory instead of a temporary file: 9% more transfers per second.
    // In pages, so a database that kept another page size gets the same WAL budget in bytes.
    let page_bytes: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let autocheckpoint_pages = WRITER_AUTOCHECKPOINT_BYTES / page_bytes.max(512);
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {}; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = {autocheckpoint_pages};
         PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES};",
        sync_pragma(sync)
    ))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Refuses a database path this process cannot write: the file, or its directory (where
/// SQLite creates the `-wal` and `-shm` files beside it). Checked before opening, because
/// SQLite quietly opens a file it cannot write read-only, and the server would then answer
/// every write with an error instead of refusing to start.
pub fn check_writable_path(path: &Path) -> Result<(), StartupError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Err(e) = writable(dir) {
        return Err(StartupError::setting(
            "--db/WALLET_DB",
            format!(
            "cannot write in the directory {} ({e}); SQLite keeps its -wal and -shm files next to \
             the database, so the directory must be writable by the user the server runs as",
            dir.display()
        ),
        ));
    }
    match writable(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(read_only_db(path, &e.to_string()))
        }
        _ => Ok(()),
    }
}

/// Refuses a connection SQLite opened read-only, or one on which a write cannot begin: the
/// checks of `check_writable_path` answer for permissions, not for every way a file can be
/// read-only (a read-only mount, an immutable file), and `root` passes them regardless.
pub fn check_writable(path: &Path, conn: &Connection) -> Result<(), StartupError> {
    if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
        return Err(read_only_db(path, "SQLite could open it for reading only"));
    }
    // A write that is rolled back: in WAL mode nothing reaches the disk.
    conn.execute_batch("BEGIN IMMEDIATE; CREATE TABLE wallet_write_check (x); ROLLBACK;")
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::ReadOnly) => read_only_db(path, &e.to_string()),
                _ => StartupError::setting(
                    "--db/WALLET_DB",
                    format!(
                        "cannot begin a write on {}: {e} (is another program holding it?)",
                        path.display()
                    ),
                ),
            }
        })
}

fn read_only_db(path: &Path, why: &str) -> StartupError {
    StartupError::setting("--db/WALLET_DB", format!(
        "{} is read-only for this process ({why}); the server needs to write it: \
         make it (and its -wal and -shm files) writable by the user the server runs as, or mount its file system read-write",
        path.display()
    ))
}

/// Whether this process may write `path`, by `access(2)`: the kernel's own answer, including a
/// read-only mount.
fn writable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The time stamp of the newest ledger entry, if there is one.
pub fn newest_entry_stamp(conn: &dyn Sql) -> Result<Option<Timestamp>, StartupError> {
    conn.query_opt(
        "SELECT created_at FROM entries ORDER BY seq DESC LIMIT 1",
        &[],
    )
    .and_then(|r| r.map(|r| r.get::<Timestamp>(0)).transpose())
    .map_err(|e| StartupError::failed(format!("cannot read the newest ledger entry: {e:?}")))
}

/// A pool of read-only connections for queries; writes go through the `Writer`.
pub fn reader_pool(path: &Path, size: u32) -> Result<Pool, StartupError> {
    tune_sqlite_once();
    let manager = SqliteConnectionManager::file(path).with_init(|c| {
        c.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
        // 1 MiB of page cache per reader (SQLite's default is 2 MiB): the hot pages are few,
        // and the OS page cache holds the rest.
        c.execute_batch(
            "PRAGMA foreign_keys = ON; PRAGMA query_only = ON; PRAGMA cache_size = -1024;",
        )?;
        c.set_prepared_statement_cache_capacity(64);
        Ok(())
    });
    r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(size.min(4)))
        .connection_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
        .build(manager)
        .map(Pool::Sqlite)
        .map_err(|e| StartupError::caused_by("cannot open database pool", e))
}

/// Applies the schema to a new database, or migrates an older one to the current version in
/// one transaction (all of it or none of it), or checks an existing one is ours and current.
pub fn migrate(conn: &mut Connection) -> Result<(), StartupError> {
    let version = schema_version(conn)?;
    if version < 0 {
        return Err(StartupError::failed(format!(
            "the database has schema version {version}, which no wallet ever wrote; is it another program's?"
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(StartupError::failed(format!(
            "the database has schema version {version}, newer than this binary's {SCHEMA_VERSION}; use a newer wallet"
        )));
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    // Migrations rebuild tables that others reference, which SQLite allows only with foreign
    // keys off; `foreign_key_check` below proves nothing was left dangling. The pragma is a
    // no-op inside a transaction, so it is set before the transaction starts.
    conn.execute_batch("PRAGMA foreign_keys = OFF")
        .map_err(|e| StartupError::failed(e.to_string()))?;
    let result = migrate_in_transaction(conn, version);
    conn.execute_batch("PRAGMA foreign_keys = ON")
        .map_err(|e| StartupError::failed(e.to_string()))?;
    result.map_err(StartupError::failed)
}

fn migrate_in_transaction(conn: &mut Connection, version: i32) -> Result<(), String> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
        .map_err(|e| format!("cannot lock the database to migrate it: {e}"))?;
    if version == 0 {
        let tables: i64 = tx
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())?;
        if tables > 0 {
            return Err("the database file holds tables but no wallet schema version; is it another program's?".into());
        }
        tx.execute_batch(SCHEMA_SQL)
            .map_err(|e| format!("cannot apply schema.sql: {e}"))?;
    } else {
        for (from, step) in MIGRATIONS.iter().enumerate().skip(version as usize - 1) {
            let failed = |e: String| {
                format!(
                    "cannot migrate the database from schema version {}: {e}; the database is unchanged",
                    from + 1
                )
            };
            if let Some(prepare) = step.prepare {
                prepare(&tx).map_err(failed)?;
            }
            tx.execute_batch(step.sql)
                .map_err(|e| failed(e.to_string()))?;
        }
        let dangling: i64 = tx
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .map_err(|e| e.to_string())?;
        if dangling > 0 {
            return Err(format!(
                "migration left {dangling} rows referring to missing rows; the database is unchanged"
            ));
        }
    }
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
        .map_err(|e| e.to_string())?;
    tx.commit()
        .map_err(|e| format!("cannot commit the schema: {e}"))
}

/// Records the configured currencies, and refuses a configuration that would misread stored
/// money: a currency that money has been kept in must stay configured, with its scale
/// (stored minor units mean nothing at another scale). A new currency is always welcome. The
/// first start also records the default currency in `settings`.
///
/// On PostgreSQL several processes serve one database, and another may be serving it now:
/// every process must have the database's default currency (the first process's, kept in
/// `settings`) as its default, so that a request naming no currency means the same on each,
/// and a stored currency keeps its scale even before it holds money.
pub fn check_currencies(conn: &dyn Sql, currencies: &Currencies) -> Result<(), StartupError> {
    let failed = |e: AppError| StartupError::failed(format!("cannot read the settings: {e:?}"));
    let setting = "--currencies/--currency";
    let default = currencies.default_currency();
    conn.execute(
        "INSERT INTO settings (id, currency, scale) VALUES (1, ?1, ?2) ON CONFLICT (id) DO NOTHING",
        &[&default.code, &default.scale],
    )
    .map_err(failed)?;
    let shared = conn.engine() == crate::store::Engine::Postgres;
    if shared {
        let recorded: String = conn
            .query_one("SELECT currency FROM settings WHERE id = 1", &[])
            .and_then(|r| r.get(0))
            .map_err(failed)?;
        if recorded != default.code {
            return Err(StartupError::setting(
                setting,
                format!(
                    "the database's default currency is {recorded}; every server on a PostgreSQL \
                     database has it first (a request naming no currency must mean the same on \
                     each), not {}",
                    default.code
                ),
            ));
        }
    }
    let stored: Vec<(String, u32)> = conn
        .query("SELECT code, scale FROM currencies ORDER BY code", &[])
        .map_err(failed)?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?)))
        .collect::<Result<_, AppError>>()
        .map_err(failed)?;
    for (code, scale) in &stored {
        let has_money = conn
            .query_opt(
                "SELECT wallet_key FROM balances WHERE currency = ?1 LIMIT 1",
                &[code],
            )
            .map_err(failed)?
            .is_some();
        match currencies.get(code) {
            Some(c) if c.scale == *scale => {}
            Some(c) if has_money || shared => {
                return Err(StartupError::setting(
                    setting,
                    format!(
                        "the database holds money in {code} with {scale} fractional digits; \
                         its scale cannot become {} (list it as {code}:{scale})",
                        c.scale
                    ),
                ))
            }
            Some(c) => {
                conn.execute(
                    "UPDATE currencies SET scale = ?2 WHERE code = ?1",
                    &[code, &c.scale],
                )
                .map_err(failed)?;
            }
            None if has_money => {
                return Err(StartupError::setting(
                    setting,
                    format!(
                        "the database holds money in {code} ({code}:{scale}); a currency that \
                         holds money cannot be dropped from the list"
                    ),
                ))
            }
            None => {}
        }
    }
    for c in currencies.iter() {
        conn.execute(
            "INSERT INTO currencies (code, scale) VALUES (?1, ?2) ON CONFLICT (code) DO NOTHING",
            &[&c.code, &c.scale],
        )
        .map_err(failed)?;
    }
    Ok(())
}

/// The stored currencies, for tools that run without the server's flags: every currency money
/// has been kept in, the database's first default first.
pub fn stored_currencies(conn: &dyn Sql) -> Result<Currencies, String> {
    let err = |e: AppError| format!("{e:?}");
    let first: Option<String> = conn
        .query_opt("SELECT currency FROM settings WHERE id = 1", &[])
        .map_err(err)?
        .map(|r| r.get(0))
        .transpose()
        .map_err(err)?;
    let mut list: Vec<(String, u32)> = conn
        .query("SELECT code, scale FROM currencies ORDER BY code", &[])
        .map_err(err)?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?)))
        .collect::<Result<_, AppError>>()
        .map_err(err)?;
    list.sort_by_key(|(code, _)| Some(code) != first.as_ref());
    if list.is_empty() {
        list.push(("USD".into(), 2));
    }
    let spec: Vec<String> = list.iter().map(|(c, s)| format!("{c}:{s}")).collect();
    Currencies::parse(&spec.join(","), 1_000_000_000)
}

/// Runs a closure in one write transaction. The server's `Writer` is one; `DirectWriter` is the
/// other, for command-line tools that run beside a live server (they wait on its lock).
pub trait Exec {
    fn exec<T, F>(&self, f: F) -> Result<T, crate::error::AppError>
    where
        T: Send + 'static,
        F: FnOnce(
                &dyn crate::store::Sql,
                crate::domain::Timestamp,
            ) -> Result<T, crate::error::AppError>
            + Send
            + 'static;
}

impl Exec for Writer {
    fn exec<T, F>(&self, f: F) -> Result<T, crate::error::AppError>
    where
        T: Send + 'static,
        F: FnOnce(
                &dyn crate::store::Sql,
                crate::domain::Timestamp,
            ) -> Result<T, crate::error::AppError>
            + Send
            + 'static,
    {
        self.execute(f)
    }
}

/// One transaction per call on a connection of its own, for command-line tools: SQLite's
/// `BEGIN IMMEDIATE … COMMIT` (waiting on a running server's lock), or PostgreSQL's.
pub struct DirectWriter {
    conn: std::sync::Mutex<DirectConn>,
    clock: crate::clock::SharedClock,
}

enum DirectConn {
    Sqlite(Connection),
    // Boxed: a PostgreSQL client is three times the size of a SQLite handle.
    Postgres(Box<crate::store::postgres::PgConn>),
}

impl DirectWriter {
    pub fn new(conn: Connection, clock: crate::clock::SharedClock) -> DirectWriter {
        DirectWriter {
            conn: std::sync::Mutex::new(DirectConn::Sqlite(conn)),
            clock,
        }
    }

    pub fn postgres(
        conn: crate::store::postgres::PgConn,
        clock: crate::clock::SharedClock,
    ) -> DirectWriter {
        DirectWriter {
            conn: std::sync::Mutex::new(DirectConn::Postgres(Box::new(conn))),
            clock,
        }
    }
}

impl Exec for DirectWriter {
    fn exec<T, F>(&self, f: F) -> Result<T, crate::error::AppError>
    where
        T: Send + 'static,
        F: FnOnce(
                &dyn crate::store::Sql,
                crate::domain::Timestamp,
            ) -> Result<T, crate::error::AppError>
            + Send
            + 'static,
    {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *conn {
            DirectConn::Sqlite(conn) => {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let value = f(&*tx, self.clock.now())?;
                tx.commit()?;
                Ok(value)
            }
            DirectConn::Postgres(conn) => {
                conn.batch("BEGIN")?;
                match f(&**conn, self.clock.now()) {
                    Ok(value) => conn.batch("COMMIT").map(|()| value),
                    Err(e) => {
                        let _ = conn.batch("ROLLBACK");
                        Err(e)
                    }
                }
            }
        }
    }
}

/// Copies the WAL back into the database file on its own thread and connection, every
/// `CHECKPOINT_INTERVAL_MS`, so the writer's commits never pay for it. A passive checkpoint
/// runs beside the writer and readers without blocking them.
pub fn start_checkpointer(
    path: &Path,
    sync: Synchronous,
    wakeup: std::sync::Arc<crate::clock::Wakeup>,
) -> Result<std::thread::JoinHandle<()>, StartupError> {
    let conn = open(path, sync)
        .map_err(|e| StartupError::caused_by("cannot open the checkpointer's connection", e))?;
    std::thread::Builder::new()
        .name("checkpointer".into())
        .spawn(move || {
            // A failure that repeats (a full disk fails every checkpoint) is logged once, not
            // four times a second.
            let mut failing: Option<String> = None;
            while wakeup.sleep(Duration::from_millis(CHECKPOINT_INTERVAL_MS)) {
                match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    Err(e) if failing.as_deref() != Some(&e.to_string()) => {
                        crate::log::error(&format!("checkpoint: {e}"));
                        failing = Some(e.to_string());
                    }
                    Err(_) => {}
                    Ok(()) => {
                        if failing.take().is_some() {
                            crate::log::info("checkpoint: works again");
                        }
                    }
                }
            }
        })
        .map_err(|e| StartupError::caused_by("cannot start the checkpointer", e))
}
