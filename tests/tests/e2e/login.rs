//! End to end: built pam_otp.so → real libpam (pam_wrapper) → real otpd → SQLite.
use crate::support;
use e2e::{PAM_AUTH_ERR, PAM_MAXTRIES, PAM_SUCCESS};
use support::*;

#[test]
fn enrollment_shows_qr_then_first_code_activates() {
    let _turn = support::shared();
    let fx = Fixture::start("");
    fx.ctl_ok(&["user", "enable", "alice", "--method", "totp"]);
    assert_eq!(fx.show("alice")["user"]["activated"], false);

    // Wrong code: denied, and the QR, secret and URI were shown.
    let first = fx.login("alice", &["000000"]);
    assert_eq!(first.code, PAM_AUTH_ERR, "{}", first.out);
    assert!(first.shows_qr(), "{}", first.out);
    assert!(first.out.contains("[prompt-off] Passcode:"), "{}", first.out);
    let uri = first.uri().unwrap();
    assert!(uri.starts_with("otpauth://totp/") && uri.contains(":alice?secret="), "{uri}");
    let secret = uri.split("secret=").nth(1).unwrap().split('&').next().unwrap();
    assert!(first.out.contains(&format!("secret key manually: {secret}")));
    assert!(secret.len() >= 32, "secret must be >= 160 bits");
    assert_eq!(fx.show("alice")["user"]["activated"], false);

    // QR shown again; a code computed from the URI logs in and activates.
    let code = fx.code(&uri, 0);
    let ok = fx.login("alice", &[&code]);
    assert_eq!(ok.code, PAM_SUCCESS, "{}", ok.out);
    assert!(ok.shows_qr());
    assert!(ok.out.contains("now enrolled"), "{}", ok.out);
    let shown = fx.show("alice");
    assert_eq!(shown["user"]["activated"], true);
    assert!(shown["user"]["activated_at"].as_i64().unwrap() > 0);
    let table = fx.ctl_ok(&["user", "show", "alice"]);
    assert!(table.contains("activated      yes ("), "{table}");

    // From now on: no QR, the same code is a replay, the next step's works.
    let replay = fx.login("alice", &[&code]);
    assert_eq!(replay.code, PAM_AUTH_ERR, "{}", replay.out);
    assert!(!replay.shows_qr() && !replay.out.contains("otpauth://"), "{}", replay.out);
    assert!(replay.out.contains("already used"), "{}", replay.out);
    let next = fx.login("alice", &[&fx.code(&uri, 1)]);
    assert_eq!(next.code, PAM_SUCCESS, "{}", next.out);

    // Audit has every attempt, with service and result, and never a code.
    let audit = fx.ctl_ok(&["--json", "audit", "--user", "alice"]);
    let v: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let results: Vec<&str> = v["entries"].as_array().unwrap().iter().map(|e| e["result"].as_str().unwrap()).collect();
    // Newest first; each showing of the pending secret is an event of its own.
    assert_eq!(results, ["accept", "deny", "accept", "shown", "deny", "shown", "enable (totp)"]);
    assert!(!audit.contains(&code) && !fx.log().contains(&code) && !fx.log().contains(secret));
}

#[test]
fn qr_code_decodes_to_the_uri() {
    let _turn = support::shared();
    let fx = Fixture::start("");
    fx.ctl_ok(&["user", "enable", "qr-user", "--method", "totp"]);
    let run = fx.login("qr-user", &["1"]);
    let uri = run.uri().unwrap();
    // Turn the half-block rendering back into pixels (each cell is two rows).
    let rows: Vec<Vec<char>> = run
        .out
        .lines()
        .map(|l| l.strip_prefix("[info] ").unwrap_or(l))
        .filter(|l| !l.is_empty() && l.chars().all(|c| matches!(c, ' ' | '\u{2580}' | '\u{2584}' | '\u{2588}')))
        .map(|l| l.chars().collect())
        .collect();
    assert!(rows.len() > 10, "{}", run.out);
    let width = rows[0].len();
    let scale = 4;
    let mut pbm = format!("P1\n{} {}\n", width * scale, rows.len() * 2 * scale);
    for row in &rows {
        for half in 0..2 {
            let line: String = row
                .iter()
                .flat_map(|&c| {
                    // Blocks are the light modules (drawn for dark terminals).
                    let lit = matches!((c, half), ('\u{2588}', _) | ('\u{2580}', 0) | ('\u{2584}', 1));
                    std::iter::repeat_n(if lit { "0 " } else { "1 " }, scale)
                })
                .collect();
            for _ in 0..scale {
                pbm.push_str(&line);
                pbm.push('\n');
            }
        }
    }
    let img = fx.path("qr.pbm");
    std::fs::write(&img, pbm).unwrap();
    let out = std::process::Command::new("zbarimg").args(["-q", "--raw"]).arg(&img).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), uri);
}

#[test]
fn lockout_survives_restart_and_unlock_clears_it() {
    let _turn = support::shared();
    let mut fx = Fixture::start("[lockout]\nmax_failures = 3\nlock_for = \"1h\"\n");
    let uri = fx.enroll_active("carol");
    assert_eq!(fx.login("carol", &["111111"]).code, PAM_AUTH_ERR);
    assert_eq!(fx.login("carol", &["222222"]).code, PAM_AUTH_ERR);
    let locked = fx.login("carol", &["333333"]);
    assert_eq!(locked.code, PAM_MAXTRIES, "{}", locked.out);
    assert!(locked.out.contains("Too many failed attempts"), "{}", locked.out);
    fx.stop_daemon();
    fx.start_daemon();
    // The right code does not get in while locked and is not consumed.
    let code = fx.code(&uri, 1);
    let refused = fx.login("carol", &[&code]);
    assert_eq!(refused.code, PAM_MAXTRIES, "{}", refused.out);
    assert!(!refused.out.contains("Passcode:"), "a locked user is not even asked: {}", refused.out);
    assert!(fx.ctl_ok(&["user", "show", "carol"]).contains("locked         yes"));
    fx.ctl_ok(&["user", "unlock", "carol"]);
    assert!(fx.ctl_ok(&["user", "show", "carol"]).contains("locked         no"));
    assert_eq!(fx.login("carol", &[&code]).code, PAM_SUCCESS);
}

#[test]
fn disable_ignores_reset_and_reenable_give_new_secrets() {
    let _turn = support::shared();
    let fx = Fixture::start("");
    fx.write_service("otp-require", "require");
    // Never enabled: IGNORE, or a denial with `require`.
    let never = fx.login_with("otp-probe", "stranger", &[]);
    assert_eq!(never.code, PROBE_IGNORED, "{}", never.out);
    assert_eq!(fx.login("stranger", &[]).code, PAM_SUCCESS, "ignore lets the rest of the stack decide");
    assert!(!never.out.contains("Passcode"));
    assert_eq!(fx.login_with("otp-require", "stranger", &[]).code, PAM_AUTH_ERR);

    let uri1 = fx.enroll_active("dan");
    fx.ctl_ok(&["user", "disable", "dan"]);
    let off = fx.login_with("otp-probe", "dan", &[]);
    assert_eq!(off.code, PROBE_IGNORED, "{}", off.out);
    assert_eq!(fx.show("dan")["user"]["enabled"], false);

    // Enabling again creates a new secret and asks for enrollment again.
    fx.ctl_ok(&["user", "enable", "dan", "--method", "totp"]);
    let again = fx.login("dan", &[&fx.code(&uri1, 1)]);
    assert_eq!(again.code, PAM_AUTH_ERR, "old secret must not work: {}", again.out);
    let uri2 = again.uri().unwrap();
    assert_ne!(uri1, uri2);
    assert_eq!(fx.login("dan", &[&fx.code(&uri2, 0)]).code, PAM_SUCCESS);

    // Reset: new secret, QR again until re-activated.
    fx.ctl_ok(&["user", "reset", "dan"]);
    assert_eq!(fx.show("dan")["user"]["activated"], false);
    let after = fx.login("dan", &[&fx.code(&uri2, 1)]);
    assert_eq!(after.code, PAM_AUTH_ERR);
    assert!(after.shows_qr());
    let uri3 = after.uri().unwrap();
    assert_ne!(uri2, uri3);
    assert_eq!(fx.login("dan", &[&fx.code(&uri3, 0)]).code, PAM_SUCCESS);
    assert_eq!(fx.show("dan")["user"]["activated"], true);
}

#[test]
fn daemon_down_fails_closed() {
    let _turn = support::shared();
    let mut fx = Fixture::start("");
    fx.enroll_active("erin");
    fx.stop_daemon();
    let down = fx.login("erin", &["123456"]);
    assert_eq!(down.code, PAM_AUTH_ERR, "{}", down.out);
    assert!(
        down.out.contains("[error] The one-time passcode service is unavailable"),
        "the user is told: {}",
        down.out
    );
    // Also for users that would have been ignored: the daemon is the only one who may say so.
    assert_eq!(fx.login("never-enabled", &[]).code, PAM_AUTH_ERR);
    assert_eq!(fx.login_with("otp-probe", "never-enabled", &[]).code, PAM_AUTH_ERR);
}

#[test]
fn socket_not_owned_by_root_is_refused() {
    let _turn = support::shared();
    let fx = Fixture::start("");
    fx.ctl_ok(&["user", "enable", "frank", "--method", "totp"]);
    std::os::unix::fs::chown(fx.pam_socket(), Some(65534), None).unwrap();
    let r = fx.login("frank", &["123456"]);
    assert_eq!(r.code, PAM_AUTH_ERR, "{}", r.out);
    assert!(!r.out.contains("Passcode"), "must not talk to a user-owned socket: {}", r.out);
}

#[test]
fn socket_path_through_a_symlink_is_refused() {
    let _turn = support::shared();
    let fx = Fixture::start("");
    fx.ctl_ok(&["user", "enable", "fred", "--method", "totp"]);
    // A path a user could plant: a symlink to the real socket.
    let link = fx.path("link.sock");
    std::os::unix::fs::symlink(fx.pam_socket(), &link).unwrap();
    let service = format!(
        "auth [success=ok ignore=ignore default=die] {} socket={}\nauth required pam_permit.so\n",
        module_path().display(),
        link.display()
    );
    std::fs::write(fx.path("services/linked"), service).unwrap();
    let r = fx.login_with("linked", "fred", &[b"123456"]);
    assert_eq!(r.code, PAM_AUTH_ERR, "{}", r.out);
    assert!(!r.out.contains("Passcode"), "must not follow a symlink to the daemon: {}", r.out);
}

#[test]
fn odd_answers_are_denied_and_audited() {
    let _turn = support::shared();
    let fx = Fixture::start("[lockout]\nmax_failures = 100\n");
    let uri = fx.enroll_active("gina");
    let good = fx.code(&uri, 1);
    let arabic: String = good.chars().map(|c| char::from_u32(0x0660 + c.to_digit(10).unwrap()).unwrap()).collect();
    std::fs::write(fx.path("huge-answer"), vec![b'1'; 100_000]).unwrap();
    let huge = format!("file:{}", fx.path("huge-answer").display()).into_bytes();
    let mut nul = good.as_bytes().to_vec();
    nul.insert(3, 0); // the C API cuts at NUL: "abc" of a 6-digit code
    let cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        huge,
        b"12\xff\xfe34".to_vec(),
        nul,
        arabic.into_bytes(),
        format!("{good}\n").into_bytes(),
        "\u{FF11}\u{FF12}\u{FF13}\u{FF14}\u{FF15}\u{FF16}".as_bytes().to_vec(),
    ];
    for case in &cases {
        let r = fx.login_with("otp", "gina", &[case]);
        assert_eq!(r.code, PAM_AUTH_ERR, "{:?}: {}", String::from_utf8_lossy(&case[..case.len().min(20)]), r.out);
    }
    // No answer at all (conversation error) is a denial too.
    assert_eq!(fx.login("gina", &[]).code, PAM_AUTH_ERR);
    let audit: serde_json::Value = serde_json::from_str(&fx.ctl_ok(&["--json", "audit", "--user", "gina"])).unwrap();
    let denies = audit["entries"].as_array().unwrap().iter().filter(|e| e["result"] == "deny").count();
    // +1 for the conversation error, +1 for enroll_active's first (empty) answer.
    assert_eq!(denies, cases.len() + 2);
    // None of that consumed the code.
    assert_eq!(fx.login("gina", &[&good]).code, PAM_SUCCESS);
}

#[test]
fn non_root_caller_can_only_authenticate_itself() {
    let _turn = support::shared();
    let fx = Fixture::start("");
    // `nobody` exists in every passwd, so the daemon can record its uid.
    let uri = fx.enroll_active("nobody");
    fx.enroll_active("henry");
    let code = fx.code(&uri, 1);
    let mut other = fx.pamdrive("otp", "henry", &[code.as_bytes()]);
    as_uid(&mut other, 65534);
    let r = run(other);
    assert_eq!(r.code, PAM_AUTH_ERR, "{}", r.out);
    assert!(r.out.contains("only authenticate yourself"), "{}", r.out);
    assert_eq!(fx.show("henry")["user"]["failures"], 0, "refusals must not count towards henry's lockout");

    let mut own = fx.pamdrive("otp", "nobody", &[code.as_bytes()]);
    as_uid(&mut own, 65534);
    let r = run(own);
    assert_eq!(r.code, PAM_SUCCESS, "{}", r.out);
}

/// Check 30: a local user learns nothing about other users from the
/// passcode service. Whether the other name is enrolled, locked, disabled,
/// not enrolled, root, or no user at all, a process of uid nobody gets the
/// same words and the same PAM code (before: "only yourself" for enrolled
/// users and PAM_IGNORE for the others, a list of who uses OTP).
#[test]
fn a_non_root_caller_learns_nothing_about_other_users() {
    let _turn = support::shared();
    let fx = Fixture::start("[lockout]\nmax_failures = 2\n");
    let uri = fx.enroll_active("nobody");
    fx.enroll_active("henry");
    // Existing accounts (their uids resolve in the caller's directory too).
    fx.enroll_active("daemon");
    for wrong in ["111111", "222222"] {
        fx.login("daemon", &[wrong]);
    }
    assert!(fx.show("daemon")["user"]["locked_until"].is_i64(), "daemon is locked");
    fx.ctl_ok(&["user", "enable", "bin", "--method", "totp"]);
    fx.ctl_ok(&["user", "enable", "sys", "--method", "totp"]);
    fx.ctl_ok(&["user", "disable", "sys"]);
    let answers: Vec<(String, i32, String)> =
        ["henry", "daemon", "bin", "sys", "root", "games", "no-such-user", "nobody@elsewhere"]
            .iter()
            .map(|user| {
                let mut cmd = fx.pamdrive("otp", user, &[b"123456"]);
                as_uid(&mut cmd, 65534);
                let r = run(cmd);
                (user.to_string(), r.code, r.out)
            })
            .collect();
    for (user, code, out) in &answers {
        assert_eq!(*code, PAM_AUTH_ERR, "{user}: {out}");
        assert_eq!(out, &answers[0].2, "{user} must look like {}", answers[0].0);
    }
    assert!(answers[0].2.contains("You may only authenticate yourself."), "{}", answers[0].2);
    assert!(!answers[0].2.contains("Passcode"), "nobody is asked for another user's code: {}", answers[0].2);
    for user in ["henry", "daemon", "bin"] {
        let failures = &fx.show(user)["user"]["failures"];
        assert!(failures == 0 || user == "daemon", "{user}: refusals are not failures ({failures})");
    }
    // Its own account still works.
    let mut own = fx.pamdrive("otp", "nobody", &[fx.code(&uri, 0).as_bytes()]);
    as_uid(&mut own, 65534);
    let r = run(own);
    assert_eq!(r.code, PAM_SUCCESS, "{}", r.out);
}

/// `qr=ascii` for terminals that cannot show the half blocks: pure ASCII
/// that a phone can still scan; `qr=off`: no QR code, but the key and URI.
#[test]
fn qr_option_ascii_scans_and_off_keeps_key_and_uri() {
    let _turn = support::shared();
    let fx = Fixture::start("");
    fx.write_service("otp-ascii", "qr=ascii");
    fx.write_service("otp-noqr", "qr=off");
    fx.ctl_ok(&["user", "enable", "asciiuser", "--method", "totp"]);
    let run = fx.login_with("otp-ascii", "asciiuser", &[b"1"]);
    assert!(run.out.is_ascii(), "{}", run.out);
    let uri = run.uri().unwrap();
    let secret = uri.split("secret=").nth(1).unwrap().split('&').next().unwrap();
    assert!(run.out.contains(&format!("secret key manually: {secret}")), "{}", run.out);
    // Each module is two '#' (light) or two spaces (dark) wide, one line high.
    let rows: Vec<&str> = run
        .out
        .lines()
        .map(|l| l.strip_prefix("[info] ").unwrap_or(l))
        .filter(|l| l.len() > 40 && l.chars().all(|c| c == '#' || c == ' '))
        .collect();
    assert!(rows.len() > 20 && rows.iter().all(|r| r.len() == 2 * rows.len()), "{}", run.out);
    let scale = 4;
    let mut pbm = format!("P1\n{} {}\n", rows.len() * scale, rows.len() * scale);
    for row in &rows {
        let line: String = row
            .as_bytes()
            .chunks(2)
            .flat_map(|m| std::iter::repeat_n(if m[0] == b'#' { "0 " } else { "1 " }, scale))
            .collect();
        for _ in 0..scale {
            pbm.push_str(&line);
            pbm.push('\n');
        }
    }
    let img = fx.path("qr-ascii.pbm");
    std::fs::write(&img, pbm).unwrap();
    let out = std::process::Command::new("zbarimg").args(["-q", "--raw"]).arg(&img).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), uri);

    let off = fx.login_with("otp-noqr", "asciiuser", &[b"1"]);
    assert_eq!(off.uri().as_deref(), Some(uri.as_str()), "{}", off.out);
    assert!(off.out.contains(&format!("secret key in your authenticator app: {secret}")), "{}", off.out);
    // (The key itself may contain "QR": look for the words and the drawing.)
    assert!(!off.out.contains("QR code") && !off.out.contains("##") && !off.out.contains('\u{2588}'), "{}", off.out);
    assert!(off.out.is_ascii());
    // The default is unchanged.
    assert!(fx.login("asciiuser", &["1"]).shows_qr());
}

#[test]
fn pamtester_works_too() {
    let _turn = support::shared();
    let fx = Fixture::start("");
    let uri = fx.enroll_active("ivy");
    let code = fx.code(&uri, 1);
    let mut cmd = std::process::Command::new("pamtester");
    cmd.args(["-v", "otp", "ivy", "authenticate"])
        .env("LD_PRELOAD", "libpam_wrapper.so")
        .env("PAM_WRAPPER", "1")
        .env("PAM_WRAPPER_SERVICE_DIR", fx.path("services"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{code}").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("successfully authenticated"), "{text}");
}

/// Runs pamdrive in a private mount namespace whose /dev/log is a datagram
/// socket owned by the test, and returns what was logged. The host's /dev
/// is untouched (the namespace dies with the process).
fn login_capturing_syslog(fx: &Fixture, service: &str, user: &str, answers: &[&str]) -> (Run, String) {
    use std::os::unix::net::UnixDatagram;
    let sock_path = fx.path("log.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sink = UnixDatagram::bind(&sock_path).unwrap();
    sink.set_nonblocking(true).unwrap();
    let fake = fx.path("fakedev");
    std::fs::create_dir_all(&fake).unwrap();
    for n in ["null", "zero", "urandom", "random", "log"] {
        std::fs::write(fake.join(n), b"").unwrap();
    }
    let drive = fx.pamdrive(service, user, &answers.iter().map(|a| a.as_bytes()).collect::<Vec<_>>());
    let mut argv = vec![drive.get_program().to_string_lossy().into_owned()];
    argv.extend(drive.get_args().map(|a| format!("'{}'", a.to_string_lossy())));
    let script = format!(
        "set -e; F={f}; for n in null zero urandom random; do mount --bind /dev/$n $F/$n; done; \
         mount --bind {s} $F/log; mount --rbind $F /dev; exec {cmd}",
        f = fake.display(),
        s = sock_path.display(),
        cmd = argv.join(" ")
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    let run = support::run(cmd);
    let mut logged = String::new();
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = sink.recv(&mut buf) {
        logged.push_str(&String::from_utf8_lossy(&buf[..n]));
        logged.push('\n');
    }
    (run, logged)
}

#[test]
fn daemon_down_with_fail_open_succeeds_and_logs_loudly() {
    let _turn = support::shared();
    let mut fx = Fixture::start("");
    fx.write_service("otp-open", "fail=open");
    fx.enroll_active("olga");
    fx.stop_daemon();
    let (closed, closed_log) = login_capturing_syslog(&fx, "otp", "olga", &["123456"]);
    assert_eq!(closed.code, PAM_AUTH_ERR, "{}", closed.out);
    assert!(closed_log.contains("denying (fail=closed)"), "log: {closed_log}");
    let (open, log) = login_capturing_syslog(&fx, "otp-open", "olga", &["123456"]);
    assert_eq!(open.code, PAM_SUCCESS, "{}", open.out);
    assert!(log.contains("FAIL-OPEN") && log.contains("olga"), "log: {log}");
    // authpriv (10) * 8 + warning (4) = <84>
    assert!(log.contains("<84>"), "must be an authpriv warning: {log}");
    assert!(!log.contains("123456"), "the code must never be logged: {log}");
}

/// No user lookups through NSS in the request path: a lookup there could
/// recurse into an NSS or PAM module served by this very daemon (check 21).
/// otpd is traced with strace during logins of every kind.
#[test]
fn logins_make_no_user_lookups() {
    let _turn = support::shared();
    let fx = Fixture::start_with_env(&[HOUSEKEEPING_LOG], "");
    // At start otpd looks up the accounts of users enabled without a uid
    // (nina and selfie below), in the background: not during the trace.
    fx.wait_for_housekeeping(1);
    let uri = fx.enroll_active("nina");
    fx.ctl_ok(&["user", "enable", "selfie", "--method", "totp"]);
    let pid = fx.daemon.as_ref().unwrap().id().to_string();
    let trace = fx.path("trace");
    let mut strace = std::process::Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=openat,open,connect,accept4,newfstatat,statx", "-o"])
        .arg(&trace)
        .args(["-p", &pid])
        .spawn()
        .unwrap();
    // Attached once otpd's accept of a bare connection shows in the trace.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let probes = loop {
        let seen = std::fs::read_to_string(&trace).unwrap_or_default().matches("accept4(").count();
        if seen > 0 {
            break seen;
        }
        assert!(std::time::Instant::now() < deadline, "strace never attached");
        drop(std::os::unix::net::UnixStream::connect(fx.pam_socket()));
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let logins =
        [fx.login("nina", &[&fx.code(&uri, 0)]), fx.login("nina", &["000000"]), fx.login("not-enrolled", &["123456"])];
    let mut own = fx.pamdrive("otp", "selfie", &[b"123456"]);
    as_uid(&mut own, 65534);
    let _ = own.output();
    unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
    strace.wait().unwrap();
    assert_eq!(logins[0].code, PAM_SUCCESS, "{}", logins[0].out);
    let text = std::fs::read_to_string(&trace).unwrap();
    assert!(text.matches("accept4(").count() >= probes + 4, "strace saw no logins:\n{text}");
    for needle in ["/etc/passwd", "/etc/group", "nsswitch.conf", "/run/nscd", "/var/lib/sss", "libnss_", "/etc/shadow"]
    {
        assert!(!text.contains(needle), "otpd looked up users during logins ({needle}):\n{text}");
    }
}

/// Issue 21, item 6: a phone five minutes ahead. Its codes are refused and
/// counted as wrong codes; the audit and `user show` say how far its clock
/// is off; the second refusal in a row tells the user to fix the phone's
/// clock; a good code then forgets it.
#[test]
fn a_phone_clock_five_minutes_ahead_is_refused_and_diagnosed() {
    let _turn = support::shared();
    let fx = Fixture::start("");
    let uri = fx.enroll_active("dora");
    let advice = "Your authenticator's clock seems to be about 5 minutes ahead. \
                  Set your phone's time and time zone to automatic, then try again.";

    let ahead = fx.code(&uri, 10);
    let first = fx.login("dora", &[&ahead]);
    assert_eq!(first.code, PAM_AUTH_ERR, "{}", first.out);
    assert!(first.out.contains("Wrong passcode.") && !first.out.contains("clock"), "{}", first.out);
    let u = &fx.show("dora")["user"];
    assert_eq!(u["failures"], 1, "{u}");
    assert_eq!(
        (u["clock_drift"]["secs"].as_i64(), u["clock_drift"]["refusals_in_a_row"].as_u64()),
        (Some(300), Some(1)),
        "{u}"
    );

    let second = fx.login("dora", &[&ahead]);
    assert_eq!(second.code, PAM_AUTH_ERR, "{}", second.out);
    assert!(second.out.contains(advice), "{}", second.out);
    let u = &fx.show("dora")["user"];
    assert_eq!((u["failures"].as_u64(), u["clock_drift"]["refusals_in_a_row"].as_u64()), (Some(2), Some(2)), "{u}");
    let shown = fx.ctl_ok(&["user", "show", "dora"]);
    assert!(shown.contains("authenticator clock about 5 min ahead"), "{shown}");
    let audit: serde_json::Value = serde_json::from_str(&fx.ctl_ok(&["--json", "audit", "--user", "dora"])).unwrap();
    let reasons: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons.iter().filter(|r| **r == "wrong code: authenticator clock about 5 min ahead").count(),
        2,
        "{reasons:?}"
    );
    assert!(!fx.log().contains(&ahead), "the code is never logged");

    // The right code: accepted, and the drift is forgotten.
    let ok = fx.login("dora", &[&fx.code(&uri, 1)]);
    assert_eq!(ok.code, PAM_SUCCESS, "{}", ok.out);
    let u = &fx.show("dora")["user"];
    assert!(u.get("clock_drift").is_none(), "{u}");
    assert_eq!(u["failures_since_login"], 0, "{u}");
}
