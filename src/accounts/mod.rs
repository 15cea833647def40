//! Accounts: registration, login tokens, authentication, and the guards around passwords
//! (argon2id behind a bounded gate, failed-login throttling). Nothing here knows about HTTP.

mod passwords;
mod rate_limit;
mod sessions;
mod throttle;
mod tokens;
mod users;

pub use passwords::{PasswordGuard, HASH_WAITERS_MAX};
pub use rate_limit::{Rate, RateLimiter, RATE_LIMIT_KEYS_MAX};
pub use sessions::*;
pub use throttle::*;
pub use tokens::*;
pub use users::*;
