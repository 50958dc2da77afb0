//! `otpctl host add|list|revoke`: a fleet server's hosts (agents, and
//! admin credentials for remote otpctl).
use crate::admin::ops::shared::{admin_audit, err, finish, By};
use crate::core::service::Core;
use crate::store::model::{HostRecord, HostRole};
use common::proto::{AdminErrorKind, AdminResponse, HostInfo};

/// How long admin credentials (remote otpctl) are valid: they renew
/// themselves when used after two thirds of it (crate::fleet::wire), so an
/// administrator who uses them once in two months never notices.
pub const ADMIN_LIFE: i64 = 90 * 86_400;

/// `host add`: issues credentials, records their fingerprint, and hands the
/// bundle back once (the key is not kept anywhere on the server).
pub async fn add(core: &Core, by: &By, name: String, admin: bool) -> AdminResponse {
    let now = core.clock.now();
    let Some(authority) = core.fleet_ca.clone() else { return not_a_server() };
    // Issued by the newest CA; the bundle trusts every CA (during a
    // rotation, servers still present certificates of the older).
    let cas = authority.get();
    let issuer = cas.issuing(now);
    let life = if admin { ADMIN_LIFE } else { core.host_cert_life };
    let issued = crate::fleet::pki::issue_bundle_at(&issuer.ca, &cas.settled_pem(now), &name, now, life);
    let (bundle, issued) = match issued {
        Ok(b) => b,
        Err(e) => return err(AdminErrorKind::InvalidInput, e.to_string()),
    };
    let record = HostRecord {
        name: name.clone(),
        role: if admin { HostRole::Admin } else { HostRole::Agent },
        fingerprint: issued.fingerprint.to_vec(),
        added_at: now,
        expires_at: Some(issued.not_after),
        ca: Some(issuer.fingerprint.to_vec()),
        ..HostRecord::default()
    };
    let (policy, by) = (core.policy.clone(), by.clone());
    let what = if admin { "admin credentials" } else { "host" };
    let added = core
        .db
        .run(move |st| {
            if !st.add_host(&record)? {
                return Ok(false);
            }
            admin_audit(st, &policy.machine, "-", &format!("add {what} {}", record.name), &by, now)?;
            Ok(true)
        })
        .await;
    match added {
        Ok(true) => AdminResponse::HostBundle { name, bundle: bundle.to_text() },
        Ok(false) => err(
            AdminErrorKind::InvalidInput,
            format!(
                "{name} already has valid credentials; `otpctl host revoke {name}` first to issue new ones \
                 (a host whose certificate expired may be added again as it is)"
            ),
        ),
        Err(e) => err(AdminErrorKind::Internal, format!("the host was not added: {e}")),
    }
}

/// `host list`: every host, revoked ones included.
pub async fn list(core: &Core) -> AdminResponse {
    let now = core.clock.now();
    finish(
        core.db
            .run(move |st| Ok(AdminResponse::Hosts { hosts: st.hosts()?.iter().map(|h| host_info(h, now)).collect() }))
            .await,
    )
}

/// `host revoke`: refused at once by every server of the database.
pub async fn revoke(core: &Core, by: &By, name: String) -> AdminResponse {
    let now = core.clock.now();
    if core.fleet_ca.is_none() {
        return not_a_server();
    }
    let (policy, by) = (core.policy.clone(), by.clone());
    let r = core
        .db
        .run(move |st| {
            if !st.revoke_host(&name, now)? {
                return Ok(err(AdminErrorKind::NotFound, format!("no host {name:?} with valid credentials")));
            }
            admin_audit(st, &policy.machine, "-", &format!("revoke host {name}"), &by, now)?;
            Ok(AdminResponse::Done {
                message: format!("{name} revoked: every server refuses its certificate from now on"),
            })
        })
        .await;
    finish(r)
}

/// A host as `host list` and `status` show it at `now`.
pub(crate) fn host_info(h: &HostRecord, now: i64) -> HostInfo {
    HostInfo {
        expires_at: h.expires_at,
        expired: h.revoked_at.is_none() && h.expires_at.is_some_and(|t| t < now),
        renewed_at: h.renewed_at,
        ca: h.ca.as_deref().map(crate::fleet::pki::fingerprint_hex),
        name: h.name.clone(),
        role: h.role.as_str().into(),
        fingerprint: crate::fleet::pki::fingerprint_hex(&h.fingerprint),
        added_at: h.added_at,
        revoked_at: h.revoked_at,
        last_seen: h.last_seen,
        last_addr: h.last_addr.clone(),
    }
}

fn not_a_server() -> AdminResponse {
    err(AdminErrorKind::InvalidInput, "this otpd is not a fleet server (role = \"server\" in otpd.toml)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::ops::shared::fixture::*;

    const NOT_A_SERVER: &str = "this otpd is not a fleet server (role = \"server\" in otpd.toml)";

    async fn host(core: &Core, name: &str) -> Option<HostRecord> {
        let name = name.to_string();
        on_db(core, move |st| st.host(&name)).await
    }

    fn hosts_of(resp: AdminResponse) -> Vec<HostInfo> {
        match resp {
            AdminResponse::Hosts { hosts } => hosts,
            other => panic!("expected Hosts, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn add_issues_a_bundle_once_and_records_its_fingerprint() {
        let core = server();
        let text = match add(&core, &ROOT, "web01".into(), false).await {
            AdminResponse::HostBundle { name, bundle } => {
                assert_eq!(name, "web01");
                bundle
            }
            other => panic!("expected HostBundle, got {other:?}"),
        };
        // Issued at the server's clock, for the configured life.
        let bundle = crate::fleet::pki::Bundle::parse_at(&text, T0).unwrap();
        assert_eq!(bundle.validity().unwrap(), (T0 - 3600, T0 + core.host_cert_life));
        assert_eq!(
            (bundle.name.as_str(), bundle.ca_pem.as_str()),
            ("web01", core.fleet_ca.as_ref().unwrap().get().settled_pem(T0).as_str())
        );
        let h = host(&core, "web01").await.unwrap();
        assert_eq!((h.role, h.added_at, h.revoked_at, h.fingerprint.len()), (HostRole::Agent, T0, None, 32));
        assert_eq!(h.fingerprint, bundle.fingerprint().unwrap());
        assert_eq!(
            (h.expires_at, h.ca),
            (
                Some(T0 + core.host_cert_life),
                Some(core.fleet_ca.as_ref().unwrap().get().serving().fingerprint.to_vec())
            )
        );
        assert_eq!(one_admin_row(&core, "-").await, ("add host web01".into(), "by uid 0".into()));
        // Admin credentials, for remote otpctl.
        assert!(matches!(add(&core, &ROOT, "adm1".into(), true).await, AdminResponse::HostBundle { .. }));
        assert_eq!(host(&core, "adm1").await.unwrap().role, HostRole::Admin);
        assert_eq!(audit_rows(&core, "-").await[0].result, "add admin credentials adm1");
    }

    #[tokio::test]
    async fn add_refuses_a_second_set_a_bad_name_and_a_standalone_otpd() {
        let core = server();
        add(&core, &ROOT, "web01".into(), false).await;
        let first = host(&core, "web01").await.unwrap();
        let (kind, message) = refusal(add(&core, &ROOT, "web01".into(), true).await);
        assert_eq!(kind, AdminErrorKind::InvalidInput);
        assert!(
            message
                .starts_with("web01 already has valid credentials; `otpctl host revoke web01` first to issue new ones"),
            "{message}"
        );
        assert_eq!(host(&core, "web01").await.unwrap(), first);
        assert_eq!(refusal(add(&core, &ROOT, "bad name".into(), false).await).0, AdminErrorKind::InvalidInput);
        assert!(host(&core, "bad name").await.is_none());
        assert_eq!(all_audit(&core).await.len(), 1);
        let standalone = crate::admin::ops::shared::fixture::core();
        let refused = (AdminErrorKind::InvalidInput, NOT_A_SERVER.to_string());
        assert_eq!(refusal(add(&standalone, &ROOT, "web01".into(), false).await), refused);
        assert!(host(&standalone, "web01").await.is_none());
    }

    #[tokio::test]
    async fn list_shows_every_host_with_its_fingerprint() {
        let core = server();
        assert!(hosts_of(list(&core).await).is_empty());
        add(&core, &ROOT, "web01".into(), false).await;
        add(&core, &ROOT, "adm1".into(), true).await;
        revoke(&core, &ROOT, "web01".into()).await;
        let mut hosts = hosts_of(list(&core).await);
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        let web = host(&core, "web01").await.unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!((hosts[0].name.as_str(), hosts[0].role.as_str(), hosts[0].revoked_at), ("adm1", "admin", None));
        assert_eq!(hosts[1], host_info(&web, T0));
        assert_eq!(
            (hosts[1].role.as_str(), hosts[1].revoked_at, hosts[1].fingerprint.clone()),
            ("agent", Some(T0), crate::fleet::pki::fingerprint_hex(&web.fingerprint))
        );
    }

    #[tokio::test]
    async fn revoke_marks_the_host_revoked_once() {
        let core = server();
        add(&core, &ROOT, "web01".into(), false).await;
        let message = done(revoke(&core, &By::Remote("adm1".into()), "web01".into()).await);
        assert_eq!(message, "web01 revoked: every server refuses its certificate from now on");
        assert_eq!(host(&core, "web01").await.unwrap().revoked_at, Some(T0));
        let rows = audit_rows(&core, "-").await;
        assert_eq!(
            (rows[0].method.as_str(), rows[0].result.as_str(), rows[0].reason.as_str()),
            ("admin", "revoke host web01", "by admin credentials adm1 (remote)")
        );
        let again = (AdminErrorKind::NotFound, "no host \"web01\" with valid credentials".to_string());
        assert_eq!(refusal(revoke(&core, &ROOT, "web01".into()).await), again);
        let unknown = (AdminErrorKind::NotFound, "no host \"db02\" with valid credentials".to_string());
        assert_eq!(refusal(revoke(&core, &ROOT, "db02".into()).await), unknown);
        assert_eq!(audit_rows(&core, "-").await.len(), 2);
        // A revoked host may be issued new credentials.
        assert!(matches!(add(&core, &ROOT, "web01".into(), false).await, AdminResponse::HostBundle { .. }));
    }

    #[tokio::test]
    async fn revoke_on_a_standalone_otpd_is_refused() {
        let core = crate::admin::ops::shared::fixture::core();
        let refused = (AdminErrorKind::InvalidInput, NOT_A_SERVER.to_string());
        assert_eq!(refusal(revoke(&core, &ROOT, "web01".into()).await), refused);
        assert!(all_audit(&core).await.is_empty());
    }
}
