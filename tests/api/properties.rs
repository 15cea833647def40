//! Property tests (issue 6) of the amount parser and of the money routes' body parser: the
//! exact functions the handlers run (`Amount::parse_text`, `parse_money_body`), on generated
//! and arbitrary input. Never a panic; anything accepted is a valid amount, reference and
//! metadata.

use proptest::prelude::*;
use serde_json::{Map, Value};
use wallet::domain::{Amount, Currencies, Currency, METADATA_BYTES_MAX, REFERENCE_CHARS_MAX};
use wallet::http::handlers::{parse_money_body, MoneyRoute};
use wallet::http::request::Incoming;

const ROUTES: [MoneyRoute; 3] = [
    MoneyRoute::Deposit,
    MoneyRoute::Withdraw,
    MoneyRoute::Transfer,
];

fn usd() -> Currency {
    Currency::new("USD", 2, 1_000_000_000).unwrap()
}

/// `^(0|[1-9][0-9]*)(\.[0-9]{1,2})?$`, by hand.
fn plain_decimal(text: &str) -> bool {
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(int)
        && (int == "0" || !int.starts_with('0'))
        && frac.is_none_or(|f| digits(f) && f.len() <= 2)
}

/// The value of a plain decimal text in cents, computed independently (None past u128).
fn cents(text: &str) -> Option<u128> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let mut v: u128 = int.parse().ok()?;
    v = v.checked_mul(100)?;
    let frac_cents: u128 = format!("{frac:0<2}").parse().ok()?;
    v.checked_add(frac_cents)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn format_then_parse_round_trips(scale in 0u32..=8, max_units in 1i64..=1_000_000_000, pick in any::<u64>(), edge in 0u8..4) {
        // For every scale and maximum, any minor amount in 1..=max formatted by
        // `Currency::format` parses back to itself; max + 1 is refused.
        let c = Currency::new("XTS", scale, max_units).unwrap();
        let max = c.amount_minor_max;
        let minor = match edge {
            0 => 1,
            1 => max,
            _ => 1 + (pick % max as u64) as i64,
        };
        let text = c.format(minor);
        let parsed = Amount::parse_text(&text, &c);
        prop_assert_eq!(parsed.map(Amount::minor), Ok(minor), "{}", text);
        prop_assert!(Amount::parse_text(&c.format(max + 1), &c).is_err());
    }

    #[test]
    fn usd_round_trips_over_its_whole_range(minor in 1i64..=100_000_000_000) {
        // The default currency: every cent amount from 0.01 to 1,000,000,000.00 round-trips.
        let c = usd();
        let text = c.format(minor);
        prop_assert_eq!(Amount::parse_text(&text, &c).map(Amount::minor), Ok(minor), "{}", text);
    }

    #[test]
    fn arbitrary_text_is_accepted_only_as_a_plain_decimal(
        text in prop_oneof![
            any::<String>(),
            "[0-9]{0,12}",
            "[-+ 0-9.eE,_x]{0,14}",
            "(0|[1-9][0-9]{0,10})(\\.[0-9]{0,3})?",
            "[0-9]{38,44}(\\.[0-9]{1,2})?",
            "[\\PC\\p{Nd}]{0,6}",
        ]
    ) {
        // `Amount::parse_text` never panics; it accepts a text exactly when it matches
        // ^(0|[1-9][0-9]*)(\.[0-9]{1,2})?$ with a value from 0.01 to the maximum, and then
        // the amount is that value in cents.
        let c = usd();
        let parsed = Amount::parse_text(&text, &c);
        let expected = if plain_decimal(&text) {
            cents(&text).filter(|v| (1..=c.amount_minor_max as u128).contains(v))
        } else {
            None
        };
        match (parsed, expected) {
            (Ok(a), Some(v)) => prop_assert_eq!(a.minor() as u128, v),
            (Err(_), None) => {}
            (got, want) => prop_assert!(false, "{:?}: got {:?}, expected {:?}", text, got, want),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_body_parser(
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            "\\{[\"a-z:0-9., \\[\\]{}-]{0,80}\\}".prop_map(String::into_bytes),
        ],
        key in proptest::option::of("[ -~]{0,8}"),
    ) {
        // Any bytes, with or without an Idempotency-Key: never a panic, and anything accepted
        // is within the limits.
        let c = usd();
        for route in ROUTES {
            let rq = Incoming::for_body(Some("application/json"), key.as_deref(), body.clone());
            check_accepted(parse_money_body(&rq, route, &Currencies::single(c.clone())), route, &c)?;
        }
    }

    #[test]
    fn generated_json_objects_are_parsed_within_the_limits(
        fields in proptest::collection::btree_map(field_name(), json_value(), 0..7),
    ) {
        // JSON objects over the money fields (and junk ones) with values of every JSON type:
        // never a panic, and an accepted body has 0 < amount <= max, a 1-255 character
        // reference, metadata of at most 4096 bytes, and what its route needs.
        let c = usd();
        let body = serde_json::to_vec(&Value::Object(fields.into_iter().collect::<Map<_, _>>())).unwrap();
        for route in ROUTES {
            let rq = Incoming::for_body(Some("application/json"), None, body.clone());
            check_accepted(parse_money_body(&rq, route, &Currencies::single(c.clone())), route, &c)?;
        }
    }
}

fn check_accepted(
    parsed: Result<wallet::http::handlers::MoneyBody, wallet::error::AppError>,
    route: MoneyRoute,
    c: &Currency,
) -> Result<(), TestCaseError> {
    let Ok(body) = parsed else { return Ok(()) };
    let m = &body.movement;
    prop_assert!(m.amount.minor() > 0 && m.amount.minor() <= c.amount_minor_max);
    let chars = m.reference.as_str().chars().count();
    prop_assert!(
        (1..=REFERENCE_CHARS_MAX).contains(&chars),
        "{:?}",
        m.reference
    );
    prop_assert!(m.metadata.as_str().len() <= METADATA_BYTES_MAX);
    let object = m.metadata.as_str().starts_with('{');
    prop_assert!(object, "metadata {:?}", m.metadata);
    prop_assert_eq!(body.to.is_some(), route == MoneyRoute::Transfer);
    if route != MoneyRoute::Withdraw {
        prop_assert!(body.scheduled_at.is_none());
    }
    Ok(())
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("amount".to_string()),
        4 => Just("reference".to_string()),
        2 => Just("metadata".to_string()),
        2 => Just("to_user_id".to_string()),
        2 => Just("to_username".to_string()),
        2 => Just("scheduled_at".to_string()),
        1 => "[a-z_]{0,12}",
        1 => any::<String>(),
    ]
}

/// A JSON number with its exact text (serde_json keeps it under `arbitrary_precision`).
fn json_number() -> impl Strategy<Value = Value> {
    "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,4})?([eE][-+]?[0-9]{1,3})?"
        .prop_map(|t| serde_json::from_str(&t).unwrap_or(Value::Null))
}

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "(0|[1-9][0-9]{0,10})(\\.[0-9]{0,3})?",
        "[a-zA-Z0-9 .+-]{0,20}",
        "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?Z",
        ".{250,260}",
        any::<String>(),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number(),
        any::<i64>().prop_map(Value::from),
        json_string().prop_map(Value::String),
        // Metadata near its 4096-byte bound.
        (4070usize..4120).prop_map(|n| {
            let mut m = Map::new();
            m.insert("k".into(), Value::String("x".repeat(n)));
            Value::Object(m)
        }),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One header field for the head properties: a token name and a printable ASCII value.
fn header_field() -> impl Strategy<Value = (String, String)> {
    ("[A-Za-z][A-Za-z0-9-]{0,20}", "[ -~]{0,40}")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_head_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        // Arbitrary bytes: refused (400, 431), incomplete, or a head that lies within them.
        match tiny_http::check_request_head(&bytes, 100) {
            Ok(Some(len)) => prop_assert!(len <= bytes.len()),
            Ok(None) => {}
            Err(status) => prop_assert!(status == 400 || status == 431),
        }
    }

    #[test]
    fn a_well_framed_head_is_accepted_whole_and_an_ambiguous_one_never(
        fields in proptest::collection::vec(header_field(), 0..20),
        lengths in proptest::collection::vec(0u32..100_000, 0..3),
        chunked in any::<bool>(),
    ) {
        // Any set of ordinary fields plus at most one plain Content-Length, or a lone
        // `chunked`, is accepted and ends exactly at the blank line; a second Content-Length
        // or both framings together is always refused.
        let fields: Vec<(String, String)> = fields
            .into_iter()
            .filter(|(n, _)| {
                !["content-length", "transfer-encoding", "host"]
                    .iter()
                    .any(|framing| n.eq_ignore_ascii_case(framing))
            })
            .collect();
        let mut head = String::from("POST /api/wallets/me/deposit HTTP/1.1\r\nHost: x\r\n");
        for (n, v) in &fields {
            head.push_str(&format!("{n}: {}\r\n", v.trim()));
        }
        for l in &lengths {
            head.push_str(&format!("Content-Length: {l}\r\n"));
        }
        if chunked {
            head.push_str("Transfer-Encoding: chunked\r\n");
        }
        head.push_str("\r\n");
        let framings = lengths.len() + usize::from(chunked);
        let with_body = format!("{head}BODY");
        let verdict = tiny_http::check_request_head(with_body.as_bytes(), 100);
        if framings <= 1 {
            prop_assert_eq!(verdict, Ok(Some(head.len())));
        } else {
            prop_assert_eq!(verdict, Err(400));
        }
    }
}
