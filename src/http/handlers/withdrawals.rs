//! The caller's withdrawals: the list, one of them, and cancelling a scheduled one.

use serde_json::json;

use super::{page_params, withdrawal_json, Params};
use crate::accounts::AuthUser;
use crate::domain::WithdrawalStatus;
use crate::error::AppError;
use crate::http::request::Incoming;
use crate::http::response::Reply;
use crate::service::Service;

pub fn list(svc: &Service, rq: &Incoming, _: &Params, user: &AuthUser) -> Result<Reply, AppError> {
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
    let (count, rows) = svc.withdrawals(&user.wallet, status, limit, offset)?;
    let c = &svc.config.currencies;
    Ok(Reply::json(
        200,
        json!({
            "count": count, "limit": limit, "offset": offset,
            "results": rows.iter().map(|w| withdrawal_json(w, c)).collect::<Vec<_>>(),
        }),
    ))
}

pub fn show(
    svc: &Service,
    _: &Incoming,
    params: &Params,
    user: &AuthUser,
) -> Result<Reply, AppError> {
    let w = svc.withdrawal(&user.wallet, &params[0])?;
    Ok(Reply::json(
        200,
        withdrawal_json(&w, &svc.config.currencies),
    ))
}

pub fn cancel(
    svc: &Service,
    _: &Incoming,
    params: &Params,
    user: &AuthUser,
) -> Result<Reply, AppError> {
    let w = svc.cancel_withdrawal(&user.wallet, &params[0])?;
    Ok(Reply::json(
        200,
        withdrawal_json(&w, &svc.config.currencies),
    ))
}
