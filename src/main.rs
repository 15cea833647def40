//! The `wallet` binary: parses the command line and calls into the library.

use std::process::ExitCode;

use wallet::config::Config;
use wallet::error::StartupError;

use cli::{Cli, Command};

mod bench;
mod cli;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_args(args.clone()) {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One line naming the setting, and exit code 2.
            eprintln!("{}", cli::first_line_of(&e, &args));
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    wallet::log::init_from_env();
    let result = run(&cli);
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: &Cli) -> Result<bool, StartupError> {
    let printed = |m: String| {
        println!("{m}");
        true
    };
    match &cli.command {
        None => serve(cli.db.clone(), cli.serve.clone()),
        Some(Command::Createsuperuser { username, email }) => wallet::tools::createsuperuser(
            &cli.db,
            username,
            email,
            (cli.serve.argon2_memory_kib, cli.serve.argon2_iterations),
        )
        .map(printed),
        Some(Command::Snapshot) => wallet::tools::snapshot_now(&cli.db),
        Some(Command::Verify) => wallet::tools::verify(&cli.db),
        Some(Command::Backup { file }) => {
            wallet::tools::backup(sqlite_file(&cli.db)?, file).map(printed)
        }
        Some(Command::Copy { from, to }) => wallet::copy::run(from, to),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::BenchSnapshot(args)) => bench::run_snapshot_bench(args),
    }
}

/// The SQLite file a command-line tool works on.
fn sqlite_file(db: &wallet::store::Target) -> Result<&std::path::Path, StartupError> {
    db.path().ok_or_else(|| {
        StartupError::setting(
            "--db/WALLET_DB",
            "this command works on a SQLite file; for a PostgreSQL ledger, `wallet copy` it to a file first",
        )
    })
}

fn serve(db: wallet::store::Target, args: wallet::config::ServeArgs) -> Result<bool, StartupError> {
    let config = Config::from_args(db, args)?;
    // Block SIGINT and SIGTERM before any thread starts, so every thread inherits the mask
    // and the main thread alone receives them through sigwait.
    let signals = block_shutdown_signals();
    let app = wallet::App::start(config)?;
    wallet::log::info(&format!("wallet listening on http://{}", app.addr));
    println!("wallet listening on http://{}", app.addr);
    let signal = wait_for(&signals);
    wallet::log::info(&format!("received signal {signal}; shutting down"));
    app.shutdown()?;
    wallet::log::info("shut down cleanly");
    Ok(true)
}

fn block_shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set; pthread_sigmask on the calling thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: sigwait on a set of blocked signals.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}
