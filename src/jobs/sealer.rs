//! The hash chain on PostgreSQL: entries sealed into the chain, in position order, by one
//! process at a time.
//!
//! Several processes append entries at once, so no transaction can know its entry's place in
//! the chain when it writes it: a global chain head locked by every write would serialise the
//! whole cluster. Instead an entry is inserted with its position (`seq`, from a sequence) and
//! no hash, and the sealer, elected by a session advisory lock (so exactly one process runs
//! it, and another takes over within a second when that process dies), chains them afterwards:
//!
//! 1. Read the highest committed position `M`, then take a transaction id `X` (and end that
//!    transaction). Every position up to `M` was drawn by a transaction that already had its
//!    id (ids are given at a transaction's first write, and the balance moves before the entry
//!    is inserted), so that id is below `X`. A position at or below `M` that is not visible
//!    belongs to a transaction still running, or to one that rolled back.
//! 2. Wait until no transaction of this database with an id below `X` is running. From then
//!    on the set of entries at or below `M` is final.
//! 3. In one transaction, chain the unsealed entries up to `M` in position order from the
//!    chain head, with the same hash as on SQLite (`entries::entry_hash`), and move the head.
//!
//! So the chain's order is position order, with gaps where a transaction rolled back, and a
//! chain sealed here verifies byte for byte on SQLite after `wallet copy` (and by
//! `tools/verify_chain.py`). A reader never needs the chain to be sealed: balances and
//! histories are exact the moment a write commits; only `verify` and `copy` wait for it.

use std::time::{Duration, Instant};

use crate::error::AppError;
use crate::ledger::entries::{entry_columns, entry_from, entry_from_row, entry_hash};
use crate::store::Sql;

/// The advisory lock that elects the sealer (any fixed number; "wallet" in ASCII).
pub const SEALER_LOCK: i64 = 0x77_61_6c_6c_65_74;
/// Most entries chained in one transaction.
pub const SEAL_BATCH_ENTRIES_MAX: i64 = 5_000;
/// How long a pass waits for the transactions in progress in its snapshot to end before it
/// gives up and starts again (a long transaction, such as a backup's, only delays sealing).
pub const SEAL_WAIT_MAX: Duration = Duration::from_secs(2);

/// Seals what is final now. Returns how many entries were chained. The caller holds
/// `SEALER_LOCK` (or is the only process, as `verify` and `copy` make sure).
pub fn seal_pass(conn: &dyn Sql) -> Result<usize, AppError> {
    let horizon: i64 = conn
        .query_one("SELECT COALESCE(max(seq), 0) FROM entries", &[])?
        .get(0)?;
    let head: i64 = conn
        .query_one("SELECT seq FROM chain_head WHERE id = 1", &[])?
        .get(0)?;
    if horizon <= head {
        return Ok(0);
    }
    // A transaction id taken now is later than the id of every transaction that drew a
    // position up to `horizon`: each got its id at its first write, before it drew its
    // position, and every such position was drawn before `horizon` was committed and read.
    // (The snapshot's list of transactions in progress is not enough: it omits those whose id
    // is above the newest finished one.)
    conn.execute("BEGIN", &[])?;
    let taken = conn.query_one("SELECT CAST(pg_current_xact_id() AS TEXT)", &[]);
    conn.execute("COMMIT", &[])?;
    let after: String = taken?.get(0)?;
    let started = Instant::now();
    loop {
        // Transactions of this database with an id older than `after` still running: once
        // none is, every transaction that could still add an entry at or below `horizon` has
        // ended. (Only this database's: the snapshot's `xmin` would wait for every database
        // of the server, a long copy into another one included.)
        let waiting: i64 = conn
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND backend_xid IS NOT NULL
                   AND age(backend_xid) >= age(xid(CAST(CAST(?1 AS TEXT) AS xid8)))",
                &[&after],
            )?
            .get(0)?;
        if waiting == 0 {
            break;
        }
        if started.elapsed() > SEAL_WAIT_MAX {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    seal_up_to(conn, horizon)
}

/// Chains the unsealed entries at or below `horizon`, in position order, in one transaction.
fn seal_up_to(conn: &dyn Sql, horizon: i64) -> Result<usize, AppError> {
    conn.execute("BEGIN", &[])?;
    let sealed = (|| {
        let head = conn.query_one(
            "SELECT seq, hash FROM chain_head WHERE id = 1 FOR UPDATE",
            &[],
        )?;
        let (mut seq, mut prev): (i64, [u8; 32]) = (head.get(0)?, head.get(1)?);
        let currency_from = crate::ledger::entries::chain_currency_from(conn)?;
        // Every entry above the head is unsealed. A walk up the primary key from the head,
        // whatever plan PostgreSQL caches for the statement; the horizon is applied here.
        let rows = conn.query(
            concat!(
                "SELECT ",
                entry_columns!(),
                " FROM ",
                entry_from!(),
                " WHERE e.seq > ?1 ORDER BY e.seq LIMIT ?2"
            ),
            &[&seq, &SEAL_BATCH_ENTRIES_MAX],
        )?;
        let mut seqs = String::new();
        let mut hashes = String::new();
        let mut sealed = 0;
        for row in &rows {
            let entry = entry_from_row(row)?;
            if entry.seq > horizon {
                break;
            }
            sealed += 1;
            let hash = entry_hash(&prev, &entry, currency_from);
            if !seqs.is_empty() {
                seqs.push(',');
                hashes.push(',');
            }
            seqs.push_str(&entry.seq.to_string());
            hashes.push_str(&hex(&hash));
            (seq, prev) = (entry.seq, hash);
        }
        if sealed == 0 {
            return Ok(0);
        }
        conn.execute(
            "UPDATE entries e SET hash = decode(v.hash, 'hex')
             FROM unnest(string_to_array(?1, ',')::bigint[], string_to_array(?2, ',')) AS v(seq, hash)
             WHERE e.seq = v.seq",
            &[&seqs, &hashes],
        )?;
        conn.execute(
            "UPDATE chain_head SET seq = ?1, hash = ?2 WHERE id = 1",
            &[&seq, &prev],
        )?;
        Ok(sealed)
    })();
    match sealed {
        Ok(n) => {
            conn.execute("COMMIT", &[])?;
            Ok(n)
        }
        Err(e) => {
            let _ = conn.execute("ROLLBACK", &[]);
            Err(e)
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How long the sealer rests when nothing was left to seal.
const SEAL_IDLE_MS: u64 = 20;
/// How often a process that is not the sealer asks whether it may become it.
const SEALER_ELECTION_MS: u64 = 1_000;

/// The background thread that seals the chain, in every process on PostgreSQL; only the one
/// holding `SEALER_LOCK` works, the others wait to take over.
pub struct Sealer {
    pub url: String,
    pub wakeup: std::sync::Arc<crate::clock::Wakeup>,
}

/// The sealer's own connection. Each of its statements is planned for the table as it is at
/// that moment: a plan cached while `entries` was small (a new database, before autovacuum
/// has analyzed it) scanned the whole table on every pass, 4.6 million rows read in the first
/// 9 s of a benchmark. Planning costs well under a millisecond a pass. `None` (logged when
/// the setting fails; an unreachable database is retried quietly, as before) means try later.
fn connect(url: &str) -> Option<crate::store::postgres::PgConn> {
    let conn = crate::store::postgres::PgConn::connect(url).ok()?;
    match conn.batch("SET plan_cache_mode = force_custom_plan") {
        Ok(()) => Some(conn),
        Err(e) => {
            crate::log::error(&format!("sealer: {e:?}"));
            None
        }
    }
}

impl Sealer {
    pub fn spawn(self) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("sealer".into())
            .spawn(move || self.run())
            .expect("spawn the sealer thread")
    }

    fn run(&self) {
        while !self.wakeup.is_stopping() {
            let Some(conn) = connect(&self.url) else {
                self.wakeup.sleep(Duration::from_millis(SEALER_ELECTION_MS));
                continue;
            };
            if let Err(e) = self.serve(&conn) {
                crate::log::error(&format!("sealer: {e:?}"));
                self.wakeup.sleep(Duration::from_millis(SEALER_ELECTION_MS));
            }
            // Dropping the connection releases the lock, if it was held.
        }
    }

    /// Waits to be elected, then seals until stopped or a statement fails.
    fn serve(&self, conn: &crate::store::postgres::PgConn) -> Result<(), AppError> {
        loop {
            let elected: bool = conn
                .query_one("SELECT pg_try_advisory_lock(?1)", &[&SEALER_LOCK])?
                .get(0)?;
            if elected {
                break;
            }
            if !self.wakeup.sleep(Duration::from_millis(SEALER_ELECTION_MS)) {
                return Ok(());
            }
        }
        loop {
            let sealed = seal_pass(conn)?;
            if sealed == 0 && !self.wakeup.sleep(Duration::from_millis(SEAL_IDLE_MS)) {
                return Ok(());
            }
            if self.wakeup.is_stopping() {
                return Ok(());
            }
        }
    }
}

/// Most time `seal_committed` waits for the chain to reach what was committed when it began.
pub const SEAL_COMMITTED_WAIT_MAX: Duration = Duration::from_secs(10);

/// Chains every entry committed before the call, for `verify` and `copy`: by sealing them
/// itself when no server's sealer is running, else by waiting for that sealer. Returns how
/// many of those entries are still unsealed when the wait ends (0 but for a sealer that is
/// stuck behind a long transaction).
pub fn seal_committed(conn: &dyn Sql) -> Result<i64, AppError> {
    let target: i64 = conn
        .query_one("SELECT COALESCE(max(seq), 0) FROM entries", &[])?
        .get(0)?;
    let started = Instant::now();
    loop {
        let unsealed: i64 = conn
            .query_one(
                "SELECT count(*) FROM entries
                 WHERE seq > (SELECT seq FROM chain_head WHERE id = 1) AND seq <= ?1",
                &[&target],
            )?
            .get(0)?;
        if unsealed == 0 || started.elapsed() > SEAL_COMMITTED_WAIT_MAX {
            return Ok(unsealed);
        }
        let elected: bool = conn
            .query_one("SELECT pg_try_advisory_lock(?1)", &[&SEALER_LOCK])?
            .get(0)?;
        if elected {
            let sealed = seal_pass(conn);
            conn.query_one("SELECT pg_advisory_unlock(?1)", &[&SEALER_LOCK])?;
            sealed?;
        } else {
            std::thread::sleep(Duration::from_millis(SEAL_IDLE_MS));
        }
    }
}
