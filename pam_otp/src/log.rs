//! Logging through libpam's own `pam_syslog(3)` (facility authpriv, lines
//! prefixed `pam_otp(<service>:<type>)` like every Linux-PAM module), never
//! stdout/stderr: the module runs inside other programs whose output belongs
//! to the user's terminal. glibc keeps the /dev/log connection of the host
//! process open, so a log line costs one datagram, not a connect per line;
//! a missing syslog socket is not an error worth failing a login for.
use pam::module::PamHandle;
use std::ffi::CString;
use std::os::raw::{c_char, c_int};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
    Notice,
    Info,
    Debug,
}

#[link(name = "pam")]
extern "C" {
    fn pam_syslog(pamh: *const PamHandle, priority: c_int, fmt: *const c_char, ...);
}

pub fn syslog(pamh: &PamHandle, level: Level, msg: &str) {
    let priority = match level {
        Level::Error => libc::LOG_ERR,
        Level::Warning => libc::LOG_WARNING,
        Level::Notice => libc::LOG_NOTICE,
        Level::Info => libc::LOG_INFO,
        Level::Debug => libc::LOG_DEBUG,
    };
    // Messages never contain NUL (they are built from sanitised fields);
    // should one slip through, log what precedes it rather than nothing.
    let text = CString::new(msg.split('\0').next().unwrap_or_default()).unwrap_or_default();
    // SAFETY: pamh is the live handle libpam passed to this entry point; the
    // format is a constant "%s" with exactly one NUL-terminated argument.
    unsafe { pam_syslog(pamh, priority, c"%s".as_ptr(), text.as_ptr()) };
}
