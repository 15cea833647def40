//! wallet patch: a strict decoder of `Transfer-Encoding: chunked` request bodies.
//!
//! The `chunked_transfer` crate's decoder kept every byte of a size line until it saw `\r`
//! (one connection sending zeros grew the process by 100 MB), skipped anything after `;` up to
//! the next `\r` (bare LFs and whole requests included, which a proxy ending lines at LF frames
//! differently), accepted `+5`, blanks and a bare-LF line end, treated the end of the stream
//! inside a chunk as the end of the body (a truncated body was executed), and read a whole line
//! inside one `read` call, so a deadline checked between calls never got its turn.
//!
//! This one accepts exactly RFC 9112 section 7.1: `1*HEXDIG *( ";" ext ) CRLF data CRLF`, ending
//! with a zero-size chunk and optional trailer fields (read and discarded) and a final CRLF.
//! Every line is bounded, the end of the stream before the end of the body is an error, and a
//! `read` that consumed only framing returns `ErrorKind::Interrupted`, which `read_to_end`
//! retries at once: the caller's deadline is checked between any two reads of the socket.
//! A body not read to its end, or refused, marks its connection for closing.

use std::convert::TryFrom;
use std::io::{Error, ErrorKind, Read, Result as IoResult};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Hex digits of a chunk size at most (16 fill a u64).
const SIZE_DIGITS_MAX: usize = 16;
/// Bytes of a size line (size and extensions, without CRLF) at most.
pub const CHUNK_LINE_BYTES_MAX: usize = 1024;
/// Bytes of trailer fields at most, all lines together.
pub const TRAILER_BYTES_MAX: usize = 4096;

enum State {
    /// Reading a size line; the bytes so far (hex digits, then extensions).
    Size { line: Vec<u8>, seen_cr: bool },
    /// Inside a chunk's data: bytes left.
    Data(u64),
    /// After a chunk's data: the CRLF that ends it; bytes of it seen.
    DataEnd(u8),
    /// After the zero-size chunk: trailer lines, then an empty line.
    Trailers {
        line_len: usize,
        total: usize,
        seen_cr: bool,
    },
    Done,
    Failed,
}

pub struct ChunkedDecoder<R: Read> {
    inner: R,
    state: State,
    must_close: Arc<AtomicBool>,
}

fn malformed(what: &'static str) -> Error {
    Error::new(ErrorKind::InvalidData, what)
}

impl<R: Read> ChunkedDecoder<R> {
    pub fn new(inner: R, must_close: Arc<AtomicBool>) -> Self {
        ChunkedDecoder {
            inner,
            state: State::Size {
                line: Vec::new(),
                seen_cr: false,
            },
            must_close,
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        self.state = State::Failed;
        self.must_close.store(true, Ordering::Release);
        e
    }

    /// One byte of framing, or an error at the end of the stream.
    fn framing_byte(&mut self) -> IoResult<u8> {
        let mut byte = [0u8; 1];
        loop {
            match self.inner.read(&mut byte) {
                Ok(0) => return Err(Error::new(ErrorKind::UnexpectedEof, "chunked body cut short")),
                Ok(_) => return Ok(byte[0]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes one framing byte into the state machine.
    fn step(&mut self, b: u8) -> IoResult<()> {
        match &mut self.state {
            State::Size { line, seen_cr } => {
                if *seen_cr {
                    if b != b'\n' {
                        return Err(malformed("chunk size line not ended by CRLF"));
                    }
                    let size = parse_size_line(line)?;
                    self.state = if size == 0 {
                        State::Trailers {
                            line_len: 0,
                            total: 0,
                            seen_cr: false,
                        }
                    } else {
                        State::Data(size)
                    };
                } else if b == b'\r' {
                    *seen_cr = true;
                } else if line.len() >= CHUNK_LINE_BYTES_MAX {
                    return Err(malformed("chunk size line too long"));
                } else {
                    line.push(b);
                }
            }
            State::DataEnd(seen) => {
                let expected = if *seen == 0 { b'\r' } else { b'\n' };
                if b != expected {
                    return Err(malformed("chunk data not followed by CRLF"));
                }
                if *seen == 0 {
                    *seen = 1;
                } else {
                    self.state = State::Size {
                        line: Vec::new(),
                        seen_cr: false,
                    };
                }
            }
            State::Trailers {
                line_len,
                total,
                seen_cr,
            } => {
                if *seen_cr {
                    if b != b'\n' {
                        return Err(malformed("trailer line not ended by CRLF"));
                    }
                    if *line_len == 0 {
                        self.state = State::Done;
                    } else {
                        *line_len = 0;
                        *seen_cr = false;
                    }
                } else if b == b'\r' {
                    *seen_cr = true;
                } else if b == b'\n' || (b < 0x20 && b != b'\t') || b == 0x7f {
                    return Err(malformed("control character in a trailer"));
                } else {
                    *line_len += 1;
                    *total += 1;
                    if *total > TRAILER_BYTES_MAX {
                        return Err(malformed("trailer fields too long"));
                    }
                }
            }
            State::Data(_) | State::Done | State::Failed => unreachable!("not framing"),
        }
        Ok(())
    }
}

/// `1*HEXDIG *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )`: the size, and extensions
/// that are ignored but may hold no control character (a bare LF inside one is how a proxy
/// and a server come to disagree on where a line ends).
fn parse_size_line(line: &[u8]) -> IoResult<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > SIZE_DIGITS_MAX {
        return Err(malformed("chunk size is not 1 to 16 hex digits"));
    }
    let rest = &line[digits..];
    if !rest.is_empty() {
        let extension_ok = rest.first() == Some(&b';')
            && rest
                .iter()
                .all(|&b| (0x20..0x7f).contains(&b) || b == b'\t');
        if !extension_ok {
            return Err(malformed("malformed chunk size line"));
        }
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| malformed("chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| malformed("chunk size"))
}

impl<R: Read> Read for ChunkedDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match self.state {
            State::Done => Ok(0),
            State::Failed => Err(malformed("chunked body already refused")),
            State::Data(left) => {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                match self.inner.read(&mut buf[..want]) {
                    Ok(0) => {
                        let e = Error::new(ErrorKind::UnexpectedEof, "chunked body cut short");
                        Err(self.fail(e))
                    }
                    Ok(n) => {
                        let left = left - n as u64;
                        self.state = if left == 0 {
                            State::DataEnd(0)
                        } else {
                            State::Data(left)
                        };
                        Ok(n)
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => Err(e),
                    Err(e) => Err(self.fail(e)),
                }
            }
            _ => {
                let stepped = self.framing_byte().and_then(|b| self.step(b));
                match stepped {
                    Err(e) => Err(self.fail(e)),
                    Ok(()) if matches!(self.state, State::Done) => Ok(0),
                    // Framing alone: hand control back (see the module's comment).
                    Ok(()) => Err(Error::new(ErrorKind::Interrupted, "chunk framing")),
                }
            }
        }
    }
}

impl<R: Read> Drop for ChunkedDecoder<R> {
    fn drop(&mut self) {
        if !matches!(self.state, State::Done) {
            self.must_close.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ChunkedDecoder;
    use std::io::{ErrorKind, Read};
    use std::sync::atomic::Ordering;

    /// Decodes `wire`; the body, or the error's kind, and whether the connection must close.
    fn decode(wire: &[u8]) -> (Result<Vec<u8>, ErrorKind>, bool) {
        let close = std::sync::Arc::default();
        let mut body = Vec::new();
        let result = {
            let mut d = ChunkedDecoder::new(wire, std::sync::Arc::clone(&close));
            d.read_to_end(&mut body).map(|_| body).map_err(|e| e.kind())
        };
        (result, close.load(Ordering::Acquire))
    }

    #[test]
    fn well_formed_bodies_decode_and_keep_the_connection() {
        let cases: [(&[u8], &[u8]); 4] = [
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"3\r\nhel\r\n2;ext=1\r\nlo\r\n0\r\n\r\n", b"hello"),
            (b"A\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n", b"0123456789"),
            (b"0000000000000005\r\nhello\r\n0\r\n\r\n", b"hello"),
        ];
        for (wire, body) in cases {
            let (decoded, close) = decode(wire);
            assert_eq!(decoded.as_deref(), Ok(body), "{:?}", String::from_utf8_lossy(wire));
            assert!(!close);
        }
    }

    #[test]
    fn every_lenient_or_truncated_framing_is_refused_and_closes() {
        let bad: [&[u8]; 14] = [
            b"+5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5\t\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5;a\nGET / HTTP/1.1\n\n\r\nhello\r\n0\r\n\r\n",
            b"5;\x00\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"\r\n",
            b"00000000000000005\r\nhello\r\n0\r\n\r\n",
            b"9\r\nhello",
            b"5\r\nhello\r\n",
            b"5\r\nhello\r\n0\r\nX: 1\n\r\n",
            b"5\r\nhello\r\n0\r\n",
        ];
        for wire in bad {
            let (decoded, close) = decode(wire);
            assert!(decoded.is_err(), "{:?} decoded", String::from_utf8_lossy(wire));
            assert!(close, "{:?}", String::from_utf8_lossy(wire));
        }
    }

    #[test]
    fn an_endless_size_line_is_refused_after_its_bound() {
        let mut wire = vec![b'0'; 10 * super::CHUNK_LINE_BYTES_MAX];
        wire.extend_from_slice(b"\r\n");
        assert!(decode(&wire).0.is_err());
        let mut wire = b"5;".to_vec();
        wire.extend(std::iter::repeat(b'a').take(10 * super::CHUNK_LINE_BYTES_MAX));
        assert!(decode(&wire).0.is_err());
        let mut wire = b"0\r\n".to_vec();
        wire.extend(std::iter::repeat(b'a').take(10 * super::TRAILER_BYTES_MAX));
        assert!(decode(&wire).0.is_err());
    }

    #[test]
    fn framing_hands_control_back_between_reads() {
        // Each read that consumed only framing says so with Interrupted, so a deadline checked
        // by the caller between reads is never starved by a dripped size line.
        let close = std::sync::Arc::default();
        let mut d = ChunkedDecoder::new(&b"5;x\r\nhello\r\n0\r\n\r\n"[..], close);
        let mut buf = [0u8; 16];
        let mut interrupted = 0;
        let mut body = Vec::new();
        loop {
            match d.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => interrupted += 1,
                Err(e) => panic!("{}", e),
            }
        }
        assert_eq!(body, b"hello");
        assert!(interrupted >= 5, "{}", interrupted);
    }
}
