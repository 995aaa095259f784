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
