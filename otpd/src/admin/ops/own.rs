//! Self-service: what a user may do to their own account (the console's
//! "me" page). The caller is the session's user; nothing here takes another
//! name.
use crate::admin::ops::shared::{admin_audit, finish, info, By};
use crate::core::service::Core;
use crate::store::model::AuditQuery;
use common::proto::{AdminErrorKind, AdminResponse};
use common::web::{Overview, WebErrorKind, WebResponse};

/// My record, my 20 latest audit rows (logins, failures, changes).
pub async fn overview(core: &Core, user: String, may_set_email: bool) -> WebResponse {
    let now = core.clock.now();
    let r = core
        .db
        .run(move |st| {
            let mine = match st.user(&user)? {
                Some(u) => {
                    let mut shown = info(&u, now);
                    shown.recovery_codes_left = Some(st.recovery_codes_left(&u.name)?);
                    Some(shown)
                }
                None => None,
            };
            let recent = st.audit_page(&AuditQuery { user: Some(user), limit: 20, ..Default::default() })?;
            Ok(WebResponse::Overview { overview: Overview { user: mine, recent, may_set_email } })
        })
        .await;
    r.unwrap_or_else(|e| unavailable(&e))
}

/// New recovery codes for me: the admin handler's, on my own name.
pub async fn recovery_codes(core: &Core, by: &By, user: String) -> WebResponse {
    match crate::admin::ops::credentials::recovery_codes(core, by, user).await {
        AdminResponse::RecoveryCodes { codes, .. } => WebResponse::RecoveryCodes { codes },
        other => refused(other),
    }
}

/// Sets or removes my emailed-code address. Only where policy allows it,
/// only a valid address, and within `[email.emergency] allow_domains` when
/// that list is set (an address there is trusted for emergency codes).
pub async fn set_email(core: &Core, by: &By, user: String, address: Option<String>, allowed: bool) -> WebResponse {
    if !allowed {
        return error(WebErrorKind::Forbidden, "Setting your own address is not allowed here; ask an administrator.");
    }
    let address = match address.map(|a| a.trim().to_string()).filter(|a| !a.is_empty()) {
        None => None,
        Some(a) => match crate::core::email::validate_address(&a) {
            Ok(valid) => Some(valid),
            Err(why) => return error(WebErrorKind::InvalidInput, &format!("That is not a usable address ({why}).")),
        },
    };
    let domains = &core.policy.email.emergency.allow_domains;
    if let Some(a) = &address {
        let domain = a.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
        if !domains.is_empty() && !domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
            return error(WebErrorKind::InvalidInput, &format!("Addresses must be in {}.", domains.join(", ")));
        }
    }
    let (now, machine, by) = (core.clock.now(), core.policy.machine.clone(), by.clone());
    let r = core
        .db
        .run(move |st| {
            let Some(mut u) = st.user(&user)? else {
                return Ok(error(WebErrorKind::InvalidInput, "No second factor is set up for your account."));
            };
            if u.email == address {
                return Ok(WebResponse::Done { message: "Your address is unchanged.".into() });
            }
            u.email = address.clone();
            u.updated_at = now;
            st.save_user(&u)?;
            let action = if address.is_some() { "email set" } else { "email removed" };
            admin_audit(st, &machine, &user, action, &by, now)?;
            let message = match &address {
                Some(a) => format!("Emailed codes now go to {a}."),
                None => "Your emailed-code address was removed.".into(),
            };
            Ok(WebResponse::Done { message })
        })
        .await;
    r.unwrap_or_else(|e| unavailable(&e))
}

fn error(kind: WebErrorKind, message: &str) -> WebResponse {
    WebResponse::Error { kind, message: message.into() }
}

fn unavailable(e: &crate::store::model::StoreError) -> WebResponse {
    tracing::error!("self-service request failed: {e}");
    error(WebErrorKind::Unavailable, "The change was not made: the database is unavailable. Try again later.")
}

/// An admin handler's refusal as the console shows it.
pub fn refused(r: AdminResponse) -> WebResponse {
    let resp = finish(Ok(r));
    match resp {
        AdminResponse::Error { kind, message } => {
            let kind = match kind {
                AdminErrorKind::NotFound | AdminErrorKind::InvalidInput => WebErrorKind::InvalidInput,
                AdminErrorKind::PermissionDenied => WebErrorKind::Forbidden,
                AdminErrorKind::Internal => WebErrorKind::Unavailable,
            };
            WebResponse::Error { kind, message }
        }
        other => WebResponse::Admin { response: other },
    }
}
