//! `wallet copy --from <db> --to <db>`: moves a whole ledger to a new database of either engine
//! (SQLite file or PostgreSQL), with every id, time stamp and hash unchanged, then runs
//! `verify` on the copy.
//!
//! - The source is read in one consistent read transaction, so a copy taken beside a running
//!   server is a snapshot of one moment. On PostgreSQL every committed entry is first sealed
//!   into the hash chain (`jobs::sealer::seal_committed`); a snapshot that still holds an
//!   unsealed entry is refused, since the copy must carry every hash.
//! - The target must be new: a SQLite file that does not exist (or is empty), or a PostgreSQL
//!   database with no table in its current schema. It is written in one transaction, schema
//!   included, so a failure leaves it as it was; a SQLite file this command created is
//!   removed again, with its `-wal` and `-shm`.
//! - Rows are read and written a page at a time (`COPY_PAGE_ROWS`, by primary key), so memory
//!   does not grow with the ledger: one statement per row on SQLite, one per page on
//!   PostgreSQL (the rows as a JSON array; a round trip per row would cost more than the rest
//!   of the copy). Tables go in an order that satisfies their foreign keys, entries in position
//!   order; each wallet gets its final balance after its entries (`insert_entries` says how
//!   the trigger `entries_balance_follows` is met on each engine).
//! - What only PostgreSQL has is derived: `chain_head` (the last entry), the sequences (past the
//!   largest id) and `wallets.stamp_floor` (the wallet's newest entry's time stamp, or the
//!   source's own on a PostgreSQL source).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::db::{self, Synchronous};
use crate::error::{AppError, StartupError};
use crate::ledger::entries::GENESIS_HASH;
use crate::store::postgres::{self, PgConn};
use crate::store::{Engine, Param, Row, Sql, Target, ToParam, Value};
use crate::verify::{verify_target, VerifyReport};

/// Rows read per statement (and written per statement on PostgreSQL).
pub const COPY_PAGE_ROWS: u32 = 4_096;

/// How a column is stored: SQLite's INTEGER, TEXT and BLOB; PostgreSQL's BIGINT, TEXT and
/// BYTEA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Int,
    Text,
    Blob,
}
use Type::{Blob, Int, Text};

impl Type {
    fn postgres(self) -> &'static str {
        match self {
            Int => "bigint",
            Text => "text",
            Blob => "bytea",
        }
    }
}

/// A table as the copy reads and writes it: the columns both engines have.
struct Table {
    name: &'static str,
    /// The primary key, which orders the pages; its columns are among `columns`.
    key: &'static [&'static str],
    columns: &'static [(&'static str, Type)],
}

const SETTINGS: Table = Table {
    name: "settings",
    key: &["id"],
    columns: &[
        ("id", Int),
        ("currency", Text),
        ("scale", Int),
        ("chain_currency_from", Int),
    ],
};
const CURRENCIES: Table = Table {
    name: "currencies",
    key: &["code"],
    columns: &[("code", Text), ("scale", Int)],
};
const USERS: Table = Table {
    name: "users",
    key: &["id"],
    columns: &[
        ("id", Int),
        ("username", Text),
        ("username_key", Text),
        ("email", Text),
        ("email_key", Text),
        ("password_hash", Text),
        ("first_name", Text),
        ("last_name", Text),
        ("is_staff", Int),
        ("date_joined", Text),
    ],
};
const TOKENS: Table = Table {
    name: "tokens",
    key: &["id"],
    columns: &[
        ("id", Int),
        ("user_id", Int),
        ("token_hash", Blob),
        ("created_at", Text),
        ("expires_at", Text),
        ("revoked_at", Text),
    ],
};
const CONSOLE_SESSIONS: Table = Table {
    name: "console_sessions",
    key: &["id"],
    columns: &[
        ("id", Int),
        ("user_id", Int),
        ("session_hash", Blob),
        ("created_at", Text),
        ("expires_at", Text),
        ("revoked_at", Text),
    ],
};
const WALLETS: Table = Table {
    name: "wallets",
    key: &["key"],
    columns: &[
        ("key", Int),
        ("id", Text),
        ("user_id", Int),
        ("created_at", Text),
        ("frozen_at", Text),
        ("frozen_reason", Text),
    ],
};
const BALANCES: Table = Table {
    name: "balances",
    key: &["wallet_key", "currency"],
    columns: &[
        ("wallet_key", Int),
        ("currency", Text),
        ("balance", Int),
        ("held", Int),
        ("last_balance", Int),
        ("last_balance_update", Text),
        ("frozen", Int),
    ],
};
/// The positions of `balance` and `held` in `BALANCES.columns`.
const BALANCE_BALANCE: usize = 2;
const BALANCE_HELD: usize = 3;
const ENTRIES: Table = Table {
    name: "entries",
    key: &["seq"],
    columns: &[
        ("seq", Int),
        ("id", Text),
        ("wallet_key", Int),
        ("kind", Text),
        ("amount", Int),
        ("balance_after", Int),
        ("reference", Text),
        ("counterparty_user_id", Int),
        ("transfer_id", Text),
        ("metadata", Text),
        ("created_at", Text),
        ("hash", Blob),
        ("currency", Text),
        ("reverses", Text),
    ],
};
/// The positions of `wallet_key`, `balance_after`, `hash` and `currency` in `ENTRIES.columns`.
const ENTRY_WALLET: usize = 2;
const ENTRY_BALANCE_AFTER: usize = 5;
const ENTRY_HASH: usize = 11;
const ENTRY_CURRENCY: usize = 12;
const HOLDS: Table = Table {
    name: "holds",
    key: &["key"],
    columns: &[
        ("key", Int),
        ("id", Text),
        ("wallet_key", Int),
        ("currency", Text),
        ("amount", Int),
        ("reference", Text),
        ("to_user_id", Int),
        ("metadata", Text),
        ("status", Text),
        ("expires_at", Text),
        ("created_at", Text),
        ("updated_at", Text),
        ("captured_amount", Int),
        ("out_entry_id", Text),
        ("in_entry_id", Text),
    ],
};
const WITHDRAWALS: Table = Table {
    name: "withdrawals",
    key: &["id"],
    columns: &[
        ("id", Text),
        ("wallet_id", Text),
        ("amount", Int),
        ("reference", Text),
        ("metadata", Text),
        ("status", Text),
        ("scheduled_at", Text),
        ("next_attempt_at", Text),
        ("attempts", Int),
        ("error_message", Text),
        ("created_at", Text),
        ("updated_at", Text),
        ("transaction_id", Text),
        ("refund_transaction_id", Text),
        ("outcome_unknown_since", Text),
        ("payout_call_started_at", Text),
        ("currency", Text),
    ],
};
const SNAPSHOT_RUNS: Table = Table {
    name: "snapshot_runs",
    key: &["id"],
    columns: &[
        ("id", Int),
        ("cutoff", Text),
        ("started_at", Text),
        ("finished_at", Text),
        ("wallets", Int),
        ("mismatches", Int),
    ],
};
const BALANCE_SNAPSHOTS: Table = Table {
    name: "balance_snapshots",
    key: &["wallet_id", "currency", "taken_at"],
    columns: &[
        ("wallet_id", Text),
        ("taken_at", Text),
        ("balance", Int),
        ("running", Int),
        ("run_id", Int),
        ("currency", Text),
    ],
};
const AUDIT_LOG: Table = Table {
    name: "audit_log",
    key: &["id"],
    columns: &[
        ("id", Int),
        ("staff_user_id", Int),
        ("action", Text),
        ("target", Text),
        ("detail", Text),
        ("created_at", Text),
        ("reason", Text),
    ],
};

/// Every table copied, in an order that satisfies the foreign keys: a row is written after
/// the rows it refers to.
const TABLES: [&Table; 13] = [
    &SETTINGS,
    &CURRENCIES,
    &USERS,
    &TOKENS,
    &CONSOLE_SESSIONS,
    &WALLETS,
    &BALANCES,
    &ENTRIES,
    &HOLDS,
    &WITHDRAWALS,
    &SNAPSHOT_RUNS,
    &BALANCE_SNAPSHOTS,
    &AUDIT_LOG,
];

/// Tables the copy does not read: `storage_probe` is always empty (a probe row never outlives
/// its transaction); PostgreSQL's `schema_version` and `chain_head` are written by its schema
/// and derived from the entries.
const TABLES_NOT_COPIED: [&str; 3] = ["storage_probe", "schema_version", "chain_head"];

/// Columns only PostgreSQL has, derived on a SQLite source (see the module's comment).
const POSTGRES_ONLY_COLUMNS: [(&str, &str); 1] = [("wallets", "stamp_floor")];

/// The columns of `table` with an identity (PostgreSQL), whose sequence is set past the
/// largest value copied.
const IDENTITIES: [(&str, &str); 8] = [
    ("users", "id"),
    ("tokens", "id"),
    ("console_sessions", "id"),
    ("wallets", "key"),
    ("holds", "key"),
    ("snapshot_runs", "id"),
    ("audit_log", "id"),
    ("storage_probe", "id"),
];

/// What `copy` did.
#[derive(Debug)]
pub struct CopyReport {
    /// Rows copied per table, in the order they were written.
    pub rows: Vec<(&'static str, u64)>,
    /// The last entry's position and hash: the chain's head (0 and the genesis hash when the
    /// ledger has no entry).
    pub chain_head: (i64, [u8; 32]),
    /// Reading the source and writing the target, until the target's commit.
    pub took: Duration,
    /// Things the operator should know that did not stop the copy.
    pub warnings: Vec<String>,
    /// `verify` on the target, after the commit.
    pub verify: VerifyReport,
}

/// `wallet copy`: copies, then prints the counts and `verify`'s result. `Ok(false)` (exit 1)
/// when the copy does not verify.
pub fn run(from: &Target, to: &Target) -> Result<bool, StartupError> {
    let report = copy(from, to)?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "copied {from} to {to} in {:.3}s:",
        report.took.as_secs_f64()
    );
    for (table, rows) in &report.rows {
        println!("  {table:<18} {rows:>12} rows");
    }
    println!(
        "chain head: entry seq {}, hash {}",
        report.chain_head.0,
        hex(&report.chain_head.1)
    );
    let v = &report.verify;
    println!(
        "verified {} entries in {} wallets of the copy in {:.3}s: {}",
        v.entries,
        v.wallets,
        v.took.as_secs_f64(),
        if v.ok() {
            "ok".to_string()
        } else {
            format!("{} findings", v.findings_total)
        }
    );
    for f in &v.findings {
        println!("finding: {f}");
    }
    if !v.ok() {
        println!(
            "the copy is written but does not verify; run `wallet verify` on the source: a \
             copy carries the source's rows unchanged, so it most likely has the same findings"
        );
    }
    Ok(v.ok())
}

/// Copies the ledger in `from` into the new database `to`, then verifies `to`. Refuses a
/// target that holds anything, the same database twice, and a source whose schema is not
/// this binary's; on any failure the target is left as it was.
pub fn copy(from: &Target, to: &Target) -> Result<CopyReport, StartupError> {
    let started = Instant::now();
    if let (Target::Sqlite(a), Target::Sqlite(b)) = (from, to) {
        if db::canonical_db_path(a) == db::canonical_db_path(b) {
            return Err(StartupError::setting(
                "--to",
                format!("{} is the same database as --from", b.display()),
            ));
        }
    }
    let source = Source::open(from)?;
    source.check_version(from)?;
    let mut warnings = source.warnings(from)?;
    let destination = Destination::open(to, &source)?;
    source.begin_read(from)?;
    source.check_tables(from)?;
    let written = destination.write(&source).map_err(|e| match e {
        AppError::Internal(cause) => {
            StartupError::caused_by(format!("cannot copy to {to}; it is left as it was"), cause)
        }
        other => StartupError::failed(format!(
            "cannot copy to {to}; it is left as it was: {other:?}"
        )),
    })?;
    let took = started.elapsed();
    source.end_read();
    let verify = verify_target(to).map_err(|e| match e {
        AppError::Internal(cause) => StartupError::caused_by(
            format!("the copy is written, but verify failed to read {to}"),
            cause,
        ),
        other => StartupError::failed(format!(
            "the copy is written, but verify failed to read {to}: {other:?}"
        )),
    })?;
    if verify.unsealed > 0 {
        warnings.push(format!(
            "{} entries of {to} were written unsealed since the copy",
            verify.unsealed
        ));
    }
    Ok(CopyReport {
        rows: written.rows,
        chain_head: written.chain_head,
        took,
        warnings,
        verify,
    })
}

/// The database being read.
enum Source {
    Sqlite(Connection, PathBuf),
    Postgres(Box<PgConn>),
}

impl Source {
    fn open(from: &Target) -> Result<Source, StartupError> {
        match from {
            Target::Sqlite(path) => {
                if !path.is_file() {
                    return Err(StartupError::setting(
                        "--from",
                        format!("{} is not a database file", path.display()),
                    ));
                }
                // Without SQLITE_OPEN_CREATE, and query_only: the copy never writes its source.
                let conn = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .and_then(|c| {
                    c.busy_timeout(Duration::from_millis(db::BUSY_TIMEOUT_MS))?;
                    c.execute_batch("PRAGMA query_only = ON")?;
                    Ok(c)
                })
                .map_err(|e| {
                    StartupError::setting("--from", format!("cannot open {}: {e}", path.display()))
                })?;
                Ok(Source::Sqlite(conn, path.clone()))
            }
            Target::Postgres(url) => PgConn::connect(url)
                .map(|c| Source::Postgres(Box::new(c)))
                .map_err(|e| {
                    StartupError::setting(
                        "--from",
                        format!("cannot connect to {from}: {}", with_causes(&e)),
                    )
                }),
        }
    }

    fn sql(&self) -> &dyn Sql {
        match self {
            Source::Sqlite(conn, _) => conn,
            Source::Postgres(conn) => &**conn,
        }
    }

    /// The source must have this binary's schema: the copy knows this version's columns, and
    /// writes this version's schema.
    fn check_version(&self, from: &Target) -> Result<(), StartupError> {
        let read = |e: AppError| StartupError::failed(format!("cannot read {from}: {e:?}"));
        let (version, current) = match self {
            Source::Sqlite(conn, _) => (
                i64::from(db::schema_version(conn)?),
                i64::from(db::SCHEMA_VERSION),
            ),
            Source::Postgres(conn) => {
                let has_schema: i64 = conn
                    .query_one(
                        "SELECT count(*) FROM information_schema.tables
                         WHERE table_schema = current_schema() AND table_name = 'schema_version'",
                        &[],
                    )
                    .and_then(|r| r.get(0))
                    .map_err(read)?;
                let version = if has_schema == 0 {
                    0
                } else {
                    conn.query_one("SELECT version FROM schema_version", &[])
                        .and_then(|r| r.get(0))
                        .map_err(read)?
                };
                (version, postgres::SCHEMA_VERSION)
            }
        };
        if version == 0 {
            return Err(StartupError::setting(
                "--from",
                format!("{from} holds no wallet ledger"),
            ));
        }
        if version < current {
            return Err(StartupError::failed(format!(
                "{from} has schema version {version}, older than this binary's {current}: start \
                 this version's server on it once (it migrates the schema at start-up), stop it, \
                 then copy"
            )));
        }
        if version > current {
            return Err(StartupError::failed(format!(
                "{from} has schema version {version}, newer than this binary's {current}; use a \
                 newer wallet"
            )));
        }
        Ok(())
    }

    /// A copy of a ledger still being written holds what was committed when it began: fine
    /// for a trial, not for moving the ledger. Said, not refused.
    fn warnings(&self, from: &Target) -> Result<Vec<String>, StartupError> {
        let mut warnings = Vec::new();
        match self {
            Source::Sqlite(_, path) => {
                // Taken only where a server has run (its lock file exists), and released at
                // once: held, it would keep a server from starting for the copy's duration.
                let served = db::serve_lock_path(path).exists()
                    && matches!(db::lock_for_serving(path), Err(StartupError::Failed(_)));
                if served {
                    warnings.push(format!(
                        "a wallet server is serving {from}: the copy holds what was committed \
                         when it began; stop the server before moving the ledger"
                    ));
                }
            }
            Source::Postgres(conn) => {
                let others: i64 = conn
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity
                         WHERE datname = current_database() AND pid <> pg_backend_pid()",
                        &[],
                    )
                    .and_then(|r| r.get(0))
                    .map_err(|e| StartupError::failed(format!("cannot read {from}: {e:?}")))?;
                if others > 0 {
                    warnings.push(format!(
                        "{others} other sessions are connected to {from}: the copy holds what \
                         was committed when it began; stop the servers before moving the ledger"
                    ));
                }
            }
        }
        Ok(warnings)
    }

    /// Starts the read transaction the whole copy reads in.
    fn begin_read(&self, from: &Target) -> Result<(), StartupError> {
        let failed = |e: AppError| StartupError::failed(format!("cannot read {from}: {e:?}"));
        match self {
            Source::Sqlite(conn, _) => {
                // A deferred transaction's snapshot is taken by its first read.
                conn.execute_batch("BEGIN")
                    .and_then(|()| conn.query_row("SELECT count(*) FROM entries", [], |_| Ok(())))
                    .map_err(|e| StartupError::failed(format!("cannot read {from}: {e}")))
            }
            Source::Postgres(conn) => {
                crate::jobs::sealer::seal_committed(&**conn).map_err(failed)?;
                conn.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .map_err(failed)?;
                let unsealed: i64 = conn
                    .query_one("SELECT count(*) FROM entries WHERE hash IS NULL", &[])
                    .and_then(|r| r.get(0))
                    .map_err(failed)?;
                if unsealed > 0 {
                    return Err(StartupError::failed(format!(
                        "{unsealed} entries of {from} are not sealed into the hash chain yet, and \
                         a copy carries every entry's hash: stop the servers writing to it (their \
                         sealer finishes within seconds), then copy again"
                    )));
                }
                Ok(())
            }
        }
    }

    fn end_read(&self) {
        let _ = match self {
            Source::Sqlite(conn, _) => conn.execute_batch("COMMIT").map_err(AppError::from),
            Source::Postgres(conn) => conn.batch("COMMIT"),
        };
    }

    /// Refuses a source with a table or column the copy does not know (a schema changed
    /// without this file), rather than leave it behind.
    fn check_tables(&self, from: &Target) -> Result<(), StartupError> {
        let sql = self.sql();
        let failed = |e: AppError| StartupError::failed(format!("cannot read {from}: {e:?}"));
        let (tables_sql, columns_sql) = match sql.engine() {
            Engine::Sqlite => (
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite!_%' ESCAPE '!'",
                "SELECT name FROM pragma_table_info(?1)",
            ),
            Engine::Postgres => (
                "SELECT CAST(table_name AS TEXT) FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns
                 WHERE table_schema = current_schema() AND CAST(table_name AS TEXT) = ?1",
            ),
        };
        let mut unknown = Vec::new();
        for row in sql.query(tables_sql, &[]).map_err(failed)? {
            let table: String = row.get(0).map_err(failed)?;
            let Some(known) = TABLES.iter().find(|t| t.name == table) else {
                if !TABLES_NOT_COPIED.contains(&table.as_str()) {
                    unknown.push(format!("table {table}"));
                }
                continue;
            };
            for row in sql.query(columns_sql, &[&table]).map_err(failed)? {
                let column: String = row.get(0).map_err(failed)?;
                let copied = known.columns.iter().any(|(c, _)| *c == column);
                let derived = POSTGRES_ONLY_COLUMNS.contains(&(known.name, column.as_str()));
                if !copied && !derived {
                    unknown.push(format!("column {table}.{column}"));
                }
            }
        }
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(StartupError::failed(format!(
                "{from} has what this wallet's copy does not know ({}); copy it with the wallet \
                 that wrote it",
                unknown.join(", ")
            )))
        }
    }
}

/// The new database being written.
enum Destination {
    Sqlite(NewFile),
    Postgres(Box<PgConn>),
}

/// What the write produced.
struct Written {
    rows: Vec<(&'static str, u64)>,
    chain_head: (i64, [u8; 32]),
}

impl Destination {
    /// Checks the target holds nothing (and is not the source), and for SQLite creates the
    /// file.
    fn open(to: &Target, source: &Source) -> Result<Destination, StartupError> {
        match to {
            Target::Sqlite(path) => NewFile::create(path).map(Destination::Sqlite),
            Target::Postgres(url) => {
                let conn = PgConn::connect(url).map_err(|e| {
                    StartupError::setting(
                        "--to",
                        format!("cannot connect to {to}: {}", with_causes(&e)),
                    )
                })?;
                let failed = |e: AppError| StartupError::failed(format!("cannot read {to}: {e:?}"));
                if let Source::Postgres(from) = source {
                    if same_postgres(from, &conn).map_err(failed)? {
                        return Err(StartupError::setting(
                            "--to",
                            format!("{to} is the same database as --from"),
                        ));
                    }
                }
                let row = conn
                    .query_one(
                        "SELECT count(*), CAST(current_schema() AS TEXT) FROM information_schema.tables
                         WHERE table_schema = current_schema()",
                        &[],
                    )
                    .map_err(failed)?;
                let (tables, schema): (i64, Option<String>) =
                    (row.get(0).map_err(failed)?, row.get(1).map_err(failed)?);
                if tables > 0 {
                    return Err(StartupError::setting(
                        "--to",
                        format!(
                            "{to} is not empty (schema {} has {tables} tables); wallet copy writes \
                             only into an empty database: create a new one",
                            schema.unwrap_or_default()
                        ),
                    ));
                }
                Ok(Destination::Postgres(Box::new(conn)))
            }
        }
    }

    fn write(self, source: &Source) -> Result<Written, AppError> {
        match self {
            Destination::Sqlite(file) => {
                let written = write_sqlite(&file.path, source)?;
                file.keep();
                Ok(written)
            }
            Destination::Postgres(conn) => {
                conn.batch("BEGIN")?;
                let written = (|| {
                    // Inside the copy's transaction, so a failure leaves no table behind.
                    conn.batch(postgres::SCHEMA)?;
                    let written = copy_rows(source.sql(), &*conn)?;
                    finish_postgres(&conn, written.chain_head)?;
                    conn.batch("COMMIT")?;
                    Ok(written)
                })();
                if written.is_err() {
                    let _ = conn.batch("ROLLBACK");
                }
                written
            }
        }
    }
}

/// Writes the schema and every row into the new file `path` in one transaction.
fn write_sqlite(path: &Path, source: &Source) -> Result<Written, AppError> {
    let conn = db::open(path, Synchronous::Full)?;
    conn.execute_batch("BEGIN IMMEDIATE")?;
    conn.execute_batch(db::SCHEMA_SQL)?;
    conn.execute_batch(&format!("PRAGMA user_version = {}", db::SCHEMA_VERSION))?;
    let written = copy_rows(source.sql(), &conn)?;
    conn.execute_batch("COMMIT")?;
    // Closing the last connection checkpoints the WAL into the file and removes it.
    conn.close().map_err(|(_, e)| AppError::from(e))?;
    Ok(written)
}

/// A SQLite file this copy writes: removed again (with its `-wal` and `-shm`) unless `keep`
/// is called, so a failed or interrupted copy leaves nothing behind. An empty file that was
/// there before is left empty.
struct NewFile {
    path: PathBuf,
    created: bool,
    kept: bool,
}

impl NewFile {
    fn create(path: &Path) -> Result<NewFile, StartupError> {
        let refuse = |why: String| Err(StartupError::setting("--to", why));
        let wal = sidecar(path, "-wal");
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
            return refuse(format!(
                "{} is left from another database; remove it, or name another file",
                wal.display()
            ));
        }
        let created = match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                return refuse(format!(
                    "{} is a directory; name the file to create",
                    path.display()
                ))
            }
            Ok(m) if m.len() > 0 => {
                return refuse(format!(
                    "{} already exists and is not empty; wallet copy writes only a new database \
                     (remove it, or name another file)",
                    path.display()
                ))
            }
            Ok(_) => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(|e| {
                        StartupError::setting(
                            "--to",
                            format!("cannot create {}: {e}", path.display()),
                        )
                    })?;
                true
            }
            Err(e) => return refuse(format!("cannot read {}: {e}", path.display())),
        };
        Ok(NewFile {
            path: path.to_path_buf(),
            created,
            kept: false,
        })
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for suffix in ["-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(sidecar(&self.path, suffix));
        }
        if self.created {
            let _ = std::fs::remove_file(&self.path);
        } else {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .open(&self.path)
                .and_then(|f| f.set_len(0));
        }
    }
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    name.into()
}

/// Whether two connections reach the same PostgreSQL database and schema: the source's own
/// session is looked for among the target's sessions (a process id and start time are unique
/// on a server).
fn same_postgres(source: &PgConn, target: &PgConn) -> Result<bool, AppError> {
    let me = source.query_one(
        "SELECT pid, CAST(datname AS TEXT), CAST(backend_start AS TEXT), CAST(current_schema() AS TEXT)
         FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        &[],
    )?;
    let (pid, datname, started, schema): (i64, Option<String>, Option<String>, Option<String>) =
        (me.get(0)?, me.get(1)?, me.get(2)?, me.get(3)?);
    let seen: i64 = target
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE pid = ?1 AND CAST(datname AS TEXT) = ?2 AND CAST(backend_start AS TEXT) = ?3
                 AND CAST(current_schema() AS TEXT) = ?4",
            &[&pid, &datname, &started, &schema],
        )?
        .get(0)?;
    Ok(seen > 0)
}

/// Copies every table from `src` into `dst` (inside the caller's transaction on both).
fn copy_rows(src: &dyn Sql, dst: &dyn Sql) -> Result<Written, AppError> {
    let mut rows = Vec::with_capacity(TABLES.len());
    let mut chain_head = (0, GENESIS_HASH);
    // The table was created in this transaction, which alone sees it: disabled only here, and
    // enabled again before the commit (see `insert_entries`).
    if dst.engine() == Engine::Postgres {
        dst.execute(
            "ALTER TABLE entries DISABLE TRIGGER entries_balance_follows",
            &[],
        )?;
    }
    for table in TABLES {
        let copied = match table.name {
            "balances" => for_each_page(src, table, |page| {
                // At zero: on SQLite each entry sets the balance it follows from; the final
                // balances (and what holds reserve) are written after the entries.
                let at_zero: Vec<Row> = page
                    .iter()
                    .map(|r| {
                        let mut values = r.0.clone();
                        values[BALANCE_BALANCE] = Value::Int(0);
                        values[BALANCE_HELD] = Value::Int(0);
                        Row(values)
                    })
                    .collect();
                insert(dst, table, &at_zero)
            })?,
            "entries" => for_each_page(src, table, |page| {
                if let Some(last) = page.last() {
                    chain_head = (last.get(0)?, last.get(ENTRY_HASH)?);
                }
                insert_entries(dst, page)
            })?,
            _ => for_each_page(src, table, |page| insert(dst, table, page))?,
        };
        rows.push((table.name, copied));
    }
    set_final_balances(src, dst)?;
    if dst.engine() == Engine::Postgres {
        dst.execute(
            "ALTER TABLE entries ENABLE TRIGGER entries_balance_follows",
            &[],
        )?;
    }
    Ok(Written { rows, chain_head })
}

/// Calls `write` with each page of `table`'s rows in key order; returns how many rows there
/// were.
fn for_each_page(
    src: &dyn Sql,
    table: &Table,
    mut write: impl FnMut(&[Row]) -> Result<(), AppError>,
) -> Result<u64, AppError> {
    let columns = column_list(table, "");
    let order = table.key.join(", ");
    let key_at: Vec<usize> = table
        .key
        .iter()
        .map(|k| {
            table
                .columns
                .iter()
                .position(|(c, _)| c == k)
                .expect("a key column is a column")
        })
        .collect();
    let first = format!(
        "SELECT {columns} FROM {} ORDER BY {order} LIMIT ?1",
        table.name
    );
    let keys: Vec<String> = (1..=table.key.len()).map(|i| format!("?{i}")).collect();
    let next = format!(
        "SELECT {columns} FROM {} WHERE ({order}) > ({}) ORDER BY {order} LIMIT ?{}",
        table.name,
        keys.join(", "),
        table.key.len() + 1
    );
    let mut copied = 0u64;
    let mut after: Option<Vec<Value>> = None;
    loop {
        let page = match &after {
            None => src.query(&first, &[&COPY_PAGE_ROWS])?,
            Some(key) => {
                let key = bound(key);
                let mut params = params(&key);
                params.push(&COPY_PAGE_ROWS);
                src.query(&next, &params)?
            }
        };
        let Some(last) = page.last() else {
            break;
        };
        after = Some(key_at.iter().map(|&i| last.0[i].clone()).collect());
        write(&page)?;
        copied += page.len() as u64;
        if page.len() < COPY_PAGE_ROWS as usize {
            break;
        }
    }
    Ok(copied)
}

/// A value read from one database, bound unchanged to a statement of the other.
struct Bound<'a>(&'a Value);

impl ToParam for Bound<'_> {
    fn to_param(&self) -> Param<'_> {
        match self.0 {
            Value::Null => Param::Null,
            Value::Int(i) => Param::Int(*i),
            Value::Text(s) => Param::Text(std::borrow::Cow::Borrowed(s)),
            Value::Blob(b) => Param::Blob(b),
        }
    }
}

/// The values of `values` as a statement's parameters.
fn bound(values: &[Value]) -> Vec<Bound<'_>> {
    values.iter().map(Bound).collect()
}

fn params<'a>(bound: &'a [Bound<'a>]) -> Vec<&'a dyn ToParam> {
    bound.iter().map(|b| b as &dyn ToParam).collect()
}

/// `a, b, c` (each prefixed with `prefix`).
fn column_list(table: &Table, prefix: &str) -> String {
    table
        .columns
        .iter()
        .map(|(c, _)| format!("{prefix}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Inserts `rows` (each with `table`'s columns, in order): one statement per row on SQLite,
/// one per page on PostgreSQL.
fn insert(dst: &dyn Sql, table: &Table, rows: &[Row]) -> Result<(), AppError> {
    if rows.is_empty() {
        return Ok(());
    }
    let columns = column_list(table, "");
    match dst.engine() {
        Engine::Sqlite => {
            let values: Vec<String> = (1..=table.columns.len()).map(|i| format!("?{i}")).collect();
            let sql = format!(
                "INSERT INTO {} ({columns}) VALUES ({})",
                table.name,
                values.join(", ")
            );
            for row in rows {
                dst.execute(&sql, &params(&bound(&row.0)))?;
            }
        }
        Engine::Postgres => {
            let sql = format!(
                "INSERT INTO {} ({columns}) SELECT {} FROM {}",
                table.name,
                column_list(table, "v."),
                recordset(table.columns)
            );
            dst.execute(&sql, &[&json_rows(table.columns, rows.iter())?])?;
        }
    }
    Ok(())
}

/// PostgreSQL: the rows of a JSON array parameter (`json_rows`) as a relation `v` with
/// `columns`.
fn recordset(columns: &[(&str, Type)]) -> String {
    let defs: Vec<String> = columns
        .iter()
        .map(|(c, t)| format!("{c} {}", t.postgres()))
        .collect();
    format!(
        "json_to_recordset(CAST(CAST(?1 AS TEXT) AS json)) AS v({})",
        defs.join(", ")
    )
}

/// Rows as a JSON array of objects, for `recordset`: integers and text as themselves, blobs
/// in PostgreSQL's hex form (`\x…`), which `bytea` reads back byte for byte.
fn json_rows<'a>(
    columns: &[(&str, Type)],
    rows: impl Iterator<Item = &'a Row>,
) -> Result<String, AppError> {
    let mut array = Vec::new();
    for row in rows {
        let mut object = serde_json::Map::with_capacity(columns.len());
        for (i, (name, _)) in columns.iter().enumerate() {
            let value = match row.0.get(i) {
                None | Some(Value::Null) => serde_json::Value::Null,
                Some(Value::Int(n)) => serde_json::Value::from(*n),
                Some(Value::Text(s)) => serde_json::Value::from(s.as_str()),
                Some(Value::Blob(b)) => serde_json::Value::from(format!("\\x{}", hex(b))),
            };
            object.insert((*name).to_string(), value);
        }
        array.push(serde_json::Value::Object(object));
    }
    serde_json::to_string(&array).map_err(|e| AppError::caused_by("encoding rows", e))
}

/// Inserts a page of entries.
///
/// SQLite: each after setting its wallet's balance to its `balance_after`, which the trigger
/// `entries_balance_follows` demands (an update in place: cheap).
///
/// PostgreSQL: the whole page in one statement, with that trigger disabled for the copy's
/// transaction (`copy_rows`). Setting the balance before each entry there would leave one
/// row version per entry that nothing can prune before the commit: with 100 entries per
/// wallet, every key lookup of a wallet walked ~100 versions, and copying 100k entries took
/// 17 s instead of 3 s, growing with the square of a wallet's entries. The trigger checks
/// nothing during a copy anyway (the balance would be set from the very entry it is compared
/// with); `verify` on the copy checks every `balance_after` against the entries before it,
/// and every balance against its entries.
fn insert_entries(dst: &dyn Sql, page: &[Row]) -> Result<(), AppError> {
    match dst.engine() {
        Engine::Sqlite => {
            for row in page {
                let set = dst.execute(
                    "UPDATE balances SET balance = ?3 WHERE wallet_key = ?1 AND currency = ?2",
                    &[
                        &Bound(&row.0[ENTRY_WALLET]),
                        &Bound(&row.0[ENTRY_CURRENCY]),
                        &Bound(&row.0[ENTRY_BALANCE_AFTER]),
                    ],
                )?;
                if set != 1 {
                    return Err(AppError::internal(
                        "copying entries",
                        format!(
                            "entry {:?} names wallet key {:?} in {:?}, which has no balance",
                            row.0[0], row.0[ENTRY_WALLET], row.0[ENTRY_CURRENCY]
                        ),
                    ));
                }
                insert(dst, &ENTRIES, std::slice::from_ref(row))?;
            }
            Ok(())
        }
        Engine::Postgres => insert(dst, &ENTRIES, page),
    }
}

/// Each balance's final state as in the source (its balance and what holds reserve), and on
/// PostgreSQL each wallet's `stamp_floor` (the source's, or else its newest entry's time
/// stamp).
fn set_final_balances(src: &dyn Sql, dst: &dyn Sql) -> Result<(), AppError> {
    const FINAL: Table = Table {
        name: "balances",
        key: &["wallet_key", "currency"],
        columns: &[
            ("wallet_key", Int),
            ("currency", Text),
            ("balance", Int),
            ("held", Int),
        ],
    };
    for_each_page(src, &FINAL, |page| match dst.engine() {
        Engine::Sqlite => {
            for row in page {
                dst.execute(
                    "UPDATE balances SET balance = ?3, held = ?4 WHERE wallet_key = ?1 AND currency = ?2",
                    &params(&bound(&row.0)),
                )?;
            }
            Ok(())
        }
        Engine::Postgres => {
            let sql = format!(
                "UPDATE balances AS b SET balance = v.balance, held = v.held
                 FROM {} WHERE b.wallet_key = v.wallet_key AND b.currency = v.currency",
                recordset(FINAL.columns)
            );
            dst.execute(&sql, &[&json_rows(FINAL.columns, page.iter())?])
                .map(drop)
        }
    })?;
    if dst.engine() != Engine::Postgres {
        return Ok(());
    }
    const FLOOR: Table = Table {
        name: "wallets",
        key: &["key"],
        columns: &[("key", Int), ("stamp_floor", Text)],
    };
    const KEY: Table = Table {
        name: "wallets",
        key: &["key"],
        columns: &[("key", Int)],
    };
    let floor_from_source = src.engine() == Engine::Postgres;
    let (read, floor) = if floor_from_source {
        (&FLOOR, "v.stamp_floor")
    } else {
        (
            &KEY,
            "COALESCE((SELECT max(e.created_at) FROM entries e WHERE e.wallet_key = w.key), w.stamp_floor)",
        )
    };
    for_each_page(src, read, |page| {
        let sql = format!(
            "UPDATE wallets AS w SET stamp_floor = {floor} FROM {} WHERE w.key = v.key",
            recordset(read.columns)
        );
        dst.execute(&sql, &[&json_rows(read.columns, page.iter())?])
            .map(drop)
    })?;
    Ok(())
}

/// PostgreSQL's own state: the chain head is the last entry copied, and every sequence
/// continues past the largest value copied.
fn finish_postgres(conn: &PgConn, chain_head: (i64, [u8; 32])) -> Result<(), AppError> {
    conn.execute(
        "UPDATE chain_head SET seq = ?1, hash = ?2 WHERE id = 1",
        &[&chain_head.0, &chain_head.1],
    )?;
    conn.query_one(
        "SELECT setval('entries_seq', COALESCE((SELECT max(seq) FROM entries), 0) + 1, false)",
        &[],
    )?;
    for (table, column) in IDENTITIES {
        conn.query_one(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', '{column}'),
                     COALESCE((SELECT max({column}) FROM {table}), 0) + 1, false)"
            ),
            &[],
        )?;
    }
    Ok(())
}

/// An error and its causes on one line (the client's own message says only "db error" or
/// "error connecting to server"; the why is in its causes).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn the_copy_knows_every_table_and_column_of_the_sqlite_schema() {
        // A column added to schema.sql without this file would be left behind by a copy (the
        // run-time check refuses such a source; this finds it before a release).
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(db::SCHEMA_SQL).unwrap();
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut expected: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        expected.push("storage_probe");
        expected.sort();
        assert_eq!(tables, expected);
        for table in TABLES {
            let columns: Vec<(String, String)> = conn
                .prepare("SELECT name, type FROM pragma_table_info(?1) ORDER BY cid")
                .unwrap()
                .query_map([table.name], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let known: Vec<(String, String)> = table
                .columns
                .iter()
                .map(|(c, t)| (c.to_string(), format!("{t:?}").to_uppercase()))
                .map(|(c, t)| (c, if t == "INT" { "INTEGER".into() } else { t }))
                .collect();
            assert_eq!(columns, known, "{}", table.name);
        }
    }

    #[test]
    fn the_copy_knows_every_table_and_column_of_the_postgres_schema() {
        // The same for postgres/schema.sql, read from its text: each `CREATE TABLE` and the
        // column lines under it.
        let mut tables: HashMap<String, Vec<String>> = HashMap::new();
        let mut current: Option<String> = None;
        for line in postgres::SCHEMA.lines() {
            if let Some(rest) = line.strip_prefix("CREATE TABLE ") {
                let name = rest.split_whitespace().next().unwrap().to_string();
                tables.insert(name.clone(), Vec::new());
                current = Some(name);
            } else if line.starts_with(')') {
                current = None;
            } else if let Some(table) = &current {
                let word = line.split_whitespace().next().unwrap_or("");
                let is_column = line.starts_with("    ")
                    && !line.starts_with("     ")
                    && !["UNIQUE", "CHECK", "PRIMARY", "--", ""].contains(&word);
                if is_column {
                    tables.get_mut(table).unwrap().push(word.to_string());
                }
            }
        }
        let mut names: Vec<&str> = tables.keys().map(String::as_str).collect();
        names.sort();
        let mut expected: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        expected.extend(TABLES_NOT_COPIED);
        expected.sort();
        assert_eq!(names, expected);
        for table in TABLES {
            let mut known: Vec<String> = table.columns.iter().map(|(c, _)| c.to_string()).collect();
            known.extend(
                POSTGRES_ONLY_COLUMNS
                    .iter()
                    .filter(|(t, _)| *t == table.name)
                    .map(|(_, c)| c.to_string()),
            );
            // By name: a column a migration added comes after PostgreSQL's own ones.
            let mut found = tables[table.name].clone();
            found.sort();
            known.sort();
            assert_eq!(found, known, "{}", table.name);
        }
    }

    #[test]
    fn rows_become_json_that_postgres_reads_back_unchanged() {
        let columns = [("n", Int), ("t", Text), ("b", Blob), ("z", Text)];
        let row = Row(vec![
            Value::Int(i64::MIN),
            Value::Text("a \"quoted\" ünïcode, with \\ and \n".into()),
            Value::Blob(vec![0, 1, 0xab, 0xff]),
            Value::Null,
        ]);
        let json = json_rows(&columns, std::iter::once(&row)).unwrap();
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back[0]["n"], serde_json::json!(i64::MIN));
        assert_eq!(back[0]["t"], "a \"quoted\" ünïcode, with \\ and \n");
        assert_eq!(back[0]["b"], "\\x0001abff");
        assert!(back[0]["z"].is_null());
        assert_eq!(
            recordset(&columns),
            "json_to_recordset(CAST(CAST(?1 AS TEXT) AS json)) AS v(n bigint, t text, b bytea, z text)"
        );
    }
}
