//! What is stored, behind the [`Store`] trait, whichever the backend: SQLite
//! ([`crate::store::sqlite`], standalone and single servers) or PostgreSQL
//! ([`crate::store::postgres`], several fleet servers on one database).
//!
//! Every operation runs inside a transaction opened by a [`crate::store::db`]
//! worker, so an auth decision reads and updates state atomically and its
//! reply is only sent after COMMIT (SQLite: WAL, `synchronous=FULL`).
//!
//! # Concurrency contract
//!
//! What must hold however many logins race, on one server or on several
//! servers sharing one PostgreSQL database:
//!
//! * **A user's record is read-modify-written by one transaction at a
//!   time.** SQLite: one writer thread runs every job, so jobs are serial by
//!   construction. PostgreSQL: [`Store::user`] and [`Store::user_by_uid`]
//!   read with `SELECT … FOR UPDATE`; a second transaction (any server)
//!   blocks on the row lock until the first commits, then reads the row it
//!   wrote. Failure counts and locks are therefore never lost or reset by a
//!   concurrent login.
//! * **A TOTP step is accepted once.** Besides the row lock, the accepting
//!   transaction calls [`Store::consume_step`], a conditional `UPDATE … WHERE
//!   last_step IS NULL OR last_step < step`. Under PostgreSQL's READ
//!   COMMITTED a concurrent UPDATE of the same row waits for the first to
//!   commit and then re-evaluates its WHERE against the committed row, so it
//!   changes nothing and returns false — the login is denied as a replay.
//!   And [`Store::save_user`] never lowers `last_step` while the secret stays
//!   the same, so a job that saves a stale copy of the record cannot hand a
//!   used step back. Together these hold even for a job that did not lock
//!   the row first. The PostgreSQL fast path,
//!   [`crate::store::pgfast::PgFast::accept_step_if_unchanged`], is the same conditional UPDATE
//!   with every field the decision rested on in its WHERE (secret, enabled,
//!   activated, no failure, no lock) and the audit row in the same
//!   statement: a concurrent login re-checks it against the committed row
//!   and writes nothing.
//! * **An emailed code is used once.** [`Store::retire_email_code`] with
//!   `used_at` only updates a row whose `used_at IS NULL` (same re-check
//!   after the row lock), and only the caller whose update changed the row
//!   accepts the code.
//! * **A recovery code is used once.** [`Store::use_recovery_code`] is a
//!   `DELETE` of the row with that hash; a concurrent delete of the same row
//!   (PostgreSQL: waits on the row lock, then finds it gone) deletes nothing
//!   and returns false.
//! * **Caps hold.** A cap is a count followed by an insert
//!   ([`Store::count_mail_since`] then `enqueue_mail`,
//!   [`Store::count_requests`] then `insert_request`). Two transactions could
//!   both count below the cap and both insert, so in PostgreSQL the count
//!   first takes `pg_advisory_xact_lock` on a fixed key per cap kind, in its
//!   own statement: the next transaction waits until this one commits (the
//!   lock is held to the end of the transaction) and its count's fresh
//!   snapshot then includes the insert. SQLite: serial writer again.
//! * **Hosts and the fleet CA** change in single statements whose outcome
//!   is decided by a unique key (`INSERT … ON CONFLICT`), so two servers
//!   adding the same host name, or storing a CA at first start, cannot both
//!   succeed; [`Store::set_fleet_ca_if_absent`] keeps the first CA, and of
//!   two servers rotating at once ([`Store::add_fleet_ca`]) one adds the CA.
//! * **Nothing is reported before COMMIT**, and a job whose statement failed
//!   in PostgreSQL (which aborts the transaction) never reports success.
use common::proto::{AuditEntry, Method, RequestStatus};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database {path} is unusable: {why}")]
    Unusable { path: String, why: String },
    #[error("the database write was not committed")]
    NotCommitted,
    #[error("the database worker has stopped")]
    Gone,
    /// A plan made on records read beforehand ([`crate::core::auth::Prefetched`])
    /// needed another read: it is made again on the store.
    #[error("the login needs a read that was not made beforehand")]
    NotRead,
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("PostgreSQL error: {}", pg_error_text(.0))]
    Postgres(#[from] postgres::Error),
}

/// postgres' own Display says only "db error" or "error connecting to
/// server"; the reason is in its source.
fn pg_error_text(e: &postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// One enrolled (or once enrolled) user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// Resolved when an admin enables the user; a non-root PAM caller may
    /// only authenticate the user whose uid it runs as.
    pub uid: Option<u32>,
    pub method: Method,
    pub enabled: bool,
    pub email: Option<String>,
    /// Encrypted TOTP secret (see [`crate::core::crypto`]).
    pub secret: Option<Vec<u8>>,
    pub activated_at: Option<i64>,
    /// Highest TOTP step ever accepted: a step at or below it is a replay.
    pub last_step: Option<i64>,
    /// Consecutive failures towards the next lock (0 again when a lock starts).
    pub failures: u32,
    /// End of the current (or last) timed lock.
    pub locked_until: Option<i64>,
    /// Locks in a row since the last successful login (or unlock): each
    /// lasts twice as long as the one before.
    pub lock_periods: u32,
    /// Every failure since the last successful login, shown to the user at
    /// the next one and to the admin.
    pub failures_since_login: u32,
    /// Set when the account got the lock only `otpctl user unlock` lifts.
    pub admin_locked_at: Option<i64>,
    pub last_login: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// argon2id hash of the internal-account password (`otpctl user passwd`).
    pub password_hash: Option<String>,
    /// "totp" or "email": how the last successful login was made.
    pub last_method: Option<AuditMethod>,
    /// HOTP: the next counter the token should show; every counter below it
    /// is used. Never goes back while the secret stays the same.
    pub hotp_counter: Option<i64>,
    /// Digits of this user's codes when they are not `totp.digits` (an
    /// imported token); HOTP users always have them.
    pub digits: Option<u32>,
    /// The last refused code outside the TOTP window but within ten
    /// minutes: how far the authenticator's clock was off (seconds,
    /// positive: ahead) and when. Never the code itself.
    pub clock_drift_secs: Option<i64>,
    pub clock_drift_at: Option<i64>,
    /// Such refusals in a row (another failure sets it to 0; a successful
    /// login forgets the drift). At two the user is told to fix the clock.
    pub clock_drift_refusals: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EmailCode {
    pub id: i64,
    pub user: String,
    pub machine: String,
    pub address: String,
    /// Keyed hash (see `crate::core::email`); the code itself is never stored in clear.
    pub code_hash: Vec<u8>,
    /// The code encrypted under the key file, kept only while it may be re-sent.
    pub code_enc: Option<Vec<u8>>,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    /// "service sshd from 192.0.2.7 on ssh": where the request came from.
    pub origin: String,
    pub emergency: bool,
}

/// A queued message together with what rendering it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMail {
    pub id: i64,
    pub attempts: u32,
    pub to_addr: String,
    pub code: EmailCode,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailStats {
    pub queued: u64,
    pub failing: u64,
    pub sent_last_hour: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestCount<'a> {
    /// Every request, or only the pending ones.
    All {
        pending_only: bool,
    },
    PendingForUser(&'a str),
    /// Addresses compare without regard to case.
    PendingForAddress(&'a str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailCount<'a> {
    All,
    Address(&'a str),
    Code(i64),
}

/// Emergency requests and sessions are stored exactly as the admin
/// protocol shows them.
pub use common::proto::{RequestInfo as EmergencyRequest, SessionInfo as SessionRecord};

impl UserRecord {
    /// An enabled TOTP record with nothing else yet: no secret, never
    /// activated, no failures (what enabling or importing starts from).
    pub fn new(name: &str, uid: Option<u32>, now: i64) -> UserRecord {
        UserRecord {
            name: name.to_string(),
            uid,
            method: Method::Totp,
            enabled: true,
            email: None,
            secret: None,
            activated_at: None,
            last_step: None,
            failures: 0,
            locked_until: None,
            lock_periods: 0,
            failures_since_login: 0,
            admin_locked_at: None,
            last_login: None,
            created_at: now,
            updated_at: now,
            password_hash: None,
            last_method: None,
            hotp_counter: None,
            digits: None,
            clock_drift_secs: None,
            clock_drift_at: None,
            clock_drift_refusals: 0,
        }
    }

    pub fn is_locked(&self, now: i64) -> bool {
        self.admin_locked_at.is_some() || self.locked_until.is_some_and(|t| t > now)
    }

    /// Lifts any lock and starts the escalation over (`otpctl user unlock`).
    /// The failures since the last login are kept: the user is still told
    /// about them at the next successful login.
    pub fn unlock(&mut self) {
        self.failures = 0;
        self.locked_until = None;
        self.lock_periods = 0;
        self.admin_locked_at = None;
    }

    /// Forgets every failure and lock (a successful login, a new secret),
    /// and the clock drift the failures showed.
    pub fn clear_lockout(&mut self) {
        self.unlock();
        self.failures_since_login = 0;
        self.clock_drift_secs = None;
        self.clock_drift_at = None;
        self.clock_drift_refusals = 0;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewAudit {
    pub time: i64,
    pub user: String,
    pub service: String,
    pub rhost: Option<String>,
    pub tty: Option<String>,
    pub machine: String,
    pub method: AuditMethod,
    pub result: AuditResult,
    pub reason: String,
}

/// What an audit row is about: the way a login was (or would have been)
/// decided, or an administrator's, a limit's or a fleet host's doing.
/// Stored as the text of [`AuditMethod::as_str`]; a user's `last_method`
/// is one of the login methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditMethod {
    #[default]
    Totp,
    Hotp,
    Email,
    Recovery,
    Admin,
    Limit,
    Host,
}

impl AuditMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditMethod::Totp => "totp",
            AuditMethod::Hotp => "hotp",
            AuditMethod::Email => "email",
            AuditMethod::Recovery => "recovery",
            AuditMethod::Admin => "admin",
            AuditMethod::Limit => "limit",
            AuditMethod::Host => "host",
        }
    }

    pub fn parse(s: &str) -> Result<AuditMethod, StoreError> {
        [Self::Totp, Self::Hotp, Self::Email, Self::Recovery, Self::Admin, Self::Limit, Self::Host]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| StoreError::Corrupt(format!("audit method {s:?}")))
    }

    /// How a user's enrolled method is audited.
    pub fn of(m: Method) -> AuditMethod {
        match m {
            Method::Email => AuditMethod::Email,
            Method::Hotp => AuditMethod::Hotp,
            Method::Totp => AuditMethod::Totp,
        }
    }
}

/// What came of it. Stored as the text of [`AuditResult::as_str`]; an
/// administrator's row stores what was done (`Action`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuditResult {
    Accept,
    #[default]
    Deny,
    /// Refused before anything was decided (a host, a limit).
    Refused,
    Locked,
    NotEnrolled,
    Error,
    /// A pending enrollment's secret was shown.
    Shown,
    /// An emergency request waits for an administrator.
    Pending,
    CodeSent,
    CodeResent,
    /// A fleet host linked from a new address.
    Link,
    /// A fleet host renewed its certificate over its own link.
    Renewed,
    /// What an administrator did ("reset", "revoke host web01", ...).
    Action(String),
}

impl AuditResult {
    pub fn as_str(&self) -> &str {
        match self {
            AuditResult::Accept => "accept",
            AuditResult::Deny => "deny",
            AuditResult::Refused => "refused",
            AuditResult::Locked => "locked",
            AuditResult::NotEnrolled => "not_enrolled",
            AuditResult::Error => "error",
            AuditResult::Shown => "shown",
            AuditResult::Pending => "pending",
            AuditResult::CodeSent => "code_sent",
            AuditResult::CodeResent => "code_resent",
            AuditResult::Link => "link",
            AuditResult::Renewed => "renewed",
            AuditResult::Action(what) => what,
        }
    }
}

/// `text` in lower case for `LIKE '%' || x || '%' ESCAPE '\'`: its own
/// `%`, `_` and `\` match only themselves.
pub fn like_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What an audit page asks: every filter optional, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub user: Option<String>,
    pub machine: Option<String>,
    pub result: Option<String>,
    /// Unix seconds: at or after.
    pub since: Option<i64>,
    /// Unix seconds: before.
    pub until: Option<i64>,
    /// The page after one that ended at this id.
    pub before_id: Option<i64>,
    pub limit: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub users_total: u64,
    pub users_enabled: u64,
    pub users_activated: u64,
    pub users_locked: u64,
    pub audit_entries: u64,
}

/// What a fleet host's certificate lets it do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostRole {
    /// Relays PAM conversations (an agent).
    #[default]
    Agent,
    /// Runs otpctl remotely.
    Admin,
}

impl HostRole {
    pub fn as_str(self) -> &'static str {
        match self {
            HostRole::Agent => "agent",
            HostRole::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<HostRole, StoreError> {
        match s {
            "agent" => Ok(HostRole::Agent),
            "admin" => Ok(HostRole::Admin),
            other => Err(StoreError::Corrupt(format!("unknown host role {other:?}"))),
        }
    }
}

/// A host of the fleet, known by the fingerprint of the certificate it was issued.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostRecord {
    pub name: String,
    pub role: HostRole,
    /// SHA-256 of the certificate's DER.
    pub fingerprint: Vec<u8>,
    pub added_at: i64,
    pub revoked_at: Option<i64>,
    pub last_seen: Option<i64>,
    /// The source address of the host's last link (as a server saw it).
    pub last_addr: Option<String>,
    /// When its certificate (`fingerprint`) runs out; None: issued before
    /// otpd recorded it.
    pub expires_at: Option<i64>,
    /// SHA-256 of the CA certificate that issued it; None: issued before
    /// otpd recorded it (by the fleet's first CA).
    pub ca: Option<Vec<u8>>,
    /// When it was last renewed over its own link.
    pub renewed_at: Option<i64>,
    /// The certificate a renewal replaced, still accepted until
    /// `prev_until`: until the new one is first presented (and a few
    /// minutes more for conversations under way), so a host that could not
    /// store its new bundle is not locked out.
    pub prev_fingerprint: Option<Vec<u8>>,
    pub prev_until: Option<i64>,
}

/// How long the certificate a renewal replaced is still accepted once the
/// new one was presented: links made before the renewal finish their
/// conversations.
pub const PREV_GRACE: i64 = 600;

impl HostRecord {
    /// Whether certificate `fp` is this host's at `now`: not revoked, and its
    /// current certificate or the one its last renewal replaced (until
    /// `prev_until`).
    /// A link made before the certificate ran out is refused with it.
    pub fn accepts(&self, fp: &[u8], now: i64) -> bool {
        self.revoked_at.is_none()
            && ((self.fingerprint == fp && !self.expired(now))
                || (self.prev_fingerprint.as_deref() == Some(fp) && self.prev_until.is_some_and(|t| t > now)))
    }

    /// Not revoked, and its current certificate has not run out.
    pub fn valid(&self, now: i64) -> bool {
        self.revoked_at.is_none() && !self.expired(now)
    }

    /// Whether its current certificate ran out (then only a new bundle helps).
    pub fn expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|t| t < now)
    }

    /// Whether `fp` is the certificate a renewal replaced, no longer accepted.
    pub fn superseded(&self, fp: &[u8], now: i64) -> bool {
        self.fingerprint != fp && self.prev_fingerprint.as_deref() == Some(fp) && !self.accepts(fp, now)
    }
}

/// A fleet CA as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCa {
    pub id: i64,
    pub cert_pem: String,
    /// The CA's private key, sealed under the key file.
    pub key_sealed: Vec<u8>,
    /// When it was stored (0: stored before rotations existed).
    pub added_at: i64,
}

impl std::fmt::Debug for StoredCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCa").field("id", &self.id).field("added_at", &self.added_at).finish_non_exhaustive()
    }
}

/// A certificate issued to a host by a renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// The host's certificate that asked (its current one, or the one a
    /// renewal not yet taken up replaced), and when it runs out.
    pub presented: Vec<u8>,
    pub presented_until: i64,
    /// The new certificate.
    pub fingerprint: Vec<u8>,
    pub expires_at: i64,
    pub ca: Vec<u8>,
    pub now: i64,
}

/// What deciding what a login asks reads ([`crate::core::auth::plan`]): the part
/// of the store a plan can also be made on from records read beforehand
/// ([`crate::core::auth::Prefetched`]).
pub trait PlanReads {
    fn user(&mut self, name: &str) -> Result<Option<UserRecord>, StoreError>;
    /// The record of account `uid`: the enabled one if there is one (a uid
    /// has at most one enabled record; see `otpctl user enable`).
    fn user_by_uid(&mut self, uid: u32) -> Result<Option<UserRecord>, StoreError>;
    /// The enabled record whose name equals `name` ignoring ASCII case, if
    /// exactly one does (fleet hosts, whose uids mean nothing here).
    fn enabled_user_nocase(&mut self, name: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Whether `name` is a stored member of `group`.
    fn in_group(&mut self, group: &str, name: &str) -> Result<bool, StoreError>;
    /// Unsent mail for `user` that has failed at least once.
    fn failing_mail_for(&mut self, user: &str) -> Result<u64, StoreError>;
}

pub trait Store: PlanReads {
    /// Inserts or updates. `created_at` is kept from the first insert, and
    /// `last_step` never goes back while the secret stays the same (a stale
    /// copy of the record must not make a used step usable again).
    fn save_user(&mut self, user: &UserRecord) -> Result<(), StoreError>;
    /// Records TOTP `step` as used by `user` unless it (or a later step) already
    /// is: true for exactly one caller per step, whatever the interleaving.
    fn consume_step(&mut self, user: &str, step: i64) -> Result<bool, StoreError>;
    /// HOTP: records that the code for counter `matched` was used, moving the
    /// counter to `matched + 1`, unless the counter already is past it: true
    /// for exactly one caller per counter value, whatever the interleaving.
    fn consume_counter(&mut self, user: &str, matched: i64) -> Result<bool, StoreError>;
    fn users(&mut self) -> Result<Vec<UserRecord>, StoreError>;
    /// At most `limit` users by name, after `after`, whose name or address
    /// contains `search` (any case).
    fn users_page(
        &mut self,
        search: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UserRecord>, StoreError>;
    /// Replaces `user`'s recovery codes with `hashes` (all under `salt`;
    /// none: the user has no codes any more).
    fn set_recovery_codes(&mut self, user: &str, salt: &[u8], hashes: &[Vec<u8>]) -> Result<(), StoreError>;
    /// The salt of `user`'s recovery codes, if any are left.
    fn recovery_salt(&mut self, user: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Deletes `user`'s recovery code with that hash: true for exactly one
    /// caller per code, whatever the interleaving (the delete decides).
    fn use_recovery_code(&mut self, user: &str, hash: &[u8]) -> Result<bool, StoreError>;
    fn recovery_codes_left(&mut self, user: &str) -> Result<u64, StoreError>;
    /// Replaces the stored member names of `group` (read through NSS on the
    /// admin path, so that the login path decides `require_group` without NSS).
    fn set_group_members(&mut self, group: &str, names: &[String]) -> Result<(), StoreError>;
    fn add_audit(&mut self, entry: &NewAudit) -> Result<(), StoreError>;
    /// A row written late, at `received_at`: a refusal an agent spooled
    /// (entry `spool_id` of its spool), or a count about its spool (None);
    /// false when this host's `spool_id` is in the audit already (a
    /// resend) and nothing was written.
    fn add_late_audit(
        &mut self,
        entry: &NewAudit,
        received_at: i64,
        spool_id: Option<&str>,
    ) -> Result<bool, StoreError>;
    /// Deletes up to `limit` audit rows, and up to `limit` session records,
    /// older than `before` (a session by its end, or its start if it never
    /// ended); returns how many rows in all.
    fn prune_audit(&mut self, before: i64, limit: u32) -> Result<u64, StoreError>;
    /// Newest first.
    fn audit(
        &mut self,
        user: Option<&str>,
        machine: Option<&str>,
        since: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let q = AuditQuery {
            user: user.map(String::from),
            machine: machine.map(String::from),
            since,
            limit,
            ..Default::default()
        };
        self.audit_page(&q)
    }
    /// Newest first, one page of what `q` asks.
    fn audit_page(&mut self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
    fn counts(&mut self, now: i64) -> Result<Counts, StoreError>;
    fn schema_version(&mut self) -> Result<i64, StoreError>;

    /// Newest code for `user` issued on `machine` (any machine when `None`).
    fn latest_email_code(&mut self, user: &str, machine: Option<&str>) -> Result<Option<EmailCode>, StoreError>;
    fn insert_email_code(&mut self, code: &EmailCode) -> Result<i64, StoreError>;
    /// Forgets a code's encrypted copy and, with `used_at`, marks it used —
    /// only if it was not used yet. Returns whether this call changed the
    /// row: with `used_at`, true for exactly one caller per code.
    fn retire_email_code(&mut self, id: i64, used_at: Option<i64>) -> Result<bool, StoreError>;
    fn enqueue_mail(&mut self, code_id: i64, to: &str, now: i64) -> Result<i64, StoreError>;
    fn count_mail_since(&mut self, what: MailCount<'_>, since: i64) -> Result<u64, StoreError>;
    /// Claims up to `limit` messages due at `now` for this sender: they are
    /// not due again for [`MAIL_LEASE`] seconds, so two servers on one
    /// database never send the same message (unless the one that claimed it
    /// dies before `mail_sent`: then another sends it after the lease).
    fn due_mail(&mut self, now: i64, limit: u32) -> Result<Vec<QueuedMail>, StoreError>;
    fn mail_sent(&mut self, id: i64, now: i64) -> Result<(), StoreError>;
    fn mail_failed(&mut self, id: i64, next_attempt_at: i64, error: &str) -> Result<(), StoreError>;
    fn mail_stats(&mut self, now: i64) -> Result<MailStats, StoreError>;
    fn insert_request(&mut self, r: &EmergencyRequest) -> Result<i64, StoreError>;
    fn request(&mut self, id: i64) -> Result<Option<EmergencyRequest>, StoreError>;
    fn requests(&mut self, pending_only: bool) -> Result<Vec<EmergencyRequest>, StoreError>;
    /// How many requests match, however many `requests` shows.
    fn count_requests(&mut self, which: RequestCount<'_>) -> Result<u64, StoreError>;
    fn decide_request(&mut self, id: i64, status: RequestStatus, by: u32, now: i64) -> Result<(), StoreError>;
    fn open_session(&mut self, s: &SessionRecord) -> Result<i64, StoreError>;
    /// Closes the newest open session of `user` on `machine` (a host closes only its own).
    fn close_session(
        &mut self,
        user: &str,
        machine: &str,
        service: &str,
        pid: u32,
        now: i64,
    ) -> Result<u64, StoreError>;
    fn sessions(&mut self, limit: u32) -> Result<Vec<SessionRecord>, StoreError>;

    /// Adds a host. False (and nothing changed) if an unrevoked host has
    /// that name; a revoked one is replaced.
    fn add_host(&mut self, h: &HostRecord) -> Result<bool, StoreError>;
    fn host(&mut self, name: &str) -> Result<Option<HostRecord>, StoreError>;
    /// The host issued that certificate, revoked or not.
    fn host_by_fingerprint(&mut self, fp: &[u8]) -> Result<Option<HostRecord>, StoreError>;
    /// Every host, by name.
    fn hosts(&mut self) -> Result<Vec<HostRecord>, StoreError>;
    /// False if there is no such unrevoked host.
    fn revoke_host(&mut self, name: &str, now: i64) -> Result<bool, StoreError>;
    /// Records a link of `name` at `now` from `addr`.
    fn host_seen(&mut self, name: &str, now: i64, addr: &str) -> Result<(), StoreError>;
    /// Records a renewal of `name`, if `r.presented` is still one of its
    /// certificates and it is not revoked (compare-and-set: false
    /// otherwise). The presented certificate stays accepted until the new
    /// one is presented ([`Store::host_presented`]) or it runs out.
    fn renew_host(&mut self, name: &str, r: &Renewal) -> Result<bool, StoreError>;
    /// `fp`, the current certificate of `name`, was presented: the one its
    /// last renewal replaced is accepted until `until` at most.
    fn host_presented(&mut self, name: &str, fp: &[u8], until: i64) -> Result<bool, StoreError>;
    /// The fleet's CAs, oldest first (two during a rotation).
    fn fleet_cas(&mut self) -> Result<Vec<StoredCa>, StoreError>;
    /// Stores the first fleet CA unless one is stored already (then false,
    /// and the stored one stays: servers starting together agree on it).
    fn set_fleet_ca_if_absent(&mut self, cert_pem: &str, key_sealed: &[u8], now: i64) -> Result<bool, StoreError>;
    /// `ca rotate`: adds a CA beside the one there is; false (nothing
    /// added) if there are two already.
    fn add_fleet_ca(&mut self, cert_pem: &str, key_sealed: &[u8], now: i64) -> Result<bool, StoreError>;
    /// `ca retire`: deletes CA `id` if it is the older of two (false otherwise).
    fn retire_fleet_ca(&mut self, id: i64) -> Result<bool, StoreError>;
    /// Revokes every unrevoked host whose certificate `ca` issued (how many).
    fn revoke_hosts_of_ca(&mut self, ca: &[u8], now: i64) -> Result<u64, StoreError>;
    /// Certificates a renewal replaced are accepted until `now` at most.
    fn end_replaced_certificates(&mut self, now: i64) -> Result<u64, StoreError>;
    /// Records `ca` as the issuer of the hosts that have none on record
    /// (added before hosts recorded it: the first CA issued them).
    fn set_hosts_ca_if_unknown(&mut self, ca: &[u8]) -> Result<u64, StoreError>;
}

/// Seconds a claimed message is left to its sender (see [`Store::due_mail`]):
/// longer than one delivery attempt takes.
pub const MAIL_LEASE: i64 = 300;

/// A stored request status (the table's CHECK allows only these).
pub fn parse_status(s: &str) -> Result<RequestStatus, StoreError> {
    RequestStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("request status {s:?}")))
}

/// A stored method name (the table's CHECK allows only these).
pub fn parse_method(s: &str) -> Method {
    match s {
        "email" => Method::Email,
        "hotp" => Method::Hotp,
        _ => Method::Totp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The enums are stored as today's text: no migration, and rows written
    /// before them read back the same.
    #[test]
    fn audit_methods_and_results_are_stored_as_their_old_text() {
        let methods = [
            (AuditMethod::Totp, "totp"),
            (AuditMethod::Hotp, "hotp"),
            (AuditMethod::Email, "email"),
            (AuditMethod::Recovery, "recovery"),
            (AuditMethod::Admin, "admin"),
            (AuditMethod::Limit, "limit"),
            (AuditMethod::Host, "host"),
        ];
        for (m, text) in methods {
            assert_eq!(m.as_str(), text);
            assert_eq!(AuditMethod::parse(text).unwrap(), m);
        }
        assert!(matches!(AuditMethod::parse("TOTP"), Err(StoreError::Corrupt(_))));
        assert_eq!(AuditMethod::of(Method::Hotp), AuditMethod::Hotp);
        let results = [
            (AuditResult::Accept, "accept"),
            (AuditResult::Deny, "deny"),
            (AuditResult::Refused, "refused"),
            (AuditResult::Locked, "locked"),
            (AuditResult::NotEnrolled, "not_enrolled"),
            (AuditResult::Error, "error"),
            (AuditResult::Shown, "shown"),
            (AuditResult::Pending, "pending"),
            (AuditResult::CodeSent, "code_sent"),
            (AuditResult::CodeResent, "code_resent"),
            (AuditResult::Link, "link"),
            (AuditResult::Renewed, "renewed"),
            (AuditResult::Action("revoke host web01".into()), "revoke host web01"),
        ];
        for (r, text) in results {
            assert_eq!(r.as_str(), text);
        }
    }
}
