#!/usr/bin/env bash
# Issue-12 benchmark: `otpctl import google-authenticator` of N files (the
# default mode: every account NSS lists) and `otpctl user enable
# --from-file` of N names, each against a fresh otpd on SQLite; prints wall
# time, otpctl's CPU and peak RSS, and otpd's RSS before / peak / after.
#
#   scripts/bench-import.sh [N]        (default 100000; needs root)
#
# The N accounts exist only in a temp passwd bind-mounted over /etc/passwd in
# a private mount namespace (otpctl's NSS sees them, the host does not);
# their homes and files live in a temp dir that is removed at the end. Each
# file is what `google-authenticator -t -d -f -r 3 -R 30 -w 3` writes
# (random secret, 5 scratch codes), mode 0400, owned by its user.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
BIN=${BIN:-target/release}
if [ "$(id -u)" != 0 ]; then echo "run as root (chown of the files, mount namespace)" >&2; exit 2; fi
bash scripts/deps.sh
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --workspace --locked
D=$(mktemp -d /tmp/otp-bench-import.XXXXXX)
chmod 755 "$D"
OTPD=""
cleanup() {
  [ -n "$OTPD" ] && kill "$OTPD" 2>/dev/null && wait "$OTPD" 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT

echo "writing $N accounts and google-authenticator files under $D ..."
python3 - "$D" "$N" <<'EOF'
import os, secrets, sys, base64
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(f"{d}/etc"); os.makedirs(f"{d}/home")
with open(f"{d}/etc/passwd", "w") as pw, open(f"{d}/etc/group", "w") as gr, open(f"{d}/users.txt", "w") as names:
    pw.write("root:x:0:0:root:/root:/bin/sh\n"); gr.write("root:x:0:\n")
    for i in range(n):
        name, uid = f"ga{i:06d}", 300000 + i
        home = f"{d}/home/{name}"
        pw.write(f"{name}:x:{uid}:{uid}::{home}:/bin/sh\n"); gr.write(f"{name}:x:{uid}:\n")
        names.write(f"fe{i:06d}\n")
        os.mkdir(home, 0o700)
        secret = base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=")
        scratch = "".join(f"{secrets.randbelow(90_000_000) + 10_000_000}\n" for _ in range(5))
        path = f"{home}/.google_authenticator"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        os.write(fd, f'{secret}\n" RATE_LIMIT 3 30\n" WINDOW_SIZE 3\n" DISALLOW_REUSE\n" TOTP_AUTH\n{scratch}'.encode())
        os.close(fd)
        os.chown(path, uid, uid); os.chown(home, uid, uid)
EOF

TIME_FORMAT="%e s wall, otpctl %U s user + %S s sys, otpctl peak RSS %M kB"

rss() { awk -v k="$2:" '$1 == k { print $2 " kB" }' "/proc/$1/status"; }

start_otpd() { # NAME
  mkdir -p "$D/$1/state" "$D/$1/run"
  cat > "$D/$1/otpd.toml" <<EOT
[daemon]
pam_socket   = "$D/$1/run/pam.sock"
admin_socket = "$D/$1/run/admin.sock"
database     = "$D/$1/state/otpd.db"
key_file     = "$D/$1/state/secret.key"
EOT
  "$BIN/otpd" --config "$D/$1/otpd.toml" 2>"$D/$1/otpd.log" &
  OTPD=$!
  for _ in $(seq 200); do [ -S "$D/$1/run/admin.sock" ] && return 0; sleep 0.05; done
  cat "$D/$1/otpd.log" >&2; exit 1
}

stop_otpd() { kill "$OTPD"; wait "$OTPD" 2>/dev/null || true; OTPD=""; }

# otpctl in a private mount namespace over the temp passwd and group.
ctl() { # NAME ARGS...
  local name=$1; shift
  unshare -m --propagation private sh -c \
    'mount --bind "$0/etc/passwd" /etc/passwd && mount --bind "$0/etc/group" /etc/group && shift && exec "$@"' \
    "$D" _ /usr/bin/time -f "$TIME_FORMAT" \
    "$BIN/otpctl" --config "$D/$name/otpd.toml" "$@"
}

# otpctl with the host's own NSS (the names from the file exist nowhere:
# each costs one failed lookup, as in a real file of new names).
host_ctl() { # NAME ARGS...
  local name=$1; shift
  /usr/bin/time -f "$TIME_FORMAT" \
    "$BIN/otpctl" --config "$D/$name/otpd.toml" "$@"
}

measure() { # CTL NAME LABEL ARGS...
  local how=$1 name=$2 label=$3; shift 3
  local before; before=$(rss "$OTPD" VmRSS)
  local timing
  timing=$($how "$name" "$@" 2>&1 >"$D/$name/out.txt" | tail -1)
  echo "$label: $timing; otpd RSS $before -> peak $(rss "$OTPD" VmHWM) -> after $(rss "$OTPD" VmRSS)"
  echo "    $(tail -1 "$D/$name/out.txt")"
}

echo "== $N google-authenticator files (5 scratch codes each), $(nproc) CPUs, $(git rev-parse --short HEAD)"
start_otpd ga
measure ctl ga "import, dry run" import google-authenticator --dry-run
measure ctl ga "import" import google-authenticator
measure ctl ga "import again (all unchanged)" import google-authenticator
echo "    audit rows: $(sqlite3 "$D/ga/state/otpd.db" "select count(*) from audit") users: $(sqlite3 "$D/ga/state/otpd.db" "select count(*) from users where enabled") recovery codes: $(sqlite3 "$D/ga/state/otpd.db" "select count(*) from recovery_codes")"
stop_otpd

echo "== $N names from a file (accounts that do not exist: enabled by name)"
start_otpd fe
measure host_ctl fe "enable --from-file" user enable --from-file "$D/users.txt"
measure host_ctl fe "enable --from-file again (all unchanged)" user enable --from-file "$D/users.txt"
stop_otpd
