# Sourced by check-deb.sh, check-hosting.sh and image.sh: a clean Debian 12 root from Debian's packages.

# The Debian mirror this machine's apt is set up with (deb822 or one-line sources).
debian_mirror() {
    {
        grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources || true
        grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list || true
    } | awk '{print $2}' | grep -v security | head -n 1 || true
}

# debian_root ROOT LOG [PACKAGES]: debootstrap a minbase bookworm into ROOT (logging to LOG),
# with PACKAGES (comma-separated) too, and its package lists read. Returns non-zero, with LOG
# saying why, on failure.
debian_root() {
    local root=$1 log=$2 include=${3:-} mirror
    mirror=$(debian_mirror)
    if [[ -z "$mirror" ]]; then
        echo "no Debian mirror in this machine's apt sources" >"$log"
        return 1
    fi
    command -v debootstrap >/dev/null || {
        echo "debootstrap is missing (make deps installs it)" >"$log"
        return 1
    }
    # Debian's archive key, so that nothing unsigned (or from another repository the sources
    # name first) is installed and run as root.
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    if [[ ! -f "$keyring" ]]; then
        echo "$keyring is missing (apt-get install debian-archive-keyring)" >"$log"
        return 1
    fi
    debootstrap --variant=minbase --keyring="$keyring" ${include:+--include="$include"} \
        bookworm "$root" "$mirror" >"$log" 2>&1 ||
        return 1
    chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin apt-get update -q >>"$log" 2>&1
}

# deb_depends DEB…: the package names the packages depend on (the first of each alternative).
deb_depends() {
    local d
    for d in "$@"; do dpkg-deb -f "$d" Depends; done | tr ',' '\n' |
        sed 's/(.*)//; s/|.*//; s/ //g' | grep -v '^$' | sort -u
}

# remove_work WORK MOUNTPOINT…: unmounts each mount point that is mounted, then deletes WORK,
# never crossing into another file system (a bind mount of /dev left behind is not emptied).
remove_work() {
    local work=$1 m
    shift
    for m in "$@"; do
        if mountpoint -q "$m" 2>/dev/null && ! umount "$m"; then
            echo "cannot unmount $m: $work is left as it is" >&2
            return 1
        fi
    done
    rm -rf --one-file-system -- "$work"
}
