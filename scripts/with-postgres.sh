#!/usr/bin/env bash
# Usage: scripts/with-postgres.sh [--replica] CMD [ARGS...]
#
# Starts a throw-away PostgreSQL server (Debian's packages) on 127.0.0.1,
# creates the database smvs_test, exports
#   SMVS_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:PORT/smvs_test
# runs CMD, then stops the server and deletes its data directory (also on
# failure or interrupt). Exits with CMD's status.
# If SMVS_TEST_POSTGRES_URL is already set, CMD is run as is.
#
# With --replica, the server is also a primary (wal_level=replica, a
# replication role smvs_replicator allowed from 127.0.0.1 only) with a
# streaming read replica: pg_basebackup -R into a second data directory,
# started on another port of 127.0.0.1, waited for until it is in recovery
# and has replayed what the primary had written; then also exported:
#   SMVS_TEST_POSTGRES_REPLICA_URL=postgres://postgres@127.0.0.1:PORT2/smvs_test
# Both are stopped and deleted at the end. If both variables are already
# set, CMD is run as is.
set -euo pipefail

replica=0
if [[ "${1:-}" == "--replica" ]]; then
    replica=1
    shift
fi

if [[ $# -eq 0 ]]; then
    echo "usage: $0 [--replica] CMD [ARGS...]" >&2
    exit 2
fi

if [[ -n "${SMVS_TEST_POSTGRES_URL:-}" ]] \
    && [[ $replica -eq 0 || -n "${SMVS_TEST_POSTGRES_REPLICA_URL:-}" ]]; then
    exec "$@"
fi

PG_USER=smvs-pgtest

# --- server binaries: highest /usr/lib/postgresql/*/bin, else PATH ----------
bindir=""
for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
        bindir=$d
        break
    fi
done
if [[ -n "$bindir" ]]; then
    INITDB=$bindir/initdb
    PG_CTL=$bindir/pg_ctl
else
    INITDB=$(command -v initdb || true)
    PG_CTL=$(command -v pg_ctl || true)
    if [[ -z "$INITDB" || -z "$PG_CTL" ]]; then
        echo "with-postgres: error: PostgreSQL server binaries (initdb, pg_ctl) not found; run 'make deps' (Debian package 'postgresql')" >&2
        exit 1
    fi
fi
if [[ -n "$bindir" && -x "$bindir/pg_basebackup" ]]; then
    PG_BASEBACKUP=$bindir/pg_basebackup
else
    PG_BASEBACKUP=$(command -v pg_basebackup || true)
fi
if [[ $replica -eq 1 && -z "$PG_BASEBACKUP" ]]; then
    echo "with-postgres: error: pg_basebackup not found; run 'make deps' (Debian package 'postgresql-client')" >&2
    exit 1
fi
if [[ -n "$bindir" && -x "$bindir/psql" ]]; then
    PSQL=$bindir/psql
else
    PSQL=$(command -v psql || true)
    if [[ -z "$PSQL" ]]; then
        echo "with-postgres: error: psql not found; run 'make deps' (Debian package 'postgresql-client')" >&2
        exit 1
    fi
fi

# --- PostgreSQL refuses to run as root: use a dedicated system user --------
if [[ $(id -u) -eq 0 ]]; then
    if ! id -u "$PG_USER" >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER"
    fi
    as_pg() { (cd / && runuser -u "$PG_USER" -- "$@"); }
else
    as_pg() { "$@"; }
fi

# --- temp dir + cleanup -----------------------------------------------------
tmp=""
datadir=""
started=0
replica_dir=""
replica_started=0

stop_server() {
    local dir=$1
    if ! as_pg "$PG_CTL" -D "$dir" -m fast -w -t 30 stop >/dev/null 2>&1; then
        # Last resort: kill the postmaster (its children exit with it).
        local pid
        pid=$(head -n 1 "$dir/postmaster.pid" 2>/dev/null)
        if [[ -n "$pid" ]]; then
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    set +e
    # The replica first: a primary stopping waits for its WAL senders.
    if [[ $replica_started -eq 1 ]]; then
        stop_server "$replica_dir"
    fi
    if [[ $started -eq 1 ]]; then
        stop_server "$datadir"
    fi
    if [[ -n "$tmp" && -d "$tmp" ]]; then
        rm -rf -- "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

tmp=$(mktemp -d "${TMPDIR:-/tmp}/smvs-pg.XXXXXX")
if [[ $(id -u) -eq 0 ]]; then
    chown "$PG_USER" "$tmp"
    if ! as_pg test -w "$tmp"; then
        # $TMPDIR not reachable by the unprivileged user (e.g. under /root).
        rm -rf -- "$tmp"
        tmp=$(mktemp -d /tmp/smvs-pg.XXXXXX)
        chown "$PG_USER" "$tmp"
    fi
fi
chmod 700 "$tmp"
datadir=$tmp/data
logfile=$tmp/server.log

if ! as_pg "$INITDB" -D "$datadir" -A trust -U postgres --no-sync -E UTF8 --locale=C \
    >"$tmp/initdb.log" 2>&1; then
    echo "with-postgres: error: initdb failed:" >&2
    cat "$tmp/initdb.log" >&2
    exit 1
fi
if [[ $replica -eq 1 ]]; then
    # Streaming replication from 127.0.0.1 only, by a role of its own.
    echo "host replication smvs_replicator 127.0.0.1/32 trust" >>"$datadir/pg_hba.conf"
fi

# --- pick a free port and start ---------------------------------------------
port_free() {
    local p=$1
    if command -v ss >/dev/null 2>&1; then
        [[ -z "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]]
    else
        ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null
    fi
}

pick_port() {
    local start=$((20000 + RANDOM % 20001)) i p
    for ((i = 0; i < 500; i++)); do
        p=$((20000 + (start - 20000 + i) % 20001))
        if port_free "$p"; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# start_on DIR LOG STARTED_VAR: starts the server in DIR on a free port of
# 127.0.0.1 (printed into $port), setting STARTED_VAR=1 once it may be running.
start_on() {
    local dir=$1 log=$2 flag=$3 attempt
    local options="-c listen_addresses=127.0.0.1 -c unix_socket_directories='$tmp' -c fsync=off -c max_connections=200"
    if [[ $replica -eq 1 ]]; then
        options="$options -c wal_level=replica -c max_wal_senders=5 -c hot_standby=on"
    fi
    port=""
    for attempt in 1 2 3; do
        if ! port=$(pick_port); then
            echo "with-postgres: error: no free TCP port found on 127.0.0.1 in 20000-40000" >&2
            exit 1
        fi
        printf -v "$flag" 1
        if as_pg "$PG_CTL" -D "$dir" -w -t 60 -l "$log" -o "$options -p $port" \
            start >/dev/null 2>&1; then
            return 0
        fi
        # Lost a race for the port? Try another one; otherwise give up.
        if [[ $attempt -lt 3 ]] && grep -q -e 'could not bind' -e 'Address already in use' "$log" 2>/dev/null; then
            as_pg "$PG_CTL" -D "$dir" -m immediate -w stop >/dev/null 2>&1 || true
            printf -v "$flag" 0
            continue
        fi
        echo "with-postgres: error: PostgreSQL failed to start; server log:" >&2
        cat "$log" >&2 2>/dev/null || true
        exit 1
    done
}

start_on "$datadir" "$logfile" started

if ! "$PSQL" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    -c 'CREATE DATABASE smvs_test' >/dev/null; then
    echo "with-postgres: error: could not create database smvs_test; server log:" >&2
    cat "$logfile" >&2 2>/dev/null || true
    exit 1
fi

primary_port=$port

if [[ $replica -eq 1 ]]; then
    sql() { "$PSQL" -X -q -At -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2"; }
    if ! sql "$primary_port" 'CREATE ROLE smvs_replicator WITH REPLICATION LOGIN' >/dev/null; then
        echo "with-postgres: error: could not create the replication role" >&2
        exit 1
    fi
    replica_dir=$tmp/replica
    replica_log=$tmp/replica.log
    if ! as_pg "$PG_BASEBACKUP" -h 127.0.0.1 -p "$primary_port" -U smvs_replicator \
        -D "$replica_dir" -R -X stream --checkpoint=fast --no-sync >"$tmp/basebackup.log" 2>&1; then
        echo "with-postgres: error: pg_basebackup failed:" >&2
        cat "$tmp/basebackup.log" >&2
        exit 1
    fi
    start_on "$replica_dir" "$replica_log" replica_started
    replica_port=$port
    # In recovery, and caught up with what the primary has written so far.
    target=$(sql "$primary_port" 'SELECT pg_current_wal_lsn()')
    deadline=$((SECONDS + 120))
    until [[ "$(sql "$replica_port" "SELECT pg_is_in_recovery() AND pg_last_wal_replay_lsn() >= '$target'::pg_lsn" 2>/dev/null)" == "t" ]]; do
        if ((SECONDS >= deadline)); then
            echo "with-postgres: error: the replica did not replay up to $target within 120s; its log:" >&2
            cat "$replica_log" >&2 2>/dev/null || true
            exit 1
        fi
        sleep 0.2
    done
    export SMVS_TEST_POSTGRES_REPLICA_URL="postgres://postgres@127.0.0.1:$replica_port/smvs_test"
    echo "postgres: streaming read replica on 127.0.0.1:$replica_port" >&2
fi

export SMVS_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$primary_port/smvs_test"
echo "postgres: test server on 127.0.0.1:$primary_port" >&2

set +e
"$@"
status=$?
set -e
exit "$status"
