//! An incoming request, read and bounded: path, query, the few headers we use, the body.

use std::io::Read;

use serde_json::{Map, Value};

use crate::error::{AppError, FieldErrors};

/// Longest `Authorization` token accepted; ours are 64 hex characters.
pub const TOKEN_CHARS_MAX: usize = 256;
/// Longest client-sent `X-Request-Id` echoed back; longer ones are replaced.
pub const REQUEST_ID_CHARS_MAX: usize = 64;

pub struct Incoming {
    pub method: tiny_http::Method,
    /// The path without query and without a trailing slash.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub idempotency_key: Option<String>,
    pub request_id: String,
    pub client: String,
    pub body: Vec<u8>,
    /// What the web console reads besides the body: `Cookie`, `Host`, `Origin` and
    /// `Sec-Fetch-Site`. Only `http::console` reads it; the API never does.
    pub browser: Browser,
}

/// The headers only a browser's request to the console needs.
#[derive(Default)]
pub struct Browser {
    pub cookie: Option<String>,
    pub host: Option<String>,
    pub origin: Option<String>,
    pub sec_fetch_site: Option<String>,
}

impl Incoming {
    /// Reads what the request's head says; the body is read by `read_body`.
    pub fn from_head(rq: &tiny_http::Request, trusted_proxy: Option<std::net::IpAddr>) -> Incoming {
        let header = |name: &str| {
            rq.headers()
                .iter()
                .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
                .map(|h| h.value.as_str().to_string())
        };
        let request_id = header("X-Request-Id")
            .filter(|id| is_request_id(id))
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let url = rq.url().to_string();
        let raw_query = url.split_once('?').map_or("", |(_, q)| q);
        let path = path_of(&url).to_string();
        let query = parse_query(raw_query);
        // A proxy that appends a line of its own (HAProxy's `option forwardfor`) leaves the
        // client's lines before it: the last line is the one the proxy wrote.
        let forwarded_for = rq
            .headers()
            .iter()
            .rfind(|h| h.field.equiv("X-Forwarded-For"))
            .map(|h| h.value.as_str());
        Incoming {
            method: rq.method().clone(),
            path,
            query,
            authorization: header("Authorization"),
            content_type: header("Content-Type"),
            idempotency_key: header("Idempotency-Key"),
            request_id,
            client: client_address(
                rq.remote_addr().map(|a| a.ip()),
                forwarded_for,
                trusted_proxy,
            ),
            body: Vec::new(),
            browser: Browser {
                // A client (or an HTTP/2 proxy) may split cookies over several fields; they
                // are one list (RFC 6265, section 5.4).
                cookie: {
                    let parts: Vec<&str> = rq
                        .headers()
                        .iter()
                        .filter(|h| h.field.equiv("Cookie"))
                        .map(|h| h.value.as_str())
                        .collect();
                    (!parts.is_empty()).then(|| parts.join("; "))
                },
                host: header("Host"),
                origin: header("Origin"),
                sec_fetch_site: header("Sec-Fetch-Site"),
            },
        }
    }

    /// Reads at most `body_bytes_max` bytes of body, all of it within `body_deadline`, asking
    /// `reserve` for room before each read of at most `BODY_READ_BYTES` (false: 503). On an
    /// error the body was not read to its end, so the connection must not be read further.
    pub fn read_body(
        &mut self,
        rq: &mut tiny_http::Request,
        body_bytes_max: usize,
        body_deadline: std::time::Duration,
        reserve: &mut dyn FnMut(usize) -> bool,
    ) -> Result<(), AppError> {
        let too_large = AppError::PayloadTooLarge {
            limit_bytes: body_bytes_max,
        };
        if rq.body_length().is_some_and(|n| n > body_bytes_max) {
            return Err(too_large);
        }
        let limit = body_bytes_max as u64 + 1;
        let reader = Deadline {
            inner: rq.as_reader(),
            until: std::time::Instant::now() + body_deadline,
        };
        let reader = Reserving {
            inner: reader,
            reserve,
            read_bytes: 0,
            reserved_bytes: 0,
        };
        if let Err(e) = reader.take(limit).read_to_end(&mut self.body) {
            if e.kind() == std::io::ErrorKind::OutOfMemory {
                return Err(AppError::Unavailable(
                    "too many request bodies are arriving at once; try again",
                ));
            }
            return Err(AppError::MalformedJson(format!(
                "could not read the request body: {}",
                e.kind()
            )));
        }
        if self.body.len() > body_bytes_max {
            return Err(too_large);
        }
        if rq.body_length().is_some_and(|n| n != self.body.len()) {
            return Err(AppError::MalformedJson(
                "the request body ended before its Content-Length".into(),
            ));
        }
        Ok(())
    }

    /// A request made of a body and its headers alone, with no socket: for the fuzz target and
    /// property tests of the body parsers.
    pub fn for_body(
        content_type: Option<&str>,
        idempotency_key: Option<&str>,
        body: Vec<u8>,
    ) -> Incoming {
        Incoming {
            method: tiny_http::Method::Post,
            path: "/".into(),
            query: Vec::new(),
            authorization: None,
            content_type: content_type.map(str::to_string),
            idempotency_key: idempotency_key.map(str::to_string),
            request_id: "fuzz".into(),
            client: String::new(),
            body,
            browser: Browser::default(),
        }
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `UnsupportedMediaType` when a body is sent with a Content-Type other than JSON.
    pub fn json_content_type_error(&self) -> Option<AppError> {
        let ct = self.content_type.as_deref()?;
        let mime = ct.split(';').next().unwrap_or("").trim();
        (!self.body.is_empty() && !mime.eq_ignore_ascii_case("application/json"))
            .then_some(AppError::UnsupportedMediaType)
    }

    /// The body as a JSON object. An empty body is an empty object, so that routes whose
    /// fields are all optional accept no body.
    pub fn json(&self) -> Result<Map<String, Value>, AppError> {
        if let Some(ct) = &self.content_type {
            let mime = ct.split(';').next().unwrap_or("").trim();
            if !mime.eq_ignore_ascii_case("application/json") {
                return Err(AppError::UnsupportedMediaType);
            }
        }
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        let text = std::str::from_utf8(&self.body)
            .map_err(|_| AppError::MalformedJson("request body is not valid UTF-8".into()))?;
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => {
                // A repeated key is refused rather than letting the last one win: a proxy, a
                // log or an auditor may read the first.
                serde_json::from_str::<NoRepeatedKeys>(text)
                    .map_err(|e| AppError::MalformedJson(format!("request body {e}")))?;
                Ok(map)
            }
            Ok(_) => Err(AppError::MalformedJson(
                "request body must be a JSON object".into(),
            )),
            Err(e) => Err(AppError::MalformedJson(format!(
                "request body is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))),
        }
    }

    /// The token from `Authorization: Token <t>` or `Authorization: Bearer <t>`.
    pub fn token(&self) -> Option<&str> {
        let (scheme, token) = self.authorization.as_deref()?.trim().split_once(' ')?;
        let token = token.trim();
        let known = scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer");
        (known && !token.is_empty() && token.len() <= TOKEN_CHARS_MAX).then_some(token)
    }
}

/// Whether a client's `X-Request-Id` may be echoed back: short, and of characters that are
/// safe in a header and a log line.
fn is_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= REQUEST_ID_CHARS_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// The `name=value` pairs of a query string, decoded, in order.
fn parse_query(raw_query: &str) -> Vec<(String, String)> {
    raw_query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (
                without_nul(percent_decode(k)),
                without_nul(percent_decode(v)),
            )
        })
        .collect()
}

/// `%00` decodes to a character no text column of PostgreSQL can hold (it refuses the whole
/// statement, which would be a 500), and no name, reference or id contains it. It becomes
/// U+FFFD, which matches nothing either, on both engines, rather than dropping the parameter
/// (a dropped search filter would widen the search).
fn without_nul(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{fffd}")
    } else {
        text
    }
}

/// Reads any JSON value and fails on an object that repeats a key, at any depth.
struct NoRepeatedKeys;

impl<'de> serde::Deserialize<'de> for NoRepeatedKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoRepeatedKeysVisitor)
    }
}

struct NoRepeatedKeysVisitor;

impl<'de> serde::de::Visitor<'de> for NoRepeatedKeysVisitor {
    type Value = NoRepeatedKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<NoRepeatedKeys, E> {
        Ok(NoRepeatedKeys)
    }

    fn visit_i64<E>(self, _: i64) -> Result<NoRepeatedKeys, E> {
        Ok(NoRepeatedKeys)
    }

    fn visit_u64<E>(self, _: u64) -> Result<NoRepeatedKeys, E> {
        Ok(NoRepeatedKeys)
    }

    fn visit_f64<E>(self, _: f64) -> Result<NoRepeatedKeys, E> {
        Ok(NoRepeatedKeys)
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<NoRepeatedKeys, E> {
        // No field of the API holds a NUL character, and PostgreSQL can't store one.
        if text.contains('\0') {
            return Err(E::custom("holds a string with the NUL character (\\u0000)"));
        }
        Ok(NoRepeatedKeys)
    }

    fn visit_unit<E>(self) -> Result<NoRepeatedKeys, E> {
        Ok(NoRepeatedKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> Result<NoRepeatedKeys, A::Error> {
        while seq.next_element::<NoRepeatedKeys>()?.is_some() {}
        Ok(NoRepeatedKeys)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<NoRepeatedKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format_args!(
                    "repeats the key {key:?}"
                )));
            }
            map.next_value::<NoRepeatedKeys>()?;
        }
        Ok(NoRepeatedKeys)
    }
}

/// The client's address: the connection's peer, or, when the peer is the trusted proxy, the
/// address that proxy appended to `X-Forwarded-For` (the last entry: earlier ones are whatever
/// the client sent and prove nothing). Without a trusted proxy the header is ignored, so a
/// client cannot choose its own address.
pub fn client_address(
    peer: Option<std::net::IpAddr>,
    forwarded_for: Option<&str>,
    trusted_proxy: Option<std::net::IpAddr>,
) -> String {
    let forwarded = forwarded_for
        .and_then(|h| h.rsplit(',').next())
        .and_then(|last| last.trim().parse::<std::net::IpAddr>().ok());
    match (peer, forwarded) {
        (Some(p), Some(f)) if Some(p) == trusted_proxy => f.to_string(),
        (Some(p), _) => p.to_string(),
        (None, _) => String::new(),
    }
}

/// A reader that gives up once a deadline has passed. The socket timeout bounds each read;
/// this bounds the whole body, so a client sending a byte every few seconds cannot hold an
/// HTTP worker for longer than the deadline (plus one read).
struct Deadline<R> {
    inner: R,
    until: std::time::Instant,
}

impl<R: Read> Read for Deadline<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if std::time::Instant::now() > self.until {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request body too slow",
            ));
        }
        self.inner.read(buf)
    }
}

/// Bytes of body read at a time, each reserved before it is read.
pub const BODY_READ_BYTES: usize = 8 * 1024;

/// A reader that reserves room in the body budget before each read (an `OutOfMemory` error
/// when there is none), so that what a request holds follows what it has sent.
struct Reserving<'a, R> {
    inner: R,
    reserve: &'a mut dyn FnMut(usize) -> bool,
    /// Bytes read so far, and bytes reserved so far (at most `BODY_READ_BYTES` more).
    read_bytes: usize,
    reserved_bytes: usize,
}

impl<R: Read> Read for Reserving<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min(BODY_READ_BYTES);
        let needed = self.read_bytes + want;
        if needed > self.reserved_bytes {
            if !(self.reserve)(needed - self.reserved_bytes) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::OutOfMemory,
                    "request body budget",
                ));
            }
            self.reserved_bytes = needed;
        }
        let n = self.inner.read(&mut buf[..want])?;
        self.read_bytes += n;
        Ok(n)
    }
}

/// Decodes `%XX` escapes and `+` as a space; invalid escapes stay as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => std::str::from_utf8(&[*hi, *lo])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok()),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Fields whose `null` means "not given": the ones whose type allows it (an object that
/// defaults to `{}`, a moment that defaults to now or to a default). A `null` anywhere else,
/// say for a name or a reference, is a client's mistake, 422 naming the field.
pub const NULLABLE_FIELDS: [&str; 3] = ["metadata", "scheduled_at", "expires_at"];

/// Reads the typed fields of a JSON object, collecting every problem before failing.
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    pub errors: FieldErrors,
    /// The fields read, whose `null`s `finish` refuses where the type does not allow one.
    read: std::cell::RefCell<Vec<String>>,
}

impl<'a> Fields<'a> {
    pub fn new(map: &'a Map<String, Value>) -> Fields<'a> {
        Fields {
            map,
            errors: FieldErrors::default(),
            read: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// A field's value; `null` reads as absent here, and `finish` says whether it may be.
    pub fn raw(&self, name: &str) -> Option<&'a Value> {
        self.read.borrow_mut().push(name.to_string());
        self.map.get(name).filter(|v| !v.is_null())
    }

    /// A string field; `required` adds "this field is required" when absent.
    pub fn string(&mut self, name: &str, required: bool) -> Option<&'a str> {
        self.read.borrow_mut().push(name.to_string());
        match self.map.get(name) {
            None | Some(Value::Null) => {
                if required && self.map.get(name).is_none() {
                    self.errors.add(name, "this field is required");
                }
                None
            }
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => {
                self.errors.add(name, "must be a string");
                None
            }
        }
    }

    /// Parses a required field with `parse`.
    pub fn parsed<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let s = self.string(name, true)?;
        self.errors.check(name, parse(s))
    }

    pub fn finish(mut self) -> Result<(), AppError> {
        for name in self.read.take() {
            let null = matches!(self.map.get(&name), Some(Value::Null));
            if null && !NULLABLE_FIELDS.contains(&name.as_str()) && !self.errors.has(&name) {
                self.errors
                    .add(&name, "must not be null (leave the field out instead)");
            }
        }
        self.errors.into_result()
    }
}

/// The path of a request URL as routes see it: without its query and trailing slashes.
pub fn path_of(url: &str) -> &str {
    let raw_path = url.split_once('?').map_or(url, |(p, _)| p);
    match raw_path.trim_end_matches('/') {
        "" => "/",
        p => p,
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn forwarded_addresses_count_only_from_the_trusted_proxy() {
        use super::client_address;
        let proxy: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let other: std::net::IpAddr = "10.1.1.1".parse().unwrap();
        // From the proxy: the entry the proxy appended (the last), not what the client wrote.
        assert_eq!(
            client_address(Some(proxy), Some("6.6.6.6, 203.0.113.7"), Some(proxy)),
            "203.0.113.7"
        );
        // Not from the proxy, or no proxy configured: the header is ignored.
        assert_eq!(
            client_address(Some(other), Some("203.0.113.7"), Some(proxy)),
            "10.1.1.1"
        );
        assert_eq!(
            client_address(Some(proxy), Some("203.0.113.7"), None),
            "127.0.0.1"
        );
        assert_eq!(
            client_address(Some(proxy), Some("not an address"), Some(proxy)),
            "127.0.0.1"
        );
    }

    #[test]
    fn a_repeated_key_is_malformed_at_any_depth() {
        use super::Incoming;
        let body = |text: &str| Incoming::for_body(None, None, text.as_bytes().to_vec()).json();
        assert!(
            body(r#"{"amount": "1.00", "reference": "a", "metadata": {"a": [1, {"b": 2}]}}"#)
                .is_ok()
        );
        for repeated in [
            r#"{"amount": "1.00", "amount": "1000.00"}"#,
            r#"{"metadata": {"a": 1, "a": 2}}"#,
            r#"{"metadata": {"list": [{"x": 1, "x": 1}]}}"#,
            r#"{"a\u0062": 1, "ab": 2}"#,
        ] {
            let e = body(repeated).unwrap_err();
            assert!(
                matches!(e, crate::error::AppError::MalformedJson(_)),
                "{repeated}: {e:?}"
            );
        }
    }

    #[test]
    fn decodes_query_values() {
        assert_eq!(
            percent_decode("2026-01-01T00%3A00%3A00Z"),
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
