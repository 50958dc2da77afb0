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
        /// The account `user` resolves to in the login process's directory
        /// (NSS): the daemon decides on the account, not on the spelling.
        /// Absent when the name does not resolve (or from older modules).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
        /// How to draw an enrollment QR code (module option `qr=`).
        #[serde(default, skip_serializing_if = "QrStyle::is_default")]
        qr: QrStyle,
    },
    /// The user's reply to the last [`ServerMsg::Prompt`].
    Answer { text: String },
    /// Reply to [`ServerMsg::ResolveUser`]: the uid `user` resolves to in the
    /// login process's directory, or none when the name does not resolve.
    UserResolved {
        #[serde(default)]
        uid: Option<u32>,
    },
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

/// How the enrollment QR code is drawn on the user's terminal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QrStyle {
    /// Unicode half blocks, two modules per character cell (UTF-8 terminals).
    #[default]
    Utf8,
    /// `#` and space, two characters per module: any terminal, any locale.
    Ascii,
    /// No QR code; the secret key and the URI are still shown.
    Off,
}

impl QrStyle {
    pub fn is_default(&self) -> bool {
        *self == QrStyle::Utf8
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMsg {
    /// Ask the user something; `echo` says whether the answer may be shown.
    Prompt { echo: bool, text: String },
    /// Show text (QR code, "a code was sent to ...").
    Info { text: String },
    /// Resolve `Begin.user` to its account (uid) and answer with
    /// [`ClientMsg::UserResolved`]. Asked only when the name as typed does
    /// not decide: a non-root caller, or no enabled record of that name.
    ResolveUser,
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
    /// RFC 4226 counter-based codes (hardware tokens imported from pam_oath).
    Hotp,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Totp => "totp",
            Method::Email => "email",
            Method::Hotp => "hotp",
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
    /// Enables many users for TOTP at once (`otpctl user enable --group` /
    /// `--from-file`): ONE transaction; those already enabled are left
    /// unchanged and counted. Refused whole if any name is invalid.
    UserEnableMany {
        users: Vec<BulkUser>,
        /// Where the names came from ("group sudo", "file users.txt"), for the audit.
        source: String,
    },
    UserDisable {
        user: String,
    },
    /// Reads the members of `[daemon] require_group` through NSS now and
    /// stores them (logins are decided on the stored list).
    GroupRefresh,
    UserReset {
        user: String,
    },
    UserShow {
        user: String,
    },
    /// Every user, by name; or one page of them (`limit`), those whose
    /// name or address contains `search`, after the name `after`.
    UserList {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        search: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    UserUnlock {
        user: String,
    },
    /// A HOTP token that ran ahead of the look-ahead window: two consecutive
    /// codes from it, found within 1000 counters ahead, move the counter past them.
    UserResync {
        user: String,
        code1: String,
        code2: String,
    },
    /// Imports a pam_oath users file (its text; `otpctl` reads the file).
    /// All its valid lines in one transaction, or with `dry_run` none.
    ImportOath {
        content: String,
        #[serde(default)]
        dry_run: bool,
    },
    Audit {
        #[serde(default)]
        user: Option<String>,
        /// Only this host's entries (fleet).
        #[serde(default)]
        host: Option<String>,
        /// Unix seconds; entries at or after this time.
        #[serde(default)]
        since: Option<i64>,
        #[serde(default)]
        limit: Option<u32>,
        /// Only entries with this result ("accept", "deny", "lockout", ...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<String>,
        /// Unix seconds; entries before this time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<i64>,
        /// The next page: entries older than this id (newest first).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before_id: Option<i64>,
    },
    Status,
    /// Issues USER 10 new single-use recovery codes, replacing any old set.
    UserRecoveryCodes {
        user: String,
    },
    /// Accounts read by otpctl from google-authenticator files, imported in
    /// one transaction (nothing written with `dry_run`).
    ImportTotp {
        accounts: Vec<ImportAccount>,
        #[serde(default)]
        dry_run: bool,
    },
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
    /// Server role: issues credentials for a host (`admin`: for remote otpctl).
    HostAdd {
        name: String,
        #[serde(default)]
        admin: bool,
    },
    HostList,
    /// Refused at once on every server of the database.
    HostRevoke {
        name: String,
    },
    /// Server role: the fleet's CAs and how many hosts hold certificates of each.
    CaStatus,
    /// Server role: a new CA beside the current one (see `otpctl ca rotate`).
    CaRotate,
    /// Server role: drops the older of two CAs; refused while hosts hold
    /// its certificates, unless `force` (then they are revoked).
    CaRetire {
        #[serde(default)]
        force: bool,
    },
    /// Remote otpctl only (a fleet link): whether these admin credentials
    /// are those a renewal would give now ([`CaCheck`]).
    CaCheck {
        check_cas: Vec<String>,
    },
    /// Remote otpctl only (a fleet link): new admin credentials for a key
    /// made on the admin's machine ([`Renew`]), answered by `Renewed`.
    Renew {
        renew_csr: String,
    },
}

/// Where an emergency request stands; stored and sent as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    Pending,
    Approved,
    Denied,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Denied => "denied",
        }
    }

    pub fn parse(s: &str) -> Option<RequestStatus> {
        [RequestStatus::Pending, RequestStatus::Approved, RequestStatus::Denied].into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    pub status: RequestStatus,
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
    /// `host add`: the bundle (CA certificate, host certificate and key, PEM)
    /// to copy to the host; shown once, never stored.
    HostBundle {
        name: String,
        bundle: String,
    },
    Hosts {
        hosts: Vec<HostInfo>,
    },
    /// `ca status`.
    Cas {
        cas: Vec<CaInfo>,
        /// Hosts with valid credentials of none of these CAs (a CA retired
        /// with --force meanwhile).
        #[serde(default)]
        other_hosts: u64,
    },
    /// [`AdminRequest::CaCheck`]: why the credentials should be renewed now, if they should.
    CaCheck {
        renew: Option<String>,
    },
    /// [`AdminRequest::Renew`]: as [`RenewReply::Renewed`].
    Renewed {
        cert_pem: String,
        ca_pem: String,
        not_after: i64,
    },
    /// `import`: what happened to each account, in order.
    Imported {
        results: Vec<ImportResult>,
    },
    /// `user recovery-codes`: the new codes (`xxxxx-xxxxx`), shown once; only
    /// their hashes are stored.
    RecoveryCodes {
        user: String,
        codes: Vec<String>,
    },
    /// `user_enable_many`: counts, and at most a few names (never one line
    /// per user: a request may carry 100,000).
    EnabledMany {
        enabled: u64,
        already_enabled: u64,
        skipped: u64,
        /// Up to 10 lines: the users skipped and why, or the first enabled.
        notes: Vec<String>,
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
    /// Consecutive failures towards the next lock (0 again when a lock starts).
    pub failures: u32,
    /// Unix seconds: end of the current (or last) timed lock.
    pub locked_until: Option<i64>,
    /// Locked when the answer was made: a timed lock not yet over, or the
    /// lock only `otpctl user unlock` lifts.
    #[serde(default)]
    pub locked: bool,
    /// Unix seconds: when the account got the lock only `otpctl user unlock` lifts.
    #[serde(default)]
    pub admin_locked_at: Option<i64>,
    /// Locks in a row since the last successful login; each lasts twice as long.
    #[serde(default)]
    pub lock_periods: u32,
    /// Failed attempts since the last successful login.
    #[serde(default)]
    pub failures_since_login: u32,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_login: Option<i64>,
    /// HOTP users: the next counter the token is expected to show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotp_counter: Option<u64>,
    /// Unused recovery codes (`user show` only; absent in lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_codes_left: Option<u64>,
    /// The user's authenticator clock, as the last refused code outside
    /// the window showed it; absent when none was seen since the last
    /// successful login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_drift: Option<ClockDrift>,
}

/// An authenticator whose clock is off: a refused code matched a step
/// outside the accepted window, within ten minutes of the server's time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockDrift {
    /// How far the authenticator's clock is from the server's, in seconds
    /// (positive: ahead), to the step.
    pub secs: i64,
    /// Unix seconds: the last refusal that showed it.
    pub seen_at: i64,
    /// Such refusals in a row (another failure starts the count over; a
    /// successful login forgets the drift).
    pub refusals_in_a_row: u32,
}

impl ClockDrift {
    /// "authenticator clock about 5 min ahead".
    pub fn describe(&self) -> String {
        let (n, dir) = drift_minutes(self.secs);
        format!("authenticator clock about {n} min {dir}")
    }
}

/// Whole minutes (rounded, at least 1) and "ahead" or "behind".
pub fn drift_minutes(secs: i64) -> (i64, &'static str) {
    let n = ((secs.saturating_abs() + 30) / 60).max(1);
    (n, if secs >= 0 { "ahead" } else { "behind" })
}

/// One user of `user_enable_many`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkUser {
    pub name: String,
    /// The account's uid, as otpctl resolved it through NSS (none: no such account yet).
    #[serde(default)]
    pub uid: Option<u32>,
}

/// One account to import (`otpctl import google-authenticator`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportAccount {
    pub user: String,
    /// The account's uid, as otpctl resolved it.
    pub uid: Option<u32>,
    /// Base32 without padding.
    pub secret_b32: String,
    /// Seconds per TOTP step in the file (STEP_SIZE, default 30).
    pub step_size: u32,
    /// Highest step used under the old module (DISALLOW_REUSE).
    pub last_step: Option<i64>,
    /// 8-digit emergency scratch codes, to become recovery codes.
    pub scratch_codes: Vec<String>,
    /// A counter-based (HOTP) file: HOTP_COUNTER, the next counter the
    /// token shows (every lower one is used). `None` for TOTP files.
    #[serde(default)]
    pub hotp_counter: Option<i64>,
    /// WINDOW_SIZE in the file, reported when otpd's window differs.
    #[serde(default)]
    pub window_size: Option<u32>,
    /// RATE_LIMIT attempts and seconds, reported (otpd's lockout applies).
    #[serde(default)]
    pub rate_limit: Option<(u32, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportResult {
    pub user: String,
    pub outcome: ImportOutcome,
    pub detail: String,
}

/// What an import did with one account (on the wire as its text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImportOutcome {
    #[serde(rename = "imported")]
    Imported,
    /// A dry run's `imported`.
    #[serde(rename = "would import")]
    WouldImport,
    #[serde(rename = "unchanged")]
    Unchanged,
    #[serde(rename = "skipped")]
    Skipped,
}

impl ImportOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ImportOutcome::Imported => "imported",
            ImportOutcome::WouldImport => "would import",
            ImportOutcome::Unchanged => "unchanged",
            ImportOutcome::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for ImportOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
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
    /// Set on a row written late: a refusal an agent kept in its spool
    /// while no server answered (`time` is when it happened on that host),
    /// received by a server at this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<i64>,
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
    /// Standalone or server (an agent has no admin socket of its own).
    #[serde(default)]
    pub role: Role,
    /// Server role: the hosts and when each was last seen.
    #[serde(default)]
    pub hosts: Vec<HostInfo>,
    /// The server's own clock, as the kernel reports it: TOTP codes are
    /// checked against it. Absent from daemons that predate it.
    #[serde(default)]
    pub clock: Option<ServerClock>,
}

/// The kernel's clock discipline state (`adjtimex`), read by otpd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerClock {
    /// A time source (NTP, PTP) keeps the clock synchronised: adjtimex
    /// neither returns TIME_ERROR nor has STA_UNSYNC set. Absent when the
    /// state could not be read (`error` says why).
    #[serde(default)]
    pub synchronised: Option<bool>,
    /// The kernel's maximum error estimate, microseconds.
    #[serde(default)]
    pub max_error_us: Option<i64>,
    #[serde(default)]
    pub error: Option<String>,
}

/// What a daemon is in a fleet: `role` in otpd.toml, and in `status`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// One host, its own database: the PAM socket decides locally.
    #[default]
    Standalone,
    /// Relays every conversation of this host's PAM socket to a server;
    /// holds no secret, code or key.
    Agent,
    /// Decides for the hosts whose certificates it issued (`otpctl host add`).
    Server,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Agent => "agent",
            Role::Server => "server",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub name: String,
    /// "agent" or "admin".
    pub role: String,
    /// SHA-256 of its certificate, hex.
    pub fingerprint: String,
    pub added_at: i64,
    pub revoked_at: Option<i64>,
    pub last_seen: Option<i64>,
    /// The source address of its last link.
    #[serde(default)]
    pub last_addr: Option<String>,
    /// When its certificate runs out (None: issued before otpd recorded it).
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Its certificate ran out (by the server's clock): it cannot renew
    /// itself any more and needs a new bundle (`host add`).
    #[serde(default)]
    pub expired: bool,
    /// When it last renewed its certificate over its own link.
    #[serde(default)]
    pub renewed_at: Option<i64>,
    /// SHA-256 of the CA certificate that issued its certificate, hex.
    #[serde(default)]
    pub ca: Option<String>,
}

/// One of a fleet's CAs, as `otpctl ca status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaInfo {
    /// SHA-256 of the CA certificate, hex.
    pub fingerprint: String,
    /// When it was stored (0: stored before rotations existed).
    pub added_at: i64,
    pub not_after: i64,
    /// Servers present certificates of this CA (the older of two).
    pub serving: bool,
    /// New host certificates are issued by this CA.
    pub issuing: bool,
    /// Agents and admin credentials whose valid certificate it issued.
    pub agents: u64,
    pub admins: u64,
}

/// Fleet links (agent or remote otpctl → server), inside TLS 1.3 with a
/// client certificate. The client's first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "link", rename_all = "snake_case", deny_unknown_fields)]
pub enum LinkHello {
    /// An agent relays its host's PAM conversations; `host` is the name it
    /// believes it has, which must be the name of its certificate.
    Agent { protocol: u32, host: String },
    /// Remote otpctl: admin requests follow, one per frame.
    Admin { protocol: u32 },
}

/// The server's answer to [`LinkHello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LinkReply {
    Ready { server: String },
    Refused { reason: String },
}

/// On an agent link, before each conversation's first message: who the
/// login process is on the agent's host (SO_PEERCRED there, and for a
/// root peer the real uid of its process, read by the agent from /proc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    pub peer_uid: u32,
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(default)]
    pub caller: Option<u32>,
    /// For a peer other than root: the name of its own account on the
    /// agent's host, as the agent's directory has it (getpwuid there). Such
    /// a caller can only ever be this account (check 35): the server finds
    /// the record by this name, never by the name typed or by the client's
    /// own answer to `resolve_user`. None: root, or a uid without a name
    /// (then a non-root caller is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// How long the login process waits for each reply, in milliseconds
    /// (the agent gives up after as long): an answer the server could only
    /// decide later is not decided at all (check 37).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_within_ms: Option<u64>,
}

/// What an agent sends on its link before each exchange: the header of a
/// relayed conversation, or a request of the agent's own (its certificate,
/// its spool), each answered by one frame of its own kind. Untagged: a
/// relay header is the same frame it always was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AgentFrame {
    Relay(Relay),
    /// Refusals the agent spooled while no server answered: answered by a
    /// [`SpoolAck`].
    Spool(SpoolBatch),
    /// A new certificate for a key the agent made: answered by a
    /// [`RenewReply`].
    Renew(Renew),
    /// Whether the agent should renew now: answered by a [`CaCheckReply`].
    CaCheck(CaCheck),
}

/// A host asks whether its credentials are those a renewal would give now
/// (`{"check_cas":["ab:12:…", …]}`: the SHA-256 of each CA its bundle
/// trusts). During a CA rotation, hosts renew as soon as they learn it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaCheck {
    pub check_cas: Vec<String>,
}

/// The answer to [`CaCheck`]: why the host should renew now, if it should.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaCheckReply {
    pub renew: Option<String>,
}

/// Why an agent refused a login by itself (and kept it in its spool).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolReason {
    /// No server answered in time.
    Unavailable,
    /// The server was lost during the conversation.
    Cut,
    /// The agent's own limit on logins of users other than root in progress.
    Busy,
}

/// One refusal in an agent's spool: who asked, where from, when and why —
/// never an answer, a code or a secret (the agent refused before any was
/// typed, or never learnt whether the one typed was checked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolEntry {
    /// The agent's id of the entry (hex): the server writes one host's id
    /// once, so a batch sent again after a lost acknowledgement adds nothing.
    pub id: String,
    /// Unix seconds, on the agent's clock.
    pub time: i64,
    pub user: String,
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rhost: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<String>,
    /// Who started the login on the agent's host when not root: the peer's
    /// uid, or for a root program (su, sudo) the real uid that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<u32>,
    pub reason: SpoolReason,
}

/// [`AgentFrame::Spool`]: the oldest entries of the spool, and how many
/// older ones a full spool dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolBatch {
    pub spool: Vec<SpoolEntry>,
    #[serde(default)]
    pub dropped: u64,
}

/// The server's answer to a [`SpoolBatch`], once what it took is committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolAck {
    /// The first `taken` entries of the batch are dealt with (written, or
    /// written before, or refused as malformed): the agent forgets them.
    pub taken: u32,
    /// So much of the batch's `dropped` count is written: the agent forgets it.
    pub dropped: u64,
    /// Set when the host's rate was used up: send the rest after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u32>,
}

/// An agent asks for a new certificate for a key it made
/// (`{"renew_csr":"-----BEGIN CERTIFICATE REQUEST-----…"}`), answered by
/// a [`RenewReply`]. Its own field name keeps it apart from a [`Relay`]
/// header (which has no such field and refuses unknown ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Renew {
    /// PEM certificate signing request, signed by the new key (ECDSA
    /// P-256). Its subject is ignored: the server issues for the host's
    /// recorded name.
    pub renew_csr: String,
}

/// The answer to [`Renew`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RenewReply {
    /// The new certificate (PEM), the fleet CAs to trust from now on (PEM,
    /// one or several), and when the certificate runs out (Unix seconds).
    Renewed {
        cert_pem: String,
        ca_pem: String,
        not_after: i64,
    },
    Refused {
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_keep_their_words_in_status_and_config() {
        for (r, text) in [(Role::Standalone, "standalone"), (Role::Agent, "agent"), (Role::Server, "server")] {
            assert_eq!(r.as_str(), text);
            assert_eq!(serde_json::to_string(&r).ok(), Some(format!("\"{text}\"")));
        }
        // A status from a daemon that predates the field reads as standalone.
        assert_eq!(Role::default(), Role::Standalone);
    }

    #[test]
    fn import_outcomes_keep_their_words_on_the_wire() {
        for (o, text) in [
            (ImportOutcome::Imported, "imported"),
            (ImportOutcome::WouldImport, "would import"),
            (ImportOutcome::Unchanged, "unchanged"),
            (ImportOutcome::Skipped, "skipped"),
        ] {
            assert_eq!(serde_json::to_string(&o).ok(), Some(format!("\"{text}\"")));
            assert_eq!(serde_json::from_str::<ImportOutcome>(&format!("\"{text}\"")).ok(), Some(o));
            assert_eq!(format!("{o:<14}|"), format!("{text:<14}|"), "printed padded, as the text was");
        }
    }

    #[test]
    fn tags_are_snake_case() {
        let json = serde_json::to_string(&ServerMsg::Outcome { result: OutcomeKind::NotEnrolled, message: None })
            .unwrap_or_default();
        assert_eq!(json, r#"{"type":"outcome","result":"not_enrolled","message":null}"#);
    }

    /// Backticked names after "expected" in a serde error: serde lists every
    /// variant (or field) it would have accepted, so no list is kept by hand.
    fn expected_names(error: &str) -> Vec<String> {
        let Some((_, tail)) = error.split_once("expected") else { return Vec::new() };
        tail.split('`').skip(1).step_by(2).map(str::to_string).collect()
    }

    /// Every variant name of a `"type"`-tagged enum.
    fn variants<T: serde::de::DeserializeOwned>() -> Vec<String> {
        let error = serde_json::from_str::<T>(r#"{"type":"no such variant"}"#).err().map(|e| e.to_string());
        expected_names(&error.unwrap_or_default())
    }

    /// Every field of `variant` of an enum with `deny_unknown_fields`.
    fn fields<T: serde::de::DeserializeOwned>(variant: &str) -> Vec<String> {
        let json = format!(r#"{{"type":"{variant}","no such field":0}}"#);
        // A unit variant ignores extra keys; a struct variant names its fields.
        let Err(error) = serde_json::from_str::<T>(&json) else { return Vec::new() };
        let error = error.to_string();
        assert!(error.contains("unknown field"), "{variant}: {error}");
        expected_names(&error)
    }

    /// The lines under the first heading that contains `name` (backticked),
    /// up to the next heading of the same or a higher level.
    fn section<'a>(lines: &[&'a str], name: &str) -> Option<Vec<&'a str>> {
        let level = |l: &str| if l.starts_with('#') { l.chars().take_while(|&c| c == '#').count() } else { 0 };
        let start = lines.iter().position(|l| level(l) > 0 && l.contains(&format!("`{name}`")))?;
        let own = level(lines[start]);
        let rest = &lines[start + 1..];
        let end = rest.iter().position(|l| (1..=own).contains(&level(l))).unwrap_or(rest.len());
        Some(rest[..end].to_vec())
    }

    /// docs/PROTOCOL.md has an entry for every message of every enum, with
    /// every field (where serde can list them: the enums that refuse unknown
    /// fields) named in its entry.
    #[test]
    #[allow(clippy::unwrap_used, clippy::panic)]
    fn protocol_doc_lists_every_message_and_field() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let lines: Vec<&str> = doc.lines().collect();
        type Fields = fn(&str) -> Vec<String>;
        use crate::web::{OwnRequest, WebRequest, WebResponse};
        let enums: [(&str, Vec<String>, Option<Fields>); 7] = [
            ("ClientMsg", variants::<ClientMsg>(), Some(fields::<ClientMsg>)),
            ("ServerMsg", variants::<ServerMsg>(), Some(fields::<ServerMsg>)),
            ("AdminRequest", variants::<AdminRequest>(), Some(fields::<AdminRequest>)),
            ("AdminResponse", variants::<AdminResponse>(), None),
            ("WebRequest", variants::<WebRequest>(), Some(fields::<WebRequest>)),
            ("OwnRequest", variants::<OwnRequest>(), Some(fields::<OwnRequest>)),
            ("WebResponse", variants::<WebResponse>(), None),
        ];
        let mut missing = Vec::new();
        for (name, variants, fields) in enums {
            assert!(variants.len() >= 2, "could not list the variants of {name}");
            let Some(enum_doc) = section(&lines, name) else {
                missing.push(format!("a section for `{name}`"));
                continue;
            };
            for variant in variants {
                let Some(entry) = section(&enum_doc, &variant) else {
                    missing.push(format!("{name}: an entry (heading) for `{variant}`"));
                    continue;
                };
                let text = entry.join("\n");
                for field in fields.map(|f| f(&variant)).unwrap_or_default() {
                    if !text.contains(&format!("`{field}`")) {
                        missing.push(format!("{name}::{variant}: field `{field}`"));
                    }
                }
            }
        }
        assert!(missing.is_empty(), "docs/PROTOCOL.md lacks:\n{}", missing.join("\n"));
    }

    #[test]
    fn begin_without_new_fields_still_parses_and_defaults_are_not_sent() {
        let old = r#"{"type":"begin","protocol":1,"user":"a","service":"s","pid":1}"#;
        assert!(
            matches!(serde_json::from_str(old), Ok(ClientMsg::Begin { uid: None, qr: QrStyle::Utf8, .. })),
            "an older module's begin must parse"
        );
        let new = r#"{"type":"begin","protocol":1,"user":"a","service":"s","pid":1,"uid":7,"qr":"ascii"}"#;
        assert!(matches!(serde_json::from_str(new), Ok(ClientMsg::Begin { uid: Some(7), qr: QrStyle::Ascii, .. })));
        let plain = ClientMsg::Begin {
            protocol: 1,
            user: "a".into(),
            service: "s".into(),
            rhost: None,
            ruser: None,
            tty: None,
            pid: 1,
            uid: None,
            qr: QrStyle::Utf8,
        };
        let json = serde_json::to_string(&plain).unwrap_or_default();
        assert!(!json.contains("uid") && !json.contains("qr"), "{json}");
        let unknown = r#"{"type":"begin","protocol":1,"user":"a","service":"s","pid":1,"qr":"sixel"}"#;
        assert!(serde_json::from_str::<ClientMsg>(unknown).is_err());
    }

    /// An agent frame is a relay header or a spool batch, never taken for
    /// the other (the enum is untagged: a relay header is the frame it
    /// always was).
    #[test]
    fn agent_frames_are_told_apart_without_a_tag() {
        let relay = r#"{"peer_uid":0,"pid":4242,"caller":1000,"reply_within_ms":9000}"#;
        assert!(matches!(serde_json::from_str(relay), Ok(AgentFrame::Relay(Relay { peer_uid: 0, .. }))));
        let batch = SpoolBatch {
            spool: vec![SpoolEntry {
                id: "00ff".into(),
                time: 1_700_000_000,
                user: "alice".into(),
                service: "sshd".into(),
                rhost: Some("192.0.2.1".into()),
                tty: None,
                caller: None,
                reason: SpoolReason::Unavailable,
            }],
            dropped: 3,
        };
        let json = serde_json::to_string(&AgentFrame::Spool(batch.clone())).unwrap_or_default();
        assert!(json.starts_with(r#"{"spool":[{"id":"00ff","time":1700000000"#), "{json}");
        assert!(json.contains(r#""reason":"unavailable""#), "{json}");
        assert_eq!(serde_json::from_str::<AgentFrame>(&json).ok(), Some(AgentFrame::Spool(batch)));
        // Neither kind with the other's fields, nor with fields of its own making.
        for bad in [
            r#"{"peer_uid":0,"spool":[]}"#,
            r#"{"spool":[],"dropped":0,"x":1}"#,
            r#"{"peer_uid":0,"x":1}"#,
            r#"{"spool":[{"id":"1","time":1,"user":"a","service":"s","reason":"unavailable","answer":"123456"}]}"#,
            r#"{"spool":[{"id":"1","time":1,"user":"a","service":"s","reason":"because"}]}"#,
        ] {
            assert!(serde_json::from_str::<AgentFrame>(bad).is_err(), "{bad}");
        }
    }

    /// An agent's frames decode one way only: a relay header is what it
    /// always was, a renewal request is told apart by its own field.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn agent_frames_are_told_apart() {
        let relay = r#"{"peer_uid":0,"pid":4242,"caller":1000,"reply_within_ms":9000}"#;
        assert!(matches!(serde_json::from_str(relay).unwrap(), AgentFrame::Relay(Relay { peer_uid: 0, .. })));
        let renew = r#"{"renew_csr":"-----BEGIN CERTIFICATE REQUEST-----"}"#;
        assert!(matches!(serde_json::from_str(renew).unwrap(), AgentFrame::Renew(Renew { .. })));
        let frame = AgentFrame::Renew(Renew { renew_csr: "x".into() });
        assert_eq!(serde_json::to_string(&frame).unwrap(), r#"{"renew_csr":"x"}"#);
        for bad in [r#"{"peer_uid":0,"renew_csr":"x"}"#, r#"{"renew_csr":"x","extra":1}"#, "{}"] {
            assert!(serde_json::from_str::<AgentFrame>(bad).is_err(), "{bad}");
        }
        let check = r#"{"check_cas":["ab:cd"]}"#;
        assert_eq!(
            serde_json::from_str::<AgentFrame>(check).unwrap(),
            AgentFrame::CaCheck(CaCheck { check_cas: vec!["ab:cd".into()] })
        );
        let reply = RenewReply::Renewed { cert_pem: "c".into(), ca_pem: "a".into(), not_after: 5 };
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(json, r#"{"renewed":{"cert_pem":"c","ca_pem":"a","not_after":5}}"#);
        assert_eq!(serde_json::from_str::<RenewReply>(&json).unwrap(), reply);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let r: Result<ClientMsg, _> = serde_json::from_str(r#"{"type":"answer","text":"1","x":1}"#);
        assert!(r.is_err());
        let r: Result<ClientMsg, _> = serde_json::from_str(r#"{"type":"accept"}"#);
        assert!(r.is_err());
    }
}
