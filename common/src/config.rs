//! `/etc/otpd/otpd.toml`. Every key has a default, unknown keys are errors
//! (a typo must not silently weaken a setting), and values are range-checked
//! with a message that names the key.
use serde::{Deserialize, Deserializer, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid { path: String, key: &'static str, message: String },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// What this otpd is: a single host on its own database (the default),
    /// an agent that relays its host's logins to servers, or a server that
    /// decides for many hosts.
    pub role: Role,
    pub daemon: DaemonConfig,
    pub totp: TotpConfig,
    pub hotp: HotpConfig,
    pub lockout: LockoutConfig,
    pub email: EmailConfig,
    pub smtp: SmtpConfig,
    pub audit: AuditConfig,
    pub fleet: FleetConfig,
    pub web: WebConfig,
}

/// `role` (its definition is the protocol's: `status` reports it).
pub use crate::proto::Role;

/// `[fleet]`: how agents reach servers and servers listen for them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// Agent (and remote otpctl): servers as "host:port", tried in order.
    /// The host part must be a name or address in the server's certificate.
    pub servers: Vec<String>,
    /// Agent: the bundle `otpctl host add NAME` wrote on a server (CA
    /// certificate, this host's certificate and key): readable by otpd only.
    pub bundle: PathBuf,
    /// Agent: the host name this agent says it is; the server refuses (and
    /// audits) an agent whose certificate is another host's. Default: the
    /// name in the bundle.
    pub host: Option<String>,
    /// Agent: time to connect to one server and finish the TLS handshake
    /// before trying the next.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Server: addresses to listen on for agents and remote otpctl (TLS 1.3,
    /// client certificates required).
    pub listen: Vec<String>,
    /// Server: names and IP addresses its certificate carries; agents list
    /// the server by one of them. Default: the host name.
    pub names: Vec<String>,
    /// Server: database connections (PostgreSQL) working at once.
    pub db_connections: usize,
    /// Server: a user whose enrollment is pending sees the QR code and
    /// secret at a login on any agent host. Root on one compromised host
    /// could then read (and activate first) every pending enrollment of the
    /// fleet; with `false`, enrollment happens only on the servers' own PAM
    /// sockets or from the URI `otpctl user enable --print-uri` hands out.
    pub enroll_on_agents: bool,
    /// Server: conversations and session messages one host may start per
    /// minute, root's included (a token bucket of this size): a compromised
    /// host cannot fill the shared database.
    pub host_logins_per_minute: u32,
    /// Server: authenticated links open at once, agents' and remote
    /// otpctl's (each one file descriptor; an idle link costs a few tens of
    /// kB, docs/BENCHMARKS.md "Fleet scale"). An agent keeps at least one
    /// after a login: one per host of the fleet, and room for logins.
    pub max_links: usize,
    /// Agent: the logins it refused by itself (no server answered, a server
    /// lost mid-login, too busy) are kept in this file — user, service,
    /// remote host, terminal, time and why, never an answer — until a
    /// server takes them into the fleet's audit (marked late). Owner root,
    /// mode 0600, in a directory only root may write to.
    pub spool: PathBuf,
    /// Agent: at most this many refusals are kept; a full spool drops the
    /// oldest and counts them (the count reaches the audit too).
    pub spool_max: usize,
    /// Server: how long the host certificates it issues (`otpctl host add`,
    /// and each renewal) are valid. Agents renew theirs over their own link
    /// when two thirds of it have passed.
    #[serde(with = "duration")]
    pub host_certificate_life: Duration,
    /// Agent: how often it looks whether its certificate is due for renewal
    /// (a tenth of it at random is added, so agents started together do not
    /// ask together; a failed renewal is tried again sooner).
    #[serde(with = "duration")]
    pub renew_check: Duration,
}

/// Bounds of `[fleet] host_certificate_life`: at least a day (agents look
/// every `renew_check`, an hour by default, and need a few tries before
/// the last third has passed); at most the five years host certificates
/// were valid before they renewed themselves.
pub const HOST_CERTIFICATE_LIFE_MIN: Duration = Duration::from_secs(86_400);
pub const HOST_CERTIFICATE_LIFE_MAX: Duration = Duration::from_secs(5 * 365 * 86_400);

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            servers: Vec::new(),
            bundle: "/etc/otpd/host.bundle".into(),
            host: None,
            connect_timeout: Duration::from_secs(2),
            listen: Vec::new(),
            names: Vec::new(),
            db_connections: 8,
            enroll_on_agents: true,
            host_logins_per_minute: 6000,
            max_links: 16384,
            spool: "/var/lib/otpd/audit-spool.json".into(),
            spool_max: 1000,
            host_certificate_life: Duration::from_secs(30 * 86_400),
            renew_check: Duration::from_secs(3600),
        }
    }
}

/// `[web]`: the web console. otpd reads the socket, group, PAM service and
/// session lifetimes; otpweb reads the socket, listen addresses and its
/// certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// otpd opens its web socket only when this is true.
    pub enabled: bool,
    /// otpd's socket for otpweb (mode 0660, group `group`).
    pub socket: PathBuf,
    /// The group otpweb runs in: its members (and root) may connect to the
    /// socket. They still act only through a console session otpd issued.
    pub group: String,
    /// The PAM service otpd checks console passwords with.
    pub pam_service: String,
    /// A console session unused this long ends.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// A console session ends this long after its login, used or not.
    #[serde(with = "duration")]
    pub session_lifetime: Duration,
    /// Console logins (password checks) one browser address may start per minute.
    pub logins_per_minute: u32,
    /// Users may set their own emailed-code address on the self-service
    /// page (within `[email.emergency] allow_domains` when that is set).
    pub self_service_email: bool,
    /// otpweb: HTTPS addresses ("host:port"). Default loopback only.
    pub listen: Vec<String>,
    /// otpweb: certificate chain and key (PEM). Unset: a self-signed
    /// certificate is made at first start in `state_dir`.
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// otpweb: where the self-signed certificate is kept.
    pub state_dir: PathBuf,
    /// otpweb: the origin browsers reach the console at
    /// ("https://otp.example.org"); requests that change something must
    /// come from it. Default: https:// and the request's Host.
    pub origin: Option<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: false,
            socket: crate::web::DEFAULT_WEB_SOCKET.into(),
            group: "otpweb".into(),
            pam_service: "otpweb".into(),
            idle_timeout: Duration::from_secs(15 * 60),
            session_lifetime: Duration::from_secs(8 * 3600),
            logins_per_minute: 10,
            self_service_email: false,
            listen: vec!["127.0.0.1:8443".into()],
            certificate: None,
            key: None,
            state_dir: "/var/lib/otpweb".into(),
            origin: None,
        }
    }
}

/// `database` names a PostgreSQL database rather than a SQLite file.
pub fn is_postgres_url(database: &Path) -> bool {
    database.to_str().is_some_and(|d| d.starts_with("postgresql://") || d.starts_with("postgres://"))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    pub pam_socket: PathBuf,
    pub admin_socket: PathBuf,
    pub database: PathBuf,
    pub key_file: PathBuf,
    /// File whose first line identifies this machine (binds audit entries and
    /// emailed codes to the host).
    pub machine_id: PathBuf,
    /// Members of this group may use the admin socket besides root.
    pub admin_group: String,
    /// Connections open at once on the PAM socket. Every connection is
    /// accepted at once (none waits in the kernel backlog behind idle ones)
    /// and closed when over this limit.
    pub max_connections: usize,
    /// Connections open at once from one non-root uid (screen lockers, `su`);
    /// root callers (login, sshd, sudo) count only towards `max_connections`.
    pub max_connections_per_user: usize,
    /// Conversations one caller other than root may start per minute (token
    /// bucket: this many at once, then refilled at this rate). The caller is
    /// the real uid: the user who ran `su`/`sudo`, not the setuid root.
    pub caller_logins_per_minute: u32,
    /// Conversations in progress at once started by one caller other than root.
    pub caller_max_logins: usize,
    /// Conversations in progress at once for one target user, started by
    /// callers other than root.
    pub target_max_logins: usize,
    /// Connections that conversations started by callers other than root
    /// may never take: logins started by root (login, sshd) keep them.
    /// Default: a quarter of `max_connections`.
    pub reserved_connections: Option<usize>,
    /// How long a peer may take to send a whole frame once it started one,
    /// and to send its first message after connecting.
    #[serde(with = "duration")]
    pub io_timeout: Duration,
    /// How long the daemon waits for a user to answer a prompt.
    #[serde(with = "duration")]
    pub prompt_timeout: Duration,
    /// Offer `org.otpd.Admin1` on the system bus.
    pub dbus: bool,
    /// Members of this group who are not enrolled are refused at login
    /// instead of passed over. The members are read through NSS on the
    /// admin path (`otpctl group refresh`, after bulk enables, at start and
    /// hourly) and kept in the database; logins never ask NSS.
    pub require_group: Option<String>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            pam_socket: crate::DEFAULT_PAM_SOCKET.into(),
            admin_socket: crate::DEFAULT_ADMIN_SOCKET.into(),
            database: "/var/lib/otpd/otpd.db".into(),
            key_file: "/var/lib/otpd/secret.key".into(),
            machine_id: "/etc/machine-id".into(),
            admin_group: "otpadmin".into(),
            max_connections: 4096,
            max_connections_per_user: 16,
            caller_logins_per_minute: 30,
            caller_max_logins: 8,
            target_max_logins: 16,
            reserved_connections: None,
            io_timeout: Duration::from_secs(5),
            prompt_timeout: Duration::from_secs(180),
            dbus: true,
            require_group: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Algorithm {
    SHA1,
    SHA256,
    SHA512,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TotpConfig {
    /// Shown in authenticator apps; `%hostname%` is replaced by the host name.
    pub issuer: String,
    pub digits: u32,
    /// Seconds per step.
    pub period: u64,
    pub algorithm: Algorithm,
    /// Steps accepted either side of now.
    pub skew: u8,
}

impl Default for TotpConfig {
    fn default() -> Self {
        TotpConfig { issuer: "%hostname%".into(), digits: 6, period: 30, algorithm: Algorithm::SHA1, skew: 1 }
    }
}

/// `[hotp]`: counter-based codes (RFC 4226), for hardware tokens imported
/// from pam_oath. Digits come from each user's token (stored with it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HotpConfig {
    /// Look-ahead: a code for counter c..=c+window is accepted (buttons
    /// pressed without logging in move the token ahead of the server).
    pub window: u32,
}

impl Default for HotpConfig {
    fn default() -> Self {
        HotpConfig { window: 10 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LockoutConfig {
    /// Consecutive failures that lock the account.
    pub max_failures: u32,
    /// The first lock; each further lock in a row (no successful login in
    /// between) lasts twice as long as the one before.
    #[serde(with = "duration")]
    pub lock_for: Duration,
    /// Locks in a row after which the account stays locked until
    /// `otpctl user unlock`: at most `max_failures × max_lock_periods`
    /// guesses between two successful logins (NIST SP 800-63B: at most 100).
    pub max_lock_periods: u32,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        LockoutConfig { max_failures: 10, lock_for: Duration::from_secs(15 * 60), max_lock_periods: 10 }
    }
}

/// The longest timed lock a configuration may produce: the doubling must
/// stay a time a person can reason about (and far from overflowing).
pub const MAX_TIMED_LOCK: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

impl LockoutConfig {
    /// How long lock number `period` (1-based) of a row lasts; `None` for the
    /// last one, which only an administrator lifts.
    pub fn lock_duration(&self, period: u32) -> Option<Duration> {
        if period >= self.max_lock_periods {
            return None;
        }
        let factor = 1u32 << period.saturating_sub(1).min(31);
        Some(self.lock_for.saturating_mul(factor).min(MAX_TIMED_LOCK))
    }
}

/// How a user who pressed Enter at the passcode prompt gets a code.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AutoSend {
    /// Straight to the address on record.
    Directory,
    /// The user types the address; it must match the record.
    None,
    /// The user logs in to an otpd-internal account (`otpctl user passwd`).
    Internal,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// Requests outside `allow_domains` wait for `otpctl request approve`.
    Admin,
    /// Requests outside `allow_domains` are refused.
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EmergencyConfig {
    pub enabled: bool,
    /// Addresses in these domains get an emergency code at once.
    pub allow_domains: Vec<String>,
    pub approval: Approval,
    /// Requests waiting for an admin, per user and per address; more are refused.
    pub max_pending_per_user: u32,
    pub max_pending_per_address: u32,
}

impl Default for EmergencyConfig {
    fn default() -> Self {
        EmergencyConfig {
            enabled: true,
            allow_domains: Vec::new(),
            approval: Approval::Admin,
            max_pending_per_user: 3,
            max_pending_per_address: 3,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    pub enabled: bool,
    /// Digits of an emailed code.
    pub digits: u32,
    /// TOTP users may also ask for an emailed code (lost phone).
    pub fallback: bool,
    #[serde(with = "duration")]
    pub code_ttl: Duration,
    /// A new code for the same user on this machine at most this often.
    #[serde(with = "duration")]
    pub new_code_interval: Duration,
    /// Re-sending the same code, per code and hour.
    pub resends_per_hour: u32,
    /// Messages to one address per hour.
    pub per_address_per_hour: u32,
    /// Messages from this daemon per hour.
    pub global_per_hour: u32,
    pub auto_send: AutoSend,
    /// Where addresses come from when the admin set none:
    /// `file:/etc/otpd/emails` (lines "user address"), `gecos`, or `none`.
    pub directory: String,
    pub emergency: EmergencyConfig,
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            enabled: true,
            digits: 8,
            fallback: false,
            code_ttl: Duration::from_secs(30 * 60),
            new_code_interval: Duration::from_secs(3600),
            resends_per_hour: 5,
            per_address_per_hour: 10,
            global_per_hour: 1000,
            auto_send: AutoSend::Directory,
            directory: "file:/etc/otpd/emails".into(),
            emergency: EmergencyConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// `smtp://host:port` (STARTTLS required), `smtps://host:port` (TLS),
    /// `smtp+plain://host:port` (no TLS: only if you mean it), or `file:DIR`
    /// (writes .eml files; for demos and tests).
    pub url: String,
    pub from: String,
    /// Extra CA certificate (PEM) trusted for the SMTP server.
    pub ca_file: Option<PathBuf>,
    /// File holding `username:password` (must not be readable by others).
    pub credentials_file: Option<PathBuf>,
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            url: "smtp://localhost:25".into(),
            from: "otpd <otpd@localhost>".into(),
            ca_file: None,
            credentials_file: None,
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Audit rows older than this are deleted (at start and every hour).
    #[serde(with = "duration")]
    pub retention: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { retention: Duration::from_secs(365 * 86400) }
    }
}

impl DaemonConfig {
    /// Slots conversations started by callers other than root may hold.
    pub fn unprivileged_connections(&self) -> usize {
        self.max_connections - self.reserved_connections.unwrap_or(self.max_connections / 4)
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::parse(&text, path)
    }

    /// Parses and validates. `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let cfg: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: shown.clone(), message: describe_toml_error(text, &e) })?;
        cfg.validate(&shown)?;
        Ok(cfg)
    }

    /// Every check in turn; the first value out of range is the error.
    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        self.validate_codes(path)?;
        self.validate_lockout(path)?;
        self.validate_email_and_smtp(path)?;
        self.validate_limits(path)?;
        self.validate_paths(path)?;
        self.validate_role(path)?;
        self.validate_fleet(path)?;
        self.validate_web(path)
    }

    /// `[web]`: lifetimes, addresses, the certificate pair, the origin.
    fn validate_web(&self, path: &str) -> Result<(), ConfigError> {
        let bad = rejecter(path);
        let w = &self.web;
        if w.idle_timeout < Duration::from_secs(60) || w.idle_timeout > w.session_lifetime {
            return bad("web.idle_timeout", "must be at least 1m and no longer than web.session_lifetime".into());
        }
        if w.session_lifetime > Duration::from_secs(7 * 86400) {
            return bad("web.session_lifetime", "must be at most 7 days".into());
        }
        if w.logins_per_minute == 0 {
            return bad("web.logins_per_minute", "must be at least 1".into());
        }
        if let Some(s) = w.listen.iter().find(|s| split_host_port(s).is_none()) {
            return bad("web.listen", format!("{s:?}: use host:port (or [v6]:port)"));
        }
        if w.certificate.is_some() != w.key.is_some() {
            return bad("web.certificate", "set both web.certificate and web.key, or neither".into());
        }
        if let Some(o) = &w.origin {
            let ok = o.strip_prefix("https://").is_some_and(|h| !h.is_empty() && !h.contains(['/', ' ', '?', '#']));
            if !ok {
                return bad("web.origin", format!("{o:?}: write it as https://host[:port], nothing after"));
            }
        }
        if w.group.is_empty() || w.pam_service.is_empty() || w.pam_service.contains('/') {
            return bad("web.group/pam_service", "must be non-empty names".into());
        }
        Ok(())
    }

    /// `[totp]` and `[hotp]`: code length, step, skew, look-ahead, issuer.
    fn validate_codes(&self, path: &str) -> Result<(), ConfigError> {
        let bad = rejecter(path);
        if !(6..=8).contains(&self.totp.digits) {
            return bad("totp.digits", format!("{} is out of range (6 to 8)", self.totp.digits));
        }
        if !(15..=300).contains(&self.totp.period) {
            return bad("totp.period", format!("{} is out of range (15 to 300 seconds)", self.totp.period));
        }
        if self.totp.skew > 10 {
            return bad("totp.skew", format!("{} is out of range (0 to 10 steps)", self.totp.skew));
        }
        if self.hotp.window > 100 {
            return bad("hotp.window", format!("{} is out of range (0 to 100 codes ahead)", self.hotp.window));
        }
        if self.totp.issuer.is_empty() || self.totp.issuer.contains(':') || self.totp.issuer.len() > 64 {
            return bad("totp.issuer", "must be 1 to 64 characters without ':'".into());
        }
        Ok(())
    }

    /// `[lockout]`: failures before a lock, its length, and how far it may double.
    fn validate_lockout(&self, path: &str) -> Result<(), ConfigError> {
        let bad = rejecter(path);
        if self.lockout.max_failures == 0 {
            return bad("lockout.max_failures", "must be at least 1".into());
        }
        if self.lockout.lock_for < Duration::from_secs(1) {
            return bad("lockout.lock_for", "must be at least 1s".into());
        }
        if !(1..=100).contains(&self.lockout.max_lock_periods) {
            return bad(
                "lockout.max_lock_periods",
                format!(
                    "{} is out of range (1 to 100 locks in a row; the last one is lifted only by `otpctl user unlock`)",
                    self.lockout.max_lock_periods
                ),
            );
        }
        // The longest timed lock is lock number max_lock_periods - 1.
        let longest = self.lockout.lock_for.as_secs_f64() * 2f64.powi(self.lockout.max_lock_periods as i32 - 2);
        if self.lockout.max_lock_periods >= 2 && longest > MAX_TIMED_LOCK.as_secs_f64() {
            return bad(
                "lockout.max_lock_periods",
                format!(
                    "with lock_for = {} the lock before the last would last {:.0} days (doubling {} times); \
                     the limit is 3660 days: lower max_lock_periods or lock_for",
                    humantime::format_duration(self.lockout.lock_for),
                    longest / 86400.0,
                    self.lockout.max_lock_periods - 2
                ),
            );
        }
        Ok(())
    }

    /// `[email]` codes, hourly caps and directory; the `[smtp]` URL.
    fn validate_email_and_smtp(&self, path: &str) -> Result<(), ConfigError> {
        let bad = rejecter(path);
        let e = &self.email;
        if !(6..=10).contains(&e.digits) {
            return bad("email.digits", format!("{} is out of range (6 to 10)", e.digits));
        }
        if e.code_ttl < Duration::from_secs(60) || e.code_ttl > Duration::from_secs(24 * 3600) {
            return bad("email.code_ttl", "must be between 1m and 24h".into());
        }
        if e.resends_per_hour == 0 || e.per_address_per_hour == 0 || e.global_per_hour == 0 {
            return bad("email.*_per_hour", "hourly caps must be at least 1".into());
        }
        let dir_ok = e.directory == "gecos"
            || e.directory == "none"
            || e.directory.strip_prefix("file:").is_some_and(|p| p.starts_with('/'));
        if !dir_ok {
            return bad("email.directory", format!("{:?}: use file:/absolute/path, gecos or none", e.directory));
        }
        let url_ok = ["smtp://", "smtps://", "smtp+plain://"].iter().any(|p| self.smtp.url.starts_with(p))
            || self.smtp.url.strip_prefix("file:").is_some_and(|p| p.starts_with('/'));
        if !url_ok {
            return bad("smtp.url", format!("{:?}: use smtp://, smtps://, smtp+plain:// or file:/dir", self.smtp.url));
        }
        Ok(())
    }

    /// Connection and login caps, audit retention, emergency requests, the I/O timeout.
    fn validate_limits(&self, path: &str) -> Result<(), ConfigError> {
        let bad = rejecter(path);
        if self.daemon.max_connections == 0 {
            return bad("daemon.max_connections", "must be at least 1".into());
        }
        if self.daemon.max_connections_per_user == 0 {
            return bad("daemon.max_connections_per_user", "must be at least 1".into());
        }
        if self.daemon.caller_logins_per_minute == 0 {
            return bad("daemon.caller_logins_per_minute", "must be at least 1".into());
        }
        if self.daemon.caller_max_logins == 0 || self.daemon.target_max_logins == 0 {
            return bad("daemon.*_max_logins", "must be at least 1".into());
        }
        if self.daemon.reserved_connections.is_some_and(|r| r >= self.daemon.max_connections) {
            return bad("daemon.reserved_connections", "must be less than max_connections".into());
        }
        if self.audit.retention < Duration::from_secs(86400) {
            return bad("audit.retention", "must be at least 1d".into());
        }
        if self.email.emergency.max_pending_per_user == 0 || self.email.emergency.max_pending_per_address == 0 {
            return bad("email.emergency.max_pending_per_*", "must be at least 1".into());
        }
        if self.daemon.io_timeout < Duration::from_millis(100) {
            return bad("daemon.io_timeout", "must be at least 100ms".into());
        }
        Ok(())
    }

    /// Sockets, key file and database: absolute paths (or a PostgreSQL URL).
    fn validate_paths(&self, path: &str) -> Result<(), ConfigError> {
        let bad = rejecter(path);
        for (key, p) in [
            ("daemon.pam_socket", &self.daemon.pam_socket),
            ("daemon.admin_socket", &self.daemon.admin_socket),
            ("daemon.key_file", &self.daemon.key_file),
        ] {
            if !p.is_absolute() {
                return bad(key, format!("{} must be an absolute path", p.display()));
            }
        }
        let postgres = is_postgres_url(&self.daemon.database);
        if !postgres && !self.daemon.database.is_absolute() {
            return bad(
                "daemon.database",
                format!("{} must be an absolute path or a postgresql:// URL", self.daemon.database.display()),
            );
        }
        Ok(())
    }

    /// What each role needs: SQLite for standalone, servers for an agent, addresses for a server.
    fn validate_role(&self, path: &str) -> Result<(), ConfigError> {
        let bad = rejecter(path);
        let f = &self.fleet;
        let postgres = is_postgres_url(&self.daemon.database);
        match self.role {
            Role::Standalone if postgres => {
                return bad(
                    "daemon.database",
                    "PostgreSQL is for role = \"server\"; a standalone otpd uses SQLite".into(),
                )
            }
            Role::Agent => {
                if f.servers.is_empty() {
                    return bad("fleet.servers", "an agent needs at least one server (\"host:port\")".into());
                }
                if !f.bundle.is_absolute() {
                    return bad("fleet.bundle", format!("{} must be an absolute path", f.bundle.display()));
                }
                if !f.spool.is_absolute() || f.spool.file_name().is_none() {
                    return bad("fleet.spool", format!("{} must be an absolute path to a file", f.spool.display()));
                }
            }
            Role::Server if f.listen.is_empty() => {
                return bad(
                    "fleet.listen",
                    "a server needs at least one address to listen on (\"0.0.0.0:7443\")".into(),
                )
            }
            _ => {}
        }
        Ok(())
    }

    /// `[fleet]`: addresses, connect timeout (within pam_otp's), per-host rate, pool size.
    fn validate_fleet(&self, path: &str) -> Result<(), ConfigError> {
        let bad = rejecter(path);
        let f = &self.fleet;
        for s in f.servers.iter().chain(&f.listen) {
            if split_host_port(s).is_none() {
                return bad("fleet.servers/listen", format!("{s:?}: use host:port (or [v6]:port)"));
            }
        }
        if f.connect_timeout < Duration::from_millis(100) || f.connect_timeout > Duration::from_secs(30) {
            return bad("fleet.connect_timeout", "must be between 100ms and 30s".into());
        }
        // Every server may be tried within one module timeout.
        let worst = f.connect_timeout * f.servers.len().max(1) as u32;
        if self.role == Role::Agent && worst >= Duration::from_secs(crate::DEFAULT_MODULE_TIMEOUT_SECS) {
            return bad(
                "fleet.connect_timeout",
                format!(
                    "{} servers x {} = {} is not below pam_otp's timeout of {} s: a login would time out before the last server is tried",
                    f.servers.len(),
                    humantime::format_duration(f.connect_timeout),
                    humantime::format_duration(worst),
                    crate::DEFAULT_MODULE_TIMEOUT_SECS
                ),
            );
        }
        if f.host_logins_per_minute == 0 {
            return bad("fleet.host_logins_per_minute", "must be at least 1".into());
        }
        if !(1..=1_000_000).contains(&f.max_links) {
            return bad("fleet.max_links", format!("{} is out of range (1 to 1000000)", f.max_links));
        }
        if !(1..=100_000).contains(&f.spool_max) {
            return bad("fleet.spool_max", format!("{} is out of range (1 to 100000)", f.spool_max));
        }
        if !(1..=256).contains(&f.db_connections) {
            return bad("fleet.db_connections", format!("{} is out of range (1 to 256)", f.db_connections));
        }
        if !(HOST_CERTIFICATE_LIFE_MIN..=HOST_CERTIFICATE_LIFE_MAX).contains(&f.host_certificate_life) {
            return bad("fleet.host_certificate_life", "must be between 1 day and 5 years (\"30d\")".into());
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&f.renew_check) {
            return bad("fleet.renew_check", "must be between 1s and 1 day (\"1h\")".into());
        }
        Ok(())
    }
}

/// The error for a value of `key` in the file at `path`.
fn rejecter(path: &str) -> impl Fn(&'static str, String) -> Result<(), ConfigError> + '_ {
    move |key, message| Err(ConfigError::Invalid { path: path.to_string(), key, message })
}

/// "host:port" or "[v6]:port" → (host, port).
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
    (!host.is_empty() && !host.contains(['/', ' '])).then_some((host, port))
}

/// toml's messages carry a span; turn it into "line N" and keep the text.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {msg}")
        }
        None => msg,
    }
}

/// Durations are written as humans write them: "30m", "1h 30m", "90s".
pub mod duration {
    use super::*;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn module_waits_longer_than_the_daemons_slowest_step() {
        // The module's per-reply deadline must outlast the daemon's own
        // deadlines, or a slow-but-fine login would fail in the module.
        let d = DaemonConfig::default();
        assert!(d.io_timeout < Duration::from_secs(crate::DEFAULT_MODULE_TIMEOUT_SECS));
    }

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("test.toml"))
    }

    #[test]
    fn roles_need_their_fleet_settings() {
        assert_eq!(parse("").unwrap().role, Role::Standalone);
        let agent =
            parse("role = \"agent\"\n[fleet]\nservers = [\"otp1.example.org:7443\", \"[::1]:7443\"]\n").unwrap();
        assert_eq!(agent.role, Role::Agent);
        let err = |s: &str| parse(s).unwrap_err().to_string();
        assert!(err("role = \"agent\"").contains("fleet.servers"));
        assert!(err("role = \"server\"").contains("fleet.listen"));
        assert!(err("role = \"agent\"\n[fleet]\nservers = [\"otp1\"]").contains("host:port"));
        // Host certificate life and the agent's renewal check: defaults and bounds.
        assert_eq!(agent.fleet.host_certificate_life, Duration::from_secs(30 * 86_400));
        assert_eq!(agent.fleet.renew_check, Duration::from_secs(3600));
        let fleet = |kv: &str| format!("role = \"agent\"\n[fleet]\nservers = [\"otp1:7443\"]\n{kv}\n");
        assert_eq!(
            parse(&fleet("host_certificate_life = \"7d\"")).unwrap().fleet.host_certificate_life.as_secs(),
            7 * 86_400
        );
        for bad in ["host_certificate_life = \"23h\"", "host_certificate_life = \"6years\""] {
            assert!(err(&fleet(bad)).contains("fleet.host_certificate_life"), "{bad}");
        }
        assert_eq!(parse(&fleet("renew_check = \"1s\"")).unwrap().fleet.renew_check, Duration::from_secs(1));
        for bad in ["renew_check = \"0s\"", "renew_check = \"2d\""] {
            assert!(err(&fleet(bad)).contains("fleet.renew_check"), "{bad}");
        }
        assert!(err("role = \"relay\"").contains("line 1"));
        // PostgreSQL only for servers; a server may use either.
        let pg = "[daemon]\ndatabase = \"postgresql://otp@%2Ftmp:5432/otpd\"\n";
        assert!(err(pg).contains("role = \"server\""));
        let server = format!("role = \"server\"\n{pg}[fleet]\nlisten = [\"127.0.0.1:7443\"]\n");
        assert!(is_postgres_url(&parse(&server).unwrap().daemon.database));
        assert!(err("[daemon]\ndatabase = \"relative.db\"").contains("absolute"));
        assert_eq!(split_host_port("[::1]:7443"), Some(("::1", 7443)));
        assert_eq!(split_host_port("a.example:0"), None);
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = parse("").ok();
        assert_eq!(c, Some(Config::default()));
    }

    #[test]
    fn shipped_example_states_the_defaults() {
        let c = parse(include_str!("../../packaging/otpd.toml")).ok();
        assert_eq!(c, Some(Config::default()));
    }

    #[test]
    fn shipped_role_examples_parse_with_their_role() {
        let server = parse(include_str!("../../packaging/examples/otpd-server.toml")).unwrap();
        assert_eq!(server.role, Role::Server);
        assert!(!server.fleet.listen.is_empty() && !server.fleet.names.is_empty());
        let agent = parse(include_str!("../../packaging/examples/otpd-agent.toml")).unwrap();
        assert_eq!(agent.role, Role::Agent);
        assert!(agent.fleet.servers.len() >= 2, "the example shows failover order");
        assert_eq!(agent.fleet.bundle, FleetConfig::default().bundle);
        // Each PostgreSQL line the server example shows commented out is
        // valid as written (one at a time: they are alternatives).
        let example = include_str!("../../packaging/examples/otpd-server.toml");
        let sqlite = example.replacen("database = \"/var/lib/otpd/otpd.db\"\n", "", 1);
        let commented: Vec<&str> = example.lines().filter(|l| l.starts_with("# database = ")).collect();
        assert_eq!(commented.len(), 2, "a Unix socket and a verified TLS URL");
        for line in commented {
            let pg = sqlite.replacen(&format!("{line}\n"), &format!("{}\n", &line[2..]), 1);
            let url = parse(&pg).unwrap().daemon.database;
            assert!(is_postgres_url(&url), "{line}");
        }
    }

    #[test]
    fn durations_and_values() {
        let c =
            parse("[lockout]\nmax_failures = 3\nlock_for = \"1h 30m\"\n[totp]\nalgorithm = \"SHA512\"\ndigits = 8\n");
        let c = c.ok().unwrap_or_default();
        assert_eq!(c.lockout.lock_for, Duration::from_secs(5400));
        assert_eq!(c.lockout.max_failures, 3);
        assert_eq!(c.totp.algorithm, Algorithm::SHA512);
    }

    #[test]
    fn lock_periods_double_and_the_last_needs_an_admin() {
        let l = LockoutConfig::default();
        let minutes: Vec<Option<u64>> = (1..=10).map(|p| l.lock_duration(p).map(|d| d.as_secs() / 60)).collect();
        let doubled: Vec<Option<u64>> = (0..9).map(|k| Some(15 << k)).chain([None]).collect();
        assert_eq!(minutes, doubled);
        assert_eq!(l.lock_duration(11), None);
        let one = LockoutConfig { max_lock_periods: 1, ..LockoutConfig::default() };
        assert_eq!(one.lock_duration(1), None, "max_lock_periods = 1: the first lock is the admin's");
        // The largest valid setting stays within the cap.
        let c = parse("[lockout]\nlock_for = \"1d\"\nmax_lock_periods = 13\n").ok().unwrap_or_default();
        assert_eq!(c.lockout.lock_duration(12), Some(Duration::from_secs(2048 * 86400)));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse("[totp]\ndigits = 6\nperiods = 30\n").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("periods"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("[totp]\ndigits = 5", "totp.digits"),
            ("[totp]\nperiod = 1", "totp.period"),
            ("[lockout]\nmax_failures = 0", "lockout.max_failures"),
            ("[lockout]\nmax_lock_periods = 0", "lockout.max_lock_periods"),
            ("[lockout]\nmax_lock_periods = 101", "lockout.max_lock_periods"),
            ("[lockout]\nlock_for = \"1d\"\nmax_lock_periods = 14", "lockout.max_lock_periods"),
            ("[daemon]\npam_socket = \"relative.sock\"", "daemon.pam_socket"),
            ("[daemon]\nmax_connections = 8\nreserved_connections = 8", "daemon.reserved_connections"),
            ("[daemon]\ncaller_logins_per_minute = 0", "daemon.caller_logins_per_minute"),
            ("[audit]\nretention = \"1h\"", "audit.retention"),
            ("[email]\nemergency = { max_pending_per_user = 0 }", "email.emergency.max_pending_per_*"),
            ("[fleet]\nspool_max = 0", "fleet.spool_max"),
            ("[fleet]\nspool_max = 100001", "fleet.spool_max"),
            ("role = \"agent\"\n[fleet]\nservers = [\"a:1\"]\nspool = \"spool.json\"", "fleet.spool"),
        ] {
            let err = parse(text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(key), "{text}: {err}");
        }
        let err = parse("[lockout]\nlock_for = \"soon\"").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("line 2") && err.contains("soon"), "{err}");
    }
}
