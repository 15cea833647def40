//! Who may call each route, for every route the router knows: the list comes from the router
//! itself (`router::routes`), so a route added later is checked without being added here.

use wallet::http::router::{path_for, routes, Access};

use crate::helpers::{name, TestApp};

/// The only routes anyone may call without a token. Making another route public means
/// changing this list, on purpose.
const PUBLIC: &[&str] = &[
    "/api/auth/register",
    "/api/auth/login",
    "/health",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/__test/panic",
];

/// Who should be allowed to call a route: the public list above, staff for `/api/admin/`,
/// and any user with a valid token for the rest.
fn expected_access(template: &str) -> Access {
    if PUBLIC.contains(&template) {
        Access::Public
    } else if template.starts_with("/api/admin/") {
        Access::Staff
    } else {
        Access::User
    }
}

/// Proves that every route declares the access its path calls for, and that the server holds
/// to it for each method the route takes: without a token (or with one that is not valid) a
/// user or staff route answers 401, with a user's token a staff route answers 403, and a
/// public route asks for no token.
#[test]
fn every_route_refuses_callers_it_does_not_allow() {
    let app = TestApp::spawn();
    let user = app.register(&name("access"));
    let routes = routes(true);
    assert!(routes.len() >= 20, "{routes:?}");
    for route in &routes {
        let path = path_for(route.template, "1");
        assert!(!route.methods.is_empty(), "{}", route.template);
        for &(method, access) in &route.methods {
            let what = format!("{method} {}", route.template);
            assert_eq!(access, expected_access(route.template), "{what}");
            let status = |token: Option<&str>| app.request(method, &path, token, None).status;
            match access {
                Access::Public => {
                    let s = status(None);
                    assert!(s != 401 && s != 403, "{what} without a token: {s}");
                }
                Access::User => {
                    assert_eq!(status(None), 401, "{what} without a token");
                    assert_eq!(status(Some("not-a-token")), 401, "{what} with a bad token");
                }
                Access::Staff => {
                    assert_eq!(status(None), 401, "{what} without a token");
                    assert_eq!(status(Some("not-a-token")), 401, "{what} with a bad token");
                    assert_eq!(status(Some(&user.token)), 403, "{what} as a user");
                }
            }
        }
    }
}
