//! A user's pages: logging in and out, the overview (balances and the money forms), history,
//! holds and scheduled withdrawals. Each form is parsed into the API's body and goes through
//! the API's parser (`parse_money_body`) to the same `Service` use case; no money rule is here.

use maud::{html, Markup};
use serde_json::{json, Map, Value};

use super::views::{self, amount, badge, when, Filled, FormView, Nav};
use super::{
    clear_cookie, cookie, derive, html, random_secret, redirect, session_cookie, session_of,
    Answer, Ctx, Problem, Session, LOGIN_COOKIE, LOGIN_CSRF_LABEL, SESSION_COOKIE,
};
use crate::domain::{Amount, EntryKind, Timestamp};
use crate::error::AppError;
use crate::http::handlers::{export as csv, parse_money_body, MoneyBody, MoneyRoute};
use crate::http::request::Incoming;
use crate::ledger::holds::{Actor, HoldRequest};
use crate::ledger::queries::{HistoryQuery, PAGE_LIMIT_MAX};
use crate::ledger::{Entry, TransferRequest, WalletRef};
use crate::service::WithdrawResult;

/// Rows of a history page when the query names no `limit`.
pub const HISTORY_PAGE_ROWS_DEFAULT: u32 = 25;
/// Holds and withdrawals listed on their pages at most (newest first).
pub const LIST_ROWS_MAX: u32 = 100;

/// The text of a notice named in a redirect's query (`?notice=deposit`): fixed texts only, so
/// nothing a link carries is ever shown.
pub fn notice(rq: &Incoming) -> Option<&'static str> {
    Some(match rq.query("notice")? {
        "deposit" => "Deposit recorded.",
        "withdraw" => "Withdrawal made.",
        "scheduled" => "Withdrawal scheduled.",
        "transfer" => "Transfer sent.",
        "hold" => "Hold created.",
        "capture" => "Hold captured.",
        "void" => "Hold voided.",
        "cancel" => "Withdrawal cancelled.",
        "credit" => "Credit recorded.",
        "freeze" => "Wallet frozen.",
        "unfreeze" => "Wallet unfrozen.",
        "reverse" => "Transaction reversed.",
        "replayed" => "That form had already been sent: nothing was done twice.",
        "logged_out" => "You are logged out.",
        _ => return None,
    })
}

/// A page shown again after its form failed, with the error's status; an error that is no
/// form's (the server's fault, or a busy database) becomes the error page instead.
pub fn refill(
    ctx: &Ctx,
    s: &Session,
    form: &'static str,
    e: AppError,
    render: fn(&Ctx, &Session, Option<&Filled>) -> Answer,
) -> Answer {
    if matches!(
        e,
        AppError::Internal(_) | AppError::Unavailable(_) | AppError::Storage(_)
    ) {
        return Err(e);
    }
    let filled = Filled {
        form,
        values: &ctx.form,
        problem: Problem::of(&e),
    };
    let mut reply = render(ctx, s, Some(&filled))?;
    reply.status = filled.problem.status;
    Ok(reply)
}

// ---- Logging in and out ------------------------------------------------------------------

pub fn login_form(ctx: &Ctx) -> Answer {
    if session_of(ctx.svc, ctx.rq).is_ok() {
        return Ok(redirect("/console/"));
    }
    let (secret, fresh) = match cookie(ctx.rq, LOGIN_COOKIE) {
        Some(c) => (c.to_string(), false),
        None => (random_secret(ctx.svc), true),
    };
    let page = views::login(&derive(LOGIN_CSRF_LABEL, &secret), "", None, notice(ctx.rq));
    let reply = html(200, page);
    Ok(if fresh {
        reply.header(
            "Set-Cookie",
            format!(
                "{LOGIN_COOKIE}={secret}; {}",
                super::cookie_attributes(ctx.svc)
            ),
        )
    } else {
        reply
    })
}

/// The login form's POST: the API's login path (`Service::console_login`: the same throttle
/// and password check), then a session cookie.
pub fn login(ctx: &Ctx) -> Answer {
    let username = ctx.form.get("username").unwrap_or_default();
    let password = ctx.form.get("password").unwrap_or_default();
    let again = |status: u16, message: &str| {
        // The form's CSRF token passed, so its cookie is there.
        let secret = cookie(ctx.rq, LOGIN_COOKIE).unwrap_or_default();
        let page = views::login(
            &derive(LOGIN_CSRF_LABEL, secret),
            username,
            Some(message),
            None,
        );
        html(status, page)
    };
    if username.is_empty() || password.is_empty() {
        return Ok(again(422, "Enter your username and your password."));
    }
    match ctx.svc.console_login(username, password, &ctx.rq.client) {
        Ok((_, session)) => {
            // The browser's previous session, if it had one, ends with this login.
            if let Some(previous) = cookie(ctx.rq, SESSION_COOKIE) {
                ctx.svc.console_replace(previous)?;
            }
            Ok(redirect("/console/")
                .header("Set-Cookie", session_cookie(ctx.svc, &session.secret))
                .header("Set-Cookie", clear_cookie(ctx.svc, LOGIN_COOKIE)))
        }
        Err(AppError::InvalidCredentials) => Ok(again(401, "Invalid username or password.")),
        Err(AppError::RateLimited { retry_after_s }) => Ok(again(
            429,
            "Too many failed attempts. Wait a few minutes, then try again.",
        )
        .header("Retry-After", retry_after_s.to_string())),
        Err(e) => Err(e),
    }
}

/// Revokes the session on the server and clears its cookie.
pub fn logout(ctx: &Ctx, s: &Session) -> Answer {
    ctx.svc.console_logout(&s.user)?;
    Ok(redirect("/console/login?notice=logged_out")
        .header("Set-Cookie", clear_cookie(ctx.svc, SESSION_COOKIE)))
}

// ---- The overview and its money forms ----------------------------------------------------

pub fn overview(ctx: &Ctx, s: &Session) -> Answer {
    overview_page(ctx, s, None)
}

fn overview_page(ctx: &Ctx, s: &Session, filled: Option<&Filled>) -> Answer {
    let svc = ctx.svc;
    let (wallet, recent) = svc.wallet(s.user.user_id)?;
    let frozen = svc.frozen(s.user.user_id)?;
    let cs = &svc.config.currencies;
    let deposit = FormView::new("deposit", filled);
    let withdraw = FormView::new("withdraw", filled);
    let transfer = FormView::new("transfer", filled);
    let content = html! {
        @if frozen.is_some() {
            div.alert.warn role="status" { "Your wallet is frozen: it receives money but sends none until staff unfreeze it." }
        }
        div.card {
            h2 { "Balances" }
            (balances_table(&wallet, cs))
        }
        div.grid {
            div.card {
                h2 { "Deposit" }
                form method="post" action="/console/deposit" {
                    (deposit.hidden(s))
                    (deposit.alert(&["amount", "currency", "metadata"]))
                    (deposit.input("amount", "Amount", "text", None))
                    (deposit.currency(cs))
                    (deposit.input("note", "Note", "text", Some("(optional)")))
                    div.actions { button type="submit" { "Deposit" } }
                }
            }
            div.card {
                h2 { "Withdraw" }
                form method="post" action="/console/withdraw" {
                    (withdraw.hidden(s))
                    (withdraw.alert(&["amount", "currency", "scheduled_at", "metadata"]))
                    (withdraw.input("amount", "Amount", "text", None))
                    (withdraw.currency(cs))
                    (withdraw.input("scheduled_at", "Pay out at", "datetime-local", Some("(UTC; empty for now)")))
                    (withdraw.input("note", "Note", "text", Some("(optional)")))
                    div.actions { button type="submit" { "Withdraw" } }
                }
            }
            div.card {
                h2 { "Transfer" }
                form method="post" action="/console/transfer" {
                    (transfer.hidden(s))
                    (transfer.alert(&["to_username", "to_user_id", "amount", "currency", "metadata"]))
                    (transfer.input("to_username", "To (username)", "text", None))
                    (transfer.input("amount", "Amount", "text", None))
                    (transfer.currency(cs))
                    (transfer.input("note", "Note", "text", Some("(optional)")))
                    div.actions { button type="submit" { "Send" } }
                }
            }
        }
        div.card {
            h2 { "Recent activity" }
            (entries_table(&recent, cs, None))
            p { a href="/console/history" { "All history →" } }
        }
    };
    Ok(html(
        200,
        views::page(s, "Overview", Nav::Overview, notice(ctx.rq), content),
    ))
}

pub fn balances_table(
    wallet: &crate::ledger::queries::Wallet,
    cs: &crate::domain::Currencies,
) -> Markup {
    let default = &cs.default_currency().code;
    let mut codes: Vec<&str> = wallet
        .balances
        .iter()
        .map(|b| b.currency.as_str())
        .collect();
    if !codes.contains(&default.as_str()) {
        codes.push(default);
        codes.sort_unstable();
    }
    html! {
        table.balances {
            thead { tr { th { "Currency" } th.num { "Balance" } th.num { "Held" } th.num { "Available" } } }
            tbody {
                @for code in &codes {
                    @let b = wallet.balance_in(code);
                    tr {
                        td { strong { (code) } }
                        td.num data-field="balance" { (amount(cs, code, b.balance)) }
                        td.num data-field="held" { (amount(cs, code, b.held)) }
                        td.num data-field="available" { (amount(cs, code, b.available())) }
                    }
                }
            }
        }
    }
}

/// A money form's fields as the API's JSON body (`note` becomes `metadata.note`; a
/// `datetime-local` value is read as UTC), parsed by the API's own parser.
pub(super) fn money_body(ctx: &Ctx, route: MoneyRoute) -> Result<MoneyBody, AppError> {
    let f = &ctx.form;
    let mut body = Map::new();
    for name in ["amount", "currency", "reference", "to_username"] {
        if let Some(v) = f.text(name) {
            body.insert(name.into(), json!(v));
        }
    }
    for name in ["scheduled_at", "expires_at"] {
        if let Some(v) = f.text(name) {
            body.insert(name.into(), json!(local_time(v)));
        }
    }
    if let Some(note) = f.text("note") {
        body.insert("metadata".into(), json!({ "note": note }));
    }
    let bytes = Value::Object(body).to_string().into_bytes();
    let rq = Incoming::for_body(Some("application/json"), None, bytes);
    parse_money_body(&rq, route, &ctx.svc.config.currencies)
}

/// A `datetime-local` value (`2026-12-01T10:00`, seconds optional) as an RFC 3339 time in
/// UTC; any other text is left for the API's parser to refuse.
pub fn local_time(v: &str) -> String {
    let b = v.as_bytes();
    let shaped = b.len() >= 16 && b[4] == b'-' && b[10] == b'T' && b[13] == b':';
    match (shaped, v.len()) {
        (true, 16) => format!("{v}:00Z"),
        (true, 19) => format!("{v}Z"),
        _ => v.to_string(),
    }
}

/// Where a successful form goes: its page, with a notice (which says so when it was a replay).
pub(super) fn done(page: &str, notice: &str, replayed: bool) -> Answer {
    let notice = if replayed { "replayed" } else { notice };
    Ok(redirect(&format!("{page}?notice={notice}")))
}

pub fn deposit(ctx: &Ctx, s: &Session) -> Answer {
    match money_body(ctx, MoneyRoute::Deposit).and_then(|b| ctx.svc.deposit(&s.user, b.movement)) {
        Ok(out) => done("/console/", "deposit", out.replayed),
        Err(e) => refill(ctx, s, "deposit", e, overview_page),
    }
}

pub fn withdraw(ctx: &Ctx, s: &Session) -> Answer {
    let out = money_body(ctx, MoneyRoute::Withdraw)
        .and_then(|b| ctx.svc.withdraw(&s.user, b.movement, b.scheduled_at));
    match out {
        Ok(out) => match out.value {
            WithdrawResult::Now(_) => done("/console/", "withdraw", out.replayed),
            WithdrawResult::Scheduled(_) => done("/console/withdrawals", "scheduled", out.replayed),
        },
        Err(e) => refill(ctx, s, "withdraw", e, overview_page),
    }
}

pub fn transfer(ctx: &Ctx, s: &Session) -> Answer {
    let out = money_body(ctx, MoneyRoute::Transfer).and_then(|b| {
        let to =
            b.to.ok_or_else(|| AppError::field("to_username", "this field is required"))?;
        ctx.svc.transfer(
            &s.user,
            TransferRequest {
                to,
                movement: b.movement,
            },
        )
    });
    match out {
        Ok(out) => done("/console/", "transfer", out.replayed),
        Err(e) => refill(ctx, s, "transfer", e, overview_page),
    }
}

// ---- History -----------------------------------------------------------------------------

/// A history's filters and page as the console's query string holds them (`type`,
/// `currency`, `from` and `to` dates, `limit`, `cursor`), their errors by field.
pub fn history_query(ctx: &Ctx) -> (HistoryQuery, crate::error::FieldErrors) {
    let rq = ctx.rq;
    let mut errors = crate::error::FieldErrors::default();
    let given = |name: &str| rq.query(name).map(str::trim).filter(|v| !v.is_empty());
    let kind = given("type").and_then(|s| {
        errors.check(
            "type",
            EntryKind::parse(s).ok_or_else(|| format!("must be one of {}", EntryKind::names())),
        )
    });
    let currency = given("currency").and_then(|code| {
        errors.check(
            "currency",
            ctx.svc
                .config
                .currencies
                .resolve(Some(code))
                .map(|c| c.code.clone()),
        )
    });
    let day = |s: &str, time: &str| {
        Timestamp::parse(&format!("{s}T{time}Z")).map_err(|_| "must be a date".to_string())
    };
    let from = given("from").and_then(|s| errors.check("from", day(s, "00:00:00")));
    let to = given("to").and_then(|s| errors.check("to", day(s, "23:59:59.999999")));
    let limit = given("limit").map_or(Some(HISTORY_PAGE_ROWS_DEFAULT), |s| {
        errors.check(
            "limit",
            s.parse::<u32>()
                .ok()
                .filter(|n| (1..=PAGE_LIMIT_MAX).contains(n))
                .ok_or_else(|| format!("must be a whole number from 1 to {PAGE_LIMIT_MAX}")),
        )
    });
    let before_seq = given("cursor").and_then(|s| {
        errors.check(
            "cursor",
            s.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| "is not a page of this history".to_string()),
        )
    });
    let q = HistoryQuery {
        limit: limit.unwrap_or(HISTORY_PAGE_ROWS_DEFAULT),
        offset: 0,
        before_seq,
        kind,
        currency,
        from,
        to,
    };
    (q, errors)
}

/// The filters of the query string again, for links (the next page, the CSV export).
fn filter_query(rq: &Incoming, with: &[(&str, String)]) -> String {
    let mut pairs: Vec<String> = ["type", "currency", "from", "to", "limit", "at"]
        .iter()
        .filter_map(|k| rq.query(k).filter(|v| !v.is_empty()).map(|v| (k, v)))
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    pairs.extend(with.iter().map(|(k, v)| format!("{k}={}", encode(v))));
    if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A history card: its filters (with their errors), a page of entries, paging and the CSV
/// link. `base` is the page's path.
pub fn history_card(
    ctx: &Ctx,
    wallet: &WalletRef,
    base: &str,
    csv_path: &str,
    reverse_base: Option<&str>,
) -> Result<(Markup, u16), AppError> {
    let (q, errors) = history_query(ctx);
    let problem = errors.into_result().err().map(|e| Problem::of(&e));
    let cs = &ctx.svc.config.currencies;
    let page = match &problem {
        None => Some(ctx.svc.history(wallet, &q)?),
        Some(_) => None,
    };
    let rq = ctx.rq;
    let value = |k: &str| rq.query(k).unwrap_or_default().to_string();
    let errs = |k: &str| -> Vec<String> {
        problem
            .as_ref()
            .and_then(|p| p.fields.get(k).cloned())
            .unwrap_or_default()
    };
    let chosen_type = value("type");
    let chosen_currency = value("currency");
    let markup = html! {
        form.filters method="get" action=(base) {
            div {
                label for="f-type" { "Type" }
                select id="f-type" name="type" {
                    option value="" { "All types" }
                    @for k in EntryKind::ALL {
                        option value=(k.as_str()) selected[chosen_type == k.as_str()] { (k.as_str()) }
                    }
                }
                @for m in errs("type") { p.field-error { (m) } }
            }
            div {
                label for="f-currency" { "Currency" }
                select id="f-currency" name="currency" {
                    option value="" { "All currencies" }
                    @for c in cs.iter() {
                        option value=(c.code) selected[chosen_currency == c.code] { (c.code) }
                    }
                }
                @for m in errs("currency") { p.field-error { (m) } }
            }
            div {
                label for="f-from" { "From" }
                input id="f-from" type="date" name="from" value=(value("from"));
                @for m in errs("from") { p.field-error { (m) } }
            }
            div {
                label for="f-to" { "To" }
                input id="f-to" type="date" name="to" value=(value("to"));
                @for m in errs("to") { p.field-error { (m) } }
            }
            div {
                label for="f-limit" { "Per page" }
                input id="f-limit" type="number" min="1" max=(PAGE_LIMIT_MAX) name="limit" value=(q.limit);
                @for m in errs("limit") { p.field-error { (m) } }
            }
            div { button type="submit" { "Filter" } }
        }
        @for m in errs("cursor") { p.field-error { (m) } }
        @if let Some(page) = &page {
            (entries_table(&page.results, cs, reverse_base))
            div.pager {
                span { (page.count) " matching " @if page.count == 1 { "entry" } @else { "entries" } }
                span {
                    @if q.before_seq.is_some() { a href={ (base) (filter_query(rq, &[])) } { "← First page" } " " }
                    @if let Some(next) = page.next_before_seq {
                        a href={ (base) (filter_query(rq, &[("cursor", next.to_string())])) } { "Older →" }
                    }
                }
                a href={ (csv_path) (filter_query(rq, &[])) } download { "Download CSV" }
            }
        }
    };
    let status = problem.map_or(200, |p| p.status);
    Ok((markup, status))
}

/// Entries, newest first: amounts signed and aligned right. With `reverse_base` (a staff
/// page), each entry staff may reverse links to that page with the reversal form filled in.
pub fn entries_table(
    entries: &[Entry],
    cs: &crate::domain::Currencies,
    reverse_base: Option<&str>,
) -> Markup {
    html! {
        @if entries.is_empty() {
            p.empty { "No transactions yet." }
        } @else {
            table.history {
                thead { tr {
                    th { "When" } th { "Type" } th.num { "Amount" } th.num { "Balance after" }
                    th { "Reference" } th { "Counterparty" } th { "Note" }
                    @if reverse_base.is_some() { th { "" } }
                } }
                tbody {
                    @for e in entries {
                        @let credit = e.kind.is_credit();
                        tr {
                            td.when { (when(e.created_at)) }
                            td { (e.kind.as_str()) }
                            td class={ "num " (if credit { "credit" } else { "debit" }) } {
                                (if credit { "+" } else { "−" }) (amount(cs, &e.currency, e.amount)) " " (e.currency)
                            }
                            td.num { (amount(cs, &e.currency, e.balance_after)) }
                            td.mono { (e.reference) }
                            td { @if let Some(id) = e.counterparty_user_id { "user " (id) } }
                            td {
                                (views::metadata_text(&e.metadata))
                                @if let Some(undone) = &e.reverses { span.hint { "reverses " span.mono { (undone) } } }
                            }
                            @if let Some(base) = reverse_base {
                                td {
                                    @if e.kind.reversed_by().is_some() {
                                        a href={ (base) "?reverse=" (e.id) "#reverse" } { "Reverse…" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn history(ctx: &Ctx, s: &Session) -> Answer {
    let (card, status) = history_card(
        ctx,
        &s.user.wallet,
        "/console/history",
        "/console/transactions.csv",
        None,
    )?;
    let content = html! { div.card { (card) } };
    Ok(html(
        status,
        views::page(s, "History", Nav::History, notice(ctx.rq), content),
    ))
}

/// The caller's history as CSV, with the page's filters, by the API's CSV writer.
pub fn export(ctx: &Ctx, s: &Session) -> Answer {
    let (q, errors) = history_query(ctx);
    errors.into_result()?;
    csv::csv_reply(ctx.svc, ctx.svc.history_pages(&s.user.wallet, &q))
}

// ---- Holds -------------------------------------------------------------------------------

pub fn holds(ctx: &Ctx, s: &Session) -> Answer {
    holds_page(ctx, s, None)
}

fn holds_page(ctx: &Ctx, s: &Session, filled: Option<&Filled>) -> Answer {
    let svc = ctx.svc;
    let cs = &svc.config.currencies;
    let (count, list) = svc.holds(&s.user, None, None, LIST_ROWS_MAX, 0)?;
    let create = FormView::new("hold", filled);
    let decide = FormView::new("decide", filled);
    let me = s.user.user_id;
    let content = html! {
        div.grid {
            div.card {
                h2 { "New hold" }
                p.muted { "Reserves money without moving it. Its recipient (or you, without one) captures or voids it before it expires." }
                form method="post" action="/console/holds" {
                    (create.hidden(s))
                    (create.alert(&["amount", "currency", "to_username", "to_user_id", "expires_at", "metadata"]))
                    (create.input("amount", "Amount", "text", None))
                    (create.currency(cs))
                    (create.input("to_username", "Recipient (username)", "text", Some("(optional)")))
                    (create.input("expires_at", "Expires at", "datetime-local", Some("(UTC; default in 7 days)")))
                    (create.input("note", "Note", "text", Some("(optional)")))
                    div.actions { button type="submit" { "Hold" } }
                }
            }
        }
        div.card {
            h2 { "Your holds" }
            (decide.alert(&[]))
            @if list.is_empty() {
                p.empty { "No holds." }
            } @else {
                table {
                    thead { tr {
                        th { "Created" } th { "Status" } th.num { "Amount" } th.num { "Captured" }
                        th { "Payer → recipient" } th { "Expires" } th { "Reference" } th { "" }
                    } }
                    tbody {
                        @for h in &list {
                            @let mine_to_decide = h.to_user_id.map_or(h.payer_user_id == me, |to| to == me);
                            tr {
                                td.when { (when(h.created_at)) }
                                td { (badge(h.status.as_str())) }
                                td.num { (amount(cs, &h.currency, h.amount)) " " (h.currency) }
                                td.num { @if let Some(c) = h.captured_amount { (amount(cs, &h.currency, c)) } }
                                td { "user " (h.payer_user_id) " → " @if let Some(to) = h.to_user_id { "user " (to) } @else { "(none)" } }
                                td.when { (when(h.expires_at)) }
                                td.mono { (h.reference) }
                                td {
                                    @if h.status == crate::domain::HoldStatus::Held && mine_to_decide {
                                        form.inline method="post" action={ "/console/holds/" (h.id) "/capture" } {
                                            (views::csrf_input(s))
                                            input name="amount" placeholder="all" aria-label="Amount to capture" inputmode="decimal";
                                            button.small type="submit" { "Capture" }
                                        }
                                        " "
                                        form.inline method="post" action={ "/console/holds/" (h.id) "/void" } {
                                            (views::csrf_input(s))
                                            button.small.danger type="submit" { "Void" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if count > list.len() as i64 { p.muted { "Showing the newest " (list.len()) " of " (count) "." } }
            }
        }
    };
    Ok(html(
        200,
        views::page(s, "Holds", Nav::Holds, notice(ctx.rq), content),
    ))
}

pub fn create_hold(ctx: &Ctx, s: &Session) -> Answer {
    let out = money_body(ctx, MoneyRoute::Hold).and_then(|b| {
        ctx.svc.create_hold(
            &s.user,
            HoldRequest {
                movement: b.movement,
                to: b.to,
                expiry: b.expiry,
            },
        )
    });
    match out {
        Ok(out) => done("/console/holds", "hold", out.replayed),
        Err(e) => refill(ctx, s, "hold", e, holds_page),
    }
}

pub fn capture_hold(ctx: &Ctx, s: &Session) -> Answer {
    let id = &ctx.params[0];
    let out = capture_amount(ctx, s, id).and_then(|amount| {
        ctx.svc
            .capture_hold(Actor::User(s.user.user_id), id, amount, None)
    });
    match out {
        Ok(out) => done("/console/holds", "capture", out.replayed),
        Err(e) => refill(ctx, s, "decide", e, holds_page),
    }
}

/// The optional amount of a capture, at the scale of the hold's currency.
fn capture_amount(ctx: &Ctx, s: &Session, id: &str) -> Result<Option<Amount>, AppError> {
    let Some(text) = ctx.form.text("amount") else {
        return Ok(None);
    };
    let h = ctx.svc.hold(&s.user, id)?;
    let currency = ctx
        .svc
        .config
        .currencies
        .get(&h.currency)
        .ok_or(AppError::NotFound("currency"))?;
    Amount::parse_text(text, currency)
        .map(Some)
        .map_err(|e| AppError::field("amount", e.0))
}

pub fn void_hold(ctx: &Ctx, s: &Session) -> Answer {
    match ctx
        .svc
        .void_hold(Actor::User(s.user.user_id), &ctx.params[0], None)
    {
        Ok(_) => done("/console/holds", "void", false),
        Err(e) => refill(ctx, s, "decide", e, holds_page),
    }
}

// ---- Scheduled withdrawals ---------------------------------------------------------------

pub fn withdrawals(ctx: &Ctx, s: &Session) -> Answer {
    withdrawals_page(ctx, s, None)
}

fn withdrawals_page(ctx: &Ctx, s: &Session, filled: Option<&Filled>) -> Answer {
    let svc = ctx.svc;
    let cs = &svc.config.currencies;
    let (count, list) = svc.withdrawals(&s.user.wallet, None, LIST_ROWS_MAX, 0)?;
    let cancel = FormView::new("cancel", filled);
    let content = html! {
        div.card {
            h2 { "Scheduled withdrawals" }
            p.muted { "Schedule one from the " a href="/console/" { "overview" } " with a payout time. A pending one can be cancelled until it is paid out." }
            (cancel.alert(&[]))
            @if list.is_empty() {
                p.empty { "No scheduled withdrawals." }
            } @else {
                table {
                    thead { tr {
                        th { "Pay out at" } th { "Status" } th.num { "Amount" } th.num { "Attempts" }
                        th { "Reference" } th { "Message" } th { "" }
                    } }
                    tbody {
                        @for w in &list {
                            tr {
                                td.when { (when(w.scheduled_at)) }
                                td { (badge(w.status.as_str())) }
                                td.num { (amount(cs, &w.currency, w.amount)) " " (w.currency) }
                                td.num { (w.attempts) }
                                td.mono { (w.reference) }
                                td { (w.error_message.as_deref().unwrap_or_default()) }
                                td {
                                    @if w.status == crate::domain::WithdrawalStatus::Pending {
                                        form.inline method="post" action={ "/console/withdrawals/" (w.id) "/cancel" } {
                                            (views::csrf_input(s))
                                            button.small.danger type="submit" { "Cancel" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if count > list.len() as i64 { p.muted { "Showing the newest " (list.len()) " of " (count) "." } }
            }
        }
    };
    Ok(html(
        200,
        views::page(s, "Withdrawals", Nav::Withdrawals, notice(ctx.rq), content),
    ))
}

pub fn cancel_withdrawal(ctx: &Ctx, s: &Session) -> Answer {
    match ctx.svc.cancel_withdrawal(&s.user.wallet, &ctx.params[0]) {
        Ok(_) => done("/console/withdrawals", "cancel", false),
        Err(e) => refill(ctx, s, "cancel", e, withdrawals_page),
    }
}

#[cfg(test)]
mod tests {
    use super::local_time;

    #[test]
    fn a_local_date_and_time_is_read_as_utc() {
        assert_eq!(local_time("2026-12-01T10:00"), "2026-12-01T10:00:00Z");
        assert_eq!(local_time("2026-12-01T10:00:30"), "2026-12-01T10:00:30Z");
        assert_eq!(local_time("tomorrow"), "tomorrow");
        assert_eq!(local_time("2026-12-01T10:00:00Z"), "2026-12-01T10:00:00Z");
    }
}
