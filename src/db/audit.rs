//! The audit log: one row per staff action (a credit, a freeze, a resolved withdrawal, a hold
//! captured or voided, a read of someone else's data), written in the same transaction as
//! what it records. Append-only: the database refuses updates and deletes.

use crate::domain::Timestamp;
use crate::error::AppError;
use crate::store::{Row, Sql};

/// Records that staff user `staff` did `action` to `target` (`user:7`, `withdrawal:<id>`),
/// with `detail` as JSON text and the staff member's `reason`, when the action takes one.
pub fn record(
    conn: &dyn Sql,
    now: Timestamp,
    staff: i64,
    action: &str,
    target: &str,
    detail: &str,
    reason: Option<&str>,
) -> Result<(), AppError> {
    conn.execute(
        "INSERT INTO audit_log (staff_user_id, action, target, detail, created_at, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        &[&staff, &action, &target, &detail, &now, &reason],
    )?;
    Ok(())
}

/// One row of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub staff_user_id: i64,
    pub action: String,
    pub target: String,
    pub reason: Option<String>,
    /// JSON text.
    pub detail: String,
    pub created_at: Timestamp,
}

fn from_row(r: &Row) -> Result<AuditEntry, AppError> {
    Ok(AuditEntry {
        id: r.get(0)?,
        staff_user_id: r.get(1)?,
        action: r.get(2)?,
        target: r.get(3)?,
        reason: r.get(4)?,
        detail: r.get(5)?,
        created_at: r.get(6)?,
    })
}

/// The log, newest first, optionally of one staff member or one target; and how many rows
/// match.
pub fn list(
    conn: &dyn Sql,
    staff_user_id: Option<i64>,
    target: Option<&str>,
    limit: u32,
    offset: u32,
) -> Result<(i64, Vec<AuditEntry>), AppError> {
    let filter = "(CAST(?1 AS BIGINT) IS NULL OR staff_user_id = ?1)
         AND (CAST(?2 AS TEXT) IS NULL OR target = ?2)";
    let count: i64 = conn
        .query_one(
            &format!("SELECT count(*) FROM audit_log WHERE {filter}"),
            &[&staff_user_id, &target],
        )?
        .get(0)?;
    let rows = conn
        .query(
            &format!(
                "SELECT id, staff_user_id, action, target, reason, detail, created_at
                 FROM audit_log WHERE {filter} ORDER BY id DESC LIMIT ?3 OFFSET ?4"
            ),
            &[&staff_user_id, &target, &limit, &offset],
        )?
        .iter()
        .map(from_row)
        .collect::<Result<_, _>>()?;
    Ok((count, rows))
}
