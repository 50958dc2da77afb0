//! The two Unix sockets: the PAM conversation server and the admin server.
use crate::admin;
use crate::auth::{self, LoginContext, Plan, Policy, Verdict};
use crate::clock::Clock;
use crate::conn::{Conn, Listener};
use crate::db::Db;
use crate::email;
use crate::store::{EmergencyRequest, SessionRecord, SqliteStore};
use common::codec::encode;
use common::config::{Approval, AutoSend};
use common::proto::{ClientMsg, OutcomeKind, QrStyle, ServerMsg, PROTOCOL_VERSION};
use common::text::sanitize_field;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Shared {
    pub db: Db,
    pub policy: Arc<Policy>,
    pub clock: Box<dyn Clock>,
    pub io_timeout: Duration,
    pub prompt_timeout: Duration,
    pub admin_gid: Option<u32>,
    pub started_at: i64,
    pub database: String,
    pub open_connections: AtomicU64,
    /// Open PAM connections per non-root uid.
    pub per_uid: std::sync::Mutex<std::collections::HashMap<u32, usize>>,
    /// Connections that have not yet sent a whole first frame, oldest
    /// first; notified to close when room is needed.
    pub silent: std::sync::Mutex<std::collections::BTreeMap<u64, Arc<tokio::sync::Notify>>>,
    pub next_connection: AtomicU64,
    /// When the last "too many connections" warning was logged (Unix seconds).
    pub last_flood_warning: std::sync::atomic::AtomicI64,
    /// Read-only connection for the login path (see [`SqliteStore::open_reader`]).
    pub reader: std::sync::Mutex<SqliteStore>,
    /// Wakes the mail sender when something was queued.
    pub mail_wakeup: Arc<tokio::sync::Notify>,
    /// Events for D-Bus signals; nobody listening is fine.
    pub events: tokio::sync::broadcast::Sender<crate::dbus::Event>,
    /// Rate limits and conversation caps per caller (see [`crate::limits`]).
    pub limits: crate::limits::CallerLimits,
}

impl Shared {
    pub fn emit(&self, ev: crate::dbus::Event) {
        let _ = self.events.send(ev);
    }
}

/// Connection limits of the PAM socket.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_uid: usize,
}

/// One open connection; forgets itself when the connection task ends.
struct Slot {
    shared: Arc<Shared>,
    uid: u32,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.open_connections.fetch_sub(1, Ordering::Relaxed);
        lock(&self.shared.silent).remove(&self.id);
        release_uid(&self.shared, self.uid);
    }
}

/// Gives back one connection of a non-root uid.
fn release_uid(shared: &Shared, uid: u32) {
    if uid == 0 {
        return;
    }
    let mut per_uid = lock(&shared.per_uid);
    if let Some(n) = per_uid.get_mut(&uid) {
        *n -= 1;
        if *n == 0 {
            per_uid.remove(&uid);
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Accepts every connection as soon as it arrives. Waiting for a free slot
/// before accepting would leave real logins queued in the kernel backlog
/// behind idle or half-sent connections. Instead each connection has its
/// own deadlines (io_timeout for its first frame); a non-root uid may hold
/// only a few connections at once; and when all `max_connections` are in
/// use, the oldest connection that has not yet sent a whole first frame is
/// closed to make room. Real clients send their first frame at once, so a
/// flood of idle or half-sent connections can never keep a login out.
pub async fn serve_pam(listener: Listener, shared: Arc<Shared>, limits: Limits) {
    loop {
        let stream = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE/ENFILE: let connections finish before trying again.
                warn_throttled(&shared, &format!("accept on PAM socket failed: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok((uid, _, pid)) = stream.peer() else { continue };
        let Some((slot, evicted)) = take_slot(&shared, uid, limits) else {
            warn_throttled(&shared, &format!("PAM connection from uid {uid} closed: too many open connections"));
            continue;
        };
        tokio::spawn(async move {
            let sh = &slot.shared;
            let first = tokio::select! {
                r = stream_first_frame(stream, sh) => r,
                _ = evicted.notified() => None,
            };
            lock(&sh.silent).remove(&slot.id);
            if let Some((conn, msg)) = first {
                pam_connection(conn, uid, pid, msg, sh).await;
            }
            drop(slot);
        });
    }
}

/// The first frame of a connection, within io_timeout.
async fn stream_first_frame(mut s: Conn, sh: &Shared) -> Option<(Conn, ClientMsg)> {
    match s.read_msg::<ClientMsg>(sh.io_timeout, sh.io_timeout).await {
        Ok(m) => Some((s, m)),
        Err(e) => {
            warn_throttled(sh, &format!("PAM connection closed before a complete first message: {e}"));
            None
        }
    }
}

/// Reserves a connection slot; the Notify closes the connection if it is
/// evicted before it has spoken.
fn take_slot(shared: &Arc<Shared>, uid: u32, limits: Limits) -> Option<(Slot, Arc<tokio::sync::Notify>)> {
    if uid != 0 {
        let mut per_uid = lock(&shared.per_uid);
        let n = per_uid.entry(uid).or_insert(0);
        if *n >= limits.max_per_uid {
            return None;
        }
        *n += 1;
    }
    let mut silent = lock(&shared.silent);
    if shared.open_connections.load(Ordering::Relaxed) as usize >= limits.max_connections {
        // Make room by closing the oldest connection that has not spoken.
        match silent.pop_first() {
            Some((_, oldest)) => oldest.notify_one(),
            None => {
                drop(silent);
                release_uid(shared, uid);
                return None;
            }
        }
    }
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let evict = Arc::new(tokio::sync::Notify::new());
    silent.insert(id, evict.clone());
    shared.open_connections.fetch_add(1, Ordering::Relaxed);
    Some((Slot { shared: shared.clone(), uid, id }, evict))
}

/// At most one such warning a second: a flood must not become a log flood.
fn warn_throttled(shared: &Shared, msg: &str) {
    let now = shared.clock.now();
    if shared.last_flood_warning.swap(now, Ordering::Relaxed) != now {
        tracing::warn!("{msg}");
    }
}

async fn outcome(s: &mut Conn, sh: &Shared, result: OutcomeKind, message: Option<String>) {
    let _ = s.write_msg(&ServerMsg::Outcome { result, message }, sh.io_timeout).await;
}

fn until_text(until: auth::LockEnd, now: i64) -> String {
    let until = match until {
        auth::LockEnd::AdminUnlock => {
            return "Too many failed attempts: your account is locked until an administrator unlocks it.".into()
        }
        auth::LockEnd::At(t) => t,
    };
    let minutes = ((until - now).max(0) + 59) / 60;
    let wait = match minutes {
        0..=119 => format!("{minutes} minute(s)"),
        120..=2879 => format!("{} hour(s)", (minutes + 59) / 60),
        _ => format!("{} day(s)", (minutes + 1439) / 1440),
    };
    format!(
        "Too many failed attempts. Try again in {wait} or ask an administrator to unlock your account. \
         Further failures lock it for longer each time."
    )
}

/// What a user is told after a successful login.
fn accept_text(activated: bool, failures: u32, locks: u32) -> Option<String> {
    let mut lines = Vec::new();
    if activated {
        lines.push("Passcode accepted: your authenticator is now enrolled.".to_string());
    }
    if failures > 0 {
        let locked = if locks > 0 { format!(", and your account was locked {locks} time(s)") } else { String::new() };
        lines.push(format!(
            "There were {failures} failed passcode attempt(s) since your last login{locked}. \
             If they were not yours, tell your administrator: someone may know your password."
        ));
    }
    (!lines.is_empty()).then(|| lines.join("\n"))
}

async fn pam_connection(mut s: Conn, peer_uid: u32, pid: Option<i32>, first: ClientMsg, sh: &Shared) {
    let (protocol, user, service, rhost, tty, uid, qr) = match first {
        ClientMsg::Begin { protocol, user, service, rhost, tty, uid, qr, .. } => {
            (protocol, user, service, rhost, tty, uid, qr)
        }
        msg @ (ClientMsg::SessionOpened { .. } | ClientMsg::SessionClosed { .. }) => {
            let caller = crate::limits::caller_uid(peer_uid, pid);
            if caller != 0 && !sh.limits.session_rate.allow(caller) {
                crate::limits::refuse(sh, caller, crate::limits::Refusal::SessionRate).await;
            } else {
                session_event(sh, msg, peer_uid).await;
            }
            let _ = s.write_msg(&ServerMsg::Ack, sh.io_timeout).await;
            return;
        }
        other => {
            warn_throttled(sh, &format!("PAM connection from uid {peer_uid}: expected begin, got {}", kind(&other)));
            outcome(&mut s, sh, OutcomeKind::Deny, Some("Protocol error.".into())).await;
            return;
        }
    };
    let field = |v: Option<String>| v.map(|x| sanitize_field(&x, 128)).filter(|x| !x.is_empty());
    let mut ctx = LoginContext {
        user: sanitize_field(&user, 80),
        typed: None,
        uid,
        resolved: false,
        service: sanitize_field(&service, 64),
        rhost: field(rhost),
        tty: field(tty),
        peer_uid,
    };
    if ctx.service.is_empty() {
        ctx.service = "-".into();
    }
    // Checked before anything is written: a refused attempt costs no row.
    // The ticket is held until this conversation ends.
    let admitted = if peer_uid != 0 && !sh.limits.rate.allow(peer_uid) {
        Err((crate::limits::Refusal::Rate, peer_uid))
    } else {
        // A caller other than root can only ever be its own account: its
        // conversations count against that, not against the name it typed
        // (which would let two users hold every slot of alice's or root's).
        let target = if peer_uid == 0 { ctx.user.clone() } else { format!("uid:{peer_uid}") };
        sh.limits.conversations.admit(peer_uid, pid, &target, crate::limits::caller_uid).and_then(|t| {
            // A setuid program's caller, when it was looked up, has the same allowance.
            match t.caller() {
                Some(c) if peer_uid == 0 && c != 0 && !sh.limits.rate.allow(c) => {
                    Err((crate::limits::Refusal::Rate, c))
                }
                _ => Ok(t),
            }
        })
    };
    let ticket = match admitted {
        Ok(t) => t,
        Err((why, caller)) => return refuse_caller(&mut s, sh, caller, why).await,
    };
    let refuse = if protocol != PROTOCOL_VERSION {
        Some(format!("protocol version {protocol} not supported (otpd speaks {PROTOCOL_VERSION})"))
    } else if !auth::valid_user_name(&user) {
        Some("invalid user name".to_string())
    } else {
        None
    };
    if let Some(reason) = refuse {
        let _ = run_audit_result(sh, ctx.clone(), "deny", reason).await;
        outcome(&mut s, sh, OutcomeKind::Deny, Some("Passcode check refused.".into())).await;
        return;
    }

    // What to ask is read on this thread from the read-only connection; a
    // final answer is audited through the writer before it is sent.
    let now = sh.clock.now();
    let plan_now = |ctx: &mut LoginContext| {
        let mut reader = lock(&sh.reader);
        auth::plan(&mut *reader, &sh.policy, ctx, now)
    };
    let mut planned = plan_now(&mut ctx);
    if let Ok((Plan::ResolveUser, _)) = planned {
        ctx.uid = match resolve_user(&mut s, sh, &ctx).await {
            Some(uid) => uid,
            None => return,
        };
        ctx.resolved = true;
        planned = plan_now(&mut ctx);
    }
    if let (Ok((_, Some(_))), Some(caller)) = (&planned, setuid_caller_over_rate(sh, peer_uid, pid, &ticket)) {
        return refuse_caller(&mut s, sh, caller, crate::limits::Refusal::Rate).await;
    }
    let planned = match planned {
        Ok((plan, None)) => Ok(plan),
        Ok((plan, Some(note))) => {
            let (policy, ctx) = (sh.policy.clone(), ctx.clone());
            sh.db.run(move |st| note.record(st, &policy, &ctx, now)).await.map(|()| plan)
        }
        Err(e) => Err(e),
    };
    let plan = match planned {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("store error for {}: {e}; denying", ctx.user);
            outcome(&mut s, sh, OutcomeKind::Deny, Some("Passcode check unavailable.".into())).await;
            return;
        }
    };
    let email = match plan {
        // plan asks once; resolved, it decides.
        Plan::ResolveUser => {
            tracing::error!("planning the login of {} asked twice for its uid; denying", ctx.user);
            return outcome(&mut s, sh, OutcomeKind::Deny, Some("Passcode check unavailable.".into())).await;
        }
        Plan::NotEnrolled => return outcome(&mut s, sh, OutcomeKind::NotEnrolled, None).await,
        Plan::Locked { until } => {
            return outcome(&mut s, sh, OutcomeKind::Locked, Some(until_text(until, sh.clock.now()))).await
        }
        Plan::Refused { message } => return outcome(&mut s, sh, OutcomeKind::Deny, Some(message.into())).await,
        Plan::Enroll { uri, secret_b32, email } => {
            let text = enrollment_text(&uri, &secret_b32, qr);
            if s.write_msg(&ServerMsg::Info { text }, sh.io_timeout).await.is_err() {
                return;
            }
            email
        }
        Plan::Ask { email, mail_failing } => {
            if mail_failing {
                let text = "Sending your emailed code is failing at the moment; the daemon keeps retrying. \
                            If it does not arrive, contact your administrator."
                    .to_string();
                if s.write_msg(&ServerMsg::Error { text }, sh.io_timeout).await.is_err() {
                    return;
                }
            }
            email
        }
    };
    let emergency = email && sh.policy.email.emergency.enabled;
    let first_prompt = match (email, emergency) {
        (true, true) => "Passcode (press Enter to get one by email, or type E for emergency access): ",
        (true, false) => "Passcode (press Enter to get one by email): ",
        _ => "Passcode: ",
    };
    // E keeps working after a request, so every later prompt says so too.
    let next_prompt = if emergency { "Passcode (or type E for emergency access): " } else { "Passcode: " };
    let mut prompt_text = first_prompt;
    // A conversation may request a code and then enter it; it may not loop forever.
    for _ in 0..4 {
        let answer = match ask(&mut s, sh, &ctx, false, prompt_text).await {
            Some(a) => a,
            None => return,
        };
        let trimmed = answer.trim();
        if trimmed.is_empty() {
            if let Some(caller) = setuid_caller_over_rate(sh, peer_uid, pid, &ticket) {
                return refuse_caller(&mut s, sh, caller, crate::limits::Refusal::Rate).await;
            }
        }
        if email && trimmed.is_empty() {
            let (info, done) = email_request(&mut s, sh, &ctx).await;
            if let Some(text) = info {
                if s.write_msg(&ServerMsg::Info { text }, sh.io_timeout).await.is_err() {
                    return;
                }
            }
            if done {
                return outcome(&mut s, sh, OutcomeKind::Deny, None).await;
            }
            prompt_text = next_prompt;
            continue;
        }
        if emergency && trimmed.eq_ignore_ascii_case("e") {
            let Some((text, done)) = emergency_request(&mut s, sh, &ctx).await else { return };
            if s.write_msg(&ServerMsg::Info { text }, sh.io_timeout).await.is_err() {
                return;
            }
            if done {
                return outcome(&mut s, sh, OutcomeKind::Deny, None).await;
            }
            prompt_text = next_prompt;
            continue;
        }
        return finish(s, sh, &ctx, answer).await;
    }
    let _ = run_audit_result(sh, ctx.clone(), "deny", "too many requests in one conversation".into()).await;
    outcome(&mut s, sh, OutcomeKind::Deny, Some("Too many requests in one login.".into())).await
}

/// What a user who has not activated yet is shown. The key and the URI are
/// there in every QR style: they work where no QR code can be drawn.
fn enrollment_text(uri: &str, secret_b32: &str, style: QrStyle) -> String {
    let scan = match crate::qr::render(uri, style) {
        Some(qr) => {
            format!("Scan this QR code with your authenticator app:\n{qr}\nOr enter this secret key manually: ")
        }
        None => "Enter this secret key in your authenticator app: ".to_string(),
    };
    format!(
        "Two-factor authentication is required for this account.\n\
         {scan}{secret_b32}\n\
         URI: {uri}\n\
         Then enter the code the app shows to finish enrollment."
    )
}

/// A login that ends without a code being checked (not enrolled, locked,
/// refused, nothing typed) can be repeated as fast as su or sudo start, and
/// each writes an audit row: a setuid program's real caller pays for it from
/// its rate allowance (check 27). Looked up only here, so logins that check
/// a code (bounded by the lockout and single use) read no /proc file.
/// `Some(caller)` when that caller is over its allowance.
fn setuid_caller_over_rate(
    sh: &Shared,
    peer_uid: u32,
    pid: Option<i32>,
    ticket: &crate::limits::Ticket,
) -> Option<u32> {
    // Other callers, and those looked up at admission, have been charged.
    if peer_uid != 0 || ticket.caller().is_some() {
        return None;
    }
    let caller = crate::limits::caller_uid(0, pid);
    (caller != 0 && !sh.limits.rate.allow(caller)).then_some(caller)
}

/// Refuses a login for one of its caller's limits (counted, not written one by one).
async fn refuse_caller(s: &mut Conn, sh: &Shared, caller: u32, why: crate::limits::Refusal) {
    crate::limits::refuse(sh, caller, why).await;
    outcome(s, sh, OutcomeKind::Deny, Some(why.message().into())).await
}

/// Asks the module for the uid of the name typed. `None` when the
/// conversation is over (the outcome has been sent and audited).
async fn resolve_user(s: &mut Conn, sh: &Shared, ctx: &LoginContext) -> Option<Option<u32>> {
    if s.write_msg(&ServerMsg::ResolveUser, sh.io_timeout).await.is_err() {
        return None;
    }
    match s.read_msg::<ClientMsg>(sh.io_timeout, sh.io_timeout).await {
        Ok(ClientMsg::UserResolved { uid }) => Some(uid),
        Ok(other) => protocol_error(s, sh, ctx, &other).await,
        Err(e) => {
            let why = format!("no answer to resolve_user: {e}");
            end_denied(s, sh, ctx, why, Some("Passcode check unavailable.")).await
        }
    }
}

/// Audits a denial, sends it, and ends the conversation (`None`).
async fn end_denied<T>(s: &mut Conn, sh: &Shared, ctx: &LoginContext, why: String, message: Option<&str>) -> Option<T> {
    let _ = run_audit_result(sh, ctx.clone(), "deny", why).await;
    outcome(s, sh, OutcomeKind::Deny, message.map(String::from)).await;
    None
}

async fn protocol_error<T>(s: &mut Conn, sh: &Shared, ctx: &LoginContext, got: &ClientMsg) -> Option<T> {
    let why = format!("protocol error: unexpected {}", kind(got));
    end_denied(s, sh, ctx, why, Some("Protocol error.")).await
}

/// Sends a prompt and waits for the answer. `None` when the conversation is
/// over (cancelled, broken, timed out): the outcome has been sent and audited.
async fn ask(s: &mut Conn, sh: &Shared, ctx: &LoginContext, echo: bool, text: &str) -> Option<String> {
    if s.write_msg(&ServerMsg::Prompt { echo, text: text.into() }, sh.io_timeout).await.is_err() {
        return None;
    }
    match s.read_msg::<ClientMsg>(sh.prompt_timeout, sh.io_timeout).await {
        Ok(ClientMsg::Answer { text }) => Some(text),
        Ok(ClientMsg::Cancel) => end_denied(s, sh, ctx, "conversation cancelled".into(), None).await,
        Ok(other) => protocol_error(s, sh, ctx, &other).await,
        Err(e) => end_denied(s, sh, ctx, format!("no answer: {e}"), Some("Passcode not accepted.")).await,
    }
}

/// Checks the answer: the last step of a login. The database thread
/// decides, commits, sends the outcome and closes its handle on the
/// connection; this task only queues the job and lets go of its own
/// handle, so nothing has to wake it again for this login.
async fn finish(mut s: Conn, sh: &Shared, ctx: &LoginContext, answer: String) {
    let now = sh.clock.now();
    let Some(stream) = s.duplicate() else {
        return outcome(&mut s, sh, OutcomeKind::Deny, Some("Passcode check unavailable.".into())).await;
    };
    let (policy, job_ctx, events, user) = (sh.policy.clone(), ctx.clone(), sh.events.clone(), ctx.user.clone());
    let queued = sh
        .db
        .submit(
            move |st| auth::check_answer(st, &policy, &job_ctx, &answer, now),
            move |verdict| {
                match &verdict {
                    Ok(Verdict::Accept { activated: true, .. }) => {
                        let _ = events.send(crate::dbus::Event::EnrollmentActivated { user: user.clone() });
                    }
                    Ok(Verdict::Locked { until }) => {
                        // i64::MAX: until an administrator unlocks the account.
                        let until = match until {
                            auth::LockEnd::At(t) => *t,
                            auth::LockEnd::AdminUnlock => i64::MAX,
                        };
                        let _ = events.send(crate::dbus::Event::UserLockedOut { user: user.clone(), until });
                    }
                    // Nothing was committed: the code was not consumed, the attempt not recorded.
                    Err(e) => tracing::error!("store error while checking a code for {user}: {e}; denying"),
                    _ => {}
                }
                if let Ok(frame) = encode(&verdict_outcome(&verdict, now)) {
                    // A client always reads its outcome; one that does not
                    // gets a cut frame and fails closed.
                    if crate::conn::send_now(&stream, &frame) < frame.len() {
                        tracing::warn!("outcome for {user} not delivered: the client is not reading");
                    }
                }
            },
        )
        .await;
    if let Err(e) = queued {
        tracing::error!("cannot queue the check of a code for {}: {e}; denying", ctx.user);
        outcome(&mut s, sh, OutcomeKind::Deny, Some("Passcode check unavailable.".into())).await;
    }
}

/// The outcome message for a checked answer.
fn verdict_outcome(verdict: &Result<Verdict, crate::store::StoreError>, now: i64) -> ServerMsg {
    let (result, message) = match verdict {
        Ok(Verdict::Accept { activated, failures, locks }) => {
            (OutcomeKind::Accept, accept_text(*activated, *failures, *locks))
        }
        Ok(Verdict::Deny { message }) => (OutcomeKind::Deny, Some(message.clone())),
        Ok(Verdict::Locked { until }) => (OutcomeKind::Locked, Some(until_text(*until, now))),
        Err(_) => (OutcomeKind::Deny, Some("Passcode check unavailable.".into())),
    };
    ServerMsg::Outcome { result, message }
}

/// "14:32 CET": times shown to users are in the host's time zone.
pub fn hhmm(t: i64) -> String {
    crate::clock::local_hhmm(t)
}

/// "once per hour", "once every 30 minutes": the new-code rule in words.
fn once_per(interval: Duration) -> String {
    match interval.as_secs() {
        3600 => "once per hour".into(),
        s if s % 3600 == 0 => format!("once every {} hours", s / 3600),
        s if s % 60 == 0 => format!("once every {} minutes", s / 60),
        s => format!("once every {s} seconds"),
    }
}

/// Why nothing typed can work now, when the next request is possible, and
/// what else there is.
fn no_usable_code_text(why: &email::NoUsableCode, interval: Duration, emergency: bool) -> String {
    let last = match why.used_at {
        Some(t) => format!("Your last emailed code was used at {}", hhmm(t)),
        None => format!("Your last emailed code expired at {}", hhmm(why.expired_at)),
    };
    let other = if emergency {
        "For emergency access, log in again and type E at the passcode prompt, or ask your administrator."
    } else {
        "If you cannot wait, ask your administrator."
    };
    format!(
        "{last}, and a new code for this account on this machine can be sent only {}: \
         the next one can be requested at {}. Until then no passcode can work here. {other}",
        once_per(interval),
        hhmm(why.next_at)
    )
}

fn describe(outcome: &email::RequestOutcome) -> String {
    match outcome {
        email::RequestOutcome::Queued { masked, expires_at, resent: false } => {
            format!("A code was sent to {masked}. It expires at {}.", hhmm(*expires_at))
        }
        email::RequestOutcome::Queued { masked, expires_at, resent: true } => {
            format!("Your code was sent again to {masked}. It expires at {}.", hhmm(*expires_at))
        }
        // Only while a code sent to another address (an emergency one) is still valid.
        email::RequestOutcome::TooSoon { next_at } => {
            format!(
                "A new code can be requested at {}. Use the code you were sent, or ask your administrator.",
                hhmm(*next_at)
            )
        }
        email::RequestOutcome::ResendCapped => {
            "Your code was re-sent too often in the last hour; check your mailbox and spam folder.".into()
        }
        email::RequestOutcome::Capped => "Too many emails were sent recently; try again later.".into(),
    }
}

const NEUTRAL: &str = "If this matches our records, a code was sent to the address on record.";

/// Enter at the passcode prompt. Returns the text to show and whether the
/// conversation ends.
async fn email_request(s: &mut Conn, sh: &Shared, ctx: &LoginContext) -> (Option<String>, bool) {
    let policy = sh.policy.clone();
    let now = sh.clock.now();
    let mode = policy.email.auto_send;
    // Decided before any address or login is asked, so the answer says
    // nothing about what was typed. Not a failed guess: nothing was guessed.
    let (p, c) = (policy.clone(), ctx.clone());
    let blocked = sh
        .db
        .run(move |st| {
            let why = email::no_usable_code(st, &p, &c.user, now)?;
            if why.is_some() {
                auth::audit_method(
                    st,
                    &p,
                    &c,
                    now,
                    "email",
                    "deny",
                    "no usable emailed code; a new one is not allowed yet",
                )?;
            }
            Ok(why)
        })
        .await;
    match blocked {
        Ok(Some(why)) => {
            let emergency = policy.email.emergency.enabled;
            return (Some(no_usable_code_text(&why, policy.email.new_code_interval, emergency)), true);
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!("store error during an email request for {}: {e}", ctx.user);
            return (Some("Emailed codes are unavailable right now.".into()), false);
        }
    }
    let typed = match mode {
        AutoSend::Directory => None,
        AutoSend::None => match ask(s, sh, ctx, true, "Email address: ").await {
            Some(a) => Some((a, String::new())),
            None => return (None, true),
        },
        AutoSend::Internal => {
            let Some(login) = ask(s, sh, ctx, true, "Login: ").await else { return (None, true) };
            let Some(password) = ask(s, sh, ctx, false, "Password: ").await else { return (None, true) };
            Some((login, password))
        }
    };
    // Internal accounts: the argon2 check is slow on purpose, so it runs off
    // the database thread and the async workers.
    let password_ok = if let (AutoSend::Internal, Some((login, password))) = (mode, typed.as_ref()) {
        let user = ctx.user.clone();
        let hash = sh.db.run(move |st| Ok(st.user(&user)?.and_then(|u| u.password_hash))).await.ok().flatten();
        let password = password.clone();
        let same = *login == ctx.user;
        tokio::task::spawn_blocking(move || crate::passwd::verify(hash.as_deref(), &password) && same)
            .await
            .unwrap_or(false)
    } else {
        false
    };
    let ctx2 = ctx.clone();
    let result = sh
        .db
        .run(move |st| {
            let user = st.user(&ctx2.user)?;
            let on_record = user
                .as_ref()
                .and_then(|u| u.email.clone())
                .or_else(|| email::directory_address(&policy.email.directory, &ctx2.user));
            let Some(address) = on_record else {
                auth::audit_method(st, &policy, &ctx2, now, "email", "deny", "no email address on record")?;
                return Ok(Err(
                    "No email address is on record for you. Ask your administrator, or use emergency access.",
                ));
            };
            let admitted = match (&mode, &typed) {
                (AutoSend::Directory, _) => true,
                (AutoSend::None, Some((typed, _))) => email::same_address(typed.trim(), &address),
                (AutoSend::Internal, _) => password_ok,
                _ => false,
            };
            if !admitted {
                let why = if mode == AutoSend::None {
                    "typed address does not match the record"
                } else {
                    "internal login failed"
                };
                auth::audit_method(st, &policy, &ctx2, now, "email", "deny", why)?;
                return Ok(Err(NEUTRAL));
            }
            email::request_code(st, &policy, &ctx2, &address, false, now).map(Ok)
        })
        .await;
    match result {
        Ok(Ok(outcome)) => {
            if let email::RequestOutcome::Queued { masked, .. } = &outcome {
                sh.mail_wakeup.notify_one();
                sh.emit(crate::dbus::Event::CodeRequested { user: ctx.user.clone(), address: masked.clone() });
            }
            // Typed address / internal login: only the neutral words, whether or not it matched.
            let text = if mode == AutoSend::Directory { describe(&outcome) } else { NEUTRAL.to_string() };
            (Some(text), false)
        }
        Ok(Err(text)) => (Some(text.to_string()), false),
        Err(e) => {
            tracing::error!("store error during an email request for {}: {e}", ctx.user);
            (Some("Emailed codes are unavailable right now.".into()), false)
        }
    }
}

/// "I need emergency access": a typed address and a reason.
async fn emergency_request(s: &mut Conn, sh: &Shared, ctx: &LoginContext) -> Option<(String, bool)> {
    let typed = ask(s, sh, ctx, true, "Email address: ").await?;
    let address = match email::validate_address(typed.trim()) {
        Ok(a) => a,
        Err(why) => {
            let _ = run_audit_result(sh, ctx.clone(), "deny", format!("emergency: invalid address ({why})")).await;
            return Some((format!("That is not a usable email address ({why})."), false));
        }
    };
    let reason = ask(s, sh, ctx, true, "Reason (a few words): ").await?;
    let reason = sanitize_field(&reason, 200);
    let policy = sh.policy.clone();
    let now = sh.clock.now();
    let ctx2 = ctx.clone();
    let domain = address.rsplit_once('@').map(|(_, d)| d.to_string()).unwrap_or_default();
    let allowed = policy.email.emergency.allow_domains.iter().any(|d| d.eq_ignore_ascii_case(&domain));
    let result = sh
        .db
        .run(move |st| {
            if allowed {
                return email::request_code(st, &policy, &ctx2, &address, true, now)
                    .map(|o| (describe(&o), false, true, None));
            }
            if policy.email.emergency.approval == Approval::Never {
                auth::audit_method(st, &policy, &ctx2, now, "email", "deny", "emergency: address not allowed")?;
                return Ok(("Emergency access is not available for that address.".to_string(), true, false, None));
            }
            if let Some((why, text)) =
                crate::limits::emergency_capped(st, &policy.email.emergency, &ctx2.user, &address)?
            {
                auth::audit_method(st, &policy, &ctx2, now, "email", "deny", &why)?;
                return Ok((text, true, false, None));
            }
            let id = st.insert_request(&EmergencyRequest {
                id: 0,
                user: ctx2.user.clone(),
                machine: policy.machine.clone(),
                address: address.clone(),
                reason: reason.clone(),
                origin: email::origin(&ctx2),
                created_at: now,
                status: "pending".into(),
                decided_at: None,
                decided_by: None,
            })?;
            auth::audit_method(
                st,
                &policy,
                &ctx2,
                now,
                "email",
                "pending",
                &format!("emergency request #{id} for {}", email::mask(&address)),
            )?;
            Ok((
                format!(
                    "Your emergency request #{id} is waiting for an administrator's approval. \
                     If it is approved, a code will be sent to {}; then log in again and enter it.",
                    email::mask(&address)
                ),
                true,
                false,
                Some(id),
            ))
        })
        .await;
    match result {
        Ok((text, done, queued, pending)) => {
            if queued {
                sh.mail_wakeup.notify_one();
            }
            if let Some(id) = pending {
                tracing::warn!("emergency access request #{id} from {} is pending approval", ctx.user);
                sh.emit(crate::dbus::Event::EmergencyRequestPending { id, user: ctx.user.clone() });
            }
            Some((text, done))
        }
        Err(e) => {
            tracing::error!("store error during an emergency request for {}: {e}", ctx.user);
            Some(("Emergency access is unavailable right now.".into(), true))
        }
    }
}

async fn run_audit_result(
    sh: &Shared,
    ctx: LoginContext,
    result: &'static str,
    reason: String,
) -> Result<(), crate::store::StoreError> {
    let policy = sh.policy.clone();
    let now = sh.clock.now();
    sh.db.run(move |st| auth::audit(st, &policy, &ctx, now, result, &reason)).await
}

async fn session_event(sh: &Shared, msg: ClientMsg, peer_uid: u32) {
    let policy = sh.policy.clone();
    let now = sh.clock.now();
    let r = sh
        .db
        .run(move |st| {
            match msg {
                ClientMsg::SessionOpened { user, service, rhost, tty, pid, .. } if auth::valid_user_name(&user) => {
                    let rec = st.user(&user)?;
                    if peer_uid != 0 && rec.as_ref().and_then(|u| u.uid) != Some(peer_uid) {
                        return Ok(());
                    }
                    let email = rec
                        .filter(|u| u.last_method.as_deref() == Some("email"))
                        .and_then(|u| u.email.or_else(|| email::directory_address(&policy.email.directory, &u.name)));
                    st.open_session(&SessionRecord {
                        id: 0,
                        user,
                        email,
                        machine: policy.machine.clone(),
                        service: sanitize_field(&service, 64),
                        rhost: rhost.map(|r| sanitize_field(&r, 128)),
                        tty: tty.map(|t| sanitize_field(&t, 64)),
                        pid,
                        opened_at: now,
                        closed_at: None,
                    })?;
                }
                ClientMsg::SessionClosed { user, service, pid, .. } if auth::valid_user_name(&user) => {
                    // The rule of session_opened: a caller other than root closes only its own sessions.
                    if peer_uid != 0 && st.user(&user)?.and_then(|u| u.uid) != Some(peer_uid) {
                        return Ok(());
                    }
                    st.close_session(&user, &sanitize_field(&service, 64), pid, now)?;
                }
                _ => {}
            }
            Ok(())
        })
        .await;
    if let Err(e) = r {
        tracing::warn!("recording a session failed: {e}");
    }
}

fn kind(m: &ClientMsg) -> &'static str {
    match m {
        ClientMsg::Begin { .. } => "begin",
        ClientMsg::Answer { .. } => "answer",
        ClientMsg::Cancel => "cancel",
        ClientMsg::UserResolved { .. } => "user_resolved",
        ClientMsg::SessionOpened { .. } => "session_opened",
        ClientMsg::SessionClosed { .. } => "session_closed",
    }
}

pub async fn serve_admin(listener: Listener, shared: Arc<Shared>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(16));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Ok(stream) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            admin::connection(stream, &shared).await;
            drop(permit);
        });
    }
}
