//! Refused attempts written to the audit: counted per caller, one row (and
//! log line) per caller and interval (see [`crate::core::limits`]).
use crate::core::limits::{CallerLimits, Refusal, Report};
use crate::core::service::Core;
use crate::store::model::{AuditMethod, AuditResult};

/// Writes a report: one audit row (and its log line) for many refusals.
/// The user column names the caller as `uid:N` (no NSS lookup in the
/// request path; a user name cannot contain ':').
pub async fn record(core: &Core, machine: &str, report: Report) {
    let policy = core.policy.clone();
    let now = core.clock.now();
    let ctx = crate::core::context::LoginContext {
        user: format!("uid:{}", report.caller),
        service: "-".into(),
        peer_uid: report.caller,
        machine: machine.to_string(),
        ..Default::default()
    };
    let reason = report.reason();
    let r = core
        .db
        .run(move |st| {
            crate::core::audit::audit_method(st, &policy, &ctx, now, AuditMethod::Limit, AuditResult::Refused, &reason)
        })
        .await;
    if let Err(e) = r {
        tracing::warn!("recording refused attempts failed: {e}");
    }
}

/// Counts a refusal, and writes it if it is the first of its interval.
pub async fn refuse(core: &Core, limits: &CallerLimits, caller: u32, why: Refusal) {
    if let Some(report) = limits.refusals.note(caller, why, core.clock.now()) {
        record(core, &limits.machine, report).await;
    }
}

/// Writes the counts whose interval is over, every few seconds; all of
/// them when `all` (shutdown).
pub async fn flush(core: &Core, all: bool) {
    for limits in core.callers.all() {
        for report in limits.refusals.due(core.clock.now(), all) {
            record(core, &limits.machine, report).await;
        }
    }
}
