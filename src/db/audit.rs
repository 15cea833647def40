//! The audit log: one row per staff action (a credit, a resolved withdrawal, a read of
//! someone else's data), written in the same transaction as what it records.

use crate::domain::Timestamp;
use crate::error::AppError;
use crate::store::Sql;

/// Records that staff user `staff` did `action` to `target` (`user:7`, `withdrawal:<id>`),
/// with `detail` as JSON text.
pub fn record(
    conn: &dyn Sql,
    now: Timestamp,
    staff: i64,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<(), AppError> {
    conn.execute(
        "INSERT INTO audit_log (staff_user_id, action, target, detail, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        &[&staff, &action, &target, &detail, &now],
    )?;
    Ok(())
}
