//! Reads: a wallet with its newest entries, history pages, and the balance at any moment.
//! These run on reader connections, never inside the writer.

use super::entries::{
    self, entry_columns, entry_from, entry_from_row, Entry, WalletKey, WalletRef,
};
use crate::domain::{EntryKind, MinorUnits, Timestamp};
use crate::error::AppError;
use crate::store::Sql;

pub const RECENT_TRANSACTIONS: u32 = 10;
pub const PAGE_LIMIT_MAX: u32 = 100;
pub const PAGE_LIMIT_DEFAULT: u32 = 20;

#[derive(Debug, Clone)]
pub struct Wallet {
    pub key: WalletKey,
    pub id: String,
    pub user_id: i64,
    pub created_at: Timestamp,
    /// One per currency the wallet has had money in, by code.
    pub balances: Vec<Balance>,
}

/// A wallet's money in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    pub currency: String,
    pub balance: MinorUnits,
    /// What HELD holds reserve; `balance - held` is available to debits.
    pub held: MinorUnits,
    /// The last snapshot's balance, and its cut-off.
    pub last_balance: MinorUnits,
    pub last_balance_update: Timestamp,
}

impl Balance {
    /// A currency the wallet never had money in.
    pub fn empty(currency: &str, since: Timestamp) -> Balance {
        Balance {
            currency: currency.to_string(),
            balance: MinorUnits::ZERO,
            held: MinorUnits::ZERO,
            last_balance: MinorUnits::ZERO,
            last_balance_update: since,
        }
    }

    /// `balance - held`: never negative (the schema's `CHECK (held <= balance)`).
    pub fn available(&self) -> MinorUnits {
        self.balance
            .checked_sub(self.held)
            .unwrap_or(MinorUnits::ZERO)
    }
}

impl Wallet {
    /// The wallet's money in `currency` (all zero when it never had any).
    pub fn balance_in(&self, currency: &str) -> Balance {
        self.balances
            .iter()
            .find(|b| b.currency == currency)
            .cloned()
            .unwrap_or_else(|| Balance::empty(currency, self.created_at))
    }

    pub fn wallet_ref(&self) -> WalletRef {
        WalletRef {
            key: self.key,
            id: self.id.clone(),
        }
    }
}

pub fn wallet_of_user(conn: &dyn Sql, user_id: i64) -> Result<Wallet, AppError> {
    let r = conn
        .query_opt(
            "SELECT key, id, user_id, created_at FROM wallets WHERE user_id = ?1",
            &[&user_id],
        )?
        .ok_or(AppError::NotFound("wallet"))?;
    let key: WalletKey = r.get(0)?;
    let balances = conn
        .query(
            "SELECT currency, balance, held, last_balance, last_balance_update FROM balances
             WHERE wallet_key = ?1 ORDER BY currency",
            &[&key],
        )?
        .iter()
        .map(|b| {
            Ok(Balance {
                currency: b.get(0)?,
                balance: b.get(1)?,
                held: b.get(2)?,
                last_balance: b.get(3)?,
                last_balance_update: b.get(4)?,
            })
        })
        .collect::<Result<Vec<_>, AppError>>()?;
    Ok(Wallet {
        key,
        id: r.get(1)?,
        user_id: r.get(2)?,
        created_at: r.get(3)?,
        balances,
    })
}

/// The wallet and its newest entries; O(1) in history length (an index walk from the end).
pub fn wallet_view(conn: &dyn Sql, user_id: i64) -> Result<(Wallet, Vec<Entry>), AppError> {
    let wallet = wallet_of_user(conn, user_id)?;
    let recent = conn
        .query(
            concat!(
                "SELECT ",
                entry_columns!(),
                " FROM ",
                entry_from!(),
                " WHERE e.wallet_key = ?1
             ORDER BY e.created_at DESC, e.seq DESC LIMIT ?2"
            ),
            &[&wallet.key, &RECENT_TRANSACTIONS],
        )?
        .iter()
        .map(entry_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((wallet, recent))
}

#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub limit: u32,
    pub offset: u32,
    /// Only entries older than this position (from a previous page's `next_cursor`).
    pub before_seq: Option<i64>,
    pub kind: Option<EntryKind>,
    /// Only entries in this currency (its code).
    pub currency: Option<String>,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
}

pub struct HistoryPage {
    pub count: i64,
    pub results: Vec<Entry>,
    /// The position to continue from, when more entries follow.
    pub next_before_seq: Option<i64>,
}

/// The filters of a history query on `entries e`, with `?1` the wallet and `?2`–`?5` the
/// kind, from, to and currency. Each parameter tested with IS NULL is also compared with a
/// column, which gives it its type on PostgreSQL.
macro_rules! history_filters {
    () => {
        "e.wallet_key = ?1 AND (CAST(?2 AS TEXT) IS NULL OR e.kind = ?2) AND (CAST(?3 AS TEXT) IS NULL OR e.created_at >= ?3)
         AND (CAST(?4 AS TEXT) IS NULL OR e.created_at <= ?4) AND (CAST(?5 AS TEXT) IS NULL OR e.currency = ?5)"
    };
}

/// Newest first. `count` is the number of entries matching the filters (all pages).
pub fn history(
    conn: &dyn Sql,
    wallet_key: WalletKey,
    q: &HistoryQuery,
) -> Result<HistoryPage, AppError> {
    let kind = q.kind.map(EntryKind::as_str);
    let (from, to) = (q.from, q.to);
    let count: i64 = conn
        .query_one(
            concat!("SELECT count(*) FROM entries e WHERE ", history_filters!()),
            &[&wallet_key, &kind, &from, &to, &q.currency],
        )?
        .get(0)?;
    // A cursor is an entry's seq; the page continues just below that entry in
    // (created_at, seq) order, which the wallet's index walks directly.
    let cursor_time: Option<String> = match q.before_seq {
        None => None,
        Some(seq) => Some(
            conn.query_opt(
                "SELECT created_at FROM entries WHERE seq = ?1 AND wallet_key = ?2",
                &[&seq, &wallet_key],
            )?
            .ok_or_else(|| AppError::field("cursor", "is not a cursor from next_cursor"))?
            .get(0)?,
        ),
    };
    let before = cursor_time.zip(q.before_seq);
    // One row more than asked tells whether another page follows.
    let mut results = history_rows(conn, wallet_key, q, before, q.limit + 1, q.offset)?;
    let more = results.len() > q.limit as usize;
    results.truncate(q.limit as usize);
    let next_before_seq = if more {
        results.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(HistoryPage {
        count,
        results,
        next_before_seq,
    })
}

/// Up to `limit` entries matching `q`'s filters, newest first, strictly below `before` (an
/// entry's time stamp and position) when given: a page of a walk down the wallet's index.
pub fn history_rows(
    conn: &dyn Sql,
    wallet_key: WalletKey,
    q: &HistoryQuery,
    before: Option<(String, i64)>,
    limit: u32,
    offset: u32,
) -> Result<Vec<Entry>, AppError> {
    let kind = q.kind.map(EntryKind::as_str);
    let (before_time, before_seq) = before.unzip();
    conn.query(
        concat!(
            "SELECT ",
            entry_columns!(),
            " FROM ",
            entry_from!(),
            " WHERE ",
            history_filters!(),
            "
             AND (CAST(?6 AS TEXT) IS NULL OR (e.created_at, e.seq) < (?6, ?7))
             ORDER BY e.created_at DESC, e.seq DESC LIMIT ?8 OFFSET ?9"
        ),
        &[
            &wallet_key,
            &kind,
            &q.from,
            &q.to,
            &q.currency,
            &before_time,
            &before_seq,
            &limit,
            &offset,
        ],
    )?
    .iter()
    .map(entry_from_row)
    .collect()
}

/// The running balance in one currency (zero before its first credit).
pub fn balance_now(
    conn: &dyn Sql,
    wallet_key: WalletKey,
    currency: &str,
) -> Result<MinorUnits, AppError> {
    Ok(entries::balance_and_held(conn, wallet_key, currency)?.0)
}

/// The exact balance at `at`: the newest snapshot at or before it, plus the entries between.
pub fn balance_at(
    conn: &dyn Sql,
    wallet: &WalletRef,
    currency: &str,
    at: Timestamp,
) -> Result<MinorUnits, AppError> {
    let (base, since): (MinorUnits, String) = match conn.query_opt(
        "SELECT balance, taken_at FROM balance_snapshots
         WHERE wallet_id = ?1 AND currency = ?3 AND taken_at <= ?2
             ORDER BY taken_at DESC LIMIT 1",
        &[&wallet.id, &at, &currency],
    )? {
        Some(r) => (r.get(0)?, r.get(1)?),
        None => (MinorUnits::ZERO, String::new()),
    };
    let net = entries::net_between(conn, wallet.key, currency, &since, &at.to_text())?;
    base.checked_add(net)
        .ok_or_else(|| AppError::internal("balance_at", "overflow"))
}
