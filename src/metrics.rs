//! Prometheus metrics, kept in memory. Labels are route templates, statuses and entry kinds:
//! never user data.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::ClockReport;
use crate::db::grouped::GroupStats;
use crate::db::WriterStats;
use crate::domain::EntryKind;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS_S.len()],
    count: u64,
    sum_s: f64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    /// Minor units moved, by currency code and entry type (index in `EntryKind::ALL`).
    money_minor: Mutex<BTreeMap<(String, usize), u64>>,
    pub failed_logins: Counter,
    pub snapshot_runs: Counter,
    pub snapshot_mismatches: Counter,
    pub payouts_succeeded: Counter,
    pub payouts_failed: Counter,
    pub payouts_retried: Counter,
    pub payouts_outcome_unknown: Counter,
    pub unavailable: Counter,
    pub panics: Counter,
}

impl Metrics {
    pub fn observe_request(&self, route: &'static str, status: u16, took: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((route, status))
            .or_default() += 1;
        let s = took.as_secs_f64();
        let mut lat = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let h = lat.entry(route).or_default();
        h.count += 1;
        h.sum_s += s;
        if let Some(i) = BUCKETS_S.iter().position(|b| s <= *b) {
            h.buckets[i] += 1;
        }
    }

    pub fn money_moved(&self, currency: &str, kind: EntryKind, minor: i64) {
        let i = EntryKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        let mut money = self.money_minor.lock().unwrap_or_else(|p| p.into_inner());
        match money.get_mut(&(currency.to_string(), i)) {
            Some(total) => *total = total.saturating_add(minor.unsigned_abs()),
            None => {
                // Every type of a currency is shown once it has moved money at all.
                for k in 0..EntryKind::ALL.len() {
                    money.entry((currency.to_string(), k)).or_default();
                }
                money.insert((currency.to_string(), i), minor.unsigned_abs());
            }
        }
    }

    /// The Prometheus text exposition format. `left_for_staff` is the number of withdrawals
    /// whose payout outcome is unknown and whose retry window is over (read from the database
    /// by the caller; None when it could not be read).
    pub fn render(
        &self,
        writer: &WriterStats,
        clock: &ClockReport,
        stamps_ahead_micros: i64,
        (left_for_staff, groups): (Option<i64>, Option<&GroupStats>),
    ) -> String {
        let mut out = String::new();
        self.render_requests(&mut out);
        self.render_latency(&mut out);
        self.render_money(&mut out);
        for (name, help, v) in self.counters(writer) {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        if let Some(n) = left_for_staff {
            let name = "wallet_payouts_outcome_unknown";
            let _ = writeln!(
                out,
                "# HELP {name} Scheduled withdrawals left PROCESSING for staff to resolve: whether they were paid is unknown and their retry window is over.\n# TYPE {name} gauge\n{name} {n}"
            );
        }
        if let Some(g) = groups {
            for (name, help, v) in [
                ("wallet_write_groups_total", "Groups of transfers and deposits committed (PostgreSQL).", &g.groups),
                ("wallet_writes_grouped_total", "Transfers and deposits written by a group.", &g.written),
                ("wallet_writes_handed_back_total", "Transfers and deposits sent to a group and written alone (not the plain case, put off by too many groups, or the group failed).", &g.handed_back),
                ("wallet_writes_put_off_total", "Times a group left a transfer or deposit to the next group because a wallet it needs was busy in another transaction.", &g.put_off),
            ] {
                let v = v.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
                );
            }
        }
        render_storage(&mut out, writer);
        render_clock(&mut out, clock, stamps_ahead_micros);
        out
    }

    /// Requests by route template and status.
    fn render_requests(&self, out: &mut String) {
        out.push_str(
            "# HELP wallet_http_requests_total HTTP requests by route template and status.\n",
        );
        out.push_str("# TYPE wallet_http_requests_total counter\n");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "wallet_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
    }

    /// The latency histogram of each route template.
    fn render_latency(&self, out: &mut String) {
        out.push_str(
            "# HELP wallet_http_request_duration_seconds Request latency by route template.\n",
        );
        out.push_str("# TYPE wallet_http_request_duration_seconds histogram\n");
        for (route, h) in self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let mut cumulative = 0;
            for (b, n) in BUCKETS_S.iter().zip(h.buckets) {
                cumulative += n;
                let _ = writeln!(out, "wallet_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {cumulative}");
            }
            let _ = writeln!(
                out,
                "wallet_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "wallet_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum_s
            );
            let _ = writeln!(
                out,
                "wallet_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
    }

    /// Money moved by currency and entry type (no conversion: each currency's own units).
    fn render_money(&self, out: &mut String) {
        out.push_str(
            "# HELP wallet_money_moved_minor_total Money moved, in minor units of its currency, by currency and entry type.\n",
        );
        out.push_str("# TYPE wallet_money_moved_minor_total counter\n");
        let money = self.money_minor.lock().unwrap_or_else(|p| p.into_inner());
        for ((currency, kind), total) in money.iter() {
            let _ = writeln!(
                out,
                "wallet_money_moved_minor_total{{currency=\"{currency}\",type=\"{}\"}} {total}",
                EntryKind::ALL[*kind].as_str(),
            );
        }
    }

    /// Every plain counter: name, help text, value.
    fn counters(&self, writer: &WriterStats) -> [(&'static str, &'static str, u64); 15] {
        [
            (
                "wallet_failed_logins_total",
                "Logins refused for wrong credentials.",
                self.failed_logins.get(),
            ),
            (
                "wallet_snapshot_runs_total",
                "Balance snapshot runs completed.",
                self.snapshot_runs.get(),
            ),
            (
                "wallet_snapshot_mismatches_total",
                "Wallets whose snapshot disagreed with the running balance.",
                self.snapshot_mismatches.get(),
            ),
            (
                "wallet_payouts_succeeded_total",
                "Scheduled withdrawals paid out.",
                self.payouts_succeeded.get(),
            ),
            (
                "wallet_payouts_failed_total",
                "Scheduled withdrawals failed (and refunded when debited).",
                self.payouts_failed.get(),
            ),
            (
                "wallet_payout_retries_total",
                "Payout attempts that will be retried.",
                self.payouts_retried.get(),
            ),
            (
                "wallet_payouts_outcome_unknown_total",
                "Scheduled withdrawals whose payout attempt ended without saying whether the money left.",
                self.payouts_outcome_unknown.get(),
            ),
            (
                "wallet_unavailable_total",
                "Requests answered 503 (busy database, full queue, full or read-only storage, shutdown).",
                self.unavailable.get(),
            ),
            (
                "wallet_handler_panics_total",
                "Requests whose handler panicked (answered 500).",
                self.panics.get(),
            ),
            (
                "wallet_writer_batches_total",
                "Write transactions committed or attempted by the writer.",
                writer.batches.load(Ordering::Relaxed),
            ),
            (
                "wallet_writer_jobs_total",
                "Write jobs run by the writer.",
                writer.jobs.load(Ordering::Relaxed),
            ),
            (
                "wallet_writer_jobs_rolled_back_total",
                "Write jobs rolled back to their savepoint.",
                writer.jobs_rolled_back.load(Ordering::Relaxed),
            ),
            (
                "wallet_writer_commit_failures_total",
                "Write transactions that failed to commit.",
                writer.commit_failures.load(Ordering::Relaxed),
            ),
            (
                "wallet_writer_queue_full_total",
                "Writes refused because the writer's queue was full.",
                writer.queue_full.load(Ordering::Relaxed),
            ),
            ("wallet_db_busy_total", "Write transactions refused because another process held the database past the busy timeout (503).", writer.busy.load(Ordering::Relaxed)),
        ]
    }
}

/// Writes refused because the storage would not take them, and the fault standing now.
fn render_storage(out: &mut String, writer: &WriterStats) {
    use crate::error::StorageFault;
    let refused = [
        (
            StorageFault::Full,
            writer.refused_full.load(Ordering::Relaxed),
        ),
        (
            StorageFault::ReadOnly,
            writer.refused_read_only.load(Ordering::Relaxed),
        ),
    ];
    out.push_str("# HELP wallet_storage_refused_writes_total Writes refused (503) because the database's disk was full or the database read-only.\n# TYPE wallet_storage_refused_writes_total counter\n");
    for (fault, n) in refused {
        let _ = writeln!(
            out,
            "wallet_storage_refused_writes_total{{reason=\"{}\"}} {n}",
            fault.as_str()
        );
    }
    out.push_str("# HELP wallet_storage_fault 1 while writes are refused for this reason (from the first refused write until one commits again), else 0.\n# TYPE wallet_storage_fault gauge\n");
    for (fault, _) in refused {
        let on = u8::from(writer.storage_fault() == Some(fault));
        let _ = writeln!(
            out,
            "wallet_storage_fault{{reason=\"{}\"}} {on}",
            fault.as_str()
        );
    }
}

/// Whether the wall clock is believed (see `clock::GuardedClock`).
fn render_clock(out: &mut String, clock: &ClockReport, stamps_ahead_micros: i64) {
    let _ = writeln!(
        out,
        "# HELP wallet_clock_wall_ahead_seconds How far the wall clock is ahead of the time reckoned from the monotonic clock while it is not believed (time stamps follow the reckoning); 0 while it is.\n\
         # TYPE wallet_clock_wall_ahead_seconds gauge\nwallet_clock_wall_ahead_seconds {}",
        clock.wall_ahead_micros as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "# HELP wallet_clock_leaps_total Times the wall clock leapt ahead of the reckoning by more than the bound and was not believed.\n\
         # TYPE wallet_clock_leaps_total counter\nwallet_clock_leaps_total {}",
        clock.leaps
    );
    let _ = writeln!(
        out,
        "# HELP wallet_clock_steps_back_total Times the wall clock was set back by more than the bound (time stamps held still until it caught up).\n\
         # TYPE wallet_clock_steps_back_total counter\nwallet_clock_steps_back_total {}",
        clock.steps_back
    );
    let _ = writeln!(
        out,
        "# HELP wallet_clock_stamps_ahead_seconds How far the newest time stamp is ahead of the clock when by more than 5 s (new stamps are held just after it); 0 otherwise.\n\
         # TYPE wallet_clock_stamps_ahead_seconds gauge\nwallet_clock_stamps_ahead_seconds {}",
        stamps_ahead_micros as f64 / 1e6
    );
}
