//! Transfers written many to a transaction on PostgreSQL, with a statement per step rather
//! than per transfer.
//!
//! One transfer alone (`ledger::transfer`) is seven round trips and seven statements, each
//! planned, locked and logged by PostgreSQL for two entries: at a few thousand a second the
//! server's cores go to that overhead (README, "On PostgreSQL"). Here a group of transfers
//! takes the same steps together: the recipients in one statement, the references' locks in
//! one, their lookups in one, the wallets' row locks in one (in key order, as every writer
//! takes them), the balances in one, then one statement per round of entries (a wallet has at
//! most one entry in a round: `plan`), then one commit. It waits for a lock at most
//! `GROUP_LOCK_WAIT_MS_MAX`, so a row held elsewhere for long holds up only the transfers
//! that need it (each then written alone), not the whole group.
//!
//! The group does only the plain case: a new reference, a known recipient, a balance in the
//! currency on both sides, and money available. Every other transfer (a replay, a conflict,
//! an unknown recipient, a refusal, a first credit in a currency, a second use of a reference
//! in the same group) is left to `ledger::transfer`, alone, after the group commits, which
//! gives it exactly the answer it would have had on its own. The decision to take money is
//! made here from the balances read under the row locks, and the statement that moves each
//! balance checks it again (`b.balance + d = after`, `after >= held`, not frozen): if the two
//! ever disagree, nothing of the group is kept and each transfer runs alone.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use super::entries::{self, Entry, WalletKey, WalletRef};
use super::{Outcome, Recipient, TransferRequest, TransferResult};
use crate::domain::{EntryKind, MinorUnits, Timestamp};
use crate::error::AppError;
use crate::store::{Engine, LockClass, Sql};

/// How long a group waits for one lock, in milliseconds: longer than another group holds its
/// wallets under load (tens of milliseconds), far shorter than the statement timeout.
pub const GROUP_LOCK_WAIT_MS_MAX: u32 = 250;

/// One transfer of a group: who sends, and what they asked for.
#[derive(Debug, Clone)]
pub struct TransferItem {
    pub sender_user_id: i64,
    pub sender: WalletRef,
    pub req: TransferRequest,
}

/// `ledger::transfer` for one item, alone in its transaction.
pub fn transfer_one(
    conn: &dyn Sql,
    now: Timestamp,
    item: &TransferItem,
) -> Result<Outcome<TransferResult>, AppError> {
    super::transfer(conn, now, (item.sender_user_id, &item.sender), &item.req)
}

/// Writes the plain transfers of `items` in the caller's transaction. Returns, in `items`'
/// order, the result of each one written, and `None` for each left to `transfer_one`.
pub fn transfers(
    conn: &dyn Sql,
    now: Timestamp,
    items: &[TransferItem],
) -> Result<Vec<Option<Outcome<TransferResult>>>, AppError> {
    if conn.engine() != Engine::Postgres || items.is_empty() {
        return Ok(items.iter().map(|_| None).collect());
    }
    // A group waits for its locks only so long: a lock held elsewhere for longer (a stuck
    // client's transaction) fails the group, and each of its transfers then waits alone,
    // instead of every transfer queued behind the group waiting with it.
    conn.execute(
        &format!("SET LOCAL lock_timeout = {GROUP_LOCK_WAIT_MS_MAX}"),
        &[],
    )?;
    let recipients = recipients(conn, items)?;
    lock_references(conn, items)?;
    let taken = references_taken(conn, items)?;
    let mut keys: Vec<WalletKey> = items.iter().map(|i| i.sender.key).collect();
    keys.extend(recipients.iter().flatten().map(|(_, w)| w.key));
    let floors = lock_wallets(conn, &keys)?;
    let balances = read_balances(conn, items, &recipients)?;
    let plan = plan(now, items, &recipients, &taken, Found { floors, balances });
    let mut seqs = HashMap::new();
    for round in &plan.rounds {
        seqs.extend(write_round(conn, round)?);
    }
    let mut seq_of = |e: &mut Entry| -> Result<(), AppError> {
        e.seq = seqs
            .remove(&e.id)
            .ok_or_else(|| AppError::internal("transfer group", "an entry was not written"))?;
        Ok(())
    };
    plan.results
        .into_iter()
        .map(|r| {
            r.map(|mut t| {
                seq_of(&mut t.transfer_out)?;
                seq_of(&mut t.transfer_in)?;
                Ok(Outcome::new(t))
            })
            .transpose()
        })
        .collect()
}

/// Each item's recipient as `(user id, wallet)`, `None` when unknown (then `transfer_one`
/// says so).
fn recipients(
    conn: &dyn Sql,
    items: &[TransferItem],
) -> Result<Vec<Option<(i64, WalletRef)>>, AppError> {
    let mut ids = Vec::new();
    let mut names = Vec::new();
    for item in items {
        match &item.req.to {
            Recipient::UserId(id) => ids.push(*id),
            Recipient::Username(name) => names.push(crate::domain::username_key(name)),
        }
    }
    let rows = conn.query(
        "SELECT w.user_id, w.key, w.id, CAST(NULL AS TEXT) FROM wallets w
         WHERE w.user_id IN (SELECT CAST(value AS BIGINT) FROM jsonb_array_elements_text(CAST(CAST(?1 AS TEXT) AS jsonb)))
         UNION ALL
         SELECT u.id, w.key, w.id, u.username_key FROM users u JOIN wallets w ON w.user_id = u.id
         WHERE u.username_key IN (SELECT value COLLATE \"C\" FROM jsonb_array_elements_text(CAST(CAST(?2 AS TEXT) AS jsonb)))",
        &[&Value::from(ids).to_string(), &Value::from(names).to_string()],
    )?;
    let mut by_id = HashMap::new();
    let mut by_name = HashMap::new();
    for r in rows {
        let found = (
            r.get::<i64>(0)?,
            WalletRef {
                key: r.get(1)?,
                id: r.get(2)?,
            },
        );
        match r.get::<Option<String>>(3)? {
            Some(name) => by_name.insert(name, found),
            None => by_id.insert(found.0, found),
        };
    }
    Ok(items
        .iter()
        .map(|item| match &item.req.to {
            Recipient::UserId(id) => by_id.get(id).cloned(),
            Recipient::Username(name) => by_name.get(&crate::domain::username_key(name)).cloned(),
        })
        .collect())
}

/// The lock `ledger::transfer` takes on each reference, taken here in one statement and in
/// the order of the locks' keys, so two groups never wait on each other in a cycle (a
/// transfer alone takes one such lock, and every writer takes wallet locks only after them).
fn lock_references(conn: &dyn Sql, items: &[TransferItem]) -> Result<(), AppError> {
    let names: Vec<String> = items
        .iter()
        .map(|i| entries::reference_lock_name(i.sender.key, i.req.movement.reference.as_str()))
        .collect();
    conn.query(
        "SELECT pg_advisory_xact_lock(CAST(?1 AS INTEGER), h)
         FROM (SELECT DISTINCT hashtext(value) AS h
               FROM jsonb_array_elements_text(CAST(CAST(?2 AS TEXT) AS jsonb))) AS locks
         ORDER BY h",
        &[
            &(LockClass::Reference as i32),
            &Value::from(names).to_string(),
        ],
    )?;
    Ok(())
}

/// The `(sender's wallet, reference)` pairs of `items` that a stored transfer already holds.
fn references_taken(
    conn: &dyn Sql,
    items: &[TransferItem],
) -> Result<HashSet<(WalletKey, String)>, AppError> {
    let wanted: Vec<Value> = items
        .iter()
        .map(|i| json!({"k": i.sender.key.get(), "r": i.req.movement.reference.as_str()}))
        .collect();
    let rows = conn.query(
        // One index probe per reference (`entries_reference`), whatever the planner would
        // guess of a JSON list's length: a join chose to scan the ledger instead.
        "SELECT v.k, v.r
         FROM jsonb_to_recordset(CAST(CAST(?1 AS TEXT) AS jsonb)) AS v(k BIGINT, r TEXT)
         CROSS JOIN LATERAL (
             SELECT 1 FROM entries e
             WHERE e.wallet_key = v.k AND e.kind = 'TRANSFER_OUT' AND e.reference = v.r COLLATE \"C\"
             LIMIT 1) AS e",
        &[&Value::from(wanted).to_string()],
    )?;
    rows.into_iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?)))
        .collect()
}

/// Locks the wallets' rows in key order and returns each one's stamp floor (`NO KEY UPDATE`,
/// the lock an `UPDATE` of a wallet takes: it does not block other tables' foreign-key checks
/// on the wallet).
fn lock_wallets(
    conn: &dyn Sql,
    keys: &[WalletKey],
) -> Result<HashMap<WalletKey, Timestamp>, AppError> {
    let keys: Vec<i64> = keys.iter().map(|k| k.get()).collect();
    let rows = conn.query(
        "SELECT key, stamp_floor FROM wallets
         WHERE key IN (SELECT CAST(value AS BIGINT) FROM jsonb_array_elements_text(CAST(CAST(?1 AS TEXT) AS jsonb)))
         ORDER BY key FOR NO KEY UPDATE",
        &[&Value::from(keys).to_string()],
    )?;
    rows.into_iter()
        .map(|r| {
            let floor: String = r.get(1)?;
            Ok((r.get(0)?, Timestamp::from_stored(&floor)))
        })
        .collect()
}

/// A balance as read under its wallet's row lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Balance {
    pub balance: MinorUnits,
    pub held: MinorUnits,
    pub frozen: bool,
}

type BalanceKey = (WalletKey, String);

fn read_balances(
    conn: &dyn Sql,
    items: &[TransferItem],
    recipients: &[Option<(i64, WalletRef)>],
) -> Result<HashMap<BalanceKey, Balance>, AppError> {
    let mut wanted = Vec::new();
    for (item, to) in items.iter().zip(recipients) {
        let code = item.req.movement.currency.code.as_str();
        wanted.push(json!({"k": item.sender.key.get(), "c": code}));
        if let Some((_, w)) = to {
            wanted.push(json!({"k": w.key.get(), "c": code}));
        }
    }
    let rows = conn.query(
        "SELECT DISTINCT b.wallet_key, b.currency, b.balance, b.held, b.frozen
         FROM jsonb_to_recordset(CAST(CAST(?1 AS TEXT) AS jsonb)) AS v(k BIGINT, c TEXT)
         JOIN balances b ON b.wallet_key = v.k AND b.currency = v.c COLLATE \"C\"",
        &[&Value::from(wanted).to_string()],
    )?;
    rows.into_iter()
        .map(|r| {
            Ok((
                (r.get(0)?, r.get(1)?),
                Balance {
                    balance: r.get(2)?,
                    held: r.get(3)?,
                    frozen: r.get::<i64>(4)? != 0,
                },
            ))
        })
        .collect()
}

/// What the group found under its locks.
pub(crate) struct Found {
    pub floors: HashMap<WalletKey, Timestamp>,
    pub balances: HashMap<BalanceKey, Balance>,
}

/// One entry to write: the entry as it will read, and how it moves its balance.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub wallet_key: WalletKey,
    pub delta: MinorUnits,
    pub entry: Entry,
}

pub(crate) struct Plan {
    /// Per item, its two entries when the group writes it.
    pub results: Vec<Option<TransferResult>>,
    /// The entries in the order they are written: a wallet has at most one entry per round,
    /// and its entries are in its rounds in the order the group made them.
    pub rounds: Vec<Vec<Planned>>,
}

/// Decides, in `items`' order, which transfers the group writes and what their entries say.
/// A transfer is written only when its reference is new (stored or earlier in the group), its
/// recipient is another known user, both wallets have a balance in its currency, the sender's
/// balance is not frozen and `balance - held` covers the amount (the same rule as the one
/// statement that moves a balance alone), and the recipient's balance stays within i64.
/// Each entry is stamped just after its wallet's previous one, and no earlier than `now`.
pub(crate) fn plan(
    now: Timestamp,
    items: &[TransferItem],
    recipients: &[Option<(i64, WalletRef)>],
    taken: &HashSet<(WalletKey, String)>,
    found: Found,
) -> Plan {
    let Found {
        mut floors,
        mut balances,
    } = found;
    let mut seen: HashSet<(WalletKey, String)> = HashSet::new();
    let mut entries_of: HashMap<WalletKey, usize> = HashMap::new();
    let mut results = Vec::with_capacity(items.len());
    let mut rounds: Vec<Vec<Planned>> = Vec::new();
    for (item, to) in items.iter().zip(recipients) {
        let m = &item.req.movement;
        let reference = (item.sender.key, m.reference.as_str().to_string());
        let Some((to_user_id, to_wallet)) = to else {
            results.push(None);
            continue;
        };
        let amount = m.amount.units();
        let from_key = (item.sender.key, m.currency.code.clone());
        let to_key = (to_wallet.key, m.currency.code.clone());
        let (Some(from), Some(into)) = (balances.get(&from_key), balances.get(&to_key)) else {
            results.push(None);
            continue;
        };
        let debited = from
            .balance
            .checked_sub(amount)
            .filter(|after| !from.frozen && after >= &from.held);
        let credited = into.balance.checked_add(amount);
        let plain = *to_user_id != item.sender_user_id
            && !taken.contains(&reference)
            && !seen.contains(&reference)
            && floors.contains_key(&item.sender.key)
            && floors.contains_key(&to_wallet.key);
        let (true, Some(debited), Some(credited)) = (plain, debited, credited) else {
            results.push(None);
            continue;
        };
        seen.insert(reference);
        balances.entry(from_key).and_modify(|b| b.balance = debited);
        balances.entry(to_key).and_modify(|b| b.balance = credited);
        let transfer_id = uuid::Uuid::now_v7().to_string();
        let mut half = |wallet: &WalletRef, kind, after, counterparty| {
            let floor = floors.entry(wallet.key).or_insert(now);
            let at = now.max(floor.plus_micros(1));
            *floor = at;
            let round = entries_of.entry(wallet.key).or_insert(0);
            let entry = Entry {
                seq: 0,
                id: uuid::Uuid::now_v7().to_string(),
                wallet_id: wallet.id.clone(),
                kind,
                amount,
                balance_after: after,
                reference: m.reference.as_str().to_string(),
                counterparty_user_id: Some(counterparty),
                transfer_id: Some(transfer_id.clone()),
                metadata: m.metadata.clone(),
                created_at: at,
                currency: m.currency.code.clone(),
                reverses: None,
            };
            if rounds.len() <= *round {
                rounds.push(Vec::new());
            }
            let delta = if kind.is_credit() {
                amount
            } else {
                MinorUnits::new(-amount.get())
            };
            rounds[*round].push(Planned {
                wallet_key: wallet.key,
                delta,
                entry: entry.clone(),
            });
            *round += 1;
            entry
        };
        let transfer_out = half(&item.sender, EntryKind::TransferOut, debited, *to_user_id);
        let transfer_in = half(
            to_wallet,
            EntryKind::TransferIn,
            credited,
            item.sender_user_id,
        );
        results.push(Some(TransferResult {
            transfer_out,
            transfer_in,
        }));
    }
    Plan { results, rounds }
}

/// One round in one statement: each wallet's stamp floor moves to its entry's stamp, each
/// balance moves by the entry's amount (only if it stands where the plan read it, covers
/// what is held and, for a debit, is not frozen), and the entries follow. Fewer rows than
/// planned is an error: the caller's transaction is then rolled back whole.
/// Returns each entry's position, by id.
fn write_round(conn: &dyn Sql, round: &[Planned]) -> Result<HashMap<String, i64>, AppError> {
    let rows: Vec<Value> = round
        .iter()
        .map(|p| {
            let e = &p.entry;
            json!({
                "k": p.wallet_key.get(), "cur": e.currency, "d": p.delta.get(),
                "after": e.balance_after.get(), "at": e.created_at.to_text(), "id": e.id,
                "kind": e.kind.as_str(), "amt": e.amount.get(), "ref": e.reference,
                "cp": e.counterparty_user_id, "tid": e.transfer_id, "meta": e.metadata.as_str(),
            })
        })
        .collect();
    let written = conn.query(
        "WITH v AS MATERIALIZED (
             SELECT k, cur COLLATE \"C\" AS cur, d, after, at COLLATE \"C\" AS at, id, kind, amt,
                 ref, cp, tid, meta
             FROM jsonb_to_recordset(CAST(CAST(?1 AS TEXT) AS jsonb)) AS v(k BIGINT, cur TEXT, d BIGINT,
                 after BIGINT, at TEXT, id TEXT, kind TEXT, amt BIGINT, ref TEXT, cp BIGINT,
                 tid TEXT, meta TEXT)),
         stamped AS (
             UPDATE wallets w SET stamp_floor = v.at FROM v
             WHERE w.key = v.k AND v.at > w.stamp_floor
             RETURNING w.key),
         moved AS (
             UPDATE balances b SET balance = v.after FROM v
             WHERE b.wallet_key = v.k AND b.currency = v.cur AND b.balance + v.d = v.after
                 AND v.after >= b.held AND (v.d > 0 OR b.frozen = 0)
             RETURNING b.wallet_key, b.currency)
         INSERT INTO entries (id, wallet_key, kind, amount, balance_after, reference,
             counterparty_user_id, transfer_id, metadata, created_at, currency)
         SELECT v.id, v.k, v.kind, v.amt, v.after, v.ref, v.cp, v.tid, v.meta, v.at, v.cur
         FROM v JOIN stamped ON stamped.key = v.k
             JOIN moved ON moved.wallet_key = v.k AND moved.currency = v.cur
         RETURNING id, seq",
        &[&Value::from(rows).to_string()],
    )?;
    if written.len() != round.len() {
        return Err(AppError::internal(
            "transfer group",
            format!("{} of {} entries written", written.len(), round.len()),
        ));
    }
    written
        .into_iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?)))
        .collect()
}

#[cfg(test)]
mod tests;
