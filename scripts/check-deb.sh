#!/usr/bin/env bash
# `make deb`'s packages in a clean Debian 12 root: debootstrap (minbase) from the Debian
# mirror this machine's apt uses, the packages' dependencies from the same, then:
#
#   1. install smvs-host, smvs-directory and smvsctl (dpkg -i): every program runs (--help),
#      the units, sysusers/tmpfiles files, D-Bus policy, man pages and config are in place,
#      the system users and state directories exist (0700), and nothing was enabled;
#   2. remove them (dpkg -r): of what they installed, only the config (/etc/smvs) and the
#      state directories (with a file standing in for a host's keys) are left;
#   3. purge them (dpkg --purge): nothing of them is left, and nothing else changed.
#
# Uses the debug binaries `make build` made (BUILD=debug), stripped as the packages are. Needs
# root (debootstrap, chroot). The last line counts the checks ("N passed, 0 failed").
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

passed=0
fail() {
    echo "check-deb: FAIL: $*" >&2
    echo "check-deb: $passed passed, 1 failed"
    exit 1
}
pass() {
    echo "check-deb: $*"
    passed=$((passed + 1))
}
if [[ $(id -u) -ne 0 ]]; then
    echo "check-deb: skipped (needs root: debootstrap and chroot)"
    exit 0
fi
# shellcheck source=scripts/lib/debian-root.sh
source scripts/lib/debian-root.sh

work=$(mktemp -d "${TMPDIR:-/var/tmp}/smvs-check-deb.XXXXXX")
root=$work/root
cleanup() {
    remove_work "$work" "$root/proc"
}
trap cleanup EXIT

BUILD=debug bash scripts/deb.sh "$work/debs" >/dev/null
debs=("$work"/debs/*.deb)
[[ ${#debs[@]} -eq 3 ]] || fail "make deb made ${#debs[@]} packages, not 3"
pass "make deb built $(cd "$work/debs" && echo *.deb)"

log=$work/debootstrap.log
debian_root "$root" "$log" || fail "a clean Debian 12 root:"$'\n'"$(tail -n 20 "$log")"
mount -t proc proc "$root/proc"
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }

# The packages' dependencies first, so that what changes after is the packages' alone.
deps=$(deb_depends "${debs[@]}")
# shellcheck disable=SC2086 # one word per package
in_root apt-get install -y -q --no-install-recommends $deps >"$log" 2>&1 ||
    fail "installing the dependencies ($deps):"$'\n'"$(tail -n 20 "$log")"
in_root apt-get clean

# Every path in the root but the volatile ones (package and apt state, caches, logs, runtime,
# and the user databases' backup copies that systemd-sysusers writes).
snapshot() {
    (cd "$root" && find . -xdev \
        \( -path ./proc -o -path ./sys -o -path ./dev -o -path ./run -o -path ./tmp \
        -o -path ./var/lib/dpkg -o -path ./var/lib/apt -o -path ./var/cache -o -path ./var/log \
        -o -path ./debs \) -prune -o -print | sed 's|^\.||' |
        grep -Ev '^/etc/(passwd|group|shadow|gshadow)-$' | sort)
}
before=$(snapshot)

# 1. Install.
mkdir "$root/debs"
cp -- "${debs[@]}" "$root/debs/"
in_root sh -c 'dpkg -i /debs/*.deb' >"$log" 2>&1 || fail "dpkg -i:"$'\n'"$(tail -n 30 "$log")"
rm -rf -- "$root/debs"
pass "the three packages install into a clean Debian 12 root"
for prog in smvsd smvs-keyguard smvs-hostctl smvs-directory smvsctl; do
    out=$(in_root "$prog" --help 2>&1) || fail "$prog --help failed:"$'\n'"$out"
    [[ "$out" == *Usage* ]] || fail "$prog --help printed no usage:"$'\n'"$out"
done
pass "smvsd, smvs-keyguard, smvs-hostctl, smvs-directory and smvsctl run (--help)"
for f in /usr/lib/systemd/system/smvsd.service /usr/lib/systemd/system/smvs-keyguard.service \
    /usr/lib/systemd/system/smvs-directory.service /usr/lib/systemd/user/smvsd.service \
    /usr/lib/systemd/user/smvsctl-agent.service /usr/lib/sysusers.d/smvs.conf \
    /usr/lib/sysusers.d/smvs-directory.conf /usr/lib/tmpfiles.d/smvs.conf \
    /usr/share/dbus-1/system.d/org.smvs.Daemon1.conf \
    /usr/share/dbus-1/system-services/org.smvs.Daemon1.service \
    /usr/share/man/man1/smvsd.1.gz /usr/share/man/man1/smvsctl.1.gz \
    /usr/share/man/man1/smvs-keyguard.1.gz /usr/share/man/man1/smvs-directory.1.gz \
    /usr/share/man/man1/smvs-hostctl.1.gz /usr/lib/systemd/system/smvsd@.service \
    /usr/lib/systemd/system/smvs-keyguard@.service /usr/lib/systemd/system/smvs-hosts.slice \
    /etc/smvs/smvsd.toml /etc/smvs/hosting.toml /usr/share/doc/smvs-host/copyright; do
    [[ -f "$root$f" ]] || fail "$f is not installed"
done
grep -q '^ExecStart=/usr/bin/smvsd ' "$root/usr/lib/systemd/system/smvsd.service" ||
    fail "smvsd.service does not run /usr/bin/smvsd"
[[ "$(in_root dpkg-query -W -f '${Conffiles}' smvs-host)" == *"/etc/smvs/smvsd.toml"* ]] ||
    fail "/etc/smvs/smvsd.toml is not a conffile"
pass "units, sysusers and tmpfiles files, D-Bus policy, man pages and the config (a conffile) are in place"
for u in smvsd smvs-keyguard smvs-directory; do
    in_root getent passwd "$u" >/dev/null || fail "no system user $u"
done
in_root getent group smvs >/dev/null || fail "no group smvs"
for d in /var/lib/smvs:700:smvsd /var/lib/smvs-keyguard:700:smvs-keyguard \
    /var/lib/smvs-directory:700:smvs-directory /var/lib/smvs-hosts:711:root; do
    IFS=: read -r path mode owner <<<"$d"
    got=$(in_root stat -c '%a %U' "$path" 2>/dev/null) || fail "no $path"
    [[ "$got" == "$mode $owner" ]] || fail "$path is $got, not $mode $owner"
done
pass "system users smvsd, smvs-keyguard, smvs-directory, group smvs; state directories 0700 (hosted hosts' root 0711)"
if find "$root/etc/systemd" -name 'smvs*' 2>/dev/null | grep -q .; then
    fail "installing enabled a unit: $(find "$root/etc/systemd" -name 'smvs*')"
fi
pass "nothing was enabled or started"

# A host's keys and messages, as if it had run, and a hosted user's (smvs-hostctl's layout).
echo secret >"$root/var/lib/smvs-keyguard/identity.key"
echo data >"$root/var/lib/smvs/host.db"
mkdir -p "$root/var/lib/smvs-hosts/alice/keyguard" "$root/etc/smvs/hosts"
echo secret >"$root/var/lib/smvs-hosts/alice/keyguard/identity.key"
echo 'listen = "127.0.0.1:17421"' >"$root/etc/smvs/hosts/alice.toml"

# 2. Remove: config and state stay, nothing else of the packages.
in_root dpkg -r smvs-host smvs-directory smvsctl >"$log" 2>&1 ||
    fail "dpkg -r:"$'\n'"$(tail -n 20 "$log")"
left=$(comm -13 <(echo "$before") <(snapshot))
expected=$(printf '%s\n' /etc/smvs /etc/smvs/smvsd.toml /etc/smvs/hosting.toml \
    /etc/smvs/hosts /etc/smvs/hosts/alice.toml /var/lib/smvs /var/lib/smvs/host.db \
    /var/lib/smvs-directory /var/lib/smvs-keyguard /var/lib/smvs-keyguard/identity.key \
    /var/lib/smvs-hosts /var/lib/smvs-hosts/alice /var/lib/smvs-hosts/alice/keyguard \
    /var/lib/smvs-hosts/alice/keyguard/identity.key | sort)
[[ "$left" == "$expected" ]] ||
    fail "after dpkg -r, what is left is not just the config and state:"$'\n'"$(diff <(echo "$expected") <(echo "$left") || true)"
pass "dpkg -r leaves the config and the state, and nothing else"

# 3. Purge: nothing at all, and nothing that was there before is gone.
in_root dpkg --purge smvs-host smvs-directory smvsctl >"$log" 2>&1 ||
    fail "dpkg --purge:"$'\n'"$(tail -n 20 "$log")"
after=$(snapshot)
[[ "$after" == "$before" ]] ||
    fail "after dpkg --purge the root differs from before the install:"$'\n'"$(diff <(echo "$before") <(echo "$after") || true)"
pass "dpkg --purge leaves nothing behind"

echo "check-deb: $passed passed, 0 failed"
