#!/usr/bin/env bash
# Builds the Debian package pam-otp from the workspace.
#   packaging/build-deb.sh [--profile release|debug] [--no-build] [--fast] [--out DIR]
# --fast compresses lightly (for tests, whose debug binaries are large).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=release BUILD=1 OUT=target/debian COMPRESS=
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --fast) COMPRESS="-Zgzip -z1"; shift ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ "$BUILD" = 1 ]; then
  if [ "$PROFILE" = release ]; then cargo build --release --workspace --bins --lib --locked; else cargo build --workspace --bins --lib --locked; fi
fi
BIN=target/$PROFILE
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ARCH=$(dpkg --print-architecture)
MULTIARCH=$(gcc -print-multiarch 2>/dev/null || echo "$(uname -m)-linux-gnu")
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT

inst() { install -D -m "$1" "$2" "$ROOT$3"; }
inst 0644 "$BIN/libpam_otp.so"          "/usr/lib/$MULTIARCH/security/pam_otp.so"
inst 0755 "$BIN/otpd"                   /usr/sbin/otpd
inst 0755 "$BIN/otpctl"                 /usr/sbin/otpctl
inst 0644 packaging/otpd.service        /lib/systemd/system/otpd.service
inst 0644 packaging/otpd.sysusers       /usr/lib/sysusers.d/otpd.conf
inst 0644 packaging/otpd.tmpfiles       /usr/lib/tmpfiles.d/otpd.conf
inst 0644 packaging/pam-configs/pam_otp /usr/share/pam-configs/pam_otp
inst 0644 packaging/dbus/org.otpd.conf  /usr/share/dbus-1/system.d/org.otpd.conf
inst 0644 packaging/dbus/org.otpd.service /usr/share/dbus-1/system-services/org.otpd.service
inst 0644 packaging/otpd.toml           /etc/otpd/otpd.toml
inst 0644 packaging/otpd.toml           /usr/share/doc/pam-otp/otpd.toml
for f in packaging/examples/*; do inst 0644 "$f" "/usr/share/doc/pam-otp/examples/$(basename "$f")"; done
inst 0644 README.md                     /usr/share/doc/pam-otp/README.md
mkdir -p "$ROOT/usr/share/man/man8" "$ROOT/usr/share/man/man5"
"$BIN/otpd-man" "$ROOT/usr/share/man/man8"
cp packaging/man/pam_otp.8 "$ROOT/usr/share/man/man8/"
cp packaging/man/otpd.toml.5 "$ROOT/usr/share/man/man5/"
gzip -9n "$ROOT"/usr/share/man/man*/*

chmod 0755 "$ROOT"
mkdir -p "$ROOT/DEBIAN"
SIZE=$(du -sk "$ROOT" | cut -f1)
cat > "$ROOT/DEBIAN/control" <<EOT
Package: pam-otp
Version: $VERSION
Architecture: $ARCH
Maintainer: pam_otp developers <pam-otp@localhost>
Installed-Size: $SIZE
Depends: libpam-runtime (>= 1.0.1-6), libc6
Section: admin
Priority: optional
Description: one-time passcodes for PAM logins (TOTP and emailed codes)
 pam_otp.so asks for a one-time passcode after the first factor; otpd owns
 the secrets and decisions (TOTP enrollment with QR codes, emailed codes,
 single use, lockout, audit). The PAM profile is installed but not enabled:
 run "pam-auth-update --enable pam_otp" after enrolling users.
EOT
echo /etc/otpd/otpd.toml > "$ROOT/DEBIAN/conffiles"
cat > "$ROOT/DEBIAN/postinst" <<'EOT'
#!/bin/sh
set -e
if [ "$1" = "configure" ]; then
    getent group otpadmin >/dev/null || addgroup --system otpadmin >/dev/null || true
    # Registers the profile; "Default: no" keeps it disabled until the admin enables it.
    pam-auth-update --package
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        systemctl enable otpd.service >/dev/null 2>&1 || true
        systemctl restart otpd.service || true
    fi
fi
exit 0
EOT
cat > "$ROOT/DEBIAN/prerm" <<'EOT'
#!/bin/sh
set -e
# Take pam_otp out of every PAM stack before the module file goes away, so
# no stack is left referring to a missing module (which would lock people out).
if [ "$1" = "remove" ] || [ "$1" = "deconfigure" ]; then
    pam-auth-update --package --remove pam_otp
    if [ -d /run/systemd/system ]; then
        systemctl stop otpd.service || true
        systemctl disable otpd.service >/dev/null 2>&1 || true
    fi
fi
exit 0
EOT
cat > "$ROOT/DEBIAN/postrm" <<'EOT'
#!/bin/sh
set -e
if [ "$1" = "purge" ]; then
    rm -rf /var/lib/otpd
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
EOT
chmod 0755 "$ROOT/DEBIAN/postinst" "$ROOT/DEBIAN/prerm" "$ROOT/DEBIAN/postrm"
mkdir -p "$OUT"
DEB="$OUT/pam-otp_${VERSION}_${ARCH}.deb"
# shellcheck disable=SC2086
dpkg-deb --root-owner-group $COMPRESS --build "$ROOT" "$DEB" >/dev/null
echo "$DEB"
