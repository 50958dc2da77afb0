//! The fleet end to end: two otpd servers on one real PostgreSQL (or one on
//! SQLite), three otpd agents acting as hosts web01..web03, each with its own
//! PAM socket and a bundle issued by `otpctl host add`, and logins through
//! the built pam_otp.so in the real libpam to an agent. Everything is started
//! and stopped by the test; daemon logs are printed when a test fails.
use crate::support;
use e2e::pg::Cluster;
use e2e::{PAM_AUTH_ERR, PAM_SUCCESS};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// Two servers on one PostgreSQL.
    Postgres,
    /// Two servers on one PostgreSQL that takes only TLS on 127.0.0.1
    /// (`hostssl` lines, `cert` authentication): `sslmode=verify-full` and
    /// a client certificate.
    PostgresTls,
    /// One server on its SQLite file.
    Sqlite,
}

const HOSTS: [&str; 3] = ["web01", "web02", "web03"];

struct Fleet {
    // Fields drop in this order: agents before the servers they talk to,
    // servers before their database.
    agents: Vec<Fixture>,
    /// Daemons a test started besides the fleet (refused agents, another
    /// CA's server): their logs are printed on failure too.
    extras: Vec<Fixture>,
    servers: Vec<Fixture>,
    /// The TLS port of each server.
    ports: Vec<u16>,
    smtp: Option<SmtpSink>,
    pg: Option<Cluster>,
    /// The key file every server shares, the shared debug clock, the maildir.
    dir: tempfile::TempDir,
}

impl Fleet {
    fn start(backend: Backend) -> Fleet {
        Fleet::start_with(backend, false)
    }

    /// With `email`, the servers mail codes through an SMTP sink into
    /// [`Fleet::maildir`].
    fn start_with(backend: Backend, email: bool) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (pg, database) = match backend {
            Backend::Postgres => {
                let pg = Cluster::start().unwrap_or_else(|e| panic!("PostgreSQL: {e}"));
                let url = pg.url();
                (Some(pg), Some(url))
            }
            Backend::PostgresTls => {
                let (pg, url) = tls_cluster(dir.path());
                (Some(pg), Some(url))
            }
            Backend::Sqlite => (None, None),
        };
        let mut f = Fleet {
            agents: Vec::new(),
            extras: Vec::new(),
            servers: Vec::new(),
            ports: Vec::new(),
            smtp: None,
            pg,
            dir,
        };
        let mail = if email {
            let port = free_port();
            f.smtp = Some(SmtpSink::start(&f.maildir(), port, None));
            format!(
                "[email]\ndirectory = \"none\"\n[smtp]\nurl = \"smtp+plain://127.0.0.1:{port}\"\n\
                 from = \"otpd <otpd@test.example>\"\ntimeout = \"5s\"\n"
            )
        } else {
            String::new()
        };
        let servers = if backend == Backend::Sqlite { 1 } else { 2 };
        for _ in 0..servers {
            let database = database.clone();
            let key = f.dir.path().join("secret.key");
            let (server, port) = start_server(database, &key, f.dir.path(), &mail);
            f.servers.push(server);
            f.ports.push(port);
        }
        for (i, name) in HOSTS.iter().enumerate() {
            let dir = f.agent_dir();
            f.issue(name, &dir.path().join("state/host.bundle"));
            // Vary which server each agent tries first, so logins reach both.
            let order: Vec<usize> = if i % 2 == 0 { (0..servers).collect() } else { (0..servers).rev().collect() };
            let agent = f.try_agent(dir, &order, None).unwrap_or_else(|e| panic!("agent {name}: {e}"));
            f.agents.push(agent);
        }
        f
    }

    fn maildir(&self) -> PathBuf {
        self.dir.path().join("maildir")
    }

    /// An empty dir for an agent, with the `state` dir its bundle goes in.
    fn agent_dir(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        dir
    }

    /// `otpctl host add NAME -o BUNDLE` on the first server.
    fn issue(&self, name: &str, bundle: &Path) {
        self.servers[0].ctl_ok(&["host", "add", name, "-o", &bundle.display().to_string()]);
        let mode = std::fs::metadata(bundle).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the bundle of {name} must be readable by its owner only");
    }

    /// An agent in `dir` (its bundle at state/host.bundle) trying the servers
    /// in `order`, claiming to be `host` if given.
    fn try_agent(&self, dir: tempfile::TempDir, order: &[usize], host: Option<&str>) -> Result<Fixture, String> {
        self.try_agent_with(dir, order, host, "")
    }

    /// [`Fleet::try_agent`] with more `[fleet]` keys. Its audit spool is
    /// spool/audit.json in its dir.
    fn try_agent_with(
        &self,
        dir: tempfile::TempDir,
        order: &[usize],
        host: Option<&str>,
        fleet: &str,
    ) -> Result<Fixture, String> {
        let servers: Vec<String> = order.iter().map(|&i| format!("\"127.0.0.1:{}\"", self.ports[i])).collect();
        let host = host.map(|h| format!("host = \"{h}\"\n")).unwrap_or_default();
        // Agents look every second whether their certificate is due for
        // renewal (by the shared debug clock): a test moves the clock.
        let extra = format!(
            "dbus = false\n[fleet]\nservers = [{}]\nbundle = \"{}\"\nspool = \"{}\"\nrenew_check = \"1s\"\n{host}{fleet}",
            servers.join(", "),
            dir.path().join("state/host.bundle").display(),
            dir.path().join("spool/audit.json").display()
        );
        let setup = Setup {
            top: "role = \"agent\"\n".into(),
            extra,
            clock_dir: Some(self.dir.path().to_path_buf()),
            pam_only: true,
            ..Setup::default()
        };
        Fixture::try_start_setup(dir, setup)
    }

    /// The TOTP code of `uri` for `steps` steps from the servers' pinned time.
    fn code(&self, uri: &str, steps: i64) -> String {
        self.servers[0].code(uri, steps)
    }

    /// The server otpctl talks to: the last one, so the admin side sees what
    /// the other server (which issued the bundles) wrote.
    fn admin(&self) -> &Fixture {
        self.servers.last().unwrap()
    }

    /// Enables `user` for TOTP on the first server and activates the
    /// enrollment at `host` with the previous step's code, so the current
    /// and next steps are still unused. Returns the URI.
    fn enroll(&self, user: &str, host: usize) -> String {
        let out = self.servers[0].ctl_ok(&["--json", "user", "enable", user, "--method", "totp", "--print-uri"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        let uri = v["otpauth_uri"].as_str().unwrap_or_else(|| panic!("no URI: {out}")).to_string();
        let ok = self.agents[host].login(user, &[&self.code(&uri, -1)]);
        assert_eq!(ok.code, PAM_SUCCESS, "activating {user} on {}: {}", HOSTS[host], ok.out);
        uri
    }

    /// otpctl speaking to server `server` over TLS with the bundle `bundle`.
    fn remote(&self, server: usize, bundle: &Path, args: &[&str]) -> Output {
        Command::new(build_dir().join("otpctl"))
            // The fleet's debug clock: admin credentials renew by it.
            .env("OTPD_TEST_CLOCK_FILE", self.dir.path().join("clock-offset"))
            .arg("--server")
            .arg(format!("127.0.0.1:{}", self.ports[server]))
            .arg("--bundle")
            .arg(bundle)
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut all: Vec<(String, &Fixture)> = Vec::new();
        all.extend(self.servers.iter().enumerate().map(|(i, s)| (format!("server {}", i + 1), s)));
        all.extend(self.agents.iter().enumerate().map(|(i, a)| (format!("agent {}", HOSTS[i]), a)));
        all.extend(self.extras.iter().enumerate().map(|(i, a)| (format!("extra daemon {i}"), a)));
        for (what, fx) in all {
            eprintln!("===== {what} log ({}) =====\n{}", fx.path("otpd.log").display(), fx.log());
        }
        if let Some(pg) = &self.pg {
            let log = std::fs::read_to_string(pg.socket_dir().join("log")).unwrap_or_default();
            eprintln!("===== PostgreSQL log =====\n{log}");
        }
    }
}

/// A PostgreSQL on 127.0.0.1 that takes TLS only, with a certificate of a
/// test CA for 127.0.0.1, and logs `otp` in by its client certificate; the
/// URL for it (verify-full), whose CA file, certificate and key are in `dir`.
fn tls_cluster(dir: &Path) -> (Cluster, String) {
    use e2e::pg::{ServerTls, Tcp, TestCa};
    let ca = TestCa::new("fleet test PostgreSQL CA");
    let (cert_pem, key_pem) = ca.server(&["127.0.0.1"]);
    let tls = ServerTls { cert_pem, key_pem, client_ca_pem: Some(ca.cert_pem()) };
    let tcp = Tcp { tls: Some(tls), hba: vec!["hostssl all otp 127.0.0.1/32 cert".into()] };
    let pg = Cluster::start_tcp(&tcp).unwrap_or_else(|e| panic!("PostgreSQL with TLS: {e}"));
    let (cert, key) = ca.client("otp");
    let write = |name: &str, pem: &str, mode: u32| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    };
    let params = format!(
        "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        write("pg-ca.crt", &ca.cert_pem(), 0o644),
        write("pg-client.crt", &cert, 0o644),
        write("pg-client.key", &key, 0o600)
    );
    let url = pg.tcp_url("otp", &params);
    (pg, url)
}

/// A server on `database` (default: SQLite in its own dir) with `key_file`,
/// the debug clock in `clock_dir`, listening for TLS on a free port, once
/// that port accepts.
fn start_server(database: Option<String>, key_file: &Path, clock_dir: &Path, extra: &str) -> (Fixture, u16) {
    let port = free_port();
    let setup = Setup {
        top: "role = \"server\"\n".into(),
        database,
        key_file: Some(key_file.to_path_buf()),
        extra: format!(
            "dbus = false\n[lockout]\nmax_failures = 1000\n{extra}\n[fleet]\nlisten = [\"127.0.0.1:{port}\"]\n\
             names = [\"127.0.0.1\"]\n"
        ),
        clock_dir: Some(clock_dir.to_path_buf()),
        // Absent unless a test creates it (see Fleet::stop_in_transaction).
        env: vec![
            ("OTPD_TEST_STOP_IN_TX_FILE".into(), stop_file(clock_dir, port).display().to_string()),
            (
                "OTPD_TEST_STOP_BEFORE_DECISION_FILE".into(),
                stop_file(clock_dir, port).display().to_string() + "-decision",
            ),
            ("OTPD_TEST_STOP_AT_PROMPT_FILE".into(), stop_file(clock_dir, port).display().to_string() + "-prompt"),
            ("OTPD_TEST_STOP_IN_CLAIM_FILE".into(), stop_file(clock_dir, port).display().to_string() + "-claim"),
        ],
        ..Setup::default()
    };
    let mut server = Fixture::start_setup(tempfile::tempdir().unwrap(), setup);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening(port) {
        if let Some(Ok(Some(status))) = server.daemon.as_mut().map(|c| c.try_wait()) {
            panic!("server exited with {status}: {}", server.log());
        }
        assert!(Instant::now() < deadline, "the server never listened on {port}: {}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, port)
}

/// The file whose presence makes the (debug-built) server on `port` stop
/// itself inside its next transaction, before COMMIT; with "-decision"
/// appended, before it decides the next answer; with "-prompt", right after
/// it sends a prompt, before it reads the answer.
fn stop_file(clock_dir: &Path, port: u16) -> PathBuf {
    clock_dir.join(format!("stop-in-tx-{port}"))
}

/// Whether `pid` is stopped (SIGSTOP).
fn stopped(pid: u32) -> bool {
    e2e::proc_stat(&pid.to_string()).first().is_some_and(|state| state == "T")
}

/// Whether a socket listens on loopback TCP `port`. Read from /proc rather
/// than by connecting: a connection that never does TLS is a refused link
/// the server audits, and the tests count those.
fn listening(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1] == local && f[3] == "0A"
    })
}

/// Audit rows (newest first) as `otpctl --json audit ARGS` on `fx` prints them.
fn audit(fx: &Fixture, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json", "audit", "--limit", "100000"];
    all.extend_from_slice(args);
    entries(&fx.ctl_ok(&all), "entries")
}

/// Waits (up to 10 s) for an audit row on `fx` matching `want`: a refused
/// link may be audited after the agent has already given up on it.
fn wait_for_audit(fx: &Fixture, what: &str, want: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = audit(fx, &[]);
        if rows.iter().any(&want) {
            return;
        }
        assert!(Instant::now() < deadline, "no audit row {what}: {rows:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn entries(json: &str, key: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    v[key].as_array().unwrap_or_else(|| panic!("no {key} in {json}")).clone()
}

fn field<'a>(e: &'a Value, key: &str) -> &'a str {
    e[key].as_str().unwrap_or("")
}

fn count_reason(rows: &[Value], reason: &str) -> usize {
    rows.iter().filter(|e| field(e, "reason") == reason).count()
}

/// An accepted TOTP code (the reason may go on with the failures before it).
fn is_accept(e: &Value) -> bool {
    field(e, "result") == "accept" && field(e, "reason").starts_with("valid code")
}

fn machines(rows: &[Value]) -> BTreeSet<String> {
    rows.iter().map(|e| field(e, "machine").to_string()).collect()
}

fn all_hosts() -> BTreeSet<String> {
    HOSTS.iter().map(|h| h.to_string()).collect()
}

/// The codes in the mails the sink stored, oldest first.
/// The text of every message in `maildir`.
fn mail_texts(maildir: &Path) -> Vec<String> {
    let names =
        std::fs::read_dir(maildir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_else(|_| Vec::new());
    names.iter().filter_map(|p: &PathBuf| std::fs::read_to_string(p).ok()).collect()
}

fn mailed_codes(maildir: &Path) -> Vec<String> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(maildir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "eml")).collect())
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(p).ok()?;
            text.lines()
                .map(str::trim)
                .find(|l| l.len() == 8 && l.bytes().all(|b| b.is_ascii_digit()))
                .map(String::from)
        })
        .collect()
}

fn wait_for_codes(maildir: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let codes = mailed_codes(maildir);
        if codes.len() >= n {
            return codes;
        }
        assert!(Instant::now() < deadline, "{} of {n} mails arrived", codes.len());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first `n` distinct mailed codes, in the order they arrived.
fn wait_for_distinct_codes(maildir: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut distinct: Vec<String> = Vec::new();
        for c in mailed_codes(maildir) {
            if !distinct.contains(&c) {
                distinct.push(c);
            }
        }
        if distinct.len() >= n {
            return distinct;
        }
        assert!(Instant::now() < deadline, "{} of {n} codes arrived", distinct.len());
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- 1 ----

fn enrolled_once_on_a_server_a_user_logs_in_on_every_host(backend: Backend) {
    let f = Fleet::start(backend);
    f.servers[0].ctl_ok(&["user", "enable", "alice", "--method", "totp"]);
    let first = f.agents[0].login("alice", &[""]);
    assert!(first.shows_qr(), "the first login on web01 shows the QR: {}", first.out);
    assert_eq!(first.code, PAM_AUTH_ERR, "{}", first.out);
    // Showing the secret is audited as what it is, with the host (check 39).
    let shown = audit(f.admin(), &["--user", "alice"]);
    assert!(shown.iter().any(|e| field(e, "result") == "shown" && field(e, "machine") == "web01"), "{shown:?}");
    let uri = first.uri().unwrap_or_else(|| panic!("no URI in {}", first.out));
    let activated = f.agents[0].login("alice", &[&f.code(&uri, 0)]);
    assert_eq!(activated.code, PAM_SUCCESS, "{}", activated.out);

    let b = f.agents[1].login("alice", &[&f.code(&uri, 1)]);
    assert_eq!(b.code, PAM_SUCCESS, "the next code works on web02: {}", b.out);
    assert!(!b.shows_qr() && b.uri().is_none(), "no QR on web02 once enrolled: {}", b.out);

    let shown = f.admin().ctl_ok(&["user", "show", "alice"]);
    assert!(shown.contains("activated      yes"), "{shown}");
    let accepted: Vec<Value> =
        audit(f.admin(), &["--user", "alice"]).into_iter().filter(|e| field(e, "result") == "accept").collect();
    assert_eq!(machines(&accepted), BTreeSet::from(["web01".to_string(), "web02".to_string()]), "{accepted:?}");
    if backend == Backend::PostgresTls {
        // Every session of the servers (the only TCP clients) is encrypted.
        let pg = f.pg.as_ref().unwrap();
        let sessions = pg
            .psql(
                "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
                   FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                  WHERE a.client_addr IS NOT NULL",
            )
            .unwrap();
        let (tls, plain) = sessions.trim().split_once('|').unwrap();
        assert!(tls.parse::<u32>().unwrap() >= 2 && plain == "0", "TLS|clear sessions: {sessions}");
    }
}

#[test]
fn enrolled_once_on_a_server_a_user_logs_in_on_every_host_postgres() {
    let _turn = support::exclusive("fleet");
    enrolled_once_on_a_server_a_user_logs_in_on_every_host(Backend::Postgres);
}

/// The same with both servers on a PostgreSQL reached over verified TLS,
/// logged in by their client certificate.
#[test]
fn enrolled_once_on_a_server_a_user_logs_in_on_every_host_postgres_over_tls() {
    let _turn = support::exclusive("fleet");
    enrolled_once_on_a_server_a_user_logs_in_on_every_host(Backend::PostgresTls);
}

/// A server whose database cannot be verified does not start, and says
/// what to fix: a CA file that did not issue the database's certificate, a
/// network host with nothing said about TLS, TLS that checks nothing.
#[test]
fn a_server_refuses_to_start_on_a_postgresql_it_cannot_verify_and_says_why() {
    let _turn = support::exclusive("fleet");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (pg, url) = tls_cluster(dir.path());
    let right = dir.path().join("pg-ca.crt").display().to_string();
    let wrong = dir.path().join("other-ca.crt");
    std::fs::write(&wrong, e2e::pg::TestCa::new("not the database's CA").cert_pem()).unwrap();
    let cases = [
        (url.replace(&right, &wrong.display().to_string()), "not issued by a CA of"),
        ("postgresql://otp@db.invalid/otpd".to_string(), "sslmode=verify-full&sslrootcert="),
        (url.replace("sslmode=verify-full", "sslmode=require"), "checks no certificate"),
    ];
    for (database, says) in cases {
        let port = free_port();
        let setup = Setup {
            top: "role = \"server\"\n".into(),
            database: Some(database.clone()),
            extra: format!("dbus = false\n[fleet]\nlisten = [\"127.0.0.1:{port}\"]\nnames = [\"127.0.0.1\"]\n"),
            ..Setup::default()
        };
        match Fixture::try_start_setup(tempfile::tempdir().unwrap(), setup) {
            Ok(fx) => panic!("a server started on {database}: {}", fx.log()),
            Err(e) => assert!(e.contains(says), "{database}: {e}"),
        }
    }
    // The same URL with the right CA file: the server starts.
    let (server, _) = start_server(Some(url), &dir.path().join("secret.key"), dir.path(), "");
    server.ctl_ok(&["status"]);
    drop((server, pg));
}

#[test]
fn enrolled_once_on_a_server_a_user_logs_in_on_every_host_sqlite() {
    let _turn = support::exclusive("fleet");
    enrolled_once_on_a_server_a_user_logs_in_on_every_host(Backend::Sqlite);
}

// ---------------------------------------------------------------- 2 ----

fn one_code_raced_over_three_hosts_is_accepted_once(backend: Backend) {
    const N: usize = 64;
    let f = Fleet::start(backend);
    let uri = f.enroll("tara", 0);
    let code = f.code(&uri, 0);
    let logins = (0..N).map(|i| f.agents[i % 3].pamdrive("otp", "tara", &[code.as_bytes()])).collect();
    let codes = race_commands(f.dir.path(), logins);
    assert_eq!(codes.iter().filter(|&&c| c == PAM_SUCCESS).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == PAM_AUTH_ERR).count(), N - 1, "{codes:?}");
    // Activation was the step before; these N rows are this code's.
    let rows: Vec<Value> = audit(f.admin(), &["--user", "tara"])
        .into_iter()
        .filter(|e| field(e, "reason") != "enrollment activated")
        .collect();
    assert_eq!(count_reason(&rows, "valid code"), 1, "{rows:?}");
    assert_eq!(count_reason(&rows, "code already used"), N - 1, "{rows:?}");
    let raced: Vec<Value> =
        rows.into_iter().filter(|e| ["valid code", "code already used"].contains(&field(e, "reason"))).collect();
    assert_eq!(machines(&raced), all_hosts(), "the race went through every host");
    // Both servers decided some of them (their logs carry the audit lines).
    for (i, server) in f.servers.iter().enumerate() {
        assert!(server.log().contains("audit: user=tara service=otp "), "server {} saw none of the race", i + 1);
    }
}

#[test]
fn one_code_raced_sixty_four_times_over_three_hosts_and_two_servers_is_accepted_once() {
    let _turn = support::exclusive("fleet");
    one_code_raced_over_three_hosts_is_accepted_once(Backend::Postgres);
}

#[test]
fn one_code_raced_sixty_four_times_over_three_hosts_on_sqlite_is_accepted_once() {
    let _turn = support::exclusive("fleet");
    one_code_raced_over_three_hosts_is_accepted_once(Backend::Sqlite);
}

// ---------------------------------------------------------------- 3 ----

#[test]
fn an_emailed_code_works_only_on_its_host_and_the_hourly_rule_is_per_host() {
    let _turn = support::exclusive("fleet");
    let f = Fleet::start_with(Backend::Postgres, true);
    f.servers[0].ctl_ok(&["user", "enable", "erin", "--method", "email", "--email", "erin@example.org"]);
    let asked = f.agents[0].login("erin", &[""]);
    assert!(asked.out.contains("A code was sent to e***n@example.org"), "{}", asked.out);
    let code = wait_for_codes(&f.maildir(), 1)[0].clone();
    // Check 39: the mail names the host where the code works, not the server that sent it.
    let mail = mail_texts(&f.maildir()).concat();
    assert!(mail.contains("Subject: Your login code for web01"), "{mail}");
    assert!(mail.contains("only for erin on web01"), "{mail}");

    let elsewhere = f.agents[1].login("erin", &[&code]);
    assert_eq!(elsewhere.code, PAM_AUTH_ERR, "{}", elsewhere.out);
    assert!(elsewhere.out.contains("That code was issued for another machine."), "{}", elsewhere.out);
    let rows = audit(f.admin(), &["--user", "erin"]);
    let other = rows.iter().find(|e| field(e, "reason") == "emailed code issued on another machine");
    assert_eq!(other.map(|e| field(e, "machine")), Some("web02"), "{rows:?}");

    let home = f.agents[0].login("erin", &[&code]);
    assert_eq!(home.code, PAM_SUCCESS, "{}", home.out);
    let again = f.agents[0].login("erin", &[""]);
    assert_eq!(again.code, PAM_AUTH_ERR, "{}", again.out);
    assert!(again.out.contains("the next one can be requested at"), "{}", again.out);
    // Another host has its own hour: erin may ask for a code there.
    let there = f.agents[1].login("erin", &[""]);
    assert!(there.out.contains("A code was sent to e***n@example.org"), "{}", there.out);
    let second = wait_for_distinct_codes(&f.maildir(), 2)[1].clone();
    assert_ne!(second, code);
    assert_eq!(f.agents[1].login("erin", &[&second]).code, PAM_SUCCESS);
    assert!(!f.servers.iter().any(|s| s.log().contains(&code)), "a code was logged");
    // An emergency request shows the host it came from.
    let pending = f.agents[2].login("erin", &["e", "erin.home@example.net", "lost my phone"]);
    assert!(pending.out.contains("waiting for an administrator"), "{}", pending.out);
    let list = f.admin().ctl_ok(&["request", "list"]);
    let header = list.lines().next().unwrap_or("");
    let row = list.lines().find(|l| l.contains("erin.home@example.net")).unwrap_or_else(|| panic!("{list}"));
    assert!(
        header.split_whitespace().nth(2) == Some("HOST") && row.split_whitespace().nth(2) == Some("web03"),
        "{list}"
    );
}

#[test]
fn codes_queued_on_two_servers_are_each_mailed_once() {
    let _turn = support::exclusive("fleet");
    const USERS: usize = 12;
    let mut f = Fleet::start_with(Backend::Postgres, true);
    for u in 0..USERS {
        let user = format!("m{u:02}");
        f.servers[u % 2].ctl_ok(&[
            "user",
            "enable",
            &user,
            "--method",
            "email",
            "--email",
            &format!("{user}@example.org"),
        ]);
        let asked = f.agents[u % 3].login(&user, &[""]);
        assert!(asked.out.contains("A code was sent"), "{}", asked.out);
    }
    wait_for_distinct_codes(&f.maildir(), USERS);
    // Once both servers are stopped nothing more can arrive: the sink
    // stores a message before it acknowledges it.
    for s in &mut f.servers {
        s.stop_daemon();
    }
    let codes = mailed_codes(&f.maildir());
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &codes {
        *counts.entry(c).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), USERS);
    let twice: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "mailed more than once (code, times): {twice:?}");
}

// ---------------------------------------------------------------- 4 ----

struct Attempt {
    user: usize,
    step: i64,
    host: usize,
    started: Instant,
    result: i32,
}

/// Enables and activates `n` users named `{prefix}NN`, 8 at a time, each on
/// the host `i % 3`; returns their URIs.
fn enroll_many(f: &Fleet, prefix: &str, n: usize) -> Vec<String> {
    let uris = Mutex::new(vec![String::new(); n]);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                let uri = f.enroll(&format!("{prefix}{i:02}"), i % 3);
                uris.lock().unwrap()[i] = uri;
            });
        }
    });
    uris.into_inner().unwrap()
}

/// (user, step) pairs accepted more than once.
fn accepted_twice(attempts: &[Attempt]) -> Vec<(usize, i64)> {
    let mut seen = BTreeMap::new();
    for a in attempts.iter().filter(|a| a.result == PAM_SUCCESS) {
        *seen.entry((a.user, a.step)).or_insert(0) += 1;
    }
    seen.into_iter().filter(|(_, n)| *n > 1).map(|(k, _)| k).collect()
}

#[test]
fn a_server_killed_during_a_storm_of_logins_fails_over_without_replays() {
    let _turn = support::exclusive("fleet");
    const USERS: usize = 40;
    const THREADS: usize = 8;
    let mut f = Fleet::start(Backend::Postgres);
    let uris = enroll_many(&f, "s", USERS);
    // Each user: the current step twice, the next step twice, the current
    // step again (refused once the next was used): 200 logins.
    let plan: Vec<(usize, i64)> = (0..USERS).flat_map(|u| [0, 0, 1, 1, 0].into_iter().map(move |s| (u, s))).collect();
    let codes: Vec<[String; 2]> = uris.iter().map(|u| [f.code(u, 0), f.code(u, 1)]).collect();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let attempts = Mutex::new(Vec::new());
    let agents = &f.agents;
    let first = &mut f.servers[0];
    let killed_at = std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&(user, step)) = plan.get(i) else { break };
                let host = i % 3;
                let started = Instant::now();
                let r = agents[host].login(&format!("s{user:02}"), &[&codes[user][step as usize]]);
                attempts.lock().unwrap().push(Attempt { user, step, host, started, result: r.code });
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while done.load(Ordering::SeqCst) < 60 {
            assert!(Instant::now() < deadline, "the storm stalled");
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut daemon = first.daemon.take().unwrap();
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        Instant::now()
    });
    let attempts = attempts.into_inner().unwrap();
    assert_eq!(attempts.len(), plan.len());
    assert_eq!(accepted_twice(&attempts), vec![], "a code was accepted twice");
    assert!(attempts.iter().all(|a| a.result == PAM_SUCCESS || a.result == PAM_AUTH_ERR));

    // Users whose every login began after the kill went through the other
    // server: each got in once with a fresh code.
    let after: BTreeSet<usize> =
        (0..USERS).filter(|&u| attempts.iter().filter(|a| a.user == u).all(|a| a.started > killed_at)).collect();
    let ok_after = attempts.iter().filter(|a| a.started > killed_at && a.result == PAM_SUCCESS).count();
    eprintln!("{} users entirely after the kill; {ok_after} logins in after it", after.len());
    assert!(after.len() >= 10, "the storm was over before the kill: {} users after it", after.len());
    for &u in &after {
        let ok = attempts.iter().filter(|a| a.user == u && a.result == PAM_SUCCESS).count();
        assert!(
            ok >= 1,
            "s{u:02} never got in after the kill: {:?}",
            attempts.iter().filter(|a| a.user == u).map(|a| (a.step, a.host, a.result)).collect::<Vec<_>>()
        );
    }

    // Every login the hosts saw succeed has its acceptance in the audit, on
    // that host; no user has more acceptances than fresh codes.
    let rows = audit(&f.servers[1], &[]);
    for u in 0..USERS {
        let name = format!("s{u:02}");
        for (h, host) in HOSTS.iter().enumerate() {
            let accepted = rows
                .iter()
                .filter(|e| field(e, "user") == name && field(e, "machine") == *host && is_accept(e))
                .count();
            let succeeded = attempts.iter().filter(|a| a.user == u && a.host == h && a.result == PAM_SUCCESS).count();
            assert!(accepted >= succeeded, "{name} on {host}: {succeeded} logins in, {accepted} in the audit");
        }
        let accepted = rows.iter().filter(|e| field(e, "user") == name && is_accept(e)).count();
        assert!(accepted <= 2, "{name}: {accepted} codes accepted, only 2 were fresh");
    }
}

// ---------------------------------------------------------------- 5 ----

#[test]
fn postgres_stopped_during_a_storm_refuses_logins_until_it_is_back_without_replays() {
    let _turn = support::exclusive("fleet");
    const USERS: usize = 16;
    const THREADS: usize = 8;
    const PER_PHASE: usize = 24;
    let mut f = Fleet::start(Backend::Postgres);
    let uris = enroll_many(&f, "p", USERS);
    let codes: Vec<[String; 2]> = uris.iter().map(|u| [f.code(u, 0), f.code(u, 1)]).collect();
    // Step 0 before the stop; step 1 from then on: refused while the
    // database is down, each accepted once when it is back. Half the users
    // move to step 1 as the stop begins (their COMMITs may be in flight,
    // their codes spent or in doubt), the other half once it is down, so
    // some codes are surely left for after the restart however long the
    // stop takes.
    let fresh_step = AtomicBool::new(false);
    let fresh_step_late = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    let attempts: Mutex<Vec<(Attempt, Instant)>> = Mutex::new(Vec::new());
    let agents = &f.agents;
    let pg = f.pg.as_mut().unwrap();
    let finished_since = |attempts: &Mutex<Vec<(Attempt, Instant)>>, t: Instant| {
        attempts.lock().unwrap().iter().filter(|(a, _)| a.started > t).count()
    };
    let wait_for = |what: &str, t: Instant| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while finished_since(&attempts, t) < PER_PHASE {
            assert!(Instant::now() < deadline, "the storm stalled {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let (stopping, down, up_begin, up) = std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let (user, host) = (i % USERS, i % 3);
                    let moved = if user < USERS / 2 { &fresh_step } else { &fresh_step_late };
                    let step = moved.load(Ordering::SeqCst) as i64;
                    let started = Instant::now();
                    let r = agents[host].login(&format!("p{user:02}"), &[&codes[user][step as usize]]);
                    let attempt = Attempt { user, step, host, started, result: r.code };
                    attempts.lock().unwrap().push((attempt, Instant::now()));
                }
            });
        }
        let start = Instant::now();
        wait_for("before the stop", start);
        fresh_step.store(true, Ordering::SeqCst);
        let stopping = Instant::now();
        pg.stop().unwrap();
        let down = Instant::now();
        fresh_step_late.store(true, Ordering::SeqCst);
        wait_for("while PostgreSQL was down", down);
        let up_begin = Instant::now();
        pg.start_again().unwrap();
        let up = Instant::now();
        wait_for("after PostgreSQL was back", up);
        // The servers reconnect on their own time (a busy machine: seconds);
        // failed logins meanwhile are quick, so the storm goes on until a
        // login after the restart has succeeded (the late half's codes are
        // unused), for 30 s at most (the assertion below then says none did).
        let deadline = Instant::now() + Duration::from_secs(30);
        let succeeded_since =
            |t: Instant| attempts.lock().unwrap().iter().any(|(a, _)| a.started > t && a.result == PAM_SUCCESS);
        while !succeeded_since(up) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::SeqCst);
        (stopping, down, up_begin, up)
    });
    let attempts: Vec<(Attempt, Instant)> = attempts.into_inner().unwrap();
    let while_down: Vec<&Attempt> =
        attempts.iter().filter(|(a, ended)| a.started > down && *ended < up_begin).map(|(a, _)| a).collect();
    eprintln!(
        "{} logins in all, {} while PostgreSQL was down, {} after; stop took {:?}, down {:?}, restart {:?}",
        attempts.len(),
        while_down.len(),
        attempts.iter().filter(|(a, _)| a.started > up).count(),
        down - stopping,
        up_begin - down,
        up - up_begin,
    );
    assert!(!while_down.is_empty());
    for a in &while_down {
        assert_eq!(
            a.result, PAM_AUTH_ERR,
            "p{:02} step {} on {} while PostgreSQL was down",
            a.user, a.step, HOSTS[a.host]
        );
    }
    // A COMMIT in flight when PostgreSQL shut down has an unknown outcome:
    // the server must deny that login, and the code may be spent.
    let in_doubt: BTreeSet<usize> = attempts
        .iter()
        .filter(|(a, ended)| a.step == 1 && a.result != PAM_SUCCESS && a.started < down && *ended > stopping)
        .map(|(a, _)| a.user)
        .collect();
    let flat: Vec<Attempt> = attempts.into_iter().map(|(a, _)| a).collect();
    assert_eq!(accepted_twice(&flat), vec![], "a code was accepted twice");
    assert!(
        flat.iter().any(|a| a.started > up && a.result == PAM_SUCCESS),
        "no login succeeded after PostgreSQL was back"
    );
    // Now the database is up: each user's step-1 code works exactly once in
    // all (a code in doubt at most once).
    for (u, [_, fresh]) in codes.iter().enumerate() {
        let used = flat.iter().any(|a| a.user == u && a.step == 1 && a.result == PAM_SUCCESS);
        let r = f.agents[u % 3].login(&format!("p{u:02}"), &[fresh]);
        if used {
            assert_eq!(r.code, PAM_AUTH_ERR, "p{u:02}'s code was accepted twice: {}", r.out);
        } else if !in_doubt.contains(&u) {
            assert_eq!(r.code, PAM_SUCCESS, "p{u:02}'s unused code: {}", r.out);
        } else {
            assert!(r.code == PAM_SUCCESS || r.code == PAM_AUTH_ERR, "p{u:02}: {}", r.out);
        }
    }
}

// ---------------------------------------------------------------- 6 ----

#[test]
fn a_revoked_host_is_refused_at_once_and_the_code_still_works_elsewhere() {
    let _turn = support::exclusive("fleet");
    let f = Fleet::start(Backend::Postgres);
    let uri = f.enroll("rob", 0);
    f.servers[0].ctl_ok(&["host", "revoke", "web03"]);
    let refused = f.agents[2].login("rob", &[&f.code(&uri, 0)]);
    assert_eq!(refused.code, PAM_AUTH_ERR, "a revoked host's login: {}", refused.out);
    wait_for_audit(f.admin(), "saying \"revoked\"", |e| field(e, "reason").contains("revoked"));
    // Nothing was consumed by the refused login, and other hosts go on.
    let ok = f.agents[0].login("rob", &[&f.code(&uri, 0)]);
    assert_eq!(ok.code, PAM_SUCCESS, "{}", ok.out);
    let list = f.admin().ctl_ok(&["host", "list"]);
    let line = list.lines().find(|l| l.starts_with("web03 ")).unwrap_or_else(|| panic!("{list}"));
    assert_eq!(line.split_whitespace().nth(5), Some("revoked"), "{list}");
}

#[test]
fn an_agent_without_a_usable_bundle_refuses_to_start_and_says_why() {
    let _turn = support::exclusive("fleet");
    let f = Fleet::start(Backend::Sqlite);
    let good = std::fs::read(f.agents[0].path("state/host.bundle")).unwrap();
    type MakeBundle = Box<dyn Fn(&Path)>;
    let write = |bytes: Vec<u8>, mode: u32| -> MakeBundle {
        Box::new(move |bundle: &Path| {
            std::fs::write(bundle, &bytes).unwrap();
            std::fs::set_permissions(bundle, std::fs::Permissions::from_mode(mode)).unwrap();
        })
    };
    let cases: [(&str, MakeBundle); 4] = [
        ("missing", Box::new(|_: &Path| {})),
        ("readable by others", write(good, 0o644)),
        ("not a bundle", write(b"-----BEGIN CERTIFICATE-----\nnot base64\n".to_vec(), 0o600)),
        ("a directory", Box::new(|bundle: &Path| std::fs::create_dir(bundle).unwrap())),
    ];
    for (what, make) in cases {
        let dir = f.agent_dir();
        let bundle = dir.path().join("state/host.bundle");
        make(&bundle);
        match f.try_agent(dir, &[0], None) {
            Ok(agent) => panic!("an agent with a bundle {what} started: {}", agent.log()),
            Err(log) => {
                assert!(log.contains(&bundle.display().to_string()), "the message names the bundle ({what}): {log}")
            }
        }
    }
}

#[test]
fn a_bundle_of_another_ca_and_a_host_claiming_another_name_are_refused() {
    let _turn = support::exclusive("fleet");
    let mut f = Fleet::start(Backend::Postgres);
    let uri = f.enroll("vic", 0);
    let code = f.code(&uri, 0);

    // An independent server (own database, key and so CA) issues a bundle.
    let (other, _) = start_server(None, &f.dir.path().join("other-secret.key"), f.dir.path(), "");
    let dir = f.agent_dir();
    other.ctl_ok(&["host", "add", "web09", "-o", &dir.path().join("state/host.bundle").display().to_string()]);
    f.extras.push(other);
    let handshake = |e: &Value| field(e, "result") == "refused" && field(e, "reason").contains("TLS handshake failed");
    assert!(!audit(f.admin(), &[]).iter().any(handshake));
    // (It dials at start already, to ask whether its certificate is current.)
    let stranger = f.try_agent(dir, &[0, 1], None).unwrap_or_else(|e| panic!("{e}"));
    let r = stranger.login("vic", &[&code]);
    f.extras.push(stranger);
    assert_eq!(r.code, PAM_AUTH_ERR, "a host of another CA logged in: {}", r.out);
    wait_for_audit(f.admin(), "of the failed handshake", handshake);

    // web02's certificate in an agent that says it is web01.
    let dir = f.agent_dir();
    let bundle = dir.path().join("state/host.bundle");
    std::fs::copy(f.agents[1].path("state/host.bundle"), &bundle).unwrap();
    std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o600)).unwrap();
    let liar = f.try_agent(dir, &[0, 1], Some("web01")).unwrap_or_else(|e| panic!("{e}"));
    let r = liar.login("vic", &[&code]);
    f.extras.push(liar);
    assert_eq!(r.code, PAM_AUTH_ERR, "web02's certificate logged in as web01: {}", r.out);
    wait_for_audit(f.admin(), "saying \"presented as\"", |e| field(e, "reason").contains("presented as"));
    // The code was never consumed by the refused hosts.
    assert_eq!(f.agents[0].login("vic", &[&code]).code, PAM_SUCCESS);
}

// ---------------------------------------------------------------- 7 ----

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn base32_decode(s: &str) -> Vec<u8> {
    let (mut bits, mut n, mut out) = (0u64, 0u32, Vec::new());
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("not base32: {s}"),
        };
        bits = (bits << 5) | v as u64;
        n += 5;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_secret_code_key_or_database_is_ever_on_an_agent() {
    let _turn = support::exclusive("fleet");
    let f = Fleet::start_with(Backend::Postgres, true);
    let uri = f.enroll("alice", 0);
    let mut s = f.agents[1].pamdrive("otp", "alice", &[f.code(&uri, 0).as_bytes()]);
    s.arg("--session");
    assert_eq!(run(s).code, PAM_SUCCESS);
    f.servers[0].ctl_ok(&["user", "enable", "erin", "--method", "email", "--email", "erin@example.org"]);
    assert!(f.agents[2].login("erin", &[""]).out.contains("A code was sent"));
    let mailed = wait_for_codes(&f.maildir(), 1)[0].clone();
    assert_eq!(f.agents[2].login("erin", &[&mailed]).code, PAM_SUCCESS);

    let secret = totp_rs::TOTP::from_url_unchecked(&uri).unwrap().get_secret_base32();
    let raw = base32_decode(&secret);
    let key = std::fs::read(f.dir.path().join("secret.key")).unwrap();
    let mut needles: Vec<(&str, Vec<u8>)> = vec![
        ("the TOTP secret (base32)", secret.clone().into_bytes()),
        ("the TOTP secret (base32, lower case)", secret.to_lowercase().into_bytes()),
        ("the TOTP secret (raw)", raw),
        ("the emailed code", mailed.clone().into_bytes()),
        ("a SQLite database", b"SQLite format 3".to_vec()),
    ];
    if key.len() >= 16 {
        needles.push(("the key file", key));
    }
    for (h, agent) in f.agents.iter().enumerate() {
        let mut state: Vec<String> = files_under(&agent.path("state"))
            .iter()
            .map(|p| p.strip_prefix(agent.path("state")).unwrap().display().to_string())
            .collect();
        state.sort();
        assert_eq!(state, ["host.bundle"], "{}: only the bundle belongs in the state dir", HOSTS[h]);
        let run: Vec<PathBuf> = files_under(&agent.path("run"));
        assert_eq!(run, [agent.pam_socket()], "{}: only the PAM socket in the socket dir", HOSTS[h]);
        for file in files_under(agent.dir.path()) {
            let Ok(bytes) = std::fs::read(&file) else { continue };
            for (what, needle) in &needles {
                assert!(!contains(&bytes, needle), "{what} is in {} on {}", file.display(), HOSTS[h]);
            }
        }
    }
}

// ---------------------------------------------------------------- 8 ----

#[test]
fn sessions_and_audit_of_every_host_are_seen_on_any_server_and_remotely() {
    let _turn = support::exclusive("fleet");
    let f = Fleet::start(Backend::Postgres);
    for (h, host) in HOSTS.iter().enumerate() {
        let user = format!("user{h}");
        let uri = f.enroll(&user, h);
        let mut s = f.agents[h].pamdrive("otp", &user, &[f.code(&uri, 0).as_bytes()]);
        s.arg("--session");
        let r = run(s);
        assert_eq!(r.code, PAM_SUCCESS, "{host}: {}", r.out);
    }
    let admin = f.admin();
    let sessions = entries(&admin.ctl_ok(&["--json", "sessions"]), "sessions");
    assert_eq!(machines(&sessions), all_hosts(), "{sessions:?}");
    let table = admin.ctl_ok(&["sessions"]);
    assert!(table.lines().next().unwrap_or("").contains("HOST"), "{table}");
    assert!(HOSTS.iter().all(|h| table.contains(h)), "{table}");
    let rows = audit(admin, &[]);
    assert!(machines(&rows).is_superset(&all_hosts()), "{rows:?}");
    let web02 = audit(admin, &["--host", "web02"]);
    assert!(!web02.is_empty());
    assert_eq!(machines(&web02), BTreeSet::from(["web02".to_string()]), "{web02:?}");

    let list = admin.ctl_ok(&["host", "list"]);
    for host in HOSTS {
        let line = list.lines().find(|l| l.split_whitespace().next() == Some(host));
        let line = line.unwrap_or_else(|| panic!("{host} missing: {list}"));
        // HOST ROLE ADDED LAST-SEEN LAST-ADDRESS STATUS EXPIRES RENEWED CA:
        // seen (a time, not "-") after its logins, from where.
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols.len(), 9, "{list}");
        assert_eq!(cols[1], "agent", "{list}");
        assert!(cols[3].starts_with("20") && cols[3].ends_with('Z'), "{host} has no last-seen time: {list}");
        assert_eq!(cols[4], "127.0.0.1", "{list}");
        assert_eq!(cols[5], "active", "{list}");
    }

    // Remote otpctl with admin credentials, against the other server.
    let ops = f.dir.path().join("ops.bundle");
    f.servers[0].ctl_ok(&["host", "add", "ops", "--admin", "-o", &ops.display().to_string()]);
    let remote = f.remote(0, &ops, &["--json", "audit", "--limit", "100000"]);
    assert!(remote.status.success(), "{}", String::from_utf8_lossy(&remote.stderr));
    assert!(machines(&entries(&String::from_utf8_lossy(&remote.stdout), "entries")).is_superset(&all_hosts()));
    let remote = f.remote(0, &ops, &["--json", "audit", "--host", "web02", "--limit", "100000"]);
    assert!(remote.status.success(), "{}", String::from_utf8_lossy(&remote.stderr));
    let rows = entries(&String::from_utf8_lossy(&remote.stdout), "entries");
    assert_eq!(machines(&rows), BTreeSet::from(["web02".to_string()]));
    let remote = f.remote(0, &ops, &["--json", "sessions"]);
    assert!(remote.status.success(), "{}", String::from_utf8_lossy(&remote.stderr));
    assert_eq!(machines(&entries(&String::from_utf8_lossy(&remote.stdout), "sessions")), all_hosts());

    // A host's bundle is no admin credential.
    let agent_bundle = f.agents[0].path("state/host.bundle");
    let refused = f.remote(0, &agent_bundle, &["audit"]);
    assert!(
        !refused.status.success(),
        "an agent bundle listed the audit: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
    assert!(!String::from_utf8_lossy(&refused.stdout).contains("web0"));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("refused these credentials"), "{said}");
}

// ------------------------------------------------- attacks on the fleet ----

/// A client of the PAM socket that is not pam_otp: `python3` run as `uid`
/// speaks the protocol itself, names `user` with the caller's own uid in
/// `begin`, answers `resolve_user` with that uid too, and gives `answers`
/// at the prompts (then cancels). Prints every message it receives, one
/// JSON object a line.
/// Python helpers for a client of the PAM socket: `send(s, msg)` and
/// `receive(s)` (None once the daemon closed), one frame each.
const PY_FRAMES: &str = r#"
import json, os, socket, struct, sys, threading
def send(s, m):
    b = json.dumps(m).encode()
    s.sendall(struct.pack(">I", len(b)) + b)
def exactly(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            return None
        b += c
    return b
def receive(s):
    head = exactly(s, 4)
    body = head and exactly(s, struct.unpack(">I", head)[0])
    return body and json.loads(body)
"#;

fn forged_login(socket: &Path, uid: u32, user: &str, answers: &[&str]) -> String {
    const CLIENT: &str = r#"
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
user, answers = sys.argv[2], sys.argv[3:]
send(s, {"type": "begin", "protocol": 1, "user": user, "service": "forged", "pid": 1, "uid": os.getuid()})
while True:
    m = receive(s)
    if m is None:
        break
    print(json.dumps(m, sort_keys=True), flush=True)
    if m["type"] == "resolve_user":
        send(s, {"type": "user_resolved", "uid": os.getuid()})
    elif m["type"] == "prompt":
        send(s, {"type": "answer", "text": answers.pop(0)} if answers else {"type": "cancel"})
    elif m["type"] in ("outcome", "ack"):
        break
"#;
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg("-c").arg(format!("{PY_FRAMES}{CLIENT}")).arg(socket).arg(user).args(answers);
    as_uid(&mut cmd, uid);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "forged client: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Check 35 (issue 18, finding 1): uid nobody on an agent host speaks the
/// agent's PAM socket itself, naming other users with its own uid and
/// answering resolve_user with it. On a standalone host that gets "only
/// yourself"; through an agent it used to be decided on the name: bob's
/// pending secret shown and activatable, carol locked out fleet-wide,
/// codes mailed and emergency requests filed in erin's name. Now the
/// server decides on the account the agent's directory gives the caller's
/// uid: every other name gets the same answer, nothing is written against
/// them, and the audit names the caller.
#[test]
fn a_local_user_on_an_agent_host_can_act_only_for_its_own_account() {
    let _turn = support::exclusive("fleet");
    const NOBODY: u32 = 65534;
    let f = Fleet::start_with(Backend::Sqlite, true);
    let admin = f.admin();
    f.servers[0].ctl_ok(&["user", "enable", "bob", "--method", "totp"]);
    f.enroll("carol", 1);
    f.servers[0].ctl_ok(&["user", "enable", "erin", "--method", "email", "--email", "erin@example.org"]);
    let socket = f.agents[0].pam_socket();
    let wrong = ["000000"; 12];
    let answers: Vec<(&str, String)> = ["bob", "carol", "erin", "no-such-user"]
        .into_iter()
        .map(|user| {
            let first = forged_login(&socket, NOBODY, user, &wrong);
            // Enter (an emailed code) and E (emergency access) for each too.
            forged_login(&socket, NOBODY, user, &["", "e", "mallory@evil.example", "let me in"]);
            (user, first)
        })
        .collect();
    for (user, out) in &answers {
        assert!(!out.contains("otpauth") && !out.contains("secret"), "{user}: a secret was shown: {out}");
        assert_eq!(out, &answers[3].1, "{user} must look like a name with no account");
    }
    assert!(answers[0].1.contains("not_enrolled"), "nobody has no record of its own: {}", answers[0].1);
    let bob = admin.show("bob");
    assert!(bob["user"]["activated_at"].is_null(), "bob's enrollment was activated: {bob}");
    assert_eq!(admin.show("carol")["user"]["failures"], 0, "guesses were counted against carol");
    std::thread::sleep(Duration::from_millis(300));
    assert!(mailed_codes(&f.maildir()).is_empty(), "a code was mailed for another user");
    let requests: Value = serde_json::from_str(&admin.ctl_ok(&["--json", "request", "list"])).unwrap();
    assert_eq!(requests["requests"].as_array().map(Vec::len), Some(0), "{requests}");
    let rows = audit(admin, &["--user", "bob"]);
    assert!(rows.iter().all(|e| field(e, "result") != "accept"), "{rows:?}");

    // Its own account works through the agent as on a standalone host: a
    // screen locker (the real module, as uid nobody) enrolls and logs in,
    // and the forged client reaches only nobody's own record, whatever it types.
    f.servers[0].ctl_ok(&["user", "enable", "nobody", "--method", "totp"]);
    let mut shown = f.agents[0].pamdrive("otp", "nobody", &[b""]);
    as_uid(&mut shown, NOBODY);
    let shown = run(shown);
    let uri = shown.uri().unwrap_or_else(|| panic!("nobody is shown its own enrollment: {}", shown.out));
    let mut own = f.agents[0].pamdrive("otp", "nobody", &[f.code(&uri, 0).as_bytes()]);
    as_uid(&mut own, NOBODY);
    let own = run(own);
    assert_eq!(own.code, PAM_SUCCESS, "{}", own.out);
    for guess in ["111111", "222222"] {
        let forged = forged_login(&socket, NOBODY, "carol", &[guess]);
        assert!(forged.contains("prompt") && !forged.contains("otpauth"), "{forged}");
    }
    assert_eq!(admin.show("nobody")["user"]["failures"], 2, "its guesses count against itself");
    assert_eq!(admin.show("carol")["user"]["failures"], 0);
    let rows = audit(admin, &["--user", "nobody"]);
    let typed =
        rows.iter().find(|e| field(e, "reason").contains("typed as carol")).unwrap_or_else(|| panic!("{rows:?}"));
    assert!(field(typed, "reason").contains(&format!("caller uid {NOBODY} on web01")), "{typed}");
}

/// Check 37 (issue 18, finding 3): a server stopped inside a transaction
/// (SIGSTOP: a frozen VM or a paused process) held its PostgreSQL row locks
/// for the whole pause, and the users it was deciding were refused through
/// every other server. Its session is now ended by PostgreSQL within
/// seconds (idle_in_transaction_session_timeout, keepalives): a login of
/// the same user, and an emailed-code request, through the other server
/// succeed while the first is still stopped.
#[test]
fn a_server_stopped_inside_a_transaction_holds_no_lock_for_long() {
    let _turn = support::exclusive("fleet");
    let f = Fleet::start_with(Backend::Postgres, true);
    let uri = f.enroll("carol", 1);
    f.servers[0].ctl_ok(&["user", "enable", "erin", "--method", "email", "--email", "erin@example.org"]);
    let first = f.servers[0].daemon.as_ref().unwrap().id();
    let pg = f.pg.as_ref().unwrap();
    // Server 1 stops in its next transaction; web01 tries it first (see
    // Fleet::start). Stopped in some other transaction of its own (mail,
    // last_seen), it is let go and stopped again, until it holds `locked`.
    let held = |user: &'static str, answer: &'static str, locked: &str| {
        for _ in 0..5 {
            write_all(&stop_file(f.dir.path(), f.ports[0]), b"");
            let agent = f.agents[0].pamdrive("otp", user, &[answer.as_bytes()]);
            let pending = std::thread::spawn(move || run(agent));
            let deadline = Instant::now() + Duration::from_secs(10);
            while !stopped(first) {
                assert!(Instant::now() < deadline, "server 1 never stopped in a transaction");
                std::thread::sleep(Duration::from_millis(5));
            }
            if pg.psql(locked).is_ok_and(|holds| holds.trim() == "t") {
                return pending;
            }
            unsafe { libc::kill(first as i32, libc::SIGCONT) };
            pending.join().unwrap();
        }
        panic!("server 1 never stopped holding {locked}");
    };
    // A wrong code: server 1 stops holding carol's row (its failure not committed).
    let carols_row = "SELECT count(*) = 0 FROM (SELECT 1 FROM users WHERE name = 'carol' FOR UPDATE SKIP LOCKED) r";
    let pending = held("carol", "000000", carols_row);
    let started = Instant::now();
    let other = f.agents[1].login("carol", &[&f.code(&uri, 0)]);
    let took = started.elapsed();
    assert_eq!(other.code, PAM_SUCCESS, "refused while server 1 holds carol's row: {}", other.out);
    assert_eq!(pending.join().unwrap().code, PAM_AUTH_ERR);
    unsafe { libc::kill(first as i32, libc::SIGCONT) };
    // The same for an emailed code: server 1 takes erin's new message
    // from the outbox to send it (a row lock the other servers' mailers
    // skip) and stops right there (the claim hook of its mailer): server 2
    // mails it once that lock is gone. Server 2's mailer polls, and may
    // claim the message first: then erin asks again, which queues the same
    // code once more, and server 1's mailer gets the next turn.
    let claim = PathBuf::from(stop_file(f.dir.path(), f.ports[0]).display().to_string() + "-claim");
    let mut held = None;
    for _ in 0..5 {
        let before = mailed_codes(&f.maildir()).len();
        write_all(&claim, b"");
        let agent = f.agents[0].pamdrive("otp", "erin", &[b""]);
        let login = std::thread::spawn(move || run(agent));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !stopped(first) && mailed_codes(&f.maildir()).len() == before {
            assert!(Instant::now() < deadline, "erin's message was neither claimed by server 1 nor mailed");
            std::thread::sleep(Duration::from_millis(5));
        }
        if stopped(first) {
            held = Some((login, before));
            break;
        }
        let _ = std::fs::remove_file(&claim);
        login.join().unwrap();
    }
    let (pending, before) = held.expect("server 1's mailer never claimed erin's message");
    let code = wait_for_codes(&f.maildir(), before + 1);
    pending.join().unwrap();
    unsafe { libc::kill(first as i32, libc::SIGCONT) };
    eprintln!("carol's login through server 2 took {took:?} while server 1 was stopped holding her row");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(mailed_codes(&f.maildir()), code, "mailed once");
    // Server 1, resumed, finds its transaction gone: its failure never counted.
    assert_eq!(f.admin().show("carol")["user"]["failures"], 0);
}

/// Check 38 (issue 18, finding 4): 250 recovery-code-shaped answers at once
/// from one host, each an argon2id hash of 19 MiB, took a server from 15 MB
/// to 4.75 GB. Hashes now run on two threads with a short queue; the rest
/// are refused as busy, nothing counted against the accounts, and the
/// server's peak resident memory stays under 200 MB.
#[test]
fn concurrent_recovery_code_answers_keep_the_servers_memory_bounded() {
    let _turn = support::exclusive("fleet");
    const N: usize = 250;
    const CLIENT: &str = r#"
path, n = sys.argv[1], int(sys.argv[2])
at_prompt = threading.Barrier(n, timeout=30)
results, lock = [], threading.Lock()
def login(i):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    send(s, {"type": "begin", "protocol": 1, "user": "argon%d" % i, "service": "flood", "pid": 1})
    while True:
        m = receive(s)
        if m is None or m["type"] == "outcome":
            with lock:
                results.append(m and [m["result"], m.get("message") or ""])
            return
        if m["type"] == "prompt":
            try:
                at_prompt.wait()
            except threading.BrokenBarrierError:
                pass
            send(s, {"type": "answer", "text": "abcde-fghjk"})
threads = [threading.Thread(target=login, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(results))
"#;
    let f = Fleet::start(Backend::Sqlite);
    let names = f.dir.path().join("names");
    std::fs::write(&names, (0..N).map(|i| format!("argon{i}\n")).collect::<String>()).unwrap();
    f.servers[0].ctl_ok(&["user", "enable", "--from-file", &names.display().to_string()]);
    let server = f.servers[0].daemon.as_ref().unwrap().id();
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!("{PY_FRAMES}{CLIENT}"))
        .arg(f.agents[0].pam_socket())
        .arg(N.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results: Vec<Option<(String, String)>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.len(), N);
    let outcomes: Vec<(String, String)> =
        results.into_iter().map(|r| r.expect("every login ends in an outcome")).collect();
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for (_, m) in &outcomes {
        *kinds.entry(m.as_str()).or_default() += 1;
    }
    eprintln!("{kinds:?}");
    assert!(outcomes.iter().all(|(result, _)| result == "deny"), "{outcomes:?}");
    let busy = outcomes.iter().filter(|(_, m)| m.contains("busy")).count();
    let status = std::fs::read_to_string(format!("/proc/{server}/status")).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    eprintln!("server peak RSS {} MB after {N} concurrent recovery-shaped answers ({busy} busy)", peak_kb / 1024);
    assert!(peak_kb < 200 * 1024, "server peak RSS {} MB", peak_kb / 1024);
    assert!(busy > 0 && busy < N, "{busy} of {N} refused as busy");
    // A refusal for being busy is no failure of the account.
    let shown = f.admin().show("argon0");
    assert!(shown["user"]["failures"].as_u64().unwrap() <= 1, "{shown}");
}

/// Idle or half-open TCP connections to a fleet port from many addresses,
/// kept up until dropped: `idle` addresses send nothing, `half_open` ones
/// send one byte of a TLS record and stall. Each address is 127.0.N.1, a
/// /24 of its own, with `per_addr` connections, held by a thread of its
/// own that reopens closed ones every 20 ms.
struct Flood {
    stop: std::sync::Arc<AtomicBool>,
    /// Connections opened so far, in all.
    opened: std::sync::Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<usize>>,
}

impl Flood {
    fn start(port: u16, idle: u8, half_open: u8, per_addr: usize) -> Flood {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let opened = std::sync::Arc::new(AtomicUsize::new(0));
        let threads = (0..idle + half_open)
            .map(|i| {
                let (stop, all) = (stop.clone(), opened.clone());
                std::thread::spawn(move || {
                    let mut conns: Vec<std::net::TcpStream> = Vec::new();
                    let mut opened = 0;
                    while !stop.load(Ordering::Relaxed) {
                        conns.retain(|c| {
                            let mut b = [0u8; 1];
                            let read = std::io::Read::read(&mut &*c, &mut b);
                            matches!(read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                        });
                        while conns.len() < per_addr && !stop.load(Ordering::Relaxed) {
                            let Some(c) = connect_from([127, 0, i + 1, 1], port) else { break };
                            if i >= idle {
                                let _ = std::io::Write::write_all(&mut &c, &[0x16]);
                            }
                            let _ = c.set_nonblocking(true);
                            conns.push(c);
                            opened += 1;
                            all.fetch_add(1, Ordering::Relaxed);
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    opened
                })
            })
            .collect();
        Flood { stop, opened, threads }
    }

    /// Waits until `n` more connections have been opened.
    fn wait_for(&self, n: usize) {
        let (deadline, want) = (Instant::now() + Duration::from_secs(30), self.opened.load(Ordering::Relaxed) + n);
        while self.opened.load(Ordering::Relaxed) < want {
            assert!(Instant::now() < deadline, "the flood opened {}", self.opened.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it and says how many connections it opened.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.drain(..).map(|t| t.join().unwrap()).sum()
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A TCP connection to 127.0.0.1:`port` from the loopback address `from`.
fn connect_from(from: [u8; 4], port: u16) -> Option<std::net::TcpStream> {
    use std::os::fd::FromRawFd;
    let sockaddr = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip) },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let stream = std::net::TcpStream::from_raw_fd(fd);
        let (local, remote) = (sockaddr(from, 0), sockaddr([127, 0, 0, 1], port));
        let ok = libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) == 0
            && libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) == 0;
        ok.then_some(stream)
    }
}

/// Check 36 (issue 18, finding 2): 12 addresses × 64 idle TCP connections
/// filled the 512 handshake places (64 per address) and kept agents out —
/// after a server restart 6 of 8 real logins were refused. Here 12 idle
/// /24s and 12 more that send one byte and stall, 64 connections each, run
/// through a server restart: every login through the agents succeeds
/// (their pooled links died with the server, so each needs a fresh one),
/// and so does a login through an agent started during the flood.
#[test]
fn idle_and_half_open_connections_from_many_addresses_do_not_keep_agents_out() {
    let _turn = support::exclusive("fleet");
    let mut f = Fleet::start(Backend::Sqlite);
    let users: Vec<(String, String)> = (0..8)
        .map(|i| {
            let user = format!("flood{i}");
            let uri = f.enroll(&user, i % HOSTS.len());
            (user, uri)
        })
        .collect();
    let flood = Flood::start(f.ports[0], 12, 12, 64);
    flood.wait_for(24 * 64);
    f.servers[0].stop_daemon();
    f.servers[0].start_daemon();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening(f.ports[0]) {
        assert!(Instant::now() < deadline, "the server did not listen again");
        std::thread::sleep(Duration::from_millis(20));
    }
    flood.wait_for(24 * 64);
    let mut refused = Vec::new();
    for (i, (user, uri)) in users.iter().enumerate() {
        let r = f.agents[i % HOSTS.len()].login(user, &[&f.code(uri, 0)]);
        if r.code != PAM_SUCCESS {
            refused.push(format!("{user} on {}: {}", HOSTS[i % HOSTS.len()], r.out));
        }
    }
    // A host whose agent starts now: its first link is made during the flood.
    let dir = f.agent_dir();
    f.issue("web04", &dir.path().join("state/host.bundle"));
    let web04 = f.try_agent(dir, &[0], None).unwrap_or_else(|e| panic!("agent web04: {e}"));
    let (user, uri) = &users[0];
    let fresh = web04.login(user, &[&f.code(uri, 1)]);
    f.extras.push(web04);
    let opened = flood.stop();
    eprintln!("{opened} flood connections opened; {} of {} logins refused", refused.len(), users.len());
    assert!(opened >= 24 * 64, "the flood opened {opened} connections");
    assert!(refused.is_empty(), "logins refused during the flood: {refused:#?}");
    assert_eq!(fresh.code, PAM_SUCCESS, "web04's first login: {}", fresh.out);
    let hosts = f.admin().ctl_ok(&["--json", "host", "list"]);
    let hosts: Value = serde_json::from_str(&hosts).unwrap();
    let web04 = hosts["hosts"].as_array().unwrap().iter().find(|h| h["name"] == "web04").cloned().unwrap_or_default();
    assert_eq!(web04["last_addr"], "127.0.0.1", "{hosts}");
}

/// Check 40 (issue 18, finding 5): `host revoke` did not end a conversation
/// already at the prompt: a code typed after the revocation was accepted.
/// The host is now checked again with the decision (in the one-statement
/// accept on PostgreSQL, in the transaction on SQLite): refused, audited,
/// and the code stays unused for the user's other hosts.
/// A root login on `agent`'s socket for `user` that stops at its first
/// prompt, runs `meanwhile`, then answers `answer`; returns every message
/// it received, one JSON object a line.
fn answer_after(agent: &Fixture, dir: &Path, user: &str, answer: &str, meanwhile: impl FnOnce()) -> String {
    const CLIENT: &str = r#"
import time
path, user, answer, at_prompt, go = sys.argv[1:6]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
send(s, {"type": "begin", "protocol": 1, "user": user, "service": "revoked", "pid": 1})
while True:
    m = receive(s)
    if m is None:
        break
    print(json.dumps(m, sort_keys=True), flush=True)
    if m["type"] == "prompt":
        open(at_prompt, "w").close()
        while not os.path.exists(go):
            time.sleep(0.01)
        send(s, {"type": "answer", "text": answer})
    elif m["type"] == "outcome":
        break
"#;
    let (at_prompt, go) = (dir.join(format!("at-prompt-{user}")), dir.join(format!("go-{user}")));
    let client = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!("{PY_FRAMES}{CLIENT}"))
        .arg(agent.pam_socket())
        .arg(user)
        .arg(answer)
        .arg(&at_prompt)
        .arg(&go)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !at_prompt.exists() {
        assert!(Instant::now() < deadline, "the login never reached the prompt");
        std::thread::sleep(Duration::from_millis(10));
    }
    meanwhile();
    write_all(&go, b"");
    String::from_utf8_lossy(&client.wait_with_output().unwrap().stdout).into_owned()
}

fn a_code_typed_after_its_host_was_revoked_is_not_accepted(backend: Backend) {
    let f = Fleet::start(backend);
    let uri = f.enroll("rob", 1);
    let out = answer_after(&f.agents[0], f.dir.path(), "rob", &f.code(&uri, 0), || {
        f.servers[0].ctl_ok(&["host", "revoke", "web01"]);
    });
    assert!(out.contains(r#""result": "deny""#) && out.contains("refused for this host"), "{out}");
    let rows = audit(f.admin(), &["--user", "rob"]);
    assert!(rows.iter().any(|e| field(e, "reason").contains("revoked during the conversation")), "{rows:?}");
    assert!(!rows.iter().any(|e| field(e, "machine") == "web01" && is_accept(e)), "{rows:?}");
    // Nothing was consumed: the same code works on another host.
    assert_eq!(f.agents[1].login("rob", &[&f.code(&uri, 0)]).code, PAM_SUCCESS);
}

/// The same for an emailed code asked for after the revocation: nothing is
/// mailed for the revoked host, and the conversation ends.
#[test]
fn an_emailed_code_asked_for_after_its_host_was_revoked_is_not_sent() {
    let _turn = support::exclusive("fleet");
    let f = Fleet::start_with(Backend::Sqlite, true);
    f.servers[0].ctl_ok(&["user", "enable", "erin", "--method", "email", "--email", "erin@example.org"]);
    let out = answer_after(&f.agents[0], f.dir.path(), "erin", "", || {
        f.servers[0].ctl_ok(&["host", "revoke", "web01"]);
    });
    assert!(out.contains("refused for this host") && out.contains(r#""result": "deny""#), "{out}");
    let rows = audit(f.admin(), &["--user", "erin"]);
    assert!(rows.iter().any(|e| field(e, "reason").contains("revoked during the conversation")), "{rows:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(mailed_codes(&f.maildir()).is_empty(), "a code was mailed for a revoked host");
}

#[test]
fn a_code_typed_after_its_host_was_revoked_is_not_accepted_postgres() {
    let _turn = support::exclusive("fleet");
    a_code_typed_after_its_host_was_revoked_is_not_accepted(Backend::Postgres);
}

#[test]
fn a_code_typed_after_its_host_was_revoked_is_not_accepted_sqlite() {
    let _turn = support::exclusive("fleet");
    a_code_typed_after_its_host_was_revoked_is_not_accepted(Backend::Sqlite);
}

/// Issue 18, finding 5: refusals of a certificate no host holds were
/// audited once a minute per source address, so 3000 addresses wrote 3000
/// rows. They are throttled together now: 300 TLS links with web03's old
/// certificate (replaced by `host add` after a revocation), each from its
/// own address, are all refused and audited once.
#[test]
fn unknown_certificates_from_many_addresses_are_audited_once_a_minute() {
    let _turn = support::exclusive("fleet");
    const N: usize = 300;
    const CLIENT: &str = r#"
import re, ssl, tempfile
port, bundle, n = int(sys.argv[1]), open(sys.argv[2]).read(), int(sys.argv[3])
blocks = [m.group(0) for m in re.finditer(r"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----\n?", bundle, re.S)]
chain = tempfile.NamedTemporaryFile("w", suffix=".pem")
chain.write(blocks[1] + blocks[2])
chain.flush()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.load_verify_locations(cadata=blocks[0])
ctx.load_cert_chain(chain.name)
replies = []
for i in range(n):
    raw = socket.socket()
    raw.bind(("127.0.%d.%d" % (1 + i // 200, 1 + i % 200), 0))
    raw.connect(("127.0.0.1", port))
    tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    send(tls, {"link": "agent", "protocol": 1, "host": "web03"})
    replies.append(receive(tls))
    tls.close()
print(json.dumps(replies))
"#;
    let f = Fleet::start(Backend::Sqlite);
    let old = f.dir.path().join("web03-old.bundle");
    std::fs::copy(f.agents[2].path("state/host.bundle"), &old).unwrap();
    f.servers[0].ctl_ok(&["host", "revoke", "web03"]);
    f.issue("web03", &f.dir.path().join("web03-new.bundle"));
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!("{PY_FRAMES}{CLIENT}"))
        .arg(f.ports[0].to_string())
        .arg(&old)
        .arg(N.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replies: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(replies.len(), N);
    for r in &replies {
        assert_eq!(r["refused"]["reason"], "certificate not known to this fleet", "{r}");
    }
    let rows: Vec<Value> =
        audit(f.admin(), &[]).into_iter().filter(|e| field(e, "reason").starts_with("unknown certificate")).collect();
    // One a minute: two when the run crosses a minute.
    assert!((1..=2).contains(&rows.len()), "{} rows, the first: {:?}", rows.len(), rows.first());
}

/// Check 37 (issue 18, finding 5): a server paused after it read an answer
/// decided it when it was resumed, long after the agent and the module had
/// given up: `accept` audited, failures cleared, last_login set, for a
/// login the user was refused. The agent now states how long it waits for
/// each reply; past that nothing is decided, and the code stays unused.
fn an_answer_is_not_decided_after_the_login_stopped_waiting(stop_at: &str) {
    let f = Fleet::start(Backend::Sqlite);
    let uri = f.enroll("pat", 1);
    let server = f.servers[0].daemon.as_ref().unwrap().id();
    let mut flag = stop_file(f.dir.path(), f.ports[0]).into_os_string();
    flag.push(stop_at);
    write_all(Path::new(&flag), b"");
    let started = Instant::now();
    let refused = f.agents[0].login("pat", &[&f.code(&uri, 0)]);
    assert!(stopped(server), "the server did not stop before its decision");
    assert_eq!(refused.code, PAM_AUTH_ERR, "{}", refused.out);
    // The agent waits 9 s for a reply; the server stays paused past that.
    while started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(server as i32, libc::SIGCONT) };
    wait_for_audit(f.admin(), "saying the answer was not decided", |e| {
        field(e, "reason").starts_with("not decided: the login had stopped waiting")
    });
    let rows = audit(f.admin(), &["--user", "pat"]);
    assert!(!rows.iter().any(|e| field(e, "machine") == "web01" && is_accept(e)), "{rows:?}");
    // Nothing was consumed: the same code works now.
    assert_eq!(f.agents[1].login("pat", &[&f.code(&uri, 0)]).code, PAM_SUCCESS);
}

/// Paused after it read the answer.
#[test]
fn an_answer_read_is_not_decided_after_the_login_stopped_waiting() {
    let _turn = support::exclusive("fleet");
    an_answer_is_not_decided_after_the_login_stopped_waiting("-decision");
}

/// Paused while it waited for the answer (where a conversation spends its
/// time): the answer waits in the socket, the agent gives up and closes
/// the link, and the server, resumed, reads it at once.
#[test]
fn an_answer_waiting_unread_is_not_decided_after_the_login_stopped_waiting() {
    let _turn = support::exclusive("fleet");
    an_answer_is_not_decided_after_the_login_stopped_waiting("-prompt");
}

// ---------------------------------------------------------------- spool ----

/// The entries and dropped count in an agent's audit spool file (none yet: empty).
fn spool_of(agent: &Fixture) -> (Vec<Value>, u64) {
    let Ok(text) = std::fs::read_to_string(agent.path("spool/audit.json")) else { return (Vec::new(), 0) };
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (v["entries"].as_array().cloned().unwrap_or_default(), v["dropped"].as_u64().unwrap_or(0))
}

/// Waits (up to 20 s) until `agent`'s spool file holds `entries` entries
/// and `dropped` dropped (the agent saves it just after a refusal).
fn wait_for_spool(agent: &Fixture, entries: usize, dropped: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (e, d) = spool_of(agent);
        if (e.len(), d) == (entries, dropped) {
            return;
        }
        assert!(Instant::now() < deadline, "spool: {} entries, {d} dropped; want {entries}, {dropped}: {e:?}", e.len());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Late audit rows (refusals an agent spooled), newest first, once there
/// are `n` of them (waits up to 60 s: a server just back is tried again
/// within 45 s; a login that reaches it starts the delivery at once).
fn wait_for_late_rows(fx: &Fixture, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let late: Vec<Value> = audit(fx, &[]).into_iter().filter(|e| e["received_at"].is_i64()).collect();
        if late.len() >= n {
            assert_eq!(late.len(), n, "more late rows than refusals: {late:#?}");
            return late;
        }
        assert!(Instant::now() < deadline, "{} of {n} late rows: {late:#?}", late.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Restarts server 0 of a one-server fleet and waits until it listens.
fn restart_server(f: &mut Fleet) {
    f.servers[0].start_daemon();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening(f.ports[0]) {
        assert!(Instant::now() < deadline, "the server did not listen again");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 21 item 4: what an agent refused while no server answered was in
/// its own log only. It is now spooled (root only, no code) and reaches the
/// fleet's audit, marked late, under the agent's host, when a server is back.
#[test]
fn logins_refused_while_no_server_answered_reach_the_audit_late_without_the_code() {
    let _turn = support::exclusive("fleet");
    let mut f = Fleet::start(Backend::Sqlite);
    let uri = f.enroll("sam", 0);
    let refused_at = f.servers[0].pin_clock();
    let typed = f.code(&uri, 0);

    // Lost during the login, after the code was typed: the server stops
    // itself at the prompt (before it reads the answer) and is killed.
    let server = f.servers[0].daemon.as_ref().unwrap().id();
    let mut flag = stop_file(f.dir.path(), f.ports[0]).into_os_string();
    flag.push("-prompt");
    write_all(Path::new(&flag), b"");
    let cut = std::thread::scope(|s| {
        s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !stopped(server) {
                assert!(Instant::now() < deadline, "the server did not stop at the prompt");
                std::thread::sleep(Duration::from_millis(10));
            }
            unsafe { libc::kill(server as i32, libc::SIGKILL) };
        });
        f.agents[0].login("sam", &[&typed])
    });
    f.servers[0].daemon.take().unwrap().wait().unwrap();
    // (The server removes it when it stops; it must not be there at the restart.)
    let _ = std::fs::remove_file(&flag);
    assert_eq!(cut.code, PAM_AUTH_ERR, "{}", cut.out);

    // No server at all.
    let mut ssh = f.agents[0].pamdrive("otp", "sam", &[b""]);
    ssh.args(["--rhost", "198.51.100.7", "--tty", "pts/3"]);
    let unavailable = run(ssh);
    assert_eq!(unavailable.code, PAM_AUTH_ERR, "{}", unavailable.out);
    assert!(unavailable.out.contains("Passcode check unavailable."), "{}", unavailable.out);
    assert_eq!(f.agents[1].login("ann", &[""]).code, PAM_AUTH_ERR);
    wait_for_spool(&f.agents[0], 2, 0);
    wait_for_spool(&f.agents[1], 1, 0);

    // Root only, and never the code that was typed.
    for agent in &f.agents[..2] {
        let file = agent.path("spool/audit.json");
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!((meta.permissions().mode() & 0o777, std::os::unix::fs::MetadataExt::uid(&meta)), (0o600, 0));
        let dir = std::fs::metadata(agent.path("spool")).unwrap();
        assert_eq!(dir.permissions().mode() & 0o777, 0o700);
        let bytes = std::fs::read(&file).unwrap();
        assert!(!contains(&bytes, typed.as_bytes()), "the typed code is in {}", file.display());
        assert!(!agent.log().contains(&typed), "the typed code is in the agent's log");
    }
    let (entries, _) = spool_of(&f.agents[0]);
    assert_eq!(field(&entries[0], "reason"), "cut");
    assert_eq!((field(&entries[1], "reason"), field(&entries[1], "rhost")), ("unavailable", "198.51.100.7"));

    // Two minutes later a server is back; a login that reaches it starts
    // the delivery.
    f.servers[0].set_clock_offset(120);
    restart_server(&mut f);
    assert_eq!(f.agents[0].login("sam", &[&f.code(&uri, 4)]).code, PAM_SUCCESS);
    let late = wait_for_late_rows(f.admin(), 3);
    let row = |host: &str, user: &str, reason: &str| {
        late.iter()
            .find(|e| field(e, "machine") == host && field(e, "user") == user && field(e, "reason") == reason)
            .unwrap_or_else(|| panic!("no late row of {user} on {host}: {reason}: {late:#?}"))
    };
    let cut = row("web01", "sam", "refused by the agent: the server was lost during the login");
    let ssh = row("web01", "sam", "refused by the agent: no server answered");
    let ann = row("web02", "ann", "refused by the agent: no server answered");
    for e in [cut, ssh, ann] {
        assert_eq!((e["time"].as_i64(), e["received_at"].as_i64()), (Some(refused_at), Some(refused_at + 120)));
        assert_eq!((field(e, "service"), field(e, "result")), ("otp", "refused"));
    }
    assert_eq!((field(ssh, "rhost"), field(ssh, "tty")), ("198.51.100.7", "pts/3"));
    // Handed over: the spools are empty; the login after the restart is not late.
    wait_for_spool(&f.agents[0], 0, 0);
    wait_for_spool(&f.agents[1], 0, 0);
    let rows = audit(f.admin(), &["--user", "sam"]);
    assert!(rows.iter().any(|e| is_accept(e) && e["received_at"].is_null()), "{rows:#?}");
    // The table marks them.
    let table = f.admin().ctl_ok(&["audit", "--host", "web01"]);
    let marked: Vec<&str> = table.lines().filter(|l| l.contains("LATE (received")).collect();
    assert_eq!(marked.len(), 2, "{table}");
    assert!(marked.iter().all(|l| l.contains("sam") && l.contains("refused by the agent")), "{table}");
}

/// A full spool drops its oldest entries and says how many; the count
/// reaches the audit with the entries kept.
#[test]
fn a_full_spool_drops_the_oldest_and_the_audit_says_how_many() {
    let _turn = support::exclusive("fleet");
    let mut f = Fleet::start(Backend::Sqlite);
    let uri = f.enroll("zed", 0);
    let dir = f.agent_dir();
    f.issue("web04", &dir.path().join("state/host.bundle"));
    let web04 = f.try_agent_with(dir, &[0], None, "spool_max = 3\n").unwrap_or_else(|e| panic!("web04: {e}"));
    f.extras.push(web04);
    f.servers[0].stop_daemon();
    for i in 1..=5 {
        assert_eq!(f.extras[0].login(&format!("user{i}"), &[""]).code, PAM_AUTH_ERR);
    }
    wait_for_spool(&f.extras[0], 3, 2);
    let kept: Vec<String> = spool_of(&f.extras[0]).0.iter().map(|e| field(e, "user").to_string()).collect();
    assert_eq!(kept, ["user3", "user4", "user5"]);

    restart_server(&mut f);
    assert_eq!(f.extras[0].login("zed", &[&f.code(&uri, 0)]).code, PAM_SUCCESS);
    let late = wait_for_late_rows(f.admin(), 4);
    assert!(late.iter().all(|e| field(e, "machine") == "web04"), "{late:#?}");
    let mut users: Vec<&str> = late.iter().map(|e| field(e, "user")).collect();
    users.sort();
    assert_eq!(users, ["-", "user3", "user4", "user5"]);
    let dropped = late.iter().find(|e| field(e, "user") == "-").unwrap();
    assert_eq!(field(dropped, "reason"), "2 older refusals were dropped from this host's audit spool (it was full)");
    wait_for_spool(&f.extras[0], 0, 0);
}

// ------------------------------------------------------- renewal ----

/// Days of the default host certificate life.
const LIFE_DAYS: i64 = 30;

/// `otpctl --json host list` on `fx`, by host name.
fn host_list(fx: &Fixture) -> BTreeMap<String, Value> {
    let hosts = entries(&fx.ctl_ok(&["--json", "host", "list"]), "hosts");
    hosts.into_iter().map(|h| (field(&h, "name").to_string(), h)).collect()
}

/// Waits (up to 20 s) until `want` holds for `fx`'s host list.
fn wait_for_hosts(
    fx: &Fixture,
    what: &str,
    want: impl Fn(&BTreeMap<String, Value>) -> bool,
) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hosts = host_list(fx);
        if want(&hosts) {
            return hosts;
        }
        assert!(Instant::now() < deadline, "host list never showed {what}: {hosts:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (up to 20 s) until `fx`'s log contains `text`.
fn wait_for_log(fx: &Fixture, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = fx.log();
        if log.contains(text) {
            return log;
        }
        assert!(Instant::now() < deadline, "the log never said {text:?}:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The PEM blocks of `label` in a bundle text.
fn pem_blocks(text: &str, label: &str) -> Vec<String> {
    let (begin, end) = (format!("-----BEGIN {label}-----"), format!("-----END {label}-----"));
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&begin) {
        let j = rest[i..].find(&end).unwrap() + i + end.len();
        out.push(rest[i..j].to_string());
        rest = &rest[j..];
    }
    out
}

/// SHA-256 of the last certificate of a bundle text, as host list shows
/// it (read by openssl, not by otpd's own code).
fn bundle_fingerprint(text: &str) -> String {
    use std::io::Write as _;
    let pem = pem_blocks(text, "CERTIFICATE").pop().unwrap();
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(pem.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().rsplit('=').next().unwrap().to_lowercase()
}

/// Agents renew their certificates at two thirds of its life, with a key
/// made on the agent, and go on logging in through every server; the
/// server records and audits it; a copy of an old bundle stops working once
/// the new certificate is in use; a revoked host cannot renew.
fn agents_renew_at_two_thirds_of_the_life(backend: Backend) {
    let _turn = support::exclusive("fleet");
    let mut f = Fleet::start(backend);
    let uri = f.enroll("rena", 0);
    f.servers[0].ctl_ok(&["host", "revoke", "web03"]);
    let before = host_list(f.admin());
    let old: Vec<String> =
        (0..3).map(|i| std::fs::read_to_string(f.agents[i].path("state/host.bundle")).unwrap()).collect();
    for (i, h) in HOSTS.iter().enumerate() {
        assert_eq!(field(&before[*h], "fingerprint"), bundle_fingerprint(&old[i]), "{h}");
        let expires = before[*h]["expires_at"].as_i64().unwrap();
        let days = (expires - f.servers[0].daemon_now()) as f64 / 86_400.0;
        assert!((days - LIFE_DAYS as f64).abs() < 0.01, "{h} is valid {days} days");
        assert!(before[*h]["renewed_at"].is_null());
    }

    // Just past two thirds: web01 and web02 renew, web03 (revoked) cannot.
    let offset = (LIFE_DAYS * 2 / 3) * 86_400 + 3600;
    f.servers[0].set_clock_offset(offset);
    let after = wait_for_hosts(f.admin(), "web01 and web02 renewed", |h| {
        ["web01", "web02"].iter().all(|n| !h[*n]["renewed_at"].is_null())
    });
    for (i, h) in HOSTS.iter().enumerate().take(2) {
        let fp = field(&after[*h], "fingerprint");
        assert_ne!(fp, field(&before[*h], "fingerprint"), "{h}: a new certificate");
        // The agent wrote it before switching: wait for the file to match.
        let deadline = Instant::now() + Duration::from_secs(10);
        let new = loop {
            let text = std::fs::read_to_string(f.agents[i].path("state/host.bundle")).unwrap();
            if bundle_fingerprint(&text) == fp {
                break text;
            }
            assert!(Instant::now() < deadline, "{h}'s bundle never got the new certificate");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mode = std::fs::metadata(f.agents[i].path("state/host.bundle")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{h}");
        let (old_key, new_key) = (pem_blocks(&old[i], "PRIVATE KEY"), pem_blocks(&new, "PRIVATE KEY"));
        assert_eq!((old_key.len(), new_key.len()), (1, 1));
        assert_ne!(old_key, new_key, "{h}: a new key");
        assert!(!new.contains(&old_key[0]), "{h}: the old key is gone");
        let expires = after[*h]["expires_at"].as_i64().unwrap();
        assert_eq!(expires, f.servers[0].daemon_now() + LIFE_DAYS * 86_400, "{h}: a full life from the renewal");
        assert_eq!(after[*h]["expired"], Value::Bool(false));
        wait_for_log(&f.agents[i], "this host's certificate was renewed with a new key");
    }
    assert_eq!(field(&after["web03"], "fingerprint"), field(&before["web03"], "fingerprint"));
    assert!(after["web03"]["renewed_at"].is_null(), "a revoked host cannot renew");
    wait_for_log(&f.agents[2], "renewing this host's certificate failed");
    assert_eq!(std::fs::read_to_string(f.agents[2].path("state/host.bundle")).unwrap(), old[2]);
    let rows = audit(f.admin(), &["--host", "web01"]);
    let renewed: Vec<&Value> = rows.iter().filter(|e| field(e, "result") == "renewed").collect();
    assert_eq!(renewed.len(), 1, "{rows:#?}");
    assert!(field(renewed[0], "reason").contains("agent certificate renewed from 127.0.0.1"), "{renewed:?}");
    assert!(!audit(f.admin(), &["--host", "web03"]).iter().any(|e| field(e, "result") == "renewed"));

    // Logins go on, with the new certificates, through both orders of servers.
    let steps = offset / 30;
    for (i, step) in [(0, -1), (1, 0), (0, 1)] {
        let r = f.agents[i].login("rena", &[&f.code(&uri, steps + step)]);
        assert_eq!(r.code, PAM_SUCCESS, "login on {} after the renewal: {}", HOSTS[i], r.out);
    }
    // web02's old bundle in another agent: accepted only until the new
    // certificate is in use plus a grace for links under way (10 min).
    let dir = f.agent_dir();
    let copy = dir.path().join("state/host.bundle");
    std::fs::write(&copy, &old[1]).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600)).unwrap();
    f.servers[0].set_clock_offset(offset + 11 * 60);
    let stale = f.try_agent(dir, &[0], None).unwrap_or_else(|e| panic!("{e}"));
    let r = stale.login("rena", &[&f.code(&uri, steps + 22)]);
    f.extras.push(stale);
    assert_eq!(r.code, PAM_AUTH_ERR, "the replaced certificate logged in: {}", r.out);
    wait_for_audit(f.admin(), "of the replaced certificate", |e| {
        field(e, "result") == "refused" && field(e, "reason").contains("replaced by its renewal")
    });
    let r = f.agents[1].login("rena", &[&f.code(&uri, steps + 22)]);
    assert_eq!(r.code, PAM_SUCCESS, "web02 itself goes on: {}", r.out);
}

#[test]
fn agents_renew_at_two_thirds_of_the_life_postgres() {
    agents_renew_at_two_thirds_of_the_life(Backend::Postgres);
}

#[test]
fn agents_renew_at_two_thirds_of_the_life_sqlite() {
    agents_renew_at_two_thirds_of_the_life(Backend::Sqlite);
}

/// A certificate that ran out cannot renew: the agent says so in its log
/// (and refuses to start with it), `host list` says "expired", and `host
/// add` issues a new bundle without a revoke.
#[test]
fn an_expired_certificate_needs_a_new_bundle_and_says_so() {
    let _turn = support::exclusive("fleet");
    let mut f = Fleet::start(Backend::Sqlite);
    let uri = f.enroll("exp", 0);
    let offset = (LIFE_DAYS + 1) * 86_400;
    f.servers[0].set_clock_offset(offset);
    let steps = offset / 30;
    wait_for_log(&f.agents[0], "expired at");
    let log = wait_for_log(&f.agents[0], "otpctl host add web01 -o FILE");
    assert!(!log.contains("certificate was renewed"), "{log}");
    let r = f.agents[0].login("exp", &[&f.code(&uri, steps)]);
    assert_eq!(r.code, PAM_AUTH_ERR, "an expired certificate logged in: {}", r.out);
    let hosts = host_list(f.admin());
    assert_eq!(hosts["web01"]["expired"], Value::Bool(true), "{hosts:#?}");
    let list = f.admin().ctl_ok(&["host", "list"]);
    let line = list.lines().find(|l| l.starts_with("web01 ")).unwrap_or_else(|| panic!("{list}"));
    assert!(line.contains("expired (needs a new bundle: host add)"), "{list}");

    // Restarted with it, the agent refuses to start and says what to do.
    let dir = f.agent_dir();
    let bundle = dir.path().join("state/host.bundle");
    std::fs::copy(f.agents[0].path("state/host.bundle"), &bundle).unwrap();
    match f.try_agent(dir, &[0], None) {
        Ok(agent) => panic!("an agent with an expired certificate started: {}", agent.log()),
        Err(log) => assert!(log.contains("expired at") && log.contains("otpctl host add web01"), "{log}"),
    }

    // A new bundle, no revoke needed; the agent with it logs in.
    let dir = f.agent_dir();
    f.issue("web01", &dir.path().join("state/host.bundle"));
    let fresh = f.try_agent(dir, &[0], None).unwrap_or_else(|e| panic!("{e}"));
    let r = fresh.login("exp", &[&f.code(&uri, steps)]);
    f.extras.push(fresh);
    assert_eq!(r.code, PAM_SUCCESS, "{}", r.out);
    assert_eq!(host_list(f.admin())["web01"]["expired"], Value::Bool(false));
}

// ------------------------------------------------------ CA rotation ----

/// `otpctl --json ca status` on `fx`: (fingerprint, serving, issuing,
/// agents, admins) of each CA, oldest first.
fn ca_status(fx: &Fixture) -> Vec<(String, bool, bool, u64, u64)> {
    let cas = entries(&fx.ctl_ok(&["--json", "ca", "status"]), "cas");
    cas.iter()
        .map(|c| {
            let flag = |k: &str| c[k].as_bool().unwrap_or_else(|| panic!("{k} in {c}"));
            let count = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("{k} in {c}"));
            (field(c, "fingerprint").to_string(), flag("serving"), flag("issuing"), count("agents"), count("admins"))
        })
        .collect()
}

/// The SHA-256 of each CA certificate of a bundle file (read by openssl).
fn bundle_cas(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut certs = pem_blocks(&text, "CERTIFICATE");
    certs.pop();
    certs.iter().map(|c| bundle_fingerprint(c)).collect()
}

/// Waits (up to 20 s) until `want` holds for the CAs of the bundle at `path`.
fn wait_for_bundle_cas(path: &Path, what: &str, want: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cas = bundle_cas(path);
        if want(&cas) {
            return;
        }
        assert!(Instant::now() < deadline, "{} never {what}: {cas:?}", path.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `otpctl ca rotate` on one server of two: both accept certificates of
/// both CAs, agents move to the new one on their own (no login refused on
/// the way), remote admin credentials when next used; `ca retire` is
/// refused while a host is left on the old CA, and `--force` revokes it;
/// after the retirement agents drop the old CA from what they trust.
#[test]
fn a_ca_rotation_moves_every_host_and_refuses_no_login() {
    let _turn = support::exclusive("fleet");
    let mut f = Fleet::start(Backend::Postgres);
    let uri = f.enroll("rot", 0);
    let ops = f.dir.path().join("ops.bundle");
    f.servers[0].ctl_ok(&["host", "add", "ops", "--admin", "-o", &ops.display().to_string()]);
    // A host issued before the rotation that never links: it stays behind.
    let late_dir = f.agent_dir();
    let late = late_dir.path().join("state/host.bundle");
    f.issue("web09", &late);
    let login = |f: &Fleet, host: usize, step: i64| {
        let r = f.agents[host].login("rot", &[&f.code(&uri, step)]);
        assert_eq!(r.code, PAM_SUCCESS, "login on {} at step {step}: {}", HOSTS[host], r.out);
    };
    let old = ca_status(f.admin());
    assert_eq!(old.len(), 1, "{old:?}");
    let old_fp = old[0].0.clone();
    assert_eq!(old[0], (old_fp.clone(), true, true, 4, 1), "web01-03, web09 and ops on the one CA");
    login(&f, 1, 0);

    // Rotated on the first server; the second reads it from the database.
    let said = f.servers[0].ctl_ok(&["ca", "rotate"]);
    assert!(said.contains("new fleet CA"), "{said}");
    let again = f.servers[1].ctl(&["ca", "rotate"]);
    assert!(!again.status.success() && stderr(&again).contains("a rotation is in progress"), "{}", stderr(&again));
    let two = ca_status(f.admin());
    assert_eq!(two.len(), 2, "{two:?}");
    let new_fp = two[1].0.clone();
    // Until every server can have read it, the new CA does not issue.
    assert_eq!((two[0].1, two[0].2, two[1].1, two[1].2), (true, true, false, false), "{two:?}");
    login(&f, 2, 1);

    // Two minutes on: it issues, and every agent renews onto it by itself.
    f.servers[0].set_clock_offset(120);
    let moved = |s: &[(String, bool, bool, u64, u64)]| s.len() == 2 && s[0].3 == 1 && s[1].3 == 3;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut status = ca_status(f.admin());
    while !moved(&status) {
        assert!(Instant::now() < deadline, "agents never moved to the new CA: {status:?}");
        std::thread::sleep(Duration::from_millis(200));
        status = ca_status(f.admin());
    }
    assert_eq!((status[0].2, status[1].2), (false, true), "the new CA issues: {status:?}");
    for (i, h) in HOSTS.iter().enumerate() {
        // It trusts both (servers still present the old CA's certificates).
        wait_for_bundle_cas(&f.agents[i].path("state/host.bundle"), "trusted both CAs", |cas| {
            cas == [old_fp.clone(), new_fp.clone()]
        });
        wait_for_log(&f.agents[i], "renewing this host's certificate before it is due");
        assert_eq!(field(&host_list(f.admin())[*h], "ca"), new_fp, "{h}");
    }
    for (i, step) in [(0, 3), (1, 4), (2, 5)] {
        login(&f, i, step);
    }

    // Still on the old CA: web09 and the admin credentials, so no retiring.
    let refused = f.admin().ctl(&["ca", "retire"]);
    let why = stderr(&refused);
    assert!(!refused.status.success() && why.contains("2 host(s)") && why.contains("ops, web09"), "{why}");
    // The admin credentials move at their next use (on the other server).
    let remote = f.remote(0, &ops, &["--json", "ca", "status"]);
    assert!(remote.status.success(), "{}", stderr(&remote));
    assert!(stderr(&remote).contains("admin credentials ops renewed"), "{}", stderr(&remote));
    assert_eq!(bundle_cas(&ops), [old_fp.clone(), new_fp.clone()]);
    let status = ca_status(f.admin());
    assert_eq!((status[0].3, status[0].4, status[1].3, status[1].4), (1, 0, 3, 1), "{status:?}");
    // Used again, they are current: no second renewal.
    let remote = f.remote(1, &ops, &["host", "list"]);
    assert!(remote.status.success() && !stderr(&remote).contains("renewed"), "{}", stderr(&remote));

    let retired = f.admin().ctl_ok(&["ca", "retire", "--force"]);
    assert!(retired.contains("1 host(s) still on it revoked (web09)"), "{retired}");
    assert_eq!(ca_status(f.admin()), [(new_fp.clone(), true, true, 3, 1)]);
    assert!(!host_list(f.admin())["web09"]["revoked_at"].is_null());

    // Later (past the renewal limit), agents drop the retired CA.
    f.servers[0].set_clock_offset(600);
    for i in 0..3 {
        wait_for_bundle_cas(&f.agents[i].path("state/host.bundle"), "dropped the old CA", |cas| {
            cas == [new_fp.clone()]
        });
    }
    for (i, step) in [(0, 19), (1, 20), (2, 21)] {
        login(&f, i, step);
    }
    // Trusting the retired CA only, web09 reaches no server; a new bundle
    // (it was revoked: no revoke needed) does.
    f.servers[0].set_clock_offset(690);
    let stale = f.try_agent(late_dir, &[0, 1], None).unwrap_or_else(|e| panic!("{e}"));
    let r = stale.login("rot", &[&f.code(&uri, 23)]);
    let log = stale.log();
    f.extras.push(stale);
    assert_ne!(r.code, PAM_SUCCESS, "a host of the retired CA logged in: {}", r.out);
    let why = "UnknownIssuer (this host's bundle does not trust the server's CA";
    assert!(log.contains(why), "{}\n{log}", r.out);
    let dir = f.agent_dir();
    f.issue("web09", &dir.path().join("state/host.bundle"));
    let fresh = f.try_agent(dir, &[1, 0], None).unwrap_or_else(|e| panic!("{e}"));
    let r = fresh.login("rot", &[&f.code(&uri, 23)]);
    f.extras.push(fresh);
    assert_eq!(r.code, PAM_SUCCESS, "{}", r.out);

    let actions: Vec<String> = audit(f.admin(), &[]).iter().map(|e| field(e, "result").to_string()).collect();
    assert!(actions.iter().any(|a| a.starts_with("rotate fleet CA: new")), "{actions:?}");
    assert!(actions.iter().any(|a| a.starts_with("retire fleet CA") && a.contains("(1 host(s) on it revoked)")));
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Admin credentials (90 days) renew themselves when used after two
/// thirds of their life: a new key, the bundle file rewritten, the new
/// certificate recorded and audited; used again, they are current.
#[test]
fn admin_credentials_renew_themselves_when_used_late_in_their_life() {
    let _turn = support::exclusive("fleet");
    let f = Fleet::start(Backend::Sqlite);
    f.servers[0].pin_clock();
    let ops = f.dir.path().join("ops.bundle");
    f.servers[0].ctl_ok(&["host", "add", "ops", "--admin", "-o", &ops.display().to_string()]);
    let before = std::fs::read_to_string(&ops).unwrap();
    let listed = host_list(f.admin());
    let life = listed["ops"]["expires_at"].as_i64().unwrap() - f.servers[0].daemon_now();
    assert!((life - 90 * 86_400).abs() < 60, "admin credentials valid {life} s");

    // Two months in: still current, not yet due.
    f.servers[0].set_clock_offset(59 * 86_400);
    let early = f.remote(0, &ops, &["host", "list"]);
    assert!(early.status.success() && !stderr(&early).contains("renewed"), "{}", stderr(&early));
    assert_eq!(std::fs::read_to_string(&ops).unwrap(), before);

    f.servers[0].set_clock_offset(61 * 86_400);
    let late = f.remote(0, &ops, &["host", "list"]);
    assert!(late.status.success(), "{}", stderr(&late));
    assert!(
        stderr(&late).contains("admin credentials ops renewed (two thirds of their life passed)"),
        "{}",
        stderr(&late)
    );
    let after = std::fs::read_to_string(&ops).unwrap();
    assert_ne!(pem_blocks(&after, "PRIVATE KEY"), pem_blocks(&before, "PRIVATE KEY"), "a new key");
    let mode = std::fs::metadata(&ops).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let hosts = host_list(f.admin());
    assert_eq!(field(&hosts["ops"], "fingerprint"), bundle_fingerprint(&after));
    let expires = hosts["ops"]["expires_at"].as_i64().unwrap();
    assert_eq!(expires, f.servers[0].daemon_now() + 90 * 86_400, "a full life from the renewal");
    let again = f.remote(0, &ops, &["--json", "host", "list"]);
    assert!(again.status.success() && !stderr(&again).contains("renewed"), "{}", stderr(&again));
    let rows = audit(f.admin(), &["--host", "ops"]);
    assert!(
        rows.iter()
            .any(|e| field(e, "result") == "renewed" && field(e, "reason").contains("admin certificate renewed")),
        "{rows:#?}"
    );
}
