//! The console's HTML, as `maud` templates: checked when the crate compiles, and every
//! interpolated value (`(value)`) is escaped, so a name, reference, note or reason is shown as
//! text and never read as markup.

use maud::{html, Markup, DOCTYPE};

use super::{Form, Problem, Session};
use crate::domain::{Currencies, MinorUnits, Timestamp};

pub const STYLE: &str = include_str!("console.css");

/// Where a page sits in the navigation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    History,
    Holds,
    Withdrawals,
    Users,
    Audit,
}

/// A page of a logged-in user: the header (name, navigation, logout), a notice, the content.
pub fn page(s: &Session, title: &str, nav: Nav, notice: Option<&str>, content: Markup) -> Markup {
    let link = |href: &str, label: &str, this: Nav| {
        html! { a href=(href) class=[(nav == this).then_some("active")] { (label) } }
    };
    let body = html! {
        header.top { div.bar {
            a.brand href="/console/" { "wallet" }
            nav {
                (link("/console/", "Overview", Nav::Overview))
                (link("/console/history", "History", Nav::History))
                (link("/console/holds", "Holds", Nav::Holds))
                (link("/console/withdrawals", "Withdrawals", Nav::Withdrawals))
                @if s.user.is_staff {
                    span.sep {}
                    (link("/console/staff/users", "Users", Nav::Users))
                    (link("/console/staff/audit", "Audit log", Nav::Audit))
                }
            }
            div.who {
                span { "Signed in as " strong { (s.username) } }
                @if s.user.is_staff { span.badge { "staff" } }
                form method="post" action="/console/logout" {
                    (csrf_input(s))
                    button type="submit" { "Log out" }
                }
            }
        } }
        main {
            h1 { (title) }
            @if let Some(n) = notice { div.notice role="status" { (n) } }
            (content)
        }
    };
    document(title, body)
}

/// A whole HTML document around `body`.
pub fn document(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · wallet console" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body { (body) }
        }
    }
}

pub fn error_page(status: u16, title: &str, text: &str) -> Markup {
    document(
        title,
        html! {
            main.error-page {
                div.code { (status) }
                h1 { (title) }
                p { (text) }
                p { a href="/console/" { "Back to the console" } }
            }
        },
    )
}

/// The login form, with what was typed (never the password) and any error.
pub fn login(csrf: &str, username: &str, error: Option<&str>, notice: Option<&str>) -> Markup {
    document(
        "Log in",
        html! {
            main.login {
                div.brand { "wallet" }
                h1 { "Log in to the console" }
                @if let Some(n) = notice { div.notice role="status" { (n) } }
                div.card {
                    form method="post" action="/console/login" {
                        input type="hidden" name="csrf" value=(csrf);
                        label for="username" { "Username" }
                        input id="username" name="username" value=(username) autocomplete="username" required autofocus;
                        label for="password" { "Password" }
                        input id="password" name="password" type="password" autocomplete="current-password" required;
                        @if let Some(e) = error { p.field-error role="alert" { (e) } }
                        div.actions { button type="submit" { "Log in" } }
                    }
                }
                p.muted { "Staff log in here too, with the account made by " code { "wallet createsuperuser" } "." }
            }
        },
    )
}

pub fn csrf_input(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// A form that failed, shown again with what was posted and the error beside its field.
pub struct Filled<'a> {
    /// Which form of the page it was.
    pub form: &'static str,
    pub values: &'a Form,
    pub problem: Problem,
}

/// How a form of a page is drawn: its posted values and errors when it is the one that failed.
pub struct FormView<'a> {
    pub name: &'static str,
    filled: Option<&'a Filled<'a>>,
    /// The idempotency reference the form carries: the one posted (a failed request consumed
    /// nothing) or a new one.
    pub reference: String,
}

impl<'a> FormView<'a> {
    pub fn new(name: &'static str, filled: Option<&'a Filled<'a>>) -> FormView<'a> {
        let mine = filled.filter(|f| f.form == name);
        let reference = mine
            .filter(|f| f.problem.code != "reference_conflict")
            .and_then(|f| f.values.text("reference"))
            .map_or_else(new_reference, str::to_string);
        FormView {
            name,
            filled: mine,
            reference,
        }
    }

    /// What was posted in a field, when this form is being shown again.
    pub fn value(&self, field: &str) -> String {
        self.filled
            .and_then(|f| f.values.get(field))
            .unwrap_or_default()
            .to_string()
    }

    pub fn messages(&self, field: &str) -> Vec<String> {
        let Some(f) = self.filled else {
            return Vec::new();
        };
        let mut list = f.problem.fields.get(field).cloned().unwrap_or_default();
        // A form's note is the API's `metadata`: its errors are the note's.
        if field == "note" {
            list.extend(
                f.problem
                    .fields
                    .get("metadata")
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        if field == "amount" && f.problem.code == "insufficient_funds" {
            list.push(f.problem.message.clone());
        }
        list
    }

    /// A labelled input with its error messages beneath.
    pub fn input(&self, field: &str, label: &str, kind: &str, hint: Option<&str>) -> Markup {
        let id = format!("{}-{field}", self.name);
        let messages = self.messages(field);
        let value = self.value(field);
        let mode = (field == "amount").then_some("decimal");
        html! {
            label for=(id) { (label) @if let Some(h) = hint { " " span.hint { (h) } } }
            input id=(id) name=(field) type=(kind) value=(value) inputmode=[mode]
                class=[(!messages.is_empty()).then_some("invalid")]
                aria-invalid=[(!messages.is_empty()).then_some("true")];
            @for m in &messages { p.field-error role="alert" { (m) } }
        }
    }

    /// A currency picker (shown only when the deployment has more than one), with its errors.
    pub fn currency(&self, cs: &Currencies) -> Markup {
        let chosen = self.value("currency");
        let id = format!("{}-currency", self.name);
        let messages = self.messages("currency");
        let codes: Vec<&str> = cs.iter().map(|c| c.code.as_str()).collect();
        html! {
            @if codes.len() > 1 {
                label for=(id) { "Currency" }
                select id=(id) name="currency" {
                    @for code in &codes {
                        option value=(code) selected[*code == chosen] { (code) }
                    }
                }
            }
            // With one currency there is no picker, but a posted currency can still be wrong.
            @for m in &messages { p.field-error role="alert" { (m) } }
        }
    }

    /// The form's hidden fields: its CSRF token and its idempotency reference.
    pub fn hidden(&self, s: &Session) -> Markup {
        html! {
            (csrf_input(s))
            input type="hidden" name="reference" value=(self.reference);
        }
    }

    /// The error of this form that belongs to no field shown, at its top.
    pub fn alert(&self, shown: &[&str]) -> Markup {
        let Some(f) = self.filled else {
            return html! {};
        };
        let p = &f.problem;
        let others: Vec<&String> = p
            .fields
            .iter()
            .filter(|(k, _)| !shown.contains(&k.as_str()))
            .flat_map(|(_, v)| v)
            .collect();
        let message = match p.code.as_str() {
            "validation_error" if others.is_empty() => {
                "Please correct the fields marked below.".to_string()
            }
            "validation_error" => others
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            "insufficient_funds" => "Not enough money available for this.".to_string(),
            "reference_conflict" => {
                "This form was already sent with other values; it has been renewed, send it again."
                    .to_string()
            }
            _ => sentence(&p.message),
        };
        html! { div.alert role="alert" data-code=(p.code) { (message) } }
    }
}

/// A message of the API as a sentence: capitalised.
pub fn sentence(message: &str) -> String {
    let mut chars = message.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A fresh idempotency reference for a money form: a double submit of the same form carries
/// the same one, so it moves money once.
pub fn new_reference() -> String {
    format!("console-{}", uuid::Uuid::new_v4().simple())
}

/// An amount in its currency's scale.
pub fn amount(cs: &Currencies, code: &str, minor: MinorUnits) -> String {
    crate::http::handlers::money(cs, code, minor)
}

/// A moment as people read it, in UTC, with the exact time stamp as its machine value.
pub fn when(t: Timestamp) -> Markup {
    let shown = t.datetime().format("%Y-%m-%d %H:%M:%S UTC").to_string();
    html! { time datetime=(t.to_text()) { (shown) } }
}

/// A metadata object as compact text (empty for `{}`).
pub fn metadata_text(m: &crate::domain::Metadata) -> String {
    match m.as_str() {
        "{}" => String::new(),
        text => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(o)) if o.len() == 1 && o.contains_key("note") => o["note"]
                .as_str()
                .map_or_else(|| text.to_string(), str::to_string),
            _ => text.to_string(),
        },
    }
}

/// A status as a coloured badge.
pub fn badge(status: &str) -> Markup {
    html! { span class={ "badge " (status) } { (status) } }
}
