//! otpd: owns every secret and every decision for `pam_otp.so`.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod admin;
pub mod admission;
pub mod agent;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod conn;
pub mod conversation;
pub mod crypto;
pub mod daemon;
pub mod db;
pub mod dbus;
pub mod email;
pub mod fleet;
pub mod gaimport;
pub mod gauth;
pub mod groups;
pub mod hashing;
pub mod import;
pub mod limits;
pub mod mail;
pub mod passwd;
pub mod pgfast;
pub mod pgstore;
pub mod pki;
pub mod qr;
pub mod recovery;
pub mod retention;
pub mod server;
pub mod store;
pub mod syslog;
pub mod totp;
pub mod transport;
pub mod trust;

/// Locks `m`, taking it over from a thread that panicked while holding it
/// (as each module's own copy of this helper did).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
