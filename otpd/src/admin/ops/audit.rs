//! `otpctl audit`: the audit log, newest first, filtered by user, host and
//! time.
use crate::admin::ops::shared::finish;
use crate::core::service::Core;
use crate::store::model::AuditQuery;
use common::proto::AdminResponse;

/// At most `limit` entries (100 unless given, never more than 100,000).
pub async fn audit(core: &Core, mut q: AuditQuery, limit: Option<u32>) -> AdminResponse {
    q.limit = limit.unwrap_or(100).min(100_000);
    let r = core.db.run(move |st| Ok(AdminResponse::Audit { entries: st.audit_page(&q)? })).await;
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
        let all = entries(by(&core, None, None, None, None).await);
        assert_eq!(
            all,
            [
                ("ut-ada".into(), "db02".into(), T0 - 10),
                ("ut-bob".into(), "web01".into(), T0 - 20),
                ("ut-ada".into(), "web01".into(), T0 - 30)
            ]
        );
        let ada = entries(by(&core, Some("ut-ada".into()), None, None, None).await);
        assert_eq!(ada.iter().map(|e| e.2).collect::<Vec<_>>(), [T0 - 10, T0 - 30]);
        let web = entries(by(&core, None, Some("web01".into()), None, None).await);
        assert_eq!(web.iter().map(|e| e.2).collect::<Vec<_>>(), [T0 - 20, T0 - 30]);
        let recent = entries(by(&core, None, None, Some(T0 - 20), None).await);
        assert_eq!(recent.iter().map(|e| e.2).collect::<Vec<_>>(), [T0 - 10, T0 - 20]);
        let both = entries(by(&core, Some("ut-ada".into()), Some("web01".into()), None, None).await);
        assert_eq!(both, [("ut-ada".into(), "web01".into(), T0 - 30)]);
        assert!(entries(by(&core, Some("ut-ghost".into()), None, None, None).await).is_empty());
    }

    /// The filters otpctl has, as the old signature took them.
    async fn by(
        core: &Core,
        user: Option<String>,
        machine: Option<String>,
        since: Option<i64>,
        limit: Option<u32>,
    ) -> AdminResponse {
        audit(core, AuditQuery { user, machine, since, ..Default::default() }, limit).await
    }

    /// The console's filters: result, until, and pages that follow each other.
    #[tokio::test]
    async fn filters_by_result_and_until_and_pages_by_id() {
        let core = core();
        let mut rows: Vec<NewAudit> = (0..7).map(|i| row("ut-ada", "web01", T0 - 100 + i)).collect();
        for r in rows.iter_mut().step_by(2) {
            r.result = crate::store::model::AuditResult::Deny;
        }
        log(&core, rows).await;
        let ask = |q: AuditQuery, limit| {
            let core = &core;
            async move {
                match audit(core, q, Some(limit)).await {
                    AdminResponse::Audit { entries } => entries,
                    other => panic!("expected Audit, got {other:?}"),
                }
            }
        };
        let denied = ask(AuditQuery { result: Some("deny".into()), ..Default::default() }, 100).await;
        assert_eq!(denied.iter().map(|e| e.time - T0).collect::<Vec<_>>(), [-94, -96, -98, -100]);
        let before = ask(AuditQuery { until: Some(T0 - 97), ..Default::default() }, 100).await;
        assert_eq!(before.iter().map(|e| e.time - T0).collect::<Vec<_>>(), [-98, -99, -100]);
        // Three pages of three, each after the last id of the one before.
        let (mut seen, mut before_id) = (Vec::new(), None);
        for _ in 0..3 {
            let page = ask(AuditQuery { before_id, ..Default::default() }, 3).await;
            before_id = page.last().map(|e| e.id);
            seen.extend(page.iter().map(|e| e.time - T0));
        }
        assert_eq!(seen, [-94, -95, -96, -97, -98, -99, -100]);
        // Each filter leads its own statement; their pages follow each other too.
        for q in [
            AuditQuery { user: Some("ut-ada".into()), ..Default::default() },
            AuditQuery { machine: Some("web01".into()), ..Default::default() },
            AuditQuery { result: Some("deny".into()), ..Default::default() },
        ] {
            let (mut seen, mut before_id) = (Vec::new(), None);
            loop {
                let page = ask(AuditQuery { before_id, ..q.clone() }, 2).await;
                let Some(last) = page.last() else { break };
                before_id = Some(last.id);
                seen.extend(page.iter().map(|e| e.time - T0));
            }
            let all = ask(q.clone(), 100).await.iter().map(|e| e.time - T0).collect::<Vec<_>>();
            assert_eq!(seen, all, "{q:?}");
        }
    }

    #[tokio::test]
    async fn answers_100_entries_unless_told_otherwise() {
        let core = core();
        log(&core, (0..120).map(|i| row("ut-ada", "local", T0 - 1000 + i)).collect()).await;
        let default = entries(by(&core, None, None, None, None).await);
        assert_eq!((default.len(), default[0].2), (100, T0 - 1000 + 119));
        assert_eq!(entries(by(&core, None, None, None, Some(2)).await).len(), 2);
        assert_eq!(entries(by(&core, None, None, None, Some(u32::MAX)).await).len(), 120);
    }
}
