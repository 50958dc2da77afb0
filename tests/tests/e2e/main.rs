//! The end-to-end tests: one test binary with a module per area (a real
//! otpd, the built pam_otp.so in the real libpam, and whatever the area
//! needs besides). One binary links the support code once, where a binary
//! per area linked it 25 times.
//!
//! `cargo test -p e2e --test e2e` runs them all; `... --test e2e fleet::`
//! one area. All areas share this process and run side by side, four at a
//! time in scripts/test.sh: every test begins with
//! [`support::shared`] or, for the heavy areas (storms, floods, 64-way
//! races, the fleet, the package build), [`support::exclusive`], so that a
//! heavy test overlaps only with tests of its own area, as it did when
//! each area was a binary of its own that cargo ran after the previous one.
mod support;

mod accounts;
mod browser_harness;
mod bulk;
mod cli;
mod console;
mod console_browser;
mod crash;
mod dbus;
mod email;
mod fleet;
mod fleet_scale;
mod flood;
mod import;
mod limits;
mod lockout;
mod login;
mod module;
mod oath_import;
mod otpctl;
mod package;
mod packaging;
mod protocol;
mod races;
mod recovery;
mod sandbox;
mod sshd;
mod storage;
mod sudo;
mod trusted_files;
