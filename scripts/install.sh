#!/usr/bin/env bash
# `make install` and `make uninstall`: scripts/install.sh install|uninstall
#
# Install copies into $DESTDIR$PREFIX (default /usr/local) the binaries of target/$BUILD, the
# systemd units (ExecStart= pointed at $BINDIR), sysusers.d and tmpfiles.d files, the D-Bus
# files of dist/dbus/ if any (the bus policy under /etc unless PREFIX=/usr), man pages and
# shell completions (made by smvs-dist-gen), and into $DESTDIR$SYSCONFDIR/smvs (default
# /etc/smvs) the default configs, never over an existing one.
#
# Every file and directory it creates is written, as it goes, to a manifest
# ($PREFIX/share/smvs/install-manifest), which is all that uninstall reads: it removes those
# files, a config only while it is unchanged (an edited one is kept, and said so), then those
# directories that are empty. Installing again first uninstalls what the manifest lists.
#
# Variables (the Makefile passes them through): DESTDIR PREFIX BINDIR SYSCONFDIR UNITDIR
# USERUNITDIR SYSUSERSDIR TMPFILESDIR DBUSDIR DBUSPOLICYDIR MANDIR BASHCOMPDIR ZSHCOMPDIR
# FISHCOMPDIR BUILD (release or debug) CARGO.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

action=${1:-}
DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}
PREFIX=${PREFIX:-/usr/local}
BINDIR=${BINDIR:-$PREFIX/bin}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
USERUNITDIR=${USERUNITDIR:-$PREFIX/lib/systemd/user}
SYSUSERSDIR=${SYSUSERSDIR:-$PREFIX/lib/sysusers.d}
TMPFILESDIR=${TMPFILESDIR:-$PREFIX/lib/tmpfiles.d}
DBUSDIR=${DBUSDIR:-$PREFIX/share/dbus-1}
# The system bus reads policies from /usr/share/dbus-1/system.d and /etc/dbus-1/system.d only,
# so outside PREFIX=/usr the policy goes to /etc.
if [[ -z "${DBUSPOLICYDIR:-}" ]]; then
    if [[ "$PREFIX" == /usr ]]; then
        DBUSPOLICYDIR=$DBUSDIR/system.d
    else
        DBUSPOLICYDIR=$SYSCONFDIR/dbus-1/system.d
    fi
fi
MANDIR=${MANDIR:-$PREFIX/share/man}
BASHCOMPDIR=${BASHCOMPDIR:-$PREFIX/share/bash-completion/completions}
ZSHCOMPDIR=${ZSHCOMPDIR:-$PREFIX/share/zsh/site-functions}
FISHCOMPDIR=${FISHCOMPDIR:-$PREFIX/share/fish/vendor_completions.d}
BUILD=${BUILD:-release}
CARGO=${CARGO:-cargo}
MANIFEST=$PREFIX/share/smvs/install-manifest

BINARIES=(smvsd smvsctl smvs-keyguard smvs-directory smvs-hostctl)

die() {
    echo "install: error: $*" >&2
    exit 1
}

for var in PREFIX BINDIR SYSCONFDIR UNITDIR USERUNITDIR SYSUSERSDIR TMPFILESDIR DBUSDIR \
    DBUSPOLICYDIR MANDIR BASHCOMPDIR ZSHCOMPDIR FISHCOMPDIR; do
    [[ ${!var} == /* ]] || die "$var must be an absolute path, not '${!var}'"
done

# --- uninstall --------------------------------------------------------------------------------

# Removes what the manifest lists, last written first. Prints what it kept, and a summary
# unless "quiet" is given.
uninstall() {
    local quiet=${1:-} manifest="$DESTDIR$MANIFEST" line kind rest sum path removed=0 kept=0 i
    if [[ ! -f "$manifest" ]]; then
        [[ -n "$quiet" ]] && return 0
        die "no install manifest at $manifest: nothing was installed with PREFIX=$PREFIX${DESTDIR:+ DESTDIR=$DESTDIR}"
    fi
    local -a lines
    mapfile -t lines <"$manifest"
    # The manifest is not in itself; its directory is, and goes with the others.
    rm -f -- "$manifest"
    for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
        line=${lines[i]}
        kind=${line%% *}
        rest=${line#* }
        case "$kind" in
        f)
            rm -f -- "$DESTDIR$rest"
            removed=$((removed + 1))
            ;;
        c)
            sum=${rest%% *}
            path=${rest#* }
            if [[ ! -e "$DESTDIR$path" ]]; then
                :
            elif [[ "$(sha256sum <"$DESTDIR$path" | cut -d' ' -f1)" == "$sum" ]]; then
                rm -f -- "$DESTDIR$path"
                removed=$((removed + 1))
            else
                echo "uninstall: kept $DESTDIR$path: it was changed since it was installed"
                kept=$((kept + 1))
            fi
            ;;
        d)
            # Only if empty: something else may have put files there since.
            rmdir -- "$DESTDIR$rest" 2>/dev/null || true
            ;;
        *) die "$manifest: unknown line '$line'" ;;
        esac
    done
    if [[ -z "$quiet" ]]; then
        local note=""
        [[ $kept -eq 0 ]] || note="; kept $kept changed config(s)"
        echo "uninstall: removed $removed files from ${DESTDIR:-/} (PREFIX=$PREFIX)$note"
    fi
}

if [[ "$action" == uninstall ]]; then
    uninstall
    exit 0
fi
[[ "$action" == install ]] || die "usage: scripts/install.sh install|uninstall"

# --- install ----------------------------------------------------------------------------------

case "$BUILD" in
release) profile=(--release) ;;
debug) profile=() ;;
*) die "BUILD must be release or debug, not '$BUILD'" ;;
esac
target=${CARGO_TARGET_DIR:-target}/$BUILD

# Reuse the binaries already built (`make release`, or `make build` with BUILD=debug): an
# install, often run as root, should not compile. Build only what is missing.
missing=()
for bin in "${BINARIES[@]}" smvs-dist-gen; do
    [[ -x "$target/$bin" ]] || missing+=("$bin")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "install: building (${missing[*]} not in $target)"
    locked=()
    [[ -f Cargo.lock ]] && locked=(--locked)
    "$CARGO" build "${profile[@]}" --workspace --bins "${locked[@]}"
fi

stage=$(mktemp -d "${TMPDIR:-/tmp}/smvs-install.XXXXXX")
trap 'rm -rf -- "$stage"' EXIT
"$target/smvs-dist-gen" "$stage/gen"

# Replace a previous install of this PREFIX/DESTDIR rather than pile onto it.
uninstall quiet

manifest="$DESTDIR$MANIFEST"
count=0

# Prints the directories that must be made for $DESTDIR$1 to exist, parents first.
missing_dirs() {
    local dir=$1 missing=()
    while [[ "$dir" != / && ! -d "$DESTDIR$dir" ]]; do
        missing=("$dir" "${missing[@]}")
        dir=$(dirname "$dir")
    done
    [[ ${#missing[@]} -eq 0 ]] || printf '%s\n' "${missing[@]}"
}

# Creates $DESTDIR$1 and its missing parents, recording each one made.
make_dirs() {
    local d dirs
    mapfile -t dirs < <(missing_dirs "$1")
    for d in "${dirs[@]}"; do
        mkdir -m 0755 -- "$DESTDIR$d"
        record "d $d"
    done
}

record() {
    printf '%s\n' "$1" >>"$manifest"
}

# put MODE SOURCE DEST: installs one file and records it.
put() {
    make_dirs "$(dirname "$3")"
    install -m "$1" -- "$2" "$DESTDIR$3"
    record "f $3"
    count=$((count + 1))
}

# put_config SOURCE DEST: installs a default config unless one is there already.
put_config() {
    if [[ -e "$DESTDIR$2" ]]; then
        echo "install: kept the existing $DESTDIR$2 (the default is $1)"
        return
    fi
    make_dirs "$(dirname "$2")"
    install -m 0644 -- "$1" "$DESTDIR$2"
    record "c $(sha256sum <"$1" | cut -d' ' -f1) $2"
    count=$((count + 1))
}

# Units and activation files name their binaries as /usr/bin/NAME; point them at $BINDIR.
with_bindir() {
    local out
    out=$(mktemp "$stage/unit.XXXXXX")
    sed -E "s#^(Exec[A-Za-z]*=[-@:+!]*)/usr/bin/#\\1$BINDIR/#" "$1" >"$out"
    printf '%s\n' "$out"
}

# The manifest goes first, so that even a failed install can be uninstalled.
mapfile -t manifest_dirs < <(missing_dirs "$(dirname "$MANIFEST")")
for d in "${manifest_dirs[@]}"; do mkdir -m 0755 -- "$DESTDIR$d"; done
: >"$manifest"
for d in "${manifest_dirs[@]}"; do record "d $d"; done

for bin in "${BINARIES[@]}"; do
    put 0755 "$target/$bin" "$BINDIR/$bin"
done

for unit in dist/systemd/*.service dist/systemd/*.slice; do
    put 0644 "$(with_bindir "$unit")" "$UNITDIR/$(basename "$unit")"
done
for unit in dist/systemd/user/*.service; do
    put 0644 "$(with_bindir "$unit")" "$USERUNITDIR/$(basename "$unit")"
done
put 0644 dist/systemd/sysusers.d/smvs.conf "$SYSUSERSDIR/smvs.conf"
put 0644 dist/systemd/tmpfiles.d/smvs.conf "$TMPFILESDIR/smvs.conf"

# D-Bus (dist/dbus/): the bus policy (*.conf), the interface contract (*.xml), and activation
# files: those in session/ (or services/) for the session bus, those in system/ (or
# system-services/) for the system bus, and at the top one with a User= line for the system
# bus (which requires one), any other for the session bus.
if [[ -d dist/dbus ]]; then
    shopt -s nullglob
    for f in dist/dbus/*.conf; do put 0644 "$f" "$DBUSPOLICYDIR/$(basename "$f")"; done
    for f in dist/dbus/*.xml; do put 0644 "$f" "$DBUSDIR/interfaces/$(basename "$f")"; done
    for f in dist/dbus/system/*.service dist/dbus/system-services/*.service; do
        put 0644 "$(with_bindir "$f")" "$DBUSDIR/system-services/$(basename "$f")"
    done
    for f in dist/dbus/session/*.service dist/dbus/services/*.service; do
        put 0644 "$(with_bindir "$f")" "$DBUSDIR/services/$(basename "$f")"
    done
    for f in dist/dbus/*.service; do
        if grep -q '^User=' "$f"; then
            put 0644 "$(with_bindir "$f")" "$DBUSDIR/system-services/$(basename "$f")"
        else
            put 0644 "$(with_bindir "$f")" "$DBUSDIR/services/$(basename "$f")"
        fi
    done
    shopt -u nullglob
fi

for f in dist/config/*; do
    put_config "$f" "$SYSCONFDIR/smvs/$(basename "$f")"
done

for f in "$stage"/gen/man1/*.1; do put 0644 "$f" "$MANDIR/man1/$(basename "$f")"; done
for f in "$stage"/gen/bash/*; do put 0644 "$f" "$BASHCOMPDIR/$(basename "$f")"; done
for f in "$stage"/gen/zsh/*; do put 0644 "$f" "$ZSHCOMPDIR/$(basename "$f")"; done
for f in "$stage"/gen/fish/*; do put 0644 "$f" "$FISHCOMPDIR/$(basename "$f")"; done

echo "install: $count files under ${DESTDIR:-/} (PREFIX=$PREFIX); manifest: $manifest"
if [[ -z "$DESTDIR" ]]; then
    echo "install: next: systemd-sysusers && systemd-tmpfiles --create && systemctl daemon-reload"
fi
