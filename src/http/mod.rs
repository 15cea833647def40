//! The HTTP edge: each request is read, routed and handled on its connection's thread (a panic
//! becomes a 500 for that request only), with one log line and the metrics.

pub mod console;
pub mod docs;
mod gate;
pub mod handlers;
pub mod request;
pub mod response;
pub mod router;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tiny_http::{ConnectionLimits, HeadLimits, Header, Response, Server};

use crate::accounts::AuthUser;
use crate::config::ServeArgs;
use crate::error::AppError;
use crate::service::Service;
use gate::{BodyBudget, Gate, Permit};
use handlers::Params;
use request::Incoming;
use response::{error_reply, Body, Reply};
use router::{Handler, StaffUser};

pub struct HttpServer {
    server: Option<Server>,
    intake: Arc<Intake>,
    pub addr: SocketAddr,
}

/// Bytes of a request head at most (request line and header fields); a larger one is 431.
pub const REQUEST_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Header fields of a request at most; more is 431.
pub const REQUEST_HEADERS_MAX: usize = 100;
/// Bytes of request bodies being read and handled at once, at most: with bodies read before a
/// request takes a place, this (not `--requests` places) bounds their memory. A request that
/// would go over it is answered 503.
pub const REQUEST_BODIES_BYTES_MAX: usize = 32 * 1024 * 1024;
const _: () = assert!(REQUEST_HEADERS_MAX <= tiny_http::HEADERS_MAX_CEILING);
// The largest body `--request-body-bytes-max` allows must fit in the budget on its own.
const _: () = assert!(REQUEST_BODIES_BYTES_MAX >= crate::config::REQUEST_BODY_BYTES_MAX_CEILING);

/// How long a refused login waits before its 503 goes out. A flood that ignores `Retry-After`
/// then gets at most 10 refusals per second per connection; without it, 64 flooding clients
/// got 88,000 per second and transfers fell to 4% of their rate on the same two cores.
const REFUSAL_DELAY_MS: u64 = 100;

/// Whether a request's route hashes a password, decided by the router itself so that no
/// spelling of the path (`//api/auth/login/?x`) reaches a login past its gate.
/// The console's login form is one of them.
fn hashes_password(url: &str) -> bool {
    let path = request::path_of(url);
    console::hashes_password(path)
        || matches!(
            router::route(path, false).map(|m| m.template),
            Some("/api/auth/login" | "/api/auth/register")
        )
}

impl HttpServer {
    pub fn start(
        svc: Arc<Service>,
        listener: TcpListener,
        threads: usize,
        test_hooks: bool,
    ) -> Result<HttpServer, String> {
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let limits = connection_limits(&svc.config.serve);
        let intake = Arc::new(Intake::new(&svc, threads, test_hooks));
        let handler: tiny_http::InlineHandler = {
            let intake = intake.clone();
            Arc::new(move |rq| intake.take(rq))
        };
        let server = Server::from_listener_with_handler(listener, limits, handler)
            .map_err(|e| format!("cannot serve on {addr}: {e}"))?;
        Ok(HttpServer {
            server: Some(server),
            intake,
            addr,
        })
    }

    /// Stops accepting connections, answers new requests 503, and waits up to `grace` for the
    /// requests being handled to finish.
    pub fn stop(mut self, grace: Duration) {
        let intake = &self.intake;
        intake.stopping.store(true, Ordering::SeqCst);
        drop(self.server.take());
        let deadline = Instant::now() + grace;
        if !(intake.in_flight.drain(deadline)
            && intake.gate.drain(deadline)
            && intake.password_gate.drain(deadline))
        {
            crate::log::error("http: requests still running after the shutdown grace period");
        }
    }
}

/// What the server asks of connections: timeouts, how many at once (loopback and the trusted
/// proxy unlimited per address), and the bounds of a request head.
fn connection_limits(serve: &ServeArgs) -> ConnectionLimits {
    let timeout = Some(Duration::from_millis(serve.socket_timeout_ms));
    let mut unlimited_addresses = vec![
        IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    unlimited_addresses.extend(serve.trusted_proxy.map(|ip| ip.to_canonical()));
    ConnectionLimits {
        read_timeout: timeout,
        write_timeout: timeout,
        connections_max: serve.connections_max as usize,
        connections_per_address_max: serve.connections_per_address_max as usize,
        unlimited_addresses,
        head: HeadLimits {
            bytes_max: REQUEST_HEAD_BYTES_MAX,
            headers_max: REQUEST_HEADERS_MAX,
            timeout: Some(Duration::from_millis(serve.request_head_timeout_ms)),
            read_timeout: timeout,
        },
    }
}

/// What the connection threads share to take requests in: the gates, the body budget and the
/// body limits.
struct Intake {
    /// Connection threads outlive `stop` until their clients hang up or time out; a weak
    /// handle lets the service (and its writer) end when the app shuts down.
    svc: Weak<Service>,
    /// Every request from the moment its head is read until it is answered (bodies are read
    /// before a request takes a place in `gate`): what a graceful stop waits for.
    in_flight: Gate,
    gate: Gate,
    /// Logins and registrations wait for the hashing threads (up to a second in a login
    /// storm); with their own places they never take those of money movements, which cost
    /// transfers 41% of their rate in a 64-client storm when they shared one gate.
    password_gate: Gate,
    stopping: AtomicBool,
    reading: BodyBudget,
    body_bytes_max: usize,
    body_deadline: Duration,
    trusted_proxy: Option<IpAddr>,
    test_hooks: bool,
}

impl Intake {
    fn new(svc: &Arc<Service>, threads: usize, test_hooks: bool) -> Intake {
        let serve = &svc.config.serve;
        Intake {
            svc: Arc::downgrade(svc),
            in_flight: Gate::new(usize::MAX),
            gate: Gate::new(threads),
            password_gate: Gate::new(crate::accounts::HASH_WAITERS_MAX + svc.config.hash_threads),
            stopping: AtomicBool::new(false),
            reading: BodyBudget::new(REQUEST_BODIES_BYTES_MAX),
            body_bytes_max: usize::try_from(serve.request_body_bytes_max).unwrap_or(usize::MAX),
            body_deadline: Duration::from_millis(serve.socket_timeout_ms),
            trusted_proxy: serve.trusted_proxy,
            test_hooks,
        }
    }

    /// Takes a request in on its connection's thread: reads its body, waits for its place,
    /// and handles it.
    fn take(&self, mut rq: tiny_http::Request) {
        // From here the request is in flight: a graceful stop lets it finish. Entered before
        // the check, so that a stop either sees it or refuses it.
        let in_flight = self.in_flight.enter();
        if self.stopping.load(Ordering::SeqCst) {
            return shutting_down(rq);
        }
        let started = Instant::now();
        // The body is read before the request takes a place, so that clients dripping bodies
        // hold only their own connections. The bytes of the bodies being read (and handled)
        // at once are bounded instead, reserved as they arrive: a client that declares a
        // large body and sends none of it reserves nothing.
        let mut incoming = Incoming::from_head(&rq, self.trusted_proxy);
        let mut reserved = self.reading.nothing_reserved();
        let read_error = incoming
            .read_body(
                &mut rq,
                self.body_bytes_max,
                self.body_deadline,
                &mut |bytes| reserved.grow(bytes),
            )
            .err();
        if read_error.is_some() {
            // What is left of the body would be read as the next request.
            rq.close_connection();
        }
        let Some(place) = self.place_for(rq.url()) else {
            let console = console::owns(&incoming.path);
            return refuse_login(rq, &incoming.request_id, console);
        };
        // A stop that began while this request was read or waited its turn waits for it (it
        // is in flight), up to the grace period.
        match self.svc.upgrade() {
            Some(svc) => {
                let request = Handled {
                    incoming,
                    read_error,
                    started,
                };
                let held = (place, reserved, in_flight);
                handle(&svc, rq, request, held, self.test_hooks)
            }
            None => shutting_down(rq),
        }
    }

    /// A place to handle a request in: in the password gate for logins and registrations,
    /// none if it is full; else in the main gate, waiting for one.
    fn place_for(&self, url: &str) -> Option<Permit<'_>> {
        if hashes_password(url) {
            // A full password gate means the hashing threads are saturated: refuse, like the
            // hashing queue does, rather than hold the client in a queue.
            self.password_gate.try_enter()
        } else {
            Some(self.gate.enter())
        }
    }
}

/// The answer to a request that arrives while the server stops.
fn shutting_down(rq: tiny_http::Request) {
    let reply = error_reply(&AppError::Unavailable("the server is shutting down"));
    respond(rq, reply, "-");
}

/// The answer to a login or registration that found the password gate full. It is held back
/// a little (the thread sleeps, using no CPU), so a client that ignores `Retry-After` cannot
/// turn cheap refusals into a flood that takes the CPU from money movements.
fn refuse_login(rq: tiny_http::Request, request_id: &str, console: bool) {
    std::thread::sleep(Duration::from_millis(REFUSAL_DELAY_MS));
    let reply = if console {
        console::busy_page()
    } else {
        error_reply(&AppError::Unavailable("too many logins at once; try again"))
    };
    respond(rq, reply, request_id);
}

/// A request read from its connection, to be handled.
struct Handled {
    incoming: Incoming,
    read_error: Option<AppError>,
    started: Instant,
}

/// Handles a request holding `held` (its request place and body reservation), which is given
/// back before the response is written: a client that does not read its responses then holds
/// its own connection only, not a place every other request needs.
fn handle(
    svc: &Service,
    rq: tiny_http::Request,
    request: Handled,
    held: impl Sized,
    test_hooks: bool,
) {
    let Handled {
        mut incoming,
        read_error,
        started,
    } = request;
    let (template, reply) = if console::owns(&incoming.path) {
        // The console answers in HTML, errors included, and authenticates by its cookie.
        console::answer(svc, &incoming, read_error)
    } else {
        api_answer(svc, &incoming, read_error, test_hooks)
    };
    let status = reply.status;
    incoming.body = Vec::new();
    drop(held);
    respond(rq, reply, &incoming.request_id);
    let took = started.elapsed();
    svc.metrics.observe_request(template, status, took);
    if crate::log::enabled_info() {
        crate::log::info(&format!(
            "{} {template} {status} {:.3}ms id={}",
            incoming.method,
            took.as_secs_f64() * 1000.0,
            incoming.request_id
        ));
    }
}

/// The API's answer to a request: its route's template and its reply. The API authenticates
/// by the `Authorization` header only, never by a cookie.
fn api_answer(
    svc: &Service,
    incoming: &Incoming,
    read_error: Option<AppError>,
    test_hooks: bool,
) -> (&'static str, Reply) {
    // Any POST body must be JSON, including on routes that take none (the contract's 415).
    let read_error = read_error.or_else(|| incoming.json_content_type_error());
    let matched = router::route(&incoming.path, test_hooks);
    let template = matched.as_ref().map_or("unmatched", |m| m.template);
    let result = match (matched, read_error) {
        (_, Some(e)) => Err(e),
        (None, None) => Err(AppError::NotFound("route")),
        (Some(m), None) => run(svc, incoming, &m),
    };
    let reply = result.unwrap_or_else(|e| error_answer(svc, incoming, template, &e));
    (template, reply)
}

/// Runs the route's handler for the request's method (405 if it has none); a panic in it is
/// a 500 for this request only.
fn run(svc: &Service, rq: &Incoming, m: &router::Matched) -> Result<Reply, AppError> {
    let handler = router::handler_for(m, &rq.method)?;
    catch_unwind(AssertUnwindSafe(|| call(svc, rq, &m.params, handler))).unwrap_or_else(|_| {
        svc.metrics.panics.inc();
        Err(AppError::Internal("handler panicked".into()))
    })
}

/// The reply to an error, once its cause is logged (an internal error) or counted (a refusal
/// for want of capacity or storage).
fn error_answer(svc: &Service, rq: &Incoming, template: &str, e: &AppError) -> Reply {
    note_error(svc, rq, template, e);
    error_reply(e)
}

/// Logs an internal error's cause, or counts a refusal for want of capacity or storage.
pub(crate) fn note_error(svc: &Service, rq: &Incoming, template: &str, e: &AppError) {
    match e {
        AppError::Internal(cause) => crate::log::error(&format!(
            "request {} {} {template}: {cause}",
            rq.request_id, rq.method
        )),
        AppError::Unavailable(_) | AppError::Storage(_) => svc.metrics.unavailable.inc(),
        _ => {}
    }
}

/// Runs a route's handler once its caller is who the route allows: the one place a request is
/// authenticated.
fn call(
    svc: &Service,
    rq: &Incoming,
    params: &Params,
    handler: Handler,
) -> Result<Reply, AppError> {
    match handler {
        Handler::Public(run) => {
            anonymous_rate(svc, rq)?;
            run(svc, rq, params)
        }
        Handler::User(run) => run(svc, rq, params, &caller(svc, rq)?),
        Handler::Staff(run) => run(svc, rq, params, &StaffUser::check(caller(svc, rq)?)?),
    }
}

/// The user whose token the request carries: 401 without a token or with one that is not valid.
/// Within the user's rate (429 past it); a request without a valid token counts against its
/// address's anonymous rate, so guessing tokens is limited too.
fn caller(svc: &Service, rq: &Incoming) -> Result<AuthUser, AppError> {
    match rq
        .token()
        .ok_or(AppError::Unauthorized)
        .and_then(|t| svc.authenticate(t))
    {
        Ok(user) => {
            svc.user_rate
                .check(&user.user_id, Instant::now())
                .map_err(|retry_after_s| AppError::RateLimited { retry_after_s })?;
            Ok(user)
        }
        Err(e) => {
            anonymous_rate(svc, rq)?;
            Err(e)
        }
    }
}

/// Counts a request against its client address's anonymous rate: 429 past it.
pub(crate) fn anonymous_rate(svc: &Service, rq: &Incoming) -> Result<(), AppError> {
    svc.anon_rate
        .check(&rq.client, Instant::now())
        .map_err(|retry_after_s| AppError::RateLimited { retry_after_s })
}

fn respond(rq: tiny_http::Request, reply: Reply, request_id: &str) {
    let (bytes, content_type) = match reply.body {
        Body::Json(v) => (
            serde_json::to_vec(&v).unwrap_or_default(),
            "application/json",
        ),
        Body::Text { content_type, text } => (text.into_bytes(), content_type),
        Body::Stream {
            content_type,
            reader,
        } => {
            // No length: sent in chunks as the reader produces it.
            let response = Response::new(reply.status.into(), Vec::new(), reader, None, None);
            return send(rq, response, content_type, &reply.headers, request_id);
        }
    };
    let response = Response::from_data(bytes).with_status_code(reply.status);
    send(rq, response, content_type, &reply.headers, request_id)
}

fn send<R: std::io::Read>(
    rq: tiny_http::Request,
    mut response: Response<R>,
    content_type: &str,
    extra: &[(&'static str, String)],
    request_id: &str,
) {
    // A reply may choose its own caching (the console's style sheet); by default none.
    let cache = if extra.iter().any(|(n, _)| *n == "Cache-Control") {
        None
    } else {
        Some(("Cache-Control", "no-store"))
    };
    let headers = [("Content-Type", content_type), ("X-Request-Id", request_id)];
    for (name, value) in headers
        .into_iter()
        .chain(cache)
        .chain(extra.iter().map(|(n, v)| (*n, v.as_str())))
    {
        if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(h);
        }
    }
    // A client that went away is not an error worth more than this.
    let _ = rq.respond(response);
}

#[cfg(test)]
mod tests {
    use super::hashes_password;

    #[test]
    fn a_stream_cut_short_never_looks_complete() {
        // A streamed body whose reader fails after its first bytes: the response is not ended
        // with the last chunk, so the client sees it incomplete; one read whole is ended.
        struct Pages(u8);
        impl std::io::Read for Pages {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                self.0 += 1;
                match self.0 {
                    1 => {
                        out[..5].copy_from_slice(b"a,b\r\n");
                        Ok(5)
                    }
                    _ => Err(std::io::Error::other("the second page could not be read")),
                }
            }
        }
        let print = |reader: Box<dyn std::io::Read>| {
            let mut out = Vec::new();
            let result = tiny_http::Response::new(200.into(), Vec::new(), reader, None, None)
                .raw_print(&mut out, tiny_http::HTTPVersion(1, 1), &[], false, None);
            (result.is_ok(), String::from_utf8_lossy(&out).into_owned())
        };
        let (ok, cut) = print(Box::new(Pages(0)));
        assert!(!ok);
        assert!(cut.contains("Transfer-Encoding: chunked"), "{cut}");
        assert!(!cut.ends_with("0\r\n\r\n"), "{cut:?}");
        let (ok, whole) = print(Box::new(std::io::Cursor::new(b"a,b\r\n".to_vec())));
        assert!(ok);
        assert!(whole.ends_with("0\r\n\r\n"), "{whole:?}");
    }

    #[test]
    fn every_spelling_of_the_login_path_takes_the_login_gate() {
        for url in [
            "/api/auth/login",
            "/api/auth/login/",
            "//api/auth/login",
            "/api/auth/login?next=1",
            "/api/auth/register/",
            "/console/login",
            "/console/login/",
        ] {
            assert!(hashes_password(url), "{url}");
        }
        for url in [
            "/api/auth/logout",
            "/api/wallets/me/transfer",
            "/",
            "/health?x",
        ] {
            assert!(!hashes_password(url), "{url}");
        }
    }
}
