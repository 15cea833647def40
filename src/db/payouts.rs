//! What the payout worker reads besides the withdrawals themselves.

use rusqlite::Connection;

use crate::error::AppError;

/// The user who owns the wallet `wallet_id` (its public id), named in the payout call.
pub fn wallet_owner(conn: &Connection, wallet_id: &str) -> Result<i64, AppError> {
    Ok(conn.query_row(
        "SELECT user_id FROM wallets WHERE id = ?1",
        [wallet_id],
        |r| r.get(0),
    )?)
}
