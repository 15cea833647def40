//! Replies, and the one place an `AppError` becomes a status and a body.

use serde_json::{json, Value};

use crate::error::{AppError, StorageFault};

/// `Retry-After` while the storage refuses writes: freeing space takes an operator, so clients
/// need not retry every second.
pub const STORAGE_RETRY_AFTER_S: u64 = 10;

pub enum Body {
    Json(Value),
    Text {
        content_type: &'static str,
        text: String,
    },
    /// Sent as it is read, in chunks: an export of any length in constant memory. A read
    /// error ends the connection without the last chunk, so the client sees it incomplete.
    Stream {
        content_type: &'static str,
        reader: Box<dyn std::io::Read + Send>,
    },
}

pub struct Reply {
    pub status: u16,
    pub body: Body,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: Body::Json(body),
            headers: Vec::new(),
        }
    }

    pub fn text(content_type: &'static str, text: String) -> Reply {
        Reply {
            status: 200,
            body: Body::Text { content_type, text },
            headers: Vec::new(),
        }
    }

    pub fn stream(content_type: &'static str, reader: Box<dyn std::io::Read + Send>) -> Reply {
        Reply {
            status: 200,
            body: Body::Stream {
                content_type,
                reader,
            },
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// A money-moving result: `created` on first sight, 200 and the replay header on a replay.
    pub fn created_or_replayed(created: u16, replayed: bool, body: Value) -> Reply {
        if replayed {
            Reply::json(200, body).header("Idempotent-Replayed", "true")
        } else {
            Reply::json(created, body)
        }
    }
}

/// Maps an error to its reply. `Internal` causes are logged by the caller, never sent.
pub fn error_reply(e: &AppError) -> Reply {
    let (status, code, message): (u16, &str, String) = match e {
        AppError::MalformedJson(m) => (400, "malformed_json", m.clone()),
        AppError::Unauthorized => (401, "unauthorized", "authentication required: send a valid, unexpired token as `Authorization: Token <token>`".into()),
        AppError::InvalidCredentials => (401, "invalid_credentials", "invalid username or password".into()),
        AppError::Forbidden => (403, "forbidden", "you are not allowed to do this".into()),
        AppError::WalletFrozen => (403, "wallet_frozen", "this wallet is frozen: it receives money but sends none until staff unfreeze it".into()),
        AppError::NotFound(what) => (404, "not_found", format!("{what} not found")),
        AppError::MethodNotAllowed { allow } => (405, "method_not_allowed", format!("method not allowed here; allowed: {allow}")),
        AppError::ReferenceConflict { .. } => (409, "reference_conflict", "this reference was already used with a different request".into()),
        AppError::UsernameTaken => (409, "username_taken", "a user with this username already exists".into()),
        AppError::EmailTaken => (409, "email_taken", "a user with this email already exists".into()),
        AppError::Conflict(m) => (409, "conflict", m.clone()),
        AppError::PayloadTooLarge { limit_bytes } => (413, "payload_too_large", format!("request body is larger than {limit_bytes} bytes")),
        AppError::UnsupportedMediaType => (415, "unsupported_media_type", "request body must be application/json".into()),
        AppError::Validation(_) => (422, "validation_error", "some fields are missing or invalid".into()),
        // The ledger gives numbers; they are shown here, as the API shows money.
        AppError::InsufficientFunds { available, required } => {
            (422, "insufficient_funds", format!("insufficient funds: available {available}, required {required}"))
        }
        AppError::RateLimited { .. } => (429, "rate_limited", "too many attempts; try again later".into()),
        AppError::Unavailable(m) => (503, "unavailable", (*m).to_string()),
        AppError::Storage(StorageFault::Full) => (503, "unavailable", "the server's storage is full; reads work, writes are refused until an operator frees space".into()),
        AppError::Storage(StorageFault::ReadOnly) => (503, "unavailable", "the server's storage is read-only; reads work, writes are refused until an operator fixes it".into()),
        AppError::Internal(_) => (500, "internal", "internal error".into()),
    };
    let mut error = json!({"code": code, "message": message});
    match e {
        AppError::Validation(fields) => error["fields"] = json!(fields),
        AppError::ReferenceConflict { holder } => error["fields"] = json!({"reference": [holder]}),
        _ => {}
    }
    let reply = Reply::json(status, json!({ "error": error }));
    match e {
        AppError::MethodNotAllowed { allow } => reply.header("Allow", *allow),
        AppError::RateLimited { retry_after_s } => {
            reply.header("Retry-After", retry_after_s.to_string())
        }
        AppError::Unavailable(_) => reply.header("Retry-After", "1"),
        AppError::Storage(_) => reply.header("Retry-After", STORAGE_RETRY_AFTER_S.to_string()),
        _ => reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::MinorUnits;

    #[test]
    fn insufficient_funds_shows_money_as_the_api_does() {
        // The ledger's numbers become the body clients have always read, scale digits and all.
        let e = AppError::InsufficientFunds {
            available: MinorUnits::new(1_050).at_scale(2),
            required: MinorUnits::new(20_000).at_scale(2),
        };
        let reply = error_reply(&e);
        assert_eq!(reply.status, 422);
        let Body::Json(body) = reply.body else {
            panic!("not JSON")
        };
        assert_eq!(
            body.to_string(),
            r#"{"error":{"code":"insufficient_funds","message":"insufficient funds: available 10.50, required 200.00"}}"#
        );
    }
}
