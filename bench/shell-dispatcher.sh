#!/usr/bin/env bash
# The plain shell dispatcher the project's seed describes, as the benchmark's baseline: bash,
# python3's yaml, the docker CLI and the git CLI; one request at a time, a flock per resource.
# It does what codex-runner's pass does for a valid request, without the checks: clone or pull,
# route kind -> handler, run it in a container (no network, read-only), write a log and a
# status, move the request to processed/, commit and push (pull --rebase and retry when main
# moved).
#
#   bench/shell-dispatcher.sh REMOTE WORKDIR
set -euo pipefail
remote=$1
work=$2
mkdir -p "$work/locks"
clone="$work/clone"
if [ -d "$clone/.git" ]; then
  git -C "$clone" pull -q --rebase origin main
else
  git clone -q "$remote" "$clone"
fi
git -C "$clone" config user.name "shell dispatcher"
git -C "$clone" config user.email "shell@localhost"

route() { # file -> "id kind resource image run"
  python3 - "$clone" "$1" <<'EOF'
import os, sys, yaml
repo, path = sys.argv[1], sys.argv[2]
req = yaml.safe_load(open(path))
index = yaml.safe_load(open(os.path.join(repo, "handlers/index.yml")))["handlers"]
h = index[req["kind"]]
rid = os.path.basename(path).rsplit(".", 1)[0]
res = (req.get("params") or {}).get("resource") or req["kind"]
print(rid, req["kind"], res, h["image"], h["run"])
EOF
}

for file in "$clone"/requests/*.yaml; do
  [ -e "$file" ] || continue
  read -r id kind resource image run < <(route "$file")
  (
    flock 9
    start=$(date +%s%3N)
    set +e
    out=$(docker run --rm --network none --read-only --user 65534:65534 \
      -v "$clone:/codex/repo:ro" -e "CODEX_REQUEST_ID=$id" "$image" "/codex/repo/$run" 2>&1)
    code=$?
    set -e
    end=$(date +%s%3N)
    state=succeeded; [ $code -eq 0 ] || state=failed
    printf '%s\n' "$out" | python3 -c 'import json,sys; [print(json.dumps({"event":"output","line":l.rstrip("\n")})) for l in sys.stdin]' > "$clone/logs/$id.jsonl"
    printf '{"id":"%s","kind":"%s","state":"%s","exit_code":%d,"duration_ms":%d}\n' \
      "$id" "$kind" "$state" "$code" $((end - start)) > "$clone/logs/$id.status.json"
    git -C "$clone" mv "requests/$id.yaml" "processed/$id.yaml"
    git -C "$clone" add "logs/$id.jsonl" "logs/$id.status.json"
    git -C "$clone" commit -q -m "shell: $id $state"
    until git -C "$clone" push -q origin HEAD:main 2>/dev/null; do
      git -C "$clone" pull -q --rebase origin main
    done
  ) 9>"$work/locks/$resource.lock"
done
