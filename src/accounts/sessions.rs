//! Console sessions: the web console's logins, kept apart from API tokens (their own table,
//! `console_sessions`) so that a cookie can never be used as a token nor a token as a cookie.
//! A session's secret is made like a token's (256 random bits, `new_token`), goes to the
//! browser once as a cookie, and only its SHA-256 is stored. Each request reads its session
//! from the database (no cache): a logout on any process is seen by every process at once.

use crate::domain::Timestamp;
use crate::error::AppError;
use crate::store::Sql;

use super::{AuthUser, IssuedToken};

/// Console sessions a user may have open at once; a login past it revokes the oldest.
pub const CONSOLE_SESSIONS_PER_USER_MAX: i64 = 20;

/// Stores a new session of `user_id`. The user's expired and revoked sessions go (nothing
/// needs them: a cookie naming one is refused either way), and the oldest open ones past
/// `CONSOLE_SESSIONS_PER_USER_MAX` are revoked, so the table holds a bounded number of rows
/// per user however often they log in.
pub fn store_console_session(
    conn: &dyn Sql,
    now: Timestamp,
    user_id: i64,
    s: &IssuedToken,
) -> Result<(), AppError> {
    conn.execute(
        "DELETE FROM console_sessions
         WHERE user_id = ?1 AND (revoked_at IS NOT NULL OR expires_at <= ?2)",
        &[&user_id, &now],
    )?;
    conn.execute(
        "INSERT INTO console_sessions (user_id, session_hash, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4)",
        &[&user_id, &s.hash, &now, &s.expires_at],
    )?;
    conn.execute(
        "UPDATE console_sessions SET revoked_at = ?2
         WHERE user_id = ?1 AND revoked_at IS NULL AND id NOT IN (
             SELECT id FROM console_sessions WHERE user_id = ?1 AND revoked_at IS NULL
             ORDER BY id DESC LIMIT ?3)",
        &[&user_id, &now, &CONSOLE_SESSIONS_PER_USER_MAX],
    )?;
    Ok(())
}

pub fn revoke_console_session(
    conn: &dyn Sql,
    now: Timestamp,
    hash: &[u8; 32],
) -> Result<(), AppError> {
    conn.execute(
        "UPDATE console_sessions SET revoked_at = ?2 WHERE session_hash = ?1 AND revoked_at IS NULL",
        &[hash, &now],
    )?;
    Ok(())
}

/// The user behind a console session that is known, unrevoked and unexpired; looked up by the
/// secret's SHA-256, as tokens are. `AuthUser::token_hash` holds the session's hash.
pub fn authenticate_console_session(
    conn: &dyn Sql,
    now: Timestamp,
    hash: &[u8; 32],
) -> Result<AuthUser, AppError> {
    let row = conn.query_opt(
        "SELECT s.user_id, u.is_staff, w.key, w.id, s.expires_at, s.revoked_at
         FROM console_sessions s JOIN users u ON u.id = s.user_id
         JOIN wallets w ON w.user_id = s.user_id
         WHERE s.session_hash = ?1",
        &[hash],
    )?;
    let Some(r) = row else {
        return Err(AppError::Unauthorized);
    };
    let expires_at: String = r.get(4)?;
    let revoked_at: Option<String> = r.get(5)?;
    if revoked_at.is_some() || expires_at <= now.to_text() {
        return Err(AppError::Unauthorized);
    }
    Ok(AuthUser {
        user_id: r.get(0)?,
        is_staff: r.get(1)?,
        wallet: crate::ledger::WalletRef {
            key: r.get(2)?,
            id: r.get(3)?,
        },
        token_hash: *hash,
    })
}
