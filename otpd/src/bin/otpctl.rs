//! otpctl — administer otpd: enrollments, lockouts, audit, status.
//!
//! Exit codes: 0 done; 1 the daemon failed the request; 2 usage error;
//! 3 no such user; 4 permission denied; 5 daemon unreachable; 6 invalid input.
#![warn(clippy::too_many_lines)]
#![cfg_attr(test, allow(clippy::too_many_lines))]
use clap::Parser;
use common::client::{Client, ClientError};
use common::config::Config;
use common::proto::{
    AdminErrorKind, AdminRequest, AdminResponse, AuditEntry, BulkUser, CaInfo, HostInfo, ImportOutcome, Method,
    RequestInfo, SessionInfo, StatusInfo, UserInfo,
};
use otpd::cli::{Args, CaCmd, Cmd, GroupCmd, HostCmd, ImportCmd, MethodArg, RequestCmd, UserCmd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `otpctl … | head` closes stdout early. std's println! panics on that
/// (exit 101 and a backtrace hint); a reader that has seen enough is not an
/// error, so stop quietly with 0. Shadows std's println! in this file.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            stdout_failed(e)
        }
    }};
}

fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("otpctl: writing the output failed: {e}");
    std::process::exit(EXIT_DAEMON.into())
}

const EXIT_DAEMON: u8 = 1;
const EXIT_NOT_FOUND: u8 = 3;
const EXIT_PERMISSION: u8 = 4;
const EXIT_UNREACHABLE: u8 = 5;
const EXIT_INVALID: u8 = 6;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("otpctl: {msg}");
            ExitCode::from(code)
        }
    }
}

fn socket_path(args: &Args) -> Result<PathBuf, (u8, String)> {
    if let Some(s) = &args.socket {
        return Ok(s.clone());
    }
    if !args.config.exists() && args.config.as_path() == std::path::Path::new(common::DEFAULT_CONFIG) {
        return Ok(common::DEFAULT_ADMIN_SOCKET.into());
    }
    Config::load(&args.config).map(|c| c.daemon.admin_socket).map_err(|e| (EXIT_INVALID, e.to_string()))
}

/// The group whose members may use the admin socket, as the daemon reads it
/// (`[daemon] admin_group`), so the permission error names the right one.
fn admin_group(args: &Args) -> String {
    Config::load(&args.config).map(|c| c.daemon.admin_group).unwrap_or_else(|_| "otpadmin".into())
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now() - d.as_secs() as i64);
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0))
        .map_err(|_| format!("--since {s:?}: give a duration like 1h or a time like 2026-01-31T12:00:00Z"))
}

/// One admin request to a fleet server over TLS with admin credentials.
fn remote_call(
    server: &str,
    bundle: Option<&std::path::Path>,
    req: &AdminRequest,
) -> Result<AdminResponse, (u8, String)> {
    let Some(bundle) = bundle else {
        return Err((2, "--server needs --bundle: admin credentials from `otpctl host add NAME --admin`".into()));
    };
    let (resp, renewal) = otpd::fleet::wire::admin_call(server, bundle, req, Duration::from_secs(30))
        .map_err(|e| (EXIT_UNREACHABLE, e))?;
    if let Some(note) = renewal {
        eprintln!("otpctl: {note}");
    }
    match resp {
        AdminResponse::Error { kind, message } => Err((exit_code(kind), message)),
        ok => Ok(ok),
    }
}

fn exit_code(kind: AdminErrorKind) -> u8 {
    match kind {
        AdminErrorKind::NotFound => EXIT_NOT_FOUND,
        AdminErrorKind::PermissionDenied => EXIT_PERMISSION,
        AdminErrorKind::InvalidInput => EXIT_INVALID,
        AdminErrorKind::Internal => EXIT_DAEMON,
    }
}

fn call(args: &Args, req: &AdminRequest) -> Result<AdminResponse, (u8, String)> {
    if let Some(server) = &args.server {
        return remote_call(server, args.bundle.as_deref(), req);
    }
    let path = socket_path(args)?;
    // A bulk enable of 100,000 users is one transaction that takes a while
    // (and commits whether or not we are still waiting).
    let wait = match req {
        AdminRequest::UserEnableMany { users, .. } => {
            Duration::from_secs(60).max(Duration::from_millis(users.len() as u64 * 5))
        }
        // Each file's scratch codes are hashed first (about 1 ms each, on every CPU).
        AdminRequest::ImportTotp { accounts, .. } => {
            Duration::from_secs(60).max(Duration::from_millis(accounts.len() as u64 * 20))
        }
        _ => Duration::from_secs(30),
    };
    let mut client = Client::connect(&path, wait, &[0])
        .map_err(|e| match e {
            ClientError::Missing(_) | ClientError::Connect { .. } => (
                EXIT_UNREACHABLE,
                format!(
                    "{e}\nIs otpd running? With systemd: `systemctl status otpd` (start it with \
                     `systemctl start otpd`).\nWithout systemd (containers, WSL, other inits) start it \
                     yourself as root: `/usr/sbin/otpd --config {}`.",
                    args.config.display()
                ),
            ),
            ClientError::PermissionDenied(_) => (
                EXIT_PERMISSION,
                format!(
                    "{e}: run as root or as a member of the `{group}` group (`adduser $USER {group}`, then log in \
                     again)",
                    group = admin_group(args)
                ),
            ),
            other => (EXIT_UNREACHABLE, other.to_string()),
        })?
        .for_admin_responses();
    let resp: AdminResponse = client
        .call(req)
        .map_err(|e| (EXIT_UNREACHABLE, format!("talking to otpd at {} failed: {e}", path.display())))?;
    match resp {
        AdminResponse::Error { kind, message } => Err((
            exit_code(kind),
            match kind {
                AdminErrorKind::PermissionDenied => format!("{message} (`{}`)", admin_group(args)),
                _ => message,
            },
        )),
        ok => Ok(ok),
    }
}

fn run(args: Args) -> Result<(), (u8, String)> {
    match &args.cmd {
        Cmd::User(u) => user_cmd(&args, u),
        Cmd::Request(r) => request_cmd(&args, r),
        Cmd::Sessions { limit } => send(&args, &AdminRequest::Sessions { limit: Some(*limit) }, false),
        Cmd::Audit { user, host, since, limit } => audit_cmd(&args, user, host, since.as_deref(), *limit),
        Cmd::Status => {
            send(&args, &AdminRequest::Status, false)?;
            if !args.json {
                print_web(&args.config);
            }
            Ok(())
        }
        Cmd::Group(GroupCmd::Refresh) => send(&args, &AdminRequest::GroupRefresh, false),
        Cmd::Import(i) => import_cmd(&args, i),
        Cmd::Host(h) => host_cmd(&args, h),
        Cmd::Ca(c) => {
            let req = match c {
                CaCmd::Status => AdminRequest::CaStatus,
                CaCmd::Rotate => AdminRequest::CaRotate,
                CaCmd::Retire { force } => AdminRequest::CaRetire { force: *force },
            };
            send(&args, &req, false)
        }
    }
}

/// One request to otpd, and its answer shown. `print_uri`: an enrollment's
/// otpauth:// URI (it carries the secret) is shown too.
fn send(args: &Args, req: &AdminRequest, print_uri: bool) -> Result<(), (u8, String)> {
    let resp = call(args, req)?;
    show(args, resp, print_uri)
}

/// `otpctl user …`.
fn user_cmd(args: &Args, cmd: &UserCmd) -> Result<(), (u8, String)> {
    let (req, print_uri) = match cmd {
        UserCmd::Enable { user: None, group, from_file, method, email, print_uri } => {
            if !matches!(method, MethodArg::Totp) || email.is_some() || *print_uri {
                return Err((
                    2,
                    "--group and --from-file enable for totp only (no --method, --email, --print-uri)".into(),
                ));
            }
            let (users, source) = bulk_users(group.as_deref(), from_file.as_deref())?;
            return enable_many(args, users, source);
        }
        UserCmd::Enable { user: Some(user), method, email, print_uri, .. } => (
            AdminRequest::UserEnable {
                user: user.clone(),
                method: match method {
                    MethodArg::Totp => Method::Totp,
                    MethodArg::Email => Method::Email,
                },
                email: email.clone(),
            },
            *print_uri,
        ),
        UserCmd::Disable { user } => (AdminRequest::UserDisable { user: user.clone() }, false),
        UserCmd::Reset { user, print_uri } => (AdminRequest::UserReset { user: user.clone() }, *print_uri),
        UserCmd::Show { user } => (AdminRequest::UserShow { user: user.clone() }, false),
        UserCmd::List => (AdminRequest::UserList { search: None, after: None, limit: None }, false),
        UserCmd::Unlock { user } => (AdminRequest::UserUnlock { user: user.clone() }, false),
        UserCmd::Resync { user, code1, code2 } => {
            (AdminRequest::UserResync { user: user.clone(), code1: code1.clone(), code2: code2.clone() }, false)
        }
        UserCmd::RecoveryCodes { user } => (AdminRequest::UserRecoveryCodes { user: user.clone() }, false),
        UserCmd::Passwd { user } => (
            AdminRequest::UserPasswd { user: user.clone(), password: read_password().map_err(|e| (EXIT_INVALID, e))? },
            false,
        ),
    };
    send(args, &req, print_uri)
}

/// The users of `user enable --group GROUP` or `--from-file FILE`, and where
/// they came from (for the audit).
fn bulk_users(
    group: Option<&str>,
    from_file: Option<&std::path::Path>,
) -> Result<(Vec<BulkUser>, String), (u8, String)> {
    match (group, from_file) {
        (Some(g), _) => Ok((group_members(g)?, format!("group {g}"))),
        (None, Some(f)) => Ok((users_from_file(f)?, format!("file {}", f.display()))),
        (None, None) => Err((2, "give a user, --group GROUP or --from-file FILE".into())),
    }
}

/// `otpctl request …`.
fn request_cmd(args: &Args, cmd: &RequestCmd) -> Result<(), (u8, String)> {
    let req = match cmd {
        RequestCmd::List { all } => AdminRequest::RequestList { all: *all },
        RequestCmd::Approve { id } => AdminRequest::RequestApprove { id: *id },
        RequestCmd::Deny { id } => AdminRequest::RequestDeny { id: *id },
    };
    send(args, &req, false)
}

/// `otpctl audit`.
fn audit_cmd(
    args: &Args,
    user: &Option<String>,
    host: &Option<String>,
    since: Option<&str>,
    limit: u32,
) -> Result<(), (u8, String)> {
    let since = since.map(parse_since).transpose().map_err(|e| (2, e))?;
    send(
        args,
        &AdminRequest::Audit {
            user: user.clone(),
            host: host.clone(),
            since,
            limit: Some(limit),
            result: None,
            until: None,
            before_id: None,
        },
        false,
    )
}

/// `otpctl import …`.
fn import_cmd(args: &Args, cmd: &ImportCmd) -> Result<(), (u8, String)> {
    match cmd {
        ImportCmd::Oath { file, dry_run } => import_oath(args, file, *dry_run),
        ImportCmd::GoogleAuthenticator { paths, dry_run, remove_files } => {
            import_google_authenticator(args, paths, *dry_run, *remove_files)
        }
    }
}

/// `otpctl import oath FILE`: the whole file goes to otpd, which parses it.
fn import_oath(args: &Args, file: &std::path::Path, dry_run: bool) -> Result<(), (u8, String)> {
    let content =
        std::fs::read_to_string(file).map_err(|e| (EXIT_INVALID, format!("cannot read {}: {e}", file.display())))?;
    // One request frame carries the whole file (one transaction).
    let room = common::codec::MAX_FRAME - 1024;
    if serde_json::to_string(&content).map_or(usize::MAX, |j| j.len()) > room {
        return Err((
            EXIT_INVALID,
            format!(
                "{} is {} bytes, too large for one import (about {room} as JSON): split it (each part is \
                 one transaction)",
                file.display(),
                content.len()
            ),
        ));
    }
    send(args, &AdminRequest::ImportOath { content, dry_run }, false)
}

/// `otpctl host …`.
fn host_cmd(args: &Args, cmd: &HostCmd) -> Result<(), (u8, String)> {
    let req = match cmd {
        HostCmd::Add { name, admin, output } => return host_add(args, name, *admin, output.as_deref()),
        HostCmd::List => AdminRequest::HostList,
        HostCmd::Revoke { name } => AdminRequest::HostRevoke { name: name.clone() },
    };
    send(args, &req, false)
}

/// `otpctl host add`: the bundle is written (or printed) as it is, with
/// --json too.
fn host_add(args: &Args, name: &str, admin: bool, output: Option<&std::path::Path>) -> Result<(), (u8, String)> {
    // Refuse before anything is issued: a bundle must not be lost.
    if let Some(path) = output.filter(|p| p.exists()) {
        return Err((EXIT_INVALID, format!("{} exists; not overwriting it", path.display())));
    }
    match call(args, &AdminRequest::HostAdd { name: name.to_string(), admin })? {
        AdminResponse::HostBundle { name, bundle } => write_bundle(&name, &bundle, output, admin),
        other => show(args, other, false),
    }
}

/// otpd's answer as JSON (--json) or as text.
fn show(args: &Args, resp: AdminResponse, print_uri: bool) -> Result<(), (u8, String)> {
    if args.json {
        print_json(resp, print_uri);
        return Ok(());
    }
    print_response(resp, print_uri)
}

fn print_json(resp: AdminResponse, print_uri: bool) {
    let value = match resp {
        // The URI carries the secret: only on request, in JSON too.
        AdminResponse::Enrolled { user, otpauth_uri } => serde_json::json!({
            "type": "enrolled", "user": user, "otpauth_uri": if print_uri { otpauth_uri } else { None },
        }),
        other => serde_json::to_value(&other).unwrap_or_default(),
    };
    println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
}

fn print_response(resp: AdminResponse, print_uri: bool) -> Result<(), (u8, String)> {
    match resp {
        AdminResponse::Enrolled { user, otpauth_uri } => {
            print_user(&user);
            println!(
                "{} will see a QR code at the next login; the first valid code activates the enrollment.",
                user.name
            );
            if let (true, Some(uri)) = (print_uri, otpauth_uri) {
                println!("uri            {uri}");
            }
        }
        AdminResponse::User { user } => print_user(&user),
        AdminResponse::Users { users } => print_users(&users),
        AdminResponse::Audit { entries } => print_audit(&entries),
        AdminResponse::Status { status } => print_status(status),
        AdminResponse::Done { message } => println!("{message}"),
        AdminResponse::EnabledMany { enabled, already_enabled, skipped, .. } => {
            println!("{enabled} enabled, {already_enabled} already enabled (unchanged), {skipped} skipped")
        }
        AdminResponse::Imported { results } => {
            for r in results {
                println!("{:<16} {:<12} {}", r.user, r.outcome, r.detail);
            }
        }
        AdminResponse::RecoveryCodes { user, codes } => {
            for c in &codes {
                println!("{c}");
            }
            eprintln!(
                "otpctl: {} new recovery codes for {user}, each usable once at the passcode prompt; \
                 they are shown only now (any older ones no longer work)",
                codes.len()
            );
        }
        AdminResponse::Hosts { hosts } => print_hosts(&hosts),
        AdminResponse::Cas { cas, other_hosts } => print_cas(&cas, other_hosts),
        // Asked and used by the fleet link itself (remote otpctl).
        AdminResponse::CaCheck { .. } | AdminResponse::Renewed { .. } => {}
        // Written by host_add, before any JSON rendering.
        AdminResponse::HostBundle { .. } => {}
        AdminResponse::Requests { requests, total } => print_requests(&requests, total),
        AdminResponse::Sessions { sessions } => print_sessions(&sessions),
        AdminResponse::Error { message, .. } => return Err((EXIT_DAEMON, message)),
    }
    Ok(())
}

fn print_users(users: &[UserInfo]) {
    let rows: Vec<[String; 6]> = users
        .iter()
        .map(|u| {
            [
                u.name.clone(),
                u.method.to_string(),
                yes_no(u.enabled).into(),
                yes_no(u.activated).into(),
                u.failures_since_login.to_string(),
                lock_column(u),
            ]
        })
        .collect();
    let header = ["USER", "METHOD", "ENABLED", "ACTIVATED", "FAILURES", "LOCKED UNTIL"].map(String::from);
    print_table(&header, &rows);
}

/// The web console as this host's configuration has it: where it listens
/// and the SHA-256 fingerprint of the certificate otpweb serves (it writes
/// it to its state directory at start), so a browser's warning about a
/// self-signed certificate can be checked.
fn print_web(config: &std::path::Path) {
    let Ok(cfg) = Config::load(config) else { return };
    let w = cfg.web;
    if !w.enabled {
        println!("web console    disabled ([web] enabled = false)");
        return;
    }
    let urls: Vec<String> = w.listen.iter().map(|a| format!("https://{a}")).collect();
    println!("web console    {}", w.origin.clone().unwrap_or_else(|| urls.join(" ")));
    let file = w.state_dir.join("certificate.sha256");
    match std::fs::read_to_string(&file) {
        Ok(fp) => println!("certificate    SHA-256 {}", fp.trim()),
        Err(_) => println!("certificate    not known yet: otpweb writes {} when it starts", file.display()),
    }
}

fn print_status(s: StatusInfo) {
    println!("otpd           {} (pid {}), up since {}", s.version, s.pid, time(s.started_at));
    println!("database       {} (schema {})", s.database, s.schema_version);
    println!(
        "users          {} total, {} enabled, {} activated, {} locked",
        s.users_total, s.users_enabled, s.users_activated, s.users_locked
    );
    println!("audit entries  {}", s.audit_entries);
    println!("connections    {} open", s.open_connections);
    if s.mail_enabled {
        println!(
            "mail           {} queued, {} failing, {} sent in the last hour",
            s.mail_queued, s.mail_failing, s.mail_sent_last_hour
        );
        if let Some(e) = s.mail_last_error.filter(|_| s.mail_failing > 0) {
            println!("mail error     {e}");
        }
        println!("emergency      {} request(s) pending", s.requests_pending);
    } else {
        println!("mail           disabled");
    }
    match &s.clock {
        Some(c) => match (c.synchronised, &c.error) {
            (Some(true), _) => {
                println!("server clock   synchronised (NTP; maximum error {})", max_error(c.max_error_us.unwrap_or(0)))
            }
            (Some(false), _) => {
                println!("server clock   NOT synchronised (the kernel reports no time source)");
                println!(
                    "warning        codes are checked against this clock: turn on NTP (timedatectl set-ntp true, \
                     or chrony) or every user's codes may be refused"
                );
            }
            (None, e) => println!("server clock   unknown ({})", e.as_deref().unwrap_or("not read")),
        },
        None => println!("server clock   unknown (this otpd does not report it)"),
    }
    if s.role == common::proto::Role::Server {
        let live = s.hosts.iter().filter(|h| h.revoked_at.is_none()).count();
        println!("role           server, {live} host(s)");
        print_hosts(&s.hosts);
    }
}

/// "2.5 ms", "1.2 s": the kernel's error estimate (microseconds).
fn max_error(us: i64) -> String {
    match us {
        ..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.1} s", us as f64 / 1e6),
    }
}

fn print_requests(requests: &[RequestInfo], total: Option<u64>) {
    let shown = requests.len() as u64;
    println!(
        "{:<5} {:<16} {:<16} {:<28} {:<9} {:<20} REASON / ORIGIN",
        "ID", "USER", "HOST", "ADDRESS", "STATUS", "REQUESTED"
    );
    for r in requests {
        println!(
            "{:<5} {:<16} {:<16} {:<28} {:<9} {:<20} {} ({})",
            r.id,
            r.user,
            r.machine,
            r.address,
            r.status,
            time(r.created_at),
            r.reason,
            r.origin
        );
    }
    if let Some(total) = total.filter(|&t| t > shown) {
        println!("(showing the newest {shown} of {total})");
    }
}

fn print_sessions(sessions: &[SessionInfo]) {
    let rows: Vec<[String; 7]> = sessions
        .iter()
        .map(|s| {
            [
                match &s.email {
                    Some(e) => format!("{} ({e})", s.user),
                    None => s.user.clone(),
                },
                s.machine.clone(),
                s.service.clone(),
                s.rhost.clone().unwrap_or_else(|| "-".into()),
                s.tty.clone().unwrap_or_else(|| "-".into()),
                time(s.opened_at),
                s.closed_at.map(time).unwrap_or_else(|| "open".into()),
            ]
        })
        .collect();
    let header = ["USER", "HOST", "SERVICE", "RHOST", "TTY", "OPENED", "CLOSED"].map(String::from);
    print_table(&header, &rows);
}

/// Columns as wide as their widest cell (names are not bounded to a fixed
/// width), two spaces apart; the last column is not padded.
fn print_table<const N: usize>(header: &[String; N], rows: &[[String; N]]) {
    let mut width = [0usize; N];
    for row in std::iter::once(header).chain(rows) {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < N {
                line.push_str(&format!("{cell:<w$}  ", w = width[i]));
            } else {
                line.push_str(cell);
            }
        }
        println!("{}", line.trim_end());
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn time(t: i64) -> String {
    let st = UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    humantime::format_rfc3339_seconds(st).to_string()
}

/// "-", the timed lock's end, or "until unlocked" (the lock only an admin lifts).
fn lock_column(u: &UserInfo) -> String {
    match (u.admin_locked_at, u.locked_until.filter(|_| u.locked)) {
        (Some(_), _) => format!("until unlocked ({} locks)", u.lock_periods),
        (None, Some(t)) => format!("{} ({} in a row)", time(t), u.lock_periods),
        (None, None) => "-".into(),
    }
}

fn print_user(u: &UserInfo) {
    println!("user           {}", u.name);
    println!("method         {}", u.method);
    println!("enabled        {}", yes_no(u.enabled));
    match u.activated_at {
        Some(t) => println!("activated      yes ({})", time(t)),
        None => println!("activated      no"),
    }
    println!("failures       {} since the last login ({} towards the next lock)", u.failures_since_login, u.failures);
    match (u.admin_locked_at, u.locked_until.filter(|_| u.locked)) {
        (Some(t), _) => println!(
            "locked         yes, until an administrator unlocks it (`otpctl user unlock {}`); since {}",
            u.name,
            time(t)
        ),
        (None, Some(t)) => println!("locked         yes, until {}", time(t)),
        (None, None) => println!("locked         no"),
    }
    println!("locks in a row {} since the last login (each lasts twice as long as the one before)", u.lock_periods);
    println!("last login     {}", u.last_login.map(time).unwrap_or_else(|| "never".into()));
    if let Some(c) = u.hotp_counter {
        println!("hotp counter   {c} (the next code the token should show)");
    }
    if let Some(n) = u.recovery_codes_left {
        println!("recovery codes {n} left");
    }
    if let Some(d) = &u.clock_drift {
        println!(
            "clock          {} (last refused code {}; {} such refusal(s) in a row)",
            d.describe(),
            time(d.seen_at),
            d.refusals_in_a_row
        );
    }
}

fn print_hosts(hosts: &[HostInfo]) {
    let rows: Vec<[String; 9]> = hosts
        .iter()
        .map(|h| {
            let status = match (h.revoked_at, h.expired) {
                (Some(t), _) => format!("revoked {}", time(t)),
                (None, true) => "expired (needs a new bundle: host add)".into(),
                (None, false) => "active".into(),
            };
            [
                h.name.clone(),
                h.role.clone(),
                time(h.added_at),
                h.last_seen.map(time).unwrap_or_else(|| "never".into()),
                h.last_addr.clone().unwrap_or_else(|| "-".into()),
                status,
                h.expires_at.map(time).unwrap_or_else(|| "-".into()),
                h.renewed_at.map(time).unwrap_or_else(|| "never".into()),
                h.ca.as_deref().map(|c| c.chars().take(11).collect()).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = ["HOST", "ROLE", "ADDED", "LAST SEEN", "LAST ADDRESS", "STATUS", "EXPIRES", "RENEWED", "CA"];
    print_table(&header.map(String::from), &rows);
}

fn print_cas(cas: &[CaInfo], other_hosts: u64) {
    let rows: Vec<[String; 6]> = cas
        .iter()
        .map(|c| {
            let role = match (c.serving, c.issuing) {
                (true, true) => "current",
                (true, false) => "old: servers present it, hosts leave it",
                (false, true) => "new: issues host certificates",
                (false, false) => "new: issues in a moment",
            };
            [
                c.fingerprint.clone(),
                if c.added_at == 0 { "-".into() } else { time(c.added_at) },
                time(c.not_after),
                role.into(),
                c.agents.to_string(),
                c.admins.to_string(),
            ]
        })
        .collect();
    print_table(&["CA (SHA-256)", "ADDED", "EXPIRES", "ROLE", "AGENTS", "ADMINS"].map(String::from), &rows);
    if other_hosts > 0 {
        println!("{other_hosts} host(s) hold certificates of no current CA: each needs a new bundle (host add)");
    }
    if let [old, _] = cas {
        match old.agents + old.admins {
            0 => println!("No host holds a certificate of the old CA: `otpctl ca retire` drops it."),
            n => println!("{n} host(s) still on the old CA; they move as they renew."),
        }
    }
}

/// The bundle goes to a new file only root can read, or to stdout.
fn write_bundle(name: &str, bundle: &str, output: Option<&std::path::Path>, admin: bool) -> Result<(), (u8, String)> {
    let what = if admin {
        format!("admin credentials {name}: use them with `otpctl --server HOST:PORT --bundle FILE`")
    } else {
        format!("host {name}: copy it to the host as /etc/otpd/host.bundle (owner root, mode 0600)")
    };
    let Some(path) = output else {
        println!("{}", bundle.trim_end());
        eprintln!("otpctl: bundle for {what}");
        return Ok(());
    };
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bundle.as_bytes()).and_then(|()| f.sync_all()));
    written.map_err(|e| {
        (
            EXIT_DAEMON,
            format!(
                "writing {} failed: {e}; the bundle was not saved (revoke {name} and add it again)",
                path.display()
            ),
        )
    })?;
    eprintln!("otpctl: wrote the bundle for {what}");
    Ok(())
}

fn print_audit(entries: &[AuditEntry]) {
    // A fleet's entries come from several hosts: then each line says which.
    let hosts = entries.iter().any(|e| e.machine != entries[0].machine);
    let width = entries.iter().map(|e| e.machine.chars().count()).max().unwrap_or(0).max(4);
    let host = |h: &str| if hosts { format!("{h:<width$} ") } else { String::new() };
    println!(
        "{:<20} {}{:<16} {:<10} {:<16} {:<8} {:<8} {:<12} REASON",
        "TIME",
        host("HOST"),
        "USER",
        "SERVICE",
        "RHOST",
        "TTY",
        "METHOD",
        "RESULT"
    );
    for e in entries {
        println!(
            "{:<20} {}{:<16} {:<10} {:<16} {:<8} {:<8} {:<12} {}",
            time(e.time),
            host(&e.machine),
            e.user,
            e.service,
            e.rhost.as_deref().unwrap_or("-"),
            e.tty.as_deref().unwrap_or("-"),
            e.method,
            e.result,
            late_reason(e)
        );
    }
}

/// The reason, marked when the row was written late: a refusal an agent
/// kept in its spool while no server answered (TIME is when it happened).
fn late_reason(e: &AuditEntry) -> String {
    match e.received_at {
        Some(at) => format!("LATE (received {}): {}", time(at), e.reason),
        None => e.reason.clone(),
    }
}

/// Every account NSS lists: (name, uid, home).
fn all_accounts() -> Vec<(String, u32, PathBuf)> {
    let mut out = Vec::new();
    // SAFETY: getpwent's static buffer is copied out before the next call;
    // otpctl is single-threaded here.
    unsafe {
        libc::setpwent();
        loop {
            let pw = libc::getpwent();
            if pw.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned();
            let home = std::ffi::CStr::from_ptr((*pw).pw_dir).to_string_lossy().into_owned();
            out.push((name, (*pw).pw_uid, PathBuf::from(home)));
        }
        libc::endpwent();
    }
    out
}

/// `otpctl import google-authenticator`: otpctl reads and checks the files
/// (it runs as root, where they are), the daemon imports every good one in
/// one transaction; files are removed only after that committed.
fn import_google_authenticator(args: &Args, paths: &[String], dry_run: bool, remove: bool) -> Result<(), (u8, String)> {
    use common::proto::ImportAccount;
    let mut targets: Vec<(String, u32, PathBuf)> = Vec::new();
    let mut problems: Vec<(String, String)> = Vec::new();
    if paths.is_empty() {
        for (name, uid, home) in all_accounts() {
            let path = home.join(".google_authenticator");
            if home.is_absolute() && std::fs::symlink_metadata(&path).is_ok() {
                targets.push((name, uid, path));
            }
        }
    } else {
        for arg in paths {
            let (user, path) = match arg.split_once('=') {
                Some((u, p)) if !u.contains('/') => (Some(u.to_string()), PathBuf::from(p)),
                _ => (None, PathBuf::from(arg)),
            };
            let found = match user {
                Some(u) => nix::unistd::User::from_name(&u).ok().flatten().map(|p| (u, p.uid.as_raw())),
                None => std::fs::symlink_metadata(&path).ok().and_then(|m| {
                    use std::os::unix::fs::MetadataExt;
                    let uid = m.uid();
                    nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|p| (p.name, uid))
                }),
            };
            match found {
                Some((name, uid)) => targets.push((name, uid, path)),
                None => problems.push((arg.clone(), "no such file, or no account for it".into())),
            }
        }
    }
    let mut accounts = Vec::new();
    let mut files = Vec::new();
    for (user, uid, path) in targets {
        let shown = path.display().to_string();
        match otpd::import::gauth::read(&path, uid) {
            Err(why) => problems.push((user, format!("{shown} {why}; skipped"))),
            Ok(f) if !f.totp && f.hotp_counter.is_none_or(|c| c < 1) => problems.push((
                user,
                format!("{shown} has neither TOTP_AUTH nor a HOTP_COUNTER: only scratch codes work with it; skipped"),
            )),
            Ok(f) => {
                accounts.push(ImportAccount {
                    user: user.clone(),
                    uid: Some(uid),
                    secret_b32: data_encoding::BASE32_NOPAD.encode(&f.secret),
                    step_size: f.step_size,
                    last_step: f.last_step,
                    scratch_codes: f.scratch_codes.clone(),
                    hotp_counter: if f.totp { None } else { f.hotp_counter },
                    window_size: f.window_size,
                    rate_limit: f.rate_limit,
                });
                files.push((user, path));
            }
        }
    }
    for (who, why) in &problems {
        println!("{who:<16} skipped      {why}");
    }
    let results = if accounts.is_empty() {
        Vec::new()
    } else {
        match call(args, &AdminRequest::ImportTotp { accounts, dry_run })? {
            AdminResponse::Imported { results } => results,
            other => return Err((EXIT_DAEMON, format!("unexpected answer from otpd: {other:?}"))),
        }
    };
    let mut count = std::collections::BTreeMap::<&str, usize>::new();
    for r in &results {
        println!("{:<16} {:<12} {}", r.user, r.outcome, r.detail);
        *count.entry(r.outcome.as_str()).or_default() += 1;
    }
    if remove && !dry_run {
        for r in results.iter().filter(|r| matches!(r.outcome, ImportOutcome::Imported | ImportOutcome::Unchanged)) {
            for (_, path) in files.iter().filter(|(u, _)| *u == r.user) {
                match std::fs::remove_file(path) {
                    Ok(()) => println!("{:<16} removed      {}", r.user, path.display()),
                    Err(e) => println!("{:<16} not removed  {}: {e}", r.user, path.display()),
                }
            }
        }
    }
    let skipped = problems.len() + count.get("skipped").copied().unwrap_or(0);
    let summary: Vec<String> =
        count.iter().filter(|(k, _)| **k != "skipped").map(|(k, n)| format!("{n} {k}")).collect();
    println!("{}{}{skipped} skipped", summary.join(", "), if summary.is_empty() { "" } else { ", " });
    Ok(())
}

/// One line from stdin; with echo off when stdin is a terminal.
fn read_password() -> Result<String, String> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    // SAFETY: termios calls on fd 0 with a zeroed, then filled, struct.
    let saved = if tty {
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) == 0 {
                let old = t;
                t.c_lflag &= !libc::ECHO;
                libc::tcsetattr(0, libc::TCSANOW, &t);
                eprint!("New password: ");
                Some(old)
            } else {
                None
            }
        }
    } else {
        None
    };
    let mut line = String::new();
    let r = stdin.lock().read_line(&mut line);
    if let Some(old) = saved {
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &old);
        }
        eprintln!();
    }
    r.map_err(|e| e.to_string())?;
    let pw = line.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        return Err("no password given on stdin".into());
    }
    Ok(pw)
}

/// Every member of GROUP (member list and primary group), through NSS here
/// at admin time, never on the login path.
fn group_members(group: &str) -> Result<Vec<BulkUser>, (u8, String)> {
    let names = otpd::core::groups::members(group)
        .map_err(|e| (EXIT_INVALID, e))?
        .ok_or((EXIT_INVALID, format!("no group {group}")))?;
    if names.is_empty() {
        return Err((EXIT_INVALID, format!("group {group} has no members: nothing to enable")));
    }
    Ok(with_uids(names))
}

fn with_uids(names: Vec<String>) -> Vec<BulkUser> {
    names
        .into_iter()
        .map(|name| {
            let uid = nix::unistd::User::from_name(&name).ok().flatten().map(|u| u.uid.as_raw());
            BulkUser { name, uid }
        })
        .collect()
}

/// One name per line; `#` starts a comment, blank lines are skipped. Any
/// invalid name refuses the whole file (nothing is sent).
fn users_from_file(path: &std::path::Path) -> Result<Vec<BulkUser>, (u8, String)> {
    let text =
        std::fs::read_to_string(path).map_err(|e| (EXIT_INVALID, format!("cannot read {}: {e}", path.display())))?;
    let (names, bad) = parse_user_list(&text);
    if !bad.is_empty() {
        let shown: Vec<String> = bad.iter().take(20).map(|(n, l)| format!("line {n}: {l:?}")).collect();
        let more =
            if bad.len() > shown.len() { format!(" (and {} more)", bad.len() - shown.len()) } else { String::new() };
        return Err((
            EXIT_INVALID,
            format!("{}: not valid user names, nothing was enabled: {}{more}", path.display(), shown.join("; ")),
        ));
    }
    if names.is_empty() {
        return Err((EXIT_INVALID, format!("{} names no users: nothing to enable", path.display())));
    }
    Ok(with_uids(names))
}

/// The names of a user list, and the invalid lines (number, text).
fn parse_user_list(text: &str) -> (Vec<String>, Vec<(usize, String)>) {
    let (mut names, mut bad) = (Vec::new(), Vec::new());
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let name = line.split('#').next().unwrap_or("").trim();
        if name.is_empty() {
            continue;
        }
        if !otpd::core::context::valid_user_name(name) {
            bad.push((i + 1, name.to_string()));
        } else if seen.insert(name.to_string()) {
            names.push(name.to_string());
        }
    }
    (names, bad)
}

fn enable_many(args: &Args, users: Vec<BulkUser>, source: String) -> Result<(), (u8, String)> {
    let n = users.len();
    let resp = call(args, &AdminRequest::UserEnableMany { users, source })?;
    if args.json {
        println!("{}", serde_json::to_value(&resp).unwrap_or_default());
        return Ok(());
    }
    match resp {
        AdminResponse::EnabledMany { enabled, already_enabled, skipped, notes } => {
            for l in notes {
                println!("{l}");
            }
            println!("{n} users: {enabled} enabled, {already_enabled} already enabled (unchanged), {skipped} skipped");
            Ok(())
        }
        other => Err((EXIT_DAEMON, format!("unexpected answer from otpd: {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_user_list;

    #[test]
    fn user_list_skips_comments_and_blank_lines_and_names_bad_lines() {
        let (names, bad) = parse_user_list("# staff\nalice\n\n  bob  # on leave\nalice\nbad name\n-x\n");
        assert_eq!(names, vec!["alice", "bob"]);
        assert_eq!(bad, vec![(6, "bad name".to_string()), (7, "-x".to_string())]);
    }
}
