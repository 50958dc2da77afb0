//! Between the web console (`otpweb`, unprivileged) and `otpd`: one request,
//! one response per connection on otpd's web socket, framed as
//! [`crate::codec`] frames like the admin protocol.
//!
//! otpweb holds no authority. Every request but a login's first names a
//! flow or a console session that otpd issued; otpd decides it on the
//! identity of the person behind that session (an admin is a member of
//! `[daemon] admin_group` at that moment), never on otpweb's uid. Session
//! tokens and CSRF tokens are made by otpd and only their hashes are kept.
use crate::proto::{AdminRequest, AdminResponse, AuditEntry, OutcomeKind, UserInfo};
use serde::{Deserialize, Serialize};

/// Where a request came from, as otpweb saw it: audited with every action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    /// The browser's IP address (the TCP peer of the HTTPS connection).
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WebRequest {
    /// A console login's first step: the account password, checked through
    /// PAM (service `[web] pam_service`). Right: the second factor's
    /// conversation starts ([`WebResponse::Step`]); wrong user or password:
    /// one answer for both ([`WebErrorKind::BadLogin`]).
    LoginStart { client: Client, user: String, password: String },
    /// The answer to a flow's prompt (a login, or a re-enrollment).
    Answer { client: Client, flow: String, text: String },
    /// Leaves a flow (the browser's "cancel"): audited as cancelled.
    Cancel { client: Client, flow: String },
    /// Who a live session is; counts as activity (the idle timer restarts).
    Whoami { client: Client, session: String },
    /// Ends the session in otpd.
    Logout { client: Client, session: String },
    /// An admin request for the session's user, who must be an admin. Every
    /// request that changes something carries the session's CSRF token.
    Admin {
        client: Client,
        session: String,
        #[serde(default)]
        csrf: Option<String>,
        request: AdminRequest,
        /// Asked by a page on its own (the live request list polling), not
        /// by the person: the session's idle timer does not restart.
        #[serde(default)]
        passive: bool,
    },
    /// Self-service: what the session's user may do to their own account.
    Own {
        client: Client,
        session: String,
        #[serde(default)]
        csrf: Option<String>,
        request: OwnRequest,
    },
}

impl WebRequest {
    pub fn client(&self) -> &Client {
        match self {
            WebRequest::LoginStart { client, .. }
            | WebRequest::Answer { client, .. }
            | WebRequest::Cancel { client, .. }
            | WebRequest::Whoami { client, .. }
            | WebRequest::Logout { client, .. }
            | WebRequest::Admin { client, .. }
            | WebRequest::Own { client, .. } => client,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OwnRequest {
    /// My account, my recent logins and failures.
    Overview,
    /// New recovery codes (the old set stops working); shown once.
    RecoveryCodes,
    /// Re-enroll a new phone: a flow that first asks a code from the current
    /// authenticator (or a recovery code), then shows the new key's QR code
    /// and activates it with its first good code.
    Reenroll,
    /// Sets (or with `None` removes) my emailed-code address, as policy
    /// allows (`[web] self_service_email`).
    SetEmail {
        #[serde(default)]
        address: Option<String>,
    },
}

/// One line a flow shows before its prompt (or its outcome).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowLine {
    pub error: bool,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WebResponse {
    /// A flow waits for an answer to `prompt`.
    Step {
        flow: String,
        lines: Vec<FlowLine>,
        prompt: String,
        /// Whether the answer may be shown as it is typed (an address, a
        /// reason) or is a secret (a passcode).
        echo: bool,
        /// An empty answer asks for an emailed code.
        #[serde(default)]
        offers_email: bool,
        /// `E` asks for emergency access.
        #[serde(default)]
        offers_emergency: bool,
        /// A pending enrollment: the `otpauth://` URI to draw as a QR code.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        enroll_uri: Option<String>,
    },
    /// A flow ended without a session (refused, locked, a request sent).
    Ended {
        lines: Vec<FlowLine>,
        outcome: OutcomeKind,
        message: Option<String>,
    },
    /// A login accepted: the new console session.
    Session {
        session: SessionView,
        token: String,
        lines: Vec<FlowLine>,
    },
    /// A re-enrollment finished: the new authenticator is active.
    Reenrolled {
        lines: Vec<FlowLine>,
    },
    Me {
        session: SessionView,
    },
    Admin {
        response: AdminResponse,
    },
    Overview {
        overview: Overview,
    },
    RecoveryCodes {
        codes: Vec<String>,
    },
    Done {
        message: String,
    },
    Error {
        kind: WebErrorKind,
        message: String,
    },
}

/// A live console session as otpweb may show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    pub user: String,
    pub admin: bool,
    /// The token every form of this session carries.
    pub csrf: String,
    /// Unix seconds: when the session ends unless used again.
    pub idle_expires_at: i64,
    /// Unix seconds: when the session ends whatever happens.
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overview {
    /// None: no second factor is set up for this account.
    pub user: Option<UserInfo>,
    /// My latest logins, failures and changes, newest first.
    pub recent: Vec<AuditEntry>,
    /// Whether I may set my emailed-code address here.
    pub may_set_email: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebErrorKind {
    /// Wrong user name or password (one answer for both).
    BadLogin,
    /// No such session or flow, or it expired: log in again.
    Unauthenticated,
    /// The session's user may not do this.
    Forbidden,
    /// A missing or wrong CSRF token.
    Csrf,
    InvalidInput,
    /// Too many attempts from this address or for this account.
    RateLimited,
    Unavailable,
}

/// The `[web]` defaults both processes agree on.
pub const DEFAULT_WEB_SOCKET: &str = "/run/otpd/web.sock";
