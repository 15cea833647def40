//! The database's part of `/health`.

use crate::error::AppError;
use crate::store::Sql;

/// Whether the database answers a query.
pub fn answers(conn: &dyn Sql) -> Result<(), AppError> {
    let _: i64 = conn.query_one("SELECT 1", &[])?.get(0)?;
    Ok(())
}
