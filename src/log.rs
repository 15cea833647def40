//! One-line logs to standard error. The level comes from `WALLET_LOG` (error, warn, info,
//! debug; default info). Never tokens, passwords or bodies.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

static LEVEL: AtomicU8 = AtomicU8::new(2);

pub fn init_from_env() {
    let level = match std::env::var("WALLET_LOG")
        .unwrap_or_default()
        .to_lowercase()
        .as_str()
    {
        "off" => 0,
        "error" => 1,
        "warn" => 1,
        "debug" => 3,
        _ => 2,
    };
    LEVEL.store(level, Ordering::Relaxed);
}

fn emit(min: u8, tag: &str, msg: &str) {
    if LEVEL.load(Ordering::Relaxed) >= min {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let _ = writeln!(std::io::stderr().lock(), "{now} {tag} {msg}");
    }
}

/// Errors only, for benchmarks that run the server in-process.
pub fn errors_only() {
    LEVEL.store(1, Ordering::Relaxed);
}

pub fn error(msg: &str) {
    emit(1, "ERROR", msg);
}

pub fn info(msg: &str) {
    emit(2, "INFO", msg);
}

pub fn debug(msg: &str) {
    emit(3, "DEBUG", msg);
}

pub fn enabled_info() -> bool {
    LEVEL.load(Ordering::Relaxed) >= 2
}
