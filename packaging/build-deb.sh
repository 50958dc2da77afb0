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
WORK=$(mktemp -d)
trap 'rm -rf "$ROOT" "$WORK"' EXIT

CHANGELOG_VERSION=$(sed -n '1s/^pam-otp (\([^)]*\)).*/\1/p' packaging/debian/changelog)
if [ "$CHANGELOG_VERSION" != "$VERSION" ]; then
  echo "packaging/debian/changelog is for $CHANGELOG_VERSION, Cargo.toml says $VERSION: add a changelog entry" >&2
  exit 1
fi
# One place names the maintainer: the changelog's newest trailer line.
MAINTAINER=$(sed -n 's/^ -- \(.*>\)  .*/\1/p' packaging/debian/changelog | head -1)

inst() { install -D -m "$1" "$2" "$ROOT$3"; }
# Debian 12's PAM modules live in /lib/<multiarch>/security (usrmerge makes
# /lib a link to /usr/lib, but dpkg tracks the path as shipped).
inst 0644 "$BIN/libpam_otp.so"          "/lib/$MULTIARCH/security/pam_otp.so"
inst 0755 "$BIN/otpd"                   /usr/sbin/otpd
inst 0755 "$BIN/otpctl"                 /usr/sbin/otpctl
inst 0755 "$BIN/otpweb"                 /usr/sbin/otpweb
# What dh_strip does: no debug symbols or build notes in the package.
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$ROOT/lib/$MULTIARCH/security/pam_otp.so"
strip --remove-section=.comment --remove-section=.note "$ROOT/usr/sbin/otpd" "$ROOT/usr/sbin/otpctl" "$ROOT/usr/sbin/otpweb"
inst 0644 packaging/otpd.service        /lib/systemd/system/otpd.service
inst 0644 packaging/otpweb.service      /lib/systemd/system/otpweb.service
inst 0644 packaging/pam.d/otpweb        /etc/pam.d/otpweb
inst 0644 packaging/otpd.sysusers       /usr/lib/sysusers.d/otpd.conf
inst 0644 packaging/otpd.tmpfiles       /usr/lib/tmpfiles.d/otpd.conf
inst 0644 packaging/pam-configs/pam_otp /usr/share/pam-configs/pam_otp
inst 0644 packaging/dbus/org.otpd.conf  /usr/share/dbus-1/system.d/org.otpd.conf
inst 0644 packaging/dbus/org.otpd.service /usr/share/dbus-1/system-services/org.otpd.service
inst 0644 packaging/otpd.toml           /etc/otpd/otpd.toml
inst 0644 packaging/otpd.toml           /usr/share/doc/pam-otp/otpd.toml
for f in packaging/examples/*; do inst 0644 "$f" "/usr/share/doc/pam-otp/examples/$(basename "$f")"; done
inst 0644 README.md                     /usr/share/doc/pam-otp/README.md
inst 0644 packaging/debian/copyright    /usr/share/doc/pam-otp/copyright
inst 0644 packaging/debian/changelog    /usr/share/doc/pam-otp/changelog
gzip -9n "$ROOT/usr/share/doc/pam-otp/changelog"
mkdir -p "$ROOT/usr/share/man/man8" "$ROOT/usr/share/man/man5"
"$BIN/otpd-man" "$ROOT/usr/share/man/man8"
cp packaging/man/pam_otp.8 packaging/man/otpweb.8 "$ROOT/usr/share/man/man8/"
cp packaging/man/otpd.toml.5 "$ROOT/usr/share/man/man5/"
gzip -9n "$ROOT"/usr/share/man/man*/*

chmod 0755 "$ROOT"
mkdir -p "$ROOT/DEBIAN"
# The libraries the binaries really link (libc6 versioned by the symbols
# used), as dh_shlibdeps would compute them. dpkg-shlibdeps wants a source
# tree: give it a minimal debian/control in a scratch directory.
mkdir -p "$WORK/debian"
printf 'Source: pam-otp\n\nPackage: pam-otp\nArchitecture: any\n' > "$WORK/debian/control"
SHLIBS=$(cd "$WORK" && dpkg-shlibdeps -O "$ROOT/usr/sbin/otpd" "$ROOT/usr/sbin/otpctl" "$ROOT/usr/sbin/otpweb" \
  "$ROOT/lib/$MULTIARCH/security/pam_otp.so" | sed -n 's/^shlibs:Depends=//p')
[ -n "$SHLIBS" ] || { echo "dpkg-shlibdeps found no dependencies" >&2; exit 1; }
SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
cat > "$ROOT/DEBIAN/control" <<EOT
Package: pam-otp
Version: $VERSION
Architecture: $ARCH
Maintainer: $MAINTAINER
Installed-Size: $SIZE
Depends: $SHLIBS, libpam-runtime (>= 1.0.1-6)
Section: admin
Priority: optional
Description: one-time passcodes for PAM logins (TOTP and emailed codes)
 pam_otp.so asks for a one-time passcode after the first factor; otpd owns
 the secrets and decisions (TOTP enrollment with QR codes, emailed codes,
 single use, lockout, audit). The PAM profile is installed but not enabled:
 run "pam-auth-update --enable pam_otp" after enrolling users.
 .
 otpweb, the web console (admin screens and a self-service page), ships
 disabled: set [web] enabled = true in otpd.toml, then enable otpweb.service.
EOT
printf '%s\n' /etc/otpd/otpd.toml /etc/pam.d/otpweb > "$ROOT/DEBIAN/conffiles"
(cd "$ROOT" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' | LC_ALL=C sort -z \
  | xargs -0 md5sum > DEBIAN/md5sums)
chmod 0644 "$ROOT/DEBIAN/md5sums"
for s in postinst prerm postrm; do install -m 0755 "packaging/debian/$s" "$ROOT/DEBIAN/$s"; done
mkdir -p "$OUT"
DEB="$OUT/pam-otp_${VERSION}_${ARCH}.deb"
# shellcheck disable=SC2086
dpkg-deb --root-owner-group $COMPRESS --build "$ROOT" "$DEB" >/dev/null
echo "$DEB"
