//! Transfers and deposits written many to a transaction on PostgreSQL, with a statement per
//! step rather than per request.
//!
//! One transfer alone (`ledger::transfer`) is seven round trips and seven statements, each
//! planned, locked and logged by PostgreSQL for two entries, and a deposit alone is a
//! transaction and a commit of its own for one entry: at a few thousand a second the server's
//! cores go to that overhead (README, "On PostgreSQL"). Here a group of them takes the same
//! steps together: the recipients in one statement, the references' locks in one, their
//! lookups in one, the wallets' row locks in one (in key order, as every writer takes them),
//! the balances in one, then one statement per round of entries (a wallet has at most one
//! entry in a round: `plan`), then one commit. It does not wait for a wallet another
//! transaction holds (another process's group, a single write): the requests that need it go
//! into the next group, and the rest are written now. It waits for any other lock (a
//! reference's) at most `GROUP_LOCK_WAIT_MS_MAX`, so a lock held elsewhere for long holds up
//! only the requests that need it (each then written alone), not the whole group.
//!
//! The group does only the plain case: a new reference, a known recipient, a balance in the
//! currency on every side, and money available. Every other request (a replay, a conflict,
//! an unknown recipient, a refusal, a first credit in a currency, a second use of a reference
//! in the same group) is left to `write_one`, alone, after the group commits, which gives it
//! exactly the answer it would have had on its own. The decision to take money is made here
//! from the balances read under the row locks, and the statement that moves each balance
//! checks it again (`b.balance + d = after`, `after >= held`, not frozen): if the two ever
//! disagree, nothing of the group is kept and each request runs alone.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use serde_json::{json, Value};

use super::entries::{self, Entry, WalletKey, WalletRef};
use super::{Movement, Outcome, Recipient, TransferRequest, TransferResult};
use crate::db::grouped::Fate;
use crate::domain::{EntryKind, MinorUnits, Timestamp};
use crate::error::AppError;
use crate::store::{Engine, LockClass, Sql};

/// How long a group waits for one lock, in milliseconds: longer than a single write holds a
/// reference's lock under load (a few milliseconds), far shorter than the statement timeout.
pub const GROUP_LOCK_WAIT_MS_MAX: u32 = 250;

/// One request of a group.
#[derive(Debug, Clone)]
pub enum GroupItem {
    Transfer(TransferItem),
    Deposit(DepositItem),
}

/// A transfer: who sends, and what they asked for.
#[derive(Debug, Clone)]
pub struct TransferItem {
    pub sender_user_id: i64,
    pub sender: WalletRef,
    pub req: TransferRequest,
}

/// A deposit into `wallet`.
#[derive(Debug, Clone)]
pub struct DepositItem {
    pub wallet: WalletRef,
    pub movement: Movement,
}

/// What a request of a group wrote. (One per request, handed over once: not worth a box.)
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Written {
    Transfer(TransferResult),
    Deposit(Entry),
}

impl GroupItem {
    /// The wallet whose reference the request uses, and what it asked for.
    fn parts(&self) -> (&WalletRef, &Movement) {
        match self {
            GroupItem::Transfer(t) => (&t.sender, &t.req.movement),
            GroupItem::Deposit(d) => (&d.wallet, &d.movement),
        }
    }

    /// The kind of entry that holds the request's reference.
    fn reference_kind(&self) -> EntryKind {
        match self {
            GroupItem::Transfer(_) => EntryKind::TransferOut,
            GroupItem::Deposit(_) => EntryKind::Deposit,
        }
    }
}

impl Written {
    pub fn into_transfer(self) -> Result<TransferResult, AppError> {
        match self {
            Written::Transfer(t) => Ok(t),
            Written::Deposit(_) => Err(AppError::internal("a group", "a deposit for a transfer")),
        }
    }

    pub fn into_deposit(self) -> Result<Entry, AppError> {
        match self {
            Written::Deposit(e) => Ok(e),
            Written::Transfer(_) => Err(AppError::internal("a group", "a transfer for a deposit")),
        }
    }
}

/// One request alone in its transaction: `ledger::transfer` or `ledger::deposit`.
pub fn write_one(
    conn: &dyn Sql,
    now: Timestamp,
    item: &GroupItem,
) -> Result<Outcome<Written>, AppError> {
    let (value, replayed) = match item {
        GroupItem::Transfer(t) => {
            let out = super::transfer(conn, now, (t.sender_user_id, &t.sender), &t.req)?;
            (Written::Transfer(out.value), out.replayed)
        }
        GroupItem::Deposit(d) => {
            let out = super::deposit(conn, now, &d.wallet, &d.movement)?;
            (Written::Deposit(out.value), out.replayed)
        }
    };
    Ok(Outcome { value, replayed })
}

/// How long a request that groups kept putting off (a wallet it needs stayed busy) waits for
/// its locks when written alone, in milliseconds, before it is refused with 503. Another
/// process's group or a single write holds a wallet for a few milliseconds; a stuck
/// transaction (an operator's session) holds it for as long as it lives, and without this
/// bound each request for that wallet held one of the writer connections for the whole
/// statement timeout (30 s), so a few of them stopped every write of the process.
pub const BUSY_WALLET_WAIT_MS_MAX: u32 = 1_000;

/// `write_one` for a request put off by `GROUP_TRIES_MAX` groups, waiting for its locks at
/// most `BUSY_WALLET_WAIT_MS_MAX` (then `AppError::Unavailable`: the client tries again).
pub fn write_one_busy(
    conn: &dyn Sql,
    now: Timestamp,
    item: &GroupItem,
) -> Result<Outcome<Written>, AppError> {
    if conn.engine() == Engine::Postgres {
        conn.execute(
            &format!("SET LOCAL lock_timeout = {BUSY_WALLET_WAIT_MS_MAX}"),
            &[],
        )?;
    }
    write_one(conn, now, item)
}

/// Writes the plain requests of `items` in the caller's transaction. Returns, in `items`'
/// order, the result of each one written, `Alone` for each left to `write_one`, and `Again`
/// for each that needs a wallet another transaction holds.
pub fn writes(
    conn: &dyn Sql,
    now: Timestamp,
    items: &[GroupItem],
) -> Result<Vec<Fate<Outcome<Written>>>, AppError> {
    if conn.engine() != Engine::Postgres || items.is_empty() {
        return Ok(items.iter().map(|_| Fate::Alone).collect());
    }
    // A group waits for its locks only so long: a lock held elsewhere for longer (a stuck
    // client's transaction) fails the group, and each of its requests then waits alone,
    // instead of every request queued behind the group waiting with it.
    conn.execute(
        &format!("SET LOCAL lock_timeout = {GROUP_LOCK_WAIT_MS_MAX}"),
        &[],
    )?;
    let recipients = recipients(conn, items)?;
    lock_references(conn, items)?;
    let taken = references_taken(conn, items)?;
    let mut keys: Vec<WalletKey> = items.iter().map(|i| i.parts().0.key).collect();
    keys.extend(recipients.iter().flatten().map(|(_, w)| w.key));
    let floors = lock_wallets(conn, &keys)?;
    let balances = read_balances(conn, items, &recipients, &floors)?;
    let plan = plan(now, items, &recipients, &taken, Found { floors, balances });
    let mut seqs = HashMap::new();
    for round in &plan.rounds {
        seqs.extend(write_round(conn, round)?);
    }
    let mut seq_of = |e: &mut Entry| -> Result<(), AppError> {
        e.seq = seqs
            .remove(&e.id)
            .ok_or_else(|| AppError::internal("a group", "an entry was not written"))?;
        Ok(())
    };
    plan.results
        .into_iter()
        .map(|r| {
            Ok(match r {
                Fate::Written(mut w) => {
                    match &mut w {
                        Written::Transfer(t) => {
                            seq_of(&mut t.transfer_out)?;
                            seq_of(&mut t.transfer_in)?;
                        }
                        Written::Deposit(e) => seq_of(e)?,
                    }
                    Fate::Written(Outcome::new(w))
                }
                Fate::Alone => Fate::Alone,
                Fate::Again => Fate::Again,
            })
        })
        .collect()
}

/// Each transfer's recipient as `(user id, wallet)`, `None` when unknown (then `write_one`
/// says so) and for a deposit.
fn recipients(
    conn: &dyn Sql,
    items: &[GroupItem],
) -> Result<Vec<Option<(i64, WalletRef)>>, AppError> {
    let mut ids = Vec::new();
    let mut names = Vec::new();
    for item in items {
        match item {
            GroupItem::Transfer(t) => match &t.req.to {
                Recipient::UserId(id) => ids.push(*id),
                Recipient::Username(name) => names.push(crate::domain::username_key(name)),
            },
            GroupItem::Deposit(_) => {}
        }
    }
    if ids.is_empty() && names.is_empty() {
        // Deposits only: nobody to look up.
        return Ok(items.iter().map(|_| None).collect());
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
        .map(|item| match item {
            GroupItem::Transfer(t) => match &t.req.to {
                Recipient::UserId(id) => by_id.get(id).cloned(),
                Recipient::Username(name) => {
                    by_name.get(&crate::domain::username_key(name)).cloned()
                }
            },
            GroupItem::Deposit(_) => None,
        })
        .collect())
}

/// The lock `write_one` takes on each reference, taken here in one statement and in the
/// order of the locks' keys, so two groups never wait on each other in a cycle (a request
/// alone takes one such lock, and every writer takes wallet locks only after them).
fn lock_references(conn: &dyn Sql, items: &[GroupItem]) -> Result<(), AppError> {
    let names: Vec<String> = items
        .iter()
        .map(|i| {
            let (wallet, m) = i.parts();
            entries::reference_lock_name(wallet.key, m.reference.as_str())
        })
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

/// The `(wallet, reference)` pairs of `items` that a stored entry of the item's kind already
/// holds (a transfer's outgoing half, or a deposit).
fn references_taken(
    conn: &dyn Sql,
    items: &[GroupItem],
) -> Result<HashSet<(WalletKey, String)>, AppError> {
    let wanted: Vec<Value> = items
        .iter()
        .map(|i| {
            let (wallet, m) = i.parts();
            json!({"k": wallet.key.get(), "r": m.reference.as_str(), "kind": i.reference_kind().as_str()})
        })
        .collect();
    // Planned on each call. On a new database the prepared plan, kept from its sixth run
    // while the ledger had a few rows until autovacuum first analyzed `entries`, read every
    // entry for each reference: 10 ms a group instead of 0.15 ms at 40,000 entries, and 6
    // bench runs in 62 fell to a third of the rate. Planning each call costs 3% to 5% of the
    // rate (README, "On PostgreSQL"). Planning every statement of the group cost 30% (the
    // rounds' plans for the values at hand are slower), and preparing the probe only past
    // 10,000 entries measured slower still, for a reason not found.
    let rows =
        conn.query_planned_now(&REFERENCES_TAKEN_SQL, &[&Value::from(wanted).to_string()])?;
    rows.into_iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?)))
        .collect()
}

/// `references_taken`'s statement: one probe of `entries_reference` per reference, whatever
/// the planner would guess of a JSON list's length (a join chose to scan the ledger instead).
/// The last term repeats the index's predicate word for word (from the one list of kinds
/// that the schema's index is checked against), so the two cannot drift apart.
#[doc(hidden)]
pub static REFERENCES_TAKEN_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT v.k, v.r
         FROM jsonb_to_recordset(CAST(CAST(?1 AS TEXT) AS jsonb)) AS v(k BIGINT, r TEXT, kind TEXT)
         CROSS JOIN LATERAL (
             SELECT 1 FROM entries e
             WHERE e.wallet_key = v.k AND e.kind = v.kind COLLATE \"C\"
                 AND e.reference = v.r COLLATE \"C\" AND ({})
             LIMIT 1) AS e",
        super::kinds::unique_reference_condition("e.kind")
    )
});

/// Locks the wallets' rows in key order and returns each one's stamp floor (`NO KEY UPDATE`,
/// the lock an `UPDATE` of a wallet takes: it does not block other tables' foreign-key checks
/// on the wallet). A wallet another transaction holds is skipped, not waited for: the
/// requests that need it go into the next group (another process's group, which locks many
/// of the same wallets, commits meanwhile), and the others are written now.
fn lock_wallets(
    conn: &dyn Sql,
    keys: &[WalletKey],
) -> Result<HashMap<WalletKey, Timestamp>, AppError> {
    let keys: Vec<i64> = keys.iter().map(|k| k.get()).collect();
    let rows = conn.query(
        "SELECT key, stamp_floor FROM wallets
         WHERE key IN (SELECT CAST(value AS BIGINT) FROM jsonb_array_elements_text(CAST(CAST(?1 AS TEXT) AS jsonb)))
         ORDER BY key FOR NO KEY UPDATE SKIP LOCKED",
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

/// The balances the items move, of the wallets the group locked.
fn read_balances(
    conn: &dyn Sql,
    items: &[GroupItem],
    recipients: &[Option<(i64, WalletRef)>],
    locked: &HashMap<WalletKey, Timestamp>,
) -> Result<HashMap<BalanceKey, Balance>, AppError> {
    let mut wanted = Vec::new();
    for (item, to) in items.iter().zip(recipients) {
        let (wallet, m) = item.parts();
        let code = m.currency.code.as_str();
        let to = to.as_ref().map(|(_, w)| w);
        for w in std::iter::once(wallet).chain(to) {
            if locked.contains_key(&w.key) {
                wanted.push(json!({"k": w.key.get(), "c": code}));
            }
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
    /// Per item, what the group writes for it, or why not.
    pub results: Vec<Fate<Written>>,
    /// The entries in the order they are written: a wallet has at most one entry per round,
    /// and its entries are in its rounds in the order the group made them.
    pub rounds: Vec<Vec<Planned>>,
}

/// Decides, in `items`' order, which requests the group writes and what their entries say.
/// A request that needs a wallet the group could not lock is put off (`Again`). Otherwise it
/// is written only when its reference is new (stored or earlier in the group), every wallet
/// it moves has a balance in its currency, and each credited balance stays within i64. A transfer also needs a recipient who is another known user, a sender whose
/// balance is not frozen and whose `balance - held` covers the amount (the same rule as the
/// one statement that moves a balance alone). Each entry is stamped just after its wallet's
/// previous one, and no earlier than `now`.
pub(crate) fn plan(
    now: Timestamp,
    items: &[GroupItem],
    recipients: &[Option<(i64, WalletRef)>],
    taken: &HashSet<(WalletKey, String)>,
    found: Found,
) -> Plan {
    let mut planner = Planner {
        now,
        found,
        seen: HashSet::new(),
        entries_of: HashMap::new(),
        rounds: Vec::new(),
    };
    let results = items
        .iter()
        .zip(recipients)
        .map(|(item, to)| {
            let (wallet, m) = item.parts();
            let to_wallet = to.as_ref().map(|(_, w)| w);
            let locked = |w: &WalletRef| planner.found.floors.contains_key(&w.key);
            if !std::iter::once(wallet).chain(to_wallet).all(locked) {
                return Fate::Again;
            }
            let reference = (wallet.key, m.reference.as_str().to_string());
            if taken.contains(&reference) || planner.seen.contains(&reference) {
                return Fate::Alone;
            }
            let written = match item {
                GroupItem::Transfer(t) => to
                    .as_ref()
                    .and_then(|to| planner.transfer(t, to))
                    .map(Written::Transfer),
                GroupItem::Deposit(d) => planner.deposit(d).map(Written::Deposit),
            };
            match written {
                Some(w) => {
                    planner.seen.insert(reference);
                    Fate::Written(w)
                }
                None => Fate::Alone,
            }
        })
        .collect();
    Plan {
        results,
        rounds: planner.rounds,
    }
}

/// The running state of a plan: balances and stamp floors as the entries so far leave them.
struct Planner {
    now: Timestamp,
    found: Found,
    /// References written by the group so far.
    seen: HashSet<(WalletKey, String)>,
    /// How many entries each wallet has in the group so far: the round of its next one.
    entries_of: HashMap<WalletKey, usize>,
    rounds: Vec<Vec<Planned>>,
}

/// Each method is called for a request whose wallets the group locked (`plan` checks).
impl Planner {
    fn transfer(&mut self, item: &TransferItem, to: &(i64, WalletRef)) -> Option<TransferResult> {
        let (to_user_id, to_wallet) = to;
        let m = &item.req.movement;
        let amount = m.amount.units();
        let from_key = (item.sender.key, m.currency.code.clone());
        let to_key = (to_wallet.key, m.currency.code.clone());
        let balances = &self.found.balances;
        let (from, into) = (balances.get(&from_key)?, balances.get(&to_key)?);
        let debited = from
            .balance
            .checked_sub(amount)
            .filter(|after| !from.frozen && after >= &from.held)?;
        let credited = into.balance.checked_add(amount)?;
        if *to_user_id == item.sender_user_id {
            return None;
        }
        self.set_balance(from_key, debited);
        self.set_balance(to_key, credited);
        let transfer_id = Some(uuid::Uuid::now_v7().to_string());
        let out = Half {
            kind: EntryKind::TransferOut,
            after: debited,
            counterparty: Some(*to_user_id),
            transfer_id: transfer_id.clone(),
        };
        let transfer_out = self.entry(&item.sender, m, out);
        let into = Half {
            kind: EntryKind::TransferIn,
            after: credited,
            counterparty: Some(item.sender_user_id),
            transfer_id,
        };
        let transfer_in = self.entry(to_wallet, m, into);
        Some(TransferResult {
            transfer_out,
            transfer_in,
        })
    }

    fn deposit(&mut self, item: &DepositItem) -> Option<Entry> {
        let m = &item.movement;
        let key = (item.wallet.key, m.currency.code.clone());
        let credited = self
            .found
            .balances
            .get(&key)?
            .balance
            .checked_add(m.amount.units())?;
        self.set_balance(key, credited);
        let half = Half {
            kind: EntryKind::Deposit,
            after: credited,
            counterparty: None,
            transfer_id: None,
        };
        Some(self.entry(&item.wallet, m, half))
    }

    fn set_balance(&mut self, key: BalanceKey, after: MinorUnits) {
        if let Some(b) = self.found.balances.get_mut(&key) {
            b.balance = after;
        }
    }

    /// The wallet's next entry, stamped just after its previous one, in its next round.
    fn entry(&mut self, wallet: &WalletRef, m: &Movement, half: Half) -> Entry {
        let floor = self.found.floors.entry(wallet.key).or_insert(self.now);
        let at = self.now.max(floor.plus_micros(1));
        *floor = at;
        let amount = m.amount.units();
        let entry = Entry {
            seq: 0,
            id: uuid::Uuid::now_v7().to_string(),
            wallet_id: wallet.id.clone(),
            kind: half.kind,
            amount,
            balance_after: half.after,
            reference: m.reference.as_str().to_string(),
            counterparty_user_id: half.counterparty,
            transfer_id: half.transfer_id,
            metadata: m.metadata.clone(),
            created_at: at,
            currency: m.currency.code.clone(),
            reverses: None,
        };
        let round = self.entries_of.entry(wallet.key).or_insert(0);
        if self.rounds.len() <= *round {
            self.rounds.push(Vec::new());
        }
        let delta = if half.kind.is_credit() {
            amount
        } else {
            MinorUnits::new(-amount.get())
        };
        self.rounds[*round].push(Planned {
            wallet_key: wallet.key,
            delta,
            entry: entry.clone(),
        });
        *round += 1;
        entry
    }
}

/// What differs between the entries a plan makes.
struct Half {
    kind: EntryKind,
    after: MinorUnits,
    counterparty: Option<i64>,
    transfer_id: Option<String>,
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
            "a write group",
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
