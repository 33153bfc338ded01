#!/usr/bin/env bash
# `make deb`: Debian packages of SMVS, split as people install them.
#
#   smvs-host       smvsd and smvs-keyguard: the units, system users, D-Bus policy and
#                   activation files, the default config (/etc/smvs/smvsd.toml, a conffile)
#   smvs-directory  the directory server and its unit and system user
#   smvsctl         the command line and terminal client, the call agent's user unit, shell
#                   completions (it links GStreamer for calls; the daemons do not)
#
# scripts/deb.sh [OUTDIR]     (default target/debian; BUILD=release|debug, default release)
#
# The files come from `scripts/install.sh` into a staging root (PREFIX=/usr, SYSCONFDIR=/etc),
# so a package holds exactly what `make install` installs; each staged file must be claimed by
# one package below, or this fails (a new file is not silently dropped). Dependencies on
# shared libraries come from dpkg-shlibdeps. Man pages are gzipped and each package gets
# /usr/share/doc/PACKAGE/copyright, as Debian policy asks.
#
# Maintainer scripts (dist/debian/) create the system users and directories (systemd-sysusers,
# systemd-tmpfiles), reload systemd and D-Bus when they run, and start or enable nothing. Purge
# (`dpkg --purge`, `apt purge`) alone deletes state (/var/lib/smvs*): the identity keys and the
# message store. The system users stay, as Debian's packages leave theirs.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

OUT=${1:-target/debian}
BUILD=${BUILD:-release}
CARGO=${CARGO:-cargo}
die() {
    echo "deb: error: $*" >&2
    exit 1
}
command -v dpkg-deb >/dev/null || die "dpkg-deb is missing (apt-get install dpkg-dev)"
command -v dpkg-shlibdeps >/dev/null || die "dpkg-shlibdeps is missing (apt-get install dpkg-dev)"

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[[ -n "$version" ]] || die "no version in Cargo.toml's [workspace.package]"
arch=$(dpkg --print-architecture)
maintainer="SMVS developers <smvs@localhost>"

work=$(mktemp -d "${TMPDIR:-/tmp}/smvs-deb.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
stage=$work/stage
mkdir -p "$stage"
mkdir -p "$OUT"
OUT=$(readlink -f "$OUT")

# Build what is missing, then stage exactly what `make install` would put in /usr and /etc.
if [[ "$BUILD" == release ]]; then
    "$CARGO" build --release --workspace --bins --locked
fi
DESTDIR=$stage PREFIX=/usr SYSCONFDIR=/etc BUILD=$BUILD CARGO=$CARGO \
    bash scripts/install.sh install >/dev/null
rm -f -- "$stage/usr/share/smvs/install-manifest"
rmdir -- "$stage/usr/share/smvs" 2>/dev/null || true

# Which package each staged file belongs to: the first pattern (a bash glob on the path under
# the root) that matches.
claims=(
    "smvs-directory usr/bin/smvs-directory"
    "smvs-directory usr/lib/systemd/system/smvs-directory.service"
    "smvs-directory usr/share/man/man1/smvs-directory*.1"
    "smvsctl usr/bin/smvsctl"
    "smvsctl usr/lib/systemd/user/smvsctl-agent.service"
    "smvsctl usr/share/man/man1/smvsctl*.1"
    "smvs-directory usr/share/*/smvs-directory"
    "smvs-directory usr/share/*/_smvs-directory"
    "smvs-directory usr/share/*/smvs-directory.fish"
    "smvs-host usr/share/*/smvsd"
    "smvs-host usr/share/*/_smvsd"
    "smvs-host usr/share/*/smvsd.fish"
    "smvs-host usr/share/*/smvs-keyguard"
    "smvs-host usr/share/*/_smvs-keyguard"
    "smvs-host usr/share/*/smvs-keyguard.fish"
    "smvs-host usr/share/*/smvs-hostctl"
    "smvs-host usr/share/*/_smvs-hostctl"
    "smvs-host usr/share/*/smvs-hostctl.fish"
    "smvsctl usr/share/bash-completion/*"
    "smvsctl usr/share/zsh/*"
    "smvsctl usr/share/fish/*"
    "smvs-host usr/bin/smvsd"
    "smvs-host usr/bin/smvs-keyguard"
    "smvs-host usr/bin/smvs-hostctl"
    "smvs-host usr/lib/systemd/system/smvsd@.service"
    "smvs-host usr/lib/systemd/system/smvs-keyguard@.service"
    "smvs-host usr/lib/systemd/system/smvs-hosts.slice"
    "smvs-host usr/share/man/man1/smvs-hostctl*.1"
    "smvs-host usr/lib/systemd/system/smvsd.service"
    "smvs-host usr/lib/systemd/system/smvs-keyguard.service"
    "smvs-host usr/lib/systemd/user/smvsd.service"
    "smvs-host usr/lib/systemd/user/smvs-keyguard.service"
    "smvs-host usr/lib/sysusers.d/smvs.conf"
    "smvs-host usr/lib/tmpfiles.d/smvs.conf"
    "smvs-host usr/share/dbus-1/*"
    "smvs-host usr/share/man/man1/smvsd*.1"
    "smvs-host usr/share/man/man1/smvs-keyguard*.1"
    "smvs-host etc/smvs/*"
)
packages=(smvs-host smvs-directory smvsctl)
for p in "${packages[@]}"; do mkdir -p "$work/$p"; done

while IFS= read -r -d '' file; do
    rel=${file#"$stage"/}
    owner=
    for claim in "${claims[@]}"; do
        # shellcheck disable=SC2053 # the pattern is a glob on purpose
        if [[ "$rel" == ${claim#* } ]]; then
            owner=${claim%% *}
            break
        fi
    done
    [[ -n "$owner" ]] || die "no package claims /$rel (add it to the claims in scripts/deb.sh)"
    mkdir -p "$work/$owner/$(dirname "$rel")"
    cp -p -- "$file" "$work/$owner/$rel"
done < <(find "$stage" -type f -print0)

# The directory's system user and state directory are its own package's: the lines of the
# shared sysusers.d/tmpfiles.d files that name smvs-directory move to smvs-directory.conf.
for kind in sysusers.d tmpfiles.d; do
    host_conf=$work/smvs-host/usr/lib/$kind/smvs.conf
    dir_conf=$work/smvs-directory/usr/lib/$kind/smvs-directory.conf
    mkdir -p "$(dirname "$dir_conf")"
    grep -v '^[a-z].*smvs-directory' "$host_conf" >"$host_conf.new" || true
    {
        echo "# The directory server's part of SMVS ($kind(5)); see smvs.conf in smvs-host."
        grep '^[a-z].*smvs-directory' "$host_conf" || die "$kind/smvs.conf names no smvs-directory"
    } >"$dir_conf"
    mv -- "$host_conf.new" "$host_conf"
    chmod 0644 "$host_conf" "$dir_conf"
done

describe() {
    case "$1" in
    smvs-host) cat <<'EOF'
Description: SMVS host: a user's always-on messaging host and key guard
 smvsd encrypts, stores and delivers a user's messages to other users' hosts
 (Cap'n Proto RPC over Noise), keeps them while the other side is offline, and
 fans them out to the user's devices. smvs-keyguard holds the identity's secret
 keys and signs and decrypts for it; the keys never leave it.
 .
 smvs-hostctl runs many users' hosts on one machine, each under its own
 uids (smvsd@NAME and smvs-keyguard@NAME), for whoever hosts SMVS for others.
 .
 Installs systemd units (smvsd.service, smvs-keyguard.service, their per-user
 and hosted (template) versions), the system users, and the D-Bus policy.
 Nothing is started or enabled.
EOF
        ;;
    smvs-directory) cat <<'EOF'
Description: SMVS directory: maps usernames to keys and host addresses
 smvs-directory answers look-ups of SMVS users with records it signs, with
 proofs from its key log (an auditable key directory), on SQLite or PostgreSQL.
 .
 Installs smvs-directory.service and its system user. Nothing is started.
EOF
        ;;
    smvsctl) cat <<'EOF'
Description: SMVS command line and terminal client
 smvsctl talks to an SMVS host (smvsd) on this machine or, paired as a linked
 device, on another: send and read messages, manage contacts and keys, verify
 safety numbers, and place encrypted audio and video calls (GStreamer).
EOF
        ;;
    esac
}

for p in "${packages[@]}"; do
    root=$work/$p
    # Programs stripped of symbols and debug information (policy 10.1, as dh_strip does).
    for b in "$root"/usr/bin/*; do strip --strip-unneeded --remove-section=.comment "$b"; done
    # Man pages gzipped (policy 12.1), the copyright file (policy 12.5).
    find "$root/usr/share/man" -type f -name '*.1' -exec gzip -9n {} + 2>/dev/null || true
    install -D -m 0644 /dev/stdin "$root/usr/share/doc/$p/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: smvs

Files: *
Copyright: SMVS developers
License: GPL-3.0-or-later
 On Debian systems, the full text of the GNU General Public License version 3
 can be found in /usr/share/common-licenses/GPL-3.
EOF
    # Shared-library dependencies of the package's programs.
    mkdir -p "$work/shlibs-$p/debian"
    printf 'Source: smvs\n\nPackage: %s\nArchitecture: any\n' "$p" >"$work/shlibs-$p/debian/control"
    bins=()
    for b in "$root"/usr/bin/*; do bins+=(-e"$b"); done
    shlibs=$(cd "$work/shlibs-$p" && dpkg-shlibdeps -O "${bins[@]}" 2>/dev/null |
        sed -n 's/^shlibs:Depends=//p')
    [[ -n "$shlibs" ]] || die "dpkg-shlibdeps found no dependencies for $p"
    # systemd-sysusers and systemd-tmpfiles for the maintainer scripts: systemd's, or the
    # standalone ones where systemd is not installed (a container image).
    tools="systemd | systemd-standalone-sysusers, systemd | systemd-standalone-tmpfiles"
    case "$p" in
    smvs-host)
        # The shipped config serves org.smvs.Daemon1 on the system bus (dbus = "system"),
        # which smvsd needs to start.
        depends="$shlibs, $tools, default-dbus-system-bus | dbus-system-bus"
        extra="Suggests: smvsctl"
        ;;
    smvs-directory)
        depends="$shlibs, $tools"
        extra="Suggests: postgresql"
        ;;
    smvsctl)
        depends="$shlibs"
        # The call pipelines' elements (test sources, codecs, RTP, video windows, sound).
        extra="Recommends: gstreamer1.0-plugins-base, gstreamer1.0-plugins-good, gstreamer1.0-plugins-bad, gstreamer1.0-x, gstreamer1.0-gl, gstreamer1.0-pulseaudio
Suggests: smvs-host"
        ;;
    esac
    mkdir -p "$root/DEBIAN"
    size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
    {
        echo "Package: $p"
        echo "Version: $version"
        echo "Architecture: $arch"
        echo "Maintainer: $maintainer"
        echo "Installed-Size: $size"
        echo "Depends: $depends"
        echo "$extra"
        echo "Section: net"
        echo "Priority: optional"
        describe "$p"
    } >"$root/DEBIAN/control"
    if [[ -d "$root/etc" ]]; then
        (cd "$root" && find etc -type f | sed 's|^|/|' | sort) >"$root/DEBIAN/conffiles"
    fi
    for script in preinst postinst prerm postrm; do
        if [[ -f "dist/debian/$p.$script" ]]; then
            install -m 0755 "dist/debian/$p.$script" "$root/DEBIAN/$script"
        fi
    done
    deb="$OUT/${p}_${version}_${arch}.deb"
    # xz as Debian ships; gzip for the test's debug build (seconds instead of a minute).
    compress=xz
    [[ "$BUILD" == release ]] || compress=gzip
    dpkg-deb --root-owner-group -Z"$compress" --build "$root" "$deb" >/dev/null
    echo "deb: $deb"
done
