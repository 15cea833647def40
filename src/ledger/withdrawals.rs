//! Scheduled withdrawals: requested now, debited at their time, paid out by `jobs::payout`.
//!
//! PENDING --(due, funds short)--> FAILED (no entry)
//! PENDING --(due)--> PROCESSING (WITHDRAWAL entry written, wallet debited)
//! PROCESSING --(2xx, or no payout service)--> SUCCEEDED
//! PROCESSING --(definitely not paid: 400/401/403/404/422, or every attempt a 500, 503 or no
//!               connection)--> FAILED + REFUND entry, in one transaction
//! PROCESSING --(any attempt of unknown outcome, then the retry window ends)--> PROCESSING,
//!               left for staff with a message saying the outcome is unknown
//! PROCESSING --(staff resolve: succeeded)--> SUCCEEDED
//! PROCESSING --(staff resolve: failed)--> FAILED + REFUND entry, in one transaction
//! PENDING --(cancel)--> CANCELLED

use super::entries::{self, NewEntry, WalletRef};
use super::{conflict, Movement, Outcome};
use crate::domain::{
    Currencies, EntryKind, Metadata, MinorUnits, PayoutResolution, Timestamp, WithdrawalStatus,
};
use crate::error::AppError;
use crate::store::{Engine, Row, Sql};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withdrawal {
    pub id: String,
    pub wallet_id: String,
    pub amount: MinorUnits,
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
    /// When an attempt first ended without saying whether the money left; from then on only
    /// staff can fail (and refund) it.
    pub outcome_unknown_since: Option<Timestamp>,
    /// When the payout call under way started; set before each call, cleared with its outcome.
    pub payout_call_started_at: Option<Timestamp>,
    /// The code of the currency it pays out.
    pub currency: String,
}

const COLUMNS: &str =
    "id, wallet_id, amount, reference, metadata, status, scheduled_at, next_attempt_at, \
     attempts, error_message, created_at, updated_at, transaction_id, refund_transaction_id, \
     outcome_unknown_since, payout_call_started_at, currency";

fn from_row(r: &Row) -> Result<Withdrawal, AppError> {
    let status: String = r.get(5)?;
    Ok(Withdrawal {
        id: r.get(0)?,
        wallet_id: r.get(1)?,
        amount: r.get(2)?,
        reference: r.get(3)?,
        metadata: Metadata::from_stored(r.get(4)?),
        status: WithdrawalStatus::parse(&status).ok_or_else(|| {
            AppError::internal("reading a withdrawal", format!("status {status}"))
        })?,
        scheduled_at: r.get(6)?,
        next_attempt_at: r.get(7)?,
        attempts: r.get(8)?,
        error_message: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
        transaction_id: r.get(12)?,
        refund_transaction_id: r.get(13)?,
        outcome_unknown_since: r.get(14)?,
        payout_call_started_at: r.get(15)?,
        currency: r.get(16)?,
    })
}

/// The withdrawal `row` holds, if there is a row.
fn first(row: Option<Row>) -> Result<Option<Withdrawal>, AppError> {
    row.as_ref().map(from_row).transpose()
}

pub fn find_by_reference(
    conn: &dyn Sql,
    wallet_id: &str,
    reference: &str,
) -> Result<Option<Withdrawal>, AppError> {
    first(conn.query_opt(
        &format!("SELECT {COLUMNS} FROM withdrawals WHERE wallet_id = ?1 AND reference = ?2"),
        &[&wallet_id, &reference],
    )?)
}

/// A withdrawal of this wallet; another wallet's is "not found".
pub fn find(conn: &dyn Sql, wallet_id: &str, id: &str) -> Result<Withdrawal, AppError> {
    first(conn.query_opt(
        &format!("SELECT {COLUMNS} FROM withdrawals WHERE wallet_id = ?1 AND id = ?2"),
        &[&wallet_id, &id],
    )?)?
    .ok_or(AppError::NotFound("withdrawal"))
}

/// Locks a withdrawal's row until the transaction ends, before it is read to be changed. On
/// PostgreSQL another process may change it at the same moment (a user cancelling while a
/// worker begins it); the second waits and then reads what the first wrote. SQLite's one
/// writer needs none.
pub fn lock(conn: &dyn Sql, id: &str) -> Result<(), AppError> {
    if conn.engine() == Engine::Postgres {
        conn.query(
            "SELECT id FROM withdrawals WHERE id = ?1 FOR UPDATE",
            &[&id],
        )?;
    }
    Ok(())
}

/// The advisory-lock class of payout claims ("pa"): a worker holds `(PAYOUT_CLAIM_CLASS,
/// hashtext(id))` on a connection of its own while it works on a withdrawal
/// (`jobs::payout`), so that one process at a time calls the payout service for it, and the
/// lock goes with the process if it dies.
pub const PAYOUT_CLAIM_CLASS: i32 = 0x7061;

/// Whether a worker of another process may be calling the payout service for this
/// withdrawal right now (PostgreSQL). If not, the claim is held for this transaction, so no
/// worker starts a call until it ends. Always false on SQLite, whose one process keeps its
/// calls in `jobs::payout::InFlight`.
pub fn claimed_elsewhere(conn: &dyn Sql, id: &str) -> Result<bool, AppError> {
    if conn.engine() == Engine::Sqlite {
        return Ok(false);
    }
    let got: bool = conn
        .query_one(
            "SELECT pg_try_advisory_xact_lock(?1, hashtext(?2))",
            &[&PAYOUT_CLAIM_CLASS, &id],
        )?
        .get(0)?;
    Ok(!got)
}

pub fn find_any(conn: &dyn Sql, id: &str) -> Result<Option<Withdrawal>, AppError> {
    first(conn.query_opt(
        &format!("SELECT {COLUMNS} FROM withdrawals WHERE id = ?1"),
        &[&id],
    )?)
}

pub fn list(
    conn: &dyn Sql,
    wallet_id: &str,
    status: Option<WithdrawalStatus>,
    limit: u32,
    offset: u32,
) -> Result<(i64, Vec<Withdrawal>), AppError> {
    let status = status.map(WithdrawalStatus::as_str);
    let count: i64 = conn
        .query_one(
            "SELECT count(*) FROM withdrawals WHERE wallet_id = ?1 AND (CAST(?2 AS TEXT) IS NULL OR status = ?2)",
            &[&wallet_id, &status],
        )?
        .get(0)?;
    let rows = conn
        .query(
            &format!(
                "SELECT {COLUMNS} FROM withdrawals WHERE wallet_id = ?1 AND (CAST(?2 AS TEXT) IS NULL OR status = ?2)
             ORDER BY created_at DESC, id DESC LIMIT ?3 OFFSET ?4"
            ),
            &[&wallet_id, &status, &limit, &offset],
        )?
        .iter()
        .map(from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((count, rows))
}

/// The wallet a withdrawal (which names it by public id) debits or refunds.
fn wallet_ref(conn: &dyn Sql, wallet_id: &str) -> Result<WalletRef, AppError> {
    let r = conn.query_one("SELECT key, id FROM wallets WHERE id = ?1", &[&wallet_id])?;
    Ok(WalletRef {
        key: r.get(0)?,
        id: r.get(1)?,
    })
}

/// Records a withdrawal to run at `scheduled_at`. Its reference is taken at once.
/// The time window is checked only for a new reference: a retry that arrives after the
/// scheduled time (or after the withdrawal ran) still replays the original, as it must.
pub fn schedule(
    conn: &dyn Sql,
    now: Timestamp,
    wallet: &WalletRef,
    m: &Movement,
    scheduled_at: Timestamp,
    latest: Timestamp,
) -> Result<Outcome<Withdrawal>, AppError> {
    let wallet_id = wallet.id.as_str();
    entries::lock_reference(conn, wallet.key, m.reference.as_str())?;
    if let Some(w) = find_by_reference(conn, wallet_id, m.reference.as_str())? {
        let same = w.amount == m.amount.units()
            && w.currency == m.currency.code
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
    // A withdrawal is a debit the wallet starts: refused at once while it is frozen (and, if
    // it is frozen later, failed when it comes due).
    if entries::is_frozen(conn, wallet.key)? {
        return Err(AppError::WalletFrozen);
    }
    if scheduled_at > latest {
        let days = (latest.micros() - now.micros()) / 86_400_000_000;
        return Err(AppError::field(
            "scheduled_at",
            format!("must be at most {days} days ahead"),
        ));
    }
    let id = uuid::Uuid::now_v7().to_string();
    conn.execute(
        "INSERT INTO withdrawals (id, wallet_id, amount, reference, metadata, status, scheduled_at,
             next_attempt_at, created_at, updated_at, currency)
         VALUES (?1, ?2, ?3, ?4, ?5, 'PENDING', ?6, ?6, ?7, ?7, ?8)",
        &[
            &id,
            &wallet_id,
            &m.amount.minor(),
            &m.reference.as_str(),
            &m.metadata.as_str(),
            &scheduled_at,
            &now,
            &m.currency.code,
        ],
    )?;
    let w = find(conn, wallet_id, &id)?;
    Ok(Outcome {
        value: w,
        replayed: false,
    })
}

pub fn cancel(
    conn: &dyn Sql,
    now: Timestamp,
    wallet_id: &str,
    id: &str,
) -> Result<Withdrawal, AppError> {
    lock(conn, id)?;
    let w = find(conn, wallet_id, id)?;
    if w.status != WithdrawalStatus::Pending {
        return Err(AppError::Conflict(format!(
            "only a PENDING withdrawal can be cancelled; this one is {}",
            w.status.as_str()
        )));
    }
    set_status(conn, now, &w, WithdrawalStatus::Cancelled, None)?;
    find(conn, wallet_id, id)
}

/// Moves `w` to `status`, which its state machine must allow (asserted).
fn set_status(
    conn: &dyn Sql,
    now: Timestamp,
    w: &Withdrawal,
    status: WithdrawalStatus,
    error_message: Option<&str>,
) -> Result<(), AppError> {
    w.status.assert_may_become(status);
    let id = &w.id;
    conn.execute(
        "UPDATE withdrawals SET status = ?2, error_message = COALESCE(?3, error_message), updated_at = ?4 WHERE id = ?1",
        &[id, &status.as_str(), &error_message, &now],
    )?;
    Ok(())
}

/// Due withdrawals, oldest first: pending ones whose time has come and processing ones whose
/// next payout attempt is due (including those a killed process left behind).
pub fn due(conn: &dyn Sql, now: Timestamp, limit: u32) -> Result<Vec<Withdrawal>, AppError> {
    conn.query(
        &format!(
            "SELECT {COLUMNS} FROM withdrawals WHERE status IN ('PENDING', 'PROCESSING') AND next_attempt_at <= ?1
             ORDER BY next_attempt_at, id LIMIT ?2"
        ),
        &[&now, &limit],
    )?
    .iter()
    .map(from_row)
    .collect()
}

/// When the worker next has something to do.
pub fn next_due_at(conn: &dyn Sql) -> Result<Option<Timestamp>, AppError> {
    conn.query_one(
        "SELECT min(next_attempt_at) FROM withdrawals WHERE status IN ('PENDING', 'PROCESSING')",
        &[],
    )?
    .get(0)
}

/// Step 1 at the scheduled time: debit the wallet and mark PROCESSING, or fail without an
/// entry when the balance is short. With `complete`, there is no payout service and the
/// withdrawal succeeds at once. Returns the withdrawal as it now stands.
pub fn begin(
    conn: &dyn Sql,
    now: Timestamp,
    currencies: &Currencies,
    id: &str,
    complete: bool,
) -> Result<Withdrawal, AppError> {
    match begin_if_pending(conn, now, currencies, id, complete)? {
        Some(w) => Ok(w),
        None => find_any(conn, id)?.ok_or(AppError::NotFound("withdrawal")),
    }
}

/// `begin`, or `None` when the withdrawal is no longer PENDING: cancelled, or begun in the
/// meantime (by another process, on PostgreSQL), and then its worker must leave it alone.
pub fn begin_if_pending(
    conn: &dyn Sql,
    now: Timestamp,
    currencies: &Currencies,
    id: &str,
    complete: bool,
) -> Result<Option<Withdrawal>, AppError> {
    lock(conn, id)?;
    let w = find_any(conn, id)?.ok_or(AppError::NotFound("withdrawal"))?;
    if w.status != WithdrawalStatus::Pending {
        return Ok(None);
    }
    let wallet = wallet_ref(conn, &w.wallet_id)?;
    let appended = entries::append(
        conn,
        now,
        NewEntry {
            wallet: &wallet,
            kind: EntryKind::Withdrawal,
            amount: super::currency_of(currencies, &w.currency)?.money(w.amount),
            currency: &w.currency,
            reference: &w.reference,
            counterparty_user_id: None,
            transfer_id: None,
            metadata: &w.metadata,
            reverses: None,
        },
    );
    match appended {
        Err(AppError::InsufficientFunds {
            available,
            required,
        }) => {
            let message = format!("insufficient funds at the scheduled time: available {available}, required {required}");
            set_status(conn, now, &w, WithdrawalStatus::Failed, Some(&message))?;
        }
        Err(AppError::WalletFrozen) => {
            let message = "wallet_frozen: the wallet was frozen by staff at the scheduled time";
            set_status(conn, now, &w, WithdrawalStatus::Failed, Some(message))?;
        }
        Err(e) => return Err(e),
        Ok(entry) => {
            let status = if complete {
                WithdrawalStatus::Succeeded
            } else {
                WithdrawalStatus::Processing
            };
            w.status.assert_may_become(status);
            // The payout call follows at once: from here until its outcome is recorded, a
            // call may be under way.
            let call_started_at = (!complete).then_some(now);
            conn.execute(
                "UPDATE withdrawals SET status = ?2, transaction_id = ?3, updated_at = ?4, next_attempt_at = ?4,
                     payout_call_started_at = ?5 WHERE id = ?1",
                &[&id, &status.as_str(), &entry.id, &now, &call_started_at],
            )?;
        }
    }
    find_any(conn, id)?
        .ok_or(AppError::NotFound("withdrawal"))
        .map(Some)
}

/// Puts off a PROCESSING withdrawal until `until`, with a message saying why.
pub fn defer(
    conn: &dyn Sql,
    now: Timestamp,
    id: &str,
    message: &str,
    until: Timestamp,
) -> Result<(), AppError> {
    conn.execute(
        "UPDATE withdrawals SET error_message = ?2, next_attempt_at = ?3, updated_at = ?4
         WHERE id = ?1 AND status = 'PROCESSING'",
        &[&id, &message, &until, &now],
    )?;
    Ok(())
}

/// What one payout call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// A 2xx.
    Paid,
    /// The service read the request and refused it (400, 401, 403, 404, 422): not paid.
    Refused(String),
    /// Not paid this time, worth another try: no connection was made, or a 500 or 503.
    NotPaid(String),
    /// Whether it paid is unknown: a timeout after the request was sent, a 502, 504, 409, 429,
    /// a redirect or any other answer.
    Unknown(String),
}

/// When and how long to keep trying after an attempt that did not pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPlan {
    /// The next attempt's time by the backoff.
    pub retry_at: Timestamp,
    /// Definite failures (500, 503, no connection) allowed before the refund.
    pub attempts_max: u32,
    /// How long after the first attempt of unknown outcome the worker keeps trying.
    pub window_ms: i64,
}

/// The first words of the message on a withdrawal left for staff.
pub const OUTCOME_UNKNOWN_PREFIX: &str = "payout outcome unknown";
/// How long a withdrawal left for staff waits before the worker looks at it again (only to
/// check that it is still left: it makes no call).
pub const UNKNOWN_RECHECK_MS: i64 = 3_600_000;

/// Step 3: records one payout attempt on a PROCESSING withdrawal. A refund is written only when
/// the money definitely did not leave, and in the same transaction as the FAILED status, so
/// neither exists without the other. Once any attempt's outcome was unknown, no answer but a
/// 2xx is final: the worker retries within the window, then leaves it for staff.
pub fn record_attempt(
    conn: &dyn Sql,
    now: Timestamp,
    currencies: &Currencies,
    id: &str,
    attempt: &Attempt,
    plan: RetryPlan,
) -> Result<Withdrawal, AppError> {
    lock(conn, id)?;
    let w = find_any(conn, id)?.ok_or(AppError::NotFound("withdrawal"))?;
    if w.status != WithdrawalStatus::Processing {
        return Ok(w);
    }
    // This call has reported back.
    conn.execute(
        "UPDATE withdrawals SET payout_call_started_at = NULL WHERE id = ?1",
        &[&id],
    )?;
    let attempts = w.attempts + 1;
    match decide(attempt, attempts, w.outcome_unknown_since, now, plan) {
        Decision::Succeed => {
            w.status.assert_may_become(WithdrawalStatus::Succeeded);
            conn.execute(
                "UPDATE withdrawals SET attempts = ?2, status = 'SUCCEEDED', updated_at = ?3 WHERE id = ?1",
                &[&id, &attempts, &now],
            )?;
            find_any(conn, id)?.ok_or(AppError::NotFound("withdrawal"))
        }
        Decision::Refund(message) => fail_and_refund(conn, now, currencies, &w, attempts, &message),
        Decision::Retry { at, unknown_since } => {
            retry_later(conn, now, &w, attempts, attempt.error(), at, unknown_since)
        }
        Decision::LeaveForStaff { since } => {
            leave_for_staff(conn, now, &w, attempts, since, attempt.error())
        }
    }
}

/// What an attempt leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Succeed,
    /// FAILED and refunded, with this message.
    Refund(String),
    /// Try again at `at`; `unknown_since` as it now stands.
    Retry {
        at: Timestamp,
        unknown_since: Option<Timestamp>,
    },
    /// Whether it paid is unknown and the window is over: PROCESSING, for staff.
    LeaveForStaff {
        since: Timestamp,
    },
}

impl Attempt {
    fn error(&self) -> &str {
        match self {
            Attempt::Paid => "",
            Attempt::Refused(e) | Attempt::NotPaid(e) | Attempt::Unknown(e) => e,
        }
    }
}

/// The rule of "Payouts whose outcome is unknown", without storage: `attempts` counts this one,
/// `unknown_since` is when an earlier attempt first left the outcome unknown.
pub fn decide(
    attempt: &Attempt,
    attempts: u32,
    unknown_since: Option<Timestamp>,
    now: Timestamp,
    plan: RetryPlan,
) -> Decision {
    let unknown_since = match (attempt, unknown_since) {
        (Attempt::Paid, _) => return Decision::Succeed,
        (_, Some(since)) => Some(since),
        (Attempt::Unknown(_), None) => Some(now),
        _ => None,
    };
    let error = attempt.error();
    match (unknown_since, attempt) {
        (Some(since), _) if now >= since.plus_millis(plan.window_ms) => {
            Decision::LeaveForStaff { since }
        }
        (Some(since), _) => Decision::Retry {
            at: plan.retry_at.min(since.plus_millis(plan.window_ms)),
            unknown_since: Some(since),
        },
        (None, Attempt::Refused(msg)) => Decision::Refund(format!("payout refused: {msg}")),
        (None, _) if attempts >= plan.attempts_max => {
            Decision::Refund(format!("payout failed after {attempts} attempts: {error}"))
        }
        (None, _) => Decision::Retry {
            at: plan.retry_at,
            unknown_since: None,
        },
    }
}

/// Records an attempt that did not pay, and when to try again.
fn retry_later(
    conn: &dyn Sql,
    now: Timestamp,
    w: &Withdrawal,
    attempts: u32,
    error: &str,
    retry_at: Timestamp,
    unknown_since: Option<Timestamp>,
) -> Result<Withdrawal, AppError> {
    conn.execute(
        "UPDATE withdrawals SET attempts = ?2, error_message = ?3, next_attempt_at = ?4,
             outcome_unknown_since = ?5, updated_at = ?6 WHERE id = ?1",
        &[&w.id, &attempts, &error, &retry_at, &unknown_since, &now],
    )?;
    find_any(conn, &w.id)?.ok_or(AppError::NotFound("withdrawal"))
}

/// Before a retry's call (or a call resumed after a restart): the withdrawal as it stands, if a
/// call should be made, now marked as called. None when it is no longer PROCESSING (staff
/// resolved it), or when its retry window is over (unless this is the last retry, due at the
/// window's end), in which case it is left for staff (again) and looked at only hourly. A call that started but never reported back (the process
/// stopped during it) makes the outcome unknown from now on. Runs in the writer, so it is
/// ordered with `resolve`: whichever runs second sees what the first did.
pub fn before_retry(
    conn: &dyn Sql,
    now: Timestamp,
    id: &str,
    window_ms: i64,
) -> Result<Option<Withdrawal>, AppError> {
    lock(conn, id)?;
    let Some(w) = find_any(conn, id)? else {
        return Ok(None);
    };
    if w.status != WithdrawalStatus::Processing || w.next_attempt_at > now {
        // Resolved, or retried in the meantime by another process and not due again yet.
        return Ok(None);
    }
    let (unknown_since, error) = match (w.outcome_unknown_since, w.payout_call_started_at) {
        (Some(since), _) => (Some(since), w.error_message.clone()),
        (None, Some(started)) => (
            Some(now),
            Some(format!(
                "the payout call of {} never reported back (the server stopped during it)",
                started.to_text()
            )),
        ),
        (None, None) => (None, w.error_message.clone()),
    };
    if let Some(since) = unknown_since {
        // The retry `decide` schedules at the window's very end is the last one: it is made
        // although the worker reaches it (a little) after the end. Any other attempt reached
        // once the window is over is not.
        let end = since.plus_millis(window_ms);
        if now >= end && w.next_attempt_at != end {
            let last = error.unwrap_or_default();
            leave_for_staff(conn, now, &w, w.attempts, since, &last)?;
            return Ok(None);
        }
    }
    conn.execute(
        "UPDATE withdrawals SET payout_call_started_at = ?2, outcome_unknown_since = ?3,
             error_message = ?4 WHERE id = ?1",
        &[&id, &now, &unknown_since, &error],
    )?;
    find_any(conn, id)
}

/// Leaves a PROCESSING withdrawal whose outcome is unknown for staff: no refund, a message
/// saying why, and no call until staff resolve it.
fn leave_for_staff(
    conn: &dyn Sql,
    now: Timestamp,
    w: &Withdrawal,
    attempts: u32,
    since: Timestamp,
    last_error: &str,
) -> Result<Withdrawal, AppError> {
    let message = if last_error.starts_with(OUTCOME_UNKNOWN_PREFIX) {
        last_error.to_string()
    } else {
        format!(
            "{OUTCOME_UNKNOWN_PREFIX} after {attempts} attempts (last: {last_error}); the payout \
             service may have paid it: staff must check with it and resolve this withdrawal"
        )
    };
    conn.execute(
        "UPDATE withdrawals SET attempts = ?2, error_message = ?3, next_attempt_at = ?4,
             outcome_unknown_since = ?5, updated_at = ?6, payout_call_started_at = NULL WHERE id = ?1",
        &[
            &w.id,
            &attempts,
            &message,
            &now.plus_millis(UNKNOWN_RECHECK_MS),
            &since,
            &now,
        ],
    )?;
    find_any(conn, &w.id)?.ok_or(AppError::NotFound("withdrawal"))
}

/// FAILED with its REFUND entry, in the caller's transaction.
fn fail_and_refund(
    conn: &dyn Sql,
    now: Timestamp,
    currencies: &Currencies,
    w: &Withdrawal,
    attempts: u32,
    message: &str,
) -> Result<Withdrawal, AppError> {
    w.status.assert_may_become(WithdrawalStatus::Failed);
    let wallet = wallet_ref(conn, &w.wallet_id)?;
    let refund = entries::append(
        conn,
        now,
        NewEntry {
            wallet: &wallet,
            kind: EntryKind::Refund,
            amount: super::currency_of(currencies, &w.currency)?.money(w.amount),
            currency: &w.currency,
            reference: &w.reference,
            counterparty_user_id: None,
            transfer_id: None,
            metadata: &w.metadata,
            reverses: None,
        },
    )?;
    conn.execute(
        "UPDATE withdrawals SET attempts = ?2, status = 'FAILED', error_message = ?3,
             refund_transaction_id = ?4, updated_at = ?5 WHERE id = ?1",
        &[&w.id, &attempts, &message, &refund.id, &now],
    )?;
    find_any(conn, &w.id)?.ok_or(AppError::NotFound("withdrawal"))
}

/// The user whose wallet a withdrawal debits.
pub fn owner_user_id(conn: &dyn Sql, w: &Withdrawal) -> Result<i64, AppError> {
    conn.query_one("SELECT user_id FROM wallets WHERE id = ?1", &[&w.wallet_id])?
        .get(0)
}

/// Staff settle a PROCESSING withdrawal after asking the payout service: `Succeeded` marks it
/// paid; `Failed` refunds it, in this transaction. Anything but PROCESSING is a conflict. The
/// caller has checked that no payout call for it is in flight.
pub fn resolve(
    conn: &dyn Sql,
    now: Timestamp,
    currencies: &Currencies,
    w: &Withdrawal,
    resolution: PayoutResolution,
) -> Result<Withdrawal, AppError> {
    if w.status != WithdrawalStatus::Processing {
        return Err(AppError::Conflict(format!(
            "only a PROCESSING withdrawal can be resolved; this one is {}",
            w.status.as_str()
        )));
    }
    match resolution {
        PayoutResolution::Succeeded => {
            w.status.assert_may_become(WithdrawalStatus::Succeeded);
            conn.execute(
                "UPDATE withdrawals SET status = 'SUCCEEDED', error_message = NULL, updated_at = ?2
                 WHERE id = ?1 AND status = 'PROCESSING'",
                &[&w.id, &now],
            )?;
            find_any(conn, &w.id)?.ok_or(AppError::NotFound("withdrawal"))
        }
        PayoutResolution::Failed => fail_and_refund(
            conn,
            now,
            currencies,
            w,
            w.attempts,
            "payout failed: resolved by staff after checking with the payout service",
        ),
    }
}

/// Withdrawals left PROCESSING because whether they were paid is unknown and their retry window
/// ended before `now`: the ones waiting for staff.
pub fn count_outcome_unknown(
    conn: &dyn Sql,
    now: Timestamp,
    window_ms: i64,
) -> Result<i64, AppError> {
    let cutoff = now.plus_millis(-window_ms);
    conn.query_one(
        "SELECT count(*) FROM withdrawals
             WHERE status = 'PROCESSING' AND outcome_unknown_since <= ?1",
        &[&cutoff],
    )?
    .get(0)
}

#[cfg(test)]
mod tests {
    use rusqlite::{params, Connection};

    use super::*;

    fn t(ms: i64) -> Timestamp {
        Timestamp::parse("2026-03-02T09:00:00Z")
            .unwrap()
            .plus_millis(ms)
    }

    #[test]
    fn only_a_definite_answer_refunds_and_unknown_sticks() {
        // now = 1 s; retries 100 ms later; 3 definite failures; a 10 s window.
        let plan = RetryPlan {
            retry_at: t(1_100),
            attempts_max: 3,
            window_ms: 10_000,
        };
        let decide_at =
            |a: &Attempt, n: u32, since: Option<Timestamp>| decide(a, n, since, t(1_000), plan);
        let refused = Attempt::Refused("HTTP 400: no".into());
        let not_paid = Attempt::NotPaid("HTTP 500: down".into());
        let unknown = Attempt::Unknown("HTTP 502: gateway".into());
        let retry = |since| Decision::Retry {
            at: t(1_100),
            unknown_since: since,
        };
        assert_eq!(decide_at(&Attempt::Paid, 1, Some(t(0))), Decision::Succeed);
        assert_eq!(
            decide_at(&refused, 1, None),
            Decision::Refund("payout refused: HTTP 400: no".into())
        );
        assert_eq!(decide_at(&not_paid, 2, None), retry(None));
        assert_eq!(
            decide_at(&not_paid, 3, None),
            Decision::Refund("payout failed after 3 attempts: HTTP 500: down".into())
        );
        // The first unknown outcome starts the window now; later definite answers don't refund.
        assert_eq!(decide_at(&unknown, 1, None), retry(Some(t(1_000))));
        assert_eq!(decide_at(&unknown, 9, None), retry(Some(t(1_000))));
        assert_eq!(decide_at(&refused, 2, Some(t(0))), retry(Some(t(0))));
        assert_eq!(decide_at(&not_paid, 5, Some(t(0))), retry(Some(t(0))));
        // The last retry is at the window's end, not after it; at its end, staff.
        assert_eq!(
            decide_at(&unknown, 2, Some(t(-8_950))),
            Decision::Retry {
                at: t(1_050),
                unknown_since: Some(t(-8_950))
            }
        );
        assert_eq!(
            decide_at(&not_paid, 2, Some(t(-9_000))),
            Decision::LeaveForStaff { since: t(-9_000) }
        );
    }

    /// A database holding one PROCESSING withdrawal whose outcome has been unknown since
    /// `since`, due again at `due`.
    fn processing_since(since: Timestamp, due: Timestamp) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::db::SCHEMA_SQL).unwrap();
        conn.execute_batch(
            "INSERT INTO users (id, username, username_key, email, email_key, password_hash, date_joined)
                 VALUES (1, 'a', 'a', 'a@example.com', 'a@example.com', 'x', '2026-03-01T00:00:00.000000Z');
             INSERT INTO wallets (key, id, user_id, created_at)
                 VALUES (1, 'w', 1, '2026-03-01T00:00:00.000000Z');",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO withdrawals (id, wallet_id, amount, reference, status, scheduled_at,
                 next_attempt_at, attempts, created_at, updated_at, outcome_unknown_since, currency)
             VALUES ('x', 'w', 100, 'r', 'PROCESSING', ?1, ?2, 2, ?1, ?1, ?3, 'USD')",
            params![t(-60_000).to_text(), due.to_text(), since.to_text()],
        )
        .unwrap();
        conn
    }

    #[test]
    fn the_retry_due_at_the_windows_end_is_made() {
        // `decide` puts the last retry at the window's end (since + 10 s). The worker reaches it
        // a little later; the call is still made, and it is the last one.
        let window_ms = 10_000;
        let conn = processing_since(t(0), t(window_ms));
        let w = before_retry(&conn, t(window_ms + 50), "x", window_ms)
            .unwrap()
            .expect("the last retry is made");
        assert_eq!(w.payout_call_started_at, Some(t(window_ms + 50)));
        let plan = RetryPlan {
            retry_at: t(window_ms + 1_000),
            attempts_max: 3,
            window_ms,
        };
        assert_eq!(
            decide(
                &Attempt::Unknown("HTTP 502".into()),
                3,
                Some(t(0)),
                t(window_ms + 60),
                plan
            ),
            Decision::LeaveForStaff { since: t(0) }
        );
        // A retry due before the end but reached after it makes no call, nor does a look due
        // after the end (the hourly one for staff).
        let conn = processing_since(t(0), t(window_ms - 1));
        assert_eq!(
            before_retry(&conn, t(window_ms + 50), "x", window_ms).unwrap(),
            None
        );
        let conn = processing_since(t(0), t(window_ms + UNKNOWN_RECHECK_MS));
        assert_eq!(
            before_retry(&conn, t(window_ms + UNKNOWN_RECHECK_MS), "x", window_ms).unwrap(),
            None
        );
        let left = find_any(&conn, "x").unwrap().unwrap();
        assert_eq!(left.status, WithdrawalStatus::Processing);
        assert!(left
            .error_message
            .is_some_and(|m| m.starts_with(OUTCOME_UNKNOWN_PREFIX)));
    }
}
