//! Wire protocol between `pam_otp.so` / `otpctl` and `otpd`.
//!
//! Every message is one frame (see [`crate::codec`]) holding a JSON object
//! tagged by `"type"`. The daemon drives a login conversation: the module
//! sends [`ClientMsg::Begin`], then renders each [`ServerMsg`] until an
//! [`ServerMsg::Outcome`] arrives, sending one [`ClientMsg::Answer`] per
//! prompt. The protocol is documented for humans in `docs/PROTOCOL.md`.
use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change; the daemon refuses other versions.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest answer the module forwards. Longer answers are cut to one byte
/// more than this so the daemon still sees (and audits) them as too long.
pub const MAX_ANSWER_LEN: usize = 512;

/// Longest user name accepted anywhere (matches glibc's `LOGIN_NAME_MAX`-1 with room).
pub const MAX_USER_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    /// First message of a login conversation.
    Begin {
        protocol: u32,
        user: String,
        service: String,
        #[serde(default)]
        rhost: Option<String>,
        #[serde(default)]
        ruser: Option<String>,
        #[serde(default)]
        tty: Option<String>,
        /// pid of the PAM application; informative only, the daemon trusts SO_PEERCRED.
        pid: u32,
    },
    /// The user's reply to the last [`ServerMsg::Prompt`].
    Answer { text: String },
    /// The PAM conversation failed (no conversation function, user hit ^D, ...).
    Cancel,
    /// `pam_sm_open_session` after a successful login.
    SessionOpened {
        protocol: u32,
        user: String,
        service: String,
        #[serde(default)]
        rhost: Option<String>,
        #[serde(default)]
        tty: Option<String>,
        pid: u32,
    },
    /// `pam_sm_close_session`.
    SessionClosed {
        protocol: u32,
        user: String,
        service: String,
        #[serde(default)]
        tty: Option<String>,
        pid: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMsg {
    /// Ask the user something; `echo` says whether the answer may be shown.
    Prompt { echo: bool, text: String },
    /// Show text (QR code, "a code was sent to ...").
    Info { text: String },
    /// Show an error text; the conversation continues.
    Error { text: String },
    /// End of the conversation.
    Outcome {
        result: OutcomeKind,
        #[serde(default)]
        message: Option<String>,
    },
    /// Reply to session notifications.
    Ack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    Accept,
    Deny,
    /// Denied because the account is locked after too many failures.
    Locked,
    /// The user is not enabled for OTP: the only answer that may become PAM_IGNORE.
    NotEnrolled,
}

// ---------------------------------------------------------------- admin

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Totp,
    Email,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Totp => "totp",
            Method::Email => "email",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    UserEnable {
        user: String,
        method: Method,
        #[serde(default)]
        email: Option<String>,
    },
    UserDisable {
        user: String,
    },
    UserReset {
        user: String,
    },
    UserShow {
        user: String,
    },
    UserList,
    UserUnlock {
        user: String,
    },
    Audit {
        #[serde(default)]
        user: Option<String>,
        /// Unix seconds; entries at or after this time.
        #[serde(default)]
        since: Option<i64>,
        #[serde(default)]
        limit: Option<u32>,
    },
    Status,
    /// Sets the password of the otpd-internal account (`auto_send = "internal"`).
    UserPasswd {
        user: String,
        password: String,
    },
    RequestList {
        #[serde(default)]
        all: bool,
    },
    RequestApprove {
        id: i64,
    },
    RequestDeny {
        id: i64,
    },
    Sessions {
        #[serde(default)]
        limit: Option<u32>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestInfo {
    pub id: i64,
    pub user: String,
    pub machine: String,
    pub address: String,
    pub reason: String,
    pub origin: String,
    pub created_at: i64,
    pub status: String,
    pub decided_at: Option<i64>,
    pub decided_by: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: i64,
    pub user: String,
    pub email: Option<String>,
    pub machine: String,
    pub service: String,
    pub rhost: Option<String>,
    pub tty: Option<String>,
    pub pid: u32,
    pub opened_at: i64,
    pub closed_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AdminResponse {
    User {
        user: UserInfo,
    },
    /// `user enable` / `user reset`: the provisioning URI is returned to the admin
    /// (root can read the key file anyway) so enrollment can also be handed over
    /// out of band.
    Enrolled {
        user: UserInfo,
        otpauth_uri: Option<String>,
    },
    Users {
        users: Vec<UserInfo>,
    },
    Audit {
        entries: Vec<AuditEntry>,
    },
    Status {
        status: StatusInfo,
    },
    Requests {
        /// The newest 1000.
        requests: Vec<RequestInfo>,
        /// How many match in all (`requests` may be fewer).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
    },
    Sessions {
        sessions: Vec<SessionInfo>,
    },
    Done {
        message: String,
    },
    Error {
        kind: AdminErrorKind,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminErrorKind {
    NotFound,
    PermissionDenied,
    InvalidInput,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub method: Method,
    pub enabled: bool,
    pub email: Option<String>,
    pub activated: bool,
    /// Unix seconds.
    pub activated_at: Option<i64>,
    pub failures: u32,
    /// Unix seconds; set while the account is locked.
    pub locked_until: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_login: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    /// Unix seconds.
    pub time: i64,
    pub user: String,
    pub service: String,
    pub rhost: Option<String>,
    pub tty: Option<String>,
    pub machine: String,
    pub method: String,
    pub result: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub version: String,
    pub pid: u32,
    pub started_at: i64,
    pub database: String,
    pub schema_version: i64,
    pub users_total: u64,
    pub users_enabled: u64,
    pub users_activated: u64,
    pub users_locked: u64,
    pub audit_entries: u64,
    pub open_connections: u64,
    pub mail_enabled: bool,
    pub mail_queued: u64,
    pub mail_failing: u64,
    pub mail_sent_last_hour: u64,
    pub mail_last_error: Option<String>,
    pub requests_pending: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_snake_case() {
        let json = serde_json::to_string(&ServerMsg::Outcome { result: OutcomeKind::NotEnrolled, message: None })
            .unwrap_or_default();
        assert_eq!(json, r#"{"type":"outcome","result":"not_enrolled","message":null}"#);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let r: Result<ClientMsg, _> = serde_json::from_str(r#"{"type":"answer","text":"1","x":1}"#);
        assert!(r.is_err());
        let r: Result<ClientMsg, _> = serde_json::from_str(r#"{"type":"accept"}"#);
        assert!(r.is_err());
    }
}
