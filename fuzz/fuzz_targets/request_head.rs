//! Fuzzes the request-head parser (`httparse` inside the vendored tiny_http) and the framing
//! check that refuses ambiguous `Content-Length` / `Transfer-Encoding`. Whatever the bytes, it
//! must not panic; a head it accepts must lie within the input and parse again to the same
//! length on its own.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tiny_http::check_request_head;

fuzz_target!(|data: &[u8]| {
    for headers_max in [0, 1, 100] {
        match check_request_head(data, headers_max) {
            Ok(Some(len)) => {
                assert!(len <= data.len());
                assert_eq!(check_request_head(&data[..len], headers_max), Ok(Some(len)));
            }
            Ok(None) => {}
            Err(status) => assert!(status == 400 || status == 431),
        }
    }
});
