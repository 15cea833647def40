//! Routing as one readable function: a match on path segments, then on the method.

use tiny_http::Method;

use super::handlers::{accounts, admin, operations, wallet, withdrawals, Params};
use super::request::Incoming;
use super::response::Reply;
use crate::error::AppError;
use crate::service::Service;

pub type Handler = fn(&Service, &Incoming, &Params) -> Result<Reply, AppError>;

/// A matched route: its template (for logs and metrics), the handler for each method, and the
/// path parameters.
pub struct Matched {
    pub template: &'static str,
    pub get: Option<Handler>,
    pub post: Option<Handler>,
    pub params: Vec<String>,
}

/// Finds the route for a path (already without its trailing slash).
pub fn route(path: &str, test_hooks: bool) -> Option<Matched> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (template, get, post, params): (&'static str, Option<Handler>, Option<Handler>, Vec<&str>) =
        match segments[..] {
            ["api", "auth", "register"] => {
                ("/api/auth/register", None, Some(accounts::register), vec![])
            }
            ["api", "auth", "login"] => ("/api/auth/login", None, Some(accounts::login), vec![]),
            ["api", "auth", "logout"] => ("/api/auth/logout", None, Some(accounts::logout), vec![]),
            ["api", "auth", "profile"] => {
                ("/api/auth/profile", Some(accounts::profile), None, vec![])
            }
            ["api", "wallets", "me"] => ("/api/wallets/me", Some(wallet::show), None, vec![]),
            ["api", "wallets", "me", "deposit"] => (
                "/api/wallets/me/deposit",
                None,
                Some(wallet::deposit),
                vec![],
            ),
            ["api", "wallets", "me", "withdraw"] => (
                "/api/wallets/me/withdraw",
                None,
                Some(wallet::withdraw),
                vec![],
            ),
            ["api", "wallets", "me", "transfer"] => (
                "/api/wallets/me/transfer",
                None,
                Some(wallet::transfer),
                vec![],
            ),
            ["api", "wallets", "me", "transactions"] => (
                "/api/wallets/me/transactions",
                Some(wallet::transactions),
                None,
                vec![],
            ),
            ["api", "wallets", "me", "balance"] => (
                "/api/wallets/me/balance",
                Some(wallet::balance),
                None,
                vec![],
            ),
            ["api", "wallets", "me", "withdrawals"] => (
                "/api/wallets/me/withdrawals",
                Some(withdrawals::list),
                None,
                vec![],
            ),
            ["api", "wallets", "me", "withdrawals", id] => (
                "/api/wallets/me/withdrawals/{id}",
                Some(withdrawals::show),
                None,
                vec![id],
            ),
            ["api", "wallets", "me", "withdrawals", id, "cancel"] => (
                "/api/wallets/me/withdrawals/{id}/cancel",
                None,
                Some(withdrawals::cancel),
                vec![id],
            ),
            ["api", "admin", "users"] => ("/api/admin/users", Some(admin::users), None, vec![]),
            ["api", "admin", "users", id] => {
                ("/api/admin/users/{id}", Some(admin::user), None, vec![id])
            }
            ["api", "admin", "users", id, "wallet"] => (
                "/api/admin/users/{id}/wallet",
                Some(admin::wallet),
                None,
                vec![id],
            ),
            ["api", "admin", "users", id, "transactions"] => (
                "/api/admin/users/{id}/transactions",
                Some(admin::transactions),
                None,
                vec![id],
            ),
            ["api", "admin", "users", id, "credit"] => (
                "/api/admin/users/{id}/credit",
                None,
                Some(admin::credit),
                vec![id],
            ),
            ["api", "admin", "withdrawals", id, "resolve"] => (
                "/api/admin/withdrawals/{id}/resolve",
                None,
                Some(admin::resolve_withdrawal),
                vec![id],
            ),
            ["health"] => ("/health", Some(operations::health), None, vec![]),
            ["metrics"] => ("/metrics", Some(operations::metrics), None, vec![]),
            ["openapi.json"] => ("/openapi.json", Some(operations::openapi), None, vec![]),
            ["docs"] => ("/docs", Some(operations::docs), None, vec![]),
            ["__test", "panic"] if test_hooks => {
                ("/__test/panic", Some(operations::test_panic), None, vec![])
            }
            _ => return None,
        };
    Some(Matched {
        template,
        get,
        post,
        params: params.into_iter().map(str::to_string).collect(),
    })
}

/// Picks the handler for the method; a known path with another method is 405 with `Allow`.
pub fn handler_for(m: &Matched, method: &Method) -> Result<Handler, AppError> {
    let found = match method {
        Method::Get | Method::Head => m.get,
        Method::Post => m.post,
        _ => None,
    };
    found.ok_or(AppError::MethodNotAllowed {
        allow: match (m.get.is_some(), m.post.is_some()) {
            (true, true) => "GET, HEAD, POST",
            (true, false) => "GET, HEAD",
            _ => "POST",
        },
    })
}
