//! The command line of the `wallet` binary: the subcommands and their flags. The server's own
//! settings (`ServeArgs`) live in the library's `config`, which the service reads; this module
//! and `bench` belong to the binary, so the service can never import the load generator.

use std::path::PathBuf;

use std::ffi::OsString;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use wallet::config::{
    ServeArgs, ENV_DB_GROUP_MAX, ENV_DB_GROUP_MAX_OLD, ENV_REQUESTS_MAX, ENV_REQUESTS_MAX_OLD,
};

/// Settings whose environment variable was renamed: `(argument id, variable, old variable)`.
/// The old one is read when the new one is unset.
const RENAMED_VARIABLES: [(&str, &str, &str); 2] = [
    ("threads", ENV_REQUESTS_MAX, ENV_REQUESTS_MAX_OLD),
    ("db_group_max", ENV_DB_GROUP_MAX, ENV_DB_GROUP_MAX_OLD),
];

#[derive(Parser, Debug)]
#[command(
    name = "wallet",
    version,
    about = "A self-hosted wallet ledger: REST API over an embedded SQLite file.\n\nWith no subcommand, serves the API."
)]
pub struct Cli {
    /// The database: a SQLite file (created on first start), or a PostgreSQL server's
    /// `postgres://user:password@host:port/database` URL.
    #[arg(long, env = "WALLET_DB", default_value = "./wallet.db", global = true)]
    pub db: wallet::store::Target,

    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a staff user. The password is read from a prompt, or from standard input when
    /// that is not a terminal (never from a flag: it would show in `ps`).
    Createsuperuser {
        #[arg(long)]
        username: String,
        #[arg(long)]
        email: String,
    },
    /// Take one balance snapshot now. Safe while the server runs. Exits 1 on a mismatch.
    Snapshot,
    /// Check the hash chain, every balance against its entries, conservation of money and
    /// SQLite's integrity. Safe while the server runs. Exits 1 on any finding.
    Verify,
    /// Copy the database consistently (SQLite's online backup API) while the server runs.
    Backup {
        /// Where to write the copy; must not exist yet.
        file: PathBuf,
    },
    /// Copy the whole ledger into a new database of either engine (a SQLite file or a
    /// `postgres://` URL), every id, time stamp and hash unchanged, then verify the copy.
    /// Refuses a target that holds anything; changes nothing on failure. Exits 1 when the
    /// copy does not verify.
    Copy {
        /// The database to copy: a SQLite file or a `postgres://` URL.
        #[arg(long)]
        from: wallet::store::Target,
        /// The new database: a SQLite file that does not exist yet, or an empty PostgreSQL
        /// database.
        #[arg(long)]
        to: wallet::store::Target,
    },
    /// Load-test a server: see README "Performance".
    Bench(crate::bench::BenchArgs),
    /// Measure a snapshot of a large ledger and its cost to concurrent transfers, and the
    /// time of `verify` on it: see README "Performance".
    BenchSnapshot(crate::bench::SnapshotBenchArgs),
}

impl Cli {
    /// Parses `args` (the first is the program's name) and the environment. `--requests-max`
    /// was called `--threads`: the old flag is an alias, the old variable `WALLET_THREADS` is
    /// read when `WALLET_REQUESTS_MAX` is unset, and an error about a value given as
    /// `--threads` names `--threads`, as the user wrote it. `--db-group-max` likewise
    /// (`RENAMED_VARIABLES`).
    pub fn try_parse_args(args: Vec<OsString>) -> Result<Cli, clap::Error> {
        let mut command = Cli::command();
        for (id, variable, old) in RENAMED_VARIABLES {
            if std::env::var_os(variable).is_none() && std::env::var_os(old).is_some() {
                command = command.mut_arg(id, |a| a.env(old));
            }
        }
        command
            .try_get_matches_from_mut(args.clone())
            .and_then(|mut m| Cli::from_arg_matches_mut(&mut m))
            .map_err(|e| e.format(&mut command))
    }
}

/// The first line of a command-line error, naming `--threads` where the user wrote that
/// rather than `--requests-max`.
pub fn first_line_of(error: &clap::Error, args: &[OsString]) -> String {
    let first = error
        .to_string()
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .to_string();
    let typed_old_name = args.iter().any(|a| {
        let a = a.to_string_lossy();
        a == "--threads" || a.starts_with("--threads=")
    });
    if typed_old_name {
        first.replace("'--requests-max ", "'--threads ")
    } else {
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `.rs` file under `dir`, with its path relative to `src/`.
    fn sources(dir: &std::path::Path, found: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).expect("read src/") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                sources(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");
                let name = path.to_string_lossy().trim_start_matches(src).to_string();
                found.push((name, std::fs::read_to_string(&path).expect("read a source")));
            }
        }
    }

    /// The lines of `text` that mention `needle` in code (comments left out).
    fn code_mentions(text: &str, needle: &str) -> Vec<String> {
        text.lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .filter(|code| code.contains(needle))
            .map(|code| code.trim().to_string())
            .collect()
    }

    #[test]
    fn the_service_never_imports_the_load_generator_and_storage_never_imports_config() {
        // The load generator and the command line belong to the binary: no module of the
        // service (everything but main.rs, cli.rs and bench/) names `bench`, so the server
        // can't come to depend on it. Storage sits below the settings: nothing in db/ names
        // `config` (config imports db's `Synchronous`, never the reverse).
        let mut found = Vec::new();
        sources(
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
            &mut found,
        );
        assert!(
            found.iter().any(|(name, _)| name == "service.rs"),
            "{found:?}"
        );
        let mut offending = Vec::new();
        for (name, text) in &found {
            let binary_only =
                name == "main.rs" || name.starts_with("cli") || name.starts_with("bench/");
            if !binary_only {
                for needle in ["bench::", "mod bench"] {
                    offending.extend(
                        code_mentions(text, needle)
                            .into_iter()
                            .map(|l| format!("{name}: {l}")),
                    );
                }
            }
            if name.starts_with("db/") {
                offending.extend(
                    code_mentions(text, "config::")
                        .into_iter()
                        .map(|l| format!("{name}: {l}")),
                );
            }
        }
        assert!(offending.is_empty(), "{offending:#?}");
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_args(args.iter().map(OsString::from).collect())
    }

    #[test]
    fn requests_max_is_still_accepted_as_threads() {
        // The flag was renamed; the old spelling sets the same setting, and an error about a
        // value given the old way names the flag as it was written.
        assert_eq!(
            parse(&["wallet", "--requests-max", "7"])
                .unwrap()
                .serve
                .threads,
            7
        );
        assert_eq!(
            parse(&["wallet", "--threads", "9"]).unwrap().serve.threads,
            9
        );
        assert_eq!(
            parse(&["wallet", "--threads=11"]).unwrap().serve.threads,
            11
        );
        let args: Vec<OsString> = ["wallet", "--threads", "0"].map(OsString::from).into();
        let line = first_line_of(&parse(&["wallet", "--threads", "0"]).unwrap_err(), &args);
        assert!(line.contains("'--threads "), "{line}");
        let args: Vec<OsString> = ["wallet", "--requests-max", "0"].map(OsString::from).into();
        let line = first_line_of(
            &parse(&["wallet", "--requests-max", "0"]).unwrap_err(),
            &args,
        );
        assert!(line.contains("'--requests-max "), "{line}");
    }
}
