#!/usr/bin/env bash
# Checks the systemd files as `make install` installs them (into a temp root, BUILD=debug):
#
#   1. `systemd-analyze verify` prints nothing and succeeds for every system unit (with --root,
#      so ExecStart= binaries and man pages are looked up in the installed tree) and every user
#      unit (--user cannot take --root: its ExecStart= paths are mapped into the tree instead).
#   2. `systemd-analyze security --offline=true` gives an overall exposure of at most 2.0 for
#      smvsd.service and at most 1.0 for smvs-keyguard.service (both printed), and the same for
#      an instance of each template (smvsd@.service, smvs-keyguard@.service: smvs-hostctl's).
#   3. Every unit, system and user, sets LimitCORE=0: the processes hold keys and plaintext.
#   4. As root: systemd-sysusers and systemd-tmpfiles --create applied to the tree make the
#      users every unit names, and the state and runtime directories with the right owners
#      and modes.
#
# Each passing check prints a line; the last line counts them ("N passed, 0 failed"). A failing
# check prints what failed and exits non-zero.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

MAKE=${MAKE:-make}
MAX_EXPOSURE_SMVSD=2.0
MAX_EXPOSURE_KEYGUARD=1.0
export SYSTEMD_COLORS=0 SYSTEMD_PAGER=cat

passed=0
fail() {
    echo "check-units: FAIL: $*" >&2
    echo "check-units: $passed passed, 1 failed"
    exit 1
}
pass() {
    echo "check-units: $*"
    passed=$((passed + 1))
}
command -v systemd-analyze >/dev/null ||
    fail "systemd-analyze not found (Debian package 'systemd'; make deps installs it)"

work=$(mktemp -d "${TMPDIR:-/tmp}/smvs-check-units.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
root=$work/root
mkdir "$root"
log=$("$MAKE" --no-print-directory -s install PREFIX=/usr/local BUILD=debug DESTDIR="$root" 2>&1) ||
    fail "make install failed:"$'\n'"$log"
units=$root/usr/local/lib/systemd/system
user_units=$root/usr/local/lib/systemd/user
man=$root/usr/local/share/man

# verify resolves After=/Wants= against the units of its root, so the tree needs the system's
# own units (multi-user.target, network-online.target, …) beside ours.
mkdir -p "$root/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"

# 1. verify: any output at all is a finding (unknown keys only warn and still exit 0).
system_files=("$units"/*.service "$units"/*.slice)
if ! out=$(MANPATH=$man systemd-analyze verify --root="$root" "${system_files[@]}" 2>&1) ||
    [[ -n "$out" ]]; then
    fail "systemd-analyze verify of the system units:"$'\n'"$out"
fi
pass "systemd-analyze verify: clean: $(cd "$units" && echo *.service *.slice)"

mapped=$work/user
mkdir -p "$mapped" "$work/runtime"
chmod 700 "$work/runtime"
for f in "$user_units"/*.service; do
    sed -E "s#^(Exec[A-Za-z]*=[-@:+!]*)/#\\1$root/#" "$f" >"$mapped/$(basename "$f")"
done
if ! out=$(cd "$work" && XDG_RUNTIME_DIR=$work/runtime MANPATH=$man \
    systemd-analyze --user verify "$mapped"/*.service 2>&1) || [[ -n "$out" ]]; then
    fail "systemd-analyze --user verify of the user units:"$'\n'"$out"
fi
pass "systemd-analyze --user verify: clean: $(cd "$user_units" && echo *.service)"

# 2. exposure
exposure() {
    local out level
    out=$(systemd-analyze security --offline=true --root="$root" "$units/$1" 2>&1) ||
        fail "systemd-analyze security $1:"$'\n'"$out"
    level=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9.]*\).*/\1/p' <<<"$out")
    [[ -n "$level" ]] || fail "no 'Overall exposure level' in systemd-analyze security $1:"$'\n'"$out"
    echo "$level"
}
# A hosted user's instances (smvs-hostctl) must be as tight as the single units.
ln -s smvsd@.service "$units/smvsd@check.service"
ln -s smvs-keyguard@.service "$units/smvs-keyguard@check.service"
for pair in "smvsd.service $MAX_EXPOSURE_SMVSD" "smvs-keyguard.service $MAX_EXPOSURE_KEYGUARD" \
    "smvsd@check.service $MAX_EXPOSURE_SMVSD" "smvs-keyguard@check.service $MAX_EXPOSURE_KEYGUARD" \
    "smvs-directory.service -"; do
    read -r unit max <<<"$pair"
    level=$(exposure "$unit")
    if [[ "$max" == - ]]; then
        echo "check-units: exposure of $unit: $level"
    elif awk -v l="$level" -v m="$max" 'BEGIN { exit !(l <= m) }'; then
        pass "exposure of $unit: $level (at most $max)"
    else
        fail "exposure of $unit is $level, above $max; see: systemd-analyze security --offline=true dist/systemd/$unit"
    fi
done

# 3. no core files
for f in "$units"/*.service "$user_units"/*.service; do
    grep -qx 'LimitCORE=0' "$f" || fail "$(basename "$(dirname "$f")")/$(basename "$f") lacks LimitCORE=0"
done
pass "LimitCORE=0 in every unit: $(cd "$units" && echo *.service) user/{$(cd "$user_units" && echo *.service | tr ' ' ,)}"

# 4. sysusers and tmpfiles, applied to the tree (chown needs root).
if [[ $(id -u) -ne 0 ]]; then
    echo "check-units: skipped sysusers/tmpfiles (needs root)"
    echo "check-units: $passed passed, 0 failed, 1 skipped"
    exit 0
fi
mkdir -p "$root/etc"
out=$(systemd-sysusers --root="$root" "$root/usr/local/lib/sysusers.d/smvs.conf" 2>&1) ||
    fail "systemd-sysusers:"$'\n'"$out"
out=$(systemd-tmpfiles --root="$root" --create "$root/usr/local/lib/tmpfiles.d/smvs.conf" 2>&1) ||
    fail "systemd-tmpfiles --create:"$'\n'"$out"
id_of() { # DB NAME: the id in the tree's passwd or group (root: 0, not in the tree)
    if [[ "$2" == root ]]; then echo 0; else awk -F: -v n="$2" '$1 == n { print $3 }' "$root/etc/$1"; fi
}
for f in "$units"/*.service; do
    # A template's users (smvsd-%i, …) are made by smvs-hostctl add, not sysusers.
    [[ "$f" == *@* ]] && continue
    for key in User Group; do
        name=$(sed -n "s/^$key=//p" "$f")
        db=passwd
        [[ $key == Group ]] && db=group
        [[ -z "$name" || -n "$(id_of "$db" "$name")" ]] ||
            fail "$(basename "$f") has $key=$name, which sysusers.d/smvs.conf does not create"
    done
done
expect_dir() { # PATH MODE USER GROUP
    local got want
    got=$(stat -c '%a %u %g' "$root$1" 2>/dev/null) || fail "tmpfiles did not create $1"
    want="${2#0} $(id_of passwd "$3") $(id_of group "$4")"
    [[ "$got" == "$want" ]] || fail "$1 is '$got' (mode uid gid), want '$want' ($2 $3:$4)"
}
expect_dir /var/lib/smvs 0700 smvsd smvs
expect_dir /var/lib/smvs-keyguard 0700 smvs-keyguard smvs-keyguard
expect_dir /var/lib/smvs-directory 0700 smvs-directory smvs-directory
expect_dir /run/smvs 0750 smvsd smvs
expect_dir /run/smvs-keyguard 0750 smvs-keyguard smvs-keyguard
expect_dir /var/lib/smvs-hosts 0711 root root
expect_dir /run/smvs-hosts 0711 root root
grep -q '^smvs-keyguard:[^:]*:[^:]*:\(.*,\)\?smvsd\(,.*\)\?$' "$root/etc/group" ||
    fail "smvsd is not a member of group smvs-keyguard (it could not reach the keyguard socket)"
pass "sysusers and tmpfiles: users smvsd, smvs-keyguard, smvs-directory, group smvs; state and runtime directories as expected"
echo "check-units: $passed passed, 0 failed"
