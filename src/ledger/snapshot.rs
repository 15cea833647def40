//! Balance snapshots: for every wallet, `last_balance + net of entries since
//! last_balance_update`, stored with the run's cut-off and checked against the running balance.
//!
//! The original Django job locked the whole database while it ran. This one works in chunks of
//! `SNAPSHOT_CHUNK_WALLETS` wallets, each its own short write transaction, so a transfer never
//! waits more than one chunk behind it. A mismatch is never fixed: it is logged, counted and
//! recorded with the run.

use super::entries::{fence_stamps, net_between, WalletKey};
use crate::db::Exec;
use crate::domain::{MinorUnits, Timestamp};
use crate::error::AppError;
use crate::store::{Engine, Sql};

/// Wallets per write job: small enough that a transfer queued behind a chunk waits only a few
/// milliseconds (250 wallets took ~15 ms on a 100,000-wallet ledger; 64 take ~3 ms).
pub const SNAPSHOT_CHUNK_WALLETS: u32 = 64;

const END_OF_TIME: &str = "9999-12-31T23:59:59.999999Z";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub wallet_id: String,
    pub currency: String,
    /// last_balance + net of entries up to the cut-off.
    pub computed: i64,
    /// The running balance less the entries after the cut-off.
    pub running: i64,
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: i64,
    pub cutoff: Timestamp,
    pub wallets: u64,
    pub mismatches: Vec<Mismatch>,
}

struct Chunk {
    last_wallet_key: Option<WalletKey>,
    wallets: u64,
    mismatches: Vec<Mismatch>,
}

/// Takes one snapshot of every wallet as of `cutoff`, or as of just before the run's first
/// transaction if that is earlier.
///
/// An entry belongs to the snapshot when `created_at <= cutoff`. Write transactions take
/// their time after acquiring the lock, strictly increasing (`db::writer`), so every entry
/// committed after the run's first transaction is later than `now - 1µs`: capping the
/// cut-off there means no entry at or before it can still be committed behind the run.
pub fn run(exec: &impl Exec, cutoff: Timestamp) -> Result<RunReport, AppError> {
    run_once(exec, cutoff, None)?
        .ok_or_else(|| AppError::internal("snapshot", "a run without a fire time was skipped"))
}

/// The advisory lock under which a run is recorded on PostgreSQL ("snapsh" in ASCII).
const SNAPSHOT_LOCK: i64 = 0x73_6e_61_70_73_68;
/// A run that has not finished after this long is taken for dead (its process stopped): the
/// fire time it was for may be run again.
const SNAPSHOT_RUN_STALE_MS: i64 = 30 * 60 * 1_000;

/// `run`, for the scheduled fire time `due`: skipped (`None`) when a run for it or a later
/// one has finished or is under way, in this process or another serving the same database.
pub fn run_once(
    exec: &impl Exec,
    cutoff: Timestamp,
    due: Option<Timestamp>,
) -> Result<Option<RunReport>, AppError> {
    let started = exec.exec(move |conn, now| {
        if let Some(due) = due {
            if conn.engine() == Engine::Postgres {
                conn.query_one("SELECT pg_advisory_xact_lock(?1)", &[&SNAPSHOT_LOCK])?;
            }
            let stale = now.plus_millis(-SNAPSHOT_RUN_STALE_MS);
            let taken: i64 = conn
                .query_one(
                    "SELECT count(*) FROM snapshot_runs
                     WHERE cutoff >= ?1 AND (finished_at IS NOT NULL OR started_at > ?2)",
                    &[&due, &stale],
                )?
                .get(0)?;
            if taken > 0 {
                return Ok(None);
            }
        }
        start_run(conn, now, cutoff).map(Some)
    })?;
    let Some((run_id, cutoff)) = started else {
        return Ok(None);
    };
    let mut report = RunReport {
        run_id,
        cutoff,
        wallets: 0,
        mismatches: Vec::new(),
    };
    // Keys start at 1: the first chunk takes the wallets after key 0.
    let mut after = WalletKey::from_storage(0);
    loop {
        let from = after;
        let started = std::time::Instant::now();
        let chunk = exec.exec(move |conn, _| snapshot_chunk(conn, run_id, cutoff, from))?;
        // Leave the writer to other work for as long as the chunk held it: chunks queued back
        // to back would put one in every batch and slow every transfer to the chunks' pace.
        std::thread::sleep(started.elapsed());
        report.wallets += chunk.wallets;
        for m in &chunk.mismatches {
            crate::log::error(&format!(
                "snapshot run {run_id}: wallet {} {} mismatch: computed {} from entries, running balance says {}",
                m.wallet_id, m.currency, m.computed, m.running
            ));
        }
        report.mismatches.extend(chunk.mismatches);
        match chunk.last_wallet_key {
            Some(key) => after = key,
            None => break,
        }
    }
    let (wallets, mismatches) = (report.wallets as i64, report.mismatches.len() as i64);
    exec.exec(move |conn, now| finish_run(conn, now, run_id, wallets, mismatches))?;
    Ok(Some(report))
}

/// Records a new run, its cut-off capped as `run` explains; returns its id and that cut-off.
fn start_run(
    conn: &dyn Sql,
    now: Timestamp,
    cutoff: Timestamp,
) -> Result<(i64, Timestamp), AppError> {
    let cutoff = cutoff.min(now.plus_micros(-1));
    let run_id = conn
        .query_one(
            "INSERT INTO snapshot_runs (cutoff, started_at) VALUES (?1, ?2) RETURNING id",
            &[&cutoff, &now],
        )?
        .get(0)?;
    Ok((run_id, cutoff))
}

/// Records when the run ended and what it covered.
fn finish_run(
    conn: &dyn Sql,
    now: Timestamp,
    run_id: i64,
    wallets: i64,
    mismatches: i64,
) -> Result<(), AppError> {
    conn.execute(
        "UPDATE snapshot_runs SET finished_at = ?2, wallets = ?3, mismatches = ?4 WHERE id = ?1",
        &[&run_id, &now, &wallets, &mismatches],
    )?;
    Ok(())
}

fn snapshot_chunk(
    conn: &dyn Sql,
    run_id: i64,
    cutoff: Timestamp,
    after: WalletKey,
) -> Result<Chunk, AppError> {
    let cut = cutoff.to_text();
    // On PostgreSQL other processes write while the chunk runs: its wallets are locked (in key
    // order, as every writer locks them) so that their balances hold still, and fenced past the
    // cut-off (`entries::fence_stamps`) so that no entry at or before it commits afterwards.
    let select = match conn.engine() {
        Engine::Sqlite => "SELECT key, id FROM wallets WHERE key > ?1 ORDER BY key LIMIT ?2",
        Engine::Postgres => {
            "SELECT key, id FROM wallets WHERE key > ?1 ORDER BY key LIMIT ?2 FOR UPDATE"
        }
    };
    let wallets: Vec<(WalletKey, String)> = conn
        .query(select, &[&after, &SNAPSHOT_CHUNK_WALLETS])?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?)))
        .collect::<Result<_, AppError>>()?;
    let mut chunk = Chunk {
        last_wallet_key: wallets.last().map(|w| w.0),
        wallets: 0,
        mismatches: vec![],
    };
    for (key, id) in wallets {
        fence_stamps(conn, key, cutoff)?;
        chunk.wallets += 1;
        snapshot_wallet(conn, run_id, &cut, key, &id, &mut chunk.mismatches)?;
    }
    Ok(chunk)
}

/// Snapshots one wallet's balance in each of its currencies.
fn snapshot_wallet(
    conn: &dyn Sql,
    run_id: i64,
    cut: &str,
    key: WalletKey,
    id: &str,
    mismatches: &mut Vec<Mismatch>,
) -> Result<(), AppError> {
    let balances: Vec<(String, MinorUnits, MinorUnits, String)> = conn
        .query(
            "SELECT currency, balance, last_balance, last_balance_update FROM balances
             WHERE wallet_key = ?1 ORDER BY currency",
            &[&key],
        )?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .collect::<Result<_, AppError>>()?;
    for (currency, balance, last_balance, last_update) in balances {
        let cut = cut.to_string();
        if last_update > cut {
            // A later snapshot already covers this wallet; never move it backwards.
            continue;
        }
        let overflow = || AppError::internal("snapshot", "balance arithmetic overflowed");
        let computed = last_balance
            .checked_add(net_between(conn, key, &currency, &last_update, &cut)?)
            .ok_or_else(overflow)?;
        let running = balance
            .checked_sub(net_between(conn, key, &currency, &cut, END_OF_TIME)?)
            .ok_or_else(overflow)?;
        if computed != running {
            mismatches.push(Mismatch {
                wallet_id: id.to_string(),
                currency: currency.clone(),
                computed: computed.get(),
                running: running.get(),
            });
        }
        if computed < MinorUnits::ZERO {
            // Entries that sum below zero: recorded as a mismatch above, nothing stored.
            continue;
        }
        conn.execute(
            "UPDATE balances SET last_balance = ?2, last_balance_update = ?3
             WHERE wallet_key = ?1 AND currency = ?4",
            &[&key, &computed, &cut, &currency],
        )?;
        conn.execute(
            "INSERT INTO balance_snapshots (wallet_id, taken_at, balance, running, run_id, currency)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (wallet_id, currency, taken_at) DO UPDATE SET balance = excluded.balance,
                 running = excluded.running, run_id = excluded.run_id",
            &[&id, &cut, &computed, &running, &run_id, &currency],
        )?;
    }
    Ok(())
}

/// The cut-off of the newest run, if any.
pub fn last_cutoff(conn: &dyn Sql) -> Result<Option<Timestamp>, AppError> {
    conn.query_one(
        "SELECT max(cutoff) FROM snapshot_runs WHERE finished_at IS NOT NULL",
        &[],
    )?
    .get(0)
}

/// When the oldest wallet was created, the start of time for catch-up on a database that has
/// never been snapshotted.
pub fn first_wallet_at(conn: &dyn Sql) -> Result<Option<Timestamp>, AppError> {
    conn.query_one("SELECT min(created_at) FROM wallets", &[])?
        .get(0)
}
