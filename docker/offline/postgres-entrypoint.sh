#!/bin/sh
# Entrypoint of docker/offline/postgres.Dockerfile: on the first start (empty $PGDATA),
# initdb with superuser $POSTGRES_USER / $POSTGRES_PASSWORD, password (scram-sha-256) auth
# over TCP, and create $POSTGRES_DB; then run the server as the `postgres` user, listening
# on every address at $PGPORT (default 5432), as the official image does.
set -eu
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is not set}"
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"

mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    chown postgres "$pwfile"
    runuser -u postgres -- initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" -E UTF8 \
        --auth-local=trust --auth-host=scram-sha-256 --no-instructions
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    # Create the database on a server that listens on the socket only.
    runuser -u postgres -- pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
    if [ "$db" != postgres ]; then
        runuser -u postgres -- createdb -U "$user" "$db"
    fi
    runuser -u postgres -- pg_ctl -D "$PGDATA" -m fast -w stop
fi
if [ "$1" = postgres ]; then
    shift
    # setpriv execs (runuser would stay as the parent): the server is the container's process.
    exec setpriv --reuid=postgres --regid=postgres --init-groups \
        postgres -D "$PGDATA" -c listen_addresses='*' "$@"
fi
exec "$@"
