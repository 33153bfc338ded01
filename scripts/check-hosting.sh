#!/usr/bin/env bash
# smvs-hostctl for real: a clean Debian 12 root (debootstrap minbase, with systemd and D-Bus)
# gets the smvs-host package of `make deb` and boots its own systemd under systemd-nspawn,
# sharing this machine's loopback. A directory and a third user's host (carol) run outside it,
# from target/debug. Then:
#
#   1. `smvs-hostctl add` provisions $SMVS_HOSTED (default 50) users' hosts as real units
#      (smvs-keyguard@NAME, smvsd@NAME), each registered at the directory; `list` shows them all
#      running, with their ports and memory;
#   2. two hosted users pair a device each (smvsctl on this machine, over the device ports) and
#      write to each other; carol, outside the hosting box, writes to one of them and is
#      answered;
#   3. one hosted user's uid cannot read another's keys or database, nor reach its sockets
#      (setpriv with the real uids; the owner itself can, so the check can fail);
#   4. `backup` writes a sealed copy; `remove` then `restore` brings the host back with its
#      identity and paired device, which still writes; a wrong passphrase restores nothing;
#   5. `remove` leaves nothing of a user behind (users, groups, files anywhere, units,
#      processes); `remove --keep-data` keeps the state, root's.
#
# Needs root (debootstrap, nspawn, nsenter). The last line counts the checks.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

HOSTED=${SMVS_HOSTED:-50}
target=${CARGO_TARGET_DIR:-target}/debug
target=$(readlink -f "$target")
passed=0
fail() {
    echo "check-hosting: FAIL: $*" >&2
    echo "check-hosting: $passed passed, 1 failed"
    exit 1
}
pass() {
    echo "check-hosting: $*"
    passed=$((passed + 1))
}
if [[ $(id -u) -ne 0 ]]; then
    echo "check-hosting: skipped (needs root: debootstrap, systemd-nspawn)"
    exit 0
fi
command -v systemd-nspawn >/dev/null || fail "systemd-nspawn is missing (make deps installs systemd-container)"
for b in smvsd smvs-keyguard smvs-directory smvsctl; do
    [[ -x "$target/$b" ]] || fail "$target/$b is missing (make build)"
done
# shellcheck source=scripts/lib/debian-root.sh
source scripts/lib/debian-root.sh

work=$(mktemp -d "${TMPDIR:-/var/tmp}/smvs-check-hosting.XXXXXX")
chmod 0755 "$work"
root=$work/root
pids=()
nspawn=
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [[ -n "$nspawn" ]] && kill -0 "$nspawn" 2>/dev/null; then
        # nspawn turns TERM into an orderly shutdown of the container's systemd.
        kill -TERM "$nspawn" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$nspawn" 2>/dev/null || break; sleep 1; done
        kill -KILL "$nspawn" 2>/dev/null || true
        wait "$nspawn" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    remove_work "$work" "$root/proc"
}
trap cleanup EXIT

# --- the hosting box -------------------------------------------------------------------------
BUILD=debug bash scripts/deb.sh "$work/debs" >/dev/null
host_deb=$(echo "$work"/debs/smvs-host_*.deb)
[[ -f "$host_deb" ]] || fail "make deb made no smvs-host package"
log=$work/debootstrap.log
debian_root "$root" "$log" systemd,dbus || fail "a Debian 12 root with systemd:"$'\n'"$(tail -n 20 "$log")"
mount -t proc proc "$root/proc"
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }
deps=$(deb_depends "$host_deb")
# shellcheck disable=SC2086 # one word per package
in_root apt-get install -y -q --no-install-recommends $deps >"$log" 2>&1 ||
    fail "installing the dependencies ($deps):"$'\n'"$(tail -n 20 "$log")"
cp -- "$host_deb" "$root/smvs-host.deb"
in_root dpkg -i /smvs-host.deb >"$log" 2>&1 || fail "dpkg -i smvs-host:"$'\n'"$(tail -n 20 "$log")"
rm -f -- "$root/smvs-host.deb"
in_root apt-get clean
umount "$root/proc"
pass "smvs-host installed into a clean Debian 12 root with systemd"

# The directory, outside the box, on loopback. Every hosted user registers from the box's one
# address, so its per-address limits are raised, as a directory serving a hosting box must.
port_of() { # PID: the first TCP port it listens on
    local p
    for _ in $(seq 100); do
        p=$(ss -Hltnp 2>/dev/null | awk -v pid="pid=$1," '$0 ~ pid { sub(/.*:/, "", $4); print $4; exit }')
        [[ -n "$p" ]] && { echo "$p"; return; }
        sleep 0.1
    done
    return 1
}
mkdir -m 0700 "$work/directory"
"$target/smvs-directory" --listen 127.0.0.1:0 --db "sqlite:$work/directory/directory.db" \
    --key-file "$work/directory/directory.key" --allow-private-host-addresses \
    --registrations-per-hour 100000 --rate-per-ip 10000 >"$work/directory/log" 2>&1 &
pids+=($!)
dport=$(port_of "${pids[-1]}") || fail "the directory did not start:"$'\n'"$(tail "$work/directory/log")"
dkey=$("$target/smvs-directory" pubkey --key-file "$work/directory/directory.key")

cat >"$root/etc/smvs/hosting.toml" <<EOF
directory = "127.0.0.1:$dport"
directory_key = "$dkey"
listen_ip = "127.0.0.1"
public_host = "127.0.0.1"
first_port = 27421
last_port = 29999
EOF

# Boot it: its own systemd (PID 1 in its PID namespace), this machine's network.
systemd-nspawn -q --register=no --keep-unit -D "$root" -b --console=pipe \
    >"$work/boot.log" 2>&1 </dev/null &
nspawn=$!
init=
for _ in $(seq 300); do
    # The box's PID 1 is nspawn's child.
    for p in $(pgrep -P "$nspawn" || true); do
        [[ "$(cat "/proc/$p/comm" 2>/dev/null)" == systemd ]] && init=$p
    done
    [[ -n "$init" ]] && break
    kill -0 "$nspawn" 2>/dev/null || fail "the box did not boot:"$'\n'"$(tail -n 20 "$work/boot.log")"
    sleep 0.2
done
[[ -n "$init" ]] || fail "no systemd came up in the box:"$'\n'"$(tail -n 20 "$work/boot.log")"
in_box() { nsenter -t "$init" -a -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
state=$(in_box timeout 120 systemctl is-system-running --wait 2>&1 || true)
[[ "$state" == running ]] ||
    fail "the box's systemd is '$state':"$'\n'"$(in_box systemctl --failed --no-legend 2>&1 || true)"
pass "the box booted its own systemd ($state)"

# --- 1. add ----------------------------------------------------------------------------------
names=()
for i in $(seq 1 "$HOSTED"); do names+=("$(printf 'u%02d' "$i")"); done
start=$SECONDS
for n in "${names[@]}"; do
    out=$(in_box smvs-hostctl add "$n" --json 2>&1) || fail "smvs-hostctl add $n:"$'\n'"$out"
    echo "$out" >"$work/add-$n.json"
done
took=$((SECONDS - start))
field() { # FILE KEY: a string or number field of the add's JSON (flat, or in "pair")
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); k=sys.argv[2]
print(d["pair"][k] if k in d["pair"] else d[k])' "$1" "$2"
}
[[ "$(field "$work/add-u01.json" username)" == u01 ]] || fail "u01 is not registered as u01"
pass "smvs-hostctl add: $HOSTED hosted users' hosts provisioned and registered (${took}s)"

list=$(in_box smvs-hostctl list --json) || fail "smvs-hostctl list failed"
rows=$(grep -c '"state":"active"' <<<"$list" || true)
[[ "$rows" -eq "$HOSTED" ]] || fail "list shows $rows of $HOSTED hosts active:"$'\n'"$list"
check_list=$(cat <<'EOF'
import json, sys
rows = [json.loads(l) for l in sys.stdin]
n = int(sys.argv[1])
assert len(rows) == n, len(rows)
ports = set()
for r in rows:
    assert r["keyguard_state"] == "active", r
    assert r["username"] == r["name"], r
    assert r["memory"] and r["memory"] > 0, r
    assert r["queued"] == 0, r
    ports.update([r["peer_port"], r["device_port"], r["call_port"]])
assert len(ports) == 3 * n, "ports shared between hosts"
EOF
)
python3 -c "$check_list" "$HOSTED" <<<"$list" || fail "list's rows are not what add made:"$'\n'"$list"
mem=$(python3 -c 'import json,sys; r=[json.loads(l) for l in sys.stdin]; print("%.1f" % (sum(x["memory"] for x in r)/len(r)/1048576))' <<<"$list")
pass "smvs-hostctl list: $HOSTED hosts and key guards active, ports distinct, ${mem} MiB per host with its key guard (debug build)"

# --- 2. devices and messages -----------------------------------------------------------------
ctl() { # DEVICE-DIR ARGS…: smvsctl as the device whose pairing is in DEVICE-DIR
    local dev=$1
    shift
    XDG_CONFIG_HOME=$dev SMVS_SOCKET=$work/none.sock "$target/smvsctl" "$@"
}
for n in u01 u02; do
    mkdir -m 0700 "$work/dev-$n"
    out=$(ctl "$work/dev-$n" pair "$(field "$work/add-$n.json" address)" \
        "$(field "$work/add-$n.json" code)" --name laptop 2>&1) || fail "pairing $n's device:"$'\n'"$out"
done
dev_host() { field "$work/add-$1.json" address; }
wait_text() { # DEVICE-DIR HOST PEER TEXT
    for _ in $(seq 300); do
        ctl "$1" --host "$2" history "$3" 2>/dev/null | grep -qF "$4" && return 0
        sleep 0.2
    done
    return 1
}
ctl "$work/dev-u01" --host "$(dev_host u01)" send u02 "hello u02, from u01's laptop" >/dev/null ||
    fail "u01's device could not send"
wait_text "$work/dev-u02" "$(dev_host u02)" u01 "hello u02, from u01's laptop" ||
    fail "u02's device never saw u01's message"
ctl "$work/dev-u02" --host "$(dev_host u02)" send u01 "hello back" >/dev/null ||
    fail "u02's device could not send"
wait_text "$work/dev-u01" "$(dev_host u01)" u02 "hello back" || fail "u01's device never saw the answer"
pass "two hosted users each paired a device and wrote to each other through their hosted hosts"

# Carol: a host of her own, outside the hosting box.
carol=$work/carol
mkdir -m 0700 "$carol" "$carol/keys" "$carol/state"
"$target/smvs-keyguard" --key-dir "$carol/keys" --socket "$carol/keyguard.sock" \
    --allow-uid 0 >"$carol/keyguard.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -S "$carol/keyguard.sock" ]] && break; sleep 0.1; done
"$target/smvsd" --state-dir "$carol/state" --socket "$carol/smvsd.sock" \
    --listen 127.0.0.1:0 --device-listen none --call-listen none --dbus none \
    --directory "127.0.0.1:$dport" --directory-key "$dkey" \
    --keyguard-socket "$carol/keyguard.sock" >"$carol/smvsd.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do [[ -S "$carol/smvsd.sock" ]] && break; sleep 0.1; done
carol_ctl() { SMVS_SOCKET=$carol/smvsd.sock "$target/smvsctl" "$@"; }
out=$(carol_ctl register carol 2>&1) || fail "carol's own host did not register:"$'\n'"$out"$'\n'"$(tail "$carol/smvsd.log")"
carol_ctl send u01 "hi u01, carol here, from outside" >/dev/null || fail "carol could not send"
wait_text "$work/dev-u01" "$(dev_host u01)" carol "carol here, from outside" ||
    fail "u01's device never saw carol's message"
ctl "$work/dev-u01" --host "$(dev_host u01)" send carol "hi carol" >/dev/null || fail "u01 could not answer carol"
for _ in $(seq 300); do
    carol_ctl history u01 2>/dev/null | grep -qF "hi carol" && break
    sleep 0.2
done
carol_ctl history u01 | grep -qF "hi carol" || fail "carol never saw u01's answer"
pass "carol's host, outside the hosting box, and hosted u01 wrote to each other"

# --- 3. uid isolation ------------------------------------------------------------------------
# A connect() is tried with perl (perl-base is in every Debian root).
as() { # USER CMD…: in the box, as USER (its uid, its groups)
    local u=$1
    shift
    in_box setpriv --reuid="$u" --regid="$u" --init-groups -- "$@"
}
db=$(in_box find /var/lib/smvs-hosts/u01/host -maxdepth 1 -type f -name '*.db' | head -n 1)
key=$(in_box find /var/lib/smvs-hosts/u01/keyguard -type f | head -n 1)
[[ -n "$db" && -n "$key" ]] || fail "no database or key file found for u01"
# The owners can (so the refusals below are the uids', not a broken check).
as smvsd-u01 head -c 1 "$db" >/dev/null || fail "u01's own host cannot read its database"
as smvskg-u01 head -c 1 "$key" >/dev/null || fail "u01's key guard cannot read its key"
in_box perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Peer => $ARGV[0]) or exit 1' \
    /run/smvs-hosts/u01/host/smvsd.sock || fail "root cannot reach u01's socket"
for u in smvsd-u02 smvskg-u02; do
    for f in "$db" "$key"; do
        if as "$u" head -c 1 "$f" >/dev/null 2>&1; then fail "$u can read $f"; fi
    done
    for d in /var/lib/smvs-hosts/u01/host /var/lib/smvs-hosts/u01/keyguard /var/lib/smvs-hosts; do
        if as "$u" ls "$d" >/dev/null 2>&1; then fail "$u can list $d"; fi
    done
    for s in /run/smvs-hosts/u01/host/smvsd.sock /run/smvs-hosts/u01/keyguard/keyguard.sock; do
        if as "$u" perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Peer => $ARGV[0]) or exit 1' \
            "$s" 2>/dev/null; then
            fail "$u can connect to $s"
        fi
    done
done
if as smvsd-u01 perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Peer => $ARGV[0]) or exit 1' \
    /run/smvs-hosts/u02/keyguard/keyguard.sock 2>/dev/null; then
    fail "u01's host can reach u02's key guard"
fi
pass "u02's uids cannot read u01's keys or database, list its directories, or connect to its sockets (u01's own can)"

# A host owns its socket's directory: a link there to a neighbour's socket must not make root's
# smvs-hostctl speak to the neighbour as if it were that host.
as smvsd-u05 ln -sf /run/smvs-hosts/u06/host/smvsd.sock /run/smvs-hosts/u05/host/smvsd.sock ||
    fail "u05's host could not replace its own socket (the check below would prove nothing)"
row=$(in_box smvs-hostctl list --json | grep '"name":"u05"') || fail "list has no u05"
[[ "$row" == *'"username":null'* ]] || fail "list followed u05's link to u06's socket: $row"
pass "a host's link to a neighbour's socket is not followed: list checks who answers (SO_PEERCRED)"

# --- 4. backup, remove, restore ---------------------------------------------------------------
printf 'a passphrase for the test\n' >"$root/root/pass"
printf 'not the passphrase at all\n' >"$root/root/wrong"
out=$(in_box smvs-hostctl backup u02 /root/u02.smvsbak --passphrase-file /root/pass 2>&1) ||
    fail "backup u02:"$'\n'"$out"
[[ "$(stat -c %a "$root/root/u02.smvsbak")" == 600 ]] || fail "the backup is not 0600"
if grep -qa 'ustar' "$root/root/u02.smvsbak"; then fail "the backup holds a readable tar header"; fi
in_box systemctl is-active --quiet smvsd@u02.service || fail "u02 did not start again after the backup"
uid_u02=$(in_box id -u smvsd-u02)
in_box smvs-hostctl remove u02 >/dev/null || fail "remove u02 failed"
if out=$(in_box smvs-hostctl restore u02 /root/u02.smvsbak --passphrase-file /root/wrong 2>&1); then
    fail "restore with a wrong passphrase succeeded"
fi
[[ "$out" == *"wrong passphrase"* ]] || fail "restore with a wrong passphrase said: $out"
if in_box id smvsd-u02 >/dev/null 2>&1 || [[ -e "$root/var/lib/smvs-hosts/u02" ]] ||
    [[ -e "$root/etc/smvs/hosts/u02.toml" ]]; then
    fail "a failed restore left something of u02 behind"
fi
out=$(in_box smvs-hostctl restore u02 /root/u02.smvsbak --passphrase-file /root/pass 2>&1) ||
    fail "restore u02:"$'\n'"$out"
[[ "$out" == *"restored u02 as u02"* ]] || fail "restore said: $out"
ctl "$work/dev-u02" --host "$(dev_host u02)" send u01 "after the restore" >/dev/null ||
    fail "u02's paired device cannot use the restored host"
wait_text "$work/dev-u01" "$(dev_host u01)" u02 "after the restore" ||
    fail "u01 never saw u02's message sent after the restore"
ctl "$work/dev-u02" --host "$(dev_host u02)" history u01 | grep -qF "hello back" ||
    fail "the restored host lost u02's history"
pass "backup (sealed, 0600) → remove → restore: u02's identity, history and paired device are back ($uid_u02 was its uid)"

# --- 5. remove leaves nothing ----------------------------------------------------------------
victim=u03
vuids=("$(in_box id -u smvsd-$victim)" "$(in_box id -u smvskg-$victim)")
out=$(in_box smvs-hostctl remove "$victim" 2>&1) || fail "remove $victim:"$'\n'"$out"
for u in smvsd-$victim smvskg-$victim; do
    if in_box getent passwd "$u" >/dev/null || in_box getent group "$u" >/dev/null; then
        fail "$u is still a user or group"
    fi
    if in_box getent group | grep -q ":.*\b$u\b"; then fail "$u is still a member of a group"; fi
done
for uid in "${vuids[@]}"; do
    left=$(in_box find / -xdev \( -uid "$uid" -o -gid "$uid" \) -print 2>/dev/null | head)
    [[ -z "$left" ]] || fail "files of $victim's uid $uid are left:"$'\n'"$left"
    left=$(in_box find /run \( -uid "$uid" -o -gid "$uid" \) -print 2>/dev/null | head)
    [[ -z "$left" ]] || fail "runtime files of $victim's uid $uid are left:"$'\n'"$left"
    # (No pgrep in a minbase root: the box's own /proc.)
    if in_box sh -c 'grep -ls "^Uid:[[:space:]]*$0[[:space:]]" /proc/[0-9]*/status' "$uid" |
        grep -q .; then
        fail "processes of $victim's uid $uid still run"
    fi
done
left=$(in_box find / -xdev -name "*$victim*" -print 2>/dev/null | grep -v '^/proc' | head || true)
[[ -z "$left" ]] || fail "paths naming $victim are left:"$'\n'"$left"
units=$(in_box systemctl list-units --all --no-legend "*@$victim.service" 2>/dev/null)
[[ -z "$units" ]] || fail "units of $victim are still loaded:"$'\n'"$units"
pass "remove $victim: no users, groups, files, runtime files, units or processes of it are left"

out=$(in_box smvs-hostctl remove u04 --keep-data 2>&1) || fail "remove u04 --keep-data:"$'\n'"$out"
got=$(in_box stat -c '%a %u' /var/lib/smvs-hosts/u04 /var/lib/smvs-hosts/u04/keyguard | tr '\n' ' ')
[[ "$got" == "700 0 700 0 " ]] || fail "u04's kept state is '$got', not root's"
if in_box id smvsd-u04 >/dev/null 2>&1; then fail "smvsd-u04 is still a user after remove --keep-data"; fi
pass "remove --keep-data: u04's keys and database stay, root's (0700), its users are gone"

rows=$(in_box smvs-hostctl list | tail -n +2 | wc -l)
[[ "$rows" -eq $((HOSTED - 2)) ]] || fail "list shows $rows hosts after removing two, not $((HOSTED - 2))"
pass "smvs-hostctl list shows the $((HOSTED - 2)) hosts left"

echo "check-hosting: $passed passed, 0 failed"
