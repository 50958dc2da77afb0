//! The web console in a real browser: headless Chromium over WebDriver
//! ([`support::browser`]) against otpweb, run unprivileged (uid and gid
//! 991, the `otpweb` group of [`Console`]'s directory) in front of a real
//! otpd whose console passwords the real libpam checks (pam_matrix), while
//! terminal logins go through the real libpam and pam_otp.so (pamdrive).
use crate::console::{Console, PASSWORDS, WEB_GID};
use crate::email::{make_certs, start_smtp, wait_for_mails};
use crate::support::{self, as_uid, browser::Browser, free_port, run, staged, SmtpSink};
use e2e::{PAM_AUTH_ERR, PAM_SUCCESS};
use serde_json::{json, Map, Value};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a page may take to show what a test waits for (a poll: only a
/// failing test waits it out; generous for a loaded machine).
const WAIT: Duration = Duration::from_secs(20);

/// An SMTP sink and the files the `[email]`/`[smtp]` config names.
struct MailSink {
    dir: tempfile::TempDir,
    _sink: SmtpSink,
}

impl MailSink {
    /// Certificates, the address directory (bob and carol), the sink on a
    /// free port; the config that mails through it.
    fn start(email: &str) -> (MailSink, String) {
        let dir = tempfile::tempdir().unwrap();
        make_certs(dir.path());
        std::fs::write(dir.path().join("emails"), "bob bob@example.org\ncarol carol@example.org\n").unwrap();
        let port = free_port();
        let config = format!(
            "[email]\ndirectory = \"file:{emails}\"\n{email}\n[smtp]\nurl = \"smtp://localhost:{port}\"\n\
             from = \"otpd <otpd@test.example>\"\nca_file = \"{ca}\"\ntimeout = \"5s\"\n",
            emails = dir.path().join("emails").display(),
            ca = dir.path().join("ca.pem").display(),
        );
        let sink = start_smtp(dir.path(), port);
        (MailSink { dir, _sink: sink }, config)
    }

    fn maildir(&self) -> PathBuf {
        self.dir.path().join("maildir")
    }
}

/// otpd with the console enabled ([`Console`]) and otpweb in front of it.
struct Web {
    c: Console,
    otpweb: Child,
    /// `https://127.0.0.1:PORT`, as otpweb printed it.
    base: String,
    mail: Option<MailSink>,
}

impl Web {
    fn start(extra: &str) -> Web {
        Web::start_full("", extra, None)
    }

    /// With mail through an SMTP sink; `email`: more `[email]` keys.
    fn start_mail(email: &str) -> Web {
        Web::start_full("", "", Some(email))
    }

    fn start_full(top: &str, extra: &str, email: Option<&str>) -> Web {
        let (mail, mail_config) = match email.map(MailSink::start) {
            Some((sink, config)) => (Some(sink), config),
            None => (None, String::new()),
        };
        let c = Console::start_top(top, &format!("{extra}\n{mail_config}"));
        // otpweb reaches the web socket as its group: the way there must be open to it.
        let socket = c.web_socket();
        for dir in socket.ancestors().skip(1) {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir).unwrap().permissions().mode();
            assert!(mode & 0o001 != 0, "{} (mode {mode:o}) keeps otpweb from its socket", dir.display());
        }
        let log = std::fs::File::create(c.fx.path("otpweb.log")).unwrap();
        let mut cmd = Command::new(staged("otpweb"));
        cmd.arg("--config").arg(&c.fx.config).args(["--listen", "127.0.0.1:0"]);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
        as_uid(&mut cmd, WEB_GID);
        let mut otpweb = cmd.spawn().unwrap();
        // Read on a thread of its own to the end (otpweb's stdout must not
        // close under it), so a silent otpweb cannot hang the test.
        let stdout = otpweb.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut web = Web { c, otpweb, base: String::new(), mail };
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
            panic!("otpweb printed no address: {}", std::fs::read_to_string(web.c.fx.path("otpweb.log")).unwrap())
        });
        web.base = line.strip_prefix("otpweb listening on ").unwrap_or_else(|| panic!("{line:?}")).to_string();
        assert!(web.base.starts_with("https://127.0.0.1:"), "{}", web.base);
        // Unprivileged indeed: no uid, gid or supplementary group but 991.
        let status = std::fs::read_to_string(format!("/proc/{}/status", web.otpweb.id())).unwrap();
        for (field, want) in [("Uid:", "991 991 991 991"), ("Gid:", "991 991 991 991"), ("Groups:", "")] {
            let got = status.lines().find_map(|l| l.strip_prefix(field)).unwrap_or_default();
            assert_eq!(got.split_whitespace().collect::<Vec<_>>().join(" "), want, "otpweb's {field}");
        }
        web
    }

    fn fx(&self) -> &support::Fixture {
        &self.c.fx
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn maildir(&self) -> PathBuf {
        self.mail.as_ref().expect("started with mail").maildir()
    }

    /// The console's first step for `user` (their pam_matrix password);
    /// the browser is on the page that follows.
    fn password(&self, b: &Browser, user: &str) {
        let password = PASSWORDS.iter().find(|(u, _)| *u == user).unwrap().1;
        b.goto(&self.url("/login"));
        b.fill("#user", user);
        b.fill("#password", password);
        click_and_wait(b, "main form button[type=submit]");
    }

    /// A whole console login: password, then `code` at the second step.
    fn login(&self, b: &Browser, user: &str, code: &str) {
        self.password(b, user);
        assert_eq!(h1(b), "Second step", "after {user}'s password");
        answer(b, code);
    }

    fn log(&self) -> String {
        format!(
            "otpweb:\n{}\notpd:\n{}",
            std::fs::read_to_string(self.fx().path("otpweb.log")).unwrap_or_default(),
            self.fx().log()
        )
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        // By its pid: root may signal uid 991's process.
        unsafe { libc::kill(self.otpweb.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.otpweb.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.otpweb.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.otpweb.wait();
    }
}

/// Clicks `css` (a submit button) and waits until the next document has loaded.
fn click_and_wait(b: &Browser, css: &str) {
    b.execute("window.__e2eOldPage = true;", vec![]);
    b.click(css);
    b.wait_until(&format!("a new page after clicking {css}"), WAIT, |b| {
        b.execute("return window.__e2eOldPage !== true && document.readyState === 'complete';", vec![]) == json!(true)
    });
}

/// Answers the current step with `text`.
fn answer(b: &Browser, text: &str) {
    b.fill("#answer", text);
    click_and_wait(b, "button[name=choice][value=answer]");
}

/// The page's heading.
fn h1(b: &Browser) -> String {
    b.text("main h1")
}

/// The rows of the table matching `table` as column (`data-label`) → text.
fn rows(b: &Browser, table: &str) -> Vec<Map<String, Value>> {
    let script = "return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr')).map(tr => {
                    const row = {};
                    for (const td of tr.cells) { row[td.getAttribute('data-label') || ''] = td.textContent.trim(); }
                    return row;
                  });";
    match b.execute(script, vec![json!(table)]) {
        Value::Array(rows) => rows.into_iter().filter_map(|r| r.as_object().cloned()).collect(),
        other => panic!("rows of {table}: {other}"),
    }
}

/// The row of `table` whose `column` reads `value`.
fn row_where(b: &Browser, table: &str, column: &str, value: &str) -> Map<String, Value> {
    let all = rows(b, table);
    all.iter()
        .find(|r| r.get(column).and_then(Value::as_str) == Some(value))
        .cloned()
        .unwrap_or_else(|| panic!("no row with {column} = {value:?} at {}: {all:?}", b.current_url()))
}

fn cell<'a>(row: &'a Map<String, Value>, column: &str) -> &'a str {
    row.get(column).and_then(Value::as_str).unwrap_or_else(|| panic!("no {column} in {row:?}"))
}

/// A POST made by the current page's own script (same origin, its
/// cookies): the status and the body.
fn page_post(b: &Browser, path: &str, body: &str) -> (i64, String) {
    let script = "const done = arguments[arguments.length - 1];
        fetch(arguments[0], { method: 'POST', redirect: 'manual',
                              headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, body: arguments[1] })
          .then(r => r.text().then(t => done([r.status, t])), e => done([-1, String(e)]));";
    let v = b.execute_async(script, vec![json!(path), json!(body)]);
    (v[0].as_i64().unwrap_or(-2), v[1].as_str().unwrap_or_default().to_string())
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

/// A six-digit code that is none of `uri`'s codes near the pinned time.
fn wrong_code(fx: &support::Fixture, uri: &str) -> String {
    let near: Vec<String> = (-2..=2).map(|s| fx.code(uri, s)).collect();
    (0..).map(|n| format!("{n:06}")).find(|c| !near.contains(c)).unwrap()
}

/// What otpd records as the host of a login: `[daemon] machine_id`'s first line.
fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id").unwrap().lines().next().unwrap_or_default().trim().to_string()
}

/// An admin enables a user in the console, sees the pending enrollment,
/// and after that user's first terminal login through the real libpam
/// sees it activated; the audit names the console action as service
/// `web`, by alice, from the browser's address.
#[test]
fn an_admin_enables_a_user_who_then_activates_at_the_terminal() {
    let _turn = support::exclusive("browser");
    let w = Web::start("");
    let fx = w.fx();
    let alice = fx.enroll_active("alice");
    let b = Browser::start();
    w.login(&b, "alice", &fx.code(&alice, 0));
    assert_eq!((h1(&b), b.current_url()), ("Dashboard".to_string(), w.url("/")), "{}", w.log());

    b.goto(&w.url("/users"));
    assert!(rows(&b, "table").iter().all(|r| cell(r, "Name") != "bob"), "bob is not enabled yet");
    b.fill("#new-user", "bob");
    assert_eq!(b.execute("return document.getElementById('new-method').value;", vec![]), json!("totp"));
    click_and_wait(&b, "form[action='/users'][method=post] button[type=submit]");
    assert_eq!(h1(&b), "User enabled");
    assert!(b.text("main").contains("bob is enabled for totp codes; the enrollment is pending"), "{}", b.text("main"));
    // The key is bob's to see, at his own login: a console session never
    // carries a secret (a stolen admin cookie collects none).
    assert_eq!(b.count("figure.qr-figure svg"), 0, "no QR code in the admin's browser");
    assert!(!b.text("main").contains("otpauth://"), "{}", b.text("main"));

    b.goto(&w.url("/users"));
    let row = row_where(&b, "table", "Name", "bob");
    assert_eq!((cell(&row, "Method"), cell(&row, "Enabled"), cell(&row, "Activated")), ("totp", "yes", "False"));
    assert_eq!(cell(&row, "Last login"), "never");

    // bob's first login at a terminal shows him the QR code; its first code activates it.
    let shown = fx.login("bob", &[""]);
    let uri = shown.uri().unwrap_or_else(|| panic!("no QR code at bob's login: {}", shown.out));
    let first = fx.login("bob", &[&fx.code(&uri, 0)]);
    assert_eq!(first.code, PAM_SUCCESS, "{}", first.out);
    b.refresh();
    let row = row_where(&b, "table", "Name", "bob");
    assert_eq!(cell(&row, "Activated"), "True", "{row:?}");
    assert_ne!(cell(&row, "Last login"), "never");

    b.goto(&w.url("/audit?user=bob"));
    let audit = rows(&b, "table");
    let by_web = audit
        .iter()
        .find(|r| cell(r, "Service") == "web")
        .unwrap_or_else(|| panic!("no console action for bob in {audit:?}"));
    assert_eq!(cell(by_web, "Remote host"), "127.0.0.1", "{by_web:?}");
    assert!(cell(by_web, "Reason").contains("by alice on the web console from 127.0.0.1"), "{by_web:?}");
    assert!(
        audit.iter().any(|r| cell(r, "Service") == "otp" && cell(r, "Result") == "accept"),
        "the terminal login is audited too: {audit:?}"
    );
}

/// A user at a real PAM prompt asks for emergency access; the request
/// shows up on the admin's open requests page by itself (the same
/// document: no navigation, no reload), hostile text in it as text;
/// approving it mails a code, and the code logs the user in.
#[test]
fn an_emergency_request_appears_live_and_its_approval_mails_a_working_code() {
    let _turn = support::exclusive("browser");
    let w = Web::start_mail("emergency = { enabled = true, approval = \"admin\" }\n");
    let fx = w.fx();
    let alice = fx.enroll_active("alice");
    fx.ctl_ok(&["user", "enable", "bob", "--method", "email"]);
    let b = Browser::start();
    w.login(&b, "alice", &fx.code(&alice, 0));
    b.goto(&w.url("/requests"));
    assert_eq!(h1(&b), "Emergency requests");
    b.wait_for_text("#requests-body", "No requests are waiting.", WAIT);
    b.execute("window.__samePage = 'not reloaded';", vec![]);
    let url = b.current_url();

    let reason = "lost phone <b id=\"hostile\">&amp; 'quoted'</b>";
    let asked = fx.login("bob", &["e", "bob.home@example.net", reason]);
    assert!(asked.out.contains("waiting for an administrator"), "{}", asked.out);
    b.wait_for_text("#requests-body", "bob.home@example.net", Duration::from_secs(15));
    assert_eq!(b.current_url(), url, "the page did not navigate");
    assert_eq!(b.execute("return window.__samePage;", vec![]), json!("not reloaded"));
    let row = row_where(&b, "table", "User", "bob");
    assert_eq!(cell(&row, "Address"), "bob.home@example.net");
    assert_eq!(cell(&row, "Reason"), reason, "the reason is shown as text");
    assert_eq!(b.execute("return document.getElementById('hostile');", vec![]), Value::Null);
    assert!(mails(&w).is_empty(), "nothing is mailed before approval");
    b.assert_accessible("requests-live");
    b.screenshot("console-requests-live");

    click_and_wait(&b, "#requests-body button[aria-label^='Approve request']");
    assert_eq!(h1(&b), "Request approved", "{}", b.text("main"));
    let mail = wait_for_mails(&w.maildir(), 1);
    assert_eq!(mail.len(), 1, "no mail after the approval: {}", w.log());
    assert_eq!(mail[0].to, "bob.home@example.net");
    let ok = fx.login("bob", &[&mail[0].code()]);
    assert_eq!(ok.code, PAM_SUCCESS, "{}", ok.out);

    b.goto(&w.url("/requests"));
    b.wait_for_text("#requests-body", "No requests are waiting.", WAIT);
}

fn mails(w: &Web) -> Vec<crate::email::Mail> {
    crate::email::mails(&w.maildir())
}

/// A terminal session of a user who logged in with an emailed code is
/// listed as `user (email)`, with the host, remote host and terminal.
#[test]
fn the_sessions_page_names_the_user_with_their_address_and_host() {
    let _turn = support::exclusive("browser");
    let w = Web::start_mail("");
    let fx = w.fx();
    let alice = fx.enroll_active("alice");
    fx.ctl_ok(&["user", "enable", "bob", "--method", "email"]);
    let sent = fx.login("bob", &[""]);
    assert!(sent.out.contains("A code was sent"), "{}", sent.out);
    let code = wait_for_mails(&w.maildir(), 1)[0].code();
    let mut login = fx.pamdrive("otp", "bob", &[code.as_bytes()]);
    login.args(["--session", "--rhost", "192.0.2.33", "--tty", "/dev/pts/4"]);
    let login = run(login);
    assert_eq!(login.code, PAM_SUCCESS, "{}", login.out);

    let b = Browser::start();
    w.login(&b, "alice", &fx.code(&alice, 0));
    b.goto(&w.url("/sessions"));
    assert_eq!(h1(&b), "Sessions");
    let row = row_where(&b, "table", "User", "bob (bob@example.org)");
    assert_eq!(cell(&row, "Host"), machine_id(), "{row:?}");
    assert_eq!((cell(&row, "Service"), cell(&row, "Remote host")), ("otp", "192.0.2.33"), "{row:?}");
    assert_eq!(cell(&row, "Terminal"), "/dev/pts/4", "{row:?}");
}

/// bob is no admin: he lands on his own page, every admin page is
/// refused, and admin actions forged from his page with his own valid
/// CSRF token are refused by otpd (audited) and change nothing.
#[test]
fn a_user_who_is_no_admin_reaches_no_admin_page_or_action() {
    let _turn = support::exclusive("browser");
    let w = Web::start("");
    let fx = w.fx();
    let bob = fx.enroll_active("bob");
    fx.ctl_ok(&["user", "enable", "carol", "--method", "totp"]);
    let carol_before = fx.show("carol");
    let b = Browser::start();
    w.login(&b, "bob", &fx.code(&bob, 0));
    assert_eq!((h1(&b), b.current_url()), ("My account".to_string(), w.url("/me")), "{}", w.log());
    assert_eq!(b.count("nav a[href='/users']"), 0, "no admin links");

    for path in ["/users", "/users/carol", "/audit", "/hosts", "/requests", "/sessions"] {
        b.goto(&w.url(path));
        assert_eq!(h1(&b), "Not allowed", "{path}");
        assert!(b.text("main").contains("Only administrators can use this page."), "{path}: {}", b.text("main"));
    }
    b.goto(&w.url("/"));
    assert_eq!(b.current_url(), w.url("/me"), "the dashboard sends a user to their own page");
    // (Refused by otpd as an admin request, and audited: one row.)
    let live = b.execute_async(
        "const done = arguments[0]; fetch('/requests/live').then(r => done(r.status), e => done(String(e)));",
        vec![],
    );
    assert_eq!(live, json!(403), "the live request list");

    let csrf = b.attribute("meta[name=csrf]", "content").expect("bob's page carries his CSRF token");
    let token = percent_encode(&csrf);
    for (path, body) in [
        ("/users/carol/disable", format!("csrf={token}")),
        ("/users/carol/reset", format!("csrf={token}")),
        ("/users/carol/recovery-codes", format!("csrf={token}")),
        ("/users", format!("csrf={token}&user=dave&method=totp")),
        ("/requests/1/approve", format!("csrf={token}")),
        ("/hosts", format!("csrf={token}&name=evil")),
    ] {
        let (status, text) = page_post(&b, path, &body);
        assert_eq!(status, 403, "{path}: {text}");
        assert!(text.contains("Only administrators can use this page."), "{path}: {text}");
    }
    assert_eq!(fx.show("carol"), carol_before, "carol is unchanged");
    assert!(!fx.ctl(&["user", "show", "dave"]).status.success(), "dave was not enabled");
    let audit = fx.ctl_ok(&["audit", "--user", "bob"]);
    let refused = audit.lines().filter(|l| l.contains("console admin request refused: not in the admin group")).count();
    assert_eq!(refused, 6 + 1, "otpd refused (and audited) every forged action and the live list: {audit}");
}

/// A form with a wrong or no CSRF token changes nothing, and neither does
/// a cross-site POST (another origin: a data: page) even with the right
/// token; the untouched form then works, so the refusals were not vacuous.
#[test]
fn forms_need_the_sessions_csrf_token_and_this_origin() {
    let _turn = support::exclusive("browser");
    let w = Web::start("");
    let fx = w.fx();
    let alice = fx.enroll_active("alice");
    fx.enroll_active("bob");
    let enabled = || fx.show("bob")["user"]["enabled"].clone();
    let b = Browser::start();
    w.login(&b, "alice", &fx.code(&alice, 0));
    let form = "form[action='/users/bob/disable']";
    let open_bob = || {
        b.goto(&w.url("/users/bob"));
        assert_eq!(h1(&b), "User bob");
    };

    open_bob();
    let token = b.attribute(&format!("{form} input[name=csrf]"), "value").unwrap();
    b.execute(&format!("document.querySelector(\"{form} input[name=csrf]\").value = 'forged-token';"), vec![]);
    click_and_wait(&b, &format!("{form} button"));
    assert_eq!(h1(&b), "Form expired", "a wrong token");
    assert!(b.text("main").contains("did not come from this console"), "{}", b.text("main"));
    assert_eq!(enabled(), true);

    open_bob();
    b.execute(&format!("document.querySelector(\"{form} input[name=csrf]\").remove();"), vec![]);
    click_and_wait(&b, &format!("{form} button"));
    assert_eq!(h1(&b), "Form expired", "no token");
    assert_eq!(enabled(), true);
    let (status, _) = page_post(&b, "/users/bob/disable", "");
    assert_eq!(status, 403, "an empty body");
    assert_eq!(enabled(), true);

    // Another origin posts the right token: refused before anything else.
    let page = format!(
        "<!DOCTYPE html><html lang=en><title>elsewhere</title><form method=post action=\"{}\">\
         <input name=csrf value=\"{token}\"><button id=go>go</button></form></html>",
        w.url("/users/bob/disable")
    );
    b.goto(&format!("data:text/html,{}", percent_encode(&page)));
    click_and_wait(&b, "#go");
    assert_eq!(h1(&b), "Refused");
    assert!(b.text("main").contains("cross-site request refused"), "{}", b.text("main"));
    assert_eq!(enabled(), true);
    assert!(w.log().contains("cross-site request refused"), "otpweb logs it");

    open_bob();
    click_and_wait(&b, &format!("{form} button"));
    assert_eq!(h1(&b), "User disabled", "{}", b.text("main"));
    assert_eq!(enabled(), false);
}

/// Hostile text in what terminal logins write to the audit (a user name
/// no account can have, the remote host and terminal) and in a filter is
/// shown as text on the admin's pages: no element is made from it and no
/// script of it runs. A valid name with `$` and `@` survives the URL.
#[test]
fn hostile_names_and_audit_text_are_shown_as_text() {
    let _turn = support::exclusive("browser");
    let w = Web::start("");
    let fx = w.fx();
    let alice = fx.enroll_active("alice");
    let bob = fx.enroll_active("bob");
    let odd = "svc$backup@ad.example";
    fx.ctl_ok(&["user", "enable", odd, "--method", "totp"]);
    let user = "<img src=x onerror=window.__xss=1>";
    let rhost = "\"><img src=x onerror=window.__xss=2>";
    let tty = "<svg onload=window.__xss=3>&amp;";
    let mut attempt = fx.pamdrive("otp", user, &[b"123456"]);
    attempt.args(["--rhost", rhost, "--tty", tty]);
    assert_ne!(run(attempt).code, PAM_SUCCESS);
    // Half a minute after bob's last login, so his page lists the failure as since then.
    fx.set_clock_offset(30);
    let mut wrong = fx.pamdrive("otp", "bob", &[wrong_code(fx, &bob).as_bytes()]);
    wrong.args(["--rhost", rhost, "--tty", tty]);
    assert_eq!(run(wrong).code, PAM_AUTH_ERR);

    let b = Browser::start();
    w.login(&b, "alice", &fx.code(&alice, 1));
    let no_injection = |b: &Browser, what: &str| {
        assert_eq!(b.execute("return typeof window.__xss;", vec![]), json!("undefined"), "{what}: a script ran");
        assert_eq!(b.count("main img, main svg, main script"), 0, "{what}: an element was made from text");
    };
    b.goto(&w.url("/audit"));
    let audit = rows(&b, "table");
    let hostile = row_where(&b, "table", "User", user);
    assert_eq!((cell(&hostile, "Remote host"), cell(&hostile, "Terminal")), (rhost, tty), "{hostile:?}");
    assert!(cell(&hostile, "Reason").contains("invalid user name"), "{hostile:?}");
    assert!(
        audit
            .iter()
            .any(|r| cell(r, "User") == "bob" && cell(r, "Result") == "deny" && cell(r, "Remote host") == rhost),
        "{audit:?}"
    );
    let text = b.execute("return document.querySelector('main table').textContent;", vec![]);
    assert!(text.as_str().is_some_and(|t| t.contains(user) && t.contains(tty)), "{text}");
    no_injection(&b, "audit");

    // bob's failures on his page, and the audit filter reflecting a hostile value.
    b.goto(&w.url("/users/bob"));
    let failure = row_where(&b, "table", "Remote host", rhost);
    assert_eq!(cell(&failure, "Result"), "deny");
    no_injection(&b, "user page");
    b.goto(&w.url(&format!("/audit?user={}", percent_encode(rhost))));
    assert_eq!(b.execute("return document.getElementById('f-user').value;", vec![]), json!(rhost));
    no_injection(&b, "audit filter");

    b.goto(&w.url(&format!("/users?q={}", percent_encode("svc$"))));
    let link = format!("a[href='/users/{}']", percent_encode(odd));
    assert_eq!(b.text(&link), odd);
    click_and_wait(&b, &link);
    assert_eq!(h1(&b), format!("User {odd}"));
    assert!(b.text("dl.figures").contains("totp"), "{}", b.text("dl.figures"));
}

/// A console session ends after `[web] idle_timeout` (15 minutes) unused
/// but not while used; logout ends it in otpd (the old cookie, replayed,
/// is refused); its cookie is `__Host-`, Secure, HttpOnly, SameSite=Strict.
#[test]
fn sessions_expire_when_idle_and_end_at_logout_with_strict_cookies() {
    let _turn = support::exclusive("browser");
    let w = Web::start("");
    let fx = w.fx();
    let alice = fx.enroll_active("alice");
    let b = Browser::start();
    w.login(&b, "alice", &fx.code(&alice, 0));
    assert_eq!(h1(&b), "Dashboard");
    let cookies = b.cookies();
    let session = cookies.iter().find(|c| c.name == "__Host-otpweb").unwrap_or_else(|| panic!("{cookies:?}"));
    assert!(session.secure && session.http_only, "{session:?}");
    assert_eq!(session.same_site.as_deref(), Some("Strict"));
    assert!(cookies.iter().all(|c| c.name != "__Host-otpweb-flow"), "the login's flow cookie is gone: {cookies:?}");
    assert_eq!(b.execute("return document.cookie;", vec![]), json!(""), "no cookie is readable by scripts");

    // 14 minutes later the session is still there, and being used restarts its idle time.
    fx.set_clock_offset(14 * 60);
    b.goto(&w.url("/users"));
    assert_eq!(h1(&b), "Users");
    fx.set_clock_offset(14 * 60 + 16 * 60);
    b.goto(&w.url("/users"));
    assert_eq!(b.current_url(), w.url("/login?ended=1"));
    assert_eq!(b.text("p.notice"), "Your session has ended; log in again.");
    assert!(b.cookies().iter().all(|c| c.name != "__Host-otpweb"), "the dead cookie is cleared");

    // The pinned clock is 30 minutes on: the code of that step.
    w.login(&b, "alice", &fx.code(&alice, 60));
    assert_eq!(h1(&b), "Dashboard");
    let token = b.cookies().into_iter().find(|c| c.name == "__Host-otpweb").expect("a new session").value;
    click_and_wait(&b, "form.logout button");
    assert_eq!(b.current_url(), w.url("/login?out=1"));
    assert_eq!(b.text("p.notice"), "You have logged out.");
    b.set_cookie("__Host-otpweb", &token);
    b.goto(&w.url("/users"));
    assert_eq!(b.current_url(), w.url("/login?ended=1"), "otpd no longer knows the session");
    let whoami = w.c.web(&common::web::WebRequest::Whoami {
        client: common::web::Client { addr: "127.0.0.1".into() },
        session: token,
    });
    assert!(
        matches!(whoami, common::web::WebResponse::Error { kind: common::web::WebErrorKind::Unauthenticated, .. }),
        "{whoami:?}"
    );
    assert!(fx.ctl_ok(&["audit", "--user", "alice"]).contains("console session ended"));
}

/// Wrong codes at the console's second step count toward the same lockout
/// as terminal logins: two in the browser and one at a terminal lock bob
/// (max_failures = 3); then his right code is refused at the terminal and
/// the console says the account is locked.
#[test]
fn console_and_terminal_failures_share_one_lockout() {
    let _turn = support::exclusive("browser");
    let w = Web::start("[lockout]\nmax_failures = 3\n");
    let fx = w.fx();
    let bob = fx.enroll_active("bob");
    let wrong = wrong_code(fx, &bob);
    let b = Browser::start();
    for n in 1..=2 {
        w.login(&b, "bob", &wrong);
        assert_eq!(h1(&b), "Login refused", "{}", b.text("main"));
        assert_eq!(fx.show("bob")["user"]["failures"], n, "{}", w.log());
    }
    // The third failure, at a terminal, locks the account.
    let terminal = fx.login("bob", &[&wrong]);
    assert_ne!(terminal.code, PAM_SUCCESS, "{}", terminal.out);
    assert!(terminal.out.contains("Too many failed attempts"), "{}", terminal.out);
    assert_eq!(fx.show("bob")["user"]["locked"], true, "{}", fx.ctl_ok(&["user", "show", "bob"]));

    let right = fx.login("bob", &[&fx.code(&bob, 0)]);
    assert_ne!(right.code, PAM_SUCCESS, "{}", right.out);
    assert!(right.out.contains("Too many failed attempts"), "{}", right.out);
    // Locked: no passcode is even asked after the password.
    w.password(&b, "bob");
    assert_eq!(h1(&b), "Account locked", "{}", b.text("main"));
    assert!(b.text("main").to_lowercase().contains("locked"), "{}", b.text("main"));
    b.screenshot("console-locked");
    assert!(b.cookies().iter().all(|c| c.name != "__Host-otpweb"), "no session");
}

/// axe-core on every screen at desktop and phone size, with a screenshot
/// of each (desktop) and of some at phone size: login, the second step
/// (with a pending enrollment's QR code, and without), my account, new
/// recovery codes, dashboard, users, a user, requests (one waiting),
/// sessions, audit, hosts (otpd as a fleet server, one host added), and
/// the message page.
#[test]
fn every_screen_is_accessible_at_desktop_and_phone_size() {
    let _turn = support::exclusive("browser");
    let fleet_port = free_port();
    let w = Web::start_full(
        "role = \"server\"\n",
        &format!("[fleet]\nlisten = [\"127.0.0.1:{fleet_port}\"]\nnames = [\"127.0.0.1\"]\n"),
        Some("emergency = { enabled = true, approval = \"admin\" }\n"),
    );
    let fx = w.fx();
    let alice = fx.enroll_active("alice");
    // Codes are used in step order: an older step than one used is refused.
    let mut session = fx.pamdrive("otp", "alice", &[fx.code(&alice, 0).as_bytes()]);
    session.args(["--session", "--rhost", "192.0.2.40"]);
    assert_eq!(run(session).code, PAM_SUCCESS);
    fx.ctl_ok(&["user", "enable", "bob", "--method", "email"]);
    let asked = fx.login("bob", &["e", "bob.home@example.net", "phone in the lake"]);
    assert!(asked.out.contains("waiting for an administrator"), "{}", asked.out);
    fx.ctl_ok(&["user", "enable", "carol", "--method", "totp"]);
    fx.ctl_ok(&["host", "add", "web01", "-o", &fx.path("web01.bundle").display().to_string()]);

    let b = Browser::start();
    let sweep = |name: &str, phone_shot: bool| {
        b.assert_accessible(name);
        b.screenshot(&format!("console-{name}"));
        b.phone_size();
        b.assert_accessible(&format!("{name}-phone"));
        if phone_shot {
            b.screenshot(&format!("console-{name}-phone"));
        }
        b.desktop_size();
    };
    b.goto(&w.url("/login"));
    sweep("login", false);

    // carol's pending enrollment: the QR code at the second step.
    w.password(&b, "carol");
    assert_eq!(h1(&b), "Second step");
    assert_eq!(b.count("figure.qr-figure svg"), 1, "{}", b.text("main"));
    sweep("step-enroll", true);
    let uri = b.text("code.uri");
    answer(&b, &fx.code(&uri, 0));
    // The enrollment's own lines, then on to the account page.
    assert_eq!(h1(&b), "Logged in", "{}", b.text("main"));
    sweep("logged-in", false);
    click_and_wait(&b, "main a.button");
    assert_eq!(h1(&b), "My account", "{}", b.text("main"));
    sweep("me", false);
    click_and_wait(&b, "form[action='/me/recovery-codes'] button");
    assert_eq!(h1(&b), "New recovery codes");
    assert_eq!(b.count("ul.codes li"), 10);
    sweep("recovery-codes", false);
    click_and_wait(&b, "form.logout button");

    w.password(&b, "alice");
    assert_eq!(h1(&b), "Second step");
    sweep("step", false);
    answer(&b, &fx.code(&alice, 1));
    assert_eq!(h1(&b), "Dashboard");
    assert!(b.text("main").contains("web01"), "the dashboard lists the fleet's hosts");
    sweep("dashboard", true);
    for (path, title, name, needle) in [
        ("/users", "Users", "users", "carol"),
        ("/users/bob", "User bob", "user", "email"),
        ("/requests", "Emergency requests", "requests", "bob.home@example.net"),
        ("/sessions", "Sessions", "sessions", "192.0.2.40"),
        ("/audit", "Audit", "audit", "accept"),
        ("/hosts", "Hosts", "hosts", "web01"),
        ("/no/such/page", "Not found", "not-found", "There is no such page."),
    ] {
        b.goto(&w.url(path));
        assert_eq!(h1(&b), title, "{path}");
        assert!(b.text("main").contains(needle), "{path}: {}", b.text("main"));
        sweep(name, name == "users");
    }
}

/// The self-signed certificate otpweb made at its first start is the one it
/// serves, and `otpctl status` prints its fingerprint, so an admin can
/// check a browser's warning against it.
#[test]
fn otpctl_status_prints_the_fingerprint_of_the_certificate_otpweb_serves() {
    let _turn = support::shared();
    let w = Web::start("");
    let addr = w.base.trim_start_matches("https://").to_string();
    let served = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
        ))
        .output()
        .unwrap();
    let served = String::from_utf8_lossy(&served.stdout).into_owned();
    let fingerprint = served.trim().rsplit('=').next().unwrap_or_default().to_string();
    assert_eq!(fingerprint.len(), 95, "no certificate read from {addr}: {served:?}");
    let status = w.fx().ctl_ok(&["status"]);
    let line = status.lines().find(|l| l.starts_with("certificate")).unwrap_or_else(|| panic!("{status}"));
    assert_eq!(line.split_whitespace().last(), Some(fingerprint.as_str()), "{status}");
    assert!(status.contains("web console    https://127.0.0.1:8443"), "{status}");
}
