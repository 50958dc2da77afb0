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
    AgentFrame, ClientMsg, LinkHello, LinkReply, OutcomeKind, Relay, Renew, RenewReply, ServerMsg, SpoolAck,
    SpoolBatch, SpoolReason, PROTOCOL_VERSION,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
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

pub(super) struct Agent {
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
    io_timeout: Duration,
    prompt_timeout: Duration,
    /// Idle links, newest last.
    idle: Mutex<Vec<TlsLink>>,
    /// Per server: do not try it again before this (it just failed).
    down_until: Mutex<Vec<Option<Instant>>>,
    open: AtomicUsize,
    /// Conversations in progress started by users other than root (also
    /// through su/sudo): they may not take the links root's logins need.
    unprivileged: AtomicUsize,
    per_uid: Mutex<HashMap<u32, usize>>,
    max_connections: usize,
    max_per_uid: usize,
    last_warning: AtomicI64,
    /// New links being made at once: a burst of logins waits for links
    /// made (or put back) by the others rather than starting hundreds of
    /// TLS handshakes that a server would refuse (it admits few at once
    /// from one address; see crate::fleet::admission).
    dials: tokio::sync::Semaphore,
    /// What this agent refused by itself, until a server takes it.
    spool: Arc<Spool>,
}

/// Links being made at once.
const MAX_DIALS: usize = 16;

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
    let host = f.host.clone().unwrap_or_else(|| bundle.name.clone());
    let tls = pki::client_config_with(&bundle, &clock).map_err(fleet_error)?;
    let mut servers = Vec::new();
    for s in &f.servers {
        let Some((h, port)) = common::config::split_host_port(s) else {
            return Err(fleet_error(format!("fleet.servers: {s:?} is not host:port")));
        };
        let name = pki::server_name(h).map_err(|e| fleet_error(format!("fleet.servers: {s:?}: {e}")))?;
        servers.push(Server { shown: s.clone(), host: h.to_string(), port, name });
    }
    let spool = Arc::new(Spool::open(&f.spool, f.spool_max, crate::sys::clock::configured())?);
    let agent = Arc::new(Agent {
        host: host.clone(),
        down_until: Mutex::new(vec![None; servers.len()]),
        servers,
        connector: Mutex::new(tokio_rustls::TlsConnector::from(tls)),
        bundle: Mutex::new(bundle),
        bundle_path: f.bundle.clone(),
        clock,
        connect_timeout: f.connect_timeout,
        io_timeout: d.io_timeout,
        prompt_timeout: d.prompt_timeout,
        idle: Mutex::new(Vec::new()),
        open: AtomicUsize::new(0),
        unprivileged: AtomicUsize::new(0),
        per_uid: Mutex::new(HashMap::new()),
        max_connections: d.max_connections,
        max_per_uid: d.max_connections_per_user,
        last_warning: AtomicI64::new(0),
        dials: tokio::sync::Semaphore::new(MAX_DIALS),
        spool: spool.clone(),
    });
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
    /// At most one warning a second: a dead server must not flood the log.
    fn warn(&self, msg: &str) {
        let now = crate::sys::clock::Clock::now(&crate::sys::clock::SystemClock);
        if self.last_warning.swap(now, Ordering::Relaxed) != now {
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
    pub(super) async fn dial(&self, i: usize) -> Result<TlsLink, String> {
        let s = &self.servers[i];
        let connector = lock(&self.connector).clone();
        let connect = async {
            let tcp = tokio::net::TcpStream::connect((s.host.as_str(), s.port)).await.map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            let tls = connector.connect(s.name.clone(), tcp).await.map_err(|e| format!("TLS: {e}"))?;
            let mut link = Link::new(tls);
            let hello = LinkHello::Agent { protocol: PROTOCOL_VERSION, host: self.host.clone() };
            link.write(&hello, self.connect_timeout).await.map_err(|e| e.to_string())?;
            match link.read::<LinkReply>(self.connect_timeout, self.connect_timeout, MAX_FRAME).await {
                Ok(LinkReply::Ready { .. }) => Ok(link),
                Ok(LinkReply::Refused { reason }) => Err(format!("refused: {reason}")),
                // A server that refuses the handshake closes without a word.
                Err(e) => Err(format!("no answer to hello: {e} (is this host's certificate valid for this fleet?)")),
            }
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}", humantime::format_duration(self.connect_timeout))))
            .map_err(|e| format!("{}: {e}", s.shown))
    }

    /// From now on new links present `bundle`'s certificate; idle links
    /// made with the old one are dropped (the server accepts the old one a
    /// few minutes after the new one was first presented, then no longer).
    pub(super) fn replace_identity(&self, bundle: pki::Bundle, tls: Arc<rustls::ClientConfig>) {
        *lock(&self.connector) = tokio_rustls::TlsConnector::from(tls);
        *lock(&self.bundle) = bundle;
        lock(&self.idle).clear();
    }

    pub(super) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub(super) fn server_shown(&self, i: usize) -> &str {
        &self.servers[i].shown
    }

    fn put_back(&self, link: TlsLink) {
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE {
            idle.push(link);
        }
    }

    fn pooled(&self) -> Option<TlsLink> {
        lock(&self.idle).pop()
    }

    /// Hands a batch of the audit spool to a server: over an idle link if
    /// one works, else over a new link to each server in turn.
    async fn send_spool(&self, batch: &SpoolBatch) -> Result<SpoolAck, String> {
        let frame = AgentFrame::Spool(batch.clone());
        let exchange = |mut link: TlsLink| {
            let frame = &frame;
            async move {
                link.write(frame, self.io_timeout).await?;
                let ack: SpoolAck = link.read(self.io_timeout, self.io_timeout, MAX_FRAME).await?;
                Ok::<_, FrameError>((link, ack))
            }
        };
        while let Some(link) = self.pooled() {
            if let Ok((link, ack)) = exchange(link).await {
                self.put_back(link);
                return Ok(ack);
            }
        }
        let _dialing = self.dials.acquire().await.map_err(|e| e.to_string())?;
        let mut failures = Vec::new();
        for i in self.order() {
            match self.dial(i).await {
                Ok(link) => match exchange(link).await {
                    Ok((link, ack)) => {
                        self.mark(i, false);
                        self.put_back(link);
                        return Ok(ack);
                    }
                    // An older server closes the link on a frame it does not know.
                    Err(e) => failures.push(format!("{}: {e}", self.servers[i].shown)),
                },
                Err(e) => {
                    self.mark(i, true);
                    failures.push(e);
                }
            }
        }
        Err(failures.join("; "))
    }
}

impl Agent {
    /// Sends the request to each server in turn, over a new link.
    async fn ask_renewal(&self, csr: String) -> Result<RenewReply, String> {
        let frame = AgentFrame::Renew(Renew { renew_csr: csr });
        let mut failures = Vec::new();
        for i in self.order() {
            let mut link = match self.dial(i).await {
                Ok(l) => l,
                Err(e) => {
                    failures.push(e);
                    continue;
                }
            };
            let t = self.connect_timeout().max(Duration::from_secs(5));
            if let Err(e) = link.write(&frame, t).await {
                failures.push(format!("{}: {e}", self.server_shown(i)));
                continue;
            }
            match link.read::<RenewReply>(t, t, MAX_FRAME).await {
                Ok(reply) => return Ok(reply),
                Err(e) => failures.push(format!("{}: no answer: {e}", self.server_shown(i))),
            }
        }
        Err(format!("no server answered ({})", failures.join("; ")))
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

async fn connection(mut conn: Conn, uid: u32, pid: Option<i32>, agent: &Agent) {
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
                agent.spool.refused(&first, uid, caller, None, SpoolReason::Busy);
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
    let Some((mut link, reply)) = open_conversation(agent, &relay, &first).await else {
        agent.spool.refused(&first, uid, caller, relay.account.as_deref(), SpoolReason::Unavailable);
        if !session {
            let deny = ServerMsg::Outcome { result: OutcomeKind::Deny, message: Some(UNAVAILABLE.into()) };
            let _ = conn.write_msg(&deny, agent.io_timeout).await;
        }
        return;
    };
    let mut reply = reply;
    loop {
        if conn.write_msg(&reply, agent.io_timeout).await.is_err() {
            // The login process is gone; the server ends the conversation
            // when the link closes.
            return;
        }
        match reply {
            ServerMsg::Outcome { .. } | ServerMsg::Ack => return agent.put_back(link),
            ServerMsg::Prompt { .. } | ServerMsg::ResolveUser => {
                let answer: ClientMsg = match conn.read_msg(agent.prompt_timeout, agent.io_timeout).await {
                    Ok(a) => a,
                    Err(_) => return,
                };
                if link.write(&answer, agent.io_timeout).await.is_err() {
                    agent.spool.refused(&first, uid, caller, relay.account.as_deref(), SpoolReason::Cut);
                    return deny_cut(&mut conn, agent).await;
                }
            }
            ServerMsg::Info { .. } | ServerMsg::Error { .. } => {}
        }
        reply = match link.read(REPLY_WITHIN, agent.io_timeout, MAX_FRAME).await {
            Ok(r) => r,
            Err(e) => {
                agent.warn(&format!("fleet server went away during a conversation: {e}"));
                agent.spool.refused(&first, uid, caller, relay.account.as_deref(), SpoolReason::Cut);
                return deny_cut(&mut conn, agent).await;
            }
        };
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
async fn deny_cut(conn: &mut Conn, agent: &Agent) {
    let deny = ServerMsg::Outcome { result: OutcomeKind::Deny, message: Some(UNAVAILABLE.into()) };
    let _ = conn.write_msg(&deny, agent.io_timeout).await;
}

/// Sends the relay header and the first message, and reads the server's
/// first reply: over an idle link if one still works, else over a new link
/// to each server in turn. Nothing the user typed has been sent yet, so
/// trying again elsewhere is safe.
async fn open_conversation(agent: &Agent, relay: &Relay, first: &ClientMsg) -> Option<(TlsLink, ServerMsg)> {
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
    while let Some(link) = agent.pooled() {
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
    while let Some(link) = agent.pooled() {
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
        let dialed =
            tokio::time::timeout_at(deadline, agent.dial(i)).await.unwrap_or_else(|_| Err("out of time".into()));
        match dialed {
            Ok(link) => match start(link, deadline).await {
                Ok(started) => {
                    agent.mark(i, false);
                    agent.spool.server_back();
                    return Some(started);
                }
                Err(e) => failures.push(format!("{}: {e}", agent.servers[i].shown)),
            },
            Err(e) => failures.push(e),
        }
        agent.mark(i, true);
    }
    agent.warn(&format!("no otpd server answered; refusing the login ({})", failures.join("; ")));
    None
}
