//! The payout worker: takes due withdrawals in order, debits them (step 1), calls the payout
//! service outside any transaction (step 2), and records the outcome (step 3). It sleeps
//! until the next due time, or until a new withdrawal nudges it.
//!
//! Crash safety: the debit and PROCESSING are one transaction; the call carries
//! `Idempotency-Key: <withdrawal id>`, so a call repeated after a crash pays once; a
//! PROCESSING withdrawal is due again at start-up and resumes with the same key.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::json;

use crate::clock::{SharedClock, Wakeup};
use crate::db::{Pool, Writer};
use crate::domain::{Currency, WithdrawalStatus};
use crate::error::AppError;
use crate::ledger::withdrawals::{self, Attempt, Withdrawal};
use crate::metrics::Metrics;

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

#[derive(Clone, Debug)]
pub struct PayoutSettings {
    pub url: Option<String>,
    pub attempts_max: u32,
    pub retry_base_ms: u64,
    pub timeout_ms: u64,
}

pub struct PayoutWorker {
    pub settings: PayoutSettings,
    pub currency: Currency,
    pub writer: Writer,
    pub pool: Pool,
    pub clock: SharedClock,
    pub wakeup: Arc<Wakeup>,
    pub metrics: Arc<Metrics>,
}

impl PayoutWorker {
    pub fn spawn(self) -> JoinHandle<()> {
        std::thread::Builder::new()
            .name("payout".into())
            .spawn(move || self.run())
            .expect("spawn the payout thread")
    }

    fn run(self) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(self.settings.timeout_ms)))
            .http_status_as_error(false)
            // A redirect is not a payout: following one turned the POST into a GET whose 200
            // looked like success. A 3xx is an answer to retry, then fail and refund.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .build()
            .into();
        while !self.wakeup.is_stopping() {
            let due = self
                .pool
                .get()
                .map_err(AppError::from)
                .and_then(|c| withdrawals::due(&c, self.clock.now(), DUE_BATCH_MAX));
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
                        .and_then(|c| withdrawals::next_due_at(&c));
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
        let mut w = w;
        if w.status == WithdrawalStatus::Pending {
            let (currency, id, complete) = (
                self.currency.clone(),
                w.id.clone(),
                self.settings.url.is_none(),
            );
            w = self.writer.execute(move |conn, now| {
                withdrawals::begin(conn, now, &currency, &id, complete)
            })?;
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
        let user_id: i64 = self.pool.get()?.query_row(
            "SELECT user_id FROM wallets WHERE id = ?1",
            [&w.wallet_id],
            |r| r.get(0),
        )?;
        let body = json!({
            "withdrawal_id": w.id,
            "user_id": user_id,
            "amount": self.currency.format(w.amount),
            "currency": self.currency.code,
            "reference": w.reference,
        });
        let attempt = self.call(agent, url, &w, &body);
        // Backoff counts from when the call ended: a call that timed out is not due again at once.
        let attempt = match attempt {
            Attempt::Failed { error, .. } => Attempt::Failed {
                error,
                retry_at: self.retry_at(&w),
            },
            other => other,
        };
        let (currency, id, max) = (
            self.currency.clone(),
            w.id.clone(),
            self.settings.attempts_max,
        );
        let w = self.writer.execute(move |conn, now| {
            withdrawals::record_attempt(conn, now, &currency, &id, &attempt, max)
        })?;
        if w.status == WithdrawalStatus::Processing {
            self.metrics.payouts_retried.inc();
        }
        self.count(&w);
        Ok(())
    }

    fn count(&self, w: &Withdrawal) {
        match w.status {
            WithdrawalStatus::Succeeded => self.metrics.payouts_succeeded.inc(),
            WithdrawalStatus::Failed => self.metrics.payouts_failed.inc(),
            _ => {}
        }
    }

    /// Exponential backoff from now: base, 2×base, 4×base, … after the 1st, 2nd, 3rd failure.
    fn retry_at(&self, w: &Withdrawal) -> crate::domain::Timestamp {
        let factor = 1u64 << w.attempts.min(20);
        let delay_ms = self.settings.retry_base_ms.saturating_mul(factor);
        self.clock
            .now()
            .plus_millis(i64::try_from(delay_ms).unwrap_or(i64::MAX / 4))
    }

    /// One call to the payout service, classified.
    fn call(
        &self,
        agent: &ureq::Agent,
        url: &str,
        w: &Withdrawal,
        body: &serde_json::Value,
    ) -> Attempt {
        let retry_at = self.retry_at(w);
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
                match status {
                    200..=299 => Attempt::Paid,
                    400..=499 => Attempt::Refused(format!("HTTP {status}: {text}")),
                    _ => Attempt::Failed {
                        error: format!("HTTP {status}: {text}"),
                        retry_at,
                    },
                }
            }
            Err(e) => Attempt::Failed {
                error: format!("payout service unreachable: {e}"),
                retry_at,
            },
        }
    }
}
