//! Handlers: parse the request into domain values, call one use case, shape the reply.
//! Request and response JSON are built here by hand, separate from the domain types.

use serde_json::{json, Map, Value};

use super::request::{Fields, Incoming};
use super::response::Reply;
use crate::accounts::{AuthUser, IssuedToken, User};
use crate::domain::{
    parse_name, Amount, Currency, Email, EntryKind, Metadata, Password, PayoutResolution,
    Reference, StaffReason, Timestamp, Username, WithdrawalStatus,
};
use crate::error::{AppError, StorageFault};
use crate::ledger::queries::{HistoryQuery, Wallet, PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};
use crate::ledger::withdrawals::Withdrawal;
use crate::ledger::{Entry, Movement, Recipient, TransferRequest};
use crate::service::{Registration, Service, WithdrawResult};

pub type Params = [String];

// ---- JSON shapes -------------------------------------------------------------------------

fn user_json(u: &User) -> Value {
    json!({
        "id": u.id,
        "username": u.username,
        "email": u.email,
        "first_name": u.first_name,
        "last_name": u.last_name,
        "is_staff": u.is_staff,
        "date_joined": u.date_joined.to_text(),
    })
}

fn entry_json(e: &Entry, c: &Currency) -> Value {
    json!({
        "id": e.id,
        "type": e.kind.as_str(),
        "amount": c.format(e.amount),
        "balance_after": c.format(e.balance_after),
        "reference": e.reference,
        "counterparty_user_id": e.counterparty_user_id,
        "created_at": e.created_at.to_text(),
        "metadata": e.metadata.to_value(),
    })
}

fn wallet_json(w: &Wallet, recent: &[Entry], c: &Currency) -> Value {
    json!({
        "id": w.id,
        "user_id": w.user_id,
        "currency": c.code,
        "balance": c.format(w.balance),
        "last_balance": c.format(w.last_balance),
        "last_balance_update": w.last_balance_update.to_text(),
        "recent_transactions": recent.iter().map(|e| entry_json(e, c)).collect::<Vec<_>>(),
    })
}

fn withdrawal_json(w: &Withdrawal, c: &Currency) -> Value {
    json!({
        "id": w.id,
        "amount": c.format(w.amount),
        "reference": w.reference,
        "metadata": w.metadata.to_value(),
        "status": w.status.as_str(),
        "scheduled_at": w.scheduled_at.to_text(),
        "attempts": w.attempts,
        "error_message": w.error_message,
        "created_at": w.created_at.to_text(),
        "updated_at": w.updated_at.to_text(),
        "transaction_id": w.transaction_id,
        "refund_transaction_id": w.refund_transaction_id,
    })
}

fn token_json(user: &User, token: &IssuedToken) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("token".into(), json!(token.secret));
    m.insert("expires_at".into(), json!(token.expires_at.to_text()));
    m.insert("user".into(), user_json(user));
    m
}

// ---- Request helpers ---------------------------------------------------------------------

fn auth(svc: &Service, rq: &Incoming) -> Result<AuthUser, AppError> {
    svc.authenticate(rq.token().ok_or(AppError::Unauthorized)?)
}

fn staff(svc: &Service, rq: &Incoming) -> Result<AuthUser, AppError> {
    let user = auth(svc, rq)?;
    if user.is_staff {
        Ok(user)
    } else {
        Err(AppError::Forbidden)
    }
}

/// `amount`, `reference` (or the `Idempotency-Key` header) and `metadata`.
fn movement(f: &mut Fields<'_>, rq: &Incoming, currency: &Currency) -> Option<Movement> {
    let amount = match f.raw("amount") {
        None => {
            f.errors.add("amount", "this field is required");
            None
        }
        Some(v) => f
            .errors
            .check("amount", Amount::parse(v, currency).map_err(|e| e.0)),
    };
    let reference = match (f.string("reference", false), rq.idempotency_key.as_deref()) {
        (Some(body), Some(header)) if body != header => {
            f.errors.add(
                "reference",
                "differs from the Idempotency-Key header; send one or make them equal",
            );
            None
        }
        (Some(r), _) | (None, Some(r)) => f.errors.check("reference", Reference::parse(r)),
        (None, None) => {
            f.errors.add(
                "reference",
                "this field (or the Idempotency-Key header) is required",
            );
            None
        }
    };
    let metadata = f
        .errors
        .check("metadata", Metadata::parse(f.raw("metadata")));
    Some(Movement {
        amount: amount?,
        reference: reference?,
        metadata: metadata?,
    })
}

fn page_params(rq: &Incoming) -> Result<(u32, u32), AppError> {
    let mut errors = crate::error::FieldErrors::default();
    let limit = match rq.query("limit") {
        None => Some(PAGE_LIMIT_DEFAULT),
        Some(s) => errors.check(
            "limit",
            s.parse::<u32>()
                .ok()
                .filter(|n| (1..=PAGE_LIMIT_MAX).contains(n))
                .ok_or_else(|| format!("must be a whole number from 1 to {PAGE_LIMIT_MAX}")),
        ),
    };
    let offset = match rq.query("offset") {
        None => Some(0),
        Some(s) => errors.check(
            "offset",
            s.parse::<u32>()
                .map_err(|_| "must be a whole number from 0".to_string()),
        ),
    };
    errors.into_result()?;
    Ok((limit.unwrap_or(PAGE_LIMIT_DEFAULT), offset.unwrap_or(0)))
}

/// A timestamp from a query string, where an unencoded `+` offset arrives as a space.
fn query_time(s: &str) -> Result<Timestamp, String> {
    Timestamp::parse(&s.replace(' ', "+"))
}

/// A field that passed validation yet is absent: a bug in a handler, never the client's fault.
fn validated_but_missing() -> AppError {
    AppError::Internal("a field passed validation but is missing".into())
}

fn path_user_id(params: &Params) -> Result<i64, AppError> {
    params[0]
        .parse::<i64>()
        .map_err(|_| AppError::NotFound("user"))
}

// ---- Accounts ----------------------------------------------------------------------------

pub fn register(svc: &Service, rq: &Incoming, _: &Params) -> Result<Reply, AppError> {
    let body = rq.json()?;
    let mut f = Fields::new(&body);
    let username = f.parsed("username", Username::parse);
    let email = f.parsed("email", Email::parse);
    let password = f.parsed("password", Password::parse);
    let confirm = f.string("password_confirm", true);
    let first_name = f.string("first_name", false).map(parse_name).transpose();
    let first_name = f.errors.check("first_name", first_name);
    let last_name = f.string("last_name", false).map(parse_name).transpose();
    let last_name = f.errors.check("last_name", last_name);
    if let (Some(p), Some(c)) = (f.raw("password").and_then(Value::as_str), confirm) {
        if p != c {
            f.errors.add("password_confirm", "does not match password");
        }
    }
    if let (Some(p), Some(u)) = (&password, &username) {
        if crate::domain::username_key(p.expose()) == u.key() {
            f.errors
                .add("password", "must not be the same as the username");
        }
    }
    f.finish()?;
    let (Some(username), Some(email), Some(password), Some(first), Some(last)) =
        (username, email, password, first_name, last_name)
    else {
        return Err(validated_but_missing());
    };
    let registration = Registration {
        username,
        email,
        password,
        first_name: first.unwrap_or_default(),
        last_name: last.unwrap_or_default(),
    };
    let (user, token) = svc.register(registration)?;
    let mut body = token_json(&user, &token);
    body.insert("message".into(), json!("registration successful"));
    Ok(Reply::json(201, Value::Object(body)))
}

pub fn login(svc: &Service, rq: &Incoming, _: &Params) -> Result<Reply, AppError> {
    let body = rq.json()?;
    let mut f = Fields::new(&body);
    let username = f.string("username", true);
    let password = f.string("password", true);
    f.finish()?;
    let (Some(username), Some(password)) = (username, password) else {
        return Err(validated_but_missing());
    };
    let (user, token) = svc.login(username, password, &rq.client)?;
    Ok(Reply::json(200, Value::Object(token_json(&user, &token))))
}

pub fn logout(svc: &Service, rq: &Incoming, _: &Params) -> Result<Reply, AppError> {
    let user = auth(svc, rq)?;
    svc.logout(&user)?;
    Ok(Reply::json(
        200,
        json!({"detail": "logged out; this token no longer works"}),
    ))
}

pub fn profile(svc: &Service, rq: &Incoming, _: &Params) -> Result<Reply, AppError> {
    let user = auth(svc, rq)?;
    Ok(Reply::json(200, user_json(&svc.user(user.user_id)?)))
}

// ---- Wallet ------------------------------------------------------------------------------

pub fn wallet(svc: &Service, rq: &Incoming, _: &Params) -> Result<Reply, AppError> {
    let user = auth(svc, rq)?;
    let (w, recent) = svc.wallet(user.user_id)?;
    Ok(Reply::json(
        200,
        wallet_json(&w, &recent, &svc.config.currency),
    ))
}

/// Which money route a body is for: each reads the common fields plus its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoneyRoute {
    Deposit,
    Withdraw,
    Transfer,
}

/// A money route's body, parsed and validated.
#[derive(Debug)]
pub struct MoneyBody {
    pub movement: Movement,
    /// Only for transfers.
    pub to: Option<Recipient>,
    /// Only for withdrawals.
    pub scheduled_at: Option<Timestamp>,
}

/// Parses the body of a deposit, withdrawal or transfer (and an operator credit, which reads
/// like a deposit). Pure: no service and no I/O, so the fuzz target and the property tests
/// drive exactly what the handlers run. Never panics, whatever the bytes.
pub fn parse_money_body(
    rq: &Incoming,
    route: MoneyRoute,
    currency: &Currency,
) -> Result<MoneyBody, AppError> {
    let body = rq.json()?;
    let mut f = Fields::new(&body);
    let to = if route == MoneyRoute::Transfer {
        recipient(&mut f)
    } else {
        None
    };
    let scheduled_at = if route == MoneyRoute::Withdraw {
        let parsed = f
            .string("scheduled_at", false)
            .map(Timestamp::parse)
            .transpose();
        f.errors.check("scheduled_at", parsed).flatten()
    } else {
        None
    };
    let m = movement(&mut f, rq, currency);
    f.finish()?;
    let movement = m.ok_or_else(validated_but_missing)?;
    if route == MoneyRoute::Transfer && to.is_none() {
        return Err(validated_but_missing());
    }
    Ok(MoneyBody {
        movement,
        to,
        scheduled_at,
    })
}

/// `to_user_id` (a positive whole number) or `to_username` (a string), exactly one of them.
fn recipient(f: &mut Fields<'_>) -> Option<Recipient> {
    match (f.raw("to_user_id"), f.raw("to_username")) {
        (Some(_), Some(_)) => {
            f.errors.add(
                "to_user_id",
                "send either to_user_id or to_username, not both",
            );
            None
        }
        (Some(Value::Number(n)), None) => match n.as_i64().filter(|id| *id > 0) {
            Some(id) => Some(Recipient::UserId(id)),
            None => {
                f.errors
                    .add("to_user_id", "must be a positive whole number");
                None
            }
        },
        (Some(_), None) => {
            f.errors
                .add("to_user_id", "must be a positive whole number");
            None
        }
        (None, Some(Value::String(s))) => Some(Recipient::Username(s.clone())),
        (None, Some(_)) => {
            f.errors.add("to_username", "must be a string");
            None
        }
        (None, None) => {
            f.errors
                .add("to_user_id", "this field (or to_username) is required");
            None
        }
    }
}

pub fn deposit(svc: &Service, rq: &Incoming, _: &Params) -> Result<Reply, AppError> {
    let user = auth(svc, rq)?;
    let body = parse_money_body(rq, MoneyRoute::Deposit, &svc.config.currency)?;
    let out = svc.deposit(&user, body.movement)?;
    Ok(Reply::created_or_replayed(
        201,
        out.replayed,
        entry_json(&out.value, &svc.config.currency),
    ))
}

pub fn withdraw(svc: &Service, rq: &Incoming, _: &Params) -> Result<Reply, AppError> {
    let user = auth(svc, rq)?;
    let body = parse_money_body(rq, MoneyRoute::Withdraw, &svc.config.currency)?;
    let out = svc.withdraw(&user, body.movement, body.scheduled_at)?;
    let c = &svc.config.currency;
    Ok(match out.value {
        WithdrawResult::Now(e) => Reply::created_or_replayed(201, out.replayed, entry_json(&e, c)),
        WithdrawResult::Scheduled(w) => {
            Reply::created_or_replayed(202, out.replayed, withdrawal_json(&w, c))
        }
    })
}

pub fn transfer(svc: &Service, rq: &Incoming, _: &Params) -> Result<Reply, AppError> {
    let user = auth(svc, rq)?;
    let body = parse_money_body(rq, MoneyRoute::Transfer, &svc.config.currency)?;
    let (to, movement) = (body.to.ok_or_else(validated_but_missing)?, body.movement);
    let out = svc.transfer(&user, TransferRequest { to, movement })?;
    let c = &svc.config.currency;
    let body = json!({
        "transfer_out": entry_json(&out.value.transfer_out, c),
        "transfer_in": entry_json(&out.value.transfer_in, c),
    });
    Ok(Reply::created_or_replayed(201, out.replayed, body))
}

fn history_reply(svc: &Service, rq: &Incoming, wallet_key: i64) -> Result<Reply, AppError> {
    let (limit, offset) = page_params(rq)?;
    let mut errors = crate::error::FieldErrors::default();
    let before_seq = rq.query("cursor").and_then(|s| {
        errors.check(
            "cursor",
            s.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| "is not a cursor from next_cursor".to_string()),
        )
    });
    let kind = rq.query("type").and_then(|s| {
        errors.check(
            "type",
            EntryKind::parse(s).ok_or_else(|| {
                "must be one of DEPOSIT, WITHDRAWAL, TRANSFER_IN, TRANSFER_OUT, REFUND".to_string()
            }),
        )
    });
    let from = rq
        .query("from")
        .and_then(|s| errors.check("from", query_time(s)));
    let to = rq
        .query("to")
        .and_then(|s| errors.check("to", query_time(s)));
    errors.into_result()?;
    let q = HistoryQuery {
        limit,
        offset,
        before_seq,
        kind,
        from,
        to,
    };
    let page = svc.history(wallet_key, &q)?;
    let c = &svc.config.currency;
    Ok(Reply::json(
        200,
        json!({
            "count": page.count,
            "limit": limit,
            "offset": offset,
            "results": page.results.iter().map(|e| entry_json(e, c)).collect::<Vec<_>>(),
            "next_cursor": page.next_before_seq.map(|s| s.to_string()),
        }),
    ))
}

pub fn transactions(svc: &Service, rq: &Incoming, _: &Params) -> Result<Reply, AppError> {
    let user = auth(svc, rq)?;
    history_reply(svc, rq, user.wallet.key)
}

pub fn balance(svc: &Service, rq: &Incoming, _: &Params) -> Result<Reply, AppError> {
    let user = auth(svc, rq)?;
    let at = rq
        .query("at")
        .map(|s| query_time(s).map_err(|m| AppError::field("at", m)))
        .transpose()?;
    let (balance, at) = svc.balance_at(&user.wallet, at)?;
    Ok(Reply::json(
        200,
        json!({"balance": svc.config.currency.format(balance), "at": at.to_text()}),
    ))
}

pub fn withdrawals(svc: &Service, rq: &Incoming, _: &Params) -> Result<Reply, AppError> {
    let user = auth(svc, rq)?;
    let (limit, offset) = page_params(rq)?;
    let status = rq
        .query("status")
        .map(|s| {
            WithdrawalStatus::parse(s).ok_or_else(|| {
                AppError::field(
                    "status",
                    "must be one of PENDING, PROCESSING, SUCCEEDED, FAILED, CANCELLED",
                )
            })
        })
        .transpose()?;
    let (count, rows) = svc.withdrawals(&user.wallet.id, status, limit, offset)?;
    let c = &svc.config.currency;
    Ok(Reply::json(
        200,
        json!({
            "count": count, "limit": limit, "offset": offset,
            "results": rows.iter().map(|w| withdrawal_json(w, c)).collect::<Vec<_>>(),
        }),
    ))
}

pub fn withdrawal(svc: &Service, rq: &Incoming, params: &Params) -> Result<Reply, AppError> {
    let user = auth(svc, rq)?;
    let w = svc.withdrawal(&user.wallet.id, &params[0])?;
    Ok(Reply::json(200, withdrawal_json(&w, &svc.config.currency)))
}

pub fn cancel_withdrawal(svc: &Service, rq: &Incoming, params: &Params) -> Result<Reply, AppError> {
    let user = auth(svc, rq)?;
    let w = svc.cancel_withdrawal(&user.wallet.id, &params[0])?;
    Ok(Reply::json(200, withdrawal_json(&w, &svc.config.currency)))
}

// ---- Staff -------------------------------------------------------------------------------

pub fn admin_users(svc: &Service, rq: &Incoming, _: &Params) -> Result<Reply, AppError> {
    let staff = staff(svc, rq)?;
    let (limit, offset) = page_params(rq)?;
    let search = rq.query("search").filter(|s| !s.is_empty());
    let (count, users) = svc.admin_users(search, limit, offset)?;
    svc.audit_read(
        &staff,
        "list_users",
        format!("search:{}", search.unwrap_or("")),
    )?;
    Ok(Reply::json(
        200,
        json!({"count": count, "limit": limit, "offset": offset, "results": users.iter().map(user_json).collect::<Vec<_>>()}),
    ))
}

pub fn admin_user(svc: &Service, rq: &Incoming, params: &Params) -> Result<Reply, AppError> {
    let staff = staff(svc, rq)?;
    let user = svc.user(path_user_id(params)?)?;
    svc.audit_read(&staff, "read_user", format!("user:{}", user.id))?;
    Ok(Reply::json(200, user_json(&user)))
}

pub fn admin_wallet(svc: &Service, rq: &Incoming, params: &Params) -> Result<Reply, AppError> {
    let staff = staff(svc, rq)?;
    let user_id = path_user_id(params)?;
    let (w, recent) = svc.wallet(user_id)?;
    svc.audit_read(&staff, "read_wallet", format!("user:{user_id}"))?;
    Ok(Reply::json(
        200,
        wallet_json(&w, &recent, &svc.config.currency),
    ))
}

pub fn admin_transactions(
    svc: &Service,
    rq: &Incoming,
    params: &Params,
) -> Result<Reply, AppError> {
    let staff = staff(svc, rq)?;
    let user_id = path_user_id(params)?;
    let (w, _) = svc.wallet(user_id)?;
    svc.audit_read(&staff, "read_transactions", format!("user:{user_id}"))?;
    history_reply(svc, rq, w.key)
}

pub fn admin_credit(svc: &Service, rq: &Incoming, params: &Params) -> Result<Reply, AppError> {
    let staff = staff(svc, rq)?;
    let user_id = path_user_id(params)?;
    let body = parse_money_body(rq, MoneyRoute::Deposit, &svc.config.currency)?;
    let m = body.movement;
    let out = svc.admin_credit(&staff, user_id, m)?;
    Ok(Reply::created_or_replayed(
        201,
        out.replayed,
        entry_json(&out.value, &svc.config.currency),
    ))
}

/// `{outcome: "succeeded" | "failed", reason}`: staff settle a withdrawal whose payout outcome
/// is unknown.
pub fn admin_resolve_withdrawal(
    svc: &Service,
    rq: &Incoming,
    params: &Params,
) -> Result<Reply, AppError> {
    let staff = staff(svc, rq)?;
    let body = rq.json()?;
    let mut f = Fields::new(&body);
    let outcome = f.parsed("outcome", PayoutResolution::parse);
    let reason = f.parsed("reason", StaffReason::parse);
    f.finish()?;
    let (Some(outcome), Some(reason)) = (outcome, reason) else {
        return Err(validated_but_missing());
    };
    let w = svc.admin_resolve_withdrawal(&staff, &params[0], outcome, reason)?;
    Ok(Reply::json(200, withdrawal_json(&w, &svc.config.currency)))
}

// ---- Operations --------------------------------------------------------------------------

pub fn health(svc: &Service, _: &Incoming, _: &Params) -> Result<Reply, AppError> {
    let h = svc.health();
    let mut reasons: Vec<String> = Vec::new();
    if !h.database {
        reasons.push("the database does not answer queries".into());
    }
    match h.storage {
        Some(StorageFault::Full) => reasons.push(
            "the database's disk is full: writes are refused (503) until space is freed; reads work".into(),
        ),
        Some(StorageFault::ReadOnly) => reasons.push(
            "the database has become read-only: writes are refused (503); reads work".into(),
        ),
        None => {}
    }
    let wall_ahead = h.clock.wall_ahead_micros > 0;
    if wall_ahead {
        reasons.push(format!(
            "the wall clock is {:.3} s ahead of the time reckoned from the monotonic clock: time stamps follow \
             the reckoning until it agrees again (if the wall clock is right, restart the server)",
            h.clock.wall_ahead_micros as f64 / 1e6
        ));
    }
    let stamps_ahead = h.stamps_ahead_micros > 0;
    if stamps_ahead {
        reasons.push(format!(
            "the newest time stamp is {:.3} s ahead of the clock (it was set back, or the server started with \
             --accept-future-stamps): new entries are stamped just after it until the clock catches up",
            h.stamps_ahead_micros as f64 / 1e6
        ));
    }
    let unavailable = !h.database || h.storage.is_some();
    let status = match (unavailable, wall_ahead || stamps_ahead) {
        (true, _) => "unavailable",
        (false, true) => "degraded",
        (false, false) => "ok",
    };
    let mut body = json!({
        "status": status,
        "database": if h.database { "ok" } else { "unavailable" },
        "storage": h.storage.map_or("ok", StorageFault::as_str),
        "clock": match (wall_ahead, stamps_ahead) {
            (true, _) => "wall_clock_ahead",
            (false, true) => "wall_clock_behind",
            (false, false) => "ok",
        },
    });
    if !reasons.is_empty() {
        body["reason"] = json!(reasons.join("; "));
    }
    Ok(if unavailable {
        Reply::json(503, body).header("Retry-After", "1")
    } else {
        Reply::json(200, body)
    })
}

pub fn metrics(svc: &Service, _: &Incoming, _: &Params) -> Result<Reply, AppError> {
    // The metrics still render when the database can't answer; that gauge is left out.
    let left_for_staff = svc
        .payouts_outcome_unknown()
        .map_err(|e| crate::log::error(&format!("metrics: cannot count payouts: {e:?}")))
        .ok();
    // A reading of its own, so that the clock gauges are current.
    let stamps_ahead_micros = svc.stamps_ahead_micros(svc.clock.now());
    Ok(Reply::text(
        "text/plain; version=0.0.4; charset=utf-8",
        svc.metrics.render(
            &svc.writer.stats,
            &svc.clock.report(),
            stamps_ahead_micros,
            left_for_staff,
        ),
    ))
}

pub fn openapi(_: &Service, _: &Incoming, _: &Params) -> Result<Reply, AppError> {
    Ok(Reply::text(
        "application/json",
        super::docs::OPENAPI_JSON.to_string(),
    ))
}

pub fn docs(_: &Service, _: &Incoming, _: &Params) -> Result<Reply, AppError> {
    Ok(Reply::text(
        "text/html; charset=utf-8",
        super::docs::DOCS_HTML.to_string(),
    ))
}

/// Only routed when the server was started with test hooks: proves a panic stays one 500.
pub fn test_panic(_: &Service, _: &Incoming, _: &Params) -> Result<Reply, AppError> {
    panic!("deliberate panic from the test hook");
}
