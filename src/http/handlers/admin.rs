//! Staff routes: any account read (and audited), operator credits, freezing a wallet,
//! reversing a transaction, the audit log, and settling a withdrawal whose payout outcome is
//! unknown.

use serde_json::{json, Value};

use super::{
    entry_json, page_params, parse_money_body, path_user_id, user_json, validated_but_missing,
    wallet_json, withdrawal_json, MoneyRoute, Params,
};
use crate::domain::{PayoutResolution, StaffReason};
use crate::error::AppError;
use crate::http::request::{Fields, Incoming};
use crate::http::response::Reply;
use crate::http::router::StaffUser;
use crate::ledger::reversals::Reversal;
use crate::service::Service;

pub fn users(
    svc: &Service,
    rq: &Incoming,
    _: &Params,
    staff: &StaffUser,
) -> Result<Reply, AppError> {
    let (limit, offset) = page_params(rq)?;
    let search = rq.query("search").filter(|s| !s.is_empty());
    let (count, users) = svc.admin_users(search, limit, offset)?;
    svc.audit_read(
        staff,
        "list_users",
        format!("search:{}", search.unwrap_or("")),
    )?;
    Ok(Reply::json(
        200,
        json!({"count": count, "limit": limit, "offset": offset, "results": users.iter().map(user_json).collect::<Vec<_>>()}),
    ))
}

pub fn user(
    svc: &Service,
    _: &Incoming,
    params: &Params,
    staff: &StaffUser,
) -> Result<Reply, AppError> {
    let user = svc.user(path_user_id(params)?)?;
    svc.audit_read(staff, "read_user", format!("user:{}", user.id))?;
    Ok(Reply::json(200, staff_user_json(svc, &user)?))
}

pub fn wallet(
    svc: &Service,
    _: &Incoming,
    params: &Params,
    staff: &StaffUser,
) -> Result<Reply, AppError> {
    let user_id = path_user_id(params)?;
    let (w, recent) = svc.wallet(user_id)?;
    svc.audit_read(staff, "read_wallet", format!("user:{user_id}"))?;
    Ok(Reply::json(
        200,
        wallet_json(&w, &recent, &svc.config.currencies),
    ))
}

pub fn transactions(
    svc: &Service,
    rq: &Incoming,
    params: &Params,
    staff: &StaffUser,
) -> Result<Reply, AppError> {
    let user_id = path_user_id(params)?;
    let (w, _) = svc.wallet(user_id)?;
    svc.audit_read(staff, "read_transactions", format!("user:{user_id}"))?;
    super::wallet::history_reply(svc, rq, &w.wallet_ref())
}

pub fn credit(
    svc: &Service,
    rq: &Incoming,
    params: &Params,
    staff: &StaffUser,
) -> Result<Reply, AppError> {
    let user_id = path_user_id(params)?;
    let body = parse_money_body(rq, MoneyRoute::Deposit, &svc.config.currencies)?;
    // Part 1's credit took no reason: optional here, recorded when given.
    let json = rq.json()?;
    let mut f = Fields::new(&json);
    let reason = f
        .string("reason", false)
        .map(StaffReason::parse)
        .transpose();
    let reason = f.errors.check("reason", reason).flatten();
    f.finish()?;
    let out = svc.admin_credit(staff, user_id, body.movement, reason)?;
    Ok(Reply::created_or_replayed(
        201,
        out.replayed,
        entry_json(&out.value, &svc.config.currencies),
    ))
}

/// `{reason}`: staff freeze a user's wallet (it receives money but sends none).
pub fn freeze(
    svc: &Service,
    rq: &Incoming,
    params: &Params,
    staff: &StaffUser,
) -> Result<Reply, AppError> {
    set_frozen(svc, rq, params, staff, true)
}

/// `{reason}`: staff unfreeze a user's wallet.
pub fn unfreeze(
    svc: &Service,
    rq: &Incoming,
    params: &Params,
    staff: &StaffUser,
) -> Result<Reply, AppError> {
    set_frozen(svc, rq, params, staff, false)
}

fn set_frozen(
    svc: &Service,
    rq: &Incoming,
    params: &Params,
    staff: &StaffUser,
    frozen: bool,
) -> Result<Reply, AppError> {
    let user_id = path_user_id(params)?;
    let reason = super::reason_body(rq)?;
    let (user, _) = svc.admin_freeze(staff, user_id, frozen, reason)?;
    Ok(Reply::json(200, staff_user_json(svc, &user)?))
}

/// `{reason, reference}` (or the `Idempotency-Key` header for the reference): staff reverse a
/// deposit, a paid withdrawal or a transfer. 201 with the reversal entry, or
/// `{reversal_out, reversal_in}` for a transfer; the same reference again replays it.
pub fn reverse(
    svc: &Service,
    rq: &Incoming,
    params: &Params,
    staff: &StaffUser,
) -> Result<Reply, AppError> {
    let body = rq.json()?;
    let mut f = Fields::new(&body);
    let reason = f.parsed("reason", StaffReason::parse);
    let reference = super::money_body::reference_field(&mut f, rq);
    f.finish()?;
    let (Some(reason), Some(reference)) = (reason, reference) else {
        return Err(validated_but_missing());
    };
    let out = svc.admin_reverse(staff, &params[0], reference, reason)?;
    let cs = &svc.config.currencies;
    let body = match &out.value {
        Reversal::One(e) => entry_json(e, cs),
        Reversal::Transfer {
            reversal_out,
            reversal_in,
        } => json!({
            "reversal_out": entry_json(reversal_out, cs),
            "reversal_in": entry_json(reversal_in, cs),
        }),
    };
    Ok(Reply::created_or_replayed(201, out.replayed, body))
}

/// A user as staff see them: with whether, when and why their wallet is frozen.
fn staff_user_json(svc: &Service, user: &crate::accounts::User) -> Result<Value, AppError> {
    let mut v = user_json(user);
    let frozen = svc.frozen(user.id)?;
    v["frozen"] = json!(frozen.is_some());
    v["frozen_at"] = json!(frozen.as_ref().map(|(at, _)| at.to_text()));
    v["frozen_reason"] = json!(frozen.map(|(_, reason)| reason));
    Ok(v)
}

/// `?limit=&offset=&staff_user_id=&target=`: the audit log, newest first.
pub fn audit(svc: &Service, rq: &Incoming, _: &Params, _: &StaffUser) -> Result<Reply, AppError> {
    let (limit, offset) = page_params(rq)?;
    let mut errors = crate::error::FieldErrors::default();
    let staff_user_id = rq.query("staff_user_id").and_then(|s| {
        errors.check(
            "staff_user_id",
            s.parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| "must be a positive whole number".to_string()),
        )
    });
    let target = rq.query("target").filter(|t| !t.is_empty());
    errors.into_result()?;
    let (count, rows) = svc.audit_log(staff_user_id, target, limit, offset)?;
    let results: Vec<Value> = rows
        .iter()
        .map(|a| {
            json!({
                "id": a.id,
                "staff_user_id": a.staff_user_id,
                "action": a.action,
                "target": a.target,
                "reason": a.reason,
                "detail": serde_json::from_str::<Value>(&a.detail).unwrap_or(Value::Null),
                "created_at": a.created_at.to_text(),
            })
        })
        .collect();
    Ok(Reply::json(
        200,
        json!({"count": count, "limit": limit, "offset": offset, "results": results}),
    ))
}

/// `{outcome: "succeeded" | "failed", reason}`: staff settle a withdrawal whose payout outcome
/// is unknown.
pub fn resolve_withdrawal(
    svc: &Service,
    rq: &Incoming,
    params: &Params,
    staff: &StaffUser,
) -> Result<Reply, AppError> {
    let body = rq.json()?;
    let mut f = Fields::new(&body);
    let outcome = f.parsed("outcome", PayoutResolution::parse);
    let reason = f.parsed("reason", StaffReason::parse);
    f.finish()?;
    let (Some(outcome), Some(reason)) = (outcome, reason) else {
        return Err(validated_but_missing());
    };
    let w = svc.admin_resolve_withdrawal(staff, &params[0], outcome, reason)?;
    Ok(Reply::json(
        200,
        withdrawal_json(&w, &svc.config.currencies),
    ))
}
