//! Types that can only hold valid values. Nothing here knows about HTTP or SQL.

mod amount;
mod staff;
mod text;
mod time;

pub use amount::{Amount, AmountError, Currency, AMOUNT_TEXT_CHARS_MAX};
pub use staff::{PayoutResolution, StaffReason, STAFF_REASON_CHARS_MAX};
pub use text::{
    parse_name, username_key, Email, Metadata, Password, Reference, Username, METADATA_BYTES_MAX,
    PASSWORD_BYTES_MAX, REFERENCE_CHARS_MAX,
};
pub use time::Timestamp;

/// What kind of ledger entry a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Deposit,
    Withdrawal,
    TransferIn,
    TransferOut,
    Refund,
}

impl EntryKind {
    pub const ALL: [EntryKind; 5] = [
        EntryKind::Deposit,
        EntryKind::Withdrawal,
        EntryKind::TransferIn,
        EntryKind::TransferOut,
        EntryKind::Refund,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Deposit => "DEPOSIT",
            EntryKind::Withdrawal => "WITHDRAWAL",
            EntryKind::TransferIn => "TRANSFER_IN",
            EntryKind::TransferOut => "TRANSFER_OUT",
            EntryKind::Refund => "REFUND",
        }
    }

    pub fn parse(s: &str) -> Option<EntryKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Credits add to the balance; debits subtract.
    pub fn is_credit(self) -> bool {
        matches!(
            self,
            EntryKind::Deposit | EntryKind::TransferIn | EntryKind::Refund
        )
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
}
