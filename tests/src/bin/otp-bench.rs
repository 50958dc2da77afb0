//! otp-bench: complete PAM authentications through the real libpam, with the
//! same driver, for pam_permit.so, Debian's pam_google_authenticator.so and
//! pam_oath.so, and pam_otp.so + otpd, in one run.
//!
//!   otp-bench [--procs 1,8] [--users 1000,100000] [--logins 4000]
//!             [--permit-logins 20000] [--modules permit,ga,oath,otp]
//!             [--repeat 3] [--oath-logins 300] [--email 1000]
//!             [--fleet sqlite,postgres]
//!
//! Every stack holds exactly the module under test. Each measured login is a
//! distinct enrolled user presenting a valid current code (codes are single
//! use in every module here); pam_permit gets the same users and answers.
//! Worker processes prepare their codes, wait at a start barrier, then loop
//! over pam_start_confdir + pam_authenticate + pam_end. Rounds of each module
//! are bracketed by pam_permit rounds and ratios are taken against the mean
//! of the two, so a machine that speeds up or slows down during the run
//! moves baseline and module alike.
//!
//! `--fleet sqlite,postgres` adds pam_otp through a fleet (issue 11): the
//! same module and stack, its socket= an otpd agent that relays every
//! conversation over TLS 1.3 to one otpd server on SQLite, or on a private
//! PostgreSQL cluster. Standalone pam_otp is measured in the same run, in
//! alternating rounds; with --fleet, --modules defaults to permit,otp and
//! --email to 0.
//!
//! Run it from a release build: `cargo build --release && target/release/otp-bench`.
use common::client::Client;
use common::proto::{AdminRequest, AdminResponse, Method};
use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PERIOD: u64 = 30;

fn now_us() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn list(args: &[String], name: &str, default: &str) -> Vec<String> {
    arg(args, name).unwrap_or_else(|| default.into()).split(',').map(str::to_string).filter(|s| !s.is_empty()).collect()
}

fn numbers(args: &[String], name: &str, default: &str) -> Vec<usize> {
    list(args, name, default).iter().filter_map(|p| p.parse().ok()).collect()
}

/// The modules compared, in the order of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Module {
    Permit,
    Ga,
    Oath,
    Otp,
    /// pam_otp -> otpd agent -> otpd server on this store.
    Fleet(Store),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Store {
    Sqlite,
    Postgres,
}

impl Module {
    fn name(self) -> &'static str {
        match self {
            Module::Permit => "pam_permit",
            Module::Ga => "google-auth",
            Module::Oath => "pam_oath",
            Module::Otp => "pam_otp",
            Module::Fleet(Store::Sqlite) => "fleet-sqlite",
            Module::Fleet(Store::Postgres) => "fleet-pg",
        }
    }
    fn service(self) -> &'static str {
        match self {
            Module::Permit => "permit",
            Module::Ga => "ga",
            Module::Oath => "oath",
            Module::Otp => "otp",
            Module::Fleet(Store::Sqlite) => "fleet-sqlite",
            Module::Fleet(Store::Postgres) => "fleet-pg",
        }
    }
}

/// The directory holding the system's PAM modules (where pam_permit.so is).
fn security_dir() -> Option<PathBuf> {
    let multiarch = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    [
        format!("/lib/{multiarch}/security"),
        format!("/usr/lib/{multiarch}/security"),
        "/lib/security".into(),
        "/usr/lib/security".into(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|d| d.join("pam_permit.so").exists())
}

struct Bench {
    bin: PathBuf,
    dir: PathBuf,
    services: PathBuf,
    procs: Vec<usize>,
    logins: usize,
    permit_logins: usize,
    modules: Vec<Module>,
    /// pam_oath rewrites its whole users file on every login: at large user
    /// counts it gets this many logins per round, not --logins.
    oath_logins: usize,
    /// Rounds of each module per cell.
    repeat: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--worker") {
        return worker(&args);
    }
    let bin = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)).unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("otp-bench.{}", std::process::id()));
    let services = dir.join("services");
    std::fs::create_dir_all(&services).unwrap_or_else(|e| panic!("{}: {e}", services.display()));
    let Some(security) = security_dir() else { panic!("no pam_permit.so found: install libpam-modules") };
    let mut fleet = Vec::new();
    for f in list(&args, "--fleet", "") {
        fleet.push(match f.as_str() {
            "sqlite" => Module::Fleet(Store::Sqlite),
            "postgres" | "postgresql" | "pg" => Module::Fleet(Store::Postgres),
            other => panic!("unknown fleet store {other:?} (sqlite, postgres)"),
        });
    }
    let default_modules = if fleet.is_empty() { "permit,ga,oath,otp" } else { "permit,otp" };
    let mut modules = Vec::new();
    for m in list(&args, "--modules", default_modules) {
        let (module, file) = match m.as_str() {
            "permit" => (Module::Permit, "pam_permit.so"),
            "ga" => (Module::Ga, "pam_google_authenticator.so"),
            "oath" => (Module::Oath, "pam_oath.so"),
            "otp" => (Module::Otp, ""),
            other => panic!("unknown module {other:?} (permit, ga, oath, otp)"),
        };
        if !file.is_empty() && !security.join(file).exists() {
            println!("{}: {file} is not installed, skipped (apt install libpam-google-authenticator libpam-oath)", m);
            continue;
        }
        modules.push(module);
    }
    if !modules.contains(&Module::Permit) {
        modules.insert(0, Module::Permit);
    }
    // Fleet rates are read against standalone pam_otp of the same run.
    if !fleet.is_empty() && !modules.contains(&Module::Otp) {
        modules.push(Module::Otp);
    }
    let with_fleet = !fleet.is_empty();
    modules.extend(fleet);
    let bench = Bench {
        bin,
        dir: dir.clone(),
        services,
        procs: numbers(&args, "--procs", "1,8"),
        logins: numbers(&args, "--logins", "4000").first().copied().unwrap_or(4000),
        permit_logins: numbers(&args, "--permit-logins", "20000").first().copied().unwrap_or(20000),
        modules,
        oath_logins: numbers(&args, "--oath-logins", "300").first().copied().unwrap_or(300),
        repeat: numbers(&args, "--repeat", "3").first().copied().unwrap_or(3).max(1),
    };
    println!(
        "otp-bench: complete PAM authentications (pam_start_confdir + pam_authenticate + pam_end) through libpam,"
    );
    println!("one module per stack, distinct users with valid current codes; ratios are to google-authenticator (GA)");
    println!("and to the pam_permit rounds run just before and after, in this same run. auths/s counts accepted");
    println!("logins; p50/p99 are per pam_authenticate call, accepted or not.");
    let mut summary = Vec::new();
    for users in numbers(&args, "--users", "1000,100000") {
        summary.extend(bench.run_users(users));
    }
    let email = numbers(&args, "--email", if with_fleet { "0" } else { "1000" }).first().copied().unwrap_or(0);
    if email > 0 {
        bench.email_round(email);
    }
    print_targets(&summary);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One measured cell of the table.
#[derive(Debug, Clone)]
struct Cell {
    users: usize,
    procs: usize,
    module: Module,
    round: Summary,
    /// The pam_permit rounds around this module's rounds.
    permit: Summary,
    ga: Option<Summary>,
    /// Resident memory of the daemons behind the module: otpd for pam_otp,
    /// server and agent for a fleet.
    rss_kb: Vec<(&'static str, u64)>,
}

impl Bench {
    fn write_service(&self, name: &str, line: &str) {
        std::fs::write(self.services.join(name), format!("{line}\n")).unwrap_or_else(|e| panic!("service {name}: {e}"));
    }

    /// Sets up `users` enrolled users in every module, then measures each
    /// module at every process count, `repeat` times, each round of a
    /// module between two pam_permit rounds.
    fn run_users(&self, users: usize) -> Vec<Cell> {
        println!();
        println!("== {users} enrolled users ==");
        let udir = self.dir.join(format!("u{users}"));
        std::fs::create_dir_all(&udir).ok();
        // Each round takes its own users where there are enough; otherwise
        // rounds share them and each takes the next unused time step (codes
        // are single use), waiting for the clock where it must.
        let per_round = self.logins.min(users);
        let slots = self.procs.len() * self.repeat;
        let first_of = |pi: usize, rep: usize| {
            if per_round * slots <= users {
                (pi * self.repeat + rep) * per_round
            } else {
                0
            }
        };
        let measured: Vec<usize> = {
            let mut v: Vec<usize> = (0..self.procs.len())
                .flat_map(|pi| (0..self.repeat).map(move |rep| (pi, rep)))
                .flat_map(|(pi, rep)| first_of(pi, rep)..first_of(pi, rep) + per_round)
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let secrets: Vec<(String, Vec<u8>)> = (0..users).map(|i| (format!("b{i}"), random_secret())).collect();
        let mut daemons: HashMap<Module, Daemons> = HashMap::new();
        let mut files: HashMap<Module, PathBuf> = HashMap::new();
        let mut steps: HashMap<Module, StepBook> = HashMap::new();
        for &m in &self.modules {
            let started = Instant::now();
            let mut book = StepBook::new(users);
            let list = match m {
                Module::Permit => {
                    self.write_service("permit", "auth required pam_permit.so");
                    write_users(&udir.join("permit"), &secrets)
                }
                Module::Ga => self.setup_ga(&udir, &secrets),
                Module::Oath => self.setup_oath(&udir, &secrets),
                Module::Otp => {
                    let (daemon, list) = self.setup_otp(&udir, &secrets, &measured, &mut book);
                    daemons.insert(m, Daemons::Standalone(daemon));
                    list
                }
                Module::Fleet(store) => {
                    let (fleet, list) = self.setup_fleet(store, &udir, &secrets, &measured, &mut book);
                    daemons.insert(m, Daemons::Fleet(fleet));
                    list
                }
            };
            if m != Module::Permit {
                println!("{}: {users} users set up in {:.1} s", m.name(), started.elapsed().as_secs_f64());
            }
            files.insert(m, list);
            steps.insert(m, book);
        }
        let permit_file = files[&Module::Permit].clone();
        let mut cells = Vec::new();
        for (pi, &p) in self.procs.iter().enumerate() {
            let mut results: Vec<(Module, Vec<Round>, Vec<Round>)> = Vec::new();
            let mut cpu = CpuSpent::new();
            let mut before = self.round(Module::Permit, &permit_file, 0, per_round, p, 0, self.permit_logins);
            for rep in 0..self.repeat {
                for &m in self.modules.iter().filter(|&&m| m != Module::Permit) {
                    let first = first_of(pi, rep);
                    let logins =
                        if m == Module::Oath && users > 10_000 { per_round.min(self.oath_logins) } else { per_round };
                    let book = steps.get_mut(&m).unwrap_or_else(|| panic!("no step book for {m:?}"));
                    let offset = book.offset_for(first..first + logins);
                    let cpu_before = daemons.get(&m).map(Daemons::cpu_ticks).unwrap_or_default();
                    let r = self.round(m, &files[&m], first, logins, p, offset, logins);
                    let cpu_after = daemons.get(&m).map(Daemons::cpu_ticks).unwrap_or_default();
                    let (spent, calls) = cpu.entry(m).or_insert_with(|| (Vec::new(), 0));
                    *calls += r.latencies.len();
                    for ((what, b), (_, a)) in cpu_before.iter().zip(&cpu_after) {
                        match spent.iter_mut().find(|(w, _)| w == what) {
                            Some((_, t)) => *t += a.saturating_sub(*b),
                            None => spent.push((what, a.saturating_sub(*b))),
                        }
                    }
                    if !r.failed.is_empty() {
                        // A valid code refused: say whose, for the daemon's log.
                        let some: Vec<&str> = r.failed.iter().take(5).map(String::as_str).collect();
                        println!("{}: {} valid login(s) refused: {}", m.name(), r.failed.len(), some.join(" "));
                        // Only this module's daemons: other modules (pam_oath) have none.
                        let logs = daemons.get(&m).map(Daemons::logs).unwrap_or_default();
                        for line in logs
                            .iter()
                            .flat_map(|t| t.lines())
                            .filter(|l| some.iter().any(|u| l.contains(&format!("user={u} "))))
                        {
                            println!("  {line}");
                        }
                    }
                    book.record(first..first + logins, r.max_step);
                    let after = self.round(Module::Permit, &permit_file, 0, per_round, p, 0, self.permit_logins);
                    let base = before.mean(&after);
                    before = after;
                    match results.iter_mut().find(|(x, _, _)| *x == m) {
                        Some((_, rs, bs)) => {
                            rs.push(r);
                            bs.push(base);
                        }
                        None => results.push((m, vec![r], vec![base])),
                    }
                }
            }
            let rss = |m: Module| daemons.get(&m).map(Daemons::rss_kb).unwrap_or_default();
            let summary: Vec<(Module, Summary, Summary)> =
                results.iter().map(|(m, rs, bs)| (*m, Summary::of(rs), Summary::of(bs))).collect();
            let ga = summary.iter().find(|(m, _, _)| *m == Module::Ga).map(|(_, s, _)| s.clone());
            let memory: Vec<(Module, Vec<(&'static str, u64)>)> =
                summary.iter().map(|(m, _, _)| (*m, rss(*m))).filter(|(_, r)| !r.is_empty()).collect();
            print_table(users, p, self.repeat, &summary, ga.as_ref(), &memory);
            print_cpu(&self.modules, &cpu);
            for (m, round, permit) in summary {
                cells.push(Cell { users, procs: p, module: m, round, permit, ga: ga.clone(), rss_kb: rss(m) });
            }
        }
        for &m in &self.modules {
            if let Some(d) = daemons.get(&m) {
                let rss: Vec<String> = d.rss_kb().iter().map(|(what, kb)| format!("{what} {kb} kB")).collect();
                println!("{} resident memory with {users} users enrolled: {}", m.name(), rss.join(", "));
            }
        }
        // Agents before servers, servers before their database.
        drop(daemons);
        let _ = std::fs::remove_dir_all(&udir);
        cells
    }

    /// Google Authenticator: one secret file per user, as the
    /// google-authenticator tool writes it with -t -d -w 3 (TOTP, no code
    /// reuse, ±1 step), read and rewritten (write, fsync, rename) by the
    /// module on every login. Without -r/-R rate limiting: repeated rounds
    /// log the same user in more than 3 times in 30 s, which it would
    /// refuse; it costs no extra file operation.
    fn setup_ga(&self, udir: &Path, secrets: &[(String, Vec<u8>)]) -> PathBuf {
        let dir = udir.join("ga");
        std::fs::create_dir_all(&dir).ok();
        for (name, secret) in secrets {
            let path = dir.join(name);
            let text = format!("{}\n\" WINDOW_SIZE 3\n\" DISALLOW_REUSE\n\" TOTP_AUTH\n", data_encoding_base32(secret));
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).ok();
        }
        self.write_service(
            "ga",
            &format!("auth required pam_google_authenticator.so secret={}/${{USER}} user=root", dir.display()),
        );
        write_users(&udir.join("ga.users"), secrets)
    }

    /// pam_oath: one users file, `HOTP/T30 user - hexkey` per line.
    fn setup_oath(&self, udir: &Path, secrets: &[(String, Vec<u8>)]) -> PathBuf {
        let file = udir.join("users.oath");
        let text: String = secrets
            .iter()
            .map(|(n, s)| format!("HOTP/T30 {n} - {}\n", s.iter().map(|b| format!("{b:02x}")).collect::<String>()))
            .collect();
        std::fs::write(&file, text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).ok();
        self.write_service(
            "oath",
            &format!("auth required pam_oath.so usersfile={} window=1 digits=6", file.display()),
        );
        write_users(&udir.join("oath.users"), secrets)
    }

    /// pam_otp: a fresh otpd, every user enabled through the admin socket,
    /// and the users that will be measured activated by a first login (the
    /// enrollment conversation) with the previous step's code.
    fn setup_otp(
        &self,
        udir: &Path,
        secrets: &[(String, Vec<u8>)],
        measured: &[usize],
        book: &mut StepBook,
    ) -> (Otpd, PathBuf) {
        let daemon = Otpd::start(&self.bin, &udir.join("otpd"));
        let file =
            self.enroll_otp(Module::Otp, &daemon.pam_socket, &daemon.admin_socket, udir, secrets, measured, book);
        (daemon, file)
    }

    /// A fleet: one otpd server (SQLite, or a private PostgreSQL cluster),
    /// credentials for host bench01 from `otpctl host add`, one otpd agent
    /// with them, and pam_otp's socket= on the agent. Users are enrolled on
    /// the server's admin socket and activated through the agent, as
    /// standalone pam_otp's are.
    fn setup_fleet(
        &self,
        store: Store,
        udir: &Path,
        secrets: &[(String, Vec<u8>)],
        measured: &[usize],
        book: &mut StepBook,
    ) -> (Fleet, PathBuf) {
        let m = Module::Fleet(store);
        let dir = udir.join(m.service());
        let pg = match store {
            Store::Sqlite => None,
            Store::Postgres => Some(e2e::pg::Cluster::start().unwrap_or_else(|e| panic!("PostgreSQL: {e}"))),
        };
        let port = free_port();
        // One host (bench01) drives every login, thousands a second: its
        // per-host budget (6,000 a minute by default, a guard against one
        // compromised host) would refuse most of a 100,000-user round.
        // OTP_BENCH_FLEET: more `[fleet]` keys for the server (tuning runs,
        // e.g. "db_connections = 4").
        let fleet = format!(
            "[fleet]\nlisten = [\"127.0.0.1:{port}\"]\nnames = [\"127.0.0.1\"]\nhost_logins_per_minute = 10000000\n{}\n",
            std::env::var("OTP_BENCH_FLEET").unwrap_or_default()
        );
        let server =
            Otpd::launch(&self.bin, &dir.join("server"), "role = \"server\"\n", pg.as_ref().map(|c| c.url()), &fleet);
        let bundle = dir.join("bench01.bundle");
        let out = Command::new(self.bin.join("otpctl"))
            .arg("--socket")
            .arg(&server.admin_socket)
            .args(["host", "add", "bench01", "-o"])
            .arg(&bundle)
            .output()
            .unwrap_or_else(|e| panic!("otpctl: {e}"));
        assert!(out.status.success(), "otpctl host add: {}", String::from_utf8_lossy(&out.stderr));
        let agent = Otpd::agent(&self.bin, &dir.join("agent"), &format!("127.0.0.1:{port}"), &bundle);
        let file = self.enroll_otp(m, &agent.pam_socket, &server.admin_socket, udir, secrets, measured, book);
        (Fleet { agent, server, pg }, file)
    }

    /// pam_otp's stack for module `m` on `pam_socket`; every user enabled
    /// through `admin`, and the measured ones activated by a first login.
    #[allow(clippy::too_many_arguments)]
    fn enroll_otp(
        &self,
        m: Module,
        pam_socket: &Path,
        admin: &Path,
        udir: &Path,
        secrets: &[(String, Vec<u8>)],
        measured: &[usize],
        book: &mut StepBook,
    ) -> PathBuf {
        self.write_service(
            m.service(),
            &format!(
                "auth [success=ok ignore=ignore default=die] {}/libpam_otp.so socket={}",
                self.bin.display(),
                pam_socket.display()
            ),
        );
        let names: Vec<String> = secrets.iter().map(|(n, _)| n.clone()).collect();
        let enrolled = enroll(admin, &names);
        let file = udir.join(format!("{}.users", m.service()));
        std::fs::write(&file, enrolled.join("\n")).ok();
        let activate = udir.join(format!("{}.activate", m.service()));
        let mut pending: Vec<usize> = measured.to_vec();
        // A login that straddles a step boundary presents a code two steps
        // old and is refused; such users are activated again right after.
        for _ in 0..3 {
            std::fs::write(&activate, pending.iter().map(|&i| enrolled[i].as_str()).collect::<Vec<_>>().join("\n"))
                .ok();
            let procs = 8.min(pending.len()).max(1);
            let r = self.round(m, &activate, 0, pending.len(), procs, -1, pending.len());
            for &i in &pending {
                book.last[i] = book.last[i].max(r.max_step);
            }
            let failed: std::collections::HashSet<&str> = r.failed.iter().map(String::as_str).collect();
            pending.retain(|&i| failed.contains(names[i].as_str()));
            if pending.is_empty() {
                break;
            }
        }
        assert!(pending.is_empty(), "activating the measured {} users failed: {pending:?}", m.name());
        file
    }

    /// One round: `procs` workers share `count` logins of users
    /// `first..first+users` (cycled when `count` is larger), codes for the
    /// current step plus `offset`.
    #[allow(clippy::too_many_arguments)]
    fn round(
        &self,
        m: Module,
        users: &Path,
        first: usize,
        n_users: usize,
        procs: usize,
        offset: i64,
        count: usize,
    ) -> Round {
        // Worker i takes the i-th share of the users and of the logins.
        let share = |total: usize, i: usize| (i * total / procs, (i + 1) * total / procs - i * total / procs);
        let mut children: Vec<Child> = (0..procs)
            .map(|i| {
                let (from, n) = share(n_users, i);
                Command::new(self.bin.join("otp-bench"))
                    .args(["--worker", m.service()])
                    .arg(&self.services)
                    .arg(users)
                    .arg((first + from).to_string())
                    .arg(n.to_string())
                    .arg(share(count, i).1.to_string())
                    .arg(offset.to_string())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("worker: {e}"))
            })
            .collect();
        // Barrier: every worker has loaded its users and codes.
        let mut outs: Vec<_> = children.iter_mut().map(|c| std::io::BufReader::new(c.stdout.take().unwrap())).collect();
        for out in &mut outs {
            let mut line = String::new();
            out.read_line(&mut line).ok();
            assert_eq!(line.trim(), "ready", "worker failed to start");
        }
        for c in &mut children {
            if let Some(mut stdin) = c.stdin.take() {
                let _ = stdin.write_all(b"go\n");
            }
        }
        let texts: Vec<String> = outs
            .into_iter()
            .zip(children)
            .map(|(mut out, mut c)| {
                let mut text = String::new();
                out.read_to_string(&mut text).ok();
                let _ = c.wait();
                text
            })
            .collect();
        collect_round(&texts)
    }

    /// N users each press Enter once (an emailed code), from 8 processes at
    /// once: the login conversation's latency, and the time until the local
    /// SMTP server has accepted each message.
    fn email_round(&self, n: usize) {
        println!();
        let edir = self.dir.join("email");
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok().and_then(|l| l.local_addr().ok()).map(|a| a.port());
        let port = port.unwrap_or(2525);
        let daemon = Otpd::start_with(
            &self.bin,
            &edir,
            &format!(
                "[email]\ndirectory = \"none\"\nglobal_per_hour = 1000000\nper_address_per_hour = 1000\n\
                 [smtp]\nurl = \"smtp+plain://127.0.0.1:{port}\"\n"
            ),
        );
        self.write_service(
            "otp-email",
            &format!(
                "auth [success=ok ignore=ignore default=die] {}/libpam_otp.so socket={}",
                self.bin.display(),
                daemon.pam_socket.display()
            ),
        );
        let maildir = edir.join("maildir");
        let sink = concat!(env!("CARGO_MANIFEST_DIR"), "/support/smtp_sink.py");
        let mut smtp = Command::new("/usr/bin/python3")
            .arg(sink)
            .arg(&maildir)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("smtp sink: {e}"));
        let mut ready = String::new();
        if let Some(out) = smtp.stdout.take() {
            let _ = std::io::BufReader::new(out).read_line(&mut ready);
        }
        let names: Vec<String> = (0..n).map(|i| format!("mailer{i}")).collect();
        std::thread::scope(|s| {
            for chunk in names.chunks(n.div_ceil(8).max(1)) {
                let admin = daemon.admin_socket.clone();
                s.spawn(move || {
                    for user in chunk {
                        let req = AdminRequest::UserEnable {
                            user: user.clone(),
                            method: Method::Email,
                            email: Some(format!("{user}@bench.example")),
                        };
                        if let Ok(mut c) = Client::connect(&admin, Duration::from_secs(60), &[0]) {
                            let _: Result<AdminResponse, _> = c.call(&req);
                        }
                    }
                });
            }
        });
        let users_file = edir.join("email.users");
        std::fs::write(&users_file, names.iter().map(|u| format!("{u} -")).collect::<Vec<_>>().join("\n")).ok();
        let r = self.round_email(&users_file, n);
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut arrivals: Vec<PathBuf> = Vec::new();
        while Instant::now() < deadline {
            arrivals = std::fs::read_dir(&maildir)
                .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "eml")).collect())
                .unwrap_or_default();
            if arrivals.len() >= n {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let starts: HashMap<String, f64> = std::fs::read_to_string(edir.join("email-starts"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' ').and_then(|(u, t)| t.parse::<f64>().ok().map(|t| (u.to_string(), t))))
            .collect();
        let mut delivery: Vec<f64> = arrivals
            .iter()
            .filter_map(|p| {
                let text = std::fs::read_to_string(p).ok()?;
                let to = text.lines().next()?.strip_prefix("X-Envelope-To: ")?.split('@').next()?.to_string();
                let at: f64 = text.lines().nth(1)?.strip_prefix("X-Received-At: ")?.trim().parse().ok()?;
                Some((at - starts.get(&to)? / 1e6) * 1000.0)
            })
            .collect();
        delivery.sort_by(|a, b| a.total_cmp(b));
        println!("== emailed-code requests: {n} distinct users press Enter, 8 processes, SMTP sink (aiosmtpd) on 127.0.0.1 ==");
        println!(
            "  login conversation of a request: p50 {:.3} ms, p99 {:.3} ms ({:.0} requests/s)",
            percentile(&r.latencies, 0.5),
            percentile(&r.latencies, 0.99),
            r.rate
        );
        println!(
            "  request -> accepted by SMTP:     p50 {:.1} ms, p99 {:.1} ms; delivered {}/{}",
            percentile(&delivery, 0.5),
            percentile(&delivery, 0.99),
            delivery.len(),
            n
        );
        println!("  requests answered without 'A code was sent': {}", r.rejected);
        let _ = smtp.kill();
        let _ = smtp.wait();
    }

    fn round_email(&self, users: &Path, n: usize) -> Round {
        let procs = 8;
        let per = n.div_ceil(procs);
        let children: Vec<Child> = (0..procs)
            .map(|i| {
                Command::new(self.bin.join("otp-bench"))
                    .args(["--worker", "otp-email"])
                    .arg(&self.services)
                    .arg(users)
                    .arg((i * per).to_string())
                    .arg(per.to_string())
                    .arg(per.to_string())
                    .arg("email")
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("worker: {e}"))
            })
            .collect();
        let texts: Vec<String> = children
            .into_iter()
            .map(|c| {
                let out = c.wait_with_output().unwrap_or_else(|e| panic!("worker: {e}"));
                String::from_utf8_lossy(&out.stdout).into_owned()
            })
            .collect();
        collect_round(&texts)
    }
}

/// Per module: the CPU ticks each of its daemons spent in its measured
/// rounds, and how many logins those rounds made.
type CpuSpent = HashMap<Module, (Vec<(&'static str, u64)>, usize)>;

/// The daemons' CPU time per login of each module's measured rounds: a
/// cost that the machine's noise moves far less than a rate.
fn print_cpu(modules: &[Module], cpu: &CpuSpent) {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    for m in modules {
        let Some((spent, calls)) = cpu.get(m) else { continue };
        let per = |t: u64| t as f64 * 1000.0 / hz / (*calls).max(1) as f64;
        let parts: Vec<String> = spent.iter().map(|(what, t)| format!("{what} {:.3}", per(*t))).collect();
        let total: u64 = spent.iter().map(|(_, t)| t).sum();
        println!("{} daemons' CPU per login, ms: {}; total {:.3}", m.name(), parts.join(", "), per(total));
    }
}

/// utime + stime of process `pid` (all its threads), in clock ticks; 0
/// for one that is gone.
fn cpu_ticks(pid: &str) -> u64 {
    e2e::proc_stat(pid).iter().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum()
}

/// The workers' reports of one round, together.
fn collect_round(texts: &[String]) -> Round {
    let (mut lat, mut rejected, mut replays, mut start, mut end) = (Vec::new(), 0, None, u128::MAX, 0u128);
    let (mut failed, mut max_step) = (Vec::new(), i64::MIN / 2);
    for line in texts.iter().flat_map(|t| t.lines()) {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("lat"), Some(v)) => lat.push(v.parse::<f64>().unwrap_or(0.0) / 1000.0),
            (Some("rejected"), Some(v)) => rejected += v.parse::<usize>().unwrap_or(0),
            (Some("replays_accepted"), Some(v)) => *replays.get_or_insert(0) += v.parse::<usize>().unwrap_or(0),
            (Some("start"), Some(v)) => start = start.min(v.parse().unwrap_or(u128::MAX)),
            (Some("end"), Some(v)) => end = end.max(v.parse().unwrap_or(0)),
            (Some("failed"), Some(u)) => failed.push(u.to_string()),
            (Some("maxstep"), Some(v)) => max_step = max_step.max(v.parse().unwrap_or(i64::MIN / 2)),
            _ => {}
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let secs = (end.saturating_sub(start)) as f64 / 1e6;
    Round {
        count: lat.len(),
        // Accepted logins only: a module that refuses fast is not fast.
        rate: lat.len().saturating_sub(rejected) as f64 / secs.max(1e-9),
        latencies: lat,
        rejected,
        replays_accepted: replays,
        failed,
        max_step,
    }
}

#[derive(Debug, Clone)]
struct Round {
    count: usize,
    rate: f64,
    /// Milliseconds per pam_authenticate call, sorted.
    latencies: Vec<f64>,
    rejected: usize,
    /// None where replays mean nothing (pam_permit accepts anything).
    replays_accepted: Option<usize>,
    /// Users whose valid login was refused.
    failed: Vec<String>,
    /// Highest TOTP step any login of the round presented.
    max_step: i64,
}

impl Round {
    /// The baseline for a round between two pam_permit rounds.
    fn mean(&self, other: &Round) -> Round {
        let mut latencies = [self.latencies.as_slice(), other.latencies.as_slice()].concat();
        latencies.sort_by(|a, b| a.total_cmp(b));
        Round {
            count: self.count + other.count,
            rate: (self.rate + other.rate) / 2.0,
            latencies,
            rejected: self.rejected + other.rejected,
            replays_accepted: None,
            failed: Vec::new(),
            max_step: self.max_step.max(other.max_step),
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted.get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
}

/// Several rounds of one module: the median rate, the spread, and the
/// percentiles of all their logins together.
#[derive(Debug, Clone)]
struct Summary {
    count: usize,
    rate: f64,
    rates: Vec<f64>,
    p50: f64,
    p99: f64,
    rejected: usize,
    replays_accepted: Option<usize>,
}

impl Summary {
    fn of(rounds: &[Round]) -> Summary {
        let mut rates: Vec<f64> = rounds.iter().map(|r| r.rate).collect();
        rates.sort_by(|a, b| a.total_cmp(b));
        let mut all: Vec<f64> = rounds.iter().flat_map(|r| r.latencies.iter().copied()).collect();
        all.sort_by(|a, b| a.total_cmp(b));
        let replays = rounds.iter().filter_map(|r| r.replays_accepted).reduce(|a, b| a + b);
        Summary {
            count: rounds.iter().map(|r| r.count).sum(),
            rate: percentile(&rates, 0.5),
            rates,
            p50: percentile(&all, 0.5),
            p99: percentile(&all, 0.99),
            rejected: rounds.iter().map(|r| r.rejected).sum(),
            replays_accepted: replays,
        }
    }
}

/// Per user of one module, the highest TOTP step presented so far: codes
/// are single use, so the next round must use a later step.
struct StepBook {
    last: Vec<i64>,
}

impl StepBook {
    fn new(users: usize) -> StepBook {
        StepBook { last: vec![i64::MIN / 2; users] }
    }

    /// The code offset (0 or +1 step) for a round of these users, after
    /// waiting for the clock if their window is used up. A negative offset
    /// is never used in a measured round: a login straddling a step
    /// boundary would present a code two steps old.
    fn offset_for(&self, users: std::ops::Range<usize>) -> i64 {
        let needed = users.map(|i| self.last[i]).max().unwrap_or(i64::MIN / 2) + 1;
        loop {
            let now = (unix_now() / PERIOD) as i64;
            if needed <= now {
                return 0;
            }
            if needed == now + 1 {
                return 1;
            }
            // Wait until the step before `needed` begins.
            let wait = ((needed - 1) as u64 * PERIOD).saturating_sub(unix_now()) + 1;
            std::thread::sleep(Duration::from_secs(wait));
        }
    }

    fn record(&mut self, users: std::ops::Range<usize>, max_step: i64) {
        for i in users {
            self.last[i] = self.last[i].max(max_step);
        }
    }
}

fn print_table(
    users: usize,
    procs: usize,
    repeat: usize,
    results: &[(Module, Summary, Summary)],
    ga: Option<&Summary>,
    memory: &[(Module, Vec<(&'static str, u64)>)],
) {
    println!();
    println!("-- {users} users, {procs} process(es): median of {repeat} round(s) per module, p50/p99 over all their logins --");
    println!(
        "{:<12} {:>6} {:>8} {:>15} {:>7} {:>7} {:>5} {:>5} | {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7}",
        "module",
        "auths",
        "auths/s",
        "(min-max)",
        "p50 ms",
        "p99 ms",
        "rej",
        "repl",
        "rate/GA",
        "p50/GA",
        "p99/GA",
        "rate/pm",
        "p50/pm",
        "p99/pm"
    );
    let ratio = |a: f64, b: Option<f64>| b.map(|b| format!("{:.3}", a / b)).unwrap_or_else(|| "-".into());
    let spread = |r: &Summary| {
        format!("{:.0}-{:.0}", r.rates.first().copied().unwrap_or(0.0), r.rates.last().copied().unwrap_or(0.0))
    };
    // pam_permit: all the bracketing rounds of this cell.
    if let Some((_, _, permit)) = results.first() {
        let all: Vec<&Summary> = results.iter().map(|(_, _, p)| p).collect();
        let mut rates: Vec<f64> = all.iter().flat_map(|p| p.rates.iter().copied()).collect();
        rates.sort_by(|a, b| a.total_cmp(b));
        let rate = percentile(&rates, 0.5);
        println!(
            "{:<12} {:>6} {:>8.0} {:>15} {:>7.3} {:>7.3} {:>5} {:>5} | {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7}",
            "pam_permit",
            permit.count,
            rate,
            format!("{:.0}-{:.0}", rates.first().copied().unwrap_or(0.0), rates.last().copied().unwrap_or(0.0)),
            permit.p50,
            permit.p99,
            all.iter().map(|p| p.rejected).sum::<usize>(),
            "-",
            ratio(rate, ga.map(|g| g.rate)),
            ratio(permit.p50, ga.map(|g| g.p50)),
            ratio(permit.p99, ga.map(|g| g.p99)),
            "1",
            "1",
            "1"
        );
    }
    for (m, r, permit) in results {
        println!(
            "{:<12} {:>6} {:>8.0} {:>15} {:>7.3} {:>7.3} {:>5} {:>5} | {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7}",
            m.name(),
            r.count,
            r.rate,
            spread(r),
            r.p50,
            r.p99,
            r.rejected,
            r.replays_accepted.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
            ratio(r.rate, ga.map(|g| g.rate)),
            ratio(r.p50, ga.map(|g| g.p50)),
            ratio(r.p99, ga.map(|g| g.p99)),
            ratio(r.rate, Some(permit.rate)),
            ratio(r.p50, Some(permit.p50)),
            ratio(r.p99, Some(permit.p99)),
        );
    }
    // A fleet against standalone pam_otp of this same cell.
    if let Some((_, otp, _)) = results.iter().find(|(m, _, _)| *m == Module::Otp) {
        for (m, r, _) in results.iter().filter(|(m, _, _)| matches!(m, Module::Fleet(_))) {
            println!(
                "{:<12} / pam_otp standalone: rate {:.3}, p50 {:.3}, p99 {:.3}",
                m.name(),
                r.rate / otp.rate,
                r.p50 / otp.p50,
                r.p99 / otp.p99
            );
        }
    }
    for (m, rss) in memory {
        let rss: Vec<String> = rss.iter().map(|(what, kb)| format!("{what} {kb} kB")).collect();
        println!("{} resident memory: {}", m.name(), rss.join(", "));
    }
}

/// Checks the targets against this run's figures.
fn print_targets(cells: &[Cell]) {
    println!();
    println!("== targets (from this run) ==");
    let otp = |users: usize, procs: usize| {
        cells.iter().find(|c| c.module == Module::Otp && c.users == users && c.procs == procs)
    };
    let verdict = |ok: bool, what: String| println!("  [{}] {what}", if ok { "met" } else { "MISSED" });
    let max_procs = cells.iter().map(|c| c.procs).max().unwrap_or(0);
    for c in cells.iter().filter(|c| c.module == Module::Otp && c.procs == max_procs) {
        if let Some(ga) = &c.ga {
            let x = c.round.rate / ga.rate;
            verdict(
                x >= 10.0,
                format!("{} users, P={}: pam_otp {:.1}x google-authenticator (target >= 10x)", c.users, c.procs, x),
            );
        }
        let x = c.round.rate / c.permit.rate;
        verdict(x >= 0.25, format!("{} users, P={}: pam_otp {:.3}x pam_permit (target >= 0.25x)", c.users, c.procs, x));
    }
    // Issue 11: a fleet on PostgreSQL at the highest process count.
    for c in cells.iter().filter(|c| c.module == Module::Fleet(Store::Postgres) && c.procs == max_procs) {
        if let Some(otp) = otp(c.users, c.procs) {
            let x = c.round.rate / otp.round.rate;
            verdict(
                x >= 0.5,
                format!(
                    "{} users, P={}: fleet on PostgreSQL {x:.3}x standalone pam_otp (target >= 0.5x)",
                    c.users, c.procs
                ),
            );
        }
        verdict(
            c.round.p99 <= 10.0,
            format!(
                "{} users, P={}: fleet on PostgreSQL p99 {:.3} ms (target <= 10 ms)",
                c.users, c.procs, c.round.p99
            ),
        );
    }
    let mut otp_modules: Vec<Module> =
        cells.iter().map(|c| c.module).filter(|m| matches!(m, Module::Otp | Module::Fleet(_))).collect();
    otp_modules.dedup();
    otp_modules.sort_by_key(|m| m.name());
    otp_modules.dedup();
    for m in otp_modules {
        let rejected: usize = cells.iter().filter(|c| c.module == m).map(|c| c.round.rejected).sum();
        let replays: usize = cells.iter().filter(|c| c.module == m).filter_map(|c| c.round.replays_accepted).sum();
        verdict(rejected == 0, format!("{} valid logins wrongly rejected: {rejected} (target 0)", m.name()));
        verdict(replays == 0, format!("{} replays accepted: {replays} (target 0)", m.name()));
    }
    let users: Vec<usize> = {
        let mut u: Vec<usize> = cells.iter().map(|c| c.users).collect();
        u.sort_unstable();
        u.dedup();
        u
    };
    if let (Some(&small), Some(&big)) = (users.first(), users.last()) {
        if small != big {
            for &p in cells.iter().map(|c| c.procs).collect::<std::collections::BTreeSet<_>>().iter() {
                if let (Some(a), Some(b)) = (otp(small, p), otp(big, p)) {
                    let raw = b.round.rate / a.round.rate;
                    let norm = (b.round.rate / b.permit.rate) / (a.round.rate / a.permit.rate);
                    verdict(
                        raw >= 0.9 || norm >= 0.9,
                        format!(
                            "P={p}: {big}-user rate / {small}-user rate = {raw:.2} (vs pam_permit of the same run: {norm:.2}; target >= 0.9)"
                        ),
                    );
                }
            }
            if let Some(rss) = otp(big, max_procs).and_then(|c| c.rss_kb.first().map(|r| r.1)) {
                verdict(
                    rss <= 30 * 1024,
                    format!("otpd resident memory with {big} users: {:.1} MB (target <= 30 MB)", rss as f64 / 1024.0),
                );
            }
        }
    }
}

fn random_secret() -> Vec<u8> {
    let mut s = vec![0u8; 20];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut s);
    }
    s
}

fn data_encoding_base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0);
    for &b in bytes {
        buf = (buf << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            out.push(ALPHABET[((buf >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// `name base32secret` lines, what the workers read.
fn write_users(path: &Path, secrets: &[(String, Vec<u8>)]) -> PathBuf {
    let text: Vec<String> = secrets.iter().map(|(n, s)| format!("{n} {}", data_encoding_base32(s))).collect();
    std::fs::write(path, text.join("\n")).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path.to_path_buf()
}

/// Enables every user through the admin socket from 16 connections at once;
/// returns `name base32secret` lines in the order given.
fn enroll(admin: &Path, names: &[String]) -> Vec<String> {
    let threads = 16;
    let chunk = names.len().div_ceil(threads).max(1);
    let lines: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|user| {
                            let mut c = Client::connect(admin, Duration::from_secs(60), &[0])
                                .unwrap_or_else(|e| panic!("admin socket: {e}"));
                            let req =
                                AdminRequest::UserEnable { user: user.clone(), method: Method::Totp, email: None };
                            match c.call(&req) {
                                Ok(AdminResponse::Enrolled { otpauth_uri: Some(uri), .. }) => {
                                    let secret =
                                        uri.split("secret=").nth(1).unwrap_or("").split('&').next().unwrap_or("");
                                    format!("{user} {secret}")
                                }
                                other => panic!("enabling {user}: {other:?}"),
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    assert_eq!(lines.len(), names.len(), "enrolling users failed");
    lines
}

/// What a pam_otp module's rounds talk to; stopped on drop.
enum Daemons {
    Standalone(Otpd),
    Fleet(Fleet),
}

impl Daemons {
    fn rss_kb(&self) -> Vec<(&'static str, u64)> {
        match self {
            Daemons::Standalone(d) => vec![("otpd", d.rss_kb())],
            Daemons::Fleet(f) => vec![("server", f.server.rss_kb()), ("agent", f.agent.rss_kb())],
        }
    }

    /// CPU time used so far (user + system, clock ticks) by this module's
    /// daemons: otpd; a fleet's server, agent and PostgreSQL (the
    /// postmaster and its backends).
    fn cpu_ticks(&self) -> Vec<(&'static str, u64)> {
        match self {
            Daemons::Standalone(d) => vec![("otpd", cpu_ticks(&d.child.id().to_string()))],
            Daemons::Fleet(f) => {
                let mut v = vec![
                    ("server", cpu_ticks(&f.server.child.id().to_string())),
                    ("agent", cpu_ticks(&f.agent.child.id().to_string())),
                ];
                if let Some(pg) = &f.pg {
                    let pids = pg.pids().unwrap_or_else(|e| panic!("PostgreSQL's processes: {e}"));
                    v.push(("PostgreSQL", pids.iter().map(|p| cpu_ticks(p)).sum()));
                }
                v
            }
        }
    }

    /// The logs of this module's daemons (a fleet: server and agent).
    fn logs(&self) -> Vec<String> {
        let read = |d: &Otpd| std::fs::read_to_string(d.dir.join("otpd.log")).unwrap_or_default();
        match self {
            Daemons::Standalone(d) => vec![read(d)],
            Daemons::Fleet(f) => vec![read(&f.server), read(&f.agent)],
        }
    }
}

/// Fields drop in order: the agent, the server, then its database.
struct Fleet {
    agent: Otpd,
    server: Otpd,
    pg: Option<e2e::pg::Cluster>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A private otpd in a temp dir, stopped on drop.
struct Otpd {
    child: Child,
    dir: PathBuf,
    pam_socket: PathBuf,
    admin_socket: PathBuf,
}

impl Otpd {
    fn start(bin: &Path, dir: &Path) -> Otpd {
        Otpd::start_with(bin, dir, "")
    }

    fn start_with(bin: &Path, dir: &Path, extra: &str) -> Otpd {
        Otpd::launch(bin, dir, "", None, extra)
    }

    /// A standalone otpd or a fleet server (`top` holds `role = ...`), on
    /// SQLite in `dir` or on the PostgreSQL `database`.
    fn launch(bin: &Path, dir: &Path, top: &str, database: Option<String>, extra: &str) -> Otpd {
        std::fs::create_dir_all(dir.join("state")).ok();
        let pam_socket = dir.join("run/pam.sock");
        let admin_socket = dir.join("run/admin.sock");
        let database = database.unwrap_or_else(|| format!("{}/state/otpd.db", dir.display()));
        let config = format!(
            "{top}[daemon]\npam_socket = \"{}\"\nadmin_socket = \"{}\"\ndatabase = \"{database}\"\n\
             key_file = \"{d}/state/secret.key\"\ndbus = false\n{extra}",
            pam_socket.display(),
            admin_socket.display(),
            d = dir.display()
        );
        Otpd::spawn(bin, dir, &config, &[&admin_socket, &pam_socket], pam_socket.clone(), admin_socket.clone())
    }

    /// An agent: only a PAM socket, relayed to `server` with `bundle`.
    fn agent(bin: &Path, dir: &Path, server: &str, bundle: &Path) -> Otpd {
        std::fs::create_dir_all(dir).ok();
        let pam_socket = dir.join("run/pam.sock");
        let config = format!(
            "role = \"agent\"\n[daemon]\npam_socket = \"{}\"\ndbus = false\n\
             [fleet]\nservers = [\"{server}\"]\nbundle = \"{}\"\nspool = \"{}\"\n",
            pam_socket.display(),
            bundle.display(),
            dir.join("audit-spool.json").display()
        );
        Otpd::spawn(bin, dir, &config, &[&pam_socket], pam_socket.clone(), PathBuf::new())
    }

    fn spawn(
        bin: &Path,
        dir: &Path,
        config: &str,
        sockets: &[&Path],
        pam_socket: PathBuf,
        admin_socket: PathBuf,
    ) -> Otpd {
        let path = dir.join("otpd.toml");
        std::fs::write(&path, config).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Logged as a system service would be: default level, to a file.
        let log_path = dir.join("otpd.log");
        let log = std::fs::File::create(&log_path).unwrap_or_else(|e| panic!("otpd log: {e}"));
        let mut child = Command::new(bin.join("otpd"))
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.join("otpd").display()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sockets.iter().all(|s| s.exists()) {
            if Instant::now() >= deadline || matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("otpd did not start ({}):\n{log}", path.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Otpd { child, dir: dir.to_path_buf(), pam_socket, admin_socket }
    }

    fn rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }
}

impl Drop for Otpd {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// --worker SERVICE CONFDIR USERS FIRST NUSERS COUNT OFFSET|email
///
/// Loads users `FIRST..FIRST+NUSERS`, computes their codes for the current
/// step + OFFSET, prints "ready", waits for "go" on stdin, then makes COUNT
/// logins (cycling through the users) and prints one latency line per login.
fn worker(args: &[String]) {
    let get = |i: usize| args.get(i).cloned().unwrap_or_default();
    let (service, confdir, users) = (get(2), get(3), get(4));
    let first: usize = get(5).parse().unwrap_or(0);
    let n_users: usize = get(6).parse().unwrap_or(0);
    let count: usize = get(7).parse().unwrap_or(0);
    let file = std::fs::File::open(&users).unwrap_or_else(|e| panic!("{users}: {e}"));
    let lines: Vec<String> =
        std::io::BufReader::new(file).lines().map_while(Result::ok).skip(first).take(n_users).collect();
    if get(8) == "email" {
        return email_worker(&confdir, &service, &lines, &users);
    }
    let offset: i64 = get(8).parse().unwrap_or(0);
    let logins: Vec<(String, totp_rs::TOTP)> = lines
        .iter()
        .map(|l| {
            let (user, secret) = l.split_once(' ').unwrap_or_default();
            (user.to_string(), totp_for(secret))
        })
        .collect();
    // Codes are computed at each login (an HMAC, the same for every module)
    // so a step boundary during a round never makes a prepared code stale.
    // The step is read once per login: the code and the step recorded for
    // the next round's replay bookkeeping must be the same one.
    let code = |totp: &totp_rs::TOTP, step: i64| totp.generate((step * PERIOD as i64).max(0) as u64);
    let mut out = std::io::BufWriter::new(std::io::stdout());
    writeln!(out, "ready").ok();
    out.flush().ok();
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).ok();
    let mut rejected = 0;
    writeln!(out, "start {}", now_us()).ok();
    let mut first_login = None;
    let mut max_step = i64::MIN / 2;
    for (user, totp) in logins.iter().cycle().take(count) {
        let t = Instant::now();
        let step = (unix_now() / PERIOD) as i64 + offset;
        max_step = max_step.max(step);
        let code = code(totp, step);
        let login =
            e2e::authenticate(Some(&confdir), &service, user, vec![code.clone().into_bytes()], None, None, false);
        if login.code == 0 {
            first_login.get_or_insert((user, code));
        }
        writeln!(out, "lat {}", t.elapsed().as_micros()).ok();
        if login.code != 0 {
            rejected += 1;
            writeln!(out, "failed {user}").ok();
        }
    }
    writeln!(out, "end {}", now_us()).ok();
    writeln!(out, "rejected {rejected}").ok();
    writeln!(out, "maxstep {max_step}").ok();
    // One replay per worker, outside the timed part: a code that was
    // accepted must be refused the second time.
    if service != "permit" && offset >= 0 {
        if let Some((user, code)) = first_login {
            let again = e2e::authenticate(Some(&confdir), &service, user, vec![code.into_bytes()], None, None, false);
            writeln!(out, "replays_accepted {}", usize::from(again.code == 0)).ok();
        }
    }
}

/// RFC 6238 SHA1, 6 digits, 30 s (what every module here is set up for).
fn totp_for(secret_b32: &str) -> totp_rs::TOTP {
    let uri = format!("otpauth://totp/bench:x?secret={secret_b32}&issuer=bench");
    totp_rs::TOTP::from_url_unchecked(&uri).unwrap_or_else(|e| panic!("secret {secret_b32}: {e}"))
}

/// Presses Enter once per user (the request), then has no more answers, as a
/// user who will type the code in a later login.
fn email_worker(confdir: &str, service: &str, lines: &[String], users: &str) {
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut starts = String::new();
    writeln!(out, "start {}", now_us()).ok();
    for line in lines {
        let user = line.split(' ').next().unwrap_or_default();
        let t0 = now_us();
        let t = Instant::now();
        let login = e2e::authenticate(Some(confdir), service, user, vec![Vec::new()], None, None, false);
        writeln!(out, "lat {}", t.elapsed().as_micros()).ok();
        if !login.transcript.contains("A code was sent") {
            writeln!(out, "rejected 1").ok();
        }
        starts.push_str(&format!("{user} {t0}\n"));
    }
    writeln!(out, "end {}", now_us()).ok();
    let path = Path::new(users).with_file_name("email-starts");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = f.write_all(starts.as_bytes());
    }
}
