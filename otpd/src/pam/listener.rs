//! Door: the PAM socket's listener (connection slots, the first frame). The
//! conversation itself is in [`crate::login::conversation`].
use crate::core::service::Core;
use crate::lock;
use crate::login::conversation::Peer;
use crate::sys::conn::{Conn, Listener};
use common::proto::ClientMsg;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Connection limits of the PAM socket.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_uid: usize,
}

/// The door's own counters.
struct PamDoor {
    core: Arc<Core>,
    limits: Limits,
    /// Open PAM connections per non-root uid.
    per_uid: Mutex<HashMap<u32, usize>>,
    /// Connections that have not yet sent a whole first frame, oldest
    /// first; notified to close when room is needed.
    silent: Mutex<BTreeMap<u64, Arc<tokio::sync::Notify>>>,
    next_connection: AtomicU64,
}

impl PamDoor {
    fn open(&self) -> &AtomicU64 {
        &self.core.gauges.pam_connections
    }
}

/// One open connection; forgets itself when the connection task ends.
struct Slot {
    door: Arc<PamDoor>,
    uid: u32,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.door.open().fetch_sub(1, Ordering::Relaxed);
        lock(&self.door.silent).remove(&self.id);
        release_uid(&self.door, self.uid);
    }
}

/// Gives back one connection of a non-root uid.
fn release_uid(door: &PamDoor, uid: u32) {
    if uid == 0 {
        return;
    }
    let mut per_uid = lock(&door.per_uid);
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
pub async fn serve_pam(listener: Listener, core: Arc<Core>, limits: Limits) {
    let door = Arc::new(PamDoor {
        core,
        limits,
        per_uid: Mutex::default(),
        silent: Mutex::default(),
        next_connection: AtomicU64::new(0),
    });
    loop {
        let stream = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE/ENFILE: let connections finish before trying again.
                door.core.warn_throttled(&format!("accept on PAM socket failed: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok((uid, _, pid)) = stream.peer() else { continue };
        let Some((slot, evicted)) = take_slot(&door, uid) else {
            door.core.warn_throttled(&format!("PAM connection from uid {uid} closed: too many open connections"));
            continue;
        };
        tokio::spawn(async move {
            let core = &slot.door.core;
            let first = tokio::select! {
                r = stream_first_frame(stream, core) => r,
                _ = evicted.notified() => None,
            };
            lock(&slot.door.silent).remove(&slot.id);
            if let Some((conn, msg)) = first {
                crate::login::conversation::run(conn, &Peer::local(core, uid, pid), msg, core, None).await;
            }
            drop(slot);
        });
    }
}

/// The first frame of a connection, within io_timeout.
async fn stream_first_frame(mut s: Conn, core: &Core) -> Option<(Conn, ClientMsg)> {
    match s.read_msg::<ClientMsg>(core.io_timeout, core.io_timeout).await {
        Ok(m) => Some((s, m)),
        Err(e) => {
            core.warn_throttled(&format!("PAM connection closed before a complete first message: {e}"));
            None
        }
    }
}

/// Reserves a connection slot; the Notify closes the connection if it is
/// evicted before it has spoken.
fn take_slot(door: &Arc<PamDoor>, uid: u32) -> Option<(Slot, Arc<tokio::sync::Notify>)> {
    if uid != 0 {
        let mut per_uid = lock(&door.per_uid);
        let n = per_uid.entry(uid).or_insert(0);
        if *n >= door.limits.max_per_uid {
            return None;
        }
        *n += 1;
    }
    let mut silent = lock(&door.silent);
    if door.open().load(Ordering::Relaxed) as usize >= door.limits.max_connections {
        // Make room by closing the oldest connection that has not spoken.
        match silent.pop_first() {
            Some((_, oldest)) => oldest.notify_one(),
            None => {
                drop(silent);
                release_uid(door, uid);
                return None;
            }
        }
    }
    let id = door.next_connection.fetch_add(1, Ordering::Relaxed);
    let evict = Arc::new(tokio::sync::Notify::new());
    silent.insert(id, evict.clone());
    door.open().fetch_add(1, Ordering::Relaxed);
    Some((Slot { door: door.clone(), uid, id }, evict))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::service::Parts;
    use crate::store::db::Db;
    use crate::store::sqlite::SqliteStore;

    fn door(max_connections: usize, max_per_uid: usize) -> Arc<PamDoor> {
        let core = Core::new(Parts::for_tests(Db::start(SqliteStore::in_memory().unwrap()), 1_700_000_000));
        Arc::new(PamDoor {
            core: Arc::new(core),
            limits: Limits { max_connections, max_per_uid },
            per_uid: Mutex::default(),
            silent: Mutex::default(),
            next_connection: AtomicU64::new(0),
        })
    }

    fn open(d: &PamDoor) -> u64 {
        d.open().load(Ordering::Relaxed)
    }

    #[test]
    fn a_uid_holds_only_its_share_and_root_is_not_counted() {
        let d = door(100, 2);
        let a = take_slot(&d, 1000).unwrap();
        let _b = take_slot(&d, 1000).unwrap();
        assert!(take_slot(&d, 1000).is_none(), "a third connection of uid 1000");
        let other = take_slot(&d, 1001);
        assert!(other.is_some(), "another uid has its own share");
        let roots: Vec<_> = (0..10).map(|_| take_slot(&d, 0).unwrap()).collect();
        assert_eq!(open(&d), 13, "every connection is shown by status");
        drop(a);
        assert!(take_slot(&d, 1000).is_some(), "a closed connection gives its place back");
        drop(roots);
        assert!(lock(&d.per_uid).get(&0).is_none(), "root is never counted per uid");
    }

    #[test]
    fn when_full_the_oldest_silent_connection_is_closed_to_make_room() {
        let d = door(2, 10);
        let (first, first_evicted) = take_slot(&d, 1000).unwrap();
        let (second, _) = take_slot(&d, 1001).unwrap();
        // The second has spoken: it is no longer among the silent ones.
        lock(&d.silent).remove(&second.id);
        let (_third, _) = take_slot(&d, 1002).unwrap();
        // The first (silent, oldest) was told to close; its slot goes when its task ends.
        assert!(futures_now(first_evicted.notified()), "the oldest silent connection is evicted");
        drop(first);
        assert_eq!(open(&d), 2);
        // Nobody silent left: a new connection is refused, and its uid's share given back.
        lock(&d.silent).clear();
        assert!(take_slot(&d, 1003).is_none());
        assert!(lock(&d.per_uid).get(&1003).is_none());
    }

    /// Whether a notification is already stored (notify_one before anyone waits).
    fn futures_now(n: tokio::sync::futures::Notified<'_>) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async { tokio::time::timeout(std::time::Duration::from_millis(50), n).await.is_ok() })
    }
}
