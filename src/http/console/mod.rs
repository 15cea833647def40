//! The web console at `/console/`: server-rendered HTML pages for users and staff, over the
//! same use cases (`Service`) as the API. No script; every asset is in the binary.
//!
//! What holds for every console request, decided here and not in the pages:
//! - A session is a cookie (`wallet_session`, `HttpOnly; SameSite=Strict; Path=/console`, and
//!   `Secure` when `--public-url` is https) whose secret is stored only as its SHA-256, in
//!   `console_sessions`, apart from API tokens. The API never reads a cookie.
//! - Each page declares who may see it (`Page::Public`, `Page::User`, `Page::Staff`), as the
//!   API's router does; without a valid session a page redirects to the login form.
//! - Every POST carries a CSRF token (`csrf`: the SHA-256 of a label and the session's secret,
//!   or, on the login form, of a pre-session cookie), compared in constant time, and comes from
//!   this origin (`Origin`, `Sec-Fetch-Site`, when the browser sends them); else 403 and
//!   nothing changes.
//! - Every response carries the security headers of `SECURITY_HEADERS`.

mod form;
mod staff;
mod user;
mod views;

use std::collections::BTreeMap;
use std::time::Instant;

use maud::Markup;
use sha2::{Digest, Sha256};

use super::request::Incoming;
use super::response::{error_reply, Body, Reply};
use crate::accounts::AuthUser;
use crate::error::AppError;
use crate::service::Service;
pub use form::Form;

/// The console's path prefix; every path under it is the console's.
pub const PREFIX: &str = "/console";

/// The Content-Security-Policy of every console response: nothing inline, nothing from
/// elsewhere, no framing, forms posted here only.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'";

/// The headers every console response carries.
const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
];

const SESSION_COOKIE: &str = "wallet_session";
/// The login form's pre-session cookie (double submit): a random value the form's CSRF token
/// is derived from.
const LOGIN_COOKIE: &str = "wallet_login_csrf";
const CSRF_LABEL: &str = "wallet console csrf v1\n";
const LOGIN_CSRF_LABEL: &str = "wallet console login csrf v1\n";

pub type Answer = Result<Reply, AppError>;

/// What a page is given: the service, the request, its path parameters and, for a POST, its
/// form (already checked for its CSRF token).
pub struct Ctx<'a> {
    pub svc: &'a Service,
    pub rq: &'a Incoming,
    pub params: Vec<String>,
    pub form: Form,
}

/// A logged-in user of the console.
pub struct Session {
    pub user: AuthUser,
    pub username: String,
    /// This session's CSRF token, for the forms of its pages.
    pub csrf: String,
}

/// A page and who may open it. `answer` checks the session (and, for `Staff`, that its user is
/// staff) before the page runs.
#[derive(Clone, Copy)]
pub enum Page {
    Public(fn(&Ctx) -> Answer),
    User(fn(&Ctx, &Session) -> Answer),
    Staff(fn(&Ctx, &Session) -> Answer),
}

/// A console route: its template, and its pages for GET and POST.
pub struct Route {
    pub template: &'static str,
    pub get: Option<Page>,
    pub post: Option<Page>,
    pub params: Vec<String>,
}

/// Whether `path` (without its trailing slash) is the console's.
pub fn owns(path: &str) -> bool {
    path == PREFIX || path.starts_with("/console/")
}

/// Whether a request to `path` is the console's login, which hashes a password.
pub fn hashes_password(path: &str) -> bool {
    route(path).is_some_and(|r| r.template == "/console/login")
}

/// The console's routes: one `match` on path segments, as the API's router.
pub fn route(path: &str) -> Option<Route> {
    use Page::{Public, Staff, User};
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (template, get, post) = match segments[..] {
        ["console"] => ("/console", Some(User(user::overview)), None),
        ["console", "login"] => (
            "/console/login",
            Some(Public(user::login_form)),
            Some(Public(user::login)),
        ),
        ["console", "logout"] => ("/console/logout", None, Some(User(user::logout))),
        ["console", "assets", "console.css"] => {
            ("/console/assets/console.css", Some(Public(style)), None)
        }
        ["console", "history"] => ("/console/history", Some(User(user::history)), None),
        ["console", "transactions.csv"] => {
            ("/console/transactions.csv", Some(User(user::export)), None)
        }
        ["console", "deposit"] => ("/console/deposit", None, Some(User(user::deposit))),
        ["console", "withdraw"] => ("/console/withdraw", None, Some(User(user::withdraw))),
        ["console", "transfer"] => ("/console/transfer", None, Some(User(user::transfer))),
        ["console", "holds"] => (
            "/console/holds",
            Some(User(user::holds)),
            Some(User(user::create_hold)),
        ),
        ["console", "holds", _, "capture"] => (
            "/console/holds/{id}/capture",
            None,
            Some(User(user::capture_hold)),
        ),
        ["console", "holds", _, "void"] => (
            "/console/holds/{id}/void",
            None,
            Some(User(user::void_hold)),
        ),
        ["console", "withdrawals"] => ("/console/withdrawals", Some(User(user::withdrawals)), None),
        ["console", "withdrawals", _, "cancel"] => (
            "/console/withdrawals/{id}/cancel",
            None,
            Some(User(user::cancel_withdrawal)),
        ),
        ["console", "staff", "users"] => ("/console/staff/users", Some(Staff(staff::users)), None),
        ["console", "staff", "users", _] => {
            ("/console/staff/users/{id}", Some(Staff(staff::user)), None)
        }
        ["console", "staff", "users", _, "transactions.csv"] => (
            "/console/staff/users/{id}/transactions.csv",
            Some(Staff(staff::export)),
            None,
        ),
        ["console", "staff", "users", _, "credit"] => (
            "/console/staff/users/{id}/credit",
            None,
            Some(Staff(staff::credit)),
        ),
        ["console", "staff", "users", _, "freeze"] => (
            "/console/staff/users/{id}/freeze",
            None,
            Some(Staff(staff::freeze)),
        ),
        ["console", "staff", "users", _, "unfreeze"] => (
            "/console/staff/users/{id}/unfreeze",
            None,
            Some(Staff(staff::unfreeze)),
        ),
        ["console", "staff", "users", _, "reverse"] => (
            "/console/staff/users/{id}/reverse",
            None,
            Some(Staff(staff::reverse)),
        ),
        ["console", "staff", "audit"] => ("/console/staff/audit", Some(Staff(staff::audit)), None),
        _ => return None,
    };
    let params = template
        .trim_start_matches('/')
        .split('/')
        .zip(&segments)
        .filter(|(part, _)| part.starts_with('{'))
        .map(|(_, segment)| (*segment).to_string())
        .collect();
    Some(Route {
        template,
        get,
        post,
        params,
    })
}

/// Every console route's template, in the order of `route`'s arms.
pub const TEMPLATES: &[&str] = &[
    "/console",
    "/console/login",
    "/console/logout",
    "/console/assets/console.css",
    "/console/history",
    "/console/transactions.csv",
    "/console/deposit",
    "/console/withdraw",
    "/console/transfer",
    "/console/holds",
    "/console/holds/{id}/capture",
    "/console/holds/{id}/void",
    "/console/withdrawals",
    "/console/withdrawals/{id}/cancel",
    "/console/staff/users",
    "/console/staff/users/{id}",
    "/console/staff/users/{id}/transactions.csv",
    "/console/staff/users/{id}/credit",
    "/console/staff/users/{id}/freeze",
    "/console/staff/users/{id}/unfreeze",
    "/console/staff/users/{id}/reverse",
    "/console/staff/audit",
];

/// Answers a console request: its route's template (for logs and metrics) and its reply, with
/// the security headers. Never JSON; a panic in a page is a 500 page for this request only.
pub fn answer(svc: &Service, rq: &Incoming, read_error: Option<AppError>) -> (&'static str, Reply) {
    let found = route(&rq.path);
    let template = found.as_ref().map_or("/console/unmatched", |r| r.template);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        dispatch(svc, rq, found, read_error)
    }))
    .unwrap_or_else(|_| {
        svc.metrics.panics.inc();
        Err(AppError::Internal("console page panicked".into()))
    });
    let reply = result.unwrap_or_else(|e| {
        super::note_error(svc, rq, template, &e);
        error_page(&e)
    });
    (template, with_security_headers(reply))
}

fn with_security_headers(mut reply: Reply) -> Reply {
    for (name, value) in SECURITY_HEADERS {
        reply.headers.push((name, value.to_string()));
    }
    reply
}

fn dispatch(
    svc: &Service,
    rq: &Incoming,
    found: Option<Route>,
    read_error: Option<AppError>,
) -> Answer {
    if let Some(e) = read_error {
        return Err(e);
    }
    let Some(found) = found else {
        return Err(AppError::NotFound("page"));
    };
    let is_post = rq.method == tiny_http::Method::Post;
    let page = match rq.method {
        tiny_http::Method::Get | tiny_http::Method::Head => found.get,
        tiny_http::Method::Post => found.post,
        _ => None,
    };
    let Some(page) = page else {
        return Err(AppError::MethodNotAllowed {
            allow: match (found.get.is_some(), found.post.is_some()) {
                (true, true) => "GET, HEAD, POST",
                (true, false) => "GET, HEAD",
                _ => "POST",
            },
        });
    };
    let mut ctx = Ctx {
        svc,
        rq,
        params: found.params,
        form: Form::default(),
    };
    let session = match page {
        Page::Public(_) => None,
        Page::User(_) | Page::Staff(_) => match session_of(svc, rq) {
            Ok(s) => Some(s),
            // No valid session: to the login form, dropping a stale cookie. A POST changes
            // nothing.
            Err(AppError::Unauthorized) => {
                crate::http::anonymous_rate(svc, rq)?;
                return Ok(to_login(svc, rq));
            }
            Err(e) => return Err(e),
        },
    };
    match &session {
        Some(s) => svc
            .user_rate
            .check(&s.user.user_id, Instant::now())
            .map_err(|retry_after_s| AppError::RateLimited { retry_after_s })?,
        None => crate::http::anonymous_rate(svc, rq)?,
    }
    if is_post {
        ctx.form = posted_form(svc, rq, session.as_ref())?;
    }
    match (page, session) {
        (Page::Public(run), _) => run(&ctx),
        (Page::User(run), Some(s)) => run(&ctx, &s),
        (Page::Staff(run), Some(s)) if s.user.is_staff => run(&ctx, &s),
        (Page::Staff(_), Some(_)) => Err(AppError::Forbidden),
        (_, None) => Err(AppError::Unauthorized),
    }
}

/// The redirect to the login form for a request without a valid session; a cookie that named
/// an invalid session is cleared.
fn to_login(svc: &Service, rq: &Incoming) -> Reply {
    let reply = redirect("/console/login");
    if cookie(rq, SESSION_COOKIE).is_some() {
        reply.header("Set-Cookie", clear_cookie(svc, SESSION_COOKIE))
    } else {
        reply
    }
}

/// The session the request's cookie names, if it is valid now.
fn session_of(svc: &Service, rq: &Incoming) -> Result<Session, AppError> {
    let secret = cookie(rq, SESSION_COOKIE).ok_or(AppError::Unauthorized)?;
    let user = svc.console_session(secret)?;
    let username = svc.user(user.user_id)?.username;
    Ok(Session {
        user,
        username,
        csrf: derive(CSRF_LABEL, secret),
    })
}

/// A POST's form, once it is known to come from this origin with its CSRF token; 403
/// otherwise (and nothing changes).
fn posted_form(svc: &Service, rq: &Incoming, session: Option<&Session>) -> Result<Form, AppError> {
    if !same_origin(svc, rq) {
        return Err(AppError::Forbidden);
    }
    let mime = rq
        .content_type
        .as_deref()
        .and_then(|ct| ct.split(';').next())
        .map(str::trim);
    if !mime.is_some_and(|m| m.eq_ignore_ascii_case("application/x-www-form-urlencoded")) {
        return Err(AppError::UnsupportedMediaType);
    }
    let form = Form::parse(&rq.body).map_err(|m| AppError::field("form", m))?;
    let expected = match session {
        Some(s) => Some(s.csrf.clone()),
        None => cookie(rq, LOGIN_COOKIE).map(|c| derive(LOGIN_CSRF_LABEL, c)),
    };
    match (expected, form.get("csrf")) {
        (Some(expected), Some(sent)) if constant_time_eq(expected.as_bytes(), sent.as_bytes()) => {
            Ok(form)
        }
        _ => Err(AppError::Forbidden),
    }
}

/// Whether the browser says the request comes from this origin, when it says anything:
/// `Sec-Fetch-Site` and `Origin` (against `--public-url`, or the request's own `Host`).
fn same_origin(svc: &Service, rq: &Incoming) -> bool {
    let b = &rq.browser;
    if let Some(site) = b.sec_fetch_site.as_deref() {
        if !matches!(site, "same-origin" | "none") {
            return false;
        }
    }
    // Under `Referrer-Policy: no-referrer` a browser sends `Origin: null` with its own forms,
    // so `null` tells nothing: `Sec-Fetch-Site` (above) and the CSRF token decide then.
    let Some(origin) = b.origin.as_deref().filter(|o| *o != "null") else {
        return true;
    };
    match (&svc.config.serve.public_url, b.host.as_deref()) {
        (Some(public), _) => origin_key(origin) == origin_key(public),
        (None, Some(host)) => {
            origin.strip_prefix("http://") == Some(host)
                || origin.strip_prefix("https://") == Some(host)
        }
        (None, None) => false,
    }
}

/// An origin as browsers compare them: scheme and host in lower case, without a trailing `/`
/// or the scheme's default port (`https://Wallet.example.com:443/` is `https://wallet.example.com`).
fn origin_key(origin: &str) -> String {
    let o = origin.trim_end_matches('/').to_ascii_lowercase();
    for (scheme, port) in [("https://", ":443"), ("http://", ":80")] {
        if o.starts_with(scheme) {
            if let Some(bare) = o.strip_suffix(port) {
                return bare.to_string();
            }
        }
    }
    o
}

/// A value of the request's `Cookie` header, if it is one our cookies could hold (64 hex
/// digits); anything else is as if absent.
fn cookie<'a>(rq: &'a Incoming, name: &str) -> Option<&'a str> {
    rq.browser
        .cookie
        .as_deref()?
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A CSRF token: the SHA-256 of a label and a secret, in hex.
fn derive(label: &str, secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    h.update(secret.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without stopping at the first difference, so timing tells nothing of a token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The attributes of every console cookie.
fn cookie_attributes(svc: &Service) -> String {
    let secure = svc
        .config
        .serve
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"));
    format!(
        "Path={PREFIX}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

fn session_cookie(svc: &Service, secret: &str) -> String {
    let max_age = svc.config.serve.token_ttl.as_secs();
    format!(
        "{SESSION_COOKIE}={secret}; {}; Max-Age={max_age}",
        cookie_attributes(svc)
    )
}

fn clear_cookie(svc: &Service, name: &str) -> String {
    format!("{name}=; {}; Max-Age=0", cookie_attributes(svc))
}

/// 256 random bits in hex, made as a token's secret is.
fn random_secret(svc: &Service) -> String {
    crate::accounts::new_token(svc.now(), svc.config.serve.token_ttl).secret
}

/// A 303 to `location` (a path of this console).
pub fn redirect(location: &str) -> Reply {
    Reply {
        status: 303,
        body: Body::Text {
            content_type: "text/plain; charset=utf-8",
            text: String::new(),
        },
        headers: vec![("Location", location.to_string())],
    }
}

/// An HTML page.
pub fn html(status: u16, page: Markup) -> Reply {
    Reply {
        status,
        body: Body::Text {
            content_type: "text/html; charset=utf-8",
            text: page.into_string(),
        },
        headers: Vec::new(),
    }
}

/// The style sheet: no data in it, so browsers may keep it an hour.
fn style(_: &Ctx) -> Answer {
    Ok(
        Reply::text("text/css; charset=utf-8", views::STYLE.to_string())
            .header("Cache-Control", "public, max-age=3600"),
    )
}

/// What the API would say of an error (its status, code, message and fields), read from the
/// one place an error becomes a status: so the console words every error as the API does.
pub struct Problem {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub fields: BTreeMap<String, Vec<String>>,
    pub retry_after: Option<String>,
}

impl Problem {
    pub fn of(e: &AppError) -> Problem {
        let reply = error_reply(e);
        let (code, message, fields) = match &reply.body {
            Body::Json(v) => {
                let error = &v["error"];
                let text = |k: &str| error[k].as_str().unwrap_or_default().to_string();
                let fields = error["fields"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| {
                                let list = v.as_array().map_or_else(Vec::new, |a| {
                                    a.iter()
                                        .filter_map(|m| m.as_str().map(str::to_string))
                                        .collect()
                                });
                                (k.clone(), list)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (text("code"), text("message"), fields)
            }
            _ => (String::new(), String::new(), BTreeMap::new()),
        };
        let retry_after = reply
            .headers
            .iter()
            .find(|(n, _)| *n == "Retry-After")
            .map(|(_, v)| v.clone());
        Problem {
            status: reply.status,
            code,
            message,
            fields,
            retry_after,
        }
    }
}

/// The page for an error no form shows: a plain page with what went wrong, never internals.
fn error_page(e: &AppError) -> Reply {
    let p = Problem::of(e);
    let (title, text) = match e {
        AppError::Forbidden => (
            "Not allowed",
            "This page or action is not allowed for you, or the form was stale or came from \
             another site. Go back, reload the page and try again."
                .to_string(),
        ),
        AppError::NotFound(_) => ("Not found", "There is nothing here.".to_string()),
        AppError::Internal(_) => (
            "Something went wrong",
            "The server could not answer this request. Try again later.".to_string(),
        ),
        AppError::Validation(fields) => (
            "Invalid request",
            fields
                .values()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
        ),
        _ => ("Could not do that", p.message.clone()),
    };
    let mut reply = html(p.status, views::error_page(p.status, title, &text));
    match e {
        AppError::MethodNotAllowed { allow } => reply.headers.push(("Allow", allow.to_string())),
        _ => {
            if let Some(after) = p.retry_after {
                reply.headers.push(("Retry-After", after));
            }
        }
    }
    reply
}

/// The answer to a console login refused for want of hashing capacity.
pub fn busy_page() -> Reply {
    with_security_headers(error_page(&AppError::Unavailable(
        "too many logins at once; try again",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_as_browsers_send_them() {
        // A --public-url with capitals, a default port or a trailing slash still matches the
        // Origin a browser sends; another scheme, host or port does not.
        let public = "https://Wallet.Example.com:443/";
        assert_eq!(origin_key(public), origin_key("https://wallet.example.com"));
        assert_eq!(origin_key("http://h:80"), "http://h");
        assert_ne!(origin_key(public), origin_key("http://wallet.example.com"));
        assert_ne!(
            origin_key(public),
            origin_key("https://wallet.example.com:8443")
        );
        assert_ne!(
            origin_key(public),
            origin_key("https://wallet.example.com.evil.net")
        );
    }

    #[test]
    fn the_route_list_names_every_arm_and_every_page_is_declared() {
        let source = include_str!("mod.rs");
        let start = source.find("pub fn route(").expect("route is here");
        let body = &source[start..];
        let body = &body[..body.find("\n}\n").expect("route ends")];
        let in_arms: Vec<&str> = body
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|l| l.starts_with("/console"))
            .collect();
        assert_eq!(in_arms, TEMPLATES);
        for t in TEMPLATES {
            let r = route(&t.replace("{id}", "7")).expect(t);
            assert_eq!(r.template, *t);
            assert!(r.get.is_some() || r.post.is_some(), "{t}");
        }
    }

    #[test]
    fn tokens_compare_in_constant_time_and_differ_by_label() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        let secret = "a".repeat(64);
        assert_ne!(
            derive(CSRF_LABEL, &secret),
            derive(LOGIN_CSRF_LABEL, &secret)
        );
        assert_eq!(derive(CSRF_LABEL, &secret).len(), 64);
    }
}
