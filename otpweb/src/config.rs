//! The command line, and what otpweb takes from `[web]`.
use clap::Parser;
use common::config::WebConfig;
use std::path::PathBuf;

/// The OTP web console: HTTPS pages for logins, self-service and
/// administration. It decides nothing; every request is otpd's to decide.
#[derive(Debug, Parser)]
#[command(name = "otpweb", version)]
pub struct Args {
    /// otpd's configuration file; otpweb reads its [web] section.
    #[arg(long, value_name = "PATH", default_value = common::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Listen on ADDR (host:port) instead of [web] listen; may be repeated.
    /// Port 0 picks a free port; the address is printed.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,
}

/// What the running console needs from `[web]` and the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub socket: PathBuf,
    pub listen: Vec<String>,
    pub certificate: Option<(PathBuf, PathBuf)>,
    pub state_dir: PathBuf,
    pub origin: Option<String>,
}

impl Settings {
    pub fn new(args: &Args, web: WebConfig) -> Settings {
        let listen = if args.listen.is_empty() { web.listen } else { args.listen.clone() };
        Settings {
            socket: web.socket,
            listen,
            certificate: web.certificate.zip(web.key),
            state_dir: web.state_dir,
            origin: web.origin,
        }
    }
}
