//! The database's part of `/health`.

use rusqlite::Connection;

use crate::error::AppError;

/// Whether the database answers a query.
pub fn answers(conn: &Connection) -> Result<(), AppError> {
    conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?;
    Ok(())
}
