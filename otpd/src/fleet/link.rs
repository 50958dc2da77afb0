//! The server side of a fleet: TLS 1.3 links from agents and remote otpctl.
//!
//! Every link presents a client certificate issued by the fleet CA (`otpctl
//! host add`); the host is the record found by that certificate's
//! fingerprint — never a name the client sends. An agent link carries one
//! conversation after another: a [`common::proto::Relay`] header (who the login process
//! is on the agent's host), then the module's messages verbatim, run by the
//! same state machine as the local PAM socket ([`crate::login::conversation`]).
//! The host record is read again for every conversation, so `otpctl host
//! revoke` takes effect at once on every server of the database.
use crate::core::service::Core;
use crate::fleet::admission::{Place, Stage};
use crate::fleet::authority::{Authority, CaSet};
use crate::fleet::pki;
use crate::fleet::wire::Link;
use crate::lock;
use crate::login::conversation::Peer;
use crate::login::transport::Transport;
use crate::store::model::{AuditMethod, AuditResult};
use crate::store::model::{HostRecord, HostRole, NewAudit, Renewal, PREV_GRACE};
use common::codec::{encode, encode_limited, FrameError, MAX_ADMIN_RESPONSE, MAX_FRAME};
use common::proto::{
    AdminRequest, AdminResponse, AgentFrame, CaCheckReply, ClientMsg, LinkHello, LinkReply, RenewReply, ServerMsg,
    PROTOCOL_VERSION,
};

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// What a server needs besides [`Core`]: its TLS identity and the CAs.
pub struct FleetServer {
    pub authority: Arc<Authority>,
    /// The time certificates are checked against (the daemon's clock).
    clock: pki::TlsClock,
    /// Replaced by [`renew`] before the server certificate runs out.
    acceptor: Mutex<tokio_rustls::TlsAcceptor>,
    /// The names the server certificate carries.
    names: Vec<String>,
    /// This server's name in `ready` replies and the log.
    pub name: String,
    links: AtomicUsize,
    /// `[fleet] max_links`: links open at once (agents keep one or a few
    /// each, otpctl one per command).
    max_links: usize,
    /// Links open per host: one host (a compromised one) cannot take all.
    host_links: Mutex<HashMap<String, usize>>,
    /// When each host's `last_seen` was last written by this server, and
    /// the address written with it.
    seen_written: Mutex<HashMap<String, (i64, String)>>,
    /// Refusals already audited this minute, by what they are about
    /// (a certificate, or "handshake"), with how many were not.
    refused_audited: Mutex<HashMap<String, (i64, u64)>>,
    /// Connections that have not authenticated yet (see crate::fleet::admission).
    pub admission: Arc<crate::fleet::admission::Admission>,
    /// Spooled refusals written per host (see crate::fleet::spool).
    spool_rate: crate::core::limits::RateLimiter<String>,
}

/// Links open at once from one host: an agent keeps at most 64 idle and
/// opens one per login in progress.
const MAX_HOST_LINKS: usize = 256;
/// `last_seen` is written at most this often per host and server.
const SEEN_EVERY: i64 = 60;
/// A client has this long to finish its handshake and hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

impl FleetServer {
    pub fn new(
        authority: Arc<Authority>,
        names: Vec<String>,
        max_links: usize,
        clock: pki::TlsClock,
    ) -> Result<FleetServer, pki::PkiError> {
        let config = tls_config(&authority.get(), &names, &clock)?;
        Ok(FleetServer {
            authority,
            clock,
            acceptor: Mutex::new(tokio_rustls::TlsAcceptor::from(config)),
            name: names.first().cloned().unwrap_or_default(),
            names,
            links: AtomicUsize::new(0),
            max_links,
            host_links: Mutex::new(HashMap::new()),
            seen_written: Mutex::new(HashMap::new()),
            refused_audited: Mutex::new(HashMap::new()),
            admission: Arc::new(crate::fleet::admission::Admission::new(
                crate::fleet::admission::WAITING,
                crate::fleet::admission::HANDSHAKING,
            )),
            spool_rate: crate::core::limits::RateLimiter::new(crate::fleet::spool::PER_HOST_PER_MINUTE),
        })
    }
}

/// What a server presents (a certificate of the oldest CA, which every
/// host trusts) and accepts (host certificates of any of the CAs).
fn tls_config(
    cas: &CaSet,
    names: &[String],
    clock: &pki::TlsClock,
) -> Result<Arc<rustls::ServerConfig>, pki::PkiError> {
    let server = cas.serving().ca.issue_server_at(names, clock.now())?;
    pki::server_config_with(&cas.trust_pem(), &server, clock)
}

/// The server certificate is issued for a year: a new one every day, so a
/// server that runs for years never presents an expired one; and a new
/// configuration whenever the fleet's CAs change (a rotation, a retirement).
pub async fn renew(fleet: Arc<FleetServer>) {
    let mut changed = fleet.authority.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(24 * 3600)) => {}
            r = changed.changed() => if r.is_err() { return },
        }
        match tls_config(&fleet.authority.get(), &fleet.names, &fleet.clock) {
            Ok(config) => *lock(&fleet.acceptor) = tokio_rustls::TlsAcceptor::from(config),
            Err(e) => tracing::error!("renewing the fleet server certificate failed: {e}"),
        }
    }
}

/// Accepts links on one listening socket until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, sh: Arc<Core>, fleet: Arc<FleetServer>) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                sh.warn_throttled(&format!("accept on the fleet listener failed: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(waiting) = fleet.admission.enter(Stage::Waiting, addr.ip(), sh.clock.now()) else {
            sh.warn_throttled(&format!("fleet connection from {addr} closed: no room for it"));
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (sh, fleet) = (sh.clone(), fleet.clone());
        tokio::spawn(async move {
            // Cheap until the first byte; a connection that sends nothing
            // is closed without a word, and never takes a handshake's room.
            if !matches!(tokio::time::timeout(crate::fleet::admission::FIRST_BYTE, tcp.readable()).await, Ok(Ok(()))) {
                return;
            }
            let Some(handshake) = fleet.admission.enter(Stage::Handshaking, addr.ip(), sh.clock.now()) else {
                sh.warn_throttled(&format!("fleet connection from {addr} closed: too many handshakes"));
                return;
            };
            drop(waiting);
            link(tcp, addr, handshake, &sh, &fleet).await;
        });
    }
}

/// One relayed conversation on an agent link. `done` is set once the
/// conversation's last message (outcome or ack) went out: only then is the
/// link in step for the next one.
struct Relayed<'a, S> {
    link: &'a mut Link<S>,
    done: bool,
    /// How long the agent waits for each reply ([`common::proto::Relay::reply_within_ms`]).
    reply_within: Option<Duration>,
    /// When the last message was read.
    read_at: Option<std::time::Instant>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for Relayed<'_, S> {
    async fn read_msg(&mut self, wait: Duration, io_timeout: Duration) -> Result<ClientMsg, FrameError> {
        let msg = self.link.read(wait, io_timeout, MAX_FRAME).await;
        self.read_at = Some(std::time::Instant::now());
        msg
    }

    /// A second short of the agent's wait: the outcome still has to reach it.
    fn decide_by(&self) -> Option<std::time::Instant> {
        Some(self.read_at? + self.reply_within?.saturating_sub(Duration::from_secs(1)))
    }

    /// After an answer the agent sends nothing until it has the outcome, so
    /// anything readable now is its giving up: a closed link (or a broken one).
    async fn asker_gone(&mut self) -> bool {
        self.link.closed_now().await
    }

    fn write_msg(
        &mut self,
        msg: &ServerMsg,
        io_timeout: Duration,
    ) -> impl Future<Output = Result<(), FrameError>> + Send {
        let last = matches!(msg, ServerMsg::Outcome { .. } | ServerMsg::Ack);
        let frame = encode(msg);
        async move {
            self.link.write_bytes(&frame?, io_timeout).await?;
            self.done |= last;
            Ok(())
        }
    }
}

/// An audit row for the fleet itself (a refused link or conversation).
fn fleet_audit(sh: &Core, machine: &str, result: AuditResult, reason: String) -> NewAudit {
    NewAudit {
        time: sh.clock.now(),
        user: "-".into(),
        service: "fleet".into(),
        rhost: None,
        tty: None,
        machine: machine.to_string(),
        method: AuditMethod::Host,
        result,
        reason,
    }
}

async fn audit(sh: &Core, entry: NewAudit) {
    crate::core::syslog::audit(&entry);
    if let Err(e) = sh.db.run(move |st| st.add_audit(&entry)).await {
        tracing::warn!("writing a fleet audit row failed: {e}");
    }
}

/// Refuses a link: tells the client why (it is authenticated, or nothing
/// is said), audits it under the host it is, and closes.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin + Send>(
    link: &mut Link<S>,
    sh: &Core,
    fleet: &FleetServer,
    machine: &str,
    reason: String,
    tell: &str,
) {
    // Certificates no host holds (a host's old one after it was added
    // again, or one made to probe) are throttled together, not per address
    // or per certificate: addresses and certificates are cheap to vary.
    let key = if machine.starts_with(UNKNOWN_PEER) { "unknown certificate" } else { machine };
    audit_refusal_as(sh, fleet, key, machine, reason).await;
    let _ = link.write(&LinkReply::Refused { reason: tell.into() }, sh.io_timeout).await;
}

/// How a peer with no host record is named in the audit: `tcp:ADDRESS`.
const UNKNOWN_PEER: &str = "tcp:";

/// A refusal is logged and audited at most once a minute per host (or
/// address); the next row says how many were not: a revoked host that
/// reconnects in a loop cannot fill the shared database.
async fn audit_refusal(sh: &Core, fleet: &FleetServer, machine: &str, reason: String) {
    audit_refusal_as(sh, fleet, machine, machine, reason).await
}

async fn audit_refusal_as(sh: &Core, fleet: &FleetServer, key: &str, machine: &str, reason: String) {
    let now = sh.clock.now();
    let due = {
        let mut seen = lock(&fleet.refused_audited);
        if seen.len() > 10_000 {
            seen.retain(|_, (t, _)| now - *t < 60);
        }
        let entry = seen.entry(key.to_string()).or_insert((i64::MIN / 2, 0));
        if now - entry.0 >= 60 {
            let skipped = entry.1;
            *entry = (now, 0);
            Some(skipped)
        } else {
            entry.1 += 1;
            None
        }
    };
    let Some(skipped) = due else { return };
    let reason =
        if skipped > 0 { format!("{reason} (and {skipped} more refusals in the last minute)") } else { reason };
    tracing::warn!("fleet link refused: {reason}");
    audit(sh, fleet_audit(sh, machine, AuditResult::Refused, reason)).await;
}

/// An established link; given back when dropped.
struct LinkSlot<'a>(&'a FleetServer);

impl Drop for LinkSlot<'_> {
    fn drop(&mut self) {
        self.0.links.fetch_sub(1, Ordering::Relaxed);
    }
}

type ServerLink = Link<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

/// A link past its handshake, hello and host check, told `ready`.
struct Admitted<'a> {
    link: ServerLink,
    host: HostRecord,
    fp: [u8; 32],
    /// When the certificate presented runs out.
    until: i64,
    wanted: HostRole,
    _slots: (LinkSlot<'a>, HostSlot<'a>),
}

/// One connection, from its handshake to its end. Each stage is boxed: this
/// task lives as long as the link, and a future is as large as its largest
/// stage — the handshake and host check, or a conversation — for all of
/// that time; an idle link (there may be one per host of the fleet) keeps
/// only what waiting for the next header needs.
async fn link(tcp: tokio::net::TcpStream, addr: SocketAddr, handshake: Place, sh: &Core, fleet: &FleetServer) {
    let Some(a) = Box::pin(admit(tcp, addr, handshake, sh, fleet)).await else { return };
    let Admitted { link, host, fp, until, wanted, _slots } = a;
    match wanted {
        HostRole::Agent => Box::pin(agent_link(link, host, Presented { fp, until }, addr, sh, fleet)).await,
        HostRole::Admin => Box::pin(admin_link(link, host, Presented { fp, until }, addr, sh, fleet)).await,
    }
}

async fn admit<'a>(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    handshake: Place,
    sh: &Core,
    fleet: &'a FleetServer,
) -> Option<Admitted<'a>> {
    let acceptor = lock(&fleet.acceptor).clone();
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            handshake_refused(sh, fleet, addr, &e.to_string()).await;
            return None;
        }
        Err(_) => {
            handshake_refused(sh, fleet, addr, "timed out").await;
            return None;
        }
    };
    let Some(fp) = pki::peer_fingerprint(tls.get_ref().1) else {
        handshake_refused(sh, fleet, addr, "no client certificate").await;
        return None;
    };
    // The handshake checked it is valid now: when it runs out.
    let presented_until = pki::peer_not_after(tls.get_ref().1).unwrap_or(0);
    let mut link = Link::new(tls);
    let hello: LinkHello = match link.read(HANDSHAKE_TIMEOUT, HANDSHAKE_TIMEOUT, MAX_FRAME).await {
        Ok(h) => h,
        Err(e) => {
            sh.warn_throttled(&format!("fleet link from {addr}: no hello: {e}"));
            return None;
        }
    };
    drop(handshake);
    if fleet.links.fetch_add(1, Ordering::Relaxed) >= fleet.max_links {
        fleet.links.fetch_sub(1, Ordering::Relaxed);
        let max = fleet.max_links;
        sh.warn_throttled(&format!("fleet link from {addr} closed: {max} links open (fleet.max_links)"));
        return None;
    }
    let link_slot = LinkSlot(fleet);
    let (protocol, wanted, claimed) = match &hello {
        LinkHello::Agent { protocol, host } => (*protocol, HostRole::Agent, Some(host.clone())),
        LinkHello::Admin { protocol } => (*protocol, HostRole::Admin, None),
    };
    let host = match check_host(sh, fleet, &fp, wanted, claimed.as_deref(), addr, true).await {
        Ok(h) => h,
        Err((machine, reason, tell)) => {
            refuse(&mut link, sh, fleet, &machine, reason, tell).await;
            return None;
        }
    };
    if protocol != PROTOCOL_VERSION {
        let reason = format!("{} speaks protocol {protocol}; this server speaks {PROTOCOL_VERSION}", host.name);
        refuse(&mut link, sh, fleet, &host.name, reason, "protocol version not supported").await;
        return None;
    }
    let Some(host_slot) = HostSlot::take(fleet, &host.name) else {
        let reason = format!("{} already has {MAX_HOST_LINKS} links open; one more from {addr} refused", host.name);
        sh.warn_throttled(&reason);
        let _ = link.write(&LinkReply::Refused { reason: "too many links from this host".into() }, sh.io_timeout).await;
        return None;
    };
    if link.write(&LinkReply::Ready { server: fleet.name.clone() }, sh.io_timeout).await.is_err() {
        return None;
    }
    Some(Admitted { link, host, fp, until: presented_until, wanted, _slots: (link_slot, host_slot) })
}

/// One of a host's links; given back when dropped.
struct HostSlot<'a> {
    fleet: &'a FleetServer,
    host: String,
}

impl<'a> HostSlot<'a> {
    fn take(fleet: &'a FleetServer, host: &str) -> Option<HostSlot<'a>> {
        let mut links = lock(&fleet.host_links);
        let n = links.entry(host.to_string()).or_insert(0);
        if *n >= MAX_HOST_LINKS {
            return None;
        }
        *n += 1;
        Some(HostSlot { fleet, host: host.to_string() })
    }
}

impl Drop for HostSlot<'_> {
    fn drop(&mut self) {
        let mut links = lock(&self.fleet.host_links);
        if let Some(n) = links.get_mut(&self.host) {
            *n -= 1;
            if *n == 0 {
                links.remove(&self.host);
            }
        }
    }
}

/// Why the host's certificate is of no CA of the fleet (one retired with
/// `--force`, which also revoked the hosts still on it), if it is not.
async fn retired_ca(sh: &Core, fleet: &FleetServer, host: &HostRecord, addr: SocketAddr) -> Option<String> {
    let ca = host.ca.as_deref().filter(|ca| !fleet.authority.get().knows(ca))?;
    // Another server may have rotated a moment ago: read the CAs again.
    fleet.authority.refresh_for_host(&sh.db, &sh.policy.crypto).await;
    if fleet.authority.get().knows(ca) {
        return None;
    }
    Some(format!(
        "certificate of {} presented from {addr} was issued by retired CA {}…",
        host.name,
        pki::fingerprint_short(ca)
    ))
}

/// The host behind a certificate, if it may use this kind of link now
/// (`new_link`: at the link's hello, rather than before a conversation or
/// request on it). Errors: (machine to audit under, audit reason, what the
/// client is told).
async fn check_host(
    sh: &Core,
    fleet: &FleetServer,
    fp: &[u8; 32],
    wanted: HostRole,
    claimed: Option<&str>,
    addr: SocketAddr,
    new_link: bool,
) -> Result<HostRecord, (String, String, &'static str)> {
    let now = sh.clock.now();
    let found = sh.db.host_by_fingerprint(fp).await;
    let host = match found {
        Ok(Some(h)) => h,
        Ok(None) => {
            let reason = format!("unknown certificate {} from {addr}", pki::fingerprint_hex(fp));
            return Err((format!("{UNKNOWN_PEER}{}", addr.ip()), reason, "certificate not known to this fleet"));
        }
        Err(e) => {
            tracing::error!("looking up a fleet host failed: {e}");
            return Err(("-".into(), format!("host lookup failed: {e}"), "server unavailable"));
        }
    };
    if let Some(t) = host.revoked_at {
        let at = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64));
        let reason = format!("host {} revoked at {at}: its certificate was presented from {addr}", host.name);
        return Err((host.name.clone(), reason, "this host's credentials were revoked"));
    }
    if let Some(reason) = retired_ca(sh, fleet, &host, addr).await {
        return Err((host.name.clone(), reason, "this host's CA was retired: it needs a new bundle"));
    }
    if host.fingerprint == fp && host.expired(now) {
        // Refused at the handshake; a link made before it ran out ends here.
        let at = host.expires_at.map(pki::rfc3339).unwrap_or_default();
        let reason = format!("certificate of {} expired at {at}; presented from {addr}", host.name);
        return Err((host.name.clone(), reason, "this host's certificate expired: it needs a new bundle"));
    }
    if !host.accepts(fp, now) {
        // The certificate a renewal replaced, after the new one was
        // presented: a copy of the bundle left behind, or the host itself
        // if someone else renewed with a copy of its bundle.
        let renewed = host.renewed_at.map(pki::rfc3339).unwrap_or_else(|| "?".into());
        let reason = format!(
            "certificate of {} replaced by its renewal at {renewed} presented from {addr}: if {} did not renew \
             it, a copy of its bundle did (revoke it and issue a new one)",
            host.name, host.name
        );
        // (Or expired with it: either way, not this host's any more.)
        return Err((host.name.clone(), reason, "this certificate was replaced by a renewal"));
    }
    if host.role != wanted {
        let reason = format!(
            "{} credentials of {} presented for an {} link from {addr}",
            host.role.as_str(),
            host.name,
            wanted.as_str()
        );
        return Err((host.name.clone(), reason, "these credentials are not for this use"));
    }
    if let Some(claimed) = claimed.filter(|c| *c != host.name) {
        let reason = format!("certificate of {} presented as {claimed:?} from {addr}", host.name);
        return Err((host.name.clone(), reason, "this certificate belongs to another host"));
    }
    fleet.admission.known(addr.ip(), now);
    // The certificate a renewal made is in use: the one it replaced is
    // accepted a few minutes more (links made before it finish their
    // conversations), then no longer.
    if new_link && host.fingerprint == fp && host.prev_until.is_some_and(|t| t > now + PREV_GRACE) {
        let (name, fp) = (host.name.clone(), fp.to_vec());
        if let Err(e) = sh.db.run(move |st| st.host_presented(&name, &fp, now + PREV_GRACE)).await {
            tracing::warn!("recording the first use of {}'s renewed certificate failed: {e}", host.name);
        }
    }
    // A new link from another address than the last is audited at once:
    // a stolen bundle in use elsewhere shows up (check 39). Checked once
    // per link, not per conversation on it.
    let from = addr.ip().to_string();
    // Decided under the lock: of links made at once from a new address
    // (a burst of logins), only the first writes and audits the move.
    let (write_seen, moved) = {
        let mut seen = lock(&fleet.seen_written);
        let last = seen.get(&host.name);
        let moved = new_link
            && host.last_addr.as_deref() != Some(from.as_str())
            && last.is_none_or(|(_, written)| *written != from);
        let due = moved || last.is_none_or(|(t, _)| now - t >= SEEN_EVERY);
        if due {
            seen.insert(host.name.clone(), (now, from.clone()));
        }
        (due, moved)
    };
    if write_seen {
        let (name, machine) = (host.name.clone(), host.name.clone());
        let was = host.last_addr.clone();
        let entry = moved.then(|| {
            let reason = match &was {
                Some(was) => format!("{} links from {from} (before: {was})", host.role.as_str()),
                None => format!("{} links from {from} (its first link)", host.role.as_str()),
            };
            fleet_audit(sh, &machine, AuditResult::Link, reason)
        });
        if let Some(entry) = &entry {
            crate::core::syslog::audit(entry);
        }
        let written = sh
            .db
            .run(move |st| {
                st.host_seen(&name, now, &from)?;
                match entry {
                    Some(entry) => st.add_audit(&entry),
                    None => Ok(()),
                }
            })
            .await;
        if let Err(e) = written {
            tracing::warn!("recording when {} was last seen failed: {e}", host.name);
        }
    }
    Ok(host)
}

/// A handshake that failed (no certificate, another CA, not TLS 1.3):
/// logged at most once a second, audited at most once a minute in all
/// (addresses are cheap for an attacker; the count is kept).
async fn handshake_refused(sh: &Core, fleet: &FleetServer, addr: SocketAddr, why: &str) {
    sh.warn_throttled(&format!("fleet link from {addr}: TLS handshake failed: {why}"));
    let reason = format!("TLS handshake failed: {why} (from {addr})");
    audit_refusal_as(sh, fleet, "handshake", &format!("{UNKNOWN_PEER}{}", addr.ip()), reason).await;
}

/// The certificate a link presented: its fingerprint, and when it runs out.
#[derive(Clone, Copy)]
struct Presented {
    fp: [u8; 32],
    until: i64,
}

async fn agent_link<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut link: Link<S>,
    host: HostRecord,
    presented: Presented,
    addr: SocketAddr,
    sh: &Core,
    fleet: &FleetServer,
) {
    let fp = presented.fp;
    loop {
        let relay = match link.read(crate::fleet::wire::LINK_IDLE, sh.io_timeout, MAX_FRAME).await {
            Ok(AgentFrame::Relay(r)) => r,
            Ok(AgentFrame::Spool(batch)) => {
                // A revoked host's spool is refused like its logins.
                // Boxed, as every stage of a link's task: an idle link keeps
                // only what waiting for the next header needs.
                if let Err((machine, reason, _)) =
                    Box::pin(check_host(sh, fleet, &fp, HostRole::Agent, Some(&host.name), addr, false)).await
                {
                    return Box::pin(audit_refusal(sh, fleet, &machine, reason)).await;
                }
                let ack = Box::pin(crate::fleet::spool::receive(sh, &fleet.spool_rate, &host.name, batch)).await;
                if link.write(&ack, sh.io_timeout).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(AgentFrame::CaCheck(c)) => {
                let current =
                    match Box::pin(check_host(sh, fleet, &fp, HostRole::Agent, Some(&host.name), addr, false)).await {
                        Ok(h) => h,
                        Err((machine, reason, _)) => return Box::pin(audit_refusal(sh, fleet, &machine, reason)).await,
                    };
                let renew = renewal_due(&fleet.authority.get(), &current, &c.check_cas, sh.clock.now());
                if link.write(&CaCheckReply { renew }, sh.io_timeout).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(AgentFrame::Renew(r)) => {
                let reply = Box::pin(renew_host(sh, fleet, HostRole::Agent, presented, &r.renew_csr, addr)).await;
                if link.write(&reply, sh.io_timeout).await.is_err() || matches!(reply, RenewReply::Refused { .. }) {
                    return;
                }
                continue;
            }
            Err(FrameError::Closed | FrameError::TimedOut) => return,
            Err(e) => {
                sh.warn_throttled(&format!("agent link of {}: bad relay header: {e}", host.name));
                return;
            }
        };
        let first: ClientMsg = match link.read(sh.io_timeout, sh.io_timeout, MAX_FRAME).await {
            Ok(m) => m,
            Err(e) => {
                sh.warn_throttled(&format!("agent link of {}: no first message: {e}", host.name));
                return;
            }
        };
        // Revocation applies to the very next conversation, on every
        // server: checked with the plan of each (see HostGate).
        let refused = AtomicBool::new(false);
        let gate: crate::login::conversation::HostGate = Box::pin(async {
            match check_host(sh, fleet, &fp, HostRole::Agent, Some(&host.name), addr, false).await {
                Ok(_) => true,
                Err((machine, reason, _)) => {
                    audit_refusal(sh, fleet, &machine, reason).await;
                    refused.store(true, Ordering::Relaxed);
                    false
                }
            }
        });
        let peer = Peer {
            uid: relay.peer_uid,
            pid: relay.pid,
            machine: host.name.clone(),
            limits: sh.callers.of_host(&host.name),
            remote_caller: Some(relay.caller),
            account: relay.account,
            host_fingerprint: Some(fp.to_vec()),
        };
        let reply_within = relay.reply_within_ms.map(Duration::from_millis);
        let mut conv = Relayed { link: &mut link, done: false, reply_within, read_at: None };
        // Boxed: an idle link waits for its next header with a small future.
        Box::pin(crate::login::conversation::run(&mut conv, &peer, first, sh, Some(gate))).await;
        if refused.load(Ordering::Relaxed) {
            return;
        }
        if !conv.done {
            // Cut mid-conversation (the agent went away, a timeout): the
            // link is out of step.
            return;
        }
    }
}

/// Why a host should renew now, if it should: its certificate is not of
/// the CA that issues now, or it trusts other CAs than the fleet's
/// (`trusted`: SHA-256 hex of each). What a renewal gives it answers None.
fn renewal_due(cas: &CaSet, host: &HostRecord, trusted: &[String], now: i64) -> Option<String> {
    let issuing = cas.issuing(now);
    // On a CA newer than the one this server issues with (its clock is
    // behind the one that rotated): the host is ahead, not behind.
    let ahead = cas.all().iter().any(|c| c.id > issuing.id && host.ca.as_deref() == Some(&c.fingerprint[..]));
    if !ahead && host.ca.as_deref() != Some(&issuing.fingerprint[..]) {
        let fp = pki::fingerprint_short(&issuing.fingerprint);
        return Some(format!("the fleet issues certificates with CA {fp}… now"));
    }
    let live: std::collections::BTreeSet<String> =
        cas.settled(now).map(|c| pki::fingerprint_hex(&c.fingerprint)).collect();
    if trusted.iter().cloned().collect::<std::collections::BTreeSet<_>>() != live {
        return Some("the fleet's CAs changed".into());
    }
    None
}

/// A host's renewal over its own link (`presented` is the certificate it
/// linked with): a new certificate for the key of `csr`, issued for the
/// name on record by the current CA, recorded (compare-and-set on the
/// presented certificate, so a host revoked meanwhile gets nothing) and
/// audited in one transaction.
/// A host renews at most this often (seconds). An agent whose answer was
/// lost asks again after 1, 2, 4… minutes, and its certificate is still
/// accepted meanwhile.
const RENEW_EVERY: i64 = 300;

async fn renew_host(
    sh: &Core,
    fleet: &FleetServer,
    role: HostRole,
    presented: Presented,
    csr: &str,
    addr: SocketAddr,
) -> RenewReply {
    let refused = |reason: &str| RenewReply::Refused { reason: reason.to_string() };
    // Read again: revoked (or replaced) since the link was made.
    let host = match check_host(sh, fleet, &presented.fp, role, None, addr, false).await {
        Ok(h) => h,
        Err((machine, reason, tell)) => {
            audit_refusal(sh, fleet, &machine, format!("renewal refused: {reason}")).await;
            return refused(tell);
        }
    };
    let now = sh.clock.now();
    // A host that renews in a loop (a compromised one) would fill the
    // shared audit: one renewal per RENEW_EVERY, refusals throttled.
    if let Some(at) = host.renewed_at.filter(|at| now - at < RENEW_EVERY) {
        let reason = format!("renewal of {} from {addr} refused: it renewed {} s ago", host.name, now - at);
        audit_refusal(sh, fleet, &host.name, reason).await;
        return refused("renewed moments ago; try again later");
    }
    // Issued by the newest CA, with every CA to trust (during a rotation,
    // the servers still present certificates of the older).
    let cas = fleet.authority.get();
    let issuer = cas.issuing(now);
    let life = match role {
        HostRole::Agent => sh.host_cert_life,
        HostRole::Admin => crate::admin::ops::hosts::ADMIN_LIFE,
    };
    let signed = match issuer.ca.issue_for_csr(&host.name, csr, now, life) {
        Ok(s) => s,
        Err(e) => {
            audit_refusal(sh, fleet, &host.name, format!("renewal from {addr} refused: {e}")).await;
            return refused(&e.to_string());
        }
    };
    let entry = fleet_audit(
        sh,
        &host.name,
        AuditResult::Renewed,
        format!(
            "{} certificate renewed from {addr}: {}… valid until {}, replacing {}…",
            role.as_str(),
            pki::fingerprint_short(&signed.fingerprint),
            pki::rfc3339(signed.not_after),
            pki::fingerprint_short(&presented.fp)
        ),
    );
    let renewal = Renewal {
        presented: presented.fp.to_vec(),
        presented_until: presented.until,
        fingerprint: signed.fingerprint.to_vec(),
        expires_at: signed.not_after,
        ca: issuer.fingerprint.to_vec(),
        now,
    };
    let (name, row) = (host.name.clone(), entry.clone());
    let recorded = sh
        .db
        .run(move |st| {
            if !st.renew_host(&name, &renewal)? {
                return Ok(false);
            }
            st.add_audit(&row)?;
            Ok(true)
        })
        .await;
    match recorded {
        Ok(true) => {
            crate::core::syslog::audit(&entry);
            tracing::info!("{}", entry.reason.replacen("certificate", &format!("certificate of {}", host.name), 1));
            let ca_pem = cas.settled_pem(now);
            RenewReply::Renewed { cert_pem: signed.cert_pem, ca_pem, not_after: signed.not_after }
        }
        Ok(false) => {
            let reason = format!("renewal of {} from {addr} refused: revoked or replaced meanwhile", host.name);
            audit_refusal(sh, fleet, &host.name, reason).await;
            refused("this certificate is no longer this host's")
        }
        Err(e) => {
            tracing::error!("recording the renewal of {} failed: {e}", host.name);
            refused("server unavailable")
        }
    }
}

async fn admin_link<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut link: Link<S>,
    host: HostRecord,
    presented: Presented,
    addr: SocketAddr,
    sh: &Core,
    fleet: &FleetServer,
) {
    loop {
        let req: AdminRequest = match link.read(crate::fleet::wire::LINK_IDLE, sh.io_timeout, MAX_FRAME).await {
            Ok(r) => r,
            Err(FrameError::Closed | FrameError::TimedOut) => return,
            Err(e) => {
                let resp = AdminResponse::Error {
                    kind: common::proto::AdminErrorKind::InvalidInput,
                    message: format!("bad request: {e}"),
                };
                let _ = link.write(&resp, sh.io_timeout).await;
                return;
            }
        };
        // Revoked admin credentials stop working at the next request.
        let current = match check_host(sh, fleet, &presented.fp, HostRole::Admin, None, addr, false).await {
            Ok(h) => h,
            Err((machine, reason, tell)) => {
                audit_refusal(sh, fleet, &machine, reason).await;
                let resp = AdminResponse::Error {
                    kind: common::proto::AdminErrorKind::PermissionDenied,
                    message: tell.into(),
                };
                let _ = link.write(&resp, sh.io_timeout).await;
                return;
            }
        };
        // The credentials of this link renew themselves (crate::fleet::wire::admin_call).
        let resp = match req {
            AdminRequest::CaCheck { check_cas } => AdminResponse::CaCheck {
                renew: renewal_due(&fleet.authority.get(), &current, &check_cas, sh.clock.now()),
            },
            AdminRequest::Renew { renew_csr } => {
                match Box::pin(renew_host(sh, fleet, HostRole::Admin, presented, &renew_csr, addr)).await {
                    RenewReply::Renewed { cert_pem, ca_pem, not_after } => {
                        AdminResponse::Renewed { cert_pem, ca_pem, not_after }
                    }
                    RenewReply::Refused { reason } => {
                        AdminResponse::Error { kind: common::proto::AdminErrorKind::PermissionDenied, message: reason }
                    }
                }
            }
            req => {
                let by = crate::admin::ops::shared::By::Remote(host.name.clone());
                crate::admin::ops::dispatch::handle(req, &by, sh).await
            }
        };
        let frame = match encode_limited(&resp, MAX_ADMIN_RESPONSE) {
            Ok(f) => f,
            Err(e) => match encode(&AdminResponse::Error {
                kind: common::proto::AdminErrorKind::InvalidInput,
                message: format!("the answer is too large to send ({e}); ask for less (--limit, --since, --user)"),
            }) {
                Ok(f) => f,
                Err(_) => return,
            },
        };
        if link.write_bytes(&frame, sh.io_timeout.max(Duration::from_secs(30))).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::service::Parts;
    use crate::store::db::Db;
    use crate::store::sqlite::SqliteStore;

    const T0: i64 = 1_700_000_000;

    pub(super) fn fleet() -> (Core, FleetServer) {
        let core = Core::new(Parts::for_tests(Db::start(SqliteStore::in_memory().unwrap()), T0));
        let cas = Arc::new(Authority::new(CaSet::single(pki::Ca::generate().unwrap())));
        (core, FleetServer::new(cas, vec!["otp1".into()], 16, pki::TlsClock::system()).unwrap())
    }

    async fn add(core: &Core, name: &str, role: HostRole, fp: [u8; 32]) {
        let h = HostRecord {
            name: name.into(),
            role,
            fingerprint: fp.to_vec(),
            added_at: T0,
            revoked_at: None,
            last_seen: None,
            last_addr: None,
            ..HostRecord::default()
        };
        assert!(core.db.run(move |st| st.add_host(&h)).await.unwrap());
    }

    async fn link_rows(core: &Core) -> Vec<(String, String)> {
        let rows = core.db.run(|st| st.audit(None, None, None, 100)).await.unwrap();
        rows.into_iter().filter(|r| r.result == "link").map(|r| (r.machine, r.reason)).collect()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_host_is_its_certificates_record_and_nothing_it_claims() {
        let (core, fleet) = fleet();
        add(&core, "web01", HostRole::Agent, [1; 32]).await;
        add(&core, "adm1", HostRole::Admin, [2; 32]).await;
        let from = addr("192.0.2.7:4000");
        let check = |fp, role, claimed, new_link| check_host(&core, &fleet, fp, role, claimed, from, new_link);
        let unknown = check(&[9; 32], HostRole::Agent, None, true).await.unwrap_err();
        assert_eq!((unknown.0.as_str(), unknown.2), ("tcp:192.0.2.7", "certificate not known to this fleet"));
        let wrong_use = check(&[2; 32], HostRole::Agent, None, true).await.unwrap_err();
        assert_eq!((wrong_use.0.as_str(), wrong_use.2), ("adm1", "these credentials are not for this use"));
        let other = check(&[1; 32], HostRole::Agent, Some("web02"), true).await.unwrap_err();
        assert_eq!(other.2, "this certificate belongs to another host");
        let host = check(&[1; 32], HostRole::Agent, Some("web01"), true).await.unwrap();
        assert_eq!(host.name, "web01");
        core.db.run(|st| st.revoke_host("web01", T0 + 1)).await.unwrap();
        let revoked = check(&[1; 32], HostRole::Agent, None, false).await.unwrap_err();
        assert_eq!((revoked.0.as_str(), revoked.2), ("web01", "this host's credentials were revoked"));
        assert!(revoked.1.contains("from 192.0.2.7:4000"), "{}", revoked.1);
    }

    #[tokio::test]
    async fn a_hosts_first_link_and_each_new_address_are_audited_once() {
        let (core, fleet) = fleet();
        add(&core, "web01", HostRole::Agent, [1; 32]).await;
        let check =
            |from: &str, new_link| check_host(&core, &fleet, &[1; 32], HostRole::Agent, None, addr(from), new_link);
        check("192.0.2.7:4000", true).await.unwrap();
        check("192.0.2.7:4001", true).await.unwrap();
        check("192.0.2.7:4002", false).await.unwrap();
        let seen = core.db.read(|st| st.hosts()).await.unwrap();
        assert_eq!((seen[0].last_seen, seen[0].last_addr.as_deref()), (Some(T0), Some("192.0.2.7")));
        assert_eq!(
            link_rows(&core).await,
            [("web01".to_string(), "agent links from 192.0.2.7 (its first link)".to_string())]
        );
        check("198.51.100.9:5000", true).await.unwrap();
        let rows = link_rows(&core).await;
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(rows.iter().any(|(_, r)| r == "agent links from 198.51.100.9 (before: 192.0.2.7)"), "{rows:?}");
    }

    /// A renewal is recorded and audited; the certificate it replaced is
    /// accepted until the new one is presented (plus a grace), then refused
    /// as replaced; a revoked host gets nothing.
    #[tokio::test]
    async fn a_renewal_replaces_the_certificate_without_locking_the_host_out() {
        let (core, fleet) = fleet();
        let cas = fleet.authority.get();
        let ca = &cas.serving().ca;
        let old = ca.issue_client_at("web01", T0, 30 * 86_400).unwrap();
        let h = HostRecord {
            name: "web01".into(),
            fingerprint: old.fingerprint.to_vec(),
            added_at: T0,
            expires_at: Some(old.not_after),
            ..HostRecord::default()
        };
        assert!(core.db.run(move |st| st.add_host(&h)).await.unwrap());
        let from = addr("192.0.2.7:4000");
        let presented = Presented { fp: old.fingerprint, until: old.not_after };
        let (_key, csr) = pki::new_key_and_csr("web01").unwrap();
        let RenewReply::Renewed { cert_pem, ca_pem, not_after } =
            renew_host(&core, &fleet, HostRole::Agent, presented, &csr, from).await
        else {
            panic!("not renewed")
        };
        assert_eq!((ca_pem, not_after), (ca.cert_pem(), T0 + pki::DEFAULT_HOST_LIFE));
        use rustls::pki_types::pem::PemObject;
        let new_fp = pki::fingerprint(&rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap());
        let h = core.db.read(|st| st.host("web01")).await.unwrap().unwrap();
        assert_eq!(
            (h.fingerprint.as_slice(), h.prev_fingerprint.as_deref(), h.prev_until, h.renewed_at, h.expires_at),
            (&new_fp[..], Some(&old.fingerprint[..]), Some(old.not_after), Some(T0), Some(not_after))
        );
        let rows = core.db.run(|st| st.audit(None, Some("web01"), None, 10)).await.unwrap();
        assert!(rows.iter().any(|r| r.result == "renewed" && r.reason.contains("from 192.0.2.7:4000")), "{rows:?}");
        // Not again at once, even with the new certificate: a host renewing
        // in a loop would fill the audit.
        let again = Presented { fp: new_fp, until: not_after };
        let reply = renew_host(&core, &fleet, HostRole::Agent, again, &csr, from).await;
        assert_eq!(reply, RenewReply::Refused { reason: "renewed moments ago; try again later".into() });
        let h = core.db.read(|st| st.host("web01")).await.unwrap().unwrap();
        assert_eq!((h.fingerprint.as_slice(), h.renewed_at), (&new_fp[..], Some(T0)));

        // Both certificates work until the new one is presented.
        let (old_fp, core_ref, fleet_ref) = (old.fingerprint, &core, &fleet);
        let check = move |fp: [u8; 32], new_link| async move {
            check_host(core_ref, fleet_ref, &fp, HostRole::Agent, None, from, new_link).await
        };
        check(old_fp, true).await.unwrap();
        check(new_fp, true).await.unwrap();
        let h = core.db.read(|st| st.host("web01")).await.unwrap().unwrap();
        assert_eq!(h.prev_until, Some(T0 + PREV_GRACE), "the old one has a grace left");
        check(old.fingerprint, false).await.unwrap();
        assert!(h.superseded(&old.fingerprint, T0 + PREV_GRACE));
        assert!(!h.accepts(&old.fingerprint, T0 + PREV_GRACE) && h.accepts(&new_fp, T0 + PREV_GRACE));

        // The old certificate cannot renew once replaced... (a copy of the
        // bundle, after the grace): the host record says why.
        core.db.run(move |st| st.host_presented("web01", &new_fp, T0 - 1)).await.unwrap();
        let stale = check(old.fingerprint, false).await.unwrap_err();
        assert_eq!(stale.2, "this certificate was replaced by a renewal");
        let reply = renew_host(&core, &fleet, HostRole::Agent, presented, &csr, from).await;
        assert_eq!(reply, RenewReply::Refused { reason: "this certificate was replaced by a renewal".into() });
        // ... and a revoked host cannot renew at all.
        core.db.run(|st| st.revoke_host("web01", T0)).await.unwrap();
        let presented = Presented { fp: new_fp, until: not_after };
        let reply = renew_host(&core, &fleet, HostRole::Agent, presented, &csr, from).await;
        assert_eq!(reply, RenewReply::Refused { reason: "this host's credentials were revoked".into() });
        let h = core.db.read(|st| st.host("web01")).await.unwrap().unwrap();
        assert_eq!(h.fingerprint, new_fp.to_vec());
        let rows = core.db.run(|st| st.audit(None, Some("web01"), None, 10)).await.unwrap();
        assert_eq!(rows.iter().filter(|r| r.result == "renewed").count(), 1);
    }
}

#[cfg(test)]
fn tests_fleet() -> (crate::core::service::Core, FleetServer) {
    tests::fleet()
}

#[cfg(test)]
mod sizes {
    use super::*;

    /// A server holds one link per host (10,000 and more): a link's task
    /// keeps the size of its largest stage for as long as it lives, so the
    /// handshake and the conversation are boxed and the read buffer is
    /// small. Before: 17.5 kB per task (docs/BENCHMARKS.md "Fleet scale").
    #[tokio::test]
    async fn an_idle_links_task_is_a_few_kilobytes() {
        let (core, fleet) = super::tests_fleet();
        let host = HostRecord { name: "h".into(), role: HostRole::Agent, ..HostRecord::default() };
        let (a, _b) = tokio::io::duplex(64);
        let presented = Presented { fp: [0; 32], until: 0 };
        let idle = agent_link(Link::new(a), host, presented, "127.0.0.1:1".parse().unwrap(), &core, &fleet);
        assert!(std::mem::size_of_val(&idle) <= 3072, "agent_link: {} bytes", std::mem::size_of_val(&idle));
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (s, _) = tokio::join!(tokio::net::TcpStream::connect(tcp.local_addr().unwrap()), tcp.accept());
        let s = s.unwrap();
        let addr = s.local_addr().unwrap();
        let place = fleet.admission.enter(Stage::Handshaking, addr.ip(), 0).unwrap();
        let task = link(s, addr, place, &core, &fleet);
        assert!(std::mem::size_of_val(&task) <= 3072, "link: {} bytes", std::mem::size_of_val(&task));
    }
}
