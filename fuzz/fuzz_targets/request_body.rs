//! Fuzzes the money routes' body parser exactly as the handlers call it: every `MoneyRoute`,
//! with and without an `Idempotency-Key`, plus the amount parser on the input as UTF-8.
//! `parse_money_body` promises never to panic, whatever the bytes; anything it accepts must be
//! within the limits checked below.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wallet::domain::{Amount, Currency, METADATA_BYTES_MAX, REFERENCE_CHARS_MAX};
use wallet::http::handlers::{parse_money_body, MoneyRoute};
use wallet::http::request::Incoming;

fuzz_target!(|data: &[u8]| {
    let currency = Currency::new("USD", 2, 1_000_000_000).expect("the default currency");
    for route in [
        MoneyRoute::Deposit,
        MoneyRoute::Withdraw,
        MoneyRoute::Transfer,
    ] {
        for key in [None, Some("fuzz-key")] {
            let rq = Incoming::for_body(Some("application/json"), key, data.to_vec());
            if let Ok(body) = parse_money_body(&rq, route, &wallet::domain::Currencies::single(currency.clone())) {
                let m = &body.movement;
                assert!(m.amount.minor() > 0 && m.amount.minor() <= currency.amount_minor_max);
                let chars = m.reference.as_str().chars().count();
                assert!((1..=REFERENCE_CHARS_MAX).contains(&chars));
                assert!(m.metadata.as_str().len() <= METADATA_BYTES_MAX);
                assert_eq!(body.to.is_some(), route == MoneyRoute::Transfer);
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(amount) = Amount::parse_text(text, &currency) {
            assert!(amount.minor() > 0 && amount.minor() <= currency.amount_minor_max);
            // What is accepted formats back to a value that parses to the same amount.
            let again = Amount::parse_text(&currency.format(amount.minor()), &currency);
            assert_eq!(again.map(Amount::minor), Ok(amount.minor()));
        }
    }
});
