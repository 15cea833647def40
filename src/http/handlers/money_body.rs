//! The bodies of the money routes, parsed and validated without a service, so that the fuzz
//! target and the property tests drive exactly what the handlers run.

use serde_json::Value;

use super::validated_but_missing;
use crate::domain::{Amount, Currencies, Currency, Metadata, Reference, Timestamp};
use crate::error::AppError;
use crate::http::request::{Fields, Incoming};
use crate::ledger::holds::Expiry;
use crate::ledger::{Movement, Recipient};

/// Which money route a body is for: each reads the common fields plus its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoneyRoute {
    Deposit,
    Withdraw,
    Transfer,
    /// A new hold: a recipient is optional, and it may say when it expires.
    Hold,
}

/// A money route's body, parsed and validated.
#[derive(Debug)]
pub struct MoneyBody {
    pub movement: Movement,
    /// Only for transfers.
    pub to: Option<Recipient>,
    /// Only for withdrawals.
    pub scheduled_at: Option<Timestamp>,
    /// Only for holds: `expires_in_s` or `expires_at`, when given.
    pub expiry: Option<Expiry>,
}

/// Parses the body of a deposit, withdrawal or transfer (and an operator credit, which reads
/// like a deposit). Pure: no service and no I/O, so the fuzz target and the property tests
/// drive exactly what the handlers run. Never panics, whatever the bytes.
pub fn parse_money_body(
    rq: &Incoming,
    route: MoneyRoute,
    currencies: &Currencies,
) -> Result<MoneyBody, AppError> {
    let body = rq.json()?;
    let mut f = Fields::new(&body);
    let to = match route {
        MoneyRoute::Transfer => recipient(&mut f),
        MoneyRoute::Hold if f.raw("to_user_id").is_some() || f.raw("to_username").is_some() => {
            recipient(&mut f)
        }
        _ => None,
    };
    let expiry = if route == MoneyRoute::Hold {
        expiry(&mut f)
    } else {
        None
    };
    let scheduled_at = if route == MoneyRoute::Withdraw {
        let parsed = f
            .string("scheduled_at", false)
            .map(Timestamp::parse)
            .transpose();
        f.errors.check("scheduled_at", parsed).flatten()
    } else {
        None
    };
    let m = movement(&mut f, rq, currencies);
    f.finish()?;
    let movement = m.ok_or_else(validated_but_missing)?;
    if route == MoneyRoute::Transfer && to.is_none() {
        return Err(validated_but_missing());
    }
    Ok(MoneyBody {
        movement,
        to,
        scheduled_at,
        expiry,
    })
}

/// `expires_in_s` (whole seconds) or `expires_at` (a timestamp), at most one of them; the
/// range is checked against the server's maximum by the use case.
fn expiry(f: &mut Fields<'_>) -> Option<Expiry> {
    match (f.raw("expires_in_s"), f.raw("expires_at")) {
        (Some(_), Some(_)) => {
            f.errors.add(
                "expires_in_s",
                "send either expires_in_s or expires_at, not both",
            );
            None
        }
        (Some(Value::Number(n)), None) => match n.as_u64() {
            Some(s) => Some(Expiry::In(s)),
            None => {
                f.errors
                    .add("expires_in_s", "must be a whole number of seconds");
                None
            }
        },
        (Some(_), None) => {
            f.errors
                .add("expires_in_s", "must be a whole number of seconds");
            None
        }
        (None, Some(_)) => {
            let at = f
                .string("expires_at", false)
                .map(Timestamp::parse)
                .transpose();
            f.errors.check("expires_at", at).flatten().map(Expiry::At)
        }
        (None, None) => None,
    }
}

/// `to_user_id` (a positive whole number) or `to_username` (a string), exactly one of them.
fn recipient(f: &mut Fields<'_>) -> Option<Recipient> {
    match (f.raw("to_user_id"), f.raw("to_username")) {
        (Some(_), Some(_)) => {
            f.errors.add(
                "to_user_id",
                "send either to_user_id or to_username, not both",
            );
            None
        }
        (Some(Value::Number(n)), None) => match n.as_i64().filter(|id| *id > 0) {
            Some(id) => Some(Recipient::UserId(id)),
            None => {
                f.errors
                    .add("to_user_id", "must be a positive whole number");
                None
            }
        },
        (Some(_), None) => {
            f.errors
                .add("to_user_id", "must be a positive whole number");
            None
        }
        (None, Some(Value::String(s))) => Some(Recipient::Username(s.clone())),
        (None, Some(_)) => {
            f.errors.add("to_username", "must be a string");
            None
        }
        (None, None) => {
            f.errors
                .add("to_user_id", "this field (or to_username) is required");
            None
        }
    }
}

/// The `currency` field: absent means the default; an unknown code is its field's error.
pub fn currency_field<'c>(f: &mut Fields<'_>, currencies: &'c Currencies) -> Option<&'c Currency> {
    match f.raw("currency") {
        None => Some(currencies.default_currency()),
        Some(_) => {
            let code = f.string("currency", false)?;
            f.errors.check("currency", currencies.resolve(Some(code)))
        }
    }
}

/// `reference`, or the `Idempotency-Key` header (equal to it when both are sent).
pub(super) fn reference_field(f: &mut Fields<'_>, rq: &Incoming) -> Option<Reference> {
    match (f.string("reference", false), rq.idempotency_key.as_deref()) {
        (Some(body), Some(header)) if body != header => {
            f.errors.add(
                "reference",
                "differs from the Idempotency-Key header; send one or make them equal",
            );
            None
        }
        (Some(r), _) | (None, Some(r)) => f.errors.check("reference", Reference::parse(r)),
        (None, None) => {
            f.errors.add(
                "reference",
                "this field (or the Idempotency-Key header) is required",
            );
            None
        }
    }
}

/// `amount`, `reference` (or the `Idempotency-Key` header) and `metadata`.
fn movement(f: &mut Fields<'_>, rq: &Incoming, currencies: &Currencies) -> Option<Movement> {
    let currency = currency_field(f, currencies);
    let amount = match (f.raw("amount"), currency) {
        (None, _) => {
            f.errors.add("amount", "this field is required");
            None
        }
        // Its scale is the currency's: unknown until the currency is.
        (Some(_), None) => None,
        (Some(v), Some(currency)) => f
            .errors
            .check("amount", Amount::parse(v, currency).map_err(|e| e.0)),
    };
    let reference = reference_field(f, rq);
    let metadata = f
        .errors
        .check("metadata", Metadata::parse(f.raw("metadata")));
    Some(Movement {
        currency: currency?.clone(),
        amount: amount?,
        reference: reference?,
        metadata: metadata?,
    })
}
