//! The audit row of a login decision, written with the decision (and
//! forwarded to syslog).
use crate::core::context::LoginContext;
use crate::core::policy::Policy;
use crate::store::model::{AuditMethod, AuditResult, NewAudit, Store, StoreError};

/// What a conversation whose host was revoked meanwhile is told.
pub const HOST_REVOKED: &str = "Passcode check refused for this host.";

/// Whether the host a relayed conversation comes from may still have
/// decisions made for it (its certificate known, not revoked), read in the
/// decision's own transaction; always for a local one. False: the refusal
/// is audited and nothing else is written.
pub fn host_still_trusted(store: &mut dyn Store, p: &Policy, ctx: &LoginContext, now: i64) -> Result<bool, StoreError> {
    let Some(fp) = &ctx.host_fingerprint else { return Ok(true) };
    let host = store.host_by_fingerprint(fp)?;
    if host.as_ref().is_some_and(|h| h.accepts(fp, now)) {
        return Ok(true);
    }
    let why = match &host {
        Some(h) if h.revoked_at.is_none() => {
            "the host's certificate ran out or was replaced during the conversation; nothing decided"
        }
        _ => "the host was revoked during the conversation; nothing decided",
    };
    audit(store, p, ctx, now, AuditResult::Refused, why)?;
    Ok(false)
}

pub fn audit(
    store: &mut dyn Store,
    p: &Policy,
    ctx: &LoginContext,
    now: i64,
    result: AuditResult,
    reason: &str,
) -> Result<(), StoreError> {
    // The method of the account the login is for: a cancelled or broken
    // login of an email or HOTP user was audited as "totp".
    let method = store.user(&ctx.user)?.filter(|u| u.enabled).map_or(AuditMethod::Totp, |u| AuditMethod::of(u.method));
    audit_method(store, p, ctx, now, method, result, reason)
}

pub fn audit_method(
    store: &mut dyn Store,
    _p: &Policy,
    ctx: &LoginContext,
    now: i64,
    method: AuditMethod,
    result: AuditResult,
    reason: &str,
) -> Result<(), StoreError> {
    let entry = audit_entry(ctx, now, method, result, reason);
    crate::core::syslog::audit(&entry);
    store.add_audit(&entry)
}

/// The audit row of a login decision.
pub fn audit_entry(ctx: &LoginContext, now: i64, method: AuditMethod, result: AuditResult, reason: &str) -> NewAudit {
    let mut reason = match &ctx.typed {
        Some(typed) => format!("{reason} (typed as {typed})"),
        None => reason.to_string(),
    };
    // Who on the agent's host started it (check 35): a row a local user's
    // forged conversation writes names that user, not only the account.
    if let Some(by) = relayed_by(ctx) {
        reason.push_str(&by);
    }
    NewAudit {
        time: now,
        user: ctx.user.clone(),
        service: ctx.service.clone(),
        rhost: ctx.rhost.clone(),
        tty: ctx.tty.clone(),
        machine: ctx.machine.clone(),
        method,
        result,
        reason,
    }
}

/// For a relayed conversation started by someone other than root on the
/// agent's host: " (caller uid N on that host)". Root's own logins (sshd,
/// login) say nothing more.
fn relayed_by(ctx: &LoginContext) -> Option<String> {
    if !ctx.remote {
        return None;
    }
    match (ctx.peer_uid, ctx.invoker) {
        (0, None | Some(0)) => None,
        (0, Some(by)) => Some(format!(" (started by uid {by} through a root program on {})", ctx.machine)),
        (uid, _) => Some(format!(" (caller uid {uid} on {})", ctx.machine)),
    }
}
