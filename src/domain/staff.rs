//! What staff send when they act: why, and how a withdrawal of unknown outcome ended.

/// Most characters in a staff action's reason.
pub const STAFF_REASON_CHARS_MAX: usize = 500;

/// Why a staff user acted, for the audit log: 1 to 500 characters, not all blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffReason(String);

impl StaffReason {
    pub fn parse(s: &str) -> Result<StaffReason, String> {
        if s.trim().is_empty() {
            return Err("must not be blank".into());
        }
        let chars = s.chars().count();
        if chars > STAFF_REASON_CHARS_MAX {
            return Err(format!(
                "must be at most {STAFF_REASON_CHARS_MAX} characters, not {chars}"
            ));
        }
        Ok(StaffReason(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How staff settle a withdrawal whose payout outcome is unknown, after asking the payout
/// service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayoutResolution {
    /// The payout service paid it.
    Succeeded,
    /// It did not pay: the withdrawal fails and is refunded.
    Failed,
}

impl PayoutResolution {
    pub fn parse(s: &str) -> Result<PayoutResolution, String> {
        match s {
            "succeeded" => Ok(PayoutResolution::Succeeded),
            "failed" => Ok(PayoutResolution::Failed),
            _ => Err(format!(
                "must be \"succeeded\" or \"failed\", not {:?}",
                s.chars().take(40).collect::<String>()
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PayoutResolution::Succeeded => "succeeded",
            PayoutResolution::Failed => "failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_bounds() {
        assert!(StaffReason::parse("x").is_ok());
        assert!(StaffReason::parse(&"é".repeat(500)).is_ok());
        let err = StaffReason::parse(&"é".repeat(501)).unwrap_err();
        assert!(err.contains("501"), "{err}");
        assert!(StaffReason::parse("").is_err());
        assert!(StaffReason::parse(" \n\t").is_err());
    }

    #[test]
    fn resolutions() {
        assert_eq!(
            PayoutResolution::parse("succeeded"),
            Ok(PayoutResolution::Succeeded)
        );
        assert_eq!(
            PayoutResolution::parse("failed"),
            Ok(PayoutResolution::Failed)
        );
        for bad in ["SUCCEEDED", "paid", "", " failed"] {
            assert!(PayoutResolution::parse(bad).is_err(), "{bad}");
        }
        for r in [PayoutResolution::Succeeded, PayoutResolution::Failed] {
            assert_eq!(PayoutResolution::parse(r.as_str()), Ok(r));
        }
    }
}
