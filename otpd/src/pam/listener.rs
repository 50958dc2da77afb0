//! The two Unix sockets: the PAM socket's listener (connection slots, the
//! first frame) and the admin server. The conversation itself is in
//! [`crate::login::conversation`].
use crate::admin::ops;
use crate::core::auth::Policy;
use crate::core::limits::CallerLimits;
use crate::lock;
use crate::login::conversation::Peer;
use crate::store::db::Db;
use crate::store::sqlite::SqliteStore;
use crate::sys::clock::Clock;
use crate::sys::conn::{Conn, Listener};
use common::proto::ClientMsg;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Shared {
    pub db: Db,
    pub policy: Arc<Policy>,
    pub clock: Box<dyn Clock>,
    pub io_timeout: Duration,
    pub prompt_timeout: Duration,
    pub admin_gid: Option<u32>,
    pub started_at: i64,
    pub database: String,
    pub open_connections: AtomicU64,
    /// Open PAM connections per non-root uid.
    pub per_uid: std::sync::Mutex<std::collections::HashMap<u32, usize>>,
    /// Connections that have not yet sent a whole first frame, oldest
    /// first; notified to close when room is needed.
    pub silent: std::sync::Mutex<std::collections::BTreeMap<u64, Arc<tokio::sync::Notify>>>,
    pub next_connection: AtomicU64,
    /// When the last "too many connections" warning was logged (Unix seconds).
    pub last_flood_warning: std::sync::atomic::AtomicI64,
    /// Read-only connection for the login path (see [`SqliteStore::open_reader`]);
    /// `None` on PostgreSQL, where the login path reads through [`Db`].
    pub reader: Option<std::sync::Mutex<SqliteStore>>,
    /// Wakes the mail sender when something was queued.
    pub mail_wakeup: Arc<tokio::sync::Notify>,
    /// Events for D-Bus signals; nobody listening is fine.
    pub events: tokio::sync::broadcast::Sender<crate::admin::dbus::Event>,
    /// Rate limits and conversation caps per caller of this machine (see [`crate::core::limits`]).
    pub limits: Arc<CallerLimits>,
    /// The same per remote host (server role), made on first use.
    pub host_limits: std::sync::Mutex<HashMap<String, Arc<CallerLimits>>>,
    /// What a new host's limits are made of.
    pub limit_settings: (u32, crate::core::limits::Caps),
    /// Server role: the fleet CA and TLS identity.
    pub fleet: Option<Arc<crate::fleet::link::FleetServer>>,
    /// Server role: show pending enrollments (QR, secret) on agent hosts.
    pub enroll_on_agents: bool,
    /// Server role: conversations and session messages per minute per host.
    pub host_logins_per_minute: u32,
}

impl Shared {
    pub fn emit(&self, ev: crate::admin::dbus::Event) {
        let _ = self.events.send(ev);
    }

    /// The limits of a remote host's callers.
    pub fn limits_of(&self, host: &str) -> Arc<CallerLimits> {
        let mut all = lock(&self.host_limits);
        let (per_minute, caps) = self.limit_settings;
        let host_rate = self.host_logins_per_minute;
        all.entry(host.to_string())
            .or_insert_with(|| {
                let mut limits = CallerLimits::new(host, per_minute, caps);
                limits.host_rate = Some(crate::core::limits::RateLimiter::new(host_rate));
                Arc::new(limits)
            })
            .clone()
    }

    /// This machine's limits and every remote host's.
    pub fn all_limits(&self) -> Vec<Arc<CallerLimits>> {
        let mut all = vec![self.limits.clone()];
        all.extend(lock(&self.host_limits).values().cloned());
        all
    }

    /// The login of a local PAM socket peer.
    pub fn local_peer(&self, uid: u32, pid: Option<i32>) -> Peer {
        Peer {
            uid,
            pid,
            machine: self.policy.machine.clone(),
            limits: self.limits.clone(),
            remote_caller: None,
            account: None,
            host_fingerprint: None,
        }
    }
}

/// Connection limits of the PAM socket.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_uid: usize,
}

/// One open connection; forgets itself when the connection task ends.
struct Slot {
    shared: Arc<Shared>,
    uid: u32,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.open_connections.fetch_sub(1, Ordering::Relaxed);
        lock(&self.shared.silent).remove(&self.id);
        release_uid(&self.shared, self.uid);
    }
}

/// Gives back one connection of a non-root uid.
fn release_uid(shared: &Shared, uid: u32) {
    if uid == 0 {
        return;
    }
    let mut per_uid = lock(&shared.per_uid);
    if let Some(n) = per_uid.get_mut(&uid) {
        *n -= 1;
        if *n == 0 {
            per_uid.remove(&uid);
        }
    }
}

/// Accepts every connection as soon as it arrives. Waiting for a free slot
/// before accepting would leave real logins queued in the kernel backlog
/// behind idle or half-sent connections. Instead each connection has its
/// own deadlines (io_timeout for its first frame); a non-root uid may hold
/// only a few connections at once; and when all `max_connections` are in
/// use, the oldest connection that has not yet sent a whole first frame is
/// closed to make room. Real clients send their first frame at once, so a
/// flood of idle or half-sent connections can never keep a login out.
pub async fn serve_pam(listener: Listener, shared: Arc<Shared>, limits: Limits) {
    loop {
        let stream = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE/ENFILE: let connections finish before trying again.
                warn_throttled(&shared, &format!("accept on PAM socket failed: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok((uid, _, pid)) = stream.peer() else { continue };
        let Some((slot, evicted)) = take_slot(&shared, uid, limits) else {
            warn_throttled(&shared, &format!("PAM connection from uid {uid} closed: too many open connections"));
            continue;
        };
        tokio::spawn(async move {
            let sh = &slot.shared;
            let first = tokio::select! {
                r = stream_first_frame(stream, sh) => r,
                _ = evicted.notified() => None,
            };
            lock(&sh.silent).remove(&slot.id);
            if let Some((conn, msg)) = first {
                crate::login::conversation::run(conn, &sh.local_peer(uid, pid), msg, sh, None).await;
            }
            drop(slot);
        });
    }
}

/// The first frame of a connection, within io_timeout.
async fn stream_first_frame(mut s: Conn, sh: &Shared) -> Option<(Conn, ClientMsg)> {
    match s.read_msg::<ClientMsg>(sh.io_timeout, sh.io_timeout).await {
        Ok(m) => Some((s, m)),
        Err(e) => {
            warn_throttled(sh, &format!("PAM connection closed before a complete first message: {e}"));
            None
        }
    }
}

/// Reserves a connection slot; the Notify closes the connection if it is
/// evicted before it has spoken.
fn take_slot(shared: &Arc<Shared>, uid: u32, limits: Limits) -> Option<(Slot, Arc<tokio::sync::Notify>)> {
    if uid != 0 {
        let mut per_uid = lock(&shared.per_uid);
        let n = per_uid.entry(uid).or_insert(0);
        if *n >= limits.max_per_uid {
            return None;
        }
        *n += 1;
    }
    let mut silent = lock(&shared.silent);
    if shared.open_connections.load(Ordering::Relaxed) as usize >= limits.max_connections {
        // Make room by closing the oldest connection that has not spoken.
        match silent.pop_first() {
            Some((_, oldest)) => oldest.notify_one(),
            None => {
                drop(silent);
                release_uid(shared, uid);
                return None;
            }
        }
    }
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let evict = Arc::new(tokio::sync::Notify::new());
    silent.insert(id, evict.clone());
    shared.open_connections.fetch_add(1, Ordering::Relaxed);
    Some((Slot { shared: shared.clone(), uid, id }, evict))
}

/// At most one such warning a second: a flood must not become a log flood.
pub fn warn_throttled(shared: &Shared, msg: &str) {
    let now = shared.clock.now();
    if shared.last_flood_warning.swap(now, Ordering::Relaxed) != now {
        tracing::warn!("{msg}");
    }
}

pub async fn serve_admin(listener: Listener, shared: Arc<Shared>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(16));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Ok(stream) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            ops::connection(stream, &shared).await;
            drop(permit);
        });
    }
}
