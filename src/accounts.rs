//! Accounts: registration, login tokens, authentication, and the guards around passwords
//! (argon2id behind a bounded gate, failed-login throttling). Nothing here knows about HTTP.

use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension, Row};
use sha2::{Digest, Sha256};

use crate::domain::{username_key, Email, Password, Timestamp, Username};
use crate::error::AppError;

/// Random bytes in a token: 256 bits.
pub const TOKEN_BYTES: usize = 32;
/// Password hashes waiting for the gate beyond which a login is refused with 503 rather than
/// holding an HTTP worker that transfers need.
pub const HASH_WAITERS_MAX: usize = 16;
/// Distinct throttling keys remembered; beyond it expired ones are dropped first.
pub const THROTTLE_KEYS_MAX: usize = 100_000;

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

/// Who made a request, as established by their token.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user_id: i64,
    pub is_staff: bool,
    pub wallet: crate::ledger::WalletRef,
    pub token_hash: [u8; 32],
}

/// A freshly issued token: the secret goes to the client once; only its hash is stored.
pub struct IssuedToken {
    pub secret: String,
    pub hash: [u8; 32],
    pub expires_at: Timestamp,
}

pub fn hash_token(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

pub fn new_token(now: Timestamp, ttl: Duration) -> IssuedToken {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
    IssuedToken {
        hash: hash_token(&secret),
        secret,
        expires_at: now.plus_millis(ttl_ms),
    }
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

pub fn store_token(
    conn: &Connection,
    now: Timestamp,
    user_id: i64,
    t: &IssuedToken,
) -> Result<(), AppError> {
    conn.prepare_cached(
        "INSERT INTO tokens (user_id, token_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        user_id,
        &t.hash[..],
        now.to_text(),
        t.expires_at.to_text()
    ])?;
    Ok(())
}

pub fn revoke_token(conn: &Connection, now: Timestamp, hash: &[u8; 32]) -> Result<(), AppError> {
    conn.prepare_cached(
        "UPDATE tokens SET revoked_at = ?2 WHERE token_hash = ?1 AND revoked_at IS NULL",
    )?
    .execute(params![&hash[..], now.to_text()])?;
    Ok(())
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

/// The user behind a token that is known, unrevoked and unexpired, and when it expires. The
/// lookup is by the token's SHA-256, so no secret is ever compared byte by byte.
pub fn authenticate(
    conn: &Connection,
    now: Timestamp,
    hash: &[u8; 32],
) -> Result<(AuthUser, Timestamp), AppError> {
    let found: Option<(i64, bool, crate::ledger::WalletRef, String, Option<String>)> = conn
        .prepare_cached(
            "SELECT t.user_id, u.is_staff, w.key, w.id, t.expires_at, t.revoked_at
             FROM tokens t JOIN users u ON u.id = t.user_id JOIN wallets w ON w.user_id = t.user_id
             WHERE t.token_hash = ?1",
        )?
        .query_row([&hash[..]], |r| {
            let wallet = crate::ledger::WalletRef {
                key: r.get(2)?,
                id: r.get(3)?,
            };
            Ok((r.get(0)?, r.get(1)?, wallet, r.get(4)?, r.get(5)?))
        })
        .optional()?;
    match found {
        Some((user_id, is_staff, wallet, expires_at, None)) if expires_at > now.to_text() => Ok((
            AuthUser {
                user_id,
                is_staff,
                wallet,
                token_hash: *hash,
            },
            Timestamp::from_stored(&expires_at),
        )),
        _ => Err(AppError::Unauthorized),
    }
}

/// Tokens seen recently, so most requests authenticate without a database read.
///
/// Revocation stays immediate: logout removes the token and bumps `epoch`, and a lookup only
/// caches what it read from the database when no logout happened while it read. Expiry is
/// checked against the cached expiry on every use. Users and their wallets are never deleted
/// and staff status never changes while the server runs, so nothing else can go stale.
pub struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], (AuthUser, Timestamp)>>,
    epoch: std::sync::atomic::AtomicU64,
}

/// Tokens cached at most; when full, the cache starts over.
pub const TOKEN_CACHE_ENTRIES_MAX: usize = 100_000;

impl TokenCache {
    pub fn new() -> TokenCache {
        TokenCache {
            entries: Mutex::new(HashMap::new()),
            epoch: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The user behind `secret`, from the cache or else from `lookup` (the database).
    pub fn authenticate(
        &self,
        now: Timestamp,
        secret: &str,
        lookup: impl FnOnce(&[u8; 32]) -> Result<(AuthUser, Timestamp), AppError>,
    ) -> Result<AuthUser, AppError> {
        use std::sync::atomic::Ordering;
        let hash = hash_token(secret);
        if let Some((user, expires_at)) = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
        {
            return if *expires_at > now {
                Ok(user.clone())
            } else {
                Err(AppError::Unauthorized)
            };
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let (user, expires_at) = lookup(&hash)?;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // A logout while we read may have revoked what we read: then do not cache it.
        if self.epoch.load(Ordering::SeqCst) == epoch {
            if entries.len() >= TOKEN_CACHE_ENTRIES_MAX {
                entries.clear();
            }
            entries.insert(hash, (user.clone(), expires_at));
        }
        Ok(user)
    }

    /// Call after a revocation has committed.
    pub fn forget(&self, hash: &[u8; 32]) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        entries.remove(hash);
    }
}

impl Default for TokenCache {
    fn default() -> TokenCache {
        TokenCache::new()
    }
}

/// argon2id hashing and verification on `permits` dedicated threads, at the lowest priority.
/// Request threads hand the work over and wait; a login flood queues here, up to
/// `HASH_WAITERS_MAX`, and is refused beyond it instead of taking the CPU that money movement
/// needs. Keeping argon2 on its own threads also keeps its 19 MiB buffers in their malloc
/// arenas: run on every request thread, they left ~19 MiB resident per thread (789 MiB
/// measured with 64 of them).
pub struct PasswordGuard {
    argon: Arc<Argon2<'static>>,
    queue: SyncSender<HashJob>,
    /// A hash of a random password, verified against when the user does not exist, so an
    /// unknown user costs the same time as a wrong password.
    dummy_hash: String,
}

type HashJob = Box<dyn FnOnce() + Send>;

impl PasswordGuard {
    pub fn new(memory_kib: u32, iterations: u32, permits: usize) -> Result<PasswordGuard, String> {
        let params = Params::new(memory_kib, iterations, 1, None)
            .map_err(|e| format!("argon2 parameters: {e}"))?;
        let argon = Arc::new(Argon2::new(Algorithm::Argon2id, Version::V0x13, params));
        let (queue, rx) = sync_channel::<HashJob>(HASH_WAITERS_MAX);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..permits.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    crate::sys::lower_current_thread_priority(crate::sys::HASH_THREAD_NICENESS);
                    loop {
                        // The threads end when the guard (the only sender) is dropped.
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .map_err(|e| format!("cannot start a hashing thread: {e}"))?;
        }
        let mut guard = PasswordGuard {
            argon,
            queue,
            dummy_hash: String::new(),
        };
        let mut random = [0u8; 16];
        rand::rng().fill_bytes(&mut random);
        let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
        guard.dummy_hash = guard
            .run(move |argon| hash_with(argon, &random))
            .and_then(|r| r)
            .map_err(|e| format!("argon2: {e:?}"))?;
        Ok(guard)
    }

    /// Runs `f` on a hashing thread and waits for it.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let (tx, rx) = sync_channel(1);
        let argon = self.argon.clone();
        let job: HashJob = Box::new(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&argon)));
            let _ = tx.send(result);
        });
        self.queue.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => AppError::Unavailable("too many logins at once; try again"),
            TrySendError::Disconnected(_) => AppError::Internal("hashing threads are gone".into()),
        })?;
        match rx.recv() {
            Ok(Ok(value)) => Ok(value),
            _ => Err(AppError::Internal("password hashing panicked".into())),
        }
    }

    pub fn hash(&self, password: &Password) -> Result<String, AppError> {
        let password = password.expose().to_string();
        self.run(move |argon| hash_with(argon, &password))?
    }

    /// Checks a password against a stored hash, or against the dummy when there is no user.
    pub fn verify(&self, password: &str, stored: Option<&str>) -> Result<bool, AppError> {
        let known = stored.is_some();
        let (password, stored) = (
            password.to_string(),
            stored.unwrap_or(&self.dummy_hash).to_string(),
        );
        let ok = self.run(move |argon| {
            PasswordHash::new(&stored)
                .map(|h| argon.verify_password(password.as_bytes(), &h).is_ok())
                .unwrap_or(false)
        })?;
        Ok(ok && known)
    }
}

fn hash_with(argon: &Argon2<'static>, password: &str) -> Result<String, AppError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| AppError::internal("salt", e))?;
    argon
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AppError::internal("argon2 hash", e))
}

/// Failed logins per key (a username or a client address) within a sliding window.
pub struct LoginThrottle {
    failures_max: u32,
    window: Duration,
    keys: Mutex<HashMap<String, (u32, Instant)>>,
}

impl LoginThrottle {
    pub fn new(failures_max: u32, window: Duration) -> LoginThrottle {
        LoginThrottle {
            failures_max,
            window,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// `RateLimited` when any key has used up its failures in the current window.
    pub fn check(&self, keys: &[String]) -> Result<(), AppError> {
        if self.failures_max == 0 {
            return Ok(());
        }
        let map = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for key in keys {
            if let Some((count, start)) = map.get(key) {
                let elapsed = now.duration_since(*start);
                if *count >= self.failures_max && elapsed < self.window {
                    let retry_after_s = (self.window - elapsed).as_secs().max(1);
                    return Err(AppError::RateLimited { retry_after_s });
                }
            }
        }
        Ok(())
    }

    pub fn record_failure(&self, keys: &[String]) {
        if self.failures_max == 0 {
            return;
        }
        let mut map = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if map.len() >= THROTTLE_KEYS_MAX {
            let window = self.window;
            map.retain(|_, (_, start)| now.duration_since(*start) < window);
        }
        if map.len() >= THROTTLE_KEYS_MAX {
            return;
        }
        for key in keys {
            let slot = map.entry(key.clone()).or_insert((0, now));
            if now.duration_since(slot.1) >= self.window {
                *slot = (0, now);
            }
            slot.0 += 1;
        }
    }

    /// A successful login clears the username's failures (not the address's).
    pub fn clear(&self, key: &str) {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_and_unknown_users_never_do() {
        let g = PasswordGuard::new(64, 1, 1).unwrap();
        let h = g.hash(&Password::parse("correct horse").unwrap()).unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(g.verify("correct horse", Some(&h)).unwrap());
        assert!(!g.verify("wrong horse!", Some(&h)).unwrap());
        assert!(!g.verify("correct horse", None).unwrap());
    }

    #[test]
    fn tokens_are_256_bits_and_stored_hashed() {
        let t = new_token(Timestamp::from_micros(0).unwrap(), Duration::from_secs(60));
        assert_eq!(t.secret.len(), 64);
        assert_eq!(t.hash, hash_token(&t.secret));
        assert_ne!(
            t.secret,
            new_token(Timestamp::from_micros(0).unwrap(), Duration::from_secs(60)).secret
        );
    }

    #[test]
    fn a_logout_during_a_cache_fill_is_not_undone() {
        // A lookup reads the token as valid, a logout commits meanwhile; the valid answer must
        // not be cached, so the next use asks the database again and is refused.
        let cache = TokenCache::new();
        let now = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
        let token = new_token(now, Duration::from_secs(3600));
        let user = AuthUser {
            user_id: 1,
            is_staff: false,
            wallet: crate::ledger::WalletRef {
                key: 1,
                id: "w".into(),
            },
            token_hash: token.hash,
        };
        let first = cache.authenticate(now, &token.secret, |_| {
            // The logout lands while the database read is in flight.
            cache.forget(&token.hash);
            Ok((user.clone(), token.expires_at))
        });
        assert!(first.is_ok(), "that request read before the revocation");
        let again = cache.authenticate(now, &token.secret, |_| Err(AppError::Unauthorized));
        assert!(matches!(again, Err(AppError::Unauthorized)), "{again:?}");
        // Without a logout in between, the answer is cached and the database is not asked.
        let other = new_token(now, Duration::from_secs(3600));
        let user2 = AuthUser {
            token_hash: other.hash,
            ..user
        };
        cache
            .authenticate(now, &other.secret, |_| {
                Ok((user2.clone(), other.expires_at))
            })
            .unwrap();
        let cached = cache.authenticate(now, &other.secret, |_| panic!("must come from the cache"));
        assert!(cached.is_ok());
        // A cached token past its expiry is refused without asking the database.
        let later = other.expires_at.plus_millis(1);
        let expired =
            cache.authenticate(later, &other.secret, |_| panic!("must come from the cache"));
        assert!(matches!(expired, Err(AppError::Unauthorized)));
    }

    #[test]
    fn throttle_blocks_after_max_failures() {
        let t = LoginThrottle::new(2, Duration::from_secs(60));
        let keys = vec!["u:alice".to_string()];
        t.record_failure(&keys);
        assert!(t.check(&keys).is_ok());
        t.record_failure(&keys);
        assert!(matches!(t.check(&keys), Err(AppError::RateLimited { .. })));
        t.clear("u:alice");
        assert!(t.check(&keys).is_ok());
    }
}
