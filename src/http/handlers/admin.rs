//! Staff routes: any account read (and audited), operator credits, and settling a withdrawal
//! whose payout outcome is unknown.

use serde_json::json;

use super::{
    entry_json, page_params, parse_money_body, path_user_id, user_json, validated_but_missing,
    wallet_json, withdrawal_json, MoneyRoute, Params,
};
use crate::domain::{PayoutResolution, StaffReason};
use crate::error::AppError;
use crate::http::request::{Fields, Incoming};
use crate::http::response::Reply;
use crate::http::router::StaffUser;
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
    Ok(Reply::json(200, user_json(&user)))
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
    let m = body.movement;
    let out = svc.admin_credit(staff, user_id, m)?;
    Ok(Reply::created_or_replayed(
        201,
        out.replayed,
        entry_json(&out.value, &svc.config.currencies),
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
