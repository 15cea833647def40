use serde_json::json;

use crate::helpers::{name, TestApp};

#[test]
fn unknown_routes_methods_and_trailing_slashes() {
    // 404 for unknown paths, 405 with Allow for a known path and wrong method, and every path
    // works with and without a trailing slash.
    let app = TestApp::spawn();
    let a = app.register(&name("a"));
    let r = app.get("/api/nothing/here", &a.token);
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r = app.request("DELETE", "/api/wallets/me", Some(&a.token), None);
    assert_eq!((r.status, r.code()), (405, "method_not_allowed"));
    assert_eq!(r.header("Allow"), Some("GET, HEAD"));
    let r = app.get("/api/wallets/me/deposit", &a.token);
    assert_eq!((r.status, r.header("Allow")), (405, Some("POST")));
    assert_eq!(app.get("/api/wallets/me/", &a.token).status, 200);
    assert_eq!(
        app.post(
            "/api/wallets/me/deposit/",
            &a.token,
            json!({"amount": "1", "reference": "s"})
        )
        .status,
        201
    );
}

#[test]
fn bodies_must_be_json_objects_within_the_limit() {
    // 415 for another content type, 400 for broken JSON or a non-object, 413 over the limit;
    // none of them changes anything.
    let app = TestApp::spawn();
    let a = app.register(&name("a"));
    let path = "/api/wallets/me/deposit";
    let r = app.raw(
        "POST",
        path,
        Some(&a.token),
        Some("amount=1".into()),
        Some("application/x-www-form-urlencoded"),
    );
    assert_eq!((r.status, r.code()), (415, "unsupported_media_type"));
    let r = app.raw(
        "POST",
        path,
        Some(&a.token),
        Some(r#"{"amount": "1", "reference": "x""#.into()),
        Some("application/json"),
    );
    assert_eq!((r.status, r.code()), (400, "malformed_json"));
    let r = app.raw(
        "POST",
        path,
        Some(&a.token),
        Some("[1, 2]".into()),
        Some("application/json; charset=utf-8"),
    );
    assert_eq!((r.status, r.code()), (400, "malformed_json"));
    let r = app.raw(
        "POST",
        path,
        Some(&a.token),
        Some(r#"{"amount": "1", "reference": "no-ct"}"#.into()),
        None,
    );
    assert_eq!(
        r.status, 201,
        "a missing Content-Type is accepted: {}",
        r.body
    );
    let big = format!(
        r#"{{"amount": "1", "reference": "big", "metadata": {{"pad": "{}"}}}}"#,
        "x".repeat(70_000)
    );
    let r = app.raw(
        "POST",
        path,
        Some(&a.token),
        Some(big),
        Some("application/json"),
    );
    assert_eq!((r.status, r.code()), (413, "payload_too_large"));
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let r = app.raw(
        "POST",
        path,
        Some(&a.token),
        Some(deep),
        Some("application/json"),
    );
    assert_eq!(r.status, 400);
    assert_eq!(app.balance(&a), "1.00");
}

#[test]
fn a_panicking_handler_costs_one_request() {
    // A panic becomes an opaque 500 for that request only; the server keeps serving.
    let app = TestApp::spawn();
    let a = app.register(&name("a"));
    for _ in 0..3 {
        let r = app.get("/__test/panic", &a.token);
        assert_eq!((r.status, r.code()), (500, "internal"));
        let text = r.body.to_string();
        assert!(
            !text.contains("panic") && !text.contains("src/"),
            "no internals: {text}"
        );
    }
    assert_eq!(app.get("/api/wallets/me", &a.token).status, 200);
    let metrics = app.request("GET", "/metrics", None, None);
    assert!(metrics
        .body
        .as_str()
        .unwrap()
        .contains("wallet_handler_panics_total 3"));
}

#[test]
fn request_ids_health_metrics_and_docs() {
    // X-Request-Id is echoed or generated; the operational routes answer.
    let app = TestApp::spawn();
    let agent = crate::helpers::agent();
    let resp = agent
        .get(&format!("{}/health", app.base))
        .header("X-Request-Id", "abc-123")
        .call()
        .unwrap();
    assert_eq!(resp.headers().get("x-request-id").unwrap(), "abc-123");
    let h = app.request("GET", "/health", None, None);
    assert_eq!(
        h.body,
        json!({"status": "ok", "database": "ok", "storage": "ok", "clock": "ok"})
    );
    assert_eq!(h.header("X-Request-Id").map(str::len), Some(32));
    let m = app.request("GET", "/metrics", None, None);
    assert_eq!(m.status, 200);
    assert!(m.header("Content-Type").unwrap().starts_with("text/plain"));
    assert!(m
        .body
        .as_str()
        .unwrap()
        .contains("wallet_http_requests_total{route=\"/health\",status=\"200\"}"));
    let o = app.request("GET", "/openapi.json", None, None);
    assert_eq!(o.status, 200);
    assert!(o.body["openapi"].as_str().unwrap().starts_with("3."));
    let d = app.request("GET", "/docs", None, None);
    assert!(d.body.as_str().unwrap().contains("/openapi.json"));
}

#[test]
fn every_post_body_must_be_json_even_where_none_is_read() {
    // 415 for a non-JSON body on routes that take no body (logout, cancel), and nothing done:
    // the token still works afterwards.
    let app = TestApp::spawn();
    let a = app.register(&name("a"));
    let r = app.raw(
        "POST",
        "/api/auth/logout/",
        Some(&a.token),
        Some("hello".into()),
        Some("text/plain"),
    );
    assert_eq!((r.status, r.code()), (415, "unsupported_media_type"));
    assert_eq!(
        app.get("/api/auth/profile", &a.token).status,
        200,
        "not logged out"
    );
    let r = app.raw("POST", "/api/auth/logout", Some(&a.token), None, None);
    assert_eq!(r.status, 200, "no body, no Content-Type: fine");
}

#[test]
fn rate_limits_refuse_with_429_and_retry_after_per_user_and_per_address() {
    // `--rate-limit-user 3/min`: a user's fourth request in a burst is 429 with Retry-After,
    // whatever token it sends; another user is not affected. `--rate-limit-anon 4/min`:
    // anonymous requests (and requests with a bad token) from one address are limited the
    // same way. Within the limit nothing is refused.
    let app = crate::helpers::TestApp::spawn_with(
        |c| {
            c.serve.rate_limit_user =
                wallet::config::RateLimit(wallet::accounts::Rate::parse("3/min").unwrap());
            c.serve.rate_limit_anon =
                wallet::config::RateLimit(wallet::accounts::Rate::parse("4/min").unwrap());
        },
        std::sync::Arc::new(wallet::clock::SystemClock),
    );
    // Two registrations: two of the address's four anonymous requests.
    let a = app.register(&crate::helpers::name("rla"));
    let b = app.register(&crate::helpers::name("rlb"));
    for i in 0..3 {
        let r = app.get("/api/wallets/me", &a.token);
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    let r = app.get("/api/wallets/me", &a.token);
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{}", r.body);
    let retry: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    let deposit = app.post(
        "/api/wallets/me/deposit",
        &a.token,
        serde_json::json!({"amount": "1.00", "reference": "limited"}),
    );
    assert_eq!(
        deposit.status, 429,
        "a refused request moves nothing: {}",
        deposit.body
    );
    // b has its own allowance.
    assert_eq!(app.get("/api/wallets/me", &b.token).status, 200);
    // Two more anonymous requests are allowed (a bad token counts as anonymous), then 429.
    assert_eq!(app.get("/health", "").status, 200);
    assert_eq!(app.get("/api/wallets/me", "not-a-token").status, 401);
    let r = app.get("/health", "");
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{}", r.body);
    assert!(r.header("Retry-After").is_some());
    assert_eq!(app.balance(&b), "0.00");
}
