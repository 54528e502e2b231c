#!/usr/bin/env bash
# The project's benchmark: codex-runner (release build) side by side with its baselines, in one
# run on this machine, reported as ratios.
#
#   scripts/bench.sh                   everything
#   BENCH_HISTORY="0 1000" scripts/bench.sh   smaller history scenarios
#   BENCH_BIN=/path/to/codex-runner scripts/bench.sh   another build, same baselines
#   BENCH_RUNTIMES=0 / BENCH_K8S=0 / BENCH_DAEMON=0  leave out the gVisor pass / the
#                                      Kubernetes pass (needs scripts/k8s/up.sh) / the daemon
#
# Baselines: bench/shell-dispatcher.sh (bash + python yaml + docker CLI + git CLI, one request
# at a time, flock per resource), `docker run` of the same no-op container (40 in a row, and 4
# at a time), and `git clone --mirror` for the cold start. Repositories with N finished requests
# (bench/history.py, one runner commit each) are cached under target/bench-cache/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
requests=${BENCH_REQUESTS:-40}
resources=8
history=${BENCH_HISTORY:-"0 1000 10000"}
# Result layouts the history scenario runs in: the template's (sharded) and the older flat one.
layouts=${BENCH_LAYOUTS:-"sharded flat"}
image=codex-runner/busybox:1

bash scripts/docker-up.sh >/dev/null
bash containers/build-images.sh >/dev/null
# BENCH_BIN measures another build (e.g. an older release) against the same baselines.
if [ -n "${BENCH_BIN:-}" ]; then
  bin=$BENCH_BIN
else
  cargo build --release --quiet
  bin=$root/target/release/codex-runner
fi
cache=$root/target/bench-cache
mkdir -p "$cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Wall seconds of a command (its output discarded; a failure stops the benchmark). What the
# benchmark itself wrote before (a clone of a 10,000-request repository) is flushed first:
# Docker syncs every container it creates, and would otherwise pay for that writeback.
timed() {
  local t0 t1
  sync
  t0=$(date +%s.%N)
  "$@" >"$tmp/out" 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
  t1=$(date +%s.%N)
  awk "BEGIN { printf \"%.3f\", $t1 - $t0 }"
}
ratio() { awk "BEGIN { printf \"%.2f\", $1 / $2 }"; }
# Peak RSS (KiB) of a pass (repo, state-and-work dir).
rss() {
  /usr/bin/time -f %M "$bin" dispatch --once --repo "$1" --state-dir "$2/state" \
    --work-dir "$2/work" --runner-name bench 2>&1 >/dev/null | tail -1
}

# A bare repository holding the template plus a no-op handler, with N finished requests in
# LAYOUT (default: the template's, sharded).
template() {
  local n=$1 dest=$2 layout=${3:-sharded}
  local cached=$cache/history-$n-$layout.git
  if [ ! -d "$cached" ]; then
    local seed=$tmp/seed-$n-$layout
    git init -q -b main "$seed"
    cp -a codex.repo.yaml README.codex.md handlers containers "$seed/"
    sed -i "s/^  layout: .*/  layout: $layout/" "$seed/codex.repo.yaml"
    mkdir -p "$seed/requests" "$seed/processed" "$seed/logs"
    touch "$seed/requests/.gitkeep" "$seed/processed/.gitkeep" "$seed/logs/.gitkeep"
    printf '#!/bin/sh\nexit 0\n' >"$seed/handlers/noop.sh"
    chmod +x "$seed/handlers/noop.sh"
    cat >>"$seed/handlers/index.yml" <<EOF

  noop:
    description: Do nothing (the benchmark's request).
    run: handlers/noop.sh
    image: $image
    timeout: 1m
    resource: "{{ params.resource }}"
    params:
      type: object
      properties:
        resource: { type: string }
EOF
    git -C "$seed" add -A
    git -C "$seed" -c user.name=bench -c user.email=bench@localhost commit -q -m template
    if [ "$n" -gt 0 ]; then
      echo "bench: writing a history of $n finished requests, $layout (once; cached)" >&2
      python3 bench/history.py "$n" "$layout" | git -C "$seed" fast-import --quiet
      git -C "$seed" reset -q --hard main
    fi
    git clone -q --bare "$seed" "$cached"
  fi
  git clone -q --bare "$cached" "$dest"
}

# Merge a pull request adding requests new-<tag>-<i> (i < count) on `count % resources`
# resources into the bare repository `repo`.
merge_requests() {
  local repo=$1 tag=$2 count=$3
  local clone=$tmp/clone-$tag
  git clone -q "$repo" "$clone"
  git -C "$clone" checkout -q -b "pr-$tag"
  for i in $(seq 0 $((count - 1))); do
    printf 'kind: noop\nparams: {resource: r%d}\n' $((i % resources)) >"$clone/requests/new-$tag-$i.yaml"
  done
  git -C "$clone" add -A
  git -C "$clone" -c user.name=agent -c user.email=agent@localhost commit -q -m "add $count requests"
  git -C "$clone" checkout -q main
  git -C "$clone" -c user.name=agent -c user.email=agent@localhost merge -q --no-ff "pr-$tag" -m "Merge pr-$tag"
  git -C "$clone" push -q origin main
  rm -rf "$clone"
}

pass() { # repo state-and-work-dir [extra args]
  local repo=$1 dir=$2
  shift 2
  "$bin" dispatch --once --json --repo "$repo" --state-dir "$dir/state" --work-dir "$dir/work" \
    --runner-name bench "$@"
}

echo "codex-runner benchmark on $(nproc) cores, $(date -u +%Y-%m-%d), $("$bin" --version)"
echo

# 1. Throughput: N no-op requests over 8 resources, merged at once.
template 0 "$tmp/tp-shell.git"
template 0 "$tmp/tp-codex.git"
merge_requests "$tmp/tp-shell.git" tp "$requests"
merge_requests "$tmp/tp-codex.git" tp "$requests"
shell=$(timed bash bench/shell-dispatcher.sh "$tmp/tp-shell.git" "$tmp/shell-work")
codex=$(timed pass "$tmp/tp-codex.git" "$tmp/tp-codex" --concurrency 4)
commits=$(jq '.commits | length' "$tmp/out")
pushes=$(jq '.round_trips.pushes' "$tmp/out")
fetches=$(jq '.round_trips.fetches' "$tmp/out")
cp "$tmp/out" "$tmp/throughput.json"
seq_floor=$(timed bash -c "for i in \$(seq $requests); do docker run --rm --network none $image true; done")
par_floor=$(timed bash -c "seq $requests | xargs -P4 -I{} docker run --rm --network none $image true")
echo "$requests no-op requests over $resources resources, merged at once:"
printf '  %-44s %8ss\n' "shell dispatcher (one at a time)" "$shell"
printf '  %-44s %8ss  %sx faster than the shell\n' "codex-runner dispatch --once --concurrency 4" "$codex" "$(ratio "$shell" "$codex")"
printf '  %-44s %8ss\n' "docker run, $requests in a row" "$seq_floor"
printf '  %-44s %8ss  codex-runner at %sx this floor\n' "docker run, 4 at a time" "$par_floor" "$(ratio "$codex" "$par_floor")"
printf '  %-44s %8s\n' "result commits pushed" "$commits"
printf '  %-44s %8s  %s per request (queue claims, results, releases)\n' "pushes" "$pushes" "$(ratio "$pushes" "$requests")"
printf '  %-44s %8s  %s per request\n' "fetches" "$fetches" "$(ratio "$fetches" "$requests")"
lc() { jq -r ".lifecycle.$1 * 10 | round / 10" "$tmp/throughput.json"; }
per_run=$(python3 -c "print(round($seq_floor * 1000 / $requests))")
echo "  one container through the engine API, median ms (4 at a time): create $(lc create_ms)," \
  "attach $(lc attach_ms), start $(lc start_ms), run $(lc run_ms), wait $(lc wait_ms)," \
  "remove $(lc remove_ms); one \`docker run --rm\` in a row: $per_run ms"
echo

# 1b. The OCI runtime: the same requests with the handler under gVisor (`runtime: runsc`),
# beside `docker run --runtime runsc`, when the engine has runsc (scripts/docker-up.sh
# registers it) and the build knows `runtime:` (BENCH_RUNTIMES=0 leaves it out).
if [ "${BENCH_RUNTIMES:-1}" = 1 ] &&
  docker info --format '{{json .Runtimes}}' | grep -q '"runsc"' &&
  "$bin" schema index | grep -q '"runtime"'; then
  template 0 "$tmp/tp-gvisor.git"
  clone=$tmp/clone-gvisor
  git clone -q "$tmp/tp-gvisor.git" "$clone"
  sed -i '/^  noop:$/,/^    params:$/ s/^    timeout: 1m$/    timeout: 1m\n    runtime: runsc/' "$clone/handlers/index.yml"
  grep -qx '    runtime: runsc' "$clone/handlers/index.yml" || {
    echo "bench: could not put the noop handler under runsc" >&2
    exit 1
  }
  git -C "$clone" -c user.name=bench -c user.email=bench@localhost commit -qam "noop under gVisor"
  git -C "$clone" push -q origin main
  rm -rf "$clone"
  merge_requests "$tmp/tp-gvisor.git" tpg "$requests"
  printf '[limits]\nruntimes = ["runsc"]\n' >"$tmp/gvisor.toml"
  gvisor=$(timed pass "$tmp/tp-gvisor.git" "$tmp/tp-gvisor" --concurrency 4 --config "$tmp/gvisor.toml")
  [ "$(jq '[.requests[] | select(.state == "succeeded")] | length' "$tmp/out")" = "$requests" ] || {
    echo "bench: the gVisor requests did not all succeed" >&2
    jq -c '.requests[] | {id, state}' "$tmp/out" >&2
    exit 1
  }
  par_gvisor=$(timed bash -c "seq $requests | xargs -P4 -I{} docker run --rm --runtime runsc --network none $image true")
  echo "the same $requests requests with the handler under gVisor (runtime: runsc):"
  printf '  %-44s %8ss  %sx the runc pass\n' "codex-runner, runsc" "$gvisor" "$(ratio "$gvisor" "$codex")"
  printf '  %-44s %8ss  %sx docker run under runc\n' "docker run --runtime runsc, 4 at a time" "$par_gvisor" "$(ratio "$par_gvisor" "$par_floor")"
  printf '  %-44s %8s\n' "codex-runner under runsc, at this floor" "$(ratio "$gvisor" "$par_gvisor")x"
  echo
fi

# 1c. The Kubernetes executor: the same requests as Jobs on the local cluster (scripts/k8s/up.sh),
# beside `kubectl create` of a Job with the same pod, 4 at a time, each waited for, its log read
# and deleted. BENCH_K8S=0 leaves it out; without a cluster, or with a build that has no
# Kubernetes executor, it says so and goes on.
kubeconfig=${CODEX_RUNNER_KUBECONFIG:-/var/lib/k8s-local/admin.kubeconfig}
if [ "${BENCH_K8S:-1}" = 1 ]; then
  if ! grep -q 'executor.kubernetes' "$bin"; then
    echo "Kubernetes: left out ($bin has no Kubernetes executor)"
    echo
  elif ! kubectl --kubeconfig "$kubeconfig" get --raw /readyz >/dev/null 2>&1; then
    echo "Kubernetes: left out (no cluster answers at $kubeconfig; bash scripts/k8s/up.sh starts one)"
    echo
  else
    k() { kubectl --kubeconfig "$kubeconfig" -n "$ns" "$@"; }
    ns=codex-bench-$$
    kubectl --kubeconfig "$kubeconfig" create namespace "$ns" >/dev/null
    trap 'kubectl --kubeconfig "$kubeconfig" delete namespace "$ns" --wait=false >/dev/null 2>&1; rm -rf "$tmp"' EXIT
    until k get serviceaccount default >/dev/null 2>&1; do sleep 0.2; done
    template 0 "$tmp/tp-k8s.git"
    clone=$tmp/clone-k8s
    git clone -q "$tmp/tp-k8s.git" "$clone"
    # One line of output, to time its arrival.
    printf '#!/bin/sh\necho ready\n' >"$clone/handlers/noop.sh"
    git -C "$clone" -c user.name=bench -c user.email=bench@localhost commit -qam "noop says ready"
    git -C "$clone" push -q origin main
    rm -rf "$clone"
    merge_requests "$tmp/tp-k8s.git" tpk "$requests"
    printf '[executor]\nkind = "kubernetes"\n[executor.kubernetes]\nkubeconfig = "%s"\nnamespace = "%s"\nimage_pull_policy = "Never"\n' \
      "$kubeconfig" "$ns" >"$tmp/k8s.toml"
    kube=$(timed pass "$tmp/tp-k8s.git" "$tmp/tp-k8s" --concurrency 4 --config "$tmp/k8s.toml")
    [ "$(jq '[.requests[] | select(.state == "succeeded")] | length' "$tmp/out")" = "$requests" ] || {
      echo "bench: the Kubernetes requests did not all succeed" >&2
      jq -c '.requests[] | {id, state, reason}' "$tmp/out" >&2
      exit 1
    }
    cp "$tmp/out" "$tmp/k8s.json"
    git clone -q "$tmp/tp-k8s.git" "$tmp/k8s-logs"
    # Launch (the runner's `started`) to the first output line's arrival, per request.
    first=$(find "$tmp/k8s-logs/logs" -name '*.jsonl' | python3 -c '
import json, sys, statistics, datetime
def ms(t): return datetime.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1000
gaps = []
for path in sys.stdin.read().split():
    ev = [json.loads(l) for l in open(path)]
    start = next(e["ts"] for e in ev if e["event"] == "started")
    out = next(e["ts"] for e in ev if e["event"] == "output")
    gaps.append(ms(out) - ms(start))
print(round(statistics.median(gaps)), round(max(gaps)))')
    # The baseline: the same pod (hardening, limits, image, a one-line script) as a bare Job.
    cat >"$tmp/job.sh" <<'JOB'
#!/usr/bin/env bash
set -euo pipefail
name=base-$1
t0=$(date +%s.%N)
kubectl --kubeconfig "$KCFG" -n "$NS" create -f - >/dev/null <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: $name}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      enableServiceLinks: false
      shareProcessNamespace: true
      securityContext: {runAsUser: 65534, runAsGroup: 65534, runAsNonRoot: true, fsGroup: 65534, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: handler
        image: codex-runner/busybox:1
        imagePullPolicy: Never
        command: ["sh", "-c", "echo ready"]
        securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, privileged: false, capabilities: {drop: [ALL]}}
        resources: {limits: {cpu: "1", memory: 512Mi}, requests: {cpu: 100m, memory: 512Mi}}
        volumeMounts: [{name: tmp, mountPath: /tmp}]
      volumes: [{name: tmp, emptyDir: {medium: Memory, sizeLimit: 64Mi}}]
YAML
kubectl --kubeconfig "$KCFG" -n "$NS" wait --for=condition=complete "job/$name" --timeout=120s >/dev/null
line=$(kubectl --kubeconfig "$KCFG" -n "$NS" logs --timestamps "job/$name")
kubectl --kubeconfig "$KCFG" -n "$NS" delete job "$name" --wait=false >/dev/null
echo "$t0 ${line%% *}" >>"$OUT"
JOB
    : >"$tmp/base-first"
    base=$(timed env KCFG="$kubeconfig" NS="$ns" OUT="$tmp/base-first" bash -c "seq $requests | xargs -P4 -I{} bash $tmp/job.sh {}")
    base_first=$(python3 -c '
import sys, statistics, datetime
gaps = []
for l in open(sys.argv[1]):
    t0, ts = l.split()
    gaps.append((datetime.datetime.fromisoformat(ts[:26] + "+00:00").timestamp() - float(t0)) * 1000)
print(round(statistics.median(gaps)), round(max(gaps)))' "$tmp/base-first")
    lk() { jq -r ".lifecycle.$1 * 10 | round / 10" "$tmp/k8s.json"; }
    echo "the same $requests requests as Kubernetes Jobs (the local cluster, 4 at a time):"
    printf '  %-44s %8ss  %sx the Docker pass\n' "codex-runner, kind = \"kubernetes\"" "$kube" "$(ratio "$kube" "$codex")"
    printf '  %-44s %8ss\n' "kubectl create + wait + logs + delete" "$base"
    printf '  %-44s %8s  %s ms per request over kubectl\n' "codex-runner at this floor" "$(ratio "$kube" "$base")x" \
      "$(python3 -c "print(round(($kube - $base) * 1000 / $requests))")"
    printf '  %-44s %8s\n' "launch to first output, median/max ms" "${first/ //}"
    printf '  %-44s %8s\n' "kubectl create to first line, median/max ms" "${base_first/ //}"
    echo "  one Job through the API, median ms: objects $(lk create_ms), pod running $(lk start_ms)," \
      "run $(lk run_ms), exit seen $(lk wait_ms), delete $(lk remove_ms)"
    echo
  fi
fi

# 2. History: one new request on a repository with H finished requests, in each layout.
git_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$(git --exec-path)/git-daemon" --reuseaddr --export-all --enable=receive-pack --listen=127.0.0.1 --port="$git_port" \
  --base-path="$tmp" "$tmp" >/dev/null 2>&1 &
git_daemon=$!
trap 'kill $git_daemon 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 0.5
echo "one new no-op request on a repository with H finished requests (warm mirror, median of 3):"
for layout in $layouts; do
  base=""
  for h in $history; do
    r=$tmp/h$h-$layout
    template "$h" "$r.git" "$layout"
    merge_requests "$r.git" "w$h$layout" 1
    cold=$(timed pass "$r.git" "$r")
    # One run is at the mercy of the machine's moment: the median of three.
    runs=()
    for k in 1 2 3; do
      merge_requests "$r.git" "t$k$h$layout" 1
      runs+=("$(timed pass "$r.git" "$r")")
    done
    warm=$(printf '%s\n' "${runs[@]}" | sort -n | sed -n 2p)
    idle=$(timed pass "$r.git" "$r")
    clone=$(timed git clone -q --mirror "$r.git" "$r-mirror.git")
    peak=$(rss "$r.git" "$r")
    # A new host reaching the same remote through a git server (git://): shallow, deepened
    # only as far as the pending request.
    merge_requests "$r.git" "g$h$layout" 1
    served=$(timed pass "git://127.0.0.1:$git_port/$(basename "$r").git" "$r-served")
    served_clone=$(timed git clone -q --mirror "git://127.0.0.1:$git_port/$(basename "$r").git" "$r-served-mirror.git")
    base=${base:-$warm}
    printf '  %-7s H=%-6s pass %6ss (%sx H=0)  idle %6ss  first pass: path %6ss, git:// %6ss (git clone --mirror: path %ss, git:// %ss)  idle pass peak RSS %s KiB\n' \
      "$layout" "$h" "$warm" "$(ratio "$warm" "$base")" "$idle" "$cold" "$served" "$clone" "$served_clone" "$peak"
  done
done

# 3. The daemon: webhook latency and memory (BENCH_DAEMON=0 leaves it out).
if [ "${BENCH_DAEMON:-1}" = 1 ]; then
  # shellcheck source=bench/daemon.sh
  . bench/daemon.sh
fi
