//! `otpctl sessions`: the sessions opened after an OTP login, newest first.
use crate::admin::ops::shared::finish;
use crate::core::service::Core;
use common::proto::AdminResponse;

/// At most `limit` sessions (100 unless given, never more than 10,000).
pub async fn sessions(core: &Core, limit: Option<u32>) -> AdminResponse {
    let limit = limit.unwrap_or(100).min(10_000);
    finish(core.db.run(move |st| Ok(AdminResponse::Sessions { sessions: st.sessions(limit)? })).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::ops::shared::fixture::*;
    use crate::store::model::SessionRecord;

    fn sessions_of(resp: AdminResponse) -> Vec<SessionRecord> {
        match resp {
            AdminResponse::Sessions { sessions } => sessions,
            other => panic!("expected Sessions, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn lists_the_newest_sessions_first() {
        let core = core();
        assert!(sessions_of(sessions(&core, None).await).is_empty());
        on_db(&core, |st| {
            for (i, user) in ["ut-ada", "ut-bob", "ut-cat"].into_iter().enumerate() {
                st.open_session(&SessionRecord {
                    id: 0,
                    user: user.into(),
                    email: None,
                    machine: "web01".into(),
                    service: "sshd".into(),
                    rhost: Some("192.0.2.7".into()),
                    tty: None,
                    pid: 100 + i as u32,
                    opened_at: T0 - 100 + i as i64,
                    closed_at: None,
                })?;
            }
            Ok(())
        })
        .await;
        let all = sessions_of(sessions(&core, None).await);
        assert_eq!(all.iter().map(|s| s.user.as_str()).collect::<Vec<_>>(), ["ut-cat", "ut-bob", "ut-ada"]);
        assert_eq!((all[0].pid, all[0].opened_at, all[0].machine.as_str()), (102, T0 - 98, "web01"));
        let two = sessions_of(sessions(&core, Some(2)).await);
        assert_eq!(two.iter().map(|s| s.user.as_str()).collect::<Vec<_>>(), ["ut-cat", "ut-bob"]);
        assert!(all_audit(&core).await.is_empty(), "reading writes no audit row");
    }
}
