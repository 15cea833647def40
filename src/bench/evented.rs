//! The mix's load generator: one thread drives every client connection through epoll, the
//! way wrk does. The server shares the machine's two cores with it, so every microsecond it
//! spends is taken from the server: with a thread per connection, the generator used ~0.45 of
//! a core at 13,000 requests/s, most of it in thread wake-ups.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use rand::Rng;

use super::{BenchUser, OpStats};

/// How long requests still in flight at the end may take to finish.
const DRAIN_GRACE: Duration = Duration::from_secs(30);
/// One read's worth of response bytes.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Most bytes one response may have before the connection is counted as failed.
const RESPONSE_BYTES_MAX: usize = 1024 * 1024;

#[derive(Clone, Copy)]
enum Op {
    Transfer,
    Deposit,
    Read,
    /// A hold from one user to another, captured next by the recipient on this connection.
    Hold,
    Capture,
}

/// What the clients send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MixKind {
    /// 80% transfers, 10% deposits, 10% balance reads.
    Transfers,
    /// Holds to another user, each captured whole by its recipient right after: two requests,
    /// the money moving as a transfer.
    Holds,
}

/// One keep-alive connection and the request it is waiting on.
struct Conn {
    stream: TcpStream,
    /// The server this connection talks to (`host:port`), for reconnecting.
    addr: String,
    request: Vec<u8>,
    written: usize,
    response: Vec<u8>,
    op: Op,
    started: Instant,
    in_flight: bool,
    /// The hold this connection's recipient captures next, and the recipient's index.
    capture_next: Option<(String, usize)>,
    /// Whether epoll also reports room to write (only while a request is partly sent).
    watching_out: bool,
}

pub struct Mix {
    /// From the first request to the last response.
    pub seconds: f64,
    pub transfers: OpStats,
    pub deposits: OpStats,
    pub reads: OpStats,
    pub holds: OpStats,
    pub captures: OpStats,
    pub deposited_minor: i64,
}

/// An epoll instance, closed on drop.
struct Epoll(i32);

impl Epoll {
    fn new() -> Result<Epoll, String> {
        // SAFETY: epoll_create1 takes a flag and returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(format!(
                "epoll_create1: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Epoll(fd))
    }

    /// Watches `fd` for input (and for room to write, with `writable`), tagged with `slot`.
    fn watch(&self, op: i32, fd: i32, slot: usize, writable: bool) -> Result<(), String> {
        let mut events = libc::EPOLLIN as u32;
        if writable {
            events |= libc::EPOLLOUT as u32;
        }
        let mut ev = libc::epoll_event {
            events,
            u64: slot as u64,
        };
        // SAFETY: `self.0` is an open epoll descriptor, `fd` an open socket, and `ev` a valid
        // event that epoll_ctl only reads.
        if unsafe { libc::epoll_ctl(self.0, op, fd, &mut ev) } < 0 {
            return Err(format!("epoll_ctl: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The slots of the connections that are ready, waiting at most `timeout`.
    fn wait(&self, ready: &mut Vec<usize>, timeout: Duration) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 256];
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `events` is a writable array of the length passed; the kernel writes at
        // most that many entries and returns how many it wrote (or -1).
        let n = unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), events.len() as i32, ms) };
        ready.clear();
        for ev in events.iter().take(usize::try_from(n).unwrap_or(0)) {
            ready.push(ev.u64 as usize);
        }
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed exactly once.
        unsafe { libc::close(self.0) };
    }
}

fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// `None` while the response is incomplete; else its status (0 if unreadable), its length in
/// bytes, and whether the server will close the connection.
fn parse_response(buf: &[u8]) -> Option<(u16, usize, bool)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..head_end]).unwrap_or("");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (mut length, mut close) = (0usize, false);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("connection")
                && value.trim().eq_ignore_ascii_case("close")
            {
                close = true;
            }
        }
    }
    let total = head_end + 4 + length;
    (buf.len() >= total).then_some((status, total, close))
}

/// Writes `body` as one request into `out`.
fn request(out: &mut Vec<u8>, method: &str, path: &str, token: &str, body: Option<&str>) {
    out.clear();
    let body = body.unwrap_or("");
    let _ = write!(
        out,
        "{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Token {token}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        out.extend_from_slice(b"Content-Type: application/json\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// Runs `clients` connections for `duration`: 80% transfers to random users, 10% deposits of
/// 1.00, 10% balance reads, each write with a unique reference. Connection `i` talks to
/// `addrs[i % addrs.len()]` (`host:port` each), so several servers share the load evenly.
pub fn run(
    addrs: &[String],
    users: &[BenchUser],
    clients: u32,
    duration: Duration,
    kind: MixKind,
) -> Result<Mix, String> {
    let epoll = Epoll::new()?;
    let mut conns = open_connections(&epoll, addrs, clients)?;
    let mut mix = Mix {
        seconds: 0.0,
        transfers: OpStats::default(),
        deposits: OpStats::default(),
        reads: OpStats::default(),
        holds: OpStats::default(),
        captures: OpStats::default(),
        deposited_minor: 0,
    };
    let mut rng = rand::rng();
    let mut seq = 0u64;
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut ready = Vec::with_capacity(256);
    let started = Instant::now();
    let deadline = started + duration;
    for slot in 0..conns.len() {
        seq += 1;
        start_next(&mut conns[slot], users, &mut rng, seq, kind);
        flush(&epoll, &mut conns, slot)?;
    }
    loop {
        let now = Instant::now();
        let running = now < deadline;
        if !running && (conns.iter().all(|c| !c.in_flight) || now > deadline + DRAIN_GRACE) {
            break;
        }
        epoll.wait(&mut ready, Duration::from_millis(100));
        for &slot in &ready {
            if conns[slot].written < conns[slot].request.len() {
                flush(&epoll, &mut conns, slot)?;
                continue;
            }
            let finished = match receive(&mut conns[slot], &mut chunk) {
                Ok(Some(done)) => Some(done),
                Ok(None) => None,
                Err(()) => Some((None, true)),
            };
            let Some((status, close)) = finished else {
                continue;
            };
            record(&mut mix, &mut conns[slot], status);
            if close {
                reconnect(&epoll, &mut conns[slot], slot)?;
            }
            let capture_due = conns[slot]
                .capture_next
                .as_ref()
                .is_some_and(|(id, _)| !id.is_empty());
            if Instant::now() < deadline || capture_due {
                seq += 1;
                start_next(&mut conns[slot], users, &mut rng, seq, kind);
                flush(&epoll, &mut conns, slot)?;
            }
        }
    }
    mix.seconds = started.elapsed().as_secs_f64();
    Ok(mix)
}

/// `clients` connections, slot `i` to `addrs[i % addrs.len()]`, each watched by `epoll` under
/// its slot number.
fn open_connections(epoll: &Epoll, addrs: &[String], clients: u32) -> Result<Vec<Conn>, String> {
    if addrs.is_empty() {
        return Err("no server address to connect to".into());
    }
    let mut conns = Vec::with_capacity(clients as usize);
    for slot in 0..clients as usize {
        let addr = &addrs[slot % addrs.len()];
        let stream = connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
        epoll.watch(libc::EPOLL_CTL_ADD, stream.as_raw_fd(), slot, false)?;
        conns.push(Conn {
            stream,
            addr: addr.clone(),
            request: Vec::with_capacity(512),
            written: 0,
            response: Vec::with_capacity(READ_CHUNK_BYTES),
            op: Op::Read,
            started: Instant::now(),
            in_flight: false,
            watching_out: false,
            capture_next: None,
        });
    }
    Ok(conns)
}

/// Counts a finished request of `c` in its operation's figures.
fn record(mix: &mut Mix, c: &mut Conn, status: Option<u16>) {
    if !c.in_flight {
        return;
    }
    c.in_flight = false;
    let took = c.started.elapsed();
    let stats = match c.op {
        Op::Transfer => &mut mix.transfers,
        Op::Deposit => &mut mix.deposits,
        Op::Read => &mut mix.reads,
        Op::Hold => &mut mix.holds,
        Op::Capture => &mut mix.captures,
    };
    stats.record(took, status);
    if matches!(c.op, Op::Deposit) && status == Some(201) {
        mix.deposited_minor += 100;
    }
}

/// Reads what has arrived. `Ok(Some((status, close)))` when a whole response is in;
/// `Err(())` when the connection failed or closed.
#[allow(clippy::result_unit_err)]
fn receive(c: &mut Conn, chunk: &mut [u8]) -> Result<Option<(Option<u16>, bool)>, ()> {
    loop {
        match c.stream.read(chunk) {
            Ok(0) => return Err(()),
            Ok(n) => c.response.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    if c.response.len() > RESPONSE_BYTES_MAX {
        return Err(());
    }
    match parse_response(&c.response) {
        None => Ok(None),
        Some((status, total, close)) => {
            if matches!(c.op, Op::Hold) {
                // The recipient captures the hold next: its id is the reply's first "id".
                let id = (status == 201)
                    .then(|| hold_id(&c.response[..total]))
                    .flatten();
                c.capture_next = id.map(|id| (id, c.capture_next.take().map_or(0, |n| n.1)));
            }
            c.response.drain(..total);
            Ok(Some(((status != 0).then_some(status), close)))
        }
    }
}

/// The `"id"` of a hold in a response's body.
fn hold_id(response: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(response).ok()?;
    let body = &text[text.find("\r\n\r\n")? + 4..];
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["id"].as_str().map(str::to_string)
}

fn start_next(c: &mut Conn, users: &[BenchUser], rng: &mut impl Rng, seq: u64, kind: MixKind) {
    if let Some((id, recipient)) = c.capture_next.take().filter(|(id, _)| !id.is_empty()) {
        request(
            &mut c.request,
            "POST",
            &format!("/api/wallets/me/holds/{id}/capture"),
            &users[recipient].token,
            Some("{}"),
        );
        c.op = Op::Capture;
        c.written = 0;
        c.in_flight = true;
        c.started = Instant::now();
        return;
    }
    let from = &users[rng.random_range(0..users.len())];
    if kind == MixKind::Holds {
        let mut to = rng.random_range(0..users.len());
        while users[to].id == from.id {
            to = rng.random_range(0..users.len());
        }
        let cents: u32 = rng.random_range(1..=100);
        let body = format!(
            r#"{{"to_user_id":{},"amount":"{}.{:02}","reference":"h{seq}"}}"#,
            users[to].id,
            cents / 100,
            cents % 100
        );
        request(
            &mut c.request,
            "POST",
            "/api/wallets/me/holds",
            &from.token,
            Some(&body),
        );
        c.op = Op::Hold;
        // Where the capture goes once the hold's id is known.
        c.capture_next = Some((String::new(), to));
        c.written = 0;
        c.in_flight = true;
        c.started = Instant::now();
        return;
    }
    let roll = rng.random_range(0..100);
    let reference = format!("e{seq}");
    if roll < 80 {
        let mut to = &users[rng.random_range(0..users.len())];
        while to.id == from.id {
            to = &users[rng.random_range(0..users.len())];
        }
        let cents: u32 = rng.random_range(1..=100);
        let body = format!(
            r#"{{"to_user_id":{},"amount":"{}.{:02}","reference":"{reference}"}}"#,
            to.id,
            cents / 100,
            cents % 100
        );
        request(
            &mut c.request,
            "POST",
            "/api/wallets/me/transfer",
            &from.token,
            Some(&body),
        );
        c.op = Op::Transfer;
    } else if roll < 90 {
        let body = format!(r#"{{"amount":"1.00","reference":"{reference}"}}"#);
        request(
            &mut c.request,
            "POST",
            "/api/wallets/me/deposit",
            &from.token,
            Some(&body),
        );
        c.op = Op::Deposit;
    } else {
        request(
            &mut c.request,
            "GET",
            "/api/wallets/me/balance",
            &from.token,
            None,
        );
        c.op = Op::Read;
    }
    c.written = 0;
    c.in_flight = true;
    c.started = Instant::now();
}

/// Writes as much of the pending request as the socket takes, and asks epoll to say when
/// there is room for the rest. A connection that fails is replaced and the request sent again,
/// once (the server may have closed an idle connection).
fn flush(epoll: &Epoll, conns: &mut [Conn], slot: usize) -> Result<(), String> {
    let c = &mut conns[slot];
    let mut retried = false;
    while c.written < c.request.len() {
        match c.stream.write(&c.request[c.written..]) {
            Ok(n) => c.written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                c.watching_out = true;
                return epoll.watch(libc::EPOLL_CTL_MOD, c.stream.as_raw_fd(), slot, true);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if retried => return Err(format!("sending to {}: {e}", c.addr)),
            Err(_) => {
                retried = true;
                reconnect(epoll, c, slot)?;
                c.written = 0;
            }
        }
    }
    if c.watching_out {
        c.watching_out = false;
        epoll.watch(libc::EPOLL_CTL_MOD, c.stream.as_raw_fd(), slot, false)?;
    }
    Ok(())
}

fn reconnect(epoll: &Epoll, c: &mut Conn, slot: usize) -> Result<(), String> {
    c.stream = connect(&c.addr).map_err(|e| format!("reconnect to {}: {e}", c.addr))?;
    c.response.clear();
    c.watching_out = false;
    epoll.watch(libc::EPOLL_CTL_ADD, c.stream.as_raw_fd(), slot, false)
}

#[cfg(test)]
mod tests {
    use super::parse_response;

    #[test]
    fn a_response_is_complete_only_with_its_whole_body() {
        let whole = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
        assert_eq!(parse_response(whole), Some((201, whole.len(), true)));
        assert_eq!(parse_response(&whole[..whole.len() - 1]), None);
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-"), None);
    }
}
