#!/usr/bin/env bash
# The main job, sandboxed: a real otpd on SQLite in a temp dir, the built
# pam_otp.so in a real libpam stack (pam_wrapper + pamtester), and a TOTP
# enrollment at login. Nothing in the host's /etc is read or changed.
#
#   scripts/demo.sh          scan the QR code with your phone and type the code
#   scripts/demo.sh --auto   the code is computed for you (oathtool)
set -euo pipefail
cd "$(dirname "$0")/.."
AUTO=0
[ "${1:-}" = "--auto" ] && AUTO=1
[ -t 0 ] || AUTO=1   # nobody to type a code

bash scripts/deps.sh
cargo build --workspace --bins --lib --quiet
BIN=$PWD/target/debug

D=$(mktemp -d /tmp/pam_otp-demo.XXXXXX)
chmod 755 "$D"
cleanup() {
  [ -n "${OTPD_PID:-}" ] && kill "$OTPD_PID" 2>/dev/null && wait "$OTPD_PID" 2>/dev/null
  rm -rf "$D"
}
trap cleanup EXIT

cat > "$D/otpd.toml" <<EOT
[daemon]
pam_socket   = "$D/run/pam.sock"
admin_socket = "$D/run/admin.sock"
database     = "$D/state/otpd.db"
key_file     = "$D/state/secret.key"
[totp]
issuer = "pam_otp demo"
EOT
mkdir -p "$D/state" "$D/services"
"$BIN/otpd" --config "$D/otpd.toml" 2>"$D/otpd.log" &
OTPD_PID=$!
for _ in $(seq 100); do [ -S "$D/run/admin.sock" ] && break; sleep 0.05; done
[ -S "$D/run/admin.sock" ] || { cat "$D/otpd.log"; exit 1; }

cat > "$D/services/login" <<EOT
auth [success=ok ignore=ignore default=die] $BIN/libpam_otp.so socket=$D/run/pam.sock
auth required pam_permit.so
account required pam_permit.so
EOT

ctl() { "$BIN/otpctl" --config "$D/otpd.toml" "$@"; }
login() {
  LD_PRELOAD=libpam_wrapper.so PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR="$D/services" \
    pamtester -v login demo authenticate 2>&1 | grep -v '^PWRAP_ERROR' || true
}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Admin: otpctl user enable demo --method totp"
URI=$(ctl --json user enable demo --method totp --print-uri | sed -n 's/.*"otpauth_uri": "\(.*\)".*/\1/p')
ctl user show demo
SECRET=$(printf '%s' "$URI" | sed -n 's/.*secret=\([A-Z2-7]*\).*/\1/p')

say "First login of 'demo' (after the password): enrollment with a QR code"
if [ "$AUTO" = 1 ]; then
  CODE=$(oathtool --totp -b "$SECRET")
  echo "(--auto: typing the code oathtool computed from the secret: $CODE)"
  printf '%s\n' "$CODE" | login
else
  echo "Scan the QR code below with any authenticator app, then type the code it shows."
  login
fi

say "Admin: otpctl user show demo (activated after the first correct code)"
ctl user show demo

if [ "$AUTO" = 1 ]; then
  say "Same code again: a replay, refused"
  printf '%s\n' "$CODE" | login
  say "Next login: no QR any more, the next code is required"
  NEXT=$(oathtool --totp -b --now "$(date -u -d '+30 seconds' '+%Y-%m-%d %H:%M:%S UTC')" "$SECRET")
  printf '%s\n' "$NEXT" | login
fi

say "Admin: otpctl audit"
ctl audit
