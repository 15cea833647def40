//! The bodies of the money routes, parsed and validated without a service, so that the fuzz
//! target and the property tests drive exactly what the handlers run.

use serde_json::Value;

use super::validated_but_missing;
use crate::domain::{Amount, Currency, Metadata, Reference, Timestamp};
use crate::error::AppError;
use crate::http::request::{Fields, Incoming};
use crate::ledger::{Movement, Recipient};

/// Which money route a body is for: each reads the common fields plus its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoneyRoute {
    Deposit,
    Withdraw,
    Transfer,
}

/// A money route's body, parsed and validated.
#[derive(Debug)]
pub struct MoneyBody {
    pub movement: Movement,
    /// Only for transfers.
    pub to: Option<Recipient>,
    /// Only for withdrawals.
    pub scheduled_at: Option<Timestamp>,
}

/// Parses the body of a deposit, withdrawal or transfer (and an operator credit, which reads
/// like a deposit). Pure: no service and no I/O, so the fuzz target and the property tests
/// drive exactly what the handlers run. Never panics, whatever the bytes.
pub fn parse_money_body(
    rq: &Incoming,
    route: MoneyRoute,
    currency: &Currency,
) -> Result<MoneyBody, AppError> {
    let body = rq.json()?;
    let mut f = Fields::new(&body);
    let to = if route == MoneyRoute::Transfer {
        recipient(&mut f)
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
    let m = movement(&mut f, rq, currency);
    f.finish()?;
    let movement = m.ok_or_else(validated_but_missing)?;
    if route == MoneyRoute::Transfer && to.is_none() {
        return Err(validated_but_missing());
    }
    Ok(MoneyBody {
        movement,
        to,
        scheduled_at,
    })
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

/// `amount`, `reference` (or the `Idempotency-Key` header) and `metadata`.
fn movement(f: &mut Fields<'_>, rq: &Incoming, currency: &Currency) -> Option<Movement> {
    let amount = match f.raw("amount") {
        None => {
            f.errors.add("amount", "this field is required");
            None
        }
        Some(v) => f
            .errors
            .check("amount", Amount::parse(v, currency).map_err(|e| e.0)),
    };
    let reference = match (f.string("reference", false), rq.idempotency_key.as_deref()) {
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
    };
    let metadata = f
        .errors
        .check("metadata", Metadata::parse(f.raw("metadata")));
    Some(Movement {
        amount: amount?,
        reference: reference?,
        metadata: metadata?,
    })
}
