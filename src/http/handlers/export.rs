//! CSV exports of a history: the caller's, and (for staff, audited) any user's. RFC 4180 (CRLF
//! line ends, quoted cells where needed), header row first, every matching row, streamed a
//! page at a time in constant memory. A cell that a spreadsheet would run as a formula (one
//! that begins with `=`, `+`, `-`, `@`, a tab or a carriage return) is written with a leading
//! `'`.

use std::io::Read;

use super::{money, Params};
use crate::accounts::AuthUser;
use crate::domain::Currencies;
use crate::error::AppError;
use crate::http::request::Incoming;
use crate::http::response::Reply;
use crate::http::router::StaffUser;
use crate::ledger::Entry;
use crate::service::{HistoryPages, Service};

pub const CSV_HEADER: &str =
    "id,type,amount,currency,balance_after,reference,counterparty_user_id,created_at,metadata\r\n";

/// `GET /api/wallets/me/transactions.csv`: the caller's history, with the list's filters.
pub fn mine(svc: &Service, rq: &Incoming, _: &Params, user: &AuthUser) -> Result<Reply, AppError> {
    let mut errors = crate::error::FieldErrors::default();
    let q = super::wallet::history_filters(svc, rq, &mut errors);
    errors.into_result()?;
    csv_reply(svc, svc.history_pages(&user.wallet, &q))
}

/// `GET /api/admin/users/{id}/transactions.csv`: any user's, for staff; the export is in the
/// audit log.
pub fn user(
    svc: &Service,
    rq: &Incoming,
    params: &Params,
    staff: &StaffUser,
) -> Result<Reply, AppError> {
    let user_id = super::path_user_id(params)?;
    let mut errors = crate::error::FieldErrors::default();
    let q = super::wallet::history_filters(svc, rq, &mut errors);
    errors.into_result()?;
    let (w, _) = svc.wallet(user_id)?;
    svc.audit_read(staff, "export_transactions", format!("user:{user_id}"))?;
    csv_reply(svc, svc.history_pages(&w.wallet_ref(), &q))
}

/// The reply: its first page read now (a database that can't be read is an error reply, not
/// a broken stream), the rest as the client reads. The console's exports are this reply too.
pub fn csv_reply(svc: &Service, mut pages: HistoryPages) -> Result<Reply, AppError> {
    let first = pages.next().transpose()?.unwrap_or_default();
    let mut text = String::from(CSV_HEADER);
    rows(&mut text, &first, &svc.config.currencies);
    let reader = CsvReader {
        pages,
        currencies: svc.config.currencies.clone(),
        buffer: text.into_bytes(),
        at: 0,
    };
    Ok(
        Reply::stream("text/csv; charset=utf-8", Box::new(reader)).header(
            "Content-Disposition",
            "attachment; filename=\"transactions.csv\"",
        ),
    )
}

/// Writes each entry as a CSV row.
pub fn rows(out: &mut String, entries: &[Entry], currencies: &Currencies) {
    for e in entries {
        let cells = [
            e.id.clone(),
            e.kind.as_str().to_string(),
            money(currencies, &e.currency, e.amount),
            e.currency.clone(),
            money(currencies, &e.currency, e.balance_after),
            e.reference.clone(),
            e.counterparty_user_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            e.created_at.to_text(),
            e.metadata.as_str().to_string(),
        ];
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            cell(out, c);
        }
        out.push_str("\r\n");
    }
}

/// One cell: defused if a spreadsheet would read it as a formula, quoted if it holds a comma,
/// a quote or a line break (quotes doubled).
pub fn cell(out: &mut String, value: &str) {
    let formula = value.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quoted = value.contains([',', '"', '\r', '\n']);
    if quoted {
        out.push('"');
    }
    if formula {
        out.push('\'');
    }
    for ch in value.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    if quoted {
        out.push('"');
    }
}

/// Reads out the CSV, fetching the next page when the last one is sent.
struct CsvReader {
    pages: HistoryPages,
    currencies: Currencies,
    buffer: Vec<u8>,
    at: usize,
}

impl Read for CsvReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buffer.len() {
            match self.pages.next() {
                None => return Ok(0),
                Some(Err(e)) => {
                    // The response is under way: ending it without its last chunk tells the
                    // client it is incomplete.
                    crate::log::error(&format!("csv export: {e:?}"));
                    return Err(std::io::Error::other("the export could not be read"));
                }
                Some(Ok(entries)) => {
                    let mut text = String::new();
                    rows(&mut text, &entries, &self.currencies);
                    self.buffer = text.into_bytes();
                    self.at = 0;
                }
            }
        }
        let n = out.len().min(self.buffer.len() - self.at);
        out[..n].copy_from_slice(&self.buffer[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::cell;

    fn one(v: &str) -> String {
        let mut s = String::new();
        cell(&mut s, v);
        s
    }

    #[test]
    fn cells_are_quoted_by_rfc_4180_and_formulas_defused() {
        assert_eq!(one("plain"), "plain");
        assert_eq!(one("a,b"), "\"a,b\"");
        assert_eq!(one("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(one("two\r\nlines"), "\"two\r\nlines\"");
        for formula in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert!(
                one(formula).trim_start_matches('"').starts_with('\''),
                "{formula}"
            );
        }
        assert_eq!(
            one("=HYPERLINK(\"x\",\"y\")"),
            "\"'=HYPERLINK(\"\"x\"\",\"\"y\"\")\""
        );
        assert_eq!(one("12.50"), "12.50");
        assert_eq!(one(""), "");
    }
}
