//! `otpctl ca status|rotate|retire`: the fleet's CAs (see
//! [`crate::fleet::authority`]). A rotation adds a CA that every server
//! trusts beside the current one and that issues from then on; hosts move
//! to it at their next renewal (they renew as soon as they learn of it);
//! `ca retire` drops the old one once no host holds its certificates.
use crate::admin::ops::shared::{admin_audit, err, finish, By};
use crate::core::service::Core;
use crate::fleet::authority::{Authority, CaSet};
use crate::fleet::pki;
use crate::store::model::{HostRecord, HostRole, PREV_GRACE};
use common::proto::{AdminErrorKind, AdminResponse, CaInfo};
use std::sync::Arc;

fn not_a_server() -> AdminResponse {
    err(AdminErrorKind::InvalidInput, "this otpd is not a fleet server (role = \"server\" in otpd.toml)")
}

/// The server's CAs as its database has them now.
async fn current(core: &Core) -> Result<(Arc<Authority>, Arc<CaSet>), AdminResponse> {
    let Some(authority) = core.fleet_ca.clone() else { return Err(not_a_server()) };
    if let Err(e) = authority.refresh(&core.db, &core.policy.crypto).await {
        return Err(err(AdminErrorKind::Internal, format!("reading the fleet CAs failed: {e}")));
    }
    let cas = authority.get();
    Ok((authority, cas))
}

/// Hosts whose certificate, valid at `now`, `ca` issued.
fn on_ca<'a>(hosts: &'a [HostRecord], ca: &'a [u8], now: i64) -> impl Iterator<Item = &'a HostRecord> + 'a {
    hosts.iter().filter(move |h| h.valid(now) && h.ca.as_deref() == Some(ca))
}

/// `ca status`.
pub async fn status(core: &Core) -> AdminResponse {
    let (_, cas) = match current(core).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let now = core.clock.now();
    let hosts = match core.db.read(|st| st.hosts()).await {
        Ok(h) => h,
        Err(e) => return finish(Err(e)),
    };
    let issuing = cas.issuing(now).id;
    let infos = cas
        .all()
        .iter()
        .map(|c| {
            let count = |role| on_ca(&hosts, &c.fingerprint, now).filter(|h| h.role == role).count() as u64;
            CaInfo {
                fingerprint: pki::fingerprint_hex(&c.fingerprint),
                added_at: c.added_at,
                not_after: c.ca.not_after(),
                serving: c.id == cas.serving().id,
                issuing: c.id == issuing,
                agents: count(HostRole::Agent),
                admins: count(HostRole::Admin),
            }
        })
        .collect();
    let other_hosts =
        hosts.iter().filter(|h| h.valid(now) && !h.ca.as_deref().is_some_and(|ca| cas.knows(ca))).count() as u64;
    AdminResponse::Cas { cas: infos, other_hosts }
}

/// `ca rotate`: a new CA beside the current one. One rotation at a time.
pub async fn rotate(core: &Core, by: &By) -> AdminResponse {
    let (authority, cas) = match current(core).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let in_progress = || {
        err(
            AdminErrorKind::InvalidInput,
            "a rotation is in progress: `otpctl ca retire` the old CA once `otpctl ca status` shows no host on it, \
             then rotate again",
        )
    };
    if cas.all().len() > 1 {
        return in_progress();
    }
    let ca = match pki::Ca::generate() {
        Ok(ca) => ca,
        Err(e) => return err(AdminErrorKind::Internal, format!("making a CA failed: {e}")),
    };
    let now = core.clock.now();
    let (cert_pem, sealed) = (ca.cert_pem(), crate::fleet::authority::seal(&core.policy.crypto, &ca));
    let (fp, old) = (ca.fingerprint(), cas.serving().fingerprint);
    let (policy, who) = (core.policy.clone(), by.clone());
    let added = core
        .db
        .run(move |st| {
            if !st.add_fleet_ca(&cert_pem, &sealed, now)? {
                return Ok(false);
            }
            let what = format!(
                "rotate fleet CA: new {}… beside {}…",
                pki::fingerprint_short(&fp),
                pki::fingerprint_short(&old)
            );
            admin_audit(st, &policy.machine, "-", &what, &who, now)?;
            Ok(true)
        })
        .await;
    match added {
        Ok(true) => {}
        Ok(false) => return in_progress(),
        Err(e) => return finish(Err(e)),
    }
    if let Err(e) = authority.refresh(&core.db, &core.policy.crypto).await {
        tracing::warn!("reading the fleet CAs after the rotation failed: {e}");
    }
    tracing::info!("fleet CA rotated by {by}: new CA {}", pki::fingerprint_hex(&fp));
    AdminResponse::Done {
        message: format!(
            "new fleet CA {}…: every server accepts certificates of both CAs within {} s and issues with the new one; \
             hosts move to it at their next check (agents: [fleet] renew_check; admin credentials: their next use). \
             `otpctl ca status` counts the hosts still on the old CA, `otpctl ca retire` drops it",
            pki::fingerprint_short(&fp),
            crate::fleet::authority::PROPAGATION
        ),
    }
}

/// `ca retire [--force]`: drops the older of two CAs. Refused while hosts
/// hold valid certificates of it, unless forced: then they are revoked
/// (each needs a new bundle: `host add`).
pub async fn retire(core: &Core, by: &By, force: bool) -> AdminResponse {
    let (authority, cas) = match current(core).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    if cas.all().len() < 2 {
        return err(
            AdminErrorKind::InvalidInput,
            "the fleet has one CA: nothing to retire (`otpctl ca rotate` makes a new one first)",
        );
    }
    let (old, new) = (cas.all()[0].clone(), cas.all()[1].clone());
    let now = core.clock.now();
    let settles = new.added_at + crate::fleet::authority::PROPAGATION;
    if now < settles {
        return err(
            AdminErrorKind::InvalidInput,
            format!(
                "the new CA is {} s old: every server must have read it first; try again in {} s",
                now - new.added_at,
                settles - now
            ),
        );
    }
    let (policy, who) = (core.policy.clone(), by.clone());
    let retired = core
        .db
        .run(move |st| {
            let hosts = st.hosts()?;
            let left: Vec<String> = on_ca(&hosts, &old.fingerprint, now).map(|h| h.name.clone()).collect();
            // Renewed onto the new CA but still linking with the certificate
            // the renewal replaced (its own bundle not rewritten, say).
            let unused: Vec<String> = hosts
                .iter()
                .filter(|h| h.revoked_at.is_none() && h.ca.as_deref() != Some(&old.fingerprint[..]))
                .filter(|h| h.prev_fingerprint.is_some() && h.prev_until.is_some_and(|t| t > now + PREV_GRACE))
                .map(|h| h.name.clone())
                .collect();
            if (!left.is_empty() || !unused.is_empty()) && !force {
                return Ok(Err((left, unused)));
            }
            if !st.retire_fleet_ca(old.id)? {
                return Ok(Ok(None));
            }
            let revoked = st.revoke_hosts_of_ca(&old.fingerprint, now)?;
            st.end_replaced_certificates(now)?;
            let what = format!(
                "retire fleet CA {}… ({} host(s) on it revoked); {}… remains",
                pki::fingerprint_short(&old.fingerprint),
                left.len(),
                pki::fingerprint_short(&new.fingerprint)
            );
            admin_audit(st, &policy.machine, "-", &what, &who, now)?;
            Ok(Ok(Some((left, revoked))))
        })
        .await;
    let left = match retired {
        Ok(Ok(Some((left, _)))) => left,
        Ok(Ok(None)) => {
            return err(AdminErrorKind::InvalidInput, "the fleet's CAs changed meanwhile; see `otpctl ca status`")
        }
        Ok(Err((left, unused))) => return err(AdminErrorKind::InvalidInput, not_yet(&left, &unused)),
        Err(e) => return finish(Err(e)),
    };
    if let Err(e) = authority.refresh(&core.db, &core.policy.crypto).await {
        tracing::warn!("reading the fleet CAs after the retirement failed: {e}");
    }
    tracing::info!("fleet CA {} retired by {by}", pki::fingerprint_hex(&cas.all()[0].fingerprint));
    let revoked = match left.len() {
        0 => String::new(),
        n => format!("; {n} host(s) still on it revoked ({}): each needs a new bundle", left.join(", ")),
    };
    AdminResponse::Done {
        message: format!(
            "fleet CA {}… retired: every server presents and accepts only certificates of {}… within {} s{revoked}",
            pki::fingerprint_short(&cas.all()[0].fingerprint),
            pki::fingerprint_short(&cas.all()[1].fingerprint),
            crate::fleet::authority::REFRESH_EVERY.as_secs()
        ),
    }
}

/// Why `ca retire` (without --force) waits: hosts still on the old CA, and
/// hosts that renewed but still link with the certificate it replaced.
fn not_yet(left: &[String], unused: &[String]) -> String {
    let names = |list: &[String]| {
        let mut n = list.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
        if list.len() > 10 {
            n.push_str(", …");
        }
        n
    };
    let mut why = Vec::new();
    if !left.is_empty() {
        why.push(format!(
            "{} host(s) still hold certificates of the old CA ({}): they move at their next check (see `otpctl ca \
             status`)",
            left.len(),
            names(left)
        ));
    }
    if !unused.is_empty() {
        why.push(format!(
            "{} host(s) renewed onto the new CA but have not used their new certificate yet ({})",
            unused.len(),
            names(unused)
        ));
    }
    format!(
        "{}; `--force` retires it now, revokes the hosts on it (each then needs a new bundle: `otpctl host add`) and \
         ends every replaced certificate",
        why.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::ops::shared::fixture::*;
    use crate::sys::clock::Clock as _;

    fn cas_of(resp: AdminResponse) -> (Vec<CaInfo>, u64) {
        match resp {
            AdminResponse::Cas { cas, other_hosts } => (cas, other_hosts),
            other => panic!("expected Cas, got {other:?}"),
        }
    }

    fn error_of(resp: AdminResponse) -> String {
        match resp {
            AdminResponse::Error { kind: AdminErrorKind::InvalidInput, message } => message,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    async fn add(core: &Core, name: &str, admin: bool) {
        let resp = crate::admin::ops::hosts::add(core, &ROOT, name.into(), admin).await;
        assert!(matches!(resp, AdminResponse::HostBundle { .. }), "{resp:?}");
    }

    /// status counts per CA; rotate adds one and refuses a second; retire
    /// refuses while hosts are on the old CA, and --force revokes them.
    #[tokio::test]
    async fn a_rotation_is_counted_retired_when_empty_or_forced_and_audited() {
        let clock = Arc::new(crate::sys::clock::FakeClock::new(T0));
        let core = server_at(clock.clone());
        add(&core, "web01", false).await;
        add(&core, "adm1", true).await;
        let (cas, other) = cas_of(status(&core).await);
        assert_eq!(cas.len(), 1);
        assert!(cas[0].serving && cas[0].issuing);
        assert_eq!((cas[0].agents, cas[0].admins, other), (1, 1, 0));
        assert!(error_of(retire(&core, &ROOT, false).await).contains("nothing to retire"));

        assert!(matches!(rotate(&core, &ROOT).await, AdminResponse::Done { .. }));
        assert!(error_of(rotate(&core, &ROOT).await).contains("a rotation is in progress"));
        let early = error_of(retire(&core, &ROOT, true).await);
        assert!(early.contains("every server must have read it first"), "{early}");
        let (cas, _) = cas_of(status(&core).await);
        assert_eq!(cas.len(), 2);
        // The new CA issues once every server can have read it.
        assert!(cas[0].serving && cas[0].issuing && !cas[1].serving && !cas[1].issuing);
        assert_eq!((cas[0].agents, cas[1].agents), (1, 0));
        clock.advance(crate::fleet::authority::PROPAGATION);
        let (cas, _) = cas_of(status(&core).await);
        assert!(cas[0].serving && !cas[0].issuing && cas[1].issuing);
        add(&core, "web02", false).await;
        let (cas, _) = cas_of(status(&core).await);
        assert_eq!((cas[0].agents, cas[1].agents), (1, 1));

        // web02 renewed (onto the new CA) but has not used the new certificate.
        let web02 = on_db(&core, |st| st.host("web02")).await.unwrap();
        let renewal = crate::store::model::Renewal {
            presented: web02.fingerprint.clone(),
            presented_until: T0 + 86_400,
            fingerprint: vec![7; 32],
            expires_at: T0 + 86_400,
            ca: web02.ca.clone().unwrap(),
            now: clock.now(),
        };
        assert!(on_db(&core, move |st| st.renew_host("web02", &renewal)).await);
        let refused = error_of(retire(&core, &ROOT, false).await);
        assert!(refused.contains("2 host(s)") && refused.contains("adm1, web01"), "{refused}");
        assert!(
            refused.contains("1 host(s) renewed onto the new CA but have not used their new certificate yet (web02)")
        );
        assert_eq!(core.fleet_ca.as_ref().unwrap().get().all().len(), 2, "nothing changed");
        let AdminResponse::Done { message } = retire(&core, &ROOT, true).await else { panic!("not retired") };
        assert!(message.contains("2 host(s) still on it revoked (adm1, web01)"), "{message}");
        let (cas, other) = cas_of(status(&core).await);
        assert_eq!((cas.len(), cas[0].agents, other), (1, 1, 0));
        assert!(cas[0].serving && cas[0].issuing);
        let web01 = on_db(&core, |st| st.host("web01")).await.unwrap();
        assert!(web01.revoked_at.is_some());
        // The certificate web02's renewal replaced is accepted no longer.
        let web02 = on_db(&core, |st| st.host("web02")).await.unwrap();
        assert_eq!((web02.revoked_at, web02.prev_until), (None, Some(clock.now())));
        // Revoked: it may be added again as it is.
        add(&core, "web01", false).await;
        let actions: Vec<String> = audit_rows(&core, "-").await.into_iter().map(|e| e.result).collect();
        assert!(actions.iter().any(|a| a.starts_with("rotate fleet CA: new ")), "{actions:?}");
        assert!(actions.iter().any(|a| a.contains("(2 host(s) on it revoked)")), "{actions:?}");
    }

    #[tokio::test]
    async fn a_standalone_daemon_has_no_ca() {
        let core = core();
        for resp in [status(&core).await, rotate(&core, &ROOT).await, retire(&core, &ROOT, true).await] {
            assert!(error_of(resp).contains("not a fleet server"));
        }
    }
}
