//! The admin operations, one request at a time, for every admin door (the
//! admin socket, D-Bus, remote otpctl over a fleet link).
use crate::core::access::account_uid;
use crate::core::auth::new_enrollment;
use crate::core::context::valid_user_name;
use crate::core::service::Core;
use crate::store::model::{NewAudit, Store, StoreError, UserRecord};
use common::proto::{
    AdminErrorKind, AdminRequest, AdminResponse, BulkUser, Method, RequestStatus, StatusInfo, UserInfo,
};
use std::sync::atomic::Ordering;

/// Who made an admin request: a local user (admin socket, D-Bus) or the
/// holder of admin credentials on a fleet link.
#[derive(Debug, Clone)]
pub enum By {
    Uid(u32),
    Remote(String),
}

impl By {
    /// The uid an emergency decision records: a remote admin has none on
    /// this machine (0); the audit row names them.
    fn uid(&self) -> u32 {
        match self {
            By::Uid(u) => *u,
            By::Remote(_) => 0,
        }
    }
}

impl std::fmt::Display for By {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            By::Uid(u) => write!(f, "uid {u}"),
            By::Remote(name) => write!(f, "admin credentials {name} (remote)"),
        }
    }
}

pub(crate) fn err(kind: AdminErrorKind, message: impl Into<String>) -> AdminResponse {
    AdminResponse::Error { kind, message: message.into() }
}

fn info(u: &UserRecord, now: i64) -> UserInfo {
    UserInfo {
        name: u.name.clone(),
        method: u.method,
        enabled: u.enabled,
        email: u.email.clone(),
        activated: u.activated_at.is_some(),
        activated_at: u.activated_at,
        failures: u.failures,
        locked_until: u.locked_until,
        locked: u.is_locked(now),
        admin_locked_at: u.admin_locked_at,
        lock_periods: u.lock_periods,
        failures_since_login: u.failures_since_login,
        created_at: u.created_at,
        updated_at: u.updated_at,
        last_login: u.last_login,
        hotp_counter: u.hotp_counter.map(|c| c.max(0) as u64),
        recovery_codes_left: None,
    }
}

fn admin_audit(
    st: &mut dyn Store,
    sh_machine: &str,
    user: &str,
    action: &str,
    by: &By,
    now: i64,
) -> Result<(), StoreError> {
    let e = NewAudit {
        time: now,
        user: user.into(),
        service: "otpctl".into(),
        rhost: None,
        tty: None,
        machine: sh_machine.into(),
        method: crate::store::model::AuditMethod::Admin,
        result: crate::store::model::AuditResult::Action(action.into()),
        reason: format!("by {by}"),
    };
    crate::core::syslog::audit(&e);
    st.add_audit(&e)
}

pub async fn handle(req: AdminRequest, by: &By, sh: &Core) -> AdminResponse {
    let by = by.clone();
    let now = sh.clock.now();
    let user_arg = match &req {
        AdminRequest::UserEnable { user, .. }
        | AdminRequest::UserDisable { user }
        | AdminRequest::UserReset { user }
        | AdminRequest::UserShow { user }
        | AdminRequest::UserUnlock { user }
        | AdminRequest::UserResync { user, .. }
        | AdminRequest::UserRecoveryCodes { user }
        | AdminRequest::UserPasswd { user, .. } => Some(user.clone()),
        _ => None,
    };
    if let Some(u) = &user_arg {
        if !valid_user_name(u) {
            return err(AdminErrorKind::InvalidInput, format!("{u:?} is not a valid user name"));
        }
    }
    let policy = sh.policy.clone();
    let result = match req {
        AdminRequest::UserEnable { method: Method::Hotp, .. } => {
            return err(
                AdminErrorKind::InvalidInput,
                "HOTP users come with their token: `otpctl import oath FILE` (a token's secret and counter)",
            );
        }
        AdminRequest::UserEnable { user, method, email } => {
            let email = match email.as_deref().map(crate::core::email::validate_address).transpose() {
                Ok(e) => e,
                Err(why) => return err(AdminErrorKind::InvalidInput, format!("--email: {why}")),
            };
            if method == Method::Email
                && email.is_none()
                && crate::core::email::directory_address(&policy.email.directory, &user).is_none()
            {
                return err(
                    AdminErrorKind::InvalidInput,
                    format!(
                        "no address for {user}: give --email ADDR or add it to the directory ({})",
                        policy.email.directory
                    ),
                );
            }
            let uid = account_uid(&user);
            sh.db
                .run(move |st| {
                    let existing = st.user(&user)?;
                    // Logins are decided on the account: a second name for
                    // an enabled account would be a second secret for it.
                    if let Some(other) = uid.map(|u| st.user_by_uid(u)).transpose()?.flatten() {
                        if other.enabled && other.name != user {
                            return Ok(err(
                                AdminErrorKind::InvalidInput,
                                format!(
                                    "{user} is the same account as {} (uid {}), which is already enabled",
                                    other.name,
                                    uid.unwrap_or_default()
                                ),
                            ));
                        }
                    }
                    if let Some(e) = existing.as_ref().filter(|e| e.enabled) {
                        return Ok(err(
                            AdminErrorKind::InvalidInput,
                            format!(
                                "{} is already enabled (method {}); use `otpctl user reset {}` for a new secret",
                                e.name, e.method, e.name
                            ),
                        ));
                    }
                    let mut rec = new_enrollment(&policy, existing, &user, uid, now);
                    if email.is_some() {
                        rec.email = email;
                    }
                    if method == Method::Email {
                        rec.method = Method::Email;
                        rec.secret = None;
                    }
                    st.save_user(&rec)?;
                    admin_audit(st, &policy.machine, &user, &format!("enable ({method})"), &by, now)?;
                    Ok(enrolled(&policy, &rec, now))
                })
                .await
        }
        AdminRequest::UserEnableMany { users, source } => {
            let users = match bulk_users(users, &by) {
                Ok(u) => u,
                Err(why) => return err(AdminErrorKind::InvalidInput, why),
            };
            let r = sh.db.run(move |st| enable_many(st, &policy, &by, &users, &source, now)).await;
            // New accounts may have joined require_group since the last refresh.
            if let Err(e) = crate::core::groups::refresh(sh).await {
                tracing::warn!("{e}; the members stored before are kept");
            }
            r
        }
        AdminRequest::GroupRefresh => {
            return match crate::core::groups::refresh(sh).await {
                Ok(Some((group, n))) => {
                    AdminResponse::Done { message: format!("require_group {group}: {n} member(s) stored") }
                }
                Ok(None) => {
                    err(AdminErrorKind::InvalidInput, "no require_group is set in [daemon]: nothing to refresh")
                }
                Err(e) => err(AdminErrorKind::Internal, e),
            };
        }
        AdminRequest::UserReset { user } => {
            // A user enabled before the account existed gets its uid now.
            let uid = account_uid(&user);
            sh.db
                .run(move |st| {
                    let Some(existing) = st.user(&user)?.filter(|u| u.enabled) else {
                        return Ok(not_found(&user));
                    };
                    let rec = new_enrollment(&policy, Some(existing), &user, uid, now);
                    st.save_user(&rec)?;
                    admin_audit(st, &policy.machine, &user, "reset", &by, now)?;
                    Ok(enrolled(&policy, &rec, now))
                })
                .await
        }
        AdminRequest::UserDisable { user } => {
            sh.db
                .run(move |st| {
                    let Some(mut u) = st.user(&user)? else { return Ok(not_found(&user)) };
                    u.enabled = false;
                    u.secret = None;
                    u.activated_at = None;
                    u.last_step = None;
                    u.hotp_counter = None;
                    // The lock guarded the erased secret; a disabled user is not "locked".
                    u.clear_lockout();
                    u.updated_at = now;
                    st.save_user(&u)?;
                    // Recovery codes stand in for the secret: erased with it.
                    st.set_recovery_codes(&user, &[], &[])?;
                    admin_audit(st, &policy.machine, &user, "disable", &by, now)?;
                    Ok(AdminResponse::User { user: info(&u, now) })
                })
                .await
        }
        AdminRequest::UserUnlock { user } => {
            sh.db
                .run(move |st| {
                    let Some(mut u) = st.user(&user)? else { return Ok(not_found(&user)) };
                    u.unlock();
                    u.updated_at = now;
                    st.save_user(&u)?;
                    admin_audit(st, &policy.machine, &user, "unlock", &by, now)?;
                    Ok(AdminResponse::User { user: info(&u, now) })
                })
                .await
        }
        AdminRequest::UserResync { user, code1, code2 } => {
            sh.db.run(move |st| resync(st, &policy, &by, &user, &code1, &code2, now)).await
        }
        AdminRequest::ImportOath { content, dry_run } => {
            let (entries, problems) = crate::import::oath::parse_oath(&content);
            let uids: Vec<Option<u32>> = entries.iter().map(|e| account_uid(&e.user)).collect();
            sh.db
                .run(move |st| {
                    let outcomes = crate::import::oath::import(st, &policy, &entries, &uids, dry_run, now)?;
                    let mut lines = problems.clone();
                    let (mut imported, mut unchanged, mut skipped) = (0, 0, problems.len());
                    for (e, o) in entries.iter().zip(&outcomes) {
                        use crate::import::oath::Outcome;
                        let what = match e.method {
                            Method::Hotp => {
                                format!("hotp, {} digits, counter {}", e.digits, crate::import::oath::next_counter(e))
                            }
                            _ => format!("totp, {} digits", e.digits),
                        };
                        match o {
                            Outcome::Imported => {
                                imported += 1;
                                let verb = if dry_run { "would be imported" } else { "imported" };
                                lines.push(format!("line {}: {}: {verb} ({what})", e.line, e.user));
                                if !dry_run {
                                    let action = format!("import from pam_oath ({what})");
                                    admin_audit(st, &policy.machine, &e.user, &action, &by, now)?;
                                }
                            }
                            Outcome::Unchanged => {
                                unchanged += 1;
                                lines.push(format!("line {}: {}: already imported, unchanged", e.line, e.user));
                            }
                            Outcome::Skipped(why) => {
                                skipped += 1;
                                lines.push(format!("line {}: skipped: {why}", e.line));
                            }
                        }
                    }
                    lines.sort_by_key(|l| {
                        l.strip_prefix("line ").and_then(|r| r.split(':').next()).and_then(|n| n.parse::<usize>().ok())
                    });
                    let tail = if dry_run { " (dry run: nothing was changed)" } else { "" };
                    lines.push(format!("{imported} imported, {unchanged} unchanged, {skipped} skipped{tail}"));
                    Ok(AdminResponse::Done { message: lines.join("\n") })
                })
                .await
        }
        AdminRequest::UserShow { user } => {
            sh.db
                .run(move |st| {
                    let Some(u) = st.user(&user)? else { return Ok(not_found(&user)) };
                    let mut shown = info(&u, now);
                    shown.recovery_codes_left = Some(st.recovery_codes_left(&u.name)?);
                    Ok(AdminResponse::User { user: shown })
                })
                .await
        }
        AdminRequest::UserList => {
            sh.db
                .run(move |st| Ok(AdminResponse::Users { users: st.users()?.iter().map(|u| info(u, now)).collect() }))
                .await
        }
        AdminRequest::Audit { user, host, since, limit } => {
            let limit = limit.unwrap_or(100).min(100_000);
            sh.db
                .run(move |st| {
                    Ok(AdminResponse::Audit { entries: st.audit(user.as_deref(), host.as_deref(), since, limit)? })
                })
                .await
        }
        AdminRequest::UserRecoveryCodes { user } => {
            // Ten argon2id hashes: slow on purpose, so off the database thread.
            let (codes, salt, hashes) = match tokio::task::spawn_blocking(crate::core::recovery::new_set).await {
                Ok(Ok(set)) => set,
                _ => return err(AdminErrorKind::Internal, "generating recovery codes failed"),
            };
            sh.db
                .run(move |st| {
                    let Some(u) = st.user(&user)?.filter(|u| u.enabled) else {
                        return Ok(not_found(&user));
                    };
                    st.set_recovery_codes(&u.name, &salt, &hashes)?;
                    admin_audit(st, &policy.machine, &u.name, "recovery-codes (new set)", &by, now)?;
                    let codes = codes.iter().map(|c| crate::core::recovery::display(c)).collect();
                    Ok(AdminResponse::RecoveryCodes { user: u.name, codes })
                })
                .await
        }
        AdminRequest::ImportTotp { accounts, dry_run } => {
            // Accounts already imported with their secret stay unchanged:
            // their scratch codes are not hashed again (a second run of
            // 100,000 files would take as long as the first).
            let names = accounts.iter().map(|a| a.user.clone()).collect::<Vec<_>>();
            let Ok(done) = sh.db.read(move |st| crate::import::gaimport::already_enabled(st, &names)).await else {
                return err(AdminErrorKind::Internal, "reading the users to import failed");
            };
            // Scratch codes are argon2id hashes: prepared off the database thread.
            let p = policy.clone();
            let prepared =
                tokio::task::spawn_blocking(move || crate::import::gaimport::prepare_all(&p, accounts, dry_run, &done))
                    .await;
            let Ok(prepared) = prepared else { return err(AdminErrorKind::Internal, "preparing the import failed") };
            let mut skipped = Vec::new();
            let mut ready = Vec::new();
            for r in prepared {
                match r {
                    Ok(a) => ready.push(a),
                    Err(s) => skipped.push(s),
                }
            }
            let by = by.to_string();
            sh.db
                .run(move |st| {
                    let mut results = skipped;
                    results.extend(crate::import::gaimport::import(st, &policy, ready, dry_run, &by, now)?);
                    Ok(AdminResponse::Imported { results })
                })
                .await
        }
        AdminRequest::UserPasswd { user, password } => {
            if password.chars().count() < 12 || password.len() > 1024 {
                return err(AdminErrorKind::InvalidInput, "the password must be 12 to 1024 characters");
            }
            let hash = match tokio::task::spawn_blocking(move || crate::core::passwd::hash(&password)).await {
                Ok(Ok(h)) => h,
                _ => return err(AdminErrorKind::Internal, "hashing the password failed"),
            };
            sh.db
                .run(move |st| {
                    let Some(mut u) = st.user(&user)? else { return Ok(not_found(&user)) };
                    u.password_hash = Some(hash);
                    u.updated_at = now;
                    st.save_user(&u)?;
                    admin_audit(st, &policy.machine, &user, "passwd", &by, now)?;
                    Ok(AdminResponse::Done { message: format!("password for {user}'s internal account set") })
                })
                .await
        }
        AdminRequest::RequestList { all } => {
            sh.db
                .run(move |st| {
                    let total = st.count_requests(crate::store::model::RequestCount::All { pending_only: !all })?;
                    Ok(AdminResponse::Requests { requests: st.requests(!all)?, total: Some(total) })
                })
                .await
        }
        AdminRequest::RequestApprove { id } | AdminRequest::RequestDeny { id } => {
            let approve = matches!(req, AdminRequest::RequestApprove { .. });
            let r = sh
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
                        return Ok((
                            AdminResponse::Done { message: format!("request #{id} denied; nothing was sent") },
                            false,
                        ));
                    }
                    st.decide_request(id, RequestStatus::Approved, by.uid(), now)?;
                    admin_audit(st, &policy.machine, &r.user, &format!("approve emergency request #{id}"), &by, now)?;
                    let outcome = crate::core::email::request_code(st, &policy, &ctx, &r.address, true, now)?;
                    let queued = matches!(outcome, crate::core::email::RequestOutcome::Queued { .. });
                    let message = match outcome {
                        crate::core::email::RequestOutcome::Queued { masked, .. } => {
                            format!("request #{id} approved; a code was sent to {masked}")
                        }
                        other => format!("request #{id} approved, but no code could be sent now: {other:?}"),
                    };
                    Ok((AdminResponse::Done { message }, queued))
                })
                .await;
            r.map(|(resp, queued)| {
                if queued {
                    sh.mail_wakeup.notify_one();
                }
                resp
            })
        }
        AdminRequest::Sessions { limit } => {
            let limit = limit.unwrap_or(100).min(10_000);
            sh.db.run(move |st| Ok(AdminResponse::Sessions { sessions: st.sessions(limit)? })).await
        }
        AdminRequest::HostAdd { name, admin } => return host_add(sh, &by, name, admin, now).await,
        AdminRequest::HostList => {
            sh.db.run(|st| Ok(AdminResponse::Hosts { hosts: st.hosts()?.iter().map(host_info).collect() })).await
        }
        AdminRequest::HostRevoke { name } => {
            if sh.fleet_ca.is_none() {
                return not_a_server();
            }
            sh.db
                .run(move |st| {
                    if !st.revoke_host(&name, now)? {
                        return Ok(err(AdminErrorKind::NotFound, format!("no host {name:?} with valid credentials")));
                    }
                    admin_audit(st, &policy.machine, "-", &format!("revoke host {name}"), &by, now)?;
                    Ok(AdminResponse::Done {
                        message: format!("{name} revoked: every server refuses its certificate from now on"),
                    })
                })
                .await
        }
        AdminRequest::Status => {
            let (started_at, database, open) =
                (sh.started_at, sh.database.clone(), sh.gauges.pam_connections.load(Ordering::Relaxed));
            let role = if sh.fleet_ca.is_some() { "server" } else { "standalone" };
            sh.db
                .run(move |st| {
                    let c = st.counts(now)?;
                    let m = st.mail_stats(now)?;
                    let pending = st.count_requests(crate::store::model::RequestCount::All { pending_only: true })?;
                    let hosts = if role == "server" { st.hosts()?.iter().map(host_info).collect() } else { Vec::new() };
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
                            role: role.into(),
                            hosts,
                        },
                    })
                })
                .await
        }
    };
    result.unwrap_or_else(|e| {
        tracing::error!("admin request failed: {e}");
        err(AdminErrorKind::Internal, format!("the change was not made: {e}"))
    })
}

/// How far ahead of its counter a token is searched for by `user resync`.
pub const RESYNC_LOOKAHEAD: u64 = 1000;

/// `otpctl user resync`: two consecutive codes of a HOTP token found within
/// [`RESYNC_LOOKAHEAD`] after the counter move the counter past them.
fn resync(
    st: &mut dyn Store,
    policy: &crate::core::policy::Policy,
    by: &By,
    user: &str,
    code1: &str,
    code2: &str,
    now: i64,
) -> Result<AdminResponse, StoreError> {
    let Some(u) = st.user(user)?.filter(|u| u.enabled) else { return Ok(not_found(user)) };
    if u.method != Method::Hotp {
        return Ok(err(
            AdminErrorKind::InvalidInput,
            format!("{user} uses {} codes; resync is for HOTP tokens (imported with `otpctl import oath`)", u.method),
        ));
    }
    let digits = u.digits.unwrap_or(6);
    let ok = |c: &str| c.len() == digits as usize && c.bytes().all(|b| b.is_ascii_digit());
    if !ok(code1) || !ok(code2) {
        return Ok(err(
            AdminErrorKind::InvalidInput,
            format!("{user}'s token shows {digits}-digit codes; give two consecutive ones"),
        ));
    }
    let (Some(secret), Some(counter)) = (u.secret.as_deref().and_then(|s| policy.crypto.open(user, s)), u.hotp_counter)
    else {
        return Ok(err(AdminErrorKind::Internal, format!("{user}'s secret cannot be decrypted (wrong key file?)")));
    };
    let from = counter.max(0) as u64;
    let found = (from..from + RESYNC_LOOKAHEAD).find(|&c| {
        crate::core::totp::hotp(&secret, c, digits) == code1 && crate::core::totp::hotp(&secret, c + 1, digits) == code2
    });
    let Some(c) = found else {
        return Ok(err(
            AdminErrorKind::InvalidInput,
            format!(
                "no two consecutive codes {code1} {code2} within {RESYNC_LOOKAHEAD} after {user}'s counter {from}; \
                 nothing changed (press the button once between the two codes, nothing else)"
            ),
        ));
    };
    // Conditional, like a login: a login that moved the counter past
    // these codes meanwhile wins, and the resync changes nothing.
    if !st.consume_counter(user, c as i64 + 1)? {
        return Ok(err(AdminErrorKind::InvalidInput, format!("{user}'s counter moved past these codes meanwhile")));
    }
    admin_audit(st, &policy.machine, user, &format!("resync (counter {from} -> {})", c + 2), by, now)?;
    let u = st.user(user)?.unwrap_or(u);
    Ok(AdminResponse::User { user: info(&u, now) })
}

fn not_a_server() -> AdminResponse {
    err(AdminErrorKind::InvalidInput, "this otpd is not a fleet server (role = \"server\" in otpd.toml)")
}

fn host_info(h: &crate::store::model::HostRecord) -> common::proto::HostInfo {
    common::proto::HostInfo {
        name: h.name.clone(),
        role: h.role.as_str().into(),
        fingerprint: crate::fleet::pki::fingerprint_hex(&h.fingerprint),
        added_at: h.added_at,
        revoked_at: h.revoked_at,
        last_seen: h.last_seen,
        last_addr: h.last_addr.clone(),
    }
}

/// Issues credentials, records their fingerprint, and hands the bundle
/// back once (the key is not kept anywhere on the server).
async fn host_add(sh: &Core, by: &By, name: String, admin: bool, now: i64) -> AdminResponse {
    let Some(ca) = sh.fleet_ca.clone() else { return not_a_server() };
    let (bundle, fingerprint) = match crate::fleet::pki::issue_bundle(&ca, &name) {
        Ok(b) => b,
        Err(e) => return err(AdminErrorKind::InvalidInput, e.to_string()),
    };
    let record = crate::store::model::HostRecord {
        name: name.clone(),
        role: if admin { crate::store::model::HostRole::Admin } else { crate::store::model::HostRole::Agent },
        fingerprint: fingerprint.to_vec(),
        added_at: now,
        revoked_at: None,
        last_seen: None,
        last_addr: None,
    };
    let (policy, by) = (sh.policy.clone(), by.clone());
    let what = if admin { "admin credentials" } else { "host" };
    let added = sh
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
            format!("{name} already has valid credentials; `otpctl host revoke {name}` first to issue new ones"),
        ),
        Err(e) => err(AdminErrorKind::Internal, format!("the host was not added: {e}")),
    }
}

fn not_found(user: &str) -> AdminResponse {
    err(
        AdminErrorKind::NotFound,
        format!("{user} is not enabled for OTP; use `otpctl user enable {user} --method totp`"),
    )
}

/// Checks a bulk request before anything is written: every name valid (else
/// the whole request is refused, naming the bad entries), duplicates dropped.
/// A remote admin's uids are another machine's: the names are resolved here.
fn bulk_users(users: Vec<BulkUser>, by: &By) -> Result<Vec<BulkUser>, String> {
    if users.is_empty() {
        return Err("no users given: nothing to enable".into());
    }
    let bad: Vec<String> = users
        .iter()
        .enumerate()
        .filter(|(_, u)| !valid_user_name(&u.name))
        .take(10)
        .map(|(i, u)| format!("entry {}: {:?}", i + 1, u.name))
        .collect();
    if !bad.is_empty() {
        return Err(format!("not valid user names (nothing was enabled): {}", bad.join(", ")));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<BulkUser> = users.into_iter().filter(|u| seen.insert(u.name.clone())).collect();
    if let By::Remote(_) = by {
        for u in &mut out {
            u.uid = account_uid(&u.name);
        }
    }
    Ok(out)
}

/// `user_enable_many`: one job, so one transaction; idempotent (an enabled
/// user keeps its secret and is only counted).
fn enable_many(
    st: &mut dyn Store,
    policy: &crate::core::policy::Policy,
    by: &By,
    users: &[BulkUser],
    source: &str,
    now: i64,
) -> Result<AdminResponse, StoreError> {
    const NOTES: usize = 10;
    let (mut enabled, mut already, mut skipped) = (0u64, 0u64, 0u64);
    let mut skipped_notes = Vec::new();
    let mut enabled_names = Vec::new();
    let action = format!("enable (totp, {source})");
    for u in users {
        let existing = st.user(&u.name)?;
        if existing.as_ref().is_some_and(|e| e.enabled) {
            already += 1;
            continue;
        }
        // As for one user: a second name for an enabled account would be a
        // second secret for it.
        if let Some(other) = u.uid.map(|id| st.user_by_uid(id)).transpose()?.flatten() {
            if other.enabled && other.name != u.name {
                skipped += 1;
                if skipped_notes.len() < NOTES {
                    skipped_notes.push(format!(
                        "{}: skipped: the same account as {} (uid {}), which is already enabled",
                        u.name,
                        other.name,
                        u.uid.unwrap_or_default()
                    ));
                }
                continue;
            }
        }
        let rec = new_enrollment(policy, existing, &u.name, u.uid, now);
        st.save_user(&rec)?;
        admin_audit(st, &policy.machine, &u.name, &action, by, now)?;
        enabled += 1;
        if enabled_names.len() < NOTES {
            enabled_names.push(u.name.clone());
        }
    }
    let mut notes = skipped_notes;
    if notes.len() < NOTES && !enabled_names.is_empty() {
        let more = if enabled as usize > enabled_names.len() { ", …" } else { "" };
        notes.push(format!("enabled: {}{more}", enabled_names.join(", ")));
    }
    Ok(AdminResponse::EnabledMany { enabled, already_enabled: already, skipped, notes })
}

fn enrolled(policy: &crate::core::policy::Policy, rec: &UserRecord, now: i64) -> AdminResponse {
    let uri = rec
        .secret
        .as_deref()
        .and_then(|s| policy.crypto.open(&rec.name, s))
        .map(|secret| policy.totp.uri(&secret, &policy.issuer, &rec.name));
    AdminResponse::Enrolled { user: info(rec, now), otpauth_uri: uri }
}
