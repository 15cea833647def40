//! Login tokens: issued with 256 random bits, stored only as their SHA-256, and looked up
//! through a cache that a logout empties at once and that reads a token again every half
//! second (so a revocation made elsewhere is seen within a second).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::domain::Timestamp;
use crate::error::AppError;
use crate::store::Sql;

/// Random bytes in a token: 256 bits.
pub const TOKEN_BYTES: usize = 32;

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

pub fn store_token(
    conn: &dyn Sql,
    now: Timestamp,
    user_id: i64,
    t: &IssuedToken,
) -> Result<(), AppError> {
    conn.execute(
        "INSERT INTO tokens (user_id, token_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        &[&user_id, &t.hash, &now, &t.expires_at],
    )?;
    Ok(())
}

pub fn revoke_token(conn: &dyn Sql, now: Timestamp, hash: &[u8; 32]) -> Result<(), AppError> {
    conn.execute(
        "UPDATE tokens SET revoked_at = ?2 WHERE token_hash = ?1 AND revoked_at IS NULL",
        &[hash, &now],
    )?;
    Ok(())
}

/// The user behind a token that is known, unrevoked and unexpired, and when it expires. The
/// lookup is by the token's SHA-256, so no secret is ever compared byte by byte.
pub fn authenticate(
    conn: &dyn Sql,
    now: Timestamp,
    hash: &[u8; 32],
) -> Result<(AuthUser, Timestamp), AppError> {
    type Found = (i64, bool, crate::ledger::WalletRef, String, Option<String>);
    let found: Option<Found> = conn
        .query_opt(
            "SELECT t.user_id, u.is_staff, w.key, w.id, t.expires_at, t.revoked_at
             FROM tokens t JOIN users u ON u.id = t.user_id JOIN wallets w ON w.user_id = t.user_id
             WHERE t.token_hash = ?1",
            &[hash],
        )?
        .map(|r| -> Result<Found, AppError> {
            let wallet = crate::ledger::WalletRef {
                key: r.get(2)?,
                id: r.get(3)?,
            };
            Ok((r.get(0)?, r.get(1)?, wallet, r.get(4)?, r.get(5)?))
        })
        .transpose()?;
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A user authenticated by `token`.
    fn user_with(token: &IssuedToken) -> AuthUser {
        AuthUser {
            user_id: 1,
            is_staff: false,
            wallet: crate::ledger::WalletRef {
                key: crate::ledger::WalletKey::from_storage(1),
                id: "w".into(),
            },
            token_hash: token.hash,
        }
    }

    #[test]
    fn a_logout_during_a_cache_fill_is_not_undone() {
        // A lookup reads the token as valid, a logout commits meanwhile; the valid answer must
        // not be cached, so the next use asks the database again and is refused.
        let cache = TokenCache::new();
        let now = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
        let t0 = Instant::now();
        let token = new_token(now, Duration::from_secs(3600));
        let user = user_with(&token);
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
        let user = user_with(&token);
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
}
