//! Scheduled withdrawals: requested now, debited at their time, paid out by `jobs::payout`.
//!
//! PENDING --(due, funds short)--> FAILED (no entry)
//! PENDING --(due)--> PROCESSING (WITHDRAWAL entry written, wallet debited)
//! PROCESSING --(2xx, or no payout service)--> SUCCEEDED
//! PROCESSING --(4xx, or attempts exhausted)--> FAILED + REFUND entry, in one transaction
//! PENDING --(cancel)--> CANCELLED

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::entries::{self, NewEntry, WalletRef};
use super::{conflict, Movement, Outcome};
use crate::domain::{Currency, EntryKind, Metadata, Timestamp, WithdrawalStatus};
use crate::error::AppError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withdrawal {
    pub id: String,
    pub wallet_id: String,
    pub amount: i64,
    pub reference: String,
    pub metadata: Metadata,
    pub status: WithdrawalStatus,
    pub scheduled_at: Timestamp,
    pub next_attempt_at: Timestamp,
    pub attempts: u32,
    pub error_message: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub transaction_id: Option<String>,
    pub refund_transaction_id: Option<String>,
}

const COLUMNS: &str =
    "id, wallet_id, amount, reference, metadata, status, scheduled_at, next_attempt_at, \
     attempts, error_message, created_at, updated_at, transaction_id, refund_transaction_id";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Withdrawal> {
    let status: String = r.get(5)?;
    let ts = |i: usize| -> rusqlite::Result<Timestamp> {
        Ok(Timestamp::from_stored(&r.get::<_, String>(i)?))
    };
    Ok(Withdrawal {
        id: r.get(0)?,
        wallet_id: r.get(1)?,
        amount: r.get(2)?,
        reference: r.get(3)?,
        metadata: Metadata::from_stored(r.get(4)?),
        status: WithdrawalStatus::parse(&status).ok_or(rusqlite::Error::InvalidColumnType(
            5,
            "status".into(),
            rusqlite::types::Type::Text,
        ))?,
        scheduled_at: ts(6)?,
        next_attempt_at: ts(7)?,
        attempts: r.get(8)?,
        error_message: r.get(9)?,
        created_at: ts(10)?,
        updated_at: ts(11)?,
        transaction_id: r.get(12)?,
        refund_transaction_id: r.get(13)?,
    })
}

pub fn find_by_reference(
    conn: &Connection,
    wallet_id: &str,
    reference: &str,
) -> Result<Option<Withdrawal>, AppError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM withdrawals WHERE wallet_id = ?1 AND reference = ?2"
        ))?
        .query_row(params![wallet_id, reference], from_row)
        .optional()?)
}

/// A withdrawal of this wallet; another wallet's is "not found".
pub fn find(conn: &Connection, wallet_id: &str, id: &str) -> Result<Withdrawal, AppError> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM withdrawals WHERE wallet_id = ?1 AND id = ?2"
    ))?
    .query_row(params![wallet_id, id], from_row)
    .optional()?
    .ok_or(AppError::NotFound("withdrawal"))
}

pub fn find_any(conn: &Connection, id: &str) -> Result<Option<Withdrawal>, AppError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM withdrawals WHERE id = ?1"))?
        .query_row([id], from_row)
        .optional()?)
}

pub fn list(
    conn: &Connection,
    wallet_id: &str,
    status: Option<WithdrawalStatus>,
    limit: u32,
    offset: u32,
) -> Result<(i64, Vec<Withdrawal>), AppError> {
    let status = status.map(WithdrawalStatus::as_str);
    let count: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM withdrawals WHERE wallet_id = ?1 AND (?2 IS NULL OR status = ?2)",
        )?
        .query_row(params![wallet_id, status], |r| r.get(0))?;
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM withdrawals WHERE wallet_id = ?1 AND (?2 IS NULL OR status = ?2)
             ORDER BY created_at DESC, id DESC LIMIT ?3 OFFSET ?4"
        ))?
        .query_map(params![wallet_id, status, limit, offset], from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((count, rows))
}

/// The wallet a withdrawal (which names it by public id) debits or refunds.
fn wallet_ref(conn: &Connection, wallet_id: &str) -> Result<WalletRef, AppError> {
    Ok(conn
        .prepare_cached("SELECT key, id FROM wallets WHERE id = ?1")?
        .query_row([wallet_id], |r| {
            Ok(WalletRef {
                key: r.get(0)?,
                id: r.get(1)?,
            })
        })?)
}

/// Records a withdrawal to run at `scheduled_at`. Its reference is taken at once.
/// The time window is checked only for a new reference: a retry that arrives after the
/// scheduled time (or after the withdrawal ran) still replays the original, as it must.
pub fn schedule(
    conn: &Connection,
    now: Timestamp,
    wallet: &WalletRef,
    m: &Movement,
    scheduled_at: Timestamp,
    latest: Timestamp,
) -> Result<Outcome<Withdrawal>, AppError> {
    let wallet_id = wallet.id.as_str();
    if let Some(w) = find_by_reference(conn, wallet_id, m.reference.as_str())? {
        let same = w.amount == m.amount.minor()
            && w.metadata == m.metadata
            && w.scheduled_at == scheduled_at;
        return if same {
            Ok(Outcome::replay(w))
        } else {
            Err(conflict(format_args!("withdrawal {}", w.id)))
        };
    }
    if let Some(e) = entries::find_by_reference(
        conn,
        wallet.key,
        EntryKind::Withdrawal,
        m.reference.as_str(),
    )? {
        return Err(conflict(format_args!("transaction {}", e.id)));
    }
    if scheduled_at <= now {
        return Err(AppError::field("scheduled_at", "must be in the future"));
    }
    if scheduled_at > latest {
        let days = (latest.micros() - now.micros()) / 86_400_000_000;
        return Err(AppError::field(
            "scheduled_at",
            format!("must be at most {days} days ahead"),
        ));
    }
    let id = uuid::Uuid::now_v7().to_string();
    conn.prepare_cached(
        "INSERT INTO withdrawals (id, wallet_id, amount, reference, metadata, status, scheduled_at,
             next_attempt_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'PENDING', ?6, ?6, ?7, ?7)",
    )?
    .execute(params![
        id,
        wallet_id,
        m.amount.minor(),
        m.reference.as_str(),
        m.metadata.as_str(),
        scheduled_at.to_text(),
        now.to_text()
    ])?;
    let w = find(conn, wallet_id, &id)?;
    Ok(Outcome {
        value: w,
        replayed: false,
    })
}

pub fn cancel(
    conn: &Connection,
    now: Timestamp,
    wallet_id: &str,
    id: &str,
) -> Result<Withdrawal, AppError> {
    let w = find(conn, wallet_id, id)?;
    if w.status != WithdrawalStatus::Pending {
        return Err(AppError::Conflict(format!(
            "only a PENDING withdrawal can be cancelled; this one is {}",
            w.status.as_str()
        )));
    }
    set_status(conn, now, id, WithdrawalStatus::Cancelled, None)?;
    find(conn, wallet_id, id)
}

fn set_status(
    conn: &Connection,
    now: Timestamp,
    id: &str,
    status: WithdrawalStatus,
    error_message: Option<&str>,
) -> Result<(), AppError> {
    conn.prepare_cached(
        "UPDATE withdrawals SET status = ?2, error_message = COALESCE(?3, error_message), updated_at = ?4 WHERE id = ?1",
    )?
    .execute(params![id, status.as_str(), error_message, now.to_text()])?;
    Ok(())
}

/// Due withdrawals, oldest first: pending ones whose time has come and processing ones whose
/// next payout attempt is due (including those a killed process left behind).
pub fn due(conn: &Connection, now: Timestamp, limit: u32) -> Result<Vec<Withdrawal>, AppError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM withdrawals WHERE status IN ('PENDING', 'PROCESSING') AND next_attempt_at <= ?1
             ORDER BY next_attempt_at, id LIMIT ?2"
        ))?
        .query_map(params![now.to_text(), limit], from_row)?
        .collect::<Result<Vec<_>, _>>()?)
}

/// When the worker next has something to do.
pub fn next_due_at(conn: &Connection) -> Result<Option<Timestamp>, AppError> {
    let t: Option<String> = conn
        .prepare_cached("SELECT min(next_attempt_at) FROM withdrawals WHERE status IN ('PENDING', 'PROCESSING')")?
        .query_row([], |r| r.get(0))?;
    Ok(t.map(|t| Timestamp::from_stored(&t)))
}

/// Step 1 at the scheduled time: debit the wallet and mark PROCESSING, or fail without an
/// entry when the balance is short. With `complete`, there is no payout service and the
/// withdrawal succeeds at once. Returns the withdrawal as it now stands.
pub fn begin(
    conn: &Connection,
    now: Timestamp,
    currency: &Currency,
    id: &str,
    complete: bool,
) -> Result<Withdrawal, AppError> {
    let w = find_any(conn, id)?.ok_or(AppError::NotFound("withdrawal"))?;
    if w.status != WithdrawalStatus::Pending {
        // Cancelled or already taken in the meantime: nothing to do.
        return Ok(w);
    }
    let wallet = wallet_ref(conn, &w.wallet_id)?;
    let appended = entries::append(
        conn,
        now,
        NewEntry {
            wallet: &wallet,
            kind: EntryKind::Withdrawal,
            amount: w.amount,
            reference: &w.reference,
            counterparty_user_id: None,
            transfer_id: None,
            metadata: &w.metadata,
        },
        |v| currency.format(v),
    );
    match appended {
        Err(AppError::InsufficientFunds {
            available,
            required,
        }) => {
            let message = format!("insufficient funds at the scheduled time: available {available}, required {required}");
            set_status(conn, now, id, WithdrawalStatus::Failed, Some(&message))?;
        }
        Err(e) => return Err(e),
        Ok(entry) => {
            let status = if complete {
                WithdrawalStatus::Succeeded
            } else {
                WithdrawalStatus::Processing
            };
            conn.prepare_cached(
                "UPDATE withdrawals SET status = ?2, transaction_id = ?3, updated_at = ?4, next_attempt_at = ?4 WHERE id = ?1",
            )?
            .execute(params![id, status.as_str(), entry.id, now.to_text()])?;
        }
    }
    find_any(conn, id)?.ok_or(AppError::NotFound("withdrawal"))
}

/// Puts off a PROCESSING withdrawal until `until`, with a message saying why.
pub fn defer(
    conn: &Connection,
    now: Timestamp,
    id: &str,
    message: &str,
    until: Timestamp,
) -> Result<(), AppError> {
    conn.prepare_cached(
        "UPDATE withdrawals SET error_message = ?2, next_attempt_at = ?3, updated_at = ?4
         WHERE id = ?1 AND status = 'PROCESSING'",
    )?
    .execute(params![id, message, until.to_text(), now.to_text()])?;
    Ok(())
}

/// What one payout call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Paid,
    /// The service refused for good (4xx): fail and refund.
    Refused(String),
    /// A 5xx, timeout or connection error: retry at `retry_at`, unless attempts are used up.
    Failed {
        error: String,
        retry_at: Timestamp,
    },
}

/// Step 3: records one payout attempt on a PROCESSING withdrawal. A final failure writes the
/// REFUND entry in the same transaction as the FAILED status, so neither exists without the other.
pub fn record_attempt(
    conn: &Connection,
    now: Timestamp,
    currency: &Currency,
    id: &str,
    attempt: &Attempt,
    attempts_max: u32,
) -> Result<Withdrawal, AppError> {
    let w = find_any(conn, id)?.ok_or(AppError::NotFound("withdrawal"))?;
    if w.status != WithdrawalStatus::Processing {
        return Ok(w);
    }
    let attempts = w.attempts + 1;
    let final_error = match attempt {
        Attempt::Paid => None,
        Attempt::Refused(msg) => Some(format!("payout refused: {msg}")),
        Attempt::Failed { error, .. } if attempts >= attempts_max => {
            Some(format!("payout failed after {attempts} attempts: {error}"))
        }
        Attempt::Failed { error, retry_at } => {
            conn.prepare_cached(
                "UPDATE withdrawals SET attempts = ?2, error_message = ?3, next_attempt_at = ?4, updated_at = ?5 WHERE id = ?1",
            )?
            .execute(params![id, attempts, error, retry_at.to_text(), now.to_text()])?;
            return find_any(conn, id)?.ok_or(AppError::NotFound("withdrawal"));
        }
    };
    match final_error {
        None => {
            conn.prepare_cached("UPDATE withdrawals SET attempts = ?2, status = 'SUCCEEDED', updated_at = ?3 WHERE id = ?1")?
                .execute(params![id, attempts, now.to_text()])?;
        }
        Some(message) => {
            let wallet = wallet_ref(conn, &w.wallet_id)?;
            let refund = entries::append(
                conn,
                now,
                NewEntry {
                    wallet: &wallet,
                    kind: EntryKind::Refund,
                    amount: w.amount,
                    reference: &w.reference,
                    counterparty_user_id: None,
                    transfer_id: None,
                    metadata: &w.metadata,
                },
                |v| currency.format(v),
            )?;
            conn.prepare_cached(
                "UPDATE withdrawals SET attempts = ?2, status = 'FAILED', error_message = ?3,
                     refund_transaction_id = ?4, updated_at = ?5 WHERE id = ?1",
            )?
            .execute(params![id, attempts, message, refund.id, now.to_text()])?;
        }
    }
    find_any(conn, id)?.ok_or(AppError::NotFound("withdrawal"))
}
