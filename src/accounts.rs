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
/// Distinct throttling keys counted one by one; attempts under keys beyond it share one count.
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
/// A logout through this server is immediate: it removes the token and bumps `epoch`, and a
/// lookup only caches what it read from the database when no logout happened while it read.
/// A revocation the cache can't hear of (another process, an operator's `UPDATE tokens SET
/// revoked_at = …` during an incident) is seen within `TOKEN_REVALIDATE_MS`: a cached token
/// is read again from the database once it was last read longer ago than that. That is one
/// indexed read per active token and half-second, not one per request. Expiry is checked
/// against the cached expiry on every use.
pub struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], CachedToken>>,
    epoch: std::sync::atomic::AtomicU64,
}

struct CachedToken {
    user: AuthUser,
    expires_at: Timestamp,
    /// When the database last said this token was valid.
    read_at: Instant,
}

/// Tokens cached at most; when full, the cache starts over.
pub const TOKEN_CACHE_ENTRIES_MAX: usize = 100_000;
/// A cached token older than this is read again before it is trusted: the longest a token
/// revoked outside this process keeps working here (plus one database read).
pub const TOKEN_REVALIDATE_MS: u64 = 500;
const _: () = assert!(
    TOKEN_REVALIDATE_MS < 1_000,
    "a revocation must reach us within 1 s"
);

impl TokenCache {
    pub fn new() -> TokenCache {
        TokenCache {
            entries: Mutex::new(HashMap::new()),
            epoch: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The user behind `secret`, from the cache if it was read at most `TOKEN_REVALIDATE_MS`
    /// before `at`, or else from `lookup` (the database).
    pub fn authenticate(
        &self,
        now: Timestamp,
        at: Instant,
        secret: &str,
        lookup: impl FnOnce(&[u8; 32]) -> Result<(AuthUser, Timestamp), AppError>,
    ) -> Result<AuthUser, AppError> {
        use std::sync::atomic::Ordering;
        let hash = hash_token(secret);
        if let Some(cached) = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
        {
            if cached.expires_at <= now {
                return Err(AppError::Unauthorized);
            }
            let age = at.saturating_duration_since(cached.read_at);
            if age < Duration::from_millis(TOKEN_REVALIDATE_MS) {
                return Ok(cached.user.clone());
            }
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let found = lookup(&hash);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (user, expires_at) = match found {
            Ok(found) => found,
            Err(AppError::Unauthorized) => {
                entries.remove(&hash);
                return Err(AppError::Unauthorized);
            }
            // The database could not answer: the cached entry stays stale, so the next request
            // asks again rather than trusting it.
            Err(e) => return Err(e),
        };
        // A logout while we read may have revoked what we read: then do not cache it.
        if self.epoch.load(Ordering::SeqCst) == epoch {
            if entries.len() >= TOKEN_CACHE_ENTRIES_MAX {
                entries.clear();
            }
            let cached = CachedToken {
                user: user.clone(),
                expires_at,
                // When the read began: the answer is at least that fresh.
                read_at: at,
            };
            entries.insert(hash, cached);
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

/// The login throttle's key for a username as typed: its `username_key`, so every spelling of
/// one name shares one count, hashed, so a 64 KiB "username" costs the table 64 bytes.
pub fn throttle_key_for_username(username: &str) -> String {
    let digest = Sha256::digest(username_key(username).as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("u:{hex}")
}

/// Failed logins per key (a username's key or a client address) within a window.
///
/// An attempt is reserved against every one of its keys' limits, under one lock, before its
/// password is hashed (`begin`), so concurrent guesses can't overtake the count: at most
/// `failures_max` passwords are checked per key and window, however many arrive at once
/// (attempts beyond what the limit leaves wait for those in flight to settle). A
/// key's count is dropped only when its window has ended (or, for a username, when its owner
/// logs in), never to make room. When the table holds `keys_max` keys and none has expired,
/// attempts under keys it can't hold share one global count with the same limit, so a flood
/// of new addresses can't switch the throttle off; it makes new clients wait instead.
pub struct LoginThrottle {
    failures_max: u32,
    window: Duration,
    keys_max: usize,
    reserve_wait: Duration,
    state: Mutex<ThrottleState>,
    /// Signalled whenever attempts settle, for those waiting in `begin`.
    settled: std::sync::Condvar,
}

struct ThrottleState {
    keys: HashMap<String, ThrottleSlot>,
    /// The shared count of attempts whose key the full table could not hold.
    overflow: ThrottleSlot,
    /// When a full table was last searched for expired keys: at most once a second, so a
    /// flood of new keys does not cost a pass over the whole table per attempt.
    swept_at: Option<Instant>,
}

#[derive(Clone, Copy)]
struct ThrottleSlot {
    /// Failed attempts in the window that began at `start`.
    failures: u32,
    /// Attempts reserved and not yet settled (their passwords are being checked).
    pending: u32,
    start: Instant,
}

impl ThrottleSlot {
    fn new(now: Instant) -> ThrottleSlot {
        ThrottleSlot {
            failures: 0,
            pending: 0,
            start: now,
        }
    }

    fn expired(&self, now: Instant, window: Duration) -> bool {
        now.saturating_duration_since(self.start) >= window
    }

    fn idle(&self, now: Instant, window: Duration) -> bool {
        self.pending == 0 && (self.failures == 0 || self.expired(now, window))
    }
}

/// How often at most a full throttle table is searched for expired keys.
pub const THROTTLE_SWEEP_INTERVAL_MS: u64 = 1_000;

enum Verdict {
    Room,
    Busy,
    Limited { retry_after_s: u64 },
}

/// How long an attempt waits for the attempts in flight under its keys to settle, when they
/// alone could use up the limit, before it is refused with 503 (try again): longer than a
/// full hashing queue takes to drain.
pub const LOGIN_RESERVE_WAIT_MS: u64 = 2_000;

/// Which count an attempt was reserved against.
#[derive(Clone, PartialEq, Eq)]
enum Counted {
    Key(String),
    Overflow,
}

impl LoginThrottle {
    /// `keys_max` is the size of the table of per-key counts (`THROTTLE_KEYS_MAX` in the
    /// server; tests use a small one).
    pub fn new(failures_max: u32, window: Duration, keys_max: usize) -> LoginThrottle {
        LoginThrottle {
            failures_max,
            window,
            keys_max,
            reserve_wait: Duration::from_millis(LOGIN_RESERVE_WAIT_MS),
            state: Mutex::new(ThrottleState {
                keys: HashMap::new(),
                overflow: ThrottleSlot::new(Instant::now()),
                swept_at: None,
            }),
            settled: std::sync::Condvar::new(),
        }
    }

    /// Sets how long `begin` waits for attempts in flight (`LOGIN_RESERVE_WAIT_MS`).
    pub fn with_reserve_wait(mut self, wait: Duration) -> LoginThrottle {
        self.reserve_wait = wait;
        self
    }

    /// Reserves one attempt under every key, or `RateLimited` (reserving nothing) when any of
    /// them has used up its failures in the current window. While the attempts already in
    /// flight under a key could use up its limit by failing, it waits for them to settle (so a
    /// burst of correct logins is slowed, not refused), up to `reserve_wait`, then gives 503.
    pub fn begin(&self, keys: &[String], now: Instant) -> Result<LoginAttempt<'_>, AppError> {
        if self.failures_max == 0 {
            return Ok(LoginAttempt {
                throttle: self,
                counted: Vec::new(),
            });
        }
        let deadline = Instant::now() + self.reserve_wait;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let counted = self.place(&mut state, keys, now);
            match self.verdict(&state, &counted, now) {
                Verdict::Limited { retry_after_s } => {
                    return Err(AppError::RateLimited { retry_after_s })
                }
                Verdict::Room => {
                    self.reserve(&mut state, &counted, now);
                    return Ok(LoginAttempt {
                        throttle: self,
                        counted,
                    });
                }
                Verdict::Busy => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(AppError::Unavailable("too many logins at once; try again"));
                    }
                    state = self
                        .settled
                        .wait_timeout(state, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }

    /// Where each key's attempt is counted: its own slot, a new one while the table has room,
    /// or else the shared overflow count.
    fn place(&self, state: &mut ThrottleState, keys: &[String], now: Instant) -> Vec<Counted> {
        let missing = keys
            .iter()
            .filter(|k| !state.keys.contains_key(k.as_str()))
            .count();
        if state.keys.len() + missing > self.keys_max {
            self.sweep(state, now);
        }
        let mut room = self.keys_max.saturating_sub(state.keys.len());
        let mut counted = Vec::with_capacity(keys.len());
        for key in keys {
            let c = if state.keys.contains_key(key.as_str()) {
                Counted::Key(key.clone())
            } else if room > 0 {
                room -= 1;
                Counted::Key(key.clone())
            } else {
                Counted::Overflow
            };
            if !counted.contains(&c) {
                counted.push(c);
            }
        }
        counted
    }

    /// Refused when a count has used up its failures in the window; busy when the attempts
    /// in flight would reach the limit if they all failed.
    fn verdict(&self, state: &ThrottleState, counted: &[Counted], now: Instant) -> Verdict {
        let mut busy = false;
        for c in counted {
            let slot = match c {
                Counted::Key(key) => state.keys.get(key.as_str()).copied(),
                Counted::Overflow => Some(state.overflow),
            };
            let Some(slot) = slot else { continue };
            let failures = if slot.expired(now, self.window) {
                0
            } else {
                slot.failures
            };
            if failures >= self.failures_max {
                let elapsed = now.saturating_duration_since(slot.start);
                let retry_after_s = self.window.saturating_sub(elapsed).as_secs().max(1);
                return Verdict::Limited { retry_after_s };
            }
            busy |= failures + slot.pending >= self.failures_max;
        }
        if busy {
            Verdict::Busy
        } else {
            Verdict::Room
        }
    }

    fn reserve(&self, state: &mut ThrottleState, counted: &[Counted], now: Instant) {
        for c in counted {
            let slot = match c {
                Counted::Key(key) => state
                    .keys
                    .entry(key.clone())
                    .or_insert_with(|| ThrottleSlot::new(now)),
                Counted::Overflow => &mut state.overflow,
            };
            if slot.expired(now, self.window) {
                slot.failures = 0;
                slot.start = now;
            }
            slot.pending += 1;
        }
    }

    /// Drops the keys whose window has ended and which have nothing in flight.
    fn sweep(&self, state: &mut ThrottleState, now: Instant) {
        let due = state.swept_at.is_none_or(|at| {
            now.saturating_duration_since(at) >= Duration::from_millis(THROTTLE_SWEEP_INTERVAL_MS)
        });
        if due {
            let window = self.window;
            state.keys.retain(|_, slot| !slot.idle(now, window));
            state.swept_at = Some(now);
        }
    }

    /// Settles `attempt`'s reservations: as failures, or given back; `clear` (a username's
    /// key, after its owner logged in) also forgets that key's failures.
    fn settle(&self, counted: &[Counted], failed: bool, clear: Option<&str>) {
        if counted.is_empty() {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for c in counted {
            let slot = match c {
                Counted::Key(key) => match state.keys.get_mut(key.as_str()) {
                    Some(slot) => slot,
                    None => continue,
                },
                Counted::Overflow => &mut state.overflow,
            };
            slot.pending = slot.pending.saturating_sub(1);
            if failed {
                slot.failures += 1;
            }
            if let Counted::Key(key) = c {
                if clear == Some(key.as_str()) {
                    slot.failures = 0;
                }
                if slot.pending == 0 && slot.failures == 0 {
                    state.keys.remove(key.as_str());
                }
            }
        }
        drop(state);
        self.settled.notify_all();
    }
}

/// One login attempt, reserved under each of its keys. `failed` counts it; `succeeded`
/// gives it back; dropped unsettled (the password was never checked: the hashing queue was
/// full, the database failed) it is given back too.
pub struct LoginAttempt<'a> {
    throttle: &'a LoginThrottle,
    counted: Vec<Counted>,
}

impl LoginAttempt<'_> {
    pub fn failed(mut self) {
        let counted = std::mem::take(&mut self.counted);
        self.throttle.settle(&counted, true, None);
    }

    /// The password was right: gives the attempt back and forgets `clear_key`'s failures
    /// (the username's, not the address's).
    pub fn succeeded(mut self, clear_key: &str) {
        let counted = std::mem::take(&mut self.counted);
        self.throttle.settle(&counted, false, Some(clear_key));
    }
}

impl Drop for LoginAttempt<'_> {
    fn drop(&mut self) {
        let counted = std::mem::take(&mut self.counted);
        self.throttle.settle(&counted, false, None);
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
        let t0 = Instant::now();
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
        let first = cache.authenticate(now, t0, &token.secret, |_| {
            // The logout lands while the database read is in flight.
            cache.forget(&token.hash);
            Ok((user.clone(), token.expires_at))
        });
        assert!(first.is_ok(), "that request read before the revocation");
        let again = cache.authenticate(now, t0, &token.secret, |_| Err(AppError::Unauthorized));
        assert!(matches!(again, Err(AppError::Unauthorized)), "{again:?}");
        // Without a logout in between, the answer is cached and the database is not asked.
        let other = new_token(now, Duration::from_secs(3600));
        let user2 = AuthUser {
            token_hash: other.hash,
            ..user
        };
        cache
            .authenticate(now, t0, &other.secret, |_| {
                Ok((user2.clone(), other.expires_at))
            })
            .unwrap();
        let cached = cache.authenticate(now, t0, &other.secret, |_| {
            panic!("must come from the cache")
        });
        assert!(cached.is_ok());
        // A cached token past its expiry is refused without asking the database.
        let later = other.expires_at.plus_millis(1);
        let expired = cache.authenticate(later, t0, &other.secret, |_| {
            panic!("must come from the cache")
        });
        assert!(matches!(expired, Err(AppError::Unauthorized)));
    }

    #[test]
    fn a_cached_token_is_read_again_after_half_a_second() {
        // A token revoked by another process is not in this cache's hearing: the cache trusts
        // what it read for TOKEN_REVALIDATE_MS only, then asks the database again.
        let cache = TokenCache::new();
        let now = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
        let t0 = Instant::now();
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
        let valid = |_: &[u8; 32]| Ok((user.clone(), token.expires_at));
        cache.authenticate(now, t0, &token.secret, valid).unwrap();
        let fresh = t0 + Duration::from_millis(TOKEN_REVALIDATE_MS - 1);
        cache
            .authenticate(now, fresh, &token.secret, |_| {
                panic!("must come from the cache")
            })
            .unwrap();
        let stale = t0 + Duration::from_millis(TOKEN_REVALIDATE_MS);
        let asked = std::cell::Cell::new(false);
        cache
            .authenticate(now, stale, &token.secret, |_| {
                asked.set(true);
                valid(&token.hash)
            })
            .unwrap();
        assert!(asked.get(), "a stale entry is read again");
        // The database now says revoked: refused, and not trusted from the cache afterwards.
        let later = stale + Duration::from_millis(TOKEN_REVALIDATE_MS);
        let revoked =
            cache.authenticate(now, later, &token.secret, |_| Err(AppError::Unauthorized));
        assert!(matches!(revoked, Err(AppError::Unauthorized)));
        let again = cache.authenticate(now, later, &token.secret, |_| Err(AppError::Unauthorized));
        assert!(matches!(again, Err(AppError::Unauthorized)));
        // A database that can't answer is not papered over with the stale entry.
        cache
            .authenticate(now, later, &token.secret, valid)
            .unwrap();
        let busy = cache.authenticate(now, later + Duration::from_secs(1), &token.secret, |_| {
            Err(AppError::Unavailable("database busy"))
        });
        assert!(matches!(busy, Err(AppError::Unavailable(_))), "{busy:?}");
    }

    const WINDOW: Duration = Duration::from_secs(60);

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|k| k.to_string()).collect()
    }

    fn limited(r: &Result<LoginAttempt<'_>, AppError>) -> bool {
        matches!(r, Err(AppError::RateLimited { .. }))
    }

    #[test]
    fn throttle_blocks_after_max_failures_and_a_login_clears_the_username() {
        // Two failures use up a limit of two; the owner's successful login (from an address
        // with room left) forgets the username's failures but not the other address's.
        let t = LoginThrottle::new(2, WINDOW, 100);
        let now = Instant::now();
        let alice = keys(&["u:alice", "ip:1"]);
        t.begin(&alice, now).unwrap().failed();
        t.begin(&alice, now).unwrap().failed();
        let refused = t.begin(&alice, now);
        assert!(limited(&refused));
        drop(refused);
        t.begin(&keys(&["u:alice", "ip:2"]), now)
            .err()
            .expect("the username is throttled from any address");
        // The window ends: both keys start again.
        let later = now + WINDOW;
        t.begin(&alice, later).unwrap().failed();
        t.begin(&keys(&["u:alice", "ip:3"]), later)
            .unwrap()
            .succeeded("u:alice");
        t.begin(&alice, later).unwrap().failed();
        assert!(
            t.begin(&keys(&["u:alice", "ip:4"]), later).is_ok(),
            "the login forgot alice's earlier failure"
        );
        assert!(
            limited(&t.begin(&keys(&["u:bob", "ip:1"]), later)),
            "but not ip:1's: it has two"
        );
    }

    #[test]
    fn an_attempt_never_checked_is_given_back() {
        // A reservation dropped without a verdict (the hashing queue was full) costs nothing.
        let t = LoginThrottle::new(1, WINDOW, 100);
        let now = Instant::now();
        for _ in 0..5 {
            drop(t.begin(&keys(&["u:carol"]), now).unwrap());
        }
        t.begin(&keys(&["u:carol"]), now).unwrap().failed();
        assert!(limited(&t.begin(&keys(&["u:carol"]), now)));
    }

    #[test]
    fn a_full_table_falls_back_to_a_global_limit() {
        // A table of 4 keys filled by 4 addresses: attempts under keys it can't hold share one
        // count with the same limit, so rotating addresses can't switch the throttle off, and
        // keys already in the table keep their own counts.
        let t = LoginThrottle::new(2, WINDOW, 4);
        let now = Instant::now();
        for i in 0..4 {
            t.begin(&keys(&[&format!("ip:{i}")]), now).unwrap().failed();
        }
        t.begin(&keys(&["ip:new-1"]), now).unwrap().failed();
        t.begin(&keys(&["ip:new-2"]), now).unwrap().failed();
        for fresh in ["ip:new-3", "u:victim", "ip:new-1"] {
            assert!(
                limited(&t.begin(&keys(&[fresh]), now)),
                "{fresh} shares the full table's global count"
            );
        }
        t.begin(&keys(&["ip:0"]), now).unwrap().failed();
        assert!(
            limited(&t.begin(&keys(&["ip:0"]), now)),
            "ip:0 keeps its own"
        );
        // Once their windows end, the old keys make room again (swept at most once a second).
        let later = now + WINDOW;
        t.begin(&keys(&["u:victim"]), later).unwrap().failed();
        t.begin(&keys(&["u:victim"]), later).unwrap().failed();
        assert!(limited(&t.begin(&keys(&["u:victim"]), later)));
    }

    #[test]
    fn a_username_count_is_never_dropped_to_make_room() {
        // A victim's count survives a flood of other keys filling the table, so the flood can't
        // flush it; the flood itself is held to the global limit.
        let t = LoginThrottle::new(3, WINDOW, 8);
        let now = Instant::now();
        let victim = keys(&["u:victim"]);
        t.begin(&victim, now).unwrap().failed();
        t.begin(&victim, now).unwrap().failed();
        let mut admitted = 0;
        for i in 0..10_000 {
            if let Ok(a) = t.begin(&keys(&[&format!("ip:{i}")]), now + Duration::from_millis(i)) {
                a.failed();
                admitted += 1;
            }
        }
        assert_eq!(admitted, 7 + 3, "7 free places, then the global limit of 3");
        let late = now + Duration::from_secs(30);
        t.begin(&victim, late).unwrap().failed();
        assert!(limited(&t.begin(&victim, late)));
    }

    #[test]
    fn correct_logins_beyond_the_limit_wait_instead_of_being_refused() {
        // Six logins of one user at once, limit two: the attempts in flight could use up the
        // limit, so the later ones wait for them; they succeed, so every one gets through.
        let t = LoginThrottle::new(2, WINDOW, 100);
        let barrier = std::sync::Barrier::new(6);
        std::thread::scope(|scope| {
            for _ in 0..6 {
                scope.spawn(|| {
                    barrier.wait();
                    let attempt = t.begin(&keys(&["u:erin", "ip:5"]), Instant::now());
                    let attempt = attempt.expect("a correct login is not refused");
                    std::thread::sleep(Duration::from_millis(10));
                    attempt.succeeded("u:erin");
                });
            }
        });
    }

    #[test]
    fn an_attempt_that_waits_too_long_for_a_place_is_told_to_retry() {
        // One attempt in flight uses up a limit of one until it settles; another gives up
        // after the reserve wait with 503, and gets its place once the first is settled.
        let t = LoginThrottle::new(1, WINDOW, 100).with_reserve_wait(Duration::from_millis(30));
        let now = Instant::now();
        let first = t.begin(&keys(&["u:finn"]), now).unwrap();
        let second = t.begin(&keys(&["u:finn"]), now);
        assert!(matches!(second, Err(AppError::Unavailable(_))));
        drop(second);
        first.succeeded("u:finn");
        assert!(t.begin(&keys(&["u:finn"]), now).is_ok());
    }

    #[test]
    fn concurrent_attempts_cannot_exceed_the_limit() {
        // 40 threads reserve at once against a limit of 10 while every password check is
        // still running: 10 get through, the rest wait for them to fail and are then refused.
        let t = LoginThrottle::new(10, WINDOW, 100);
        let barrier = std::sync::Barrier::new(40);
        let admitted = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|scope| {
            for _ in 0..40 {
                scope.spawn(|| {
                    barrier.wait();
                    if let Ok(attempt) = t.begin(&keys(&["u:dave", "ip:9"]), Instant::now()) {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        attempt.failed();
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 10);
    }
}
