//! `Sql` for PostgreSQL, through the `postgres` crate (a blocking client; no async code of
//! ours). Statements are written once for both engines with `?N` parameters; here they are
//! rewritten to `$N` and prepared once per connection.

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error;
use std::time::Duration;

use bytes::BytesMut;
use postgres::error::SqlState;
use postgres::types::{FromSql, IsNull, ToSql, Type};
use postgres::{Client, NoTls, Statement};

use super::{Engine, Param, Row, Sql, ToParam, Value};
use crate::error::{AppError, StorageFault};

type BoxError = Box<dyn Error + Sync + Send>;

/// How long connecting to the server may take (unless the URL sets `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection idle this long is probed; one whose peer is gone ends within the user timeout.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest any one statement may run, waiting for locks included.
pub const STATEMENT_TIMEOUT_MS: u64 = 30_000;

/// Most statements a connection keeps prepared: every statement the server runs is a
/// constant, so this bounds only what a mistake could grow.
const PREPARED_STATEMENTS_MAX: usize = 256;

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Param::Null => Ok(IsNull::Yes),
            Param::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                // An untyped parameter (`SELECT ?1`) is sent as text.
                _ => i.to_string().as_str().to_sql(&Type::TEXT, out),
            },
            Param::Text(s) => s.as_ref().to_sql(ty, out),
            Param::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Value, BoxError> {
        Ok(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT2 => Value::Int(i64::from(i16::from_sql(ty, raw)?)),
            Type::BOOL => Value::Int(i64::from(bool::from_sql(ty, raw)?)),
            Type::BYTEA => Value::Blob(raw.to_vec()),
            Type::VOID => Value::Null,
            _ => Value::Text(String::from_sql(ty, raw)?),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Value, BoxError> {
        Ok(Value::Null)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT8
                | Type::INT4
                | Type::INT2
                | Type::BOOL
                | Type::BYTEA
                | Type::TEXT
                | Type::VARCHAR
                | Type::NAME
                | Type::BPCHAR
                | Type::UNKNOWN
                | Type::VOID
        )
    }
}

/// `?N` becomes `$N`; text inside quotes is left alone.
pub fn dollar_params(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '?' => {
                out.push('$');
                continue;
            }
            None => {}
        }
        out.push(c);
    }
    out
}

/// Why a PostgreSQL statement failed, as the service sees it.
pub fn app_error(e: postgres::Error) -> AppError {
    match e.code() {
        Some(c) if *c == SqlState::DISK_FULL => AppError::Storage(StorageFault::Full),
        Some(c) if *c == SqlState::READ_ONLY_SQL_TRANSACTION => {
            AppError::Storage(StorageFault::ReadOnly)
        }
        Some(c)
            if *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::LOCK_NOT_AVAILABLE
                || *c == SqlState::QUERY_CANCELED =>
        {
            AppError::Unavailable("the database is busy; try again")
        }
        Some(c)
            if *c == SqlState::TOO_MANY_CONNECTIONS
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW =>
        {
            AppError::Unavailable("the database is not available; try again")
        }
        _ if e.is_closed() => AppError::Unavailable("the database is not available; try again"),
        _ => AppError::caused_by("postgres", e),
    }
}

/// One PostgreSQL connection. Used by one thread at a time (a pool hands it out, or a writer
/// owns it); the cells are there because the client's calls take `&mut`.
pub struct PgConn {
    client: RefCell<Client>,
    prepared: RefCell<HashMap<String, Statement>>,
}

impl PgConn {
    /// Connects with time bounds: connecting, a silent network (keepalives and the TCP user
    /// timeout end a connection whose peer vanished, instead of a thread blocked forever),
    /// and each statement, lock waits included (`STATEMENT_TIMEOUT_MS`: a request gets 503).
    pub fn connect(url: &str) -> Result<PgConn, postgres::Error> {
        let mut config: postgres::Config = url.parse()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("wallet");
        }
        config
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .tcp_user_timeout(TCP_USER_TIMEOUT);
        let mut client = config.connect(NoTls)?;
        client.batch_execute(&format!("SET statement_timeout = {STATEMENT_TIMEOUT_MS}"))?;
        Ok(PgConn::new(client))
    }

    /// `connect` for a command-line tool or the server's start-up: a failure names the
    /// setting (the URL shown without its password).
    pub fn connect_target(target: &super::Target) -> Result<PgConn, crate::error::StartupError> {
        let super::Target::Postgres(url) = target else {
            return Err(crate::error::StartupError::failed("not a PostgreSQL URL"));
        };
        PgConn::connect(url).map_err(|e| {
            crate::error::StartupError::setting(
                "--db/WALLET_DB",
                format!("cannot connect to {target}: {e}"),
            )
        })
    }

    pub fn new(client: Client) -> PgConn {
        PgConn {
            client: RefCell::new(client),
            prepared: RefCell::new(HashMap::new()),
        }
    }

    /// Runs statements without parameters (transaction control, the schema).
    pub fn batch(&self, sql: &str) -> Result<(), AppError> {
        self.client
            .borrow_mut()
            .batch_execute(sql)
            .map_err(app_error)
    }

    /// Whether the connection is broken (the pool drops such a connection).
    pub fn is_closed(&self) -> bool {
        self.client.borrow().is_closed()
    }

    fn statement(&self, sql: &str) -> Result<Statement, AppError> {
        if let Some(s) = self.prepared.borrow().get(sql) {
            return Ok(s.clone());
        }
        let stmt = self
            .client
            .borrow_mut()
            .prepare(&dollar_params(sql))
            .map_err(app_error)?;
        let mut prepared = self.prepared.borrow_mut();
        if prepared.len() >= PREPARED_STATEMENTS_MAX {
            prepared.clear();
        }
        prepared.insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }
}

fn bind<'a>(params: &'a [&'a dyn ToParam]) -> Vec<Param<'a>> {
    params.iter().map(|p| (*p).to_param()).collect()
}

fn refs<'a>(bound: &'a [Param<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    bound.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

fn row_of(r: &postgres::Row) -> Result<Row, AppError> {
    let mut values = Vec::with_capacity(r.len());
    for i in 0..r.len() {
        values.push(r.try_get::<_, Value>(i).map_err(app_error)?);
    }
    Ok(Row(values))
}

impl Sql for PgConn {
    fn engine(&self) -> Engine {
        Engine::Postgres
    }

    fn query(&self, sql: &str, params: &[&dyn ToParam]) -> Result<Vec<Row>, AppError> {
        let stmt = self.statement(sql)?;
        let bound = bind(params);
        let rows = self
            .client
            .borrow_mut()
            .query(&stmt, &refs(&bound))
            .map_err(app_error)?;
        rows.iter().map(row_of).collect()
    }

    fn query_planned_now(&self, sql: &str, params: &[&dyn ToParam]) -> Result<Vec<Row>, AppError> {
        // Not prepared: an unnamed statement with its parameters' types given is parsed,
        // planned for these values and run in one round trip.
        let bound = bind(params);
        let typed: Vec<(&(dyn ToSql + Sync), Type)> = bound
            .iter()
            .map(|p| {
                let ty = match p {
                    Param::Int(_) => Type::INT8,
                    Param::Blob(_) => Type::BYTEA,
                    Param::Text(_) => Type::TEXT,
                    Param::Null => Type::UNKNOWN,
                };
                (p as &(dyn ToSql + Sync), ty)
            })
            .collect();
        let rows = self
            .client
            .borrow_mut()
            .query_typed(&dollar_params(sql), &typed)
            .map_err(app_error)?;
        rows.iter().map(row_of).collect()
    }

    fn query_opt(&self, sql: &str, params: &[&dyn ToParam]) -> Result<Option<Row>, AppError> {
        // Not `Client::query_opt`, which fails when a statement returns more than one row.
        Ok(self.query(sql, params)?.into_iter().next())
    }

    fn execute(&self, sql: &str, params: &[&dyn ToParam]) -> Result<u64, AppError> {
        let stmt = self.statement(sql)?;
        let bound = bind(params);
        self.client
            .borrow_mut()
            .execute(&stmt, &refs(&bound))
            .map_err(app_error)
    }
}

/// Hands out `PgConn`s to r2d2: the reader pool of a server on PostgreSQL.
pub struct PgManager {
    url: String,
}

impl PgManager {
    pub fn new(url: &str) -> PgManager {
        PgManager {
            url: url.to_string(),
        }
    }
}

impl r2d2::ManageConnection for PgManager {
    type Connection = PgConn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<PgConn, postgres::Error> {
        PgConn::connect(&self.url)
    }

    fn is_valid(&self, conn: &mut PgConn) -> Result<(), postgres::Error> {
        conn.client.get_mut().simple_query("").map(drop)
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.is_closed()
    }
}

/// The schema for a new PostgreSQL database (`postgres/schema.sql`), and its version.
pub const SCHEMA: &str = include_str!("../../postgres/schema.sql");
pub const SCHEMA_VERSION: i64 = 5;
/// `MIGRATIONS[i]` takes a database from version `i + 1` to `i + 2`, in one transaction.
const MIGRATIONS: &[&str] = &[
    include_str!("../../postgres/002_currencies_and_holds.sql"),
    include_str!("../../postgres/003_staff_tools.sql"),
    include_str!("../../postgres/004_console_sessions.sql"),
    include_str!("../../postgres/005_reversals.sql"),
];
const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION - 1);
/// The advisory lock under which a process applies the schema, so that several processes
/// starting at once apply it once.
const SCHEMA_LOCK: i64 = 0x77_61_6c_6c_65_73;

/// Brings the database's schema to `SCHEMA_VERSION`: applies it to an empty database, accepts
/// a current one, refuses a newer one.
pub fn migrate(conn: &PgConn) -> Result<(), String> {
    let fail = |e: AppError| format!("{e:?}");
    conn.query_one("SELECT pg_advisory_lock(?1)", &[&SCHEMA_LOCK])
        .map_err(fail)?;
    let result = (|| {
        let exists: i64 = conn
            .query_one(
                "SELECT count(*) FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_name = 'schema_version'",
                &[],
            )
            .and_then(|r| r.get(0))
            .map_err(fail)?;
        if exists == 0 {
            let tables: i64 = conn
                .query_one(
                    "SELECT count(*) FROM information_schema.tables
                     WHERE table_schema = current_schema()",
                    &[],
                )
                .and_then(|r| r.get(0))
                .map_err(fail)?;
            if tables > 0 {
                return Err(format!(
                    "the database has {tables} tables but no wallet schema; give wallet an empty database"
                ));
            }
            conn.batch(&format!("BEGIN; {SCHEMA}; COMMIT;"))
                .map_err(fail)?;
            return Ok(());
        }
        let version: i64 = conn
            .query_one("SELECT version FROM schema_version", &[])
            .and_then(|r| r.get(0))
            .map_err(fail)?;
        if version > SCHEMA_VERSION {
            return Err(format!(
                "the database has schema version {version}, newer than this binary's {SCHEMA_VERSION}; use a newer wallet"
            ));
        }
        if version < 1 {
            return Err(format!(
                "the database has schema version {version}, which no wallet ever wrote; is it another program's?"
            ));
        }
        // All steps in one transaction: all of the upgrade or none of it. Other processes of
        // the older version must be stopped first (README, "Upgrading").
        let steps: String = MIGRATIONS[version as usize - 1..].concat();
        if !steps.is_empty() {
            conn.batch(&format!("BEGIN; {steps}; COMMIT;"))
                .map_err(|e| {
                    let _ = conn.batch("ROLLBACK");
                    format!(
                        "cannot migrate the database from schema version {version}: {}; the database is unchanged",
                        fail(e)
                    )
                })?;
        }
        Ok(())
    })();
    let _ = conn.query_one("SELECT pg_advisory_unlock(?1)", &[&SCHEMA_LOCK]);
    result
}

#[cfg(test)]
mod tests {
    use super::dollar_params;

    #[test]
    fn parameters_become_dollar_numbers_outside_quotes() {
        assert_eq!(
            dollar_params("SELECT ?1, '?2', \"a?\" FROM t WHERE x = ?12"),
            "SELECT $1, '?2', \"a?\" FROM t WHERE x = $12"
        );
    }
}
