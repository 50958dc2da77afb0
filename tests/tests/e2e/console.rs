//! The web console's door in otpd, through its socket: a console login's
//! password checked by the real libpam (pam_wrapper's pam_matrix as the
//! `otpweb` service), accounts and the admin group from nss_wrapper, the
//! second factor through the terminal's conversation. The browser tests
//! drive the same otpd through otpweb.
use crate::support::{shared, Fixture, Setup};
use common::proto::{AdminRequest, AdminResponse, OutcomeKind};
use common::web::{Client, WebErrorKind, WebRequest, WebResponse};
use std::path::PathBuf;
use std::time::Duration;

/// Console passwords (pam_matrix's passdb: user:password:service).
pub const PASSWORDS: &[(&str, &str)] = &[("alice", "alice-pw-1"), ("bob", "bob-pw-2"), ("carol", "carol-pw-3")];

/// An otpd with `[web]` enabled, its PAM service `otpweb` answered by
/// pam_matrix, and a directory of its own (nss_wrapper): alice is in the
/// admin group `otpadmin`, bob and carol are not; otpweb's group is `otpweb`.
pub struct Console {
    pub fx: Fixture,
}

pub const WEB_GID: u32 = 991;
pub const ADMIN_GID: u32 = 990;

impl Console {
    pub fn start() -> Console {
        Console::start_with("")
    }

    /// `extra`: more of otpd.toml, after `[web]` (start other tables with their header).
    pub fn start_with(extra: &str) -> Console {
        Console::start_top("", extra)
    }

    /// [`Console::start_with`], with `top` before `[daemon]` (`role = "server"`).
    pub fn start_top(top: &str, extra: &str) -> Console {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        std::fs::create_dir_all(d.join("services")).unwrap();
        let passdb: String = PASSWORDS.iter().map(|(u, p)| format!("{u}:{p}:otpweb\n")).collect();
        std::fs::write(d.join("passdb"), passdb).unwrap();
        let matrix = "/usr/lib/x86_64-linux-gnu/pam_wrapper/pam_matrix.so";
        let service = format!(
            "auth required {matrix} passdb={p}\naccount required {matrix} passdb={p}\n",
            p = d.join("passdb").display()
        );
        std::fs::write(d.join("services/otpweb"), service).unwrap();
        std::fs::write(
            d.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1001:Alice:/home/alice:/bin/sh\n\
             bob:x:1002:1002:Bob:/home/bob:/bin/sh\ncarol:x:1003:1003:Carol:/home/carol:/bin/sh\n\
             otpweb:x:991:991:console:/nonexistent:/usr/sbin/nologin\n",
        )
        .unwrap();
        std::fs::write(
            d.join("group"),
            format!(
                "root:x:0:\nalice:x:1001:\nbob:x:1002:\ncarol:x:1003:\notpadmin:x:{ADMIN_GID}:alice\notpweb:x:{WEB_GID}:\n"
            ),
        )
        .unwrap();
        let env = [
            ("LD_PRELOAD", "libpam_wrapper.so libnss_wrapper.so".to_string()),
            ("PAM_WRAPPER", "1".to_string()),
            ("PAM_WRAPPER_SERVICE_DIR", d.join("services").display().to_string()),
            ("NSS_WRAPPER_PASSWD", d.join("passwd").display().to_string()),
            ("NSS_WRAPPER_GROUP", d.join("group").display().to_string()),
        ];
        // otpweb's own (its self-signed certificate), writable by its uid only.
        let state = d.join("web-state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::chown(&state, Some(WEB_GID), Some(WEB_GID)).unwrap();
        let extra = format!(
            "admin_group = \"otpadmin\"\n[web]\nenabled = true\nsocket = \"{d}/run/web.sock\"\n\
             state_dir = \"{state}\"\n{extra}",
            d = d.display(),
            state = state.display(),
        );
        let setup = Setup {
            top: top.into(),
            extra,
            env: env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            ..Setup::default()
        };
        let c = Console { fx: Fixture::start_setup(dir, setup) };
        // The web socket is bound after the PAM and admin sockets.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(c.web_socket()).is_err() {
            assert!(std::time::Instant::now() < deadline, "no web socket: {}", c.fx.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    }

    pub fn web_socket(&self) -> PathBuf {
        self.fx.path("run/web.sock")
    }

    /// One request on the web socket, as otpweb sends it.
    pub fn web(&self, req: &WebRequest) -> WebResponse {
        let mut c = common::client::Client::connect(&self.web_socket(), Duration::from_secs(30), &[0])
            .unwrap()
            .for_admin_responses();
        c.call(req).unwrap()
    }

    pub fn start_login(&self, user: &str, password: &str, addr: &str) -> WebResponse {
        let client = Client { addr: addr.into() };
        self.web(&WebRequest::LoginStart { client, user: user.into(), password: password.into() })
    }

    pub fn answer(&self, flow: &str, text: &str) -> WebResponse {
        let client = Client { addr: "127.0.0.1".into() };
        self.web(&WebRequest::Answer { client, flow: flow.into(), text: text.into() })
    }

    /// A console session of `user` (enrolled and active: `uri`).
    pub fn session(&self, user: &str, uri: &str, steps: i64) -> (String, String) {
        let pw = PASSWORDS.iter().find(|(u, _)| *u == user).unwrap().1;
        let WebResponse::Step { flow, .. } = self.start_login(user, pw, "127.0.0.1") else { panic!("no step") };
        match self.answer(&flow, &self.fx.code(uri, steps)) {
            WebResponse::Session { token, session, .. } => (token, session.csrf),
            other => panic!("expected a session, got {other:?}"),
        }
    }
}

fn error_kind(r: &WebResponse) -> Option<WebErrorKind> {
    match r {
        WebResponse::Error { kind, .. } => Some(*kind),
        _ => None,
    }
}

/// The password through the real libpam: a wrong password and an unknown
/// name get the same answer, and neither reaches the second factor; the
/// right one starts the terminal's conversation; its code opens a session
/// whose admin rights come from the admin group in the directory.
#[test]
fn a_console_login_is_the_pam_password_then_the_second_factor() {
    let _turn = shared();
    let c = Console::start();
    let uri = c.fx.enroll_active("alice");
    let wrong = c.start_login("alice", "not-her-password", "192.0.2.10");
    let unknown = c.start_login("mallory", "whatever", "192.0.2.10");
    assert_eq!(wrong, unknown, "one answer for a wrong password and an unknown name");
    assert_eq!(error_kind(&wrong), Some(WebErrorKind::BadLogin));
    let audit = c.fx.ctl_ok(&["audit", "--user", "alice"]);
    assert!(audit.contains("console login: wrong user name or password"), "{audit}");
    assert_eq!(c.fx.show("alice")["user"]["failures"], 0, "a wrong password is not a wrong code");

    let step = c.start_login("alice", "alice-pw-1", "192.0.2.10");
    let WebResponse::Step { flow, prompt, .. } = step else { panic!("expected a step, got {step:?}") };
    assert!(prompt.starts_with("Passcode"), "{prompt}");
    let WebResponse::Session { session, token, .. } = c.answer(&flow, &c.fx.code(&uri, 0)) else {
        panic!("expected a session")
    };
    assert!(session.admin, "alice is in otpadmin");
    let audit = c.fx.ctl_ok(&["audit", "--user", "alice"]);
    let accept = audit.lines().find(|l| l.contains("accept")).unwrap_or_else(|| panic!("{audit}"));
    assert!(accept.contains("web") && accept.contains("192.0.2.10"), "{accept}");
    let status = WebRequest::Admin {
        client: Client { addr: "192.0.2.10".into() },
        session: token,
        csrf: None,
        request: AdminRequest::Status,
        passive: false,
    };
    assert!(matches!(c.web(&status), WebResponse::Admin { response: AdminResponse::Status { .. } }));
}

/// bob is no admin: his session is refused every admin request, and a
/// user not enabled for OTP gets no console session at all.
#[test]
fn only_the_admin_group_administers_and_no_second_factor_means_no_session() {
    let _turn = shared();
    let c = Console::start();
    let uri = c.fx.enroll_active("bob");
    let (token, csrf) = c.session("bob", &uri, 0);
    let disable = WebRequest::Admin {
        client: Client { addr: "192.0.2.11".into() },
        session: token,
        csrf: Some(csrf),
        request: AdminRequest::UserDisable { user: "bob".into() },
        passive: false,
    };
    assert_eq!(error_kind(&c.web(&disable)), Some(WebErrorKind::Forbidden));
    assert_eq!(c.fx.show("bob")["user"]["enabled"], true);
    let carol = c.start_login("carol", "carol-pw-3", "192.0.2.11");
    assert!(matches!(carol, WebResponse::Ended { outcome: OutcomeKind::NotEnrolled, .. }), "{carol:?}");
}

/// Another uid than root and otpweb's group cannot even speak to the door.
#[test]
fn the_web_socket_is_root_and_otpwebs_group_only() {
    let _turn = shared();
    let c = Console::start();
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(c.web_socket()).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, WEB_GID));
}

/// Check 10 through the console: a code accepted at the terminal is refused
/// in the browser, and one code sent at once to both is accepted once.
#[test]
fn a_code_works_once_across_the_terminal_and_the_console() {
    let _turn = shared();
    let c = Console::start();
    let uri = c.fx.enroll_active("alice");
    let code = c.fx.code(&uri, 0);
    assert_eq!(c.fx.login("alice", &[&code]).code, 0);
    let WebResponse::Step { flow, .. } = c.start_login("alice", "alice-pw-1", "192.0.2.20") else { panic!("no step") };
    let again = c.answer(&flow, &code);
    assert!(matches!(again, WebResponse::Ended { outcome: OutcomeKind::Deny, .. }), "{again:?}");

    for round in 1..=3 {
        // A step of its own each round: the daemon's clock moves with it.
        c.fx.set_clock_offset(30 * round);
        let code = c.fx.code(&uri, round);
        let WebResponse::Step { flow, .. } = c.start_login("alice", "alice-pw-1", "192.0.2.20") else {
            panic!("no step")
        };
        let (web, terminal) = std::thread::scope(|s| {
            let web = s.spawn(|| matches!(c.answer(&flow, &code), WebResponse::Session { .. }));
            let terminal = s.spawn(|| c.fx.login("alice", &[&code]).code == 0);
            (web.join().unwrap(), terminal.join().unwrap())
        });
        assert!(web ^ terminal, "round {round}: web {web}, terminal {terminal}: exactly one must succeed");
    }
}
