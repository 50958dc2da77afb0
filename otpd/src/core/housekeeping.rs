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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::service::Parts;
    use crate::store::db::Db;
    use crate::store::model::NewAudit;
    use crate::store::sqlite::SqliteStore;

    const T0: i64 = 1_700_000_000;

    #[tokio::test]
    async fn rows_older_than_the_retention_go_in_batches_and_newer_ones_stay() {
        let core = Core::new(Parts::for_tests(Db::start(SqliteStore::in_memory().unwrap()), T0));
        // More than one batch of old rows, and a few within the retention.
        let rows: Vec<NewAudit> = (0..BATCH as i64 + 7)
            .map(|i| NewAudit { time: T0 - 86_400 * 40 + i, user: "old".into(), ..Default::default() })
            .chain((0..3).map(|i| NewAudit { time: T0 - 60 + i, user: "new".into(), ..Default::default() }))
            .collect();
        core.db.run(move |st| rows.iter().try_for_each(|r| st.add_audit(r))).await.unwrap();
        assert_eq!(prune_audit(&core, Duration::from_secs(30 * 86_400)).await, u64::from(BATCH) + 7);
        let left = core.db.run(|st| st.audit(None, None, None, 100)).await.unwrap();
        assert_eq!(left.iter().map(|r| r.user.as_str()).collect::<Vec<_>>(), ["new", "new", "new"]);
        assert_eq!(prune_audit(&core, Duration::from_secs(30 * 86_400)).await, 0, "nothing more to delete");
    }

    #[tokio::test]
    async fn an_enabled_user_without_a_uid_is_linked_to_its_account() {
        let core = Core::new(Parts::for_tests(Db::start(SqliteStore::in_memory().unwrap()), T0));
        let policy = core.policy.clone();
        core.db
            .run(move |st| {
                // root exists on every Linux system; nobody-here-xyz on none.
                for name in ["root", "nobody-here-xyz"] {
                    st.save_user(&crate::core::auth::new_enrollment(&policy, None, name, None, T0))?;
                }
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(link_accounts(&core).await, 1);
        let uids = core.db.run(|st| Ok((st.user("root")?, st.user("nobody-here-xyz")?))).await.unwrap();
        assert_eq!((uids.0.unwrap().uid, uids.1.unwrap().uid), (Some(0), None));
    }
}
