//! Holds: the caller's (as payer or recipient), and staff capturing or voiding any other's.

use serde_json::{json, Value};

use super::{money, page_params, parse_money_body, validated_but_missing, MoneyRoute, Params};
use crate::accounts::AuthUser;
use crate::domain::{Amount, Currencies, HoldStatus, StaffReason};
use crate::error::AppError;
use crate::http::request::{Fields, Incoming};
use crate::http::response::Reply;
use crate::http::router::StaffUser;
use crate::ledger::holds::{Actor, Hold, HoldRequest, Role};
use crate::service::Service;

pub(super) fn hold_json(h: &Hold, cs: &Currencies) -> Value {
    json!({
        "id": h.id,
        "status": h.status.as_str(),
        "amount": money(cs, &h.currency, h.amount),
        "currency": h.currency,
        "captured_amount": h.captured_amount.map(|m| money(cs, &h.currency, m)),
        "reference": h.reference,
        "payer_user_id": h.payer_user_id,
        "to_user_id": h.to_user_id,
        "expires_at": h.expires_at.to_text(),
        "created_at": h.created_at.to_text(),
        "updated_at": h.updated_at.to_text(),
        "metadata": h.metadata.to_value(),
        "transaction_ids": h.transaction_ids,
    })
}

pub fn create(
    svc: &Service,
    rq: &Incoming,
    _: &Params,
    user: &AuthUser,
) -> Result<Reply, AppError> {
    let body = parse_money_body(rq, MoneyRoute::Hold, &svc.config.currencies)?;
    let req = HoldRequest {
        movement: body.movement,
        to: body.to,
        expiry: body.expiry,
    };
    let out = svc.create_hold(user, req)?;
    Ok(Reply::created_or_replayed(
        201,
        out.replayed,
        hold_json(&out.value, &svc.config.currencies),
    ))
}

pub fn list(svc: &Service, rq: &Incoming, _: &Params, user: &AuthUser) -> Result<Reply, AppError> {
    let (limit, offset) = page_params(rq)?;
    let mut errors = crate::error::FieldErrors::default();
    let status = rq.query("status").and_then(|s| {
        errors.check(
            "status",
            HoldStatus::parse(s)
                .ok_or_else(|| "must be one of HELD, CAPTURED, VOIDED, EXPIRED".to_string()),
        )
    });
    let role = rq.query("role").and_then(|s| {
        errors.check(
            "role",
            match s {
                "payer" => Ok(Role::Payer),
                "recipient" => Ok(Role::Recipient),
                _ => Err("must be payer or recipient".to_string()),
            },
        )
    });
    errors.into_result()?;
    let (count, holds) = svc.holds(user, status, role, limit, offset)?;
    let cs = &svc.config.currencies;
    Ok(Reply::json(
        200,
        json!({
            "count": count, "limit": limit, "offset": offset,
            "results": holds.iter().map(|h| hold_json(h, cs)).collect::<Vec<_>>(),
        }),
    ))
}

pub fn show(
    svc: &Service,
    _: &Incoming,
    params: &Params,
    user: &AuthUser,
) -> Result<Reply, AppError> {
    let h = svc.hold(user, &params[0])?;
    Ok(Reply::json(200, hold_json(&h, &svc.config.currencies)))
}

/// The optional `amount` of a capture, at the scale of the hold's currency: the hold is read
/// first (and is "not found" to whoever may not see it).
fn capture_amount(
    svc: &Service,
    f: &mut Fields<'_>,
    visible: Result<Hold, AppError>,
) -> Result<Option<Amount>, AppError> {
    let Some(raw) = f.raw("amount") else {
        return Ok(None);
    };
    let h = visible?;
    let currency = crate::ledger::currency_of(&svc.config.currencies, &h.currency)?;
    Ok(f.errors
        .check("amount", Amount::parse(raw, currency).map_err(|e| e.0)))
}

/// A body that may be empty (`{}` or none at all).
fn optional_body(rq: &Incoming) -> Result<serde_json::Map<String, Value>, AppError> {
    if rq.body.is_empty() {
        return Ok(serde_json::Map::new());
    }
    rq.json()
}

pub fn capture(
    svc: &Service,
    rq: &Incoming,
    params: &Params,
    user: &AuthUser,
) -> Result<Reply, AppError> {
    let body = optional_body(rq)?;
    let mut f = Fields::new(&body);
    let amount = capture_amount(svc, &mut f, svc.hold(user, &params[0]))?;
    f.finish()?;
    let out = svc.capture_hold(Actor::User(user.user_id), &params[0], amount, None)?;
    Ok(Reply::created_or_replayed(
        200,
        out.replayed,
        hold_json(&out.value, &svc.config.currencies),
    ))
}

pub fn void(
    svc: &Service,
    _: &Incoming,
    params: &Params,
    user: &AuthUser,
) -> Result<Reply, AppError> {
    let h = svc.void_hold(Actor::User(user.user_id), &params[0], None)?;
    Ok(Reply::json(200, hold_json(&h, &svc.config.currencies)))
}

/// `{amount?, reason}`: staff capture any hold but one of their own, with a reason.
pub fn admin_capture(
    svc: &Service,
    rq: &Incoming,
    params: &Params,
    staff: &StaffUser,
) -> Result<Reply, AppError> {
    let body = rq.json()?;
    let mut f = Fields::new(&body);
    let reason = f.parsed("reason", StaffReason::parse);
    let amount = capture_amount(svc, &mut f, svc.admin_hold(&params[0]))?;
    f.finish()?;
    let reason = reason.ok_or_else(validated_but_missing)?;
    let out = svc.capture_hold(
        Actor::Staff(staff.user_id),
        &params[0],
        amount,
        Some(reason),
    )?;
    Ok(Reply::created_or_replayed(
        200,
        out.replayed,
        hold_json(&out.value, &svc.config.currencies),
    ))
}

/// `{reason}`: staff void any hold but one of their own.
pub fn admin_void(
    svc: &Service,
    rq: &Incoming,
    params: &Params,
    staff: &StaffUser,
) -> Result<Reply, AppError> {
    let reason = super::reason_body(rq)?;
    let h = svc.void_hold(Actor::Staff(staff.user_id), &params[0], Some(reason))?;
    Ok(Reply::json(200, hold_json(&h, &svc.config.currencies)))
}
