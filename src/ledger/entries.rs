//! Ledger rows: appending an entry (the only way a balance changes), reading entries back,
//! and the hash chain that makes rewriting history detectable.

use std::sync::LazyLock;

use sha2::{Digest, Sha256};

use super::kinds;
use crate::domain::{EntryKind, Metadata, MinorUnits, Money, Timestamp};
use crate::error::AppError;
use crate::store::{
    lock_for_transaction, Engine, FromValue, LockClass, Param, Row, Sql, ToParam, Value,
};

/// A wallet's integer key: how entries and queries name a wallet in storage. Only storage
/// makes one (from a row), so a user id or a count can't be passed where a wallet is meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WalletKey(i64);

impl WalletKey {
    /// A key read from storage by hand (outside `FromValue`).
    pub(crate) fn from_storage(key: i64) -> WalletKey {
        WalletKey(key)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for WalletKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

// A wallet key is stored as an INTEGER. The impls live here, beside the type; money's
// (`MinorUnits`) live in `store`, since `domain` knows nothing of SQL.
impl ToParam for WalletKey {
    fn to_param(&self) -> Param<'_> {
        Param::Int(self.0)
    }
}

impl FromValue for WalletKey {
    fn from_value(v: &Value) -> Option<WalletKey> {
        i64::from_value(v).map(WalletKey)
    }
}

/// One ledger entry ("transaction" in the API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: i64,
    pub id: String,
    pub wallet_id: String,
    pub kind: EntryKind,
    pub amount: MinorUnits,
    pub balance_after: MinorUnits,
    pub reference: String,
    pub counterparty_user_id: Option<i64>,
    pub transfer_id: Option<String>,
    pub metadata: Metadata,
    pub created_at: Timestamp,
    /// The code of the currency it moves.
    pub currency: String,
    /// The entry a reversal undoes (`REVERSAL_OUT`, `REVERSAL_IN`); `None` on every other kind.
    pub reverses: Option<String>,
}

/// The columns `entry_from_row` reads, to be selected `FROM {ENTRY_FROM}`.
pub const ENTRY_COLUMNS: &str = entry_columns!();
/// How many columns `ENTRY_COLUMNS` names: a query that selects more after them (the hash)
/// reads the first of those at this index.
pub const ENTRY_COLUMNS_COUNT: usize = 13;
/// Entries name their wallet by its integer key; the API and the hash chain by its public id.
pub const ENTRY_FROM: &str = entry_from!();

/// `ENTRY_COLUMNS` and `ENTRY_FROM` as literals, for SQL built with `concat!`.
macro_rules! entry_columns {
    () => {
        "e.seq, e.id, w.id, e.kind, e.amount, e.balance_after, e.reference, \
         e.counterparty_user_id, e.transfer_id, e.metadata, e.created_at, e.currency, e.reverses"
    };
}
macro_rules! entry_from {
    () => {
        "entries e JOIN wallets w ON w.key = e.wallet_key"
    };
}
pub(crate) use {entry_columns, entry_from};

pub fn entry_from_row(r: &Row) -> Result<Entry, AppError> {
    let kind: String = r.get(3)?;
    let created_at: String = r.get(10)?;
    Ok(Entry {
        seq: r.get(0)?,
        id: r.get(1)?,
        wallet_id: r.get(2)?,
        kind: EntryKind::parse(&kind)
            .ok_or_else(|| AppError::internal("reading an entry", format!("kind {kind}")))?,
        amount: r.get(4)?,
        balance_after: r.get(5)?,
        reference: r.get(6)?,
        counterparty_user_id: r.get(7)?,
        transfer_id: r.get(8)?,
        metadata: Metadata::from_stored(r.get(9)?),
        created_at: Timestamp::from_stored(&created_at),
        currency: r.get(11)?,
        reverses: r.get(12)?,
    })
}

/// A wallet as the ledger names it: by its integer key in SQL, by its public id in the API
/// and in the hash chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletRef {
    pub key: WalletKey,
    pub id: String,
}

/// What a new entry says; `append` adds the position, balance and hash.
pub struct NewEntry<'a> {
    pub wallet: &'a WalletRef,
    pub kind: EntryKind,
    /// Positive (an `Amount`), with the currency's scale for an `InsufficientFunds` error.
    pub amount: Money,
    /// The code of the currency of `amount`: the balance it moves.
    pub currency: &'a str,
    pub reference: &'a str,
    pub counterparty_user_id: Option<i64>,
    pub transfer_id: Option<&'a str>,
    pub metadata: &'a Metadata,
    /// The entry a reversal undoes.
    pub reverses: Option<&'a str>,
}

/// The newest entry of the chain: its position and hash, and the first position whose entry
/// has its currency in the chain (`settings.chain_currency_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: [u8; 32],
    pub currency_from: i64,
}

/// The chain's starting point: the "previous hash" of the first entry.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// SHA-256 over the previous entry's hash, then each field as a 4-byte big-endian length and
/// its UTF-8 text (numbers in decimal, absent values empty), then the currency for entries at
/// or after `currency_from` (`settings.chain_currency_from`: the ledger's entries before its
/// upgrade to several currencies keep the bytes they were sealed with), then, for a reversal
/// only, the id of the entry it reverses (every other entry keeps the bytes it had before
/// reversals existed). ARCHITECTURE.md documents it for auditors who recompute it with other
/// tools.
pub fn entry_hash(prev: &[u8], e: &Entry, currency_from: i64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    let counterparty = e
        .counterparty_user_id
        .map(|c| c.to_string())
        .unwrap_or_default();
    let fields: [&str; 11] = [
        &e.seq.to_string(),
        &e.id,
        &e.wallet_id,
        e.kind.as_str(),
        &e.amount.to_string(),
        &e.balance_after.to_string(),
        &e.reference,
        &counterparty,
        e.transfer_id.as_deref().unwrap_or(""),
        e.metadata.as_str(),
        &e.created_at.to_text(),
    ];
    let currency: &[&str] = if e.seq >= currency_from {
        &[&e.currency]
    } else {
        &[]
    };
    let reverses: &[&str] = match &e.reverses {
        Some(id) => &[id],
        None => &[],
    };
    for f in fields.iter().chain(currency).chain(reverses) {
        h.update((f.len() as u32).to_be_bytes());
        h.update(f.as_bytes());
    }
    h.finalize().into()
}

/// Appends one entry and moves the wallet's balance to match, inside the caller's transaction.
/// This is the only place a balance changes. A debit that would go below zero is
/// `InsufficientFunds` and writes nothing.
pub fn append(conn: &dyn Sql, now: Timestamp, new: NewEntry<'_>) -> Result<Entry, AppError> {
    Ok(append_after(conn, now, new, None)?.0)
}

/// `append`, given the chain head (position and hash) when the caller has just appended it
/// itself, as a transfer does between its two halves: that saves looking it up. Returns the
/// entry and its hash.
///
/// Two statements in the usual case (three without `head`): move the balance, insert the
/// entry. A refusal costs one more read, to say what the balance was.
pub fn append_after(
    conn: &dyn Sql,
    now: Timestamp,
    new: NewEntry<'_>,
    head: Option<ChainHead>,
) -> Result<(Entry, Option<ChainHead>), AppError> {
    let delta = signed_delta(new.kind, new.amount.minor)?;
    if conn.engine() == Engine::Postgres {
        return Ok((append_unsealed(conn, now, &new, delta)?, None));
    }
    let Some(balance_after) = move_balance(conn, &new, delta, now)? else {
        return Err(refusal(conn, &new, delta)?);
    };
    let head = match head {
        Some(head) => head,
        None => chain_head(conn)?,
    };
    let entry = new_entry(head.seq + 1, balance_after, now, &new);
    let hash = entry_hash(&head.hash, &entry, head.currency_from);
    insert(conn, new.wallet.key, &entry, &hash)?;
    assert!(balance_after >= MinorUnits::ZERO);
    let head = ChainHead {
        seq: entry.seq,
        hash,
        currency_from: head.currency_from,
    };
    Ok((entry, Some(head)))
}

fn new_entry(seq: i64, balance_after: MinorUnits, at: Timestamp, new: &NewEntry<'_>) -> Entry {
    Entry {
        seq,
        id: uuid::Uuid::now_v7().to_string(),
        wallet_id: new.wallet.id.clone(),
        kind: new.kind,
        amount: new.amount.minor,
        balance_after,
        reference: new.reference.to_string(),
        counterparty_user_id: new.counterparty_user_id,
        transfer_id: new.transfer_id.map(str::to_string),
        metadata: new.metadata.clone(),
        created_at: at,
        currency: new.currency.to_string(),
        reverses: new.reverses.map(str::to_string),
    }
}

/// `append` on PostgreSQL, where several processes write at once. The balance moves first,
/// which takes the wallet's row lock until commit; under it the entry is stamped no earlier
/// than just after the wallet's `stamp_floor` (its newest entry's stamp, or a moment whose
/// balance was read: `fence_stamps`) and draws its position from the sequence. So a wallet's
/// entries commit in position order and in time order, whatever the processes' clocks, and a
/// balance at a past moment never changes. The entry is inserted unsealed: the sealer chains
/// it (`jobs::sealer`).
fn append_unsealed(
    conn: &dyn Sql,
    now: Timestamp,
    new: &NewEntry<'_>,
    delta: MinorUnits,
) -> Result<Entry, AppError> {
    let balance_ceiling = i64::MAX - delta.get().max(0);
    let mut entry = new_entry(0, MinorUnits::ZERO, now, new);
    // One statement, one round trip: the balance moves (or nothing happens, and no row comes
    // back) and the entry follows it. The trigger `entries_balance_follows` sees the moved
    // balance, as it would after two statements.
    let sql = if delta > MinorUnits::ZERO {
        &*PG_APPEND_CREDIT_SQL
    } else if new.kind.is_owners_debit() {
        &*PG_APPEND_DEBIT_SQL
    } else {
        &*PG_APPEND_STAFF_DEBIT_SQL
    };
    let Some(row) = conn.query_opt(
        sql,
        &[
            &new.wallet.key,
            &delta,
            &balance_ceiling,
            &now,
            &entry.id,
            &entry.kind.as_str(),
            &entry.amount,
            &entry.reference,
            &entry.counterparty_user_id,
            &entry.transfer_id,
            &entry.metadata.as_str(),
            &new.currency,
            &snapshot_floor(now),
            &entry.reverses,
        ],
    )?
    else {
        return Err(refusal(conn, new, delta)?);
    };
    entry.seq = row.get(0)?;
    entry.balance_after = row.get(1)?;
    entry.created_at = row.get(2)?;
    assert!(entry.balance_after >= MinorUnits::ZERO);
    Ok(entry)
}

/// `append_unsealed`'s one statement: the wallet's row is locked first (its stamp floor moves),
/// then its balance in the currency moves (a credit creates the row, a debit needs
/// `balance - held` to cover it), then the entry follows with the new balance. Every path that
/// changes a balance locks its wallet's row first, so two can never wait on each other.
fn pg_append_sql(move_balance: &str) -> String {
    format!(
        "WITH stamped AS (
             UPDATE wallets SET stamp_floor = GREATEST(CAST(?4 AS TEXT), to_char(
                     (CAST(stamp_floor AS timestamptz) + interval '1 microsecond') AT TIME ZONE 'UTC',
                     'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') COLLATE \"C\")
             WHERE key = ?1
             RETURNING key, stamp_floor, frozen_at),
         moved AS ({move_balance})
         INSERT INTO entries (id, wallet_key, kind, amount, balance_after, reference,
             counterparty_user_id, transfer_id, metadata, created_at, currency, reverses)
         SELECT CAST(?5 AS TEXT), stamped.key, CAST(?6 AS TEXT), CAST(?7 AS BIGINT), moved.balance,
             CAST(?8 AS TEXT), CAST(?9 AS BIGINT), CAST(?10 AS TEXT), CAST(?11 AS TEXT),
             stamped.stamp_floor, CAST(?12 AS TEXT), CAST(?14 AS TEXT)
         FROM stamped, moved
         RETURNING seq, balance_after, created_at"
    )
}

static PG_APPEND_CREDIT_SQL: LazyLock<String> = LazyLock::new(|| {
    pg_append_sql(
        "INSERT INTO balances (wallet_key, currency, balance, last_balance_update, frozen)
             SELECT stamped.key, CAST(?12 AS TEXT), CAST(?2 AS BIGINT), CAST(?13 AS TEXT),
                 CASE WHEN stamped.frozen_at IS NULL THEN 0 ELSE 1 END FROM stamped
         ON CONFLICT (wallet_key, currency) DO UPDATE SET balance = balances.balance + EXCLUDED.balance
             WHERE balances.balance <= ?3
         RETURNING balance",
    )
});

static PG_APPEND_DEBIT_SQL: LazyLock<String> = LazyLock::new(|| {
    pg_append_sql(
        "UPDATE balances b SET balance = b.balance + ?2 FROM stamped
         WHERE b.wallet_key = stamped.key AND b.currency = ?12 AND b.balance - b.held + ?2 >= 0
             AND b.frozen = 0
             AND CAST(?3 AS BIGINT) IS NOT NULL AND CAST(?13 AS TEXT) IS NOT NULL
         RETURNING b.balance",
    )
});

/// `PG_APPEND_DEBIT_SQL` for a debit staff make (`EntryKind::is_owners_debit` is false): it
/// takes money from a frozen wallet too.
static PG_APPEND_STAFF_DEBIT_SQL: LazyLock<String> = LazyLock::new(|| {
    pg_append_sql(
        "UPDATE balances b SET balance = b.balance + ?2 FROM stamped
         WHERE b.wallet_key = stamped.key AND b.currency = ?12 AND b.balance - b.held + ?2 >= 0
             AND CAST(?3 AS BIGINT) IS NOT NULL AND CAST(?13 AS TEXT) IS NOT NULL
         RETURNING b.balance",
    )
});

/// How an entry moves its wallet's balance: up by a credit, down by a debit.
fn signed_delta(kind: EntryKind, amount: MinorUnits) -> Result<MinorUnits, AppError> {
    if kind.is_credit() {
        Some(amount)
    } else {
        amount.checked_neg()
    }
    .ok_or_else(|| AppError::internal("append", "amount out of range"))
}

/// Moves the balance by `delta` and returns the new balance, or `None` (and changes nothing)
/// when it would go below zero or past the largest i64.
///
/// The balance moves first, in one statement; the entry that follows must then carry the new
/// balance (the trigger `entries_balance_follows`). The ceiling is checked in the statement
/// itself (a sum beyond i64 would otherwise become a REAL that the STRICT table refuses: a 500).
fn move_balance(
    conn: &dyn Sql,
    new: &NewEntry<'_>,
    delta: MinorUnits,
    now: Timestamp,
) -> Result<Option<MinorUnits>, AppError> {
    let (wallet_key, currency) = (new.wallet.key, new.currency);
    let row = if delta > MinorUnits::ZERO {
        let balance_ceiling = i64::MAX - delta.get();
        let moved = conn.query_opt(
            "UPDATE balances SET balance = balance + ?3
             WHERE wallet_key = ?1 AND currency = ?2 AND balance <= ?4
             RETURNING balance",
            &[&wallet_key, &currency, &delta, &balance_ceiling],
        )?;
        match moved {
            Some(row) => Some(row),
            // The wallet's first credit in the currency creates its balance (or the balance
            // is at its ceiling: then the row exists, nothing is inserted, and `None` says
            // so). An upsert in one statement cost the writer more than this second
            // statement on a first credit.
            None => conn.query_opt(
                "INSERT INTO balances (wallet_key, currency, balance, last_balance_update, frozen)
                     SELECT ?1, ?2, ?3, ?4, CASE WHEN frozen_at IS NULL THEN 0 ELSE 1 END
                     FROM wallets WHERE key = ?1
                 ON CONFLICT (wallet_key, currency) DO NOTHING
                 RETURNING balance",
                &[&wallet_key, &currency, &delta, &snapshot_floor(now)],
            )?,
        }
    } else if new.kind.is_owners_debit() {
        // A debit takes only what no hold reserves, and nothing from a frozen wallet.
        conn.query_opt(
            "UPDATE balances SET balance = balance + ?3
             WHERE wallet_key = ?1 AND currency = ?2 AND balance - held + ?3 >= 0 AND frozen = 0
             RETURNING balance",
            &[&wallet_key, &currency, &delta],
        )?
    } else {
        // Staff taking money back: from a frozen wallet too, but never what a hold reserves.
        conn.query_opt(
            "UPDATE balances SET balance = balance + ?3
             WHERE wallet_key = ?1 AND currency = ?2 AND balance - held + ?3 >= 0
             RETURNING balance",
            &[&wallet_key, &currency, &delta],
        )?
    };
    row.map(|r| r.get(0)).transpose()
}

/// A new balance's "last snapshot": 0 just before its first entry, which is stamped at `now`
/// or later, so the first real snapshot counts that entry.
fn snapshot_floor(now: Timestamp) -> Timestamp {
    now.plus_micros(-1)
}

/// Whether staff have frozen the wallet (it receives money but sends none).
pub fn is_frozen(conn: &dyn Sql, wallet_key: WalletKey) -> Result<bool, AppError> {
    Ok(conn
        .query_opt(
            "SELECT frozen_at FROM wallets WHERE key = ?1 AND frozen_at IS NOT NULL",
            &[&wallet_key],
        )?
        .is_some())
}

/// A wallet's balance and what holds reserve of it, in one currency (zero before its first
/// credit in it).
pub fn balance_and_held(
    conn: &dyn Sql,
    wallet_key: WalletKey,
    currency: &str,
) -> Result<(MinorUnits, MinorUnits), AppError> {
    match conn.query_opt(
        "SELECT balance, held FROM balances WHERE wallet_key = ?1 AND currency = ?2",
        &[&wallet_key, &currency],
    )? {
        Some(r) => Ok((r.get(0)?, r.get(1)?)),
        None => Ok((MinorUnits::ZERO, MinorUnits::ZERO)),
    }
}

/// Why `move_balance` refused: a credit past the ceiling, or a debit larger than the balance.
fn refusal(conn: &dyn Sql, new: &NewEntry<'_>, delta: MinorUnits) -> Result<AppError, AppError> {
    if delta < MinorUnits::ZERO && new.kind.is_owners_debit() && is_frozen(conn, new.wallet.key)? {
        return Ok(AppError::WalletFrozen);
    }
    let (balance, held) = balance_and_held(conn, new.wallet.key, new.currency)?;
    let available = balance.checked_sub(held).unwrap_or(MinorUnits::ZERO);
    if delta > MinorUnits::ZERO {
        return Ok(AppError::field(
            "amount",
            "the balance would exceed the largest amount this ledger can hold",
        ));
    }
    Ok(AppError::InsufficientFunds {
        available: available.at_scale(new.amount.scale),
        required: new.amount,
    })
}

/// The newest entry's position and hash (the genesis of an empty ledger), and where the chain
/// starts to cover currencies.
fn chain_head(conn: &dyn Sql) -> Result<ChainHead, AppError> {
    // The newest entry by the primary key's last page, and the settings row by its key: one
    // statement on every append.
    match conn.query_opt(
        "SELECT seq, hash, (SELECT chain_currency_from FROM settings WHERE id = 1)
         FROM entries ORDER BY seq DESC LIMIT 1",
        &[],
    )? {
        Some(r) => Ok(ChainHead {
            seq: r.get(0)?,
            hash: r.get(1)?,
            currency_from: r.get::<Option<i64>>(2)?.unwrap_or(1),
        }),
        None => Ok(ChainHead {
            seq: 0,
            hash: GENESIS_HASH,
            currency_from: chain_currency_from(conn)?,
        }),
    }
}

/// `settings.chain_currency_from`, for the tools that recompute the chain.
pub fn chain_currency_from(conn: &dyn Sql) -> Result<i64, AppError> {
    Ok(conn
        .query_opt("SELECT chain_currency_from FROM settings WHERE id = 1", &[])?
        .map(|r| r.get(0))
        .transpose()?
        .unwrap_or(1))
}

fn insert(
    conn: &dyn Sql,
    wallet_key: WalletKey,
    entry: &Entry,
    hash: &[u8; 32],
) -> Result<(), AppError> {
    conn.execute(
        "INSERT INTO entries (seq, id, wallet_key, kind, amount, balance_after, reference,
             counterparty_user_id, transfer_id, metadata, created_at, hash, currency, reverses)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        &[
            &entry.seq,
            &entry.id,
            &wallet_key,
            &entry.kind.as_str(),
            &entry.amount,
            &entry.balance_after,
            &entry.reference,
            &entry.counterparty_user_id,
            &entry.transfer_id,
            &entry.metadata.as_str(),
            &entry.created_at,
            &&hash[..],
            &entry.currency,
            &entry.reverses,
        ],
    )?;
    Ok(())
}

/// The entry a client's reference already names, for idempotent replays. Only the kinds a
/// client names (deposit, withdrawal, transfer out) have unique references.
pub fn find_by_reference(
    conn: &dyn Sql,
    wallet_key: WalletKey,
    kind: EntryKind,
    reference: &str,
) -> Result<Option<Entry>, AppError> {
    // Incoming transfers and refunds carry someone else's reference: never unique.
    let Some(sql) = kinds::by_reference_sql(kind) else {
        return Ok(None);
    };
    conn.query_opt(sql, &[&wallet_key, &reference])?
        .map(|r| entry_from_row(&r))
        .transpose()
}

pub fn find_by_id(conn: &dyn Sql, id: &str) -> Result<Option<Entry>, AppError> {
    conn.query_opt(
        concat!(
            "SELECT ",
            entry_columns!(),
            " FROM ",
            entry_from!(),
            " WHERE e.id = ?1"
        ),
        &[&id],
    )?
    .map(|r| entry_from_row(&r))
    .transpose()
}

/// The incoming half of a transfer whose outgoing half is `out`.
pub fn find_transfer_in(conn: &dyn Sql, out: &Entry) -> Result<Option<Entry>, AppError> {
    find_other_half(conn, out)
}

/// The other half of the transfer `half` belongs to (`None` for an entry of another kind). On
/// SQLite a transfer's halves are appended next to each other, outgoing first: found by
/// position, no index needed, and checked by transfer id.
pub fn find_other_half(conn: &dyn Sql, half: &Entry) -> Result<Option<Entry>, AppError> {
    let (kind, next_to) = match half.kind {
        EntryKind::TransferOut => (EntryKind::TransferIn, half.seq + 1),
        EntryKind::TransferIn => (EntryKind::TransferOut, half.seq - 1),
        _ => return Ok(None),
    };
    let is_other = |e: &Entry| e.kind == kind && e.transfer_id == half.transfer_id;
    if conn.engine() == Engine::Sqlite {
        let neighbour = conn
            .query_opt(
                concat!(
                    "SELECT ",
                    entry_columns!(),
                    " FROM ",
                    entry_from!(),
                    " WHERE e.seq = ?1"
                ),
                &[&next_to],
            )?
            .map(|r| entry_from_row(&r))
            .transpose()?;
        if let Some(found) = neighbour.filter(is_other) {
            return Ok(Some(found));
        }
        // Not there in a ledger written on PostgreSQL and copied to SQLite: below.
    }
    // Other processes' entries may sit between the halves, in either order: the other half is
    // found among the counterparty's entries by transfer id (indexed on PostgreSQL; on SQLite
    // a walk of the counterparty's entries, for copied ledgers only).
    let found = conn
        .query_opt(
            concat!(
                "SELECT ",
                entry_columns!(),
                " FROM ",
                entry_from!(),
                " WHERE e.transfer_id = ?1 AND e.kind = ?3
                   AND e.wallet_key = (SELECT key FROM wallets WHERE user_id = ?2)"
            ),
            &[
                &half.transfer_id,
                &half.counterparty_user_id,
                &kind.as_str(),
            ],
        )?
        .map(|r| entry_from_row(&r))
        .transpose()?;
    Ok(found.filter(is_other))
}

/// Makes sure no entry of the wallet committed from now on is stamped at or before `at`, so
/// a balance at `at` read after this never changes. On SQLite the one writer stamps in
/// commit order and the service answers only for settled moments (`Writer::settled_before`).
/// On PostgreSQL the wallet's `stamp_floor` moves past `at`: a writer already holding the
/// wallet's row is waited for (its entries are then committed and read), and every later one
/// stamps after the floor (`append_unsealed`). Nothing is written when the floor is past `at`
/// already, the usual case for a moment that is not recent.
pub fn fence_stamps(conn: &dyn Sql, wallet_key: WalletKey, at: Timestamp) -> Result<(), AppError> {
    if conn.engine() == Engine::Postgres {
        conn.execute(
            "UPDATE wallets SET stamp_floor = ?2 WHERE key = ?1 AND stamp_floor < ?2",
            &[&wallet_key, &at],
        )?;
    }
    Ok(())
}

/// Serialises the requests that name one reference of one wallet (`LockClass::Reference`).
pub fn lock_reference(
    conn: &dyn Sql,
    wallet_key: WalletKey,
    reference: &str,
) -> Result<(), AppError> {
    lock_for_transaction(
        conn,
        LockClass::Reference,
        &reference_lock_name(wallet_key, reference),
    )
}

/// The name `lock_reference` locks (a group of transfers locks the same names together).
pub fn reference_lock_name(wallet_key: WalletKey, reference: &str) -> String {
    format!("{wallet_key}:{reference}")
}

/// Signed sum of a wallet's entries in `(after, upto]`, by creation time.
pub fn net_between(
    conn: &dyn Sql,
    wallet_key: WalletKey,
    currency: &str,
    after: &str,
    upto: &str,
) -> Result<MinorUnits, AppError> {
    conn.query_one(
        &kinds::NET_BETWEEN_SQL,
        &[&wallet_key, &after, &upto, &currency],
    )?
    .get(0)
}
