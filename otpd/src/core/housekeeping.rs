//! Housekeeping that keeps the database bounded: audit rows older than
//! `[audit] retention` are deleted when the daemon starts and every hour,
//! and counted refusals (see [`crate::core::limits`]) are written out.
use crate::core::service::Core;
use std::sync::Arc;
use std::time::Duration;

/// Rows deleted per transaction: a first prune of a large table must not
/// hold the writer (and every login behind it) for long.
const BATCH: u32 = 5000;

/// Deletes audit rows older than `retention`; returns how many.
pub async fn prune_audit(sh: &Core, retention: Duration) -> u64 {
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

/// Records the uid of enabled users that have none (enabled before their
/// account existed), so callers other than root, which are matched by uid
/// only, find them. Directory lookups belong to the admin side: this runs
/// at start and hourly, on a blocking thread, never on a login's path.
pub async fn link_accounts(sh: &Core) -> usize {
    let unlinked = sh
        .db
        .run(|st| Ok(st.users()?.into_iter().filter(|u| u.enabled && u.uid.is_none()).map(|u| u.name).collect()))
        .await;
    let names: Vec<String> = match unlinked {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("listing users without a uid failed: {e}");
            return 0;
        }
    };
    if names.is_empty() {
        return 0;
    }
    let found = tokio::task::spawn_blocking(move || {
        names.into_iter().filter_map(|n| crate::core::access::account_uid(&n).map(|uid| (n, uid))).collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let mut linked = 0;
    for (name, uid) in found {
        let r = sh
            .db
            .run(move |st| {
                let Some(mut u) = st.user(&name)? else { return Ok(false) };
                // Another enabled record already is that account: leave both to the admin.
                if u.uid.is_some() || !u.enabled || st.user_by_uid(uid)?.is_some_and(|o| o.enabled) {
                    return Ok(false);
                }
                u.uid = Some(uid);
                st.save_user(&u)?;
                Ok(true)
            })
            .await;
        match r {
            Ok(true) => linked += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!("recording a user's uid failed: {e}"),
        }
    }
    if linked > 0 {
        tracing::info!("recorded the uid of {linked} user(s) enabled before their account existed");
    }
    linked
}

/// `require_group`'s members follow the directory within the hour.
async fn refresh_group(sh: &Core) {
    if let Err(e) = crate::core::groups::refresh(sh).await {
        tracing::warn!("{e}; the members stored before are kept");
    }
}

/// Runs for the daemon's life.
pub async fn run(sh: Arc<Core>, retention: Duration) {
    prune_audit(&sh, retention).await;
    link_accounts(&sh).await;
    refresh_group(&sh).await;
    tracing::debug!("start-up housekeeping done");
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        crate::core::refusals::flush(&sh, false).await;
        if last_prune.elapsed() >= Duration::from_secs(3600) {
            last_prune = tokio::time::Instant::now();
            prune_audit(&sh, retention).await;
            link_accounts(&sh).await;
            refresh_group(&sh).await;
        }
    }
}
