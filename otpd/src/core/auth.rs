//! The decisions. Each function runs inside one database transaction (see
//! [`crate::store::db`]): it reads the user, decides, writes the new state and the
//! audit row together, and the caller replies only after COMMIT.
use crate::core::audit::{audit, audit_entry, audit_method, host_still_trusted, HOST_REVOKED};
use crate::core::context::LoginContext;
use crate::core::policy::Policy;
use crate::core::totp::{Check, TotpParams};
use crate::store::model::{AuditMethod, AuditResult, NewAudit, PlanReads, Store, StoreError, UserRecord};
use common::proto::{Method, MAX_ANSWER_LEN};
/// A member of `require_group` who is not enrolled.
pub const MUST_ENROLL: &str =
    "A one-time passcode is required for your account, but you are not enrolled; contact your administrator.";

/// What a non-root caller hears about any account but its own: the same
/// words and outcome whether that account exists, is enrolled, locked or
/// not (check 30).
pub const ONLY_YOURSELF: &str = "You may only authenticate yourself.";

/// When a lock ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockEnd {
    /// Unix seconds.
    At(i64),
    /// Only `otpctl user unlock` (or reset, or disable and enable) lifts it.
    AdminUnlock,
}

impl LockEnd {
    pub fn of(user: &UserRecord, now: i64) -> LockEnd {
        match (user.admin_locked_at, user.locked_until) {
            (Some(_), _) => LockEnd::AdminUnlock,
            (None, until) => LockEnd::At(until.unwrap_or(now)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The name as typed does not decide: ask the module for its uid
    /// (`resolve_user`), put it in `LoginContext::uid`, and plan again.
    ResolveUser,
    NotEnrolled,
    Locked {
        until: LockEnd,
    },
    /// Caller may not authenticate this user (non-root, other uid), or the
    /// user's stored state is unusable.
    Refused {
        message: &'static str,
    },
    /// Enrollment not yet activated: show QR, secret and URI, then ask.
    Enroll {
        uri: String,
        secret_b32: String,
        email: bool,
    },
    /// Ask for the passcode; `email`: the user may press Enter for an
    /// emailed code; `mail_failing`: a message to them is stuck in the outbox.
    Ask {
        email: bool,
        mail_failing: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `failures`/`locks`: failed attempts and locks since the previous
    /// successful login, which the user is told about.
    Accept {
        activated: bool,
        failures: u32,
        locks: u32,
    },
    /// A recovery code was accepted (and used up); `left`: how many remain.
    Recovered {
        failures: u32,
        locks: u32,
        left: u64,
    },
    Deny {
        message: String,
    },
    Locked {
        until: LockEnd,
    },
}

/// An answer as every check reads it: authenticator apps show "123 456",
/// so spaces are dropped; well formed when digits alone remain (within the
/// length limit).
fn typed_code(answer: &str) -> (String, bool) {
    let code: String = answer.chars().filter(|&c| c != ' ').collect();
    let well_formed = answer.len() <= MAX_ANSWER_LEN && !code.is_empty() && code.bytes().all(|b| b.is_ascii_digit());
    (code, well_formed)
}

/// `user`'s TOTP parameters: an imported token may show more digits than `totp.digits`.
fn totp_of(p: &Policy, user: &UserRecord) -> TotpParams {
    TotpParams { digits: user.digits.unwrap_or(p.totp.digits), ..p.totp.clone() }
}

/// Whether the answer is tried as `user`'s TOTP code.
fn tries_totp(user: &UserRecord, code: &str, well_formed: bool, totp: &TotpParams) -> bool {
    user.method == Method::Totp && well_formed && code.len() == totp.digits as usize
}

/// A user enabled before the account existed learns its uid from the first
/// login a root caller (login, sshd, sudo) resolved for it.
fn learns_uid(user: &UserRecord, ctx: &LoginContext) -> bool {
    user.uid.is_none() && ctx.peer_uid == 0 && ctx.typed.is_none() && !ctx.remote
}

/// The common login decided in one statement, where the store can
/// ([`crate::store::pgfast::PgFast::accept_step_if_unchanged`]: PostgreSQL): an
/// activated TOTP user with no failure and no lock typing a fresh valid
/// code. Returns the step to record and the audit row to write with it;
/// written, they are what [`check_answer`] would write, and the verdict is
/// [`FAST_ACCEPT`]. `None` for anything else — a wrong or used code, a
/// lock, failures to report, email, HOTP, recovery codes, an enrollment to
/// activate, a uid to learn — and when the statement finds the row changed
/// since `user` was read: then [`check_answer`] decides in a transaction,
/// and records what happened. `user`: the record the plan read (however
/// old: the statement writes only if the row still holds what the
/// decision is made on).
pub fn fast_step(p: &Policy, ctx: &LoginContext, answer: &str, now: i64, user: &UserRecord) -> Option<(i64, NewAudit)> {
    if answer.len() > MAX_ANSWER_LEN || user.name != ctx.user {
        return None;
    }
    // What the statement's WHERE requires (no lock of either kind, nothing to clear).
    let plain = user.enabled
        && user.activated_at.is_some()
        && user.admin_locked_at.is_none()
        && user.locked_until.is_none()
        && (user.failures, user.failures_since_login, user.lock_periods) == (0, 0, 0);
    let (code, well_formed) = typed_code(answer);
    let totp = totp_of(p, user);
    // check_answer would also fill in a missing uid: it decides those.
    if !plain || learns_uid(user, ctx) || !tries_totp(user, &code, well_formed, &totp) {
        return None;
    }
    let secret = user.secret.as_deref().and_then(|s| p.crypto.open(&user.name, s))?;
    let Check::Valid { step } = totp.check(&secret, &code, now, user.last_step) else { return None };
    Some((step, audit_entry(ctx, now, AuditMethod::Totp, AuditResult::Accept, "valid code")))
}

/// The verdict of a login accepted by [`fast_step`]'s statement.
pub const FAST_ACCEPT: Verdict = Verdict::Accept { activated: false, failures: 0, locks: 0 };

/// What [`plan`] reads, read beforehand: the record of one name and, if
/// read, how many of its messages are failing. Any other read fails with
/// [`StoreError::NotRead`]: the plan is then made on the store.
pub struct Prefetched {
    pub name: String,
    pub user: Option<UserRecord>,
    pub failing_mail: Option<u64>,
}

impl PlanReads for Prefetched {
    fn user(&mut self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        match name == self.name {
            true => Ok(self.user.clone()),
            false => Err(StoreError::NotRead),
        }
    }

    fn user_by_uid(&mut self, _: u32) -> Result<Option<UserRecord>, StoreError> {
        Err(StoreError::NotRead)
    }

    fn enabled_user_nocase(&mut self, _: &str) -> Result<Option<UserRecord>, StoreError> {
        Err(StoreError::NotRead)
    }

    fn in_group(&mut self, _: &str, _: &str) -> Result<bool, StoreError> {
        Err(StoreError::NotRead)
    }

    fn failing_mail_for(&mut self, user: &str) -> Result<u64, StoreError> {
        match self.failing_mail {
            Some(n) if user == self.name => Ok(n),
            _ => Err(StoreError::NotRead),
        }
    }
}

/// An audit record a decision still has to write (method, result, reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub method: AuditMethod,
    pub result: AuditResult,
    pub reason: String,
}

impl Note {
    fn new(method: AuditMethod, result: AuditResult, reason: impl Into<String>) -> Note {
        Note { method, result, reason: reason.into() }
    }

    /// Writes the note to the audit table (and syslog).
    pub fn record(&self, store: &mut dyn Store, p: &Policy, ctx: &LoginContext, now: i64) -> Result<(), StoreError> {
        audit_method(store, p, ctx, now, self.method, self.result.clone(), &self.reason)
    }
}

/// The account a login is for. The directory may give one account several
/// names (case-insensitive SSSD/AD/winbind, `user@domain`), so the uid the
/// login process resolved decides, not the spelling. A root caller's name
/// falls back to the record of that exact name (users enabled before their
/// account existed have no uid yet). A non-root caller is only ever its own
/// uid: a name cannot point it at someone else's record.
pub fn find_account(store: &mut dyn PlanReads, ctx: &LoginContext) -> Result<Option<UserRecord>, StoreError> {
    if ctx.remote {
        // The name is the fleet's identity; a spelling that differs only
        // in case (a case-insensitive directory) finds the same record, so
        // it cannot skip the passcode as "not enrolled". On a host where
        // the two spellings are different people, the other one is asked
        // for this record's code and cannot pass. A caller other than root
        // is found by the name the agent gave its own uid, as a local one
        // is found by its uid: never by what it typed or claimed.
        let own = match (ctx.peer_uid, &ctx.account) {
            (0, _) => None,
            (_, Some(own)) => Some(own),
            (_, None) => return Ok(None),
        };
        // Exactly the agent's name for a caller other than root: another
        // person whose name differs only in case (or looks alike) must not
        // reach this record, let alone its pending secret.
        if let Some(own) = own {
            return Ok(store.user(own)?.filter(|u| u.enabled));
        }
        return match store.user(&ctx.user)?.filter(|u| u.enabled) {
            Some(u) => Ok(Some(u)),
            None => store.enabled_user_nocase(&ctx.user),
        };
    }
    if let Some(uid) = ctx.uid {
        if let Some(u) = store.user_by_uid(uid)?.filter(|u| u.enabled) {
            return Ok(Some(u));
        }
    }
    if ctx.peer_uid != 0 {
        return Ok(None);
    }
    store.user(&ctx.user)
}

/// May this caller ask about the account it named at all? Decided from the
/// connection alone, before the store is read, so neither the answer nor
/// its timing tells a non-root caller anything about other users.
pub fn may_ask(ctx: &LoginContext) -> bool {
    ctx.peer_uid == 0 || ctx.uid == Some(ctx.peer_uid)
}

/// First step of a login: what to ask. Only reads, so it can run on a
/// read-only connection; final answers (not enrolled, locked, refused) come
/// with the [`Note`] the caller must record before replying. Once the
/// account is found, `ctx` names it (see [`LoginContext::user`]).
pub fn plan(
    store: &mut dyn PlanReads,
    p: &Policy,
    ctx: &mut LoginContext,
    now: i64,
) -> Result<(Plan, Option<Note>), StoreError> {
    plan_seen(store, p, ctx, now, &mut None)
}

/// [`plan`], keeping in `seen` the enabled record it was decided on (for
/// [`fast_step`], which then needs no read of its own).
pub fn plan_seen(
    store: &mut dyn PlanReads,
    p: &Policy,
    ctx: &mut LoginContext,
    now: i64,
    seen: &mut Option<UserRecord>,
) -> Result<(Plan, Option<Note>), StoreError> {
    let user = match enabled_account(store, p, ctx)? {
        Ok(user) => user,
        Err(planned) => return Ok(planned),
    };
    *seen = Some(user.clone());
    if user.name != ctx.user {
        ctx.typed = Some(std::mem::replace(&mut ctx.user, user.name.clone()));
    }
    plan_for(store, p, &user, now)
}

/// A plan that ends the login here, with the note to audit.
type Planned = (Plan, Option<Note>);

/// Refused for `message`; audited as a TOTP denial for `why`.
fn refused(message: &'static str, why: impl Into<String>) -> Result<Result<UserRecord, Planned>, StoreError> {
    Ok(Err((Plan::Refused { message }, Some(Note::new(AuditMethod::Totp, AuditResult::Deny, why)))))
}

/// The enabled account this login is for, or the plan when there is none
/// to ask about (the uid to resolve first, a caller asking for another
/// account, a user not enrolled).
fn enabled_account(
    store: &mut dyn PlanReads,
    p: &Policy,
    ctx: &LoginContext,
) -> Result<Result<UserRecord, Planned>, StoreError> {
    // A directory lookup costs every login; most logins name an enrolled
    // account exactly as enrolled, and root's are then decided by that
    // record. Non-root callers are decided on their uid, before the store
    // is read; other spellings need the uid to find the account.
    let by_name = if ctx.uid.is_none() && !ctx.resolved {
        if ctx.peer_uid != 0 {
            return Ok(Err((Plan::ResolveUser, None)));
        }
        if ctx.remote {
            // Found by name alone (below); a remote uid decides nothing.
            None
        } else {
            match store.user(&ctx.user)?.filter(|u| u.enabled) {
                Some(u) => Some(u),
                None => return Ok(Err((Plan::ResolveUser, None))),
            }
        }
    } else {
        None
    };
    if !may_ask(ctx) {
        return refused(ONLY_YOURSELF, format!("caller uid {} may only authenticate itself", ctx.peer_uid));
    }
    // An agent that named no account for a caller other than root (its
    // uid has no name there, or the agent predates the rule): refused,
    // never waved through as "not enrolled".
    if ctx.remote && ctx.peer_uid != 0 && ctx.account.is_none() {
        return refused(ONLY_YOURSELF, format!("the agent named no account for caller uid {}", ctx.peer_uid));
    }
    let found = match by_name {
        Some(u) => Some(u),
        None => find_account(store, ctx)?,
    };
    // A record enabled before its account existed has no uid yet, so a
    // caller other than root cannot find it by uid. Until the daemon links
    // it (at start and hourly), that caller is refused, not waved through
    // as "not enrolled".
    if found.is_none()
        && !ctx.remote
        && ctx.peer_uid != 0
        && store.user(&ctx.user)?.is_some_and(|u| u.enabled && u.uid.is_none())
    {
        return refused(ONLY_YOURSELF, "enabled record has no uid yet; the daemon links it at start and hourly");
    }
    match found {
        Some(u) if u.enabled => Ok(Ok(u)),
        _ => {
            // Decided on the stored member list: no NSS on the login path.
            if let Some(g) = p.require_group.as_deref() {
                if store.in_group(g, &ctx.user)? {
                    return refused(MUST_ENROLL, format!("member of {g} (require_group) but not enabled for OTP"));
                }
            }
            let note = Note::new(AuditMethod::Totp, AuditResult::NotEnrolled, "user not enabled for OTP");
            Ok(Err((Plan::NotEnrolled, Some(note))))
        }
    }
}

/// What to ask an enabled user: nothing when locked; a code (by email too,
/// where allowed); the enrollment to finish; nothing when the record is
/// unusable.
fn plan_for(store: &mut dyn PlanReads, p: &Policy, user: &UserRecord, now: i64) -> Result<Planned, StoreError> {
    if user.is_locked(now) {
        return Ok((
            Plan::Locked { until: LockEnd::of(user, now) },
            Some(Note::new(AuditMethod::Totp, AuditResult::Locked, locked_reason(user))),
        ));
    }
    let email = email_allowed(p, user);
    if user.method == Method::Email {
        if !email {
            let note =
                Note::new(AuditMethod::Email, AuditResult::Deny, "emailed codes are disabled (email.enabled = false)");
            return Ok((
                Plan::Refused { message: "Your passcode method is not available; contact your administrator." },
                Some(note),
            ));
        }
        let failing = store.failing_mail_for(&user.name)? > 0;
        return Ok((Plan::Ask { email, mail_failing: failing }, None));
    }
    if user.activated_at.is_some() {
        let failing = email && store.failing_mail_for(&user.name)? > 0;
        return Ok((Plan::Ask { email, mail_failing: failing }, None));
    }
    let Some(secret) = user.secret.as_deref().and_then(|s| p.crypto.open(&user.name, s)) else {
        let note =
            Note::new(AuditMethod::Totp, AuditResult::Error, "stored secret cannot be decrypted (wrong key file?)");
        return Ok((
            Plan::Refused { message: "Your passcode enrollment is unusable; contact your administrator." },
            Some(note),
        ));
    };
    // Tokens are imported with their counter: there is nothing to scan.
    if user.method == Method::Hotp {
        let note =
            Note::new(AuditMethod::Hotp, AuditResult::Error, "HOTP record without an activation (import it again)");
        return Ok((
            Plan::Refused { message: "Your passcode enrollment is unusable; contact your administrator." },
            Some(note),
        ));
    }
    let plan = Plan::Enroll {
        uri: p.totp.uri(&secret, &p.issuer, &user.name),
        secret_b32: crate::core::totp::base32(&secret),
        email,
    };
    Ok((plan, None))
}

/// Checks an answer. Reads the user again: its state may have changed while
/// the user was typing (another login used the step, an admin reset it).
pub fn check_answer(
    store: &mut dyn Store,
    p: &Policy,
    ctx: &LoginContext,
    answer: &str,
    now: i64,
) -> Result<Verdict, StoreError> {
    check_answer_with(store, p, ctx, answer, None, now)
}

/// [`check_answer`] with the argon2id hash of a recovery-code-shaped
/// answer under the user's recovery salt ([`crate::core::recovery::hash`]),
/// computed by the caller off the database thread. An answer of that shape
/// without a hash is a wrong recovery code.
pub fn check_answer_with(
    store: &mut dyn Store,
    p: &Policy,
    ctx: &LoginContext,
    answer: &str,
    recovery_hash: Option<&[u8]>,
    now: i64,
) -> Result<Verdict, StoreError> {
    if !host_still_trusted(store, p, ctx, now)? {
        return Ok(Verdict::Deny { message: HOST_REVOKED.into() });
    }
    let Some(mut user) = store.user(&ctx.user)?.filter(|u| u.enabled) else {
        audit(store, p, ctx, now, AuditResult::Deny, "user was disabled during the login")?;
        return Ok(Verdict::Deny { message: "Passcode not accepted.".into() });
    };
    let email_ok = email_allowed(p, &user);
    let method = AuditMethod::of(user.method);
    if user.is_locked(now) {
        audit_method(store, p, ctx, now, method, AuditResult::Locked, &locked_reason(&user))?;
        return Ok(Verdict::Locked { until: LockEnd::of(&user, now) });
    }
    // Enter at the enrollment (QR) prompt, or at any prompt, is not a guess:
    // counting it would lock out users who only wanted to see their QR code.
    if answer.trim().is_empty() {
        audit_method(store, p, ctx, now, method, AuditResult::Deny, "no code entered")?;
        return Ok(Verdict::Deny { message: "No passcode entered.".into() });
    }
    let (code, well_formed) = typed_code(answer);
    let totp = totp_of(p, &user);
    let try_totp = tries_totp(&user, &code, well_formed, &totp);
    let try_hotp = user.method == Method::Hotp && well_formed && Some(code.len() as u32) == user.digits;
    let try_email = email_ok && well_formed && code.len() == p.email.digits as usize;
    user.updated_at = now;
    if learns_uid(&user, ctx) {
        user.uid = ctx.uid;
    }
    let mut failure = if answer.len() > MAX_ANSWER_LEN { Failure::TooLong } else { Failure::Malformed { email_ok } };
    if try_totp {
        match try_totp_code(store, p, ctx, &mut user, &totp, &code, now)? {
            Ok(verdict) => return Ok(verdict),
            Err(f) => failure = f,
        }
    }
    if try_hotp {
        match try_hotp_code(store, p, ctx, &mut user, &code, now)? {
            Ok(verdict) => return Ok(verdict),
            Err(f) => failure = f,
        }
    }
    let mut failed_method = method;
    if answer.len() <= MAX_ANSWER_LEN && crate::core::recovery::normalize(answer).is_some() {
        failed_method = AuditMethod::Recovery;
        failure = Failure::WrongRecovery;
        if let Some(hash) = recovery_hash {
            if store.use_recovery_code(&user.name, hash)? {
                let left = store.recovery_codes_left(&user.name)?;
                let why = format!("valid recovery code, {left} left");
                let (failures, locks) = accept(store, p, ctx, &mut user, now, AuditMethod::Recovery, &why)?;
                return Ok(Verdict::Recovered { failures, locks, left });
            }
        }
    }
    // A replayed TOTP code is not also tried as an emailed code.
    if try_email && !(try_totp && failure == Failure::Replayed) {
        failed_method = AuditMethod::Email;
        failure = match crate::core::email::check_code(store, p, &user.name, &ctx.machine, &code, now)? {
            crate::core::email::CodeCheck::Valid => {
                let (failures, locks) =
                    accept(store, p, ctx, &mut user, now, AuditMethod::Email, "valid emailed code")?;
                return Ok(Verdict::Accept { activated: false, failures, locks });
            }
            // Not an emailed code: what the TOTP check found stands.
            crate::core::email::CodeCheck::Wrong if try_totp => {
                if let Failure::ClockDrift { .. } = failure {
                    failed_method = method;
                    failure
                } else {
                    Failure::WrongCode
                }
            }
            crate::core::email::CodeCheck::Wrong => Failure::Email(crate::core::email::CodeCheck::Wrong),
            other => Failure::Email(other),
        };
    }
    // Imported scratch codes are 8 digits, like 8-digit TOTP or emailed
    // codes: those were tried first, so a code that is one of them is never
    // spent as a scratch code. The caller hashed the answer only if the
    // user has recovery codes.
    if let (Some(hash), Some(_)) = (recovery_hash, crate::core::recovery::scratch_shape(answer)) {
        if answer.len() <= MAX_ANSWER_LEN && store.use_recovery_code(&user.name, hash)? {
            let left = store.recovery_codes_left(&user.name)?;
            let why = format!("valid recovery (scratch) code, {left} left");
            let (failures, locks) = accept(store, p, ctx, &mut user, now, AuditMethod::Recovery, &why)?;
            return Ok(Verdict::Recovered { failures, locks, left });
        }
    }
    record_failure(store, p, ctx, &mut user, failed_method, failure, now)
}

/// A code checked against the user's TOTP secret: the verdict when it
/// decides, else why it failed.
fn try_totp_code(
    store: &mut dyn Store,
    p: &Policy,
    ctx: &LoginContext,
    user: &mut UserRecord,
    totp: &TotpParams,
    code: &str,
    now: i64,
) -> Result<Result<Verdict, Failure>, StoreError> {
    let Some(secret) = user.secret.as_deref().and_then(|s| p.crypto.open(&user.name, s)) else {
        audit(store, p, ctx, now, AuditResult::Error, "stored secret cannot be decrypted (wrong key file?)")?;
        return Ok(Ok(Verdict::Deny {
            message: "Your passcode enrollment is unusable; contact your administrator.".into(),
        }));
    };
    match totp.check(&secret, code, now, user.last_step) {
        // Another login (on this or another server) may have taken the
        // step since `user` was read: the database decides who has it.
        Check::Valid { step } if !store.consume_step(&user.name, step)? => Ok(Err(Failure::Replayed)),
        Check::Valid { step } => {
            let activated = user.activated_at.is_none();
            user.last_step = Some(step);
            if activated {
                user.activated_at = Some(now);
            }
            let (failures, locks) = accept(
                store,
                p,
                ctx,
                user,
                now,
                AuditMethod::Totp,
                if activated { "enrollment activated" } else { "valid code" },
            )?;
            Ok(Ok(Verdict::Accept { activated, failures, locks }))
        }
        Check::Replayed => Ok(Err(Failure::Replayed)),
        // Refused either way; a code of a step outside the window but
        // within ten minutes tells the user's clock is off. A step at or
        // below the last accepted one is not a sign of that (it may be an
        // old code someone saw).
        Check::Wrong => Ok(Err(match totp.drift(&secret, code, now) {
            Some(d) if user.last_step.is_none_or(|last| d.step > last) => Failure::ClockDrift { secs: d.secs },
            _ => Failure::WrongCode,
        })),
    }
}

/// A code checked against the user's HOTP token from its counter on: the
/// verdict when it decides, else why it failed.
fn try_hotp_code(
    store: &mut dyn Store,
    p: &Policy,
    ctx: &LoginContext,
    user: &mut UserRecord,
    code: &str,
    now: i64,
) -> Result<Result<Verdict, Failure>, StoreError> {
    let (Some(secret), Some(counter)) =
        (user.secret.as_deref().and_then(|s| p.crypto.open(&user.name, s)), user.hotp_counter)
    else {
        audit_method(
            store,
            p,
            ctx,
            now,
            AuditMethod::Hotp,
            AuditResult::Error,
            "stored secret cannot be decrypted (wrong key file?)",
        )?;
        return Ok(Ok(Verdict::Deny {
            message: "Your passcode enrollment is unusable; contact your administrator.".into(),
        }));
    };
    let digits = user.digits.unwrap_or(6);
    let from = counter.max(0) as u64;
    match crate::core::totp::hotp_find(&secret, code, digits, from, u64::from(p.hotp_window)) {
        // Another login (on this or another server) may have moved the
        // counter past this code since `user` was read: the database decides.
        Some(c) if !store.consume_counter(&user.name, c as i64)? => Ok(Err(Failure::Replayed)),
        Some(c) => {
            // A stale copy must not undo what consume_counter wrote.
            user.hotp_counter = Some(c as i64 + 1);
            let reason = if c == from { "valid code".to_string() } else { format!("valid code ({} ahead)", c - from) };
            let (failures, locks) = accept(store, p, ctx, user, now, AuditMethod::Hotp, &reason)?;
            Ok(Ok(Verdict::Accept { activated: false, failures, locks }))
        }
        // The last few codes before the counter: a replay, not a guess at
        // a new one (still a failure: it counts towards the lock).
        None if from > 0
            && crate::core::totp::hotp_find(&secret, code, digits, from - from.min(3), from.min(3) - 1).is_some() =>
        {
            Ok(Err(Failure::Replayed))
        }
        None => Ok(Err(Failure::WrongCode)),
    }
}

/// A failed answer: counted, locking the account when there were too
/// many, and audited.
fn record_failure(
    store: &mut dyn Store,
    p: &Policy,
    ctx: &LoginContext,
    user: &mut UserRecord,
    failed_method: AuditMethod,
    failure: Failure,
    now: i64,
) -> Result<Verdict, StoreError> {
    match failure {
        Failure::ClockDrift { secs } => {
            user.clock_drift_secs = Some(secs);
            user.clock_drift_at = Some(now);
            user.clock_drift_refusals = user.clock_drift_refusals.saturating_add(1);
        }
        _ => user.clock_drift_refusals = 0,
    }
    let reason = failure.reason();
    let message = match failure {
        Failure::ClockDrift { secs } if user.clock_drift_refusals >= DRIFT_ADVICE_AFTER => clock_advice(secs),
        _ => failure.message().to_string(),
    };
    user.failures = user.failures.saturating_add(1);
    user.failures_since_login = user.failures_since_login.saturating_add(1);
    if user.failures >= p.lockout.max_failures {
        // Locks escalate until a successful login: a lock's end does not
        // give the attacker a fresh budget of the same size.
        user.failures = 0;
        user.lock_periods = user.lock_periods.saturating_add(1);
        let why = match p.lockout.lock_duration(user.lock_periods) {
            Some(d) => {
                user.locked_until = Some(now.saturating_add(d.as_secs().min(i64::MAX as u64) as i64));
                format!(
                    "{reason}; account locked for {} (lock {} in a row, {} failures since the last login)",
                    humantime::format_duration(d),
                    user.lock_periods,
                    user.failures_since_login
                )
            }
            None => {
                user.admin_locked_at = Some(now);
                tracing::warn!(
                    "{}: {} failures since the last login; locked until an administrator runs `otpctl user unlock {}`",
                    user.name,
                    user.failures_since_login,
                    user.name
                );
                format!(
                    "{reason}; account locked until an administrator unlocks it (lock {} in a row, {} failures since the last login)",
                    user.lock_periods, user.failures_since_login
                )
            }
        };
        store.save_user(user)?;
        audit_method(store, p, ctx, now, failed_method, AuditResult::Locked, &why)?;
        return Ok(Verdict::Locked { until: LockEnd::of(user, now) });
    }
    store.save_user(user)?;
    audit_method(store, p, ctx, now, failed_method, AuditResult::Deny, &reason)?;
    Ok(Verdict::Deny { message })
}

/// Refusals for clock drift in a row after which the user is told.
pub const DRIFT_ADVICE_AFTER: u32 = 2;

/// What a user whose authenticator's clock is off reads at the prompt
/// (one refusal may be a mistyped code; two in a row are the clock).
pub fn clock_advice(secs: i64) -> String {
    let (n, dir) = common::proto::drift_minutes(secs);
    let unit = if n == 1 { "minute" } else { "minutes" };
    format!(
        "Your authenticator's clock seems to be about {n} {unit} {dir}. \
         Set your phone's time and time zone to automatic, then try again."
    )
}

/// Why an answer was not accepted: the audit reason and the user's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    TooLong,
    /// Not a number of the right length; `email_ok`: emailed codes are another option.
    Malformed {
        email_ok: bool,
    },
    WrongCode,
    /// A TOTP code of a step outside the window, within ten minutes: the
    /// authenticator's clock is off by about `secs` (positive: ahead).
    ClockDrift {
        secs: i64,
    },
    /// The TOTP step was used before (here or on another server).
    Replayed,
    /// An emailed code that did not work (never `Valid`).
    Email(crate::core::email::CodeCheck),
    /// Shaped like a recovery code, but not one of the user's unused ones.
    WrongRecovery,
}

impl Failure {
    fn reason(self) -> std::borrow::Cow<'static, str> {
        if let Failure::ClockDrift { secs } = self {
            let (n, dir) = common::proto::drift_minutes(secs);
            return format!("wrong code: authenticator clock about {n} min {dir}").into();
        }
        self.fixed_reason().into()
    }

    fn fixed_reason(self) -> &'static str {
        use crate::core::email::CodeCheck as C;
        match self {
            Failure::ClockDrift { .. } => "wrong code",
            Failure::TooLong => "answer too long",
            Failure::Malformed { .. } => "malformed answer",
            Failure::WrongCode => "wrong code",
            Failure::Replayed => "code already used",
            Failure::WrongRecovery => "wrong or used recovery code",
            Failure::Email(C::Wrong | C::Valid) => "wrong emailed code",
            Failure::Email(C::Expired) => "emailed code expired",
            Failure::Email(C::Used) => "emailed code already used",
            Failure::Email(C::OtherMachine) => "emailed code issued on another machine",
            Failure::Email(C::NoCode) => "no emailed code outstanding",
        }
    }

    fn message(self) -> &'static str {
        use crate::core::email::CodeCheck as C;
        match self {
            Failure::TooLong => "Passcode not accepted.",
            Failure::Malformed { email_ok: true } => "That is not a valid passcode.",
            Failure::Malformed { email_ok: false } => "A passcode is a number of exactly the digits your app shows.",
            Failure::WrongCode | Failure::ClockDrift { .. } => "Wrong passcode.",
            Failure::Replayed => "That passcode was already used; wait for the next one.",
            Failure::WrongRecovery => "Wrong or already used recovery code.",
            Failure::Email(C::Wrong | C::Valid) => "Wrong code.",
            Failure::Email(C::Expired) => "That code has expired; press Enter to get a new one.",
            Failure::Email(C::Used) => "That code was already used.",
            Failure::Email(C::OtherMachine) => "That code was issued for another machine.",
            Failure::Email(C::NoCode) => "No code was sent for this login; press Enter to get one.",
        }
    }
}

/// May this user ask for an emailed code?
pub fn email_allowed(p: &Policy, user: &UserRecord) -> bool {
    p.email.enabled && (user.method == Method::Email || p.email.fallback)
}

fn locked_reason(user: &UserRecord) -> String {
    if user.admin_locked_at.is_some() {
        "account locked until an administrator unlocks it".into()
    } else {
        "account locked after too many failures".into()
    }
}

/// Records a successful login; returns the failures and locks since the
/// previous one, which the user is told about (they may not have been theirs).
fn accept(
    store: &mut dyn Store,
    p: &Policy,
    ctx: &LoginContext,
    user: &mut UserRecord,
    now: i64,
    method: AuditMethod,
    reason: &str,
) -> Result<(u32, u32), StoreError> {
    let (failures, locks) = (user.failures_since_login, user.lock_periods);
    user.clear_lockout();
    user.last_login = Some(now);
    user.last_method = Some(method);
    if user.method == Method::Email && user.activated_at.is_none() {
        user.activated_at = Some(now);
    }
    store.save_user(user)?;
    if failures == 0 {
        audit_method(store, p, ctx, now, method, AuditResult::Accept, reason)?;
        return Ok((0, 0));
    }
    if locks > 0 {
        tracing::warn!(
            "{} logged in after {failures} failed attempts and {locks} lock(s) since the previous login; \
             if they were not the user's, someone has the first factor",
            user.name
        );
    }
    let reason = format!("{reason}; {failures} failed attempt(s) and {locks} lock(s) since the previous login");
    audit_method(store, p, ctx, now, method, AuditResult::Accept, &reason)?;
    Ok((failures, locks))
}

/// A fresh enrollment record (new secret, not activated).
pub fn new_enrollment(p: &Policy, existing: Option<UserRecord>, name: &str, uid: Option<u32>, now: i64) -> UserRecord {
    use rand::RngCore;
    let mut secret = vec![0u8; p.totp.secret_len()];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let sealed = p.crypto.seal(name, &secret);
    let base = existing.unwrap_or_else(|| UserRecord::new(name, uid, now));
    let mut rec = UserRecord {
        uid: uid.or(base.uid),
        method: Method::Totp,
        enabled: true,
        secret: Some(sealed),
        activated_at: None,
        // A new key makes old codes meaningless; the step counter restarts.
        last_step: None,
        hotp_counter: None,
        digits: None,
        updated_at: now,
        ..base
    };
    // Guesses at the old key say nothing about the new one, and a user reset
    // after losing the phone must see the new QR code, not "locked".
    rec.clear_lockout();
    rec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::context::valid_user_name;
    use crate::core::crypto::SecretBox;
    use crate::store::sqlite::SqliteStore;
    use common::config::Algorithm;
    use common::config::{EmailConfig, LockoutConfig};
    use std::time::Duration;

    const T0: i64 = 1_700_000_000;

    fn policy(max_failures: u32) -> Policy {
        Policy {
            totp: TotpParams { algorithm: Algorithm::SHA1, digits: 6, period: 30, skew: 1 },
            hotp_window: 10,
            require_group: None,
            lockout: LockoutConfig { max_failures, lock_for: Duration::from_secs(900), max_lock_periods: 4 },
            issuer: "test".into(),
            machine: "m1".into(),
            crypto: SecretBox::from_key(&[3u8; 32]),
            email: EmailConfig { fallback: false, ..EmailConfig::default() },
        }
    }

    fn ctx(user: &str) -> LoginContext {
        LoginContext { user: user.into(), service: "login".into(), machine: "m1".into(), ..Default::default() }
    }

    /// Enrolls `user` and returns its plain secret (decrypted as the daemon would).
    fn enroll(s: &mut SqliteStore, p: &Policy, user: &str, uid: Option<u32>) -> Vec<u8> {
        let rec = new_enrollment(p, None, user, uid, T0);
        s.save_user(&rec).unwrap();
        p.crypto.open(user, rec.secret.as_deref().unwrap()).unwrap()
    }

    fn code(p: &Policy, secret: &[u8], t: i64) -> String {
        p.totp.code_at_step(secret, p.totp.step_of(t))
    }

    /// HOTP: no QR code, a code up to `hotp_window` ahead moves the counter
    /// past it, a used code is a replay, and failures lock as for TOTP.
    #[test]
    fn hotp_window_counter_replay_and_lockout() {
        let p = policy(3);
        let mut s = SqliteStore::in_memory().unwrap();
        let secret = b"12345678901234567890".to_vec();
        let rec = UserRecord {
            method: Method::Hotp,
            secret: Some(p.crypto.seal("hank", &secret)),
            activated_at: Some(T0),
            hotp_counter: Some(2),
            digits: Some(6),
            ..new_enrollment(&p, None, "hank", None, T0)
        };
        s.save_user(&rec).unwrap();
        let code = |c: u64| crate::core::totp::hotp(&secret, c, 6);
        let (planned, _) = plan(&mut s, &p, &mut ctx("hank"), T0).unwrap();
        assert_eq!(planned, Plan::Ask { email: false, mail_failing: false }, "no QR code for a token");
        let deny = |s: &mut SqliteStore, c: &str| check_answer(s, &p, &ctx("hank"), c, T0).unwrap();
        assert_eq!(deny(&mut s, &code(1)), Verdict::Deny { message: Failure::Replayed.message().into() });
        assert!(matches!(deny(&mut s, &code(7)), Verdict::Accept { failures: 1, .. }), "5 ahead");
        assert_eq!(s.user("hank").unwrap().unwrap().hotp_counter, Some(8));
        assert_eq!(deny(&mut s, &code(7)), Verdict::Deny { message: Failure::Replayed.message().into() });
        assert_eq!(deny(&mut s, &code(8 + 11)), Verdict::Deny { message: Failure::WrongCode.message().into() });
        assert!(matches!(deny(&mut s, "000000"), Verdict::Locked { .. }));
        assert!(matches!(deny(&mut s, &code(8)), Verdict::Locked { .. }), "locked even with the right code");
        assert_eq!(s.user("hank").unwrap().unwrap().hotp_counter, Some(8));
        let reasons: Vec<String> =
            s.audit(Some("hank"), None, None, 10).unwrap().into_iter().map(|e| e.method).collect();
        assert!(reasons.iter().all(|m| m == "hotp"), "{reasons:?}");
    }

    #[test]
    fn enroll_activate_then_ask_and_replay() {
        let p = policy(10);
        let mut s = SqliteStore::in_memory().unwrap();
        let secret = enroll(&mut s, &p, "alice", None);
        assert!(secret.len() >= 20);
        let Plan::Enroll { uri, secret_b32, .. } = plan(&mut s, &p, &mut ctx("alice"), T0).unwrap().0 else { panic!() };
        assert!(uri.contains(&secret_b32));
        assert_eq!(
            check_answer(&mut s, &p, &ctx("alice"), "000000x", T0).unwrap(),
            Verdict::Deny { message: "A passcode is a number of exactly the digits your app shows.".into() }
        );
        assert!(matches!(plan(&mut s, &p, &mut ctx("alice"), T0).unwrap().0, Plan::Enroll { .. }));
        let c = code(&p, &secret, T0);
        assert_eq!(
            check_answer(&mut s, &p, &ctx("alice"), &c, T0).unwrap(),
            Verdict::Accept { activated: true, failures: 1, locks: 0 }
        );
        assert_eq!(
            plan(&mut s, &p, &mut ctx("alice"), T0 + 1).unwrap().0,
            Plan::Ask { email: false, mail_failing: false }
        );
        assert!(matches!(check_answer(&mut s, &p, &ctx("alice"), &c, T0 + 1).unwrap(), Verdict::Deny { .. }));
        // Clock stepped back: the used code is still refused.
        assert!(matches!(check_answer(&mut s, &p, &ctx("alice"), &c, T0 - 30).unwrap(), Verdict::Deny { .. }));
        let next = code(&p, &secret, T0 + 30);
        assert_eq!(
            check_answer(&mut s, &p, &ctx("alice"), &next, T0 + 30).unwrap(),
            Verdict::Accept { activated: false, failures: 2, locks: 0 }
        );
        let results: Vec<String> =
            s.audit(Some("alice"), None, None, 100).unwrap().into_iter().map(|e| e.reason).collect();
        assert!(results
            .contains(&"enrollment activated; 1 failed attempt(s) and 0 lock(s) since the previous login".to_string()));
        assert!(results.contains(&"code already used".to_string()));
    }

    /// A recovery code, checked as the conversation does: hashed under the
    /// stored salt first, then decided in the transaction.
    fn recover(s: &mut SqliteStore, p: &Policy, user: &str, answer: &str, t: i64) -> Verdict {
        let salt = s.recovery_salt(user).unwrap().unwrap_or_else(crate::core::recovery::new_salt);
        let hash = crate::core::recovery::normalize(answer).map(|c| crate::core::recovery::hash(&salt, &c).unwrap());
        check_answer_with(s, p, &ctx(user), answer, hash.as_deref(), t).unwrap()
    }

    #[test]
    fn recovery_codes_work_once_count_down_and_share_the_lockout() {
        let p = policy(3);
        let mut s = SqliteStore::in_memory().unwrap();
        let secret = enroll(&mut s, &p, "rita", None);
        let c = code(&p, &secret, T0);
        assert!(matches!(check_answer(&mut s, &p, &ctx("rita"), &c, T0).unwrap(), Verdict::Accept { .. }));
        let (codes, salt, hashes) = crate::core::recovery::new_set().unwrap();
        s.set_recovery_codes("rita", &salt, &hashes).unwrap();
        // Shown with a dash, typed in capitals: accepted once.
        let typed = crate::core::recovery::display(&codes[0]).to_uppercase();
        assert_eq!(recover(&mut s, &p, "rita", &typed, T0 + 60), Verdict::Recovered { failures: 0, locks: 0, left: 9 });
        assert!(matches!(recover(&mut s, &p, "rita", &typed, T0 + 61), Verdict::Deny { .. }), "used once");
        assert_eq!(
            recover(&mut s, &p, "rita", &codes[1], T0 + 62),
            Verdict::Recovered { failures: 1, locks: 0, left: 8 }
        );
        assert_eq!(s.user("rita").unwrap().unwrap().last_method, Some(AuditMethod::Recovery));
        // Without the hash (as if computed under the wrong salt) the answer is a wrong code.
        assert!(matches!(check_answer(&mut s, &p, &ctx("rita"), &codes[2], T0 + 63).unwrap(), Verdict::Deny { .. }));
        // Wrong codes lock the account like wrong passcodes; then even a good code is refused.
        assert!(matches!(recover(&mut s, &p, "rita", "aaaaa-aaaaa", T0 + 64), Verdict::Deny { .. }));
        assert!(matches!(recover(&mut s, &p, "rita", "bbbbbbbbbb", T0 + 65), Verdict::Locked { .. }));
        assert!(matches!(recover(&mut s, &p, "rita", &codes[2], T0 + 66), Verdict::Locked { .. }));
        assert_eq!(s.recovery_codes_left("rita").unwrap(), 8, "a locked account uses no code");
        assert_eq!(
            recover(&mut s, &p, "rita", &codes[2], T0 + 2000),
            Verdict::Recovered { failures: 3, locks: 1, left: 7 }
        );
        let audit = s.audit(Some("rita"), None, None, 100).unwrap();
        assert!(audit.iter().any(|e| e.method == "recovery" && e.result == "accept"));
        assert!(audit.iter().any(|e| e.method == "recovery" && e.result == "locked"));
        for e in &audit {
            for c in &codes {
                assert!(!e.reason.contains(c.as_str()), "a code in the audit: {}", e.reason);
            }
        }
        // A user without codes: any code-shaped answer is a wrong one.
        enroll(&mut s, &p, "sam", None);
        assert!(matches!(recover(&mut s, &p, "sam", &codes[5], T0), Verdict::Deny { .. }));
        assert_eq!(s.user("sam").unwrap().unwrap().failures, 1);
    }

    /// Imported scratch codes are 8 digits like emailed codes: the emailed
    /// code is checked first, then the scratch code.
    #[test]
    fn scratch_codes_are_tried_after_emailed_codes() {
        let p = Policy {
            email: EmailConfig { enabled: true, fallback: true, digits: 8, ..EmailConfig::default() },
            ..policy(10)
        };
        let mut s = SqliteStore::in_memory().unwrap();
        let secret = enroll(&mut s, &p, "sid", None);
        assert!(matches!(
            check_answer(&mut s, &p, &ctx("sid"), &code(&p, &secret, T0), T0).unwrap(),
            Verdict::Accept { .. }
        ));
        let salt = crate::core::recovery::new_salt();
        let key = *p.crypto.scratch_key();
        let hashes = vec![crate::core::recovery::hash_scratch(&key, &salt, "12345678").unwrap()];
        s.set_recovery_codes("sid", &salt, &hashes).unwrap();
        let attempt = |s: &mut SqliteStore, answer: &str| {
            let hash = crate::core::recovery::scratch_shape(answer)
                .map(|c| crate::core::recovery::hash_scratch(&key, &salt, &c).unwrap());
            check_answer_with(s, &p, &ctx("sid"), answer, hash.as_deref(), T0 + 60).unwrap()
        };
        assert!(matches!(attempt(&mut s, "87654321"), Verdict::Deny { .. }));
        assert_eq!(attempt(&mut s, "1234 5678"), Verdict::Recovered { failures: 1, locks: 0, left: 0 });
        assert!(matches!(attempt(&mut s, "12345678"), Verdict::Deny { .. }), "used once");
        let audit = s.audit(Some("sid"), None, None, 10).unwrap();
        assert!(audit.iter().any(|e| e.method == "recovery" && e.result == "accept" && !e.reason.contains("12345678")));
    }

    /// Check item 6 of issue 21: a code of a step outside the window but
    /// within ten minutes is refused and counted as today; the audit and
    /// the record say how far the authenticator's clock is off; the second
    /// such refusal in a row tells the user to fix the phone's clock; a
    /// success forgets it.
    #[test]
    fn clock_drift_is_refused_counted_and_diagnosed() {
        let p = policy(10);
        let mut s = SqliteStore::in_memory().unwrap();
        let secret = enroll(&mut s, &p, "tess", None);
        assert!(matches!(
            check_answer(&mut s, &p, &ctx("tess"), &code(&p, &secret, T0), T0).unwrap(),
            Verdict::Accept { .. }
        ));
        let at = |t: i64| code(&p, &secret, t);
        let wrong = Verdict::Deny { message: "Wrong passcode.".into() };
        let t = T0 + 600;

        // Five minutes ahead: refused, counted, diagnosed; no advice yet.
        assert_eq!(check_answer(&mut s, &p, &ctx("tess"), &at(t + 300), t).unwrap(), wrong);
        let u = s.user("tess").unwrap().unwrap();
        assert_eq!(
            (u.failures, u.clock_drift_secs, u.clock_drift_at, u.clock_drift_refusals),
            (1, Some(300), Some(t), 1)
        );
        let last = s.audit(Some("tess"), None, None, 1).unwrap().remove(0);
        assert_eq!(
            (last.result.as_str(), last.reason.as_str()),
            ("deny", "wrong code: authenticator clock about 5 min ahead")
        );
        // The second in a row: the advice.
        let advice = clock_advice(300);
        assert_eq!(
            advice,
            "Your authenticator's clock seems to be about 5 minutes ahead. \
             Set your phone's time and time zone to automatic, then try again."
        );
        assert_eq!(
            check_answer(&mut s, &p, &ctx("tess"), &at(t + 330), t + 30).unwrap(),
            Verdict::Deny { message: clock_advice(300) }
        );
        assert_eq!(s.user("tess").unwrap().unwrap().clock_drift_refusals, 2);
        // A success forgets it all.
        assert_eq!(
            check_answer(&mut s, &p, &ctx("tess"), &at(t + 60), t + 60).unwrap(),
            Verdict::Accept { activated: false, failures: 2, locks: 0 }
        );
        let u = s.user("tess").unwrap().unwrap();
        assert_eq!((u.clock_drift_secs, u.clock_drift_at, u.clock_drift_refusals), (None, None, 0));

        // Behind, at the edges: just outside the ±1 window is "about 1 min".
        let t = t + 3600;
        assert_eq!(check_answer(&mut s, &p, &ctx("tess"), &at(t - 60), t).unwrap(), wrong);
        let last = s.audit(Some("tess"), None, None, 1).unwrap().remove(0);
        assert_eq!(last.reason, "wrong code: authenticator clock about 1 min behind");
        // Ten minutes behind: still diagnosed, and the second in a row.
        let t = t + 30;
        assert_eq!(
            check_answer(&mut s, &p, &ctx("tess"), &at(t - 600), t).unwrap(),
            Verdict::Deny { message: clock_advice(-600) }
        );
        assert!(clock_advice(-600).contains("about 10 minutes behind"));
        assert!(clock_advice(-60).contains("about 1 minute behind"));
        let u = s.user("tess").unwrap().unwrap();
        assert_eq!((u.clock_drift_secs, u.clock_drift_refusals), (Some(-600), 2));

        // Beyond ten minutes: a plain wrong code, which ends the row (the
        // drift last seen stays for the admin until a success).
        let t = t + 30;
        assert_eq!(check_answer(&mut s, &p, &ctx("tess"), &at(t - 630), t).unwrap(), wrong);
        assert_eq!(s.audit(Some("tess"), None, None, 1).unwrap().remove(0).reason, "wrong code");
        let u = s.user("tess").unwrap().unwrap();
        assert_eq!((u.clock_drift_secs, u.clock_drift_refusals, u.failures), (Some(-600), 0, 3));
        assert_eq!(check_answer(&mut s, &p, &ctx("tess"), &at(t + 630), t).unwrap(), wrong);
        assert_eq!(s.audit(Some("tess"), None, None, 1).unwrap().remove(0).reason, "wrong code");
        // So one more drifting code is the first of a new row: no advice.
        assert_eq!(check_answer(&mut s, &p, &ctx("tess"), &at(t + 120), t).unwrap(), wrong);
        assert_eq!(s.user("tess").unwrap().unwrap().clock_drift_refusals, 1);
        // No audit row holds a code.
        for e in s.audit(Some("tess"), None, None, 100).unwrap() {
            for k in -25..=25 {
                assert!(!e.reason.contains(&at(t + 30 * k)), "{}", e.reason);
            }
        }
    }

    /// A drifting code is still a failure towards the lock.
    #[test]
    fn clock_drift_refusals_lock_as_wrong_codes_do() {
        let p = policy(2);
        let mut s = SqliteStore::in_memory().unwrap();
        let secret = enroll(&mut s, &p, "uma", None);
        let ahead = code(&p, &secret, T0 + 300);
        assert_eq!(
            check_answer(&mut s, &p, &ctx("uma"), &ahead, T0).unwrap(),
            Verdict::Deny { message: "Wrong passcode.".into() }
        );
        assert!(matches!(check_answer(&mut s, &p, &ctx("uma"), &ahead, T0).unwrap(), Verdict::Locked { .. }));
        let last = s.audit(Some("uma"), None, None, 1).unwrap().remove(0);
        assert_eq!(last.result, "locked");
        assert!(
            last.reason.starts_with("wrong code: authenticator clock about 5 min ahead; account locked"),
            "{}",
            last.reason
        );
        // The code of the enrollment's own step, once used, is not a sign of drift.
        let mut u = s.user("uma").unwrap().unwrap();
        u.clear_lockout();
        u.last_step = Some(p.totp.step_of(T0 + 300));
        s.save_user(&u).unwrap();
        assert_eq!(
            check_answer(&mut s, &p, &ctx("uma"), &ahead, T0).unwrap(),
            Verdict::Deny { message: "Wrong passcode.".into() }
        );
        assert_eq!(s.audit(Some("uma"), None, None, 1).unwrap().remove(0).reason, "wrong code");
    }

    #[test]
    fn odd_answers_are_failures() {
        let p = policy(100);
        let mut s = SqliteStore::in_memory().unwrap();
        let secret = enroll(&mut s, &p, "bob", None);
        let good = code(&p, &secret, T0);
        let arabic: String = good.chars().map(|c| char::from_u32(0x0660 + c.to_digit(10).unwrap()).unwrap()).collect();
        let long = "1".repeat(MAX_ANSWER_LEN + 1);
        for bad in ["12345", "1234567", "12345\u{0}6", &arabic, "１２３４５６", &long, "\u{FFFD}\u{FFFD}"] {
            assert!(matches!(check_answer(&mut s, &p, &ctx("bob"), bad, T0).unwrap(), Verdict::Deny { .. }), "{bad:?}");
        }
        assert_eq!(s.user("bob").unwrap().unwrap().failures, 7);
        // "123 456" as apps show it is fine.
        let spaced = format!("{} {}", &good[..3], &good[3..]);
        assert_eq!(
            check_answer(&mut s, &p, &ctx("bob"), &spaced, T0).unwrap(),
            Verdict::Accept { activated: true, failures: 7, locks: 0 }
        );
        assert_eq!(s.user("bob").unwrap().unwrap().failures, 0);
    }

    #[test]
    fn lockout_persists_and_expires_by_clock() {
        let p = policy(3);
        let mut s = SqliteStore::in_memory().unwrap();
        let secret = enroll(&mut s, &p, "carol", None);
        for i in 0..2 {
            assert!(matches!(check_answer(&mut s, &p, &ctx("carol"), "000000", T0 + i).unwrap(), Verdict::Deny { .. }));
        }
        let v = check_answer(&mut s, &p, &ctx("carol"), "000000", T0 + 2).unwrap();
        assert_eq!(v, Verdict::Locked { until: LockEnd::At(T0 + 2 + 900) });
        // Even the right code is refused while locked, and is not consumed.
        let good = code(&p, &secret, T0 + 100);
        assert!(matches!(check_answer(&mut s, &p, &ctx("carol"), &good, T0 + 100).unwrap(), Verdict::Locked { .. }));
        assert!(matches!(plan(&mut s, &p, &mut ctx("carol"), T0 + 100).unwrap().0, Plan::Locked { .. }));
        // Once the lock has run out, a valid code works.
        let later = T0 + 2 + 900;
        let good = code(&p, &secret, later);
        assert_eq!(
            check_answer(&mut s, &p, &ctx("carol"), &good, later).unwrap(),
            Verdict::Accept { activated: true, failures: 3, locks: 1 }
        );
    }

    /// Fails `n` times at `t`; returns the last verdict.
    fn fail(s: &mut SqliteStore, p: &Policy, user: &str, n: u32, t: i64) -> Verdict {
        let mut last = None;
        for _ in 0..n {
            last = Some(check_answer(s, p, &ctx(user), "000000", t).unwrap());
        }
        last.unwrap()
    }

    #[test]
    fn locks_double_until_the_last_one_which_only_an_admin_lifts() {
        // 3 failures a lock, 900 s doubling, the 4th lock in a row is the admin's.
        let p = policy(3);
        let mut s = SqliteStore::in_memory().unwrap();
        let secret = enroll(&mut s, &p, "lena", None);
        let mut t = T0;
        for (period, secs) in [(1, 900), (2, 1800), (3, 3600)] {
            assert!(matches!(fail(&mut s, &p, "lena", 2, t), Verdict::Deny { .. }));
            assert_eq!(fail(&mut s, &p, "lena", 1, t), Verdict::Locked { until: LockEnd::At(t + secs) }, "{period}");
            let u = s.user("lena").unwrap().unwrap();
            assert_eq!((u.lock_periods, u.failures, u.failures_since_login), (period, 0, 3 * period));
            // Still locked a second before the end, also for a guess.
            assert!(matches!(fail(&mut s, &p, "lena", 1, t + secs - 1), Verdict::Locked { .. }));
            t += secs;
        }
        assert!(matches!(fail(&mut s, &p, "lena", 2, t), Verdict::Deny { .. }));
        assert_eq!(fail(&mut s, &p, "lena", 1, t), Verdict::Locked { until: LockEnd::AdminUnlock });
        let u = s.user("lena").unwrap().unwrap();
        assert_eq!((u.lock_periods, u.failures_since_login, u.admin_locked_at), (4, 12, Some(t)));
        // A year later the right code is still refused, and not consumed.
        let year = t + 366 * 86400;
        let good = code(&p, &secret, year);
        assert_eq!(
            check_answer(&mut s, &p, &ctx("lena"), &good, year).unwrap(),
            Verdict::Locked { until: LockEnd::AdminUnlock }
        );
        assert_eq!(plan(&mut s, &p, &mut ctx("lena"), year).unwrap().0, Plan::Locked { until: LockEnd::AdminUnlock });
        let audit = s.audit(Some("lena"), None, None, 100).unwrap();
        let locks = audit.iter().filter(|e| e.result == "locked" && e.reason.starts_with("wrong code")).count();
        assert_eq!(locks, 4);
        assert!(audit.iter().any(|e| e.reason.contains("until an administrator unlocks it (lock 4 in a row")));
        // What `otpctl user unlock` does: the user is still told about the failures.
        let mut u = s.user("lena").unwrap().unwrap();
        u.unlock();
        s.save_user(&u).unwrap();
        assert_eq!(
            check_answer(&mut s, &p, &ctx("lena"), &good, year).unwrap(),
            Verdict::Accept { activated: true, failures: 12, locks: 0 }
        );
    }

    /// The figure docs/SECURITY.md publishes: an attacker who has the first
    /// factor and guesses as fast as the daemon lets them, for a year, with
    /// every default (6 digits, skew 1, 10 failures, 15 min doubling, 10 locks).
    #[test]
    fn with_the_defaults_an_attacker_alone_gets_100_guesses_a_year() {
        let p = Policy {
            totp: (&common::config::TotpConfig::default()).into(),
            hotp_window: 10,
            require_group: None,
            lockout: LockoutConfig::default(),
            ..policy(0)
        };
        let mut s = SqliteStore::in_memory().unwrap();
        let secret = enroll(&mut s, &p, "vic", None);
        let (mut t, end) = (T0, T0 + 365 * 86400);
        let (mut guesses, mut locks) = (0u32, Vec::new());
        while t < end && guesses < 10_000 {
            // A guess outside the whole window, so the run is deterministic.
            let valid: Vec<String> = (-1..=1).map(|k| code(&p, &secret, t + 30 * k)).collect();
            let guess = ["000000", "111111", "222222", "333333"].into_iter().find(|g| !valid.iter().any(|v| v == g));
            match check_answer(&mut s, &p, &ctx("vic"), guess.unwrap(), t).unwrap() {
                Verdict::Deny { .. } => guesses += 1,
                Verdict::Locked { until: LockEnd::At(u) } if u > t => {
                    guesses += 1;
                    locks.push(u - t);
                    t = u;
                }
                Verdict::Locked { until: LockEnd::AdminUnlock } => {
                    guesses += 1;
                    break;
                }
                other => panic!("{other:?} at {t}"),
            }
        }
        let minutes: Vec<i64> = locks.iter().map(|l| l / 60).collect();
        assert_eq!(minutes, [15, 30, 60, 120, 240, 480, 960, 1920, 3840]);
        assert_eq!(guesses, 100, "NIST SP 800-63B: at most 100 consecutive failures");
        // The admin lock holds for the rest of the year.
        assert!(matches!(
            plan(&mut s, &p, &mut ctx("vic"), end).unwrap().0,
            Plan::Locked { until: LockEnd::AdminUnlock }
        ));
        let per_guess = 3.0 / 1e6;
        let success = 1.0 - (1.0f64 - per_guess).powi(guesses as i32);
        assert!(success < 0.001, "{success}");
        // Time until the admin lock: 15 min × (2^9 − 1) = 127.75 h.
        assert_eq!(locks.iter().sum::<i64>(), 15 * 60 * 511);
    }

    #[test]
    fn a_success_ends_the_escalation_and_tells_the_user() {
        let p = policy(3);
        let mut s = SqliteStore::in_memory().unwrap();
        let secret = enroll(&mut s, &p, "mia", None);
        fail(&mut s, &p, "mia", 3, T0);
        fail(&mut s, &p, "mia", 4, T0 + 900);
        assert_eq!(s.user("mia").unwrap().unwrap().locked_until, Some(T0 + 900 + 1800));
        let t = T0 + 900 + 1800;
        fail(&mut s, &p, "mia", 1, t);
        let good = code(&p, &secret, t);
        assert_eq!(
            check_answer(&mut s, &p, &ctx("mia"), &good, t).unwrap(),
            Verdict::Accept { activated: true, failures: 7, locks: 2 }
        );
        let audit = s.audit(Some("mia"), None, None, 1).unwrap();
        assert_eq!(audit[0].reason, "enrollment activated; 7 failed attempt(s) and 2 lock(s) since the previous login");
        // The next lock is the first of a new row again.
        let t = t + 60;
        assert_eq!(fail(&mut s, &p, "mia", 3, t), Verdict::Locked { until: LockEnd::At(t + 900) });
    }

    #[test]
    fn an_empty_answer_is_not_a_guess() {
        let p = policy(3);
        let mut s = SqliteStore::in_memory().unwrap();
        enroll(&mut s, &p, "nora", None);
        // Enter at the QR prompt, many times: never a failure, never a lock.
        for blank in ["", " ", "\t", "   "].iter().cycle().take(20) {
            assert!(matches!(plan(&mut s, &p, &mut ctx("nora"), T0).unwrap().0, Plan::Enroll { .. }));
            assert_eq!(
                check_answer(&mut s, &p, &ctx("nora"), blank, T0).unwrap(),
                Verdict::Deny { message: "No passcode entered.".into() }
            );
        }
        let u = s.user("nora").unwrap().unwrap();
        assert_eq!((u.failures, u.failures_since_login, u.lock_periods, u.locked_until), (0, 0, 0, None));
        let audit = s.audit(Some("nora"), None, None, 100).unwrap();
        assert_eq!(audit.len(), 20);
        assert!(audit.iter().all(|e| e.result == "deny" && e.reason == "no code entered"), "{audit:?}");
    }

    #[test]
    fn a_new_enrollment_clears_any_lock() {
        let p = policy(1);
        let mut s = SqliteStore::in_memory().unwrap();
        enroll(&mut s, &p, "olga", None);
        for i in 0..4 {
            fail(&mut s, &p, "olga", 1, T0 + i * 100_000);
        }
        let locked = s.user("olga").unwrap().unwrap();
        assert!(locked.admin_locked_at.is_some() && locked.is_locked(T0 + 1_000_000));
        // `otpctl user reset` (and enable after disable) build the record this way.
        let fresh = new_enrollment(&p, Some(locked), "olga", None, T0 + 1_000_000);
        s.save_user(&fresh).unwrap();
        let u = s.user("olga").unwrap().unwrap();
        assert_eq!((u.failures, u.failures_since_login, u.lock_periods, u.admin_locked_at), (0, 0, 0, None));
        assert!(matches!(plan(&mut s, &p, &mut ctx("olga"), T0 + 1_000_000).unwrap().0, Plan::Enroll { .. }));
    }

    #[test]
    fn require_group_refuses_unenrolled_members_from_the_stored_list() {
        let p = Policy { require_group: Some("sudo".into()), ..policy(3) };
        let mut s = SqliteStore::in_memory().unwrap();
        s.set_group_members("sudo", &["gina".into(), "hank".into()]).unwrap();
        enroll(&mut s, &p, "hank", Some(1010));
        let (planned, note) = plan(&mut s, &p, &mut LoginContext { uid: Some(1011), ..ctx("gina") }, T0).unwrap();
        assert_eq!(planned, Plan::Refused { message: MUST_ENROLL });
        assert!(note.is_some_and(|n| n.reason.contains("require_group")));
        assert!(matches!(plan(&mut s, &p, &mut ctx("hank"), T0).unwrap().0, Plan::Enroll { .. }));
        let outsider = LoginContext { uid: Some(1012), ..ctx("ivan") };
        assert_eq!(plan(&mut s, &p, &mut outsider.clone(), T0).unwrap().0, Plan::NotEnrolled);
        // Without the setting the list decides nothing.
        let off = policy(3);
        assert_eq!(
            plan(&mut s, &off, &mut LoginContext { uid: Some(1011), ..ctx("gina") }, T0).unwrap().0,
            Plan::NotEnrolled
        );
    }

    #[test]
    fn non_root_caller_only_for_itself() {
        let p = policy(3);
        let mut s = SqliteStore::in_memory().unwrap();
        enroll(&mut s, &p, "dave", Some(1001));
        let caller = |user: &str, uid: Option<u32>| LoginContext { uid, peer_uid: 1001, ..ctx(user) };
        assert!(matches!(plan(&mut s, &p, &mut caller("dave", Some(1001)), T0).unwrap().0, Plan::Enroll { .. }));
        // Any name the caller's directory gives its own uid is its own account.
        let mut other_spelling = caller("DAVE", Some(1001));
        assert!(matches!(plan(&mut s, &p, &mut other_spelling, T0).unwrap().0, Plan::Enroll { .. }));
        assert_eq!((other_spelling.user.as_str(), other_spelling.typed.as_deref()), ("dave", Some("DAVE")));
        // Its own uid but no record: about itself, so it may hear "not enrolled".
        let mut own = LoginContext { uid: Some(1002), peer_uid: 1002, ..ctx("dave") };
        assert_eq!(plan(&mut s, &p, &mut own, T0).unwrap().0, Plan::NotEnrolled);
        // A forged name with its own uid reaches no one else's record.
        enroll(&mut s, &p, "erin", Some(1003));
        let mut forged = LoginContext { uid: Some(1002), peer_uid: 1002, ..ctx("erin") };
        assert_eq!(plan(&mut s, &p, &mut forged, T0).unwrap().0, Plan::NotEnrolled);
        // Refusals are not failures: nobody can lock dave out from another account.
        let mut from_other = LoginContext { uid: Some(1001), peer_uid: 1002, ..ctx("dave") };
        assert!(matches!(plan(&mut s, &p, &mut from_other, T0).unwrap().0, Plan::Refused { .. }));
        assert_eq!(s.user("dave").unwrap().unwrap().failures, 0);
    }

    /// Check 30: a non-root caller asking for anyone else gets one answer,
    /// decided before the store is read (so it cannot take longer or
    /// shorter for an enrolled user either).
    #[test]
    fn other_users_all_look_the_same_to_a_non_root_caller() {
        let p = policy(1);
        let mut s = SqliteStore::in_memory().unwrap();
        enroll(&mut s, &p, "enrolled", Some(2001));
        enroll(&mut s, &p, "locked", Some(2002));
        assert!(matches!(check_answer(&mut s, &p, &ctx("locked"), "000000", T0).unwrap(), Verdict::Locked { .. }));
        let mut disabled = new_enrollment(&p, None, "disabled", Some(2003), T0);
        disabled.enabled = false;
        s.save_user(&disabled).unwrap();
        let asks = [
            ("enrolled", Some(2001)),
            ("locked", Some(2002)),
            ("disabled", Some(2003)),
            ("known-not-enrolled", Some(2004)),
            ("no-such-user", None),
            ("root", Some(0)),
        ];
        let answers: Vec<_> = asks
            .iter()
            .map(|(user, uid)| {
                // Before the module has resolved the name, a non-root caller is always asked to.
                let mut asking = LoginContext { peer_uid: 3000, ..ctx(user) };
                assert_eq!(plan(&mut s, &p, &mut asking, T0).unwrap(), (Plan::ResolveUser, None));
                let (planned, note) =
                    plan(&mut s, &p, &mut LoginContext { uid: *uid, resolved: true, peer_uid: 3000, ..ctx(user) }, T0)
                        .unwrap();
                let note = note.unwrap();
                (planned, note.method, note.result, note.reason)
            })
            .collect();
        assert_eq!(answers[0].0, Plan::Refused { message: ONLY_YOURSELF });
        assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
        // Decided without reading the store: the same answer with no users table at all.
        s.exec("DROP TABLE users").unwrap();
        for (user, uid) in asks {
            let mut c = LoginContext { peer_uid: 3000, ..ctx(user) };
            assert_eq!(plan(&mut s, &p, &mut c, T0).unwrap().0, Plan::ResolveUser);
            let mut c = LoginContext { uid, resolved: true, peer_uid: 3000, ..ctx(user) };
            assert_eq!(plan(&mut s, &p, &mut c, T0).unwrap().0, Plan::Refused { message: ONLY_YOURSELF });
        }
        // Root callers are still told apart (they may name anyone).
        let mut root = ctx("dave");
        assert!(plan(&mut s, &p, &mut root, T0).is_err(), "a root caller's plan reads the store");
    }

    /// Check 31: the account decides, whatever spelling the directory
    /// accepted; a code is single-use across the spellings.
    #[test]
    fn every_spelling_of_an_account_needs_its_code() {
        let p = policy(10);
        let mut s = SqliteStore::in_memory().unwrap();
        let secret = enroll(&mut s, &p, "alice", Some(1000));
        let c = code(&p, &secret, T0);
        for typed in ["ALICE", "alice@EXAMPLE.ORG", "Alice"] {
            let mut login = LoginContext { uid: Some(1000), ..ctx(typed) };
            assert!(matches!(plan(&mut s, &p, &mut login, T0).unwrap().0, Plan::Enroll { .. }), "{typed}");
            assert_eq!(login.user, "alice");
            assert!(matches!(check_answer(&mut s, &p, &login, "000000", T0).unwrap(), Verdict::Deny { .. }));
        }
        let mut login = LoginContext { uid: Some(1000), ..ctx("ALICE") };
        plan(&mut s, &p, &mut login, T0).unwrap();
        assert_eq!(
            check_answer(&mut s, &p, &login, &c, T0).unwrap(),
            Verdict::Accept { activated: true, failures: 3, locks: 0 }
        );
        let mut same = LoginContext { uid: Some(1000), ..ctx("alice") };
        plan(&mut s, &p, &mut same, T0).unwrap();
        assert!(matches!(check_answer(&mut s, &p, &same, &c, T0).unwrap(), Verdict::Deny { .. }), "replay");
        // The audit names the account and keeps what was typed.
        let rows = s.audit(Some("alice"), None, None, 100).unwrap();
        assert!(rows.iter().any(|r| r.result == "accept" && r.reason.contains("typed as ALICE")), "{rows:?}");
        assert!(rows.iter().any(|r| r.reason == "code already used"), "{rows:?}");
        assert!(s.audit(Some("ALICE"), None, None, 100).unwrap().is_empty());
        // A name the directory does not know still finds its exact record
        // from a root caller; the first root login records its uid.
        let secret = enroll(&mut s, &p, "legacy", None);
        let mut login = LoginContext { uid: Some(1500), ..ctx("legacy") };
        assert!(matches!(plan(&mut s, &p, &mut login, T0).unwrap().0, Plan::Enroll { .. }));
        let good = code(&p, &secret, T0);
        assert_eq!(
            check_answer(&mut s, &p, &login, &good, T0).unwrap(),
            Verdict::Accept { activated: true, failures: 0, locks: 0 }
        );
        assert_eq!(s.user("legacy").unwrap().unwrap().uid, Some(1500));
    }

    #[test]
    fn not_enrolled_and_disabled() {
        let p = policy(3);
        let mut s = SqliteStore::in_memory().unwrap();
        let mut rec = new_enrollment(&p, None, "erin", None, T0);
        rec.enabled = false;
        s.save_user(&rec).unwrap();
        for (recorded, user) in ["nobody-here", "erin"].into_iter().enumerate() {
            // No enabled record of that name: another spelling may name an
            // enrolled account, so the module is asked for the uid first.
            assert_eq!(plan(&mut s, &p, &mut ctx(user), T0).unwrap(), (Plan::ResolveUser, None));
            let (planned, note) = plan(&mut s, &p, &mut LoginContext { resolved: true, ..ctx(user) }, T0).unwrap();
            assert_eq!(planned, Plan::NotEnrolled);
            // Planning only reads: the final answer comes with the audit record to write.
            assert_eq!(s.audit(None, None, None, 10).unwrap().len(), recorded);
            let note = note.expect("a final answer is audited");
            assert_eq!((note.result.as_str(), note.reason.as_str()), ("not_enrolled", "user not enabled for OTP"));
            note.record(&mut s, &p, &ctx(user), T0).unwrap();
        }
        assert_eq!(s.audit(None, None, None, 10).unwrap().len(), 2);
        // Activated users are simply asked: nothing to record yet.
        enroll(&mut s, &p, "fay", None);
        assert!(matches!(plan(&mut s, &p, &mut ctx("fay"), T0).unwrap(), (Plan::Enroll { .. }, None)));
    }

    #[test]
    fn a_valid_code_is_not_accepted_when_the_write_fails() {
        let p = policy(3);
        let mut s = SqliteStore::in_memory().unwrap();
        let secret = enroll(&mut s, &p, "ivan", None);
        // Writes fail as on a full disk or a read-only file system.
        s.exec("CREATE TEMP TRIGGER fail_users BEFORE UPDATE ON users BEGIN SELECT RAISE(ABORT, 'disk full'); END;")
            .unwrap();
        let good = code(&p, &secret, T0);
        assert!(check_answer(&mut s, &p, &ctx("ivan"), &good, T0).is_err(), "must not be Accept");
        // Nothing was recorded, so the same code still works once storage is back.
        s.exec("DROP TRIGGER fail_users").unwrap();
        assert_eq!(
            check_answer(&mut s, &p, &ctx("ivan"), &good, T0).unwrap(),
            Verdict::Accept { activated: true, failures: 0, locks: 0 }
        );
    }

    #[test]
    fn user_names() {
        for ok in ["alice", "a.b-c_d", "svc$", "u@realm", "x"] {
            assert!(valid_user_name(ok), "{ok}");
        }
        for bad in ["", "-rf", "a b", "a\nb", "ä", "a:b", "a/b", &"a".repeat(65)] {
            assert!(!valid_user_name(bad), "{bad:?}");
        }
    }

    /// A fleet login's plan made on records read beforehand (crate::store::pgfast)
    /// is the plan the store gives, or asks for the store; the one-statement
    /// accept decides only what the transaction would decide the same way.
    #[test]
    fn prefetched_plans_match_the_store_and_the_fast_step_matches_check_answer() {
        let p = policy(5);
        let mut s = SqliteStore::in_memory().unwrap();
        let secret = enroll(&mut s, &p, "alice", Some(1000));
        let remote = |user: &str| LoginContext { remote: true, machine: "web01".into(), ..ctx(user) };
        assert!(matches!(
            check_answer(&mut s, &p, &remote("alice"), &code(&p, &secret, T0), T0).unwrap(),
            Verdict::Accept { activated: true, .. }
        ));
        enroll(&mut s, &p, "bob", None);
        let both = |s: &mut SqliteStore, p: &Policy, user: &str, failing: Option<u64>| {
            let (mut c1, mut c2, mut seen1, mut seen2) = (remote(user), remote(user), None, None);
            let on_store = plan_seen(s, p, &mut c1, T0 + 60, &mut seen1).unwrap();
            let mut read = Prefetched { name: user.into(), user: s.user(user).unwrap(), failing_mail: failing };
            match plan_seen(&mut read, p, &mut c2, T0 + 60, &mut seen2) {
                Err(StoreError::NotRead) => None,
                got => {
                    assert_eq!((got.unwrap(), c2.user, seen2), (on_store.clone(), c1.user, seen1), "{user}");
                    Some(on_store.0)
                }
            }
        };
        assert_eq!(both(&mut s, &p, "alice", None), Some(Plan::Ask { email: false, mail_failing: false }));
        assert!(matches!(both(&mut s, &p, "bob", None), Some(Plan::Enroll { .. })));
        // Another spelling, or a name not found, needs the case-insensitive
        // lookup; email needs the failing mail, if it was not read.
        assert_eq!(both(&mut s, &p, "ALICE", None), None);
        assert_eq!(both(&mut s, &p, "carol", None), None);
        let mail =
            Policy { email: EmailConfig { enabled: true, fallback: true, ..EmailConfig::default() }, ..policy(5) };
        assert_eq!(both(&mut s, &mail, "alice", None), None);
        assert_eq!(both(&mut s, &mail, "alice", Some(0)), Some(Plan::Ask { email: true, mail_failing: false }));

        // The fast step: a fresh valid code of a plain activated user, and
        // the verdict the transaction gives for it.
        let alice = s.user("alice").unwrap().unwrap();
        let fresh = code(&p, &secret, T0 + 60);
        let (step, entry) = fast_step(&p, &remote("alice"), &fresh, T0 + 60, &alice).unwrap();
        assert_eq!((step, entry.result.as_str(), entry.machine.as_str()), (p.totp.step_of(T0 + 60), "accept", "web01"));
        assert_eq!(fast_step(&p, &remote("alice"), "000000", T0 + 60, &alice), None, "a wrong code");
        assert_eq!(fast_step(&p, &remote("alice"), &code(&p, &secret, T0), T0 + 60, &alice), None, "a used step");
        assert_eq!(fast_step(&p, &remote("bob"), &fresh, T0 + 60, &alice), None, "another user's record");
        let failed = UserRecord { failures: 1, ..alice.clone() };
        assert_eq!(fast_step(&p, &remote("alice"), &fresh, T0 + 60, &failed), None, "failures to report");
        let bob = s.user("bob").unwrap().unwrap();
        assert_eq!(fast_step(&p, &remote("bob"), &fresh, T0 + 60, &bob), None, "an enrollment to activate");
        assert_eq!(check_answer(&mut s, &p, &remote("alice"), &fresh, T0 + 60).unwrap(), FAST_ACCEPT);
    }
}
