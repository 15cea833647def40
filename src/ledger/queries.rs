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
    pub balance: MinorUnits,
    pub last_balance: MinorUnits,
    pub last_balance_update: Timestamp,
    pub created_at: Timestamp,
}

impl Wallet {
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
            "SELECT key, id, user_id, balance, last_balance, last_balance_update, created_at FROM wallets WHERE user_id = ?1",
            &[&user_id],
        )?
        .ok_or(AppError::NotFound("wallet"))?;
    Ok(Wallet {
        key: r.get(0)?,
        id: r.get(1)?,
        user_id: r.get(2)?,
        balance: r.get(3)?,
        last_balance: r.get(4)?,
        last_balance_update: r.get(5)?,
        created_at: r.get(6)?,
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
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
}

pub struct HistoryPage {
    pub count: i64,
    pub results: Vec<Entry>,
    /// The position to continue from, when more entries follow.
    pub next_before_seq: Option<i64>,
}

/// Newest first. `count` is the number of entries matching the filters (all pages).
pub fn history(
    conn: &dyn Sql,
    wallet_key: WalletKey,
    q: &HistoryQuery,
) -> Result<HistoryPage, AppError> {
    let kind = q.kind.map(EntryKind::as_str);
    let (from, to) = (q.from, q.to);
    // Each parameter tested with IS NULL is also compared with a column, which gives it its
    // type on PostgreSQL.
    macro_rules! filters {
        () => {
            "e.wallet_key = ?1 AND (CAST(?2 AS TEXT) IS NULL OR e.kind = ?2) AND (CAST(?3 AS TEXT) IS NULL OR e.created_at >= ?3)
         AND (CAST(?4 AS TEXT) IS NULL OR e.created_at <= ?4)"
        };
    }
    let count: i64 = conn
        .query_one(
            concat!("SELECT count(*) FROM entries e WHERE ", filters!()),
            &[&wallet_key, &kind, &from, &to],
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
    // One row more than asked tells whether another page follows.
    let mut results = conn
        .query(
            concat!(
                "SELECT ",
                entry_columns!(),
                " FROM ",
                entry_from!(),
                " WHERE ",
                filters!(),
                "
                 AND (CAST(?5 AS TEXT) IS NULL OR (e.created_at, e.seq) < (?5, ?6))
             ORDER BY e.created_at DESC, e.seq DESC LIMIT ?7 OFFSET ?8"
            ),
            &[
                &wallet_key,
                &kind,
                &from,
                &to,
                &cursor_time,
                &q.before_seq,
                &(q.limit + 1),
                &q.offset,
            ],
        )?
        .iter()
        .map(entry_from_row)
        .collect::<Result<Vec<_>, _>>()?;
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

/// The running balance, read from the wallet row.
pub fn balance_now(conn: &dyn Sql, wallet_key: WalletKey) -> Result<MinorUnits, AppError> {
    conn.query_opt("SELECT balance FROM wallets WHERE key = ?1", &[&wallet_key])?
        .ok_or(AppError::NotFound("wallet"))?
        .get(0)
}

/// The exact balance at `at`: the newest snapshot at or before it, plus the entries between.
pub fn balance_at(
    conn: &dyn Sql,
    wallet: &WalletRef,
    at: Timestamp,
) -> Result<MinorUnits, AppError> {
    let (base, since): (MinorUnits, String) = match conn.query_opt(
        "SELECT balance, taken_at FROM balance_snapshots WHERE wallet_id = ?1 AND taken_at <= ?2
             ORDER BY taken_at DESC LIMIT 1",
        &[&wallet.id, &at],
    )? {
        Some(r) => (r.get(0)?, r.get(1)?),
        None => (MinorUnits::ZERO, String::new()),
    };
    let net = entries::net_between(conn, wallet.key, &since, &at.to_text())?;
    base.checked_add(net)
        .ok_or_else(|| AppError::internal("balance_at", "overflow"))
}
