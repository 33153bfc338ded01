#!/usr/bin/env bash
# Install the Debian packages SMVS needs to build and test.
# Idempotent; prints nothing when everything is already installed.
set -euo pipefail

PACKAGES=(
    # C toolchain and library discovery for *-sys crates
    build-essential pkg-config
    # Cap'n Proto schema compiler (capnpc, used by schema/build.rs)
    capnproto
    # The SQLite shell, for looking into a database by hand (the library is built in: rusqlite's
    # bundled amalgamation, see .cargo/config.toml)
    sqlite3
    # PostgreSQL server + client for the throw-away test server (scripts/with-postgres.sh)
    postgresql postgresql-client
    # D-Bus daemon and headers
    dbus libdbus-1-dev
    # GStreamer media stack (headers, plugins, gst-launch tools)
    libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
    gstreamer1.0-tools
    # What a call on a desktop needs: X11 and GL video windows (waylandsink alone, in
    # plugins-bad, cannot show video on an X session), and the sound server's elements
    gstreamer1.0-x gstreamer1.0-gl gstreamer1.0-alsa gstreamer1.0-pulseaudio
    # A virtual X display and xwininfo, for the test of the call window
    xvfb x11-utils
    # A real terminal for the tests of the full-screen client (`smvsctl chat`)
    tmux
    # Basic system tools used by the scripts and tests (ss, ps/pkill, runuser, TLS roots)
    iproute2 procps util-linux ca-certificates
    # Packet filtering inside the test's own network namespaces (black holes, loss, NAT), and
    # the packet capture that shows what a device's link carried
    iptables tcpdump
    # systemd-analyze, systemd-sysusers and systemd-tmpfiles check the units (check-units.sh);
    # man, which systemd-analyze verify runs to find each Documentation=man: page
    systemd man-db
    # make deb (dpkg-deb, dpkg-shlibdeps) and its test in a clean Debian root (check-deb.sh)
    dpkg-dev debootstrap debian-archive-keyring
    # make image (podman builds the host's container image) and its test (check-image.sh)
    podman
    # systemd-nspawn boots a clean Debian root with its own systemd, where smvs-hostctl's test
    # (check-hosting.sh) provisions hosted users' hosts as real units
    systemd-container
)

# A Rust toolchain is required but never downloaded here.
if ! command -v cargo >/dev/null 2>&1 && [[ ! -x "${HOME:-/nonexistent}/.cargo/bin/cargo" ]]; then
    echo "deps: error: 'cargo' not found on PATH or in \$HOME/.cargo/bin; a Rust toolchain is required (install it with rustup: https://rustup.rs)" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "deps: error: missing Debian packages: ${missing[*]} -- run 'bash scripts/deps.sh' as root or install them yourself (apt-get install ${missing[*]})" >&2
    exit 1
fi

echo "deps: installing: ${missing[*]}"
log=$(mktemp "${TMPDIR:-/tmp}/smvs-deps.XXXXXX.log")
if ! {
    apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
} >"$log" 2>&1; then
    echo "deps: error: package installation failed; last lines of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
fi
rm -f "$log"
