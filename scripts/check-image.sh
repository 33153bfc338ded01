#!/usr/bin/env bash
# `make image`'s container image, checked as far as this machine allows:
#
#   1. it builds (podman, from Debian packages, no registry), from the debug build;
#   2. its config: a non-root user, tini and the entrypoint, a health check, one volume, the
#      three ports;
#   3. its files: the host's programs and scripts are there; smvsctl, the directory, GStreamer,
#      apt's lists, docs and the build context are not; nothing is world-writable but /tmp;
#   4. its filesystem runs: exported from the image, chrooted as the image's user, the
#      entrypoint starts the key guard and smvsd, the health check passes, smvsd answers on
#      its socket, and a TERM stops both.
#
# What is not run here: `podman run` itself. This sandbox's crun cannot set rlimits (no
# CAP_SYS_RESOURCE: "setrlimit RLIMIT_NOFILE: Operation not permitted"), so step 4 stands in
# for it with chroot: the same files, user and entrypoint, without the container's
# namespaces. When `podman run` works (a normal machine), it is tried as well.
# Needs root and podman. The last line counts the checks ("N passed, 0 failed").
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

passed=0
fail() {
    echo "check-image: FAIL: $*" >&2
    echo "check-image: $passed passed, 1 failed"
    exit 1
}
pass() {
    echo "check-image: $*"
    passed=$((passed + 1))
}
if [[ $(id -u) -ne 0 ]]; then
    echo "check-image: skipped (needs root)"
    exit 0
fi
command -v podman >/dev/null || fail "podman is missing (make deps installs it)"
# shellcheck source=scripts/lib/debian-root.sh
source scripts/lib/debian-root.sh

tag=localhost/smvs-host:check-$$
work=$(mktemp -d "${TMPDIR:-/var/tmp}/smvs-check-image.XXXXXX")
fsroot=$work/fs
entry_pid=
cleanup() {
    if [[ -n "$entry_pid" ]]; then
        image_processes | while read -r pid _; do kill -KILL "$pid"; done
        sleep 0.5
    fi
    podman rm -f "smvs-check-$$" >/dev/null 2>&1 || true
    podman rmi -f "$tag" >/dev/null 2>&1 || true
    remove_work "$work" "$fsroot/dev" "$fsroot/proc"
}
trap cleanup EXIT

# 1. Build.
out=$(BUILD=debug TAG=$tag bash scripts/image.sh 2>&1) || fail "make image:"$'\n'"$out"
pass "the image builds: $out"

# 2. Config.
inspect() { podman image inspect "$tag" --format "$1"; }
[[ "$(inspect '{{.Config.User}}')" == smvsd:smvsd ]] || fail "runs as $(inspect '{{.Config.User}}'), not smvsd"
[[ "$(inspect '{{json .Config.Entrypoint}}')" == '["/usr/bin/tini","--","/usr/lib/smvs/entrypoint"]' ]] ||
    fail "entrypoint is $(inspect '{{json .Config.Entrypoint}}')"
[[ "$(inspect '{{json .Config.Healthcheck.Test}}')" == '["CMD","/usr/lib/smvs/healthcheck"]' ]] ||
    fail "health check is $(inspect '{{json .Config.Healthcheck}}')"
[[ "$(inspect '{{json .Config.Volumes}}')" == '{"/var/lib/smvs":{}}' ]] ||
    fail "volumes are $(inspect '{{json .Config.Volumes}}')"
ports=$(inspect '{{json .Config.ExposedPorts}}')
for p in 7421/tcp 7422/tcp 7423/udp; do [[ "$ports" == *"\"$p\""* ]] || fail "$p not exposed: $ports"; done
[[ $(podman image inspect "$tag" --format '{{len .RootFS.Layers}}') -eq 1 ]] || fail "more than one layer"
pass "config: user smvsd, tini and the entrypoint, a health check, volume /var/lib/smvs, ports 7421-7423"

# 3. Files.
podman create --name "smvs-check-$$" "$tag" >/dev/null
mkdir "$fsroot"
# Numeric owners: the image's users, not this machine's users of the same names.
podman export "smvs-check-$$" | tar --numeric-owner -C "$fsroot" -xf -
podman rm -f "smvs-check-$$" >/dev/null
for f in /usr/bin/smvsd /usr/bin/smvs-keyguard /usr/bin/tini /usr/lib/smvs/entrypoint \
    /usr/lib/smvs/healthcheck /etc/smvs/smvsd.toml; do
    [[ -f "$fsroot$f" ]] || fail "$f is missing from the image"
done
for f in /usr/bin/smvsctl /usr/bin/smvs-directory /rootfs.tar /Containerfile; do
    [[ ! -e "$fsroot$f" ]] || fail "$f is in the image"
done
stray=$(cd "$fsroot" && find . \( -name 'libgst*' -o -path './var/lib/apt/lists/*' \
    -o -path './usr/share/doc/*' -o -path './usr/share/man/*' \) -print | head -n 5)
[[ -z "$stray" ]] || fail "stray files in the image:"$'\n'"$stray"
writable=$(cd "$fsroot" && find . -xdev -perm -0002 ! -type l ! -path ./tmp ! -path ./var/tmp \
    ! -path './dev/*' ! -path './proc/*' ! -path ./dev ! -path ./proc -print | head -n 5)
[[ -z "$writable" ]] || fail "world-writable in the image:"$'\n'"$writable"
[[ "$(chroot "$fsroot" stat -c '%a %U' /var/lib/smvs)" == "700 smvsd" ]] ||
    fail "/var/lib/smvs is $(chroot "$fsroot" stat -c '%a %U' /var/lib/smvs), not 700 smvsd"
pass "files: the host's programs only (no smvsctl, directory, GStreamer, apt lists, docs or build context), nothing world-writable"

# 4. The image's filesystem, run under chroot as its user (see the header for why).
mount -t proc proc "$fsroot/proc"
mount --bind /dev "$fsroot/dev"
port=$((20000 + $$ % 20000))
# `exec`: the function's process becomes chroot, then env, then the program, so that $! of
# the one started in the background is tini itself.
in_image() { exec chroot --userspec=smvsd:smvsd "$fsroot" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/var/lib/smvs SMVS_DHT=1 SMVS_LISTEN="127.0.0.1:$port" \
    SMVS_ARGS="--device-listen none --call-listen none" "$@"; }
# The processes whose root is the image's filesystem.
image_processes() {
    local p
    for p in /proc/[0-9]*; do
        [[ "$(readlink "$p/root" 2>/dev/null)" == "$fsroot" ]] && echo "${p#/proc/} $(cat "$p/comm" 2>/dev/null)"
    done
    return 0
}
(in_image /usr/bin/tini -- /usr/lib/smvs/entrypoint) >"$work/run.log" 2>&1 &
entry_pid=$!
healthy=
for _ in $(seq 150); do
    if (in_image /usr/lib/smvs/healthcheck) >/dev/null 2>&1; then
        healthy=1
        break
    fi
    kill -0 "$entry_pid" 2>/dev/null || break
    sleep 0.2
done
[[ -n "$healthy" ]] || fail "the entrypoint did not become healthy:"$'\n'"$(tail -n 20 "$work/run.log")"
status=$(target/debug/smvsctl --socket "$fsroot/var/lib/smvs/run/smvsd.sock" --json status 2>&1) ||
    fail "smvsctl status through the image's socket:"$'\n'"$status"
[[ "$status" == *"\"host_address\": \"127.0.0.1:$port\""* || "$status" == *"127.0.0.1:$port"* ]] ||
    fail "smvsd's status does not name its peer port:"$'\n'"$status"
[[ "$(stat -c '%a' "$fsroot/var/lib/smvs/keyguard")" == 700 ]] || fail "the key directory is not 0700"
running=$(image_processes)
[[ "$running" == *tini* && "$running" == *smvsd* && "$running" == *smvs-keyguard* ]] ||
    fail "tini, smvsd and smvs-keyguard are not all running in the image's root:"$'\n'"$running"
kill -TERM "$entry_pid"
for _ in $(seq 100); do [[ -z "$(image_processes)" ]] && break; sleep 0.1; done
[[ -z "$(image_processes)" ]] || fail "TERM to tini left processes running:"$'\n'"$(image_processes)"
entry_pid=
pass "the image's filesystem runs as smvsd under chroot: healthy, smvsd answers on its socket, TERM stops it"

# `podman run` itself, where the runtime can (not in this sandbox).
if out=$(podman run --rm --network host -e SMVS_DHT=1 -e SMVS_LISTEN="127.0.0.1:$port" \
    --entrypoint /usr/bin/smvsd "$tag" --version 2>&1); then
    pass "podman run works here too: $out"
else
    echo "check-image: podman run not tried further: the runtime refuses here: $(echo "$out" | tail -n 1)"
fi

echo "check-image: $passed passed, 0 failed"
