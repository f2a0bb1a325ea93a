#!/usr/bin/env bash
# A PostgreSQL server for the tests: Debian's package, a throwaway cluster on 127.0.0.1, trust auth.
#
#   eval "$(bash .ci/postgres.sh)"      # install if needed, start (or reuse), print `export DATABASE_URL_PG=…`
#   bash .ci/postgres.sh stop           # stop it (and remove the cluster)
#
# Idempotent and quick: a server already answering on the port is reused (about 0.1 s); otherwise the
# package is installed when missing (apt-get, as root; once per machine) and a cluster is made in
# $DIALTONE_PG_DIR (default /tmp/dialtone-pg) by initdb, which refuses root: as root the server runs as the
# `postgres` user the package creates. Port $DIALTONE_PG_PORT (default 54329). Only the export line goes to
# stdout; progress goes to stderr. tests/test_records_pg.py makes and drops its own database on this server.
set -euo pipefail

PORT="${DIALTONE_PG_PORT:-54329}"
DIR="${DIALTONE_PG_DIR:-/tmp/dialtone-pg}"
DATA="$DIR/data"
USER_NAME="dialtone"
DB_NAME="dialtone"
URL="postgresql://$USER_NAME@127.0.0.1:$PORT/$DB_NAME"

say() { echo "postgres.sh: $*" >&2; }

bin_dir() {
    local found
    found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -n "$found" ] && [ -x "$found/initdb" ]; then
        echo "$found"
    elif command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}

as_owner() {  # run a server binary as the cluster's owner (not root)
    if [ "$(id -u)" = "0" ]; then
        (cd / && runuser -u postgres -- "$@")  # from /: postgres may not enter the caller's directory
    else
        "$@"
    fi
}

BIN="$(bin_dir)"

if [ "${1:-start}" = "stop" ]; then
    if [ -n "$BIN" ] && [ -f "$DATA/PG_VERSION" ]; then
        as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >&2 || true
    fi
    rm -rf "$DIR"
    exit 0
fi

if [ -z "$BIN" ]; then
    if [ "$(id -u)" != "0" ]; then
        say "PostgreSQL is not installed and this is not root: run 'sudo apt-get install -y postgresql'"
        exit 1
    fi
    say "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
    BIN="$(bin_dir)"
fi

if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
    say "reusing the server on 127.0.0.1:$PORT"
else
    if [ ! -f "$DATA/PG_VERSION" ]; then
        rm -rf "$DIR"
        mkdir -p "$DIR"
        [ "$(id -u)" = "0" ] && chown postgres:postgres "$DIR"
        say "initdb in $DATA"
        as_owner "$BIN/initdb" -D "$DATA" -U "$USER_NAME" -A trust -E UTF8 --no-sync >/dev/null
    fi
    rm -f "$DATA/postmaster.pid"  # left by a machine that was stopped with the server running
    say "starting PostgreSQL on 127.0.0.1:$PORT"
    as_owner "$BIN/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=off -c full_page_writes=off" start >&2 || {
        say "the server did not start; its log:"
        tail -n 30 "$DIR/server.log" >&2 || true
        exit 1
    }
fi

if ! "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U "$USER_NAME" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" | grep -q 1; then
    "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U "$USER_NAME" "$DB_NAME"
fi

echo "export DATABASE_URL_PG=$URL"
