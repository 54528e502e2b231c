#!/usr/bin/env bash
# The daemon's part of scripts/bench.sh (sourced there, with $bin, $tmp, $image, template,
# merge_requests and git_daemon defined): a signed push webhook until the handler's container
# starts, beside `docker run -d` alone, median of 5; the daemon's RSS idle and with 20
# handlers running at once.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
d=$tmp/daemon
mkdir -p "$d"
template 0 "$d/repo.git"
# A handler that naps, so that 20 of them run at once (landed before any request uses it).
git clone -q "$d/repo.git" "$d/clone"
printf '#!/bin/sh\nsleep 5\n' >"$d/clone/handlers/nap.sh"
chmod +x "$d/clone/handlers/nap.sh"
{
  echo
  echo "  nap:"
  echo "    description: Sleep 5 s (the benchmark's memory scenario)."
  echo "    run: handlers/nap.sh"
  echo "    image: $image"
  echo "    timeout: 1m"
  echo '    resource: "{{ params.resource }}"'
  echo "    params:"
  echo "      type: object"
  echo "      properties:"
  echo "        resource: { type: string }"
} >>"$d/clone/handlers/index.yml"
git -C "$d/clone" add -A
git -C "$d/clone" -c user.name=bench -c user.email=bench@localhost commit -q -m "a napping handler"
git -C "$d/clone" push -q origin HEAD:main
rm -rf "$d/clone"
head -c 32 /dev/urandom | base64 >"$d/secret"
chmod 600 "$d/secret"
port=$(free_port)
printf '[runner]\nname = "bench-daemon"\nstate_dir = "%s"\nconcurrency = 20\n\n[repository]\nurl = "%s"\n\n[server]\nlisten = "127.0.0.1:%s"\nwebhook_secret_file = "%s"\npoll_interval = "1h"\n' \
  "$d/state" "$d/repo.git" "$port" "$d/secret" >"$d/runner.toml"
# The operator listener on a free port of its own when scraped (builds before it knew no
# metrics_listen, and refuse unknown keys), else off.
if [ -n "${BENCH_SCRAPE:-}" ]; then
  ops_port=$(free_port)
  echo "metrics_listen = \"127.0.0.1:$ops_port\"" >>"$d/runner.toml"
elif "$bin" status --help >/dev/null 2>&1; then # a build with the operator listener
  echo 'metrics_listen = "off"' >>"$d/runner.toml"
fi
"$bin" run --config "$d/runner.toml" >"$d/daemon.out" 2>"$d/daemon.log" &
daemon=$!
trap 'kill $git_daemon $daemon 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 1 100); do
  # Any answer will do (older builds served /healthz there, newer ones only /webhook).
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/webhook")" != 000 ] && break
  sleep 0.1
done
sleep 2 # the first pass
rss_idle=$(ps -o rss= -p "$daemon" | tr -d ' ')
# BENCH_SCRAPE=FILE: the daemon's /metrics every half second, each line prefixed with the
# Unix time, for docs/grafana/render.py (scripts/dashboard.sh).
if [ -n "${BENCH_SCRAPE:-}" ]; then
  : >"$BENCH_SCRAPE"
  (while kill -0 "$daemon" 2>/dev/null; do
    now=$(date +%s.%N)
    curl -fs "http://127.0.0.1:$ops_port/metrics" | grep -v '^#' | sed "s/^/$now /" >>"$BENCH_SCRAPE" || true
    sleep 0.5
  done) &
fi

# Milliseconds from running "${@:2}" until a container labelled $1 starts (Docker's clock).
until_start() {
  local label=$1 events=$tmp/events t0 watcher
  shift
  : >"$events"
  docker events --filter event=start --filter "label=$label" --format '{{.TimeNano}}' >"$events" &
  watcher=$!
  sleep 0.3
  t0=$(date +%s%N)
  "$@" >/dev/null
  for _ in $(seq 1 1000); do
    [ -s "$events" ] && break
    sleep 0.01
  done
  kill "$watcher" 2>/dev/null || true
  wait "$watcher" 2>/dev/null || true
  echo $((($(head -1 "$events") - t0) / 1000000))
}
webhook() {
  local body sig
  body='{"ref":"refs/heads/main","commits":[{"message":"Merge a request"}]}'
  sig=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$(cat "$d/secret")" | sed 's/^.* //')
  curl -fs -X POST "http://127.0.0.1:$port/webhook" -H "X-GitHub-Event: push" \
    -H "X-GitHub-Delivery: bench-$RANDOM-$RANDOM" -H "X-Hub-Signature-256: sha256=$sig" \
    -H 'Content-Type: application/json' --data "$body"
}
median() { printf '%s\n' "$@" | sort -n | sed -n "$((($# + 1) / 2))p"; }
hook_ms=()
floor_ms=()
for round in 1 2 3 4 5; do
  merge_requests "$d/repo.git" "hook$round" 1
  hook_ms+=("$(until_start io.codex-runner.runner=bench-daemon webhook)")
  sleep 2 # its result is pushed
  floor_ms+=("$(until_start bench.floor=1 docker run -d --rm --network none --label bench.floor=1 "$image" true)")
done
hook=$(median "${hook_ms[@]}")
floor=$(median "${floor_ms[@]}")

# 20 napping handlers at once, on 20 resources.
clone=$tmp/clone-naps
git clone -q "$d/repo.git" "$clone"
for i in $(seq 0 19); do
  printf 'kind: nap\nparams: {resource: n%d}\n' "$i" >"$clone/requests/nap-$i.yaml"
done
git -C "$clone" add -A
git -C "$clone" -c user.name=agent -c user.email=agent@localhost commit -q -m "20 naps"
git -C "$clone" push -q origin HEAD:main
webhook >/dev/null
rss_busy=0
running_max=0
for _ in $(seq 1 200); do
  running=$(docker ps -q --filter label=io.codex-runner.runner=bench-daemon | wc -l)
  rss=$(ps -o rss= -p "$daemon" | tr -d ' ')
  [ "$running" -gt "$running_max" ] && running_max=$running
  [ "$rss" -gt "$rss_busy" ] && rss_busy=$rss
  [ "$running_max" -ge 20 ] && [ "$running" -eq 0 ] && break
  sleep 0.2
done
kill -TERM "$daemon"
wait "$daemon" 2>/dev/null || true

echo
echo "the daemon (run --config): webhook to container start, median of 5; memory:"
printf '  %-44s %6s ms\n' "signed push webhook -> handler container start" "$hook"
printf '  %-44s %6s ms  codex-runner at the floor + %s ms\n' "docker run -d -> container start" "$floor" "$((hook - floor))"
printf '  %-44s %6s KiB\n' "RSS idle" "$rss_idle"
printf '  %-44s %6s KiB  (%s handlers seen running at once)\n' "RSS peak, 20 napping handlers" "$rss_busy" "$running_max"
