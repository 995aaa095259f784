#!/usr/bin/env bash
# Least privilege, set up once on an empty data directory (the postgres image runs this from
# /docker-entrypoint-initdb.d). The superuser's password is for operators only; the api logs
# in as `torchdock`, which owns its database and nothing else; the exporter logs in as
# `torchdock_monitor`, which can only read statistics (pg_monitor). The passwords come from the
# secret files and never appear on a command line.
set -Eeuo pipefail
psql --quiet --set=ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname=postgres <<'SQL'
\set app_password `cat /run/secrets/db_password`
\set monitor_password `cat /run/secrets/db_monitor_password`
CREATE ROLE torchdock LOGIN PASSWORD :'app_password';
CREATE DATABASE torchdock OWNER torchdock;
REVOKE ALL ON DATABASE torchdock FROM PUBLIC;
CREATE ROLE torchdock_monitor LOGIN PASSWORD :'monitor_password' IN ROLE pg_monitor;
GRANT CONNECT ON DATABASE torchdock TO torchdock_monitor;
SQL
