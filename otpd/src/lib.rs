//! otpd: owns every secret and every decision for `pam_otp.so`.
//!
//! The tree shows the architecture (docs/ARCHITECTURE.md has the page):
//! `sys` (the operating system: clock, sockets, file trust), `store` (the
//! database, SQLite or PostgreSQL, chosen there and only there), `core`
//! (every decision, knowing no door), `login` (one PAM conversation, over
//! any transport), `admin::ops` (one handler per admin request), `notify`
//! and `import`; then the doors: `pam` (the PAM socket), `admin::socket`,
//! `admin::dbus`, `fleet::link` (agents and remote otpctl on a server) and
//! `fleet::agent` (an agent's relay). `daemon` wires them together.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![warn(clippy::too_many_lines)]
#![cfg_attr(test, allow(clippy::too_many_lines))]

pub mod admin;
pub mod cli;
pub mod core;
pub mod daemon;
pub mod fleet;
pub mod import;
pub mod login;
pub mod notify;
pub mod pam;
pub mod store;
pub mod sys;
pub mod web;

/// Locks `m`, taking it over from a thread that panicked while holding it
/// (as each module's own copy of this helper did).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
