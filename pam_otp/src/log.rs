//! syslog (facility authpriv), never stdout/stderr: the module runs inside
//! other programs whose output belongs to the user's terminal.
use syslog::{Facility, Formatter3164};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
    Notice,
    Info,
    Debug,
}

/// Sends one line to syslog; a missing syslog socket is not an error worth
/// failing a login for.
pub fn syslog(level: Level, msg: &str) {
    let formatter = Formatter3164 {
        facility: Facility::LOG_AUTHPRIV,
        hostname: None,
        process: "pam_otp".into(),
        pid: std::process::id(),
    };
    let Ok(mut logger) = syslog::unix(formatter) else { return };
    let _ = match level {
        Level::Error => logger.err(msg),
        Level::Warning => logger.warning(msg),
        Level::Notice => logger.notice(msg),
        Level::Info => logger.info(msg),
        Level::Debug => logger.debug(msg),
    };
}
