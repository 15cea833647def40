//! The money rules. Every function that moves money runs inside the writer's transaction
//! (`db::Writer::execute`) and takes `now` from it. Nothing here knows about HTTP.
//!
//! Idempotency: a reference is unique per wallet and kind (deposit, withdrawal, transfer
//! out). The same kind, reference and payload replays the original result; a different payload
//! is `ReferenceConflict`. A failed request rolls back its savepoint, so it consumes nothing.

pub mod batch;
pub mod entries;
pub mod holds;
#[cfg(test)]
mod invariants;
pub mod kinds;
pub mod queries;
pub mod reversals;
pub mod snapshot;
pub mod withdrawals;

use crate::domain::{
    Amount, Currencies, Currency, EntryKind, Metadata, MinorUnits, Reference, Timestamp,
};
use crate::error::AppError;
use crate::store::{Engine, Sql};
use entries::NewEntry;
pub use entries::{Entry, WalletKey, WalletRef};

/// A result, and whether it is the replay of an earlier identical request.
#[derive(Debug)]
pub struct Outcome<T> {
    pub value: T,
    pub replayed: bool,
}

impl<T> Outcome<T> {
    fn new(value: T) -> Outcome<T> {
        Outcome {
            value,
            replayed: false,
        }
    }
    fn replay(value: T) -> Outcome<T> {
        Outcome {
            value,
            replayed: true,
        }
    }
}

/// A deposit, an immediate withdrawal, or an operator credit.
#[derive(Debug, Clone)]
pub struct Movement {
    /// The currency of `amount` (parsed at its scale).
    pub currency: Currency,
    pub amount: Amount,
    pub reference: Reference,
    pub metadata: Metadata,
}

#[derive(Debug, Clone)]
pub enum Recipient {
    UserId(i64),
    Username(String),
}

#[derive(Debug, Clone)]
pub struct TransferRequest {
    pub to: Recipient,
    pub movement: Movement,
}

#[derive(Debug, Clone)]
pub struct TransferResult {
    pub transfer_out: Entry,
    pub transfer_in: Entry,
}

/// Freezes the wallet with `reason` (`Some`), or unfreezes it (`None`): while frozen, every
/// debit it starts is refused (`AppError::WalletFrozen`) and credits still arrive. The flag is
/// kept on each of its balances too, where the statement that takes money checks it; a
/// balance created later copies the wallet's. Returns when it was frozen, if it is.
pub fn set_frozen(
    conn: &dyn Sql,
    now: Timestamp,
    wallet: &WalletRef,
    reason: Option<&str>,
) -> Result<Option<Timestamp>, AppError> {
    let at = reason.map(|_| now);
    // The wallet's row first, as every path that changes its balances locks it first. Only a
    // change is made: freezing a frozen wallet would lose when and why it was frozen.
    let changed = conn.execute(
        "UPDATE wallets SET frozen_at = ?2, frozen_reason = ?3
         WHERE key = ?1 AND (frozen_at IS NULL) = (CAST(?2 AS TEXT) IS NOT NULL)",
        &[&wallet.key, &at, &reason],
    )?;
    if changed != 1 {
        return Err(AppError::Conflict(
            if reason.is_some() {
                "the wallet is frozen already"
            } else {
                "the wallet is not frozen"
            }
            .into(),
        ));
    }
    conn.execute(
        "UPDATE balances SET frozen = ?2 WHERE wallet_key = ?1",
        &[&wallet.key, &i64::from(reason.is_some())],
    )?;
    Ok(at)
}

/// When and why a user's wallet was frozen, if it is.
pub fn frozen_state(conn: &dyn Sql, user_id: i64) -> Result<Option<(Timestamp, String)>, AppError> {
    match conn.query_opt(
        "SELECT frozen_at, frozen_reason FROM wallets WHERE user_id = ?1 AND frozen_at IS NOT NULL",
        &[&user_id],
    )? {
        Some(r) => Ok(Some((
            r.get(0)?,
            r.get::<Option<String>>(1)?.unwrap_or_default(),
        ))),
        None => Ok(None),
    }
}

/// A stored currency code's settings. Start-up refuses to serve a database without every
/// currency it holds money in (`db::check_currencies`), so this finds one for every row.
pub fn currency_of<'a>(currencies: &'a Currencies, code: &str) -> Result<&'a Currency, AppError> {
    currencies
        .get(code)
        .ok_or_else(|| AppError::internal("currency", format!("{code} is not configured")))
}

pub(crate) fn conflict(holder: impl std::fmt::Display) -> AppError {
    AppError::ReferenceConflict {
        holder: format!("already used by {holder}"),
    }
}

/// Returns the earlier entry when this request is a replay of it, a conflict when the reference
/// is taken by a different request, or `None` when the reference is new.
fn replay_of(
    conn: &dyn Sql,
    wallet: &WalletRef,
    kind: EntryKind,
    m: &Movement,
    counterparty: Option<i64>,
) -> Result<Option<Entry>, AppError> {
    entries::lock_reference(conn, wallet.key, m.reference.as_str())?;
    match entries::find_by_reference(conn, wallet.key, kind, m.reference.as_str())? {
        None => Ok(None),
        Some(e)
            if e.amount == m.amount.units()
                && e.currency == m.currency.code
                && e.metadata == m.metadata
                && e.counterparty_user_id == counterparty =>
        {
            Ok(Some(e))
        }
        Some(e) => Err(conflict(format_args!("transaction {}", e.id))),
    }
}

pub fn deposit(
    conn: &dyn Sql,
    now: Timestamp,
    wallet: &WalletRef,
    m: &Movement,
) -> Result<Outcome<Entry>, AppError> {
    if let Some(e) = replay_of(conn, wallet, EntryKind::Deposit, m, None)? {
        return Ok(Outcome::replay(e));
    }
    let entry = entries::append(
        conn,
        now,
        NewEntry {
            wallet,
            kind: EntryKind::Deposit,
            amount: m.currency.money(m.amount.units()),
            currency: &m.currency.code,
            reference: m.reference.as_str(),
            counterparty_user_id: None,
            transfer_id: None,
            metadata: &m.metadata,
            reverses: None,
        },
    )?;
    Ok(Outcome::new(entry))
}

pub fn withdraw_now(
    conn: &dyn Sql,
    now: Timestamp,
    wallet: &WalletRef,
    m: &Movement,
) -> Result<Outcome<Entry>, AppError> {
    // A scheduled withdrawal holds its reference from the moment it is requested.
    entries::lock_reference(conn, wallet.key, m.reference.as_str())?;
    if let Some(w) = withdrawals::find_by_reference(conn, &wallet.id, m.reference.as_str())? {
        return Err(conflict(format_args!("withdrawal {}", w.id)));
    }
    if let Some(e) = replay_of(conn, wallet, EntryKind::Withdrawal, m, None)? {
        return Ok(Outcome::replay(e));
    }
    let entry = entries::append(
        conn,
        now,
        NewEntry {
            wallet,
            kind: EntryKind::Withdrawal,
            amount: m.currency.money(m.amount.units()),
            currency: &m.currency.code,
            reference: m.reference.as_str(),
            counterparty_user_id: None,
            transfer_id: None,
            metadata: &m.metadata,
            reverses: None,
        },
    )?;
    Ok(Outcome::new(entry))
}

/// The recipient's user id and wallet; unknown users and oneself are validation errors.
pub(crate) fn resolve_recipient(
    conn: &dyn Sql,
    sender_user_id: i64,
    to: &Recipient,
) -> Result<(i64, WalletRef), AppError> {
    let row = |r: crate::store::Row| -> Result<(i64, WalletRef), AppError> {
        Ok((
            r.get(0)?,
            WalletRef {
                key: r.get(1)?,
                id: r.get(2)?,
            },
        ))
    };
    let (field, found) = match to {
        // Every user has a wallet, so the wallet row alone answers.
        Recipient::UserId(id) => (
            "to_user_id",
            conn.query_opt(
                "SELECT user_id, key, id FROM wallets WHERE user_id = ?1",
                &[id],
            )?,
        ),
        Recipient::Username(name) => (
            "to_username",
            conn.query_opt(
                "SELECT u.id, w.key, w.id FROM users u JOIN wallets w ON w.user_id = u.id WHERE u.username_key = ?1",
                &[&crate::domain::username_key(name)],
            )?,
        ),
    };
    let found = found.map(row).transpose()?;
    match found {
        None => Err(AppError::field(field, "no such user")),
        Some((id, _)) if id == sender_user_id => {
            Err(AppError::field(field, "cannot transfer to yourself"))
        }
        Some(found) => Ok(found),
    }
}

pub fn transfer(
    conn: &dyn Sql,
    now: Timestamp,
    sender: (i64, &WalletRef),
    req: &TransferRequest,
) -> Result<Outcome<TransferResult>, AppError> {
    let (sender_user_id, sender_wallet) = sender;
    let (to_user_id, to_wallet) = resolve_recipient(conn, sender_user_id, &req.to)?;
    let m = &req.movement;
    if let Some(out) = replay_of(
        conn,
        sender_wallet,
        EntryKind::TransferOut,
        m,
        Some(to_user_id),
    )? {
        let transfer_in = entries::find_transfer_in(conn, &out)?
            .ok_or_else(|| AppError::internal("transfer replay", "incoming half missing"))?;
        return Ok(Outcome::replay(TransferResult {
            transfer_out: out,
            transfer_in,
        }));
    }
    let moved = move_between(
        conn,
        now,
        (sender_user_id, sender_wallet),
        (to_user_id, &to_wallet),
        &m.currency,
        m.amount.units(),
        m.reference.as_str(),
        &m.metadata,
    )?;
    Ok(Outcome::new(moved))
}

/// A transfer's two entries, `TRANSFER_OUT` from `from` and `TRANSFER_IN` to `to`, with one
/// transfer id: what a transfer and the capture of a hold with a recipient both write. The
/// caller has dealt with references and replays.
#[allow(clippy::too_many_arguments)]
pub(crate) fn move_between(
    conn: &dyn Sql,
    now: Timestamp,
    from: (i64, &WalletRef),
    to: (i64, &WalletRef),
    currency: &Currency,
    amount: MinorUnits,
    reference: &str,
    metadata: &Metadata,
) -> Result<TransferResult, AppError> {
    let ((sender_user_id, sender_wallet), (to_user_id, to_wallet)) = (from, to);
    let transfer_id = uuid::Uuid::now_v7().to_string();
    let out = NewEntry {
        wallet: sender_wallet,
        kind: EntryKind::TransferOut,
        amount: currency.money(amount),
        currency: &currency.code,
        reference,
        counterparty_user_id: Some(to_user_id),
        transfer_id: Some(&transfer_id),
        metadata,
        reverses: None,
    };
    let incoming = NewEntry {
        wallet: to_wallet,
        kind: EntryKind::TransferIn,
        amount: currency.money(amount),
        currency: &currency.code,
        reference,
        counterparty_user_id: Some(sender_user_id),
        transfer_id: Some(&transfer_id),
        metadata,
        reverses: None,
    };
    let (transfer_out, transfer_in) = match conn.engine() {
        Engine::Sqlite => {
            let (transfer_out, out_head) = entries::append_after(conn, now, out, None)?;
            // The chain head is the outgoing half, just appended.
            let (transfer_in, _) = entries::append_after(conn, now, incoming, out_head)?;
            (transfer_out, transfer_in)
        }
        // Each half locks its wallet until commit. They are appended in wallet key order,
        // whichever pays, so that A→B and B→A at once can't each hold one wallet and wait for
        // the other. When the credit comes first and the debit is then refused, the refusal
        // rolls the credit back with the rest of the request.
        Engine::Postgres if to_wallet.key < sender_wallet.key => {
            let transfer_in = entries::append(conn, now, incoming)?;
            (entries::append(conn, now, out)?, transfer_in)
        }
        Engine::Postgres => {
            let transfer_out = entries::append(conn, now, out)?;
            (transfer_out, entries::append(conn, now, incoming)?)
        }
    };
    // A transfer's two entries sum to zero. On SQLite they sit next to each other in the
    // ledger (replays find the incoming half by that position); on PostgreSQL other
    // processes' entries may come between, and replays find it by transfer id.
    assert_eq!(transfer_out.amount, transfer_in.amount);
    if conn.engine() == Engine::Sqlite {
        assert_eq!(transfer_in.seq, transfer_out.seq + 1);
    }
    Ok(TransferResult {
        transfer_out,
        transfer_in,
    })
}

#[cfg(test)]
mod tests;
