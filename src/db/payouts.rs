//! What the payout worker reads besides the withdrawals themselves.

use crate::error::AppError;
use crate::store::Sql;

/// The user who owns the wallet `wallet_id` (its public id), named in the payout call.
pub fn wallet_owner(conn: &dyn Sql, wallet_id: &str) -> Result<i64, AppError> {
    conn.query_one("SELECT user_id FROM wallets WHERE id = ?1", &[&wallet_id])?
        .get(0)
}
