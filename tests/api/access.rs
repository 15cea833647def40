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

/// Proves that the OpenAPI document and the router agree: the document describes every route
/// but the test hook, with exactly the methods the router takes (HEAD aside), and marks
/// exactly the router's public routes as needing no token (`security: []`).
#[test]
fn the_openapi_document_describes_each_route_with_its_access() {
    let doc: serde_json::Value =
        serde_json::from_str(wallet::http::docs::OPENAPI_JSON).expect("openapi.json is JSON");
    let default_needs_token = doc["security"].as_array().is_some_and(|s| !s.is_empty());
    let paths = doc["paths"].as_object().expect("paths");
    let routes = routes(false);
    assert_eq!(paths.len(), routes.len(), "one path per route");
    for route in &routes {
        let ops = paths
            .get(route.template)
            .unwrap_or_else(|| panic!("{} is not in openapi.json", route.template));
        let documented: Vec<String> = ops
            .as_object()
            .expect("operations")
            .keys()
            .map(|m| m.to_uppercase())
            .collect();
        let routed: Vec<String> = route
            .methods
            .iter()
            .filter(|(m, _)| *m != "HEAD")
            .map(|(m, _)| m.to_string())
            .collect();
        assert_eq!(documented, routed, "{}", route.template);
        for &(method, access) in route.methods.iter().filter(|(m, _)| *m != "HEAD") {
            let op = &ops[method.to_lowercase()];
            let needs_token = match op.get("security") {
                Some(s) => s.as_array().is_some_and(|s| !s.is_empty()),
                None => default_needs_token,
            };
            let what = format!("{method} {}", route.template);
            assert_eq!(needs_token, access != Access::Public, "{what}");
        }
    }
}
