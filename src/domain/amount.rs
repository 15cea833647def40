//! `Amount`: a positive quantity of money in integer minor units, parsed exactly from the
//! text the client sent (a JSON string or the literal text of a JSON number), never via `f64`.

use std::fmt;
use std::str::FromStr;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde_json::Value;

use super::money::{MinorUnits, Money};

/// Longest amount text accepted before any parsing: far above any real amount, and it keeps
/// a hostile million-digit number from reaching the decimal parser.
pub const AMOUNT_TEXT_CHARS_MAX: usize = 40;
// Every amount that fits i64 in minor units is short enough to be read: 19 digits and a point.
const _: () = assert!(AMOUNT_TEXT_CHARS_MAX >= 20);
// One unit at the largest scale fits i64 (`Currency::new` then checks the configured maximum
// times 10^scale), and it matches schema.sql's `CHECK (scale BETWEEN 0 AND 8)` (tested in
// `ledger::invariants`).
const _: () = assert!(10i64.checked_pow(Currency::SCALE_MAX).is_some());
const _: () = assert!(Currency::SCALE_MAX == 8);

/// The deployment's currency: its code and how many fractional digits it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currency {
    pub code: String,
    pub scale: u32,
    /// Largest amount one request may move, in minor units.
    pub amount_minor_max: i64,
}

impl Currency {
    /// The largest scale we support: 10^8 minor units per unit still leaves ~92 billion units in i64.
    pub const SCALE_MAX: u32 = 8;

    pub fn new(code: &str, scale: u32, amount_max_units: i64) -> Result<Currency, String> {
        if !Self::is_code(code) {
            return Err(format!(
                "a currency code is 3 to 8 uppercase letters (USD, EUR, USDC), got {code:?}"
            ));
        }
        if scale > Self::SCALE_MAX {
            return Err(format!(
                "currency scale must be 0 to {}, got {scale}",
                Self::SCALE_MAX
            ));
        }
        let amount_minor_max = 10i64
            .checked_pow(scale)
            .and_then(|f| amount_max_units.checked_mul(f))
            .filter(|m| *m > 0)
            .ok_or_else(|| {
                format!("amount maximum {amount_max_units} does not fit at scale {scale}")
            })?;
        Ok(Currency {
            code: code.to_string(),
            scale,
            amount_minor_max,
        })
    }

    /// 3 to 8 ASCII uppercase letters: ISO 4217 codes and the longer ones of tokens.
    pub fn is_code(code: &str) -> bool {
        (3..=8).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_uppercase())
    }

    /// Formats minor units as the API shows money: exactly `scale` fractional digits.
    pub fn format(&self, minor: impl Into<MinorUnits>) -> String {
        self.money(minor.into()).to_string()
    }

    /// Minor units of this currency, with the scale that shows them.
    pub fn money(&self, minor: MinorUnits) -> Money {
        minor.at_scale(self.scale)
    }
}

/// The deployment's currencies, the default first. Never empty, no code twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currencies(Vec<Currency>);

impl Currencies {
    /// Most currencies one deployment may list: each is a balance per wallet, a line of every
    /// wallet summary and of `/metrics`.
    pub const COUNT_MAX: usize = 32;

    /// One currency, the default.
    pub fn single(currency: Currency) -> Currencies {
        Currencies(vec![currency])
    }

    /// `USD:2,EUR:2,JPY:0`: codes with their scales, the first being the default.
    pub fn parse(spec: &str, amount_max_units: i64) -> Result<Currencies, String> {
        let mut list: Vec<Currency> = Vec::new();
        for item in spec.split(',') {
            let item = item.trim();
            let Some((code, scale)) = item.split_once(':') else {
                return Err(format!(
                    "{item:?} is not CODE:SCALE, as in USD:2,EUR:2,JPY:0"
                ));
            };
            let scale: u32 = scale
                .parse()
                .map_err(|_| format!("{item:?}: the scale must be a whole number from 0 to 8"))?;
            let currency = Currency::new(code, scale, amount_max_units)?;
            if list.iter().any(|c| c.code == currency.code) {
                return Err(format!("{code} is listed twice"));
            }
            list.push(currency);
        }
        if list.len() > Self::COUNT_MAX {
            return Err(format!(
                "{} currencies listed; at most {} are supported",
                list.len(),
                Self::COUNT_MAX
            ));
        }
        Ok(Currencies(list))
    }

    /// The currency of a request that names none.
    pub fn default_currency(&self) -> &Currency {
        &self.0[0]
    }

    pub fn get(&self, code: &str) -> Option<&Currency> {
        self.0.iter().find(|c| c.code == code)
    }

    /// The currency a request names (`None`: the default), or the message for its field.
    pub fn resolve(&self, code: Option<&str>) -> Result<&Currency, String> {
        match code {
            None => Ok(self.default_currency()),
            Some(code) => self.get(code).ok_or_else(|| {
                let listed: Vec<&str> = self.0.iter().map(|c| c.code.as_str()).collect();
                let shown: String = code.chars().take(16).collect();
                format!(
                    "{shown:?} is not a currency of this ledger; it has {}",
                    listed.join(", ")
                )
            }),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Currency> {
        self.0.iter()
    }
}

/// A strictly positive amount of money, at most the configured maximum. It cannot be built
/// any other way than by `parse`, so a use case can never receive zero or a negative amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount(i64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmountError(pub String);

impl fmt::Display for AmountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Amount {
    /// Parses the JSON value of an `amount` field.
    pub fn parse(value: &Value, currency: &Currency) -> Result<Amount, AmountError> {
        match value {
            Value::String(s) => Self::parse_text(s, currency),
            // With serde_json's `arbitrary_precision`, a number keeps its exact source text.
            Value::Number(n) => Self::parse_text(&n.to_string(), currency),
            other => Err(AmountError(format!(
                "must be a decimal number or a string such as \"12.50\", got {}",
                json_kind(other)
            ))),
        }
    }

    /// Parses decimal text: digits, optionally a point and up to `scale` digits. No sign,
    /// exponent, spaces, separators, or leading zeros.
    pub fn parse_text(text: &str, currency: &Currency) -> Result<Amount, AmountError> {
        let shown: String = text.chars().take(AMOUNT_TEXT_CHARS_MAX).collect();
        let invalid = || {
            AmountError(format!(
                "{shown:?} is not a plain decimal amount such as \"12.50\""
            ))
        };
        if text.is_empty() || text.len() > AMOUNT_TEXT_CHARS_MAX {
            return Err(invalid());
        }
        let (int_part, frac_part) = match text.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (text, None),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(int_part) || frac_part.is_some_and(|f| !digits(f)) {
            return Err(invalid());
        }
        if int_part.len() > 1 && int_part.starts_with('0') {
            return Err(invalid());
        }
        let frac_digits = frac_part.map_or(0, str::len);
        if frac_digits > currency.scale as usize {
            return Err(AmountError(format!(
                "{shown:?} has more than {} fractional digits",
                currency.scale
            )));
        }
        let too_large = || {
            AmountError(format!(
                "{shown:?} is above the maximum of {}",
                currency.format(currency.amount_minor_max)
            ))
        };
        let decimal = Decimal::from_str(text).map_err(|_| too_large())?;
        let minor = decimal
            .checked_mul(Decimal::from(10i64.pow(currency.scale)))
            .and_then(|m| m.to_i64())
            .ok_or_else(too_large)?;
        if minor == 0 {
            return Err(AmountError("must be greater than zero".into()));
        }
        if minor > currency.amount_minor_max {
            return Err(too_large());
        }
        Ok(Amount(minor))
    }

    /// For amounts that come from the database, where the schema's `CHECK (amount > 0)` holds.
    pub fn from_minor(minor: i64) -> Option<Amount> {
        (minor > 0).then_some(Amount(minor))
    }

    pub fn minor(self) -> i64 {
        self.0
    }

    pub fn units(self) -> MinorUnits {
        MinorUnits::new(self.0)
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn usd() -> Currency {
        Currency::new("USD", 2, 1_000_000_000).unwrap()
    }

    fn parse_json(text: &str) -> Result<i64, AmountError> {
        let v: Value = serde_json::from_str(text).unwrap();
        Amount::parse(&v, &usd()).map(Amount::minor)
    }

    #[test]
    fn accepts_strings_and_exact_numbers() {
        // The contract's accepted forms, read exactly from their text.
        assert_eq!(parse_json(r#""12.50""#), Ok(1250));
        assert_eq!(parse_json("12.5"), Ok(1250));
        assert_eq!(parse_json("5000"), Ok(500_000));
        assert_eq!(parse_json(r#""0.01""#), Ok(1));
        assert_eq!(parse_json("0.1"), Ok(10));
        // 0.1 + 0.2 style float traps never arise: 0.29 is 29 cents, not 28.999.
        assert_eq!(parse_json("0.29"), Ok(29));
        assert_eq!(parse_json("1000000000.00"), Ok(100_000_000_000));
    }

    #[test]
    fn rejects_the_contracts_bad_forms() {
        for bad in [
            "1e3",
            r#""1e3""#,
            r#""-0""#,
            "-0",
            r#""NaN""#,
            r#"" 5""#,
            r#""5,00""#,
            "null",
            "true",
            "[1]",
            r#"{"a":1}"#,
            "0",
            r#""0.00""#,
            "-5",
            r#""+5""#,
            r#""5.""#,
            r#"".5""#,
            r#""""#,
            "1.001",
            r#""0x10""#,
            r#""05""#,
            r#""Infinity""#,
            r#""5 ""#,
            r#""١٢""#,
        ] {
            assert!(parse_json(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn the_maximum_is_inclusive() {
        // Boundary: the maximum itself is accepted, one minor unit more is not.
        assert!(parse_json(r#""1000000000.00""#).is_ok());
        assert!(parse_json(r#""1000000000.01""#).is_err());
        assert!(parse_json("99999999999999999999999999999999999999").is_err());
        let long = format!("\"{}\"", "9".repeat(AMOUNT_TEXT_CHARS_MAX + 1));
        assert!(parse_json(&long).is_err());
    }

    #[test]
    fn error_names_what_was_expected() {
        let err = Amount::parse(&json!(null), &usd()).unwrap_err();
        assert!(err.0.contains("got null"), "{}", err.0);
        let err = parse_json("1.001").unwrap_err();
        assert!(err.0.contains("more than 2 fractional digits"), "{}", err.0);
    }

    #[test]
    fn formats_with_exactly_scale_digits() {
        let c = usd();
        assert_eq!(c.format(500_000), "5000.00");
        assert_eq!(c.format(1), "0.01");
        assert_eq!(c.format(0), "0.00");
        let yen = Currency::new("JPY", 0, 1_000_000).unwrap();
        assert_eq!(yen.format(1200), "1200");
        assert!(Amount::parse_text("12.5", &yen).is_err());
    }

    #[test]
    fn currency_settings_are_checked() {
        assert!(Currency::new("usd", 2, 1).is_err());
        assert!(Currency::new("USD", 9, 1).is_err());
        assert!(Currency::new("USD", 8, i64::MAX).is_err());
    }
}
