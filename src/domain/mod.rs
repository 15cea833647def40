//! Types that can only hold valid values. Nothing here knows about HTTP or SQL.

mod amount;
mod money;
mod staff;
mod text;
mod time;

pub use amount::{Amount, AmountError, Currencies, Currency, AMOUNT_TEXT_CHARS_MAX};
pub use money::{MinorUnits, Money};
pub use staff::{PayoutResolution, StaffReason, STAFF_REASON_CHARS_MAX};
pub use text::{
    parse_name, username_key, Email, Metadata, Password, Reference, Username, METADATA_BYTES_MAX,
    PASSWORD_BYTES_MAX, REFERENCE_CHARS_MAX,
};
pub use time::Timestamp;

/// What kind of ledger entry a row is.
///
/// The kinds are spelled once, here. The SQL that lists them (`ledger::kinds`) is generated from
/// `ALL`, `is_credit` and `has_unique_reference`, and `ledger::invariants` tests that
/// `schema.sql` and `openapi.json` say the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Deposit,
    Withdrawal,
    TransferIn,
    TransferOut,
    Refund,
    /// Staff took back money an entry gave: a deposit, or a transfer's incoming half.
    ReversalOut,
    /// Staff gave back money an entry took: a paid withdrawal, or a transfer's outgoing half.
    ReversalIn,
}

impl EntryKind {
    pub const ALL: [EntryKind; 7] = [
        EntryKind::Deposit,
        EntryKind::Withdrawal,
        EntryKind::TransferIn,
        EntryKind::TransferOut,
        EntryKind::Refund,
        EntryKind::ReversalOut,
        EntryKind::ReversalIn,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            EntryKind::Deposit => "DEPOSIT",
            EntryKind::Withdrawal => "WITHDRAWAL",
            EntryKind::TransferIn => "TRANSFER_IN",
            EntryKind::TransferOut => "TRANSFER_OUT",
            EntryKind::Refund => "REFUND",
            EntryKind::ReversalOut => "REVERSAL_OUT",
            EntryKind::ReversalIn => "REVERSAL_IN",
        }
    }

    pub fn parse(s: &str) -> Option<EntryKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Credits add to the balance; debits subtract.
    pub const fn is_credit(self) -> bool {
        matches!(
            self,
            EntryKind::Deposit | EntryKind::TransferIn | EntryKind::Refund | EntryKind::ReversalIn
        )
    }

    /// An entry staff made to undo another (it names that entry in `reverses`).
    pub const fn is_reversal(self) -> bool {
        matches!(self, EntryKind::ReversalOut | EntryKind::ReversalIn)
    }

    /// A debit the wallet's owner starts, refused while the wallet is frozen. Staff taking
    /// money back (`REVERSAL_OUT`) is not one: freezing a wallet and reversing what it
    /// received is what staff do about fraud.
    pub const fn is_owners_debit(self) -> bool {
        !self.is_credit() && !matches!(self, EntryKind::ReversalOut)
    }

    /// The kind of entry that undoes one of this kind, or `None` when staff may not reverse
    /// it: a refund (its withdrawal is what would be reversed) or a reversal.
    pub const fn reversed_by(self) -> Option<EntryKind> {
        match self {
            EntryKind::Deposit | EntryKind::TransferIn => Some(EntryKind::ReversalOut),
            EntryKind::Withdrawal | EntryKind::TransferOut => Some(EntryKind::ReversalIn),
            EntryKind::Refund | EntryKind::ReversalOut | EntryKind::ReversalIn => None,
        }
    }

    /// The kinds whose reference a client chose, unique per wallet and kind (the partial index
    /// `entries_reference`). Incoming transfers carry the sender's reference and a refund its
    /// withdrawal's, so theirs repeat.
    pub const fn has_unique_reference(self) -> bool {
        matches!(
            self,
            EntryKind::Deposit | EntryKind::Withdrawal | EntryKind::TransferOut
        )
    }

    /// Every kind's name, in `ALL`'s order, separated by ", ": for messages that list them.
    pub fn names() -> String {
        Self::ALL.map(EntryKind::as_str).join(", ")
    }
}

/// The life of a hold: HELD until it is captured, voided or expired, exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldStatus {
    Held,
    Captured,
    Voided,
    Expired,
}

impl HoldStatus {
    pub const ALL: [HoldStatus; 4] = [
        HoldStatus::Held,
        HoldStatus::Captured,
        HoldStatus::Voided,
        HoldStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Held => "HELD",
            HoldStatus::Captured => "CAPTURED",
            HoldStatus::Voided => "VOIDED",
            HoldStatus::Expired => "EXPIRED",
        }
    }

    pub fn parse(s: &str) -> Option<HoldStatus> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The life of a scheduled withdrawal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithdrawalStatus {
    Pending,
    Processing,
    Succeeded,
    Failed,
    Cancelled,
}

impl WithdrawalStatus {
    pub const ALL: [WithdrawalStatus; 5] = [
        WithdrawalStatus::Pending,
        WithdrawalStatus::Processing,
        WithdrawalStatus::Succeeded,
        WithdrawalStatus::Failed,
        WithdrawalStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WithdrawalStatus::Pending => "PENDING",
            WithdrawalStatus::Processing => "PROCESSING",
            WithdrawalStatus::Succeeded => "SUCCEEDED",
            WithdrawalStatus::Failed => "FAILED",
            WithdrawalStatus::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<WithdrawalStatus> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether a withdrawal in this status may move to `next`. A PENDING withdrawal is taken
    /// (PROCESSING; SUCCEEDED at once when there is no payout service; FAILED when the balance
    /// is short at its time) or cancelled; a PROCESSING one ends SUCCEEDED or FAILED. The other
    /// three are final.
    pub const fn may_become(self, next: WithdrawalStatus) -> bool {
        use WithdrawalStatus::*;
        matches!(
            (self, next),
            (Pending, Processing | Succeeded | Failed | Cancelled)
                | (Processing, Succeeded | Failed)
        )
    }

    /// Asserts, in release builds too, that `self → next` is allowed: every status change goes
    /// through here, so a bug can't make a paid withdrawal pending again or refund twice.
    pub fn assert_may_become(self, next: WithdrawalStatus) {
        assert!(
            self.may_become(next),
            "withdrawal status {} may not become {}",
            self.as_str(),
            next.as_str()
        );
    }

    pub const fn is_final(self) -> bool {
        matches!(
            self,
            WithdrawalStatus::Succeeded | WithdrawalStatus::Failed | WithdrawalStatus::Cancelled
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withdrawal_transitions_are_the_documented_ones() {
        // The state machine in full: every pair of statuses, allowed or not.
        use WithdrawalStatus::*;
        let allowed = [
            (Pending, Processing),
            (Pending, Succeeded),
            (Pending, Failed),
            (Pending, Cancelled),
            (Processing, Succeeded),
            (Processing, Failed),
        ];
        for from in WithdrawalStatus::ALL {
            for to in WithdrawalStatus::ALL {
                assert_eq!(
                    from.may_become(to),
                    allowed.contains(&(from, to)),
                    "{} -> {}",
                    from.as_str(),
                    to.as_str()
                );
            }
            // A final status goes nowhere.
            if from.is_final() {
                assert!(WithdrawalStatus::ALL.iter().all(|t| !from.may_become(*t)));
            }
        }
    }

    #[test]
    #[should_panic(expected = "withdrawal status SUCCEEDED may not become PENDING")]
    fn a_forbidden_transition_panics() {
        // The assertion is not debug-only: it panics in any build.
        WithdrawalStatus::Succeeded.assert_may_become(WithdrawalStatus::Pending);
    }

    #[test]
    fn entry_kinds_are_named_once() {
        // `parse` inverts `as_str`, and `names` lists them in `ALL`'s order.
        for k in EntryKind::ALL {
            assert_eq!(EntryKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(
            EntryKind::names(),
            "DEPOSIT, WITHDRAWAL, TRANSFER_IN, TRANSFER_OUT, REFUND, REVERSAL_OUT, REVERSAL_IN"
        );
    }
}
