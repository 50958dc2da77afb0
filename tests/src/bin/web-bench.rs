//! web-bench: the web console's heaviest pages under load (issue 20): the
//! audit page over 1,000,000 rows and the users page over 100,000 users,
//! through otpweb (HTTPS) and otpd, on SQLite and on PostgreSQL.
//!
//!   web-bench [--backend sqlite|postgres|both] [--audit-rows 1000000]
//!             [--users 100000] [--clients 8] [--seconds 10] [--warmup 1]
//!             [--rounds 1] [--otpd PATH]
//!
//! For each backend, two stacks side by side: the baseline (1,000 audit rows,
//! 1,000 users) and the full size. Each is a private otpd (`[web] enabled`,
//! the `otpweb` PAM service answered by pam_wrapper's pam_matrix, on SQLite
//! in a temp dir or on a private PostgreSQL cluster) seeded directly in its
//! database (sqlite3 / psql), root enrolled and logged in on otpd's web
//! socket (password, then the TOTP code of its enrollment), and otpweb on a
//! free loopback port. Each page is loaded by `wrk` (`--clients`
//! connections, 2 threads, `--seconds` after a `--warmup`) on the baseline
//! stack, then at once on the full-size one, so both see the same machine;
//! every response must be a 200. The result is each page's p99 at full size
//! over its p99 at baseline (means over `--rounds`); absolute times and rates
//! are printed for reference only (the machine is shared). Memory: otpweb's
//! and otpd's peak RSS during the load (VmHWM, reset through
//! /proc/PID/clear_refs once seeded) and RSS after it.
//!
//! Needs root (the PostgreSQL cluster runs as `postgres`; otpweb connects to
//! otpd's web socket as root), `wrk`, `curl`, `sqlite3`, pam_wrapper, and a
//! release build: `cargo build --release -p otpd -p otpweb -p e2e --bins`.
use common::client::Client;
use common::proto::{AdminRequest, AdminResponse, Method};
use common::web::{Client as WebClient, WebRequest, WebResponse};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PASSWORD: &str = "web-bench-pw";
const MATRIX: &str = "/usr/lib/x86_64-linux-gnu/pam_wrapper/pam_matrix.so";
const BASE_AUDIT: u64 = 1_000;
const BASE_USERS: u64 = 1_000;
/// Distinct users and hosts in the seeded audit trail.
const AUDIT_USERS: u64 = 5_000;
const HOSTS: u64 = 100;
/// Seconds between seeded audit rows (1,000,000 rows: about 93 days).
const AUDIT_SPACING: u64 = 8;
/// A user name no row has: the audit page's worst case.
const NO_ROWS_USER: &str = "nobody-here";
/// Matches one seeded user (user000777) at both sizes.
const SEARCH: &str = "000777";

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn number(args: &[String], name: &str, default: u64) -> u64 {
    match arg(args, name) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| panic!("{name} {v:?}: not a number")),
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

struct Options {
    bin: PathBuf,
    dir: PathBuf,
    audit_rows: u64,
    users: u64,
    clients: u64,
    seconds: u64,
    warmup: u64,
    rounds: u64,
    /// The otpd binary (`--otpd`, to compare builds); default beside this one.
    otpd: PathBuf,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("web-bench [--backend sqlite|postgres|both] [--audit-rows 1000000] [--users 100000]");
        println!("          [--clients 8] [--seconds 10] [--warmup 1]");
        return;
    }
    let backends = match arg(&args, "--backend").as_deref().unwrap_or("both") {
        "sqlite" => vec![Backend::Sqlite],
        "postgres" | "postgresql" | "pg" => vec![Backend::Postgres],
        "both" => vec![Backend::Sqlite, Backend::Postgres],
        other => panic!("--backend {other:?}: sqlite, postgres or both"),
    };
    let bin = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)).unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("web-bench.{}", std::process::id()));
    let opts = Options {
        bin: bin.clone(),
        dir: dir.clone(),
        audit_rows: number(&args, "--audit-rows", 1_000_000).max(BASE_AUDIT),
        users: number(&args, "--users", 100_000).max(BASE_USERS),
        clients: number(&args, "--clients", 8).max(1),
        seconds: number(&args, "--seconds", 10).max(1),
        warmup: number(&args, "--warmup", 1),
        rounds: number(&args, "--rounds", 1).max(1),
        otpd: arg(&args, "--otpd").map(PathBuf::from).unwrap_or_else(|| bin.join("otpd")),
    };
    preflight(&opts, &backends);
    println!(
        "web-bench: otpweb + otpd pages under wrk, {} connections, {} s per page (after {} s of warm-up);",
        opts.clients, opts.seconds, opts.warmup
    );
    println!(
        "baseline {BASE_AUDIT} audit rows / {BASE_USERS} users, then {} audit rows / {} users, same processes.",
        opts.audit_rows, opts.users
    );
    println!(
        "Ratios are full-size p99 / baseline p99 of the same page in this run; absolute figures are for reference."
    );
    let mut reports = Vec::new();
    for b in backends {
        let started = Instant::now();
        let report = run_backend(&opts, b);
        println!("({} done in {:.0} s)", b.name(), started.elapsed().as_secs_f64());
        reports.push(report);
    }
    println!();
    println!("== summary: p99 full / p99 baseline ==");
    let mut header = format!("{:<28}", "page");
    for r in &reports {
        header.push_str(&format!(" {:>12}", r.backend.name()));
    }
    println!("{header}");
    if let Some(first) = reports.first() {
        for (i, page) in first.pages.iter().enumerate() {
            let mut line = format!("{:<28}", page.name);
            for r in &reports {
                line.push_str(&format!(" {:>11.2}x", r.pages[i].ratio()));
            }
            println!("{line}");
        }
    }
    for r in &reports {
        println!(
            "{}: otpweb peak RSS {:.1} MB (baseline {:.1} MB), after the load {:.1} MB; otpd peak {:.1} MB (baseline {:.1} MB), after {:.1} MB",
            r.backend.name(),
            mb(r.full_mem.web_peak),
            mb(r.base_mem.web_peak),
            mb(r.full_mem.web_after),
            mb(r.full_mem.otpd_peak),
            mb(r.base_mem.otpd_peak),
            mb(r.full_mem.otpd_after),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Fails early, with what to install, rather than after minutes of seeding.
fn preflight(opts: &Options, backends: &[Backend]) {
    let runs =
        |cmd: &str, arg: &str| Command::new(cmd).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !runs("wrk", "--version") {
        panic!("wrk is not installed: apt-get install wrk");
    }
    if !runs("curl", "--version") {
        panic!("curl is not installed: apt-get install curl");
    }
    if backends.contains(&Backend::Sqlite) && !runs("sqlite3", "--version") {
        panic!("the sqlite3 command is not installed: apt-get install sqlite3");
    }
    if !Path::new(MATRIX).exists() {
        panic!("{MATRIX} is missing: apt-get install libpam-wrapper");
    }
    for b in [opts.otpd.clone(), opts.bin.join("otpweb")] {
        if !b.exists() {
            panic!("{} is missing: cargo build --release -p otpd -p otpweb -p e2e --bins", b.display());
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("web-bench needs root (a PostgreSQL cluster as `postgres`, /proc/PID/clear_refs)");
    }
}

/// A child process stopped (SIGTERM, then waited for) on drop.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (VmHWM, VmRSS) in kB.
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// Resets the peak (VmHWM) to the current RSS.
    fn reset_peak(&self) {
        if let Err(e) = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5") {
            println!("{}: cannot reset the peak RSS: {e}", self.name);
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
    }
}

/// Where the seed SQL goes.
enum Database {
    Sqlite(PathBuf),
    Postgres(e2e::pg::Cluster),
}

impl Database {
    fn sql(&self, sql: &str) -> String {
        match self {
            Database::Postgres(c) => c.psql(sql).unwrap_or_else(|e| panic!("psql: {e}")),
            Database::Sqlite(path) => {
                use std::io::Write;
                let mut child = Command::new("sqlite3")
                    .args(["-batch", "-bail"])
                    .arg(path)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("sqlite3: {e}"));
                let script = format!(".timeout 60000\n{sql}\n");
                if let Some(mut stdin) = child.stdin.take() {
                    stdin.write_all(script.as_bytes()).unwrap_or_else(|e| panic!("sqlite3: {e}"));
                }
                let out = child.wait_with_output().unwrap_or_else(|e| panic!("sqlite3: {e}"));
                if !out.status.success() {
                    panic!("sqlite3 failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        }
    }

    fn postgres(&self) -> bool {
        matches!(self, Database::Postgres(_))
    }

    /// Audit rows `from..=to` of the seeded trail and users `ufrom..=uto`.
    /// Row n: user `user{1 + n*7919 % 5000}`, host `host{n*31 % 100}`,
    /// every 17th a deny, 8 s after the one before.
    fn seed(&self, from: u64, to: u64, ufrom: u64, uto: u64, t0: u64) {
        let now = unix_now();
        let sql = if self.postgres() {
            format!(
                r#"INSERT INTO audit (time, "user", service, rhost, tty, machine, method, result, reason)
SELECT {t0} + n * {AUDIT_SPACING}, 'user' || lpad((1 + (n * 7919) % {AUDIT_USERS})::text, 6, '0'), 'sshd',
       '10.' || (n % 7) || '.' || ((n / 7) % 250) || '.' || (n % 250 + 1), 'ssh',
       'host' || lpad(((n * 31) % {HOSTS})::text, 3, '0'), 'totp',
       CASE WHEN n % 17 = 0 THEN 'deny' ELSE 'accept' END,
       CASE WHEN n % 17 = 0 THEN 'wrong code' ELSE 'code accepted' END
FROM generate_series({from}::bigint, {to}::bigint) AS n;
INSERT INTO users (name, uid, method, enabled, email, secret, activated_at, last_step, last_login, created_at, updated_at)
SELECT 'user' || lpad(n::text, 6, '0'), 100000 + n, 'totp', true,
       CASE WHEN n % 10 = 0 THEN 'user' || lpad(n::text, 6, '0') || '@example.org' END,
       decode(md5(n::text) || md5((n + 1)::text), 'hex'), {t0}, ({now} / 30) - (n % 1000),
       {now} - (n % 100000), {t0}, {t0}
FROM generate_series({ufrom}::bigint, {uto}::bigint) AS n;"#
            )
        } else {
            format!(
                r#"PRAGMA cache_size = -512000;
BEGIN;
WITH RECURSIVE s(n) AS (SELECT {from} UNION ALL SELECT n + 1 FROM s WHERE n < {to})
INSERT INTO audit (time, user, service, rhost, tty, machine, method, result, reason)
SELECT {t0} + n * {AUDIT_SPACING}, printf('user%06d', 1 + (n * 7919) % {AUDIT_USERS}), 'sshd',
       printf('10.%d.%d.%d', n % 7, (n / 7) % 250, n % 250 + 1), 'ssh',
       printf('host%03d', (n * 31) % {HOSTS}), 'totp',
       CASE WHEN n % 17 = 0 THEN 'deny' ELSE 'accept' END,
       CASE WHEN n % 17 = 0 THEN 'wrong code' ELSE 'code accepted' END
FROM s;
WITH RECURSIVE s(n) AS (SELECT {ufrom} UNION ALL SELECT n + 1 FROM s WHERE n < {uto})
INSERT INTO users (name, uid, method, enabled, email, secret, activated_at, last_step, last_login, created_at, updated_at)
SELECT printf('user%06d', n), 100000 + n, 'totp', 1,
       CASE WHEN n % 10 = 0 THEN printf('user%06d@example.org', n) END,
       randomblob(32), {t0}, ({now} / 30) - (n % 1000), {now} - (n % 100000), {t0}, {t0}
FROM s;
COMMIT;
PRAGMA wal_checkpoint(TRUNCATE);"#
            )
        };
        let started = Instant::now();
        self.sql(&sql);
        // As autovacuum would soon after such an insert (and not during the load):
        // psql -c runs one transaction, where VACUUM may not.
        if self.postgres() {
            self.sql("VACUUM ANALYZE audit");
            self.sql("VACUUM ANALYZE users");
        }
        println!(
            "  seeded audit rows {from}..={to} and users {ufrom}..={uto} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    fn one(&self, sql: &str) -> String {
        let out = self.sql(sql);
        out.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_string()
    }
}

/// The name of seeded audit row n's user.
fn audit_user(n: u64) -> String {
    format!("user{:06}", 1 + (n * 7919) % AUDIT_USERS)
}

/// One stack; dropped in field order: otpweb, otpd, then the PostgreSQL
/// cluster.
struct Stack {
    otpweb: Proc,
    otpd: Proc,
    db: Database,
    web_socket: PathBuf,
    admin_socket: PathBuf,
    url: String,
    token: String,
    /// The last TOTP step used to log in (a code is single use).
    last_step: u64,
    uri: String,
    dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

fn wait_for(what: &str, proc_: &mut Proc, log: &Path, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        if Instant::now() >= deadline || !proc_.alive() {
            panic!("{what} did not start:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start(opts: &Options, backend: Backend, label: &str) -> Stack {
    let dir = opts.dir.join(format!("{}-{label}", backend.name().to_lowercase()));
    for sub in ["run", "state", "services", "otpweb"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    // Cluster first: a panic later still stops it (the Stack is not built yet,
    // so these locals drop in reverse order of creation).
    let (db, database) = match backend {
        Backend::Sqlite => {
            let path = dir.join("state/otpd.db");
            (Database::Sqlite(path.clone()), path.display().to_string())
        }
        Backend::Postgres => {
            let c = e2e::pg::Cluster::start().unwrap_or_else(|e| panic!("PostgreSQL: {e}"));
            let url = c.url();
            (Database::Postgres(c), url)
        }
    };
    std::fs::write(dir.join("passdb"), format!("root:{PASSWORD}:otpweb\n")).unwrap_or_else(|e| panic!("passdb: {e}"));
    std::fs::write(
        dir.join("services/otpweb"),
        format!(
            "auth required {MATRIX} passdb={p}\naccount required {MATRIX} passdb={p}\n",
            p = dir.join("passdb").display()
        ),
    )
    .unwrap_or_else(|e| panic!("service: {e}"));
    let web_socket = dir.join("run/web.sock");
    let admin_socket = dir.join("run/admin.sock");
    let config = dir.join("otpd.toml");
    // PostgreSQL is a fleet server's store: the server's own listener is
    // on a free loopback port and sees no traffic here.
    let (top, fleet) = match backend {
        Backend::Sqlite => (String::new(), String::new()),
        Backend::Postgres => (
            "role = \"server\"\n".to_string(),
            format!("[fleet]\nlisten = [\"127.0.0.1:{}\"]\nnames = [\"127.0.0.1\"]\n", free_port()),
        ),
    };
    std::fs::write(
        &config,
        format!(
            "{top}[daemon]\npam_socket = \"{d}/run/pam.sock\"\nadmin_socket = \"{}\"\ndatabase = \"{database}\"\n\
             key_file = \"{d}/state/secret.key\"\ndbus = false\n\
             [web]\nenabled = true\nsocket = \"{}\"\nstate_dir = \"{d}/otpweb\"\n{fleet}",
            admin_socket.display(),
            web_socket.display(),
            d = dir.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    let otpd_log = dir.join("otpd.log");
    let child = Command::new(&opts.otpd)
        .arg("--config")
        .arg(&config)
        .env("LD_PRELOAD", "libpam_wrapper.so")
        .env("PAM_WRAPPER", "1")
        .env("PAM_WRAPPER_SERVICE_DIR", dir.join("services"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&otpd_log).unwrap_or_else(|e| panic!("otpd log: {e}")))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start otpd: {e}"));
    let mut otpd = Proc { child, name: "otpd" };
    wait_for("otpd", &mut otpd, &otpd_log, || std::os::unix::net::UnixStream::connect(&web_socket).is_ok());

    let web_out = dir.join("otpweb.out");
    let web_log = dir.join("otpweb.log");
    let child = Command::new(opts.bin.join("otpweb"))
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(std::fs::File::create(&web_out).unwrap_or_else(|e| panic!("otpweb out: {e}")))
        .stderr(std::fs::File::create(&web_log).unwrap_or_else(|e| panic!("otpweb log: {e}")))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start otpweb: {e}"));
    let mut otpweb = Proc { child, name: "otpweb" };
    let listening = || {
        std::fs::read_to_string(&web_out)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("otpweb listening on ").map(str::to_string))
    };
    wait_for("otpweb", &mut otpweb, &web_log, || listening().is_some());
    let url = listening().unwrap_or_default();
    let mut stack = Stack {
        otpweb,
        otpd,
        db,
        web_socket,
        admin_socket,
        url,
        token: String::new(),
        last_step: 0,
        uri: String::new(),
        dir,
    };
    stack.enroll_root();
    stack.login();
    stack
}

impl Stack {
    fn connect(socket: &Path) -> Client {
        Client::connect(socket, Duration::from_secs(60), &[0])
            .unwrap_or_else(|e| panic!("{}: {e}", socket.display()))
            .for_admin_responses()
    }

    fn web(&self, req: &WebRequest) -> WebResponse {
        Stack::connect(&self.web_socket).call(req).unwrap_or_else(|e| panic!("web socket: {e}"))
    }

    fn enroll_root(&mut self) {
        let req = AdminRequest::UserEnable { user: "root".into(), method: Method::Totp, email: None };
        match Stack::connect(&self.admin_socket).call(&req).unwrap_or_else(|e| panic!("admin socket: {e}")) {
            AdminResponse::Enrolled { otpauth_uri: Some(uri), .. } => self.uri = uri,
            other => panic!("enabling root: {other:?}"),
        }
    }

    /// A console session for root: the password (pam_matrix), then the
    /// code of the next unused time step.
    fn login(&mut self) {
        let client = WebClient { addr: "127.0.0.1".into() };
        let start = WebRequest::LoginStart { client: client.clone(), user: "root".into(), password: PASSWORD.into() };
        let (flow, uri) = match self.web(&start) {
            WebResponse::Step { flow, enroll_uri, .. } => (flow, enroll_uri.unwrap_or_else(|| self.uri.clone())),
            other => panic!("console login of root: {other:?}\n{}", self.otpd_log()),
        };
        self.uri = uri;
        let totp = totp_rs::TOTP::from_url_unchecked(&self.uri).unwrap_or_else(|e| panic!("{}: {e}", self.uri));
        while unix_now() / totp.step <= self.last_step {
            std::thread::sleep(Duration::from_millis(200));
        }
        let now = unix_now();
        self.last_step = now / totp.step;
        let answer = WebRequest::Answer { client, flow, text: totp.generate(now) };
        match self.web(&answer) {
            WebResponse::Session { token, .. } => self.token = token,
            other => panic!("console login of root, the code: {other:?}\n{}", self.otpd_log()),
        }
    }

    fn otpd_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("otpd.log")).unwrap_or_default()
    }

    fn cookie(&self) -> String {
        format!("Cookie: __Host-otpweb={}", self.token)
    }

    /// One GET with curl: (status, body).
    fn get(&self, path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "120", "-w", "\n%{http_code}", "-H", &self.cookie()])
            .arg(format!("{}{path}", self.url))
            .output()
            .unwrap_or_else(|e| panic!("curl: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (status.trim().parse().unwrap_or(0), body.to_string())
    }

    /// The page answers 200 with the session (a 303 to /login means the
    /// session ended: log in again, once). Returns its table's row count.
    fn check(&mut self, path: &str) -> usize {
        let (mut status, mut body) = self.get(path);
        if status == 303 || status == 302 {
            println!("  {path}: redirected (the console session ended?): logging in again");
            self.login();
            (status, body) = self.get(path);
        }
        if status != 200 {
            panic!("GET {path}: HTTP {status}\n{body}\n{}", self.otpd_log());
        }
        body.matches("<tr").count().saturating_sub(1)
    }
}

/// One page's figures in one wrk run.
#[derive(Debug, Clone, Default)]
struct Load {
    p50_ms: f64,
    p99_ms: f64,
    rate: f64,
    requests: u64,
    rows: usize,
}

struct PageResult {
    name: &'static str,
    base: Load,
    full: Load,
}

impl PageResult {
    fn ratio(&self) -> f64 {
        self.full.p99_ms / self.base.p99_ms
    }
}

#[derive(Default, Clone, Copy)]
struct Memory {
    web_peak: u64,
    web_after: u64,
    otpd_peak: u64,
    otpd_after: u64,
}

struct Report {
    backend: Backend,
    pages: Vec<PageResult>,
    base_mem: Memory,
    full_mem: Memory,
}

const LUA: &str = r#"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0; last = 0 end
function response(status, headers, body)
  if status ~= 200 then bad = bad + 1; last = status end
end
function done(summary, latency, requests)
  local total, status = 0, 0
  for _, t in ipairs(threads) do
    total = total + t:get("bad")
    if t:get("last") ~= 0 then status = t:get("last") end
  end
  io.write(string.format("web-bench-not-200 %d %d\n", total, status))
end
"#;

/// wrk's "12.34ms" as milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = t.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        _ => return None,
    })
}

/// The pages measured, for a database of `users` users whose newest audit row is `audit_max_id`.
fn pages(users: u64, audit_max_id: i64) -> Vec<(&'static str, String)> {
    vec![
        ("/audit", "/audit".into()),
        ("/audit?user=(has rows)", format!("/audit?user={}", audit_user(BASE_AUDIT / 2))),
        ("/audit?user=(no rows)", format!("/audit?user={NO_ROWS_USER}")),
        ("/audit?result=deny", "/audit?result=deny".into()),
        ("/audit?before=(middle id)", format!("/audit?before={}", audit_max_id / 2)),
        ("/users", "/users".into()),
        ("/users?q=(one match)", format!("/users?q={SEARCH}")),
        ("/users?after=(middle)", format!("/users?after=user{:06}", users / 2)),
    ]
}

impl Stack {
    /// wrk against one page; panics unless every response was a 200.
    fn load(&mut self, opts: &Options, path: &str) -> Load {
        let rows = self.check(path);
        let script = self.dir.join("check.lua");
        std::fs::write(&script, LUA).unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        let url = format!("{}{path}", self.url);
        let run = |seconds: u64, cookie: &str| {
            let out = Command::new("wrk")
                .args(["-t2", &format!("-c{}", opts.clients), &format!("-d{seconds}s"), "--timeout", "60s"])
                .args(["--latency", "-s"])
                .arg(&script)
                .args(["-H", cookie])
                .arg(&url)
                .output()
                .unwrap_or_else(|e| panic!("wrk: {e}"));
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if !out.status.success() {
                panic!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
            }
            text
        };
        let mut text = String::new();
        for attempt in 0..2 {
            if opts.warmup > 0 {
                run(opts.warmup, &self.cookie());
            }
            text = run(opts.seconds, &self.cookie());
            let bad: Vec<u64> = text
                .lines()
                .find_map(|l| l.strip_prefix("web-bench-not-200 "))
                .map(|l| l.split_whitespace().filter_map(|x| x.parse().ok()).collect())
                .unwrap_or_default();
            let errors = text.lines().find(|l| l.contains("Socket errors")).map(str::to_string);
            match bad.as_slice() {
                [0, _] if errors.is_none() => break,
                [n, status] if attempt == 0 && (*status == 303 || *status == 302) => {
                    println!("  {path}: {n} redirect(s) during the load (session ended?): logging in again");
                    self.login();
                    self.check(path);
                }
                _ => panic!("{path}: not every response was a 200 ({bad:?}; {}):\n{text}", errors.unwrap_or_default()),
            }
        }
        let field = |label: &str| {
            text.lines().find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string())).unwrap_or_default()
        };
        let p =
            |label: &str| duration_ms(&field(label)).unwrap_or_else(|| panic!("no {label} in wrk's output:\n{text}"));
        let requests = text
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Load { p50_ms: p("50%"), p99_ms: p("99%"), rate: field("Requests/sec:").parse().unwrap_or(0.0), requests, rows }
    }

    fn memory(&self) -> Memory {
        let (web_peak, web_after) = self.otpweb.memory();
        let (otpd_peak, otpd_after) = self.otpd.memory();
        Memory { web_peak, web_after, otpd_peak, otpd_after }
    }

    fn pages(&self) -> Vec<(&'static str, String)> {
        let max_id: i64 = self.db.one("SELECT max(id) FROM audit;").parse().unwrap_or(0);
        let users: u64 = self.db.one("SELECT count(*) FROM users;").parse().unwrap_or(0);
        pages(users, max_id)
    }
}

fn print_memory(label: &str, m: Memory) {
    println!(
        "  {label}: otpweb RSS peak {:.1} MB, now {:.1} MB; otpd RSS peak {:.1} MB, now {:.1} MB",
        mb(m.web_peak),
        mb(m.web_after),
        mb(m.otpd_peak),
        mb(m.otpd_after)
    );
}

/// The mean of the rounds' figures.
fn mean(loads: &[Load]) -> Load {
    let n = loads.len().max(1) as f64;
    Load {
        p50_ms: loads.iter().map(|l| l.p50_ms).sum::<f64>() / n,
        p99_ms: loads.iter().map(|l| l.p99_ms).sum::<f64>() / n,
        rate: loads.iter().map(|l| l.rate).sum::<f64>() / n,
        requests: loads.iter().map(|l| l.requests).sum(),
        rows: loads.first().map(|l| l.rows).unwrap_or(0),
    }
}

fn run_backend(opts: &Options, backend: Backend) -> Report {
    println!();
    println!("== {} ==", backend.name());
    // The seeded trail ends about now: row n at t0 + 8n.
    let t0 = unix_now().saturating_sub(opts.audit_rows * AUDIT_SPACING);
    let mut base = start(opts, backend, "baseline");
    base.db.seed(1, BASE_AUDIT, 1, BASE_USERS, t0);
    let mut full = start(opts, backend, "full");
    full.db.seed(1, opts.audit_rows, 1, opts.users, t0);
    println!(
        "  baseline: otpweb on {}; full size: otpweb on {}; a console session for root in each",
        base.url, full.url
    );
    let (base_pages, full_pages) = (base.pages(), full.pages());
    for s in [&base, &full] {
        s.otpweb.reset_peak();
        s.otpd.reset_peak();
    }
    let mut results: Vec<(Vec<Load>, Vec<Load>)> = vec![(Vec::new(), Vec::new()); base_pages.len()];
    for round in 1..=opts.rounds {
        println!("  -- round {round}/{}: each page at baseline, then at full size --", opts.rounds);
        println!(
            "  {:<28} {:>9} {:>6} {:>10} {:>10} {:>9} {:>8}",
            "page", "size", "rows", "p50 ms", "p99 ms", "req/s", "requests"
        );
        for (i, ((name, bpath), (_, fpath))) in base_pages.iter().zip(&full_pages).enumerate() {
            for (size, stack, path) in [("baseline", &mut base, bpath), ("full", &mut full, fpath)] {
                let l = stack.load(opts, path);
                println!(
                    "  {:<28} {:>9} {:>6} {:>10.2} {:>10.2} {:>9.1} {:>8}",
                    name, size, l.rows, l.p50_ms, l.p99_ms, l.rate, l.requests
                );
                if size == "baseline" {
                    results[i].0.push(l);
                } else {
                    results[i].1.push(l);
                }
            }
        }
    }
    let (base_mem, full_mem) = (base.memory(), full.memory());
    print_memory("baseline", base_mem);
    print_memory("full size", full_mem);
    let pages: Vec<PageResult> = base_pages
        .iter()
        .zip(results)
        .map(|((name, _), (b, f))| PageResult { name, base: mean(&b), full: mean(&f) })
        .collect();
    println!("  {:<28} {:>10} {:>10} {:>14}", "page (mean of rounds)", "p99 ratio", "p50 ratio", "req/s ratio");
    for p in &pages {
        println!(
            "  {:<28} {:>9.2}x {:>9.2}x {:>13.2}x",
            p.name,
            p.ratio(),
            p.full.p50_ms / p.base.p50_ms,
            p.full.rate / p.base.rate
        );
    }
    for s in [&mut base, &mut full] {
        if !s.otpd.alive() {
            panic!("otpd died:\n{}", s.otpd_log());
        }
    }
    Report { backend, pages, base_mem, full_mem }
}
