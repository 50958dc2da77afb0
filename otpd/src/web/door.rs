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
    /// Password checks per browser address and per name typed.
    by_addr: RateLimiter<String>,
    by_user: RateLimiter<String>,
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
            pam_slots: tokio::sync::Semaphore::new(4),
            pam_service: web.pam_service.clone(),
            self_service_email: web.self_service_email && core.policy.email.enabled,
            group,
            core,
        }
    }

    /// Serves the socket until the task is aborted.
    pub async fn serve(self: Arc<Self>, listener: Listener) {
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
        let addr = req.client().addr.clone();
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
        if !self.by_addr.allow(addr.clone()) {
            return error(WebErrorKind::RateLimited, "Too many login attempts from your address; wait a minute.");
        }
        if !valid_user_name(&user) || password.is_empty() || password.len() > 1024 {
            return error(WebErrorKind::BadLogin, BAD_LOGIN);
        }
        if !self.by_user.allow(user.clone()) {
            self.audit_web(&user, &addr, AuditResult::Deny, "console login refused: too many attempts for this name")
                .await;
            return error(WebErrorKind::RateLimited, "Too many login attempts for this account; wait a minute.");
        }
        let Ok(_slot) = self.pam_slots.acquire().await else { return error(WebErrorKind::Unavailable, "busy") };
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
            Purpose::Activate => WebResponse::Reenrolled { lines },
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
        let Some((user, expected)) = self.live(token, !passive) else { return unauthenticated() };
        if !self.is_admin(&user) {
            let why = "console admin request refused: not in the admin group";
            self.audit_web(&user, &addr, AuditResult::Deny, why).await;
            return error(WebErrorKind::Forbidden, "Only administrators can do this.");
        }
        if !reads_only(&request) && !csrf.is_some_and(|c| same_token(&c, &expected)) {
            return error(WebErrorKind::Csrf, "The form was stale or not from this console; nothing was changed.");
        }
        let by = By::Web { user, addr };
        WebResponse::Admin { response: dispatch::handle(request, &by, &self.core).await }
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
        let name = user.clone();
        let record = self.core.db.run(move |st| st.user(&name)).await;
        match record {
            Ok(Some(u)) if u.enabled && u.method == common::proto::Method::Totp => {}
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
}
