//! Time as a parameter: expiry, TOTP windows and lockouts are decided
//! against a [`Clock`], so tests move time instead of sleeping.
use std::sync::atomic::{AtomicI64, Ordering};

pub trait Clock: Send + Sync + 'static {
    /// Unix seconds.
    fn now(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
    }
}

/// A clock tests set by hand.
pub struct FakeClock(AtomicI64);

impl FakeClock {
    pub fn new(t: i64) -> FakeClock {
        FakeClock(AtomicI64::new(t))
    }
    pub fn set(&self, t: i64) {
        self.0.store(t, Ordering::SeqCst)
    }
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl<C: Clock> Clock for std::sync::Arc<C> {
    fn now(&self) -> i64 {
        (**self).now()
    }
}

/// System time shifted by the seconds written in a file (debug builds only;
/// see `daemon::make_clock`).
#[cfg(debug_assertions)]
pub struct OffsetFileClock(pub std::path::PathBuf);

#[cfg(debug_assertions)]
impl Clock for OffsetFileClock {
    fn now(&self) -> i64 {
        let offset = std::fs::read_to_string(&self.0).ok().and_then(|s| s.trim().parse::<i64>().ok()).unwrap_or(0);
        SystemClock.now() + offset
    }
}
