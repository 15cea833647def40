//! The group's plan, without a database: which transfers and deposits it writes, and what
//! their entries say.

use super::*;
use crate::domain::{Amount, Currency, Metadata, Reference};
use crate::ledger::Movement;

fn usd() -> Currency {
    Currency {
        code: "USD".into(),
        scale: 0,
        amount_minor_max: i64::MAX,
    }
}

fn wallet(key: i64) -> WalletRef {
    WalletRef {
        key: WalletKey::from_storage(key),
        id: format!("w{key}"),
    }
}

fn movement(amount: i64, reference: &str) -> Movement {
    Movement {
        currency: usd(),
        amount: Amount::parse_text(&amount.to_string(), &usd()).unwrap(),
        reference: Reference::parse(reference).unwrap(),
        metadata: Metadata::empty(),
    }
}

fn item(from: i64, to: i64, amount: i64, reference: &str) -> GroupItem {
    GroupItem::Transfer(TransferItem {
        sender_user_id: from,
        sender: wallet(from),
        req: TransferRequest {
            to: Recipient::UserId(to),
            movement: movement(amount, reference),
        },
    })
}

fn deposit(into: i64, amount: i64, reference: &str) -> GroupItem {
    GroupItem::Deposit(DepositItem {
        wallet: wallet(into),
        movement: movement(amount, reference),
    })
}

fn now() -> Timestamp {
    Timestamp::parse("2026-11-30T12:00:00Z").unwrap()
}

/// Wallets 1..=n (user i owns wallet i), each with `balance` and nothing held.
fn found(n: i64, balance: i64) -> Found {
    Found {
        floors: (1..=n)
            .map(|k| {
                (
                    WalletKey::from_storage(k),
                    Timestamp::from_micros(0).unwrap(),
                )
            })
            .collect(),
        balances: (1..=n)
            .map(|k| {
                (
                    (WalletKey::from_storage(k), "USD".to_string()),
                    Balance {
                        balance: MinorUnits::new(balance),
                        held: MinorUnits::ZERO,
                        frozen: false,
                    },
                )
            })
            .collect(),
    }
}

fn recipients(items: &[GroupItem]) -> Vec<Option<(i64, WalletRef)>> {
    items
        .iter()
        .map(|i| match i {
            GroupItem::Transfer(t) => match t.req.to {
                Recipient::UserId(id) => Some((id, wallet(id))),
                Recipient::Username(_) => None,
            },
            GroupItem::Deposit(_) => None,
        })
        .collect()
}

fn run(items: &[GroupItem], found: Found) -> Plan {
    plan(now(), items, &recipients(items), &HashSet::new(), found)
}

/// What a plan writes, per item (every item is written).
fn written(plan: &Plan) -> Vec<Written> {
    plan.results
        .iter()
        .map(|r| match r {
            Fate::Written(w) => w.clone(),
            other => panic!("not written: {other:?}"),
        })
        .collect()
}

/// The transfers a plan writes (every item of the test is one, and is written).
fn transfers(plan: &Plan) -> Vec<TransferResult> {
    written(plan)
        .into_iter()
        .map(|w| w.into_transfer().unwrap())
        .collect()
}

/// What a plan does with each item: written, alone or again.
fn fates(plan: &Plan) -> Vec<&'static str> {
    plan.results
        .iter()
        .map(|r| match r {
            Fate::Written(_) => "written",
            Fate::Alone => "alone",
            Fate::Again => "again",
        })
        .collect()
}

#[test]
fn a_wallet_in_several_transfers_gets_running_balances_and_one_entry_per_round() {
    let items = [item(1, 2, 30, "a"), item(1, 3, 50, "b"), item(2, 1, 5, "c")];
    let plan = run(&items, found(3, 100));
    let r = transfers(&plan);
    assert_eq!(r[0].transfer_out.balance_after, MinorUnits::new(70));
    assert_eq!(r[1].transfer_out.balance_after, MinorUnits::new(20));
    assert_eq!(r[2].transfer_in.balance_after, MinorUnits::new(25));
    assert_eq!(r[2].transfer_out.balance_after, MinorUnits::new(125));
    // Wallet 1 has three entries: one in each of three rounds, in order.
    assert_eq!(plan.rounds.len(), 3);
    for round in &plan.rounds {
        let mut keys: Vec<_> = round.iter().map(|p| p.wallet_key).collect();
        let all = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), all, "a wallet twice in one round");
    }
    // Each wallet's stamps increase strictly, from `now`.
    assert_eq!(r[0].transfer_out.created_at, now());
    assert_eq!(r[1].transfer_out.created_at, now().plus_micros(1));
    assert_eq!(r[2].transfer_in.created_at, now().plus_micros(2));
    assert_eq!(r[0].transfer_out.transfer_id, r[0].transfer_in.transfer_id);
    assert_ne!(r[0].transfer_id(), r[1].transfer_id());
}

impl TransferResult {
    fn transfer_id(&self) -> Option<String> {
        self.transfer_out.transfer_id.clone()
    }
}

#[test]
fn what_is_not_plain_is_left_to_the_transfer_alone() {
    let mut f = found(4, 100);
    // Wallet 4 is frozen; wallet 3 has 40 of its 100 held.
    f.balances
        .get_mut(&(WalletKey::from_storage(4), "USD".into()))
        .unwrap()
        .frozen = true;
    f.balances
        .get_mut(&(WalletKey::from_storage(3), "USD".into()))
        .unwrap()
        .held = MinorUnits::new(40);
    let items = [
        item(1, 2, 100, "all"),     // written: exactly the balance
        item(1, 2, 1, "empty"),     // nothing left
        item(2, 1, 1, "all"),       // another wallet's reference: written
        item(2, 2, 1, "self"),      // to oneself
        item(3, 1, 61, "held"),     // 60 available
        item(4, 1, 1, "frozen"),    // frozen sender
        item(1, 4, 1, "to-frozen"), // a frozen wallet receives (wallet 1 got 1 back above)
        item(2, 1, 1, "all"),       // the same reference again in the group
        item(2, 9, 1, "unknown"),   // no such recipient
    ];
    let mut rec = recipients(&items);
    rec[8] = None;
    let taken: HashSet<_> = HashSet::new();
    let plan = plan(now(), &items, &rec, &taken, f);
    let (w, a) = ("written", "alone");
    assert_eq!(fates(&plan), [w, a, w, a, a, a, w, a, a]);
}

#[test]
fn a_stored_reference_or_a_missing_balance_is_left_alone() {
    let items = [
        item(1, 2, 1, "old"),
        item(1, 2, 1, "new"),
        item(1, 3, 1, "x"),
    ];
    let taken: HashSet<_> = [(WalletKey::from_storage(1), "old".to_string())].into();
    // Wallet 3 (locked) has no balance in USD yet: its first credit creates it, alone.
    let mut f = found(2, 10);
    f.floors.insert(WalletKey::from_storage(3), now());
    let plan = plan(now(), &items, &recipients(&items), &taken, f);
    assert_eq!(fates(&plan), ["alone", "written", "alone"]);
}

#[test]
fn a_credit_past_the_largest_balance_is_left_alone() {
    let mut f = found(2, 10);
    f.balances
        .get_mut(&(WalletKey::from_storage(2), "USD".into()))
        .unwrap()
        .balance = MinorUnits::new(i64::MAX);
    let items = [item(1, 2, 1, "x")];
    assert_eq!(fates(&run(&items, f)), ["alone"]);
}

#[test]
fn a_stamp_floor_ahead_of_now_pushes_the_stamps_after_it() {
    let mut f = found(2, 10);
    let ahead = now().plus_micros(500);
    f.floors.insert(WalletKey::from_storage(2), ahead);
    let items = [item(1, 2, 1, "x")];
    let r = transfers(&run(&items, f)).remove(0);
    assert_eq!(r.transfer_out.created_at, now());
    assert_eq!(r.transfer_in.created_at, ahead.plus_micros(1));
}

#[test]
fn a_wallet_moving_two_currencies_in_one_group_keeps_each_balance_and_one_entry_per_round() {
    let eur = Currency {
        code: "EUR".into(),
        ..usd()
    };
    let mut f = found(2, 100);
    for k in 1..=2 {
        f.balances.insert(
            (WalletKey::from_storage(k), "EUR".into()),
            Balance {
                balance: MinorUnits::new(7),
                held: MinorUnits::ZERO,
                frozen: false,
            },
        );
    }
    let mut in_eur = item(1, 2, 5, "e");
    if let GroupItem::Transfer(t) = &mut in_eur {
        t.req.movement.currency = eur.clone();
        t.req.movement.amount = Amount::parse_text("5", &eur).unwrap();
    }
    let items = [item(1, 2, 30, "u"), in_eur, item(1, 2, 70, "all")];
    let plan = run(&items, f);
    let r = transfers(&plan);
    assert_eq!(r[0].transfer_out.balance_after, MinorUnits::new(70));
    assert_eq!(r[1].transfer_out.balance_after, MinorUnits::new(2));
    assert_eq!(r[1].transfer_in.balance_after, MinorUnits::new(12));
    assert_eq!(r[1].transfer_out.currency, "EUR");
    // USD is untouched by the EUR transfer between them: its 70 is all there is.
    assert_eq!(r[2].transfer_out.balance_after, MinorUnits::ZERO);
    // Three entries per wallet, whatever their currencies: three rounds.
    assert_eq!(plan.rounds.len(), 3);
    assert!(plan.rounds.iter().all(|round| round.len() == 2));
}

#[test]
fn deposits_share_the_running_balances_and_rounds_of_the_transfers() {
    // Wallet 1 pays out all it has, is paid 40 by a deposit, then pays 30 of it: the deposit
    // is what makes the second transfer plain.
    let items = [
        item(1, 2, 100, "all"),
        deposit(1, 40, "in"),
        item(1, 2, 30, "more"),
        deposit(3, 5, "x"),
    ];
    let plan = run(&items, found(3, 100));
    let results = written(&plan);
    let Written::Deposit(d) = &results[1] else {
        panic!("a deposit")
    };
    assert_eq!(d.kind, EntryKind::Deposit);
    assert_eq!(d.balance_after, MinorUnits::new(40));
    assert_eq!(
        (d.counterparty_user_id, d.transfer_id.as_deref()),
        (None, None)
    );
    assert_eq!(d.created_at, now().plus_micros(1));
    let Written::Transfer(t) = &results[2] else {
        panic!("a transfer")
    };
    assert_eq!(t.transfer_out.balance_after, MinorUnits::new(10));
    // Wallet 1 has three entries in three rounds; wallet 3's deposit goes in the first.
    assert_eq!(plan.rounds.len(), 3);
    assert_eq!(plan.rounds[0].len(), 3);
    let credit = &plan.rounds[1][0];
    assert_eq!(
        (credit.wallet_key, credit.delta),
        (WalletKey::from_storage(1), MinorUnits::new(40))
    );
}

#[test]
fn a_deposit_that_is_not_plain_is_left_alone() {
    let mut f = found(3, 10);
    f.floors.insert(WalletKey::from_storage(4), now());
    f.balances
        .get_mut(&(WalletKey::from_storage(2), "USD".into()))
        .unwrap()
        .balance = MinorUnits::new(i64::MAX);
    f.balances
        .get_mut(&(WalletKey::from_storage(3), "USD".into()))
        .unwrap()
        .frozen = true;
    let items = [
        deposit(1, 1, "old"),  // stored already: a replay or a conflict, alone
        deposit(1, 1, "new"),  // written
        deposit(1, 2, "new"),  // the same reference again in the group
        deposit(2, 1, "big"),  // past the largest balance
        deposit(4, 1, "none"), // locked, no balance in USD yet: the first credit creates it, alone
        deposit(3, 1, "cold"), // a frozen wallet may still be paid
        item(1, 2, 1, "new"),  // a transfer may share a deposit's reference, but not in one group
    ];
    let taken: HashSet<_> = [(WalletKey::from_storage(1), "old".to_string())].into();
    let plan = plan(now(), &items, &recipients(&items), &taken, f);
    let (w, a) = ("written", "alone");
    assert_eq!(fates(&plan), [a, w, a, a, a, w, a]);
}

#[test]
fn a_request_needing_a_wallet_held_elsewhere_is_put_off_and_moves_nothing() {
    // Wallet 3 is held by another transaction: the group did not lock it.
    let mut f = found(3, 10);
    f.floors.remove(&WalletKey::from_storage(3));
    f.balances
        .remove(&(WalletKey::from_storage(3), "USD".to_string()));
    let items = [
        item(1, 3, 5, "to-held"),
        item(3, 1, 5, "from-held"),
        deposit(3, 5, "into-held"),
        item(1, 2, 10, "all"), // the put-off transfer took nothing: all 10 are there
        item(2, 9, 1, "unknown"), // an unknown recipient is still the transfer's own answer
    ];
    let mut rec = recipients(&items);
    rec[4] = None;
    let plan = plan(now(), &items, &rec, &HashSet::new(), f);
    assert_eq!(
        fates(&plan),
        ["again", "again", "again", "written", "alone"]
    );
    assert!(plan
        .rounds
        .iter()
        .flatten()
        .all(|p| p.wallet_key != WalletKey::from_storage(3)));
}
