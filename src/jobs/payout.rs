//! The payout worker: takes due withdrawals in order, debits them (step 1), calls the payout
//! service outside any transaction (step 2), and records the outcome (step 3). It sleeps
//! until the next due time, or until a new withdrawal nudges it.
//!
//! Crash safety: the debit and PROCESSING are one transaction; the call carries
//! `Idempotency-Key: <withdrawal id>`, so a call repeated after a crash pays once; a
//! PROCESSING withdrawal is due again at start-up and resumes with the same key.
//!
//! Only a definite "not paid" refunds: no connection was made, or the service refused the
//! request (400, 401, 403, 404, 422), or it answered 500 or 503 on every attempt. Any other
//! outcome (a timeout after the request was sent, a 502, a 429, ...) says nothing about whether
//! the money left: the worker retries within `--payout-retry-window` and then leaves the
//! withdrawal PROCESSING for staff (`POST /api/admin/withdrawals/{id}/resolve`).

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::json;

use crate::clock::{SharedClock, Wakeup};
use crate::db::{self, Pool, Writer};
use crate::domain::{Currencies, Timestamp, WithdrawalStatus};
use crate::error::AppError;
use crate::ledger::withdrawals::{self, Attempt, RetryPlan, Withdrawal};
use crate::metrics::Metrics;
use crate::store::postgres::PgConn;
use crate::store::Sql;

/// Withdrawals taken per look at the table.
pub const DUE_BATCH_MAX: u32 = 100;
/// How long a withdrawal left PROCESSING without a configured payout service waits before it
/// is looked at again.
pub const PARKED_RETRY_MS: i64 = 3_600_000;
const PARKED_MESSAGE: &str =
    "debited while a payout service was configured, which no longer is; set WALLET_PAYOUT_URL to finish it";
/// After an error, the worker waits this long before looking at due withdrawals again.
pub const ERROR_BACKOFF_MS: u64 = 1_000;
/// Most of the payout service's reply kept as the error message.
pub const PAYOUT_ERROR_CHARS_MAX: usize = 500;
/// The longest wait between two retries (or the base delay, if that is longer): a retry
/// window of a day is tried every hour at its end, not twice in all.
pub const RETRY_DELAY_MS_MAX: u64 = 3_600_000;

#[derive(Clone, Debug)]
pub struct PayoutSettings {
    pub url: Option<String>,
    pub attempts_max: u32,
    pub retry_base_ms: u64,
    pub timeout_ms: u64,
    /// How long after an attempt of unknown outcome the worker keeps trying.
    pub retry_window: Duration,
}

/// The withdrawals the worker is handling right now (from just before its payout call is
/// decided until its outcome is recorded). Staff can't resolve one of them: the call might
/// pay it while they refund it. The worker enters a withdrawal here before the writer job that
/// decides to call, and staff check here inside their writer job, so the writer's order
/// settles every race.
#[derive(Default)]
pub struct InFlight(Mutex<HashSet<String>>);

impl InFlight {
    pub fn contains(&self, id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    fn enter(&self, id: &str) -> InFlightGuard<'_> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
        InFlightGuard {
            set: self,
            id: id.to_string(),
        }
    }
}

struct InFlightGuard<'a> {
    set: &'a InFlight,
    id: String,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.set
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// PostgreSQL: where this process holds its payout claims, one session advisory lock per
/// withdrawal it is working on (`withdrawals::PAYOUT_CLAIM_CLASS`). A claim taken is the
/// process's until it lets go or dies (its session ends), so each due withdrawal is worked on,
/// and its payout service called, by one process at a time. SQLite has one process: no claims.
pub struct Claims {
    url: Option<String>,
    conn: RefCell<Option<PgConn>>,
}

impl Claims {
    pub fn new(url: Option<String>) -> Claims {
        Claims {
            url,
            conn: RefCell::new(None),
        }
    }

    /// Claims the withdrawal: `None` when another process holds it (leave it to that one).
    fn claim(&self, id: &str) -> Result<Option<Claim<'_>>, AppError> {
        let Some(url) = &self.url else {
            return Ok(Some(Claim {
                claims: self,
                id: None,
            }));
        };
        let mut conn = self.conn.borrow_mut();
        if conn.as_ref().is_none_or(PgConn::is_closed) {
            *conn = Some(PgConn::connect(url).map_err(crate::store::postgres::app_error)?);
        }
        let got: bool = conn
            .as_ref()
            .map(|c| {
                c.query_one(
                    "SELECT pg_try_advisory_lock(?1, hashtext(?2))",
                    &[&withdrawals::PAYOUT_CLAIM_CLASS, &id],
                )
            })
            .transpose()?
            .map(|r| r.get(0))
            .transpose()?
            .unwrap_or(false);
        Ok(got.then(|| Claim {
            claims: self,
            id: Some(id.to_string()),
        }))
    }
}

/// A claim held; let go when dropped.
struct Claim<'a> {
    claims: &'a Claims,
    id: Option<String>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let (Some(id), Some(conn)) = (&self.id, &*self.claims.conn.borrow()) else {
            return;
        };
        // Should this fail, the connection is broken and its locks are gone with it.
        let _ = conn.query_one(
            "SELECT pg_advisory_unlock(?1, hashtext(?2))",
            &[&withdrawals::PAYOUT_CLAIM_CLASS, id],
        );
    }
}

pub struct PayoutWorker {
    pub claims: Claims,
    pub settings: PayoutSettings,
    pub currencies: Currencies,
    pub writer: Writer,
    pub pool: Pool,
    pub clock: SharedClock,
    pub wakeup: Arc<Wakeup>,
    pub metrics: Arc<Metrics>,
    pub in_flight: Arc<InFlight>,
}

impl PayoutWorker {
    pub fn spawn(self) -> JoinHandle<()> {
        std::thread::Builder::new()
            .name("payout".into())
            .spawn(move || self.run())
            .expect("spawn the payout thread")
    }

    fn run(self) {
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            // Connecting and then waiting for the answer each get the timeout; the whole call
            // at most twice it. With separate budgets a connection that was never made is told
            // apart (Timeout::Resolve/Connect: not paid) from a wait for an answer that ran out
            // (the request went out: the outcome is unknown).
            .timeout_resolve(Some(timeout))
            .timeout_connect(Some(timeout))
            .timeout_recv_response(Some(timeout))
            .timeout_global(Some(timeout * 2))
            .http_status_as_error(false)
            // A redirect is not a payout: following one turned the POST into a GET whose 200
            // looked like success. A 3xx is an answer of unknown outcome, retried.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .build()
            .into();
        while !self.wakeup.is_stopping() {
            let due = self
                .pool
                .get()
                .map_err(AppError::from)
                .and_then(|c| withdrawals::due(&*c, self.clock.now(), DUE_BATCH_MAX));
            match due {
                Ok(due) if !due.is_empty() => {
                    for w in due {
                        if self.wakeup.is_stopping() {
                            return;
                        }
                        if let Err(e) = self.process(&agent, w) {
                            // The row is still due; without a pause this would spin on it.
                            crate::log::error(&format!("payout: {e:?}"));
                            if !self.wakeup.sleep(Duration::from_millis(ERROR_BACKOFF_MS)) {
                                return;
                            }
                        }
                    }
                }
                Ok(_) => {
                    let next = self
                        .pool
                        .get()
                        .map_err(AppError::from)
                        .and_then(|c| withdrawals::next_due_at(&*c));
                    let until = match next {
                        Ok(Some(t)) => t,
                        _ => self.clock.now().plus_millis(60_000),
                    };
                    if !super::sleep_until(self.clock.as_ref(), &self.wakeup, until) {
                        return;
                    }
                }
                Err(e) => {
                    crate::log::error(&format!("payout: cannot read due withdrawals: {e:?}"));
                    if !self.wakeup.sleep(Duration::from_secs(1)) {
                        return;
                    }
                }
            }
        }
    }

    fn process(&self, agent: &ureq::Agent, w: Withdrawal) -> Result<(), AppError> {
        let Some(_claim) = self.claims.claim(&w.id)? else {
            // Another process is working on it.
            return Ok(());
        };
        // From here until its outcome is recorded, staff can't resolve it.
        let _in_flight = self.in_flight.enter(&w.id);
        let mut w = w;
        let debited_now = w.status == WithdrawalStatus::Pending;
        if debited_now {
            let (currencies, id, complete) = (
                self.currencies.clone(),
                w.id.clone(),
                self.settings.url.is_none(),
            );
            let begun = self.writer.execute(move |conn, now| {
                withdrawals::begin_if_pending(conn, now, &currencies, &id, complete)
            })?;
            let Some(begun) = begun else {
                // Cancelled, or begun by another process, since it was found due.
                return Ok(());
            };
            w = begun;
            self.count(&w);
        }
        if w.status != WithdrawalStatus::Processing {
            return Ok(());
        }
        let Some(url) = &self.settings.url else {
            // Debited under a payout service that is no longer configured: whether it paid is
            // unknown, so neither succeed nor refund. Park it, visibly, for an operator.
            let id = w.id.clone();
            let until = self.clock.now().plus_millis(PARKED_RETRY_MS);
            self.writer.execute(move |conn, now| {
                withdrawals::defer(conn, now, &id, PARKED_MESSAGE, until)
            })?;
            crate::log::error(&format!(
                "payout: withdrawal {} is PROCESSING but no payout URL is set",
                w.id
            ));
            return Ok(());
        };
        if !debited_now {
            // A retry, or a call resumed after a restart: read it again in the writer (staff
            // may have resolved it since it was found due), and leave it for staff once its
            // retry window is over.
            let (id, window_ms) = (w.id.clone(), self.window_ms());
            let fresh = self
                .writer
                .execute(move |conn, now| withdrawals::before_retry(conn, now, &id, window_ms))?;
            match fresh {
                Some(fresh) => {
                    if fresh.outcome_unknown_since.is_some() && w.outcome_unknown_since.is_none() {
                        // A call the process never heard back from.
                        self.metrics.payouts_outcome_unknown.inc();
                    }
                    w = fresh;
                }
                None => return Ok(()),
            }
        }
        self.pay(agent, url, &w)
    }

    /// Step 2 and 3: one call to the payout service, and its outcome recorded.
    fn pay(&self, agent: &ureq::Agent, url: &str, w: &Withdrawal) -> Result<(), AppError> {
        let user_id = db::payouts::wallet_owner(&*self.pool.get()?, &w.wallet_id)?;
        let body = json!({
            "withdrawal_id": w.id,
            "user_id": user_id,
            "amount": crate::ledger::currency_of(&self.currencies, &w.currency)?.format(w.amount),
            "currency": w.currency,
            "reference": w.reference,
        });
        let attempt = self.call(agent, url, w, &body);
        // Backoff counts from when the call ended: a call that timed out is not due again at once.
        let plan = RetryPlan {
            retry_at: self.retry_at(w),
            attempts_max: self.settings.attempts_max,
            window_ms: self.window_ms(),
        };
        let (currencies, id) = (self.currencies.clone(), w.id.clone());
        let after = self.writer.execute(move |conn, now| {
            withdrawals::record_attempt(conn, now, &currencies, &id, &attempt, plan)
        })?;
        if after.status == WithdrawalStatus::Processing {
            let left_for_staff = after
                .error_message
                .as_deref()
                .is_some_and(|m| m.starts_with(withdrawals::OUTCOME_UNKNOWN_PREFIX));
            if !left_for_staff {
                self.metrics.payouts_retried.inc();
            }
            if after.outcome_unknown_since.is_some() && w.outcome_unknown_since.is_none() {
                self.metrics.payouts_outcome_unknown.inc();
            }
        }
        self.count(&after);
        Ok(())
    }

    fn count(&self, w: &Withdrawal) {
        match w.status {
            WithdrawalStatus::Succeeded => self.metrics.payouts_succeeded.inc(),
            WithdrawalStatus::Failed => self.metrics.payouts_failed.inc(),
            _ => {}
        }
    }

    /// Exponential backoff from now: base, 2×base, 4×base, … after the 1st, 2nd, 3rd failure,
    /// at most `RETRY_DELAY_MS_MAX` (or the base, if longer).
    fn retry_at(&self, w: &Withdrawal) -> Timestamp {
        let base = self.settings.retry_base_ms;
        let factor = 1u64 << w.attempts.min(20);
        let delay_ms = base
            .saturating_mul(factor)
            .min(RETRY_DELAY_MS_MAX.max(base));
        self.clock
            .now()
            .plus_millis(i64::try_from(delay_ms).unwrap_or(i64::MAX / 4))
    }

    fn window_ms(&self) -> i64 {
        i64::try_from(self.settings.retry_window.as_millis()).unwrap_or(i64::MAX / 4)
    }

    /// One call to the payout service, classified.
    fn call(
        &self,
        agent: &ureq::Agent,
        url: &str,
        w: &Withdrawal,
        body: &serde_json::Value,
    ) -> Attempt {
        match agent
            .post(url)
            .header("Idempotency-Key", &w.id)
            .send_json(body)
        {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let text: String = resp
                    .body_mut()
                    .with_config()
                    .limit(64 * 1024)
                    .read_to_string()
                    .unwrap_or_default()
                    .chars()
                    .take(PAYOUT_ERROR_CHARS_MAX)
                    .collect();
                classify_status(status, format!("HTTP {status}: {text}"))
            }
            Err(e) if never_connected(&e) => {
                Attempt::NotPaid(format!("payout service unreachable: {e}"))
            }
            Err(e) => Attempt::Unknown(format!("no answer from the payout service: {e}")),
        }
    }
}

/// What an answer with this status says about the money (the contract's "Payouts whose
/// outcome is unknown"): a 2xx paid; 400, 401, 403, 404 and 422 refused (the service read the
/// request and said no); 500 and 503 not paid this time; anything else, unknown.
pub fn classify_status(status: u16, error: String) -> Attempt {
    match status {
        200..=299 => Attempt::Paid,
        400 | 401 | 403 | 404 | 422 => Attempt::Refused(error),
        500 | 503 => Attempt::NotPaid(error),
        _ => Attempt::Unknown(error),
    }
}

/// Whether a failed call never reached the payout service: the name did not resolve, or no
/// connection was made (refused, no route, or none within the timeout). Anything that can
/// happen after the request went out (a reset, a timeout waiting for the answer, a broken
/// reply) is not this.
fn never_connected(e: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => true,
        ureq::Error::Timeout(t) => {
            matches!(t, ureq::Timeout::Resolve | ureq::Timeout::Connect)
        }
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::HostUnreachable
                | ErrorKind::NetworkUnreachable
                | ErrorKind::AddrNotAvailable
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_the_contract_says() {
        let kind = |s: u16| match classify_status(s, String::new()) {
            Attempt::Paid => "paid",
            Attempt::Refused(_) => "refused",
            Attempt::NotPaid(_) => "not paid",
            Attempt::Unknown(_) => "unknown",
        };
        for (status, expected) in [
            (200, "paid"),
            (201, "paid"),
            (204, "paid"),
            (400, "refused"),
            (401, "refused"),
            (403, "refused"),
            (404, "refused"),
            (422, "refused"),
            (500, "not paid"),
            (503, "not paid"),
            (502, "unknown"),
            (504, "unknown"),
            (409, "unknown"),
            (429, "unknown"),
            (302, "unknown"),
            (405, "unknown"),
            (410, "unknown"),
            (501, "unknown"),
            (100, "unknown"),
        ] {
            assert_eq!(kind(status), expected, "HTTP {status}");
        }
    }

    #[test]
    fn only_errors_before_the_request_went_out_are_definite() {
        use std::io::{Error, ErrorKind};
        assert!(never_connected(&ureq::Error::HostNotFound));
        assert!(never_connected(&ureq::Error::ConnectionFailed));
        assert!(never_connected(&ureq::Error::Timeout(
            ureq::Timeout::Connect
        )));
        assert!(never_connected(&ureq::Error::Io(Error::from(
            ErrorKind::ConnectionRefused
        ))));
        assert!(!never_connected(&ureq::Error::Timeout(
            ureq::Timeout::RecvResponse
        )));
        assert!(!never_connected(&ureq::Error::Timeout(
            ureq::Timeout::Global
        )));
        assert!(!never_connected(&ureq::Error::Io(Error::from(
            ErrorKind::ConnectionReset
        ))));
        assert!(!never_connected(&ureq::Error::Io(Error::from(
            ErrorKind::UnexpectedEof
        ))));
    }
}
