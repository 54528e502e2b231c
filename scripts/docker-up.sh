#!/usr/bin/env bash
# Makes a Docker engine answer: installs Debian's docker.io when dockerd is missing and starts
# dockerd in the background when the socket does not answer. When Debian's `runsc` (gVisor) is
# installed, registers it as a second runtime (`/etc/docker/daemon.json`, then a reload), with
# `--network=none`, without which gVisor refuses Docker's `none` network. Needs root.
# Idempotent.
set -euo pipefail

answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
has_runsc() { docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; }

# Add runsc to daemon.json, keeping whatever else it says; true when the file changed.
register_runsc() {
  command -v runsc >/dev/null 2>&1 || return 1
  mkdir -p /etc/docker
  python3 - "$(command -v runsc)" <<'PY'
import json, os, sys
path = "/etc/docker/daemon.json"
conf = {}
if os.path.exists(path):
    with open(path) as f:
        text = f.read().strip()
    conf = json.loads(text) if text else {}
want = {"path": sys.argv[1], "runtimeArgs": ["--network=none"]}
if conf.get("runtimes", {}).get("runsc") == want:
    sys.exit(1)
conf.setdefault("runtimes", {})["runsc"] = want
with open(path + ".tmp", "w") as f:
    json.dump(conf, f, indent=2)
os.replace(path + ".tmp", path)
PY
}

# A running engine: register runsc if it lacks it, and reload the engine's config.
live() {
  if command -v runsc >/dev/null 2>&1 && ! has_runsc; then
    register_runsc || true
    echo "registering runsc with the running dockerd (reload)" >&2
    kill -HUP "$(cat /var/run/docker.pid)"
    for _ in $(seq 1 30); do has_runsc && exit 0; sleep 0.5; done
    echo "dockerd did not take runsc from /etc/docker/daemon.json" >&2
    exit 1
  fi
  exit 0
}

answers && live

if ! command -v dockerd >/dev/null 2>&1; then
  echo "installing docker.io from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q docker.io >/dev/null
fi
answers && live
register_runsc || true

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
