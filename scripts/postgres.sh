#!/usr/bin/env bash
# A private PostgreSQL for the hub's store tests (the same SQLAlchemy code runs on SQLite and PostgreSQL).
#   scripts/postgres.sh start   prints `export EDGEFLEET_TEST_POSTGRES_URL=...` (nothing when it cannot run one)
#   scripts/postgres.sh stop
#   scripts/postgres.sh running   exit status 0 when the cluster is up
# Debian's server binaries, a cluster of our own under /run/edgefleet/pg, loopback only, trust auth.
set -euo pipefail

DIR=${EDGEFLEET_PG_DIR:-/run/edgefleet/pg}
PORT=${EDGEFLEET_PG_PORT:-55432}
log() { printf 'postgres.sh: %s\n' "$*" >&2; }

bin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
if [[ -z "$bin" ]]; then
    case "${1:-}" in
        start) log "no PostgreSQL server installed (apt-get install postgresql); the PostgreSQL store tests will skip" ;;
        running) exit 1 ;;
    esac
    exit 0
fi
as_postgres() {
    # initdb and the server refuse to run as root.
    if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-}" in
    start)
        if ! as_postgres "$bin/pg_ctl" status -D "$DIR" >/dev/null 2>&1; then
            if [[ ! -f "$DIR/PG_VERSION" ]]; then
                mkdir -p "$DIR"
                [[ $EUID -eq 0 ]] && chown postgres:postgres "$DIR"
                as_postgres "$bin/initdb" -D "$DIR" -A trust -U postgres >/dev/null
            fi
            as_postgres "$bin/pg_ctl" start -D "$DIR" -w -t 60 -l "$DIR/server.log" \
                -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off" >/dev/null
            log "PostgreSQL on 127.0.0.1:$PORT (data in $DIR)"
        fi
        echo "export EDGEFLEET_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
        ;;
    stop)
        as_postgres "$bin/pg_ctl" stop -D "$DIR" -m fast -w >/dev/null 2>&1 || true
        ;;
    running)
        as_postgres "$bin/pg_ctl" status -D "$DIR" >/dev/null 2>&1
        ;;
    *)
        sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
