//! Crash safety (issue 6): the real binary under concurrent load, SIGKILLed at a random moment,
//! restarted on the same database, again and again. After every restart: each request that got
//! a 2xx is in the ledger exactly once, none that got an error is, a request that got no answer
//! is there at most once (and a retry of it replays or runs, never both), balances equal the sum
//! of their entries, and `wallet verify` exits 0.
//!
//! The moments and the operations come from a seeded RNG; the seed is printed, and
//! `WALLET_CRASH_SEED=N` replays the same plan. The long soak is ignored by default:
//! `cargo test --test api -- --ignored crash`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::binary::{self, call, Server};
use crate::helpers::{agent, name, TestDb};
use wallet::store::Sql;

const USERS: usize = 6;
const CLIENTS: usize = 8;
/// At most this many requests per client per round (the kill normally comes first).
const REQUESTS_PER_CLIENT_MAX: usize = 3000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Deposit,
    Withdraw,
    Transfer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// A 2xx with this status.
    Done(u16),
    /// An error status (4xx or 5xx).
    Refused(u16),
    /// No answer: the connection failed or was cut by the kill.
    NoAnswer,
}

#[derive(Clone, Debug)]
struct Record {
    op: Op,
    from: usize,
    to: usize,
    minor: i64,
    reference: String,
    outcome: Outcome,
}

impl Record {
    fn path(&self) -> &'static str {
        match self.op {
            Op::Deposit => "/api/wallets/me/deposit",
            Op::Withdraw => "/api/wallets/me/withdraw",
            Op::Transfer => "/api/wallets/me/transfer",
        }
    }

    fn body(&self, users: &[Account]) -> Value {
        let amount = format!("{}.{:02}", self.minor / 100, self.minor % 100);
        match self.op {
            Op::Transfer => {
                json!({"amount": amount, "reference": self.reference, "to_user_id": users[self.to].id})
            }
            _ => json!({"amount": amount, "reference": self.reference}),
        }
    }

    /// The entry kind that holds the reference in the sender's wallet.
    fn kind(&self) -> &'static str {
        match self.op {
            Op::Deposit => "DEPOSIT",
            Op::Withdraw => "WITHDRAWAL",
            Op::Transfer => "TRANSFER_OUT",
        }
    }
}

#[derive(Clone, Debug)]
struct Account {
    id: i64,
    token: String,
}

fn seed() -> u64 {
    let seed = std::env::var("WALLET_CRASH_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("crash seed: {seed} (replay the plan with WALLET_CRASH_SEED={seed})");
    seed
}

fn start(db: &TestDb) -> Server {
    Server::start(binary::wallet(db.arg()))
}

fn register(base: &str) -> Vec<Account> {
    let agent = agent();
    (0..USERS)
        .map(|_| {
            let u = name("c");
            let r = call(
                &agent,
                base,
                "POST",
                "/api/auth/register",
                None,
                Some(&json!({"username": u, "email": format!("{u}@example.com"),
                    "password": "correct horse battery", "password_confirm": "correct horse battery"})),
                &[],
            )
            .expect("register answers");
            assert_eq!(r.status, 201, "{}", r.body);
            Account {
                id: r.body["user"]["id"].as_i64().unwrap(),
                token: r.body["token"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

fn classify(result: &Result<binary::Reply, String>) -> Outcome {
    match result {
        Ok(r) if (200..300).contains(&r.status) => Outcome::Done(r.status),
        Ok(r) => Outcome::Refused(r.status),
        Err(_) => Outcome::NoAnswer,
    }
}

/// Runs CLIENTS threads of random money movements until the kill; returns every request sent.
fn load_until_killed(
    server: &mut Server,
    users: &Arc<Vec<Account>>,
    round: usize,
    rng: &mut StdRng,
) -> Vec<Record> {
    let records = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let kill_after = Duration::from_millis(rng.random_range(60..=450));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (users, records, stop) = (users.clone(), records.clone(), stop.clone());
            let base = server.base.clone();
            let mut rng = StdRng::seed_from_u64(rng.random());
            std::thread::spawn(move || {
                let agent = agent();
                for n in 0..REQUESTS_PER_CLIENT_MAX {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let op = match rng.random_range(0..10) {
                        0..=3 => Op::Deposit,
                        4..=6 => Op::Withdraw,
                        _ => Op::Transfer,
                    };
                    let from = rng.random_range(0..USERS);
                    let to = (from + rng.random_range(1..USERS)) % USERS;
                    // Withdrawals outweigh deposits, so balances stay low and many debits
                    // are refused (422): those must leave no trace.
                    let minor = match op {
                        Op::Deposit => rng.random_range(1..=10_000),
                        Op::Withdraw => rng.random_range(1..=20_000),
                        Op::Transfer => rng.random_range(1..=8_000),
                    };
                    let mut rec = Record {
                        op,
                        from,
                        to,
                        minor,
                        reference: format!("r{round}-c{c}-n{n}"),
                        outcome: Outcome::NoAnswer,
                    };
                    let result = call(
                        &agent,
                        &base,
                        "POST",
                        rec.path(),
                        Some(&users[from].token),
                        Some(&rec.body(&users)),
                        &[],
                    );
                    rec.outcome = classify(&result);
                    records.lock().unwrap().push(rec);
                    if result.is_err() {
                        // The server is gone: everything after this would be refused too.
                        return;
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(kill_after);
    server.sigkill();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("client thread");
    }
    let records = std::mem::take(&mut *records.lock().unwrap());
    let done = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Done(_)))
        .count();
    let refused = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Refused(_)))
        .count();
    println!(
        "round {round}: killed after {kill_after:?}; {} requests: {done} 2xx, {refused} errors, {} no answer",
        records.len(),
        records.len() - done - refused
    );
    assert!(
        done > 0,
        "round {round}: no request was acknowledged before the kill"
    );
    records
}

/// Every entry, counted and summed by (user id, kind, reference): read once per check.
struct Ledger(HashMap<(i64, String, String), (i64, i64)>);

impl Ledger {
    fn read(conn: &dyn Sql) -> Ledger {
        let mut map = HashMap::new();
        let rows = conn
            .query(
                "SELECT w.user_id, e.kind, e.reference, e.amount FROM entries e
                 JOIN wallets w ON w.key = e.wallet_key",
                &[],
            )
            .unwrap();
        for row in rows {
            let (user, kind, reference, amount): (i64, String, String, i64) = (
                row.get(0).unwrap(),
                row.get(1).unwrap(),
                row.get(2).unwrap(),
                row.get(3).unwrap(),
            );
            let e: &mut (i64, i64) = map.entry((user, kind, reference)).or_default();
            e.0 += 1;
            e.1 += amount;
        }
        Ledger(map)
    }

    /// How many entries of `kind` with `reference` the wallet of `user_id` holds, and their sum.
    fn with(&self, user_id: i64, kind: &str, reference: &str) -> (i64, i64) {
        self.0
            .get(&(user_id, kind.to_string(), reference.to_string()))
            .copied()
            .unwrap_or((0, 0))
    }

    /// Whether the request is in the ledger (0 or 1), checking both halves of a transfer.
    fn holds(&self, users: &[Account], rec: &Record) -> i64 {
        let (n, amount) = self.with(users[rec.from].id, rec.kind(), &rec.reference);
        assert!(n <= 1, "{rec:?} is in the ledger {n} times");
        if n == 1 {
            assert_eq!(amount, rec.minor, "{rec:?}: wrong amount in the ledger");
        }
        if rec.op == Op::Transfer {
            let (n_in, amount_in) = self.with(users[rec.to].id, "TRANSFER_IN", &rec.reference);
            assert_eq!(n_in, n, "{rec:?}: {n} TRANSFER_OUT but {n_in} TRANSFER_IN");
            assert_eq!(amount_in, amount, "{rec:?}: the two halves differ");
        }
        n
    }
}

/// The checks after a restart, over every request of every round so far.
fn check_ledger(db: &TestDb, users: &[Account], records: &[Record], round: usize) {
    let conn = db.sql();
    let ledger = Ledger::read(&*conn);
    let mut present = HashSet::new();
    for rec in records {
        let n = ledger.holds(users, rec);
        match rec.outcome {
            Outcome::Done(_) => assert_eq!(
                n, 1,
                "after restart {round}: {rec:?} was acknowledged but is not in the ledger"
            ),
            Outcome::Refused(_) => assert_eq!(
                n, 0,
                "after restart {round}: {rec:?} got an error but is in the ledger"
            ),
            Outcome::NoAnswer => {}
        }
        if n == 1 {
            present.insert((rec.kind().to_string(), rec.reference.clone()));
        }
    }
    // Nothing in the ledger that no request asked for.
    let rows: Vec<(String, String)> = conn
        .query("SELECT kind, reference FROM entries WHERE kind IN ('DEPOSIT', 'WITHDRAWAL', 'TRANSFER_OUT')", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0).unwrap(), r.get(1).unwrap()))
        .collect();
    for row in &rows {
        let (kind, reference) = row;
        assert!(
            present.contains(row),
            "after restart {round}: a {kind} entry {reference:?} that no acknowledged or unanswered request explains"
        );
    }
    assert_eq!(rows.len(), present.len());
    // Each balance is the sum of its wallet's entries.
    let wallets: Vec<(String, i64, i64)> = conn
        .query(
            "SELECT w.id, b.balance, CAST(coalesce(sum(CASE WHEN e.kind IN ('DEPOSIT', 'TRANSFER_IN', 'REFUND')
                 THEN e.amount ELSE -e.amount END), 0) AS BIGINT)
             FROM wallets w JOIN balances b ON b.wallet_key = w.key
             LEFT JOIN entries e ON e.wallet_key = w.key AND e.currency = b.currency
             GROUP BY w.id, b.currency, b.balance",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0).unwrap(), r.get(1).unwrap(), r.get(2).unwrap()))
        .collect();
    assert_eq!(wallets.len(), USERS);
    for (id, balance, sum) in wallets {
        assert_eq!(
            balance, sum,
            "after restart {round}: wallet {id} balance {balance} but its entries sum to {sum}"
        );
    }
    let (code, out) = binary::verify(db.arg());
    assert_eq!(code, Some(0), "after restart {round}: wallet verify: {out}");
}

/// Sends each unanswered request again with the same reference and payload: it must replay
/// (200, `Idempotent-Replayed: true`) exactly when it is already in the ledger, and otherwise
/// run now (201) or fail cleanly (422 insufficient funds).
fn retry_unanswered(
    server: &Server,
    db: &TestDb,
    users: &[Account],
    records: &mut [Record],
    round: usize,
) {
    let ledger = Ledger::read(&*db.sql());
    let agent = agent();
    let (mut committed, mut retried) = (0, 0);
    for rec in records
        .iter_mut()
        .filter(|r| r.outcome == Outcome::NoAnswer)
    {
        let before = ledger.holds(users, rec);
        committed += before;
        retried += 1;
        let r = call(
            &agent,
            &server.base,
            "POST",
            rec.path(),
            Some(&users[rec.from].token),
            Some(&rec.body(users)),
            &[],
        )
        .unwrap_or_else(|e| panic!("retry of {rec:?}: {e}"));
        if before == 1 {
            assert_eq!(r.status, 200, "retry of committed {rec:?}: {}", r.body);
            assert_eq!(r.header("Idempotent-Replayed"), Some("true"), "{rec:?}");
        } else {
            assert!(
                r.status == 201 || (rec.op != Op::Deposit && r.status == 422),
                "retry of uncommitted {rec:?}: {} {}",
                r.status,
                r.body
            );
        }
        rec.outcome = classify(&Ok(r));
    }
    println!(
        "round {round}: {retried} unanswered requests retried, {committed} of them had committed"
    );
}

fn crash_rounds(rounds: usize) {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let db = TestDb::new();
    let started = Instant::now();
    let mut server = start(&db);
    let users = Arc::new(register(&server.base));
    let mut records: Vec<Record> = Vec::new();
    for round in 0..rounds {
        records.extend(load_until_killed(&mut server, &users, round, &mut rng));
        server = start(&db);
        check_ledger(&db, &users, &records, round);
        retry_unanswered(&server, &db, &users, &mut records, round);
        check_ledger(&db, &users, &records, round);
    }
    let kinds: HashMap<&str, usize> = records.iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(match r.outcome {
            Outcome::Done(_) => "2xx",
            Outcome::Refused(_) => "error",
            Outcome::NoAnswer => "no answer",
        })
        .or_default() += 1;
        m
    });
    println!(
        "{rounds} rounds, {} requests {kinds:?}, {:?} (seed {seed})",
        records.len(),
        started.elapsed()
    );
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(15)).success());
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_write() {
    // Three SIGKILLs at random moments under 8 concurrent clients: after each restart every
    // 2xx is in the ledger once, no error is, retries of unanswered requests replay exactly
    // when they had committed, balances match their entries, and `wallet verify` exits 0.
    crash_rounds(3);
}

#[test]
#[ignore = "soak: cargo test --test api -- --ignored crash"]
fn crash_soak_many_rounds() {
    // The same checks over 30 kills: a longer search for a lost or doubled write.
    crash_rounds(30);
}
