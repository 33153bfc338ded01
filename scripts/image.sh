#!/usr/bin/env bash
# `make image`: the SMVS host's container image (dist/container/Containerfile), built with
# podman from Debian packages alone: a debootstrapped Debian 12 minbase root, with tini,
# systemd's standalone sysusers/tmpfiles and this tree's smvs-host package installed (as
# `make deb` builds it), trimmed of apt's lists, docs and man pages, becomes the image's one
# layer. No registry is asked.
#
# scripts/image.sh    (TAG, default smvs-host:VERSION; BUILD=release|debug, default release)
#
# Needs root (debootstrap, chroot) and podman.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
# shellcheck source=scripts/lib/debian-root.sh
source scripts/lib/debian-root.sh

die() {
    echo "image: error: $*" >&2
    exit 1
}
[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap and chroot)"
command -v podman >/dev/null || die "podman is missing (apt-get install podman)"
BUILD=${BUILD:-release}
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
TAG=${TAG:-smvs-host:$version}

work=$(mktemp -d "${TMPDIR:-/var/tmp}/smvs-image.XXXXXX")
root=$work/root
cleanup() {
    remove_work "$work" "$root/proc"
}
trap cleanup EXIT
log=$work/log

BUILD=$BUILD bash scripts/deb.sh "$work/debs" >/dev/null
host_deb=$(echo "$work"/debs/smvs-host_*.deb)
[[ -f "$host_deb" ]] || die "make deb made no smvs-host package"

debian_root "$root" "$log" || die "a Debian 12 root:"$'\n'"$(tail -n 20 "$log")"
mount -t proc proc "$root/proc"
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }
# dbus only because smvs-host depends on it (its shipped config uses the system bus); the
# container's smvsd runs with --dbus none.
in_root apt-get install -y -q --no-install-recommends tini systemd-standalone-sysusers \
    systemd-standalone-tmpfiles dbus >"$log" 2>&1 || die "apt-get install:"$'\n'"$(tail -n 20 "$log")"
cp -- "$host_deb" "$root/tmp/"
in_root sh -c 'dpkg -i /tmp/smvs-host_*.deb' >"$log" 2>&1 ||
    die "dpkg -i smvs-host:"$'\n'"$(tail -n 20 "$log")"
install -D -m 0755 dist/container/entrypoint "$root/usr/lib/smvs/entrypoint"
install -D -m 0755 dist/container/healthcheck "$root/usr/lib/smvs/healthcheck"
umount "$root/proc"

# Trim what a running host never reads.
in_root apt-get clean
rm -rf -- "$root"/tmp/* "$root"/var/lib/apt/lists/* "$root"/var/cache/* "$root"/var/log/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/run/*
find "$root/etc" -maxdepth 1 -name '*-' -type f -delete # the user databases' backups

mkdir "$work/context"
tar -C "$root" --numeric-owner -cf "$work/context/rootfs.tar" .
cp -- dist/container/Containerfile "$work/context/"
# Docker's format keeps HEALTHCHECK (the OCI format has no field for it).
podman build --format docker --isolation chroot -t "$TAG" "$work/context" >"$log" 2>&1 ||
    die "podman build:"$'\n'"$(tail -n 20 "$log")"
echo "image: $TAG ($(podman image inspect "$TAG" --format '{{.Size}}') bytes)"
