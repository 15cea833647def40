//! The HTTP edge, byte by byte: how a request is framed, how big and how slow its head may be,
//! and who may hold connections. Raw sockets throughout, since an HTTP library would fix up
//! (or refuse to send) exactly the bytes under test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use wallet::clock::SystemClock;

use crate::helpers::{name, TestApp, User};

fn addr(app: &TestApp) -> SocketAddr {
    app.base.trim_start_matches("http://").parse().unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Everything the server sends until it closes the connection (or 5 s of silence).
fn read_all(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Whether the server closed the connection: a read sees EOF (or a reset), not a timeout.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match s.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// The status codes of every response in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// A complete, authenticated deposit request: what a smuggler hides inside a body.
fn deposit_request(user: &User, reference: &str) -> String {
    let body = json!({"amount": "1000.00", "reference": reference}).to_string();
    format!(
        "POST /api/wallets/me/deposit HTTP/1.1\r\nHost: x\r\nAuthorization: Token {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        user.token,
        body.len()
    )
}

#[test]
fn a_body_too_large_to_read_is_never_read_as_a_request() {
    // A body declared larger than the limit gets 413 unread. What the client sends next on
    // the connection is the rest of that body, so the server must close the connection, not
    // read the body's bytes as a new request (here: a deposit that would move money).
    let app = TestApp::spawn();
    let user = app.register(&name("smug"));
    let inner = deposit_request(&user, "smuggled-cl");
    let mut s = connect(addr(&app));
    let head = "POST /api/wallets/me/deposit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n";
    s.write_all(format!("{head}{inner}").as_bytes()).unwrap();
    let text = read_all(&mut s);
    assert_eq!(statuses(&text), vec![413], "{text}");
    assert!(text.contains("Connection: close"), "{text}");

    // A chunked body read up to the limit and no further: the same.
    let filler = "x".repeat(65_537);
    let mut s = connect(addr(&app));
    let inner = deposit_request(&user, "smuggled-chunked");
    let request = format!(
        "POST /api/wallets/me/deposit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{filler}\r\n{inner}",
        filler.len()
    );
    let _ = s.write_all(request.as_bytes());
    let text = read_all(&mut s);
    assert_eq!(statuses(&text), vec![413], "{text}");

    assert_eq!(app.balance(&user), "0.00", "no smuggled deposit ran");
}

#[test]
fn a_client_still_sending_a_refused_body_reads_its_413() {
    // The server answers 413 before reading a body over the limit and closes the connection.
    // Closing with unread input would reset it under a client that is still sending (it then
    // saw "broken pipe", not the answer): the server lingers, dropping what still arrives.
    let app = TestApp::spawn();
    let user = app.register(&name("big"));
    for _ in 0..20 {
        let r = app.raw(
            "POST",
            "/api/wallets/me/deposit",
            Some(&user.token),
            Some("x".repeat(200_000)),
            Some("application/json"),
        );
        assert_eq!(r.status, 413);
    }
}

#[test]
fn every_ambiguous_framing_is_refused_and_the_connection_closed() {
    // RFC 9112 section 6.3: where a proxy in front and this server could disagree on where a
    // body ends, the request is refused with 400 `bad_request` and the connection closed.
    // Each request is a valid deposit but for its framing, so "refused" also means no money.
    let app = TestApp::spawn();
    let user = app.register(&name("frame"));
    let body = json!({"amount": "5.00", "reference": "framing"}).to_string();
    let len = body.len();
    let chunked = format!("{len:x}\r\n{body}\r\n0\r\n\r\n");
    let cases: Vec<(&str, String, String)> = vec![
        (
            "two different Content-Length",
            format!("Content-Length: {len}\r\nContent-Length: {}\r\n", len + 5),
            body.clone(),
        ),
        (
            "Content-Length: abc",
            "Content-Length: abc\r\n".into(),
            body.clone(),
        ),
        (
            "Content-Length: +N",
            format!("Content-Length: +{len}\r\n"),
            body.clone(),
        ),
        (
            "Content-Length with Transfer-Encoding",
            format!("Content-Length: {len}\r\nTransfer-Encoding: chunked\r\n"),
            chunked.clone(),
        ),
        (
            "an unknown transfer coding",
            "Transfer-Encoding: xchunked\r\n".into(),
            chunked.clone(),
        ),
        (
            "an obs-fold continuation line",
            format!("Content-Length: {len}\r\nX-Note: a\r\n folded\r\n"),
            body.clone(),
        ),
        (
            "a non-ASCII byte in a header value",
            format!("Content-Length: {len}\r\nX-Note: caf\u{e9}\r\n"),
            body.clone(),
        ),
    ];
    for (what, headers, payload) in cases {
        let mut s = connect(addr(&app));
        let request = format!(
            "POST /api/wallets/me/deposit HTTP/1.1\r\nHost: x\r\nAuthorization: Token {}\r\nContent-Type: application/json\r\n{headers}\r\n{payload}",
            user.token
        );
        s.write_all(request.as_bytes()).unwrap();
        let text = read_all(&mut s);
        assert_eq!(statuses(&text), vec![400], "{what}: {text}");
        assert!(text.contains("\"bad_request\""), "{what}: {text}");
        assert!(text.contains("Connection: close"), "{what}: {text}");
    }
    assert_eq!(app.balance(&user), "0.00");
}

#[test]
fn a_huge_head_is_refused_with_431_and_never_buffered() {
    // One header line of 4 MiB (an attacker sent 700 MB): the server answers 431 once the
    // head passes its bound and closes, instead of buffering all of it.
    let app = TestApp::spawn();
    let mut s = connect(addr(&app));
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        .unwrap();
    let line = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    for _ in 0..64 {
        match s.write_all(&line) {
            Ok(()) => sent += line.len(),
            Err(_) => break,
        }
    }
    let text = read_all(&mut s);
    assert_eq!(statuses(&text), vec![431], "after {sent} bytes: {text}");
    assert!(text.contains("request_header_fields_too_large"), "{text}");
    // Refused before any handler (or the console) saw it, it still carries the headers that
    // keep a browser from sniffing or framing it.
    assert!(
        text.contains("X-Content-Type-Options: nosniff\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Content-Security-Policy: default-src 'none'; frame-ancestors 'none'\r\n"),
        "{text}"
    );

    // The bound is exact: a head of 16 KiB (blank line included) is served, one byte more is
    // refused.
    for (extra, status) in [(0, 200), (1, 431)] {
        let fixed = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: \r\n\r\n".len();
        let pad = "p".repeat(16 * 1024 - fixed + extra);
        let mut s = connect(addr(&app));
        s.write_all(
            format!("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: {pad}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(statuses(&read_all(&mut s)), vec![status], "{extra} over");
    }

    // Too many header fields is the same refusal.
    let mut s = connect(addr(&app));
    let many: String = (0..200).map(|i| format!("X-{i}: 1\r\n")).collect();
    s.write_all(format!("GET /health HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes())
        .unwrap();
    let text = read_all(&mut s);
    assert_eq!(statuses(&text), vec![431], "{text}");
}

#[test]
fn a_head_must_arrive_whole_within_its_deadline() {
    // A head dripped a byte every 200 ms never trips the per-read socket timeout (5 s here),
    // but the whole head has 1 s: it is answered 408 and closed while the drip goes on.
    let app = TestApp::spawn_with(
        |c| {
            c.serve.socket_timeout_ms = 5_000;
            c.serve.request_head_timeout_ms = 1_000;
        },
        Arc::new(SystemClock),
    );
    let mut s = connect(addr(&app));
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    while started.elapsed() < Duration::from_secs(8) {
        if s.write_all(b"X").is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(statuses(&text), vec![408], "{text}");
    assert!(
        took < Duration::from_secs(4),
        "the dripping head was held for {took:?}"
    );
}

/// A connection to `addr` from the source address `from` (any 127.x.y.z is this machine).
fn connect_from(from: [u8; 4], addr: SocketAddr) -> std::io::Result<TcpStream> {
    let SocketAddr::V4(to) = addr else {
        panic!("tests listen on IPv4")
    };
    let sockaddr = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a new socket we own; every pointer passed is to a local that outlives the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = sockaddr(from, 0);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sockaddr(to.ip().octets(), to.port());
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

#[test]
fn one_address_cannot_hold_every_connection() {
    // A slowloris from one address (127.0.0.2 here) gets at most
    // --connections-per-address-max connections; the rest are refused at once with 503, so
    // places stay for everyone else. 127.0.0.1 is exempt (a load generator, a local proxy).
    let app = TestApp::spawn_with(
        |c| {
            c.serve.connections_max = 64;
            c.serve.connections_per_address_max = 8;
        },
        Arc::new(SystemClock),
    );
    let addr = addr(&app);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..20 {
        let mut s = connect_from([127, 0, 0, 2], addr).expect("connect from 127.0.0.2");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n");
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(n) if n > 0 && statuses(&String::from_utf8_lossy(&buf[..n])) == vec![503] => {
                refused += 1
            }
            _ => held.push(s),
        }
    }
    assert_eq!(held.len(), 8, "connections held from one address");
    assert_eq!(refused, 12);
    // Another address is served, and loopback itself is not capped.
    let local: Vec<TcpStream> = (0..20).map(|_| connect(addr)).collect();
    let mut s = connect(addr);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(statuses(&read_all(&mut s)), vec![200]);
    drop(local);
    // A place given back is free again for that address.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut s = connect_from([127, 0, 0, 2], addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(statuses(&read_all(&mut s)), vec![200]);
}

#[test]
fn an_upgrade_offer_is_ignored_and_the_request_answered() {
    // `curl --http2` offers h2c with `Connection: Upgrade, HTTP2-Settings`. The offer is
    // ignored: the request is answered at once over HTTP/1.1, and the connection stays usable.
    let app = TestApp::spawn();
    let mut s = connect(addr(&app));
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let offer = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    let started = Instant::now();
    s.write_all(offer.as_bytes()).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let text = read_all(&mut s);
    assert_eq!(statuses(&text), vec![200, 200], "{text}");
    assert!(!text.contains("101"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_100_continue_is_a_bare_status_line() {
    // An interim response carries no Content-Length (RFC 9110 section 8.6); the final one
    // follows once the body is sent.
    let app = TestApp::spawn();
    let user = app.register(&name("cont"));
    let body = json!({"amount": "3.00", "reference": "continue"}).to_string();
    let mut s = connect(addr(&app));
    write!(
        s,
        "POST /api/wallets/me/deposit HTTP/1.1\r\nHost: x\r\nAuthorization: Token {}\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        user.token,
        body.len()
    )
    .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body.as_bytes()).unwrap();
    let text = read_all(&mut s);
    assert_eq!(statuses(&text), vec![201], "{text}");
    assert_eq!(app.balance(&user), "3.00");
}

#[test]
fn a_repeated_json_key_is_malformed_and_moves_nothing() {
    // `{"amount": "1.00", "amount": "1000.00"}`: a proxy or a log may read the first, so the
    // request is refused instead of letting the last win.
    let app = TestApp::spawn();
    let user = app.register(&name("dup"));
    let r = app.raw(
        "POST",
        "/api/wallets/me/deposit",
        Some(&user.token),
        Some(r#"{"amount": "1.00", "reference": "dup", "amount": "1000.00"}"#.into()),
        Some("application/json"),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.code(), "malformed_json");
    let r = app.raw(
        "POST",
        "/api/wallets/me/deposit",
        Some(&user.token),
        Some(r#"{"amount": "1.00", "reference": "dup", "metadata": {"k": 1, "k": 2}}"#.into()),
        Some("application/json"),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(app.balance(&user), "0.00");
}

#[test]
fn a_balance_past_the_largest_amount_is_a_validation_error() {
    // With a maximum amount near the i64 limit, a second deposit would overflow the balance:
    // 422 on `amount`, nothing moved, and the ledger still verifies.
    let app = TestApp::spawn_with(
        |c| {
            c.currencies = wallet::domain::Currencies::single(
                wallet::domain::Currency::new("USD", 2, i64::MAX / 100).unwrap(),
            );
        },
        Arc::new(SystemClock),
    );
    let user = app.register(&name("big"));
    let most = format!("{}.00", i64::MAX / 100);
    assert_eq!(app.deposit(&user, &most, "big-1").status, 201);
    let r = app.deposit(&user, &most, "big-2");
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.code(), "validation_error");
    assert!(r.body["error"]["fields"]["amount"].is_array(), "{}", r.body);
    assert_eq!(app.balance(&user), most);
    // The failed request did not consume its reference.
    let r = app.post(
        "/api/wallets/me/withdraw",
        &user.token,
        json!({"amount": "1.00", "reference": "room"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(app.deposit(&user, "1.00", "big-2").status, 201);
    assert!(app.verify().ok(), "{:?}", app.verify());
}

#[test]
fn the_trusted_proxy_address_is_read_from_the_last_forwarded_line() {
    // HAProxy's `option forwardfor` appends its own X-Forwarded-For line after whatever the
    // client sent. The client's address is the last address of the last line; reading the
    // first line let a client pick a new address for every guess and escape the throttle.
    let app = TestApp::spawn_with(
        |c| {
            c.serve.login_failures_max = 3;
            c.serve.trusted_proxy = Some("127.0.0.1".parse().unwrap());
        },
        Arc::new(SystemClock),
    );
    let victim = app.register(&name("xff"));
    let login = |client_line: &str, username: &str, password: &str| {
        let body = json!({"username": username, "password": password}).to_string();
        let mut s = connect(addr(&app));
        write!(
            s,
            "POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Forwarded-For: {client_line}\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        statuses(&read_all(&mut s)).first().copied().unwrap_or(0)
    };
    for i in 0..3 {
        let forged = format!("198.51.100.{i}");
        assert_eq!(login(&forged, &format!("guess{i}"), "wrong password"), 401);
    }
    assert_eq!(
        login("198.51.100.77", &victim.username, "correct horse battery"),
        429,
        "the guessing client is throttled whatever it writes in its own line"
    );
}

#[test]
fn clients_dripping_bodies_do_not_hold_request_places() {
    // With 2 request places, 20 clients dripping a declared 60 KB body (a byte every 200 ms,
    // so no socket timeout fires) hold only their connections: bodies are read before a
    // request takes a place, so a balance read is answered while they drip.
    let app = TestApp::spawn_with(
        |c| {
            c.serve.threads = 2;
            c.serve.socket_timeout_ms = 10_000;
        },
        Arc::new(SystemClock),
    );
    let user = app.register(&name("drip"));
    let addr = addr(&app);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drips: Vec<_> = (0..20)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let _ = s.write_all(b"POST /api/wallets/me/deposit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{");
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if s.write_all(b" ").is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    for _ in 0..5 {
        let r = app.get("/api/wallets/me", &user.token);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for d in drips {
        let _ = d.join();
    }
    // Before bodies were read outside the gate, each read waited for the body deadline
    // (10 s here) of the drips that held both places.
    assert!(
        took < Duration::from_secs(5),
        "5 balance reads took {took:?}"
    );
}

#[test]
fn a_connection_answered_before_its_body_ends_is_closed() {
    // A body shorter than it said, then silence: the reply is an error and the connection
    // closes rather than waiting to read the rest as a request.
    let app = TestApp::spawn_with(|c| c.serve.socket_timeout_ms = 500, Arc::new(SystemClock));
    let mut s = connect(addr(&app));
    s.write_all(b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"a\"")
        .unwrap();
    let text = read_all(&mut s);
    assert_eq!(statuses(&text), vec![400], "{text}");
    assert!(closed_by_server(&mut s));
}

/// A deposit request with a chunked body framed as `chunked` says; the balance must not move.
fn chunked_deposit(user: &User, chunked: &str) -> String {
    format!(
        "POST /api/wallets/me/deposit HTTP/1.1\r\nHost: x\r\nAuthorization: Token {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}",
        user.token
    )
}

#[test]
fn chunk_framing_is_strict_and_a_truncated_body_moves_nothing() {
    // Chunk size lines are hex digits and CRLF, nothing else: a front proxy that reads `+N`,
    // blanks or a bare LF differently would frame the body otherwise. A body whose stream ends
    // inside a chunk is refused like a short Content-Length body, not executed.
    let app = TestApp::spawn();
    let user = app.register(&name("chunk"));
    let body = json!({"amount": "1.00", "reference": "chunky"}).to_string();
    let n = body.len();
    let cases = [
        ("a signed size", format!("+{n:x}\r\n{body}\r\n0\r\n\r\n")),
        (
            "blanks around the size",
            format!(" {n:x} \r\n{body}\r\n0\r\n\r\n"),
        ),
        (
            "a bare LF after the size",
            format!("{n:x}\n{body}\r\n0\r\n\r\n"),
        ),
        (
            "an extension hiding a bare-LF request",
            format!("{n:x};a\nGET /health HTTP/1.1\nHost: x\n\n\r\n{body}\r\n0\r\n\r\n"),
        ),
        (
            "an extension with a NUL",
            format!("{n:x};\u{0}\r\n{body}\r\n0\r\n\r\n"),
        ),
        (
            "no CRLF after the data",
            format!("{n:x}\r\n{body}XX0\r\n\r\n"),
        ),
    ];
    for (what, chunked) in cases {
        let mut s = connect(addr(&app));
        s.write_all(chunked_deposit(&user, &chunked).as_bytes())
            .unwrap();
        let text = read_all(&mut s);
        assert_eq!(statuses(&text), vec![400], "{what}: {text}");
    }
    // The stream ends 100 bytes into a chunk that declared more.
    let mut s = connect(addr(&app));
    let cut = format!("{:x}\r\n{body}", n + 100);
    s.write_all(chunked_deposit(&user, &cut).as_bytes())
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let text = read_all(&mut s);
    assert_eq!(statuses(&text), vec![400], "truncated: {text}");
    assert_eq!(app.balance(&user), "0.00", "no malformed body moved money");

    // Trailer fields are read and dropped; the same body well framed is served.
    let mut s = connect(addr(&app));
    let good = format!("{n:x}\r\n{body}\r\n0\r\nX-Checksum: 1\r\n\r\n");
    s.write_all(chunked_deposit(&user, &good).as_bytes())
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 512];
    let got = s.read(&mut buf).unwrap();
    assert_eq!(statuses(&String::from_utf8_lossy(&buf[..got])), vec![201]);
    assert_eq!(app.balance(&user), "1.00");
}

#[test]
fn an_endless_or_dripped_chunk_size_line_is_cut_short() {
    // A size line that never ends (1 MiB of zeros) is refused after its bound, without being
    // kept; one dripped after `;` a byte every 200 ms is cut at the body deadline (1 s here)
    // even though no single read times out.
    let app = TestApp::spawn_with(|c| c.serve.socket_timeout_ms = 1_000, Arc::new(SystemClock));
    let mut s = connect(addr(&app));
    s.write_all(
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .unwrap();
    let zeros = vec![b'0'; 64 * 1024];
    for _ in 0..16 {
        if s.write_all(&zeros).is_err() {
            break;
        }
    }
    let text = read_all(&mut s);
    assert_eq!(statuses(&text), vec![400], "{text}");

    let mut s = connect(addr(&app));
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5;",
    )
    .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    while started.elapsed() < Duration::from_secs(8) {
        if s.write_all(b"a").is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(statuses(&text), vec![400], "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the dripped size line was read for {:?}",
        started.elapsed()
    );
}

#[test]
fn a_request_needs_exactly_one_host() {
    // RFC 9112 section 3.2: HTTP/1.1 without Host, or with two, is 400; HTTP/1.0 may omit it.
    let app = TestApp::spawn();
    for (head, status) in [
        ("GET /health HTTP/1.1\r\n\r\n", 400),
        ("GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("GET /health HTTP/1.0\r\n\r\n", 200),
        (
            "GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            200,
        ),
    ] {
        let mut s = connect(addr(&app));
        s.write_all(head.as_bytes()).unwrap();
        assert_eq!(statuses(&read_all(&mut s)), vec![status], "{head:?}");
    }
}

#[test]
fn clients_that_never_read_their_responses_hold_no_request_places() {
    // With 2 request places, two connections that pipeline large responses and never read
    // them block in their writes; the places are given back before a response is written, so
    // a third client is still served at once.
    let app = TestApp::spawn_with(
        |c| {
            c.serve.threads = 2;
            c.serve.socket_timeout_ms = 10_000;
        },
        Arc::new(SystemClock),
    );
    let addr = addr(&app);
    let stuck: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect(addr);
            let many = "GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(100);
            s.write_all(many.as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let mut s = connect(addr);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(statuses(&read_all(&mut s)), vec![200]);
    let took = started.elapsed();
    drop(stuck);
    // Before, the health check waited for a stuck write's timeout (10 s here).
    assert!(took < Duration::from_secs(5), "served after {took:?}");
}

#[test]
fn a_connection_reset_right_after_its_request_does_not_panic_the_server() {
    // A client that sends a request and resets the connection at once: asking the socket for
    // its peer then fails, and upstream tiny_http panicked on that (a thread and a backtrace
    // per connection). The real binary's stderr must show no panic, and it keeps serving.
    let db = crate::helpers::TestDb::new();
    let log = db.dir().join("stderr.log");
    let mut cmd = crate::binary::wallet(db.arg());
    cmd.stderr(std::fs::File::create(&log).unwrap());
    let server = crate::binary::Server::start(cmd);
    let addr: SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    for _ in 0..300 {
        let Ok(mut s) = TcpStream::connect(addr) else {
            continue;
        };
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on a socket this test owns, with a linger struct that outlives it.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
    let mut s = connect(addr);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(statuses(&read_all(&mut s)), vec![200]);
    drop(server);
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
}
