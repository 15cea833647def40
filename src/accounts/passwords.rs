//! argon2id hashing and verification on dedicated low-priority threads behind a bounded
//! queue, so a login flood waits there instead of taking the CPU money movement needs.

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;

use crate::domain::Password;
use crate::error::AppError;

/// Password hashes waiting for the gate beyond which a login is refused with 503 rather than
/// holding an HTTP worker that transfers need.
pub const HASH_WAITERS_MAX: usize = 16;

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
        // Hashed here, at the caller's priority: on the hashing threads (the lowest priority)
        // a busy machine held start-up back for half a minute.
        guard.dummy_hash =
            hash_with(&guard.argon, &random).map_err(|e| format!("argon2: {e:?}"))?;
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
}
