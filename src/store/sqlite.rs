//! `Sql` for SQLite: statements are prepared once per connection (rusqlite's cache) and rows
//! are copied out as `Value`s.

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::Connection;

use super::{Engine, Param, Row, Sql, ToParam, Value};
use crate::error::AppError;

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Param::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Param::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Param::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Param::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn bind<'a>(params: &'a [&'a dyn ToParam]) -> Vec<Param<'a>> {
    params.iter().map(|p| (*p).to_param()).collect()
}

fn row_of(r: &rusqlite::Row<'_>, columns: usize) -> rusqlite::Result<Row> {
    let mut values = Vec::with_capacity(columns);
    for i in 0..columns {
        values.push(match r.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Int(i),
            // No column of the schema holds a REAL; a sum that overflowed would.
            ValueRef::Real(f) => Value::Text(f.to_string()),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        });
    }
    Ok(Row(values))
}

impl Sql for Connection {
    fn engine(&self) -> Engine {
        Engine::Sqlite
    }

    fn query(&self, sql: &str, params: &[&dyn ToParam]) -> Result<Vec<Row>, AppError> {
        let bound = bind(params);
        let mut stmt = self.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(bound.iter()), |r| {
                row_of(r, columns)
            })?
            .collect::<rusqlite::Result<Vec<Row>>>()?;
        Ok(rows)
    }

    fn query_opt(&self, sql: &str, params: &[&dyn ToParam]) -> Result<Option<Row>, AppError> {
        let bound = bind(params);
        let mut stmt = self.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(bound.iter()))?;
        Ok(match rows.next()? {
            Some(r) => Some(row_of(r, columns)?),
            None => None,
        })
    }

    fn execute(&self, sql: &str, params: &[&dyn ToParam]) -> Result<u64, AppError> {
        let bound = bind(params);
        let changed = self
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(bound.iter()))?;
        Ok(changed as u64)
    }
}
