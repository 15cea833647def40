use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Write};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{HTTPVersion, Method};
use crate::Header;
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // wallet patch: set when a request's body was not read to its end; the connection is
    // then closed instead of reading the rest of that body as the next request
    must_close: Arc<AtomicBool>,

    // wallet patch: bounds on each request head
    head_limits: HeadLimits,

    // true if the connection goes through SSL
    secure: bool,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    /// wallet patch: a head that is not valid HTTP/1.x, or whose framing is ambiguous
    /// (RFC 9112 section 6.3): answered 400 and the connection closed, since nobody can know
    /// where the next request would start.
    BadRequest(&'static str),
    /// wallet patch: a head over `HeadLimits::bytes_max` or `HeadLimits::headers_max`: 431.
    HeadTooLarge,
    /// wallet patch: the head did not arrive whole within `HeadLimits::timeout`: 408.
    HeadTimedOut,
    /// wallet patch: the previous request's body was not read to its end, so this connection
    /// cannot be read any further.
    Closed,
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
}

/// wallet patch: bounds on a request head (request line and header fields).
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Bytes of the head at most, request line and the blank line included.
    pub bytes_max: usize,
    /// Header fields at most (at most `HEADERS_MAX_CEILING`).
    pub headers_max: usize,
    /// How long the whole head may take to arrive once its first byte has.
    pub timeout: Option<Duration>,
    /// The socket's usual read timeout, restored once a slow head has arrived.
    pub read_timeout: Option<Duration>,
}

/// The most header fields `HeadLimits::headers_max` may allow (the parser's array is on the
/// stack).
pub const HEADERS_MAX_CEILING: usize = 256;

impl Default for HeadLimits {
    fn default() -> HeadLimits {
        HeadLimits {
            bytes_max: 16 * 1024,
            headers_max: 100,
            timeout: None,
            read_timeout: None,
        }
    }
}

/// Lingering close (`ClientConnection::linger`): at most this long, this many bytes, and
/// until the client has been quiet this long.
const LINGER_MS_MAX: u64 = 2_000;
const LINGER_BYTES_MAX: usize = 4 * 1024 * 1024;
const LINGER_QUIET_MS: u64 = 200;

/// A parsed request head.
struct Head {
    method: Method,
    path: String,
    version: HTTPVersion,
    headers: Vec<Header>,
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        read_socket: RefinedTcpStream,
    ) -> ClientConnection {
        ClientConnection::with_limits(write_socket, read_socket, HeadLimits::default(), None)
    }

    /// wallet patch: `new` with bounds on each request head.
    /// `peer` is the address `accept` returned: asked again later, a socket the peer has
    /// already reset has none (and upstream panicked on that).
    pub fn with_limits(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        head_limits: HeadLimits,
        peer: Option<SocketAddr>,
    ) -> ClientConnection {
        let remote_addr = match peer {
            Some(peer) => Ok(Some(peer)),
            None => read_socket.peer_addr(),
        };
        let secure = read_socket.secure();

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            // wallet patch: 16 KiB (was 1 KiB), so that a typical response (a wallet with its
            // recent transactions, a page of history) leaves in one write.
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(16 * 1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            must_close: Arc::new(AtomicBool::new(false)),
            head_limits,
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// wallet patch: closes a connection whose input was not all read (a refused body, a
    /// refused head) without losing the response already written. Closing a socket with
    /// unread input sends a reset, and a client still sending its body then sees the reset
    /// instead of the response (a 413 for a 200 KB body was lost this way). So: FIN after the
    /// response, then read and drop what the client still sends, bounded in bytes and time,
    /// as web servers' lingering close does.
    fn linger(&mut self) {
        self.sink.with_writer(|w| {
            let _ = w.flush();
            let _ = w.get_mut().shutdown_write();
        });
        self.set_read_timeout(Some(Duration::from_millis(LINGER_QUIET_MS)));
        let until = Instant::now() + Duration::from_millis(LINGER_MS_MAX);
        let mut drained = 0usize;
        while Instant::now() < until && drained < LINGER_BYTES_MAX {
            match self.next_header_source.fill_buf() {
                Ok(chunk) if !chunk.is_empty() => {
                    let n = chunk.len();
                    self.next_header_source.consume(n);
                    drained += n;
                }
                _ => break,
            }
        }
    }

    /// wallet patch: sets the socket's read timeout (shared by both halves of the socket).
    fn set_read_timeout(&self, timeout: Option<Duration>) {
        let _ = self
            .sink
            .with_writer(|w| w.get_ref().set_read_timeout(timeout));
    }

    /// wallet patch: reads a request head with `httparse` (the parser hyper uses), straight
    /// from the connection's buffer, so that no byte after the head is taken. The head is
    /// bounded in bytes, in header fields and, once its first byte has arrived, in time.
    fn read_head(&mut self) -> Result<Head, ReadError> {
        let limits = self.head_limits;
        let mut head: Vec<u8> = Vec::new();
        let mut deadline: Option<Instant> = None;
        let mut timeout_shortened = false;
        let result = loop {
            if self.must_close.load(Ordering::Acquire) {
                break Err(ReadError::Closed);
            }
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break Err(ReadError::HeadTimedOut);
                }
                let left = limits.read_timeout.map_or(left, |usual| usual.min(left));
                self.set_read_timeout(Some(left));
                timeout_shortened = true;
            }
            let chunk = match self.next_header_source.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e)
                    if !head.is_empty()
                        && matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    break Err(ReadError::HeadTimedOut)
                }
                Err(e) => break Err(ReadError::ReadIoError(e)),
            };
            // Checked again: with pipelining, the reader is ours only once the previous
            // request has let go of it.
            if self.must_close.load(Ordering::Acquire) {
                break Err(ReadError::Closed);
            }
            if chunk.is_empty() {
                break Err(ReadError::ReadIoError(IoError::new(
                    ErrorKind::ConnectionAborted,
                    "Unexpected EOF",
                )));
            }
            let room = limits.bytes_max + 1 - head.len();
            let taken = chunk.len().min(room);
            let before = head.len();
            head.extend_from_slice(&chunk[..taken]);
            // Parsed again only when a line has ended, so a head dripped a byte at a time
            // costs one parse per line, not one per byte.
            let parsed = if chunk[..taken].contains(&b'\n') {
                parse_head(&head, limits.headers_max)
            } else {
                Ok(None)
            };
            match parsed {
                Ok(Some((head_len, _))) if head_len > limits.bytes_max => {
                    break Err(ReadError::HeadTooLarge)
                }
                Ok(Some((head_len, parsed))) => {
                    self.next_header_source.consume(head_len - before);
                    break Ok(parsed);
                }
                Ok(None) => self.next_header_source.consume(taken),
                Err(e) => break Err(e),
            }
            if head.len() > limits.bytes_max {
                break Err(ReadError::HeadTooLarge);
            }
            if deadline.is_none() {
                deadline = limits.timeout.map(|t| Instant::now() + t);
            }
        };
        if timeout_shortened {
            self.set_read_timeout(limits.read_timeout);
        }
        result
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        let Head {
            method,
            path,
            version,
            headers,
        } = self.read_head()?;
        check_framing(&version, &headers)?;

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            self.remote_addr.as_ref().ok().copied().flatten(),
            data_source,
            writer,
            self.must_close.clone(),
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
            }
        })?;

        // return the request
        Ok(request)
    }

    /// wallet patch: answers a request that cannot be read with a JSON error in the API's
    /// shape, and says that the connection closes.
    /// wallet patch: a refusal made before any handler saw the request (so before the app
    /// could add its headers) still says it is JSON only: never sniffed, framed or run as a
    /// page, whatever path it was for.
    fn refuse(&mut self, status: u16, code: &str, message: &str) {
        let mut writer = self.sink.next().unwrap();
        let body = format!("{{\"error\":{{\"code\":\"{code}\",\"message\":\"{message}\"}}}}");
        let reason = crate::common::StatusCode(status).default_reason_phrase();
        let _ = write!(
            writer,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nContent-Security-Policy: default-src 'none'; frame-ancestors 'none'\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = writer.flush();
    }
}

/// wallet patch: parses a head; `Ok(None)` while it is incomplete.
fn parse_head(bytes: &[u8], headers_max: usize) -> Result<Option<(usize, Head)>, ReadError> {
    let mut storage = [httparse::EMPTY_HEADER; HEADERS_MAX_CEILING];
    let mut parsed = httparse::Request::new(&mut storage[..headers_max.min(HEADERS_MAX_CEILING)]);
    let head_len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ReadError::HeadTooLarge),
        Err(httparse::Error::Version) => {
            return Err(ReadError::BadRequest("only HTTP/1.0 and HTTP/1.1 are served"))
        }
        Err(_) => return Err(ReadError::BadRequest("malformed request head")),
    };
    let method = parsed
        .method
        .and_then(|m| Method::from_str(m).ok())
        .ok_or(ReadError::BadRequest("malformed request method"))?;
    let path = parsed
        .path
        .ok_or(ReadError::BadRequest("malformed request target"))?
        .to_owned();
    let version = HTTPVersion(1, parsed.version.unwrap_or(1));
    let mut headers = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        // Header values may carry bytes above 0x7F (obs-text); nothing we serve needs them,
        // and tiny_http's headers are ASCII.
        let header = Header::from_bytes(h.name.as_bytes(), h.value)
            .map_err(|_| ReadError::BadRequest("header values must be ASCII"))?;
        headers.push(header);
    }
    Ok(Some((
        head_len,
        Head {
            method,
            path,
            version,
            headers,
        },
    )))
}

/// wallet patch: the head parser and the framing check alone, without a socket, for the fuzz
/// target and property tests: `Ok(Some(length of the head))` for a complete head that would be
/// served, `Ok(None)` for an incomplete one, `Err(status)` for one that is refused.
#[doc(hidden)]
pub fn check_request_head(bytes: &[u8], headers_max: usize) -> Result<Option<usize>, u16> {
    match parse_head(bytes, headers_max) {
        Ok(Some((len, head))) => match check_framing(&head.version, &head.headers) {
            Ok(()) => Ok(Some(len)),
            Err(_) => Err(400),
        },
        Ok(None) => Ok(None),
        Err(ReadError::HeadTooLarge) => Err(431),
        Err(_) => Err(400),
    }
}

/// wallet patch: refuses every framing that two readers could take differently (RFC 9112
/// section 6.3), so that no proxy in front of us can see one request where we see two:
/// `Transfer-Encoding` with `Content-Length`, any coding but a single `chunked`, chunked
/// bodies in HTTP/1.0, repeated `Content-Length` fields, and lengths that are not plain digits.
fn check_framing(version: &HTTPVersion, headers: &[Header]) -> Result<(), ReadError> {
    let named = |name: &'static str| headers.iter().filter(move |h| h.field.equiv(name));
    // RFC 9112 section 3.2: an HTTP/1.1 request has exactly one Host; none or several is 400.
    match named("Host").count() {
        0 if *version == HTTPVersion(1, 0) => {}
        1 => {}
        _ => return Err(ReadError::BadRequest("a request must have exactly one Host header")),
    }
    let transfer_encodings: Vec<&Header> = named("Transfer-Encoding").collect();
    let content_lengths: Vec<&Header> = named("Content-Length").collect();
    if !transfer_encodings.is_empty() {
        if !content_lengths.is_empty() {
            return Err(ReadError::BadRequest(
                "Transfer-Encoding and Content-Length together",
            ));
        }
        if *version == HTTPVersion(1, 0) {
            return Err(ReadError::BadRequest("Transfer-Encoding in an HTTP/1.0 request"));
        }
        let only_chunked = transfer_encodings.len() == 1
            && transfer_encodings[0]
                .value
                .as_str()
                .trim()
                .eq_ignore_ascii_case("chunked");
        if !only_chunked {
            return Err(ReadError::BadRequest(
                "the only transfer coding accepted is chunked",
            ));
        }
    }
    match content_lengths.as_slice() {
        [] => Ok(()),
        [one] => {
            let value = one.value.as_str().trim();
            let digits_only = !value.is_empty()
                && value.len() <= 18
                && value.bytes().all(|b| b.is_ascii_digit());
            if digits_only {
                Ok(())
            } else {
                Err(ReadError::BadRequest("Content-Length must be a plain number"))
            }
        }
        _ => Err(ReadError::BadRequest("more than one Content-Length")),
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            if self.must_close.load(Ordering::Acquire) {
                self.linger();
            }
            return None;
        }

        let rq = match self.read() {
            // we don't know where the next request would start, so we have to close
            Err(ReadError::BadRequest(why)) => {
                self.refuse(400, "bad_request", why);
                self.linger();
                return None;
            }
            Err(ReadError::HeadTooLarge) => {
                self.refuse(
                    431,
                    "request_header_fields_too_large",
                    "the request head is too large",
                );
                self.linger();
                return None;
            }
            Err(ReadError::HeadTimedOut) => {
                self.refuse(408, "request_timeout", "the request head arrived too slowly");
                return None;
            }
            Err(ReadError::ExpectationFailed(_)) => {
                self.refuse(417, "expectation_failed", "only Expect: 100-continue is understood");
                self.linger();
                return None;
            }
            Err(ReadError::Closed) => {
                self.linger();
                return None;
            }
            Err(ReadError::ReadIoError(_)) => return None,
            Ok(rq) => rq,
        };

        // updating the status of the connection
        let connection_header = rq
            .headers()
            .iter()
            .find(|h| h.field.equiv("Connection"))
            .map(|h| h.value.as_str());

        let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

        // wallet patch: `Connection: upgrade` (an h2c or websocket offer) is ignored, as RFC
        // 9110 section 7.8 allows: the request is answered over HTTP/1.1 and the connection
        // goes on. Upstream handed the whole socket to the body and waited for it to close.
        match lowercase {
            Some(ref val) if val.contains("close") => self.no_more_requests = true,
            Some(ref val)
                if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
            {
                self.no_more_requests = true
            }
            None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
            _ => (),
        };

        // returning the request
        Some(rq)
    }
}

#[cfg(test)]
mod test {
    use super::{check_framing, parse_head, ReadError};
    use crate::{HTTPVersion, Header};

    fn head(text: &str) -> Result<Option<usize>, ReadError> {
        parse_head(text.as_bytes(), 100).map(|h| h.map(|(len, _)| len))
    }

    fn framing(lines: &[(&str, &str)]) -> bool {
        let headers: Vec<Header> = [("Host", "x")]
            .iter()
            .chain(lines.iter())
            .map(|(n, v)| Header::from_bytes(n.as_bytes(), v.as_bytes()).unwrap())
            .collect();
        check_framing(&HTTPVersion(1, 1), &headers).is_ok()
    }

    #[test]
    fn heads_are_parsed_strictly() {
        assert_eq!(head("GET /hello HTTP/1.1\r\nHost: x\r\n\r\nBODY").unwrap(), Some(32));
        assert_eq!(head("GET /hello HTTP/1.1\r\nHost: x\r\n").unwrap(), None);
        for bad in [
            "GET /hello\r\n\r\n",
            "qsd qsd qsd\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nX : a\r\n\r\n",
            "GET / HTTP/1.1\r\nX: caf\u{e9}\r\n\r\n",
        ] {
            assert!(matches!(head(bad), Err(ReadError::BadRequest(_))), "{:?}", bad);
        }
        let many: String = (0..101).map(|i| format!("X-{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(head(&many), Err(ReadError::HeadTooLarge)));
    }

    #[test]
    fn only_unambiguous_framing_is_accepted() {
        assert!(framing(&[("Content-Length", "5")]));
        assert!(framing(&[("Transfer-Encoding", "chunked")]));
        assert!(framing(&[]));
        for bad in [
            &[("Content-Length", "5"), ("Content-Length", "6")][..],
            &[("Content-Length", "5"), ("Content-Length", "5")],
            &[("Content-Length", "abc")],
            &[("Content-Length", "+5")],
            &[("Content-Length", "-1")],
            &[("Content-Length", "")],
            &[("Content-Length", "99999999999999999999")],
            &[("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
            &[("Transfer-Encoding", "xchunked")],
            &[("Transfer-Encoding", "gzip, chunked")],
            &[("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
            &[("Host", "y")],
        ] {
            assert!(!framing(bad), "{:?}", bad);
        }
    }
}
