//! One PAM conversation, the same state machine whichever way it arrives:
//! a local Unix socket (SO_PEERCRED) or a relay from a remote agent (TLS,
//! the host named by its certificate). It is written against [`Transport`]
//! and a [`Peer`]; `flow.rs` is its mirror in the module.
use crate::core::auth::{self, Plan, Verdict};
use crate::core::context::LoginContext;
use crate::core::email;
use crate::core::limits::CallerLimits;
use crate::core::service::Core;
use crate::login::transport::Transport;
use crate::store::model::{AuditMethod, AuditResult};
use crate::store::model::{EmergencyRequest, SessionRecord};
use common::codec::encode;
use common::config::{Approval, AutoSend};
use common::proto::{ClientMsg, OutcomeKind, QrStyle, ServerMsg, PROTOCOL_VERSION};
use common::text::sanitize_field;
use std::sync::Arc;
use std::time::Duration;

/// Fleet: the check that an agent's host may still log users in (its
/// certificate known, not revoked), decided for every conversation before
/// anything of it is written or sent. It runs alongside the plan's read
/// (two database jobs at once rather than one after the other). False:
/// refused — the gate has audited why — and the conversation ends with a
/// refusal.
pub type HostGate<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>;

/// A [`HostGate`] awaited at most once (none: a local conversation).
struct Gate<'a> {
    pending: Option<HostGate<'a>>,
    ok: bool,
}

impl Gate<'_> {
    async fn pass(&mut self) -> bool {
        if let Some(check) = self.pending.take() {
            self.ok = check.await;
        }
        self.ok
    }
}

/// What a conversation of a host that may not log anyone in is told,
/// before its plan or at its decision.
const HOST_REFUSED: &str = crate::core::audit::HOST_REVOKED;

/// Who started a conversation, on which host.
#[derive(Clone)]
pub struct Peer {
    /// SO_PEERCRED of the login process on its host.
    pub uid: u32,
    pub pid: Option<i32>,
    /// The host: this machine's id, or the name in an agent's certificate.
    pub machine: String,
    /// The rate limits and conversation caps of that host's callers.
    pub limits: Arc<CallerLimits>,
    /// On a remote host: the real uid of a root peer's process (the user
    /// who ran su/sudo), looked up there by the agent; `None` here.
    pub remote_caller: Option<Option<u32>>,
    /// On a remote host, for a peer other than root: its own account's
    /// name there, as the agent looked it up (see [`common::proto::Relay`]).
    pub account: Option<String>,
    /// On a remote host: the fingerprint of its agent's certificate.
    pub host_fingerprint: Option<Vec<u8>>,
}

impl Peer {
    /// A login process on this machine (the PAM socket).
    pub fn local(core: &Core, uid: u32, pid: Option<i32>) -> Peer {
        Peer {
            uid,
            pid,
            machine: core.policy.machine.clone(),
            limits: core.callers.local(),
            remote_caller: None,
            account: None,
            host_fingerprint: None,
        }
    }

    /// The real uid behind the connection (see [`crate::core::limits::caller_uid`]).
    pub fn caller_uid(&self) -> u32 {
        match self.remote_caller {
            None => crate::core::limits::caller_uid(self.uid, self.pid),
            Some(_) if self.uid != 0 => self.uid,
            Some(c) => c.unwrap_or(0),
        }
    }

    /// The uid its conversation is admitted under: a remote root peer's
    /// caller was looked up by the agent and counts at once.
    fn admitted_as(&self) -> u32 {
        match self.remote_caller {
            Some(Some(c)) if self.uid == 0 => c,
            _ => self.uid,
        }
    }
}

async fn outcome(s: &mut impl Transport, sh: &Core, result: OutcomeKind, message: Option<String>) {
    let _ = s.write_msg(&ServerMsg::Outcome { result, message }, sh.io_timeout).await;
}

/// The reply a session message always gets, recorded or not.
async fn outcome_ack(s: &mut impl Transport, sh: &Core) {
    let _ = s.write_msg(&ServerMsg::Ack, sh.io_timeout).await;
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

/// The fields of a `Begin` message the conversation goes on with.
struct Begin {
    protocol: u32,
    user: String,
    service: String,
    rhost: Option<String>,
    tty: Option<String>,
    uid: Option<u32>,
    qr: QrStyle,
}

/// The host may not log anyone in (the gate said so): the refusal is sent.
/// Every way out before the plan passes the gate first: nothing is
/// written or sent for such a host.
async fn host_refused(s: &mut impl Transport, sh: &Core, gate: &mut Gate<'_>) -> bool {
    if gate.pass().await {
        return false;
    }
    outcome(s, sh, OutcomeKind::Deny, Some(HOST_REFUSED.into())).await;
    true
}

pub async fn run<T: Transport>(mut s: T, peer: &Peer, first: ClientMsg, sh: &Core, gate: Option<HostGate<'_>>) {
    let mut gate = Gate { pending: gate, ok: true };
    let Some(begin) = opening(&mut s, peer, first, sh, &mut gate).await else { return };
    // otpd's own PAM check of a console password (`/etc/pam.d/otpweb`
    // includes common-auth, which may hold pam_otp): the second factor
    // follows in otpd's web door, so pam_otp ignores itself here. Only this
    // process has this pid on a local socket.
    if peer.remote_caller.is_none() && peer.pid == Some(std::process::id() as i32) {
        return outcome(&mut s, sh, OutcomeKind::NotEnrolled, None).await;
    }
    let mut ctx = login_context(&begin, peer);
    // Checked before anything is written: a refused attempt costs no row.
    // The ticket is held until this conversation ends.
    let ticket = match admit(peer, &ctx) {
        Ok(t) => t,
        Err((why, caller)) => {
            if !host_refused(&mut s, sh, &mut gate).await {
                refuse_caller(&mut s, sh, peer, caller, why).await;
            }
            return;
        }
    };
    if let Some(reason) = malformed(&begin) {
        if !host_refused(&mut s, sh, &mut gate).await {
            let _ = run_audit_result(sh, ctx.clone(), AuditResult::Deny, reason).await;
            outcome(&mut s, sh, OutcomeKind::Deny, Some("Passcode check refused.".into())).await;
        }
        return;
    }
    let Some((plan, seen)) = decide_plan(&mut s, peer, sh, &mut ctx, &ticket, &mut gate).await else { return };
    let Some(email) = show_plan(&mut s, sh, &ctx, plan, begin.qr).await else { return };
    prompts(s, peer, sh, &ctx, &ticket, email, seen).await
}

/// The first message. A `Begin` goes on; a session message is recorded (or
/// refused) and acknowledged; anything else is refused, and so is any
/// message of a host over its rate. `None`: the conversation is over.
async fn opening(
    s: &mut impl Transport,
    peer: &Peer,
    first: ClientMsg,
    sh: &Core,
    gate: &mut Gate<'_>,
) -> Option<Begin> {
    if peer.limits.host_rate.as_ref().is_some_and(|r| !r.allow(0)) {
        if host_refused(s, sh, gate).await {
            return None;
        }
        let why = crate::core::limits::Refusal::HostRate;
        crate::core::refusals::refuse(sh, &peer.limits, 0, why).await;
        if matches!(first, ClientMsg::Begin { .. }) {
            outcome(s, sh, OutcomeKind::Deny, Some(why.message().into())).await;
        } else {
            outcome_ack(s, sh).await;
        }
        return None;
    }
    match first {
        ClientMsg::Begin { protocol, user, service, rhost, tty, uid, qr, .. } => {
            Some(Begin { protocol, user, service, rhost, tty, uid, qr })
        }
        msg @ (ClientMsg::SessionOpened { .. } | ClientMsg::SessionClosed { .. }) => {
            if host_refused(s, sh, gate).await {
                return None;
            }
            let caller = peer.caller_uid();
            if caller != 0 && !peer.limits.session_rate.allow(caller) {
                crate::core::refusals::refuse(sh, &peer.limits, caller, crate::core::limits::Refusal::SessionRate)
                    .await;
            } else {
                session_event(sh, msg, peer.uid, &peer.machine, peer.remote_caller.is_some()).await;
            }
            let _ = s.write_msg(&ServerMsg::Ack, sh.io_timeout).await;
            None
        }
        other => {
            if host_refused(s, sh, gate).await {
                return None;
            }
            sh.warn_throttled(&format!("PAM connection from uid {}: expected begin, got {}", peer.uid, kind(&other)));
            outcome(s, sh, OutcomeKind::Deny, Some("Protocol error.".into())).await;
            None
        }
    }
}

/// Who is asking, from the `Begin` message and the peer.
fn login_context(begin: &Begin, peer: &Peer) -> LoginContext {
    let field = |v: &Option<String>| v.as_ref().map(|x| sanitize_field(x, 128)).filter(|x| !x.is_empty());
    let mut ctx = LoginContext {
        user: sanitize_field(&begin.user, 80),
        typed: None,
        uid: begin.uid,
        resolved: false,
        service: sanitize_field(&begin.service, 64),
        rhost: field(&begin.rhost),
        tty: field(&begin.tty),
        peer_uid: peer.uid,
        machine: peer.machine.clone(),
        remote: peer.remote_caller.is_some(),
        account: peer.account.clone(),
        invoker: peer.remote_caller.flatten(),
        host_fingerprint: peer.host_fingerprint.clone(),
    };
    if ctx.service.is_empty() {
        ctx.service = "-".into();
    }
    // A relayed caller other than root is its own account from the start,
    // whatever it typed: every row written and every record read names
    // that account, never the typed name (check 35). A name the agent gave
    // that no user could have is no name.
    if ctx.remote && peer.uid != 0 {
        ctx.account = ctx.account.take().filter(|a| crate::core::context::valid_user_name(a));
        // No account named (refused below): the caller's uid stands in.
        let own = ctx.account.clone().unwrap_or_else(|| format!("uid:{}", peer.uid));
        if own != ctx.user {
            ctx.typed = Some(std::mem::replace(&mut ctx.user, own));
        }
    }
    ctx
}

/// The caller's rate allowance and a place among the conversations in
/// progress (see [`crate::core::limits`]); the refusal and whom it counts
/// against otherwise.
fn admit(peer: &Peer, ctx: &LoginContext) -> Result<crate::core::limits::Ticket, (crate::core::limits::Refusal, u32)> {
    let admitted_as = peer.admitted_as();
    if admitted_as != 0 && !peer.limits.rate.allow(admitted_as) {
        return Err((crate::core::limits::Refusal::Rate, admitted_as));
    }
    // A caller other than root can only ever be its own account: its
    // conversations count against that, not against the name it typed
    // (which would let two users hold every slot of alice's or root's).
    let target = if peer.uid == 0 { ctx.user.clone() } else { format!("uid:{}", peer.uid) };
    let lookup = |uid: u32, pid: Option<i32>| match peer.remote_caller {
        // Other remote conversations of a root peer had no caller to look up.
        Some(_) => uid,
        None => crate::core::limits::caller_uid(uid, pid),
    };
    peer.limits.conversations.admit(admitted_as, peer.pid, &target, lookup).and_then(|t| {
        // A setuid program's caller, when it was looked up, has the same allowance.
        match t.caller() {
            Some(c) if admitted_as == 0 && c != 0 && !peer.limits.rate.allow(c) => {
                Err((crate::core::limits::Refusal::Rate, c))
            }
            _ => Ok(t),
        }
    })
}

/// Why a `Begin` is refused before anything is read: another protocol, a
/// name no account can have.
fn malformed(begin: &Begin) -> Option<String> {
    if begin.protocol != PROTOCOL_VERSION {
        Some(format!("protocol version {} not supported (otpd speaks {PROTOCOL_VERSION})", begin.protocol))
    } else if !crate::core::context::valid_user_name(&begin.user) {
        Some("invalid user name".to_string())
    } else {
        None
    }
}

/// What to ask, read beside the host's check (both at once); the uid asked
/// of the module when the plan needs it; the plan's note audited. What is
/// read on the way is kept for the decision. `None`: the conversation is
/// over (its outcome sent).
async fn decide_plan(
    s: &mut impl Transport,
    peer: &Peer,
    sh: &Core,
    ctx: &mut LoginContext,
    ticket: &crate::core::limits::Ticket,
    gate: &mut Gate<'_>,
) -> Option<(Plan, Option<crate::store::model::UserRecord>)> {
    // What to ask is read on this thread from the read-only connection; a
    // final answer is audited through the writer before it is sent.
    let now = sh.clock.now();
    let mut seen = None;
    let (mut planned, allowed) = tokio::join!(plan_login(sh, ctx, now, &mut seen), gate.pass());
    if !allowed {
        outcome(s, sh, OutcomeKind::Deny, Some(HOST_REFUSED.into())).await;
        return None;
    }
    if let Ok((Plan::ResolveUser, _)) = planned {
        ctx.uid = resolve_user(s, sh, ctx).await?;
        ctx.resolved = true;
        planned = plan_login(sh, ctx, now, &mut seen).await;
    }
    if let (Ok((_, Some(_))), Some(caller)) = (&planned, setuid_caller_over_rate(peer, ticket)) {
        refuse_caller(s, sh, peer, caller, crate::core::limits::Refusal::Rate).await;
        return None;
    }
    let planned = match planned {
        Ok((plan, None)) => Ok(plan),
        Ok((plan, Some(note))) => {
            let (policy, ctx) = (sh.policy.clone(), ctx.clone());
            sh.db.run(move |st| note.record(st, &policy, &ctx, now)).await.map(|()| plan)
        }
        Err(e) => Err(e),
    };
    match planned {
        Ok(plan) => Some((plan, seen)),
        Err(e) => {
            tracing::error!("store error for {}: {e}; denying", ctx.user);
            outcome(s, sh, OutcomeKind::Deny, Some("Passcode check unavailable.".into())).await;
            None
        }
    }
}

/// Tells the user what the plan says: the outcome when it ends the
/// conversation, the enrollment to finish, a failing mail. `Some(email)`:
/// prompt on, with emailed codes offered or not.
async fn show_plan(s: &mut impl Transport, sh: &Core, ctx: &LoginContext, plan: Plan, qr: QrStyle) -> Option<bool> {
    let unavailable = || Some("Passcode check unavailable.".to_string());
    match plan {
        // plan asks once; resolved, it decides.
        Plan::ResolveUser => {
            tracing::error!("planning the login of {} asked twice for its uid; denying", ctx.user);
            outcome(s, sh, OutcomeKind::Deny, unavailable()).await;
            None
        }
        Plan::NotEnrolled => {
            outcome(s, sh, OutcomeKind::NotEnrolled, None).await;
            None
        }
        Plan::Locked { until } => {
            outcome(s, sh, OutcomeKind::Locked, Some(until_text(until, sh.clock.now()))).await;
            None
        }
        Plan::Refused { message } => {
            outcome(s, sh, OutcomeKind::Deny, Some(message.into())).await;
            None
        }
        // Root on one agent host could otherwise read (and be first to
        // activate) any pending enrollment of the fleet.
        Plan::Enroll { .. } if ctx.remote && !sh.enroll_on_agents => {
            let why = "enrollment is not offered on agent hosts (fleet.enroll_on_agents = false)".to_string();
            let message = "Your passcode enrollment is not finished, and it is not offered on this host. \
                           Ask your administrator.";
            end_denied::<bool>(s, sh, ctx, why, Some(message)).await
        }
        Plan::Enroll { uri, secret_b32, email } => {
            // Whoever sees the secret can hold this account's second
            // factor: each showing is an event of its own (check 39).
            let why = "pending enrollment's secret shown (QR code and key)".to_string();
            if let Err(e) = run_audit_result(sh, ctx.clone(), AuditResult::Shown, why).await {
                tracing::error!("cannot audit showing {}'s enrollment: {e}; denying", ctx.user);
                outcome(s, sh, OutcomeKind::Deny, unavailable()).await;
                return None;
            }
            let text = enrollment_text(&uri, &secret_b32, qr);
            s.write_msg(&ServerMsg::Info { text }, sh.io_timeout).await.ok()?;
            Some(email)
        }
        Plan::Ask { email, mail_failing } => {
            if mail_failing {
                let text = "Sending your emailed code is failing at the moment; the daemon keeps retrying. \
                            If it does not arrive, contact your administrator."
                    .to_string();
                s.write_msg(&ServerMsg::Error { text }, sh.io_timeout).await.ok()?;
            }
            Some(email)
        }
    }
}

/// What a prompt says when Enter asks for an emailed code, and when E asks
/// for emergency access (the console shows them as buttons).
pub const PROMPT_OFFERS_EMAIL: &str = "press Enter to get one by email";
pub const PROMPT_OFFERS_EMERGENCY: &str = "type E for emergency access";
const PROMPT_EMAIL_OR_EMERGENCY: &str = "Passcode (press Enter to get one by email, or type E for emergency access): ";
const PROMPT_EMAIL: &str = "Passcode (press Enter to get one by email): ";
const PROMPT_EMERGENCY: &str = "Passcode (or type E for emergency access): ";

/// The prompts: a code decides (see [`finish`]); Enter asks for an emailed
/// code, E for emergency access, a few times at most.
async fn prompts<T: Transport>(
    mut s: T,
    peer: &Peer,
    sh: &Core,
    ctx: &LoginContext,
    ticket: &crate::core::limits::Ticket,
    email: bool,
    seen: Option<crate::store::model::UserRecord>,
) {
    let emergency = email && sh.policy.email.emergency.enabled;
    let first_prompt = match (email, emergency) {
        (true, true) => PROMPT_EMAIL_OR_EMERGENCY,
        (true, false) => PROMPT_EMAIL,
        _ => "Passcode: ",
    };
    // E keeps working after a request, so every later prompt says so too.
    let next_prompt = if emergency { PROMPT_EMERGENCY } else { "Passcode: " };
    let mut prompt_text = first_prompt;
    // A conversation may request a code and then enter it; it may not loop forever.
    for _ in 0..4 {
        let Some(answer) = ask(&mut s, sh, ctx, false, prompt_text).await else { return };
        let trimmed = answer.trim();
        if trimmed.is_empty() {
            if let Some(caller) = setuid_caller_over_rate(peer, ticket) {
                return refuse_caller(&mut s, sh, peer, caller, crate::core::limits::Refusal::Rate).await;
            }
        }
        let request = if email && trimmed.is_empty() {
            let (info, done) = email_request(&mut s, sh, ctx).await;
            Some((info, done))
        } else if emergency && trimmed.eq_ignore_ascii_case("e") {
            let Some((text, done)) = emergency_request(&mut s, sh, ctx).await else { return };
            Some((Some(text), done))
        } else {
            None
        };
        let Some((info, done)) = request else { return finish(s, sh, ctx, answer, seen).await };
        if let Some(text) = info {
            if s.write_msg(&ServerMsg::Info { text }, sh.io_timeout).await.is_err() {
                return;
            }
        }
        if done {
            return outcome(&mut s, sh, OutcomeKind::Deny, None).await;
        }
        prompt_text = next_prompt;
    }
    let _ = run_audit_result(sh, ctx.clone(), AuditResult::Deny, "too many requests in one conversation".into()).await;
    outcome(&mut s, sh, OutcomeKind::Deny, Some("Too many requests in one login.".into())).await
}

/// What to ask. Read on this thread where the store can
/// ([`crate::store::db::Db::read_here`]); a fleet login's plan is made on
/// the records one prefetch read when they are all it needs; else it is
/// read through the database workers.
async fn plan_login(
    sh: &Core,
    ctx: &mut LoginContext,
    now: i64,
    seen: &mut Option<crate::store::model::UserRecord>,
) -> Result<(Plan, Option<auth::Note>), crate::store::model::StoreError> {
    if let Some(planned) = sh.db.read_here(|reader| auth::plan(reader, &sh.policy, ctx, now)) {
        return planned;
    }
    let prefetched = match ctx.remote {
        true => sh.db.prefetch_plan(&ctx.user, sh.policy.email.enabled).await,
        false => None,
    };
    match prefetched {
        Some(Ok((user, failing_mail))) => {
            let mut read = auth::Prefetched { name: ctx.user.clone(), user, failing_mail };
            let (mut job_ctx, mut found) = (ctx.clone(), None);
            match auth::plan_seen(&mut read, &sh.policy, &mut job_ctx, now, &mut found) {
                Err(crate::store::model::StoreError::NotRead) => {}
                planned => {
                    *ctx = job_ctx;
                    *seen = found;
                    return planned;
                }
            }
        }
        Some(Err(e)) => {
            tracing::debug!("reading the plan of {} on the login path failed ({e}); reading again", ctx.user)
        }
        None => {}
    }
    let (policy, mut job_ctx) = (sh.policy.clone(), ctx.clone());
    let (planned, job_ctx, found) = sh
        .db
        .read(move |st| {
            let mut seen = None;
            let planned = auth::plan_seen(st, &policy, &mut job_ctx, now, &mut seen);
            Ok((planned, job_ctx, seen))
        })
        .await?;
    *ctx = job_ctx;
    *seen = found;
    planned
}

/// What a user who has not activated yet is shown. The key and the URI are
/// there in every QR style: they work where no QR code can be drawn.
fn enrollment_text(uri: &str, secret_b32: &str, style: QrStyle) -> String {
    let scan = match crate::login::qr::render(uri, style) {
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
fn setuid_caller_over_rate(peer: &Peer, ticket: &crate::core::limits::Ticket) -> Option<u32> {
    // Other callers, and those looked up at admission, have been charged.
    if peer.uid != 0 || ticket.caller().is_some() {
        return None;
    }
    let caller = peer.caller_uid();
    (caller != 0 && !peer.limits.rate.allow(caller)).then_some(caller)
}

/// Refuses a login for one of its caller's limits (counted, not written one by one).
async fn refuse_caller(s: &mut impl Transport, sh: &Core, peer: &Peer, caller: u32, why: crate::core::limits::Refusal) {
    crate::core::refusals::refuse(sh, &peer.limits, caller, why).await;
    outcome(s, sh, OutcomeKind::Deny, Some(why.message().into())).await
}

/// Asks the module for the uid of the name typed. `None` when the
/// conversation is over (the outcome has been sent and audited).
async fn resolve_user(s: &mut impl Transport, sh: &Core, ctx: &LoginContext) -> Option<Option<u32>> {
    if s.write_msg(&ServerMsg::ResolveUser, sh.io_timeout).await.is_err() {
        return None;
    }
    match s.read_msg(sh.io_timeout, sh.io_timeout).await {
        Ok(ClientMsg::UserResolved { uid }) => Some(uid),
        Ok(other) => protocol_error(s, sh, ctx, &other).await,
        Err(e) => {
            let why = format!("no answer to resolve_user: {e}");
            end_denied(s, sh, ctx, why, Some("Passcode check unavailable.")).await
        }
    }
}

/// Audits a denial, sends it, and ends the conversation (`None`).
async fn end_denied<T>(
    s: &mut impl Transport,
    sh: &Core,
    ctx: &LoginContext,
    why: String,
    message: Option<&str>,
) -> Option<T> {
    let _ = run_audit_result(sh, ctx.clone(), AuditResult::Deny, why).await;
    outcome(s, sh, OutcomeKind::Deny, message.map(String::from)).await;
    None
}

async fn protocol_error<T>(s: &mut impl Transport, sh: &Core, ctx: &LoginContext, got: &ClientMsg) -> Option<T> {
    let why = format!("protocol error: unexpected {}", kind(got));
    end_denied(s, sh, ctx, why, Some("Protocol error.")).await
}

/// Sends a prompt and waits for the answer. `None` when the conversation is
/// over (cancelled, broken, timed out): the outcome has been sent and audited.
async fn ask(s: &mut impl Transport, sh: &Core, ctx: &LoginContext, echo: bool, text: &str) -> Option<String> {
    if s.write_msg(&ServerMsg::Prompt { echo, text: text.into() }, sh.io_timeout).await.is_err() {
        return None;
    }
    crate::store::db::test_stop("OTPD_TEST_STOP_AT_PROMPT_FILE");
    match s.read_msg(sh.prompt_timeout, sh.io_timeout).await {
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
async fn finish<T: Transport>(
    mut s: T,
    sh: &Core,
    ctx: &LoginContext,
    answer: String,
    seen: Option<crate::store::model::UserRecord>,
) {
    let now = sh.clock.now();
    crate::store::db::test_stop("OTPD_TEST_STOP_BEFORE_DECISION_FILE");
    // The asker may have given up while this server was paused before it
    // even read the answer: then the agent has closed the link.
    let decide_by = match s.asker_gone().await {
        true => Some(std::time::Instant::now()),
        false => s.decide_by(),
    };
    let recovery = match recovery_hash(sh, &ctx.user, &answer, now).await {
        Ok(hash) => hash,
        Err(crate::sys::hashing::Busy) => {
            // Nothing was checked: the attempt counts against no one.
            let why = "recovery code not checked: too many slow hashes at once".to_string();
            let message = "The passcode service is busy; try again in a minute.";
            return end_denied::<()>(&mut s, sh, ctx, why, Some(message)).await.unwrap_or(());
        }
    };
    // PostgreSQL: the common login in one statement without a transaction
    // (three round trips and a row lock fewer), on this runtime; anything
    // else, or a row that changed meanwhile, is decided below in a
    // transaction.
    let late = move || decide_by.is_some_and(|by| std::time::Instant::now() >= by);
    let seen = seen.as_ref().filter(|_| recovery.is_none() && !late());
    if let Some(user) = seen {
        if let Some((step, entry)) = auth::fast_step(&sh.policy, ctx, &answer, now, user) {
            let host = ctx.host_fingerprint.as_deref();
            match sh.db.accept_step_if_unchanged(user, step, now, &entry, host).await.unwrap_or(Ok(false)) {
                Ok(true) => {
                    crate::core::syslog::audit(&entry);
                    return send_verdict(&mut s, sh, &ctx.user, Ok(auth::FAST_ACCEPT), now).await;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!("the one-statement check for {} failed ({e}); deciding in a transaction", ctx.user)
                }
            }
        }
    }
    let (policy, job_ctx, events, user) = (sh.policy.clone(), ctx.clone(), sh.events.clone(), ctx.user.clone());
    let check = move |st: &mut dyn crate::store::model::Store| {
        // The asker gave up meanwhile (this server was paused, or its
        // database slow): whatever would be decided now, nobody would hear
        // it, and an accept would be recorded for a login that failed.
        if late() {
            let why = "not decided: the login had stopped waiting for the answer";
            crate::core::audit::audit(st, &policy, &job_ctx, now, AuditResult::Deny, why)?;
            return Ok(Verdict::Deny { message: "Passcode check unavailable.".into() });
        }
        auth::check_answer_with(st, &policy, &job_ctx, &answer, recovery.as_deref(), now)
    };
    let Some(stream) = s.direct() else {
        // A relayed conversation: the outcome goes back over the link.
        return send_verdict(&mut s, sh, &user, sh.db.run(check).await, now).await;
    };
    let queued = sh
        .db
        .submit(check, move |verdict| {
            verdict_events(&events, &user, &verdict);
            if let Ok(frame) = encode(&verdict_outcome(&verdict, now)) {
                // A client always reads its outcome; one that does not
                // gets a cut frame and fails closed.
                if crate::sys::conn::send_now(&stream, &frame) < frame.len() {
                    tracing::warn!("outcome for {user} not delivered: the client is not reading");
                }
            }
        })
        .await;
    if let Err(e) = queued {
        tracing::error!("cannot queue the check of a code for {}: {e}; denying", ctx.user);
        outcome(&mut s, sh, OutcomeKind::Deny, Some("Passcode check unavailable.".into())).await;
    }
}

/// A decided answer over the conversation's transport: D-Bus signals, the log line, the outcome.
async fn send_verdict<T: Transport>(
    s: &mut T,
    sh: &Core,
    user: &str,
    verdict: Result<Verdict, crate::store::model::StoreError>,
    now: i64,
) {
    verdict_events(&sh.events, user, &verdict);
    let _ = s.write_msg(&verdict_outcome(&verdict, now), sh.io_timeout).await;
}

/// The argon2id hash of a recovery-code-shaped answer under the user's
/// recovery salt, computed on the hashing threads ([`crate::sys::hashing`]:
/// bounded in number and memory, check 38); `Ok(None)` for any other
/// answer (no slow hash for TOTP or emailed codes), and for an account
/// locked now: the cheap checks that refuse it anyway come first.
/// A user without codes still costs one hash (under a fresh salt), so the
/// time taken does not tell whether they have any.
async fn recovery_hash(
    sh: &Core,
    user: &str,
    answer: &str,
    now: i64,
) -> Result<Option<Vec<u8>>, crate::sys::hashing::Busy> {
    if answer.len() > common::proto::MAX_ANSWER_LEN {
        return Ok(None);
    }
    let (code, scratch) = match crate::core::recovery::normalize(answer) {
        Some(code) => (code, false),
        None => match crate::core::recovery::scratch_shape(answer) {
            Some(code) => (code, true),
            None => return Ok(None),
        },
    };
    let read = |st: &mut dyn crate::store::model::Store| {
        let locked = crate::store::model::PlanReads::user(st, user)?.is_some_and(|u| u.is_locked(now));
        Ok((locked, st.recovery_salt(user)?))
    };
    let state = match sh.db.read_here(read) {
        Some(state) => state,
        None => {
            let user = user.to_string();
            sh.db
                .read(move |st| Ok((st.user(&user)?.is_some_and(|u| u.is_locked(now)), st.recovery_salt(&user)?)))
                .await
        }
    };
    let salt = match state {
        // The decision in the transaction says so; no hash is spent on it.
        Ok((true, _)) => return Ok(None),
        Ok((false, Some(salt))) => salt,
        // An 8-digit answer is a TOTP or emailed code for most users: only
        // users with codes pay for the hash.
        Ok((false, None)) if scratch => return Ok(None),
        Ok((false, None)) => crate::core::recovery::new_salt(),
        Err(e) => {
            tracing::error!("cannot read the recovery codes of {user}: {e}");
            return Ok(None);
        }
    };
    let key = *sh.policy.crypto.scratch_key();
    let hashed = crate::sys::hashing::run(move || match scratch {
        true => crate::core::recovery::hash_scratch(&key, &salt, &code),
        false => crate::core::recovery::hash(&salt, &code),
    });
    match hashed.await? {
        Ok(h) => Ok(Some(h)),
        Err(e) => {
            tracing::error!("hashing a recovery code failed: {e}");
            Ok(None)
        }
    }
}

/// D-Bus signals and the log line for a checked answer.
fn verdict_events(
    events: &tokio::sync::broadcast::Sender<crate::core::events::Event>,
    user: &str,
    verdict: &Result<Verdict, crate::store::model::StoreError>,
) {
    let user = user.to_string();
    match verdict {
        Ok(Verdict::Accept { activated: true, .. }) => {
            let _ = events.send(crate::core::events::Event::EnrollmentActivated { user: user.clone() });
        }
        Ok(Verdict::Locked { until }) => {
            // i64::MAX: until an administrator unlocks the account.
            let until = match until {
                auth::LockEnd::At(t) => *t,
                auth::LockEnd::AdminUnlock => i64::MAX,
            };
            let _ = events.send(crate::core::events::Event::UserLockedOut { user: user.clone(), until });
        }
        // Nothing was committed: the code was not consumed, the attempt not recorded.
        Err(e) => tracing::error!("store error while checking a code for {user}: {e}; denying"),
        _ => {}
    }
}

/// The outcome message for a checked answer.
fn verdict_outcome(verdict: &Result<Verdict, crate::store::model::StoreError>, now: i64) -> ServerMsg {
    let (result, message) = match verdict {
        Ok(Verdict::Accept { activated, failures, locks }) => {
            (OutcomeKind::Accept, accept_text(*activated, *failures, *locks))
        }
        Ok(Verdict::Recovered { failures, locks, left }) => {
            let mut lines = vec![crate::core::recovery::left_text(*left)];
            lines.extend(accept_text(false, *failures, *locks));
            (OutcomeKind::Accept, Some(lines.join("\n")))
        }
        Ok(Verdict::Deny { message }) => (OutcomeKind::Deny, Some(message.clone())),
        Ok(Verdict::Locked { until }) => (OutcomeKind::Locked, Some(until_text(*until, now))),
        Err(_) => (OutcomeKind::Deny, Some("Passcode check unavailable.".into())),
    };
    ServerMsg::Outcome { result, message }
}

/// "14:32 CET": times shown to users are in the server's time zone.
fn hhmm(t: i64) -> String {
    crate::sys::clock::local_hhmm(t)
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
async fn email_request(s: &mut impl Transport, sh: &Core, ctx: &LoginContext) -> (Option<String>, bool) {
    let unavailable = |e: crate::store::model::StoreError| {
        tracing::error!("store error during an email request for {}: {e}", ctx.user);
        (Some("Emailed codes are unavailable right now.".to_string()), false)
    };
    // One time for the whole request, as the check and the code agree on it.
    let now = sh.clock.now();
    match no_code_allowed(sh, ctx, now).await {
        Ok(Some(text)) => return (Some(text), true),
        Ok(None) => {}
        Err(e) => return unavailable(e),
    }
    let mode = sh.policy.email.auto_send;
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
    let password_ok = internal_login_ok(sh, ctx, mode, typed.as_ref()).await;
    let (policy, ctx2) = (sh.policy.clone(), ctx.clone());
    let result = sh.db.run(move |st| send_code(st, &policy, &ctx2, typed, password_ok, now)).await;
    match result {
        Ok(Ok(outcome)) => {
            if let crate::core::email::RequestOutcome::Queued { masked, .. } = &outcome {
                sh.mail_wakeup.notify_one();
                sh.emit(crate::core::events::Event::CodeRequested { user: ctx.user.clone(), address: masked.clone() });
            }
            // Typed address / internal login: only the neutral words, whether or not it matched.
            let text = if mode == AutoSend::Directory { describe(&outcome) } else { NEUTRAL.to_string() };
            (Some(text), false)
        }
        // A revoked host's conversation ends here; other refusals leave the prompt.
        Ok(Err(text)) => (Some(text.to_string()), text == crate::core::audit::HOST_REVOKED),
        Err(e) => unavailable(e),
    }
}

/// Decided before any address or login is asked, so the answer says
/// nothing about what was typed (not a failed guess: nothing was guessed):
/// the text when no emailed code can be used or sent now.
async fn no_code_allowed(
    sh: &Core,
    ctx: &LoginContext,
    now: i64,
) -> Result<Option<String>, crate::store::model::StoreError> {
    let (p, c) = (sh.policy.clone(), ctx.clone());
    let why = sh
        .db
        .run(move |st| {
            let why = email::no_usable_code(st, &p, &c.user, &c.machine, now)?;
            if why.is_some() {
                let reason = "no usable emailed code; a new one is not allowed yet";
                crate::core::audit::audit_method(st, &p, &c, now, AuditMethod::Email, AuditResult::Deny, reason)?;
            }
            Ok(why)
        })
        .await?;
    let email = &sh.policy.email;
    Ok(why.map(|why| no_usable_code_text(&why, email.new_code_interval, email.emergency.enabled)))
}

/// Internal accounts: the typed login is the account's and the password
/// its. The argon2 check is slow on purpose, so it runs on the hashing
/// threads, off the database thread and the async workers.
async fn internal_login_ok(sh: &Core, ctx: &LoginContext, mode: AutoSend, typed: Option<&(String, String)>) -> bool {
    let (AutoSend::Internal, Some((login, password))) = (mode, typed) else { return false };
    let user = ctx.user.clone();
    let hash = sh.db.run(move |st| Ok(st.user(&user)?.and_then(|u| u.password_hash))).await.ok().flatten();
    let password = password.clone();
    let same = *login == ctx.user;
    // Busy (check 38): the password is not checked, so not admitted.
    crate::sys::hashing::run(move || crate::core::passwd::verify(hash.as_deref(), &password) && same)
        .await
        .unwrap_or(false)
}

/// In the database job: the address on record, whether what was typed
/// admits the request, and the code queued. `Err(text)`: refused, with
/// what the user is told.
fn send_code(
    st: &mut dyn crate::store::model::Store,
    policy: &crate::core::policy::Policy,
    ctx: &LoginContext,
    typed: Option<(String, String)>,
    password_ok: bool,
    now: i64,
) -> Result<Result<email::RequestOutcome, &'static str>, crate::store::model::StoreError> {
    use crate::core::audit::audit_method;
    // Revoked meanwhile (check 40): nothing is mailed for that host.
    if !crate::core::audit::host_still_trusted(st, policy, ctx, now)? {
        return Ok(Err(crate::core::audit::HOST_REVOKED));
    }
    let user = st.user(&ctx.user)?;
    let on_record = user
        .as_ref()
        .and_then(|u| u.email.clone())
        .or_else(|| email::directory_address(&policy.email.directory, &ctx.user));
    let Some(address) = on_record else {
        audit_method(st, policy, ctx, now, AuditMethod::Email, AuditResult::Deny, "no email address on record")?;
        return Ok(Err("No email address is on record for you. Ask your administrator, or use emergency access."));
    };
    let mode = policy.email.auto_send;
    let admitted = match (&mode, &typed) {
        (AutoSend::Directory, _) => true,
        (AutoSend::None, Some((typed, _))) => email::same_address(typed.trim(), &address),
        (AutoSend::Internal, _) => password_ok,
        _ => false,
    };
    if !admitted {
        let why =
            if mode == AutoSend::None { "typed address does not match the record" } else { "internal login failed" };
        audit_method(st, policy, ctx, now, AuditMethod::Email, AuditResult::Deny, why)?;
        return Ok(Err(NEUTRAL));
    }
    email::request_code(st, policy, ctx, &address, false, now).map(Ok)
}

/// "I need emergency access": a typed address and a reason.
async fn emergency_request(s: &mut impl Transport, sh: &Core, ctx: &LoginContext) -> Option<(String, bool)> {
    let typed = ask(s, sh, ctx, true, "Email address: ").await?;
    let address = match email::validate_address(typed.trim()) {
        Ok(a) => a,
        Err(why) => {
            let _ = run_audit_result(sh, ctx.clone(), AuditResult::Deny, format!("emergency: invalid address ({why})"))
                .await;
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
            // Revoked meanwhile (check 40): no code, no request for an admin to approve.
            if !crate::core::audit::host_still_trusted(st, &policy, &ctx2, now)? {
                return Ok((crate::core::audit::HOST_REVOKED.to_string(), true, false, None));
            }
            if allowed {
                return email::request_code(st, &policy, &ctx2, &address, true, now)
                    .map(|o| (describe(&o), false, true, None));
            }
            if policy.email.emergency.approval == Approval::Never {
                crate::core::audit::audit_method(
                    st,
                    &policy,
                    &ctx2,
                    now,
                    AuditMethod::Email,
                    AuditResult::Deny,
                    "emergency: address not allowed",
                )?;
                return Ok(("Emergency access is not available for that address.".to_string(), true, false, None));
            }
            if let Some((why, text)) =
                crate::core::limits::emergency_capped(st, &policy.email.emergency, &ctx2.user, &address)?
            {
                crate::core::audit::audit_method(st, &policy, &ctx2, now, AuditMethod::Email, AuditResult::Deny, &why)?;
                return Ok((text, true, false, None));
            }
            let id = st.insert_request(&EmergencyRequest {
                id: 0,
                user: ctx2.user.clone(),
                machine: ctx2.machine.clone(),
                address: address.clone(),
                reason: reason.clone(),
                origin: email::origin(&ctx2),
                created_at: now,
                status: common::proto::RequestStatus::Pending,
                decided_at: None,
                decided_by: None,
            })?;
            crate::core::audit::audit_method(
                st,
                &policy,
                &ctx2,
                now,
                AuditMethod::Email,
                AuditResult::Pending,
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
                sh.emit(crate::core::events::Event::EmergencyRequestPending { id, user: ctx.user.clone() });
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
    sh: &Core,
    ctx: LoginContext,
    result: AuditResult,
    reason: String,
) -> Result<(), crate::store::model::StoreError> {
    let policy = sh.policy.clone();
    let now = sh.clock.now();
    sh.db.run(move |st| crate::core::audit::audit(st, &policy, &ctx, now, result, &reason)).await
}

async fn session_event(sh: &Core, msg: ClientMsg, peer_uid: u32, machine: &str, remote: bool) {
    let policy = sh.policy.clone();
    let machine = machine.to_string();
    let now = sh.clock.now();
    let r = sh
        .db
        .run(move |st| {
            match msg {
                // A remote uid cannot be matched to a record: only root's
                // (login, sshd) session messages are recorded for a host.
                ClientMsg::SessionOpened { .. } | ClientMsg::SessionClosed { .. } if remote && peer_uid != 0 => {}
                ClientMsg::SessionOpened { user, service, rhost, tty, pid, .. }
                    if crate::core::context::valid_user_name(&user) =>
                {
                    let rec = st.user(&user)?;
                    if peer_uid != 0 && rec.as_ref().and_then(|u| u.uid) != Some(peer_uid) {
                        return Ok(());
                    }
                    let email = rec
                        .filter(|u| u.last_method == Some(AuditMethod::Email))
                        .and_then(|u| u.email.or_else(|| email::directory_address(&policy.email.directory, &u.name)));
                    st.open_session(&SessionRecord {
                        id: 0,
                        user,
                        email,
                        machine: machine.clone(),
                        service: sanitize_field(&service, 64),
                        rhost: rhost.map(|r| sanitize_field(&r, 128)),
                        tty: tty.map(|t| sanitize_field(&t, 64)),
                        pid,
                        opened_at: now,
                        closed_at: None,
                    })?;
                }
                ClientMsg::SessionClosed { user, service, pid, .. } if crate::core::context::valid_user_name(&user) => {
                    // The rule of session_opened: a caller other than root closes only its own sessions.
                    if peer_uid != 0 && st.user(&user)?.and_then(|u| u.uid) != Some(peer_uid) {
                        return Ok(());
                    }
                    st.close_session(&user, &machine, &sanitize_field(&service, 64), pid, now)?;
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

#[cfg(test)]
mod tests {
    //! The state machine driven by a scripted transport, as `flow.rs`
    //! drives the module: each step is what the daemon must send, or what
    //! the peer answers; the script must be used up (checked in Drop).
    use super::*;
    use crate::core::service::Parts;
    use crate::store::db::Db;
    use crate::store::sqlite::SqliteStore;
    use common::codec::FrameError;
    use common::proto::Method;
    use std::collections::VecDeque;
    use std::future::Future;

    const T0: i64 = 1_700_000_000;

    #[derive(Debug)]
    enum Step {
        /// The daemon sends a message matching this predicate (described).
        Sends(&'static str, fn(&ServerMsg) -> bool),
        /// The peer answers.
        Reads(ClientMsg),
        /// The peer is gone.
        Closed,
    }

    struct Script {
        steps: VecDeque<Step>,
        seen: Vec<String>,
    }

    impl Drop for Script {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                assert!(self.steps.is_empty(), "script not used up: {:?}; daemon sent {:?}", self.steps, self.seen);
            }
        }
    }

    impl Transport for Script {
        fn read_msg(&mut self, _: Duration, _: Duration) -> impl Future<Output = Result<ClientMsg, FrameError>> + Send {
            let next = match self.steps.pop_front() {
                Some(Step::Reads(m)) => Ok(m),
                Some(Step::Closed) => Err(FrameError::Closed),
                other => panic!("daemon read, script expected {other:?}; daemon sent {:?}", self.seen),
            };
            async move { next }
        }

        fn write_msg(&mut self, msg: &ServerMsg, _: Duration) -> impl Future<Output = Result<(), FrameError>> + Send {
            self.seen.push(format!("{msg:?}"));
            match self.steps.pop_front() {
                Some(Step::Sends(what, ok)) => assert!(ok(msg), "expected {what}, daemon sent {msg:?}"),
                other => panic!("daemon sent {msg:?}, script expected {other:?}"),
            }
            async { Ok(()) }
        }
    }

    fn shared(db: Db) -> Core {
        Core::new(Parts::for_tests(db, T0))
    }

    fn begin(user: &str) -> ClientMsg {
        ClientMsg::Begin {
            protocol: PROTOCOL_VERSION,
            user: user.into(),
            service: "sshd".into(),
            rhost: None,
            ruser: None,
            tty: None,
            pid: 1,
            uid: Some(1000),
            qr: QrStyle::Off,
        }
    }

    fn remote(sh: &Core, host: &str, uid: u32) -> Peer {
        Peer {
            uid,
            pid: None,
            machine: host.into(),
            limits: sh.callers.of_host(host),
            remote_caller: Some(None),
            account: None,
            host_fingerprint: None,
        }
    }

    /// alice, activated, and a valid code for T0.
    fn enrolled(sh: &Core) -> String {
        let rec = crate::core::auth::new_enrollment(&sh.policy, None, "alice", Some(1000), T0 - 100);
        let secret = sh.policy.crypto.open("alice", rec.secret.as_deref().unwrap()).unwrap();
        let mut rec = rec;
        rec.activated_at = Some(T0 - 50);
        let code = sh.policy.totp.code_at_step(&secret, sh.policy.totp.step_of(T0));
        on_db(sh, move |st| st.save_user(&rec));
        code
    }

    fn is_prompt(m: &ServerMsg) -> bool {
        matches!(m, ServerMsg::Prompt { echo: false, .. })
    }

    fn run_script(sh: &Core, peer: &Peer, first: ClientMsg, steps: Vec<Step>) -> Vec<String> {
        run_gated(sh, peer, first, steps, None)
    }

    /// With a host gate that says `allowed` (None: no gate, a local login).
    fn run_gated(sh: &Core, peer: &Peer, first: ClientMsg, steps: Vec<Step>, allowed: Option<bool>) -> Vec<String> {
        let mut s = Script { steps: steps.into(), seen: Vec::new() };
        let gate = allowed.map(|ok| -> HostGate { Box::pin(async move { ok }) });
        tokio::runtime::Handle::current().block_on(run(&mut s, peer, first, sh, gate));
        std::mem::take(&mut s.seen)
    }

    /// A refused host gets one refusal, whatever it sent, and nothing is
    /// written for it; an allowed one logs in as before.
    #[test]
    fn a_host_refused_by_the_gate_is_told_so_and_nothing_is_written() {
        with_runtime(|| {
            let sh = shared(Db::start(SqliteStore::in_memory().unwrap()));
            let code = enrolled(&sh);
            let peer = remote(&sh, "web01", 0);
            let refused = |m: &ServerMsg| matches!(m, ServerMsg::Outcome { result: OutcomeKind::Deny, message: Some(t) } if t == HOST_REFUSED);
            for first in [
                begin("alice"),
                begin("no such name!"),
                ClientMsg::SessionOpened {
                    protocol: PROTOCOL_VERSION,
                    user: "alice".into(),
                    service: "sshd".into(),
                    rhost: None,
                    tty: None,
                    pid: 1,
                },
            ] {
                run_gated(&sh, &peer, first, vec![Step::Sends("a refusal", refused)], Some(false));
            }
            assert_eq!(audit_rows(&sh), vec![], "no audit row, no session, for a refused host");
            assert!(on_db(&sh, |st| st.sessions(10)).is_empty());
            run_gated(
                &sh,
                &peer,
                begin("alice"),
                vec![
                    Step::Sends("a passcode prompt", is_prompt),
                    Step::Reads(ClientMsg::Answer { text: code }),
                    Step::Sends("accept", |m| matches!(m, ServerMsg::Outcome { result: OutcomeKind::Accept, .. })),
                ],
                Some(true),
            );
        });
    }

    /// pam_otp inside otpd's own console password check (common-auth may
    /// hold it) is told "not enrolled" (PAM_IGNORE): the second factor is
    /// the web door's. Any other pid is asked as always.
    #[test]
    fn otpds_own_password_check_is_ignored_by_pam_otp() {
        with_runtime(|| {
            let sh = shared(Db::start(SqliteStore::in_memory().unwrap()));
            enrolled(&sh);
            let own = Peer::local(&sh, 0, Some(std::process::id() as i32));
            let ignored = |m: &ServerMsg| matches!(m, ServerMsg::Outcome { result: OutcomeKind::NotEnrolled, .. });
            run_script(&sh, &own, begin("alice"), vec![Step::Sends("not enrolled", ignored)]);
            assert_eq!(audit_rows(&sh), vec![], "nothing audited: no login happened here");
            let other = Peer::local(&sh, 0, Some(1));
            let denied = |m: &ServerMsg| matches!(m, ServerMsg::Outcome { result: OutcomeKind::Deny, .. });
            let steps = vec![
                Step::Sends("a passcode prompt", is_prompt),
                Step::Reads(ClientMsg::Cancel),
                Step::Sends("a denial", denied),
            ];
            run_script(&sh, &other, begin("alice"), steps);
        });
    }

    /// The console turns the prompts' offers into buttons by these words.
    #[test]
    fn the_prompts_carry_the_words_of_their_offers() {
        assert!(PROMPT_EMAIL_OR_EMERGENCY.contains(PROMPT_OFFERS_EMAIL));
        assert!(PROMPT_EMAIL_OR_EMERGENCY.contains(PROMPT_OFFERS_EMERGENCY));
        assert!(PROMPT_EMAIL.contains(PROMPT_OFFERS_EMAIL) && !PROMPT_EMAIL.contains(PROMPT_OFFERS_EMERGENCY));
        assert!(PROMPT_EMERGENCY.contains(PROMPT_OFFERS_EMERGENCY) && !PROMPT_EMERGENCY.contains(PROMPT_OFFERS_EMAIL));
    }

    fn audit_rows(sh: &Core) -> Vec<(String, String, String)> {
        on_db(sh, |st| st.audit(None, None, None, 100)).into_iter().map(|e| (e.machine, e.result, e.reason)).collect()
    }

    /// `f` in a transaction, from this (non-async) thread.
    fn on_db<T, F>(sh: &Core, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn crate::store::model::Store) -> Result<T, crate::store::model::StoreError> + Send + 'static,
    {
        let db = sh.db.clone();
        tokio::runtime::Handle::current().block_on(async move { db.run(f).await }).unwrap()
    }

    /// The steps block on the runtime from this (non-async) thread.
    fn with_runtime(f: impl FnOnce()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let _guard = rt.enter();
        f();
    }

    #[test]
    fn a_relayed_login_is_decided_and_audited_under_the_host_of_its_certificate() {
        with_runtime(|| {
            let sh = shared(Db::start(SqliteStore::in_memory().unwrap()));
            let code = enrolled(&sh);
            let peer = remote(&sh, "web01", 0);
            run_script(
                &sh,
                &peer,
                begin("alice"),
                vec![
                    Step::Sends("a passcode prompt", is_prompt),
                    Step::Reads(ClientMsg::Answer { text: code.clone() }),
                    Step::Sends("accept", |m| matches!(m, ServerMsg::Outcome { result: OutcomeKind::Accept, .. })),
                ],
            );
            // The same code again, from another host: one step, used once.
            let other = remote(&sh, "web02", 0);
            run_script(
                &sh,
                &other,
                begin("alice"),
                vec![
                    Step::Sends("a passcode prompt", is_prompt),
                    Step::Reads(ClientMsg::Answer { text: code }),
                    Step::Sends("deny", |m| matches!(m, ServerMsg::Outcome { result: OutcomeKind::Deny, .. })),
                ],
            );
            let rows = audit_rows(&sh);
            assert!(rows.iter().any(|(m, r, _)| m == "web01" && r == "accept"), "{rows:?}");
            assert!(rows.iter().any(|(m, _, why)| m == "web02" && why == "code already used"), "{rows:?}");
        });
    }

    #[test]
    fn a_remote_uid_is_never_matched_to_a_record_only_the_name_is() {
        with_runtime(|| {
            let sh = shared(Db::start(SqliteStore::in_memory().unwrap()));
            // alice's record has uid 1000 (this daemon's directory).
            enrolled(&sh);
            // bob is uid 1000 on db02 and authenticates himself: he is not alice.
            let bob = Peer { account: Some("bob".into()), ..remote(&sh, "db02", 1000) };
            let seen = run_script(
                &sh,
                &bob,
                begin("bob"),
                vec![Step::Sends("not enrolled", |m| {
                    matches!(m, ServerMsg::Outcome { result: OutcomeKind::NotEnrolled, .. })
                })],
            );
            assert!(!seen.iter().any(|m| m.contains("secret")), "{seen:?}");
            // Root on a host typing another spelling of alice is asked for alice's code.
            let root = remote(&sh, "web01", 0);
            let mut msg = begin("ALICE");
            if let ClientMsg::Begin { uid, .. } = &mut msg {
                *uid = Some(4242);
            }
            run_script(
                &sh,
                &root,
                msg,
                vec![
                    Step::Sends("a passcode prompt", is_prompt),
                    Step::Reads(ClientMsg::Answer { text: "000000".into() }),
                    Step::Sends("deny", |m| matches!(m, ServerMsg::Outcome { result: OutcomeKind::Deny, .. })),
                ],
            );
            let rows = audit_rows(&sh);
            assert!(rows.iter().any(|(m, _, why)| m == "web01" && why.contains("typed as ALICE")), "{rows:?}");
        });
    }

    /// Check 35: a caller other than root on an agent host, whatever name
    /// it types and however it answers resolve_user, is decided on the
    /// account the agent named for its uid: bob's pending secret is never
    /// shown, its guesses count against its own account, not bob's.
    #[test]
    fn a_relayed_non_root_caller_is_only_its_own_account_whatever_it_claims() {
        with_runtime(|| {
            let sh = shared(Db::start(SqliteStore::in_memory().unwrap()));
            let pending = crate::core::auth::new_enrollment(&sh.policy, None, "bob", None, T0 - 100);
            on_db(&sh, move |st| st.save_user(&pending));
            let mallory = Peer { account: Some("mallory".into()), ..remote(&sh, "web01", 65534) };
            let mut forged = begin("bob");
            if let ClientMsg::Begin { uid, .. } = &mut forged {
                *uid = Some(65534);
            }
            let seen = run_script(
                &sh,
                &mallory,
                forged,
                vec![
                    // mallory has no record: its own answer, not bob's enrollment.
                    Step::Sends("not enrolled", |m| {
                        matches!(m, ServerMsg::Outcome { result: OutcomeKind::NotEnrolled, .. })
                    }),
                ],
            );
            assert!(!seen.iter().any(|m| m.contains("otpauth") || m.contains("secret")), "{seen:?}");
            // An agent that names no account for a non-root caller: refused.
            let unnamed = remote(&sh, "web01", 65534);
            let mut asks = begin("bob");
            if let ClientMsg::Begin { uid, .. } = &mut asks {
                *uid = None;
            }
            run_script(
                &sh,
                &unnamed,
                asks,
                vec![
                    Step::Sends("resolve_user", |m| matches!(m, ServerMsg::ResolveUser)),
                    Step::Reads(ClientMsg::UserResolved { uid: Some(65534) }),
                    Step::Sends("only yourself", |m| {
                        matches!(m, ServerMsg::Outcome { result: OutcomeKind::Deny, message: Some(t) }
                            if t == crate::core::auth::ONLY_YOURSELF)
                    }),
                ],
            );
            let bob = on_db(&sh, |st| st.user("bob")).unwrap();
            assert_eq!((bob.failures, bob.activated_at), (0, None));
            // Another person whose name differs from bob's only in case is not bob.
            let other_bob = Peer { account: Some("BOB".into()), ..remote(&sh, "web01", 4242) };
            let mut asks = begin("bob");
            if let ClientMsg::Begin { uid, .. } = &mut asks {
                *uid = Some(4242);
            }
            let seen = run_script(
                &sh,
                &other_bob,
                asks,
                vec![Step::Sends("not enrolled", |m| {
                    matches!(m, ServerMsg::Outcome { result: OutcomeKind::NotEnrolled, .. })
                })],
            );
            assert!(!seen.iter().any(|m| m.contains("otpauth")), "{seen:?}");
            // Every row names the caller's own account, never bob.
            let users: Vec<String> =
                on_db(&sh, |st| st.audit(None, None, None, 100)).into_iter().map(|e| e.user).collect();
            assert!(!users.is_empty() && users.iter().all(|u| u != "bob"), "{users:?}");
            let rows = audit_rows(&sh);
            assert!(!rows.is_empty() && rows.iter().all(|(_, _, why)| why.contains("caller uid ")), "{rows:?}");
            assert!(rows.iter().any(|(_, _, why)| why.contains("caller uid 65534 on web01")), "{rows:?}");
        });
    }

    /// A login cancelled at the prompt is audited with the account's own
    /// method (it was always "totp", also for email and HOTP users).
    #[test]
    fn a_cancelled_login_is_audited_with_the_users_own_method() {
        with_runtime(|| {
            let mut parts = Parts::for_tests(Db::start(SqliteStore::in_memory().unwrap()), T0);
            Arc::get_mut(&mut parts.policy).unwrap().email.enabled = true;
            let sh = Core::new(parts);
            for (user, method) in [("erin", Method::Email), ("hank", Method::Hotp), ("tess", Method::Totp)] {
                let mut rec = crate::core::auth::new_enrollment(&sh.policy, None, user, Some(1000), T0 - 100);
                rec.method = method;
                rec.activated_at = Some(T0 - 50);
                rec.email = Some(format!("{user}@example.org"));
                rec.hotp_counter = (method == Method::Hotp).then_some(0);
                rec.digits = (method == Method::Hotp).then_some(6);
                on_db(&sh, move |st| st.save_user(&rec));
                let root = remote(&sh, "web01", 0);
                run_script(
                    &sh,
                    &root,
                    begin(user),
                    vec![
                        Step::Sends("a passcode prompt", is_prompt),
                        Step::Reads(ClientMsg::Cancel),
                        Step::Sends("deny", |m| matches!(m, ServerMsg::Outcome { result: OutcomeKind::Deny, .. })),
                    ],
                );
            }
            let rows = on_db(&sh, |st| st.audit(None, None, None, 100));
            let cancelled: Vec<(String, String)> = rows
                .into_iter()
                .filter(|e| e.reason.starts_with("conversation cancelled"))
                .map(|e| (e.user, e.method))
                .collect();
            assert_eq!(cancelled.len(), 3, "{cancelled:?}");
            for (user, method) in [("erin", "email"), ("hank", "hotp"), ("tess", "totp")] {
                assert!(cancelled.contains(&(user.to_string(), method.to_string())), "{user}: {cancelled:?}");
            }
        });
    }

    #[test]
    fn pending_enrollments_stay_off_agent_hosts_when_the_server_says_so() {
        with_runtime(|| {
            let mut parts = Parts::for_tests(Db::start(SqliteStore::in_memory().unwrap()), T0);
            parts.enroll_on_agents = false;
            let sh = Core::new(parts);
            let rec = crate::core::auth::new_enrollment(&sh.policy, None, "carol", Some(1000), T0 - 100);
            on_db(&sh, move |st| st.save_user(&rec));
            let seen = run_script(
                &sh,
                &remote(&sh, "web01", 0),
                begin("carol"),
                vec![Step::Sends(
                    "a refusal without the secret",
                    |m| matches!(m, ServerMsg::Outcome { result: OutcomeKind::Deny, message: Some(t) } if t.contains("not offered on this host")),
                )],
            );
            assert!(!seen.iter().any(|m| m.contains("otpauth")), "{seen:?}");
            // The server's own PAM socket still enrolls.
            let local = Peer::local(&sh, 0, None);
            run_script(
                &sh,
                &local,
                begin("carol"),
                vec![
                    Step::Sends(
                        "the QR text",
                        |m| matches!(m, ServerMsg::Info { text } if text.contains("otpauth://")),
                    ),
                    Step::Sends("a passcode prompt", is_prompt),
                    Step::Closed,
                    Step::Sends("deny", |m| matches!(m, ServerMsg::Outcome { result: OutcomeKind::Deny, .. })),
                ],
            );
        });
    }

    #[test]
    fn one_host_cannot_start_more_conversations_than_its_rate_root_included() {
        with_runtime(|| {
            let mut parts = Parts::for_tests(Db::start(SqliteStore::in_memory().unwrap()), T0);
            let caps = crate::core::limits::Caps { per_caller: 8, per_target: 16, unprivileged: 100 };
            parts.callers = crate::core::limits::Callers::new("local", 30, caps, 3);
            let sh = Core::new(parts);
            enrolled(&sh);
            let not_enrolled = |m: &ServerMsg| matches!(m, ServerMsg::Outcome { result: OutcomeKind::NotEnrolled, .. });
            for _ in 0..3 {
                run_script(
                    &sh,
                    &remote(&sh, "web01", 0),
                    begin("nobody1"),
                    vec![Step::Sends("not enrolled", not_enrolled)],
                );
            }
            run_script(
                &sh,
                &remote(&sh, "web01", 0),
                begin("nobody1"),
                vec![Step::Sends(
                    "busy",
                    |m| matches!(m, ServerMsg::Outcome { result: OutcomeKind::Deny, message: Some(t) } if t.contains("busy")),
                )],
            );
            // Another host has its own budget.
            run_script(
                &sh,
                &remote(&sh, "web02", 0),
                begin("nobody1"),
                vec![Step::Sends("not enrolled", not_enrolled)],
            );
        });
    }

    #[test]
    fn a_remote_caller_other_than_root_may_only_authenticate_itself() {
        with_runtime(|| {
            let sh = shared(Db::start(SqliteStore::in_memory().unwrap()));
            enrolled(&sh);
            // uid 1001 on web01 names alice (uid 1000 there): refused
            // before the store is read.
            let peer = remote(&sh, "web01", 1001);
            run_script(
                &sh,
                &peer,
                begin("alice"),
                vec![Step::Sends(
                    "the only-yourself refusal",
                    |m| matches!(m, ServerMsg::Outcome { result: OutcomeKind::Deny, message: Some(t) } if t == auth::ONLY_YOURSELF),
                )],
            );
        });
    }

    #[test]
    fn a_peer_that_goes_away_mid_prompt_is_audited_and_nothing_is_accepted() {
        with_runtime(|| {
            let sh = shared(Db::start(SqliteStore::in_memory().unwrap()));
            enrolled(&sh);
            let peer = remote(&sh, "web01", 0);
            run_script(
                &sh,
                &peer,
                begin("alice"),
                vec![
                    Step::Sends("a passcode prompt", is_prompt),
                    Step::Closed,
                    Step::Sends("deny", |m| matches!(m, ServerMsg::Outcome { result: OutcomeKind::Deny, .. })),
                ],
            );
            let rows = audit_rows(&sh);
            assert!(
                rows.iter().any(|(m, r, why)| m == "web01" && r == "deny" && why.starts_with("no answer")),
                "{rows:?}"
            );
            assert!(!rows.iter().any(|(_, r, _)| r == "accept"));
        });
    }

    #[test]
    fn session_messages_of_one_host_close_only_that_hosts_sessions() {
        with_runtime(|| {
            let sh = shared(Db::start(SqliteStore::in_memory().unwrap()));
            enrolled(&sh);
            let opened = |host: &str| {
                let msg = ClientMsg::SessionOpened {
                    protocol: PROTOCOL_VERSION,
                    user: "alice".into(),
                    service: "sshd".into(),
                    rhost: None,
                    tty: None,
                    pid: 7,
                };
                run_script(&sh, &remote(&sh, host, 0), msg, vec![Step::Sends("ack", |m| matches!(m, ServerMsg::Ack))]);
            };
            opened("web01");
            opened("web02");
            let close = ClientMsg::SessionClosed {
                protocol: PROTOCOL_VERSION,
                user: "alice".into(),
                service: "sshd".into(),
                tty: None,
                pid: 7,
            };
            run_script(&sh, &remote(&sh, "web02", 0), close, vec![Step::Sends("ack", |m| matches!(m, ServerMsg::Ack))]);
            let sessions = on_db(&sh, |st| st.sessions(10));
            let open: Vec<(&str, bool)> =
                sessions.iter().map(|s| (s.machine.as_str(), s.closed_at.is_none())).collect();
            assert_eq!(open.len(), 2);
            assert!(open.contains(&("web01", true)) && open.contains(&("web02", false)), "{open:?}");
        });
    }
}
