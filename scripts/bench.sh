#!/usr/bin/env bash
# The benchmark: pam_permit, pam_google_authenticator, pam_oath and
# pam_otp + otpd measured in one run with one driver (see docs/BENCHMARKS.md).
# Needs root, like the tests: otpd's socket must be owned by root. Runs its
# own otpd and SMTP sink in a temp dir and stops them. Arguments go to
# otp-bench (--procs 1,8 --users 1000,100000 --logins 4000 --email 1000 ...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --workspace --locked
exec target/release/otp-bench "$@"
