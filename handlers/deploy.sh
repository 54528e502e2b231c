#!/bin/sh
# deploy: a rolling deployment, simulated. The image (containers/deploy) carries the
# `rollout` tool; the repository at the merge commit is at /codex/repo, read-only.
set -eu
service="${CODEX_PARAM_SERVICE}"
version="${CODEX_PARAM_VERSION}"
env="${CODEX_PARAM_ENVIRONMENT}"
steps="${CODEX_PARAM_STEPS:-3}"
echo "deploying ${service} ${version} to ${env} (${DEPLOY_STRATEGY}, ${steps} steps)"
rollout plan "${service}" "${version}" "${steps}"
i=1
while [ "$i" -le "$steps" ]; do
  rollout step "${service}" "$i" "${steps}"
  sleep 1
  i=$((i + 1))
done
echo "deployed ${service} ${version} to ${env}"
