//! `wallet verify`: recomputes the hash chain, every balance from its entries, conservation of
//! money, and SQLite's own integrity check, in one read transaction (a consistent view, safe
//! while the server runs).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::ledger::entries::{entry_from_row, entry_hash, ENTRY_COLUMNS, ENTRY_FROM, GENESIS_HASH};

/// Findings listed in full; past this only the count grows.
pub const FINDINGS_SHOWN_MAX: usize = 20;

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub entries: u64,
    pub wallets: u64,
    pub findings: Vec<String>,
    pub findings_total: u64,
    pub took: Duration,
}

impl VerifyReport {
    fn find(&mut self, what: String) {
        self.findings_total += 1;
        if self.findings.len() < FINDINGS_SHOWN_MAX {
            self.findings.push(what);
        }
    }

    pub fn ok(&self) -> bool {
        self.findings_total == 0
    }
}

pub fn verify(conn: &mut Connection) -> Result<VerifyReport, rusqlite::Error> {
    let started = Instant::now();
    let mut report = VerifyReport::default();
    let tx = conn.transaction()?;
    check_integrity(&tx, &mut report)?;
    find_entries_without_wallet(&tx, &mut report)?;
    let sums = check_chain(&tx, &mut report)?;
    let total_balance = check_wallets(&tx, &sums.running, &mut report)?;
    check_conservation(&sums, total_balance, &mut report);
    check_refunds(&tx, &mut report)?;
    tx.commit()?;
    report.took = started.elapsed();
    Ok(report)
}

/// SQLite's own `integrity_check`.
fn check_integrity(tx: &Connection, report: &mut VerifyReport) -> rusqlite::Result<()> {
    let integrity: Vec<String> = tx
        .prepare("PRAGMA integrity_check")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if integrity != ["ok"] {
        report.find(format!("sqlite integrity_check: {}", integrity.join("; ")));
    }
    Ok(())
}

/// The chain pass joins each entry to its wallet; an entry whose wallet is gone would drop out
/// of it unseen, so such entries are named first.
fn find_entries_without_wallet(tx: &Connection, report: &mut VerifyReport) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare(
        "SELECT e.seq, e.wallet_key FROM entries e LEFT JOIN wallets w ON w.key = e.wallet_key
         WHERE w.key IS NULL ORDER BY e.seq",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let (seq, key): (i64, i64) = (row.get(0)?, row.get(1)?);
        report.find(format!(
            "entry seq {seq}: its wallet (key {key}) does not exist"
        ));
    }
    Ok(())
}

/// What the chain pass adds up: each wallet's running balance, and the total of each kind.
#[derive(Default)]
struct Sums {
    running: HashMap<String, i64>,
    deposits: i128,
    withdrawals: i128,
    refunds: i128,
    outs: i128,
    ins: i128,
}

/// One pass in chain order: hashes, positions, and each wallet's running balance.
fn check_chain(tx: &Connection, report: &mut VerifyReport) -> rusqlite::Result<Sums> {
    let mut sums = Sums::default();
    let mut prev_hash = GENESIS_HASH.to_vec();
    let mut expected_seq = 1;
    let mut stmt = tx.prepare(&format!(
        "SELECT {ENTRY_COLUMNS}, e.hash FROM {ENTRY_FROM} ORDER BY e.seq"
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let e = entry_from_row(row)?;
        let stored: Vec<u8> = row.get(11)?;
        report.entries += 1;
        if e.seq != expected_seq {
            report.find(format!(
                "entry seq {}: expected seq {expected_seq} (a row is missing)",
                e.seq
            ));
        }
        expected_seq = e.seq + 1;
        if entry_hash(&prev_hash, &e)[..] != stored[..] {
            report.find(format!(
                "entry seq {} (id {}): hash does not match its content and predecessor",
                e.seq, e.id
            ));
        }
        prev_hash = stored;
        let bal = sums.running.entry(e.wallet_id.clone()).or_insert(0);
        *bal += if e.kind.is_credit() {
            e.amount.get()
        } else {
            -e.amount.get()
        };
        if *bal != e.balance_after.get() {
            report.find(format!(
                "entry seq {} (id {}): balance_after {} but the entries before it sum to {}",
                e.seq, e.id, e.balance_after, *bal
            ));
            *bal = e.balance_after.get();
        }
        let a = i128::from(e.amount.get());
        use crate::domain::EntryKind::*;
        match e.kind {
            Deposit => sums.deposits += a,
            Withdrawal => sums.withdrawals += a,
            Refund => sums.refunds += a,
            TransferOut => sums.outs += a,
            TransferIn => sums.ins += a,
        }
    }
    Ok(sums)
}

/// Each wallet's balance against its entries' sum; returns the sum of every balance.
fn check_wallets(
    tx: &Connection,
    running: &HashMap<String, i64>,
    report: &mut VerifyReport,
) -> rusqlite::Result<i128> {
    let mut total_balance = 0i128;
    let mut stmt = tx.prepare("SELECT id, balance FROM wallets ORDER BY id")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let (id, balance): (String, i64) = (row.get(0)?, row.get(1)?);
        report.wallets += 1;
        total_balance += i128::from(balance);
        if balance < 0 {
            report.find(format!("wallet {id}: negative balance {balance}"));
        }
        let from_entries = running.get(&id).copied().unwrap_or(0);
        if balance != from_entries {
            report.find(format!(
                "wallet {id}: balance {balance} but its entries sum to {from_entries}"
            ));
        }
    }
    Ok(total_balance)
}

/// Transfers out equal transfers in, and the balances sum to deposits + refunds − withdrawals.
fn check_conservation(sums: &Sums, total_balance: i128, report: &mut VerifyReport) {
    if sums.outs != sums.ins {
        report.find(format!(
            "transfers: {} sent but {} received",
            sums.outs, sums.ins
        ));
    }
    let expected_total = sums.deposits + sums.refunds - sums.withdrawals;
    if total_balance != expected_total {
        report.find(format!(
            "conservation: balances sum to {total_balance} but deposits + refunds - withdrawals = {expected_total}"
        ));
    }
}

/// A failed withdrawal that took money has its refund.
fn check_refunds(tx: &Connection, report: &mut VerifyReport) -> rusqlite::Result<()> {
    let unrefunded: i64 = tx.query_row(
        "SELECT count(*) FROM withdrawals WHERE status = 'FAILED' AND transaction_id IS NOT NULL AND refund_transaction_id IS NULL",
        [],
        |r| r.get(0),
    )?;
    if unrefunded > 0 {
        report.find(format!(
            "{unrefunded} failed withdrawals took money without a refund"
        ));
    }
    Ok(())
}
