#!/usr/bin/env bash
# Least privilege. The postgres image runs this once, on an empty data directory (from
# /docker-entrypoint-initdb.d); `scripts/stack up` runs it again on every start, because it
# only adds what is missing, and so brings a data directory made by an earlier release to the
# same roles. The superuser's password is for operators only.
# - `torchdock_owner` owns the database: the schema migrations, retention and `torchdock keys`
#   run as it, from the one-shot `db-admin` service, never from an api replica.
# - `torchdock`, the api's login, is in the group `torchdock_app`, which the migrations grant
#   what the api does (add and read log rows, read the keys) and nothing more: no DDL, no
#   DELETE, no writes to the keys.
# - `torchdock_monitor`, the exporter's, can only read statistics (pg_monitor).
# The passwords come from the secret files and never appear on a command line.
set -Eeuo pipefail
psql --quiet --set=ON_ERROR_STOP=1 --username="${POSTGRES_USER:-postgres}" --dbname=postgres <<'SQL'
\set owner_password `cat /run/secrets/db_owner_password`
\set app_password `cat /run/secrets/db_password`
\set monitor_password `cat /run/secrets/db_monitor_password`
SELECT format('CREATE ROLE torchdock_owner LOGIN PASSWORD %L', :'owner_password')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'torchdock_owner') \gexec
SELECT 'CREATE ROLE torchdock_app NOLOGIN'
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'torchdock_app') \gexec
SELECT format('CREATE ROLE torchdock LOGIN PASSWORD %L', :'app_password')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'torchdock') \gexec
SELECT format('CREATE ROLE torchdock_monitor LOGIN PASSWORD %L IN ROLE pg_monitor', :'monitor_password')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'torchdock_monitor') \gexec
SELECT 'CREATE DATABASE torchdock OWNER torchdock_owner'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'torchdock') \gexec
GRANT torchdock_app TO torchdock;
ALTER DATABASE torchdock OWNER TO torchdock_owner;
REVOKE ALL ON DATABASE torchdock FROM PUBLIC;
GRANT CONNECT ON DATABASE torchdock TO torchdock_app, torchdock_monitor;
\connect torchdock
-- Made by an earlier release, whose api owned the database: its owner holds it now. What the
-- api may do with it, the migrations grant (db-admin runs them next).
REASSIGN OWNED BY torchdock TO torchdock_owner;
SQL
