#!/usr/bin/env bash
# The part of the official postgres image's entrypoint that the stack relies on, for the local
# stand-in: on an empty data directory, initdb with POSTGRES_USER and the password from
# POSTGRES_PASSWORD_FILE (or POSTGRES_PASSWORD), scram-sha-256 for network clients,
# POSTGRES_DB created, and the scripts in /docker-entrypoint-initdb.d run against a server that
# listens on its socket only; then exec the server with the given arguments. It runs as the postgres
# user, as the stack runs the official image.
set -Eeuo pipefail

if [[ "${1:-}" == -* ]]; then set -- postgres "$@"; fi
if [[ "${1:-}" != "postgres" ]]; then exec "$@"; fi

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
# The init scripts read these, as they do in the official image.
export POSTGRES_USER POSTGRES_DB
if [[ -n "${POSTGRES_PASSWORD_FILE:-}" ]]; then
  POSTGRES_PASSWORD="$(<"$POSTGRES_PASSWORD_FILE")"
fi
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE is required}"

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  echo "initialising the database in $PGDATA"
  # POSTGRES_INITDB_ARGS is a list of options, split on spaces as in the official image.
  # shellcheck disable=SC2086
  initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
    --auth-local=trust --auth-host=scram-sha-256 ${POSTGRES_INITDB_ARGS:-} >/dev/null
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  # A server on the socket only, to create the database before anyone can connect.
  pg_ctl --silent --wait --options="-c listen_addresses=''" start
  if [[ "$POSTGRES_DB" != "postgres" ]]; then
    psql --quiet --username="$POSTGRES_USER" --dbname=postgres \
      --set=ON_ERROR_STOP=1 --set=db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
  fi
  for script in /docker-entrypoint-initdb.d/*; do
    case "$script" in
      *.sh) echo "running $script"; "$script" ;;
      *.sql) echo "running $script"; psql --quiet --set=ON_ERROR_STOP=1 \
               --username="$POSTGRES_USER" --dbname="$POSTGRES_DB" --file="$script" ;;
    esac
  done
  pg_ctl --silent --wait --mode=fast stop
  echo "database initialised"
fi
unset POSTGRES_PASSWORD
exec "$@"
