//! Tests that what is spelled in several places agrees with its one source in the code:
//! entry kinds (`EntryKind`) in schema.sql, the ledger's SQL, the OpenAPI document and the
//! HTTP edge's message; limits in the schema's `CHECK`s; and which crates `domain/`, `ledger/`
//! and `accounts/` may name.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::kinds;
use crate::domain::{Currency, EntryKind, WithdrawalStatus, REFERENCE_CHARS_MAX};

/// The schema's text with every run of white space made one space.
fn schema() -> String {
    one_line(crate::db::SCHEMA_SQL)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn kind_names() -> Vec<&'static str> {
    EntryKind::ALL.map(EntryKind::as_str).to_vec()
}

#[test]
fn schema_lists_exactly_the_entry_kinds() {
    // The kind column's CHECK and the partial unique index name what `EntryKind` says, as the
    // same OR chain the ledger's queries generate (the index is used only when a query's
    // condition repeats its WHERE word for word).
    let schema = schema();
    let check = format!("kind TEXT NOT NULL CHECK ({}),", kinds::kind_check());
    assert!(schema.contains(&check), "schema.sql lacks {check:?}");
    let index = format!(
        "CREATE UNIQUE INDEX entries_reference ON entries (wallet_key, kind, reference) WHERE {};",
        kinds::unique_reference_condition("kind")
    );
    assert!(schema.contains(&index), "schema.sql lacks {index:?}");
    let reverses = format!(
        "CHECK ((reverses IS NULL) = ({}))",
        kinds::not_a_reversal("kind")
    );
    assert!(schema.contains(&reverses), "schema.sql lacks {reverses:?}");
    // No other list of kinds hides in the schema: every mention of one is in those three.
    let mentions = |s: &str| {
        kind_names()
            .iter()
            .map(|k| s.matches(&format!("'{k}'")).count())
            .sum::<usize>()
    };
    assert_eq!(
        mentions(&schema),
        mentions(&check) + mentions(&index) + mentions(&reverses)
    );
}

#[test]
fn the_schema_accepts_every_kind_and_nothing_else() {
    // The CHECK as SQLite runs it: each kind is accepted, a made-up one is refused.
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(crate::db::SCHEMA_SQL).unwrap();
    let check = |kind: &str| -> bool {
        conn.query_row(
            &format!("SELECT {}", kinds::kind_check().replace("kind", "?1")),
            [kind],
            |r| r.get(0),
        )
        .unwrap()
    };
    for k in kind_names() {
        assert!(check(k), "{k}");
    }
    assert!(!check("CHARGEBACK"));
}

#[test]
fn reference_lookups_use_the_partial_index_without_temporary_tables() {
    // Each generated lookup is planned on `entries_reference` (the point of repeating its
    // condition), and neither it nor the snapshot sum builds an ephemeral table per row, as an
    // IN list of kinds would.
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(crate::db::SCHEMA_SQL).unwrap();
    let ephemeral = |sql: &str| -> bool {
        let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
        let unbound = std::iter::repeat_n(rusqlite::types::Null, stmt.parameter_count());
        let ops: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(unbound), |r| r.get(1))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        ops.iter().any(|op| op == "OpenEphemeral")
    };
    let mut unique = 0;
    for k in EntryKind::ALL {
        let Some(sql) = kinds::by_reference_sql(k) else {
            continue;
        };
        unique += 1;
        let plan: String = conn
            .query_row(
                &format!("EXPLAIN QUERY PLAN {sql}"),
                rusqlite::params![1, "r"],
                |r| r.get::<_, String>(3),
            )
            .unwrap();
        assert!(plan.contains("entries_reference"), "{}: {plan}", k.as_str());
        assert!(!ephemeral(sql), "{}", k.as_str());
    }
    assert_eq!(unique, 3);
    assert!(!ephemeral(&kinds::NET_BETWEEN_SQL));
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn openapi_enumerates_exactly_the_entry_kinds() {
    // The transaction's `type` and the history's `type` filter list `EntryKind::ALL`, in order.
    let text = std::fs::read_to_string(manifest_dir().join("openapi.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let want = serde_json::json!(kind_names());
    for pointer in [
        "/components/schemas/Transaction/properties/type/enum",
        "/components/parameters/TxType/schema/enum",
    ] {
        assert_eq!(doc.pointer(pointer), Some(&want), "openapi.json {pointer}");
    }
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            found.extend(rust_files(&path));
        } else if path.extension().is_some_and(|x| x == "rs") {
            found.push(path);
        }
    }
    found
}

#[test]
fn entry_columns_count_is_the_number_of_entry_columns() {
    // Queries select more after `ENTRY_COLUMNS` (the hash) and read it at this index: a column
    // added to the list without the count read a reversal's `reverses` as the hash.
    assert_eq!(
        crate::ledger::entries::ENTRY_COLUMNS.split(',').count(),
        crate::ledger::entries::ENTRY_COLUMNS_COUNT
    );
}

#[test]
fn the_type_filter_message_lists_exactly_the_entry_kinds() {
    // Where the HTTP edge spells the kinds out in its message for a bad `type`, it spells
    // all of them, in `ALL`'s order (`EntryKind::names()` gives that text).
    let want = format!("must be one of {}", EntryKind::names());
    let mut seen = 0;
    for file in rust_files(&manifest_dir().join("src/http")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text
            .lines()
            .filter(|l| l.contains("\"must be one of DEPOSIT"))
        {
            seen += 1;
            assert!(
                line.contains(&format!("\"{want}\"")),
                "{}: {line}",
                file.display()
            );
        }
    }
    assert!(seen <= 1, "the kinds are spelled in {seen} messages");
}

#[test]
fn domain_never_names_storage_or_http_crates() {
    // Domain types hold valid values and nothing else: no SQL, no HTTP (ARCHITECTURE.md).
    let files = rust_files(&manifest_dir().join("src/domain"));
    assert!(files.len() >= 5, "src/domain not found");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for name in ["rusqlite", "tiny_http", "r2d2"] {
            assert!(!text.contains(name), "{} names {name}", file.display());
        }
    }
}

/// Whether `file` is a test-only module: its parent declares it `#[cfg(test)] mod name;`.
fn is_test_module(file: &Path) -> bool {
    let Some(stem) = file.file_stem().and_then(|s| s.to_str()) else {
        return false;
    };
    let parent = std::fs::read_to_string(file.with_file_name("mod.rs")).unwrap_or_default();
    parent.contains(&format!("#[cfg(test)]\nmod {stem};"))
}

/// A file's text up to its inline test module (`#[cfg(test)] mod tests { … }`, which by custom
/// comes last): the code that runs in the service.
fn without_inline_tests(text: &str) -> &str {
    text.split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or(text)
}

#[test]
fn the_money_rules_never_name_a_storage_engine() {
    // The ledger and accounts read and write through `store::Sql` only, so the same rules run
    // on either engine (ARCHITECTURE.md). Their tests may open an in-memory SQLite database:
    // test-only modules and inline test modules are left out.
    let mut checked = Vec::new();
    for dir in ["src/ledger", "src/accounts"] {
        for file in rust_files(&manifest_dir().join(dir)) {
            if is_test_module(&file) {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let code = without_inline_tests(&text);
            for name in ["rusqlite", "r2d2"] {
                assert!(!code.contains(name), "{} names {name}", file.display());
            }
            checked.push(file);
        }
    }
    // Every file of both folders but `tests.rs` and `invariants.rs` (which name rusqlite).
    let names = |n: &str| checked.iter().any(|f| f.ends_with(n));
    assert!(
        names("ledger/entries.rs") && names("accounts/users.rs"),
        "{checked:?}"
    );
    assert!(!names("ledger/tests.rs") && !names("ledger/invariants.rs"));
    assert!(checked.len() >= 11, "{checked:?}");
}

#[test]
fn schema_limits_match_the_domain_types() {
    // The CHECKs that back the domain's limits say the same numbers and names.
    let schema = schema();
    let scale = format!("CHECK (scale BETWEEN 0 AND {})", Currency::SCALE_MAX);
    assert!(schema.contains(&scale), "schema.sql lacks {scale:?}");
    let reference = format!(
        "reference TEXT NOT NULL CHECK (length(reference) BETWEEN 1 AND {REFERENCE_CHARS_MAX})"
    );
    // entries, withdrawals and holds.
    assert_eq!(schema.matches(&reference).count(), 3, "{reference:?}");
    let statuses = WithdrawalStatus::ALL
        .map(|s| format!("'{}'", s.as_str()))
        .join(", ");
    let status = format!("CHECK (status IN ({statuses}))");
    assert!(schema.contains(&status), "schema.sql lacks {status:?}");
}
