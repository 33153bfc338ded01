#!/usr/bin/env bash
# make profile-directory: where a directory's CPU goes per look-up, as BENCHMARKS.md shows it.
#
# Starts a release smvs-directory on SQLite in a scratch folder, registers 2,000 users and looks
# each up once (smvs-bench-lookups), pins the directory to CPU 1 and the load generator to
# CPU 0, and records the directory with `perf record -g` for 5 s of closed-loop load over 64
# connections; once with the answer cache (hits) and once without (misses). Prints the share of
# each group of symbols. Needs perf (Debian: linux-perf) and root or perf_event_paranoid <= 1.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "profile-directory: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
bin=target/release
scratch=$(mktemp -d)
trap 'pkill -f "smvs-directory --listen 127.0.0.1:17499" 2>/dev/null || true; rm -rf "$scratch"' EXIT
users=2000

profile() { # $1: label, $2…: extra directory flags
    local label=$1; shift
    "$bin/smvs-directory" --listen 127.0.0.1:17499 --db "sqlite:$scratch/d.db" --key-file "$scratch/k" \
        --allow-private-host-addresses --rate-per-ip 10000000 --registrations-per-hour 100000000 \
        --auth-per-minute 10000000 "$@" >"$scratch/log" 2>&1 &
    local pid=$!
    for _ in $(seq 50); do grep -q listening "$scratch/log" 2>/dev/null && break; sleep 0.1; done
    local key
    key=$("$bin/smvs-directory" pubkey --key-file "$scratch/k")
    [ -e "$scratch/registered" ] || { "$bin/smvs-bench-lookups" register 127.0.0.1:17499 "$key" $users >/dev/null; touch "$scratch/registered"; }
    "$bin/smvs-bench-lookups" warm 127.0.0.1:17499 "$key" $users >/dev/null
    taskset -a -p -c 1 "$pid" >/dev/null
    taskset -c 0 "$bin/smvs-bench-lookups" load 127.0.0.1:17499 "$key" $users 1 64 8 0 100 >"$scratch/load" &
    local load=$!
    sleep 2
    perf record -q -F 1999 -g -p "$pid" -o "$scratch/perf.data" -- sleep 5 2>/dev/null
    wait "$load"
    kill "$pid"; wait "$pid" || true
    echo "== $label: $(tail -1 "$scratch/load")"
    perf report -i "$scratch/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null |
        python3 scripts/lib/perf_groups.py
}

profile "answer cache (hits)"
profile "no answer cache (misses)" --answer-cache-mib 0
