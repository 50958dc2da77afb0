//! `otpctl status`: the daemon, its database, mail and fleet at a glance.
use crate::admin::ops::hosts::host_info;
use crate::admin::ops::shared::finish;
use crate::core::service::Core;
use crate::store::model::RequestCount;
use common::proto::{AdminResponse, ServerClock, StatusInfo};
use std::sync::atomic::Ordering;

pub async fn status(core: &Core) -> AdminResponse {
    let now = core.clock.now();
    let policy = core.policy.clone();
    let (started_at, database, open) =
        (core.started_at, core.database.clone(), core.gauges.pam_connections.load(Ordering::Relaxed));
    let clock = server_clock(crate::sys::clock::kernel_clock(), crate::sys::clock::timedated_synchronised()).await;
    let role = if core.fleet_ca.is_some() { common::proto::Role::Server } else { common::proto::Role::Standalone };
    let r = core
        .db
        .run(move |st| {
            let c = st.counts(now)?;
            let m = st.mail_stats(now)?;
            let pending = st.count_requests(RequestCount::All { pending_only: true })?;
            let hosts = if role == common::proto::Role::Server {
                st.hosts()?.iter().map(|h| host_info(h, now)).collect()
            } else {
                Vec::new()
            };
            Ok(AdminResponse::Status {
                status: StatusInfo {
                    version: env!("CARGO_PKG_VERSION").into(),
                    pid: std::process::id(),
                    started_at,
                    database,
                    schema_version: st.schema_version()?,
                    users_total: c.users_total,
                    users_enabled: c.users_enabled,
                    users_activated: c.users_activated,
                    users_locked: c.users_locked,
                    audit_entries: c.audit_entries,
                    open_connections: open,
                    mail_enabled: policy.email.enabled,
                    mail_queued: m.queued,
                    mail_failing: m.failing,
                    mail_sent_last_hour: m.sent_last_hour,
                    mail_last_error: m.last_error,
                    requests_pending: pending,
                    role,
                    hosts,
                    clock: Some(clock),
                },
            })
        })
        .await;
    finish(r)
}

/// The kernel's clock state as `status` shows it: adjtimex, or when a
/// system call filter forbids it (the packaged unit's ProtectClock=),
/// systemd-timedated's answer (what timedatectl shows), asked with `ask`.
async fn server_clock<F>(read: std::io::Result<crate::sys::clock::KernelClock>, ask: F) -> ServerClock
where
    F: std::future::Future<Output = Result<bool, String>>,
{
    match read {
        Ok(k) => ServerClock { synchronised: Some(k.synchronised), max_error_us: Some(k.max_error_us), error: None },
        Err(e) => match ask.await {
            Ok(synchronised) => ServerClock { synchronised: Some(synchronised), max_error_us: None, error: None },
            Err(why) => {
                let hint = match e.raw_os_error() {
                    Some(libc::EPERM) => " (forbidden by a system call filter such as the unit's ProtectClock=)",
                    _ => "",
                };
                let error = format!("adjtimex: {e}{hint}; systemd-timedated: {why}");
                ServerClock { synchronised: None, max_error_us: None, error: Some(error) }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// adjtimex refused (the packaged unit): systemd-timedated's answer
    /// counts; neither: both reasons are shown, and nothing is claimed.
    #[tokio::test]
    async fn a_filtered_adjtimex_asks_timedated_and_says_why_when_neither_answers() {
        let eperm = || Err(std::io::Error::from_raw_os_error(libc::EPERM));
        let c = server_clock(eperm(), async { Ok(true) }).await;
        assert_eq!((c.synchronised, c.error), (Some(true), None));
        let c = server_clock(eperm(), async { Ok(false) }).await;
        assert_eq!(c.synchronised, Some(false));
        let c = server_clock(eperm(), async { Err("no system bus".to_string()) }).await;
        assert_eq!(c.synchronised, None);
        let error = c.error.unwrap_or_default();
        assert!(error.contains("ProtectClock=") && error.contains("systemd-timedated: no system bus"), "{error}");
        let read = crate::sys::clock::KernelClock { synchronised: true, max_error_us: 5 };
        let c = server_clock(Ok(read), async { panic!("not asked when adjtimex answers") }).await;
        assert_eq!((c.synchronised, c.max_error_us), (Some(true), Some(5)));
    }
    use crate::admin::ops::shared::fixture::*;

    fn status_of(resp: AdminResponse) -> StatusInfo {
        match resp {
            AdminResponse::Status { status } => status,
            other => panic!("expected Status, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_standalone_otpd_counts_its_users_audit_requests_and_connections() {
        let core = core();
        enrolled_user(&core, "ut-ada", None).await;
        let mut bob = enrolled_user(&core, "ut-bob", None).await;
        bob.admin_locked_at = Some(T0 - 5);
        save(&core, bob).await;
        enrolled_user(&core, "ut-cat", None).await;
        crate::admin::ops::users::disable(&core, &ROOT, "ut-cat".into()).await;
        for status in [common::proto::RequestStatus::Pending, common::proto::RequestStatus::Denied] {
            let r = crate::store::model::EmergencyRequest {
                id: 0,
                user: "ut-ada".into(),
                machine: "local".into(),
                address: "ada@example.org".into(),
                reason: String::new(),
                origin: String::new(),
                created_at: T0,
                status,
                decided_at: None,
                decided_by: None,
            };
            on_db(&core, move |st| st.insert_request(&r)).await;
        }
        core.gauges.pam_connections.store(3, Ordering::Relaxed);
        let s = status_of(status(&core).await);
        let expected = StatusInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started_at: T0,
            database: ":memory:".into(),
            schema_version: s.schema_version,
            users_total: 3,
            users_enabled: 2,
            users_activated: 2,
            users_locked: 1,
            audit_entries: 1,
            open_connections: 3,
            mail_enabled: false,
            mail_queued: 0,
            mail_failing: 0,
            mail_sent_last_hour: 0,
            mail_last_error: None,
            requests_pending: 1,
            role: common::proto::Role::Standalone,
            hosts: Vec::new(),
            // The kernel's error estimate moves between two reads.
            clock: s.clock.clone(),
        };
        assert_eq!(s, expected);
        let read = crate::sys::clock::kernel_clock().ok().map(|k| k.synchronised);
        assert_eq!(s.clock.and_then(|c| c.synchronised), read);
        assert!(s.schema_version > 0);
    }

    #[tokio::test]
    async fn a_server_shows_its_hosts() {
        let core = server();
        crate::admin::ops::hosts::add(&core, &ROOT, "web01".into(), false).await;
        let s = status_of(status(&core).await);
        assert_eq!(s.role, common::proto::Role::Server);
        let web = on_db(&core, |st| st.host("web01")).await.unwrap();
        assert_eq!(s.hosts, [host_info(&web, T0)]);
        assert_eq!(s.audit_entries, 1);
    }
}
