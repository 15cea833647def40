//! The caller's own wallet: its summary, deposits, withdrawals, transfers, history and
//! balance.

use serde_json::json;

use super::{
    entry_json, page_params, parse_money_body, query_time, validated_but_missing, wallet_json,
    withdrawal_json, MoneyRoute, Params,
};
use crate::accounts::AuthUser;
use crate::domain::EntryKind;
use crate::error::AppError;
use crate::http::request::Incoming;
use crate::http::response::Reply;
use crate::ledger::queries::HistoryQuery;
use crate::ledger::{TransferRequest, WalletRef};
use crate::service::{Service, WithdrawResult};

pub fn show(svc: &Service, _: &Incoming, _: &Params, user: &AuthUser) -> Result<Reply, AppError> {
    let (w, recent) = svc.wallet(user.user_id)?;
    Ok(Reply::json(
        200,
        wallet_json(&w, &recent, &svc.config.currencies),
    ))
}

pub fn deposit(
    svc: &Service,
    rq: &Incoming,
    _: &Params,
    user: &AuthUser,
) -> Result<Reply, AppError> {
    let body = parse_money_body(rq, MoneyRoute::Deposit, &svc.config.currencies)?;
    let out = svc.deposit(user, body.movement)?;
    Ok(Reply::created_or_replayed(
        201,
        out.replayed,
        entry_json(&out.value, &svc.config.currencies),
    ))
}

pub fn withdraw(
    svc: &Service,
    rq: &Incoming,
    _: &Params,
    user: &AuthUser,
) -> Result<Reply, AppError> {
    let body = parse_money_body(rq, MoneyRoute::Withdraw, &svc.config.currencies)?;
    let out = svc.withdraw(user, body.movement, body.scheduled_at)?;
    let c = &svc.config.currencies;
    Ok(match out.value {
        WithdrawResult::Now(e) => Reply::created_or_replayed(201, out.replayed, entry_json(&e, c)),
        WithdrawResult::Scheduled(w) => {
            Reply::created_or_replayed(202, out.replayed, withdrawal_json(&w, c))
        }
    })
}

pub fn transfer(
    svc: &Service,
    rq: &Incoming,
    _: &Params,
    user: &AuthUser,
) -> Result<Reply, AppError> {
    let body = parse_money_body(rq, MoneyRoute::Transfer, &svc.config.currencies)?;
    let (to, movement) = (body.to.ok_or_else(validated_but_missing)?, body.movement);
    let out = svc.transfer(user, TransferRequest { to, movement })?;
    let c = &svc.config.currencies;
    let body = json!({
        "transfer_out": entry_json(&out.value.transfer_out, c),
        "transfer_in": entry_json(&out.value.transfer_in, c),
    });
    Ok(Reply::created_or_replayed(201, out.replayed, body))
}

pub(super) fn history_reply(
    svc: &Service,
    rq: &Incoming,
    wallet: &WalletRef,
) -> Result<Reply, AppError> {
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
    let filters = history_filters(svc, rq, &mut errors);
    errors.into_result()?;
    let q = HistoryQuery {
        limit,
        offset,
        before_seq,
        ..filters
    };
    let page = svc.history(wallet, &q)?;
    let c = &svc.config.currencies;
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

/// The filters of a history (`type`, `from`, `to`, `currency`), their errors in `errors`.
pub(super) fn history_filters(
    svc: &Service,
    rq: &Incoming,
    errors: &mut crate::error::FieldErrors,
) -> HistoryQuery {
    let kind = rq.query("type").and_then(|s| {
        errors.check(
            "type",
            EntryKind::parse(s).ok_or_else(|| format!("must be one of {}", EntryKind::names())),
        )
    });
    let from = rq
        .query("from")
        .and_then(|s| errors.check("from", query_time(s)));
    let to = rq
        .query("to")
        .and_then(|s| errors.check("to", query_time(s)));
    let currency = rq.query("currency").and_then(|code| {
        errors.check(
            "currency",
            svc.config
                .currencies
                .resolve(Some(code))
                .map(|c| c.code.clone()),
        )
    });
    HistoryQuery {
        kind,
        currency,
        from,
        to,
        ..HistoryQuery::default()
    }
}

pub fn transactions(
    svc: &Service,
    rq: &Incoming,
    _: &Params,
    user: &AuthUser,
) -> Result<Reply, AppError> {
    history_reply(svc, rq, &user.wallet)
}

/// One transaction of the caller's wallet; anyone else's is not found.
pub fn transaction(
    svc: &Service,
    _: &Incoming,
    params: &Params,
    user: &AuthUser,
) -> Result<Reply, AppError> {
    let e = svc.transaction(&user.wallet, &params[0])?;
    Ok(Reply::json(200, entry_json(&e, &svc.config.currencies)))
}

pub fn balance(
    svc: &Service,
    rq: &Incoming,
    _: &Params,
    user: &AuthUser,
) -> Result<Reply, AppError> {
    let mut errors = crate::error::FieldErrors::default();
    let at = rq
        .query("at")
        .and_then(|s| errors.check("at", query_time(s)));
    let currency = errors.check(
        "currency",
        svc.config.currencies.resolve(rq.query("currency")),
    );
    errors.into_result()?;
    let currency = currency.ok_or_else(validated_but_missing)?;
    let (balance, at) = svc.balance_at(&user.wallet, &currency.code, at)?;
    Ok(Reply::json(
        200,
        json!({"balance": currency.format(balance), "at": at.to_text(), "currency": currency.code}),
    ))
}
