//! Handlers: parse the request into domain values, call one use case, shape the reply. One
//! file per area of the API; the JSON shapes and request helpers they share are here.
//! Request and response JSON are built here by hand, separate from the domain types.

pub mod accounts;
pub mod admin;
pub mod export;
pub mod holds;
mod money_body;
pub mod operations;
pub mod wallet;
pub mod withdrawals;

use serde_json::{json, Map, Value};

use super::request::Incoming;
use crate::accounts::{IssuedToken, User};
use crate::domain::{Currencies, MinorUnits, Timestamp};
use crate::error::AppError;
use crate::ledger::queries::{Wallet, PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};
use crate::ledger::withdrawals::Withdrawal;
use crate::ledger::Entry;

pub use money_body::{parse_money_body, MoneyBody, MoneyRoute};

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

/// Minor units of the currency `code` as the API shows them: its scale's digits.
pub(crate) fn money(cs: &Currencies, code: &str, minor: MinorUnits) -> String {
    // Start-up refuses a database holding money in a currency it does not serve, so every
    // stored code is found; the bare minor units are a last resort that never shows a 500.
    cs.get(code)
        .map_or_else(|| minor.to_string(), |c| c.format(minor))
}

/// An entry as the API shows it. `reverses` appears on reversals only, so every other entry
/// has the shape part 1 gave it.
fn entry_json(e: &Entry, cs: &Currencies) -> Value {
    let mut v = json!({
        "id": e.id,
        "type": e.kind.as_str(),
        "currency": e.currency,
        "amount": money(cs, &e.currency, e.amount),
        "balance_after": money(cs, &e.currency, e.balance_after),
        "reference": e.reference,
        "counterparty_user_id": e.counterparty_user_id,
        "created_at": e.created_at.to_text(),
        "metadata": e.metadata.to_value(),
    });
    if let Some(id) = &e.reverses {
        v["reverses"] = json!(id);
    }
    v
}

/// A wallet as part 1 showed it (its default currency's `balance`), with `balances`: one per
/// currency it has had money in, plus the default, by code.
fn wallet_json(w: &Wallet, recent: &[Entry], cs: &Currencies) -> Value {
    let default = &cs.default_currency().code;
    let main = w.balance_in(default);
    let mut codes: Vec<&str> = w.balances.iter().map(|b| b.currency.as_str()).collect();
    if !codes.contains(&default.as_str()) {
        codes.push(default);
        codes.sort_unstable();
    }
    let balances: Vec<Value> = codes
        .into_iter()
        .map(|code| {
            let b = w.balance_in(code);
            json!({
                "currency": code,
                "balance": money(cs, code, b.balance),
                "held": money(cs, code, b.held),
                "available": money(cs, code, b.available()),
            })
        })
        .collect();
    json!({
        "id": w.id,
        "user_id": w.user_id,
        "currency": default,
        "balance": money(cs, default, main.balance),
        "last_balance": money(cs, default, main.last_balance),
        "last_balance_update": main.last_balance_update.to_text(),
        "balances": balances,
        "recent_transactions": recent.iter().map(|e| entry_json(e, cs)).collect::<Vec<_>>(),
    })
}

fn withdrawal_json(w: &Withdrawal, cs: &Currencies) -> Value {
    json!({
        "id": w.id,
        "currency": w.currency,
        "amount": money(cs, &w.currency, w.amount),
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

/// A staff action's body that is only `{reason}` (required, 1–500 characters, not blank).
fn reason_body(rq: &Incoming) -> Result<crate::domain::StaffReason, AppError> {
    let body = rq.json()?;
    let mut f = crate::http::request::Fields::new(&body);
    let reason = f.parsed("reason", crate::domain::StaffReason::parse);
    f.finish()?;
    reason.ok_or_else(validated_but_missing)
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
