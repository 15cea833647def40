//! Storage errors as the service sees them. A busy or locked database and an empty pool are
//! 503s for the client to retry, a full disk is a storage fault (503, and `/health` says so),
//! and anything else is an internal error that keeps SQLite's error as its cause.

use crate::error::{AppError, StorageFault};

impl From<rusqlite::Error> for AppError {
    fn from(e: rusqlite::Error) -> AppError {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
                AppError::Unavailable("the database is busy; try again")
            }
            Some(rusqlite::ErrorCode::DiskFull) => AppError::Storage(StorageFault::Full),
            _ => AppError::caused_by("sqlite", e),
        }
    }
}

impl From<r2d2::Error> for AppError {
    fn from(_: r2d2::Error) -> AppError {
        AppError::Unavailable("no database connection was free in time; try again")
    }
}
