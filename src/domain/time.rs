//! Timestamps: RFC 3339 UTC with microseconds, stored as text in the same fixed format so that
//! text order is time order.

use chrono::{DateTime, SecondsFormat, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    pub fn from_datetime(dt: DateTime<Utc>) -> Timestamp {
        // Truncated to microseconds so that what we store is exactly what we show.
        let micros = dt.timestamp_micros();
        Timestamp(DateTime::from_timestamp_micros(micros).unwrap_or(dt))
    }

    pub fn from_micros(micros: i64) -> Option<Timestamp> {
        DateTime::from_timestamp_micros(micros).map(Timestamp)
    }

    /// Parses any RFC 3339 timestamp (any offset), normalised to UTC microseconds.
    pub fn parse(s: &str) -> Result<Timestamp, String> {
        DateTime::parse_from_rfc3339(s.trim())
            .map(|dt| Timestamp::from_datetime(dt.with_timezone(&Utc)))
            .map_err(|_| {
                let shown: String = s.chars().take(40).collect();
                format!("{shown:?} is not an RFC 3339 timestamp such as \"2026-01-07T06:26:46.417546Z\"")
            })
    }

    /// The stored and shown form: `2026-01-07T06:26:46.417546Z`.
    pub fn to_text(self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    /// Reads a stored timestamp. Stored text was written by `to_text`, so this cannot fail
    /// unless the file was edited by hand; then the epoch is a visible, harmless answer.
    pub fn from_stored(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap_or(Timestamp(DateTime::UNIX_EPOCH))
    }

    pub fn micros(self) -> i64 {
        self.0.timestamp_micros()
    }

    pub fn datetime(self) -> DateTime<Utc> {
        self.0
    }

    pub fn plus_micros(self, us: i64) -> Timestamp {
        Timestamp(self.0 + chrono::Duration::microseconds(us))
    }

    pub fn plus_millis(self, ms: i64) -> Timestamp {
        Timestamp(self.0 + chrono::Duration::milliseconds(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_microseconds() {
        let t = Timestamp::parse("2026-01-07T06:26:46.417546Z").unwrap();
        assert_eq!(t.to_text(), "2026-01-07T06:26:46.417546Z");
        let t = Timestamp::parse("2026-01-07T08:26:46+02:00").unwrap();
        assert_eq!(t.to_text(), "2026-01-07T06:26:46.000000Z");
        assert!(Timestamp::parse("yesterday").is_err());
        assert!(Timestamp::parse("2026-13-07T06:26:46Z").is_err());
    }

    #[test]
    fn text_order_is_time_order() {
        let a = Timestamp::parse("2026-01-07T06:26:46.9Z").unwrap();
        let b = Timestamp::parse("2026-01-07T06:26:47Z").unwrap();
        assert!(a < b && a.to_text() < b.to_text());
    }
}
