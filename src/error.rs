//! The one error type of the service. Use cases return it; `http::response` maps it to a
//! status and body in one place. `Internal` keeps its cause for the log, never for the client.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppError {
    MalformedJson(String),
    Unauthorized,
    InvalidCredentials,
    Forbidden,
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
    /// A bug or an environment failure. The string goes to the log only.
    Internal(String),
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

    pub fn internal(context: &str, cause: impl std::fmt::Display) -> AppError {
        AppError::Internal(format!("{context}: {cause}"))
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

impl From<rusqlite::Error> for AppError {
    fn from(e: rusqlite::Error) -> AppError {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
                AppError::Unavailable("the database is busy; try again")
            }
            Some(rusqlite::ErrorCode::DiskFull) => AppError::Storage(StorageFault::Full),
            _ => AppError::internal("sqlite", e),
        }
    }
}

impl From<r2d2::Error> for AppError {
    fn from(_: r2d2::Error) -> AppError {
        AppError::Unavailable("no database connection was free in time; try again")
    }
}
