//! The login conversation, independent of libpam so it can be tested with a
//! scripted fake. `ffi.rs` adapts a real `pam_handle_t` to [`PamIo`].
use crate::log::Level;
use crate::options::{FailMode, Options};
use common::proto::{ClientMsg, OutcomeKind, ServerMsg, MAX_ANSWER_LEN, PROTOCOL_VERSION};
use common::text::{sanitize_display, sanitize_field};

/// What the module needs from libpam.
pub trait PamIo {
    /// PAM_USER (may prompt through the application).
    fn user(&mut self) -> Option<String>;
    fn service(&self) -> Option<String>;
    fn rhost(&self) -> Option<String>;
    fn ruser(&self) -> Option<String>;
    fn tty(&self) -> Option<String>;
    /// Shows `text` in the given style; for prompts returns the answer bytes.
    /// `Err` means the conversation itself failed.
    fn converse(&mut self, style: Style, text: &str) -> Result<Option<Vec<u8>>, ConvError>;
    fn log(&mut self, level: Level, msg: &str);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    PromptEchoOff,
    PromptEchoOn,
    Info,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvError;

/// A connection to the daemon.
pub trait Daemon {
    fn send(&mut self, msg: &ClientMsg) -> Result<(), String>;
    fn recv(&mut self) -> Result<ServerMsg, String>;
}

/// The subset of PAM return codes this module produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PamCode {
    Success,
    AuthErr,
    MaxTries,
    Ignore,
}

/// A daemon cannot keep a module in a conversation forever.
const MAX_MESSAGES: usize = 64;
/// Longest text shown at once (a QR code is ~4 KiB of half blocks).
const MAX_SHOWN_CHARS: usize = 16 * 1024;
const MAX_ITEM_CHARS: usize = 256;
/// Shown when the daemon cannot be used and the login is refused.
pub const UNAVAILABLE: &str =
    "The one-time passcode service is unavailable; login refused. Contact your administrator.";

/// Runs `pam_sm_authenticate`. `connect` opens the daemon connection, so
/// tests can script the daemon and the real module can use the socket.
pub fn authenticate<I, D, C>(io: &mut I, opts: &Options, connect: C) -> PamCode
where
    I: PamIo,
    D: Daemon,
    C: FnOnce(&Options) -> Result<D, String>,
{
    // Local problems (no user, no service) are not daemon outages: fail=open
    // never applies to them.
    let Some(user) = io.user().filter(|u| !u.is_empty()) else {
        io.log(Level::Error, "no user name available; denying");
        return PamCode::AuthErr;
    };
    let user_shown = sanitize_field(&user, MAX_ITEM_CHARS);
    let service = io.service().map(|s| sanitize_field(&s, MAX_ITEM_CHARS)).unwrap_or_default();
    let item = |v: Option<String>| v.map(|s| sanitize_field(&s, MAX_ITEM_CHARS)).filter(|s| !s.is_empty());
    let begin = ClientMsg::Begin {
        protocol: PROTOCOL_VERSION,
        user: user.clone(),
        service: service.clone(),
        rhost: item(io.rhost()),
        ruser: item(io.ruser()),
        tty: item(io.tty()),
        pid: std::process::id(),
    };

    let mut daemon = match connect(opts) {
        Ok(d) => d,
        Err(e) => return daemon_failure(io, opts, &user_shown, &service, &format!("cannot reach otpd: {e}")),
    };
    if let Err(e) = daemon.send(&begin) {
        return daemon_failure(io, opts, &user_shown, &service, &format!("sending to otpd failed: {e}"));
    }

    for _ in 0..MAX_MESSAGES {
        let msg = match daemon.recv() {
            Ok(m) => m,
            Err(e) => return daemon_failure(io, opts, &user_shown, &service, &format!("otpd reply failed: {e}")),
        };
        let reply = match msg {
            ServerMsg::Info { text } => {
                let _ = io.converse(Style::Info, &sanitize_display(&text, MAX_SHOWN_CHARS));
                continue;
            }
            ServerMsg::Error { text } => {
                let _ = io.converse(Style::Error, &sanitize_display(&text, MAX_SHOWN_CHARS));
                continue;
            }
            ServerMsg::Prompt { echo, text } => {
                let style = if echo { Style::PromptEchoOn } else { Style::PromptEchoOff };
                match io.converse(style, &sanitize_display(&text, MAX_SHOWN_CHARS)) {
                    Ok(Some(bytes)) => ClientMsg::Answer { text: answer_text(&bytes) },
                    // A prompt without an answer is a failed conversation.
                    Ok(None) | Err(ConvError) => ClientMsg::Cancel,
                }
            }
            ServerMsg::Outcome { result, message } => {
                if let Some(m) = message.filter(|m| !m.is_empty()) {
                    let style = if result == OutcomeKind::Accept { Style::Info } else { Style::Error };
                    let _ = io.converse(style, &sanitize_display(&m, MAX_SHOWN_CHARS));
                }
                return outcome_code(io, opts, result, &user_shown, &service);
            }
            ServerMsg::Ack => {
                return daemon_failure(io, opts, &user_shown, &service, "otpd sent an unexpected message");
            }
        };
        let cancelled = reply == ClientMsg::Cancel;
        if let Err(e) = daemon.send(&reply) {
            return daemon_failure(io, opts, &user_shown, &service, &format!("sending to otpd failed: {e}"));
        }
        if cancelled {
            // The daemon audits the cancellation and answers with an outcome;
            // either way this login is over and it is not a daemon failure.
            let _ = daemon.recv();
            io.log(Level::Notice, &format!("conversation failed for user {user_shown} service {service}; denying"));
            return PamCode::AuthErr;
        }
    }
    io.log(Level::Error, &format!("otpd sent too many messages for user {user_shown}; denying"));
    PamCode::AuthErr
}

/// Answers are forwarded as typed, capped at one byte over the limit (so the
/// daemon can audit an oversized answer as such) and made valid UTF-8; the
/// daemon decides what is a passcode.
fn answer_text(bytes: &[u8]) -> String {
    let capped = &bytes[..bytes.len().min(MAX_ANSWER_LEN + 1)];
    String::from_utf8_lossy(capped).into_owned()
}

fn outcome_code<I: PamIo>(io: &mut I, opts: &Options, result: OutcomeKind, user: &str, service: &str) -> PamCode {
    let (code, level, what) = match result {
        // otpd audits every decision to syslog itself; the module repeats
        // only what the daemon cannot know: that the answer was mapped.
        OutcomeKind::Accept => (PamCode::Success, Level::Debug, "accepted"),
        OutcomeKind::Deny => (PamCode::AuthErr, Level::Notice, "denied"),
        OutcomeKind::Locked => (PamCode::MaxTries, Level::Notice, "denied (locked out)"),
        OutcomeKind::NotEnrolled if opts.require => {
            (PamCode::AuthErr, Level::Notice, "denied (not enrolled, require set)")
        }
        OutcomeKind::NotEnrolled => (PamCode::Ignore, Level::Debug, "ignored (not enrolled)"),
    };
    io.log(level, &format!("user {user} service {service}: {what}"));
    code
}

fn daemon_failure<I: PamIo>(io: &mut I, opts: &Options, user: &str, service: &str, why: &str) -> PamCode {
    match opts.fail {
        FailMode::Closed => {
            io.log(Level::Error, &format!("user {user} service {service}: {why}; denying (fail=closed)"));
            let _ = io.converse(Style::Error, UNAVAILABLE);
            PamCode::AuthErr
        }
        FailMode::Open => {
            io.log(
                Level::Warning,
                &format!(
                    "FAIL-OPEN: user {user} service {service}: {why}; passcode check SKIPPED because fail=open is set"
                ),
            );
            PamCode::Success
        }
    }
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Expected events, in order. Drop asserts every one happened.
    #[derive(Debug)]
    enum Ev {
        Show(Style, &'static str),
        Ask(Style, &'static str, Result<Option<Vec<u8>>, ConvError>),
        Send(ClientMsg),
        Recv(Result<ServerMsg, String>),
    }

    struct Script {
        user: Option<String>,
        events: VecDeque<Ev>,
        logs: Vec<(Level, String)>,
    }

    impl Script {
        fn new(user: Option<&str>, events: Vec<Ev>) -> Script {
            Script { user: user.map(String::from), events: events.into(), logs: Vec::new() }
        }
    }

    impl Drop for Script {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                assert!(self.events.is_empty(), "events left over: {:?}", self.events);
            }
        }
    }

    /// Fake libpam and fake daemon share the script, so their interleaving is checked.
    struct Fake<'a>(&'a std::cell::RefCell<Script>);

    impl PamIo for Fake<'_> {
        fn user(&mut self) -> Option<String> {
            self.0.borrow().user.clone()
        }
        fn service(&self) -> Option<String> {
            Some("login".into())
        }
        fn rhost(&self) -> Option<String> {
            Some("10.0.0.1\x1b[2J".into())
        }
        fn ruser(&self) -> Option<String> {
            None
        }
        fn tty(&self) -> Option<String> {
            Some("pts/1".into())
        }
        fn converse(&mut self, style: Style, text: &str) -> Result<Option<Vec<u8>>, ConvError> {
            match self.0.borrow_mut().events.pop_front() {
                Some(Ev::Show(s, t)) => {
                    assert_eq!((s, t), (style, text));
                    Ok(None)
                }
                Some(Ev::Ask(s, t, answer)) => {
                    assert_eq!((s, t), (style, text));
                    answer
                }
                other => panic!("unexpected converse({style:?}, {text:?}); expected {other:?}"),
            }
        }
        fn log(&mut self, level: Level, msg: &str) {
            self.0.borrow_mut().logs.push((level, msg.to_string()));
        }
    }

    impl Daemon for Fake<'_> {
        fn send(&mut self, msg: &ClientMsg) -> Result<(), String> {
            match self.0.borrow_mut().events.pop_front() {
                Some(Ev::Send(expected)) => {
                    assert_eq!(&expected, msg);
                    Ok(())
                }
                other => panic!("unexpected send {msg:?}; expected {other:?}"),
            }
        }
        fn recv(&mut self) -> Result<ServerMsg, String> {
            match self.0.borrow_mut().events.pop_front() {
                Some(Ev::Recv(r)) => r,
                other => panic!("unexpected recv; expected {other:?}"),
            }
        }
    }

    fn begin(user: &str) -> ClientMsg {
        ClientMsg::Begin {
            protocol: PROTOCOL_VERSION,
            user: user.into(),
            service: "login".into(),
            rhost: Some("10.0.0.1[2J".into()),
            ruser: None,
            tty: Some("pts/1".into()),
            pid: std::process::id(),
        }
    }

    fn outcome(result: OutcomeKind, message: Option<&str>) -> Ev {
        Ev::Recv(Ok(ServerMsg::Outcome { result, message: message.map(String::from) }))
    }

    fn run(opts: &Options, user: Option<&str>, connect_ok: bool, events: Vec<Ev>) -> (PamCode, Vec<(Level, String)>) {
        let cell = std::cell::RefCell::new(Script::new(user, events));
        let code = {
            let mut io = Fake(&cell);
            authenticate(&mut io, opts, |_| if connect_ok { Ok(Fake(&cell)) } else { Err("connection refused".into()) })
        };
        let logs = cell.borrow().logs.clone();
        (code, logs)
    }

    #[test]
    fn enrollment_then_accept() {
        let (code, _) = run(
            &Options::default(),
            Some("alice"),
            true,
            vec![
                Ev::Send(begin("alice")),
                Ev::Recv(Ok(ServerMsg::Info { text: "QR\x1b]0;x\x07 here".into() })),
                Ev::Show(Style::Info, "QR]0;x here"),
                Ev::Recv(Ok(ServerMsg::Prompt { echo: false, text: "Passcode: ".into() })),
                Ev::Ask(Style::PromptEchoOff, "Passcode: ", Ok(Some(b"123456".to_vec()))),
                Ev::Send(ClientMsg::Answer { text: "123456".into() }),
                outcome(OutcomeKind::Accept, None),
            ],
        );
        assert_eq!(code, PamCode::Success);
    }

    #[test]
    fn outcome_mapping() {
        for (result, require, expected) in [
            (OutcomeKind::Deny, false, PamCode::AuthErr),
            (OutcomeKind::Locked, false, PamCode::MaxTries),
            (OutcomeKind::NotEnrolled, false, PamCode::Ignore),
            (OutcomeKind::NotEnrolled, true, PamCode::AuthErr),
            (OutcomeKind::Accept, true, PamCode::Success),
        ] {
            let opts = Options { require, ..Options::default() };
            let (code, _) = run(&opts, Some("bob"), true, vec![Ev::Send(begin("bob")), outcome(result, None)]);
            assert_eq!(code, expected, "{result:?} require={require}");
        }
    }

    #[test]
    fn deny_message_is_shown_as_error() {
        let (code, _) = run(
            &Options::default(),
            Some("bob"),
            true,
            vec![
                Ev::Send(begin("bob")),
                outcome(OutcomeKind::Deny, Some("Wrong code.")),
                Ev::Show(Style::Error, "Wrong code."),
            ],
        );
        assert_eq!(code, PamCode::AuthErr);
    }

    #[test]
    fn daemon_down_fails_closed_and_open_is_loud() {
        let (code, logs) = run(&Options::default(), Some("bob"), false, vec![Ev::Show(Style::Error, UNAVAILABLE)]);
        assert_eq!(code, PamCode::AuthErr);
        assert!(logs.iter().any(|(l, m)| *l == Level::Error && m.contains("fail=closed")));

        let open = Options { fail: FailMode::Open, ..Options::default() };
        let (code, logs) = run(&open, Some("bob"), false, vec![]);
        assert_eq!(code, PamCode::Success);
        assert!(logs.iter().any(|(l, m)| *l == Level::Warning && m.contains("FAIL-OPEN")), "{logs:?}");
    }

    #[test]
    fn broken_reply_mid_conversation_fails_closed() {
        for failure in [Err("timed out".to_string()), Ok(ServerMsg::Ack)] {
            let (code, _) = run(
                &Options::default(),
                Some("bob"),
                true,
                vec![
                    Ev::Send(begin("bob")),
                    Ev::Recv(Ok(ServerMsg::Prompt { echo: false, text: "Passcode: ".into() })),
                    Ev::Ask(Style::PromptEchoOff, "Passcode: ", Ok(Some(b"1".to_vec()))),
                    Ev::Send(ClientMsg::Answer { text: "1".into() }),
                    Ev::Recv(failure),
                    Ev::Show(Style::Error, UNAVAILABLE),
                ],
            );
            assert_eq!(code, PamCode::AuthErr);
        }
    }

    #[test]
    fn no_user_is_denied_even_with_fail_open() {
        let open = Options { fail: FailMode::Open, ..Options::default() };
        assert_eq!(run(&open, None, true, vec![]).0, PamCode::AuthErr);
        assert_eq!(run(&open, Some(""), true, vec![]).0, PamCode::AuthErr);
    }

    #[test]
    fn conversation_failure_cancels_and_denies() {
        for answer in [Err(ConvError), Ok(None)] {
            let (code, _) = run(
                &Options { fail: FailMode::Open, ..Options::default() },
                Some("bob"),
                true,
                vec![
                    Ev::Send(begin("bob")),
                    Ev::Recv(Ok(ServerMsg::Prompt { echo: false, text: "Passcode: ".into() })),
                    Ev::Ask(Style::PromptEchoOff, "Passcode: ", answer),
                    Ev::Send(ClientMsg::Cancel),
                    outcome(OutcomeKind::Deny, None),
                ],
            );
            assert_eq!(code, PamCode::AuthErr);
        }
    }

    #[test]
    fn odd_answers_are_forwarded_capped_and_valid_utf8() {
        let huge = vec![b'1'; 100_000];
        let mut capped = "1".repeat(MAX_ANSWER_LEN + 1);
        for (typed, forwarded) in [
            (huge.clone(), std::mem::take(&mut capped)),
            (b"12\xff\xfe34".to_vec(), "12\u{FFFD}\u{FFFD}34".to_string()),
            ("١٢٣٤٥٦".as_bytes().to_vec(), "١٢٣٤٥٦".to_string()),
            (Vec::new(), String::new()),
        ] {
            let (code, _) = run(
                &Options::default(),
                Some("bob"),
                true,
                vec![
                    Ev::Send(begin("bob")),
                    Ev::Recv(Ok(ServerMsg::Prompt { echo: false, text: "Passcode: ".into() })),
                    Ev::Ask(Style::PromptEchoOff, "Passcode: ", Ok(Some(typed))),
                    Ev::Send(ClientMsg::Answer { text: forwarded }),
                    outcome(OutcomeKind::Deny, None),
                ],
            );
            assert_eq!(code, PamCode::AuthErr);
        }
    }

    #[test]
    fn endless_daemon_is_cut_off() {
        let mut events = vec![Ev::Send(begin("bob"))];
        for _ in 0..MAX_MESSAGES {
            events.push(Ev::Recv(Ok(ServerMsg::Info { text: "spam".into() })));
            events.push(Ev::Show(Style::Info, "spam"));
        }

        assert_eq!(run(&Options::default(), Some("bob"), true, events).0, PamCode::AuthErr);
    }
}
