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
    /// The account (uid) `user` resolves to in this process's directory.
    fn uid_of(&self, user: &str) -> Option<u32>;
    /// The application asked for PAM_SILENT (sudo does, always).
    fn silent(&self) -> bool;
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

/// Appended to a text shown as a prompt only so that it is seen (PAM_SILENT).
pub const PRESS_ENTER: &str = "(press Enter) ";

/// What the user sees. Without PAM_SILENT every text is shown as it comes.
/// With PAM_SILENT an application shows no messages, only prompts (sudo
/// calls pam_authenticate that way, so its users would never see the QR
/// code, "Wrong passcode." or "service unavailable"). Prompts cannot be
/// silenced, so messages are held back and put in front of the next
/// prompt; a message with no prompt after it becomes an echo-on prompt of
/// its own whose answer is ignored.
struct Screen {
    silent: bool,
    held: Vec<String>,
}

impl Screen {
    fn new(silent: bool) -> Screen {
        Screen { silent, held: Vec::new() }
    }

    /// An info or error message from the daemon (already sanitized).
    fn message<I: PamIo>(&mut self, io: &mut I, style: Style, text: String) {
        if !self.silent {
            let _ = io.converse(style, &text);
            return;
        }
        // A daemon cannot grow a prompt without bound: the oldest goes first.
        while !self.held.is_empty() && self.held_chars() + text.chars().count() > MAX_SHOWN_CHARS {
            self.held.remove(0);
        }
        self.held.push(text);
    }

    fn held_chars(&self) -> usize {
        self.held.iter().map(|t| t.chars().count() + 1).sum()
    }

    fn with_held(&mut self, text: &str) -> String {
        let mut parts = std::mem::take(&mut self.held);
        parts.push(text.to_string());
        parts.join("\n")
    }

    fn prompt<I: PamIo>(&mut self, io: &mut I, style: Style, text: &str) -> Result<Option<Vec<u8>>, ConvError> {
        let text = self.with_held(text);
        io.converse(style, &text)
    }

    /// The last thing said in this login: the outcome's message, or why
    /// the daemon cannot be used. `accepted`: a success needs no words in
    /// silent mode (the command simply runs).
    fn last_word<I: PamIo>(&mut self, io: &mut I, accepted: bool, text: Option<String>) {
        if !self.silent {
            if let Some(t) = text {
                let _ = io.converse(if accepted { Style::Info } else { Style::Error }, &t);
            }
            return;
        }
        if accepted {
            return;
        }
        if let Some(t) = text {
            self.held.push(t);
        }
        if self.held.is_empty() {
            return;
        }
        let body = std::mem::take(&mut self.held).join("\n");
        let body = body.trim_end();
        let sep = if body.contains('\n') { '\n' } else { ' ' };
        // The answer means nothing; a failed conversation changes nothing.
        let _ = io.converse(Style::PromptEchoOn, &format!("{body}{sep}{PRESS_ENTER}"));
    }
}

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
        // Looked up only when otpd asks (ResolveUser): a name enrolled as
        // typed needs no directory lookup on every login.
        uid: None,
        qr: opts.qr,
    };
    let mut screen = Screen::new(io.silent());
    let failed = |io: &mut I, screen: &mut Screen, why: String| {
        let code = daemon_failure(io, opts, &user_shown, &service, &why);
        if code != PamCode::Success {
            screen.last_word(io, false, Some(UNAVAILABLE.to_string()));
        }
        code
    };

    let mut daemon = match connect(opts) {
        Ok(d) => d,
        Err(e) => return failed(io, &mut screen, format!("cannot reach otpd: {e}")),
    };
    if let Err(e) = daemon.send(&begin) {
        return failed(io, &mut screen, format!("sending to otpd failed: {e}"));
    }

    // Once otpd has answered it is up: a conversation that breaks after that
    // (the user waited out its prompt timeout and it hung up, a lost
    // connection) is a denial, never fail=open's success.
    let broken = |io: &mut I, screen: &mut Screen, why: String| {
        io.log(Level::Error, &format!("user {user_shown} service {service}: {why}; denying"));
        screen.last_word(io, false, Some(UNAVAILABLE.to_string()));
        PamCode::AuthErr
    };
    let mut spoke = false;
    for _ in 0..MAX_MESSAGES {
        let msg = match daemon.recv() {
            Ok(m) => m,
            Err(e) if spoke => return broken(io, &mut screen, format!("otpd reply failed: {e}")),
            Err(e) => return failed(io, &mut screen, format!("otpd reply failed: {e}")),
        };
        spoke = true;
        let reply = match msg {
            ServerMsg::Info { text } => {
                screen.message(io, Style::Info, sanitize_display(&text, MAX_SHOWN_CHARS));
                continue;
            }
            ServerMsg::Error { text } => {
                screen.message(io, Style::Error, sanitize_display(&text, MAX_SHOWN_CHARS));
                continue;
            }
            ServerMsg::Prompt { echo, text } => {
                let style = if echo { Style::PromptEchoOn } else { Style::PromptEchoOff };
                match screen.prompt(io, style, &sanitize_display(&text, MAX_SHOWN_CHARS)) {
                    Ok(Some(bytes)) => ClientMsg::Answer { text: answer_text(&bytes) },
                    // A prompt without an answer is a failed conversation.
                    Ok(None) | Err(ConvError) => ClientMsg::Cancel,
                }
            }
            ServerMsg::Outcome { result, message } => {
                let message = message.filter(|m| !m.is_empty()).map(|m| sanitize_display(&m, MAX_SHOWN_CHARS));
                screen.last_word(io, result == OutcomeKind::Accept, message);
                return outcome_code(io, opts, result, &user_shown, &service);
            }
            ServerMsg::ResolveUser => ClientMsg::UserResolved { uid: io.uid_of(&user) },
            ServerMsg::Ack => {
                return failed(io, &mut screen, "otpd sent an unexpected message".into());
            }
        };
        let cancelled = reply == ClientMsg::Cancel;
        if let Err(e) = daemon.send(&reply) {
            return broken(io, &mut screen, format!("sending to otpd failed: {e}"));
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
    use common::proto::QrStyle;
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
        silent: bool,
        events: VecDeque<Ev>,
        logs: Vec<(Level, String)>,
    }

    impl Script {
        fn new(user: Option<&str>, events: Vec<Ev>) -> Script {
            Script { user: user.map(String::from), silent: false, events: events.into(), logs: Vec::new() }
        }
    }

    /// The fake directory: every name resolves to this uid.
    const UID: u32 = 1000;

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
        fn uid_of(&self, user: &str) -> Option<u32> {
            (user != "ghost").then_some(UID)
        }
        fn silent(&self) -> bool {
            self.0.borrow().silent
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
            uid: None,
            qr: QrStyle::Utf8,
        }
    }

    fn outcome(result: OutcomeKind, message: Option<&str>) -> Ev {
        Ev::Recv(Ok(ServerMsg::Outcome { result, message: message.map(String::from) }))
    }

    fn run(opts: &Options, user: Option<&str>, connect_ok: bool, events: Vec<Ev>) -> (PamCode, Vec<(Level, String)>) {
        run_as(false, opts, user, connect_ok, events)
    }

    fn run_silent(opts: &Options, user: Option<&str>, connect_ok: bool, events: Vec<Ev>) -> PamCode {
        run_as(true, opts, user, connect_ok, events).0
    }

    fn run_as(
        silent: bool,
        opts: &Options,
        user: Option<&str>,
        connect_ok: bool,
        events: Vec<Ev>,
    ) -> (PamCode, Vec<(Level, String)>) {
        let mut script = Script::new(user, events);
        script.silent = silent;
        let cell = std::cell::RefCell::new(script);
        let code = {
            let mut io = Fake(&cell);
            authenticate(&mut io, opts, |_| if connect_ok { Ok(Fake(&cell)) } else { Err("connection refused".into()) })
        };
        let logs = cell.borrow().logs.clone();
        (code, logs)
    }

    #[test]
    fn the_name_is_resolved_only_when_otpd_asks() {
        for (user, uid) in [("ALICE", Some(UID)), ("ghost", None)] {
            let (code, _) = run(
                &Options::default(),
                Some(user),
                true,
                vec![
                    Ev::Send(begin(user)),
                    Ev::Recv(Ok(ServerMsg::ResolveUser)),
                    Ev::Send(ClientMsg::UserResolved { uid }),
                    outcome(OutcomeKind::NotEnrolled, None),
                ],
            );
            assert_eq!(code, PamCode::Ignore, "{user}");
        }
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
    fn fail_open_never_applies_once_the_daemon_has_answered() {
        let open = Options { fail: FailMode::Open, ..Options::default() };
        let prompt = || {
            vec![
                Ev::Send(begin("bob")),
                Ev::Recv(Ok(ServerMsg::Prompt { echo: false, text: "Passcode: ".into() })),
                Ev::Ask(Style::PromptEchoOff, "Passcode: ", Ok(Some(b"1".to_vec()))),
            ]
        };
        // otpd hung up while the user was typing (its prompt timeout): the answer cannot be sent.
        let mut events = prompt();
        events.push(Ev::Show(Style::Error, UNAVAILABLE));
        let cell = std::cell::RefCell::new(Script::new(Some("bob"), events));
        struct HungUp<'a>(Fake<'a>);
        impl Daemon for HungUp<'_> {
            fn send(&mut self, msg: &ClientMsg) -> Result<(), String> {
                match msg {
                    ClientMsg::Answer { .. } => Err("Broken pipe".into()),
                    _ => self.0.send(msg),
                }
            }
            fn recv(&mut self) -> Result<ServerMsg, String> {
                self.0.recv()
            }
        }
        let mut io = Fake(&cell);
        let code = authenticate(&mut io, &open, |_| Ok(HungUp(Fake(&cell))));
        assert_eq!(code, PamCode::AuthErr, "waiting out the prompt must not log in");
        drop(cell);
        // The reply after the answer never comes.
        let mut events = prompt();
        events.extend([
            Ev::Send(ClientMsg::Answer { text: "1".into() }),
            Ev::Recv(Err("timed out".into())),
            Ev::Show(Style::Error, UNAVAILABLE),
        ]);
        assert_eq!(run(&open, Some("bob"), true, events).0, PamCode::AuthErr);
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

    #[test]
    fn begin_carries_the_account_and_the_qr_style() {
        let opts = Options { qr: QrStyle::Ascii, ..Options::default() };
        let mut ghost = begin("ghost");
        if let ClientMsg::Begin { qr, .. } = &mut ghost {
            *qr = QrStyle::Ascii;
        }
        let (code, _) = run(&opts, Some("ghost"), true, vec![Ev::Send(ghost), outcome(OutcomeKind::NotEnrolled, None)]);
        assert_eq!(code, PamCode::Ignore);
    }

    #[test]
    fn silent_enrollment_puts_the_qr_into_the_prompt() {
        let code = run_silent(
            &Options::default(),
            Some("alice"),
            true,
            vec![
                Ev::Send(begin("alice")),
                Ev::Recv(Ok(ServerMsg::Info { text: "QR\nURI: otpauth://x".into() })),
                Ev::Recv(Ok(ServerMsg::Error { text: "mail is failing".into() })),
                Ev::Recv(Ok(ServerMsg::Prompt { echo: false, text: "Passcode: ".into() })),
                Ev::Ask(
                    Style::PromptEchoOff,
                    "QR\nURI: otpauth://x\nmail is failing\nPasscode: ",
                    Ok(Some(b"123456".to_vec())),
                ),
                Ev::Send(ClientMsg::Answer { text: "123456".into() }),
                // Nothing is held any more: the next prompt is plain.
                Ev::Recv(Ok(ServerMsg::Prompt { echo: true, text: "Email address: ".into() })),
                Ev::Ask(Style::PromptEchoOn, "Email address: ", Ok(Some(b"a@b.c".to_vec()))),
                Ev::Send(ClientMsg::Answer { text: "a@b.c".into() }),
                // An accept needs no words when silent: the command just runs.
                outcome(OutcomeKind::Accept, Some("Passcode accepted: your authenticator is now enrolled.")),
            ],
        );
        assert_eq!(code, PamCode::Success);
    }

    #[test]
    fn silent_denial_is_a_prompt_whose_answer_is_ignored() {
        for (result, expected) in [(OutcomeKind::Deny, PamCode::AuthErr), (OutcomeKind::Locked, PamCode::MaxTries)] {
            let code = run_silent(
                &Options::default(),
                Some("bob"),
                true,
                vec![
                    Ev::Send(begin("bob")),
                    Ev::Recv(Ok(ServerMsg::Prompt { echo: false, text: "Passcode: ".into() })),
                    Ev::Ask(Style::PromptEchoOff, "Passcode: ", Ok(Some(b"000000".to_vec()))),
                    Ev::Send(ClientMsg::Answer { text: "000000".into() }),
                    outcome(result, Some("Wrong passcode.")),
                    Ev::Ask(Style::PromptEchoOn, "Wrong passcode. (press Enter) ", Ok(Some(b"123456".to_vec()))),
                ],
            );
            assert_eq!(code, expected, "{result:?}: the answer to the notice must not matter");
        }
        // Held messages and a multi-line message end on a line of their own;
        // a conversation that fails on the notice changes nothing.
        let code = run_silent(
            &Options::default(),
            Some("bob"),
            true,
            vec![
                Ev::Send(begin("bob")),
                Ev::Recv(Ok(ServerMsg::Info { text: "Your request #3 is waiting.".into() })),
                outcome(OutcomeKind::Deny, None),
                Ev::Ask(Style::PromptEchoOn, "Your request #3 is waiting. (press Enter) ", Err(ConvError)),
            ],
        );
        assert_eq!(code, PamCode::AuthErr);
        // Without a message there is nothing to show.
        let code = run_silent(
            &Options::default(),
            Some("bob"),
            true,
            vec![Ev::Send(begin("bob")), outcome(OutcomeKind::Deny, None)],
        );
        assert_eq!(code, PamCode::AuthErr);
    }

    #[test]
    fn silent_daemon_down_names_the_passcode_service() {
        let notice: &'static str = Box::leak(format!("{UNAVAILABLE} {PRESS_ENTER}").into_boxed_str());
        let code =
            run_silent(&Options::default(), Some("bob"), false, vec![Ev::Ask(Style::PromptEchoOn, notice, Ok(None))]);
        assert_eq!(code, PamCode::AuthErr);
        // Broken mid-conversation: what was held is shown with it.
        let notice: &'static str = Box::leak(format!("QR\n{UNAVAILABLE}\n{PRESS_ENTER}").into_boxed_str());
        let code = run_silent(
            &Options::default(),
            Some("bob"),
            true,
            vec![
                Ev::Send(begin("bob")),
                Ev::Recv(Ok(ServerMsg::Info { text: "QR".into() })),
                Ev::Recv(Err("timed out".into())),
                Ev::Ask(Style::PromptEchoOn, notice, Ok(Some(Vec::new()))),
            ],
        );
        assert_eq!(code, PamCode::AuthErr);
        // fail=open says nothing, as without PAM_SILENT.
        let open = Options { fail: FailMode::Open, ..Options::default() };
        assert_eq!(run_silent(&open, Some("bob"), false, vec![]), PamCode::Success);
    }

    #[test]
    fn silent_held_text_is_bounded() {
        let mut events = vec![Ev::Send(begin("bob"))];
        for _ in 0..MAX_MESSAGES - 2 {
            events.push(Ev::Recv(Ok(ServerMsg::Info { text: "x".repeat(MAX_SHOWN_CHARS) })));
        }
        events.push(Ev::Recv(Ok(ServerMsg::Prompt { echo: false, text: "Passcode: ".into() })));
        let mut script = Script::new(Some("bob"), events);
        script.silent = true;
        let cell = std::cell::RefCell::new(script);
        struct Measure<'a>(Fake<'a>, usize);
        impl PamIo for Measure<'_> {
            fn user(&mut self) -> Option<String> {
                self.0.user()
            }
            fn service(&self) -> Option<String> {
                self.0.service()
            }
            fn rhost(&self) -> Option<String> {
                self.0.rhost()
            }
            fn ruser(&self) -> Option<String> {
                None
            }
            fn tty(&self) -> Option<String> {
                self.0.tty()
            }
            fn uid_of(&self, user: &str) -> Option<u32> {
                self.0.uid_of(user)
            }
            fn silent(&self) -> bool {
                true
            }
            fn converse(&mut self, _: Style, text: &str) -> Result<Option<Vec<u8>>, ConvError> {
                self.1 = self.1.max(text.chars().count());
                Err(ConvError)
            }
            fn log(&mut self, _: Level, _: &str) {}
        }
        let mut io = Measure(Fake(&cell), 0);
        cell.borrow_mut().events.extend([Ev::Send(ClientMsg::Cancel), outcome(OutcomeKind::Deny, None)]);
        assert_eq!(authenticate(&mut io, &Options::default(), |_| Ok(Fake(&cell))), PamCode::AuthErr);
        assert!(io.1 <= 2 * MAX_SHOWN_CHARS + 16, "a prompt of {} characters", io.1);
    }
}
