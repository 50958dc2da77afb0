//! What one local account can hold or create: conversations left at the
//! passcode prompt through the real setuid `su`, sessions of other users,
//! emergency requests.
use crate::support;
use e2e::PAM_SUCCESS;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// A temp dir whose `etc` is a copy of /etc with pam_otp (talking to the
/// fixture) in front of pam_permit in `pam.d/su`; scripts bind-mount it on
/// /etc in a private mount namespace.
fn su_sandbox(fx: &Fixture) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(Command::new("cp").arg("-a").arg("/etc").arg(d.join("etc")).status().unwrap().success());
    std::fs::write(
        d.join("etc/pam.d/su"),
        format!(
            "auth [success=ok ignore=ignore default=die] {} socket={}\nauth required pam_permit.so\n\
             account required pam_permit.so\nsession required pam_permit.so\n",
            module_path().display(),
            fx.pam_socket().display()
        ),
    )
    .unwrap();
    dir
}

/// `n` real `su root` run by uid nobody in a private mount namespace whose
/// /etc is a copy with pam_otp (talking to the fixture) in /etc/pam.d/su.
/// Each su's stdin is a FIFO the batch holds open without writing, so the
/// ones that reach the passcode prompt stay there. They start one after
/// another (each once the previous one has printed its prompt or its
/// refusal), as a user's loop would.
struct SuBatch {
    dir: tempfile::TempDir,
    shell: Child,
    hold: Option<std::fs::File>,
    n: usize,
}

impl SuBatch {
    fn start(fx: &Fixture, n: usize) -> SuBatch {
        let dir = su_sandbox(fx);
        let d = dir.path();
        let hold = d.join("hold");
        let c_path = std::ffi::CString::new(hold.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
        let script = format!(
            "mount --bind {d}/etc /etc || exit 1\n\
             for i in $(seq 1 {n}); do\n\
             \x20 setpriv --reuid=65534 --regid=65534 --clear-groups /bin/su root -c true <{d}/hold >{d}/su.$i 2>&1 &\n\
             \x20 while [ ! -s {d}/su.$i ]; do sleep 0.01; done\n\
             done\n\
             wait\n",
            d = d.display()
        );
        let shell = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        // Read-write: the open does not wait for a reader (Linux), and the
        // su's see EOF only when this handle is closed.
        let hold = Some(std::fs::OpenOptions::new().read(true).write(true).open(&hold).unwrap());
        SuBatch { dir, shell, hold, n }
    }

    fn outputs(&self) -> Vec<String> {
        (1..=self.n)
            .map(|i| std::fs::read_to_string(self.dir.path().join(format!("su.{i}"))).unwrap_or_default())
            .collect()
    }

    /// Waits until every su is either at the passcode prompt or refused
    /// with `refusal`; returns (at the prompt, refused).
    fn settle(&self, refusal: &str) -> (usize, usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let outs = self.outputs();
            let held = outs.iter().filter(|o| o.contains("Passcode")).count();
            let refused = outs.iter().filter(|o| o.contains(refusal)).count();
            if held + refused == self.n {
                return (held, refused);
            }
            assert!(Instant::now() < deadline, "su's did not settle: {held} held, {refused} refused: {outs:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SuBatch {
    fn drop(&mut self) {
        // EOF at the prompt ends the held conversations; then nothing the batch started survives.
        drop(self.hold.take());
        unsafe { libc::kill(-(self.shell.id() as i32), libc::SIGKILL) };
        let _ = self.shell.wait();
    }
}

/// Root logs in through the real libpam with a fresh code.
fn root_logs_in(fx: &Fixture, uri: &str) {
    let code = fx.code(uri, 1);
    let r = fx.login("root", &[&code]);
    assert_eq!(r.code, PAM_SUCCESS, "root's login was refused: {}", r.out);
}

#[test]
fn su_left_at_the_prompt_is_capped_per_invoking_user_and_root_still_logs_in() {
    let _turn = support::shared();
    // 40 su's would take every one of 32 connections without the caps.
    let fx = Fixture::start("max_connections = 32\ncaller_logins_per_minute = 1000\n");
    let uri = fx.enroll_active("root");
    let batch = SuBatch::start(&fx, 40);
    let refusal = "Too many logins from your account are waiting for a passcode";
    let (held, refused) = batch.settle(refusal);
    assert_eq!((held, refused), (8, 32), "caller_max_logins (8) of uid nobody's su's reach the prompt");
    root_logs_in(&fx, &uri);
    // The refusals are counted under the invoking uid, not root.
    let audit = fx.ctl_ok(&["audit", "--user", "uid:65534"]);
    assert!(audit.contains("refused (too many logins in progress from this user) from uid 65534"), "{audit}");
    drop(batch);
}

#[test]
fn callers_other_than_root_leave_the_reserve_to_root() {
    let _turn = support::shared();
    let fx = Fixture::start(
        "max_connections = 32\nreserved_connections = 8\ncaller_logins_per_minute = 1000\n\
         caller_max_logins = 100\ntarget_max_logins = 100\n",
    );
    let uri = fx.enroll_active("root");
    let batch = SuBatch::start(&fx, 40);
    let (held, refused) = batch.settle("The passcode service is busy");
    assert_eq!((held, refused), (24, 16), "32 connections minus the 8 reserved");
    root_logs_in(&fx, &uri);
    drop(batch);
}

#[test]
fn su_conversations_per_target_user_are_capped() {
    let _turn = support::shared();
    let fx = Fixture::start("caller_logins_per_minute = 1000\ncaller_max_logins = 100\ntarget_max_logins = 5\n");
    let uri = fx.enroll_active("root");
    let batch = SuBatch::start(&fx, 12);
    let (held, refused) = batch.settle("Too many logins for this user are waiting for a passcode");
    assert_eq!((held, refused), (5, 7));
    // Root's own logins are not counted against the target.
    root_logs_in(&fx, &uri);
    drop(batch);
}

/// Sends one frame as `uid` and returns the reply's JSON body.
/// A user's loop of real `su root -c true` (root not enrolled, so each ends
/// at once with "not enrolled" and writes an audit row): only one is ever in
/// progress, so no conversation cap applies, but the user's rate allowance
/// does (check 27). Before, every run was audited, as fast as su starts.
#[test]
fn a_loop_of_su_that_ends_without_a_code_uses_the_invoking_users_rate() {
    let _turn = support::shared();
    let mut fx = Fixture::start("");
    let dir = su_sandbox(&fx);
    let d = dir.path();
    const RUNS: usize = 45;
    let script = format!(
        "mount --bind {d}/etc /etc || exit 1\n\
         ok=0\n\
         for i in $(seq 1 {RUNS}); do\n\
         \x20 setpriv --reuid=65534 --regid=65534 --clear-groups /bin/su root -c true </dev/null >>{d}/out 2>&1 && ok=$((ok+1))\n\
         done\n\
         echo $ok\n",
        d = d.display()
    );
    let started = Instant::now();
    let out = Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
    // 30 at once, then one every 2 s while the loop ran.
    let most = 30 + started.elapsed().as_secs() as usize / 2 + 1;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ok: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let said = std::fs::read_to_string(d.join("out")).unwrap_or_default();
    assert!(ok < RUNS && (30..=most).contains(&ok), "{ok} of {RUNS} su runs got through (at most {most}): {said}");
    assert!(said.contains("Too many login attempts"), "the refused ones say why: {said}");
    fx.stop_daemon();
    fx.start_daemon();
    let rows = fx.ctl_ok(&["--json", "audit", "--user", "root"]);
    let rows: serde_json::Value = serde_json::from_str(&rows).unwrap();
    let written = rows["entries"].as_array().unwrap().len();
    assert!(written <= most, "{written} audit rows for {RUNS} su runs");
    let counted = fx.ctl_ok(&["audit", "--user", "uid:65534"]);
    assert!(counted.contains("refused (rate limit) from uid 65534"), "{counted}");
}

fn send_as(fx: &Fixture, uid: u32, msg: &serde_json::Value) -> String {
    let script = r#"
import socket, struct, sys
body = sys.argv[2].encode()
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(struct.pack(">I", len(body)) + body)
data = b""
while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(data[4:].decode(), flush=True)
"#;
    let mut c = Command::new("/usr/bin/python3");
    c.arg("-c").arg(script).arg(fx.pam_socket()).arg(msg.to_string());
    if uid != 0 {
        as_uid(&mut c, uid);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn session(kind: &str, user: &str, pid: u32) -> serde_json::Value {
    let mut v = serde_json::json!({"type": kind, "protocol": common::proto::PROTOCOL_VERSION, "user": user,
        "service": "sshd", "pid": pid});
    if kind == "session_opened" {
        v["rhost"] = "192.0.2.7".into();
    }
    v
}

fn open_sessions(fx: &Fixture) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&fx.ctl_ok(&["--json", "sessions"])).unwrap();
    v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["closed_at"].is_null())
        .map(|s| s["user"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn another_uid_cannot_close_a_users_session() {
    let _turn = support::shared();
    let fx = Fixture::start("");
    fx.ctl_ok(&["user", "enable", "alice", "--method", "totp"]);
    fx.ctl_ok(&["user", "enable", "nobody", "--method", "totp"]);
    for (user, pid) in [("alice", 4242), ("nobody", 4343)] {
        assert_eq!(send_as(&fx, 0, &session("session_opened", user, pid)), r#"{"type":"ack"}"#);
    }
    let mut open = open_sessions(&fx);
    open.sort();
    assert_eq!(open, vec!["alice", "nobody"]);

    // uid nobody names alice's session: acknowledged, nothing closed.
    assert_eq!(send_as(&fx, 65534, &session("session_closed", "alice", 4242)), r#"{"type":"ack"}"#);
    let mut open = open_sessions(&fx);
    open.sort();
    assert_eq!(open, vec!["alice", "nobody"], "uid nobody closed alice's session");
    // Its own session it may close; root may close any.
    send_as(&fx, 65534, &session("session_closed", "nobody", 4343));
    assert_eq!(open_sessions(&fx), vec!["alice"]);
    send_as(&fx, 0, &session("session_closed", "alice", 4242));
    assert!(open_sessions(&fx).is_empty());
}

#[test]
fn pending_emergency_requests_are_capped_per_user_and_address_and_counted_truly() {
    let _turn = support::shared();
    let mail = tempfile::tempdir().unwrap();
    let mut fx = Fixture::start(&format!(
        "[email]\ndirectory = \"none\"\n\
         emergency = {{ enabled = true, approval = \"admin\", max_pending_per_user = 2, max_pending_per_address = 3 }}\n\
         [smtp]\nurl = \"file:{}\"\n",
        mail.path().display()
    ));
    for u in ["erin", "u1", "u2", "u3", "u4"] {
        fx.ctl_ok(&["user", "enable", u, "--method", "email", "--email", &format!("{u}@example.org")]);
    }
    let ask = |user: &str, address: &str| fx.login(user, &["E", address, "lost my phone"]).out;
    for a in ["erin.home@example.org", "erin.other@example.org"] {
        let out = ask("erin", a);
        assert!(out.contains("waiting for an administrator"), "{out}");
    }
    let out = ask("erin", "erin.third@example.org");
    assert!(out.contains("You already have 2 emergency request(s) waiting"), "{out}");
    let audit = fx.ctl_ok(&["audit", "--user", "erin"]);
    assert!(audit.contains("2 requests of this user pending (max_pending_per_user)"), "{audit}");

    // One address, several users: the address cap, whatever the case.
    for u in ["u1", "u2", "u3"] {
        assert!(ask(u, "shared@example.org").contains("waiting for an administrator"));
    }
    let out = ask("u4", "SHARED@Example.org");
    assert!(out.contains("3 emergency request(s) for that address are already waiting"), "{out}");

    let pending = |fx: &Fixture| {
        let v: serde_json::Value = serde_json::from_str(&fx.ctl_ok(&["--json", "status"])).unwrap();
        v["status"]["requests_pending"].as_u64().unwrap()
    };
    assert_eq!(pending(&fx), 5);

    // More pending than a list shows (written straight into the store, as
    // an old daemon without caps left them): the counts stay true.
    fx.stop_daemon();
    let sql = "INSERT INTO emergency_requests (user, machine, address, reason, origin, created_at, status) \
               WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1200) \
               SELECT 'old' || i, 'm', 'old' || i || '@example.org', 'r', 'o', 1, 'pending' FROM n;";
    let st = Command::new("sqlite3").arg(fx.path("state/otpd.db")).arg(sql).status().unwrap();
    assert!(st.success());
    fx.start_daemon();
    assert_eq!(pending(&fx), 1205);
    let list = fx.ctl_ok(&["request", "list"]);
    assert!(list.contains("(showing the newest 1000 of 1205)"), "{}", list.lines().last().unwrap_or(""));
    let v: serde_json::Value = serde_json::from_str(&fx.ctl_ok(&["--json", "request", "list"])).unwrap();
    assert_eq!(v["total"], 1205);
}

#[test]
fn the_shipped_unit_lets_otpd_see_who_ran_su() {
    let _turn = support::shared();
    // Under hidepid (ProtectProc=invisible, noaccess or ptraceable) otpd,
    // which has no CAP_SYS_PTRACE, cannot read /proc/PID/status of a setuid
    // su started by another user, and could not tell who started it.
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/otpd.service")).unwrap();
    let protect: Vec<&str> = unit.lines().filter_map(|l| l.trim().strip_prefix("ProtectProc=")).collect();
    assert!(protect.iter().all(|v| *v == "default"), "ProtectProc={protect:?}");
    let caps = unit.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).unwrap_or("");
    assert!(!caps.contains("CAP_SYS_PTRACE"), "otpd must not need ptrace rights to read a status file");
}

#[test]
fn session_records_of_one_uid_are_rate_limited_apart_from_its_logins() {
    let _turn = support::shared();
    let fx = Fixture::start("");
    fx.ctl_ok(&["user", "enable", "nobody", "--method", "totp"]);
    // uid nobody records 200 sessions of its own, as fast as it can.
    let script = format!(
        r#"
import json, socket, struct
for pid in range(200):
    body = json.dumps({{"type": "session_opened", "protocol": {}, "user": "nobody", "service": "lock",
                        "pid": pid}}).encode()
    s = socket.socket(socket.AF_UNIX)
    s.connect("{}")
    s.sendall(struct.pack(">I", len(body)) + body)
    s.recv(64)
    s.close()
"#,
        common::proto::PROTOCOL_VERSION,
        fx.pam_socket().display()
    );
    let mut c = Command::new("/usr/bin/python3");
    c.arg("-c").arg(script);
    as_uid(&mut c, 65534);
    let started = Instant::now();
    assert!(c.status().unwrap().success());
    // 30 at once, then one every 2 s while the loop ran.
    let most = 30 + started.elapsed().as_secs() as usize / 2 + 1;
    let recorded = open_sessions(&fx).len();
    assert!((30..=most).contains(&recorded), "{recorded} of 200 session records kept (at most {most} allowed)");
    let audit = fx.ctl_ok(&["audit", "--user", "uid:65534"]);
    assert!(audit.contains("refused (rate limit on session records) from uid 65534"), "{audit}");
    // Its logins have their own allowance: the enrollment QR, not a refusal.
    let begin = serde_json::json!({"type": "begin", "protocol": common::proto::PROTOCOL_VERSION,
        "user": "nobody", "uid": 65534, "service": "lock", "pid": 1});
    let reply = send_as(&fx, 65534, &begin);
    assert!(reply.contains("otpauth://"), "{reply}");
}
