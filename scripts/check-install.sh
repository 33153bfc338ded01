#!/usr/bin/env bash
# `make install DESTDIR=<empty temp dir>`, then `make uninstall DESTDIR=<same>`: the install
# must hold every kind of file it promises, and the uninstall must leave the directory empty
# (every file and every directory the install made is gone). Also: installing over an existing
# config keeps it, and uninstall keeps a config that was edited.
#
# Uses the debug binaries `make build` made (BUILD=debug), so no release build is needed. The
# last line counts the checks ("N passed, 0 failed"); a failure says what and exits non-zero.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

MAKE=${MAKE:-make}
root=$(mktemp -d "${TMPDIR:-/tmp}/smvs-check-install.XXXXXX")
trap 'rm -rf -- "$root"' EXIT
passed=0
fail() {
    echo "check-install: FAIL: $*" >&2
    echo "check-install: $passed passed, 1 failed"
    exit 1
}
pass() {
    echo "check-install: $*"
    passed=$((passed + 1))
}
run_make() {
    local log
    log=$("$MAKE" --no-print-directory -s "$@" PREFIX=/usr/local BUILD=debug DESTDIR="$root" 2>&1) ||
        fail "make $* failed:"$'\n'"$log"
}

run_make install
prefix=$root/usr/local
for f in bin/smvsd bin/smvsctl bin/smvs-keyguard bin/smvs-directory bin/smvs-hostctl \
    lib/systemd/system/smvsd.service lib/systemd/system/smvs-keyguard.service \
    lib/systemd/system/smvsd@.service lib/systemd/system/smvs-keyguard@.service \
    lib/systemd/system/smvs-hosts.slice share/man/man1/smvs-hostctl.1 \
    lib/systemd/system/smvs-directory.service lib/systemd/user/smvsd.service \
    lib/systemd/user/smvsctl-agent.service lib/sysusers.d/smvs.conf lib/tmpfiles.d/smvs.conf \
    share/man/man1/smvsd.1 share/man/man1/smvsctl.1 share/man/man1/smvs-keyguard.1 \
    share/man/man1/smvs-directory.1 share/bash-completion/completions/smvsctl \
    share/zsh/site-functions/_smvsctl share/fish/vendor_completions.d/smvsctl.fish \
    share/smvs/install-manifest; do
    [[ -f "$prefix/$f" ]] || fail "make install did not install \$(PREFIX)/$f"
done
[[ -f "$root/etc/smvs/smvsd.toml" ]] || fail "make install did not install /etc/smvs/smvsd.toml"
[[ -f "$root/etc/smvs/hosting.toml" ]] || fail "make install did not install /etc/smvs/hosting.toml"
if [[ -d dist/dbus ]]; then
    ls "$root"/etc/dbus-1/system.d/*.conf >/dev/null 2>&1 ||
        fail "make install did not install the D-Bus policy in /etc/dbus-1/system.d"
fi
grep -q "^ExecStart=/usr/local/bin/smvsd " "$prefix/lib/systemd/system/smvsd.service" ||
    fail "smvsd.service does not run \$(BINDIR)/smvsd"
installed=$(grep -c '^[fc] ' "$prefix/share/smvs/install-manifest")
pass "make install put $installed files in an empty DESTDIR, every kind expected"

# An edited config survives both a reinstall and an uninstall; nothing else does.
echo "# edited by check-install" >>"$root/etc/smvs/smvsd.toml"
run_make install
grep -q "edited by check-install" "$root/etc/smvs/smvsd.toml" ||
    fail "make install overwrote an existing /etc/smvs/smvsd.toml"
run_make uninstall
left=$(cd "$root" && find . -mindepth 1 | sort)
[[ "$left" == $'./etc\n./etc/smvs\n./etc/smvs/smvsd.toml' ]] ||
    fail "after an edited config, uninstall left more (or less) than that config:"$'\n'"$left"
pass "an existing config survived make install, and an edited one make uninstall"
rm -r -- "$root/etc"

run_make install
run_make uninstall
left=$(cd "$root" && find . -mindepth 1 | sort)
[[ -z "$left" ]] || fail "make uninstall left behind:"$'\n'"$left"

pass "make uninstall left the DESTDIR empty"
echo "check-install: $passed passed, 0 failed"
