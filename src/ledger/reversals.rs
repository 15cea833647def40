//! Staff reversals: a deposit, a paid withdrawal or a transfer undone by new entries that name
//! what they undo (`REVERSAL_OUT` takes money back, `REVERSAL_IN` gives it back). The old
//! entries never change. Each entry is reversed at most once (the unique index
//! `entries_reverses` says so in storage too), never by overdrawing anyone, and never when the
//! reversal would create money: a refund (its withdrawal was never paid), a withdrawal not
//! paid, and a reversal itself are refused.

use super::entries::{self, append, append_after, Entry, NewEntry, WalletRef};
use super::{currency_of, withdrawals, Outcome};
use crate::domain::{
    Currencies, Currency, EntryKind, Metadata, Reference, Timestamp, WithdrawalStatus,
};
use crate::error::AppError;
use crate::store::{lock_for_transaction, Engine, LockClass, Sql};

/// What a reversal wrote: one entry, or two for a transfer (money moved back from the
/// recipient to the sender).
// One value per request, returned and dropped: boxing the larger variant would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Reversal {
    One(Entry),
    Transfer {
        reversal_out: Entry,
        reversal_in: Entry,
    },
}

impl Reversal {
    /// The transaction reversed, as the audit log names it: a transfer by its outgoing half,
    /// whichever half the request named.
    pub fn reversed_id(&self) -> &str {
        let undone = match self {
            Reversal::One(e) => e,
            Reversal::Transfer { reversal_in, .. } => reversal_in,
        };
        undone.reverses.as_deref().unwrap_or_default()
    }

    pub fn entries(&self) -> Vec<&Entry> {
        match self {
            Reversal::One(e) => vec![e],
            Reversal::Transfer {
                reversal_out,
                reversal_in,
            } => vec![reversal_out, reversal_in],
        }
    }
}

/// An entry to undo, with its wallet and that wallet's owner.
struct Target {
    entry: Entry,
    wallet: WalletRef,
    user_id: i64,
}

/// Undoes the entry `id` (either half of a transfer undoes the whole transfer) with
/// `reference`. A second reversal of the same entry replays the first when it has the same
/// reference, and is a conflict otherwise. `staff_user_id` may not be a party to it.
pub fn reverse(
    conn: &dyn Sql,
    now: Timestamp,
    currencies: &Currencies,
    staff_user_id: i64,
    id: &str,
    reference: &Reference,
) -> Result<Outcome<Reversal>, AppError> {
    let original = entries::find_by_id(conn, id)?.ok_or(AppError::NotFound("transaction"))?;
    let Some(_) = original.kind.reversed_by() else {
        return Err(AppError::field(
            "id",
            match original.kind {
                EntryKind::Refund => {
                    "a refund can't be reversed (it gave back a withdrawal that was never paid)"
                }
                _ => "a reversal can't be reversed",
            },
        ));
    };
    // A transfer is undone whole, from its outgoing half (the one the lock and replay use).
    let targets = match original.kind {
        EntryKind::TransferOut => {
            let incoming = entries::find_other_half(conn, &original)?
                .ok_or_else(|| AppError::internal("reversal", "incoming half missing"))?;
            vec![target(conn, original)?, target(conn, incoming)?]
        }
        EntryKind::TransferIn => {
            let outgoing = entries::find_other_half(conn, &original)?
                .ok_or_else(|| AppError::internal("reversal", "outgoing half missing"))?;
            vec![target(conn, outgoing)?, target(conn, original)?]
        }
        _ => vec![target(conn, original)?],
    };
    if let [a, b] = &targets[..] {
        // A transfer's halves move one amount of one currency; anything else was written
        // behind the ledger's back, and reversing it would move two different sums.
        if (a.entry.amount, &a.entry.currency) != (b.entry.amount, &b.entry.currency) {
            return Err(AppError::internal(
                "reversal",
                format!("transfer halves {} and {} differ", a.entry.id, b.entry.id),
            ));
        }
    }
    if targets.iter().any(|t| t.user_id == staff_user_id) {
        // No staff action on one's own wallet, nor on money one sent or received.
        return Err(AppError::Forbidden);
    }
    let first = &targets[0].entry;
    lock_for_transaction(conn, LockClass::Reference, &format!("reverse:{}", first.id))?;
    if let Some(done) = find_reversal(conn, &first.id)? {
        if done.reference != reference.as_str() {
            return Err(AppError::Conflict(format!(
                "transaction {} was reversed already, by transaction {}",
                first.id, done.id
            )));
        }
        return Ok(Outcome::replay(match &targets[..] {
            [_, incoming] => Reversal::Transfer {
                reversal_out: find_reversal(conn, &incoming.entry.id)?
                    .ok_or_else(|| AppError::internal("reversal replay", "half missing"))?,
                reversal_in: done,
            },
            _ => Reversal::One(done),
        }));
    }
    if first.kind == EntryKind::Withdrawal {
        refuse_unpaid_withdrawal(conn, first)?;
    }
    let currency = currency_of(currencies, &first.currency)?;
    let metadata = Metadata::empty();
    let new_entry = |t, counterparty| reversal_of(t, counterparty, currency, reference, &metadata);
    let reversal = match &targets[..] {
        [one] => Reversal::One(append(conn, now, new_entry(one, None)?)?),
        [sender, recipient] => {
            let take_back = new_entry(recipient, Some(sender.user_id))?;
            let give_back = new_entry(sender, Some(recipient.user_id))?;
            let (reversal_out, reversal_in) = match conn.engine() {
                // The debit first: when the recipient can't pay, nothing was written.
                Engine::Sqlite => {
                    let (out, head) = append_after(conn, now, take_back, None)?;
                    (out, append_after(conn, now, give_back, head)?.0)
                }
                // Each append locks its wallet until commit: in key order, as transfers do,
                // so that this and a transfer between the same wallets never wait on each
                // other.
                Engine::Postgres if sender.wallet.key < recipient.wallet.key => {
                    let reversal_in = append(conn, now, give_back)?;
                    (append(conn, now, take_back)?, reversal_in)
                }
                Engine::Postgres => {
                    let reversal_out = append(conn, now, take_back)?;
                    (reversal_out, append(conn, now, give_back)?)
                }
            };
            assert_eq!(reversal_out.amount, reversal_in.amount);
            Reversal::Transfer {
                reversal_out,
                reversal_in,
            }
        }
        _ => return Err(AppError::internal("reversal", "more than two entries")),
    };
    Ok(Outcome::new(reversal))
}

/// The entry that undoes `t.entry`, with `reference`.
fn reversal_of<'a>(
    t: &'a Target,
    counterparty_user_id: Option<i64>,
    currency: &Currency,
    reference: &'a Reference,
    metadata: &'a Metadata,
) -> Result<NewEntry<'a>, AppError> {
    Ok(NewEntry {
        wallet: &t.wallet,
        kind: t
            .entry
            .kind
            .reversed_by()
            .ok_or_else(|| AppError::internal("reversal", "kind"))?,
        amount: currency.money(t.entry.amount),
        currency: &t.entry.currency,
        reference: reference.as_str(),
        counterparty_user_id,
        transfer_id: None,
        metadata,
        reverses: Some(&t.entry.id),
    })
}

fn target(conn: &dyn Sql, entry: Entry) -> Result<Target, AppError> {
    let r = conn
        .query_opt(
            "SELECT key, user_id FROM wallets WHERE id = ?1",
            &[&entry.wallet_id],
        )?
        .ok_or_else(|| AppError::internal("reversal", "entry without a wallet"))?;
    Ok(Target {
        wallet: WalletRef {
            key: r.get(0)?,
            id: entry.wallet_id.clone(),
        },
        user_id: r.get(1)?,
        entry,
    })
}

/// The reversal of the entry `id`, if it has one.
pub fn find_reversal(conn: &dyn Sql, id: &str) -> Result<Option<Entry>, AppError> {
    conn.query_opt(
        concat!(
            "SELECT ",
            entries::entry_columns!(),
            " FROM ",
            entries::entry_from!(),
            " WHERE e.reverses = ?1"
        ),
        &[&id],
    )?
    .map(|r| entries::entry_from_row(&r))
    .transpose()
}

/// A withdrawal entry of a scheduled withdrawal may be reversed only once it is paid
/// (`SUCCEEDED`): reversing one still under way, or failed and refunded, would give the money
/// back twice. An immediate withdrawal has no such row and is final when written.
fn refuse_unpaid_withdrawal(conn: &dyn Sql, entry: &Entry) -> Result<(), AppError> {
    let Some(w) = withdrawals::find_by_reference(conn, &entry.wallet_id, &entry.reference)? else {
        return Ok(());
    };
    if w.transaction_id.as_deref() != Some(entry.id.as_str())
        || w.status == WithdrawalStatus::Succeeded
    {
        return Ok(());
    }
    Err(AppError::field(
        "id",
        format!(
            "withdrawal {} is {}; only a paid (SUCCEEDED) withdrawal can be reversed",
            w.id,
            w.status.as_str()
        ),
    ))
}
