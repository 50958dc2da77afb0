//! otpd-man DIR: writes otpd(8) and otpctl(8), generated from the clap
//! definitions in `otpd::cli`, so the man pages cannot drift from the CLI.
#![warn(clippy::too_many_lines)]
#![cfg_attr(test, allow(clippy::too_many_lines))]
use clap::CommandFactory;
use std::path::PathBuf;

/// Sections of otpd(8) that clap knows nothing about: where the daemon keeps
/// its files, what it reads from the environment, where its log goes. An
/// admin on a host without systemd needs all three to run it by hand.
const OTPD_EXTRA: &str = r#".SH FILES
.TP
\fI/etc/otpd/otpd.toml\fR
Configuration (otpd.toml(5)); \fB\-\-config\fR names another file.
.TP
\fI/var/lib/otpd/otpd.db\fR
The SQLite database: enrollments (secrets encrypted), lockouts, audit records. Mode 0600, owned by root.
.TP
\fI/var/lib/otpd/secret.key\fR
The key that encrypts the stored secrets. Mode 0600, owned by root; back it up together with the database.
.TP
\fI/run/otpd/pam.sock\fR
The socket pam_otp.so talks to (mode 0666: every login process must reach it; callers are identified by their credentials).
.TP
\fI/run/otpd/admin.sock\fR
The socket otpctl(8) talks to: root and members of the \fBotpadmin\fR group.
.TP
\fI/etc/otpd/host.bundle\fR
Agents only (\fB[fleet] bundle\fR): the host's credentials, written on a server by \fBotpctl host add\fR
\fIHOST\fR \fB\-o\fR \fIFILE\fR and copied here. Owner root, mode 0600 (otpd refuses a bundle others can read).
It holds the fleet CA certificate, the host's certificate and its key; no TOTP secret or code.
.TP
\fI/usr/share/doc/pam\-otp/examples/otpd\-server.toml\fR, \fIotpd\-agent.toml\fR
Example configurations of a fleet server and agent.
.TP
\fI/lib/systemd/system/otpd.service\fR
The systemd unit (sandboxed). Without systemd, start \fBotpd\fR as root from your init system or by hand:
\fB/usr/sbin/otpd \-\-config /etc/otpd/otpd.toml &\fR (the directories above are created by the package).
.SH ROLES
\fBrole\fR in otpd.toml(5) chooses what this otpd is.
.TP
\fBstandalone\fR (default)
Decides this host's logins on its own SQLite database.
.TP
\fBserver\fR
As standalone, and also decides for the hosts of a fleet: it listens on \fB[fleet] listen\fR (TLS 1.3, a
client certificate issued by the fleet CA required) for agents and for \fBotpctl \-\-server\fR. Its database is
SQLite or PostgreSQL (\fBdatabase = "postgresql://..."\fR); several servers may share one PostgreSQL database if
they share the key file. The fleet CA is kept in the database, its key sealed with the key file.
.TP
\fBagent\fR
Binds only the PAM socket and relays each login to the first of \fB[fleet] servers\fR that answers; when none
answers the login is refused. No database, key file, admin socket or D\-Bus; it keeps only its bundle.
.SH ENVIRONMENT
.TP
\fBOTPD_LOG\fR
Log filter for the daemon's own log (default \fBinfo\fR; for example \fBdebug\fR or \fBotpd=debug\fR).
.TP
\fBNOTIFY_SOCKET\fR
Set by systemd (Type=notify): otpd reports readiness there once its sockets listen.
.SH LOGGING
The daemon's log goes to standard error: under systemd to the journal (\fBjournalctl \-u otpd\fR);
started by hand, wherever you send its standard error. Every authentication decision and admin change is
also written to the audit table (\fBotpctl audit\fR) and sent to syslog with facility \fBauthpriv\fR
(\fI/var/log/auth.log\fR on Debian with rsyslog). No code, secret or password is ever logged.
.SH SEE ALSO
otpctl(8), otpd.toml(5), pam_otp(8)
"#;

fn render(cmd: clap::Command, section: &str, dir: &std::path::Path, extra: &str) -> std::io::Result<()> {
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).section(section).render(&mut out)?;
    out.extend_from_slice(extra.as_bytes());
    std::fs::write(dir.join(format!("{name}.{section}")), out)?;
    for sub in cmd.get_subcommands() {
        let sub_name = format!("{name}-{}", sub.get_name());
        render(sub.clone().name(Box::leak(sub_name.into_boxed_str()) as &'static str), section, dir, "")?;
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "man".into()));
    std::fs::create_dir_all(&dir)?;
    render(otpd::cli::OtpdArgs::command(), "8", &dir, OTPD_EXTRA)?;
    render(otpd::cli::Args::command(), "8", &dir, "")?;
    Ok(())
}
