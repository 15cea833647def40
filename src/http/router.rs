//! Routing as one readable function: a match on path segments, then on the method. Each route
//! says with its handler who may call it: `Public`, `User` or `Staff`.

use std::ops::Deref;

use tiny_http::Method;

use super::handlers::{accounts, admin, export, holds, operations, wallet, withdrawals, Params};
use super::request::Incoming;
use super::response::Reply;
use crate::accounts::AuthUser;
use crate::error::AppError;
use crate::service::Service;

type Answer = Result<Reply, AppError>;

/// A route's handler for one method, with who may call it. `http::handle` authenticates the
/// caller as this says before the handler runs, so a handler that acts for a caller is given
/// one and has no check of its own to forget.
#[derive(Clone, Copy)]
pub enum Handler {
    /// Anyone may call it.
    Public(fn(&Service, &Incoming, &Params) -> Answer),
    /// A valid token is needed (401 without one); the handler gets its user.
    User(fn(&Service, &Incoming, &Params, &AuthUser) -> Answer),
    /// A staff user's token is needed (401 without a valid token, 403 for a user who is not
    /// staff); the handler gets that user.
    Staff(fn(&Service, &Incoming, &Params, &StaffUser) -> Answer),
}

/// Who may call a route, as its `Handler` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    User,
    Staff,
}

impl Handler {
    pub fn access(&self) -> Access {
        match self {
            Handler::Public(_) => Access::Public,
            Handler::User(_) => Access::User,
            Handler::Staff(_) => Access::Staff,
        }
    }
}

/// An authenticated user who is staff. Only `StaffUser::check` makes one, so a staff handler
/// cannot be given anyone else.
pub struct StaffUser(AuthUser);

impl StaffUser {
    /// The user, if staff; `Forbidden` otherwise.
    pub fn check(user: AuthUser) -> Result<StaffUser, AppError> {
        if user.is_staff {
            Ok(StaffUser(user))
        } else {
            Err(AppError::Forbidden)
        }
    }
}

impl Deref for StaffUser {
    type Target = AuthUser;

    fn deref(&self) -> &AuthUser {
        &self.0
    }
}

/// A matched route: its template (for logs and metrics), the handler for each method, and the
/// path parameters.
pub struct Matched {
    pub template: &'static str,
    pub get: Option<Handler>,
    pub post: Option<Handler>,
    pub params: Vec<String>,
}

/// The handlers of a route, for GET (and HEAD) and for POST.
type Methods = (Option<Handler>, Option<Handler>);

fn on_get(handler: Handler) -> Methods {
    (Some(handler), None)
}

fn on_post(handler: Handler) -> Methods {
    (None, Some(handler))
}

/// Finds the route for a path (already without its trailing slash). A `_` segment is a path
/// parameter, named `{id}` in the template. Every template is also in `TEMPLATES`.
pub fn route(path: &str, test_hooks: bool) -> Option<Matched> {
    use Handler::{Public, Staff, User};
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (template, (get, post)) = match segments[..] {
        ["api", "auth", "register"] => ("/api/auth/register", on_post(Public(accounts::register))),
        ["api", "auth", "login"] => ("/api/auth/login", on_post(Public(accounts::login))),
        ["api", "auth", "logout"] => ("/api/auth/logout", on_post(User(accounts::logout))),
        ["api", "auth", "profile"] => ("/api/auth/profile", on_get(User(accounts::profile))),
        ["api", "wallets", "me"] => ("/api/wallets/me", on_get(User(wallet::show))),
        ["api", "wallets", "me", "deposit"] => {
            ("/api/wallets/me/deposit", on_post(User(wallet::deposit)))
        }
        ["api", "wallets", "me", "withdraw"] => {
            ("/api/wallets/me/withdraw", on_post(User(wallet::withdraw)))
        }
        ["api", "wallets", "me", "transfer"] => {
            ("/api/wallets/me/transfer", on_post(User(wallet::transfer)))
        }
        ["api", "wallets", "me", "transactions"] => (
            "/api/wallets/me/transactions",
            on_get(User(wallet::transactions)),
        ),
        ["api", "wallets", "me", "transactions.csv"] => (
            "/api/wallets/me/transactions.csv",
            on_get(User(export::mine)),
        ),
        ["api", "wallets", "me", "transactions", _] => (
            "/api/wallets/me/transactions/{id}",
            on_get(User(wallet::transaction)),
        ),
        ["api", "wallets", "me", "balance"] => {
            ("/api/wallets/me/balance", on_get(User(wallet::balance)))
        }
        ["api", "wallets", "me", "withdrawals"] => (
            "/api/wallets/me/withdrawals",
            on_get(User(withdrawals::list)),
        ),
        ["api", "wallets", "me", "withdrawals", _] => (
            "/api/wallets/me/withdrawals/{id}",
            on_get(User(withdrawals::show)),
        ),
        ["api", "wallets", "me", "withdrawals", _, "cancel"] => (
            "/api/wallets/me/withdrawals/{id}/cancel",
            on_post(User(withdrawals::cancel)),
        ),
        ["api", "wallets", "me", "holds"] => (
            "/api/wallets/me/holds",
            (Some(User(holds::list)), Some(User(holds::create))),
        ),
        ["api", "wallets", "me", "holds", _] => {
            ("/api/wallets/me/holds/{id}", on_get(User(holds::show)))
        }
        ["api", "wallets", "me", "holds", _, "capture"] => (
            "/api/wallets/me/holds/{id}/capture",
            on_post(User(holds::capture)),
        ),
        ["api", "wallets", "me", "holds", _, "void"] => (
            "/api/wallets/me/holds/{id}/void",
            on_post(User(holds::void)),
        ),
        ["api", "admin", "users"] => ("/api/admin/users", on_get(Staff(admin::users))),
        ["api", "admin", "users", _] => ("/api/admin/users/{id}", on_get(Staff(admin::user))),
        ["api", "admin", "users", _, "wallet"] => {
            ("/api/admin/users/{id}/wallet", on_get(Staff(admin::wallet)))
        }
        ["api", "admin", "users", _, "transactions"] => (
            "/api/admin/users/{id}/transactions",
            on_get(Staff(admin::transactions)),
        ),
        ["api", "admin", "users", _, "transactions.csv"] => (
            "/api/admin/users/{id}/transactions.csv",
            on_get(Staff(export::user)),
        ),
        ["api", "admin", "users", _, "credit"] => (
            "/api/admin/users/{id}/credit",
            on_post(Staff(admin::credit)),
        ),
        ["api", "admin", "users", _, "freeze"] => (
            "/api/admin/users/{id}/freeze",
            on_post(Staff(admin::freeze)),
        ),
        ["api", "admin", "users", _, "unfreeze"] => (
            "/api/admin/users/{id}/unfreeze",
            on_post(Staff(admin::unfreeze)),
        ),
        ["api", "admin", "audit"] => ("/api/admin/audit", on_get(Staff(admin::audit))),
        ["api", "admin", "transactions", _, "reverse"] => (
            "/api/admin/transactions/{id}/reverse",
            on_post(Staff(admin::reverse)),
        ),
        ["api", "admin", "withdrawals", _, "resolve"] => (
            "/api/admin/withdrawals/{id}/resolve",
            on_post(Staff(admin::resolve_withdrawal)),
        ),
        ["api", "admin", "holds", _, "capture"] => (
            "/api/admin/holds/{id}/capture",
            on_post(Staff(holds::admin_capture)),
        ),
        ["api", "admin", "holds", _, "void"] => (
            "/api/admin/holds/{id}/void",
            on_post(Staff(holds::admin_void)),
        ),
        ["health"] => ("/health", on_get(Public(operations::health))),
        ["metrics"] => ("/metrics", on_get(Public(operations::metrics))),
        ["openapi.json"] => ("/openapi.json", on_get(Public(operations::openapi))),
        ["docs"] => ("/docs", on_get(Public(operations::docs))),
        ["__test", "panic"] if test_hooks => {
            ("/__test/panic", on_get(Public(operations::test_panic)))
        }
        _ => return None,
    };
    Some(Matched {
        template,
        get,
        post,
        params: path_params(template, &segments),
    })
}

/// The segments of a matched path that stand where its template has a `{…}` parameter.
fn path_params(template: &str, segments: &[&str]) -> Vec<String> {
    template
        .trim_start_matches('/')
        .split('/')
        .zip(segments)
        .filter(|(part, _)| part.starts_with('{'))
        .map(|(_, segment)| segment.to_string())
        .collect()
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

/// The template of every route `route` knows, in the order of its arms (the test hook's last).
/// A unit test below reads `route`'s arms to keep this list complete.
pub const TEMPLATES: &[&str] = &[
    "/api/auth/register",
    "/api/auth/login",
    "/api/auth/logout",
    "/api/auth/profile",
    "/api/wallets/me",
    "/api/wallets/me/deposit",
    "/api/wallets/me/withdraw",
    "/api/wallets/me/transfer",
    "/api/wallets/me/transactions",
    "/api/wallets/me/transactions.csv",
    "/api/wallets/me/transactions/{id}",
    "/api/wallets/me/balance",
    "/api/wallets/me/withdrawals",
    "/api/wallets/me/withdrawals/{id}",
    "/api/wallets/me/withdrawals/{id}/cancel",
    "/api/wallets/me/holds",
    "/api/wallets/me/holds/{id}",
    "/api/wallets/me/holds/{id}/capture",
    "/api/wallets/me/holds/{id}/void",
    "/api/admin/users",
    "/api/admin/users/{id}",
    "/api/admin/users/{id}/wallet",
    "/api/admin/users/{id}/transactions",
    "/api/admin/users/{id}/transactions.csv",
    "/api/admin/users/{id}/credit",
    "/api/admin/users/{id}/freeze",
    "/api/admin/users/{id}/unfreeze",
    "/api/admin/audit",
    "/api/admin/transactions/{id}/reverse",
    "/api/admin/withdrawals/{id}/resolve",
    "/api/admin/holds/{id}/capture",
    "/api/admin/holds/{id}/void",
    "/health",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/__test/panic",
];

/// A path that reaches the route of `template`, with `id` for each `{id}`.
pub fn path_for(template: &str, id: &str) -> String {
    template.replace("{id}", id)
}

/// A route as the router declares it: who may call it with each method it takes.
#[derive(Debug)]
pub struct RouteAccess {
    pub template: &'static str,
    /// `GET`, `HEAD` and `POST`, those the route takes, each with its access.
    pub methods: Vec<(&'static str, Access)>,
}

/// Every route the router knows (with the test hook's when `test_hooks`), read from `route`
/// itself: what tests of access go through.
pub fn routes(test_hooks: bool) -> Vec<RouteAccess> {
    TEMPLATES
        .iter()
        .filter_map(|template| route(&path_for(template, "1"), test_hooks))
        .map(|m| {
            let get = m.get.map(|h| h.access());
            let post = m.post.map(|h| h.access());
            let methods = [("GET", get), ("HEAD", get), ("POST", post)]
                .into_iter()
                .filter_map(|(method, access)| Some((method, access?)))
                .collect();
            RouteAccess {
                template: m.template,
                methods,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{path_for, route, routes, TEMPLATES};

    /// The string literals in `route`'s arms that are templates (they start with `/`).
    fn templates_in_the_arms() -> Vec<String> {
        let source = include_str!("router.rs");
        let start = source.find("pub fn route(").expect("route is in router.rs");
        let body = &source[start..];
        let body = &body[..body.find("\n}\n").expect("route ends")];
        body.split('"')
            .skip(1)
            .step_by(2)
            .filter(|literal| literal.starts_with('/'))
            .map(str::to_string)
            .collect()
    }

    /// Proves the route list and the router agree: every template in an arm of `route` is in
    /// `TEMPLATES`, and every template listed routes to the arm of that template.
    #[test]
    fn the_route_list_names_every_arm_of_the_router() {
        let in_arms = templates_in_the_arms();
        assert!(in_arms.len() >= 20, "read the arms: {in_arms:?}");
        assert_eq!(
            in_arms, TEMPLATES,
            "TEMPLATES must list route's arms in order"
        );
        for template in TEMPLATES {
            let m = route(&path_for(template, "7"), true).expect(template);
            assert_eq!(m.template, *template);
            let ids = template.matches("{id}").count();
            assert_eq!(m.params, vec!["7".to_string(); ids], "{template}");
        }
        assert_eq!(routes(true).len(), TEMPLATES.len());
        assert_eq!(routes(false).len(), TEMPLATES.len() - 1, "the test hook");
    }
}
