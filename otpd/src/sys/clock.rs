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

/// The kernel's clock discipline as `adjtimex(2)` reports it. TOTP codes
/// are checked against this clock, so whether a time source (NTP, PTP)
/// keeps it right matters as much as the users' phones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelClock {
    /// Neither TIME_ERROR returned nor STA_UNSYNC set.
    pub synchronised: bool,
    /// The kernel's maximum error estimate, microseconds.
    pub max_error_us: i64,
}

/// Reads the kernel's clock state; changes nothing (`modes` 0 needs no
/// privilege, but a system call filter may still refuse it: EPERM).
pub fn kernel_clock() -> std::io::Result<KernelClock> {
    // SAFETY: adjtimex only reads and writes the struct given; with
    // `modes` 0 it sets nothing.
    let (state, tx) = unsafe {
        let mut tx: libc::timex = std::mem::zeroed();
        (libc::adjtimex(&mut tx), tx)
    };
    if state < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // `maxerror` is a C long: 32 bits on some targets.
    #[allow(clippy::unnecessary_cast)]
    let max_error_us = tx.maxerror as i64;
    Ok(KernelClock { synchronised: state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0, max_error_us })
}

/// Whether systemd-timedated says the clock is synchronised (its
/// `NTPSynchronized`, what `timedatectl` shows), over the system bus, within
/// two seconds. For when adjtimex is forbidden to otpd itself.
pub async fn timedated_synchronised() -> Result<bool, String> {
    let ask = async {
        let bus = zbus::Connection::system().await?;
        let proxy = zbus::Proxy::new(
            &bus,
            "org.freedesktop.timedate1",
            "/org/freedesktop/timedate1",
            "org.freedesktop.timedate1",
        )
        .await?;
        proxy.get_property::<bool>("NTPSynchronized").await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), ask).await {
        Ok(Ok(synchronised)) => Ok(synchronised),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 2 s".into()),
    }
}

/// "14:32 CET": the time of day as people read clocks here, in the host's
/// time zone (TZ, else /etc/localtime, as `date` does) with its name.
/// Falls back to UTC when the C library cannot convert.
pub fn local_hhmm(t: i64) -> String {
    let utc = || {
        let secs = t.rem_euclid(86_400);
        format!("{:02}:{:02} UTC", secs / 3600, secs % 3600 / 60)
    };
    let Some(time) = libc::time_t::try_from(t).ok() else { return utc() };
    // SAFETY: localtime_r and strftime only write into the buffers given
    // here; glibc serialises its own time-zone state behind a lock.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&time, &mut tm).is_null() {
            return utc();
        }
        let mut buf = [0u8; 64];
        let n = libc::strftime(buf.as_mut_ptr().cast(), buf.len(), c"%H:%M %Z".as_ptr(), &tm);
        match std::str::from_utf8(&buf[..n]) {
            Ok(s) if n > 0 => s.trim().to_string(),
            _ => utc(),
        }
    }
}

/// The system clock. Debug builds (the test suite) may shift it by the
/// number of seconds in the file named by `OTPD_TEST_CLOCK_FILE`, or pin it
/// (`@SECONDS`), so expiry is tested without sleeping and TOTP codes without
/// racing a step boundary; release builds have no such hook.
pub fn configured() -> Box<dyn Clock> {
    #[cfg(debug_assertions)]
    if let Some(path) = std::env::var_os("OTPD_TEST_CLOCK_FILE") {
        return Box::new(OffsetFileClock(path.into()));
    }
    Box::new(SystemClock)
}

/// System time shifted by the seconds written in a file, or pinned to the
/// time written as `@SECONDS` (debug builds only; see [`configured`]).
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
    fn local_time_has_the_zone_name() {
        // TZ is read once per process by the C library; a child process
        // with its own TZ keeps this test independent of the others.
        if std::env::var_os("OTPD_LOCALTIME_CHILD").is_some() {
            println!("RESULT {} / {}", local_hhmm(1_700_000_000), local_hhmm(1_690_000_000));
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args(["--exact", "sys::clock::tests::local_time_has_the_zone_name", "--nocapture"])
            .env("OTPD_LOCALTIME_CHILD", "1")
            .env("TZ", "Europe/Berlin")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        // 2023-11-14 22:13:20 UTC is winter time, 2023-07-22 04:26:40 UTC summer time.
        assert!(text.contains("RESULT 23:13 CET / 06:26 CEST"), "{text}");
    }

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
