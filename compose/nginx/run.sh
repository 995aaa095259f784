#!/bin/sh
# nginx in front of the api replicas, its upstream kept to the replicas that are ready.
#
# Docker's DNS lists every running replica: one still loading its models, and one draining
# after SIGTERM, too. Every UPSTREAM_CHECK_INTERVAL_S (1 s) this script resolves the service,
# asks each address for /v2/health/ready, writes the ready ones into the upstream, and reloads
# nginx gracefully (old workers finish their requests) when that set changes. So a replica gets
# traffic only once it is ready, and no new connection within about a second of its SIGTERM,
# well before it closes its listener (DRAIN_DELAY_S): restarts and scale-downs fail no request,
# POSTs included. Passive health (max_fails) still covers a replica that dies between checks.
set -eu
conf=/etc/nginx/torchdock/nginx.conf
upstream=/tmp/nginx-upstream.conf
interval="${UPSTREAM_CHECK_INTERVAL_S:-1}"
service="${UPSTREAM_SERVICE:-api}"
port="${UPSTREAM_PORT:-8000}"

ready_replicas() {
  for address in $(getent ahostsv4 "$service" | awk '{print $1}' | sort -u); do
    # One try: GNU wget would retry a timeout 20 times (busybox's ignores --tries).
    if wget -q -T 1 --tries=1 -O /dev/null "http://$address:$port/v2/health/ready" 2>/dev/null
    then
      echo "$address"
    fi
  done
}

write_upstream() {
  if [ -z "$1" ]; then
    # No replica is ready: nginx needs a server, and this one answers every request with 503.
    echo "server 127.0.0.1:9 down;" >"$upstream.new"
  else
    echo "$1" | awk -v port="$port" \
      '{ printf "server %s:%s max_fails=2 fail_timeout=5s;\n", $1, port }' >"$upstream.new"
  fi
  mv "$upstream.new" "$upstream"
}

current="$(ready_replicas)"
write_upstream "$current"
nginx -c "$conf" -g 'daemon off;' &
nginx_pid=$!
stopping=0
# SIGQUIT (the image's stop signal) and SIGTERM: a graceful stop of nginx.
trap 'stopping=1; kill -QUIT "$nginx_pid" 2>/dev/null || true' QUIT TERM INT
echo "upstream: $(echo "$current" | tr '\n' ' ')" >&2

while [ "$stopping" -eq 0 ] && kill -0 "$nginx_pid" 2>/dev/null; do
  sleep "$interval" &
  wait $! || true
  [ "$stopping" -eq 0 ] || break
  next="$(ready_replicas)"
  if [ "$next" != "$current" ]; then
    write_upstream "$next"
    if nginx -c "$conf" -s reload; then
      echo "upstream: $(echo "$next" | tr '\n' ' ')" >&2
      current="$next"
    fi
  fi
done
wait "$nginx_pid"
