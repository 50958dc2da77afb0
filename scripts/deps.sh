#!/usr/bin/env bash
# Installs what building and testing pam_otp needs on Debian/Ubuntu, if missing.
set -euo pipefail
pkgs=(libpam0g-dev gcc dpkg-dev lintian libpam-modules libpam-wrapper libnss-wrapper pamtester zbar-tools sqlite3 oathtool binutils util-linux sudo openssl python3-aiosmtpd dbus systemd libpam-runtime gzip openssh-server openssh-client bsdutils strace libpam-google-authenticator libpam-oath tzdata postgresql chromium chromium-driver fonts-dejavu-core)
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
# The browser tests inject axe-core (accessibility checks) from npm, pinned
# by tests/web/package-lock.json. A machine without npm gets Debian's
# (lockfile v3 needs npm 7 or later; Debian 12 ships 9).
if ! command -v npm >/dev/null; then
  echo "installing: nodejs npm" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
web="$(cd "$(dirname "$0")/.." && pwd)/tests/web"
# npm ci wipes and reinstalls node_modules: only when the lock is newer than
# what was installed from it (npm's own record, node_modules/.package-lock.json).
if [ "$web/package-lock.json" -nt "$web/node_modules/.package-lock.json" ]; then
  npm ci --prefix "$web" --ignore-scripts --no-audit --no-fund
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust from rustup.rs first" >&2; exit 1; }
# The style and lint checks the test run starts with (rustup installs them
# with the default profile; a minimal one lacks them).
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  command -v rustup >/dev/null || { echo "cargo fmt/clippy missing and no rustup to add them" >&2; exit 1; }
  rustup component add rustfmt clippy
fi
