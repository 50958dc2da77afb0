//! Command lines of `otpd` and `otpctl`, in the library so the man pages
//! are generated from the same definitions (`otpd-man`).
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// The daemon behind pam_otp.so: owns the one-time-passcode secrets and decides every login.
///
/// otpd keeps the TOTP secrets (encrypted), emailed codes, lockouts and the audit trail in
/// its database, answers pam_otp.so on the PAM socket and otpctl(8) on the admin socket, and
/// mails codes through the configured SMTP relay. It runs in the foreground until SIGTERM or
/// SIGINT; under systemd it runs as otpd.service (Type=notify).
// The man page's NAME line is "otpd - <about>": the about must not repeat the name.
#[derive(Parser)]
#[command(name = "otpd", version, about)]
pub struct OtpdArgs {
    /// Configuration file.
    #[arg(long, short, default_value = common::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Validate the configuration file and exit (0 when valid).
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Parser)]
#[command(name = "otpctl", version, about = "Administer otpd: enrollments, lockouts, audit and status")]
pub struct Args {
    /// otpd configuration file (used to find the admin socket).
    #[arg(long, short, global = true, default_value = common::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Admin socket (overrides the configuration).
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Talk to a fleet server ("host:port") instead of the local admin socket;
    /// needs --bundle with admin credentials (`otpctl host add NAME --admin`).
    #[arg(long, global = true, env = "OTPCTL_SERVER")]
    pub server: Option<String>,
    /// Admin credentials for --server.
    #[arg(long, global = true, env = "OTPCTL_BUNDLE")]
    pub bundle: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Manage users.
    #[command(subcommand)]
    User(UserCmd),
    /// Show audit records, newest first.
    Audit {
        /// Only this user's records.
        #[arg(long)]
        user: Option<String>,
        /// Only this host's records (fleet).
        #[arg(long)]
        host: Option<String>,
        /// How far back: a duration ("1h", "2d") or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// At most this many records.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Daemon health and counts.
    Status,
    /// Emergency access requests.
    #[command(subcommand)]
    Request(RequestCmd),
    /// Sessions opened after an OTP login, newest first: user (email), host, service.
    Sessions {
        /// At most this many sessions.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Hosts of the fleet (on a server): their credentials and when each was last seen.
    #[command(subcommand)]
    Host(HostCmd),
    /// The fleet's CAs (on a server): status, rotation to a new CA, retirement of the old one.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Bring users over from another OTP system, already activated with their secrets.
    #[command(subcommand)]
    Import(ImportCmd),
    /// `[daemon] require_group`: the stored members logins are decided on.
    #[command(subcommand)]
    Group(GroupCmd),
}

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Read the members of require_group through NSS now and store them.
    Refresh,
}

#[derive(Subcommand)]
pub enum ImportCmd {
    /// pam_oath's users file (/etc/users.oath): HOTP/T30 lines become TOTP users, HOTP lines HOTP
    /// users with their counter; the code used last cannot be used again. Lines with a PIN, and
    /// malformed lines, are reported and skipped. One transaction; running it again changes nothing.
    Oath {
        file: PathBuf,
        /// Only report what would be imported.
        #[arg(long)]
        dry_run: bool,
    },
    /// Import ~/.google_authenticator files (TOTP) as activated users with the same secret, in one
    /// transaction; scratch codes become recovery codes. Default: every local user's file (NSS).
    GoogleAuthenticator {
        /// Files to import: PATH (the account of its owner) or USER=PATH.
        paths: Vec<String>,
        /// Say what would happen per user; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Delete each imported file, once the import is committed.
        #[arg(long)]
        remove_files: bool,
    },
}

#[derive(Subcommand)]
pub enum HostCmd {
    /// Issue credentials for a host: a bundle (CA certificate, the host's certificate and key) to copy
    /// to the host as /etc/otpd/host.bundle (mode 0600), shown once.
    Add {
        name: String,
        /// Credentials for `otpctl --server` (an administrator's machine), not for an agent.
        #[arg(long)]
        admin: bool,
        /// Write the bundle to this new file (mode 0600) instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Every host: role, when it was added and last seen, revoked or not.
    List,
    /// Refuse the host's certificate from now on, on every server.
    Revoke { name: String },
}

#[derive(Subcommand)]
pub enum CaCmd {
    /// Each CA: fingerprint, expiry, whether servers present it and issue with it, and how many
    /// hosts (agents, admin credentials) hold valid certificates of it.
    Status,
    /// Make a new CA: every server trusts it beside the current one and issues with it; hosts move
    /// to it as they renew (agents within [fleet] renew_check, admin credentials at their next use).
    Rotate,
    /// Drop the old CA once no host holds its certificates: servers then present and accept only
    /// the new one's.
    Retire {
        /// Retire it even though hosts still hold its certificates: they are revoked and each
        /// needs a new bundle (`otpctl host add`).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum RequestCmd {
    /// Pending requests (all with --all).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Send the emergency code.
    Approve { id: i64 },
    /// Refuse; nothing is sent.
    Deny { id: i64 },
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Require a passcode from USER; they enroll at their next login.
    ///
    /// `--group GROUP` or `--from-file FILE` enable many users (totp) in one
    /// transaction; those already enabled are left unchanged.
    Enable {
        #[arg(required_unless_present_any = ["group", "from_file"], conflicts_with_all = ["group", "from_file"])]
        user: Option<String>,
        /// Every member of GROUP now (its member list and the accounts whose primary group it is, through NSS).
        #[arg(long, conflicts_with = "from_file")]
        group: Option<String>,
        /// The users named in FILE, one per line (`#` comments and blank lines ignored).
        #[arg(long, value_name = "FILE")]
        from_file: Option<std::path::PathBuf>,
        /// totp: an authenticator app (QR at the next login); email: codes sent by mail.
        #[arg(long, value_enum, default_value = "totp")]
        method: MethodArg,
        /// Where emailed codes go (with --method email).
        #[arg(long)]
        email: Option<String>,
        /// Also print the otpauth:// URI (it contains the secret).
        #[arg(long)]
        print_uri: bool,
    },
    /// Stop requiring a passcode (lost device); the secret is erased.
    Disable { user: String },
    /// New secret; USER enrolls again at the next login.
    Reset {
        user: String,
        /// Also print the otpauth:// URI (it contains the secret).
        #[arg(long)]
        print_uri: bool,
    },
    /// Show USER's method, enrollment, failures, lockout and last login.
    Show { user: String },
    /// List every user known to otpd, one line each.
    List,
    /// Clear a lockout and the failure count.
    Unlock { user: String },
    /// A HOTP token ran ahead of the look-ahead window: give two consecutive codes from it (found
    /// within 1000 after the counter); the counter moves past them.
    Resync { user: String, code1: String, code2: String },
    /// Set the password of USER's otpd-internal account (read from stdin).
    Passwd { user: String },
    /// Print 10 new single-use recovery codes for USER (shown once), replacing any old ones.
    RecoveryCodes { user: String },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum MethodArg {
    Totp,
    Email,
}
