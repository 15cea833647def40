//! The money rules on an in-memory SQLite database with the real schema, without HTTP or the
//! writer thread: each test runs the use case on one connection, as a writer job would.

use rusqlite::{params, Connection};

use super::*;
use crate::domain::{Amount, Currency, Metadata, MinorUnits, Reference, Timestamp};

fn usds() -> crate::domain::Currencies {
    crate::domain::Currencies::single(usd())
}

fn usd() -> Currency {
    Currency::new("USD", 2, 1_000_000_000).unwrap()
}

fn now() -> Timestamp {
    Timestamp::parse("2026-03-02T09:00:00Z").unwrap()
}

/// A ledger with users 1 (`alice`) and 2 (`bob`), each with an empty wallet.
fn ledger() -> (Connection, WalletRef, WalletRef) {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(crate::db::SCHEMA_SQL).unwrap();
    conn.execute_batch("INSERT INTO currencies (code, scale) VALUES ('USD', 2)")
        .unwrap();
    let t = now().plus_micros(-10).to_text();
    for (id, name) in [(1, "alice"), (2, "bob")] {
        conn.execute(
            "INSERT INTO users (id, username, username_key, email, email_key, password_hash, date_joined)
             VALUES (?1, ?2, ?2, ?2 || '@example.com', ?2 || '@example.com', 'x', ?3)",
            params![id, name, t],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO wallets (key, id, user_id, created_at) VALUES (?1, ?2, ?1, ?3)",
            params![id, format!("wallet-{name}"), t],
        )
        .unwrap();
    }
    let wallet = |key: i64, id: &str| WalletRef {
        key: super::WalletKey::from_storage(key),
        id: id.to_string(),
    };
    (conn, wallet(1, "wallet-alice"), wallet(2, "wallet-bob"))
}

fn movement(amount: &str, reference: &str) -> Movement {
    Movement {
        currency: usd(),
        amount: Amount::parse_text(amount, &usd()).unwrap(),
        reference: Reference::parse(reference).unwrap(),
        metadata: Metadata::empty(),
    }
}

fn balance(conn: &Connection, w: &WalletRef) -> i64 {
    queries::balance_now(conn, w.key, "USD").unwrap().get()
}

fn entries_count(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_deposit_credits_and_its_replay_changes_nothing() {
    // A deposit moves the balance and records it; the same request again replays the entry.
    let (conn, alice, _) = ledger();
    let m = movement("12.50", "dep-1");
    let first = deposit(&conn, now(), &alice, &m).unwrap();
    assert!(!first.replayed);
    assert_eq!(first.value.amount, MinorUnits::new(1250));
    assert_eq!(first.value.balance_after, MinorUnits::new(1250));
    assert_eq!(first.value.kind, EntryKind::Deposit);
    let again = deposit(&conn, now(), &alice, &m).unwrap();
    assert!(again.replayed);
    assert_eq!(again.value, first.value);
    assert_eq!(balance(&conn, &alice), 1250);
    assert_eq!(entries_count(&conn), 1);
}

#[test]
fn a_reference_reused_with_another_payload_is_a_conflict() {
    // Same kind and reference, different amount: refused, and nothing moves.
    let (conn, alice, _) = ledger();
    deposit(&conn, now(), &alice, &movement("1.00", "r")).unwrap();
    let err = deposit(&conn, now(), &alice, &movement("2.00", "r")).unwrap_err();
    assert!(
        matches!(&err, AppError::ReferenceConflict { holder } if holder.starts_with("already used by transaction ")),
        "{err:?}"
    );
    assert_eq!(balance(&conn, &alice), 100);
    // Another kind may use the same reference.
    withdraw_now(&conn, now(), &alice, &movement("0.40", "r")).unwrap();
    assert_eq!(balance(&conn, &alice), 60);
}

#[test]
fn a_withdrawal_debits_and_never_below_zero() {
    // Insufficient funds carries the numbers with their scale and writes nothing.
    let (conn, alice, _) = ledger();
    deposit(&conn, now(), &alice, &movement("10.50", "d")).unwrap();
    let err = withdraw_now(&conn, now(), &alice, &movement("200", "w")).unwrap_err();
    assert_eq!(
        err,
        AppError::InsufficientFunds {
            available: MinorUnits::new(1050).at_scale(2),
            required: MinorUnits::new(20_000).at_scale(2),
        }
    );
    assert_eq!(entries_count(&conn), 1);
    // All of it is fine: the balance may reach zero exactly.
    let out = withdraw_now(&conn, now(), &alice, &movement("10.50", "w")).unwrap();
    assert_eq!(out.value.balance_after, MinorUnits::ZERO);
    let replay = withdraw_now(&conn, now(), &alice, &movement("10.50", "w")).unwrap();
    assert!(replay.replayed);
    assert_eq!(balance(&conn, &alice), 0);
}

#[test]
fn a_transfer_moves_money_in_two_adjacent_entries() {
    // Out from the sender, in to the recipient, next to each other, with one transfer id; a
    // replay returns both halves.
    let (conn, alice, bob) = ledger();
    deposit(&conn, now(), &alice, &movement("5.00", "d")).unwrap();
    let req = TransferRequest {
        to: Recipient::Username("BOB".into()),
        movement: movement("3.25", "t"),
    };
    let out = transfer(&conn, now(), (1, &alice), &req).unwrap();
    let t = &out.value;
    assert!(!out.replayed);
    assert_eq!(t.transfer_in.seq, t.transfer_out.seq + 1);
    assert_eq!(t.transfer_in.transfer_id, t.transfer_out.transfer_id);
    assert_eq!(t.transfer_out.counterparty_user_id, Some(2));
    assert_eq!(t.transfer_in.counterparty_user_id, Some(1));
    assert_eq!((balance(&conn, &alice), balance(&conn, &bob)), (175, 325));
    let replay = transfer(&conn, now(), (1, &alice), &req).unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.value.transfer_in, t.transfer_in);
    // Too much, to oneself, to nobody: refused, and nothing moves.
    let too_much = TransferRequest {
        to: Recipient::UserId(2),
        movement: movement("1.76", "t2"),
    };
    assert!(matches!(
        transfer(&conn, now(), (1, &alice), &too_much),
        Err(AppError::InsufficientFunds { .. })
    ));
    for to in [Recipient::UserId(1), Recipient::UserId(3)] {
        let req = TransferRequest {
            to,
            movement: movement("1", "t3"),
        };
        assert!(matches!(
            transfer(&conn, now(), (1, &alice), &req),
            Err(AppError::Validation(_))
        ));
    }
    assert_eq!((balance(&conn, &alice), balance(&conn, &bob)), (175, 325));
}

#[test]
fn a_balance_never_passes_the_largest_i64() {
    // A credit that would overflow the balance is a validation error, not a wrapped balance.
    let (conn, alice, _) = ledger();
    conn.execute(
        "INSERT INTO balances (wallet_key, currency, balance, last_balance_update)
         VALUES (1, 'USD', ?1, '2026-01-01T00:00:00.000000Z')",
        [i64::MAX - 5],
    )
    .unwrap();
    let err = deposit(&conn, now(), &alice, &movement("0.06", "d")).unwrap_err();
    assert_eq!(
        err,
        AppError::field(
            "amount",
            "the balance would exceed the largest amount this ledger can hold"
        )
    );
    let out = deposit(&conn, now(), &alice, &movement("0.05", "d")).unwrap();
    assert_eq!(out.value.balance_after, MinorUnits::MAX);
}

#[test]
fn entries_chain_their_hashes() {
    // Each entry's hash covers its predecessor's: the first from genesis, a transfer's second
    // half from the first (given as the chain head, not read back).
    let (conn, alice, _) = ledger();
    deposit(&conn, now(), &alice, &movement("5", "d")).unwrap();
    let req = TransferRequest {
        to: Recipient::UserId(2),
        movement: movement("1", "t"),
    };
    transfer(&conn, now(), (1, &alice), &req).unwrap();
    let mut prev = entries::GENESIS_HASH;
    let sql: &dyn crate::store::Sql = &conn;
    for seq in 1..=3i64 {
        let r = sql
            .query_one(
                &format!(
                    "SELECT {}, e.hash FROM {} WHERE e.seq = ?1",
                    entries::ENTRY_COLUMNS,
                    entries::ENTRY_FROM
                ),
                &[&seq],
            )
            .unwrap();
        let e = entries::entry_from_row(&r).unwrap();
        let stored: Vec<u8> = r.get(entries::ENTRY_COLUMNS_COUNT).unwrap();
        // A ledger created with currencies has them in the chain from its first entry.
        assert_eq!(
            entries::entry_hash(&prev, &e, 1)[..],
            stored[..],
            "seq {seq}"
        );
        prev.copy_from_slice(&stored);
    }
}

#[test]
fn a_scheduled_withdrawal_moves_only_along_its_state_machine() {
    // Cancelled while pending; taken, then failed by staff with its refund; failed at its time
    // when the balance is short. Each final status refuses a further change.
    use crate::domain::{PayoutResolution, WithdrawalStatus as S};
    let (conn, alice, _) = ledger();
    deposit(&conn, now(), &alice, &movement("5.00", "d")).unwrap();
    let (at, latest, later) = (
        now().plus_millis(3_600_000),
        now().plus_millis(86_400_000),
        now().plus_millis(3_600_001),
    );
    let schedule = |reference: &str, amount: &str| {
        let m = movement(amount, reference);
        withdrawals::schedule(&conn, now(), &alice, &m, at, latest)
            .unwrap()
            .value
    };
    let w1 = schedule("w1", "3.00");
    assert_eq!(w1.status, S::Pending);
    let cancelled = withdrawals::cancel(&conn, now(), &alice.id, &w1.id).unwrap();
    assert_eq!(cancelled.status, S::Cancelled);
    assert!(matches!(
        withdrawals::cancel(&conn, now(), &alice.id, &w1.id),
        Err(AppError::Conflict(_))
    ));

    let w2 = schedule("w2", "3.00");
    let taken = withdrawals::begin(&conn, later, &usds(), &w2.id, false).unwrap();
    assert_eq!(taken.status, S::Processing);
    assert_eq!(balance(&conn, &alice), 200);
    let failed =
        withdrawals::resolve(&conn, later, &usds(), &taken, PayoutResolution::Failed).unwrap();
    assert_eq!(failed.status, S::Failed);
    assert!(failed.refund_transaction_id.is_some());
    assert_eq!(balance(&conn, &alice), 500);
    assert!(matches!(
        withdrawals::resolve(&conn, later, &usds(), &failed, PayoutResolution::Succeeded),
        Err(AppError::Conflict(_))
    ));

    let w3 = schedule("w3", "6.00");
    let short = withdrawals::begin(&conn, later, &usds(), &w3.id, false).unwrap();
    assert_eq!(short.status, S::Failed);
    assert_eq!(
        short.error_message.as_deref(),
        Some("insufficient funds at the scheduled time: available 5.00, required 6.00")
    );
    assert_eq!(balance(&conn, &alice), 500);
}
