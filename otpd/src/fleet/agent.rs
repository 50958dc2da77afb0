//! `role = "agent"`: this host's PAM socket, relayed to the fleet's servers.
//!
//! The agent keeps no secret, no code and no key: only its bundle (its TLS
//! identity). Every conversation is handed, message by message, to the
//! first server that answers, over a TLS 1.3 link authenticated both ways;
//! the server decides. When no server answers the login is refused (the
//! module's `fail=open` stays the only way around that, and it logs). What
//! the agent refuses by itself is kept in its audit spool until a server
//! takes it ([`crate::fleet::spool`]).
//! Idle links are kept for the next conversation: a handshake per login
//! would cost more than the login.
use crate::fleet::pki;
use crate::fleet::spool::Spool;
use crate::fleet::wire::Link;
use crate::lock;
use crate::sys::conn::{Conn, Listener};
use crate::sys::start::StartError;
use common::codec::{encode, FrameError, MAX_FRAME};
use common::config::Config;
use common::proto::{
    AgentFrame, CaCheck, CaCheckReply, ClientMsg, LinkHello, LinkReply, OutcomeKind, Relay, Renew, RenewReply,
    ServerMsg, SpoolAck, SpoolBatch, SpoolReason, PROTOCOL_VERSION,
};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

pub(super) type TlsLink = Link<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

struct Server {
    /// As configured ("host:port"), for messages.
    shown: String,
    host: String,
    port: u16,
    name: rustls::pki_types::ServerName<'static>,
}

/// An agent: its identity, its servers, its idle links. `run` makes one
/// from otpd.toml; the fleet-scale benchmark (tests/src/bin/fleet-scale.rs)
/// makes thousands in one process, so it measures this code and policy.
pub struct Agent {
    host: String,
    servers: Vec<Server>,
    /// This host's TLS identity: replaced when its certificate is renewed
    /// (see [`crate::fleet::renewal`]).
    connector: Mutex<tokio_rustls::TlsConnector>,
    /// The bundle in use, and the file it came from (a renewal rewrites it).
    pub(super) bundle: Mutex<pki::Bundle>,
    pub(super) bundle_path: std::path::PathBuf,
    /// The time certificates are checked against (debug builds: the test
    /// suite's clock).
    pub(super) clock: pki::TlsClock,
    connect_timeout: Duration,
    /// See [`Settings::reconnect_first`].
    reconnect_first: Duration,
    io_timeout: Duration,
    prompt_timeout: Duration,
    /// Idle links, newest last: each is held by a task that watches it
    /// (see [`Agent::put_back`]) and hands it over through its claim.
    idle: Mutex<Vec<Claim>>,
    /// A task is making a link again after a server closed an idle one.
    reconnecting: AtomicBool,
    /// The address links are made from (None: the system's choice).
    source: Option<IpAddr>,
    /// Per server: do not try it again before this (it just failed).
    down_until: Mutex<Vec<Option<Instant>>>,
    open: AtomicUsize,
    /// Conversations in progress started by users other than root (also
    /// through su/sudo): they may not take the links root's logins need.
    unprivileged: AtomicUsize,
    per_uid: Mutex<HashMap<u32, usize>>,
    max_connections: usize,
    max_per_uid: usize,
    last_warning: Mutex<HashMap<String, i64>>,
    /// New links being made at once: a burst of logins waits for links
    /// made (or put back) by the others rather than starting hundreds of
    /// TLS handshakes that a server would refuse (it admits few at once
    /// from one address; see crate::fleet::admission).
    dials: tokio::sync::Semaphore,
    /// What this agent refused by itself, until a server takes it (None:
    /// the benchmark's agents, which keep nothing).
    spool: Option<Arc<Spool>>,
}

/// Links being made at once.
const MAX_DIALS: usize = 16;

/// How an idle link is asked for: the task holding it sends it back.
type Claim = tokio::sync::oneshot::Sender<tokio::sync::oneshot::Sender<TlsLink>>;

/// After a server closed this agent's idle link (it restarted or stopped),
/// the first new link is made within this window, chosen at random: a
/// restarted server does not meet all its hosts in the same second. 10 s:
/// 10,000 hosts ask ~1,000 handshakes a second, which a server's login
/// thread takes beside the logins even on a loaded machine; 5 s did not
/// (docs/BENCHMARKS.md "Fleet scale": storm logins p99 3–5 s).
pub const RECONNECT_FIRST: Duration = Duration::from_secs(10);
/// Each failed attempt doubles the window, up to this.
pub const RECONNECT_MAX: Duration = Duration::from_secs(60);
/// A link the server closed this long after it went idle was closed for
/// being idle (the server's own limit, minus a margin for clocks and
/// scheduling): not a server going away, so no new link is made for it.
const IDLE_CLOSE: Duration = Duration::from_secs(crate::fleet::wire::LINK_IDLE.as_secs() - 10);

/// How long to wait before reconnect attempt `attempt` (0 for the first):
/// a window of `first` ([`RECONNECT_FIRST`]) doubled per failed attempt, at most
/// [`RECONNECT_MAX`], and a point in it chosen by `unit` (uniform in
/// [0, 1): "full jitter"), so that the hosts of a fleet spread over the
/// whole window whatever their number.
pub fn reconnect_delay(first: Duration, attempt: u32, unit: f64) -> Duration {
    let window = first.saturating_mul(1u32 << attempt.min(16)).min(RECONNECT_MAX);
    let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.0 };
    window.mul_f64(unit)
}

/// What an agent needs besides its bundle: `run` reads it from otpd.toml.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The name this agent says it is (default: the bundle's).
    pub host: Option<String>,
    /// "host:port", tried in order.
    pub servers: Vec<String>,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub prompt_timeout: Duration,
    pub max_connections: usize,
    pub max_per_uid: usize,
    /// Make links from this address (a benchmark's many hosts on one machine).
    pub source: Option<IpAddr>,
    /// The first window of [`reconnect_delay`] ([`RECONNECT_FIRST`]).
    pub reconnect_first: Duration,
}

impl Settings {
    pub fn of(config: &Config) -> Settings {
        let (d, f) = (&config.daemon, &config.fleet);
        Settings {
            host: f.host.clone(),
            servers: f.servers.clone(),
            connect_timeout: f.connect_timeout,
            io_timeout: d.io_timeout,
            prompt_timeout: d.prompt_timeout,
            max_connections: d.max_connections,
            max_per_uid: d.max_connections_per_user,
            source: None,
            reconnect_first: RECONNECT_FIRST,
        }
    }
}

/// Why no link was made.
#[derive(Debug)]
struct DialError {
    /// The server answered and refused this host (revoked, unknown, too many links).
    refused: bool,
    why: String,
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// Idle links kept for later conversations.
const MAX_IDLE: usize = 64;
/// Conversations of users other than root relayed at once: a server takes
/// 256 links from one host, so logins started by root (sshd, login) keep
/// room however many users hold a prompt open.
const MAX_UNPRIVILEGED: usize = 128;
/// A server that failed is tried last for this long.
const DOWN_FOR: Duration = Duration::from_secs(10);
const UNAVAILABLE: &str = "Passcode check unavailable.";
/// How long a server's reply is waited for: below pam_otp's default
/// timeout, after which the module has given up; the server is told, and
/// decides nothing it could only decide later (a paused server).
const REPLY_WITHIN: Duration = Duration::from_secs(common::DEFAULT_MODULE_TIMEOUT_SECS - 1);
/// Finding a server for a new conversation: below pam_otp's default
/// timeout, so the module hears "unavailable" from us rather than timing out.
const OPEN_BUDGET: Duration = Duration::from_secs(common::DEFAULT_MODULE_TIMEOUT_SECS - 2);

fn fleet_error(e: impl std::fmt::Display) -> StartError {
    StartError::Fleet(e.to_string())
}

pub async fn run(config: Config) -> Result<(), StartError> {
    let (d, f) = (&config.daemon, &config.fleet);
    if let Some(dir) = d.pam_socket.parent() {
        crate::sys::trust::check_dir(dir, "socket")?;
    }
    crate::sys::trust::check_file(&f.bundle, "host bundle")?;
    let clock = pki::TlsClock::new(Arc::from(crate::sys::clock::configured()));
    // An expired certificate cannot renew itself: the message says what to do.
    let bundle = pki::Bundle::load_at(&f.bundle, clock.now())
        .map_err(|e| fleet_error(format!("{}: {e}", f.bundle.display())))?;
    let spool = Arc::new(Spool::open(&f.spool, f.spool_max, crate::sys::clock::configured())?);
    let agent = Agent::with(Settings::of(&config), bundle, f.bundle.clone(), clock, Some(spool.clone()))
        .map_err(fleet_error)?;
    let host = agent.host.clone();
    let pam = crate::sys::start::bind(&d.pam_socket, 0o666, None)?;
    let listener = Listener::new(pam)
        .map_err(|e| StartError::Socket { path: d.pam_socket.display().to_string(), why: e.to_string() })?;
    tracing::info!(
        "otpd {} agent for host {host} listening on {}, servers {}",
        env!("CARGO_PKG_VERSION"),
        d.pam_socket.display(),
        f.servers.join(", ")
    );
    crate::sys::start::notify_ready();
    let saving = tokio::spawn(crate::fleet::spool::keep_saved(spool.clone()));
    let delivering = {
        let agent = agent.clone();
        tokio::spawn(crate::fleet::spool::deliver(spool.clone(), move |batch| {
            let agent = agent.clone();
            async move { agent.send_spool(&batch).await }
        }))
    };
    let renewal = tokio::spawn(crate::fleet::renewal::keep_renewed(agent.clone(), f.renew_check));
    let serve = tokio::spawn(serve(listener, agent));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| StartError::Socket { path: "signal".into(), why: e.to_string() })?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    serve.abort();
    delivering.abort();
    saving.abort();
    renewal.abort();
    let _ = std::fs::remove_file(&d.pam_socket);
    if let Err(e) = spool.save() {
        tracing::error!("writing the audit spool {} failed: {e}", f.spool.display());
    }
    Ok(())
}

impl Agent {
    /// An agent with `bundle`'s identity; no link is made yet.
    /// An agent on the system clock that keeps no spool and never renews
    /// (the fleet-scale benchmark's many hosts in one process).
    pub fn new(settings: Settings, bundle: &pki::Bundle) -> Result<Arc<Agent>, String> {
        Agent::with(settings, bundle.clone(), std::path::PathBuf::new(), pki::TlsClock::system(), None)
    }

    /// The agent of `run`: its bundle (and the file a renewal rewrites),
    /// the clock certificates are checked against, its audit spool.
    pub(super) fn with(
        settings: Settings,
        bundle: pki::Bundle,
        bundle_path: std::path::PathBuf,
        clock: pki::TlsClock,
        spool: Option<Arc<Spool>>,
    ) -> Result<Arc<Agent>, String> {
        let host = settings.host.clone().unwrap_or_else(|| bundle.name.clone());
        let tls = pki::client_config_with(&bundle, &clock).map_err(|e| e.to_string())?;
        let mut servers = Vec::new();
        for s in &settings.servers {
            let Some((h, port)) = common::config::split_host_port(s) else {
                return Err(format!("fleet.servers: {s:?} is not host:port"));
            };
            let name = pki::server_name(h).map_err(|e| format!("fleet.servers: {s:?}: {e}"))?;
            servers.push(Server { shown: s.clone(), host: h.to_string(), port, name });
        }
        Ok(Arc::new(Agent {
            host,
            down_until: Mutex::new(vec![None; servers.len()]),
            servers,
            connector: Mutex::new(tokio_rustls::TlsConnector::from(tls)),
            bundle: Mutex::new(bundle),
            bundle_path,
            clock,
            connect_timeout: settings.connect_timeout,
            reconnect_first: settings.reconnect_first,
            io_timeout: settings.io_timeout,
            prompt_timeout: settings.prompt_timeout,
            idle: Mutex::new(Vec::new()),
            reconnecting: AtomicBool::new(false),
            source: settings.source,
            open: AtomicUsize::new(0),
            unprivileged: AtomicUsize::new(0),
            per_uid: Mutex::new(HashMap::new()),
            max_connections: settings.max_connections,
            max_per_uid: settings.max_per_uid,
            last_warning: Mutex::new(HashMap::new()),
            dials: tokio::sync::Semaphore::new(MAX_DIALS),
            spool,
        }))
    }

    /// Keeps a login this agent refused by itself in its spool (never
    /// anything typed: only the first message's who, where and when).
    fn spooled(&self, first: &ClientMsg, relay: &Relay, reason: SpoolReason) {
        if let Some(spool) = &self.spool {
            spool.refused(first, relay.peer_uid, relay.caller, relay.account.as_deref(), reason);
        }
    }

    /// This agent's host name, as it tells the servers.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Idle links that are still open.
    pub fn idle_links(&self) -> usize {
        lock(&self.idle).iter().filter(|c| !c.is_closed()).count()
    }

    /// Makes one link to the first server that answers and keeps it idle
    /// (what a login leaves behind).
    pub async fn connect_idle(self: &Arc<Self>) -> Result<(), String> {
        let link = self.dial_any().await.map_err(|e| e.why)?;
        self.put_back(link);
        Ok(())
    }

    /// At most one warning of a kind (its first words) a second: a dead
    /// server must not flood the log, nor one kind hide another.
    fn warn(&self, msg: &str) {
        let now = crate::sys::clock::Clock::now(&crate::sys::clock::SystemClock);
        let kind: String = msg.chars().take(24).collect();
        let mut last = lock(&self.last_warning);
        if last.len() > 64 {
            last.clear();
        }
        if last.insert(kind, now) != Some(now) {
            tracing::warn!("{msg}");
        }
    }

    fn take_slot(&self, uid: u32) -> bool {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max_connections {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        if uid != 0 {
            let mut per = lock(&self.per_uid);
            let n = per.entry(uid).or_insert(0);
            if *n >= self.max_per_uid {
                drop(per);
                self.open.fetch_sub(1, Ordering::Relaxed);
                return false;
            }
            *n += 1;
        }
        true
    }

    fn release(&self, uid: u32) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if uid != 0 {
            let mut per = lock(&self.per_uid);
            if let Some(n) = per.get_mut(&uid) {
                *n -= 1;
                if *n == 0 {
                    per.remove(&uid);
                }
            }
        }
    }

    /// Servers in the order to try: as configured, those that failed
    /// lately last.
    pub(super) fn order(&self) -> Vec<usize> {
        let now = Instant::now();
        let down = lock(&self.down_until);
        let (mut up, mut late): (Vec<usize>, Vec<usize>) =
            (0..self.servers.len()).partition(|&i| down[i].is_none_or(|t| t <= now));
        up.append(&mut late);
        up
    }

    fn mark(&self, i: usize, failed: bool) {
        lock(&self.down_until)[i] = failed.then(|| Instant::now() + DOWN_FOR);
    }

    /// A new link to server `i`: TCP, TLS, hello, ready — within connect_timeout.
    async fn dial(&self, i: usize) -> Result<TlsLink, DialError> {
        let s = &self.servers[i];
        let failed = |why: String| DialError { refused: false, why };
        let connector = lock(&self.connector).clone();
        let connect = async {
            let tcp = connect_tcp(&s.host, s.port, self.source).await.map_err(|e| failed(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let tls = connector.connect(s.name.clone(), tcp).await.map_err(|e| {
                // The server's certificate is of a CA this bundle does not trust.
                let hint = if e.to_string().contains("UnknownIssuer") {
                    " (this host's bundle does not trust the server's CA: if the fleet CA was retired before this \
                     host renewed, it needs a new bundle: `otpctl host add`)"
                } else {
                    ""
                };
                failed(format!("TLS: {e}{hint}"))
            })?;
            let mut link = Link::new(tls);
            let hello = LinkHello::Agent { protocol: PROTOCOL_VERSION, host: self.host.clone() };
            link.write(&hello, self.connect_timeout).await.map_err(|e| failed(e.to_string()))?;
            match link.read::<LinkReply>(self.connect_timeout, self.connect_timeout, MAX_FRAME).await {
                Ok(LinkReply::Ready { .. }) => Ok(link),
                Ok(LinkReply::Refused { reason }) => {
                    Err(DialError { refused: true, why: format!("refused: {reason}") })
                }
                // A server that refuses the handshake closes without a word.
                Err(e) => {
                    Err(failed(format!("no answer to hello: {e} (is this host's certificate valid for this fleet?)")))
                }
            }
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .unwrap_or_else(|_| {
                Err(failed(format!("no answer within {}", humantime::format_duration(self.connect_timeout))))
            })
            .map_err(|e| DialError { refused: e.refused, why: format!("{}: {e}", s.shown) })
    }

    /// From now on new links present `bundle`'s certificate; idle links
    /// made with the old one are dropped (the server accepts the old one a
    /// few minutes after the new one was first presented, then no longer).
    pub(super) fn replace_identity(&self, bundle: pki::Bundle, tls: Arc<rustls::ClientConfig>) {
        *lock(&self.connector) = tokio_rustls::TlsConnector::from(tls);
        *lock(&self.bundle) = bundle;
        lock(&self.idle).clear();
    }

    /// A new link to the first server that answers, in [`Agent::order`].
    async fn dial_any(&self) -> Result<TlsLink, DialError> {
        let mut failures = Vec::new();
        let mut refused = false;
        for i in self.order() {
            match self.dial(i).await {
                Ok(link) => {
                    self.mark(i, false);
                    return Ok(link);
                }
                Err(e) => {
                    refused |= e.refused;
                    failures.push(e.why);
                }
            }
            self.mark(i, true);
        }
        Err(DialError { refused, why: failures.join("; ") })
    }

    /// Keeps `link` for a later conversation. A task holds it meanwhile and
    /// watches it: a link the server closes is dropped at once, not found
    /// dead by the next login; and when the server closed it before its
    /// idle limit (a restart), a new one is made ([`Agent::reconnect`]).
    fn put_back(self: &Arc<Self>, link: TlsLink) {
        let (claim, claimed) = tokio::sync::oneshot::channel();
        {
            let mut idle = lock(&self.idle);
            idle.retain(|c| !c.is_closed());
            if idle.len() >= MAX_IDLE {
                return;
            }
            idle.push(claim);
        }
        tokio::spawn(keep_idle(self.clone(), link, claimed));
    }

    /// The newest idle link that is still open.
    async fn pooled(&self) -> Option<TlsLink> {
        loop {
            let claim = lock(&self.idle).pop()?;
            let (give, given) = tokio::sync::oneshot::channel();
            if claim.send(give).is_err() {
                continue;
            }
            if let Ok(link) = given.await {
                return Some(link);
            }
        }
    }

    /// A server closed an idle link early: make one new link, after a
    /// random wait that doubles while attempts fail ([`reconnect_delay`]),
    /// until one is made, a login made one meanwhile, or a server refuses
    /// this host. One such task per agent.
    fn reconnect(self: &Arc<Self>) {
        if self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let agent = self.clone();
        tokio::spawn(async move {
            let mut attempt = 0u32;
            loop {
                tokio::time::sleep(reconnect_delay(agent.reconnect_first, attempt, rand::random::<f64>())).await;
                if agent.idle_links() > 0 {
                    break;
                }
                let dialed = {
                    let Ok(_dialing) = agent.dials.acquire().await else { break };
                    agent.dial_any().await
                };
                match dialed {
                    Ok(link) => {
                        agent.put_back(link);
                        break;
                    }
                    Err(e) if e.refused => {
                        agent.warn(&format!("making a new fleet link failed; not trying again until a login: {e}"));
                        break;
                    }
                    Err(e) => {
                        agent.warn(&format!("making a new fleet link failed (attempt {}): {e}", attempt + 1));
                        attempt = attempt.saturating_add(1);
                    }
                }
            }
            agent.reconnecting.store(false, Ordering::Release);
        });
    }

    /// Hands a batch of the audit spool to a server: over an idle link if
    /// one works, else over a new link to each server in turn.
    async fn send_spool(self: &Arc<Self>, batch: &SpoolBatch) -> Result<SpoolAck, String> {
        let frame = AgentFrame::Spool(batch.clone());
        if let Some(ack) = self.ask_pooled(&frame).await {
            return Ok(ack);
        }
        let _dialing = self.dials.acquire().await.map_err(|e| e.to_string())?;
        // An older server closes the link on a frame it does not know: the next is tried.
        let (link, ack) = self.ask_each(&frame, self.io_timeout, true).await?;
        self.put_back(link);
        Ok(ack)
    }

    /// Sends `frame` over idle links, newest first, until one answers it
    /// with an `R` (that link goes back to the idle ones); None when none
    /// did (each one that failed is closed).
    async fn ask_pooled<R: serde::de::DeserializeOwned>(self: &Arc<Self>, frame: &AgentFrame) -> Option<R> {
        while let Some(mut link) = self.pooled().await {
            let asked = async {
                link.write(frame, self.io_timeout).await?;
                link.read::<R>(self.io_timeout, self.io_timeout, MAX_FRAME).await
            };
            if let Ok(reply) = asked.await {
                self.put_back(link);
                return Some(reply);
            }
        }
        None
    }
}

impl Agent {
    /// Sends the request to each server in turn, over a new link.
    async fn ask_renewal(&self, csr: String) -> Result<RenewReply, String> {
        let frame = AgentFrame::Renew(Renew { renew_csr: csr });
        let within = self.connect_timeout.max(Duration::from_secs(5));
        let (_, reply) = self.ask_each(&frame, within, true).await.map_err(|e| format!("no server answered ({e})"))?;
        Ok(reply)
    }

    /// Whether this host should renew now ([`common::proto::CaCheck`]):
    /// over an idle link if one works (no handshake of its own), else over
    /// a new link to each server in turn, closed after the answer.
    async fn ask_check(self: Arc<Self>, cas: Vec<String>) -> Result<Option<String>, String> {
        let frame = AgentFrame::CaCheck(CaCheck { check_cas: cas });
        if let Some(reply) = self.ask_pooled::<CaCheckReply>(&frame).await {
            return Ok(reply.renew);
        }
        let within = self.connect_timeout.max(Duration::from_secs(5));
        // A question in the background: it does not steer logins away from
        // a server that was slow to answer it (they find out for themselves).
        // Nor does the link it made join the idle ones: which servers
        // logins reach stays theirs to decide.
        let (_, reply) = self.ask_each::<CaCheckReply>(&frame, within, false).await?;
        Ok(reply.renew)
    }

    /// Sends `frame` over a new link to each server in turn (in
    /// [`Agent::order`]) until one answers it with an `R`, each write and
    /// read within `within`: that link and answer, or what each server did.
    /// With `mark`, a server it could not dial is tried last for a while (as
    /// by a login).
    async fn ask_each<R: serde::de::DeserializeOwned>(
        &self,
        frame: &AgentFrame,
        within: Duration,
        mark: bool,
    ) -> Result<(TlsLink, R), String> {
        let mut failures = Vec::new();
        for i in self.order() {
            let mut link = match self.dial(i).await {
                Ok(link) => link,
                Err(e) => {
                    if mark {
                        self.mark(i, true);
                    }
                    failures.push(e.why);
                    continue;
                }
            };
            if mark {
                self.mark(i, false);
            }
            if let Err(e) = link.write(frame, within).await {
                failures.push(format!("{}: {e}", self.servers[i].shown));
                continue;
            }
            match link.read::<R>(within, within, MAX_FRAME).await {
                Ok(reply) => return Ok((link, reply)),
                Err(e) => failures.push(format!("{}: no answer: {e}", self.servers[i].shown)),
            }
        }
        Err(failures.join("; "))
    }
}

impl crate::fleet::renewal::Holder for Agent {
    fn bundle(&self) -> pki::Bundle {
        lock(&self.bundle).clone()
    }

    fn bundle_path(&self) -> &std::path::Path {
        &self.bundle_path
    }

    fn clock(&self) -> &pki::TlsClock {
        &self.clock
    }

    fn ask(
        &self,
        csr: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<RenewReply, String>> + Send + '_>> {
        Box::pin(self.ask_renewal(csr))
    }

    fn replace_identity(&self, bundle: pki::Bundle, tls: Arc<rustls::ClientConfig>) {
        Agent::replace_identity(self, bundle, tls)
    }

    fn check(
        self: Arc<Self>,
        cas: Vec<String>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<String>, String>> + Send>> {
        Box::pin(self.ask_check(cas))
    }
}

/// Holds an idle link until it is claimed or closed.
async fn keep_idle(
    agent: Arc<Agent>,
    mut link: TlsLink,
    mut claimed: tokio::sync::oneshot::Receiver<tokio::sync::oneshot::Sender<TlsLink>>,
) {
    let since = Instant::now();
    loop {
        tokio::select! {
            biased;
            claim = &mut claimed => {
                if let Ok(give) = claim {
                    let _ = give.send(link);
                }
                return;
            }
            ready = link.get_ref().get_ref().0.readable() => {
                // Bytes on an idle link: a session ticket, or the end of it.
                if ready.is_err() || link.closed_now().await {
                    break;
                }
            }
        }
    }
    drop(link);
    drop(claimed);
    if since.elapsed() < IDLE_CLOSE {
        agent.reconnect();
    }
}

/// TCP to `host:port` (the first address that answers), from `source` if given.
async fn connect_tcp(host: &str, port: u16, source: Option<IpAddr>) -> std::io::Result<tokio::net::TcpStream> {
    let Some(source) = source else { return tokio::net::TcpStream::connect((host, port)).await };
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for addr in tokio::net::lookup_host((host, port)).await?.filter(|a| a.is_ipv4() == source.is_ipv4()) {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        match socket.connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn serve(listener: Listener, agent: Arc<Agent>) {
    loop {
        let conn = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                agent.warn(&format!("accept on PAM socket failed: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok((uid, _, pid)) = conn.peer() else { continue };
        if !agent.take_slot(uid) {
            agent.warn(&format!("PAM connection from uid {uid} closed: too many open connections"));
            continue;
        }
        let agent = agent.clone();
        tokio::spawn(async move {
            connection(conn, uid, pid, &agent).await;
            agent.release(uid);
        });
    }
}

async fn connection(mut conn: Conn, uid: u32, pid: Option<i32>, agent: &Arc<Agent>) {
    let first: ClientMsg = match conn.read_msg(agent.io_timeout, agent.io_timeout).await {
        Ok(m) => m,
        Err(e) => return agent.warn(&format!("PAM connection closed before a complete first message: {e}")),
    };
    // The server cannot read this host's /proc: the real uid behind a
    // root peer (su, sudo) is looked up here, for its rate limits.
    let caller = (uid == 0).then(|| crate::core::limits::caller_uid(0, pid));
    let session = !matches!(first, ClientMsg::Begin { .. });
    let _unprivileged = match caller.unwrap_or(uid) {
        0 => None,
        _ => match Unprivileged::take(agent) {
            Some(slot) => Some(slot),
            None => {
                agent.warn(&format!(
                    "login of uid {uid} refused: {MAX_UNPRIVILEGED} logins of users other than root in progress"
                ));
                if let Some(spool) = &agent.spool {
                    spool.refused(&first, uid, caller, None, SpoolReason::Busy);
                }
                if !session {
                    let msg = "The passcode service is busy; try again in a minute.";
                    let deny = ServerMsg::Outcome { result: OutcomeKind::Deny, message: Some(msg.into()) };
                    let _ = conn.write_msg(&deny, agent.io_timeout).await;
                }
                return;
            }
        },
    };
    // A caller other than root may only ever be its own account (check 35):
    // the server finds the record by the name this host's directory gives
    // its uid, looked up here, where the truth is — never by the name it
    // typed or its own answer to resolve_user. Looked up only once the
    // conversation holds one of the MAX_UNPRIVILEGED places: a directory
    // that hangs holds at most that many lookups.
    let account = match uid {
        0 => None,
        _ if session => None,
        _ => own_account(uid, agent.io_timeout).await,
    };
    let relay = Relay { peer_uid: uid, pid, caller, account, reply_within_ms: Some(REPLY_WITHIN.as_millis() as u64) };
    let mut asker = PamAsker { conn: &mut conn, io_timeout: agent.io_timeout, prompt_timeout: agent.prompt_timeout };
    if agent.converse(&relay, &first, &mut asker).await.is_err() {
        agent.spooled(&first, &relay, SpoolReason::Unavailable);
        if !session {
            let deny = ServerMsg::Outcome { result: OutcomeKind::Deny, message: Some(UNAVAILABLE.into()) };
            let _ = conn.write_msg(&deny, agent.io_timeout).await;
        }
    }
}

/// The login process's end of a relayed conversation: the PAM socket, or
/// a benchmark's scripted user.
pub trait Asker: Send {
    /// Passes on one of the server's messages.
    fn tell(&mut self, msg: &ServerMsg) -> impl Future<Output = Result<(), FrameError>> + Send;
    /// The answer to a prompt (or to resolve_user).
    fn answer(&mut self) -> impl Future<Output = Result<ClientMsg, FrameError>> + Send;
}

struct PamAsker<'a> {
    conn: &'a mut Conn,
    io_timeout: Duration,
    prompt_timeout: Duration,
}

impl Asker for PamAsker<'_> {
    async fn tell(&mut self, msg: &ServerMsg) -> Result<(), FrameError> {
        self.conn.write_msg(msg, self.io_timeout).await
    }

    async fn answer(&mut self) -> Result<ClientMsg, FrameError> {
        self.conn.read_msg(self.prompt_timeout, self.io_timeout).await
    }
}

/// No server could take the conversation (nothing was told to the asker).
#[derive(Debug)]
pub struct Unavailable;

impl Agent {
    /// Relays one conversation that starts with `first`: over an idle link
    /// or a new one, message by message between `asker` and the server;
    /// the link is kept for the next one when the conversation ended in
    /// step. Err: no server took it (the caller tells the login process).
    pub async fn converse<A: Asker>(
        self: &Arc<Self>,
        relay: &Relay,
        first: &ClientMsg,
        asker: &mut A,
    ) -> Result<(), Unavailable> {
        let Some((mut link, mut reply)) = open_conversation(self, relay, first).await else {
            return Err(Unavailable);
        };
        loop {
            if asker.tell(&reply).await.is_err() {
                // The login process is gone; the server ends the conversation
                // when the link closes.
                return Ok(());
            }
            match reply {
                ServerMsg::Outcome { .. } | ServerMsg::Ack => {
                    self.put_back(link);
                    return Ok(());
                }
                ServerMsg::Prompt { .. } | ServerMsg::ResolveUser => {
                    let Ok(answer) = asker.answer().await else { return Ok(()) };
                    if link.write(&answer, self.io_timeout).await.is_err() {
                        self.spooled(first, relay, SpoolReason::Cut);
                        deny_cut(asker).await;
                        return Ok(());
                    }
                }
                ServerMsg::Info { .. } | ServerMsg::Error { .. } => {}
            }
            reply = match link.read(REPLY_WITHIN, self.io_timeout, MAX_FRAME).await {
                Ok(r) => r,
                Err(e) => {
                    self.warn(&format!("fleet server went away during a conversation: {e}"));
                    self.spooled(first, relay, SpoolReason::Cut);
                    deny_cut(asker).await;
                    return Ok(());
                }
            };
        }
    }
}

/// The name of `uid`'s account in this host's directory, or None (no such
/// account, or the directory did not answer in time). Only for callers
/// other than root: root's logins (sshd, login, sudo) make no lookup.
async fn own_account(uid: u32, within: Duration) -> Option<String> {
    let lookup = tokio::task::spawn_blocking(move || nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)));
    match tokio::time::timeout(within, lookup).await {
        Ok(Ok(Ok(Some(user)))) => Some(user.name),
        Ok(Ok(Ok(None))) => None,
        Ok(Ok(Err(e))) => {
            tracing::warn!("looking up the account of uid {uid} failed: {e}");
            None
        }
        _ => {
            tracing::warn!("looking up the account of uid {uid} took too long");
            None
        }
    }
}

struct Unprivileged<'a>(&'a Agent);

impl<'a> Unprivileged<'a> {
    fn take(agent: &'a Agent) -> Option<Unprivileged<'a>> {
        if agent.unprivileged.fetch_add(1, Ordering::Relaxed) >= MAX_UNPRIVILEGED {
            agent.unprivileged.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Unprivileged(agent))
    }
}

impl Drop for Unprivileged<'_> {
    fn drop(&mut self) {
        self.0.unprivileged.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A server lost mid-conversation: the code the user typed may or may
/// not have been checked; the login fails (the next one goes elsewhere).
async fn deny_cut<A: Asker>(asker: &mut A) {
    let deny = ServerMsg::Outcome { result: OutcomeKind::Deny, message: Some(UNAVAILABLE.into()) };
    let _ = asker.tell(&deny).await;
}

/// Sends the relay header and the first message, and reads the server's
/// first reply: over an idle link if one still works, else over a new link
/// to each server in turn. Nothing the user typed has been sent yet, so
/// trying again elsewhere is safe.
async fn open_conversation(agent: &Arc<Agent>, relay: &Relay, first: &ClientMsg) -> Option<(TlsLink, ServerMsg)> {
    // Everything here happens while the module waits for its first reply:
    // all of it fits in the module's timeout, whatever the servers do.
    let deadline = Instant::now() + OPEN_BUDGET;
    // The header and the first message in one write: one TLS record, one
    // wakeup of the server.
    let frames = encode(relay).and_then(|mut header| {
        header.extend_from_slice(&encode(first)?);
        Ok(header)
    });
    let opening = match frames {
        Ok(frames) => frames,
        Err(e) => {
            agent.warn(&format!("cannot relay a conversation: {e}"));
            return None;
        }
    };
    let opening = &opening;
    let start = |mut link: TlsLink, by: Instant| async move {
        let started = async {
            link.write_bytes(opening, agent.io_timeout).await?;
            let reply: ServerMsg = link.read(agent.io_timeout, agent.io_timeout, MAX_FRAME).await?;
            Ok::<_, FrameError>(reply)
        };
        let reply = tokio::time::timeout_at(by.min(deadline), started).await.map_err(|_| FrameError::TimedOut)??;
        Ok::<_, FrameError>((link, reply))
    };
    // Idle links may have been closed by a server that restarted or died
    // (they fail at once); one that does not answer in time stops the
    // search: the others likely lead to the same server.
    while let Some(link) = agent.pooled().await {
        match start(link, Instant::now() + agent.connect_timeout).await {
            Ok(started) => return Some(started),
            Err(FrameError::TimedOut) => break,
            Err(_) => {}
        }
    }
    let Ok(Ok(_dialing)) = tokio::time::timeout_at(deadline, agent.dials.acquire()).await else {
        agent.warn("no otpd server link could be made in time; refusing the login (too many logins at once)");
        return None;
    };
    // Links made or finished with while this one waited.
    while let Some(link) = agent.pooled().await {
        if let Ok(started) = start(link, Instant::now() + agent.connect_timeout).await {
            return Some(started);
        }
    }
    let mut failures = Vec::new();
    for i in agent.order() {
        if Instant::now() >= deadline {
            failures.push("out of time".into());
            break;
        }
        let dialed = tokio::time::timeout_at(deadline, agent.dial(i))
            .await
            .unwrap_or_else(|_| Err(DialError { refused: false, why: "out of time".into() }));
        match dialed {
            Ok(link) => match start(link, deadline).await {
                Ok(started) => {
                    agent.mark(i, false);
                    if let Some(spool) = &agent.spool {
                        spool.server_back();
                    }
                    return Some(started);
                }
                Err(e) => failures.push(format!("{}: {e}", agent.servers[i].shown)),
            },
            Err(e) => failures.push(e.why),
        }
        agent.mark(i, true);
    }
    agent.warn(&format!("no otpd server answered; refusing the login ({})", failures.join("; ")));
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_waits_are_spread_over_a_window_that_doubles_up_to_a_cap() {
        assert_eq!(reconnect_delay(RECONNECT_FIRST, 0, 0.0), Duration::ZERO);
        assert_eq!(reconnect_delay(RECONNECT_FIRST, 0, 0.5), RECONNECT_FIRST / 2);
        assert_eq!(reconnect_delay(RECONNECT_FIRST, 1, 0.5), RECONNECT_FIRST);
        assert_eq!(reconnect_delay(RECONNECT_FIRST, 2, 0.25), RECONNECT_FIRST);
        for attempt in [0, 1, 5, 16, 17, 1000, u32::MAX] {
            for unit in [0.0, 0.3, 0.999_999, 1.0, 7.0, -1.0, f64::NAN, f64::INFINITY] {
                let d = reconnect_delay(RECONNECT_FIRST, attempt, unit);
                assert!(d <= RECONNECT_MAX, "attempt {attempt}, unit {unit}: {d:?}");
                let window = RECONNECT_FIRST.saturating_mul(1 << attempt.min(16)).min(RECONNECT_MAX);
                assert!(d <= window, "attempt {attempt}, unit {unit}: {d:?} beyond {window:?}");
            }
        }
        assert_eq!(reconnect_delay(RECONNECT_FIRST, 1000, 0.999_999).as_secs(), RECONNECT_MAX.as_secs() - 1);
    }

    #[test]
    fn a_thousand_hosts_spread_their_first_attempt_over_the_whole_window() {
        // The hosts of a fleet each draw their own point: a restarted
        // server meets about as many in each part of the window.
        let mut buckets = [0usize; 5];
        for _ in 0..1000 {
            let d = reconnect_delay(RECONNECT_FIRST, 0, rand::random::<f64>());
            assert!(d < RECONNECT_FIRST);
            buckets[(d.as_secs_f64() / RECONNECT_FIRST.as_secs_f64() * 5.0) as usize] += 1;
        }
        assert!(buckets.iter().all(|&n| (120..=280).contains(&n)), "{buckets:?}");
    }
}
