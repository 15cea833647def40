//! The storage seam: one interface, `Sql`, that every engine implements (SQLite in
//! `sqlite.rs`, PostgreSQL in `postgres.rs`). The money rules (`ledger/`, `accounts/`) name
//! only this module, never an engine's crate, so they exist once for both engines.
//!
//! Statements are written once, in the SQL both engines accept, with positional parameters
//! `?1`, `?2`… (PostgreSQL's engine rewrites them to `$1`, `$2`…). Where the engines must
//! differ (how the chain head is found, how work is claimed across processes), the caller
//! asks `engine()` and each branch is documented where it is taken.

pub mod postgres;
mod sqlite;

use std::borrow::Cow;

use crate::domain::{MinorUnits, Timestamp};
use crate::error::AppError;

/// Which database engine a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// One embedded file, one writing thread: positions and stamps are given in commit order.
    Sqlite,
    /// A server that several processes share: row locks decide, positions may commit out of
    /// order, and the hash chain is sealed afterwards (`ledger::chain`).
    Postgres,
}

/// A parameter, borrowed from the caller for the length of one statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Param<'a> {
    Null,
    Int(i64),
    Text(Cow<'a, str>),
    Blob(&'a [u8]),
}

/// A value that can be bound to a statement's parameter.
pub trait ToParam {
    fn to_param(&self) -> Param<'_>;
}

impl ToParam for i64 {
    fn to_param(&self) -> Param<'_> {
        Param::Int(*self)
    }
}
impl ToParam for i32 {
    fn to_param(&self) -> Param<'_> {
        Param::Int(i64::from(*self))
    }
}
impl ToParam for u32 {
    fn to_param(&self) -> Param<'_> {
        Param::Int(i64::from(*self))
    }
}
impl ToParam for bool {
    fn to_param(&self) -> Param<'_> {
        Param::Int(i64::from(*self))
    }
}
impl ToParam for str {
    fn to_param(&self) -> Param<'_> {
        Param::Text(Cow::Borrowed(self))
    }
}
impl ToParam for &str {
    fn to_param(&self) -> Param<'_> {
        Param::Text(Cow::Borrowed(self))
    }
}
impl ToParam for String {
    fn to_param(&self) -> Param<'_> {
        Param::Text(Cow::Borrowed(self))
    }
}
impl ToParam for [u8] {
    fn to_param(&self) -> Param<'_> {
        Param::Blob(self)
    }
}
impl ToParam for &[u8] {
    fn to_param(&self) -> Param<'_> {
        Param::Blob(self)
    }
}
impl ToParam for Vec<u8> {
    fn to_param(&self) -> Param<'_> {
        Param::Blob(self)
    }
}
impl ToParam for [u8; 32] {
    fn to_param(&self) -> Param<'_> {
        Param::Blob(self)
    }
}
impl ToParam for MinorUnits {
    fn to_param(&self) -> Param<'_> {
        Param::Int(self.get())
    }
}
/// Time stamps are stored as text in one fixed format, so text order is time order on both
/// engines (PostgreSQL's columns use the "C" collation for that).
impl ToParam for Timestamp {
    fn to_param(&self) -> Param<'_> {
        Param::Text(Cow::Owned(self.to_text()))
    }
}
impl<T: ToParam> ToParam for Option<T> {
    fn to_param(&self) -> Param<'_> {
        match self {
            Some(v) => v.to_param(),
            None => Param::Null,
        }
    }
}

/// A value read from a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// One row, its columns in the order the statement selected them.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub(crate) Vec<Value>);

impl Row {
    /// Column `i` as a `T`; a missing column or a value of another type is an internal error
    /// (the statement and its reader disagree).
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T, AppError> {
        let v = self.0.get(i).unwrap_or(&Value::Null);
        T::from_value(v)
            .ok_or_else(|| AppError::internal("reading a row", format!("column {i} holds {v:?}")))
    }
}

/// A type a column can be read as.
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Option<i64> {
        match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}
impl FromValue for i32 {
    fn from_value(v: &Value) -> Option<i32> {
        i64::from_value(v).and_then(|i| i32::try_from(i).ok())
    }
}
impl FromValue for u32 {
    fn from_value(v: &Value) -> Option<u32> {
        i64::from_value(v).and_then(|i| u32::try_from(i).ok())
    }
}
impl FromValue for bool {
    fn from_value(v: &Value) -> Option<bool> {
        i64::from_value(v).map(|i| i != 0)
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Option<String> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Option<Vec<u8>> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}
impl FromValue for [u8; 32] {
    fn from_value(v: &Value) -> Option<[u8; 32]> {
        match v {
            Value::Blob(b) => b.as_slice().try_into().ok(),
            _ => None,
        }
    }
}
impl FromValue for MinorUnits {
    fn from_value(v: &Value) -> Option<MinorUnits> {
        i64::from_value(v).map(MinorUnits::new)
    }
}
impl FromValue for Timestamp {
    fn from_value(v: &Value) -> Option<Timestamp> {
        match v {
            Value::Text(s) => Some(Timestamp::from_stored(s)),
            _ => None,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Option<T>> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One connection (inside a transaction, for writes) of either engine.
pub trait Sql {
    fn engine(&self) -> Engine;
    /// Every row the statement returns.
    fn query(&self, sql: &str, params: &[&dyn ToParam]) -> Result<Vec<Row>, AppError>;
    /// The first row, if any.
    fn query_opt(&self, sql: &str, params: &[&dyn ToParam]) -> Result<Option<Row>, AppError>;
    /// Runs a statement and returns how many rows it changed.
    fn execute(&self, sql: &str, params: &[&dyn ToParam]) -> Result<u64, AppError>;

    /// Every row, from a plan made for the tables as they are now. PostgreSQL otherwise
    /// keeps a prepared statement's plan from its sixth run until the table is next analyzed:
    /// one made while a table was nearly empty may scan it whole once it has grown. For a
    /// statement run once per many requests, where a new plan each time costs little. The
    /// statement is not prepared first, so PostgreSQL infers no parameter types: an integer
    /// is sent as a `BIGINT`, text as `TEXT`, bytes as `BYTEA` (a `NULL` is left for it to
    /// infer); `CAST` a parameter where the column is of another type.
    fn query_planned_now(&self, sql: &str, params: &[&dyn ToParam]) -> Result<Vec<Row>, AppError> {
        self.query(sql, params)
    }

    /// Exactly one row; none is an internal error.
    fn query_one(&self, sql: &str, params: &[&dyn ToParam]) -> Result<Row, AppError> {
        self.query_opt(sql, params)?
            .ok_or_else(|| AppError::internal("reading a row", "the statement returned none"))
    }
}

/// What a transaction-scoped lock by name serialises. Each class is a key space of its own
/// (PostgreSQL's two-key advisory locks never meet its one-key ones, which the service uses
/// for the sealer, the schema and snapshots), so no name a client chooses can collide with
/// another class or with those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockClass {
    /// A wallet's reference: concurrent identical requests wait, then replay.
    Reference = 0x7265,
    /// A username key: concurrent registrations of one name, the second then sees it taken.
    Username = 0x756e,
    /// An email key, likewise.
    Email = 0x656d,
}

/// Serialises the transactions that lock the same `name` in `class`, until each ends. On
/// SQLite the one writer already serialises every write; on PostgreSQL two processes could
/// both find a name unused and one would then fail on a unique index (a 500 instead of a
/// replay or a 409): with this lock the second waits for the first to commit, then sees it.
pub fn lock_for_transaction(conn: &dyn Sql, class: LockClass, name: &str) -> Result<(), AppError> {
    if conn.engine() == Engine::Postgres {
        conn.query_one(
            "SELECT pg_advisory_xact_lock(?1, hashtext(?2))",
            &[&(class as i32), &name],
        )?;
    }
    Ok(())
}

/// Where the ledger lives: `--db` names a SQLite file, or a PostgreSQL server by URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Sqlite(std::path::PathBuf),
    /// A `postgres://` or `postgresql://` URL (libpq's form; TLS is not supported: connect
    /// over a private network or a local socket).
    Postgres(String),
}

impl Target {
    /// A `postgres://` or `postgresql://` URL selects PostgreSQL; anything else is a path.
    pub fn parse(db: &str) -> Target {
        if db.starts_with("postgres://") || db.starts_with("postgresql://") {
            Target::Postgres(db.to_string())
        } else {
            Target::Sqlite(db.into())
        }
    }

    pub fn engine(&self) -> Engine {
        match self {
            Target::Sqlite(_) => Engine::Sqlite,
            Target::Postgres(_) => Engine::Postgres,
        }
    }

    /// The SQLite file, if this is one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Target::Sqlite(p) => Some(p),
            Target::Postgres(_) => None,
        }
    }
}

impl From<std::path::PathBuf> for Target {
    fn from(path: std::path::PathBuf) -> Target {
        Target::Sqlite(path)
    }
}

impl From<&str> for Target {
    fn from(db: &str) -> Target {
        Target::parse(db)
    }
}

impl std::str::FromStr for Target {
    type Err = std::convert::Infallible;

    fn from_str(db: &str) -> Result<Target, Self::Err> {
        Ok(Target::parse(db))
    }
}

/// For logs and errors: a URL's password is never shown.
impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Sqlite(p) => write!(f, "{}", p.display()),
            Target::Postgres(url) => f.write_str(&redact_password(url)),
        }
    }
}

/// `postgres://user:secret@host/db?password=x` → `postgres://user:***@host/db?…`: the
/// password is never shown, wherever the URL puts it. Everything up to the last `@` is the
/// user and password (a password may hold `/`, `?` or `@`), and the query string, which may
/// hold `password=`, is left out whole.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(a database URL)".to_string();
    };
    let (user, host_and_more) = match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            (format!("{user}{hidden}@"), host)
        }
        None => (String::new(), rest),
    };
    let (host_and_path, query) = match host_and_more.split_once('?') {
        Some((before, _)) => (before, "?…"),
        None => (host_and_more, ""),
    };
    format!("{scheme}://{user}{host_and_path}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_url_selects_postgres_and_anything_else_is_a_file() {
        assert_eq!(Target::parse("postgres://h/db").engine(), Engine::Postgres);
        assert_eq!(
            Target::parse("postgresql://h/db").engine(),
            Engine::Postgres
        );
        assert_eq!(Target::parse("./wallet.db").engine(), Engine::Sqlite);
        assert_eq!(Target::parse("postgres.db").engine(), Engine::Sqlite);
    }

    #[test]
    fn a_password_is_never_shown() {
        let t = Target::parse("postgres://u:s3cret@h:5432/db");
        assert_eq!(t.to_string(), "postgres://u:***@h:5432/db");
        assert!(!t.to_string().contains("s3cret"));
        assert_eq!(redact_password("postgres://u@h/db"), "postgres://u@h/db");
        for (url, shown) in [
            ("postgres://u:hun/ter2@h:1/db", "postgres://u:***@h:1/db"),
            ("postgres://u:a@b?c@h/db", "postgres://u:***@h/db"),
            ("postgres://u@h/db?password=hunter2", "postgres://u@h/db?…"),
            (
                "postgres://u:x@h/db?sslmode=disable&password=y",
                "postgres://u:***@h/db?…",
            ),
        ] {
            assert_eq!(redact_password(url), shown);
        }
    }
}
