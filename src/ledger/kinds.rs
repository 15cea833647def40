//! The SQL that names entry kinds, generated from `EntryKind` so that the enum is the one
//! place they are spelled. `invariants` tests that `schema.sql` says the same.
//!
//! Lists of kinds are written as `kind = 'A' OR kind = 'B'`, never `kind IN (...)`: SQLite
//! builds a temporary b-tree for every evaluation of an IN list of three or more. The strings
//! are built once, on first use, and never change, so `prepare_cached` finds each statement
//! in its cache as it did when they were literals.

use std::sync::LazyLock;

use super::entries::{entry_columns, entry_from};
use crate::domain::EntryKind;

/// `column = 'A' OR column = 'B' …` for the kinds `pick` selects, in `EntryKind::ALL`'s order.
pub fn any_of(column: &str, pick: impl Fn(EntryKind) -> bool) -> String {
    EntryKind::ALL
        .into_iter()
        .filter(|k| pick(*k))
        .map(|k| format!("{column} = '{}'", k.as_str()))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// The condition of `entries.kind`'s `CHECK` in schema.sql: every kind.
pub fn kind_check() -> String {
    any_of("kind", |_| true)
}

/// The kinds that are not reversals, as `entries.reverses`'s `CHECK` in schema.sql names
/// them: `column <> 'A' AND column <> 'B'` for each reversal kind.
pub fn not_a_reversal(column: &str) -> String {
    EntryKind::ALL
        .into_iter()
        .filter(|k| k.is_reversal())
        .map(|k| format!("{column} <> '{}'", k.as_str()))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The `WHERE` of the partial index `entries_reference` in schema.sql.
pub fn unique_reference_condition(column: &str) -> String {
    any_of(column, EntryKind::has_unique_reference)
}

/// A wallet's net movement over `(?2, ?3]`: credits add, debits subtract. The sum is cast
/// back to an integer because PostgreSQL's `SUM` of a `BIGINT` is a `NUMERIC` (SQLite's
/// already is one, and the cast changes nothing there).
pub static NET_BETWEEN_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT COALESCE(CAST(SUM(CASE WHEN {} THEN amount ELSE -amount END) AS BIGINT), 0)
         FROM entries WHERE wallet_key = ?1 AND created_at > ?2 AND created_at <= ?3
             AND currency = ?4",
        any_of("kind", EntryKind::is_credit)
    )
});

/// Per kind (indexed as `EntryKind::ALL`), the lookup of a wallet's entry by reference, or
/// `None` for kinds whose references repeat.
///
/// The kind is written into the SQL (one cached statement per kind), and the last term repeats
/// the partial index's WHERE clause word for word. SQLite uses a partial index only when the
/// query visibly implies its condition (without it, this lookup scanned the wallet's whole
/// history), and when it must look at a bound parameter's value to decide, it re-prepares the
/// statement on every execution (21% of the writer's time in a profile).
static BY_REFERENCE_SQL: LazyLock<[Option<String>; EntryKind::ALL.len()]> = LazyLock::new(|| {
    EntryKind::ALL.map(|k| {
        k.has_unique_reference().then(|| {
            format!(
                "SELECT {} FROM {} WHERE e.wallet_key = ?1 AND e.kind = '{}' AND e.reference = ?2
                     AND ({})",
                entry_columns!(),
                entry_from!(),
                k.as_str(),
                unique_reference_condition("e.kind")
            )
        })
    })
});

/// See `BY_REFERENCE_SQL`.
pub fn by_reference_sql(kind: EntryKind) -> Option<&'static str> {
    let i = EntryKind::ALL.iter().position(|k| *k == kind)?;
    BY_REFERENCE_SQL[i].as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_sql_is_the_or_chain_it_replaced() {
        // The statements are the same text as the literals they replaced (the sum since cast
        // to BIGINT for PostgreSQL, which touches only the result), so the query plans
        // (partial index, no temporary b-tree) are the same.
        assert_eq!(
            NET_BETWEEN_SQL
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            "SELECT COALESCE(CAST(SUM(CASE WHEN kind = 'DEPOSIT' OR kind = 'TRANSFER_IN' OR \
             kind = 'REFUND' OR kind = 'REVERSAL_IN' THEN amount ELSE -amount END) AS BIGINT), 0) \
             FROM entries WHERE \
             wallet_key = ?1 AND created_at > ?2 AND created_at <= ?3 AND currency = ?4"
        );
        let sql = by_reference_sql(EntryKind::TransferOut).unwrap();
        assert!(sql.ends_with(
            "e.kind = 'TRANSFER_OUT' AND e.reference = ?2
                     AND (e.kind = 'DEPOSIT' OR e.kind = 'WITHDRAWAL' OR e.kind = 'TRANSFER_OUT')"
        ));
        assert_eq!(by_reference_sql(EntryKind::TransferIn), None);
        assert_eq!(by_reference_sql(EntryKind::Refund), None);
    }
}
