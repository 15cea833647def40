//! Accounts: registration, login tokens, authentication, and the guards around passwords
//! (argon2id behind a bounded gate, failed-login throttling). Nothing here knows about HTTP.

mod passwords;
mod throttle;
mod tokens;
mod users;

pub use passwords::{PasswordGuard, HASH_WAITERS_MAX};
pub use throttle::*;
pub use tokens::*;
pub use users::*;
