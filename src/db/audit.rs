//! The audit log: one row per staff action (a credit, a resolved withdrawal, a read of
//! someone else's data), written in the same transaction as what it records.

use rusqlite::{params, Connection};

use crate::domain::Timestamp;
use crate::error::AppError;

/// Records that staff user `staff` did `action` to `target` (`user:7`, `withdrawal:<id>`),
/// with `detail` as JSON text.
pub fn record(
    conn: &Connection,
    now: Timestamp,
    staff: i64,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<(), AppError> {
    conn.prepare_cached(
        "INSERT INTO audit_log (staff_user_id, action, target, detail, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![staff, action, target, detail, now.to_text()])?;
    Ok(())
}
