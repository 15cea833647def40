//! The one error type of the service. Use cases return it; `http::response` maps it to a
//! status and body in one place. `Internal` keeps its cause for the log, never for the client.
//! Storage errors become `AppError`s in `db::error`. `StartupError` is why the server or a
//! command-line tool could not run, and chooses the binary's exit code.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppError {
    MalformedJson(String),
    Unauthorized,
    InvalidCredentials,
    Forbidden,
    /// A debit from a wallet staff have frozen: it receives money but sends none.
    WalletFrozen,
    NotFound(&'static str),
    MethodNotAllowed {
        allow: &'static str,
    },
    /// A reference reused with a different payload; `holder` names what holds it.
    ReferenceConflict {
        holder: String,
    },
    UsernameTaken,
    EmailTaken,
    /// A state conflict, such as cancelling a withdrawal that is no longer pending.
    Conflict(String),
    PayloadTooLarge {
        limit_bytes: usize,
    },
    UnsupportedMediaType,
    /// Field name → messages.
    Validation(BTreeMap<String, Vec<String>>),
    /// A debit larger than the balance. The numbers, not their text: `http::response` shows
    /// them as the API shows money.
    InsufficientFunds {
        available: crate::domain::Money,
        required: crate::domain::Money,
    },
    RateLimited {
        retry_after_s: u64,
    },
    Unavailable(&'static str),
    /// The database cannot take writes: the disk is full or the file became read-only. An
    /// operator's problem, not a bug: 503, and `/health` says which.
    Storage(StorageFault),
    /// A bug or an environment failure. What was being done and its cause chain go to the
    /// log only.
    Internal(InternalError),
}

/// Why the database refuses writes while reads go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// `SQLITE_FULL`, or an I/O error whose cause was `ENOSPC` or `EDQUOT`.
    Full,
    /// `SQLITE_READONLY` on the writer's connection: the file or its file system became
    /// read-only while running. (Not on a reader's: those are read-only by design, and a write
    /// through one is a bug.)
    ReadOnly,
}

impl StorageFault {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageFault::Full => "full",
            StorageFault::ReadOnly => "read_only",
        }
    }
}

impl AppError {
    pub fn field(name: &str, message: impl Into<String>) -> AppError {
        let mut fields = BTreeMap::new();
        fields.insert(name.to_string(), vec![message.into()]);
        AppError::Validation(fields)
    }

    /// An internal error whose cause is only text.
    pub fn internal(context: &str, cause: impl fmt::Display) -> AppError {
        AppError::Internal(InternalError::new(format!("{context}: {cause}")))
    }

    /// An internal error that keeps its cause, so the log shows the whole chain.
    pub fn caused_by(context: &str, source: impl Error + Send + Sync + 'static) -> AppError {
        AppError::Internal(InternalError::caused_by(context, source))
    }
}

/// Collects validation messages for several fields, so a client sees every problem at once.
#[derive(Default)]
pub struct FieldErrors(BTreeMap<String, Vec<String>>);

impl FieldErrors {
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0
            .entry(field.to_string())
            .or_default()
            .push(message.into());
    }

    /// Whether `field` has an error already.
    pub fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }

    /// Records the error of `result` under `field`, returning the value when it parsed.
    pub fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|m| self.add(field, m)).ok()
    }

    pub fn into_result(self) -> Result<(), AppError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(AppError::Validation(self.0))
        }
    }
}

/// What was being done when a bug or an environment failure struck, and the error that
/// struck, if there was one. Its text is the context followed by every cause in the chain
/// (`sqlite: disk I/O error: ...`). Two are equal when their texts are.
#[derive(Clone)]
pub struct InternalError {
    context: String,
    source: Option<Arc<dyn Error + Send + Sync>>,
}

impl InternalError {
    pub fn new(context: impl Into<String>) -> InternalError {
        InternalError {
            context: context.into(),
            source: None,
        }
    }

    pub fn caused_by(
        context: impl Into<String>,
        source: impl Error + Send + Sync + 'static,
    ) -> InternalError {
        InternalError {
            context: context.into(),
            source: Some(Arc::new(source)),
        }
    }
}

impl InternalError {
    /// The context and the error that struck, without the deeper causes: the one line an
    /// operator reads (`cannot read the database: file is not a database`), as it was before
    /// errors kept their chain. The log gets the whole chain (`Display`).
    pub fn summary(&self) -> String {
        match &self.source {
            Some(e) => format!("{}: {e}", self.context),
            None => self.context.clone(),
        }
    }
}

impl fmt::Display for InternalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.context.clone();
        let mut cause = self.source();
        while let Some(e) = cause {
            let said = e.to_string();
            // Some errors repeat their source's text in their own: it is said once.
            if !text.contains(&said) {
                text.push_str(": ");
                text.push_str(&said);
            }
            cause = e.source();
        }
        f.write_str(&text)
    }
}

impl fmt::Debug for InternalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

impl Error for InternalError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

impl PartialEq for InternalError {
    fn eq(&self, other: &InternalError) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for InternalError {}

impl From<&str> for InternalError {
    fn from(context: &str) -> InternalError {
        InternalError::new(context)
    }
}

impl From<String> for InternalError {
    fn from(context: String) -> InternalError {
        InternalError::new(context)
    }
}

/// Why the server or a command-line tool could not run (or stop cleanly). The binary prints it
/// on one line after `error: ` and exits with `exit_code`.
#[derive(Debug)]
pub enum StartupError {
    /// A setting (a flag or its environment variable) can't be used as given. The message
    /// starts with the setting's name (`--db/WALLET_DB: ...`). Exit code 2, as for a flag the
    /// parser refuses.
    Setting(String),
    /// Anything else: the database's content, another server holding it, the system. Exit
    /// code 1.
    Failed(InternalError),
}

impl StartupError {
    /// A setting that can't be used: `name` as `--db/WALLET_DB`, then why.
    pub fn setting(name: &str, why: impl fmt::Display) -> StartupError {
        StartupError::Setting(format!("{name}: {why}"))
    }

    pub fn failed(message: impl Into<String>) -> StartupError {
        StartupError::Failed(InternalError::new(message))
    }

    /// `context`, then `source` and its causes.
    pub fn caused_by(
        context: impl Into<String>,
        source: impl Error + Send + Sync + 'static,
    ) -> StartupError {
        StartupError::Failed(InternalError::caused_by(context, source))
    }

    /// The binary's exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartupError::Setting(_) => 2,
            StartupError::Failed(_) => 1,
        }
    }
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartupError::Setting(message) => f.write_str(message),
            StartupError::Failed(e) => f.write_str(&e.summary()),
        }
    }
}

impl Error for StartupError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            StartupError::Setting(_) => None,
            StartupError::Failed(e) => e.source(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_keeps_its_cause_chain_for_the_log() {
        // SQLite's error stays the source of the internal error (not only its text), and the
        // text names what was being done followed by every cause, each said once.
        let sqlite = rusqlite::Connection::open_in_memory()
            .unwrap()
            .execute_batch("SELECT * FROM no_such_table")
            .unwrap_err();
        let AppError::Internal(e) = AppError::from(sqlite) else {
            panic!("a missing table is a bug, not a client's error");
        };
        assert!(e.source().is_some());
        let text = e.to_string();
        assert!(
            text.starts_with("sqlite: no such table: no_such_table"),
            "{text}"
        );
        let inner = InternalError::caused_by("outer", e.clone());
        assert_eq!(inner.to_string(), format!("outer: {text}"));
        assert_eq!(
            AppError::internal("ctx", "cause"),
            AppError::Internal("ctx: cause".into())
        );
    }

    #[test]
    fn an_operator_reads_the_context_and_the_error_on_one_line() {
        // What the binary prints for a start-up failure stays as it was before errors kept
        // their chain: the context and SQLite's message, not its error code's description too.
        let dir = std::env::temp_dir().join(format!("wallet-notadb-{}", std::process::id()));
        std::fs::write(&dir, b"not a database, just text of some length to read").unwrap();
        let e = rusqlite::Connection::open(&dir)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        let _ = std::fs::remove_file(&dir);
        let startup = StartupError::caused_by("cannot read the database", e);
        assert_eq!(
            startup.to_string(),
            "cannot read the database: file is not a database"
        );
        let StartupError::Failed(internal) = &startup else {
            panic!("not a setting")
        };
        assert!(internal.to_string().contains("Error code 26"), "{internal}");
    }
}
