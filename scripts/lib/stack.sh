# The compose stack as the operating scripts see it (scripts/stack, backup, restore, verify):
# the compose files chosen by --local/--gpu, the project name and the settings file.
# shellcheck shell=bash
# stack_args is read by the scripts that source this file.
# shellcheck disable=SC2034
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
compose_dir="$REPO_ROOT/compose"
files=(-f "$compose_dir/compose.yml")
local_stack=0
env_file="${TORCHDOCK_ENV_FILE:-$compose_dir/.env}"
declare -a stack_args=()

# parse_stack_options "$@": consumes --local and --gpu; what follows is left in stack_args.
parse_stack_options() {
  while [[ "${1:-}" == --local || "${1:-}" == --gpu ]]; do
    case "$1" in
      --local) local_stack=1; files+=(-f "$compose_dir/compose.local.yml") ;;
      --gpu) files+=(-f "$compose_dir/compose.gpu.yml") ;;
    esac
    shift
  done
  stack_args=("$@")
  # More compose files, e.g. a test's (space-separated paths).
  local extra
  for extra in ${TORCHDOCK_COMPOSE_OVERRIDES:-}; do files+=(-f "$extra"); done
  if [[ $local_stack -eq 1 && -z "${TORCHDOCK_IMAGE:-}" ]] \
    && ! grep -qs '^TORCHDOCK_IMAGE=' "$env_file"; then
    export TORCHDOCK_IMAGE=torchdock:cpu
  fi
}

compose() {
  local args=(--project-name "$(project_name)" "${files[@]}")
  [[ -f "$env_file" ]] && args+=(--env-file "$env_file")
  docker_cli compose "${args[@]}" "$@"
}

project_name() { echo "${COMPOSE_PROJECT_NAME:-torchdock}"; }

# A value from the effective configuration, e.g. config_value '["services"]["api"]["image"]'.
config_value() {
  compose config --format json | python3 -c "import json, sys; print(json.load(sys.stdin)$1)"
}
