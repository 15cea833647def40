//! The use cases, as the HTTP edge calls them: each takes parsed domain values, reads through
//! the pool or writes through the writer, and returns domain values. No HTTP here.

use std::sync::Arc;

use crate::accounts::{
    self, AuthUser, IssuedToken, LoginThrottle, NewUser, PasswordGuard, RateLimiter, TokenCache,
    User,
};
use crate::clock::{ClockReport, GuardedClock, Wakeup, WALL_LEAP_MS_MAX};
use crate::config::Config;
use crate::db::grouped::{Grouped, Grouping};
use crate::db::{self, Pool, Writer};
use crate::domain::{
    Amount, Email, EntryKind, HoldStatus, MinorUnits, Password, PayoutResolution, Reference,
    StaffReason, Timestamp, Username, WithdrawalStatus,
};
use crate::error::{AppError, StorageFault};
use crate::jobs::payout::InFlight;
use crate::ledger::batch::{self, DepositItem, GroupItem, TransferItem, Written};
use crate::ledger::entries;
use crate::ledger::holds::{self, Actor, Hold, HoldRequest};
use crate::ledger::queries::{self, HistoryPage, HistoryQuery, Wallet};
use crate::ledger::reversals::{self, Reversal};
use crate::ledger::withdrawals::{self, Withdrawal};
use crate::ledger::{self, Entry, Movement, Outcome, TransferRequest, TransferResult, WalletRef};
use crate::metrics::Metrics;

/// Everything a request needs, shared by every request thread.
pub struct Service {
    pub config: Config,
    pub pool: Pool,
    pub writer: Writer,
    /// The wall clock, believed only while it agrees with the monotonic clock.
    pub clock: Arc<GuardedClock>,
    pub passwords: PasswordGuard,
    pub throttle: LoginThrottle,
    pub tokens: TokenCache,
    pub metrics: Arc<Metrics>,
    /// Wakes the payout worker when a new withdrawal is scheduled.
    pub payout_wakeup: Arc<Wakeup>,
    /// The withdrawals the payout worker is calling out for: staff can't resolve them.
    pub payouts_in_flight: Arc<InFlight>,
    /// Wakes the hold expiry job when a new hold is made (it may expire before the next one).
    pub holds_wakeup: Arc<Wakeup>,
    /// Requests per user, and per client address for anonymous requests.
    pub user_rate: RateLimiter<i64>,
    pub anon_rate: RateLimiter<String>,
    /// PostgreSQL: transfers and deposits written in groups (`ledger::batch`); `None` writes
    /// each alone.
    pub write_groups: Option<Grouped<GroupItem, Outcome<Written>>>,
}

/// What `/health` reports.
pub struct Health {
    /// The database answers a query.
    pub database: bool,
    /// Why writes are being refused, if they are.
    pub storage: Option<StorageFault>,
    pub clock: ClockReport,
    /// How far the newest time stamp is ahead of the clock, in µs, when by more than
    /// `WALL_LEAP_MS_MAX` (the clock was set back, or the server started with
    /// `--accept-future-stamps`): new stamps are held just after it. Otherwise 0.
    pub stamps_ahead_micros: i64,
}

pub struct Registration {
    pub username: Username,
    pub email: Email,
    pub password: Password,
    pub first_name: String,
    pub last_name: String,
}

/// An immediate withdrawal gives an entry; a scheduled one a withdrawal to be paid later.
pub enum WithdrawResult {
    Now(Entry),
    Scheduled(Withdrawal),
}

impl Service {
    fn read(&self) -> Result<db::PooledConn, AppError> {
        Ok(self.pool.get()?)
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn register(&self, r: Registration) -> Result<(User, IssuedToken), AppError> {
        // Hashing happens before the write: the writer never waits on argon2.
        let password_hash = self.passwords.hash(&r.password)?;
        let token = accounts::new_token(self.now(), self.config.serve.token_ttl);
        let new_user = NewUser {
            username: r.username,
            email: r.email,
            password_hash,
            first_name: r.first_name,
            last_name: r.last_name,
            is_staff: false,
        };
        let ttl = self.config.serve.token_ttl;
        let (user, token) = self.writer.execute(move |conn, now| {
            // The token's expiry counts from the commit's time, not from before hashing.
            let token = IssuedToken {
                expires_at: accounts::new_token(now, ttl).expires_at,
                ..token
            };
            let user = accounts::create_user(conn, now, &new_user, Some(&token))?;
            Ok((user, token))
        })?;
        Ok((user, token))
    }

    /// Unknown user and wrong password give the same error after the same work.
    pub fn login(
        &self,
        username: &str,
        password: &str,
        client: &str,
    ) -> Result<(User, IssuedToken), AppError> {
        self.sign_in(username, password, client, accounts::store_token)
    }

    /// A console login: the same throttle and password check as `login`, and a console
    /// session (its own table, made and expiring like a token) instead of an API token.
    pub fn console_login(
        &self,
        username: &str,
        password: &str,
        client: &str,
    ) -> Result<(User, IssuedToken), AppError> {
        self.sign_in(username, password, client, accounts::store_console_session)
    }

    /// Checks the password (throttled), then issues a secret that expires after `--token-ttl`
    /// and stores its hash with `store`: an API token or a console session.
    fn sign_in(
        &self,
        username: &str,
        password: &str,
        client: &str,
        store: fn(&dyn crate::store::Sql, Timestamp, i64, &IssuedToken) -> Result<(), AppError>,
    ) -> Result<(User, IssuedToken), AppError> {
        let user = self.check_password(username, password, client)?;
        let ttl = self.config.serve.token_ttl;
        let user_id = user.id;
        let issued = self.writer.execute(move |conn, now| {
            let issued = accounts::new_token(now, ttl);
            store(conn, now, user_id, &issued)?;
            Ok(issued)
        })?;
        Ok((user, issued))
    }

    /// The user of a console session that is valid now (`Unauthorized` otherwise).
    pub fn console_session(&self, secret: &str) -> Result<AuthUser, AppError> {
        let hash = accounts::hash_token(secret);
        accounts::authenticate_console_session(&*self.read()?, self.now(), &hash)
    }

    /// Revokes the console session `user` came with.
    pub fn console_logout(&self, user: &AuthUser) -> Result<(), AppError> {
        self.revoke_console_secret(user.token_hash)
    }

    /// Revokes the console session whose secret a browser sent, if it is one: a new login
    /// replaces the session the browser had.
    pub fn console_replace(&self, secret: &str) -> Result<(), AppError> {
        self.revoke_console_secret(accounts::hash_token(secret))
    }

    fn revoke_console_secret(&self, hash: [u8; 32]) -> Result<(), AppError> {
        self.writer
            .execute(move |conn, now| accounts::revoke_console_session(conn, now, &hash))
    }

    /// The one password check of every login, API or console: throttled, and the same error
    /// after the same work for an unknown user and a wrong password.
    fn check_password(
        &self,
        username: &str,
        password: &str,
        client: &str,
    ) -> Result<User, AppError> {
        let user_key = accounts::throttle_key_for_username(username);
        let keys = [user_key.clone(), format!("ip:{client}")];
        // Reserved before the hash: a burst of guesses can't all pass a check made before any
        // of them failed. An early return below gives the reservation back.
        let attempt = self.throttle.begin(&keys, std::time::Instant::now())?;
        let found = accounts::find_login(&*self.read()?, username)?;
        let ok = self
            .passwords
            .verify(password, found.as_ref().map(|(_, h)| h.as_str()))?;
        let user = match found {
            Some((user, _)) if ok => user,
            _ => {
                attempt.failed();
                self.metrics.failed_logins.inc();
                return Err(AppError::InvalidCredentials);
            }
        };
        attempt.succeeded(&user_key);
        Ok(user)
    }

    pub fn logout(&self, auth: &AuthUser) -> Result<(), AppError> {
        let hash = auth.token_hash;
        self.writer
            .execute(move |conn, now| accounts::revoke_token(conn, now, &hash))?;
        // Only after the revocation has committed, so a concurrent lookup cannot re-cache it.
        self.tokens.forget(&hash);
        Ok(())
    }

    pub fn authenticate(&self, secret: &str) -> Result<AuthUser, AppError> {
        let now = self.now();
        self.tokens
            .authenticate(now, std::time::Instant::now(), secret, |hash| {
                accounts::authenticate(&*self.read()?, now, hash)
            })
    }

    pub fn user(&self, user_id: i64) -> Result<User, AppError> {
        accounts::find_user(&*self.read()?, user_id)
    }

    pub fn wallet(&self, user_id: i64) -> Result<(Wallet, Vec<Entry>), AppError> {
        queries::wallet_view(&*self.read()?, user_id)
    }

    pub fn deposit(&self, auth: &AuthUser, m: Movement) -> Result<Outcome<Entry>, AppError> {
        let out = self.write(GroupItem::Deposit(DepositItem {
            wallet: auth.wallet.clone(),
            movement: m,
        }))?;
        let out = Outcome {
            value: out.value.into_deposit()?,
            replayed: out.replayed,
        };
        self.count_money(&out, |e| vec![e]);
        Ok(out)
    }

    pub fn withdraw(
        &self,
        auth: &AuthUser,
        m: Movement,
        at: Option<Timestamp>,
    ) -> Result<Outcome<WithdrawResult>, AppError> {
        let wallet = auth.wallet.clone();
        let Some(at) = at else {
            let out = self
                .writer
                .execute(move |conn, now| ledger::withdraw_now(conn, now, &wallet, &m))?;
            self.count_money(&out, |e| vec![e]);
            return Ok(Outcome {
                value: WithdrawResult::Now(out.value),
                replayed: out.replayed,
            });
        };
        let horizon_days = i64::from(self.config.serve.schedule_horizon_days);
        let latest = move |now: Timestamp| now.plus_millis(horizon_days * 86_400_000);
        let out = self.writer.execute(move |conn, now| {
            withdrawals::schedule(conn, now, &wallet, &m, at, latest(now))
        })?;
        self.payout_wakeup.nudge();
        Ok(Outcome {
            value: WithdrawResult::Scheduled(out.value),
            replayed: out.replayed,
        })
    }

    pub fn transfer(
        &self,
        auth: &AuthUser,
        req: TransferRequest,
    ) -> Result<Outcome<TransferResult>, AppError> {
        let out = self.write(GroupItem::Transfer(TransferItem {
            sender_user_id: auth.user_id,
            sender: auth.wallet.clone(),
            req,
        }))?;
        let out = Outcome {
            value: out.value.into_transfer()?,
            replayed: out.replayed,
        };
        self.count_money(&out, |t| vec![t.transfer_out]);
        Ok(out)
    }

    /// A transfer or a deposit: with a group when there are groups, else (or when the group
    /// hands it back) alone.
    fn write(&self, item: GroupItem) -> Result<Outcome<Written>, AppError> {
        let item = match &self.write_groups {
            None => item,
            Some(groups) => match groups.submit(item) {
                Grouping::Done(out) => return out,
                Grouping::Alone(item) => item,
                Grouping::Busy(item) => {
                    return self
                        .writer
                        .execute(move |conn, now| batch::write_one_busy(conn, now, &item))
                }
            },
        };
        self.writer
            .execute(move |conn, now| batch::write_one(conn, now, &item))
    }

    fn count_money<T: Clone>(&self, out: &Outcome<T>, entries: impl Fn(T) -> Vec<Entry>) {
        if !out.replayed {
            for e in entries(out.value.clone()) {
                self.metrics
                    .money_moved(&e.currency, e.kind, e.amount.get());
            }
        }
    }

    /// One entry of `wallet`; another wallet's is "not found", as a missing one is.
    pub fn transaction(&self, wallet: &WalletRef, id: &str) -> Result<Entry, AppError> {
        entries::find_by_id(&*self.read()?, id)?
            .filter(|e| e.wallet_id == wallet.id)
            .ok_or(AppError::NotFound("transaction"))
    }

    /// Every entry of `wallet` matching `q`'s filters (its limit, offset and cursor ignored),
    /// newest first, a page at a time: an export of any length in constant memory. Each page
    /// is its own read, and the walk goes down the wallet's index from where the last page
    /// ended, so entries that arrive meanwhile (newer) are not in it and none is read twice.
    pub fn history_pages(&self, wallet: &WalletRef, q: &HistoryQuery) -> HistoryPages {
        HistoryPages {
            pool: self.pool.clone(),
            wallet_key: wallet.key,
            query: q.clone(),
            upto: None,
            done: false,
        }
    }

    pub fn history(&self, wallet: &WalletRef, q: &HistoryQuery) -> Result<HistoryPage, AppError> {
        queries::history(&*self.read()?, wallet.key, q)
    }

    pub fn balance_at(
        &self,
        wallet: &WalletRef,
        currency: &str,
        at: Option<Timestamp>,
    ) -> Result<(MinorUnits, Timestamp), AppError> {
        let now = self.now();
        let conn = self.read()?;
        match at {
            // The current balance is the running balance: O(1), whatever the history length.
            None => Ok((queries::balance_now(&*conn, wallet.key, currency)?, now)),
            Some(at) if at > now => Err(AppError::field("at", "must not be in the future")),
            Some(at) => {
                // Answer only for a settled moment, so the same question always gets the same
                // answer: not after the time of a batch still being written (its entries are
                // stamped but not committed). The reply's `at` says which moment was answered.
                let at = match self.writer.settled_before() {
                    Some(settled) => at.min(settled),
                    None => at,
                };
                entries::fence_stamps(&*conn, wallet.key, at)?;
                Ok((queries::balance_at(&*conn, wallet, currency, at)?, at))
            }
        }
    }

    pub fn withdrawals(
        &self,
        wallet: &WalletRef,
        status: Option<WithdrawalStatus>,
        limit: u32,
        offset: u32,
    ) -> Result<(i64, Vec<Withdrawal>), AppError> {
        withdrawals::list(&*self.read()?, &wallet.id, status, limit, offset)
    }

    pub fn withdrawal(&self, wallet: &WalletRef, id: &str) -> Result<Withdrawal, AppError> {
        withdrawals::find(&*self.read()?, &wallet.id, id)
    }

    pub fn cancel_withdrawal(&self, wallet: &WalletRef, id: &str) -> Result<Withdrawal, AppError> {
        let (wallet, id) = (wallet.id.clone(), id.to_string());
        self.writer
            .execute(move |conn, now| withdrawals::cancel(conn, now, &wallet, &id))
    }

    pub fn admin_users(
        &self,
        search: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<(i64, Vec<User>), AppError> {
        accounts::list_users(&*self.read()?, search, limit, offset)
    }

    /// An operator deposit into any user's wallet, recorded in the audit log with the staff id.
    pub fn admin_credit(
        &self,
        staff: &AuthUser,
        user_id: i64,
        m: Movement,
        reason: Option<StaffReason>,
    ) -> Result<Outcome<Entry>, AppError> {
        if user_id == staff.user_id {
            // No staff action on one's own wallet.
            return Err(AppError::Forbidden);
        }
        let wallet = queries::wallet_of_user(&*self.read()?, user_id)?.wallet_ref();
        let m = Movement {
            reference: m
                .reference
                .for_operator()
                .map_err(|e| AppError::field("reference", e))?,
            ..m
        };
        let staff_id = staff.user_id;
        let out = self.writer.execute(move |conn, now| {
            let out = ledger::deposit(conn, now, &wallet, &m)?;
            if !out.replayed {
                let detail = serde_json::json!({
                    "entry_id": out.value.id,
                    "amount": out.value.amount.get(),
                    "currency": out.value.currency,
                })
                .to_string();
                db::audit::record(
                    conn,
                    now,
                    staff_id,
                    "credit",
                    &format!("user:{user_id}"),
                    &detail,
                    reason.as_ref().map(StaffReason::as_str),
                )?;
            }
            Ok(out)
        })?;
        self.count_money(&out, |e| vec![e]);
        Ok(out)
    }

    /// Staff settle a PROCESSING withdrawal after asking the payout service whether it paid:
    /// `failed` refunds it in the same transaction. Audited with the staff id and the reason.
    pub fn admin_resolve_withdrawal(
        &self,
        staff: &AuthUser,
        id: &str,
        resolution: PayoutResolution,
        reason: StaffReason,
    ) -> Result<Withdrawal, AppError> {
        let (currencies, staff_id, id) = (
            self.config.currencies.clone(),
            staff.user_id,
            id.to_string(),
        );
        let in_flight = self.payouts_in_flight.clone();
        self.writer.execute(move |conn, now| {
            withdrawals::lock(conn, &id)?;
            let w = withdrawals::find_any(conn, &id)?.ok_or(AppError::NotFound("withdrawal"))?;
            if withdrawals::owner_user_id(conn, &w)? == staff_id {
                return Err(AppError::Forbidden);
            }
            // Checked inside the writer: the worker enters the set before its own writer job
            // decides to call, so one of the two always sees the other. Another process's
            // worker holds the withdrawal's claim while it works on it.
            let in_flight = in_flight.contains(&id) || withdrawals::claimed_elsewhere(conn, &id)?;
            if w.status == WithdrawalStatus::Processing && in_flight {
                return Err(AppError::Conflict(
                    "a payout call for this withdrawal is in flight; try again when it has ended"
                        .into(),
                ));
            }
            let w = withdrawals::resolve(conn, now, &currencies, &w, resolution)?;
            // The reason is in its own column; `detail` keeps it as it always did.
            let detail = serde_json::json!({
                "outcome": resolution.as_str(),
                "reason": reason.as_str(),
                "refund_transaction_id": w.refund_transaction_id,
            })
            .to_string();
            db::audit::record(
                conn,
                now,
                staff_id,
                "resolve_withdrawal",
                &format!("withdrawal:{id}"),
                &detail,
                Some(reason.as_str()),
            )?;
            Ok(w)
        })
    }

    /// A new hold on the caller's wallet.
    pub fn create_hold(
        &self,
        auth: &AuthUser,
        req: HoldRequest,
    ) -> Result<Outcome<Hold>, AppError> {
        let (wallet, user_id) = (auth.wallet.clone(), auth.user_id);
        let max_s = self.config.serve.hold_expiry_max.as_secs();
        let out = self
            .writer
            .execute(move |conn, now| holds::create(conn, now, (user_id, &wallet), &req, max_s))?;
        if !out.replayed {
            self.holds_wakeup.nudge();
        }
        Ok(out)
    }

    /// Captures a hold, as its recipient or payer (`Actor::User`) or as staff; staff captures
    /// are audited with their reason.
    pub fn capture_hold(
        &self,
        actor: Actor,
        id: &str,
        amount: Option<Amount>,
        reason: Option<StaffReason>,
    ) -> Result<Outcome<Hold>, AppError> {
        let (currencies, id) = (self.config.currencies.clone(), id.to_string());
        let out = self.writer.execute(move |conn, now| {
            let out = holds::capture(conn, now, &currencies, actor, &id, amount)?;
            if let (Actor::Staff(staff_id), false) = (actor, out.replayed) {
                audit_hold(
                    conn,
                    now,
                    staff_id,
                    "capture_hold",
                    &out.value,
                    reason.as_ref(),
                )?;
            }
            Ok(out)
        })?;
        if !out.replayed {
            let amount = out.value.captured_amount.map_or(0, MinorUnits::get);
            let kind = if out.value.to_user_id.is_some() {
                EntryKind::TransferOut
            } else {
                EntryKind::Withdrawal
            };
            self.metrics.money_moved(&out.value.currency, kind, amount);
        }
        Ok(out)
    }

    /// Voids a hold, as `capture_hold` captures one.
    pub fn void_hold(
        &self,
        actor: Actor,
        id: &str,
        reason: Option<StaffReason>,
    ) -> Result<Hold, AppError> {
        let id = id.to_string();
        self.writer.execute(move |conn, now| {
            let h = holds::void(conn, now, actor, &id)?;
            if let Actor::Staff(staff_id) = actor {
                audit_hold(conn, now, staff_id, "void_hold", &h, reason.as_ref())?;
            }
            Ok(h)
        })
    }

    pub fn holds(
        &self,
        auth: &AuthUser,
        status: Option<HoldStatus>,
        role: Option<holds::Role>,
        limit: u32,
        offset: u32,
    ) -> Result<(i64, Vec<Hold>), AppError> {
        holds::list(&*self.read()?, auth.user_id, status, role, limit, offset)
    }

    pub fn hold(&self, auth: &AuthUser, id: &str) -> Result<Hold, AppError> {
        holds::get(&*self.read()?, auth.user_id, id)
    }

    /// Any hold, for staff.
    pub fn admin_hold(&self, id: &str) -> Result<Hold, AppError> {
        holds::get_any(&*self.read()?, id)
    }

    /// Freezes (or unfreezes) a user's wallet: while frozen it receives money but sends none.
    /// Audited with the reason; staff can't freeze or unfreeze their own wallet.
    pub fn admin_freeze(
        &self,
        staff: &AuthUser,
        user_id: i64,
        frozen: bool,
        reason: StaffReason,
    ) -> Result<(User, Option<Timestamp>), AppError> {
        if user_id == staff.user_id {
            return Err(AppError::Forbidden);
        }
        let wallet = queries::wallet_of_user(&*self.read()?, user_id)?.wallet_ref();
        let staff_id = staff.user_id;
        let frozen_at = self.writer.execute(move |conn, now| {
            let frozen_at =
                ledger::set_frozen(conn, now, &wallet, frozen.then_some(reason.as_str()))?;
            let (action, detail) = if frozen {
                ("freeze", serde_json::json!({"frozen": true}))
            } else {
                ("unfreeze", serde_json::json!({"frozen": false}))
            };
            db::audit::record(
                conn,
                now,
                staff_id,
                action,
                &format!("user:{user_id}"),
                &detail.to_string(),
                Some(reason.as_str()),
            )?;
            Ok(frozen_at)
        })?;
        Ok((self.user(user_id)?, frozen_at))
    }

    /// Staff undo a deposit, a paid withdrawal or a transfer with new entries that name it
    /// (`ledger::reversals`). Audited with the reason, under the transaction reversed (a
    /// transfer by its outgoing half); a replay (the same reference) writes nothing and is not
    /// audited again.
    pub fn admin_reverse(
        &self,
        staff: &AuthUser,
        id: &str,
        reference: Reference,
        reason: StaffReason,
    ) -> Result<Outcome<Reversal>, AppError> {
        let staff_id = staff.user_id;
        let currencies = self.config.currencies.clone();
        let id = id.to_string();
        let out = self.writer.execute(move |conn, now| {
            let out = reversals::reverse(conn, now, &currencies, staff_id, &id, &reference)?;
            if !out.replayed {
                let written: Vec<&str> =
                    out.value.entries().iter().map(|e| e.id.as_str()).collect();
                let first = out.value.entries()[0];
                let detail = serde_json::json!({
                    "entry_ids": written,
                    "amount": first.amount.get(),
                    "currency": first.currency,
                    "reference": reference.as_str(),
                    "requested": id,
                })
                .to_string();
                db::audit::record(
                    conn,
                    now,
                    staff_id,
                    "reverse",
                    &format!("transaction:{}", out.value.reversed_id()),
                    &detail,
                    Some(reason.as_str()),
                )?;
            }
            Ok(out)
        })?;
        self.count_money(&out, |r| r.entries().into_iter().cloned().collect());
        Ok(out)
    }

    /// When and why the user's wallet was frozen, if it is.
    pub fn frozen(&self, user_id: i64) -> Result<Option<(Timestamp, String)>, AppError> {
        ledger::frozen_state(&*self.read()?, user_id)
    }

    /// The audit log, newest first.
    pub fn audit_log(
        &self,
        staff_user_id: Option<i64>,
        target: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<(i64, Vec<db::audit::AuditEntry>), AppError> {
        db::audit::list(&*self.read()?, staff_user_id, target, limit, offset)
    }

    /// Withdrawals left for staff because their payout outcome is unknown, for `/metrics`.
    pub fn payouts_outcome_unknown(&self) -> Result<i64, AppError> {
        let window_ms = i64::try_from(self.config.serve.payout_retry_window.as_millis())
            .unwrap_or(i64::MAX / 4);
        withdrawals::count_outcome_unknown(&*self.read()?, self.now(), window_ms)
    }

    /// Records a staff read in the audit log.
    pub fn audit_read(
        &self,
        staff: &AuthUser,
        action: &'static str,
        target: String,
    ) -> Result<(), AppError> {
        let staff_id = staff.user_id;
        self.writer.execute(move |conn, now| {
            db::audit::record(conn, now, staff_id, action, &target, "{}", None)
        })
    }

    /// `/health`: whether the database answers a query, takes writes, and the wall clock is
    /// believed.
    pub fn health(&self) -> Health {
        let database = self
            .pool
            .get()
            .map_err(AppError::from)
            .and_then(|c| db::health::answers(&*c));
        if let Err(e) = &database {
            crate::log::error(&format!("health: database check failed: {e:?}"));
        }
        // A reading of its own, so that a leap shows here even while nothing else reads the clock.
        let now = self.clock.now();
        Health {
            database: database.is_ok(),
            storage: self.writer.stats.storage_fault(),
            clock: self.clock.report(),
            stamps_ahead_micros: self.stamps_ahead_micros(now),
        }
    }

    /// See `Health::stamps_ahead_micros`.
    pub fn stamps_ahead_micros(&self, now: Timestamp) -> i64 {
        let ahead = self
            .writer
            .stats
            .last_stamp()
            .map_or(0, |t| t.micros() - now.micros());
        if ahead > WALL_LEAP_MS_MAX * 1_000 {
            ahead
        } else {
            0
        }
    }
}

/// The audit row of a staff action on a hold.
fn audit_hold(
    conn: &dyn crate::store::Sql,
    now: Timestamp,
    staff_id: i64,
    action: &str,
    h: &Hold,
    reason: Option<&StaffReason>,
) -> Result<(), AppError> {
    let detail = serde_json::json!({
        "status": h.status.as_str(),
        "captured_amount": h.captured_amount.map(MinorUnits::get),
        "currency": h.currency,
        "transaction_ids": h.transaction_ids,
    })
    .to_string();
    db::audit::record(
        conn,
        now,
        staff_id,
        action,
        &format!("hold:{}", h.id),
        &detail,
        reason.map(StaffReason::as_str),
    )
}

/// Entries a page per read; see `Service::history_pages`.
pub struct HistoryPages {
    pool: Pool,
    wallet_key: entries::WalletKey,
    query: HistoryQuery,
    /// The newest entry not yet read is strictly below this (time stamp, position).
    upto: Option<(String, i64)>,
    done: bool,
}

/// Entries per page of an export: a few hundred KiB of text at most.
pub const EXPORT_PAGE_ENTRIES: u32 = 500;

impl Iterator for HistoryPages {
    type Item = Result<Vec<Entry>, AppError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let page = self.pool.get().map_err(AppError::from).and_then(|c| {
            queries::history_rows(
                &*c,
                self.wallet_key,
                &self.query,
                self.upto.clone(),
                EXPORT_PAGE_ENTRIES,
                0,
            )
        });
        match page {
            Ok(rows) => {
                if rows.len() < EXPORT_PAGE_ENTRIES as usize {
                    self.done = true;
                }
                if let Some(last) = rows.last() {
                    self.upto = Some((last.created_at.to_text(), last.seq));
                }
                if rows.is_empty() {
                    None
                } else {
                    Some(Ok(rows))
                }
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
