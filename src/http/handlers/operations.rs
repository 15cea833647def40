//! Health, metrics and the API's documents, for operators and tools.

use serde_json::json;

use super::Params;
use crate::error::{AppError, StorageFault};
use crate::http::request::Incoming;
use crate::http::response::Reply;
use crate::service::Service;

pub fn health(svc: &Service, _: &Incoming, _: &Params) -> Result<Reply, AppError> {
    let h = svc.health();
    let mut reasons: Vec<String> = Vec::new();
    if !h.database {
        reasons.push("the database does not answer queries".into());
    }
    match h.storage {
        Some(StorageFault::Full) => reasons.push(
            "the database's disk is full: writes are refused (503) until space is freed; reads work".into(),
        ),
        Some(StorageFault::ReadOnly) => reasons.push(
            "the database has become read-only: writes are refused (503); reads work".into(),
        ),
        None => {}
    }
    let wall_ahead = h.clock.wall_ahead_micros > 0;
    if wall_ahead {
        reasons.push(format!(
            "the wall clock is {:.3} s ahead of the time reckoned from the monotonic clock: time stamps follow \
             the reckoning until it agrees again (if the wall clock is right, restart the server)",
            h.clock.wall_ahead_micros as f64 / 1e6
        ));
    }
    let stamps_ahead = h.stamps_ahead_micros > 0;
    if stamps_ahead {
        reasons.push(format!(
            "the newest time stamp is {:.3} s ahead of the clock (it was set back, or the server started with \
             --accept-future-stamps): new entries are stamped just after it until the clock catches up",
            h.stamps_ahead_micros as f64 / 1e6
        ));
    }
    let unavailable = !h.database || h.storage.is_some();
    let status = match (unavailable, wall_ahead || stamps_ahead) {
        (true, _) => "unavailable",
        (false, true) => "degraded",
        (false, false) => "ok",
    };
    let mut body = json!({
        "status": status,
        "database": if h.database { "ok" } else { "unavailable" },
        "storage": h.storage.map_or("ok", StorageFault::as_str),
        "clock": match (wall_ahead, stamps_ahead) {
            (true, _) => "wall_clock_ahead",
            (false, true) => "wall_clock_behind",
            (false, false) => "ok",
        },
    });
    if !reasons.is_empty() {
        body["reason"] = json!(reasons.join("; "));
    }
    Ok(if unavailable {
        Reply::json(503, body).header("Retry-After", "1")
    } else {
        Reply::json(200, body)
    })
}

pub fn metrics(svc: &Service, _: &Incoming, _: &Params) -> Result<Reply, AppError> {
    // The metrics still render when the database can't answer; that gauge is left out.
    let left_for_staff = svc
        .payouts_outcome_unknown()
        .map_err(|e| crate::log::error(&format!("metrics: cannot count payouts: {e:?}")))
        .ok();
    // A reading of its own, so that the clock gauges are current.
    let stamps_ahead_micros = svc.stamps_ahead_micros(svc.clock.now());
    Ok(Reply::text(
        "text/plain; version=0.0.4; charset=utf-8",
        svc.metrics.render(
            &svc.writer.stats,
            &svc.clock.report(),
            stamps_ahead_micros,
            (left_for_staff, svc.write_groups.as_ref().map(|g| g.stats())),
        ),
    ))
}

pub fn openapi(_: &Service, _: &Incoming, _: &Params) -> Result<Reply, AppError> {
    Ok(Reply::text(
        "application/json",
        crate::http::docs::OPENAPI_JSON.to_string(),
    ))
}

/// The docs page, served with a policy that lets it load nothing but itself and the document.
pub fn docs(_: &Service, _: &Incoming, _: &Params) -> Result<Reply, AppError> {
    use crate::http::docs::{docs_csp, docs_html};
    Ok(
        Reply::text("text/html; charset=utf-8", docs_html().to_string())
            .header("Content-Security-Policy", docs_csp())
            .header("X-Content-Type-Options", "nosniff")
            .header("Referrer-Policy", "no-referrer"),
    )
}

/// Only routed when the server was started with test hooks: proves a panic stays one 500.
pub fn test_panic(_: &Service, _: &Incoming, _: &Params) -> Result<Reply, AppError> {
    panic!("deliberate panic from the test hook");
}
