//! Users: creating them (with their one wallet), finding them, listing them for staff.

use super::tokens::{store_token, IssuedToken};
use crate::domain::{username_key, Email, Timestamp, Username};
use crate::error::AppError;
use crate::store::{lock_for_transaction, LockClass, Row, Sql};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub is_staff: bool,
    pub date_joined: Timestamp,
}

const USER_COLUMNS: &str = "id, username, email, first_name, last_name, is_staff, date_joined";

fn user_from_row(r: &Row) -> Result<User, AppError> {
    Ok(User {
        id: r.get(0)?,
        username: r.get(1)?,
        email: r.get(2)?,
        first_name: r.get(3)?,
        last_name: r.get(4)?,
        is_staff: r.get(5)?,
        date_joined: r.get(6)?,
    })
}

pub struct NewUser {
    pub username: Username,
    pub email: Email,
    pub password_hash: String,
    pub first_name: String,
    pub last_name: String,
    pub is_staff: bool,
}

/// Creates the user and its one wallet (and a first token, when given) in the caller's
/// transaction.
pub fn create_user(
    conn: &dyn Sql,
    now: Timestamp,
    u: &NewUser,
    token: Option<&IssuedToken>,
) -> Result<User, AppError> {
    // Two registrations of one name (or email) at once: the second waits, then finds it taken.
    // Always the username first, so that two registrations never wait on each other in turn.
    lock_for_transaction(conn, LockClass::Username, &u.username.key())?;
    lock_for_transaction(conn, LockClass::Email, &u.email.key())?;
    let taken = |sql: &str, key: String| -> Result<bool, AppError> {
        Ok(conn.query_opt(sql, &[&key])?.is_some())
    };
    if taken(
        "SELECT 1 FROM users WHERE username_key = ?1",
        u.username.key(),
    )? {
        return Err(AppError::UsernameTaken);
    }
    if taken("SELECT 1 FROM users WHERE email_key = ?1", u.email.key())? {
        return Err(AppError::EmailTaken);
    }
    let user_id: i64 = conn
        .query_one(
            "INSERT INTO users (username, username_key, email, email_key, password_hash, first_name, last_name,
                 is_staff, date_joined) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING id",
            &[
                &u.username.as_str(),
                &u.username.key(),
                &u.email.as_str(),
                &u.email.key(),
                &u.password_hash,
                &u.first_name,
                &u.last_name,
                &u.is_staff,
                &now,
            ],
        )?
        .get(0)?;
    // A wallet starts with a zero balance in the ledger's currency (the one `settings`
    // records), which the nightly snapshot covers from the first night, as part 1 did; other
    // currencies' balances come with their first credit (`ledger::entries`). Its "last
    // snapshot" says 0 just before it existed: an entry stamped at the creation instant is
    // after it, and so counted by the first real snapshot.
    let key: i64 = conn
        .query_one(
            "INSERT INTO wallets (id, user_id, created_at) VALUES (?1, ?2, ?3) RETURNING key",
            &[&uuid::Uuid::new_v4().to_string(), &user_id, &now],
        )?
        .get(0)?;
    conn.execute(
        "INSERT INTO balances (wallet_key, currency, last_balance_update)
         SELECT ?1, currency, ?2 FROM settings WHERE id = 1",
        &[&key, &now.plus_micros(-1)],
    )?;
    if let Some(t) = token {
        store_token(conn, now, user_id, t)?;
    }
    find_user(conn, user_id)
}

pub fn find_user(conn: &dyn Sql, id: i64) -> Result<User, AppError> {
    conn.query_opt(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
        &[&id],
    )?
    .as_ref()
    .map(user_from_row)
    .transpose()?
    .ok_or(AppError::NotFound("user"))
}

/// The user and stored password hash for a login attempt; `username` as typed, compared by its
/// key.
pub fn find_login(conn: &dyn Sql, username: &str) -> Result<Option<(User, String)>, AppError> {
    conn.query_opt(
        &format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE username_key = ?1"),
        &[&username_key(username)],
    )?
    .map(|r| Ok((user_from_row(&r)?, r.get(7)?)))
    .transpose()
}

/// Users whose username or email contains `search` (case-insensitive), by id.
pub fn list_users(
    conn: &dyn Sql,
    search: Option<&str>,
    limit: u32,
    offset: u32,
) -> Result<(i64, Vec<User>), AppError> {
    let like = |s: String| {
        let escaped = s
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    };
    // Usernames are searched by their key, so `ＡＬＩ` finds `alice` as a login would. Both
    // columns hold folded text, so `LIKE` finds the same rows on an engine where it is
    // case-sensitive.
    let name_pattern = search.map(|s| like(username_key(s)));
    let email_pattern = search.map(|s| like(s.to_lowercase()));
    // No search is no filter: both patterns are NULL together.
    let filter = "(CAST(?1 AS TEXT) IS NULL OR username_key LIKE ?1 ESCAPE '\\'
                   OR email_key LIKE ?2 ESCAPE '\\')";
    let count: i64 = conn
        .query_one(
            &format!("SELECT count(*) FROM users WHERE {filter}"),
            &[&name_pattern, &email_pattern],
        )?
        .get(0)?;
    let users = conn
        .query(
            &format!(
                "SELECT {USER_COLUMNS} FROM users WHERE {filter} ORDER BY id LIMIT ?3 OFFSET ?4"
            ),
            &[&name_pattern, &email_pattern, &limit, &offset],
        )?
        .iter()
        .map(user_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((count, users))
}
