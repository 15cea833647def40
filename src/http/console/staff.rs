//! Staff pages: finding users, any user's wallet (balances, history, the balance at a moment),
//! crediting, freezing and unfreezing with a reason, the audit log, and CSV exports. Every read
//! of another user's data is recorded in the audit log as the API records it (`audit_read`);
//! every action is audited by its use case.

use maud::html;

use super::user::{self, done, history_card, money_body, notice, refill};
use super::views::{self, amount, badge, when, Filled, FormView, Nav};
use super::{html, Answer, Ctx, Problem, Session};
use crate::domain::{Reference, StaffReason, Timestamp};
use crate::error::AppError;
use crate::http::handlers::{export as csv, MoneyRoute};

/// Users on a page of the search.
pub const USERS_PAGE_ROWS: u32 = 25;
/// Rows on a page of the audit log.
pub const AUDIT_PAGE_ROWS: u32 = 50;
/// The furthest offset a page link may ask for.
const OFFSET_MAX: u32 = 1_000_000;

fn offset(ctx: &Ctx) -> u32 {
    ctx.rq
        .query("offset")
        .and_then(|s| s.parse::<u32>().ok())
        .map_or(0, |n| n.min(OFFSET_MAX))
}

/// The user of the path (`/console/staff/users/{id}`): a malformed id is not found.
fn user_id(ctx: &Ctx) -> Result<i64, AppError> {
    ctx.params[0]
        .parse::<i64>()
        .map_err(|_| AppError::NotFound("user"))
}

pub fn users(ctx: &Ctx, s: &Session) -> Answer {
    let svc = ctx.svc;
    let search = ctx
        .rq
        .query("search")
        .map(str::trim)
        .filter(|q| !q.is_empty());
    let offset = offset(ctx);
    let (count, list) = svc.admin_users(search, USERS_PAGE_ROWS, offset)?;
    // As the API's user list records it.
    svc.audit_read(
        &s.user,
        "list_users",
        format!("search:{}", search.unwrap_or("")),
    )?;
    let more = i64::from(offset) + i64::from(USERS_PAGE_ROWS) < count;
    let query = search
        .map(|q| format!("&search={}", user::encode(q)))
        .unwrap_or_default();
    let content = html! {
        div.card {
            form.filters method="get" action="/console/staff/users" {
                div {
                    label for="search" { "Username or email contains" }
                    input id="search" name="search" value=(search.unwrap_or_default()) autofocus;
                }
                div { button type="submit" { "Search" } }
            }
        }
        div.card {
            @if list.is_empty() {
                p.empty { "No users found." }
            } @else {
                table {
                    thead { tr { th.num { "Id" } th { "Username" } th { "Name" } th { "Email" } th { "Joined" } th { "" } } }
                    tbody {
                        @for u in &list {
                            tr {
                                td.num { (u.id) }
                                td { strong { (u.username) } @if u.is_staff { " " span.badge { "staff" } } }
                                td { (u.first_name) " " (u.last_name) }
                                td { (u.email) }
                                td.when { (when(u.date_joined)) }
                                td { a href={ "/console/staff/users/" (u.id) } { "Open wallet →" } }
                            }
                        }
                    }
                }
            }
            div.pager {
                span { (count) @if count == 1 { " user" } @else { " users" } }
                span {
                    @if offset > 0 {
                        a href={ "/console/staff/users?offset=" (offset.saturating_sub(USERS_PAGE_ROWS)) (query) } { "← Previous" } " "
                    }
                    @if more {
                        a href={ "/console/staff/users?offset=" (offset + USERS_PAGE_ROWS) (query) } { "Next →" }
                    }
                }
            }
        }
    };
    Ok(html(
        200,
        views::page(s, "Users", Nav::Users, None, content),
    ))
}

pub fn user(ctx: &Ctx, s: &Session) -> Answer {
    user_page(ctx, s, None)
}

fn user_page(ctx: &Ctx, s: &Session, filled: Option<&Filled>) -> Answer {
    let svc = ctx.svc;
    let id = user_id(ctx)?;
    let who = svc.user(id)?;
    let (wallet, _) = svc.wallet(id)?;
    let frozen = svc.frozen(id)?;
    // Each read recorded as the API's reads of the same data are.
    for action in ["read_user", "read_wallet", "read_transactions"] {
        svc.audit_read(&s.user, action, format!("user:{id}"))?;
    }
    let cs = &svc.config.currencies;
    let wallet_ref = wallet.wallet_ref();
    let (at_result, at_errors) = balance_at(ctx, s, id, &wallet_ref)?;
    let base = format!("/console/staff/users/{id}");
    let own = id == s.user.user_id;
    let (history, history_status) = history_card(
        ctx,
        &wallet_ref,
        &base,
        &format!("{base}/transactions.csv"),
        (!own).then_some(base.as_str()),
    )?;
    let credit = FormView::new("credit", filled);
    let freeze = FormView::new("freeze", filled);
    let reverse = FormView::new("reverse", filled);
    // The transaction to reverse: as posted when the form failed, else as a history row's
    // "Reverse…" link names it.
    let reverse_id = match reverse.value("id") {
        posted if !posted.is_empty() => posted,
        _ => ctx.rq.query("reverse").unwrap_or_default().to_string(),
    };
    let chosen_currency = ctx.rq.query("at_currency").unwrap_or_default().to_string();
    let content = html! {
        div.card {
            dl.facts {
                dt { "Username" } dd { strong { (who.username) } @if who.is_staff { " " span.badge { "staff" } } }
                dt { "Name" } dd { (who.first_name) " " (who.last_name) }
                dt { "Email" } dd { (who.email) }
                dt { "User id" } dd { (who.id) }
                dt { "Joined" } dd { (when(who.date_joined)) }
                dt { "Wallet" } dd.mono { (wallet.id) }
                dt { "State" } dd {
                    @if let Some((since, reason)) = &frozen {
                        (badge("frozen")) " since " (when(*since)) " — " span.reason { (reason) }
                    } @else { "Active" }
                }
            }
        }
        div.card {
            h2 { "Balances" }
            (user::balances_table(&wallet, cs))
            form.filters method="get" action=(base) {
                div {
                    label for="at" { "Balance at" span.hint { " (UTC)" } }
                    input id="at" type="datetime-local" step="1" name="at" value=(ctx.rq.query("at").unwrap_or_default());
                    @for m in &at_errors { p.field-error role="alert" { (m) } }
                }
                @if cs.iter().count() > 1 {
                    div {
                        label for="at_currency" { "Currency" }
                        select id="at_currency" name="at_currency" {
                            @for c in cs.iter() { option value=(c.code) selected[chosen_currency == c.code] { (c.code) } }
                        }
                    }
                }
                div { button.secondary type="submit" { "Show" } }
            }
            @if let Some((code, minor, at)) = &at_result {
                p.stat-line { "Balance at " (when(*at)) ": " strong.stat { (amount(cs, code, *minor)) " " (code) } }
            }
        }
        @if own {
            div.alert.warn { "This is your own wallet: staff can't credit, freeze, unfreeze or reverse their own." }
        }
        div.grid {
            div.card {
                h2 { "Credit" }
                form method="post" action={ (base) "/credit" } {
                    (credit.hidden(s))
                    (credit.alert(&["amount", "currency", "reason"]))
                    (credit.input("amount", "Amount", "text", None))
                    (credit.currency(cs))
                    (credit.input("reason", "Reason", "text", Some("(recorded in the audit log)")))
                    div.actions { button type="submit" { "Credit" } }
                }
            }
            div.card {
                @if frozen.is_some() {
                    h2 { "Unfreeze" }
                    form method="post" action={ (base) "/unfreeze" } {
                        (freeze.hidden(s))
                        (freeze.alert(&["reason"]))
                        (freeze.input("reason", "Reason", "text", Some("(recorded in the audit log)")))
                        div.actions { button.secondary type="submit" { "Unfreeze wallet" } }
                    }
                } @else {
                    h2 { "Freeze" }
                    p.muted { "A frozen wallet receives money but sends none." }
                    form method="post" action={ (base) "/freeze" } {
                        (freeze.hidden(s))
                        (freeze.alert(&["reason"]))
                        (freeze.input("reason", "Reason", "text", Some("(recorded in the audit log)")))
                        div.actions { button.danger type="submit" { "Freeze wallet" } }
                    }
                }
            }
            div.card id="reverse" {
                h2 { "Reverse a transaction" }
                p.muted {
                    "Undoes a deposit, a paid withdrawal or a transfer of this wallet with new entries; "
                    "a transfer is moved back from its recipient to its sender. Pick one with "
                    "“Reverse…” in the history below."
                }
                form method="post" action={ (base) "/reverse" } {
                    (reverse.hidden(s))
                    (reverse.alert(&["id", "reason"]))
                    @let id_errors = reverse.messages("id");
                    label for="reverse-id" { "Transaction id" }
                    input.mono id="reverse-id" name="id" type="text" value=(reverse_id)
                        class=[(!id_errors.is_empty()).then_some("invalid")]
                        aria-invalid=[(!id_errors.is_empty()).then_some("true")];
                    @for m in &id_errors { p.field-error role="alert" { (m) } }
                    (reverse.input("reason", "Reason", "text", Some("(recorded in the audit log)")))
                    div.actions { button.danger type="submit" { "Reverse transaction" } }
                }
            }
        }
        div.card {
            h2 { "History" }
            (history)
        }
    };
    let title = format!("User {}", who.username);
    let mut reply = html(
        200,
        views::page(s, &title, Nav::Users, notice(ctx.rq), content),
    );
    if history_status != 200 || !at_errors.is_empty() {
        reply.status = 422;
    }
    Ok(reply)
}

/// The balance at the moment `?at=` names (in `?at_currency=`, else the default currency),
/// read by `Service::balance_at` and audited; or the errors of `at`.
#[allow(clippy::type_complexity)]
fn balance_at(
    ctx: &Ctx,
    s: &Session,
    id: i64,
    wallet: &crate::ledger::WalletRef,
) -> Result<
    (
        Option<(String, crate::domain::MinorUnits, Timestamp)>,
        Vec<String>,
    ),
    AppError,
> {
    let Some(at) = ctx.rq.query("at").map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok((None, Vec::new()));
    };
    let cs = &ctx.svc.config.currencies;
    let code = match cs.resolve(ctx.rq.query("at_currency").filter(|c| !c.is_empty())) {
        Ok(c) => c.code.clone(),
        Err(m) => return Ok((None, vec![m])),
    };
    let at = match Timestamp::parse(&user::local_time(at)) {
        Ok(at) => at,
        Err(_) => return Ok((None, vec!["must be a date and time".into()])),
    };
    match ctx.svc.balance_at(wallet, &code, Some(at)) {
        Ok((minor, at)) => {
            ctx.svc
                .audit_read(&s.user, "read_balance", format!("user:{id}"))?;
            Ok((Some((code, minor, at)), Vec::new()))
        }
        Err(e @ AppError::Validation(_)) => Ok((
            None,
            Problem::of(&e).fields.into_values().flatten().collect(),
        )),
        Err(e) => Err(e),
    }
}

/// A reason a staff form must give (1–500 characters).
fn reason(ctx: &Ctx) -> Result<StaffReason, AppError> {
    let text = ctx
        .form
        .get("reason")
        .filter(|r| !r.trim().is_empty())
        .ok_or_else(|| AppError::field("reason", "this field is required"))?;
    StaffReason::parse(text).map_err(|m| AppError::field("reason", m))
}

/// Both results, or every validation error of the two at once.
fn both<A, B>(a: Result<A, AppError>, b: Result<B, AppError>) -> Result<(A, B), AppError> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(AppError::Validation(mut x)), Err(AppError::Validation(y))) => {
            x.extend(y);
            Err(AppError::Validation(x))
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

pub fn credit(ctx: &Ctx, s: &Session) -> Answer {
    let id = user_id(ctx)?;
    let out = both(money_body(ctx, MoneyRoute::Deposit), reason(ctx))
        .and_then(|(b, r)| ctx.svc.admin_credit(&s.user, id, b.movement, Some(r)));
    match out {
        Ok(out) => done(
            &format!("/console/staff/users/{id}"),
            "credit",
            out.replayed,
        ),
        Err(e) => refill(ctx, s, "credit", e, user_page),
    }
}

pub fn freeze(ctx: &Ctx, s: &Session) -> Answer {
    set_frozen(ctx, s, true)
}

pub fn unfreeze(ctx: &Ctx, s: &Session) -> Answer {
    set_frozen(ctx, s, false)
}

fn set_frozen(ctx: &Ctx, s: &Session, frozen: bool) -> Answer {
    let id = user_id(ctx)?;
    let out = reason(ctx).and_then(|r| ctx.svc.admin_freeze(&s.user, id, frozen, r));
    match out {
        Ok(_) => done(
            &format!("/console/staff/users/{id}"),
            if frozen { "freeze" } else { "unfreeze" },
            false,
        ),
        Err(e) => refill(ctx, s, "freeze", e, user_page),
    }
}

/// Reverses a transaction of this user's wallet (`Service::admin_reverse`): one that belongs
/// to another wallet is "not found" here, so a mistyped id never reverses someone else's.
pub fn reverse(ctx: &Ctx, s: &Session) -> Answer {
    let id = user_id(ctx)?;
    let out = both(
        both(transaction_of(ctx, id), reason(ctx)),
        form_reference(ctx),
    )
    .and_then(|((tx, r), reference)| ctx.svc.admin_reverse(&s.user, &tx, reference, r));
    match out {
        Ok(out) => done(
            &format!("/console/staff/users/{id}"),
            "reverse",
            out.replayed,
        ),
        Err(e) => refill(ctx, s, "reverse", e, user_page),
    }
}

/// The form's transaction id, checked to be an entry of user `id`'s wallet.
fn transaction_of(ctx: &Ctx, id: i64) -> Result<String, AppError> {
    let tx = ctx
        .form
        .get("id")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AppError::field("id", "this field is required"))?;
    let (w, _) = ctx.svc.wallet(id)?;
    match ctx.svc.transaction(&w.wallet_ref(), tx) {
        Ok(e) => Ok(e.id),
        Err(AppError::NotFound(_)) => Err(AppError::field(
            "id",
            "no transaction of this wallet has this id",
        )),
        Err(e) => Err(e),
    }
}

/// The idempotency reference the form carries.
fn form_reference(ctx: &Ctx) -> Result<Reference, AppError> {
    let text = ctx.form.get("reference").unwrap_or_default();
    Reference::parse(text).map_err(|m| AppError::field("reference", m))
}

/// A user's history as CSV, through the API's CSV writer; audited as the API's export is.
pub fn export(ctx: &Ctx, s: &Session) -> Answer {
    let id = user_id(ctx)?;
    let (q, errors) = user::history_query(ctx);
    errors.into_result()?;
    let (w, _) = ctx.svc.wallet(id)?;
    ctx.svc
        .audit_read(&s.user, "export_transactions", format!("user:{id}"))?;
    csv::csv_reply(ctx.svc, ctx.svc.history_pages(&w.wallet_ref(), &q))
}

pub fn audit(ctx: &Ctx, s: &Session) -> Answer {
    let rq = ctx.rq;
    let staff_text = rq
        .query("staff_user_id")
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let target = rq.query("target").map(str::trim).filter(|v| !v.is_empty());
    let staff_id = staff_text.map(|t| t.parse::<i64>().ok().filter(|id| *id > 0));
    let bad_staff = matches!(staff_id, Some(None));
    let offset = offset(ctx);
    let (count, rows) = if bad_staff {
        (0, Vec::new())
    } else {
        ctx.svc
            .audit_log(staff_id.flatten(), target, AUDIT_PAGE_ROWS, offset)?
    };
    let mut query = String::new();
    if let Some(t) = staff_text {
        query.push_str(&format!("&staff_user_id={}", user::encode(t)));
    }
    if let Some(t) = target {
        query.push_str(&format!("&target={}", user::encode(t)));
    }
    let more = i64::from(offset) + i64::from(AUDIT_PAGE_ROWS) < count;
    let content = html! {
        div.card {
            form.filters method="get" action="/console/staff/audit" {
                div {
                    label for="staff_user_id" { "Staff user id" }
                    input id="staff_user_id" name="staff_user_id" inputmode="numeric" value=(staff_text.unwrap_or_default());
                    @if bad_staff { p.field-error role="alert" { "must be a positive whole number" } }
                }
                div {
                    label for="target" { "Target" span.hint { " (like user:7)" } }
                    input id="target" name="target" value=(target.unwrap_or_default());
                }
                div { button type="submit" { "Filter" } }
            }
        }
        div.card {
            @if rows.is_empty() {
                p.empty { "No entries." }
            } @else {
                table.audit {
                    thead { tr { th { "When" } th.num { "Staff" } th { "Action" } th { "Target" } th { "Reason" } th { "Detail" } } }
                    tbody {
                        @for a in &rows {
                            tr {
                                td.when { (when(a.created_at)) }
                                td.num { (a.staff_user_id) }
                                td { (a.action) }
                                td.mono {
                                    @if let Some(id) = a.target.strip_prefix("user:").and_then(|t| t.parse::<i64>().ok()) {
                                        a href={ "/console/staff/users/" (id) } { (a.target) }
                                    } @else { (a.target) }
                                }
                                td { (a.reason.as_deref().unwrap_or_default()) }
                                td.mono { @if a.detail != "{}" { (a.detail) } }
                            }
                        }
                    }
                }
            }
            div.pager {
                span { (count) " entries, newest first" }
                span {
                    @if offset > 0 {
                        a href={ "/console/staff/audit?offset=" (offset.saturating_sub(AUDIT_PAGE_ROWS)) (query) } { "← Newer" } " "
                    }
                    @if more {
                        a href={ "/console/staff/audit?offset=" (offset + AUDIT_PAGE_ROWS) (query) } { "Older →" }
                    }
                }
            }
        }
    };
    let status = if bad_staff { 422 } else { 200 };
    Ok(html(
        status,
        views::page(s, "Audit log", Nav::Audit, None, content),
    ))
}
