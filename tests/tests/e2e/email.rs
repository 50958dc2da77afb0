//! Emailed codes end to end: built pam_otp.so → real libpam → real otpd →
//! a real SMTP server (aiosmtpd) with STARTTLS and a CA made by the test.
use crate::support;
use e2e::{PAM_AUTH_ERR, PAM_SUCCESS};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// A test CA and a certificate for localhost signed by it.
pub(crate) fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=otpd test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "smtp.key", "-out", "smtp.csr"]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "smtp.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "smtp.pem",
    ]);
}

pub(crate) fn start_smtp(dir: &Path, port: u16) -> SmtpSink {
    SmtpSink::start(&dir.join("maildir"), port, Some((&dir.join("smtp.pem"), &dir.join("smtp.key"))))
}

pub(crate) struct Mail {
    pub(crate) to: String,
    pub(crate) text: String,
}

impl Mail {
    pub(crate) fn code(&self) -> String {
        self.text
            .lines()
            .map(str::trim)
            .find(|l| l.len() == 8 && l.bytes().all(|b| b.is_ascii_digit()))
            .unwrap_or_default()
            .to_string()
    }
}

pub(crate) fn mails(maildir: &Path) -> Vec<Mail> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(maildir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "eml")).collect())
        .unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            let to = text.lines().next().unwrap_or("").trim_start_matches("X-Envelope-To: ").to_string();
            Mail { to, text }
        })
        .collect()
}

pub(crate) fn wait_for_mails(maildir: &Path, n: usize) -> Vec<Mail> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = mails(maildir);
        if m.len() >= n || Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Env {
    fx: Fixture,
    smtp: Option<SmtpSink>,
    port: u16,
}

impl Env {
    fn maildir(&self) -> PathBuf {
        self.fx.path("maildir")
    }
}

/// otpd with [email] settings `email`, mailing through a STARTTLS sink.
fn env_with(email: &str, daemon: &str) -> Env {
    env_full(email, daemon, true)
}

fn env_full(email: &str, daemon: &str, trust_ca: bool) -> Env {
    let pre = tempfile::tempdir().unwrap();
    let port = free_port();
    // The fixture's dir is created by Fixture::start; certs go in a stable place first.
    make_certs(pre.path());
    let cfg = format!(
        "{daemon}\n[email]\ndirectory = \"file:{emails}\"\n{email}\n[smtp]\nurl = \"smtp://localhost:{port}\"\nfrom = \"otpd <otpd@test.example>\"\nca_file = \"{ca}\"\ntimeout = \"5s\"\n",
        emails = pre.path().join("emails").display(),
        ca = if trust_ca { pre.path().join("ca.pem").display().to_string() } else { "/nonexistent-ca.pem".into() },
    );
    let cfg = if trust_ca { cfg } else { cfg.replace("ca_file = \"/nonexistent-ca.pem\"\n", "") };
    std::fs::write(pre.path().join("emails"), "bob bob@example.org\ncarol carol@example.org\n").unwrap();
    let fx = Fixture::start(&cfg);
    for f in ["ca.pem", "smtp.pem", "smtp.key", "emails"] {
        std::fs::copy(pre.path().join(f), fx.path(f)).unwrap();
    }
    let smtp = Some(start_smtp(fx.dir.path(), port));
    // Keep the CA and directory files where the config points for the fixture's life.
    std::mem::forget(pre);
    Env { fx, smtp, port }
}

fn request(fx: &Fixture, user: &str, answers: &[&str]) -> Run {
    fx.login(user, answers)
}

#[test]
fn directory_auto_send_single_use_and_sessions() {
    let _turn = support::shared();
    let env = env_with("", "");
    let fx = &env.fx;
    fx.ctl_ok(&["user", "enable", "bob", "--method", "email"]);
    // Enter = "email me a code"; the conversation then asks again, and this
    // run has no answer left (the user will finish in a new login).
    let r = request(fx, "bob", &[""]);
    assert_eq!(r.code, PAM_AUTH_ERR, "{}", r.out);
    assert!(r.out.contains("[prompt-off] Passcode (press Enter to get one by email"), "{}", r.out);
    assert!(r.out.contains("A code was sent to b***b@example.org. It expires at "), "{}", r.out);
    let m = wait_for_mails(&env.maildir(), 1);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].to, "bob@example.org");
    let code = m[0].code();
    assert_eq!(code.len(), 8, "{}", m[0].text);
    let host = hostname();
    assert!(m[0].text.contains(&format!("Subject: Your login code for {host}")), "{}", m[0].text);
    assert!(m[0].text.contains("for bob on") && m[0].text.contains("expires at"), "{}", m[0].text);
    assert!(m[0].text.contains("Requested by: service otp"), "{}", m[0].text);
    assert!(m[0].text.contains("If you did not just try to log in"), "{}", m[0].text);

    let mut ok = fx.pamdrive("otp", "bob", &[code.as_bytes()]);
    ok.arg("--session");
    let ok = run(ok);
    assert_eq!(ok.code, PAM_SUCCESS, "{}", ok.out);
    assert!(ok.out.contains("session open=0 close=0"), "{}", ok.out);
    assert_eq!(request(fx, "bob", &[&code]).code, PAM_AUTH_ERR, "single use");
    let sessions = fx.ctl_ok(&["sessions"]);
    assert!(sessions.contains("bob (bob@example.org)"), "{sessions}");
    assert!(!fx.log().contains(&code), "the code must never be logged");
    let audit = fx.ctl_ok(&["audit", "--user", "bob"]);
    assert!(!audit.contains(&code));
    assert!(audit.contains("emailed code already used"), "{audit}");
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string()
}

#[test]
fn resend_same_code_new_code_interval_and_caps_survive_restart() {
    let _turn = support::shared();
    let mut env = env_with("resends_per_hour = 2\n", "");
    env.fx.ctl_ok(&["user", "enable", "bob", "--method", "email"]);
    let first = request(&env.fx, "bob", &[""]);
    assert!(first.out.contains("A code was sent"), "{}", first.out);
    let again = request(&env.fx, "bob", &[""]);
    assert!(again.out.contains("Your code was sent again to b***b@example.org"), "{}", again.out);
    let m = wait_for_mails(&env.maildir(), 2);
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].code(), m[1].code(), "a request while the code is valid re-sends the same code");
    let third = request(&env.fx, "bob", &[""]);
    assert!(third.out.contains("sent again"), "{}", third.out);
    // Cap: 1 send + 2 re-sends per hour; it holds across a restart. (Wait
    // for delivery first: a message in flight when the daemon stops is sent
    // again after the restart — delivery is at least once, never lost.)
    assert_eq!(wait_for_mails(&env.maildir(), 3).len(), 3);
    // The sink has the third mail a moment before otpd records it as sent.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status: serde_json::Value = serde_json::from_str(&env.fx.ctl_ok(&["--json", "status"])).unwrap();
        if status["status"]["mail_queued"] == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "otpd never recorded the delivery: {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
    env.fx.stop_daemon();
    env.fx.start_daemon();
    let capped = request(&env.fx, "bob", &[""]);
    assert!(capped.out.contains("re-sent too often"), "{}", capped.out);
    assert_eq!(wait_for_mails(&env.maildir(), 3).len(), 3);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(mails(&env.maildir()).len(), 3, "nothing more was sent");

    // Use the code; a new one is then refused until the interval has passed.
    let code = m[0].code();
    assert_eq!(request(&env.fx, "bob", &[&code]).code, PAM_SUCCESS);
    let soon = request(&env.fx, "bob", &[""]);
    assert!(soon.out.contains("the next one can be requested at"), "{}", soon.out);
    env.fx.set_clock_offset(3601);
    let later = request(&env.fx, "bob", &[""]);
    assert!(later.out.contains("A code was sent"), "{}", later.out);
    let m = wait_for_mails(&env.maildir(), 4);
    assert_ne!(m[3].code(), code);
    drop(env.smtp.take());
}

#[test]
fn expired_code_and_other_machine_are_refused() {
    let _turn = support::shared();
    let mut env = env_with("code_ttl = \"30m\"\n", "machine_id = \"MACHINE_FILE\"\n");
    // The fixture writes machine_id literally; point it at a file we control.
    let cfg = std::fs::read_to_string(&env.fx.config)
        .unwrap()
        .replace("MACHINE_FILE", &env.fx.path("machine-id").display().to_string());
    std::fs::write(&env.fx.config, cfg).unwrap();
    std::fs::write(env.fx.path("machine-id"), "machine-one\n").unwrap();
    env.fx.stop_daemon();
    env.fx.start_daemon();
    env.fx.ctl_ok(&["user", "enable", "carol", "--method", "email"]);

    request(&env.fx, "carol", &[""]);
    let code = wait_for_mails(&env.maildir(), 1)[0].code();
    env.fx.set_clock_offset(31 * 60);
    let late = request(&env.fx, "carol", &[&code]);
    assert_eq!(late.code, PAM_AUTH_ERR, "{}", late.out);
    assert!(late.out.contains("expired"), "{}", late.out);

    env.fx.set_clock_offset(2 * 3600);
    request(&env.fx, "carol", &[""]);
    let code2 = wait_for_mails(&env.maildir(), 2)[1].code();
    env.fx.stop_daemon();
    std::fs::write(env.fx.path("machine-id"), "machine-two\n").unwrap();
    env.fx.start_daemon();
    let other = request(&env.fx, "carol", &[&code2]);
    assert_eq!(other.code, PAM_AUTH_ERR, "{}", other.out);
    assert!(other.out.contains("another machine"), "{}", other.out);
    let audit = env.fx.ctl_ok(&["audit", "--user", "carol"]);
    assert!(audit.contains("emailed code expired") && audit.contains("issued on another machine"), "{audit}");
}

#[test]
fn typed_address_must_match_with_a_neutral_answer() {
    let _turn = support::shared();
    let env = env_with("auto_send = \"none\"\n", "");
    env.fx.ctl_ok(&["user", "enable", "bob", "--method", "email"]);
    let wrong = request(&env.fx, "bob", &["", "eve@evil.test"]);
    let right = request(&env.fx, "bob", &["", "BOB@example.org"]);
    assert!(wrong.out.contains("[prompt-on] Email address:"), "{}", wrong.out);
    let said = |r: &Run| r.out.lines().filter(|l| l.starts_with("[info]")).map(String::from).collect::<Vec<_>>();
    assert_eq!(said(&wrong), said(&right), "mismatch and match must read the same");
    let m = wait_for_mails(&env.maildir(), 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(mails(&env.maildir()).len(), 1);
    assert_eq!(m[0].to, "bob@example.org");
    assert_eq!(request(&env.fx, "bob", &[&m[0].code()]).code, PAM_SUCCESS);
}

#[test]
fn internal_account_login_and_password() {
    let _turn = support::shared();
    let env = env_with("auto_send = \"internal\"\n", "");
    env.fx.ctl_ok(&["user", "enable", "bob", "--method", "email"]);
    let mut set = Command::new(build_dir().join("otpctl"));
    set.arg("--config").arg(&env.fx.config).args(["user", "passwd", "bob"]).stdin(Stdio::piped()).stdout(Stdio::null());
    let mut child = set.spawn().unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "a long internal password").unwrap();
    assert!(child.wait().unwrap().success());

    let bad = request(&env.fx, "bob", &["", "bob", "not the password"]);
    assert!(bad.out.contains("[prompt-on] Login:") && bad.out.contains("[prompt-off] Password:"), "{}", bad.out);
    std::thread::sleep(Duration::from_millis(300));
    assert!(mails(&env.maildir()).is_empty(), "a wrong password sends nothing");
    let good = request(&env.fx, "bob", &["", "bob", "a long internal password"]);
    let said = |r: &Run| r.out.lines().filter(|l| l.starts_with("[info]")).map(String::from).collect::<Vec<_>>();
    assert_eq!(said(&bad), said(&good));
    let m = wait_for_mails(&env.maildir(), 1);
    assert_eq!(request(&env.fx, "bob", &[&m[0].code()]).code, PAM_SUCCESS);
}

#[test]
fn emergency_access_allow_list_approve_and_deny() {
    let _turn = support::shared();
    // TOTP users reach emailed codes (and emergency access) with fallback = true.
    let env = env_with(
        "fallback = true\nemergency = { enabled = true, allow_domains = [\"corp.example\"], approval = \"admin\" }\n",
        "",
    );
    let fx = &env.fx;
    fx.ctl_ok(&["user", "enable", "dave", "--method", "totp"]);
    fx.enroll_active("erin");
    // dave has no address on record; emergency access still works.
    let fast = fx.login("dave", &["e", "dave.home@corp.example", "lost my phone"]);
    assert!(fast.out.contains("A code was sent to d***e@corp.example"), "{}", fast.out);
    let m = wait_for_mails(&env.maildir(), 1);
    assert_eq!(m[0].to, "dave.home@corp.example");
    assert!(m[0].text.contains("emergency login code"), "{}", m[0].text);
    assert_eq!(fx.login("dave", &[&m[0].code()]).code, PAM_SUCCESS);

    // Outside the allow-list: pending until an admin decides.
    let pending = fx.login("erin", &["e", "erin@gmail.example", "travelling"]);
    assert!(pending.out.contains("waiting for an administrator"), "{}", pending.out);
    let list = fx.ctl_ok(&["request", "list"]);
    assert!(list.contains("erin") && list.contains("erin@gmail.example") && list.contains("travelling"), "{list}");
    let v: serde_json::Value = serde_json::from_str(&fx.ctl_ok(&["--json", "request", "list"])).unwrap();
    let id = v["requests"][0]["id"].as_i64().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(mails(&env.maildir()).len(), 1, "nothing is sent before approval");
    fx.ctl_ok(&["request", "approve", &id]);
    let m = wait_for_mails(&env.maildir(), 2);
    assert_eq!(m[1].to, "erin@gmail.example");
    assert_eq!(fx.login("erin", &[&m[1].code()]).code, PAM_SUCCESS);
    assert_eq!(fx.ctl(&["request", "approve", &id]).status.code(), Some(6), "decided once");

    let p2 = fx.login("erin", &["e", "erin2@gmail.example", "again"]);
    assert!(p2.out.contains("waiting"), "{}", p2.out);
    let v: serde_json::Value = serde_json::from_str(&fx.ctl_ok(&["--json", "request", "list"])).unwrap();
    let id2 = v["requests"][0]["id"].as_i64().unwrap().to_string();
    fx.ctl_ok(&["request", "deny", &id2]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(mails(&env.maildir()).len(), 2, "a denied request sends nothing");

    // Malformed, injected and look-alike addresses are refused, nothing sent.
    for bad in [
        "x@corp.example\r\nBcc: eve@evil.test",
        "x@corp.exаmple",
        "not an address",
        &format!("{}@corp.example", "a".repeat(300)),
    ] {
        let r = fx.login_with("otp", "dave", &[b"e", bad.as_bytes()]);
        assert!(r.out.contains("not a usable email address"), "{bad:?}: {}", r.out);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(mails(&env.maildir()).len(), 2);
}

#[test]
fn smtp_down_then_up_delivers_and_never_hangs_a_login() {
    let _turn = support::shared();
    let mut env = env_with("", "");
    drop(env.smtp.take());
    env.fx.ctl_ok(&["user", "enable", "bob", "--method", "email"]);
    let started = Instant::now();
    let r = request(&env.fx, "bob", &[""]);
    assert!(r.out.contains("A code was sent"), "{}", r.out);
    assert!(started.elapsed() < Duration::from_secs(5), "the login waited on SMTP: {:?}", started.elapsed());
    // The failure shows in status and at the user's next attempt.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.fx.ctl_ok(&["status"]).contains("1 failing") {
        assert!(Instant::now() < deadline, "{}", env.fx.ctl_ok(&["status"]));
        std::thread::sleep(Duration::from_millis(100));
    }
    let next = request(&env.fx, "bob", &["12345678"]);
    assert!(next.out.contains("Sending your emailed code is failing"), "{}", next.out);
    // The server comes back: the queued message goes out by itself.
    env.smtp = Some(start_smtp(env.fx.dir.path(), env.port));
    let m = wait_for_mails(&env.maildir(), 1);
    assert_eq!(m.len(), 1, "queued mail was delivered after recovery");
    assert_eq!(request(&env.fx, "bob", &[&m[0].code()]).code, PAM_SUCCESS);
}

#[test]
fn concurrent_requests_create_exactly_one_code() {
    let _turn = support::shared();
    let env = env_with("resends_per_hour = 100\n", "");
    env.fx.ctl_ok(&["user", "enable", "bob", "--method", "email"]);
    let children: Vec<_> = (0..8)
        .map(|_| {
            let mut c = env.fx.pamdrive("otp", "bob", &[b""]);
            c.stdout(Stdio::null()).stderr(Stdio::null());
            c.spawn().unwrap()
        })
        .collect();
    for mut c in children {
        c.wait().unwrap();
    }
    let m = wait_for_mails(&env.maildir(), 8);
    assert_eq!(m.len(), 8);
    let codes: std::collections::BTreeSet<String> = m.iter().map(Mail::code).collect();
    assert_eq!(codes.len(), 1, "{codes:?}");
}

#[test]
fn untrusted_smtp_certificate_is_refused() {
    let _turn = support::shared();
    // Same server, but otpd is not told about the test CA: STARTTLS must fail
    // certificate verification and nothing may be sent in clear instead.
    let env = env_full("", "", false);
    env.fx.ctl_ok(&["user", "enable", "bob", "--method", "email"]);
    let r = request(&env.fx, "bob", &[""]);
    assert!(r.out.contains("A code was sent"), "{}", r.out);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = env.fx.ctl_ok(&["status"]);
        if status.contains("1 failing") {
            assert!(status.to_lowercase().contains("certificate") || status.to_lowercase().contains("tls"), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(mails(&env.maildir()).is_empty());
}

#[test]
fn no_address_global_cap_and_disabled_users() {
    let _turn = support::shared();
    let env = env_with("fallback = true\nglobal_per_hour = 2\n", "");
    let fx = &env.fx;
    // A TOTP user with fallback but no address anywhere: told so, nothing sent.
    fx.enroll_active("frank");
    let r = fx.login("frank", &[""]);
    assert!(r.out.contains("No email address is on record"), "{}", r.out);
    // The daemon-wide hourly cap stops a flood from one machine.
    for u in ["bob", "carol"] {
        fx.ctl_ok(&["user", "enable", u, "--method", "email"]);
        assert!(request(fx, u, &[""]).out.contains("A code was sent"));
    }
    fx.ctl_ok(&["user", "enable", "gina", "--method", "email", "--email", "gina@example.org"]);
    let capped = request(fx, "gina", &[""]);
    assert!(capped.out.contains("Too many emails"), "{}", capped.out);
    assert_eq!(wait_for_mails(&env.maildir(), 2).len(), 2);
    // Disabled users are not asked anything and get no mail.
    fx.ctl_ok(&["user", "disable", "gina"]);
    let off = request(fx, "gina", &[""]);
    assert!(!off.out.contains("Passcode"), "{}", off.out);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(mails(&env.maildir()).len(), 2);
    let audit = fx.ctl_ok(&["audit"]);
    assert!(audit.contains("no email address on record") && audit.contains("hourly mail cap reached"), "{audit}");
}

#[test]
fn per_address_hourly_cap_holds_across_users() {
    let _turn = support::shared();
    let env = env_with("per_address_per_hour = 1\n", "");
    let fx = &env.fx;
    fx.ctl_ok(&["user", "enable", "bob", "--method", "email"]);
    assert!(request(fx, "bob", &[""]).out.contains("A code was sent"));
    // Another account with the same mailbox cannot make it a mail cannon.
    fx.ctl_ok(&["user", "enable", "bob2", "--method", "email", "--email", "bob@example.org"]);
    let capped = request(fx, "bob2", &[""]);
    assert!(capped.out.contains("Too many emails"), "{}", capped.out);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(wait_for_mails(&env.maildir(), 1).len(), 1);
}

/// The prompt lines of a run, e.g. `[prompt-off] Passcode: `.
fn prompts(r: &Run) -> Vec<&str> {
    r.out.lines().filter(|l| l.starts_with("[prompt-")).collect()
}

#[test]
fn after_the_code_is_used_a_request_within_the_interval_says_why_and_asks_nothing() {
    let _turn = support::shared();
    let env = env_with("fallback = true\n", "");
    let fx = &env.fx;
    fx.ctl_ok(&["user", "enable", "bob", "--method", "email"]);
    request(fx, "bob", &[""]);
    let code = wait_for_mails(&env.maildir(), 1)[0].code();
    assert_eq!(request(fx, "bob", &[&code]).code, PAM_SUCCESS);

    // Within the hour: no code can work, so no passcode is asked; the
    // answer a user would type after Enter is never read.
    let r = request(fx, "bob", &["", "12345678"]);
    assert_eq!(r.code, PAM_AUTH_ERR, "{}", r.out);
    assert_eq!(prompts(&r).len(), 1, "asked for a passcode that cannot work: {}", r.out);
    for said in ["last emailed code was used at", "only once per hour: the next one can be requested at", "type E"] {
        assert!(r.out.contains(said), "{said:?} missing: {}", r.out);
    }
    assert!(!r.out.contains("Use the code you were sent"), "{}", r.out);
    assert_eq!(fx.show("bob")["user"]["failures"], 0, "not a failed guess");
    let audit = fx.ctl_ok(&["audit", "--user", "bob"]);
    assert!(audit.contains("no usable emailed code"), "{audit}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(mails(&env.maildir()).len(), 1, "nothing was sent");

    // A TOTP user with emailed codes as fallback still has the app: asked on.
    let uri = fx.enroll_active("carol");
    request(fx, "carol", &[""]);
    let mailed = wait_for_mails(&env.maildir(), 2).into_iter().find(|m| m.to == "carol@example.org").unwrap();
    assert_eq!(request(fx, "carol", &[&mailed.code()]).code, PAM_SUCCESS);
    let app = request(fx, "carol", &["", &fx.code(&uri, 1)]);
    assert_eq!(app.code, PAM_SUCCESS, "{}", app.out);

    // Once the interval has passed, Enter sends a new code again.
    fx.pin_clock();
    fx.set_clock_offset(3601);
    assert!(request(fx, "bob", &[""]).out.contains("A code was sent"));
}

#[test]
fn every_prompt_where_e_works_mentions_it() {
    let _turn = support::shared();
    let env = env_with("", "");
    let fx = &env.fx;
    fx.ctl_ok(&["user", "enable", "bob", "--method", "email"]);
    // Enter, then a wrong code: two passcode prompts, E works at both.
    let r = request(fx, "bob", &["", "1"]);
    let asked = prompts(&r);
    assert_eq!(asked.len(), 2, "{}", r.out);
    for p in asked {
        assert!(p.contains("type E for emergency access"), "{p:?} does not mention E: {}", r.out);
    }
    // And E at the second prompt does lead to emergency access.
    let e = request(fx, "bob", &["", "e", "not an address"]);
    assert!(e.out.contains("[prompt-on] Email address:"), "{}", e.out);
}

/// `date` from coreutils, for a time formatted independently of otpd.
fn date_in(tz: &str, t: i64) -> String {
    let out = Command::new("date").env("TZ", tz).arg("-d").arg(format!("@{t}")).arg("+%H:%M %Z").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn times_on_screen_and_in_the_mail_are_in_the_hosts_time_zone() {
    let _turn = support::shared();
    let mut env = env_with("", "");
    env.fx.stop_daemon();
    env.fx.env.push(("TZ".into(), "Europe/Berlin".into()));
    env.fx.start_daemon();
    let fx = &env.fx;
    let now = fx.pin_clock();
    let expires = date_in("Europe/Berlin", now + 30 * 60);
    assert!(expires.ends_with(" CET") || expires.ends_with(" CEST"), "{expires}");
    fx.ctl_ok(&["user", "enable", "bob", "--method", "email"]);
    let r = request(fx, "bob", &[""]);
    assert!(r.out.contains(&format!("It expires at {expires}.")), "want {expires}: {}", r.out);
    let m = wait_for_mails(&env.maildir(), 1);
    assert!(m[0].text.contains(&format!("expires at {expires}.")), "want {expires}: {}", m[0].text);
    assert!(!r.out.contains("UTC") && !m[0].text.contains("UTC"), "{}\n{}", r.out, m[0].text);

    assert_eq!(request(fx, "bob", &[&m[0].code()]).code, PAM_SUCCESS);
    let blocked = request(fx, "bob", &[""]);
    let next = date_in("Europe/Berlin", now + 3600);
    assert!(blocked.out.contains(&format!("requested at {next}")), "want {next}: {}", blocked.out);
}

#[test]
fn masked_addresses_keep_first_and_last_character() {
    let _turn = support::shared();
    let env = env_with("", "");
    let fx = &env.fx;
    fx.ctl_ok(&["user", "enable", "oliver", "--method", "email", "--email", "oliver@example.org"]);
    fx.ctl_ok(&["user", "enable", "olga", "--method", "email", "--email", "olga@example.org"]);
    // Two users at one domain can tell whose address a code went to.
    let oliver = request(fx, "oliver", &[""]);
    let olga = request(fx, "olga", &[""]);
    assert!(oliver.out.contains("A code was sent to o***r@example.org."), "{}", oliver.out);
    assert!(olga.out.contains("A code was sent to o***a@example.org."), "{}", olga.out);
}

#[test]
fn the_mail_names_a_terminal_only_when_there_is_one() {
    let _turn = support::shared();
    let env = env_with("", "");
    let fx = &env.fx;
    fx.ctl_ok(&["user", "enable", "bob", "--method", "email"]);
    fx.ctl_ok(&["user", "enable", "carol", "--method", "email"]);
    // What sshd sets: PAM_TTY "ssh", which is no terminal.
    let mut ssh = fx.pamdrive("otp", "bob", &[b""]);
    ssh.args(["--tty", "ssh", "--rhost", "192.0.2.7"]);
    run(ssh);
    let m = wait_for_mails(&env.maildir(), 1);
    assert_eq!(requested_by(&m[0]), "Requested by: service otp from 192.0.2.7.", "{}", m[0].text);
    // su or login on a real terminal.
    let mut tty = fx.pamdrive("otp", "carol", &[b""]);
    tty.args(["--tty", "/dev/pts/7"]);
    run(tty);
    let m = wait_for_mails(&env.maildir(), 2);
    let carol = m.iter().find(|m| m.to == "carol@example.org").unwrap();
    assert_eq!(requested_by(carol), "Requested by: service otp from this machine, terminal /dev/pts/7.");
}

fn requested_by(m: &Mail) -> &str {
    m.text.lines().map(str::trim).find(|l| l.starts_with("Requested by:")).unwrap_or_default()
}
