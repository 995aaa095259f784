# The compose stack as the operating scripts see it (scripts/stack, backup, restore, verify):
# the compose files chosen by --local/--gpu, the project name and the settings file.
# shellcheck shell=bash
# stack_args is read by the scripts that source this file.
# shellcheck disable=SC2034
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
compose_dir="$REPO_ROOT/compose"
files=(-f "$compose_dir/compose.yml")
local_stack=0
env_file="${TORCHDOCK_ENV_FILE:-$compose_dir/.env}"
declare -a stack_args=()

# parse_stack_options "$@": consumes --local, --gpu and --models; what follows is left in
# stack_args.
parse_stack_options() {
  while [[ "${1:-}" == --local || "${1:-}" == --gpu || "${1:-}" == --models ]]; do
    case "$1" in
      --local) local_stack=1; files+=(-f "$compose_dir/compose.local.yml") ;;
      --gpu) files+=(-f "$compose_dir/compose.gpu.yml") ;;
      --models) files+=(-f "$compose_dir/compose.models.yml") ;;
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
  compose_cli "${args[@]}" "$@"
}

project_name() { echo "${COMPOSE_PROJECT_NAME:-torchdock}"; }

# A value from the effective configuration, e.g. config_value '["services"]["api"]["image"]'.
config_value() {
  compose config --format json | python3 -c "import json, sys; print(json.load(sys.stdin)$1)"
}

# replace_api_replicas all|outdated: start-first, one replica at a time. A fresh replica, from the
# api service's configuration now (its image included), joins and becomes healthy before an old
# one is stopped; the old one drains on SIGTERM (readiness fails first, in-flight requests
# finish), so capacity never drops. `outdated` replaces only the replicas that do not run the
# configured image. Returns 1 when a newcomer is not healthy within STACK_WAIT_S, leaving it
# for the caller (scripts/deploy rolls back).
replace_api_replicas() {
  local which="$1" image running=() old=() id count
  image="$(docker_cli image inspect --format '{{.Id}}' "$(config_value '["services"]["api"]["image"]')")"
  mapfile -t running < <(compose ps --quiet api)
  count=${#running[@]}
  [[ $count -gt 0 ]] || die "no api replica is running"
  for id in "${running[@]}"; do
    if [[ "$which" == all || "$(docker_cli inspect --format '{{.Image}}' "$id")" != "$image" ]]; then
      old+=("$id")
    fi
  done
  for id in "${old[@]}"; do
    log "starting a replacement for $(docker_cli inspect --format '{{.Name}}' "$id")"
    compose up --detach --wait --wait-timeout "${STACK_WAIT_S:-300}" --no-build --no-deps \
      --no-recreate --scale "api=$((count + 1))" api || return 1
    log "stopping $id"
    docker_cli stop --time 45 "$id" >/dev/null
    # Its spooled rows, if Postgres is down, stay on the shared api-spool volume, for the
    # replicas that remain to replay.
    docker_cli rm "$id" >/dev/null
  done
}

# stack_down [compose down options]: compose down, and where that fails on a network that "has
# active endpoints", clear them and go again. An endpoint of a container that is gone is stale
# (dockerd keeps one now and then when a container is removed while it starts: moby issue
# 17217): forced off. A container of this project that down left (seen once in CI, on the
# monitoring network after a backup's one-off containers) is removed. Another project's
# containers are left alone.
stack_down() {
  compose down --remove-orphans "$@" && return 0
  local network endpoint project
  for network in $(docker_cli network ls --quiet \
    --filter "label=com.docker.compose.project=$(project_name)"); do
    # Docker finds a stale endpoint by its name, not by the id it is listed under.
    for endpoint in $(docker_cli network inspect \
      --format '{{range .Containers}}{{.Name}} {{end}}' "$network"); do
      if project="$(docker_cli container inspect \
        --format '{{index .Config.Labels "com.docker.compose.project"}}' "$endpoint" 2>/dev/null)"; then
        if [[ "$project" == "$(project_name)" ]]; then
          log "removing $endpoint, which down left on network $network"
          docker_cli rm --force "$endpoint" >/dev/null
        else
          log "network $network still holds $endpoint of ${project:-no compose project}"
        fi
        continue
      fi
      log "forcing the stale endpoint $endpoint off network $network"
      docker_cli network disconnect --force "$network" "$endpoint"
    done
  done
  compose down --remove-orphans "$@"
}
