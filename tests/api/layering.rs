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
