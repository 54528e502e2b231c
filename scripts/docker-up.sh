#!/usr/bin/env bash
# Makes a Docker engine answer: installs Debian's docker.io when dockerd is missing and starts
# dockerd in the background when the socket does not answer. Needs root. Idempotent.
set -euo pipefail

answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
answers && exit 0

if ! command -v dockerd >/dev/null 2>&1; then
  echo "installing docker.io from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q docker.io >/dev/null
fi
answers && exit 0

log=/var/log/codex-dockerd.log
echo "starting dockerd (log: $log)" >&2
nohup dockerd >"$log" 2>&1 &
for _ in $(seq 1 60); do
  answers && exit 0
  sleep 1
done
echo "dockerd did not answer within 60s; last lines of $log:" >&2
tail -20 "$log" >&2
exit 1
