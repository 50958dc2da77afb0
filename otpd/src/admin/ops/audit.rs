//! `otpctl audit`: the audit log, newest first, filtered by user, host and
//! time.
use crate::admin::ops::shared::finish;
use crate::core::service::Core;
use common::proto::AdminResponse;

/// At most `limit` entries (100 unless given, never more than 100,000).
pub async fn audit(
    core: &Core,
    user: Option<String>,
    host: Option<String>,
    since: Option<i64>,
    limit: Option<u32>,
) -> AdminResponse {
    let limit = limit.unwrap_or(100).min(100_000);
    let r = core
        .db
        .run(move |st| Ok(AdminResponse::Audit { entries: st.audit(user.as_deref(), host.as_deref(), since, limit)? }))
        .await;
    finish(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::ops::shared::fixture::*;
    use crate::store::model::NewAudit;

    fn entries(resp: AdminResponse) -> Vec<(String, String, i64)> {
        match resp {
            AdminResponse::Audit { entries } => entries.into_iter().map(|e| (e.user, e.machine, e.time)).collect(),
            other => panic!("expected Audit, got {other:?}"),
        }
    }

    fn row(user: &str, machine: &str, time: i64) -> NewAudit {
        NewAudit {
            time,
            user: user.into(),
            service: "sshd".into(),
            machine: machine.into(),
            method: crate::store::model::AuditMethod::Totp,
            result: crate::store::model::AuditResult::Accept,
            ..Default::default()
        }
    }

    async fn log(core: &Core, rows: Vec<NewAudit>) {
        on_db(core, move |st| rows.iter().try_for_each(|r| st.add_audit(r))).await
    }

    #[tokio::test]
    async fn filters_by_user_host_and_time_newest_first() {
        let core = core();
        log(
            &core,
            vec![row("ut-ada", "web01", T0 - 30), row("ut-bob", "web01", T0 - 20), row("ut-ada", "db02", T0 - 10)],
        )
        .await;
        let all = entries(audit(&core, None, None, None, None).await);
        assert_eq!(
            all,
            [
                ("ut-ada".into(), "db02".into(), T0 - 10),
                ("ut-bob".into(), "web01".into(), T0 - 20),
                ("ut-ada".into(), "web01".into(), T0 - 30)
            ]
        );
        let ada = entries(audit(&core, Some("ut-ada".into()), None, None, None).await);
        assert_eq!(ada.iter().map(|e| e.2).collect::<Vec<_>>(), [T0 - 10, T0 - 30]);
        let web = entries(audit(&core, None, Some("web01".into()), None, None).await);
        assert_eq!(web.iter().map(|e| e.2).collect::<Vec<_>>(), [T0 - 20, T0 - 30]);
        let recent = entries(audit(&core, None, None, Some(T0 - 20), None).await);
        assert_eq!(recent.iter().map(|e| e.2).collect::<Vec<_>>(), [T0 - 10, T0 - 20]);
        let both = entries(audit(&core, Some("ut-ada".into()), Some("web01".into()), None, None).await);
        assert_eq!(both, [("ut-ada".into(), "web01".into(), T0 - 30)]);
        assert!(entries(audit(&core, Some("ut-ghost".into()), None, None, None).await).is_empty());
    }

    #[tokio::test]
    async fn answers_100_entries_unless_told_otherwise() {
        let core = core();
        log(&core, (0..120).map(|i| row("ut-ada", "local", T0 - 1000 + i)).collect()).await;
        let default = entries(audit(&core, None, None, None, None).await);
        assert_eq!((default.len(), default[0].2), (100, T0 - 1000 + 119));
        assert_eq!(entries(audit(&core, None, None, None, Some(2)).await).len(), 2);
        assert_eq!(entries(audit(&core, None, None, None, Some(u32::MAX)).await).len(), 120);
    }
}
