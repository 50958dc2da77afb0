//! Module arguments from the PAM stack line.
use common::proto::QrStyle;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    Closed,
    Open,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub socket: PathBuf,
    /// Deadline for each daemon reply (not for the user's typing).
    pub timeout: Duration,
    pub fail: FailMode,
    /// Treat "user not enabled" as a denial instead of PAM_IGNORE.
    pub require: bool,
    pub debug: bool,
    /// How the daemon draws an enrollment QR code (`qr=utf8|ascii|off`).
    pub qr: QrStyle,
    /// Debug builds (the test suite) only: panic inside the entry point, to
    /// prove a panic becomes a failure and never a success.
    pub test_panic: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            socket: common::DEFAULT_PAM_SOCKET.into(),
            timeout: Duration::from_secs(common::DEFAULT_MODULE_TIMEOUT_SECS),
            fail: FailMode::Closed,
            require: false,
            debug: false,
            qr: QrStyle::Utf8,
            test_panic: false,
        }
    }
}

/// Parses `key=value` arguments. Problems are returned as messages for the
/// log; a bad value always leaves the safe default in place (a typo in
/// `fail=` must never open the door).
pub fn parse<'a, I: IntoIterator<Item = &'a [u8]>>(args: I) -> (Options, Vec<String>) {
    let mut o = Options::default();
    let mut problems = Vec::new();
    for raw in args {
        let arg = String::from_utf8_lossy(raw);
        let (key, value) = match arg.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (arg.as_ref(), None),
        };
        match (key, value) {
            ("socket", Some(v)) if v.starts_with('/') && v.len() < 108 => o.socket = v.into(),
            ("socket", _) => problems.push(format!("ignoring {arg:?}: socket must be an absolute path")),
            ("timeout", Some(v)) => match v.parse::<u64>() {
                Ok(s) if (1..=600).contains(&s) => o.timeout = Duration::from_secs(s),
                _ => problems.push(format!("ignoring {arg:?}: timeout must be 1 to 600 seconds")),
            },
            ("fail", Some("closed")) => o.fail = FailMode::Closed,
            ("fail", Some("open")) => o.fail = FailMode::Open,
            ("fail", _) => problems.push(format!("ignoring {arg:?}: fail must be closed or open; staying closed")),
            ("require", None) => o.require = true,
            ("debug", None) => o.debug = true,
            ("qr", Some("utf8")) => o.qr = QrStyle::Utf8,
            ("qr", Some("ascii")) => o.qr = QrStyle::Ascii,
            ("qr", Some("off")) => o.qr = QrStyle::Off,
            ("qr", _) => problems.push(format!("ignoring {arg:?}: qr must be utf8, ascii or off")),
            #[cfg(debug_assertions)]
            ("test_panic", None) => o.test_panic = true,
            _ => problems.push(format!("ignoring unknown option {arg:?}")),
        }
    }
    (o, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> (Options, Vec<String>) {
        parse(args.iter().map(|s| s.as_bytes()))
    }

    #[test]
    fn defaults_fail_closed() {
        let (o, w) = p(&[]);
        assert_eq!(o, Options::default());
        assert_eq!(o.fail, FailMode::Closed);
        assert!(w.is_empty());
    }

    #[test]
    fn all_options() {
        let (o, w) = p(&["socket=/tmp/x.sock", "timeout=3", "fail=open", "require", "debug", "qr=ascii"]);
        assert_eq!(o.qr, QrStyle::Ascii);
        assert_eq!(p(&["qr=off"]).0.qr, QrStyle::Off);
        assert_eq!(p(&["qr=ascii", "qr=utf8"]).0.qr, QrStyle::Utf8);
        assert_eq!(o.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(o.timeout, Duration::from_secs(3));
        assert_eq!(o.fail, FailMode::Open);
        assert!(o.require && o.debug && w.is_empty());
    }

    #[test]
    fn bad_values_keep_safe_defaults() {
        let (o, w) = p(&[
            "fail=opne",
            "fail",
            "timeout=0",
            "timeout=abc",
            "socket=rel",
            "bogus",
            "require=no",
            "qr=sixel",
            "qr",
        ]);
        assert_eq!(o.fail, FailMode::Closed);
        assert_eq!(o.timeout, Options::default().timeout);
        assert_eq!(o.socket, Options::default().socket);
        assert!(!o.require);
        assert_eq!(o.qr, QrStyle::Utf8);
        assert_eq!(w.len(), 9, "{w:?}");
    }
}
