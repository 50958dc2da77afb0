//! Housekeeping that keeps the database bounded: audit rows older than
//! `[audit] retention` are deleted when the daemon starts and every hour,
//! and counted refusals (see [`crate::limits`]) are written out.
use crate::server::Shared;
use std::sync::Arc;
use std::time::Duration;

/// Rows deleted per transaction: a first prune of a large table must not
/// hold the writer (and every login behind it) for long.
const BATCH: u32 = 5000;

/// Deletes audit rows older than `retention`; returns how many.
pub async fn prune_audit(sh: &Shared, retention: Duration) -> u64 {
    let before = sh.clock.now().saturating_sub(retention.as_secs() as i64);
    let mut total = 0;
    loop {
        match sh.db.run(move |st| st.prune_audit(before, BATCH)).await {
            Ok(n) => {
                total += n;
                if n < u64::from(BATCH) {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!("pruning old audit rows failed: {e}");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(
            "deleted {total} audit row(s) older than the retention ({})",
            humantime::format_duration(retention)
        );
    }
    total
}

/// Runs for the daemon's life.
pub async fn run(sh: Arc<Shared>, retention: Duration) {
    prune_audit(&sh, retention).await;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        crate::limits::flush(&sh, false).await;
        if last_prune.elapsed() >= Duration::from_secs(3600) {
            last_prune = tokio::time::Instant::now();
            prune_audit(&sh, retention).await;
        }
    }
}
