//! The HTTP edge: tiny_http workers that read a request, route it, run one handler (a panic
//! becomes a 500 for that request only), and write one log line and the metrics.

pub mod docs;
pub mod handlers;
pub mod request;
pub mod response;
pub mod router;

use std::net::{SocketAddr, TcpListener};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tiny_http::{ConnectionLimits, Header, Response, Server};

use crate::error::AppError;
use crate::service::Service;
use request::Incoming;
use response::{error_reply, Body, Reply};

pub struct HttpServer {
    server: Arc<Server>,
    workers: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
    pub addr: SocketAddr,
}

impl HttpServer {
    pub fn start(
        svc: Arc<Service>,
        listener: TcpListener,
        threads: usize,
        test_hooks: bool,
    ) -> Result<HttpServer, String> {
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let timeout = Some(Duration::from_millis(svc.config.serve.socket_timeout_ms));
        let limits = ConnectionLimits {
            read_timeout: timeout,
            write_timeout: timeout,
            connections_max: svc.config.serve.connections_max as usize,
        };
        let server = Server::from_listener_with_limits(listener, None, limits)
            .map_err(|e| format!("cannot serve on {addr}: {e}"))?;
        let server = Arc::new(server);
        let stopping = Arc::new(AtomicBool::new(false));
        let workers = (0..threads)
            .map(|i| {
                let (server, svc, stopping) = (server.clone(), svc.clone(), stopping.clone());
                std::thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn(move || worker(&server, &svc, &stopping, test_hooks))
                    .map_err(|e| format!("cannot start HTTP worker: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HttpServer {
            server,
            workers,
            stopping,
            addr,
        })
    }

    /// Stops taking requests, lets the ones already received finish (up to `grace`), and
    /// closes the listener.
    pub fn stop(self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        for _ in 0..self.workers.len() {
            self.server.unblock();
        }
        let deadline = Instant::now() + grace;
        for w in self.workers {
            while !w.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if w.is_finished() {
                let _ = w.join();
            }
        }
    }
}

fn worker(server: &Server, svc: &Service, stopping: &AtomicBool, test_hooks: bool) {
    loop {
        match server.recv() {
            Ok(rq) => handle(svc, rq, test_hooks),
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            Err(e) => {
                crate::log::error(&format!("http: the listener reported an error: {e}"));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn handle(svc: &Service, mut rq: tiny_http::Request, test_hooks: bool) {
    let started = Instant::now();
    let body_max = usize::try_from(svc.config.serve.request_body_bytes_max).unwrap_or(usize::MAX);
    let body_deadline = Duration::from_millis(svc.config.serve.socket_timeout_ms);
    let (incoming, read_error) = Incoming::read(
        &mut rq,
        body_max,
        body_deadline,
        svc.config.serve.trusted_proxy,
    );
    // Any POST body must be JSON, including on routes that take none (the contract's 415).
    let read_error = read_error.or_else(|| incoming.json_content_type_error());
    let matched = router::route(&incoming.path, test_hooks);
    let template = matched.as_ref().map_or("unmatched", |m| m.template);
    let result = match (matched, read_error) {
        (_, Some(e)) => Err(e),
        (None, None) => Err(AppError::NotFound("route")),
        (Some(m), None) => router::handler_for(&m, &incoming.method).and_then(|handler| {
            catch_unwind(AssertUnwindSafe(|| handler(svc, &incoming, &m.params))).unwrap_or_else(
                |_| {
                    svc.metrics.panics.inc();
                    Err(AppError::Internal("handler panicked".into()))
                },
            )
        }),
    };
    let reply = result.unwrap_or_else(|e| {
        match &e {
            AppError::Internal(cause) => crate::log::error(&format!(
                "request {} {} {template}: {cause}",
                incoming.request_id, incoming.method
            )),
            AppError::Unavailable(_) => svc.metrics.unavailable.inc(),
            _ => {}
        }
        error_reply(&e)
    });
    let status = reply.status;
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

fn respond(rq: tiny_http::Request, reply: Reply, request_id: &str) {
    let (bytes, content_type) = match reply.body {
        Body::Json(v) => (
            serde_json::to_vec(&v).unwrap_or_default(),
            "application/json",
        ),
        Body::Text { content_type, text } => (text.into_bytes(), content_type),
    };
    let mut response = Response::from_data(bytes).with_status_code(reply.status);
    let headers = [
        ("Content-Type", content_type),
        ("X-Request-Id", request_id),
        ("Cache-Control", "no-store"),
    ];
    for (name, value) in headers
        .into_iter()
        .chain(reply.headers.iter().map(|(n, v)| (*n, v.as_str())))
    {
        if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(h);
        }
    }
    // A client that went away is not an error worth more than this.
    let _ = rq.respond(response);
}
