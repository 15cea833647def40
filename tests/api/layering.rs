//! What each layer of the source may hold, read from the source text itself.

use std::path::{Path, PathBuf};

/// SQL text, and the calls that run it, that the HTTP edge must never hold: handlers call the
/// service, which reads through the pool and writes through the writer.
const SQL_MARKERS: &[&str] = &[
    "SELECT ",
    "INSERT INTO",
    "UPDATE ",
    "DELETE FROM",
    "CREATE TABLE",
    "PRAGMA ",
    "BEGIN IMMEDIATE",
    "SAVEPOINT ",
    ".prepare(",
    ".prepare_cached(",
    ".execute(",
    ".execute_batch(",
    ".query_row(",
    ".query_map(",
    "rusqlite",
];

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a source folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// Proves that no file under `src/http/` holds SQL or runs it: every line of code (comments,
/// which may explain what the service does, are left out) is free of SQL keywords and of the
/// calls that prepare or execute a statement.
#[test]
fn no_file_under_src_http_holds_sql() {
    let http = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut files = Vec::new();
    rust_files(&http, &mut files);
    assert!(files.len() >= 5, "read the http files: {files:?}");
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a source file");
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for marker in SQL_MARKERS.iter().filter(|m| line.contains(*m)) {
                found.push(format!("{}:{}: {marker:?}: {line}", file.display(), n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "SQL under src/http:\n{}",
        found.join("\n")
    );
}

/// The lines of code (comments left out) of the Rust files under `dir`, with where they are.
fn code_lines(dir: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    let mut lines = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a source file");
        for (n, line) in text.lines().enumerate() {
            if !line.trim_start().starts_with("//") {
                lines.push((format!("{}:{}", file.display(), n + 1), line.to_string()));
            }
        }
    }
    lines
}

/// Proves the API never reads a cookie: the request's browser headers (`Incoming::browser`,
/// which holds `Cookie`) are read only under `src/http/console/`, and no other file of the
/// edge names the header.
#[test]
fn only_the_console_reads_a_cookie() {
    let http = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let found: Vec<String> = code_lines(&http)
        .into_iter()
        .filter(|(at, _)| !at.contains("/src/http/console/") && !at.contains("request.rs"))
        .filter(|(_, line)| line.contains(".browser") || line.contains("Cookie"))
        .map(|(at, line)| format!("{at}: {line}"))
        .collect();
    assert!(
        found.is_empty(),
        "cookies read outside the console:\n{}",
        found.join("\n")
    );
}

/// Proves the console's pages call the use cases of `Service` and never the money rules or the
/// storage: no file under `src/http/console/` names `db::`, `store::` or `accounts::` functions,
/// and it takes only types from `ledger` (in `use` lines and type paths, never a call).
#[test]
fn console_pages_call_the_service_never_the_ledger_or_the_database() {
    let console = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/console");
    let lines = code_lines(&console);
    assert!(lines.len() > 300, "read the console's files");
    let mut found = Vec::new();
    for (at, line) in &lines {
        for marker in ["crate::db", "crate::store", "rusqlite", "postgres::"] {
            if line.contains(marker) {
                found.push(format!("{at}: {line}"));
            }
        }
        // A call into the ledger: `ledger::something(` or `ledger::module::something(`.
        if let Some(i) = line.find("ledger::") {
            let rest = &line[i..];
            let path_end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let last = rest[..path_end].rsplit("::").next().unwrap_or("");
            let called = rest[path_end..].starts_with('(');
            if called && last.starts_with(|c: char| c.is_lowercase()) {
                found.push(format!("{at}: {line}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the console reaches past Service:\n{}",
        found.join("\n")
    );
}
