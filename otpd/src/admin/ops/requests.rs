//! `otpctl request list|approve|deny`: emergency requests (a user without
//! their token asks for a code by email; an admin decides).
use crate::admin::ops::shared::{admin_audit, err, finish, By};
use crate::core::email::RequestOutcome;
use crate::core::service::Core;
use crate::store::model::RequestCount;
use common::proto::{AdminErrorKind, AdminResponse, RequestStatus};

/// `request list`: the pending requests (`all`: every request), with how
/// many there are in all.
pub async fn list(core: &Core, all: bool) -> AdminResponse {
    let r = core
        .db
        .run(move |st| {
            let total = st.count_requests(RequestCount::All { pending_only: !all })?;
            Ok(AdminResponse::Requests { requests: st.requests(!all)?, total: Some(total) })
        })
        .await;
    finish(r)
}

/// `request approve`: the request decided, and a code sent to its address
/// for the host that asked.
pub async fn approve(core: &Core, by: &By, id: i64) -> AdminResponse {
    decide(core, by, id, true).await
}

/// `request deny`: the request decided; nothing is sent.
pub async fn deny(core: &Core, by: &By, id: i64) -> AdminResponse {
    decide(core, by, id, false).await
}

/// A pending request approved or denied, in one job; the mail sender woken
/// when a code was queued.
async fn decide(core: &Core, by: &By, id: i64, approve: bool) -> AdminResponse {
    let now = core.clock.now();
    let (policy, by) = (core.policy.clone(), by.clone());
    let r = core
        .db
        .run(move |st| {
            let Some(r) = st.request(id)? else {
                return Ok((err(AdminErrorKind::NotFound, format!("no emergency request #{id}")), false));
            };
            if r.status != RequestStatus::Pending {
                return Ok((
                    err(AdminErrorKind::InvalidInput, format!("request #{id} is already {}", r.status)),
                    false,
                ));
            }
            let ctx = crate::core::context::LoginContext {
                user: r.user.clone(),
                service: "emergency-approval".into(),
                // The code works on the host that asked for it.
                machine: r.machine.clone(),
                ..Default::default()
            };
            if !approve {
                st.decide_request(id, RequestStatus::Denied, by.uid(), now)?;
                admin_audit(st, &policy.machine, &r.user, &format!("deny emergency request #{id}"), &by, now)?;
                return Ok((AdminResponse::Done { message: format!("request #{id} denied; nothing was sent") }, false));
            }
            st.decide_request(id, RequestStatus::Approved, by.uid(), now)?;
            admin_audit(st, &policy.machine, &r.user, &format!("approve emergency request #{id}"), &by, now)?;
            let outcome = crate::core::email::request_code(st, &policy, &ctx, &r.address, true, now)?;
            let queued = matches!(outcome, RequestOutcome::Queued { .. });
            let message = match outcome {
                RequestOutcome::Queued { masked, .. } => format!("request #{id} approved; a code was sent to {masked}"),
                other => format!("request #{id} approved, but no code could be sent now: {other:?}"),
            };
            Ok((AdminResponse::Done { message }, queued))
        })
        .await;
    finish(r.map(|(resp, queued)| {
        if queued {
            core.mail_wakeup.notify_one();
        }
        resp
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::ops::shared::fixture::*;
    use crate::store::model::EmergencyRequest;
    use std::sync::Arc;
    use std::time::Duration;

    async fn ask(core: &Core, user: &str, status: RequestStatus) -> i64 {
        let r = EmergencyRequest {
            id: 0,
            user: user.into(),
            machine: "web01".into(),
            address: format!("{user}@example.org"),
            reason: "lost my phone".into(),
            origin: "service sshd from 192.0.2.7".into(),
            created_at: T0 - 60,
            status,
            decided_at: None,
            decided_by: None,
        };
        on_db(core, move |st| st.insert_request(&r)).await
    }

    async fn request(core: &Core, id: i64) -> EmergencyRequest {
        on_db(core, move |st| st.request(id)).await.unwrap()
    }

    async fn woken(core: &Core) -> bool {
        tokio::time::timeout(Duration::from_millis(50), core.mail_wakeup.notified()).await.is_ok()
    }

    #[tokio::test]
    async fn list_shows_the_pending_requests_or_all_with_the_total() {
        let core = core();
        let pending = ask(&core, "ut-ada", RequestStatus::Pending).await;
        let denied = ask(&core, "ut-bob", RequestStatus::Denied).await;
        let ids = |resp| match resp {
            AdminResponse::Requests { requests, total } => (requests.iter().map(|r| r.id).collect::<Vec<_>>(), total),
            other => panic!("expected Requests, got {other:?}"),
        };
        assert_eq!(ids(list(&core, false).await), (vec![pending], Some(1)));
        assert_eq!(ids(list(&core, true).await), (vec![denied, pending], Some(2)));
    }

    #[tokio::test]
    async fn deny_decides_and_sends_nothing() {
        let core = core();
        let id = ask(&core, "ut-ada", RequestStatus::Pending).await;
        assert_eq!(done(deny(&core, &ROOT, id).await), format!("request #{id} denied; nothing was sent"));
        let r = request(&core, id).await;
        assert_eq!((r.status, r.decided_at, r.decided_by), (RequestStatus::Denied, Some(T0), Some(0)));
        assert_eq!(one_admin_row(&core, "ut-ada").await, (format!("deny emergency request #{id}"), "by uid 0".into()));
        assert_eq!(on_db(&core, |st| st.mail_stats(T0)).await.queued, 0);
        assert!(!woken(&core).await);
    }

    #[tokio::test]
    async fn approve_decides_queues_a_code_for_the_asking_host_and_wakes_the_sender() {
        let core = core();
        let id = ask(&core, "ut-ada", RequestStatus::Pending).await;
        let masked = crate::core::email::mask("ut-ada@example.org");
        let remote = By::Remote("adm1".into());
        let message = done(approve(&core, &remote, id).await);
        assert_eq!(message, format!("request #{id} approved; a code was sent to {masked}"));
        let r = request(&core, id).await;
        assert_eq!((r.status, r.decided_at, r.decided_by), (RequestStatus::Approved, Some(T0), Some(0)));
        let code = on_db(&core, |st| st.latest_email_code("ut-ada", Some("web01"))).await.unwrap();
        assert!(code.emergency && code.address == "ut-ada@example.org" && code.machine == "web01");
        assert_eq!(on_db(&core, |st| st.mail_stats(T0)).await.queued, 1);
        assert!(woken(&core).await);
        // Newest first: the code's own row, then the decision.
        let rows = audit_rows(&core, "ut-ada").await;
        let rows: Vec<_> = rows.iter().map(|e| (e.method.as_str(), e.result.as_str(), e.reason.as_str())).collect();
        assert_eq!(
            rows,
            [
                ("email", "code_sent", format!("emergency code queued to {masked}").as_str()),
                ("admin", format!("approve emergency request #{id}").as_str(), "by admin credentials adm1 (remote)")
            ]
        );
    }

    #[tokio::test]
    async fn approve_when_no_code_can_be_sent_still_decides() {
        let mut parts = parts();
        Arc::get_mut(&mut parts.policy).unwrap().email.global_per_hour = 0;
        let core = Core::new(parts);
        let id = ask(&core, "ut-ada", RequestStatus::Pending).await;
        let message = done(approve(&core, &ROOT, id).await);
        assert_eq!(message, format!("request #{id} approved, but no code could be sent now: Capped"));
        assert_eq!(request(&core, id).await.status, RequestStatus::Approved);
        assert_eq!(on_db(&core, |st| st.mail_stats(T0)).await.queued, 0);
        assert!(!woken(&core).await);
    }

    #[tokio::test]
    async fn only_a_pending_request_is_decided() {
        let core = core();
        assert_eq!(
            refusal(approve(&core, &ROOT, 42).await),
            (AdminErrorKind::NotFound, "no emergency request #42".to_string())
        );
        assert_eq!(
            refusal(deny(&core, &ROOT, 42).await),
            (AdminErrorKind::NotFound, "no emergency request #42".to_string())
        );
        let id = ask(&core, "ut-ada", RequestStatus::Denied).await;
        let already = (AdminErrorKind::InvalidInput, format!("request #{id} is already denied"));
        assert_eq!(refusal(approve(&core, &ROOT, id).await), already);
        assert_eq!(refusal(deny(&core, &ROOT, id).await), already);
        assert_eq!(request(&core, id).await.decided_at, None);
        assert!(all_audit(&core).await.is_empty());
    }
}
