//! `pam_otp.so`: asks for a one-time passcode and lets `otpd` decide.
//!
//! The module knows no policy. It connects to the daemon, sends `Begin`, and
//! renders whatever the daemon asks until an `Outcome` arrives. It is
//! synchronous and thread-free (it is loaded into sshd, login, sudo and screen
//! lockers), never panics across FFI, reads no environment and no user-owned
//! file, and fails closed.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![warn(clippy::too_many_lines)]
#![cfg_attr(test, allow(clippy::too_many_lines))]

pub mod ffi;
pub mod flow;
pub mod log;
pub mod options;
