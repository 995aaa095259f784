# What scripts/backup, restore and verify share: settings, the volumes without a logical dump,
# checksum verification and retention.
# shellcheck shell=bash
# The settings below are read by the scripts that source this file; env_file is stack.sh's.
# shellcheck disable=SC2034,SC2154

# setting NAME DEFAULT: the environment's value, else the settings file's, else DEFAULT.
setting() {
  local name="$1" default="$2" value="${!1:-}"
  if [[ -z "$value" && -f "$env_file" ]]; then
    value="$(sed -n "s/^$name=//p" "$env_file" | tail -n 1)"
  fi
  echo "${value:-$default}"
}

BACKUP_DIR="$(setting BACKUP_DIR "$REPO_ROOT/backups")"
BACKUP_AGE_RECIPIENTS="$(setting BACKUP_AGE_RECIPIENTS "")"
BACKUP_AGE_IDENTITY="$(setting BACKUP_AGE_IDENTITY "")"
BACKUP_KEEP_DAILY="$(setting BACKUP_KEEP_DAILY 7)"
BACKUP_KEEP_WEEKLY="$(setting BACKUP_KEEP_WEEKLY 4)"

# postgres_client PROGRAM ARGS...: a Postgres client program in the postgres container, over
# TCP as postgres, with the password read there from the Docker secret: it is never on a
# command line, in this shell, or in a log.
postgres_client() {
  # shellcheck disable=SC2016  # expanded by the container's shell, not this one
  compose exec -T postgres sh -c \
    'PGPASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")" exec "$@"' sh \
    "$@" --host=127.0.0.1 --username=postgres
}

# Volumes copied as tarballs, by service: their data has no logical dump.
declare -A VOLUME_OF=([prometheus]=/prometheus [alertmanager]=/alertmanager)

# age (https://age-encryption.org): authenticated encryption to public keys, so the machine that
# takes backups needs no secret. Debian packages it.
ensure_age() {
  command -v age >/dev/null && return 0
  [[ $EUID -eq 0 ]] || die "age is not installed, and installing it needs root"
  log "installing age"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq age >/dev/null
}

# The newest complete backup folder, or nothing.
latest_backup() {
  find "$BACKUP_DIR" -mindepth 1 -maxdepth 1 -type d -name '20*Z' 2>/dev/null | sort | tail -n 1
}

# check_backup DIR: refuses a backup that is partial or corrupt, before anything is touched.
check_backup() {
  local dir="$1"
  [[ -d "$dir" ]] || die "no backup at $dir"
  [[ -f "$dir/manifest.json" && -f "$dir/SHA256SUMS" ]] \
    || die "$dir is not a complete backup (no manifest): refusing it"
  python3 "$REPO_ROOT/scripts/lib/manifest.py" check "$dir" \
    || die "$dir failed its checksums: refusing it"
  log "backup $dir: every checksum matches"
}

# open_file DIR NAME: the file's content on stdout, decrypted when it was encrypted.
open_file() {
  local dir="$1" name="$2"
  if [[ -f "$dir/$name.age" ]]; then
    ensure_age
    [[ -n "$BACKUP_AGE_IDENTITY" ]] || die "$name is encrypted: set BACKUP_AGE_IDENTITY"
    age --decrypt --identity "$BACKUP_AGE_IDENTITY" "$dir/$name.age"
  else
    cat "$dir/$name"
  fi
}

prune_backups() {
  python3 "$REPO_ROOT/scripts/lib/retention.py" "$BACKUP_DIR" \
    --daily "$BACKUP_KEEP_DAILY" --weekly "$BACKUP_KEEP_WEEKLY"
}
