//! Who may take a place on the fleet port before authenticating (check 36).
//!
//! A connection goes through two stages before it is an authenticated link:
//! it **waits** for its first byte (cheap: a socket and a task, at most
//! [`FIRST_BYTE`]), then it **handshakes** (TLS and hello: memory and CPU,
//! at most three seconds). Each stage has a cap in all, and for addresses
//! not known to the fleet a cap per network prefix (/24 for IPv4, /64 for
//! IPv6: one machine or one customer's allocation is one party, however
//! many addresses it has) and a part of the cap they may not take at all.
//! That part is kept for **known** addresses: those from which a host
//! completed a link with a valid certificate lately, remembered across
//! restarts through the hosts' last address in the database. So idle or
//! half-open connections from any number of addresses cannot keep an
//! agent with a valid certificate from a fresh link.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A new connection has this long to send its first byte (a TLS client
/// sends its hello at once).
pub const FIRST_BYTE: Duration = Duration::from_secs(1);
/// An address stays known this long after its last good link.
const KNOWN_FOR: i64 = 7 * 24 * 3600;
/// Known addresses remembered at most (the oldest are forgotten first).
const MAX_KNOWN: usize = 100_000;

/// The caps of one stage.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Connections in this stage at once, in all.
    pub total: usize,
    /// Of `total`, the part only known addresses may take.
    pub reserved: usize,
    /// Connections of one prefix not known, at once.
    pub per_prefix: usize,
    /// Connections of one known address, at once.
    pub per_known: usize,
}

/// Connections waiting for their first byte.
pub const WAITING: Caps = Caps { total: 8192, reserved: 4096, per_prefix: 64, per_known: 128 };
/// TLS handshakes in progress. A known address gets far less than the
/// reserve: anyone on an agent's host (or behind its NAT) shares its
/// address, and must not be able to take the room kept for all of them.
/// An agent makes at most 16 links at once; 64 leaves room for several
/// agents behind one NAT (the one address they share).
pub const HANDSHAKING: Caps = Caps { total: 1024, reserved: 512, per_prefix: 64, per_known: 64 };

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Waiting,
    Handshaking,
}

/// The network an address belongs to for accounting: its /24 (IPv4) or
/// /64 (IPv6; an IPv4-mapped address counts as IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Prefix {
    V4([u8; 3]),
    V6([u8; 8]),
}

fn prefix(ip: IpAddr) -> Prefix {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Prefix::V4([o[0], o[1], o[2]])
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => prefix(IpAddr::V4(v4)),
            None => {
                let o = v6.octets();
                Prefix::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
            }
        },
    }
}

#[derive(Default)]
struct Count {
    total: usize,
    unknown: usize,
    per_prefix: HashMap<Prefix, usize>,
    per_known: HashMap<IpAddr, usize>,
}

impl Count {
    fn take(&mut self, caps: &Caps, ip: IpAddr, known: bool) -> bool {
        if self.total >= caps.total {
            return false;
        }
        if known {
            let n = self.per_known.entry(ip).or_insert(0);
            if *n >= caps.per_known {
                return false;
            }
            *n += 1;
        } else {
            if self.unknown >= caps.total - caps.reserved {
                return false;
            }
            let n = self.per_prefix.entry(prefix(ip)).or_insert(0);
            if *n >= caps.per_prefix {
                return false;
            }
            *n += 1;
            self.unknown += 1;
        }
        self.total += 1;
        true
    }

    fn give_back(&mut self, ip: IpAddr, known: bool) {
        self.total -= 1;
        let (map_known, map_prefix) = (&mut self.per_known, &mut self.per_prefix);
        let done = if known {
            decrement(map_known, &ip)
        } else {
            self.unknown -= 1;
            decrement(map_prefix, &prefix(ip))
        };
        debug_assert!(done, "a place given back that was not taken");
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) -> bool {
    match map.get_mut(key) {
        Some(n) => {
            *n -= 1;
            if *n == 0 {
                map.remove(key);
            }
            true
        }
        None => false,
    }
}

#[derive(Default)]
struct State {
    waiting: Count,
    handshaking: Count,
    /// Address → when a link from it last authenticated (unix seconds).
    known: HashMap<IpAddr, i64>,
}

/// The fleet port's admission: shared by every listener of a server.
pub struct Admission {
    state: Mutex<State>,
    waiting: Caps,
    handshaking: Caps,
}

/// A place in a stage; given back when dropped.
pub struct Place {
    admission: Arc<Admission>,
    stage: Stage,
    ip: IpAddr,
    known: bool,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut state = crate::lock(&self.admission.state);
        let count = match self.stage {
            Stage::Waiting => &mut state.waiting,
            Stage::Handshaking => &mut state.handshaking,
        };
        count.give_back(self.ip, self.known);
    }
}

impl Admission {
    pub fn new(waiting: Caps, handshaking: Caps) -> Admission {
        Admission { state: Mutex::new(State::default()), waiting, handshaking }
    }

    /// A place in `stage` for a connection from `ip` at `now`, or None.
    pub fn enter(self: &Arc<Self>, stage: Stage, ip: IpAddr, now: i64) -> Option<Place> {
        let mut state = crate::lock(&self.state);
        let known = state.known.get(&ip).is_some_and(|&t| now - t < KNOWN_FOR);
        let (count, caps) = match stage {
            Stage::Waiting => (&mut state.waiting, &self.waiting),
            Stage::Handshaking => (&mut state.handshaking, &self.handshaking),
        };
        count.take(caps, ip, known).then(|| Place { admission: self.clone(), stage, ip, known })
    }

    /// A host with a valid certificate completed a link from `ip`.
    pub fn known(&self, ip: IpAddr, at: i64) {
        let mut state = crate::lock(&self.state);
        if state.known.len() >= MAX_KNOWN && !state.known.contains_key(&ip) {
            // Forget the older half: a bounded table, however many addresses.
            let mut times: Vec<i64> = state.known.values().copied().collect();
            let (_, median, _) = times.select_nth_unstable(MAX_KNOWN / 2);
            let median = *median;
            state.known.retain(|_, t| *t > median);
        }
        let t = state.known.entry(ip).or_insert(at);
        *t = (*t).max(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps { total: 10, reserved: 4, per_prefix: 3, per_known: 5 };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn fill(a: &Arc<Admission>, addrs: &[&str], each: usize) -> Vec<Place> {
        addrs.iter().flat_map(|s| (0..each).filter_map(|_| a.enter(Stage::Handshaking, ip(s), 0))).collect()
    }

    #[test]
    fn unknown_addresses_are_counted_per_prefix_and_leave_the_reserve_to_known_ones() {
        let a = Arc::new(Admission::new(CAPS, CAPS));
        a.known(ip("192.0.2.200"), 0);
        // One /24, however many addresses: 3.
        let same = fill(&a, &["10.1.1.1", "10.1.1.2", "10.1.1.3"], 2);
        assert_eq!(same.len(), 3);
        // Other prefixes: the part not reserved (6) is full after 3 more.
        let mut others = fill(&a, &["10.1.2.1", "10.1.3.1"], 3);
        assert_eq!(others.len(), 3);
        assert!(a.enter(Stage::Handshaking, ip("10.9.9.9"), 0).is_none(), "the unknown part is full");
        // The known address still gets in, up to the total.
        let known = fill(&a, &["192.0.2.200"], 10);
        assert_eq!(known.len(), 4);
        drop(known);
        others.pop();
        assert!(a.enter(Stage::Handshaking, ip("10.9.9.9"), 0).is_some(), "a place given back is free again");
        drop((same, others));
        assert_eq!(crate::lock(&a.state).handshaking.total, 0);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let wide = Caps { total: 100, reserved: 0, ..CAPS };
        let a = Arc::new(Admission::new(wide, wide));
        let v6 = fill(&a, &["2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:1:ffff::9"], 2);
        assert_eq!(v6.len(), 3);
        assert_eq!(fill(&a, &["2001:db8:0:2::1"], 1).len(), 1, "another /64");
        let v4 = fill(&a, &["198.51.100.1", "::ffff:198.51.100.2"], 2);
        assert_eq!(v4.len(), 3, "one /24 whichever way it is written");
    }

    #[test]
    fn known_addresses_are_forgotten_after_a_week_and_the_table_is_bounded() {
        let a = Arc::new(Admission::new(CAPS, CAPS));
        a.known(ip("192.0.2.1"), 0);
        assert!(a.enter(Stage::Waiting, ip("192.0.2.1"), KNOWN_FOR - 1).is_some_and(|p| p.known));
        assert!(a.enter(Stage::Waiting, ip("192.0.2.1"), KNOWN_FOR).is_some_and(|p| !p.known));
        for i in 0..(MAX_KNOWN as u32 + 10) {
            a.known(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)), i as i64);
        }
        let n = crate::lock(&a.state).known.len();
        assert!(n <= MAX_KNOWN, "{n}");
        assert!(crate::lock(&a.state)
            .known
            .contains_key(&IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + MAX_KNOWN as u32 + 9))));
    }
}
