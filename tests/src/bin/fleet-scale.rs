//! fleet-scale: one fleet server and N hosts' idle agent links (issue 21).
//!
//! ```text
//! fleet-scale [--hosts 10000] [--sample 50] [--baseline 10] [--logins 400]
//!             [--users 1000] [--concurrency 64] [--store sqlite|postgres]
//!             [--bin DIR] [--report FILE]
//! ```
//!
//! Runs as root, in a temp dir, on loopback only. The server is the real
//! otpd (`role = "server"`, started with a soft open-files limit of 1024
//! as systemd gives it; it raises its own). The N hosts are N real agents
//! ([`otpd::fleet::agent::Agent`], the code an agent daemon runs) in this
//! process, each with its own certificate from `otpctl host add`'s admin
//! request and its own source address (127.1.x.y: hosts of a fleet come
//! from addresses of their own, and the server's admission counts per
//! address and prefix). Measured, in this order:
//!
//! 1. server RSS and descriptors with no link;
//! 2. certificates issued per second (HostAdd over the admin socket);
//! 3. logins through `--baseline` hosts while only they have links;
//! 4. all N hosts link and stay idle: handshakes per second, server CPU
//!    per handshake, RSS and descriptors per link;
//! 5. the same logins through the same hosts with N idle links: ratios
//!    against 3;
//! 6. the server is stopped (SIGTERM) and started again while `--sample`
//!    hosts log in once a second each; the agents see their links close
//!    and make new ones with their reconnect policy (random wait, doubling
//!    on failure): time until all N are back, logins refused, and the
//!    latency of the logins made until then.
//!
//! Prints a table and writes the figures as JSON to `--report`.
use common::client::Client;
use common::codec::FrameError;
use common::proto::{AdminRequest, AdminResponse, ClientMsg, Method, OutcomeKind, Relay, ServerMsg, PROTOCOL_VERSION};
use otpd::fleet::agent::{reconnect_delay, Agent, Asker, Settings, RECONNECT_FIRST};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    match args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)) {
        Some(v) => v.parse().unwrap_or_else(|_| panic!("{name} {v}: not a valid value")),
        None => default,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opts = Opts {
        reconnect_first: Duration::from_secs(arg(&args, "--reconnect-first", RECONNECT_FIRST.as_secs())),
        hosts: arg(&args, "--hosts", 10_000usize),
        sample: arg(&args, "--sample", 50usize),
        baseline: arg(&args, "--baseline", 10usize),
        logins: arg(&args, "--logins", 400usize),
        users: arg(&args, "--users", 1000usize),
        concurrency: arg(&args, "--concurrency", 64usize),
        store: arg(&args, "--store", "sqlite".to_string()),
        bin: arg(&args, "--bin", default_bin()),
        report: args.iter().position(|a| a == "--report").and_then(|i| args.get(i + 1)).map(PathBuf::from),
    };
    assert!(
        opts.baseline >= 1 && opts.baseline <= opts.sample && opts.sample <= opts.hosts,
        "need 1 <= baseline <= sample <= hosts"
    );
    assert!(opts.hosts <= 60_000, "at most 60,000 hosts (source addresses 127.1.0.1 to 127.1.239.250)");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let report = rt.block_on(run(&opts));
    print_report(&opts, &report);
    let json = serde_json::to_string_pretty(&report).expect("report as JSON");
    if let Some(path) = &opts.report {
        std::fs::write(path, &json).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    // The agents' tasks end with the runtime; the server was stopped.
    rt.shutdown_timeout(Duration::from_secs(1));
}

struct Opts {
    hosts: usize,
    sample: usize,
    baseline: usize,
    logins: usize,
    users: usize,
    concurrency: usize,
    store: String,
    bin: PathBuf,
    report: Option<PathBuf>,
    /// The agents' first reconnect window after a server restart.
    reconnect_first: Duration,
}

fn default_bin() -> PathBuf {
    std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default()
}

/// Host `i`'s source address: 250 hosts per /24, from 127.1.0.1.
fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (1 + i % 250) as u8))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// ------------------------------------------------------------------ the server

struct Server {
    child: Option<Child>,
    dir: PathBuf,
    config: PathBuf,
    admin_socket: PathBuf,
    port: u16,
    /// The open-files hard limit it starts with (the unit's LimitNOFILE):
    /// this process's own (raising it needs CAP_SYS_RESOURCE).
    fd_hard: u64,
}

impl Server {
    fn new(bin: &Path, dir: &Path, database: Option<String>, hosts: usize) -> Server {
        std::fs::create_dir_all(dir.join("state")).expect("server dir");
        let port = free_port();
        let admin_socket = dir.join("run/admin.sock");
        let database = database.unwrap_or_else(|| format!("{}/state/otpd.db", dir.display()));
        // Room for every host's link and for the logins' links.
        let max_links = hosts + 1024;
        let config = format!(
            "role = \"server\"\n[daemon]\npam_socket = \"{d}/run/pam.sock\"\nadmin_socket = \"{}\"\n\
             database = \"{database}\"\nkey_file = \"{d}/state/secret.key\"\ndbus = false\n\
             [fleet]\nlisten = [\"127.0.0.1:{port}\"]\nnames = [\"127.0.0.1\"]\nmax_links = {max_links}\n",
            admin_socket.display(),
            d = dir.display()
        );
        let path = dir.join("otpd.toml");
        std::fs::write(&path, config).expect("otpd.toml");
        let mut s =
            Server { child: None, dir: dir.to_path_buf(), config: path, admin_socket, port, fd_hard: fd_hard_limit() };
        s.start(bin);
        s
    }

    fn start(&mut self, bin: &Path) {
        let _ = std::fs::remove_file(&self.admin_socket);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("otpd.log")).expect("log");
        let hard = self.fd_hard;
        let mut cmd = Command::new(bin.join("otpd"));
        cmd.arg("--config").arg(&self.config).stdout(Stdio::null()).stderr(log);
        // As systemd starts it: soft limit 1024, the hard one from the unit.
        // SAFETY: setrlimit is async-signal-safe; nothing else runs here.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit { rlim_cur: 1024, rlim_max: hard };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.join("otpd").display()));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.admin_socket.exists() {
            if Instant::now() >= deadline || matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "otpd did not start:\n{}",
                    std::fs::read_to_string(self.dir.join("otpd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.child = Some(child);
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, and wait until it is gone.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    fn rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    /// User + system CPU time so far, in milliseconds.
    fn cpu_ms(&self) -> f64 {
        let f = e2e::proc_stat(&self.pid().to_string());
        let ticks: u64 = [11, 12].iter().filter_map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok())).sum();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        ticks as f64 * 1000.0 / hz
    }

    fn admin(&self, req: &AdminRequest) -> AdminResponse {
        let mut c = Client::connect(&self.admin_socket, Duration::from_secs(60), &[0])
            .unwrap_or_else(|e| panic!("admin socket: {e}"))
            .for_admin_responses();
        c.call(req).unwrap_or_else(|e| panic!("admin request: {e}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fd_hard_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit into a local.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_max
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// This process holds a socket per host: its soft limit up to what it needs
/// (root may raise the hard one too).
fn raise_own_fd_limit(need: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on this process.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let hard = lim.rlim_max.max(need);
        let want = libc::rlimit { rlim_cur: hard, rlim_max: hard };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            let soft = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    assert!(lim.rlim_cur >= need, "open files limit {} < {need}: run as root", lim.rlim_cur);
}

// ------------------------------------------------------------------ users and logins

/// Enrolled users and the last time step each one's code was used: a code
/// is single use, so a login takes a user whose step is free.
struct Users {
    names: Vec<String>,
    totp: Vec<totp_rs::TOTP>,
    last_step: Vec<AtomicI64>,
    next: AtomicUsize,
}

impl Users {
    /// A user and a code nobody used: the current step's, or the next one's
    /// (inside the server's window) when this user already used the current.
    fn take(&self) -> (usize, String) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.names.len();
            let now = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
                / 30) as i64;
            let last = self.last_step[i].load(Ordering::Relaxed);
            let step = if last < now {
                now
            } else if last == now {
                now + 1
            } else {
                continue;
            };
            if self.last_step[i].compare_exchange(last, step, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                return (i, self.totp[i].generate((step * 30).max(0) as u64));
            }
        }
    }
}

static DENIALS_SHOWN: AtomicUsize = AtomicUsize::new(0);

/// The user at the login prompt: answers every prompt with the code.
struct Scripted {
    code: String,
    pending: Option<ClientMsg>,
    outcome: Option<OutcomeKind>,
    /// The server went away in the middle.
    cut: bool,
}

impl Asker for Scripted {
    async fn tell(&mut self, msg: &ServerMsg) -> Result<(), FrameError> {
        match msg {
            ServerMsg::Prompt { .. } => self.pending = Some(ClientMsg::Answer { text: self.code.clone() }),
            ServerMsg::ResolveUser => self.pending = Some(ClientMsg::UserResolved { uid: None }),
            // What the agent tells PAM when the server went away mid-conversation.
            ServerMsg::Outcome { message: Some(m), .. } if m == "Passcode check unavailable." => self.cut = true,
            ServerMsg::Outcome { result, message } => {
                self.outcome = Some(*result);
                if *result != OutcomeKind::Accept && DENIALS_SHOWN.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("login denied: {result:?} {message:?}");
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn answer(&mut self) -> Result<ClientMsg, FrameError> {
        self.pending.take().ok_or(FrameError::Closed)
    }
}

/// One login of a user, as sshd on the agent's host would start it.
/// Ok(true): accepted; Ok(false): the server said no; Err: no server.
async fn login(agent: &Arc<Agent>, users: &Users) -> Result<bool, ()> {
    let (i, code) = users.take();
    let relay = Relay { peer_uid: 0, pid: None, caller: Some(0), account: None, reply_within_ms: Some(9_000) };
    let first = ClientMsg::Begin {
        protocol: PROTOCOL_VERSION,
        user: users.names[i].clone(),
        service: "sshd".into(),
        rhost: None,
        ruser: None,
        tty: None,
        pid: 1,
        uid: None,
        qr: Default::default(),
    };
    let mut user = Scripted { code, pending: None, outcome: None, cut: false };
    match agent.converse(&relay, &first, &mut user).await {
        Err(_) => Err(()),
        Ok(()) if user.cut => Err(()),
        Ok(()) => Ok(user.outcome == Some(OutcomeKind::Accept)),
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct Logins {
    logins: usize,
    accepted: usize,
    /// The server said no (a code or user problem: must be 0).
    denied: usize,
    /// No server took the conversation ("Passcode check unavailable").
    unavailable: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Logins {
    fn of(results: &[(f64, Result<bool, ()>)]) -> Logins {
        let mut lat: Vec<f64> = results.iter().map(|(ms, _)| *ms).collect();
        lat.sort_by(f64::total_cmp);
        Logins {
            logins: results.len(),
            accepted: results.iter().filter(|(_, r)| *r == Ok(true)).count(),
            denied: results.iter().filter(|(_, r)| *r == Ok(false)).count(),
            unavailable: results.iter().filter(|(_, r)| r.is_err()).count(),
            p50_ms: percentile(&lat, 0.50),
            p99_ms: percentile(&lat, 0.99),
            max_ms: lat.last().copied().unwrap_or(0.0),
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// `count` logins through `agents`, one loop per agent.
async fn login_round(agents: &[Arc<Agent>], users: &Arc<Users>, count: usize) -> Logins {
    let mut tasks = Vec::new();
    for (k, a) in agents.iter().enumerate() {
        let per = count / agents.len() + usize::from(k < count % agents.len());
        let (a, users) = (a.clone(), users.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..per {
                let t = Instant::now();
                let r = login(&a, &users).await;
                out.push((t.elapsed().as_secs_f64() * 1000.0, r));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    Logins::of(&all)
}

// ------------------------------------------------------------------ the run

#[derive(Default, serde::Serialize)]
struct Report {
    hosts: usize,
    store: String,
    load_average_at_start: String,
    issue_seconds: f64,
    issued_per_s: f64,
    users: usize,
    server_fd_limit_soft: u64,
    rss_kb_no_links: u64,
    fds_no_links: usize,
    baseline_links: usize,
    baseline: Logins,
    fill_seconds: f64,
    handshakes_per_s: f64,
    fill_retries: usize,
    server_cpu_ms_per_handshake: f64,
    idle_links: usize,
    rss_kb_idle: u64,
    fds_idle: usize,
    rss_kb_per_link: f64,
    fds_per_link: f64,
    through_idle_fleet: Logins,
    p50_ratio_idle_vs_baseline: f64,
    p99_ratio_idle_vs_baseline: f64,
    restart: Restart,
}

#[derive(Default, serde::Serialize)]
struct Restart {
    /// SIGTERM until the old process is gone.
    stop_seconds: f64,
    /// Start until the admin socket is there (the fleet port listens before).
    start_seconds: f64,
    /// Server ready until every host has a link again.
    reconnect_all_seconds: f64,
    /// SIGTERM until every host has a link again.
    reconnect_all_from_stop_seconds: f64,
    reconnected: usize,
    /// Sample hosts' logins, one a second each, from 3 s before the stop
    /// until 3 s after the last host is back.
    storm: Logins,
    /// Of those: refused because the server was down (started before it was ready).
    unavailable_while_down: usize,
    /// Refused although started after the server was ready.
    unavailable_after_ready: usize,
    /// How long after the server was ready the last refused login started (0: none).
    last_refusal_after_ready_seconds: f64,
    /// The logins started after the server was ready and before every host was back.
    during_reconnect: Logins,
    rss_kb_after: u64,
    fds_after: usize,
}

async fn run(o: &Opts) -> Report {
    raise_own_fd_limit(o.hosts as u64 + 2048);
    let load =
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').take(3).collect::<Vec<_>>().join(" ");
    let dir = std::env::temp_dir().join(format!("fleet-scale.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cleanup = Cleanup(dir.clone());
    let pg = match o.store.as_str() {
        "sqlite" => None,
        "postgres" => Some(e2e::pg::Cluster::start().unwrap_or_else(|e| panic!("PostgreSQL: {e}"))),
        other => panic!("--store {other}: sqlite or postgres"),
    };
    let server = Arc::new(Mutex::new(Server::new(&o.bin, &dir.join("server"), pg.as_ref().map(|c| c.url()), o.hosts)));
    let mut r = Report { hosts: o.hosts, store: o.store.clone(), load_average_at_start: load, ..Report::default() };
    let pid = server.lock().expect("server").pid();
    r.server_fd_limit_soft = fd_soft_limit(pid);
    eprintln!(
        "server pid {pid}, port {}, open files limit {}",
        server.lock().expect("server").port,
        r.server_fd_limit_soft
    );

    // Certificates, through the admin request `otpctl host add` sends.
    let names: Vec<String> = (0..o.hosts).map(|i| format!("h{i:05}")).collect();
    let t = Instant::now();
    let bundles = issue(&server, &names);
    r.issue_seconds = secs(t.elapsed());
    r.issued_per_s = o.hosts as f64 / r.issue_seconds;
    eprintln!("issued {} certificates in {:.1} s ({:.0}/s)", o.hosts, r.issue_seconds, r.issued_per_s);
    let port = server.lock().expect("server").port;
    let agents: Vec<Arc<Agent>> = bundles
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let settings = Settings {
                host: None,
                servers: vec![format!("127.0.0.1:{port}")],
                connect_timeout: Duration::from_secs(2),
                io_timeout: Duration::from_secs(5),
                prompt_timeout: Duration::from_secs(30),
                max_connections: 64,
                max_per_uid: 16,
                source: Some(source(i)),
                reconnect_first: o.reconnect_first,
            };
            Agent::new(settings, b).unwrap_or_else(|e| panic!("agent {i}: {e}"))
        })
        .collect();
    drop(bundles);

    // Users, enabled on the server and activated by a first login.
    let users = Arc::new(enable_users(&server, o.users));
    r.users = o.users;
    tokio::time::sleep(Duration::from_secs(1)).await;
    {
        let s = server.lock().expect("server");
        (r.rss_kb_no_links, r.fds_no_links) = (s.rss_kb(), s.fds());
    }
    let base = &agents[..o.baseline];
    let activated = login_round(base, &users, o.users).await;
    assert_eq!(activated.accepted, o.users, "activating the users failed: {activated:?}");
    r.baseline_links = base.iter().map(|a| a.idle_links()).sum();
    r.baseline = login_round(base, &users, o.logins).await;
    eprintln!("baseline ({} links): {:?}", r.baseline_links, r.baseline);

    // Every host links and stays idle.
    let cpu0 = server.lock().expect("server").cpu_ms();
    let t = Instant::now();
    r.fill_retries = fill(&agents[o.baseline..], o.concurrency).await;
    r.fill_seconds = secs(t.elapsed());
    let filled = o.hosts - o.baseline;
    r.handshakes_per_s = filled as f64 / r.fill_seconds;
    r.server_cpu_ms_per_handshake = (server.lock().expect("server").cpu_ms() - cpu0) / filled.max(1) as f64;
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.idle_links = agents.iter().map(|a| a.idle_links()).sum();
    {
        let s = server.lock().expect("server");
        (r.rss_kb_idle, r.fds_idle) = (s.rss_kb(), s.fds());
    }
    r.rss_kb_per_link = (r.rss_kb_idle as f64 - r.rss_kb_no_links as f64) / r.idle_links.max(1) as f64;
    r.fds_per_link = (r.fds_idle as f64 - r.fds_no_links as f64) / r.idle_links.max(1) as f64;
    eprintln!(
        "{} idle links in {:.1} s ({:.0}/s, {} retries): RSS {} kB, {} fds",
        r.idle_links, r.fill_seconds, r.handshakes_per_s, r.fill_retries, r.rss_kb_idle, r.fds_idle
    );
    r.through_idle_fleet = login_round(base, &users, o.logins).await;
    r.p50_ratio_idle_vs_baseline = r.through_idle_fleet.p50_ms / r.baseline.p50_ms.max(1e-9);
    r.p99_ratio_idle_vs_baseline = r.through_idle_fleet.p99_ms / r.baseline.p99_ms.max(1e-9);
    eprintln!("through the idle fleet: {:?}", r.through_idle_fleet);

    r.restart = restart(o, &server, &agents, &users).await;
    server.lock().expect("server").stop();
    drop(agents);
    drop(pg);
    drop(cleanup);
    r
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fd_soft_limit(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// One HostAdd per host over the admin socket, from 4 threads.
fn issue(server: &Arc<Mutex<Server>>, names: &[String]) -> Vec<otpd::fleet::pki::Bundle> {
    let admin = server.lock().expect("server").admin_socket.clone();
    let chunk = names.len().div_ceil(4).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = names
            .chunks(chunk)
            .map(|part| {
                let admin = admin.clone();
                s.spawn(move || {
                    part.iter()
                        .map(|name| {
                            let mut c = Client::connect(&admin, Duration::from_secs(60), &[0])
                                .unwrap_or_else(|e| panic!("admin socket: {e}"))
                                .for_admin_responses();
                            match c.call(&AdminRequest::HostAdd { name: name.clone(), admin: false }) {
                                Ok(AdminResponse::HostBundle { bundle, .. }) => {
                                    otpd::fleet::pki::Bundle::parse(&bundle)
                                        .unwrap_or_else(|e| panic!("bundle of {name}: {e}"))
                                }
                                other => panic!("host add {name}: {other:?}"),
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts.into_iter().flat_map(|h| h.join().expect("issuing thread")).collect()
    })
}

fn enable_users(server: &Arc<Mutex<Server>>, n: usize) -> Users {
    let s = server.lock().expect("server");
    let mut users = Users { names: Vec::new(), totp: Vec::new(), last_step: Vec::new(), next: AtomicUsize::new(0) };
    for i in 0..n {
        let user = format!("scale{i:05}");
        let req = AdminRequest::UserEnable { user: user.clone(), method: Method::Totp, email: None };
        let AdminResponse::Enrolled { otpauth_uri: Some(uri), .. } = s.admin(&req) else { panic!("enabling {user}") };
        let secret = uri.split("secret=").nth(1).unwrap_or("").split('&').next().unwrap_or("").to_string();
        let uri = format!("otpauth://totp/scale:x?secret={secret}&issuer=scale");
        users.totp.push(totp_rs::TOTP::from_url_unchecked(&uri).unwrap_or_else(|e| panic!("secret of {user}: {e}")));
        users.names.push(user);
        users.last_step.push(AtomicI64::new(i64::MIN / 2));
    }
    users
}

/// Every agent makes its idle link, `concurrency` at a time; a refused or
/// failed attempt is made again after the agent's reconnect wait. Returns
/// the number of attempts made again.
async fn fill(agents: &[Arc<Agent>], concurrency: usize) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let agents: Arc<Vec<Arc<Agent>>> = Arc::new(agents.to_vec());
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (next, retries, agents) = (next.clone(), retries.clone(), agents.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(a) = agents.get(i) else { return };
                let mut attempt = 0;
                while let Err(e) = a.connect_idle().await {
                    if attempt == 0 && retries.load(Ordering::Relaxed) < 3 {
                        eprintln!("{}: {e} (trying again)", a.host());
                    }
                    retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(reconnect_delay(RECONNECT_FIRST, attempt, rand_unit())).await;
                    attempt += 1;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    retries.load(Ordering::Relaxed)
}

fn rand_unit() -> f64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Stops and starts the server while sample hosts log in once a second.
async fn restart(o: &Opts, server: &Arc<Mutex<Server>>, agents: &[Arc<Agent>], users: &Arc<Users>) -> Restart {
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Arc<Vec<AtomicBool>> = Arc::new((0..o.sample).map(|_| AtomicBool::new(false)).collect());
    let results = Arc::new(Mutex::new(Vec::<(f64, f64, Result<bool, ()>)>::new()));
    let mut loops = Vec::new();
    for (k, a) in agents[..o.sample].iter().enumerate() {
        let (a, users, stop, busy, results) = (a.clone(), users.clone(), stop.clone(), busy.clone(), results.clone());
        loops.push(tokio::spawn(async move {
            // Spread over the second.
            tokio::time::sleep(Duration::from_secs_f64(rand_unit())).await;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                busy[k].store(true, Ordering::Relaxed);
                let r = login(&a, &users).await;
                busy[k].store(false, Ordering::Relaxed);
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                if ms > 2000.0 {
                    eprintln!(
                        "{}: a login started {:.2} s into the restart phase took {ms:.0} ms: {r:?}",
                        a.host(),
                        secs(started - t0)
                    );
                }
                results.lock().expect("results").push((secs(started - t0), ms, r));
                tokio::time::sleep(Duration::from_secs(1).saturating_sub(started.elapsed())).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut out = Restart::default();
    let stop_at = Instant::now();
    let s2 = server.clone();
    tokio::task::spawn_blocking(move || s2.lock().expect("server").stop()).await.expect("stop");
    out.stop_seconds = secs(stop_at.elapsed());
    // Every agent has seen its link close before the count starts.
    let start_at = Instant::now();
    let (s2, bin) = (server.clone(), o.bin.clone());
    tokio::task::spawn_blocking(move || s2.lock().expect("server").start(&bin)).await.expect("start");
    let ready = Instant::now();
    out.start_seconds = secs(ready - start_at);
    let back = |agents: &[Arc<Agent>]| {
        agents
            .iter()
            .enumerate()
            .filter(|(i, a)| a.idle_links() > 0 || (*i < o.sample && busy[*i].load(Ordering::Relaxed)))
            .count()
    };
    let limit = Instant::now() + Duration::from_secs(300);
    let mut all_back = None;
    while Instant::now() < limit {
        out.reconnected = back(agents);
        if out.reconnected == agents.len() {
            all_back = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_back = all_back.unwrap_or_else(Instant::now);
    out.reconnect_all_seconds = secs(all_back - ready);
    out.reconnect_all_from_stop_seconds = secs(all_back - stop_at);
    eprintln!(
        "restart: stop {:.2} s, start {:.2} s, {} of {} hosts back {:.1} s after the server was ready",
        out.stop_seconds,
        out.start_seconds,
        out.reconnected,
        agents.len(),
        out.reconnect_all_seconds
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        let _ = l.await;
    }
    {
        let s = server.lock().expect("server");
        (out.rss_kb_after, out.fds_after) = (s.rss_kb(), s.fds());
    }
    let results = results.lock().expect("results");
    let (ready_t, back_t) = (secs(ready - t0), secs(all_back - t0));
    let plain: Vec<(f64, Result<bool, ()>)> = results.iter().map(|(_, ms, r)| (*ms, *r)).collect();
    out.storm = Logins::of(&plain);
    out.unavailable_while_down = results.iter().filter(|(at, _, r)| *at < ready_t && r.is_err()).count();
    let late: Vec<f64> =
        results.iter().filter(|(at, _, r)| *at >= ready_t && r.is_err()).map(|(at, _, _)| at - ready_t).collect();
    out.unavailable_after_ready = late.len();
    out.last_refusal_after_ready_seconds = late.iter().copied().fold(0.0, f64::max);
    let during: Vec<(f64, Result<bool, ()>)> =
        results.iter().filter(|(at, _, _)| *at >= ready_t && *at <= back_t).map(|(_, ms, r)| (*ms, *r)).collect();
    out.during_reconnect = Logins::of(&during);
    out
}

fn print_report(o: &Opts, r: &Report) {
    println!(
        "== fleet scale: {} hosts, store {}, agents' first reconnect window {} s, load average at start {} ==",
        r.hosts,
        r.store,
        o.reconnect_first.as_secs(),
        r.load_average_at_start
    );
    println!("certificates issued (HostAdd over the admin socket): {:.1} s, {:.0}/s", r.issue_seconds, r.issued_per_s);
    println!("server open files limit (soft, raised by otpd): {}", r.server_fd_limit_soft);
    println!("server with no link:     RSS {:>7} kB, {:>6} fds", r.rss_kb_no_links, r.fds_no_links);
    println!(
        "server with {:>5} links: RSS {:>7} kB, {:>6} fds  -> {:.1} kB and {:.2} fds per idle link",
        r.idle_links, r.rss_kb_idle, r.fds_idle, r.rss_kb_per_link, r.fds_per_link
    );
    println!(
        "linking {} hosts: {:.1} s, {:.0} handshakes/s, server CPU {:.2} ms per handshake, {} attempts made again",
        r.hosts - o.baseline,
        r.fill_seconds,
        r.handshakes_per_s,
        r.server_cpu_ms_per_handshake,
        r.fill_retries
    );
    let row = |name: &str, l: &Logins| {
        println!(
            "{name:<34} {:>6} {:>6} {:>5} {:>5} {:>9.3} {:>9.3} {:>9.3}",
            l.logins, l.accepted, l.denied, l.unavailable, l.p50_ms, l.p99_ms, l.max_ms
        )
    };
    println!(
        "{:<34} {:>6} {:>6} {:>5} {:>5} {:>9} {:>9} {:>9}",
        "logins", "n", "acc", "deny", "unav", "p50 ms", "p99 ms", "max ms"
    );
    row(&format!("{} links (baseline)", r.baseline_links), &r.baseline);
    row(&format!("{} idle links", r.idle_links), &r.through_idle_fleet);
    row("restart: all storm logins", &r.restart.storm);
    row("restart: ready until all back", &r.restart.during_reconnect);
    println!("idle fleet / baseline: p50 {:.3}, p99 {:.3}", r.p50_ratio_idle_vs_baseline, r.p99_ratio_idle_vs_baseline);
    let s = &r.restart;
    println!(
        "restart: stop {:.2} s, start {:.2} s; {} of {} hosts back {:.1} s after ready ({:.1} s after SIGTERM)",
        s.stop_seconds,
        s.start_seconds,
        s.reconnected,
        r.hosts,
        s.reconnect_all_seconds,
        s.reconnect_all_from_stop_seconds
    );
    println!(
        "restart: logins refused while down {}, after ready {} (last {:.2} s after ready); server RSS {} kB, {} fds after",
        s.unavailable_while_down, s.unavailable_after_ready, s.last_refusal_after_ready_seconds, s.rss_kb_after, s.fds_after
    );
}
