#!/usr/bin/env bash
# The main job, sandboxed: a real otpd on SQLite in a temp dir, the built
# pam_otp.so in a real libpam stack (pam_wrapper + pamtester), and a TOTP
# enrollment at login. Nothing in the host's /etc is read or changed.
#
#   scripts/demo.sh                 scan the QR code with your phone and type the code
#   scripts/demo.sh --auto          the code is computed for you (oathtool)
#   scripts/demo.sh --fleet [--auto]  one server and two agents (web01, web02) on
#                                   this machine: enroll once through web01, log
#                                   in through web02 without a QR, revoke web02
set -euo pipefail
cd "$(dirname "$0")/.."
AUTO=0 FLEET=0
for a in "$@"; do
  case "$a" in
    --auto) AUTO=1 ;;
    --fleet) FLEET=1 ;;
    *) echo "usage: scripts/demo.sh [--fleet] [--auto]" >&2; exit 2 ;;
  esac
done
[ -t 0 ] || AUTO=1   # nobody to type a code

bash scripts/deps.sh
cargo build --workspace --bins --lib --quiet
BIN=$PWD/target/debug

D=$(mktemp -d /tmp/pam_otp-demo.XXXXXX)
chmod 755 "$D"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$D"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# A PAM service "login" whose passcode step talks to the otpd at SOCKET
# (and "other", which libpam wants to find).
services() { # DIR SOCKET
  mkdir -p "$1"
  cat > "$1/login" <<EOT
auth [success=ok ignore=ignore default=die] $BIN/libpam_otp.so socket=$2
auth required pam_permit.so
account required pam_permit.so
session optional $BIN/libpam_otp.so socket=$2
EOT
  printf '%s required pam_deny.so\n' auth account session password > "$1/other"
}
# pamtester in the sandboxed libpam stack of the services in DIR. Its
# output is not piped through anything: the QR code must be on the screen
# before the prompt waits for the code.
pam() { # DIR pamtester-operations...
  local dir=$1
  shift
  LD_PRELOAD=libpam_wrapper.so PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR="$dir" \
    stdbuf -oL pamtester -v login demo "$@" 2>&1 || true
}
# Waits for a daemon's socket; shows its log if it died instead.
await_socket() { # SOCKET PID LOG
  for _ in $(seq 200); do
    [ -S "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.05
  done
  cat "$3" >&2
  return 1
}
secret_of() { sed -n 's/.*secret=\([A-Z2-7]*\).*/\1/p'; }
# The code of the step after the current one (a new code, not a replay).
next_code() { oathtool --totp -b --now "$(date -u -d '+30 seconds' '+%Y-%m-%d %H:%M:%S UTC')" "$1"; }

if [ "$FLEET" = 0 ]; then
  cat > "$D/otpd.toml" <<EOT
[daemon]
pam_socket   = "$D/run/pam.sock"
admin_socket = "$D/run/admin.sock"
database     = "$D/state/otpd.db"
key_file     = "$D/state/secret.key"
[totp]
issuer = "pam_otp demo"
EOT
  mkdir -p "$D/state"
  "$BIN/otpd" --config "$D/otpd.toml" 2>"$D/otpd.log" &
  PIDS+=($!)
  await_socket "$D/run/admin.sock" "$!" "$D/otpd.log"
  services "$D/services" "$D/run/pam.sock"
  ctl() { "$BIN/otpctl" --config "$D/otpd.toml" "$@"; }
  login() { pam "$D/services" authenticate; }

  say "Admin: otpctl user enable demo --method totp"
  URI=$(ctl --json user enable demo --method totp --print-uri | sed -n 's/.*"otpauth_uri": "\(.*\)".*/\1/p')
  ctl user show demo
  SECRET=$(printf '%s' "$URI" | secret_of)

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
    printf '%s\n' "$(next_code "$SECRET")" | login
  fi

  say "Admin: otpctl audit"
  ctl audit
  exit 0
fi

# --fleet: a server (role = "server", SQLite) and two agents, each with its
# own sockets and state under $D, on 127.0.0.1:<free port>. In --auto mode
# every step checks its result, so the demo fails loudly if the fleet does.
check() { # success|failure OUTPUT
  [ "$AUTO" = 1 ] || return 0
  case "$1:$2" in
    success:*"successfully authenticated"*) ;;
    failure:*"successfully authenticated"*) echo "demo: expected this login to fail" >&2; exit 1 ;;
    failure:*) ;;
    *) echo "demo: expected this login to succeed" >&2; exit 1 ;;
  esac
}
free_port() {
  local used p
  used=$(ss -Htan | awk '{print $4}' | sed 's/.*://' | sort -u)
  for _ in $(seq 50); do
    # Below the kernel's ephemeral range: no outgoing connection takes it meanwhile.
    p=$((20000 + RANDOM % 12000))
    grep -qx "$p" <<<"$used" || { echo "$p"; return 0; }
  done
  return 1
}

S=$D/server
mkdir -p "$S/state"
start_server() {
  PORT=$(free_port)
  cat > "$S/otpd.toml" <<EOT
role = "server"
[daemon]
pam_socket   = "$S/run/pam.sock"
admin_socket = "$S/run/admin.sock"
database     = "$S/state/otpd.db"
key_file     = "$S/state/secret.key"
dbus         = false
[totp]
issuer = "pam_otp fleet demo"
[fleet]
listen = ["127.0.0.1:$PORT"]
names  = ["127.0.0.1"]
EOT
  "$BIN/otpd" --config "$S/otpd.toml" 2>>"$S/otpd.log" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  await_socket "$S/run/admin.sock" "$SERVER_PID" "$S/otpd.log"
}
# The port may be taken between the look and the bind: try another one.
for try in 1 2 3; do
  start_server 2>/dev/null && break
  [ "$try" = 3 ] && { cat "$S/otpd.log" >&2; exit 1; }
done
ctl() { "$BIN/otpctl" --config "$S/otpd.toml" "$@"; }

say "Server: otpd role = \"server\" on 127.0.0.1:$PORT (TLS 1.3, client certificates required)"
sed 's/^/    /' "$S/otpd.toml"

for h in web01 web02; do
  say "Server: otpctl host add $h -o $h.bundle   (copied to the host as its bundle, mode 0600)"
  mkdir -p "$D/$h"
  ctl host add "$h" -o "$D/$h/host.bundle"
  cat > "$D/$h/otpd.toml" <<EOT
role = "agent"
[daemon]
pam_socket = "$D/$h/run/pam.sock"
[fleet]
servers = ["127.0.0.1:$PORT"]
bundle  = "$D/$h/host.bundle"
spool   = "$D/$h/audit-spool.json"
EOT
  "$BIN/otpd" --config "$D/$h/otpd.toml" 2>"$D/$h/otpd.log" &
  PIDS+=($!)
  await_socket "$D/$h/run/pam.sock" "$!" "$D/$h/otpd.log"
  services "$D/$h/services" "$D/$h/run/pam.sock"
  echo "$h: otpd role = \"agent\" (holds only $h/host.bundle: $(stat -c '%a %U' "$D/$h/host.bundle"))"
done
sed 's/^/    /' "$D/web01/otpd.toml"

say "Server: otpctl user enable demo   (once, for the whole fleet)"
URI=$(ctl --json user enable demo --method totp --print-uri | sed -n 's/.*"otpauth_uri": "\(.*\)".*/\1/p')
SECRET=$(printf '%s' "$URI" | secret_of)
ctl user show demo

say "web01: first login of 'demo': enrollment with a QR code, decided by the server"
if [ "$AUTO" = 1 ]; then
  CODE=$(oathtool --totp -b "$SECRET")
  echo "(--auto: typing the code oathtool computed from the secret: $CODE)"
  OUT=$(printf '%s\n' "$CODE" | pam "$D/web01/services" authenticate open_session)
  echo "$OUT"
else
  echo "Scan the QR code below with any authenticator app, then type the code it shows."
  pam "$D/web01/services" authenticate open_session
fi
check success "${OUT:-}"

say "web02: the same person, another host: no QR, the next code"
if [ "$AUTO" = 1 ]; then
  NEXT=$(next_code "$SECRET")
  echo "(--auto: the next step's code: $NEXT)"
  OUT=$(printf '%s\n' "$NEXT" | pam "$D/web02/services" authenticate open_session)
  echo "$OUT"
else
  echo "Wait for your app to show a new code (a code is accepted once, fleet-wide), then type it."
  pam "$D/web02/services" authenticate open_session
fi
check success "${OUT:-}"
if grep -q otpauth:// <<<"${OUT:-}"; then echo "demo: web02 showed a QR code again" >&2; exit 1; fi
if [ "$AUTO" = 1 ]; then
  say "web01: the code web02 just accepted, typed again: a replay, refused (single use across the fleet)"
  OUT=$(printf '%s\n' "$NEXT" | pam "$D/web01/services" authenticate)
  echo "$OUT"
  check failure "$OUT"
fi

say "Server: otpctl sessions   (every host's sessions, one place)"
ctl sessions
say "Server: otpctl audit   (HOST: the name in the certificate that asked)"
ctl audit
say "Server: otpctl host list"
ctl host list

say "Server: otpctl host revoke web02   (no restart; the next conversation is refused)"
ctl host revoke web02
say "web02: the next login is refused"
if [ "$AUTO" = 1 ]; then
  OUT=$(printf '%s\n' "$(oathtool --totp -b --now "$(date -u -d '+60 seconds' '+%Y-%m-%d %H:%M:%S UTC')" "$SECRET")" |
    pam "$D/web02/services" authenticate)
  echo "$OUT"
else
  pam "$D/web02/services" authenticate
fi
check failure "${OUT:-}"

say "Remote administration: otpctl host add laptop --admin, then otpctl --server … --bundle …"
ctl host add laptop --admin -o "$D/laptop.bundle"
"$BIN/otpctl" --server "127.0.0.1:$PORT" --bundle "$D/laptop.bundle" host list
"$BIN/otpctl" --server "127.0.0.1:$PORT" --bundle "$D/laptop.bundle" audit --host web02 --limit 5
