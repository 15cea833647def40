//! `MinorUnits`: a signed quantity of money in integer minor units (cents for USD), and `Money`:
//! minor units with the scale that says how to show them. Balances, entry amounts and the
//! numbers an `InsufficientFunds` error carries are these, never bare `i64` and never `f64`.

use std::fmt;

use rust_decimal::Decimal;

/// Integer minor units. Signed, because a balance's movement is (a debit moves it down); the
/// ledger's `CHECK`s keep stored amounts positive and balances non-negative. Arithmetic is
/// checked: there is no `Add` that could wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MinorUnits(i64);

impl MinorUnits {
    pub const ZERO: MinorUnits = MinorUnits(0);
    pub const MAX: MinorUnits = MinorUnits(i64::MAX);

    pub const fn new(minor: i64) -> MinorUnits {
        MinorUnits(minor)
    }

    pub const fn get(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: MinorUnits) -> Option<MinorUnits> {
        self.0.checked_add(other.0).map(MinorUnits)
    }

    pub fn checked_sub(self, other: MinorUnits) -> Option<MinorUnits> {
        self.0.checked_sub(other.0).map(MinorUnits)
    }

    pub fn checked_neg(self) -> Option<MinorUnits> {
        self.0.checked_neg().map(MinorUnits)
    }

    /// With the currency's scale, to be shown.
    pub fn at_scale(self, scale: u32) -> Money {
        Money { minor: self, scale }
    }
}

impl From<i64> for MinorUnits {
    fn from(minor: i64) -> MinorUnits {
        MinorUnits(minor)
    }
}

impl From<MinorUnits> for i64 {
    fn from(m: MinorUnits) -> i64 {
        m.0
    }
}

impl fmt::Display for MinorUnits {
    /// The bare number of minor units, as stored and as hashed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Minor units and the currency's scale (its number of fractional digits): enough to show the
/// amount as the API does, so an error can carry it and the HTTP edge format it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    pub minor: MinorUnits,
    pub scale: u32,
}

impl fmt::Display for Money {
    /// Exactly `scale` fractional digits: `5000.00`, `0.01`, `1200` at scale 0.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = Decimal::new(self.minor.get(), self.scale);
        d.rescale(self.scale);
        fmt::Display::fmt(&d, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_shows_exactly_scale_digits() {
        // The API's money text: the scale's digits, zero padded, none at scale 0.
        assert_eq!(MinorUnits::new(500_000).at_scale(2).to_string(), "5000.00");
        assert_eq!(MinorUnits::new(1).at_scale(2).to_string(), "0.01");
        assert_eq!(MinorUnits::ZERO.at_scale(8).to_string(), "0.00000000");
        assert_eq!(MinorUnits::new(1200).at_scale(0).to_string(), "1200");
        assert_eq!(
            MinorUnits::MAX.at_scale(2).to_string(),
            "92233720368547758.07"
        );
    }

    #[test]
    fn arithmetic_is_checked() {
        // Overflow is a `None`, never a wrapped balance.
        assert_eq!(MinorUnits::MAX.checked_add(MinorUnits::new(1)), None);
        assert_eq!(MinorUnits::new(i64::MIN).checked_neg(), None);
        assert_eq!(
            MinorUnits::new(5).checked_sub(MinorUnits::new(7)),
            Some(MinorUnits::new(-2))
        );
    }
}
