//! Limits per caller on the PAM socket, so that one local account can
//! neither fill the disk (a flood of attempts, each an audit row and a log
//! line) nor hold every connection slot (thousands of `su` left at the
//! passcode prompt).
//!
//! The *caller* is the real uid of the process at the other end of the
//! socket: the peer's own uid for a direct caller (a screen locker), and
//! for a peer running as root the real uid from `/proc/PID/status`, which
//! for a setuid program (`su`, `sudo`) is the user who started it. Logins
//! started by root itself (login, sshd, cron) are never limited here: they
//! are the ones the limits protect.
use crate::lock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The real uid of the process that connected. `peer_uid` and `pid` come
/// from `SO_PEERCRED`. A root peer whose status cannot be read (another pid
/// namespace, a /proc mounted with hidepid) counts as root: the daemon
/// cannot tell, and refusing would lock out every login; this is logged
/// once.
pub fn caller_uid(peer_uid: u32, pid: Option<i32>) -> u32 {
    if peer_uid != 0 {
        return peer_uid;
    }
    let Some(pid) = pid else { return 0 };
    match std::fs::read_to_string(format!("/proc/{pid}/status")).ok().as_deref().and_then(real_uid) {
        Some(uid) => uid,
        None => {
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "cannot read /proc/{pid}/status of a root caller: logins started through su/sudo are not \
                     limited per invoking user (is /proc mounted with hidepid, or ProtectProc= set?)"
                );
            }
            0
        }
    }
}

/// The real uid: the first field of the `Uid:` line of /proc/PID/status.
pub fn real_uid(status: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// Token bucket per caller: `per_minute` conversations may start in a
/// burst, and the bucket refills at `per_minute` a minute.
///
/// Callers are uids unless told otherwise (the console counts browser
/// addresses and user names).
pub struct RateLimiter<K = u32> {
    per_minute: u32,
    started: Instant,
    buckets: Mutex<HashMap<K, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

/// Forgetting full buckets once there are this many keeps the map small.
const MAX_BUCKETS: usize = 4096;

impl<K: std::hash::Hash + Eq> RateLimiter<K> {
    pub fn new(per_minute: u32) -> RateLimiter<K> {
        RateLimiter { per_minute, started: Instant::now(), buckets: Mutex::new(HashMap::new()) }
    }

    pub fn allow(&self, caller: K) -> bool {
        self.allow_at(caller, self.started.elapsed().as_millis() as u64)
    }

    /// `now_ms` is monotonic milliseconds.
    pub fn allow_at(&self, caller: K, now_ms: u64) -> bool {
        let cap = f64::from(self.per_minute);
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&caller) {
            let per_ms = cap / 60_000.0;
            buckets.retain(|_, b| b.tokens + now_ms.saturating_sub(b.at_ms) as f64 * per_ms < cap);
        }
        let b = buckets.entry(caller).or_insert(Bucket { tokens: cap, at_ms: now_ms });
        let refill = now_ms.saturating_sub(b.at_ms) as f64 * cap / 60_000.0;
        b.tokens = (b.tokens + refill).min(cap);
        b.at_ms = now_ms;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why an attempt was refused without being looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The caller started more conversations than `caller_logins_per_minute`.
    Rate,
    /// The caller sent more session records than `caller_logins_per_minute`.
    SessionRate,
    /// The caller already has `caller_max_logins` conversations open.
    CallerBusy,
    /// Callers other than root already hold `target_max_logins` for this user.
    TargetBusy,
    /// Callers other than root already hold every slot but the reserve.
    Reserve,
    /// A fleet host sent more conversations and session messages, root's
    /// included, than `fleet.host_logins_per_minute`.
    HostRate,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Rate => "rate limit",
            Refusal::SessionRate => "rate limit on session records",
            Refusal::CallerBusy => "too many logins in progress from this user",
            Refusal::TargetBusy => "too many logins in progress for the target user",
            Refusal::Reserve => "connections reserved for logins started by root",
            Refusal::HostRate => "rate limit of this host (fleet.host_logins_per_minute)",
        }
    }

    /// What the refused user sees.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Rate | Refusal::SessionRate => {
                "Too many login attempts from your account; wait a minute and try again."
            }
            Refusal::CallerBusy => {
                "Too many logins from your account are waiting for a passcode; finish or cancel one first."
            }
            Refusal::TargetBusy => {
                "Too many logins for this user are waiting for a passcode; finish or cancel one first."
            }
            Refusal::Reserve | Refusal::HostRate => "The passcode service is busy; try again in a minute.",
        }
    }
}

/// Refusals counted per caller and reason, reported as one line (and one
/// audit row) per interval instead of one per attempt.
pub struct Refusals {
    interval: i64,
    counts: Mutex<HashMap<(u32, Refusal), Tally>>,
}

#[derive(Debug, Clone, Copy)]
struct Tally {
    /// Refusals not reported yet.
    count: u64,
    /// When the first of them happened.
    since: i64,
    /// When the last report was made.
    reported_at: i64,
}

/// "`count` attempts from uid `caller` were refused (`why`) since `since`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub caller: u32,
    pub why: Refusal,
    pub count: u64,
    pub since: i64,
}

impl Report {
    pub fn reason(&self) -> String {
        let attempts = if self.count == 1 { "attempt" } else { "attempts" };
        format!(
            "{} {attempts} refused ({}) from uid {} since {}",
            self.count,
            self.why.reason(),
            self.caller,
            crate::sys::clock::local_hhmm(self.since)
        )
    }
}

impl Refusals {
    pub fn new(interval_secs: i64) -> Refusals {
        Refusals { interval: interval_secs.max(1), counts: Mutex::new(HashMap::new()) }
    }

    /// Counts one refusal. The first one of an interval is reported at once
    /// (an admin sees a flood start); the rest wait for [`Refusals::due`].
    pub fn note(&self, caller: u32, why: Refusal, now: i64) -> Option<Report> {
        let mut counts = lock(&self.counts);
        let interval = self.interval;
        let t = counts.entry((caller, why)).or_insert(Tally { count: 0, since: now, reported_at: i64::MIN });
        if t.count == 0 {
            t.since = now;
        }
        t.count += 1;
        if t.reported_at.saturating_add(interval) <= now {
            let r = Report { caller, why, count: t.count, since: t.since };
            t.count = 0;
            t.reported_at = now;
            return Some(r);
        }
        None
    }

    /// Counts whose interval is over (all of them when `all`, at shutdown);
    /// forgets callers that have been quiet for an interval.
    pub fn due(&self, now: i64, all: bool) -> Vec<Report> {
        let mut counts = lock(&self.counts);
        let mut out = Vec::new();
        let interval = self.interval;
        counts.retain(|&(caller, why), t| {
            let over = t.reported_at.saturating_add(interval) <= now;
            if t.count > 0 && (over || all) {
                out.push(Report { caller, why, count: t.count, since: t.since });
                t.count = 0;
                t.reported_at = now;
                return true;
            }
            !(t.count == 0 && over)
        });
        out
    }
}

/// Caps on conversations in progress (from `Begin` to the end of the
/// connection) started by callers other than root.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub per_caller: usize,
    pub per_target: usize,
    /// `max_connections` minus the reserve kept for logins started by root.
    pub unprivileged: usize,
}

impl Caps {
    /// While fewer conversations than this are in progress, no cap can be
    /// reached by one more, so a root peer's caller need not be looked up.
    fn lookup_from(&self) -> usize {
        self.per_caller.min(self.per_target).min(self.unprivileged)
    }
}

/// Conversations in progress. The caller of a root peer is read from /proc
/// only when it can matter: once `Caps::lookup_from` conversations are in
/// progress, the callers of all of them are looked up and counted, and so
/// is every new one while that lasts. Below it, no caller can have reached
/// a cap (each cap is at least that number), so the answer is the same as
/// looking every caller up, and ordinary logins cost no /proc read.
pub struct Conversations {
    caps: Caps,
    state: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    by_caller: HashMap<u32, usize>,
    by_target: HashMap<String, usize>,
    /// Counted conversations of callers other than root.
    total: usize,
    /// Every conversation in progress.
    open: HashMap<u64, Open>,
    next: u64,
}

struct Open {
    /// `None`: a root peer not looked up yet.
    caller: Option<u32>,
    pid: Option<i32>,
    target: String,
}

impl Held {
    fn count(&mut self, caller: u32, target: &str) {
        self.total += 1;
        *self.by_caller.entry(caller).or_insert(0) += 1;
        *self.by_target.entry(target.to_string()).or_insert(0) += 1;
    }

    fn uncount(&mut self, caller: u32, target: &str) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.by_caller.get_mut(&caller) {
            *n -= 1;
            if *n == 0 {
                self.by_caller.remove(&caller);
            }
        }
        if let Some(n) = self.by_target.get_mut(target) {
            *n -= 1;
            if *n == 0 {
                self.by_target.remove(target);
            }
        }
    }
}

/// A conversation slot; given back when dropped.
pub struct Ticket {
    owner: Option<(Arc<Conversations>, u64)>,
    caller: Option<u32>,
}

impl Ticket {
    /// The caller, if it was looked up (always for a peer other than root).
    pub fn caller(&self) -> Option<u32> {
        self.caller
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some((conv, id)) = self.owner.take() else { return };
        let mut held = lock(&conv.state);
        if let Some(o) = held.open.remove(&id) {
            if let Some(c) = o.caller.filter(|&c| c != 0) {
                held.uncount(c, &o.target);
            }
        }
    }
}

impl Conversations {
    pub fn new(caps: Caps) -> Arc<Conversations> {
        Arc::new(Conversations { caps, state: Mutex::new(Held::default()) })
    }

    /// Takes a slot for a conversation for `target` of the peer `peer_uid`
    /// (process `pid`); `lookup` gives a root peer's caller (see
    /// [`caller_uid`]). Callers other than root are refused at a cap, with
    /// the caller the refusal is counted under.
    pub fn admit(
        self: &Arc<Self>,
        peer_uid: u32,
        pid: Option<i32>,
        target: &str,
        lookup: impl Fn(u32, Option<i32>) -> u32,
    ) -> Result<Ticket, (Refusal, u32)> {
        let mut held = lock(&self.state);
        let mut caller = (peer_uid != 0).then_some(peer_uid);
        if held.open.len() >= self.caps.lookup_from() {
            let pending: Vec<u64> = held.open.iter().filter(|(_, o)| o.caller.is_none()).map(|(&id, _)| id).collect();
            for id in pending {
                let Some(o) = held.open.get_mut(&id) else { continue };
                let c = lookup(0, o.pid);
                o.caller = Some(c);
                let target = o.target.clone();
                if c != 0 {
                    held.count(c, &target);
                }
            }
            caller.get_or_insert_with(|| lookup(peer_uid, pid));
        }
        if let Some(c) = caller.filter(|&c| c != 0) {
            if held.by_caller.get(&c).copied().unwrap_or(0) >= self.caps.per_caller {
                return Err((Refusal::CallerBusy, c));
            }
            if held.by_target.get(target).copied().unwrap_or(0) >= self.caps.per_target {
                return Err((Refusal::TargetBusy, c));
            }
            if held.total >= self.caps.unprivileged {
                return Err((Refusal::Reserve, c));
            }
            held.count(c, target);
        }
        let id = held.next;
        held.next += 1;
        held.open.insert(id, Open { caller, pid, target: target.to_string() });
        Ok(Ticket { owner: Some((self.clone(), id)), caller })
    }

    /// Counted conversations of callers other than root.
    pub fn held(&self) -> usize {
        lock(&self.state).total
    }
}

/// Everything [`crate::pam::listener`] checks per caller.
pub struct CallerLimits {
    pub rate: RateLimiter,
    /// Session records have their own bucket: a script running `sudo` with
    /// cached credentials opens a session each time, and must not use up
    /// its user's logins.
    pub session_rate: RateLimiter,
    pub refusals: Refusals,
    pub conversations: Arc<Conversations>,
    /// The host whose callers these are (refusals are audited under it).
    pub machine: String,
    /// Every conversation and session message of a fleet host, root's
    /// included: a compromised host cannot write rows without bound.
    pub host_rate: Option<RateLimiter>,
}

/// Refused attempts of one caller and reason are reported at most once in
/// this many seconds.
pub const REPORT_INTERVAL: i64 = 60;

impl CallerLimits {
    pub fn new(machine: &str, per_minute: u32, caps: Caps) -> CallerLimits {
        CallerLimits {
            machine: machine.to_string(),
            host_rate: None,
            rate: RateLimiter::new(per_minute),
            session_rate: RateLimiter::new(per_minute),
            refusals: Refusals::new(REPORT_INTERVAL),
            conversations: Conversations::new(caps),
        }
    }
}

/// Whether a new emergency request of `user` for `address` is over a cap
/// of pending requests: the audit reason and the user's message if so.
/// Counted in the store, so the caps hold across restarts.
pub fn emergency_capped(
    st: &mut dyn crate::store::model::Store,
    caps: &common::config::EmergencyConfig,
    user: &str,
    address: &str,
) -> Result<Option<(String, String)>, crate::store::model::StoreError> {
    use crate::store::model::RequestCount;
    let by_user = st.count_requests(RequestCount::PendingForUser(user))?;
    if by_user >= u64::from(caps.max_pending_per_user) {
        return Ok(Some((
            format!("emergency: {by_user} requests of this user pending (max_pending_per_user)"),
            format!(
                "You already have {by_user} emergency request(s) waiting for an administrator; \
                 no new one was made. Ask your administrator to decide them."
            ),
        )));
    }
    let by_address = st.count_requests(RequestCount::PendingForAddress(address))?;
    if by_address >= u64::from(caps.max_pending_per_address) {
        return Ok(Some((
            format!("emergency: {by_address} requests for this address pending (max_pending_per_address)"),
            format!(
                "{by_address} emergency request(s) for that address are already waiting for an administrator; \
                 no new one was made."
            ),
        )));
    }
    Ok(None)
}

/// The limits of every caller: this machine's, and each remote host's
/// (server role), made on first use.
pub struct Callers {
    local: Arc<CallerLimits>,
    hosts: Mutex<HashMap<String, Arc<CallerLimits>>>,
    per_minute: u32,
    caps: Caps,
    host_per_minute: u32,
}

impl Callers {
    /// `per_minute` and `caps` per caller; `host_per_minute` conversations
    /// and session messages per remote host.
    pub fn new(machine: &str, per_minute: u32, caps: Caps, host_per_minute: u32) -> Callers {
        Callers {
            local: Arc::new(CallerLimits::new(machine, per_minute, caps)),
            hosts: Mutex::default(),
            per_minute,
            caps,
            host_per_minute,
        }
    }

    /// This machine's callers (the PAM socket).
    pub fn local(&self) -> Arc<CallerLimits> {
        self.local.clone()
    }

    /// A remote host's callers.
    pub fn of_host(&self, host: &str) -> Arc<CallerLimits> {
        let mut all = lock(&self.hosts);
        all.entry(host.to_string())
            .or_insert_with(|| {
                let mut limits = CallerLimits::new(host, self.per_minute, self.caps);
                limits.host_rate = Some(RateLimiter::new(self.host_per_minute));
                Arc::new(limits)
            })
            .clone()
    }

    /// This machine's limits and every remote host's.
    pub fn all(&self) -> Vec<Arc<CallerLimits>> {
        let mut all = vec![self.local.clone()];
        all.extend(lock(&self.hosts).values().cloned());
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_remote_host_has_its_own_limits_and_a_host_rate() {
        let caps = Caps { per_caller: 2, per_target: 4, unprivileged: 8 };
        let callers = Callers::new("here", 30, caps, 3);
        assert_eq!(callers.local().machine, "here");
        assert!(callers.local().host_rate.is_none(), "this machine's callers have no host rate");
        let web01 = callers.of_host("web01");
        assert!(Arc::ptr_eq(&web01, &callers.of_host("web01")), "made once, then the same");
        assert_eq!(web01.machine, "web01");
        let rate = web01.host_rate.as_ref().unwrap();
        assert_eq!((0..10).filter(|_| rate.allow(0)).count(), 3, "the host rate given");
        assert!(callers.of_host("web02").host_rate.as_ref().unwrap().allow(0), "another host's own");
        let mut all: Vec<_> = callers.all().iter().map(|l| l.machine.clone()).collect();
        all.sort();
        assert_eq!(all, ["here", "web01", "web02"]);
    }

    #[test]
    fn real_uid_is_the_first_field() {
        let status =
            "Name:\tsu\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(real_uid(status), Some(1000));
        assert_eq!(real_uid("Name:\tx\n"), None);
        assert_eq!(real_uid("Uid:\tjunk\t0\n"), None);
        // This test process: its real uid as the kernel reports it.
        let me = std::fs::read_to_string("/proc/self/status").unwrap();
        assert_eq!(real_uid(&me), Some(nix::unistd::getuid().as_raw()));
        assert_eq!(caller_uid(1234, Some(1)), 1234, "a non-root peer is its own caller");
    }

    #[test]
    fn bucket_allows_a_minute_then_refills() {
        let r = RateLimiter::new(30);
        let allowed = (0..100).filter(|_| r.allow_at(7, 0)).count();
        assert_eq!(allowed, 30);
        assert!(r.allow_at(8, 0), "another caller has its own bucket");
        assert!(!r.allow_at(7, 1000), "half a token after a second");
        assert!(r.allow_at(7, 2000));
        assert!(!r.allow_at(7, 2000));
        let after_a_minute = (0..100).filter(|_| r.allow_at(7, 62_000)).count();
        assert_eq!(after_a_minute, 30, "refilled to the burst, not beyond");
    }

    #[test]
    fn refusals_are_reported_once_per_interval_with_their_count() {
        let r = Refusals::new(60);
        let first = r.note(5, Refusal::Rate, 1000).unwrap();
        assert_eq!(first.count, 1);
        for t in 0..9999 {
            assert_eq!(r.note(5, Refusal::Rate, 1000 + t / 1000), None);
        }
        assert!(r.due(1030, false).is_empty(), "not before the interval is over");
        let due = r.due(1060, false);
        assert_eq!(due, vec![Report { caller: 5, why: Refusal::Rate, count: 9999, since: 1000 }]);
        assert!(due[0].reason().starts_with("9999 attempts refused (rate limit) from uid 5"), "{}", due[0].reason());
        assert!(r.due(1200, false).is_empty());
        // Quiet for an interval: forgotten, the next refusal is reported at once.
        assert_eq!(r.note(5, Refusal::Rate, 1300).map(|r| r.count), Some(1));
        r.note(5, Refusal::Rate, 1301);
        assert_eq!(r.due(1302, true).len(), 1, "shutdown reports what is pending");
    }

    #[test]
    fn caps_per_caller_per_target_and_reserve() {
        let c = Conversations::new(Caps { per_caller: 2, per_target: 3, unprivileged: 4 });
        let root = |_: u32, _: Option<i32>| 0;
        let a1 = c.admit(1000, None, "root", root).unwrap();
        let _a2 = c.admit(1000, None, "root", root).unwrap();
        assert_eq!(c.admit(1000, None, "bob", root).err(), Some((Refusal::CallerBusy, 1000)));
        let _b1 = c.admit(1001, None, "root", root).unwrap();
        assert_eq!(c.admit(1001, None, "root", root).err(), Some((Refusal::TargetBusy, 1001)));
        let _b2 = c.admit(1001, None, "carol", root).unwrap();
        assert_eq!(c.admit(1002, None, "dave", root).err(), Some((Refusal::Reserve, 1002)));
        // Root's own logins are never refused, and count towards no cap.
        let roots: Vec<_> = (0..100).map(|_| c.admit(0, Some(1), "root", root).unwrap()).collect();
        assert_eq!(c.held(), 4);
        drop(roots);
        drop(a1);
        assert_eq!(c.held(), 3);
        assert!(c.admit(1002, None, "dave", root).is_ok(), "a finished conversation gives its slot back");
    }

    #[test]
    fn a_root_peers_caller_is_looked_up_only_when_a_cap_could_be_reached() {
        // pid N belongs to a setuid program run by uid N (0: root's own).
        let lookups = std::cell::Cell::new(0);
        let lookup = |_: u32, pid: Option<i32>| {
            lookups.set(lookups.get() + 1);
            pid.unwrap_or(0) as u32
        };
        let c = Conversations::new(Caps { per_caller: 3, per_target: 10, unprivileged: 10 });
        // Below three in progress: nobody is looked up.
        let first: Vec<_> = (0..3).map(|_| c.admit(0, Some(1000), "root", lookup).unwrap()).collect();
        assert_eq!((lookups.get(), c.held()), (0, 0));
        assert!(first.iter().all(|t| t.caller().is_none()));
        // The fourth: all of them are looked up and counted, and uid 1000 is at its cap.
        assert_eq!(c.admit(0, Some(1000), "root", lookup).err(), Some((Refusal::CallerBusy, 1000)));
        assert_eq!((lookups.get(), c.held()), (4, 3));
        // Root's own login is still admitted, looked up as root.
        let r = c.admit(0, Some(0), "root", lookup).unwrap();
        assert_eq!(r.caller(), Some(0));
        drop(first);
        drop(r);
        assert_eq!(c.held(), 0, "every counted conversation was given back");
    }
}
