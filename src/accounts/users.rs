//! Users: creating them (with their one wallet), finding them, listing them for staff.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::tokens::{store_token, IssuedToken};
use crate::domain::{username_key, Email, Timestamp, Username};
use crate::error::AppError;

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

fn user_from_row(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        username: r.get(1)?,
        email: r.get(2)?,
        first_name: r.get(3)?,
        last_name: r.get(4)?,
        is_staff: r.get(5)?,
        date_joined: Timestamp::from_stored(&r.get::<_, String>(6)?),
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
    conn: &Connection,
    now: Timestamp,
    u: &NewUser,
    token: Option<&IssuedToken>,
) -> Result<User, AppError> {
    let taken = |sql: &str, key: String| -> Result<bool, AppError> {
        Ok(conn
            .prepare_cached(sql)?
            .query_row([key], |_| Ok(()))
            .optional()?
            .is_some())
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
    conn.prepare_cached(
        "INSERT INTO users (username, username_key, email, email_key, password_hash, first_name, last_name,
             is_staff, date_joined) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        u.username.as_str(),
        u.username.key(),
        u.email.as_str(),
        u.email.key(),
        u.password_hash,
        u.first_name,
        u.last_name,
        u.is_staff,
        now.to_text()
    ])?;
    let user_id = conn.last_insert_rowid();
    // A new wallet's "last snapshot" says 0 just before it existed: an entry stamped at the
    // creation instant (same batch) is after it, and so counted by the first real snapshot.
    conn.prepare_cached(
        "INSERT INTO wallets (id, user_id, last_balance_update, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![uuid::Uuid::new_v4().to_string(), user_id, now.plus_micros(-1).to_text(), now.to_text()])?;
    if let Some(t) = token {
        store_token(conn, now, user_id, t)?;
    }
    find_user(conn, user_id)
}

pub fn find_user(conn: &Connection, id: i64) -> Result<User, AppError> {
    conn.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))?
        .query_row([id], user_from_row)
        .optional()?
        .ok_or(AppError::NotFound("user"))
}

/// The user and stored password hash for a login attempt; `username` as typed, compared by its
/// key.
pub fn find_login(conn: &Connection, username: &str) -> Result<Option<(User, String)>, AppError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {USER_COLUMNS}, password_hash FROM users WHERE username_key = ?1"
        ))?
        .query_row([username_key(username)], |r| {
            Ok((user_from_row(r)?, r.get(7)?))
        })
        .optional()?)
}

/// Users whose username or email contains `search` (case-insensitive), by id.
pub fn list_users(
    conn: &Connection,
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
    // Usernames are searched by their key, so `ＡＬＩ` finds `alice` as a login would.
    let name_pattern = search.map(|s| like(username_key(s)));
    let email_pattern = search.map(|s| like(s.to_lowercase()));
    let filter = "(:name IS NULL OR username_key LIKE :name ESCAPE '\\'
                   OR email_key LIKE :email ESCAPE '\\')";
    let count: i64 = conn
        .prepare_cached(&format!("SELECT count(*) FROM users WHERE {filter}"))?
        .query_row(
            rusqlite::named_params! {":name": name_pattern, ":email": email_pattern},
            |r| r.get(0),
        )?;
    let users = conn
        .prepare_cached(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE {filter} ORDER BY id LIMIT :limit OFFSET :offset"
        ))?
        .query_map(
            rusqlite::named_params! {
                ":name": name_pattern, ":email": email_pattern, ":limit": limit, ":offset": offset,
            },
            user_from_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((count, users))
}
