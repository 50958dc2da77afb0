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

/// System time shifted by the seconds written in a file, or pinned to the
/// time written as `@SECONDS` (debug builds only; see `daemon::make_clock`).
/// A pinned clock lets a test compute a TOTP code for exactly the step the
/// daemon will check, at any moment of the real step.
#[cfg(debug_assertions)]
pub struct OffsetFileClock(pub std::path::PathBuf);

#[cfg(debug_assertions)]
impl Clock for OffsetFileClock {
    fn now(&self) -> i64 {
        let text = std::fs::read_to_string(&self.0).unwrap_or_default();
        let text = text.trim();
        if let Some(pinned) = text.strip_prefix('@').and_then(|t| t.parse::<i64>().ok()) {
            return pinned;
        }
        SystemClock.now() + text.parse::<i64>().unwrap_or(0)
    }
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    fn offset_file_shifts_or_pins_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let clock = OffsetFileClock(dir.path().join("clock"));
        let real = SystemClock.now();
        assert!((clock.now() - real).abs() <= 1, "absent file: real time");
        std::fs::write(&clock.0, "3600").unwrap();
        assert!((clock.now() - real - 3600).abs() <= 1);
        std::fs::write(&clock.0, "@1000000015\n").unwrap();
        assert_eq!(clock.now(), 1_000_000_015);
    }
}
