//! The steps of a migration that SQL cannot do. Each runs inside the migration's transaction,
//! just before its file in `migrations/`, and may stop the migration (nothing changes then).

use std::collections::BTreeMap;

use rusqlite::Connection;
use unicode_normalization::UnicodeNormalization;

use crate::domain::{username_key, Currency};

/// A migration's step in Rust, given the migration's transaction.
pub type Prepare = fn(&Connection) -> Result<(), String>;

/// One schema version's migration: an optional step in Rust, then the SQL file.
pub struct Migration {
    pub prepare: Option<Prepare>,
    pub sql: &'static str,
}

/// Collisions named in the error at most; the count says how many more there are.
pub const COLLISIONS_NAMED_MAX: usize = 20;

/// Schema 2 → 3: fills `temp.usernames_v3` with each user's NFKC username and its new key
/// for `003_username_keys.sql` to apply, or refuses when two users would share a key. Merging
/// them would hand one person's wallet to another, and choosing who keeps the name is the
/// operator's decision, so the error names every such group.
pub fn usernames_v3(tx: &Connection) -> Result<(), String> {
    let sql_err = |e: rusqlite::Error| e.to_string();
    tx.execute_batch(
        "CREATE TEMP TABLE usernames_v3 (
             id           INTEGER PRIMARY KEY,
             username     TEXT NOT NULL,
             username_key TEXT NOT NULL UNIQUE
         )",
    )
    .map_err(sql_err)?;
    let mut by_key: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    {
        let mut stmt = tx
            .prepare("SELECT id, username FROM users ORDER BY id")
            .map_err(sql_err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(sql_err)?;
        for row in rows {
            let (id, username) = row.map_err(sql_err)?;
            by_key
                .entry(username_key(&username))
                .or_default()
                .push((id, username));
        }
    }
    let clashes: Vec<String> = by_key
        .iter()
        .filter(|(_, users)| users.len() > 1)
        .map(|(key, users)| {
            let named: Vec<String> = users
                .iter()
                .map(|(id, name)| format!("user {id} ({name:?})"))
                .collect();
            format!("{} are all {key:?}", named.join(", "))
        })
        .collect();
    if !clashes.is_empty() {
        let more = clashes.len().saturating_sub(COLLISIONS_NAMED_MAX);
        let mut listed = clashes[..clashes.len().min(COLLISIONS_NAMED_MAX)].join("; ");
        if more > 0 {
            listed.push_str(&format!("; and {more} more"));
        }
        return Err(format!(
            "usernames now compare after Unicode NFKC and case folding, and {} groups of users \
             would each become one account (no account is merged into another): {listed}; \
             rename all but one of each, e.g. with sqlite3: UPDATE users SET username = \
             'new-name', username_key = 'new-name' WHERE id = N; then start again",
            clashes.len()
        ));
    }
    let mut insert = tx
        .prepare("INSERT INTO temp.usernames_v3 (id, username, username_key) VALUES (?1, ?2, ?3)")
        .map_err(sql_err)?;
    for (key, users) in by_key {
        for (id, username) in users {
            let stored: String = username.nfkc().collect();
            insert
                .execute(rusqlite::params![id, stored, key])
                .map_err(sql_err)?;
        }
    }
    Ok(())
}

/// Schema 5 → 6: gives entries and withdrawals a `currency`, every existing row getting the
/// database's currency (from `settings`), before `006_currencies_and_holds.sql` runs. SQLite
/// adds a column with a constant default without rewriting a row, so the code goes into the
/// statement; it is checked to be a currency code first.
pub fn currencies_v6(tx: &Connection) -> Result<(), String> {
    let sql_err = |e: rusqlite::Error| e.to_string();
    let stored: Option<String> = tx
        .query_row("SELECT currency FROM settings WHERE id = 1", [], |r| {
            r.get(0)
        })
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(sql_err)?;
    // No settings row: the server never started on it, so there are no entries either (the
    // default below is then never read).
    let code = stored.unwrap_or_else(|| "USD".into());
    if !Currency::is_code(&code) {
        return Err(format!(
            "the stored currency {code:?} is not a currency code"
        ));
    }
    tx.execute_batch(&format!(
        "ALTER TABLE entries ADD COLUMN currency TEXT NOT NULL DEFAULT '{code}';
         ALTER TABLE withdrawals ADD COLUMN currency TEXT NOT NULL DEFAULT '{code}';"
    ))
    .map_err(sql_err)
}

/// The `CHECK` on `entries.kind` as every schema from 2 to 8 wrote it, and as schema 9 does.
const KINDS_BEFORE_V9: &str = "OR kind = 'REFUND')";
const KINDS_FROM_V9: &str = "OR kind = 'REFUND' OR kind = 'REVERSAL_OUT' OR kind = 'REVERSAL_IN')";

/// Schema 8 → 9: lets `entries.kind` be `REVERSAL_OUT` and `REVERSAL_IN`, before
/// `009_reversals.sql` runs. SQLite can't alter a `CHECK`, and rebuilding the ledger's largest
/// table (and its triggers and indexes) would rewrite every page. A `CHECK` that allows more
/// values holds for every row already stored, so the table's definition is edited in place, as
/// SQLite's documentation describes for exactly this change ("ALTER TABLE", section 7): the
/// definition is checked to be the one schema 2 to 8 wrote (anything else stops the migration),
/// and the schema's version cookie is bumped so every connection re-reads it.
pub fn reversal_kinds_v9(tx: &Connection) -> Result<(), String> {
    let sql_err = |e: rusqlite::Error| e.to_string();
    let table: String = tx
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'entries'",
            [],
            |r| r.get(0),
        )
        .map_err(sql_err)?;
    if table.matches(KINDS_BEFORE_V9).count() != 1 || table.contains("REVERSAL") {
        return Err(
            "the table entries is not as schema 8 defines it (its CHECK on kind differs); \
             it was changed by hand, so this migration does not edit it"
                .into(),
        );
    }
    let cookie: i64 = tx
        .query_row("PRAGMA schema_version", [], |r| r.get(0))
        .map_err(sql_err)?;
    tx.execute_batch("PRAGMA writable_schema = ON")
        .map_err(sql_err)?;
    let edited = tx
        .execute(
            "UPDATE sqlite_schema SET sql = ?1 WHERE type = 'table' AND name = 'entries'",
            [table.replace(KINDS_BEFORE_V9, KINDS_FROM_V9)],
        )
        .map_err(sql_err);
    // Off again whatever happened, before anything else runs on this connection.
    let off = tx.execute_batch(&format!(
        "PRAGMA schema_version = {}; PRAGMA writable_schema = OFF",
        cookie + 1
    ));
    edited?;
    off.map_err(sql_err)
}
