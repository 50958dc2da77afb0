#!/usr/bin/env bash
# Runs the whole test suite: unit tests, then end-to-end tests that load the
# built pam_otp.so into the real libpam against a real otpd. Needs root for
# the tests that switch uid and use a private mount namespace; nothing in the
# host's /etc is read or changed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
# Build everything once; the tests use these very binaries.
cargo build --workspace --all-targets --locked
cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-4}"
