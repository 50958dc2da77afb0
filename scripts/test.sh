#!/usr/bin/env bash
# Runs the whole test suite: unit tests, then end-to-end tests that load the
# built pam_otp.so into the real libpam against a real otpd. Needs root for
# the tests that switch uid and use a private mount namespace; nothing in the
# host's /etc is read or changed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
# Style and lints first: a tree that does not pass them is not tested.
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Build everything once; the tests use these very binaries.
cargo build --workspace --all-targets --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast --lib --bins --tests -- --test-threads="${TEST_THREADS:-4}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -o '[0-9]* passed' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -o '[0-9]* failed' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "total: $passed passed, $failed failed"
exit "$status"
