//! The web console (`/console/`): sessions, CSRF, security headers, forms over the same use
//! cases as the API, staff pages and their audit rows, and escaping. Each test drives the pages
//! as a browser would: a cookie jar, forms posted as `application/x-www-form-urlencoded`, and
//! redirects read rather than followed.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{name, staff_user, TestApp, User};

const PASSWORD: &str = "correct horse battery";
const PAYLOADS: [&str; 2] = [
    "<script>alert(1)</script>",
    "\"'><img src=x onerror=alert(1)>",
];

/// Form fields or extra headers, as name and value.
type Pairs<'a> = Vec<(&'a str, &'a str)>;

struct Page {
    status: u16,
    body: String,
    headers: Vec<(String, String)>,
}

impl Page {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of the first hidden input named `name`.
    fn hidden(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no {name} in the page: {}", self.body))
            + marker.len();
        let end = self.body[start..].find('"').unwrap() + start;
        self.body[start..end].to_string()
    }
}

/// A browser: a cookie jar, and redirects returned rather than followed.
struct Browser<'a> {
    app: &'a TestApp,
    agent: ureq::Agent,
    cookies: Vec<(String, String)>,
}

impl<'a> Browser<'a> {
    fn new(app: &'a TestApp) -> Browser<'a> {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Browser {
            app,
            agent,
            cookies: Vec::new(),
        }
    }

    fn cookie(&self, name: &str) -> Option<String> {
        self.cookies
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<String>,
        extra: &[(&str, &str)],
    ) -> Page {
        let url = format!("{}{}", self.app.base, path);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            req = req.header("Cookie", jar.join("; "));
        }
        if body.is_some() {
            req = req.header("Content-Type", "application/x-www-form-urlencoded");
        }
        for (n, v) in extra {
            req = req.header(*n, *v);
        }
        let result = match body {
            Some(b) => self.agent.run(req.body(b).unwrap()),
            None => self.agent.run(req.body(()).unwrap()),
        };
        let mut resp = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        for (n, v) in &headers {
            if !n.eq_ignore_ascii_case("set-cookie") {
                continue;
            }
            let pair = v.split(';').next().unwrap();
            let (cn, cv) = pair.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != cn);
            if !v.contains("Max-Age=0") {
                self.cookies.push((cn.to_string(), cv.to_string()));
            }
        }
        Page {
            status: resp.status().as_u16(),
            body: resp.body_mut().read_to_string().unwrap_or_default(),
            headers,
        }
    }

    fn get(&mut self, path: &str) -> Page {
        self.send("GET", path, None, &[])
    }

    fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.post_with(path, fields, &[])
    }

    fn post_with(&mut self, path: &str, fields: &[(&str, &str)], extra: &[(&str, &str)]) -> Page {
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        self.send("POST", path, Some(body.join("&")), extra)
    }

    /// Opens the login form and posts it.
    fn login(&mut self, username: &str, password: &str) -> Page {
        let form = self.get("/console/login");
        assert_eq!(form.status, 200, "{}", form.body);
        let csrf = form.hidden("csrf");
        self.post(
            "/console/login",
            &[
                ("csrf", &csrf),
                ("username", username),
                ("password", password),
            ],
        )
    }

    fn logged_in(app: &'a TestApp, user: &User) -> Browser<'a> {
        let mut b = Browser::new(app);
        let r = b.login(&user.username, PASSWORD);
        assert_eq!(r.status, 303, "log in {}: {}", user.username, r.body);
        b
    }

    /// Posts a form of the page at `page` (its CSRF token and idempotency reference read
    /// from it), with `fields`.
    fn submit(&mut self, page: &str, action: &str, fields: &[(&str, &str)]) -> Page {
        let p = self.get(page);
        assert_eq!(p.status, 200, "{page}: {}", p.body);
        let csrf = p.hidden("csrf");
        let reference = p.hidden("reference");
        let mut all = vec![("csrf", csrf.as_str()), ("reference", reference.as_str())];
        all.extend_from_slice(fields);
        self.post(action, &all)
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn funded(app: &TestApp, prefix: &str, amount: &str) -> User {
    let u = app.register(&name(prefix));
    assert_eq!(app.deposit(&u, amount, "fund").status, 201);
    u
}

fn assert_security_headers(p: &Page, what: &str) {
    let csp = p
        .header("Content-Security-Policy")
        .unwrap_or_else(|| panic!("{what}: no CSP"));
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(csp.contains("default-src 'none'"), "{what}: {csp}");
    assert_eq!(
        p.header("X-Content-Type-Options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(p.header("Referrer-Policy"), Some("no-referrer"), "{what}");
}

#[test]
fn a_login_sets_a_strict_session_cookie_and_shows_the_user() {
    let app = TestApp::spawn();
    let u = app.register(&name("cons"));
    let mut b = Browser::new(&app);
    let r = b.login(&u.username, PASSWORD);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("Location"), Some("/console/"));
    let cookie = r
        .headers_named("Set-Cookie")
        .into_iter()
        .find(|c| c.starts_with("wallet_session="))
        .expect("a session cookie")
        .to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age="] {
        assert!(cookie.contains(attribute), "{attribute}: {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    // Only the secret's SHA-256 is stored.
    let secret = b.cookie("wallet_session").unwrap();
    let stored: Vec<u8> = app
        .db()
        .query_one(
            "SELECT session_hash FROM console_sessions WHERE user_id = ?1",
            &[&u.id],
        )
        .unwrap()
        .get(0)
        .unwrap();
    assert_eq!(stored.len(), 32);
    assert_ne!(stored, secret.as_bytes());
    let page = b.get("/console/");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(&u.username));
    assert!(page.body.contains("Log out"));
    assert_eq!(page.header("Cache-Control"), Some("no-store"));

    // Behind https, the cookie is Secure too.
    let app = TestApp::spawn_with(
        |c| c.serve.public_url = Some("https://wallet.example.com".into()),
        std::sync::Arc::new(wallet::clock::SystemClock),
    );
    let u = app.register(&name("sec"));
    let mut b = Browser::new(&app);
    let r = b.login(&u.username, PASSWORD);
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(
        r.headers_named("Set-Cookie")
            .iter()
            .any(|c| c.starts_with("wallet_session=") && c.contains("; Secure")),
        "{:?}",
        r.headers
    );
}

#[test]
fn a_wrong_password_is_shown_on_the_page_and_repeated_failures_are_throttled() {
    let app = TestApp::spawn_with(
        |c| c.serve.login_failures_max = 3,
        std::sync::Arc::new(wallet::clock::SystemClock),
    );
    let u = app.register(&name("thr"));
    let mut b = Browser::new(&app);
    for _ in 0..3 {
        let r = b.login(&u.username, "not the password");
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(
            r.body.contains("Invalid username or password."),
            "{}",
            r.body
        );
        assert!(
            r.body.contains(&u.username),
            "the username stays in the form"
        );
        assert!(!r.body.contains("not the password"), "never the password");
        assert!(r.header("Content-Type").unwrap().starts_with("text/html"));
    }
    // The same throttle as the API's: now even the right password is refused for a while.
    let r = b.login(&u.username, PASSWORD);
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("Too many failed attempts"), "{}", r.body);
    assert!(r.header("Retry-After").is_some());
    let api = app.request(
        "POST",
        "/api/auth/login",
        None,
        Some(&json!({"username": u.username, "password": PASSWORD})),
    );
    assert_eq!(api.status, 429, "the API shares the throttle: {}", api.body);
}

#[test]
fn logout_revokes_the_session_and_an_expired_session_goes_back_to_the_login() {
    let app = TestApp::spawn();
    let u = app.register(&name("out"));
    let mut b = Browser::logged_in(&app, &u);
    let stolen = b.cookie("wallet_session").unwrap();
    let page = b.get("/console/");
    let csrf = page.hidden("csrf");
    let r = b.post("/console/logout", &[("csrf", &csrf)]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        r.header("Location"),
        Some("/console/login?notice=logged_out")
    );
    assert!(
        r.headers_named("Set-Cookie")
            .iter()
            .any(|c| c.starts_with("wallet_session=;") && c.contains("Max-Age=0")),
        "the cookie is cleared: {:?}",
        r.headers
    );
    let revoked: Option<String> = app
        .db()
        .query_one(
            "SELECT revoked_at FROM console_sessions WHERE user_id = ?1",
            &[&u.id],
        )
        .unwrap()
        .get(0)
        .unwrap();
    assert!(revoked.is_some(), "revoked on the server");
    // The old cookie, replayed, is refused: back to the login form.
    let mut thief = Browser::new(&app);
    thief.cookies.push(("wallet_session".into(), stolen));
    let r = thief.get("/console/");
    assert_eq!(r.status, 303);
    assert_eq!(r.header("Location"), Some("/console/login"));

    // A session past its expiry is refused the same way.
    let mut b = Browser::logged_in(&app, &u);
    assert_eq!(b.get("/console/").status, 200);
    app.db()
        .execute(
            "UPDATE console_sessions SET expires_at = '2000-01-01T00:00:00.000000Z' WHERE revoked_at IS NULL",
            &[],
        )
        .unwrap();
    let r = b.get("/console/history");
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("Location"), Some("/console/login"));
}

#[test]
fn a_post_without_its_csrf_token_or_from_another_site_is_refused_and_changes_nothing() {
    let app = TestApp::spawn();
    let u = funded(&app, "csrf", "50.00");
    let other = app.register(&name("to"));
    let mut b = Browser::logged_in(&app, &u);
    let page = b.get("/console/");
    let csrf = page.hidden("csrf");
    let reference = page.hidden("reference");
    let wrong = "0".repeat(64);
    let attempts: Vec<(Pairs, Pairs)> = vec![
        (vec![("reference", &reference), ("amount", "5.00")], vec![]),
        (
            vec![
                ("csrf", &wrong),
                ("reference", &reference),
                ("amount", "5.00"),
            ],
            vec![],
        ),
        (
            vec![("csrf", ""), ("reference", &reference), ("amount", "5.00")],
            vec![],
        ),
        (
            vec![
                ("csrf", &csrf),
                ("reference", &reference),
                ("amount", "5.00"),
            ],
            vec![("Origin", "https://evil.example")],
        ),
        (
            vec![
                ("csrf", &csrf),
                ("reference", &reference),
                ("amount", "5.00"),
            ],
            vec![("Sec-Fetch-Site", "cross-site")],
        ),
    ];
    for (fields, headers) in &attempts {
        for action in ["/console/deposit", "/console/withdraw"] {
            let r = b.post_with(action, fields, headers);
            assert_eq!(r.status, 403, "{action} {fields:?} {headers:?}: {}", r.body);
            assert!(r.body.contains("Not allowed"), "{}", r.body);
            assert_security_headers(&r, action);
        }
        let mut transfer = fields.clone();
        transfer.push(("to_username", &other.username));
        let r = b.post_with("/console/transfer", &transfer, headers);
        assert_eq!(r.status, 403, "{}", r.body);
    }
    assert_eq!(app.balance(&u), "50.00", "nothing moved");
    assert_eq!(app.balance(&other), "0.00");
    // A session's token is no other session's.
    let mut b2 = Browser::logged_in(&app, &u);
    let r = b2.post(
        "/console/deposit",
        &[("csrf", &csrf), ("reference", "x"), ("amount", "1.00")],
    );
    assert_eq!(r.status, 403);
    // The login form needs its token too.
    let mut fresh = Browser::new(&app);
    fresh.get("/console/login");
    let r = fresh.post(
        "/console/login",
        &[("username", &u.username), ("password", PASSWORD)],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(fresh.cookie("wallet_session").is_none());
    // With the token and from this origin, the same deposit goes through.
    let host = app.base.trim_start_matches("http://").to_string();
    let origin = format!("http://{host}");
    let r = b.post_with(
        "/console/deposit",
        &[
            ("csrf", &csrf),
            ("reference", &reference),
            ("amount", "5.00"),
        ],
        &[("Origin", &origin), ("Sec-Fetch-Site", "same-origin")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(app.balance(&u), "55.00");
}

#[test]
fn deposits_and_transfers_through_the_forms_move_money_once() {
    let app = TestApp::spawn();
    let u = app.register(&name("form"));
    let v = app.register(&name("dest"));
    let mut b = Browser::logged_in(&app, &u);
    let page = b.get("/console/");
    let (csrf, reference) = (page.hidden("csrf"), page.hidden("reference"));
    let deposit = [
        ("csrf", csrf.as_str()),
        ("reference", reference.as_str()),
        ("amount", "120.50"),
        ("note", "salary"),
    ];
    let r = b.post("/console/deposit", &deposit);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("Location"), Some("/console/?notice=deposit"));
    // The same form sent twice (a double click, a reload of the POST) moves money once.
    let again = b.post("/console/deposit", &deposit);
    assert_eq!(again.status, 303);
    assert_eq!(again.header("Location"), Some("/console/?notice=replayed"));
    assert_eq!(app.balance(&u), "120.50");
    let r = b.submit(
        "/console/",
        "/console/transfer",
        &[("to_username", &v.username), ("amount", "20.25")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(app.balance(&u), "100.25");
    assert_eq!(app.balance(&v), "20.25");
    let overview = b.get("/console/?notice=transfer");
    assert!(
        overview.body.contains("Transfer sent."),
        "{}",
        overview.body
    );
    assert!(overview.body.contains(">100.25<"), "{}", overview.body);
    let history = b.get("/console/history?type=TRANSFER_OUT");
    assert_eq!(history.status, 200);
    assert!(
        history.body.contains("<td>TRANSFER_OUT</td>")
            && !history.body.contains("<td>DEPOSIT</td>")
    );
    let history = b.get("/console/history");
    assert!(history.body.contains("salary"), "the note is shown");
    // A scheduled withdrawal is listed with a cancel button, and cancelled from it.
    let r = b.submit(
        "/console/",
        "/console/withdraw",
        &[("amount", "1.00"), ("scheduled_at", "2099-01-01T10:00")],
    );
    assert_eq!(r.status, 422, "beyond the horizon: {}", r.body);
    assert!(r.body.contains("field-error"), "{}", r.body);
    let when = (chrono::Utc::now() + chrono::Duration::days(2))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    let r = b.submit(
        "/console/",
        "/console/withdraw",
        &[("amount", "1.00"), ("scheduled_at", &when)],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        r.header("Location"),
        Some("/console/withdrawals?notice=scheduled")
    );
    let list = b.get("/console/withdrawals");
    assert!(list.body.contains("PENDING"), "{}", list.body);
    let start = list.body.find("/console/withdrawals/").unwrap();
    let end = list.body[start..].find('"').unwrap() + start;
    let cancel = list.body[start..end].to_string();
    let csrf = list.hidden("csrf");
    let r = b.post(&cancel, &[("csrf", &csrf)]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(b.get("/console/withdrawals").body.contains("CANCELLED"));
}

#[test]
fn a_bad_amount_and_short_funds_are_shown_beside_the_field() {
    let app = TestApp::spawn();
    let u = funded(&app, "bad", "10.00");
    let mut b = Browser::logged_in(&app, &u);
    let r = b.submit("/console/", "/console/deposit", &[("amount", "12,50")]);
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.header("Content-Type").unwrap().starts_with("text/html"));
    assert!(!r.body.trim_start().starts_with('{'), "never JSON");
    // The message sits right after the amount input it is about.
    let input = r
        .body
        .find("id=\"deposit-amount\"")
        .expect("the amount input");
    let error = r.body[input..]
        .find("field-error")
        .expect("an error after it")
        + input;
    let next_label = r.body[input..].find("<label").unwrap() + input;
    assert!(error < next_label, "the error is beside the amount field");
    assert!(r.body.contains("value=\"12,50\""), "what was typed stays");
    let r = b.submit("/console/", "/console/withdraw", &[("amount", "99.00")]);
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body
            .contains("insufficient funds: available 10.00, required 99.00"),
        "{}",
        r.body
    );
    // A note too long for the metadata limit is shown under the note, and a currency this
    // deployment lacks (it has one, so no picker is drawn) is still said on the page.
    let long = "y".repeat(8_000);
    let r = b.submit(
        "/console/",
        "/console/deposit",
        &[("amount", "1.00"), ("note", &long)],
    );
    assert_eq!(r.status, 422, "{}", r.body);
    let note = r.body.find("id=\"deposit-note\"").expect("the note input");
    assert!(
        r.body[note..].contains("field-error"),
        "{}",
        &r.body[note..]
    );
    let r = b.submit(
        "/console/",
        "/console/deposit",
        &[("amount", "1.00"), ("currency", "EUR")],
    );
    assert_eq!(r.status, 422, "{}", r.body);
    let currency_error = r.body.matches("field-error").count();
    assert!(currency_error >= 1 && r.body.contains("EUR"), "{}", r.body);
    assert_eq!(app.balance(&u), "10.00");
}

#[test]
fn cookies_split_over_several_header_fields_are_one_list() {
    // RFC 6265 lets a client (or an HTTP/2 proxy) send its cookies in several fields: the
    // session is found in the second.
    let app = TestApp::spawn();
    let u = funded(&app, "split", "1.00");
    let b = Browser::logged_in(&app, &u);
    let session = b.cookie("wallet_session").expect("a session cookie");
    let mut fresh = Browser::new(&app);
    let r = fresh.send(
        "GET",
        "/console/",
        None,
        &[
            ("Cookie", "theme=dark"),
            ("Cookie", &format!("wallet_session={session}")),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(&u.username), "{}", r.body);
}

#[test]
fn a_frozen_users_transfer_shows_the_frozen_message_on_the_page() {
    let app = TestApp::spawn();
    let staff = staff_user(&app);
    let u = funded(&app, "frz", "30.00");
    let v = app.register(&name("rcv"));
    // Staff freeze from the console, with a reason.
    let mut s = Browser::logged_in(&app, &staff);
    let page = format!("/console/staff/users/{}", u.id);
    let r = s.submit(
        &page,
        &format!("{page}/freeze"),
        &[("reason", "card reported stolen")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let shown = s.get(&page);
    assert!(shown.body.contains("card reported stolen") && shown.body.contains("Unfreeze"));
    let mut b = Browser::logged_in(&app, &u);
    let overview = b.get("/console/");
    assert!(
        overview.body.contains("Your wallet is frozen"),
        "{}",
        overview.body
    );
    let r = b.submit(
        "/console/",
        "/console/transfer",
        &[("to_username", &v.username), ("amount", "5.00")],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("data-code=\"wallet_frozen\""), "{}", r.body);
    assert!(r.body.contains("This wallet is frozen"), "{}", r.body);
    assert_eq!(app.balance(&u), "30.00");
    assert_eq!(app.balance(&v), "0.00");
    // A freeze needs a reason, shown beside its field.
    let r = s.submit(&page, &format!("{page}/unfreeze"), &[("reason", "  ")]);
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("this field is required"));
}

#[test]
fn staff_pages_are_refused_to_users_and_their_reads_are_audited() {
    let app = TestApp::spawn();
    let staff = staff_user(&app);
    let u = funded(&app, "aud", "10.00");
    let mut b = Browser::logged_in(&app, &u);
    let id = staff.id.to_string();
    let csrf = b.get("/console/").hidden("csrf");
    for t in wallet::http::console::TEMPLATES
        .iter()
        .filter(|t| t.contains("/staff/"))
    {
        let path = t.replace("{id}", &id);
        let get = b.get(&path);
        let post = b.post(
            &path,
            &[
                ("csrf", &csrf),
                ("reason", "x"),
                ("amount", "1.00"),
                ("reference", "r"),
            ],
        );
        for r in [get, post] {
            assert!(
                matches!(r.status, 403 | 405),
                "{path}: {} {}",
                r.status,
                r.body
            );
            assert_security_headers(&r, &path);
        }
    }
    assert_eq!(app.balance(&staff), "0.00");
    // Staff reads of another user's data write audit rows, as the API's do.
    let mut s = Browser::logged_in(&app, &staff);
    let search = s.get(&format!("/console/staff/users?search={}", u.username));
    assert_eq!(search.status, 200);
    assert!(search.body.contains(&u.username));
    let page = s.get(&format!(
        "/console/staff/users/{}?at=2026-01-01T00:00",
        u.id
    ));
    assert_eq!(page.status, 200, "{}", page.body);
    let csv = s.get(&format!("/console/staff/users/{}/transactions.csv", u.id));
    assert_eq!(csv.status, 200);
    assert!(csv.header("Content-Type").unwrap().starts_with("text/csv"));
    assert!(csv
        .body
        .starts_with("id,type,amount,currency,balance_after,reference"));
    assert!(csv.body.contains(",fund,"), "{}", csv.body);
    let audit = app.get(
        &format!("/api/admin/audit?target=user:{}&limit=100", u.id),
        &staff.token,
    );
    let actions: Vec<&str> = audit.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    for want in [
        "read_user",
        "read_wallet",
        "read_transactions",
        "read_balance",
        "export_transactions",
    ] {
        assert!(actions.contains(&want), "{want}: {actions:?}");
    }
    let list = app.get(
        &format!("/api/admin/audit?target=search:{}", u.username),
        &staff.token,
    );
    assert_eq!(list.body["count"], 1, "{}", list.body);
    // The audit page shows them, filtered by target.
    let page = s.get(&format!("/console/staff/audit?target=user:{}", u.id));
    assert_eq!(page.status, 200);
    assert!(page.body.contains("read_wallet") && page.body.contains("export_transactions"));
    // The staff user's own credit is refused (no staff action on one's own wallet).
    let own = format!("/console/staff/users/{}", staff.id);
    let r = s.submit(
        &own,
        &format!("{own}/credit"),
        &[("amount", "5.00"), ("reason", "mine")],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(app.balance(&staff), "0.00");
}

#[test]
fn every_user_controlled_value_is_shown_escaped() {
    let app = TestApp::spawn();
    let staff = staff_user(&app);
    // Usernames can't hold markup at all: registration refuses them.
    let r = app.request(
        "POST",
        "/api/auth/register",
        None,
        Some(&json!({"username": PAYLOADS[0], "email": "x@example.com", "password": PASSWORD, "password_confirm": PASSWORD})),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    let username = name("xss");
    let r = app.request(
        "POST",
        "/api/auth/register",
        None,
        Some(&json!({
            "username": username, "email": format!("{username}@example.com"),
            "password": PASSWORD, "password_confirm": PASSWORD,
            "first_name": PAYLOADS[0], "last_name": PAYLOADS[1],
        })),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let u = User {
        id: r.body["user"]["id"].as_i64().unwrap(),
        username: username.clone(),
        token: r.body["token"].as_str().unwrap().to_string(),
    };
    for (i, p) in PAYLOADS.iter().enumerate() {
        let r = app.post(
            "/api/wallets/me/deposit",
            &u.token,
            json!({"amount": "1.00", "reference": p, "metadata": {"note": PAYLOADS[1 - i], "x": p}}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let r = app.post(
        "/api/wallets/me/holds",
        &u.token,
        json!({"amount": "0.50", "reference": format!("h{}", PAYLOADS[1])}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = app.post(
        &format!("/api/admin/users/{}/freeze", u.id),
        &staff.token,
        json!({"reason": format!("{} {}", PAYLOADS[0], PAYLOADS[1])}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let mut b = Browser::logged_in(&app, &u);
    let mut s = Browser::logged_in(&app, &staff);
    let pages = [
        b.get("/console/"),
        b.get("/console/history"),
        b.get("/console/holds"),
        s.get(&format!("/console/staff/users?search={username}")),
        s.get(&format!("/console/staff/users/{}", u.id)),
        s.get(&format!("/console/staff/audit?target=user:{}", u.id)),
    ];
    for (i, page) in pages.iter().enumerate() {
        assert_eq!(page.status, 200, "page {i}: {}", page.body);
        for raw in ["<script>alert(1)</script>", "<img src=x", "\"'>"] {
            assert!(!page.body.contains(raw), "page {i} holds {raw:?} unescaped");
        }
        assert!(!page.body.to_lowercase().contains("<script"), "page {i}");
    }
    let escaped_script = "&lt;script&gt;alert(1)&lt;/script&gt;";
    let escaped_img = "&lt;img src=x onerror=alert(1)&gt;";
    // References and metadata on the user's pages; names, references, metadata and the
    // freeze reason on the staff pages; the reason in the audit log.
    for (i, wants) in [
        (0, vec![escaped_script, escaped_img]),
        (1, vec![escaped_script, escaped_img]),
        (2, vec![escaped_img]),
        (3, vec![escaped_script, escaped_img]),
        (4, vec![escaped_script, escaped_img]),
        (5, vec![escaped_script, escaped_img]),
    ] {
        for want in wants {
            assert!(
                pages[i].body.contains(want),
                "page {i} lacks {want}: {}",
                pages[i].body
            );
        }
    }
}

#[test]
fn every_console_response_carries_the_csp_and_the_api_never_reads_a_cookie() {
    let app = TestApp::spawn();
    let staff = staff_user(&app);
    let u = funded(&app, "csp", "5.00");
    let mut anon = Browser::new(&app);
    let mut b = Browser::logged_in(&app, &u);
    let mut s = Browser::logged_in(&app, &staff);
    let id = u.id.to_string();
    for t in wallet::http::console::TEMPLATES {
        let path = t.replace("{id}", &id);
        for browser in [&mut anon, &mut b, &mut s] {
            let r = browser.get(&path);
            assert_security_headers(&r, &path);
            let r = browser.post(&path, &[]);
            assert_security_headers(&r, &path);
        }
    }
    for path in [
        "/console/nowhere",
        "/console/staff/users/nobody",
        "/console/staff/users/999999",
    ] {
        let r = s.get(path);
        assert_eq!(r.status, 404, "{path}");
        assert_security_headers(&r, path);
        assert!(r.header("Content-Type").unwrap().starts_with("text/html"));
    }
    let css = anon.get("/console/assets/console.css");
    assert_eq!(css.status, 200);
    assert!(css.header("Content-Type").unwrap().starts_with("text/css"));

    // The API with nothing but a valid console cookie: 401, and no money moves.
    let cookie = format!("wallet_session={}", b.cookie("wallet_session").unwrap());
    let agent = crate::helpers::agent();
    for (method, path) in [
        ("GET", "/api/wallets/me"),
        ("POST", "/api/wallets/me/withdraw"),
    ] {
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", app.base))
            .header("Cookie", &cookie)
            .header("Content-Type", "application/json");
        let mut r = agent
            .run(
                req.body(json!({"amount": "1.00", "reference": "c"}).to_string())
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{method} {path}");
        let body = r.body_mut().read_to_string().unwrap();
        assert!(body.contains("unauthorized"), "{body}");
    }
    assert_eq!(app.balance(&u), "5.00");
    // And a token is not a session: the console refuses it.
    let mut t = Browser::new(&app);
    t.cookies.push(("wallet_session".into(), u.token.clone()));
    let r = t.get("/console/");
    assert_eq!(r.status, 303);
    assert_eq!(r.header("Location"), Some("/console/login"));
}

#[test]
fn holds_are_made_captured_and_voided_from_the_holds_page() {
    let app = TestApp::spawn();
    let u = funded(&app, "hld", "40.00");
    let v = app.register(&name("hrc"));
    let mut b = Browser::logged_in(&app, &u);
    let r = b.submit("/console/holds", "/console/holds", &[("amount", "10.00")]);
    assert_eq!(r.status, 303, "{}", r.body);
    let r = b.submit(
        "/console/holds",
        "/console/holds",
        &[("amount", "5.00"), ("to_username", &v.username)],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let overview = b.get("/console/");
    assert!(
        overview.body.contains("data-field=\"held\">15.00<"),
        "{}",
        overview.body
    );
    // The payer decides the hold without a recipient: capture 4.00 of it.
    let page = b.get("/console/holds");
    let start = page.body.find("/capture\"").expect("a capture form");
    let action_start = page.body[..start].rfind('"').unwrap() + 1;
    let action = format!("{}/capture", &page.body[action_start..start]);
    let csrf = page.hidden("csrf");
    let r = b.post(&action, &[("csrf", &csrf), ("amount", "4.00")]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(app.balance(&u), "36.00");
    // The recipient voids the other.
    let mut c = Browser::logged_in(&app, &v);
    let page = c.get("/console/holds");
    let start = page.body.find("/void\"").expect("a void form");
    let action_start = page.body[..start].rfind('"').unwrap() + 1;
    let action = format!("{}/void", &page.body[action_start..start]);
    let r = c.post(&action, &[("csrf", &page.hidden("csrf"))]);
    assert_eq!(r.status, 303, "{}", r.body);
    let overview = b.get("/console/");
    assert!(
        overview.body.contains("data-field=\"held\">0.00<"),
        "{}",
        overview.body
    );
}

#[test]
fn staff_reverse_a_transaction_from_its_history_row_once() {
    // The staff page links each reversible entry to the reversal form; the form reverses it
    // through the same use case as the API, once, and names what it can't reverse beside the
    // field.
    let app = TestApp::spawn();
    let staff = staff_user(&app);
    let u = funded(&app, "rvc", "30.00");
    let other = funded(&app, "rvo", "5.00");
    let deposit = app
        .get("/api/wallets/me/transactions?type=DEPOSIT", &u.token)
        .body["results"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let foreign = app.get("/api/wallets/me/transactions", &other.token).body["results"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut s = Browser::logged_in(&app, &staff);
    let page = format!("/console/staff/users/{}", u.id);
    let shown = s.get(&page);
    assert!(
        shown
            .body
            .contains(&format!("href=\"{page}?reverse={deposit}#reverse\"")),
        "{}",
        shown.body
    );
    let form = format!("{page}?reverse={deposit}");
    assert!(s.get(&form).body.contains(&format!("value=\"{deposit}\"")));

    // Another wallet's transaction is not reversed from this page.
    let r = s.submit(
        &form,
        &format!("{page}/reverse"),
        &[("id", &foreign), ("reason", "wrong page")],
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body.contains("no transaction of this wallet has this id"),
        "{}",
        r.body
    );
    assert_eq!(app.balance(&other), "5.00");

    let r = s.submit(
        &form,
        &format!("{page}/reverse"),
        &[("id", &deposit), ("reason", "deposit made in error")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(app.balance(&u), "0.00");
    let shown = s.get(&format!("{page}?notice=reverse"));
    assert!(
        shown.body.contains("Transaction reversed."),
        "{}",
        shown.body
    );
    assert!(shown.body.contains("REVERSAL_OUT"), "{}", shown.body);

    // A second reversal, from a fresh form (a new reference), is refused and moves nothing.
    let r = s.submit(
        &form,
        &format!("{page}/reverse"),
        &[("id", &deposit), ("reason", "again")],
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("reversed already"), "{}", r.body);
    assert_eq!(app.balance(&u), "0.00");
    let audit = app.get(
        &format!("/api/admin/audit?target=transaction:{deposit}"),
        &staff.token,
    );
    assert_eq!(audit.body["count"], 1, "{}", audit.body);
}

#[test]
fn a_new_login_replaces_the_browsers_session_and_open_sessions_are_bounded() {
    // Logging in again from the same browser ends its previous session; a user logging in
    // from many browsers keeps at most CONSOLE_SESSIONS_PER_USER_MAX open, and ended ones
    // are removed rather than kept forever.
    let app = TestApp::spawn();
    let u = app.register(&name("many"));
    let mut b = Browser::logged_in(&app, &u);
    let first = b.cookie("wallet_session").unwrap();
    // Another tab of the same browser still shows the login form it opened before.
    b.cookies.retain(|(n, _)| n != "wallet_session");
    let form = b.get("/console/login");
    let csrf = form.hidden("csrf");
    b.cookies.push(("wallet_session".into(), first.clone()));
    let r = b.post(
        "/console/login",
        &[
            ("csrf", &csrf),
            ("username", &u.username),
            ("password", "correct horse battery"),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_ne!(b.cookie("wallet_session").unwrap(), first);
    let mut old = Browser::new(&app);
    old.cookies.push(("wallet_session".into(), first));
    assert_eq!(
        old.get("/console/").header("Location"),
        Some("/console/login")
    );
    assert_eq!(b.get("/console/").status, 200);

    let max = wallet::accounts::CONSOLE_SESSIONS_PER_USER_MAX;
    let browsers: Vec<Browser> = (0..max + 2).map(|_| Browser::logged_in(&app, &u)).collect();
    let count = |sql: &str| -> i64 { app.db().query_one(sql, &[&u.id]).unwrap().get(0).unwrap() };
    assert_eq!(
        count("SELECT count(*) FROM console_sessions WHERE user_id = ?1 AND revoked_at IS NULL"),
        max
    );
    assert!(count("SELECT count(*) FROM console_sessions WHERE user_id = ?1") <= max + 2);
    // The newest are the ones still open.
    let mut newest = Browser::new(&app);
    let last = browsers.last().unwrap().cookie("wallet_session").unwrap();
    newest.cookies.push(("wallet_session".into(), last));
    assert_eq!(newest.get("/console/").status, 200);
}
