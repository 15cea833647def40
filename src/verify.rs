//! `wallet verify`: recomputes the hash chain, every balance from its entries, conservation of
//! money, and SQLite's own integrity check, in one read transaction (a consistent view, safe
//! while the server runs).
//!
//! The ledger's checks (`check_ledger`) read through `Sql`, so they run on either engine; only
//! the transaction and `integrity_check` around them are SQLite's.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::error::AppError;
use crate::ledger::entries::{entry_columns, entry_from, entry_from_row, entry_hash, GENESIS_HASH};
use crate::store::postgres::PgConn;
use crate::store::{Engine, Row, Sql, Target};

/// Findings listed in full; past this only the count grows.
pub const FINDINGS_SHOWN_MAX: usize = 20;

/// Entries (and wallets) read per statement: the chain is walked a page at a time, so the
/// memory `verify` holds does not grow with the ledger.
pub const VERIFY_PAGE_ROWS: u32 = 4_096;

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub entries: u64,
    /// Entries chained so far; on PostgreSQL the newest may still await the sealer.
    pub sealed: u64,
    pub unsealed: u64,
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

pub fn verify(conn: &mut Connection) -> Result<VerifyReport, AppError> {
    let started = Instant::now();
    let mut report = VerifyReport::default();
    let tx = conn.transaction()?;
    check_integrity(&tx, &mut report)?;
    check_ledger(&*tx, &mut report)?;
    tx.commit()?;
    report.took = started.elapsed();
    Ok(report)
}

/// `verify` on whichever engine holds the ledger. On PostgreSQL it first has every entry
/// committed so far sealed into the chain (`jobs::sealer::seal_committed`), then checks in one
/// repeatable-read transaction: a consistent view, safe while servers run.
pub fn verify_target(target: &Target) -> Result<VerifyReport, AppError> {
    match target {
        Target::Sqlite(path) => {
            // Opening a missing file would create an empty one.
            let mut conn =
                Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
            conn.busy_timeout(Duration::from_secs(10))?;
            verify(&mut conn)
        }
        Target::Postgres(url) => {
            let started = Instant::now();
            let conn = PgConn::connect(url).map_err(crate::store::postgres::app_error)?;
            crate::jobs::sealer::seal_committed(&conn)?;
            let mut report = VerifyReport::default();
            conn.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
            let checked = check_ledger(&conn, &mut report);
            let _ = conn.batch("COMMIT");
            checked?;
            report.took = started.elapsed();
            Ok(report)
        }
    }
}

/// Every check of the ledger itself, in the caller's read transaction: entries without a
/// wallet, the hash chain and positions, each balance against its entries, conservation of
/// money, reversals, and refunds.
pub fn check_ledger(conn: &dyn Sql, report: &mut VerifyReport) -> Result<(), AppError> {
    find_entries_without_wallet(conn, report)?;
    let sums = check_chain(conn, report)?;
    let total_balances = check_balances(conn, &sums.running, report)?;
    check_conservation(&sums, &total_balances, report);
    check_reversals(conn, report)?;
    check_refunds(conn, report)
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
fn find_entries_without_wallet(conn: &dyn Sql, report: &mut VerifyReport) -> Result<(), AppError> {
    let rows = conn.query(
        "SELECT e.seq, e.wallet_key FROM entries e LEFT JOIN wallets w ON w.key = e.wallet_key
         WHERE w.key IS NULL ORDER BY e.seq",
        &[],
    )?;
    for row in rows {
        let (seq, key): (i64, i64) = (row.get(0)?, row.get(1)?);
        report.find(format!(
            "entry seq {seq}: its wallet (key {key}) does not exist"
        ));
    }
    Ok(())
}

/// What the chain pass adds up: each wallet's running balance per currency (by wallet id and
/// currency code), and the total of each kind per currency.
#[derive(Default)]
struct Sums {
    running: HashMap<(String, String), i64>,
    by_currency: BTreeMap<String, KindSums>,
}

#[derive(Default)]
struct KindSums {
    deposits: i128,
    withdrawals: i128,
    refunds: i128,
    outs: i128,
    ins: i128,
    reversals_out: i128,
    reversals_in: i128,
}

/// Where the chain pass stands between two entries.
struct Chain {
    prev_hash: Vec<u8>,
    /// The newest entry sealed into the chain so far.
    sealed_seq: i64,
    /// The first entry found without a hash (PostgreSQL seals entries after they commit:
    /// every entry after it must be unsealed too).
    first_unsealed: Option<i64>,
    /// `settings.chain_currency_from`: entries from there on hash their currency.
    currency_from: i64,
    sums: Sums,
}

/// One pass in chain order: hashes, positions, and each wallet's running balance. The entries
/// are read a page at a time, each page after the last one's position.
fn check_chain(conn: &dyn Sql, report: &mut VerifyReport) -> Result<Sums, AppError> {
    let mut chain = Chain {
        prev_hash: GENESIS_HASH.to_vec(),
        sealed_seq: 0,
        first_unsealed: None,
        currency_from: crate::ledger::entries::chain_currency_from(conn)?,
        sums: Sums::default(),
    };
    let mut after_seq = 0i64;
    loop {
        let page = conn.query(
            concat!(
                "SELECT ",
                entry_columns!(),
                ", e.hash FROM ",
                entry_from!(),
                " WHERE e.seq > ?1 ORDER BY e.seq LIMIT ?2"
            ),
            &[&after_seq, &VERIFY_PAGE_ROWS],
        )?;
        let Some(last) = page.last() else {
            break;
        };
        after_seq = last.get(0)?;
        for row in &page {
            chain.check(row, report)?;
        }
    }
    report.unsealed = chain
        .first_unsealed
        .map_or(0, |_| report.entries - report.sealed);
    if conn.engine() == Engine::Postgres {
        check_chain_head(conn, &chain, report)?;
    }
    Ok(chain.sums)
}

/// PostgreSQL keeps the chain's head in a row of its own, which the sealer moves: it must name
/// the newest sealed entry and its hash (else sealed entries were removed from the end).
fn check_chain_head(
    conn: &dyn Sql,
    chain: &Chain,
    report: &mut VerifyReport,
) -> Result<(), AppError> {
    let head = conn.query_one("SELECT seq, hash FROM chain_head WHERE id = 1", &[])?;
    let (seq, hash): (i64, Vec<u8>) = (head.get(0)?, head.get(1)?);
    if seq != chain.sealed_seq || hash != chain.prev_hash {
        report.find(format!(
            "the chain head names entry seq {seq}, but the newest sealed entry is seq {} \
             (sealed entries were removed or rewritten)",
            chain.sealed_seq
        ));
    }
    Ok(())
}

impl Chain {
    /// The next entry of the chain: its position, its hash, and its balance.
    fn check(&mut self, row: &Row, report: &mut VerifyReport) -> Result<(), AppError> {
        let e = entry_from_row(row)?;
        let stored: Option<Vec<u8>> = row.get(crate::ledger::entries::ENTRY_COLUMNS_COUNT)?;
        report.entries += 1;
        // Positions increase along the chain but may skip numbers: on PostgreSQL a transaction
        // that rolled back used its position. A removed row breaks the next entry's hash.
        match stored {
            Some(stored) => {
                report.sealed += 1;
                if let Some(unsealed) = self.first_unsealed {
                    report.find(format!(
                        "entry seq {} is sealed but entry seq {unsealed} before it is not",
                        e.seq
                    ));
                }
                if entry_hash(&self.prev_hash, &e, self.currency_from)[..] != stored[..] {
                    report.find(format!(
                        "entry seq {} (id {}): hash does not match its content and predecessor \
                         (it was rewritten, or an entry before it is missing or out of order)",
                        e.seq, e.id
                    ));
                }
                self.prev_hash = stored;
                self.sealed_seq = e.seq;
            }
            None => {
                self.first_unsealed.get_or_insert(e.seq);
            }
        }
        let sums = &mut self.sums;
        let bal = sums
            .running
            .entry((e.wallet_id.clone(), e.currency.clone()))
            .or_insert(0);
        *bal += if e.kind.is_credit() {
            e.amount.get()
        } else {
            -e.amount.get()
        };
        if *bal != e.balance_after.get() {
            report.find(format!(
                "entry seq {} (id {}): balance_after {} but the wallet's entries in {} before it sum to {}",
                e.seq, e.id, e.balance_after, e.currency, *bal
            ));
            *bal = e.balance_after.get();
        }
        let a = i128::from(e.amount.get());
        let sums = sums.by_currency.entry(e.currency.clone()).or_default();
        use crate::domain::EntryKind::*;
        match e.kind {
            Deposit => sums.deposits += a,
            Withdrawal => sums.withdrawals += a,
            Refund => sums.refunds += a,
            TransferOut => sums.outs += a,
            TransferIn => sums.ins += a,
            ReversalOut => sums.reversals_out += a,
            ReversalIn => sums.reversals_in += a,
        }
        Ok(())
    }
}

/// Each balance against its entries' sum, and what it holds against its HELD holds; returns
/// the sum of the balances per currency. Balances are read a page at a time, by wallet id and
/// currency.
fn check_balances(
    conn: &dyn Sql,
    running: &HashMap<(String, String), i64>,
    report: &mut VerifyReport,
) -> Result<BTreeMap<String, i128>, AppError> {
    report.wallets = u64::try_from(
        conn.query_one("SELECT count(*) FROM wallets", &[])?
            .get::<i64>(0)?,
    )
    .unwrap_or(0);
    let mut totals: BTreeMap<String, i128> = BTreeMap::new();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let (mut after_id, mut after_currency) = (String::new(), String::new());
    loop {
        let page = conn.query(
            "SELECT w.id, b.currency, b.balance, b.held,
                 CAST(COALESCE((SELECT SUM(h.amount) FROM holds h WHERE h.wallet_key = b.wallet_key
                     AND h.currency = b.currency AND h.status = 'HELD'), 0) AS BIGINT)
             FROM balances b JOIN wallets w ON w.key = b.wallet_key
             WHERE w.id > ?1 OR (w.id = ?1 AND b.currency > ?2)
             ORDER BY w.id, b.currency LIMIT ?3",
            &[&after_id, &after_currency, &VERIFY_PAGE_ROWS],
        )?;
        let Some(last) = page.last() else {
            break;
        };
        (after_id, after_currency) = (last.get(0)?, last.get(1)?);
        for row in &page {
            let (id, currency, balance, held, holds): (String, String, i64, i64, i64) = (
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            );
            *totals.entry(currency.clone()).or_default() += i128::from(balance);
            if balance < 0 {
                report.find(format!(
                    "wallet {id}: negative balance {balance} {currency}"
                ));
            }
            if held != holds || held < 0 || held > balance {
                report.find(format!(
                    "wallet {id}: {held} {currency} held of a balance of {balance}, but its HELD holds sum to {holds}"
                ));
            }
            let key = (id, currency);
            let from_entries = running.get(&key).copied().unwrap_or(0);
            if balance != from_entries {
                report.find(format!(
                    "wallet {}: balance {balance} {} but its entries sum to {from_entries}",
                    key.0, key.1
                ));
            }
            seen.insert(key);
        }
    }
    for ((id, currency), sum) in running {
        if *sum != 0 && !seen.contains(&(id.clone(), currency.clone())) {
            report.find(format!(
                "wallet {id}: no balance in {currency} but its entries sum to {sum}"
            ));
        }
    }
    Ok(totals)
}

/// Per currency: transfers out equal transfers in, and the balances sum to deposits, refunds
/// and reversals in, less withdrawals and reversals out (a transfer's reversal moves money
/// between two wallets, one of each). There is no conversion: each currency's money is
/// conserved on its own.
fn check_conservation(
    sums: &Sums,
    total_balances: &BTreeMap<String, i128>,
    report: &mut VerifyReport,
) {
    let currencies: BTreeSet<&String> = sums
        .by_currency
        .keys()
        .chain(total_balances.keys())
        .collect();
    for currency in currencies {
        let none = KindSums::default();
        let sums = sums.by_currency.get(currency).unwrap_or(&none);
        let total_balance = total_balances.get(currency).copied().unwrap_or(0);
        if sums.outs != sums.ins {
            report.find(format!(
                "transfers in {currency}: {} sent but {} received",
                sums.outs, sums.ins
            ));
        }
        let expected_total = sums.deposits + sums.refunds + sums.reversals_in
            - sums.withdrawals
            - sums.reversals_out;
        if total_balance != expected_total {
            report.find(format!(
                "conservation in {currency}: balances sum to {total_balance} but deposits + refunds + reversals in - withdrawals - reversals out = {expected_total}"
            ));
        }
    }
}

/// Each reversal undoes one entry of its own wallet, of the kind it may reverse, for the same
/// amount in the same currency; and it is that entry's only reversal (the unique index
/// `entries_reverses` says so too). Each query starts from the reversals, named by
/// `reverses IS NOT NULL` so that both engines read them from that index: joined from every
/// entry instead, a 50,000-entry ledger took PostgreSQL past its statement timeout.
fn check_reversals(conn: &dyn Sql, report: &mut VerifyReport) -> Result<(), AppError> {
    let wrong: i64 = conn
        .query_one(
            "SELECT count(*) FROM entries r LEFT JOIN entries o ON o.id = r.reverses
             WHERE r.reverses IS NOT NULL AND (o.id IS NULL OR o.wallet_key <> r.wallet_key
                 OR o.amount <> r.amount OR o.currency <> r.currency
                 OR NOT ((r.kind = 'REVERSAL_OUT' AND (o.kind = 'DEPOSIT' OR o.kind = 'TRANSFER_IN'))
                      OR (r.kind = 'REVERSAL_IN' AND (o.kind = 'WITHDRAWAL' OR o.kind = 'TRANSFER_OUT'))))",
            &[],
        )?
        .get(0)?;
    let unnamed: i64 = conn
        .query_one(
            "SELECT count(*) FROM entries
             WHERE (kind = 'REVERSAL_OUT' OR kind = 'REVERSAL_IN') AND reverses IS NULL",
            &[],
        )?
        .get(0)?;
    if wrong + unnamed > 0 {
        report.find(format!(
            "{} reversals do not undo an entry of their own wallet for the same amount",
            wrong + unnamed
        ));
    }
    // A transfer is reversed whole: each half's reversal has its partner's. The partner is
    // found among the counterparty's entries (indexed by wallet), by transfer id.
    let lone: i64 = conn
        .query_one(
            "SELECT count(*) FROM entries r JOIN entries o ON o.id = r.reverses
             WHERE r.reverses IS NOT NULL AND (o.kind = 'TRANSFER_OUT' OR o.kind = 'TRANSFER_IN')
               AND NOT EXISTS (SELECT 1 FROM entries p JOIN entries pr ON pr.reverses = p.id
                   WHERE p.wallet_key = (SELECT key FROM wallets WHERE user_id = o.counterparty_user_id)
                     AND p.transfer_id = o.transfer_id AND p.kind <> o.kind
                     AND (p.kind = 'TRANSFER_OUT' OR p.kind = 'TRANSFER_IN'))",
            &[],
        )?
        .get(0)?;
    if lone > 0 {
        report.find(format!(
            "{lone} transfer halves are reversed without the other half"
        ));
    }
    // Only a paid withdrawal is given back: one still under way, or failed and refunded, would
    // be given back twice.
    let unpaid: i64 = conn
        .query_one(
            "SELECT count(*) FROM entries r JOIN entries o ON o.id = r.reverses
                 JOIN wallets ow ON ow.key = o.wallet_key
                 JOIN withdrawals w ON w.wallet_id = ow.id AND w.reference = o.reference
             WHERE r.reverses IS NOT NULL AND o.kind = 'WITHDRAWAL' AND w.transaction_id = o.id
                 AND w.status <> 'SUCCEEDED'",
            &[],
        )?
        .get(0)?;
    if unpaid > 0 {
        report.find(format!(
            "{unpaid} reversals give back a scheduled withdrawal that was not paid"
        ));
    }
    Ok(())
}

/// A failed withdrawal that took money has its refund.
fn check_refunds(conn: &dyn Sql, report: &mut VerifyReport) -> Result<(), AppError> {
    let unrefunded: i64 = conn
        .query_one(
            "SELECT count(*) FROM withdrawals WHERE status = 'FAILED' AND transaction_id IS NOT NULL AND refund_transaction_id IS NULL",
            &[],
        )?
        .get(0)?;
    if unrefunded > 0 {
        report.find(format!(
            "{unrefunded} failed withdrawals took money without a refund"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::{create_user, NewUser};
    use crate::domain::{Amount, Currency, Email, Metadata, Reference, Timestamp, Username};
    use crate::ledger::{deposit, queries, Movement};

    /// A ledger of `wallets` users, each with one deposit: as many entries as wallets.
    fn ledger(wallets: u32) -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::db::SCHEMA_SQL).unwrap();
        conn.execute_batch("INSERT INTO currencies (code, scale) VALUES ('USD', 2)")
            .unwrap();
        let usd = Currency::new("USD", 2, 1_000_000_000).unwrap();
        let now = Timestamp::parse("2026-03-02T09:00:00Z").unwrap();
        let tx = conn.transaction().unwrap();
        for i in 0..wallets {
            let name = format!("user{i}");
            let u = NewUser {
                username: Username::parse(&name).unwrap(),
                email: Email::parse(&format!("{name}@example.com")).unwrap(),
                password_hash: "x".into(),
                first_name: String::new(),
                last_name: String::new(),
                is_staff: false,
            };
            let user = create_user(&*tx, now, &u, None).unwrap();
            let wallet = queries::wallet_of_user(&*tx, user.id).unwrap().wallet_ref();
            let m = Movement {
                currency: usd.clone(),
                amount: Amount::parse_text("1.00", &usd).unwrap(),
                reference: Reference::parse("d").unwrap(),
                metadata: Metadata::empty(),
            };
            deposit(&*tx, now, &wallet, &m).unwrap();
        }
        tx.commit().unwrap();
        conn
    }

    #[test]
    fn a_reversal_that_does_not_match_its_entry_is_found() {
        // A reversal made by the ledger verifies; one edited behind the triggers' back to name
        // another wallet's entry is found, even though every balance still adds up.
        let mut conn = ledger(2);
        let currencies = crate::domain::Currencies::parse("USD:2", 1_000_000_000).unwrap();
        let now = Timestamp::parse("2026-03-02T10:00:00Z").unwrap();
        let ids: Vec<String> = conn
            .prepare("SELECT id FROM entries ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let tx = conn.transaction().unwrap();
        let staff_user_id = 999;
        let reference = Reference::parse("rv").unwrap();
        crate::ledger::reversals::reverse(
            &*tx,
            now,
            &currencies,
            staff_user_id,
            &ids[0],
            &reference,
        )
        .unwrap();
        tx.commit().unwrap();
        let report = verify(&mut conn).unwrap();
        assert!(report.ok(), "{:?}", report.findings);
        conn.execute_batch(&format!(
            "DROP TRIGGER entries_no_update;
             UPDATE entries SET reverses = '{}' WHERE reverses = '{}';",
            ids[1], ids[0]
        ))
        .unwrap();
        let report = verify(&mut conn).unwrap();
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.contains("reversals do not undo an entry of their own wallet")),
            "{:?}",
            report.findings
        );
    }

    #[test]
    fn a_transfer_reversed_on_one_side_only_is_found() {
        // Each reversal alone matches its entry, and every balance adds up, yet money was made:
        // the sender got its transfer back while the recipient kept it.
        let mut conn = ledger(2);
        let usd = Currency::new("USD", 2, 1_000_000_000).unwrap();
        let now = Timestamp::parse("2026-03-02T10:00:00Z").unwrap();
        let tx = conn.transaction().unwrap();
        let sender = queries::wallet_of_user(&*tx, 1).unwrap().wallet_ref();
        let req = crate::ledger::TransferRequest {
            to: crate::ledger::Recipient::UserId(2),
            movement: Movement {
                currency: usd.clone(),
                amount: Amount::parse_text("0.50", &usd).unwrap(),
                reference: Reference::parse("t").unwrap(),
                metadata: Metadata::empty(),
            },
        };
        let out = crate::ledger::transfer(&*tx, now, (1, &sender), &req)
            .unwrap()
            .value
            .transfer_out;
        let metadata = Metadata::empty();
        crate::ledger::entries::append(
            &*tx,
            now,
            crate::ledger::entries::NewEntry {
                wallet: &sender,
                kind: crate::domain::EntryKind::ReversalIn,
                amount: usd.money(out.amount),
                currency: "USD",
                reference: "half",
                counterparty_user_id: Some(2),
                transfer_id: None,
                metadata: &metadata,
                reverses: Some(&out.id),
            },
        )
        .unwrap();
        tx.commit().unwrap();
        let report = verify(&mut conn).unwrap();
        assert_eq!(
            report.findings,
            vec!["1 transfer halves are reversed without the other half".to_string()]
        );
    }

    #[test]
    fn a_ledger_longer_than_a_page_is_verified_whole() {
        // The chain and the wallets are read a page at a time: every row of every page is
        // counted once, and a row missing at a page's edge is still found.
        let rows = VERIFY_PAGE_ROWS + 3;
        let mut conn = ledger(rows);
        let report = verify(&mut conn).unwrap();
        assert!(report.ok(), "{:?}", report.findings);
        assert_eq!(report.entries, u64::from(rows));
        assert_eq!(report.wallets, u64::from(rows));
        conn.execute_batch(&format!(
            "DROP TRIGGER entries_no_delete; DELETE FROM entries WHERE seq = {};",
            VERIFY_PAGE_ROWS + 1
        ))
        .unwrap();
        let report = verify(&mut conn).unwrap();
        assert_eq!(report.entries, u64::from(rows - 1));
        let broken = format!("entry seq {} (id ", VERIFY_PAGE_ROWS + 2);
        assert!(
            report.findings.iter().any(|f| f.starts_with(&broken)
                && f.contains("hash does not match its content and predecessor")),
            "{:?}",
            report.findings
        );
    }
}
