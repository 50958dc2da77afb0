//! One admin request to its handler: the one entry every admin door calls.
use crate::admin::ops::shared::By;
use crate::admin::ops::{audit, bulk, ca, credentials, groups, hosts, imports, requests, sessions, status, users};
use crate::core::service::Core;
use crate::store::model::AuditQuery;
use common::proto::{AdminRequest as R, AdminResponse};

pub async fn handle(req: R, by: &By, core: &Core) -> AdminResponse {
    match req {
        R::UserEnable { user, method, email } => users::enable(core, by, user, method, email).await,
        R::UserEnableMany { users, source } => bulk::enable_many(core, by, users, source).await,
        R::UserDisable { user } => users::disable(core, by, user).await,
        R::GroupRefresh => groups::refresh(core).await,
        R::UserReset { user } => users::reset(core, by, user).await,
        R::UserShow { user } => users::show(core, user).await,
        R::UserList { search, after, limit } => users::list(core, search, after, limit).await,
        R::UserUnlock { user } => users::unlock(core, by, user).await,
        R::UserResync { user, code1, code2 } => credentials::resync(core, by, user, code1, code2).await,
        R::ImportOath { content, dry_run } => imports::oath(core, by, content, dry_run).await,
        R::Audit { user, host, since, limit, result, until, before_id } => {
            let q = AuditQuery { user, machine: host, result, since, until, before_id, limit: 0 };
            audit::audit(core, q, limit).await
        }
        R::Status => status::status(core).await,
        R::UserRecoveryCodes { user } => credentials::recovery_codes(core, by, user).await,
        R::ImportTotp { accounts, dry_run } => imports::google_authenticator(core, by, accounts, dry_run).await,
        R::UserPasswd { user, password } => credentials::passwd(core, by, user, password).await,
        R::RequestList { all } => requests::list(core, all).await,
        R::RequestApprove { id } => requests::approve(core, by, id).await,
        R::RequestDeny { id } => requests::deny(core, by, id).await,
        R::Sessions { limit } => sessions::sessions(core, limit).await,
        R::HostAdd { name, admin } => hosts::add(core, by, name, admin).await,
        R::HostList => hosts::list(core).await,
        R::HostRevoke { name } => hosts::revoke(core, by, name).await,
        R::CaStatus => ca::status(core).await,
        R::CaRotate => ca::rotate(core, by).await,
        R::CaRetire { force } => ca::retire(core, by, force).await,
        // Answered by the fleet link itself, for the credentials it was made with.
        R::CaCheck { .. } | R::Renew { .. } => AdminResponse::Error {
            kind: common::proto::AdminErrorKind::InvalidInput,
            message: "only remote otpctl asks this, over a fleet link".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::ops::shared::fixture::*;
    use common::proto::{AdminErrorKind, Method, RequestStatus};

    /// Every kind of request, in turn, gets its own handler's answer.
    #[tokio::test]
    async fn each_request_reaches_its_handler() {
        let core = server();
        let by = By::Remote("adm1".into());
        let ask = |r: R| handle(r, &by, &core);
        let user = || "ut-ada".to_string();
        let enable = R::UserEnable { user: user(), method: Method::Totp, email: None };
        assert!(matches!(ask(enable).await, AdminResponse::Enrolled { user, .. } if user.name == "ut-ada"));
        assert!(matches!(ask(R::UserReset { user: user() }).await, AdminResponse::Enrolled { .. }));
        assert!(matches!(ask(R::UserUnlock { user: user() }).await,
            AdminResponse::User { user } if user.recovery_codes_left.is_none()));
        assert!(matches!(ask(R::UserShow { user: user() }).await,
            AdminResponse::User { user } if user.recovery_codes_left == Some(0)));
        assert!(matches!(ask(R::UserRecoveryCodes { user: user() }).await, AdminResponse::RecoveryCodes { .. }));
        let passwd = R::UserPasswd { user: user(), password: "twelve chars".into() };
        assert_eq!(done(ask(passwd).await), "password for ut-ada's internal account set");
        let resync = R::UserResync { user: user(), code1: "000000".into(), code2: "000001".into() };
        assert!(refusal(ask(resync).await).1.starts_with("ut-ada uses totp codes; resync is for HOTP tokens"));
        assert!(
            matches!(ask(R::UserList { search: None, after: None, limit: None }).await, AdminResponse::Users { users } if users.len() == 1)
        );
        assert!(matches!(ask(R::UserDisable { user: user() }).await, AdminResponse::User { user } if !user.enabled));
        let many = R::UserEnableMany { users: Vec::new(), source: "file f".into() };
        assert_eq!(refusal(ask(many).await).1, "no users given: nothing to enable");
        assert_eq!(refusal(ask(R::GroupRefresh).await).0, AdminErrorKind::InvalidInput);
        let oath = R::ImportOath { content: String::new(), dry_run: true };
        assert_eq!(done(ask(oath).await), "0 imported, 0 unchanged, 0 skipped (dry run: nothing was changed)");
        let totp = R::ImportTotp { accounts: Vec::new(), dry_run: true };
        assert!(matches!(ask(totp).await, AdminResponse::Imported { results } if results.is_empty()));
        let audit = R::Audit {
            user: Some(user()),
            host: None,
            since: None,
            limit: Some(1),
            result: None,
            until: None,
            before_id: None,
        };
        let AdminResponse::Audit { entries } = ask(audit).await else { panic!("expected Audit") };
        assert_eq!(
            (entries[0].result.as_str(), entries[0].reason.as_str()),
            ("disable", "by admin credentials adm1 (remote)")
        );
        assert!(
            matches!(ask(R::Status).await, AdminResponse::Status { status } if status.role == common::proto::Role::Server)
        );
        for _ in 0..2 {
            let r = crate::store::model::EmergencyRequest {
                id: 0,
                user: user(),
                machine: "local".into(),
                address: "ada@example.org".into(),
                reason: String::new(),
                origin: String::new(),
                created_at: T0,
                status: RequestStatus::Pending,
                decided_at: None,
                decided_by: None,
            };
            on_db(&core, move |st| st.insert_request(&r)).await;
        }
        assert!(matches!(ask(R::RequestList { all: false }).await, AdminResponse::Requests { total: Some(2), .. }));
        assert!(done(ask(R::RequestApprove { id: 1 }).await).starts_with("request #1 approved"));
        assert_eq!(done(ask(R::RequestDeny { id: 2 }).await), "request #2 denied; nothing was sent");
        assert!(
            matches!(ask(R::Sessions { limit: None }).await, AdminResponse::Sessions { sessions } if sessions.is_empty())
        );
        let add = R::HostAdd { name: "web01".into(), admin: false };
        assert!(matches!(ask(add).await, AdminResponse::HostBundle { name, .. } if name == "web01"));
        assert!(matches!(ask(R::HostList).await, AdminResponse::Hosts { hosts } if hosts.len() == 1));
        let revoke = R::HostRevoke { name: "web01".into() };
        assert_eq!(done(ask(revoke).await), "web01 revoked: every server refuses its certificate from now on");
    }
}
