#!/usr/bin/env bash
# Installs what building and testing pam_otp needs on Debian/Ubuntu, if missing.
set -euo pipefail
pkgs=(libpam0g-dev gcc dpkg-dev lintian libpam-modules libpam-wrapper libnss-wrapper pamtester zbar-tools sqlite3 oathtool binutils util-linux sudo openssl python3-aiosmtpd dbus systemd libpam-runtime gzip openssh-server openssh-client bsdutils strace libpam-google-authenticator libpam-oath tzdata postgresql)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust from rustup.rs first" >&2; exit 1; }
# The style and lint checks the test run starts with (rustup installs them
# with the default profile; a minimal one lacks them).
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  command -v rustup >/dev/null || { echo "cargo fmt/clippy missing and no rustup to add them" >&2; exit 1; }
  rustup component add rustfmt clippy
fi
