//! The web socket: one [`WebRequest`], one [`WebResponse`]. Only root and
//! the `[web] group` (otpweb) may connect, and even they act only through a
//! flow or a console session issued here: a login's password checked
//! through PAM, then its second factor through the terminal's own
//! conversation. Admin requests go to the same handlers as otpctl's
//! ([`crate::admin::ops::dispatch`]), for a session whose user is in the
//! admin group at that moment; self-service requests only ever touch the
//! session's own account.
use crate::admin::ops::shared::By;
use crate::admin::ops::{dispatch, own};
use crate::core::context::{valid_user_name, LoginContext};
use crate::core::limits::RateLimiter;
use crate::core::service::Core;
use crate::store::model::{AuditMethod, AuditResult};
use crate::sys::conn::{Conn, Listener};
use crate::web::flows::{Flow, Flows, Purpose, Turn, SERVICE};
use crate::web::sessions::{same_token, Sessions};
use common::config::WebConfig;
use common::proto::{AdminRequest, AdminResponse, OutcomeKind};
use common::web::{FlowLine, OwnRequest, WebErrorKind, WebRequest, WebResponse};
use std::sync::Arc;

/// The largest request otpweb may send (an admin import is one request).
const MAX_REQUEST: usize = 4 * 1024 * 1024;

pub struct WebDoor {
    core: Arc<Core>,
    sessions: Sessions,
    flows: Flows,
    /// Password checks per browser address (an IPv6 /64 counts as one)
    /// and per name typed.
    by_addr: RateLimiter<String>,
    by_user: RateLimiter<String>,
    /// Flows a session's user may start (re-enrollments) per minute, and
    /// refused admin requests audited per user per minute.
    flows_by_user: RateLimiter<String>,
    refusals_by_user: RateLimiter<String>,
    /// PAM checks running at once (each may sleep on a failure delay).
    pam_slots: tokio::sync::Semaphore,
    pam_service: String,
    self_service_email: bool,
    /// The group otpweb runs in: it may connect.
    group: Option<u32>,
}

fn error(kind: WebErrorKind, message: &str) -> WebResponse {
    WebResponse::Error { kind, message: message.into() }
}

fn unauthenticated() -> WebResponse {
    error(WebErrorKind::Unauthenticated, "Your session has ended; log in again.")
}

/// Self-service changes that hand out a way in (new recovery codes, where
/// emailed codes go) need a login at most this old: a stolen session
/// cookie alone, hours later, cannot mint a second factor.
const RECENT_LOGIN_SECS: i64 = 10 * 60;

/// What a wrong name and a wrong password are both told.
const BAD_LOGIN: &str = "Wrong user name or password.";

/// Admin requests that make a way in for someone (a key, codes, a password,
/// a host's credentials): they need a recent login, like self-service's.
fn mints_credentials(r: &AdminRequest) -> bool {
    matches!(
        r,
        AdminRequest::UserEnable { .. }
            | AdminRequest::UserEnableMany { .. }
            | AdminRequest::UserReset { .. }
            | AdminRequest::UserRecoveryCodes { .. }
            | AdminRequest::UserPasswd { .. }
            | AdminRequest::ImportOath { .. }
            | AdminRequest::ImportTotp { .. }
            | AdminRequest::HostAdd { .. }
            // A new CA, or revoking every host left on the old one.
            | AdminRequest::CaRotate
            | AdminRequest::CaRetire { .. }
    )
}

/// What per-address limits count: an IPv4 address, or an IPv6 /64 (one
/// customer's network hands out a /64's worth of addresses).
fn network_of(addr: &str) -> String {
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        _ => addr.to_string(),
    }
}

/// Aborts its task when dropped (the door's helpers end with the door).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Admin requests that only read: the ones that need no CSRF token.
fn reads_only(r: &AdminRequest) -> bool {
    matches!(
        r,
        AdminRequest::UserShow { .. }
            | AdminRequest::UserList { .. }
            | AdminRequest::Audit { .. }
            | AdminRequest::Status
            | AdminRequest::RequestList { .. }
            | AdminRequest::Sessions { .. }
            | AdminRequest::HostList
            | AdminRequest::CaStatus
    )
}

impl WebDoor {
    pub fn new(core: Arc<Core>, web: &WebConfig) -> WebDoor {
        let group = nix::unistd::Group::from_name(&web.group).ok().flatten().map(|g| g.gid.as_raw());
        WebDoor {
            sessions: Sessions::new(web.idle_timeout.as_secs() as i64, web.session_lifetime.as_secs() as i64),
            flows: Flows::new(core.prompt_timeout),
            by_addr: RateLimiter::new(web.logins_per_minute),
            by_user: RateLimiter::new(web.logins_per_minute),
            flows_by_user: RateLimiter::new(10),
            refusals_by_user: RateLimiter::new(10),
            pam_slots: tokio::sync::Semaphore::new(4),
            pam_service: web.pam_service.clone(),
            self_service_email: web.self_service_email && core.policy.email.enabled,
            group,
            core,
        }
    }

    /// Serves the socket until the task is aborted.
    pub async fn serve(self: Arc<Self>, listener: Listener) {
        let revoker = tokio::spawn(self.clone().end_sessions_on_changes());
        let _stop_revoker = AbortOnDrop(revoker);
        let slots = Arc::new(tokio::sync::Semaphore::new(64));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let Ok(stream) = listener.accept().await else { continue };
            let door = self.clone();
            tokio::spawn(async move {
                door.connection(stream).await;
                drop(permit);
            });
        }
    }

    /// A user whose second factor was reset or disabled, or who was locked
    /// out, keeps no console session (whichever door made the change). If
    /// events were missed, every session ends: better a login again than a
    /// session that should have ended.
    async fn end_sessions_on_changes(self: Arc<Self>) {
        use crate::core::events::Event;
        use tokio::sync::broadcast::error::RecvError;
        let mut events = self.core.events.subscribe();
        loop {
            match events.recv().await {
                Ok(Event::SecondFactorChanged { user } | Event::UserLockedOut { user, .. }) => {
                    self.sessions.end_all_of(&user)
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => self.sessions.end_all(),
                Err(RecvError::Closed) => return,
            }
        }
    }

    async fn connection(&self, mut s: Conn) {
        let io = self.core.io_timeout;
        let Ok((uid, gid, pid)) = s.peer() else { return };
        if !crate::core::access::authorized(uid, gid, pid, self.group) {
            self.core.warn_throttled(&format!("web socket connection from uid {uid} refused: not root or otpweb"));
            let _ = s.write_msg(&error(WebErrorKind::Forbidden, "permission denied"), io).await;
            return;
        }
        let resp = match s.read_msg_limited::<WebRequest>(io, io, MAX_REQUEST).await {
            Ok(req) => self.handle(req).await,
            Err(e) => error(WebErrorKind::InvalidInput, &format!("bad request: {e}")),
        };
        let _ = s.write_admin_response(&resp, io.max(std::time::Duration::from_secs(30))).await;
    }

    pub async fn handle(&self, req: WebRequest) -> WebResponse {
        // The browser's address as otpweb saw it: an IP address and nothing
        // else reaches the audit, syslog or PAM_RHOST.
        let Ok(ip) = req.client().addr.parse::<std::net::IpAddr>() else {
            return error(WebErrorKind::InvalidInput, "client.addr is not an IP address");
        };
        let addr = ip.to_string();
        match req {
            WebRequest::LoginStart { user, password, .. } => self.login_start(user, password, addr).await,
            WebRequest::Answer { flow, text, .. } => self.answer(&flow, text).await,
            WebRequest::Cancel { flow, .. } => {
                if let Some(f) = self.flows.take(&flow) {
                    f.cancel().await;
                }
                WebResponse::Done { message: "Login cancelled.".into() }
            }
            WebRequest::Whoami { session, .. } => match self.live(&session, true) {
                Some((user, _)) => self.me(&session, &user),
                None => unauthenticated(),
            },
            WebRequest::Logout { session, .. } => {
                if let Some(user) = self.sessions.end(&session) {
                    self.audit_web(&user, &addr, AuditResult::Action("logout".into()), "console session ended").await;
                }
                WebResponse::Done { message: "You are logged out.".into() }
            }
            WebRequest::Admin { session, csrf, request, passive, .. } => {
                self.admin(&session, csrf, request, addr, passive).await
            }
            WebRequest::Own { session, csrf, request, .. } => self.own(&session, csrf, request, addr).await,
        }
    }

    /// The session's user and CSRF token; `active`: used by its person
    /// now (the idle timer restarts).
    fn live(&self, token: &str, active: bool) -> Option<(String, String)> {
        self.sessions.touch(token, self.core.clock.now(), active)
    }

    fn is_admin(&self, user: &str) -> bool {
        crate::core::access::user_is_admin(user, self.core.admin_gid)
    }

    fn me(&self, token: &str, user: &str) -> WebResponse {
        match self.sessions.view_of(token, self.is_admin(user)) {
            Some(session) => WebResponse::Me { session },
            None => unauthenticated(),
        }
    }

    /// A console audit row: service `web`, the browser's address.
    async fn audit_web(&self, user: &str, addr: &str, result: AuditResult, why: &str) {
        let ctx = LoginContext {
            user: common::text::sanitize_field(user, 80),
            service: SERVICE.into(),
            rhost: Some(addr.to_string()),
            machine: self.core.policy.machine.clone(),
            ..Default::default()
        };
        let (policy, now, why) = (self.core.policy.clone(), self.core.clock.now(), why.to_string());
        let written = self
            .core
            .db
            .run(move |st| crate::core::audit::audit_method(st, &policy, &ctx, now, AuditMethod::Admin, result, &why))
            .await;
        if let Err(e) = written {
            tracing::error!("cannot audit a console event: {e}");
        }
    }

    /// The password step. Rate-limited per address and per name before PAM
    /// is asked; one answer for a wrong name and a wrong password.
    async fn login_start(&self, user: String, password: String, addr: String) -> WebResponse {
        if !self.by_addr.allow(network_of(&addr)) {
            return error(WebErrorKind::RateLimited, "Too many login attempts from your address; wait a minute.");
        }
        if !valid_user_name(&user) || password.is_empty() || password.len() > 1024 {
            return error(WebErrorKind::BadLogin, BAD_LOGIN);
        }
        if !self.by_user.allow(user.clone()) {
            // Counted in the log, not a row each: refusals cost no storage.
            self.core.warn_throttled("console logins refused: too many attempts for one name");
            return error(WebErrorKind::RateLimited, "Too many login attempts for this account; wait a minute.");
        }
        // A queue of password checks holds no one else's request for long.
        let wait = std::time::Duration::from_secs(2);
        let Ok(Ok(_slot)) = tokio::time::timeout(wait, self.pam_slots.acquire()).await else {
            return error(WebErrorKind::RateLimited, "The console is busy checking passwords; try again in a moment.");
        };
        let (service, name, rhost) = (self.pam_service.clone(), user.clone(), addr.clone());
        let ok = tokio::task::spawn_blocking(move || {
            crate::sys::pamauth::check_password(&service, &name, &password, &rhost)
        })
        .await
        .unwrap_or(false);
        if !ok {
            self.audit_web(&user, &addr, AuditResult::Deny, "console login: wrong user name or password").await;
            return error(WebErrorKind::BadLogin, BAD_LOGIN);
        }
        let mut flow = Flow::start(self.core.clone(), &user, &addr, Purpose::Login);
        let turn = flow.next().await;
        self.after(flow, turn).await
    }

    async fn answer(&self, id: &str, text: String) -> WebResponse {
        let Some(mut flow) = self.flows.take(id) else {
            return error(
                WebErrorKind::Unauthenticated,
                "This login has expired or was already answered; start again.",
            );
        };
        if text.len() > common::proto::MAX_ANSWER_LEN {
            flow.cancel().await;
            return error(WebErrorKind::InvalidInput, "That answer is too long.");
        }
        let turn = flow.answer(text).await;
        self.after(flow, turn).await
    }

    /// What a round ended in: the next prompt (the flow kept), or the end
    /// of the flow and what it led to.
    async fn after(&self, flow: Flow, turn: Turn) -> WebResponse {
        match turn {
            Turn::Prompt { lines, prompt, echo, enroll_uri } => {
                let id = self.flows.keep(flow);
                let offers_email = prompt.contains(crate::login::conversation::PROMPT_OFFERS_EMAIL);
                let offers_emergency = prompt.contains(crate::login::conversation::PROMPT_OFFERS_EMERGENCY);
                WebResponse::Step { flow: id, lines, prompt, echo, offers_email, offers_emergency, enroll_uri }
            }
            Turn::Ended { lines, outcome: OutcomeKind::Accept, message } => self.accepted(flow, lines, message).await,
            Turn::Ended { lines, outcome: OutcomeKind::NotEnrolled, .. } => {
                let message = Some(
                    "Your account has no second factor set up, and the console needs one. \
                     Ask an administrator to enable it."
                        .into(),
                );
                WebResponse::Ended { lines, outcome: OutcomeKind::NotEnrolled, message }
            }
            Turn::Ended { lines, outcome, message } => WebResponse::Ended { lines, outcome, message },
        }
    }

    async fn accepted(&self, flow: Flow, mut lines: Vec<FlowLine>, message: Option<String>) -> WebResponse {
        lines.extend(message.map(|text| FlowLine { error: false, text }));
        match flow.purpose {
            Purpose::Login => {
                let admin = self.is_admin(&flow.user);
                let (token, session) = self.sessions.issue(&flow.user, admin, self.core.clock.now());
                WebResponse::Session { session, token, lines }
            }
            Purpose::Verify => {
                // The current authenticator (or a recovery code) answered:
                // now the new key, then its first code.
                let by = By::Web { user: flow.user.clone(), addr: flow.addr.clone() };
                match crate::admin::ops::users::reset(&self.core, &by, flow.user.clone()).await {
                    AdminResponse::Enrolled { .. } => {}
                    other => return own::refused(other),
                }
                let mut next = Flow::start(self.core.clone(), &flow.user, &flow.addr, Purpose::Activate);
                let turn = next.next().await;
                Box::pin(self.after(next, turn)).await
            }
            Purpose::Activate => {
                // Only a code of the new key activates it (a recovery or an
                // emailed code logs in but leaves the key pending).
                let user = flow.user.clone();
                match self.core.db.run(move |st| st.user(&user)).await {
                    Ok(Some(u)) if u.activated_at.is_some() => WebResponse::Reenrolled { lines },
                    Ok(_) => error(
                        WebErrorKind::InvalidInput,
                        "The new authenticator is not active yet: log in again and enter a code from it.",
                    ),
                    Err(e) => {
                        tracing::error!("reading {} after re-enrollment: {e}", flow.user);
                        error(WebErrorKind::Unavailable, "The database is unavailable; try again later.")
                    }
                }
            }
        }
    }

    async fn admin(
        &self,
        token: &str,
        csrf: Option<String>,
        request: AdminRequest,
        addr: String,
        passive: bool,
    ) -> WebResponse {
        // Only a read may be passive: a change is always its person's.
        let passive = passive && reads_only(&request);
        let now = self.core.clock.now();
        let Some((user, expected, login_at)) = self.sessions.touch_full(token, now, !passive) else {
            return unauthenticated();
        };
        if !self.is_admin(&user) {
            if self.refusals_by_user.allow(user.clone()) {
                let why = "console admin request refused: not in the admin group";
                self.audit_web(&user, &addr, AuditResult::Deny, why).await;
            }
            return error(WebErrorKind::Forbidden, "Only administrators can do this.");
        }
        if !reads_only(&request) && !csrf.is_some_and(|c| same_token(&c, &expected)) {
            return error(WebErrorKind::Csrf, "The form was stale or not from this console; nothing was changed.");
        }
        if matches!(request, AdminRequest::HostAdd { admin: true, .. }) {
            return error(
                WebErrorKind::Forbidden,
                "Remote admin credentials are issued with otpctl on a server, not from the console.",
            );
        }
        if mints_credentials(&request) && now - login_at > RECENT_LOGIN_SECS {
            return error(
                WebErrorKind::Forbidden,
                "For this, log in again (your login must be less than 10 minutes old); nothing was changed.",
            );
        }
        let by = By::Web { user, addr };
        let response = match dispatch::handle(request, &by, &self.core).await {
            // The new key is the user's to see, in their own login: a
            // console session never carries a secret.
            AdminResponse::Enrolled { user, .. } => AdminResponse::Enrolled { user, otpauth_uri: None },
            other => other,
        };
        WebResponse::Admin { response }
    }

    async fn own(&self, token: &str, csrf: Option<String>, request: OwnRequest, addr: String) -> WebResponse {
        let now = self.core.clock.now();
        let Some((user, expected, login_at)) = self.sessions.touch_full(token, now, true) else {
            return unauthenticated();
        };
        if !matches!(request, OwnRequest::Overview) && !csrf.is_some_and(|c| same_token(&c, &expected)) {
            return error(WebErrorKind::Csrf, "The form was stale or not from this console; nothing was changed.");
        }
        let hands_out_a_way_in = matches!(request, OwnRequest::RecoveryCodes | OwnRequest::SetEmail { .. });
        if hands_out_a_way_in && now - login_at > RECENT_LOGIN_SECS {
            return error(
                WebErrorKind::Forbidden,
                "For this, log in again (your login must be less than 10 minutes old); nothing was changed.",
            );
        }
        let by = By::Web { user: user.clone(), addr: addr.clone() };
        match request {
            OwnRequest::Overview => own::overview(&self.core, user, self.self_service_email).await,
            OwnRequest::RecoveryCodes => own::recovery_codes(&self.core, &by, user).await,
            OwnRequest::SetEmail { address } => {
                own::set_email(&self.core, &by, user, address, self.self_service_email).await
            }
            OwnRequest::Reenroll => self.reenroll(user, addr).await,
        }
    }

    /// A new phone: only for a TOTP account, and only after a code of the
    /// current one (the flow's first step).
    async fn reenroll(&self, user: String, addr: String) -> WebResponse {
        if !self.flows_by_user.allow(user.clone()) {
            return error(WebErrorKind::RateLimited, "Too many re-enrollments started; wait a minute.");
        }
        let name = user.clone();
        let record = self.core.db.run(move |st| st.user(&name)).await;
        match record {
            // A pending enrollment is finished at a login, not here: its key
            // is shown only to whoever logs in with the password.
            Ok(Some(u)) if u.enabled && u.method == common::proto::Method::Totp && u.activated_at.is_some() => {}
            Ok(Some(u)) if u.enabled && u.method == common::proto::Method::Totp => {
                return error(
                    WebErrorKind::InvalidInput,
                    "Your authenticator is not set up yet: log out and log in again to set it up.",
                )
            }
            Ok(_) => return error(WebErrorKind::InvalidInput, "Your account does not use an authenticator app."),
            Err(e) => {
                tracing::error!("reading {user} for re-enrollment: {e}");
                return error(WebErrorKind::Unavailable, "The database is unavailable; try again later.");
            }
        }
        let mut flow = Flow::start(self.core.clone(), &user, &addr, Purpose::Verify);
        let turn = flow.next().await;
        self.after(flow, turn).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::ops::shared::fixture::*;
    use common::web::Client;

    const ADDR: &str = "192.0.2.7";

    fn door() -> WebDoor {
        WebDoor::new(Arc::new(core()), &WebConfig::default())
    }

    /// `name`, activated; its secret.
    async fn enrolled(d: &WebDoor, name: &str) -> Vec<u8> {
        let rec = enrolled_user(&d.core, name, None).await;
        d.core.policy.crypto.open(name, rec.secret.as_deref().unwrap()).unwrap()
    }

    fn code(d: &WebDoor, secret: &[u8], steps_ahead: i64) -> String {
        let t = &d.core.policy.totp;
        t.code_at_step(secret, t.step_of(T0) + steps_ahead)
    }

    fn client() -> Client {
        Client { addr: ADDR.into() }
    }

    /// A login past its password (checked by PAM, which these tests do
    /// not have): the flow at its first prompt.
    async fn login_flow(d: &WebDoor, user: &str) -> String {
        let mut flow = Flow::start(d.core.clone(), user, ADDR, Purpose::Login);
        let turn = flow.next().await;
        match d.after(flow, turn).await {
            WebResponse::Step { flow, prompt, .. } => {
                assert!(prompt.starts_with("Passcode"), "{prompt}");
                flow
            }
            other => panic!("expected a step, got {other:?}"),
        }
    }

    async fn answer(d: &WebDoor, flow: &str, text: &str) -> WebResponse {
        d.handle(WebRequest::Answer { client: client(), flow: flow.into(), text: text.into() }).await
    }

    async fn session(d: &WebDoor, user: &str, secret: &[u8], ahead: i64) -> (String, String) {
        let flow = login_flow(d, user).await;
        match answer(d, &flow, &code(d, secret, ahead)).await {
            WebResponse::Session { token, session, .. } => (token, session.csrf),
            other => panic!("expected a session, got {other:?}"),
        }
    }

    fn kind(r: &WebResponse) -> Option<WebErrorKind> {
        match r {
            WebResponse::Error { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_wrong_code_counts_like_a_terminal_one_and_a_right_one_opens_a_session() {
        let d = door();
        let secret = enrolled(&d, "ut-ada").await;
        let flow = login_flow(&d, "ut-ada").await;
        let wrong = answer(&d, &flow, "000000").await;
        assert!(matches!(wrong, WebResponse::Ended { outcome: OutcomeKind::Deny, .. }), "{wrong:?}");
        assert_eq!(kind(&answer(&d, &flow, &code(&d, &secret, 0)).await), Some(WebErrorKind::Unauthenticated));
        let rows = audit_rows(&d.core, "ut-ada").await;
        assert_eq!((rows[0].service.as_str(), rows[0].result.as_str()), ("web", "deny"));
        assert_eq!(rows[0].rhost.as_deref(), Some(ADDR));
        let failures = on_db(&d.core, |st| st.user("ut-ada")).await.unwrap().failures;
        assert_eq!(failures, 1, "the console's wrong code counts toward the same lockout");

        let (token, _) = session(&d, "ut-ada", &secret, 0).await;
        let me = d.handle(WebRequest::Whoami { client: client(), session: token.clone() }).await;
        assert!(matches!(me, WebResponse::Me { ref session } if session.user == "ut-ada" && !session.admin), "{me:?}");
        assert_eq!(audit_rows(&d.core, "ut-ada").await[0].result, "accept");
        d.handle(WebRequest::Logout { client: client(), session: token.clone() }).await;
        let gone = d.handle(WebRequest::Whoami { client: client(), session: token }).await;
        assert_eq!(kind(&gone), Some(WebErrorKind::Unauthenticated));
    }

    #[tokio::test]
    async fn a_user_cannot_act_as_admin_and_self_service_needs_the_csrf_token() {
        let d = door();
        let secret = enrolled(&d, "ut-ada").await;
        enrolled(&d, "ut-bob").await;
        let (token, csrf) = session(&d, "ut-ada", &secret, 0).await;
        let disable = |csrf: Option<String>| WebRequest::Admin {
            client: client(),
            session: token.clone(),
            csrf,
            request: AdminRequest::UserDisable { user: "ut-bob".into() },
            passive: false,
        };
        assert_eq!(kind(&d.handle(disable(Some(csrf.clone()))).await), Some(WebErrorKind::Forbidden));
        assert!(on_db(&d.core, |st| st.user("ut-bob")).await.unwrap().enabled);
        let refused = &audit_rows(&d.core, "ut-ada").await[0];
        assert_eq!((refused.result.as_str(), refused.service.as_str()), ("deny", "web"));

        let own =
            |csrf: Option<String>, request| WebRequest::Own { client: client(), session: token.clone(), csrf, request };
        let no_token = d.handle(own(None, OwnRequest::RecoveryCodes)).await;
        assert_eq!(kind(&no_token), Some(WebErrorKind::Csrf));
        let wrong = d.handle(own(Some("x".repeat(43)), OwnRequest::RecoveryCodes)).await;
        assert_eq!(kind(&wrong), Some(WebErrorKind::Csrf));
        assert_eq!(on_db(&d.core, |st| st.recovery_codes_left("ut-ada")).await, 0, "nothing was changed");
        let codes = d.handle(own(Some(csrf.clone()), OwnRequest::RecoveryCodes)).await;
        assert!(matches!(codes, WebResponse::RecoveryCodes { ref codes } if codes.len() == 10), "{codes:?}");
        let row = &audit_rows(&d.core, "ut-ada").await[0];
        assert_eq!(row.reason, format!("by ut-ada on the web console from {ADDR}"));
        match d.handle(own(None, OwnRequest::Overview)).await {
            WebResponse::Overview { overview } => {
                assert_eq!(overview.user.map(|u| u.recovery_codes_left), Some(Some(10)));
                assert!(overview.recent.iter().all(|e| e.user == "ut-ada"));
                assert!(!overview.may_set_email);
            }
            other => panic!("expected an overview, got {other:?}"),
        }
        let email = d.handle(own(Some(csrf), OwnRequest::SetEmail { address: Some("a@example.org".into()) })).await;
        assert_eq!(kind(&email), Some(WebErrorKind::Forbidden), "policy does not allow it by default");
    }

    #[tokio::test]
    async fn an_admin_session_acts_through_the_admin_handlers_audited_as_web() {
        let d = door();
        let secret = enrolled(&d, "root").await;
        enrolled(&d, "ut-bob").await;
        let (token, csrf) = session(&d, "root", &secret, 0).await;
        let ask = |csrf: Option<String>, request| WebRequest::Admin {
            client: client(),
            session: token.clone(),
            csrf,
            request,
            passive: false,
        };
        let list = d.handle(ask(None, AdminRequest::UserList { search: None, after: None, limit: Some(10) })).await;
        assert!(
            matches!(&list, WebResponse::Admin { response: AdminResponse::Users { users } } if users.len() == 2),
            "reads need no CSRF token: {list:?}"
        );
        let disable = || AdminRequest::UserDisable { user: "ut-bob".into() };
        assert_eq!(kind(&d.handle(ask(None, disable())).await), Some(WebErrorKind::Csrf));
        assert!(on_db(&d.core, |st| st.user("ut-bob")).await.unwrap().enabled);
        let done = d.handle(ask(Some(csrf), disable())).await;
        assert!(matches!(done, WebResponse::Admin { response: AdminResponse::User { .. } }), "{done:?}");
        assert!(!on_db(&d.core, |st| st.user("ut-bob")).await.unwrap().enabled);
        let row = &audit_rows(&d.core, "ut-bob").await[0];
        assert_eq!((row.service.as_str(), row.rhost.as_deref()), ("web", Some(ADDR)));
        assert_eq!(row.reason, format!("by root on the web console from {ADDR}"));
    }

    #[tokio::test]
    async fn reenrollment_asks_the_current_code_then_activates_the_new_key() {
        let d = door();
        let old = enrolled(&d, "ut-ada").await;
        let (token, csrf) = session(&d, "ut-ada", &old, 0).await;
        let start =
            WebRequest::Own { client: client(), session: token, csrf: Some(csrf), request: OwnRequest::Reenroll };
        let WebResponse::Step { flow, enroll_uri: None, .. } = d.handle(start).await else { panic!("expected a step") };
        let before = on_db(&d.core, |st| st.user("ut-ada")).await.unwrap().secret;
        let step = answer(&d, &flow, &code(&d, &old, 1)).await;
        let WebResponse::Step { flow, enroll_uri: Some(uri), .. } = step else {
            panic!("expected the new key: {step:?}")
        };
        let rec = on_db(&d.core, |st| st.user("ut-ada")).await.unwrap();
        assert!(rec.activated_at.is_none() && rec.secret != before, "the new key waits for its first code");
        let b32 = uri.split("secret=").nth(1).unwrap().split('&').next().unwrap();
        let new = data_encoding::BASE32_NOPAD.decode(b32.as_bytes()).unwrap();
        let done = answer(&d, &flow, &code(&d, &new, 0)).await;
        assert!(matches!(done, WebResponse::Reenrolled { .. }), "{done:?}");
        assert!(on_db(&d.core, |st| st.user("ut-ada")).await.unwrap().activated_at.is_some());
    }

    #[tokio::test]
    async fn a_wrong_current_code_changes_nothing() {
        let d = door();
        let old = enrolled(&d, "ut-ada").await;
        let (token, csrf) = session(&d, "ut-ada", &old, 0).await;
        let start =
            WebRequest::Own { client: client(), session: token, csrf: Some(csrf), request: OwnRequest::Reenroll };
        let WebResponse::Step { flow, .. } = d.handle(start).await else { panic!("expected a step") };
        let before = on_db(&d.core, |st| st.user("ut-ada")).await.unwrap();
        let refused = answer(&d, &flow, "000000").await;
        assert!(matches!(refused, WebResponse::Ended { outcome: OutcomeKind::Deny, .. }), "{refused:?}");
        let after = on_db(&d.core, |st| st.user("ut-ada")).await.unwrap();
        assert_eq!((after.secret, after.activated_at), (before.secret, before.activated_at));
    }

    #[tokio::test]
    async fn bad_names_and_floods_are_refused_before_pam() {
        let d = door();
        let start = |user: &str, addr: &str| WebRequest::LoginStart {
            client: Client { addr: addr.into() },
            user: user.into(),
            password: "pw".into(),
        };
        assert_eq!(kind(&d.handle(start("<img src=x>", "192.0.2.1")).await), Some(WebErrorKind::BadLogin));
        // The default allows 10 a minute from one address; the eleventh is refused.
        for _ in 0..9 {
            d.handle(start("bad name", "192.0.2.2")).await;
        }
        assert_eq!(kind(&d.handle(start("bad name", "192.0.2.2")).await), Some(WebErrorKind::BadLogin));
        assert_eq!(kind(&d.handle(start("bad name", "192.0.2.2")).await), Some(WebErrorKind::RateLimited));
    }

    /// New recovery codes and a new address need a login at most 10
    /// minutes old: a session cookie stolen later cannot mint a second factor.
    #[tokio::test]
    async fn new_recovery_codes_need_a_recent_login() {
        let clock = Arc::new(crate::sys::clock::FakeClock::new(T0));
        let mut p = parts();
        p.clock = Box::new(clock.clone());
        let d = WebDoor::new(Arc::new(crate::core::service::Core::new(p)), &WebConfig::default());
        let secret = enrolled(&d, "ut-ada").await;
        let (token, csrf) = session(&d, "ut-ada", &secret, 0).await;
        let codes = || WebRequest::Own {
            client: client(),
            session: token.clone(),
            csrf: Some(csrf.clone()),
            request: OwnRequest::RecoveryCodes,
        };
        // Used every 5 minutes, the session lives; its login grows old.
        for _ in 0..3 {
            clock.advance(300);
            let me = d.handle(WebRequest::Whoami { client: client(), session: token.clone() }).await;
            assert!(matches!(me, WebResponse::Me { .. }), "{me:?}");
        }
        assert_eq!(kind(&d.handle(codes()).await), Some(WebErrorKind::Forbidden));
        assert_eq!(on_db(&d.core, |st| st.recovery_codes_left("ut-ada")).await, 0, "nothing was changed");
        let (fresh, fresh_csrf) = session(&d, "ut-ada", &secret, 30).await;
        let again = WebRequest::Own {
            client: client(),
            session: fresh,
            csrf: Some(fresh_csrf),
            request: OwnRequest::RecoveryCodes,
        };
        assert!(matches!(d.handle(again).await, WebResponse::RecoveryCodes { .. }));
    }

    /// A reset or a disable at any door, or a lockout, ends the user's
    /// console sessions (a thief's cookie dies with the old second factor).
    #[tokio::test]
    async fn sessions_end_when_the_second_factor_changes_at_any_door() {
        let d = Arc::new(door());
        let secret = enrolled(&d, "ut-ada").await;
        let watcher = tokio::spawn(d.clone().end_sessions_on_changes());
        tokio::task::yield_now().await;
        let (token, _) = session(&d, "ut-ada", &secret, 0).await;
        let whoami = || WebRequest::Whoami { client: client(), session: token.clone() };
        assert!(matches!(d.handle(whoami()).await, WebResponse::Me { .. }));
        // Root at the admin socket resets ada's key.
        crate::admin::ops::users::reset(&d.core, &ROOT, "ut-ada".into()).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while matches!(d.handle(whoami()).await, WebResponse::Me { .. }) {
            assert!(std::time::Instant::now() < deadline, "the session outlived the reset");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        watcher.abort();
    }

    /// A console admin sees no secret, issues no remote admin credentials,
    /// and mints none without a recent login.
    #[tokio::test]
    async fn a_console_admin_gets_no_secret_and_mints_nothing_with_an_old_login() {
        let clock = Arc::new(crate::sys::clock::FakeClock::new(T0));
        let mut p = parts();
        p.clock = Box::new(clock.clone());
        p.fleet_ca = Some(Arc::new(crate::fleet::authority::Authority::new(crate::fleet::authority::CaSet::single(
            crate::fleet::pki::Ca::generate().unwrap(),
        ))));
        let d = WebDoor::new(Arc::new(crate::core::service::Core::new(p)), &WebConfig::default());
        let secret = enrolled(&d, "root").await;
        let (token, csrf) = session(&d, "root", &secret, 0).await;
        let ask = |request| WebRequest::Admin {
            client: client(),
            session: token.clone(),
            csrf: Some(csrf.clone()),
            request,
            passive: false,
        };
        let enable =
            || AdminRequest::UserEnable { user: "ut-bob".into(), method: common::proto::Method::Totp, email: None };
        match d.handle(ask(enable())).await {
            WebResponse::Admin { response: AdminResponse::Enrolled { otpauth_uri, .. } } => {
                assert_eq!(otpauth_uri, None)
            }
            other => panic!("expected Enrolled, got {other:?}"),
        }
        let remote_admin = AdminRequest::HostAdd { name: "adm1".into(), admin: true };
        assert_eq!(kind(&d.handle(ask(remote_admin)).await), Some(WebErrorKind::Forbidden));
        clock.advance(11 * 60);
        assert!(matches!(
            d.handle(WebRequest::Whoami { client: client(), session: token.clone() }).await,
            WebResponse::Me { .. }
        ));
        let codes = AdminRequest::UserRecoveryCodes { user: "ut-bob".into() };
        assert_eq!(kind(&d.handle(ask(codes)).await), Some(WebErrorKind::Forbidden));
        let reset = AdminRequest::UserReset { user: "ut-bob".into() };
        assert_eq!(kind(&d.handle(ask(reset)).await), Some(WebErrorKind::Forbidden));
        let unlock = AdminRequest::UserUnlock { user: "ut-bob".into() };
        assert!(matches!(d.handle(ask(unlock)).await, WebResponse::Admin { .. }), "an old login may still unlock");
    }

    /// A pending enrollment is finished at a login, not through re-enrollment.
    #[tokio::test]
    async fn a_pending_enrollment_cannot_be_reenrolled() {
        let d = door();
        let secret = enrolled(&d, "ut-ada").await;
        let (token, csrf) = session(&d, "ut-ada", &secret, 0).await;
        let mut rec = on_db(&d.core, |st| st.user("ut-ada")).await.unwrap();
        rec.activated_at = None;
        save(&d.core, rec).await;
        let start =
            WebRequest::Own { client: client(), session: token, csrf: Some(csrf), request: OwnRequest::Reenroll };
        assert_eq!(kind(&d.handle(start).await), Some(WebErrorKind::InvalidInput));
    }

    #[tokio::test]
    async fn the_client_address_must_be_an_ip_address() {
        let d = door();
        for addr in ["", "evil\nhost", "10.0.0.1; rm", &"1".repeat(5000)] {
            let req = WebRequest::LoginStart {
                client: Client { addr: addr.into() },
                user: "ut-ada".into(),
                password: "x".into(),
            };
            assert_eq!(kind(&d.handle(req).await), Some(WebErrorKind::InvalidInput), "{addr:?}");
        }
        assert_eq!(network_of("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(network_of("2001:db8:1:2:ffff::1"), "2001:db8:1:2::/64");
        assert_eq!(network_of("192.0.2.7"), "192.0.2.7");
    }
}
