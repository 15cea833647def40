//! Holds: money reserved in the payer's balance (`balances.held`) without moving it, like a card
//! authorization, then captured (all or part: a transfer to the recipient, or a withdrawal when
//! there is none), voided, or expired by the server at `expires_at`. Each happens exactly once:
//! a hold leaves HELD once (the schema's `holds_settled` trigger refuses any other change).
//!
//! HELD --(capture, before expires_at)--> CAPTURED + TRANSFER_OUT/IN or WITHDRAWAL, `hold:<id>`
//! HELD --(void)--> VOIDED
//! HELD --(expires_at reached, `expire_due`)--> EXPIRED
//!
//! Who may act: a hold with a recipient is a promise to the recipient, who alone captures or
//! voids it (the payer gets 403); a hold without one is the payer's. Staff may act on any hold
//! but one of their own. Anyone else is told the hold does not exist.
//!
//! Every path that changes a balance locks its wallet first (on PostgreSQL; SQLite has one
//! writer), and a capture locks both wallets in key order, as a transfer does.

use super::entries::{self, NewEntry, WalletKey, WalletRef};
use super::{conflict, currency_of, Movement, Outcome, Recipient};
use crate::domain::{
    Amount, Currencies, Currency, EntryKind, HoldStatus, Metadata, MinorUnits, Reference, Timestamp,
};
use crate::error::AppError;
use crate::store::{lock_for_transaction, Engine, LockClass, Row, Sql};

/// How long a hold lasts when the request does not say.
pub const HOLD_EXPIRY_DEFAULT_S: u64 = 7 * 86_400;
/// Holds expired per write transaction by `expire_due`: a short job, so a burst of expiries
/// never keeps money-moving requests waiting long.
pub const EXPIRE_BATCH_HOLDS_MAX: u32 = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub id: String,
    pub wallet_key: WalletKey,
    pub payer_user_id: i64,
    pub currency: String,
    pub amount: MinorUnits,
    pub reference: String,
    pub to_user_id: Option<i64>,
    pub metadata: Metadata,
    pub status: HoldStatus,
    pub expires_at: Timestamp,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub captured_amount: Option<MinorUnits>,
    /// The capture's entries: the payer's, then the recipient's.
    pub transaction_ids: Vec<String>,
}

const COLUMNS: &str = "h.id, h.wallet_key, w.user_id, h.currency, h.amount, h.reference, \
     h.to_user_id, h.metadata, h.status, h.expires_at, h.created_at, h.updated_at, \
     h.captured_amount, h.out_entry_id, h.in_entry_id";
const FROM: &str = "holds h JOIN wallets w ON w.key = h.wallet_key";

fn from_row(r: &Row) -> Result<Hold, AppError> {
    let status: String = r.get(8)?;
    let out: Option<String> = r.get(13)?;
    let incoming: Option<String> = r.get(14)?;
    Ok(Hold {
        id: r.get(0)?,
        wallet_key: r.get(1)?,
        payer_user_id: r.get(2)?,
        currency: r.get(3)?,
        amount: r.get(4)?,
        reference: r.get(5)?,
        to_user_id: r.get(6)?,
        metadata: Metadata::from_stored(r.get(7)?),
        status: HoldStatus::parse(&status)
            .ok_or_else(|| AppError::internal("reading a hold", format!("status {status}")))?,
        expires_at: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
        captured_amount: r.get(12)?,
        transaction_ids: out.into_iter().chain(incoming).collect(),
    })
}

/// When a hold ends if nobody acts: in `seconds`, or at a moment.
#[derive(Debug, Clone, Copy)]
pub enum Expiry {
    In(u64),
    At(Timestamp),
}

#[derive(Debug, Clone)]
pub struct HoldRequest {
    pub movement: Movement,
    pub to: Option<Recipient>,
    pub expiry: Option<Expiry>,
}

/// Who asks to capture or void a hold.
#[derive(Debug, Clone, Copy)]
pub enum Actor {
    User(i64),
    Staff(i64),
}

fn find_by_id(conn: &dyn Sql, id: &str) -> Result<Option<Hold>, AppError> {
    conn.query_opt(
        &format!("SELECT {COLUMNS} FROM {FROM} WHERE h.id = ?1"),
        &[&id],
    )?
    .as_ref()
    .map(from_row)
    .transpose()
}

fn find_by_reference(
    conn: &dyn Sql,
    wallet_key: WalletKey,
    reference: &str,
) -> Result<Option<Hold>, AppError> {
    conn.query_opt(
        &format!("SELECT {COLUMNS} FROM {FROM} WHERE h.wallet_key = ?1 AND h.reference = ?2"),
        &[&wallet_key, &reference],
    )?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// Locks wallets' rows in key order (PostgreSQL), as transfers lock them, so that two
/// requests never each hold one and wait for the other. SQLite has one writer.
fn lock_wallets(conn: &dyn Sql, keys: &[WalletKey]) -> Result<(), AppError> {
    if conn.engine() != Engine::Postgres {
        return Ok(());
    }
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        conn.query_one(
            "SELECT key FROM wallets WHERE key = ?1 FOR NO KEY UPDATE",
            &[&key],
        )?;
    }
    Ok(())
}

/// Locks a hold's row until commit (PostgreSQL) and reads it.
fn lock_and_read(conn: &dyn Sql, id: &str) -> Result<Option<Hold>, AppError> {
    if conn.engine() == Engine::Postgres {
        conn.query_opt("SELECT id FROM holds WHERE id = ?1 FOR UPDATE", &[&id])?;
    }
    find_by_id(conn, id)
}

/// Reserves `amount` of the wallet's balance in `currency`, or refuses with what is available.
fn reserve(
    conn: &dyn Sql,
    wallet_key: WalletKey,
    currency: &Currency,
    amount: MinorUnits,
) -> Result<(), AppError> {
    let moved = conn.execute(
        "UPDATE balances SET held = held + ?3
         WHERE wallet_key = ?1 AND currency = ?2 AND balance - held >= ?3 AND frozen = 0",
        &[&wallet_key, &currency.code, &amount],
    )?;
    if moved == 1 {
        return Ok(());
    }
    if entries::is_frozen(conn, wallet_key)? {
        return Err(AppError::WalletFrozen);
    }
    let (balance, held) = entries::balance_and_held(conn, wallet_key, &currency.code)?;
    Err(AppError::InsufficientFunds {
        available: currency.money(balance.checked_sub(held).unwrap_or(MinorUnits::ZERO)),
        required: currency.money(amount),
    })
}

/// Gives back what `h` reserved.
fn release(conn: &dyn Sql, h: &Hold) -> Result<(), AppError> {
    let released = conn.execute(
        "UPDATE balances SET held = held - ?3
         WHERE wallet_key = ?1 AND currency = ?2 AND held >= ?3",
        &[&h.wallet_key, &h.currency, &h.amount],
    )?;
    if released != 1 {
        return Err(AppError::internal(
            "releasing a hold",
            format!("hold {} is not in its balance's held amount", h.id),
        ));
    }
    Ok(())
}

/// Creates a hold: the payer's `available` must cover it. References work as for deposits:
/// the same reference and payload replays, another payload is a conflict, a refused request
/// consumes nothing.
pub fn create(
    conn: &dyn Sql,
    now: Timestamp,
    payer: (i64, &WalletRef),
    req: &HoldRequest,
    expiry_max_s: u64,
) -> Result<Outcome<Hold>, AppError> {
    let (payer_user_id, wallet) = payer;
    let m = &req.movement;
    let to = match &req.to {
        None => None,
        Some(to) => Some(super::resolve_recipient(conn, payer_user_id, to)?.0),
    };
    lock_for_transaction(
        conn,
        LockClass::Reference,
        &format!("{}:hold:{}", wallet.key, m.reference.as_str()),
    )?;
    if let Some(h) = find_by_reference(conn, wallet.key, m.reference.as_str())? {
        let same = h.amount == m.amount.units()
            && h.currency == m.currency.code
            && h.to_user_id == to
            && h.metadata == m.metadata;
        return if same {
            Ok(Outcome::replay(h))
        } else {
            Err(conflict(format_args!("hold {}", h.id)))
        };
    }
    let expires_at = expires_at(now, req.expiry, expiry_max_s)?;
    lock_wallets(conn, &[wallet.key])?;
    reserve(conn, wallet.key, &m.currency, m.amount.units())?;
    let id = uuid::Uuid::now_v7().to_string();
    conn.execute(
        "INSERT INTO holds (id, wallet_key, currency, amount, reference, to_user_id, metadata,
             status, expires_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'HELD', ?8, ?9, ?9)",
        &[
            &id,
            &wallet.key,
            &m.currency.code,
            &m.amount.units(),
            &m.reference.as_str(),
            &to,
            &m.metadata.as_str(),
            &expires_at,
            &now,
        ],
    )?;
    let h = find_by_id(conn, &id)?.ok_or(AppError::NotFound("hold"))?;
    Ok(Outcome::new(h))
}

/// When a new hold expires: `In` seconds from now (1 up to the maximum), `At` a moment in that
/// window, or the default of 7 days (at most the maximum).
fn expires_at(
    now: Timestamp,
    expiry: Option<Expiry>,
    expiry_max_s: u64,
) -> Result<Timestamp, AppError> {
    let max_ms = i64::try_from(expiry_max_s.saturating_mul(1000)).unwrap_or(i64::MAX / 4);
    let latest = now.plus_millis(max_ms);
    match expiry {
        None => Ok(now.plus_millis(max_ms.min(HOLD_EXPIRY_DEFAULT_S as i64 * 1000))),
        Some(Expiry::In(s)) if s == 0 || s > expiry_max_s => Err(AppError::field(
            "expires_in_s",
            format!("must be a whole number of seconds from 1 to {expiry_max_s}"),
        )),
        Some(Expiry::In(s)) => Ok(now.plus_millis(s as i64 * 1000)),
        Some(Expiry::At(at)) if at <= now => {
            Err(AppError::field("expires_at", "must be in the future"))
        }
        Some(Expiry::At(at)) if at > latest => Err(AppError::field(
            "expires_at",
            format!("must be at most {expiry_max_s} seconds ahead"),
        )),
        Some(Expiry::At(at)) => Ok(at),
    }
}

/// The hold `id` as `actor` may act on it: the recipient of a promise, the payer of a hold
/// without recipient, or staff on another's hold. The payer of a promise is refused (403);
/// anyone else is told it does not exist.
fn authorize(h: Option<Hold>, actor: Actor) -> Result<Hold, AppError> {
    let h = h.ok_or(AppError::NotFound("hold"))?;
    match actor {
        Actor::Staff(staff) if staff == h.payer_user_id || h.to_user_id == Some(staff) => {
            Err(AppError::Forbidden)
        }
        Actor::Staff(_) => Ok(h),
        Actor::User(user) if h.to_user_id == Some(user) => Ok(h),
        Actor::User(user) if user == h.payer_user_id && h.to_user_id.is_none() => Ok(h),
        Actor::User(user) if user == h.payer_user_id => Err(AppError::Forbidden),
        Actor::User(_) => Err(AppError::NotFound("hold")),
    }
}

fn expired(h: &Hold) -> AppError {
    AppError::Conflict(format!("the hold expired at {}", h.expires_at.to_text()))
}

fn not_held(h: &Hold, action: &str) -> AppError {
    AppError::Conflict(format!(
        "only a HELD hold can be {action}; this one is {}",
        h.status.as_str()
    ))
}

/// Captures `amount` (the whole hold when `None`) of a HELD hold before it expires, and
/// releases the rest. A repeated capture of the amount already captured replays it; any other
/// capture after the first is a conflict.
pub fn capture(
    conn: &dyn Sql,
    now: Timestamp,
    currencies: &Currencies,
    actor: Actor,
    id: &str,
    amount: Option<Amount>,
) -> Result<Outcome<Hold>, AppError> {
    let h = authorize(lock_and_read(conn, id)?, actor)?;
    let asked = amount.map_or(h.amount, Amount::units);
    if h.status == HoldStatus::Captured && h.captured_amount == Some(asked) {
        return Ok(Outcome::replay(h));
    }
    if h.status != HoldStatus::Held {
        return Err(not_held(&h, "captured"));
    }
    if now >= h.expires_at {
        return Err(expired(&h));
    }
    let currency = currency_of(currencies, &h.currency)?;
    if asked > h.amount {
        return Err(AppError::field(
            "amount",
            format!(
                "must be at most the held amount, {}",
                currency.format(h.amount)
            ),
        ));
    }
    let payer = WalletRef {
        key: h.wallet_key,
        id: wallet_id(conn, h.wallet_key)?,
    };
    let recipient = match h.to_user_id {
        Some(user) => Some((
            user,
            super::queries::wallet_of_user(conn, user)?.wallet_ref(),
        )),
        None => None,
    };
    let mut keys = vec![payer.key];
    keys.extend(recipient.as_ref().map(|(_, w)| w.key));
    lock_wallets(conn, &keys)?;
    release(conn, &h)?;
    let reference = Reference::for_hold(&h.id);
    let (out_id, in_id) = match &recipient {
        Some((to_user, to_wallet)) => {
            let moved = super::move_between(
                conn,
                now,
                (h.payer_user_id, &payer),
                (*to_user, to_wallet),
                currency,
                asked,
                reference.as_str(),
                &h.metadata,
            )?;
            (moved.transfer_out.id, Some(moved.transfer_in.id))
        }
        None => {
            let out = entries::append(
                conn,
                now,
                NewEntry {
                    wallet: &payer,
                    kind: EntryKind::Withdrawal,
                    amount: currency.money(asked),
                    currency: &currency.code,
                    reference: reference.as_str(),
                    counterparty_user_id: None,
                    transfer_id: None,
                    metadata: &h.metadata,
                    reverses: None,
                },
            )?;
            (out.id, None)
        }
    };
    settle(
        conn,
        now,
        &h,
        HoldStatus::Captured,
        Some((asked, &out_id, in_id.as_deref())),
    )?;
    let h = find_by_id(conn, id)?.ok_or(AppError::NotFound("hold"))?;
    Ok(Outcome::new(h))
}

/// Voids a HELD hold: its money is available again.
pub fn void(conn: &dyn Sql, now: Timestamp, actor: Actor, id: &str) -> Result<Hold, AppError> {
    let h = authorize(lock_and_read(conn, id)?, actor)?;
    if h.status != HoldStatus::Held {
        return Err(not_held(&h, "voided"));
    }
    // Past its time it is expired, whether or not the expiry job has recorded that yet.
    if now >= h.expires_at {
        return Err(expired(&h));
    }
    lock_wallets(conn, &[h.wallet_key])?;
    release(conn, &h)?;
    settle(conn, now, &h, HoldStatus::Voided, None)?;
    find_by_id(conn, id)?.ok_or(AppError::NotFound("hold"))
}

/// Moves `h` out of HELD, once: the `WHERE status = 'HELD'` and the schema's trigger both
/// refuse a second time.
fn settle(
    conn: &dyn Sql,
    now: Timestamp,
    h: &Hold,
    status: HoldStatus,
    captured: Option<(MinorUnits, &str, Option<&str>)>,
) -> Result<(), AppError> {
    let (amount, out, incoming) = match captured {
        Some((amount, out, incoming)) => (Some(amount), Some(out), incoming),
        None => (None, None, None),
    };
    let changed = conn.execute(
        "UPDATE holds SET status = ?2, updated_at = ?3, captured_amount = ?4, out_entry_id = ?5,
             in_entry_id = ?6
         WHERE id = ?1 AND status = 'HELD'",
        &[&h.id, &status.as_str(), &now, &amount, &out, &incoming],
    )?;
    if changed != 1 {
        return Err(not_held(h, "settled"));
    }
    Ok(())
}

fn wallet_id(conn: &dyn Sql, key: WalletKey) -> Result<String, AppError> {
    conn.query_one("SELECT id FROM wallets WHERE key = ?1", &[&key])?
        .get(0)
}

/// Expires HELD holds whose time has come, oldest first, at most `EXPIRE_BATCH_HOLDS_MAX`; returns
/// how many. On PostgreSQL a hold another process is capturing or expiring right now is
/// skipped (`SKIP LOCKED`): that one decides it.
pub fn expire_due(conn: &dyn Sql, now: Timestamp) -> Result<usize, AppError> {
    let sql = match conn.engine() {
        Engine::Sqlite => {
            "SELECT id FROM holds WHERE status = 'HELD' AND expires_at <= ?1
             ORDER BY expires_at LIMIT ?2"
        }
        Engine::Postgres => {
            "SELECT id FROM holds WHERE status = 'HELD' AND expires_at <= ?1
             ORDER BY expires_at LIMIT ?2 FOR UPDATE SKIP LOCKED"
        }
    };
    let ids: Vec<String> = conn
        .query(sql, &[&now, &EXPIRE_BATCH_HOLDS_MAX])?
        .iter()
        .map(|r| r.get(0))
        .collect::<Result<_, _>>()?;
    let mut due = Vec::with_capacity(ids.len());
    for id in &ids {
        due.extend(find_by_id(conn, id)?);
    }
    // Every payer's wallet at once, in key order, as transfers and captures lock them: one
    // by one in expiry order, a batch could hold one wallet and wait for another that a
    // transfer holding the second is waiting to take from the first.
    let keys: Vec<WalletKey> = due.iter().map(|h| h.wallet_key).collect();
    lock_wallets(conn, &keys)?;
    for h in &due {
        release(conn, h)?;
        settle(conn, now, h, HoldStatus::Expired, None)?;
    }
    Ok(due.len())
}

/// When the next HELD hold expires.
pub fn next_expiry(conn: &dyn Sql) -> Result<Option<Timestamp>, AppError> {
    conn.query_one(
        "SELECT min(expires_at) FROM holds WHERE status = 'HELD'",
        &[],
    )?
    .get(0)
}

/// Which of a user's holds to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Payer,
    Recipient,
}

/// A user's holds, newest first: those they pay, those promised to them, or both.
pub fn list(
    conn: &dyn Sql,
    user_id: i64,
    status: Option<HoldStatus>,
    role: Option<Role>,
    limit: u32,
    offset: u32,
) -> Result<(i64, Vec<Hold>), AppError> {
    let status = status.map(HoldStatus::as_str);
    let (payer, recipient) = match role {
        None => (true, true),
        Some(Role::Payer) => (true, false),
        Some(Role::Recipient) => (false, true),
    };
    let (payer, recipient) = (i64::from(payer), i64::from(recipient));
    let filter = "((?2 = 1 AND w.user_id = ?1) OR (?3 = 1 AND h.to_user_id = ?1))
         AND (CAST(?4 AS TEXT) IS NULL OR h.status = ?4)";
    let count: i64 = conn
        .query_one(
            &format!("SELECT count(*) FROM {FROM} WHERE {filter}"),
            &[&user_id, &payer, &recipient, &status],
        )?
        .get(0)?;
    let holds = conn
        .query(
            &format!(
                "SELECT {COLUMNS} FROM {FROM} WHERE {filter}
                 ORDER BY h.created_at DESC, h.id DESC LIMIT ?5 OFFSET ?6"
            ),
            &[&user_id, &payer, &recipient, &status, &limit, &offset],
        )?
        .iter()
        .map(from_row)
        .collect::<Result<_, _>>()?;
    Ok((count, holds))
}

/// One hold, for its payer or its recipient; anyone else is told it does not exist.
pub fn get(conn: &dyn Sql, user_id: i64, id: &str) -> Result<Hold, AppError> {
    find_by_id(conn, id)?
        .filter(|h| h.payer_user_id == user_id || h.to_user_id == Some(user_id))
        .ok_or(AppError::NotFound("hold"))
}

/// One hold, for staff.
pub fn get_any(conn: &dyn Sql, id: &str) -> Result<Hold, AppError> {
    find_by_id(conn, id)?.ok_or(AppError::NotFound("hold"))
}
