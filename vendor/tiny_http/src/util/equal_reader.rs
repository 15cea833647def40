use std::io::Read;
use std::io::Result as IoResult;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A `Reader` that reads exactly the number of bytes from a sub-reader.
///
/// If the limit is reached, it returns EOF. If the limit is not reached
/// when the destructor is called, the remaining bytes will be read and
/// thrown away.
pub struct EqualReader<R>
where
    R: Read,
{
    reader: R,
    size: usize,
    // wallet patch: set when the body could not be read or drained to its end, so that the
    // connection closes (upstream sent this signal into a channel whose receiver was dropped)
    must_close: Arc<AtomicBool>,
}

impl<R> EqualReader<R>
where
    R: Read,
{
    pub fn new(reader: R, size: usize, must_close: Arc<AtomicBool>) -> EqualReader<R> {
        EqualReader {
            reader,
            size,
            must_close,
        }
    }

    fn close_connection(&self) {
        self.must_close.store(true, Ordering::Release);
    }
}

impl<R> Read for EqualReader<R>
where
    R: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if self.size == 0 {
            return Ok(0);
        }

        let buf = if buf.len() < self.size {
            buf
        } else {
            &mut buf[..self.size]
        };

        match self.reader.read(buf) {
            Ok(0) if !buf.is_empty() => {
                // the client hung up before the end of its body
                self.close_connection();
                Ok(0)
            }
            Ok(len) => {
                self.size -= len;
                Ok(len)
            }
            Err(e) => {
                self.close_connection();
                Err(e)
            }
        }
    }
}

impl<R> Drop for EqualReader<R>
where
    R: Read,
{
    fn drop(&mut self) {
        // wallet patch: upstream allocated `vec![0; remaining]` to drain an unread body, so a
        // request declaring `Content-Length: 99999999999` aborted the whole process on the
        // failed allocation. Drain through a small buffer, and past DRAIN_BYTES_MAX give up
        // and close the connection instead of reading a body nobody wants.
        const DRAIN_BYTES_MAX: usize = 1 << 20;
        let mut remaining_to_read = self.size;
        if remaining_to_read == 0 || self.must_close.load(Ordering::Acquire) {
            return;
        }
        if remaining_to_read > DRAIN_BYTES_MAX {
            self.close_connection();
            return;
        }
        let mut buf = [0u8; 8192];
        // Nor drain for long: a client dripping its body would hold the thread that drops
        // the request (an HTTP worker) at the client's pace. Past the budget, close instead.
        let drain_until = std::time::Instant::now() + std::time::Duration::from_millis(100);

        while remaining_to_read > 0 {
            if std::time::Instant::now() > drain_until {
                self.close_connection();
                return;
            }
            let want = remaining_to_read.min(buf.len());
            let buf = &mut buf[..want];

            match self.reader.read(buf) {
                Err(_) | Ok(0) => {
                    self.close_connection();
                    break;
                }
                Ok(other) => {
                    remaining_to_read -= other;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EqualReader;
    use std::io::Read;

    #[test]
    fn test_limit() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let mut equal_reader = EqualReader::new(org_reader.by_ref(), 5, Default::default());

            let mut string = String::new();
            equal_reader.read_to_string(&mut string).unwrap();
            assert_eq!(string, "hello");
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }

    #[test]
    fn test_not_enough() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let mut equal_reader = EqualReader::new(org_reader.by_ref(), 5, Default::default());

            let mut vec = [0];
            equal_reader.read_exact(&mut vec).unwrap();
            assert_eq!(vec[0], b'h');
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }
}
