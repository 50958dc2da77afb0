//! Shared by the PAM module, the daemon and `otpctl`: the wire protocol, its
//! framing, a blocking client with deadlines, and the configuration types.
//! No async runtime here: the PAM module links this crate.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![warn(clippy::too_many_lines)]
#![cfg_attr(test, allow(clippy::too_many_lines))]

pub mod client;
pub mod codec;
#[cfg(feature = "config")]
pub mod config;
pub mod proto;
pub mod text;
pub mod web;

/// Where the daemon listens and reads its configuration unless told otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/otpd/otpd.toml";
pub const DEFAULT_PAM_SOCKET: &str = "/run/otpd/pam.sock";
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/otpd/admin.sock";
/// How long pam_otp waits for each daemon reply unless `timeout=` says
/// otherwise. Must exceed the daemon's slowest step (`io_timeout`, and a
/// database commit); sending mail never happens during a login.
pub const DEFAULT_MODULE_TIMEOUT_SECS: u64 = 10;
