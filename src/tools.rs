//! The subcommands other than serving: createsuperuser, snapshot, verify, backup.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;

use crate::accounts::{self, NewUser, PasswordGuard};
use crate::clock::{Clock, SystemClock};
use crate::db::{self, DirectWriter, Exec, Synchronous};
use crate::domain::{Email, Password, Username};
use crate::error::{AppError, StartupError};
use crate::ledger::snapshot;
use crate::store::Target;

/// Opens the database for a tool, migrating it first if its schema is older than this
/// binary's. Only the migration takes the serve lock: a tool never changes the schema under a
/// running server, but one that needs no migration runs beside it.
fn open_migrated(path: &Path) -> Result<rusqlite::Connection, StartupError> {
    let mut conn = db::open(path, Synchronous::Full).map_err(|e| {
        StartupError::setting("--db", format!("cannot open {}: {e}", path.display()))
    })?;
    let version = db::schema_version(&conn)?;
    let _lock = if version < db::SCHEMA_VERSION {
        Some(db::lock_for_migration(path, version)?)
    } else {
        None
    };
    // Checks the version is this binary's (a newer one is refused), or migrates under the lock.
    db::migrate(&mut conn)?;
    Ok(conn)
}

/// A writer for a tool on either engine: SQLite's file migrated first (`open_migrated`), or
/// PostgreSQL's schema applied or checked.
fn open_writer(target: &Target) -> Result<DirectWriter, StartupError> {
    let clock = Arc::new(SystemClock);
    match target {
        Target::Sqlite(path) => Ok(DirectWriter::new(open_migrated(path)?, clock)),
        Target::Postgres(_) => {
            let conn = crate::store::postgres::PgConn::connect_target(target)?;
            crate::store::postgres::migrate(&conn).map_err(StartupError::failed)?;
            Ok(DirectWriter::postgres(conn, clock))
        }
    }
}

/// Reads a line with the terminal's echo off.
fn prompt_hidden(prompt: &str) -> Result<String, StartupError> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    // SAFETY: termios calls on standard input, with a struct they fill in.
    let saved = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) != 0 {
            return Err(StartupError::failed("cannot read the terminal's settings"));
        }
        let saved = t;
        t.c_lflag &= !libc::ECHO;
        libc::tcsetattr(0, libc::TCSANOW, &t);
        saved
    };
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    // SAFETY: restores the settings read above.
    unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
    eprintln!();
    read.map_err(|e| StartupError::failed(e.to_string()))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn read_password() -> Result<String, StartupError> {
    if std::io::stdin().is_terminal() {
        let first = prompt_hidden("Password: ")?;
        let again = prompt_hidden("Password (again): ")?;
        if first != again {
            return Err(StartupError::failed("the passwords do not match"));
        }
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(|e| {
            StartupError::caused_by("cannot read the password from standard input", e)
        })?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
}

/// `argon2` is the (memory KiB, iterations) the server is configured with, so a staff user's
/// login costs the same time as anyone else's (and as an unknown user's).
pub fn createsuperuser(
    target: &Target,
    username: &str,
    email: &str,
    argon2: (u32, u32),
) -> Result<String, StartupError> {
    let username = Username::parse(username).map_err(|e| StartupError::setting("--username", e))?;
    let email = Email::parse(email).map_err(|e| StartupError::setting("--email", e))?;
    let password = Password::parse(&read_password()?)
        .map_err(|e| StartupError::failed(format!("password: {e}")))?;
    if crate::domain::username_key(password.expose()) == username.key() {
        return Err(StartupError::failed(
            "password: must not be the same as the username",
        ));
    }
    let writer = open_writer(target)?;
    let guard = PasswordGuard::new(argon2.0, argon2.1, 1).map_err(StartupError::failed)?;
    let password_hash = guard
        .hash(&password)
        .map_err(|e| StartupError::failed(format!("{e:?}")))?;
    let new_user = NewUser {
        username,
        email,
        password_hash,
        first_name: String::new(),
        last_name: String::new(),
        is_staff: true,
    };
    let user = writer
        .exec(move |conn, now| accounts::create_user(conn, now, &new_user, None))
        .map_err(|e| match e {
            AppError::UsernameTaken => {
                StartupError::setting("--username", "a user with this username already exists")
            }
            AppError::EmailTaken => {
                StartupError::setting("--email", "a user with this email already exists")
            }
            other => StartupError::failed(format!("cannot create the user: {other:?}")),
        })?;
    Ok(format!(
        "created staff user {} (id {})",
        user.username, user.id
    ))
}

/// Runs one snapshot. `Ok(false)` when a mismatch was found.
pub fn snapshot_now(target: &Target) -> Result<bool, StartupError> {
    let writer = open_writer(target)?;
    let cutoff = SystemClock.now();
    let started = std::time::Instant::now();
    let report = snapshot::run(&writer, cutoff)
        .map_err(|e| StartupError::failed(format!("snapshot failed: {e:?}")))?;
    println!(
        "snapshot run {}: cut-off {}, {} wallets, {} mismatches, {:.3}s",
        report.run_id,
        report.cutoff.to_text(),
        report.wallets,
        report.mismatches.len(),
        started.elapsed().as_secs_f64()
    );
    for m in &report.mismatches {
        println!(
            "mismatch: wallet {} computed {} from entries, running balance {}",
            m.wallet_id, m.computed, m.running
        );
    }
    Ok(report.mismatches.is_empty())
}

pub fn verify(target: &Target) -> Result<bool, StartupError> {
    let failed = |e: AppError| match e {
        AppError::Internal(cause) => {
            StartupError::caused_by("verify failed to read the database", cause)
        }
        other => StartupError::failed(format!("verify failed to read the database: {other:?}")),
    };
    let report = match target {
        Target::Sqlite(db_path) => {
            if !db_path.exists() {
                return Err(StartupError::setting(
                    "--db",
                    format!("{} does not exist", db_path.display()),
                ));
            }
            let mut conn = open_migrated(db_path)?;
            crate::verify::verify(&mut conn).map_err(failed)?
        }
        Target::Postgres(_) => crate::verify::verify_target(target).map_err(failed)?,
    };
    println!(
        "verified {} entries in {} wallets in {:.3}s: {}",
        report.entries,
        report.wallets,
        report.took.as_secs_f64(),
        if report.ok() {
            "OK".to_string()
        } else {
            format!("{} findings", report.findings_total)
        }
    );
    if report.unsealed > 0 {
        println!(
            "{} of the newest entries are not yet sealed into the chain (their balances are checked)",
            report.unsealed
        );
    }
    for f in &report.findings {
        println!("finding: {f}");
    }
    Ok(report.ok())
}

/// Attempts at a backup step that finds the database locked, 50 ms apart.
pub const BACKUP_BUSY_RETRIES_MAX: u32 = 200;

pub fn backup(db_path: &Path, target: &Path) -> Result<String, StartupError> {
    if target.exists() {
        return Err(StartupError::failed(format!(
            "{} exists already; choose a new file",
            target.display()
        )));
    }
    if !db_path.exists() {
        return Err(StartupError::setting(
            "--db",
            format!("{} does not exist", db_path.display()),
        ));
    }
    let conn =
        db::open(db_path, Synchronous::Full).map_err(|e| StartupError::failed(e.to_string()))?;
    // One step copies every page: stepping in small pieces restarts whenever the server
    // writes in between, and under steady writes might never finish. In WAL mode a single
    // step reads one consistent snapshot without blocking the server's writer.
    let mut dst = rusqlite::Connection::open(target)
        .map_err(|e| StartupError::caused_by(format!("cannot create {}", target.display()), e))?;
    let backup = rusqlite::backup::Backup::new(&conn, &mut dst)
        .map_err(|e| StartupError::caused_by("backup failed", e))?;
    let mut tries_left = BACKUP_BUSY_RETRIES_MAX;
    loop {
        use rusqlite::backup::StepResult;
        match backup
            .step(-1)
            .map_err(|e| StartupError::caused_by("backup failed", e))?
        {
            StepResult::Done => break,
            StepResult::More => {}
            // Busy or locked (by a writer in another process): wait a little and try again.
            _ if tries_left > 0 => {
                tries_left -= 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            _ => {
                return Err(StartupError::failed(
                    "backup failed: the database stayed locked",
                ))
            }
        }
    }
    Ok(format!(
        "backed up {} to {}",
        db_path.display(),
        target.display()
    ))
}
