//! Handlers: parse the request into domain values, call one use case, shape the reply. One
//! file per area of the API; the JSON shapes and request helpers they share are here.
//! Request and response JSON are built here by hand, separate from the domain types.

pub mod accounts;
pub mod admin;
mod money_body;
pub mod operations;
pub mod wallet;
pub mod withdrawals;

use serde_json::{json, Map, Value};

use super::request::Incoming;
use crate::accounts::{IssuedToken, User};
use crate::domain::{Currency, Timestamp};
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
